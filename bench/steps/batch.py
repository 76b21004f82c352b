"""The batch job (``python -m zimage_serve.batch``, Ray Data) on one GPU, and its prompt-encoding stage alone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ..common import PROMPT, checkpoint, save, size

PROMPTS = 40
WORK = Path("/tmp/batchjob")


def _requests(n: int):
    """A Ray Data batch of ``n`` rows as the job's EncodeStage receives it: each row's typed request."""
    from zimage_serve.batch.stages import objects
    from zimage_serve.core.request import GenerationRequest

    return {"request": objects([GenerationRequest(f"{PROMPT}, variation {i}", seed=i) for i in range(n)])}


def _encode_stage() -> dict:
    """The prompt-encoding stage alone, as it was (1 thread, float32) and as it is (its default threads, auto dtype)."""
    from zimage_serve.batch.job import encoder_cpus
    from zimage_serve.batch.stages import EncodeStage

    out = {}
    # (name, threads, dtype, prompts, warm-up call): the old stage is slow enough (about 0.1 prompt/s) to time once
    for name, threads, dtype, n, warm in (("encode_stage_before", 1, "float32", 2, False),
                                          ("encode_stage_now", encoder_cpus(None, os.cpu_count(), 1), "auto", 8, True)):
        stage = EncodeStage(str(checkpoint()), threads=threads, dtype=dtype)
        if warm:
            stage(_requests(n))
        t = time.perf_counter()
        stage(_requests(n))
        out[name] = {"threads": threads, "dtype": str(stage.dtype), "prompts": n,
                     "prompts_per_s": round(n / (time.perf_counter() - t), 3)}
        print(name, out[name], flush=True)
        del stage
    return out


def batch():
    """The batch job on one GPU, 40 prompts: steady images/s, whole-job wall time; the encoding stage alone.

    Steady state from the image files' mtimes after the first batch; before the job, the prompt-encoding
    stage alone, as it was (1 thread, float32) and as it is (its default threads, auto dtype)."""
    import torch

    out = _encode_stage()
    torch.set_num_threads(os.cpu_count())
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir()
    (WORK / "prompts.txt").write_text("".join(f"{PROMPT}, scene {i}\n" for i in range(PROMPTS)))
    side = size()
    cmd = [sys.executable, "-m", "zimage_serve.batch", "--prompts", str(WORK / "prompts.txt"), "--out", str(WORK / "out"),
           "--model", str(checkpoint()), "--size", f"{side}x{side}", "--gpus", "1"]
    t = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    out["job_wall_s"] = round(time.time() - t, 1)
    out["returncode"] = r.returncode
    out["stderr_tail"] = r.stderr[-1500:]
    images = sorted((WORK / "out").glob("*.png"), key=lambda p: p.stat().st_mtime)
    out["images"] = len(images)
    if len(images) > 8:
        mtimes = [p.stat().st_mtime for p in images]
        out["steady_img_s"] = round((len(mtimes) - 4) / (mtimes[-1] - mtimes[3]), 3)
        out["first_image_after_start_s"] = round(mtimes[0] - t, 1)
    save("batch", **out)
