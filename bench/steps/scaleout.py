"""Scale-out: where a generator replica's start goes (startup_profile), and the production app's replica
replacement, scale from zero and start to /readyz (scaleout)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ..common import ROOT, checkpoint, command_stages_once_up, http_call, out_dir, save
from .coldstart import NOT_OUR_DEPENDENCIES, _with_bytecode

HIDE = f"import sys; sys.modules.update({{n: None for n in {NOT_OUR_DEPENDENCIES!r}}}); "
SERVED_IMPORTS = ("import torch; import zimage_serve.serving.generator, zimage_serve.model.engine; "
                  "from diffusers import ZImagePipeline, ZImageTransformer2DModel, AutoencoderKL; "
                  "import transformers.models.qwen3.modeling_qwen3")
READ_VARIANTS = ("imports_alone", "safetensors", "reader8", "reader16", "reader8_with_imports")


REMEMBERED = "from zimage_serve.model.startup import remember_installed_packages; remember_installed_packages(); "


def _importtime(remembered: bool = False) -> dict:
    """``python -X importtime`` of what a replica imports (bytecode kept, only our dependencies): the modules that
    take longest, by their own time and with what they import. ``remembered``: as a replica imports them, the
    installed packages' import names read from the node's cache (model/package_map.py)."""
    env = _with_bytecode(os.environ)
    for _ in range(2):  # the first writes the bytecode (and the node's package map)
        r = subprocess.run([sys.executable, "-X", "importtime", "-c", HIDE + (REMEMBERED if remembered else "")
                            + SERVED_IMPORTS], env=env, capture_output=True, text=True)
    rows = []
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m[1]) / 1e6, int(m[2]) / 1e6, len(m[3]) // 2, m[4]))
    top = lambda key, n: [[round(s, 3), round(c, 3), d, name] for s, c, d, name in sorted(rows, key=key, reverse=True)[:n]]
    return {"total_s": round(sum(r[0] for r in rows), 2), "by_self": top(lambda r: r[0], 40),
            "by_cumulative_depth_le_3": [x for x in top(lambda r: r[1], 400) if x[2] <= 3][:60]}


def startup_profile():
    """Where a replica's start goes: imports by module, and reading the transformer's weights to the GPU (as
    safetensors does, and with model/prefetch.py's threads, alone and beside the imports), each in a fresh process."""
    results = {"importtime": _importtime(), "importtime_remembered": _importtime(remembered=True)}
    save("startup_profile", **results)
    for variant in READ_VARIANTS:
        env = dict(_with_bytecode(os.environ), BENCH_READ=variant)
        r = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "_read_weights"], env=env,
                           capture_output=True, text=True)
        line = [x for x in r.stdout.splitlines() if x.startswith("READ")]
        results[variant] = json.loads(line[0][4:]) if line else {"error": r.stderr[-800:]}
        save("startup_profile", **results)


def read_weights():
    """(internal) One way of reading the transformer to the GPU, in the process startup_profile starts."""
    sys.modules.update({name: None for name in NOT_OUR_DEPENDENCIES})
    t0 = time.perf_counter()
    import torch

    from zimage_serve.model.prefetch import WeightReader
    from zimage_serve.model.sources import weight_files

    variant = os.environ["BENCH_READ"]
    out = {"import_torch_s": time.perf_counter() - t0}
    torch.cuda.init()
    torch.zeros(1, device="cuda")
    out["cuda_init_s"] = time.perf_counter() - t0
    files = weight_files(checkpoint() / "transformer")

    def imports():
        t = time.perf_counter()
        import diffusers  # noqa: F401
        from diffusers import AutoencoderKL, ZImagePipeline, ZImageTransformer2DModel  # noqa: F401
        import transformers.models.qwen3.modeling_qwen3  # noqa: F401
        out["imports_s"] = time.perf_counter() - t

    t = time.perf_counter()
    if variant == "imports_alone":
        imports()
    elif variant == "safetensors":
        from safetensors.torch import load_file

        tensors = {}
        for f in files:
            tensors.update({k: v.to(torch.bfloat16) for k, v in load_file(f, device="cuda:0").items()})
        torch.cuda.synchronize()
        out["bytes"] = sum(f.stat().st_size for f in files)
    else:
        reader = WeightReader(files, "cuda", torch.bfloat16, threads=16 if variant == "reader16" else 8)
        if variant.endswith("with_imports"):
            imports()
        tensors = reader.result()
        torch.cuda.synchronize()
        out["bytes"] = reader.bytes
    out["seconds"] = time.perf_counter() - t
    out["gib_per_s"] = round(out.get("bytes", 0) / 2**30 / out["seconds"], 2)
    out["allocated_gib"] = round(torch.cuda.memory_allocated() / 2**30, 2)
    print("READ" + json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in out.items()}), flush=True)


