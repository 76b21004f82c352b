"""zimage-serve: production serving of Z-Image-Turbo on Ray Serve."""

__version__ = "0.1.0"
