"""Test support that ships with the package, never reachable from a serve config.

- ``checkpoint``: writes Z-Image checkpoints with random weights from the real diffusers classes: the
  embedded ``tiny`` default (model/sources.py writes it on first use, so this module may be imported by
  ``model``; it imports only ``core`` and, inside its functions, torch, diffusers and transformers) and the
  full-size layout for GPU benchmarks.
- ``lora``: writes LoRA adapters with random weights in diffusers' format (``zimage-serve make-lora``), for
  tests and benchmarks.
- ``faults``: fault injection (a Generator whose engine runs out of memory on demand), built from Python
  only; it imports ``serving``.
"""
