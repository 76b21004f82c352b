"""zimage-serve: production serving of Z-Image-Turbo on Ray Serve.

Layers, each importing only those before it (tests/test_layers.py checks it):
``core`` (the typed request, bounds, formats, errors; no torch) -> ``settings`` (the one config and
the environment) -> ``model`` (torch and diffusers: sources, planner, loader, engine) -> ``serving``
(Ray Serve deployments, HTTP) and ``batch`` (the Ray Data job) -> ``cli``, ``app`` (entry points).
``testing`` holds the random-weight checkpoint writer (beside ``model``, which writes the embedded tiny
checkpoint with it) and fault injection (above ``serving``).
"""

__version__ = "0.1.0"
