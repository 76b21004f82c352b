"""Benchmarks of zimage-serve (``python3 bench/run.py STEP...`` on a GPU machine; ``python3 bench/report.py`` here).

A package so that bench/run.py's steps (bench/steps/) share bench/common.py; the standalone scripts beside
them (loadtest, overhead_cpu, recover, blocks, stock_baseline) are run as files.
"""
