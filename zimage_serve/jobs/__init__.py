"""Async jobs: the job store, its webhooks and its runner, as plain classes (the Serve deployment that hosts them
is serving/jobs.py). Imports ``core`` and ``settings`` only: no torch, no Ray."""
