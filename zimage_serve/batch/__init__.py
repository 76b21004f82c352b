"""Distributed batch generation as a Ray job (Ray Data): ``python -m zimage_serve.batch`` or ``zimage-serve batch``.

- ``job``: the driver (reads the prompts file, builds the Ray Data pipeline, appends the manifest).
- ``stages``: the pipeline's stages (encode on CPU, generate on GPUs, write on CPU).
- ``prompts_file``: the prompts file, every line checked before Ray starts.
- ``output``: the output directory (atomic writes, a manifest that survives kill -9, resumable).

May import ``core``, ``settings``, ``model`` (inside the stages' actors only) and ``arguments``; never
``serving`` or ``cli``.
"""
