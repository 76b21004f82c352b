"""Where a denoise's time goes beyond its kernels' sum: GPU busy time, SM clock and power."""

from __future__ import annotations

import time

from ..common import denoise, engine_with_job, safe, save, sync, timed
from ..profiling import GpuSampler, gpu_busy, profile_step

MATMUL_SIDE = 8192


def timeline():
    """How busy the GPU is over an 8-step denoise, its SM clock and power; the same under plain bf16 matmuls."""
    import torch

    out = {}
    sampler = GpuSampler()
    time.sleep(1.0)
    a = torch.randn(MATMUL_SIDE, MATMUL_SIDE, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(MATMUL_SIDE, MATMUL_SIDE, device="cuda", dtype=torch.bfloat16)
    for reps, key in ((20, "burst"), (800, "sustained")):  # about 0.03 s, then about 1.4 s of matmuls
        sampler.phase = f"matmul_{key}"
        sync()
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        out[f"matmul_{MATMUL_SIDE}_{key}_tflops"] = round(2 * MATMUL_SIDE**3 * reps / (time.perf_counter() - t) / 1e12, 1)
    del a, b
    sampler.phase = "load"
    eng, embeds, _ = engine_with_job(batch=1)  # fused + regional compile, as served (graphs change nothing at 1024², run26)
    denoise(eng, embeds)
    sampler.phase = "idle_after_load"
    time.sleep(1.0)
    sampler.phase = "denoise_loop"
    out["denoise_s"] = round(timed(lambda: denoise(eng, embeds), reps=8), 3)
    sampler.phase = "profiled"
    out["busy"] = [safe(gpu_busy, eng, embeds) for _ in range(2)]
    out["per_step_kernels"] = safe(profile_step, eng, embeds)
    out["gpu"] = sampler.summary()
    save("timeline", **out)
