"""What the commands show of long work. On a terminal: progress bars (diffusers' bar of the denoising steps, the
batch job's bar of images done). Anywhere else (a pipe, a CI log, a Ray worker's log) no bar at all, ours or the
libraries': a bar redraws its line with carriage returns, which a log keeps as one garbled line per frame; a line
per stage instead (:func:`stage`), and the batch job's count every ``LINE_EVERY_S`` (:class:`Progress`).

No torch, and no tqdm at import: ``TQDM_DISABLE`` only takes effect for a tqdm imported after it is set.
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Iterator, TextIO

# Set (unless the user set them) where stderr is not a terminal, and in every Ray worker of our jobs
# (arguments.RAY_RUNTIME_ENV, setup_worker_logging): tqdm's own default for every bar a library makes without an explicit disable=
# (ModelScope's download bars have no switch of their own; diffusers' loading bars, in a process where diffusers
# is not imported yet), and huggingface_hub's (and so transformers') switch, read as they are imported.
QUIET_ENV = {"TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
LINE_EVERY_S = 10.0  # off a terminal, the batch job's count: a line at most this often, and one at the end
FIRST_S = 1.0  # items within this of the first came with it (a batch's rows come at once): the rate counts after


def interactive(stream: TextIO | None = None) -> bool:
    """Whether progress bars may redraw on ``stream`` (default: stderr): a terminal, and not ``TERM=dumb``."""
    stream = stream if stream is not None else sys.stderr
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # no such method, or closed
        return False
    return tty and os.environ.get("TERM", "") != "dumb"  # the terminal's own variable: not our configuration


def quiet_library_bars() -> None:
    """No progress bar from the libraries, in this process and the processes it starts (a local Ray cluster's
    workers): sets QUIET_ENV (for the libraries imported later, and the children), and turns off the bars of
    diffusers, transformers and huggingface_hub where they are imported already. Idempotent, and cheap: call it
    before anything loads, and again once the libraries are imported. Never imports them (diffusers brings in
    torch)."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    switches = (("diffusers.utils.logging", "disable_progress_bar"), ("transformers.utils.logging", "disable_progress_bar"),
                ("huggingface_hub.utils", "disable_progress_bars"))
    with warnings.catch_warnings():  # huggingface_hub warns when the user's HF_HUB_DISABLE_PROGRESS_BARS=0 wins
        warnings.simplefilter("ignore")
        for module, switch in switches:
            if module in sys.modules:
                getattr(sys.modules[module], switch)()


def duration(seconds: float) -> str:
    """3.2s, 5m02s, 1h05m."""
    if seconds < 59.95:  # (not "60.0s")
        return f"{seconds:.1f}s"
    s = round(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _rate(per_s: float) -> str:
    return f"{per_s:.2f}" if per_s < 10 else f"{per_s:.1f}" if per_s < 100 else f"{per_s:.0f}"  # 0.42, 3.40, 12.3, 123


@contextmanager
def stage(what: str, stream: TextIO | None = None) -> Iterator[None]:
    """One stage of a command, as one line on stderr once it is done: ``loading tiny ... done in 3.2s`` (nothing
    when it raises: the error says what happened). The same on a terminal and off it; on a terminal a bar of the
    stage (diffusers' steps) draws, and clears itself, before the line."""
    t0 = time.perf_counter()
    yield
    print(f"{what} ... done in {duration(time.perf_counter() - t0)}", file=stream or sys.stderr, flush=True)


class Progress:
    """Items done out of a total, from ``start`` (a ``clock()`` value; default now). The rate, and the time left,
    are from the first items on (before them, the job starts up: Ray, the models' loads; those of the first
    ``FIRST_S`` come at once, as a batch's rows do); the time taken and the mean rate at the end are from
    ``start``. On a terminal (``bar``, default: :func:`interactive`) a tqdm bar from the first item on. Elsewhere a line at most every ``every`` seconds, ``batch: 120/1000 images (12%), 3.4 img/s,
    eta 4m19s`` (the first: ``batch: 1/1000 images (0%), the first after 52.0s``), and at :meth:`close` one line
    for the whole, ``batch: 1000/1000 images in 5m02s (3.3 img/s)``."""

    def __init__(self, total: int, name: str = "batch", unit: str = "img", units: str = "images",
                 start: float | None = None, bar: bool | None = None, every: float = LINE_EVERY_S,
                 stream: TextIO | None = None, clock=time.perf_counter):
        self.total, self.name, self.unit, self.units = total, name, unit, units
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.start = start if start is not None else clock()
        self.bar = interactive(self.stream) if bar is None else bar
        self.every = every
        self.done = 0
        self._first = None  # (time of the first update, time and count of the last within FIRST_S of it)
        self._last_line = self.start
        self._tqdm = None

    def _status(self, now: float) -> str:
        first_t, since, counted = self._first
        if self.done == counted:
            return f"the first after {duration(first_t - self.start)}"
        rate = (self.done - counted) / (now - since)
        return f"{_rate(rate)} {self.unit}/s, eta {duration((self.total - self.done) / rate)}"

    def update(self, n: int = 1) -> None:
        now = self.clock()
        self.done += n
        if self._first is None or now - self._first[0] < FIRST_S:
            self._first = (self._first[0] if self._first else now, now, self.done)
        if self.bar:
            self._bar(now).update(n)
            self._tqdm.set_postfix_str(self._status(now), refresh=False)
        elif now - self._last_line >= self.every and self.done < self.total:
            self._last_line = now
            self._line(f"{self.done}/{self.total} {self.units} ({100 * self.done // self.total}%), {self._status(now)}")

    def _bar(self, now: float):
        if self._tqdm is None:  # from the first item on: before it, the job logs its start-up
            from tqdm import tqdm  # tqdm: imported only now, after quiet_library_bars could set TQDM_DISABLE

            # disable=False: ours shows on a terminal whatever TQDM_DISABLE says (a bar of the libraries doesn't);
            # the rate and time left are the postfix, as the lines off a terminal say them (in items a second:
            # tqdm's own turns to seconds an item below one a second)
            self._tqdm = tqdm(total=self.total, desc=self.name, unit=self.unit, file=self.stream, disable=False,
                              delay=1e-3,  # its first frame after start_t is set
                              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
            self._tqdm.start_t -= now - self.start  # its time taken counts from the start
        return self._tqdm

    def _line(self, text: str) -> None:
        print(f"{self.name}: {text}", file=self.stream, flush=True)

    def close(self) -> None:
        """Ends the bar; off a terminal, the line for the whole (none when nothing was done)."""
        taken = self.clock() - self.start
        rate = f"{_rate(self.done / taken) if taken > 0 else '?'} {self.unit}/s"  # the mean, start-up included
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(rate, refresh=False)
            self._tqdm.close()
        if not self.bar and self.done:
            self._line(f"{self.done}/{self.total} {self.units} in {duration(taken)} ({rate})")
