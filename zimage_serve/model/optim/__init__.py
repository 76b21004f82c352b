"""GPU speed-ups applied to a loaded pipeline, each exact or opt-in, each measured in bench/:
``accel`` (what the engine applies, and the compile cache), ``fusion`` (fused q/k/v and SwiGLU
projections), ``graphs`` (CUDA graphs per shape), ``fp8`` (rowwise FP8 matmuls), ``lean_vae`` (a VAE
decoder that runs its large convs in row bands).

Imports torch and diffusers, ``settings`` and its siblings; nothing else of the package.
"""
