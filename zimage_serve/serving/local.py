"""``zimage-serve serve``: start Ray, deploy the application, serve until Ctrl-C or SIGTERM.

With ``--config FILE`` the whole file is honoured as ``serve run FILE`` honours it (http_options with
request_timeout_s and keep_alive_timeout_s, proxy_location, logging_config, every application); the
command line's --host, --port and --model override it. Our application's ``args`` are validated
before Ray starts (a typo fails in one line), but settled (model 'auto', GPUs) only on the cluster,
where its GPUs are known.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from pathlib import Path

import ray
import yaml
from pydantic import ValidationError
from ray import serve
from ray.serve._private import api as serve_api
from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
from ray.serve.config import gRPCOptions
from ray.serve.schema import ApplicationStatus, ServeDeploySchema

from ..arguments import ray_init_options
from ..core.errors import ZImageError
from ..settings import AppConfig

log = logging.getLogger("zimage_serve")
IMPORT_PATH = "zimage_serve.app:build_app"
DEFAULT_APP = {"name": "zimage", "route_prefix": "/", "import_path": IMPORT_PATH, "args": {}}


def load_serve_config(path: str | None, host: str | None = None, port: int | None = None,
                      model: str | None = None, adapters: dict | None = None,
                      controlnet: str | None = None, jobs_dir: str | None = None,
                      webhook_allow: list[str] | None = None) -> ServeDeploySchema:
    """The Serve config file (or the built-in one) with the command line's overrides, checked: Serve's own
    schema for the file, ours for our application's args."""
    if path is None:
        doc = {"applications": [dict(DEFAULT_APP)]}
    else:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ZImageError(f"can't read --config {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ZImageError(f"--config {path} is not valid YAML: {' '.join(str(e).split())}") from None
    ours = [a for a in doc.get("applications") or [] if isinstance(a, dict) and a.get("import_path") == IMPORT_PATH]
    if not ours:
        raise ZImageError(f"--config {path} has no application with import_path {IMPORT_PATH}")
    for app in ours:
        if model:
            app["args"] = {**(app.get("args") or {}), "model": model}
        if controlnet:
            app["args"] = {**(app.get("args") or {}), "controlnet": controlnet}
        if jobs_dir or webhook_allow:  # --jobs-dir replaces, --webhook-allow adds to, the config's
            args = app.get("args") or {}
            jobs = dict(args.get("jobs") or {})
            if jobs_dir:
                jobs["dir"] = jobs_dir
            if webhook_allow:
                jobs["webhook_allow"] = [*(jobs.get("webhook_allow") or []), *webhook_allow]
            app["args"] = {**args, "jobs": jobs}
        if adapters:  # the command line's --adapter, beside the config's
            args = app.get("args") or {}
            app["args"] = {**args, "adapters": {**(args.get("adapters") or {}), **adapters}}
        try:
            AppConfig.model_validate(app.get("args") or {})
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            raise ZImageError(f"invalid zimage-serve config: {where}: {err['msg']}") from None
    http = dict(doc.get("http_options") or {})
    http["host"] = host or http.get("host") or "127.0.0.1"  # the command line wins over the config file
    http["port"] = port or int(http.get("port") or 8000)
    doc["http_options"] = http
    try:
        return ServeDeploySchema.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        raise ZImageError(f"--config {path}: {'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from None


def _port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ZImageError(f"can't listen on {host}:{port}: {e.strerror}; pass --port") from None


def examples(host: str, port: int) -> str:
    url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}"
    return f"""
zimage-serve is up at {url}  (Ctrl-C to stop; open it in a browser: the playground)

  curl -s {url}/generate -H 'Content-Type: application/json' \\
       -d '{{"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "seed": 1}}' -o image.png

  python -c "import base64, openai; c = openai.OpenAI(base_url='{url}/v1', api_key='unused'); \\
r = c.images.generate(prompt='a lighthouse at dusk', size='512x512', n=1); \\
open('image.png', 'wb').write(base64.b64decode(r.data[0].b64_json))"
"""


def _wait_running(names: list[str], stop: threading.Event) -> bool:
    """Until every application is RUNNING (True), one failed to deploy (False, its message logged) or stop."""
    while not stop.is_set():
        apps = serve.status().applications
        statuses = {n: apps[n].status if n in apps else None for n in names}
        failed = [n for n, s in statuses.items() if s == ApplicationStatus.DEPLOY_FAILED]
        if failed:
            log.error("application %s failed to deploy: %s", failed[0], apps[failed[0]].message)
            return False
        if all(s == ApplicationStatus.RUNNING for s in statuses.values()):
            return True
        stop.wait(0.2)
    return False


def shutdown_serve(client, timeout_s: float = 30.0) -> None:
    """``serve.shutdown()`` (the controller drains and stops every replica, then itself) without its error line.
    serve.shutdown() waits on the controller's graceful_shutdown task until the controller kills itself; that
    task, retried forever like every controller task, then fails, and the core worker tells the driver so:
    "(raylet) Task ServeController.graceful_shutdown failed ... killed by `ray.kill`". Here the task only starts
    the shutdown (``wait=False``) and the controller's name going away marks its end; as long as serve.shutdown()
    waits (30 s), then Ray stops what is left."""
    client.shutdown_cached_handles()
    try:
        ray.get(client._controller.graceful_shutdown.remote(wait=False), timeout=timeout_s)
    except Exception:  # a controller already gone, or one without the argument: Serve's own way
        serve.shutdown()
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
        except ValueError:  # the controller has exited
            return
        time.sleep(0.2)
    log.warning("Serve did not shut down within %.0fs; stopping what is left", timeout_s)


def serve_main(args) -> int:
    config = load_serve_config(args.config, args.host, args.port, args.model, getattr(args, "adapters", None),
                               getattr(args, "controlnet", None), getattr(args, "jobs_dir", None),
                               getattr(args, "webhook_allow", None))
    http = config.http_options
    _port_free(http.host, http.port)
    from ..model.startup import process_age_s  # (no torch) the model layer's start clock: in the command only

    age = process_age_s()  # (None where /proc can't be read)
    started = {"Python and imports": age} if age is not None else {}  # the start's stages, seconds (logged once up)
    t = time.monotonic()
    # every Ray worker (Serve's controller, proxy and replicas) sets up our logging first (arguments.py)
    ray.init(logging_level=logging.WARNING, include_dashboard=False, **ray_init_options())
    started["Ray"] = time.monotonic() - t
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    client = None
    try:
        # what `serve run FILE` does: start Serve with the file's options, then deploy its applications
        t = time.monotonic()
        client = serve_api.serve_start(http_options=http.model_dump(), proxy_location=config.proxy_location,
                                       grpc_options=gRPCOptions(**config.grpc_options.model_dump()),
                                       global_logging_config=config.logging_config)
        started["Serve"] = time.monotonic() - t
        t = time.monotonic()
        client.deploy_apps(config, _blocking=False)
        if _wait_running([a.name for a in config.applications], stop):
            started["the application (its build and its replicas' starts)"] = time.monotonic() - t
            log.info("up %.1fs after the command started: %s", sum(started.values()),
                     ", ".join(f"{stage} {s:.1f}s" for stage, s in started.items()))
            print(examples(http.host, http.port), flush=True)
            stop.wait()
        print("zimage-serve: shutting down (finishing in-flight requests)", flush=True)
    finally:
        try:
            if client is not None:
                shutdown_serve(client)
        finally:
            ray.shutdown()
    return 0
