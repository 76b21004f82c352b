"""Where the model lives: the only layer that imports torch, diffusers and transformers.

- ``sources``: every model source (``tiny``, a directory, a ModelScope id) resolved to a checked checkpoint.
- ``planner`` and ``sizes``: VRAM-aware staging, pure arithmetic on component sizes (no torch).
- ``loader``: loads a checkpoint following a plan; ``prefetch``: its weights read in threads (beside the imports);
  ``weights_cache``: the optional bf16 transformer cache; ``startup``: a worker's start, stage by stage.
- ``engine``: a loaded model that turns typed requests and their embeddings into images, in batches.
- ``encoding``: prompt encoding as its own batched step.
- ``adapters``: LoRA adapters: finding an adapter's file, loading it through diffusers with clear errors.
- ``imaging`` and ``png``: encoded images for responses and files (Pillow and numpy, no torch).
- ``optim/``: GPU speed-ups (fused projections, regional compile, CUDA graphs, FP8, the lean VAE decoder).

May import ``core``, ``settings`` and ``testing.checkpoint`` (the embedded tiny checkpoint's writer); never
``serving``, ``batch`` or ``cli``. This ``__init__`` imports nothing, so ``model.planner`` loads no torch.
"""
