"""The dashboard: static assets served at ``/`` and ``/static/...`` by the admin endpoint.

The page is plain HTML, CSS and ES modules shipped inside the package (no CDN, no build
step); everything it shows comes from the JSON API under ``/api/v1`` and its event stream.
The page and its assets hold no data, so they are served without the endpoint's token:
the page asks for the token and sends it with every API request.

The queue chart (``static/chart.js``) is also inlined into a rehearsal's ``report.html``
(:mod:`mailqueue.rehearsal.html`), so the report and the dashboard draw the same story.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

from aiohttp import web

STATIC = "/static/"
# What each kind of asset is served as: a module script must come as JavaScript.
TYPES = {".html": "text/html", ".css": "text/css", ".js": "text/javascript",
         ".svg": "image/svg+xml", ".png": "image/png"}
# The page loads its own scripts, styles and images and talks to its own origin only.
SECURITY = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
                               "form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # A new release's assets are fetched anew: the browser asks, the answer is small.
    "Cache-Control": "no-cache",
}


def assets() -> Traversable:
    """The directory of the dashboard's files inside the installed package."""
    return resources.files(__name__).joinpath("static")


def asset_names() -> list[str]:
    """The names of every file the dashboard serves (``index.html`` among them)."""
    return sorted(entry.name for entry in assets().iterdir()
                  if entry.is_file() and _type(entry.name) is not None)


def read_asset(name: str) -> str:
    """The text of one asset, e.g. ``chart.js``."""
    return assets().joinpath(name).read_text(encoding="utf-8")


def is_public(path: str) -> bool:
    """Whether ``path`` is the page or one of its assets (served without the token)."""
    return path == "/" or path.startswith(STATIC)


def add_routes(app: web.Application) -> None:
    """Serve the dashboard at ``/`` and its assets at ``/static/{name}`` on ``app``.

    The files are read here, once, so no request reads the disk on the event loop."""
    files = {name: _response_parts(name) for name in asset_names()}

    async def index(request: web.Request) -> web.Response:
        return _respond(files["index.html"])

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == "index.html" or name not in files:
            raise web.HTTPNotFound(text=f"no such asset: {name}")
        return _respond(files[name])

    app.router.add_get("/", index)
    app.router.add_get(STATIC + "{name}", static)


def _response_parts(name: str) -> tuple[bytes, str]:
    content_type = _type(name)
    assert content_type is not None  # asset_names() holds only known kinds
    if content_type.startswith("text/") or content_type.endswith("+xml"):
        content_type += "; charset=utf-8"
    return assets().joinpath(name).read_bytes(), content_type


def _respond(parts: tuple[bytes, str]) -> web.Response:
    body, content_type = parts
    return web.Response(body=body, headers={**SECURITY, "Content-Type": content_type})


def _type(name: str) -> str | None:
    dot = name.rfind(".")
    return TYPES.get(name[dot:]) if dot > 0 else None
