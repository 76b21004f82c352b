"""Stock diffusers on the same checkpoint, in the same run: the shared reference script, unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ..common import ROOT, checkpoint, out_dir, save


def stock():
    """Stock diffusers (bench/stock_baseline.py, unchanged): load, end to end, denoise split, batches."""
    out = out_dir()
    env = dict(os.environ, ZIMAGE_FULL_CKPT=str(checkpoint()), OUT=str(out))
    subprocess.run([sys.executable, str(ROOT / "bench" / "stock_baseline.py"), "stock", "staged"], env=env, check=False)
    rows = [json.loads(line) for line in (out / "baseline.jsonl").read_text().splitlines()]
    save("stock", rows=rows)
