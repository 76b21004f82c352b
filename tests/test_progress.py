"""What long work shows (zimage_serve/progress.py): on a terminal, progress bars; with stderr a pipe (a log, CI,
Ray), no bar redraws at all, ours or the libraries', and a line per stage. Real processes, stderr a pipe or a
pseudo-terminal; the batch job's count through its real class, on a clock the test moves."""

import fcntl
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
import tty

import pytest

from zimage_serve.progress import Progress, duration, interactive

GENERATE = ["-m", "zimage_serve.cli", "generate", "--prompt", "a cat", "--model", "tiny", "--size", "64x64",
            "--steps", "8", "--seed", "3"]
STEP_BAR = re.compile(r"\r\s*\d+%\|[^\r\n]*\| \d/8 \[")  # a frame of diffusers' bar of the 8 steps, redrawn


def _env() -> dict:
    """As a user's shell has it: none of the switches that a run in this process may have set."""
    env = {k: v for k, v in os.environ.items() if k not in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS")}
    return dict(env, TERM="xterm", RAY_ADDRESS="")


def _on_a_terminal(args: list[str], timeout: float = 300) -> tuple[int, str, str]:
    """Run ``python ARGS`` with stderr a pseudo-terminal of 100 columns (raw: newlines stay newlines), stdout a
    pipe: (exit status, stdout, what the terminal received)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws to the width
    proc = subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave,
                            env=_env())
    os.close(slave)
    received, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1.0)[0]:
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the process closed the terminal's last descriptor
                break
            if not data:
                break
            received.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        stdout = proc.stdout.read().decode()
    finally:
        os.close(master)
        proc.kill()
    return code, stdout, b"".join(received).decode(errors="replace")


STAGES = [r"loading tiny \(random test weights: images are noise\) \.\.\. done in \d+\.\ds",
          r"encoding the prompt \.\.\. done in \d+\.\ds",
          r"generating 1 image \(64x64, 8 steps\) \.\.\. done in \d+\.\ds",
          r"writing .*cat\.png \.\.\. done in \d+\.\ds"]


@pytest.fixture(scope="module")
def generated_on_a_pipe(tmp_path_factory):
    """``zimage-serve generate`` as a user runs it, stderr a pipe: (the image's path, the finished process)."""
    out = tmp_path_factory.mktemp("pipe") / "cat.png"
    r = subprocess.run([sys.executable, *GENERATE, "--out", str(out)], capture_output=True, text=True, env=_env(),
                       timeout=300)
    return out, r


def test_generate_with_stderr_a_pipe_draws_no_bar_and_says_each_stage(generated_on_a_pipe):
    out, r = generated_on_a_pipe
    assert r.returncode == 0, r.stderr[-3000:]
    assert "\r" not in r.stderr, r.stderr  # no redraw: neither diffusers' steps nor transformers' "Loading weights"
    assert "%|" not in r.stderr and "it/s" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    stages = [line for line in lines if " ... done in " in line]
    assert len(stages) == len(STAGES) and all(re.fullmatch(p, s) for p, s in zip(STAGES, stages)), r.stderr
    assert r.stdout.startswith(f"wrote {out} (64x64, seed 3, 8 steps, ") and r.stdout.count("\n") == 1, r.stdout
    assert out.stat().st_size > 0


def test_generate_prints_the_plan_once_and_no_line_twice(generated_on_a_pipe):
    """What a user reads (test_startup_output.py's checks), in the same run."""
    from test_startup_output import lines_of, message, repeated

    _, r = generated_on_a_pipe
    assert r.returncode == 0, r.stderr[-3000:]
    output = r.stdout + r.stderr
    plan_lines = [line for line in lines_of(output) if message(line).startswith("plan: ")]
    assert len(plan_lines) == 1 and "plan: cpu on cpu" in plan_lines[0], output
    assert not repeated(output), repeated(output)
    assert "random test weights" in r.stdout  # said, not hidden
    for noise in ("Warning", "should be kept in float32", "Traceback"):
        assert noise not in output, output


def test_generate_on_a_terminal_draws_the_step_bar(tmp_path):
    out = tmp_path / "cat.png"
    code, stdout, stderr = _on_a_terminal([*GENERATE, "--out", str(out)])
    assert code == 0, stderr[-3000:]
    assert STEP_BAR.search(stderr), stderr  # redrawn in place: 0/8 ... (cleared when done: leave=False)
    stages = [line.rsplit("\r", 1)[-1] for line in stderr.splitlines() if " ... done in " in line]
    assert len(stages) == len(STAGES) and all(re.fullmatch(p, s) for p, s in zip(STAGES, stages)), stderr
    assert stdout.startswith(f"wrote {out} (64x64, seed 3, 8 steps, "), stdout  # stdout as ever


def test_a_library_bar_without_a_switch_is_off_once_quieted():
    """ModelScope's download bars have no switch of their own: tqdm's TQDM_DISABLE turns them off, set before tqdm
    is imported, which no module of the commands does at import."""
    code = ("import sys, zimage_serve.cli, zimage_serve.batch.__main__\n"
            "assert 'tqdm' not in sys.modules, 'tqdm imported before the commands could quiet it'\n"
            "from zimage_serve.progress import quiet_library_bars\n"
            "quiet_library_bars()\n"
            "from modelscope_hub._download import TqdmCallback\n"
            "bar = TqdmCallback('model.safetensors', 1000)\n"
            "bar.update(500)\n"
            "assert bar.progress.disable\n"  # (before end(): a closed bar says disable)
            "bar.end()\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_interactive_means_a_terminal_that_is_not_dumb(monkeypatch):
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as terminal:
            monkeypatch.setenv("TERM", "xterm")
            assert interactive(terminal)
            monkeypatch.setenv("TERM", "dumb")
            assert not interactive(terminal)
        assert not interactive(io.StringIO())
        closed = io.StringIO()
        closed.close()
        assert not interactive(closed)
    finally:
        os.close(master)
        os.close(slave)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_batch_count_off_a_terminal_is_a_line_every_ten_seconds_and_one_at_the_end():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(1000, "batch", start=clock.now, stream=stream, clock=clock)
    assert not progress.bar  # a StringIO is no terminal
    clock.now += 20  # start-up (Ray, the actors' loads): no image yet, no line
    for _ in range(1000):  # then 4 images a second
        clock.now += 0.25
        progress.update()
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue()
    assert lines[:3] == ["batch: 1/1000 images (0%), the first after 20.2s",
                         "batch: 41/1000 images (4%), 4.00 img/s, eta 4m00s",  # the rate since the first image
                         "batch: 81/1000 images (8%), 4.00 img/s, eta 3m50s"]
    assert len(lines) == 250 // 10 + 1  # a line each 10 s while the images came, and the end
    assert lines[-1] == "batch: 1000/1000 images in 4m30s (3.70 img/s)"  # from the start, start-up included


def test_batch_count_on_a_terminal_is_a_bar_with_images_a_second():
    clock, stream = Clock(), io.StringIO()
    progress = Progress(10, "batch", start=clock.now - 30, bar=True, stream=stream, clock=clock)
    for _ in range(10):
        clock.now += 0.5
        progress.update()
    progress.close()
    frames = stream.getvalue()
    # the time taken from the start, 30 s before the first image (then tqdm's own clock, which the test doesn't
    # move); at the end, the mean rate from the start, as the line off a terminal says it: 10 in 35 s
    assert frames.startswith("\r") and frames.endswith("| 10/10 [00:30, 0.29 img/s]\n"), repr(frames)


def test_nothing_done_prints_no_line():
    stream = io.StringIO()
    Progress(5, stream=stream).close()
    assert stream.getvalue() == ""


@pytest.mark.parametrize("seconds, text", [(3.21, "3.2s"), (59.94, "59.9s"), (59.96, "1m00s"), (302, "5m02s"),
                                           (3725, "1h02m")])
def test_durations(seconds, text):
    assert duration(seconds) == text


# The batch job as a user runs it, stderr a pipe (no bar redraws; its last count line): in tests/batch/test_job.py,
# on the killed-then-rerun job's rerun.
