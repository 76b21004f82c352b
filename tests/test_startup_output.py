"""What a user reads when a command starts: what they need, once. Real processes, as a new user runs them;
`zimage-serve serve` is started once, by test_serve_cli.py, `zimage-serve generate` by test_progress.py, and the
batch job by tests/batch/test_job.py (the run it kills, then reruns: the rerun's output), which check their output
the same way with the helpers here."""

import logging
import re
from collections import Counter


ANSI = re.compile(r"\x1b\[[0-9;]*m")
BAR = re.compile(r"\d+%\|")  # a tqdm progress bar's frame
RAY_PREFIX = re.compile(r"^\((?P<who>.*?) pid=\d+(?:, ip=[\d.]+)?\)\s*")  # (MapWorker(...) pid=123) ...
STAMP = re.compile(r"^\[?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+(?: [A-Z] \d+ \d+\])?\s*")  # also C++'s "[... E pid tid]"


def lines_of(output: str) -> list[str]:
    """The output's lines, progress bars left out (a bar redraws its line: frames repeat by design)."""
    out = []
    for raw in re.split(r"[\r\n]+", output):
        line = ANSI.sub("", raw).rstrip()
        if line.strip() and not BAR.search(line):
            out.append(line)
    return out


def message(line: str) -> str:
    """A line without who printed it and when: the same message from two processes, or twice, is a repeat."""
    line = RAY_PREFIX.sub("", line)
    return STAMP.sub("", line).strip()


def repeated(output: str) -> dict[str, int]:
    return {m: n for m, n in Counter(message(line) for line in lines_of(output)).items() if n > 1}


def test_the_helpers_see_repeats_across_processes_and_skip_progress_bars():
    out = ("2026-12-02 17:54:09,626 WARNING zimage_serve: the same\n"
           "\x1b[36m(ServeReplica:zimage:Generator pid=5124)\x1b[0m 2026-12-02 17:56:00,385 WARNING zimage_serve: the same\n"
           "\x1b[36m(MapWorker(MapBatches(GenerateStage)) pid=6585)\x1b[0m plan: cpu\n"
           "generating:  33%|███▎      | 1/3\rgenerating:  33%|███▎      | 1/3\n\n"
           "[2026-12-02 17:53:51,115 E 1533 1533] core_worker.cc:2465: once\n")
    assert repeated(out) == {"WARNING zimage_serve: the same": 2}
    assert lines_of(out)[-1].endswith("core_worker.cc:2465: once")
    assert [message(line) for line in lines_of(out)][2] == "plan: cpu"


def test_well_understood_noise_is_dropped_and_errors_never_are():
    from zimage_serve.arguments import quiet_noise

    quiet_noise()
    quiet_noise()  # idempotent
    seen = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    log = logging.getLogger("diffusers.models.modeling_utils")
    handler = Keep()
    log.addHandler(handler)
    try:
        log.warning("There are modules in AutoencoderKL that should be kept in float32: []. Casting directly ...")
        log.warning("There are modules in AutoencoderKL that should be kept in float32: ['proj']. Casting ...")
        log.error("There are modules in AutoencoderKL that should be kept in float32: []. (as an error)")
    finally:
        log.removeHandler(handler)
    assert len(seen) == 2 and "['proj']" in seen[0] and "as an error" in seen[1]
    assert sum(1 for f in log.filters if type(f).__name__ == "_Quiet") == 1


def test_the_access_log_names_an_unmatched_path_by_itself():
    from zimage_serve.serving.ingress import AccessLogPaths

    paths = AccessLogPaths()

    def access_record(msg, route, request_id):
        record = logging.LogRecord("ray.serve", logging.INFO, __file__, 1, msg, None, None)
        record.serve_access_log, record.route, record.request_id = True, route, request_id
        return record

    class Route:
        path = "/readyz"

    paths._note({"type": "http", "path": "/nope", "headers": [(b"x-request-id", b"r1")]})
    paths._note({"type": "http", "path": "/readyz", "route": Route(), "headers": [(b"x-request-id", b"r2")]})
    paths._note({"type": "http", "path": "/main/nope", "root_path": "/main", "headers": [(b"x-request-id", b"r3")]})
    unknown, early, prefixed = (access_record("GET / 404 1.9ms", "/", "r1"),
                                access_record("GET / 503 5039.8ms", "/", "r2"),  # before the proxy knew the routes
                                access_record("127.0.0.1:5000 GET /main 404 2.0ms", "/main", "r3"))
    assert paths.filter(unknown) and unknown.getMessage() == "GET /nope 404 1.9ms"
    assert paths.filter(early) and early.getMessage() == "GET /readyz 503 5039.8ms"
    assert paths.filter(prefixed) and prefixed.getMessage() == "127.0.0.1:5000 GET /main/nope 404 2.0ms"
    matched = access_record("GET /readyz 200 6.7ms", "/readyz", "r4")  # no note: left as Serve wrote it
    other = logging.LogRecord("ray.serve", logging.INFO, __file__, 1, "Started Serve", None, None)
    assert paths.filter(matched) and matched.getMessage() == "GET /readyz 200 6.7ms"
    assert paths.filter(other) and other.getMessage() == "Started Serve"
    for i in range(AccessLogPaths.LIMIT + 10):  # notes whose line never came are bounded
        paths._note({"type": "http", "path": f"/x{i}", "headers": [(b"x-request-id", str(i).encode())]})
    assert len(paths._paths) == AccessLogPaths.LIMIT
