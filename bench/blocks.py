"""What the number of Ray Data blocks costs the batch job's driver before any model work: building the
dataset of N prompts (ray.data.from_items) and iterating it in GPU batches of 4, for blocks of one GPU batch
(N/4 blocks) and for the batch job's cap (batch.MAX_BLOCKS), on a local Ray with 2 CPUs.

    python bench/blocks.py [N]     # one JSON line per block count
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(n: int = 100_000) -> None:
    sys.path.insert(0, str(ROOT))  # run as a file: the repository root, for the package
    import ray

    from zimage_serve.batch.job import MAX_BLOCKS, block_count
    from zimage_serve.core.request import GenerationRequest

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    # the rows as the batch job builds them: each carries its typed request
    rows = [{"id": f"img-{i}", "stem": f"img-{i}", "request": GenerationRequest(f"prompt number {i}, a few words more", seed=i)}
            for i in range(n)]
    for blocks in (max(1, n // 4), block_count(n, 4)):
        t = time.perf_counter()
        ds = ray.data.from_items(rows, override_num_blocks=blocks)
        built = time.perf_counter() - t
        t = time.perf_counter()
        batches = sum(1 for _ in ds.iter_batches(batch_size=4))
        print(json.dumps({"prompts": n, "blocks": blocks, "max_blocks": MAX_BLOCKS, "from_items_s": round(built, 1),
                          "iterate_s": round(time.perf_counter() - t, 1), "batches": batches}), flush=True)


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:2]))
