"""The operator UI (``/ui``): static assets bundled in the package, and the two JSON reads it
polls besides the existing admin API — ``/admin/traffic`` and ``/admin/routing``.

The assets (``modelyard/ui/``: plain HTML, CSS and JS, nothing from a CDN) are read once when the
routes are registered and served from memory with their content type, an ETag (``no-cache``:
revalidated, answered 304 when unchanged) and a strict Content-Security-Policy: scripts and styles
only from this origin, no inline script, no framing. The pages themselves carry no secret; every
piece of data comes from ``/admin/*``, ``/spend/*`` and ``/key/*``, which the app gates before
routing (the master key as a Bearer header; loopback only without one), so the UI cannot do what
its caller could not do with curl. No cookie is ever read: nothing for a cross-site request to ride on.
"""

from __future__ import annotations

import hashlib
from importlib import resources

from modelyard.api.app import ModelyardApp
from modelyard.api.http import Request
from modelyard.errors import InvalidRequestError, NotFoundError
from modelyard.observability.traffic import TrafficSampler

_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".svg": b"image/svg+xml",
    ".png": b"image/png",
}
CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
_SECURITY = [
    (b"content-security-policy", CSP),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def load_assets() -> dict[str, tuple[bytes, bytes, bytes]]:
    """name → (body, content type, etag) for every bundled file of ``modelyard/ui``."""
    out = {}
    for entry in (resources.files("modelyard") / "ui").iterdir():
        ctype = _TYPES.get("." + entry.name.rpartition(".")[2])
        if ctype is None or not entry.is_file():
            continue
        body = entry.read_bytes()
        out[entry.name] = (body, ctype, b'"' + hashlib.sha256(body).hexdigest()[:32].encode() + b'"')
    return out


def register(app: ModelyardApp) -> None:
    assets = load_assets()
    state: dict[str, TrafficSampler] = {}  # this app's sampler, made on first use (the metrics live in services)

    async def asset(req: Request, name: str) -> None:
        found = assets.get(name)
        if found is None:
            raise NotFoundError(f"no UI asset {name!r}", code="unknown_url")
        body, ctype, etag = found
        headers = [*_SECURITY, (b"cache-control", b"no-cache"), (b"etag", etag)]
        if req.header(b"if-none-match") == etag:
            req.status = 304
            req.started = req.finished = True
            await req.send({"type": "http.response.start", "status": 304,
                            "headers": [(b"x-request-id", req.request_id.encode()), *headers]})
            await req.send({"type": "http.response.body", "body": b""})
            return
        await req.respond(200, body, content_type=ctype, headers=headers)

    async def index(req: Request) -> None:
        req.endpoint = "ui"
        await asset(req, "index.html")

    async def static(req: Request) -> None:
        req.endpoint = "ui"
        await asset(req, req.path[len("/ui/"):])

    async def auth(req: Request) -> None:
        """GET /ui/auth.json (no key needed): does this server need the master key? The page asks
        before anything else, so that a signed-out tab shows the sign-in form without a refused call."""
        req.endpoint = "ui"
        assert app.services is not None
        await req.respond_json(200, {"master_key": app.services.gate.enabled},
                               headers=[*_SECURITY, (b"cache-control", b"no-store")])

    async def traffic(req: Request) -> None:
        """GET /admin/traffic: per model req/s, error rate, p50/p99 latency and TTFT over the last window."""
        req.endpoint = "admin"
        s = app.services
        assert s is not None
        sampler = state.get("traffic")
        if sampler is None:
            sampler = state["traffic"] = TrafficSampler(s.metrics, clock=s.clock)
        await req.respond_json(200, sampler.sample(g.name for g in s.router.groups()))

    async def routing(req: Request) -> None:
        """GET /admin/routing?limit=N: the last auto-routing decisions and cascade hops, newest first."""
        req.endpoint = "admin"
        s = app.services
        assert s is not None
        raw = req.query().get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= 1000:
            raise InvalidRequestError(f"limit: expected an integer 1..1000, got {raw[:32]!r}", param="limit")
        recent = s.recorder.recent
        await req.respond_json(200, {"object": "list", "capacity": recent.capacity, "seen": recent.seen,
                                     "data": recent.items(int(raw))})

    app.route("/ui", "GET", index)
    app.route("/ui/", "GET", index)
    app.route("/ui/auth.json", "GET", auth)
    app.prefix_route("/ui/", "GET", static)
    app.route("/admin/traffic", "GET", traffic)
    app.route("/admin/routing", "GET", routing)
