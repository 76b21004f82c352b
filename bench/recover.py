"""How long a rerun of the batch job takes to check what an earlier run finished (OutputDir.recover), on
this machine: N finished images of SIZE_MB each, page cache warm (the best case; a network volume is slower).

    python bench/recover.py [N] [SIZE_MB]      # prints seconds for the default check and for --verify
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(n: int = 1000, size_mb: float = 1.5) -> None:
    sys.path.insert(0, str(ROOT))  # run as a file: the repository root, for the package
    from zimage_serve.batch.output import OutputDir

    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        out = OutputDir(tmp)
        data = bytearray(os.urandom(int(size_mb * 2**20)))
        with open(out.manifest, "w") as manifest:
            for i in range(n):
                data[:8] = i.to_bytes(8, "little")  # each file its own digest
                name = f"img-{i:07d}.png"
                Path(tmp, name).write_bytes(data)
                manifest.write(json.dumps({"id": f"img-{i}", "file": name, "bytes": len(data),
                                           "sha256": hashlib.sha256(data).hexdigest()}) + "\n")
        results = {"entries": n, "image_mb": size_mb}
        for verify in (False, True):
            t = time.perf_counter()
            done = out.recover(verify=verify)
            results["verify_s" if verify else "default_s"] = round(time.perf_counter() - t, 3)
            assert len(done) == n
        print(json.dumps(results))


if __name__ == "__main__":
    main(*(int(sys.argv[1]),) if len(sys.argv) > 1 else (), *(float(sys.argv[2]),) if len(sys.argv) > 2 else ())
