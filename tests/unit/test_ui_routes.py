"""/ui's static files (types, caching, CSP) and the gate in front of the UI's JSON reads, on the
real app through ASGI (lifespan started and stopped by the test)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from modelyard.api import create_app
from modelyard.api.ui_routes import load_assets
from modelyard.config.loader import settings_from_dict
from modelyard.observability.logging import AccessLog

KEY = "sk-admin-unit"


@pytest.fixture
async def client(tmp_path, monkeypatch) -> AsyncIterator[httpx.AsyncClient]:  # noqa: ANN001
    monkeypatch.setenv("MODELYARD_HOME", str(tmp_path))
    app = create_app(settings_from_dict({"models": [], "auth": {"master_key": KEY}}).settings,
                     access_log=AccessLog(enabled=False))
    await app.startup()
    try:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://ui.test") as c:
            yield c
    finally:
        await app.shutdown()


async def test_assets_are_served_with_type_csp_and_etag(client: httpx.AsyncClient) -> None:
    for path, ctype in (("/ui", "text/html"), ("/ui/", "text/html"), ("/ui/app.js", "text/javascript"),
                        ("/ui/app.css", "text/css"), ("/ui/favicon.svg", "image/svg+xml")):
        r = await client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), (path, r.headers)
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-cache"
        again = await client.get(path, headers={"if-none-match": r.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
    r = await client.get("/ui/nope.js")
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"


async def test_the_page_has_no_inline_script_and_nothing_from_another_origin() -> None:
    html = load_assets()["index.html"][0].decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)  # every script has a src
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handler
    for name, (body, _, _) in load_assets().items():
        if name.endswith((".html", ".js", ".css")):
            assert "http://" not in body.decode().replace("http://www.w3.org/2000/svg", "") and "https://" not in body.decode(), name


async def test_the_ui_json_reads_need_the_master_key(client: httpx.AsyncClient) -> None:
    assert (await client.get("/ui/auth.json")).json() == {"master_key": True}
    for path in ("/admin/traffic", "/admin/routing"):
        r = await client.get(path)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        r = await client.get(path, headers={"authorization": "Bearer sk-wrong"})
        assert r.status_code == 401
    ok = {"authorization": f"Bearer {KEY}"}
    r = await client.get("/admin/traffic", headers=ok)
    assert r.status_code == 200 and r.json()["object"] == "list"
    r = await client.get("/admin/routing?limit=5", headers=ok)
    assert r.status_code == 200 and r.json()["data"] == [] and r.json()["capacity"] >= 5
    for bad in ("0", "x", "1001", "-1"):
        r = await client.get(f"/admin/routing?limit={bad}", headers=ok)
        assert r.status_code == 400 and r.json()["error"]["param"] == "limit", bad