# ---- the production app: start, replica replaced, scale from zero -------------------------------------

URL = "http://127.0.0.1:8000"


class _App:
    """``zimage-serve serve --config FILE`` in a process of its own, as a user starts it; ``ready_s``: seconds from
    the command to /readyz 200."""

    def __init__(self, config: Path, env: dict):
        self.log = config.with_suffix(".log")  # Ray forwards every worker's output: a pipe left unread would fill
        with open(self.log, "w") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "zimage_serve.cli", "serve", "--config",
                                             str(config), "--port", "8000"], env=env, stdout=log, stderr=subprocess.STDOUT)
        t0 = time.monotonic()
        self.ready_s = None
        while time.monotonic() - t0 < 480 and self.process.poll() is None:
            if _get("/readyz")[0] == 200:
                self.ready_s = time.monotonic() - t0
                return
            time.sleep(0.1)
        self.close()
        raise RuntimeError(f"the app was not ready within 480 s: {self.log.read_text()[-1500:]}")

    def readyz(self) -> dict:
        return _get("/readyz")[1]

    def close(self) -> float | None:
        """Ctrl-C, as a user stops it; the seconds to its exit (None: it had exited, or was killed after 90 s)."""
        import signal

        if self.process.poll() is not None:
            return None
        t0 = time.monotonic()
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return None
        return round(time.monotonic() - t0, 2)


def _get(path: str) -> tuple[int, dict]:
    """(status, the JSON body when 200) of a GET; 0 while nothing answers."""
    try:
        status, _, body = http_call("GET", URL + path, timeout=10)
        return status, json.loads(body) if status == 200 else {}
    except (OSError, ValueError):
        return 0, {}


def _generate(prompt: str) -> tuple[int, float]:
    """(status, seconds) of one POST /generate (the config's default size); 0 when the connection failed."""
    t = time.monotonic()
    try:
        status = http_call("POST", URL + "/generate", {"prompt": prompt, "seed": 1}, timeout=600)[0]
    except OSError:
        status = 0
    return status, time.monotonic() - t


def _config(tmp: Path, min_replicas: int | None = None) -> Path:
    """serve_config.yaml as shipped, on the random-weight checkpoint, without the jobs API (the GPU machine has no
    pyarrow); BENCH_SCALEOUT_SMOKE=1 shrinks its resources and sizes to run on a CPU-only machine."""
    import yaml

    doc = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    args = doc["applications"][0]["args"]
    args.update(model=str(checkpoint()), jobs={"enabled": False})
    if min_replicas is not None:
        args["generator"]["autoscaling"].update(min_replicas=min_replicas, downscale_to_zero_delay_s=600)
    if os.environ.get("BENCH_SCALEOUT_SMOKE") == "1":
        args.update(default_size="64x64")
        args["encoder"].update(num_cpus=0.5, threads=1)
        args["generator"].update(num_gpus=0, num_cpus=0.5, plan_size="64x64", max_batch_size=2)
    path = tmp / f"serve_config{'' if min_replicas is None else f'_min{min_replicas}'}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _evict_page_cache(root: Path) -> int:
    """Drop ``root``'s files from the page cache (posix_fadvise DONTNEED: no privileges needed), so that the next
    read comes from the disk as on a node that never read them; returns the bytes dropped."""
    dropped = 0
    for f in root.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # (written long before: no dirty pages left)
                dropped += f.stat().st_size
            except OSError:
                pass
            finally:
                os.close(fd)
    return dropped


def _hide_what_is_not_ours(tmp: Path) -> str:
    """A sitecustomize that makes the machine's packages outside our dependencies unimportable in every process of
    the app (Ray's workers included), as in our image (coldstart.NOT_OUR_DEPENDENCIES); returns the directory."""
    site = tmp / "site_hide"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(HIDE + "\n")
    return str(site)


