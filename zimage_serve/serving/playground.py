"""The playground: one static page (``static/``: HTML, JS and CSS, no build step, nothing from a CDN) served by
the ingress at ``/`` and ``/playground``, its assets under ``/playground/``. It speaks the public API like any
client (streamed generations and edits, /v1/models), with the API key, when one is needed, kept in the
browser's session storage. Loading the page needs no key: it holds no data.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from starlette.exceptions import HTTPException

STATIC = Path(__file__).with_name("static")
ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}
PAGE_PATHS = ("/", "/playground")
ASSET_PREFIX = "/playground/"


def is_page_path(path: str) -> bool:
    """Whether ``path`` is the page or one of its assets (open without an API key)."""
    return path in PAGE_PATHS or (path.startswith(ASSET_PREFIX) and path[len(ASSET_PREFIX):] in ASSETS)


def add_playground(app: FastAPI) -> None:
    page = (STATIC / "playground.html").read_text(encoding="utf-8")
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; "
                                          "script-src 'self'; connect-src 'self'; frame-ancestors 'none'"}

    @app.get("/", include_in_schema=False)
    @app.get("/playground", include_in_schema=False)
    async def playground():
        return HTMLResponse(page, headers=headers)

    @app.get(ASSET_PREFIX + "{name}", include_in_schema=False)
    async def asset(name: str):
        if name not in ASSETS:  # (a 404 in the one error shape)
            raise HTTPException(404, f"no asset {name!r}")
        return FileResponse(STATIC / name, media_type=ASSETS[name], headers=headers)
