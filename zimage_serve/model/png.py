"""PNG encoding in parallel bands: several times faster than Pillow's encoder at the same level.

Pillow filters and deflates a whole image on one core (about 0.17 s for a 1024² image on the
H100 host, a seventh of a request). Here the rows are split into bands. Each band is filtered
with numpy (PNG filter 2, "Up", which reads the row above across band edges too) and deflated
by its own ``zlib`` compressor in a thread; zlib and numpy release the GIL, so the bands run on
separate cores. Each band but the last ends on a sync flush (byte-aligned, not final), so their
raw deflate streams join into one valid zlib stream with the Adler-32 of all the filtered bytes.
The file is an ordinary 8-bit PNG that any reader decodes to the same pixels (tests/test_png.py).

How many threads deflate is the caller's ``workers`` (a replica passes the CPUs it reserved), never
this machine's core count: a pool of that size per worker count, started on first use, shared by every
call that passes it, so at most ``workers`` threads deflate at once for them all. The bands are cut by
the image's height alone (at most MAX_BANDS), so the bytes never depend on ``workers`` or the machine: a
batch job's SHA-256 of an image is the same on any host.
"""

from __future__ import annotations

import numbers
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {1: 0, 3: 2, 4: 6}  # channels -> PNG colour type (grey, RGB, RGBA)
FILTER_UP = 2
MIN_BAND_ROWS = 32
MAX_BANDS = 16  # 32 rows or more each; 16 keeps 8 threads busy (and is what 8 workers cut before)
THREAD_PREFIX = "zimage-png"
_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """The pool of ``workers`` threads (named zimage-png<workers>_<i>), started on first use."""
    with _pools_lock:
        pool = _pools.get(workers)
        if pool is None:
            pool = _pools[workers] = ThreadPoolExecutor(max_workers=workers,
                                                        thread_name_prefix=f"{THREAD_PREFIX}{workers}")
        return pool


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))


def _filtered_rows(pixels: np.ndarray, start: int, stop: int) -> bytes:
    """Rows start..stop-1 as PNG scanlines: the filter byte, then each byte minus the one above (mod 256)."""
    rows = pixels[start:stop].reshape(stop - start, -1)
    out = np.empty((stop - start, rows.shape[1] + 1), np.uint8)
    out[:, 0] = FILTER_UP
    np.subtract(rows[1:], rows[:-1], out=out[1:, 1:])
    above = pixels[start - 1].reshape(-1) if start else np.zeros_like(rows[0])
    np.subtract(rows[0], above, out=out[0, 1:])
    return out.tobytes()


def _deflate_band(pixels: np.ndarray, start: int, stop: int, level: int, last: bool) -> tuple[bytes, bytes]:
    raw = _filtered_rows(pixels, start, stop)
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)  # raw deflate: the zlib wrapper is written once
    return raw, compressor.compress(raw) + compressor.flush(zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH)


def encode_png(pixels: np.ndarray, level: int = 1, workers: int = 1) -> bytes:
    """An 8-bit PNG of ``pixels`` ([height, width] or [height, width, 1|3|4], uint8) at zlib ``level`` 0-9,
    its bands deflated by at most ``workers`` threads (the pool of that size); the same bytes for any ``workers``."""
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 1:
        raise ValueError(f"workers must be an integer of at least 1, got {workers!r}")
    workers = int(workers)
    if pixels.dtype != np.uint8:
        raise ValueError(f"PNG pixels must be uint8, got {pixels.dtype}")
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    height, width, channels = pixels.shape
    if channels not in COLOR_TYPES or not (0 <= level <= 9):
        raise ValueError(f"can't write {channels} channels at level {level} (1, 3 or 4 channels; level 0-9)")
    pixels = np.ascontiguousarray(pixels)
    bands = max(1, min(MAX_BANDS, height // MIN_BAND_ROWS))
    edges = [height * i // bands for i in range(bands + 1)]
    parts = list(_pool(workers).map(lambda i: _deflate_band(pixels, edges[i], edges[i + 1], level, i == bands - 1),
                                    range(bands)))
    adler = 1
    for raw, _ in parts:
        adler = zlib.adler32(raw, adler)
    stream = b"\x78\x01" + b"".join(deflated for _, deflated in parts) + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[channels], 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
