"""The Ray Serve entry point named in serve_config.yaml: ``import_path: zimage_serve.app:build_app``.

Importing it imports no torch, diffusers or transformers: the driver, the Serve controller and the
ingress stay light; the encoder and generator replicas import torch themselves."""

from .serving.builder import build_app

__all__ = ["build_app"]