def _replaced_under_load(app: _App) -> dict:
    """SIGKILL the generator replica while one client sends requests, one after another: seconds until Serve's
    replacement reports ready (/readyz, a new pid) and until the first image after the kill; requests lost."""
    import signal
    import threading

    old = app.readyz()
    done, stop = [], threading.Event()  # (end time, status)

    def client():
        i = 0
        while not stop.is_set():
            status, _ = _generate(f"{PROMPT_LOAD} {i} {time.time()}")
            done.append((time.monotonic(), status))
            i += 1

    thread = threading.Thread(target=client)
    thread.start()
    while len(done) < 3:
        time.sleep(0.05)
    before_kill = app.readyz()  # (the old replica's compiles after its warm-up, its requests served)
    workers = _ray_workers()
    t_kill = time.monotonic()
    os.kill(old["pid"], signal.SIGKILL)
    ready_s = None
    while time.monotonic() - t_kill < 300:
        info = app.readyz()
        if info.get("ready") and info.get("pid") not in (None, old["pid"]):
            ready_s = time.monotonic() - t_kill
            break
        time.sleep(0.05)
    after = len(done)
    while len(done) < after + 3 and time.monotonic() - t_kill < 300:
        time.sleep(0.05)
    stop.set()
    thread.join()
    first = [t for t, s in done if t > t_kill and s == 200]
    new = app.readyz()
    return {"replica_ready_s": None if ready_s is None else round(ready_s, 2),
            "first_image_after_kill_s": round(first[0] - t_kill, 2) if first else None,
            "ray_workers_before_kill": workers,
            "requests": len(done), "lost": sum(s != 200 for _, s in done), "killed_pid": old["pid"],
            "new_pid": new.get("pid"), "new_replica_start": new.get("start"),
            # torch.compile graphs made after the warm-up (requests that waited for a compile): 0 expected
            "compiles_since_ready": [before_kill.get("compiles_since_ready"), new.get("compiles_since_ready")]}


