"""The dashboard's files over real HTTP from the admin endpoint: served without the token
(they hold no data), as the types a browser needs, nothing outside the asset directory."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from mailqueue import web
from tests.helpers import make_config, running

ADMIN = {"host": "127.0.0.1", "port": 0, "token": "s3cret"}


async def fetch(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.get(
            f"http://127.0.0.1:{port}{path}") as response:
        return response.status, dict(response.headers), await response.read()


async def test_the_page_and_its_assets_need_no_token(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, admin=ADMIN)) as app:
        port = app.admin.port
        status, headers, body = await fetch(port, "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert b'<script type="module" src="/static/dashboard.js">' in body
        assert "default-src 'self'" in headers["Content-Security-Policy"]
        assert headers["X-Content-Type-Options"] == "nosniff"
        kinds = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
        for name in set(web.asset_names()) - {"index.html"}:  # that one is the page, at /
            status, headers, body = await fetch(port, f"/static/{name}")
            assert status == 200, name
            suffix = name[name.rfind("."):]
            if suffix in kinds:
                assert headers["Content-Type"].startswith(kinds[suffix]), name
        # The data stays behind the token.
        assert (await fetch(port, "/metrics"))[0] == 401


async def test_only_the_assets_are_served(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, admin=ADMIN)) as app:
        port = app.admin.port
        for path in ("/static/nope.js", "/static/..%2F__init__.py", "/static/%2E%2E%2Fweb",
                     "/static/", "/static/index.html", "/static/.hidden.js"):
            assert (await fetch(port, path))[0] in (401, 404), path
