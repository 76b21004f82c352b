"""``zimage-serve serve``: start Ray, deploy the application, serve until Ctrl-C or SIGTERM."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from pathlib import Path

from .errors import ZImageError

log = logging.getLogger("zimage_serve")
IMPORT_PATH = "zimage_serve.app:build_app"


def load_serve_config(path: str) -> tuple[dict, dict]:
    """(application args, http_options) from a Serve config file whose application is ours."""
    import yaml

    try:
        doc = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise ZImageError(f"can't read --config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ZImageError(f"--config {path} is not valid YAML: {e}") from None
    apps = [a for a in (doc or {}).get("applications", []) if a.get("import_path") == IMPORT_PATH]
    if not apps:
        raise ZImageError(f"--config {path} has no application with import_path {IMPORT_PATH}")
    return dict(apps[0].get("args") or {}), dict((doc or {}).get("http_options") or {})


def _port_free(host: str, port: int) -> None:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise ZImageError(f"can't listen on {host}:{port}: {e.strerror}; pass --port") from None


def examples(host: str, port: int, size: str) -> str:
    url = f"http://{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{port}"
    return f"""
zimage-serve is up at {url}  (Ctrl-C to stop)

  curl -s {url}/generate -H 'Content-Type: application/json' \\
       -d '{{"prompt": "a lighthouse at dusk", "width": 512, "height": 512, "seed": 1}}' -o image.png

  python -c "import base64, openai; c = openai.OpenAI(base_url='{url}/v1', api_key='unused'); \\
r = c.images.generate(prompt='a lighthouse at dusk', size='512x512', n=1); \\
open('image.png', 'wb').write(base64.b64decode(r.data[0].b64_json))"
"""


def serve_main(args) -> int:
    from .app import resolved_config

    app_args, http = load_serve_config(args.config) if args.config else ({}, {})
    if args.model:
        app_args["model"] = args.model
    host = args.host or http.get("host") or "127.0.0.1"  # the command line wins over the config file
    port = args.port or int(http.get("port") or 8000)
    try:
        resolved_config(app_args)  # fail fast, before Ray starts, on a bad config
    except ValueError as e:
        raise ZImageError(str(e).splitlines()[0] + " " + " ".join(str(e).splitlines()[1:3])) from None
    _port_free(host, port)

    import ray
    from ray import serve

    from .app import build_app

    ray.init(logging_level=logging.WARNING, include_dashboard=False)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # after ray.init, which installs its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build_app(app_args), name="zimage", route_prefix="/", blocking=False)
        print(examples(host, port, "512x512"), flush=True)
        stop.wait()
        print("zimage-serve: shutting down (finishing in-flight requests)", flush=True)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
    return 0