def _ray_workers() -> dict:
    """This machine's Ray worker processes: how many, how many have torch loaded (a preload's or a replica's), and
    their resident memory (MiB), all and those with torch."""
    count = with_torch = rss = rss_torch = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if not cmdline.startswith(b"ray::"):  # (Ray names its workers' processes so: ray::IDLE, ray::ServeReplica...)
                continue
            torch_loaded = "libtorch" in Path(f"/proc/{pid}/maps").read_text()
            kib = next(int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
        except (OSError, StopIteration, ValueError):
            continue
        count, rss = count + 1, rss + kib
        if torch_loaded:
            with_torch, rss_torch = with_torch + 1, rss_torch + kib
    return {"workers": count, "with_torch": with_torch, "rss_mib": rss // 1024, "rss_with_torch_mib": rss_torch // 1024}


def _from_zero(app: _App) -> dict:
    """With min_replicas 0: /readyz says scaled to zero (no replica), then the first request's seconds."""
    info = app.readyz()
    time.sleep(3)  # nothing may have started a replica meanwhile
    still = app.readyz()
    workers = _ray_workers()
    status, seconds = _generate(f"{PROMPT_LOAD} from zero {time.time()}")
    return {"first_request_from_zero_s": round(seconds, 2), "status": status, "ray_workers_before": workers,
            "replicas_before": [info.get("replicas"), still.get("replicas")],
            "started_replica": (after := app.readyz()).get("start"),
            "compiles_since_ready": after.get("compiles_since_ready")}


PROMPT_LOAD = "a lighthouse on a cliff at dusk, waves, volumetric light"


def _environment(tmp: Path) -> dict:
    """The app's environment: the caches under ZIMAGE_CACHE_DIR/scaleout (ZIMAGE_WEIGHTS_CACHE=1), bytecode kept and
    only our dependencies importable, as in our image."""
    env = _with_bytecode(os.environ)
    paths = [_hide_what_is_not_ours(tmp)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env.update(ZIMAGE_CACHE_DIR=str(_cache()), ZIMAGE_WEIGHTS_CACHE="1", PYTHONPATH=os.pathsep.join(paths))
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    return env


def _cache() -> Path:
    return Path(os.environ.get("ZIMAGE_CACHE_DIR", "/tmp/zimage-cache")) / "scaleout"


def _run_app(step: str, results: dict, min_replicas: int | None = None, then=None, env: dict | None = None) -> None:
    """Start the app (serve_config.yaml, or with ``min_replicas``; ``env`` added to its environment), record its
    start, run ``then(app)`` (its results merged), stop it; ``step``'s results are saved after each part."""
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="scaleout-"))
    app = _App(_config(tmp, min_replicas), {**_environment(tmp), **(env or {})})
    try:
        results.update(app_ready_s=round(app.ready_s, 2), start=app.readyz().get("start"))
        save(step, **results)
        command_start = command_stages_once_up(app.log)  # the command's own account of its start
        if then is not None:
            results.update(then(app))
            save(step, **results)
    finally:
        stop_s = app.close()
        _keep_log(app.log, step)
    results.update(command_start=command_start, stop_s=stop_s)  # (and its stop after Ctrl-C)
    save(step, **results)


def _keep_log(log: Path, step: str) -> None:
    """The app's output (Ray forwards the replicas') to $OUT/<step>.app.log, its last 4 MB: what the start did."""
    data = log.read_bytes()
    (out_dir() / f"{step}.app.log").write_bytes(data[-4_000_000:])


def scaleout_cold():
    """The production app (serve_config.yaml, full-size random weights) from `zimage-serve serve` to /readyz 200 on a
    cold node: empty compile and weights caches (the start writes the bf16 copy) and the checkpoint's files dropped
    from the page cache. Run before scaleout, which starts on what this one left."""
    import shutil

    shutil.rmtree(_cache(), ignore_errors=True)
    _run_app("scaleout_cold", {"page_cache_dropped_bytes": _evict_page_cache(checkpoint())})


def scaleout():
    """The production app started on a warm node (what scaleout_cold left), then its generator replica SIGKILLed
    under light load: seconds until the replacement serves; nothing may be lost."""
    _run_app("scaleout", {"caches_warm": (_cache() / "weights").is_dir()}, then=_replaced_under_load)


def scaleout_no_preload():
    """scaleout with ZIMAGE_PRELOAD=0 (Ray's idle workers import nothing ahead: model/preload.py), the baseline of
    the preload in the same run."""
    _run_app("scaleout_no_preload", {"caches_warm": (_cache() / "weights").is_dir(), "preload": "off"},
             then=_replaced_under_load, env={"ZIMAGE_PRELOAD": "0"})


def scaleout_zero():
    """The app with min_replicas 0: ready with no generator, then the first request's seconds (a replica started
    for it on a warm node)."""
    _run_app("scaleout_zero", {}, min_replicas=0, then=_from_zero)


def reader_check():
    """model/prefetch.py's CUDA reader against diffusers on the full-size checkpoint: the transformer read by
    WeightReader (fp32 files converted to bf16 on the GPU) and assembled, then ``from_pretrained`` (bf16, on the GPU);
    every parameter and buffer compared bit for bit, with each way's seconds."""
    import torch
    from diffusers import ZImageTransformer2DModel

    from zimage_serve.model.prefetch import WeightReader, assemble
    from zimage_serve.model.sources import weight_files

    directory = checkpoint() / "transformer"
    torch.zeros(1, device="cuda")
    t = time.perf_counter()
    reader = WeightReader(weight_files(directory), "cuda", torch.bfloat16)
    ours = assemble(ZImageTransformer2DModel, ZImageTransformer2DModel.load_config(directory), reader.result())
    torch.cuda.synchronize()
    results = {"reader_s": round(time.perf_counter() - t, 2), "reader_threads_s": round(reader.seconds, 2),
               "bytes": reader.bytes}
    t = time.perf_counter()
    stock = ZImageTransformer2DModel.from_pretrained(directory, dtype=torch.bfloat16, device_map={"": "cuda"},
                                                     use_safetensors=True)
    torch.cuda.synchronize()
    results["from_pretrained_s"] = round(time.perf_counter() - t, 2)
    a, b = ours.state_dict(), stock.state_dict()
    differ = [k for k in b if k not in a or a[k].dtype != b[k].dtype or a[k].device != b[k].device
              or not torch.equal(a[k], b[k])]
    results.update(tensors=len(b), extra=sorted(set(a) - set(b))[:5], differ=len(differ), differ_names=differ[:10],
                   devices=sorted({str(v.device) for v in a.values()}), dtypes=sorted({str(v.dtype) for v in a.values()}),
                   equal=not differ and set(a) == set(b))
    save("reader_check", **results)


_CUDA_AFTER = """
import json, os, sys
if sys.argv[1] == "preload":  # what a Ray worker's hook does (model/preload.py), the whole of it
    from zimage_serve.model import preload
    assert preload.start(), "the preload did not start"
    waited = preload.wait()
elif sys.argv[1] == "cuda_first":  # the control: CUDA initialised before Ray would place the replica
    import torch
    torch._C._cuda_getDeviceCount()
    waited = {}
else:
    waited = {}
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # what Ray sets as it places a replica (here: no GPU)
import torch
print("RESULT " + json.dumps({"devices_seen": torch._C._cuda_getDeviceCount(), **waited}))
"""


def preload_check():
    """That a preload initialises no CUDA (Ray sets CUDA_VISIBLE_DEVICES only when it places a replica, and CUDA
    reads it once): in a fresh process each, the preload, then CUDA_VISIBLE_DEVICES set to none and the devices
    CUDA sees counted (0: nothing read it before); with no preload, and with CUDA initialised first (the control:
    the count it gives when something did)."""
    out = {}
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    for case in ("preload", "none", "cuda_first"):
        r = subprocess.run([sys.executable, "-c", _CUDA_AFTER, case], capture_output=True, text=True, timeout=300,
                           env={**env, "ZIMAGE_PRELOAD": "1"})
        lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
        out[case] = json.loads(lines[-1][7:]) if lines else {"error": (r.stderr or r.stdout)[-600:]}
    save("preload_check", **out)
    print("PRELOAD_CHECK", json.dumps(out), flush=True)
