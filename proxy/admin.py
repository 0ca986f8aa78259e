"""The admin listener: health, readiness, and (with a token) the /admin endpoints.

It is a separate aiohttp app on its own listener (default 127.0.0.1:9464), so no path on the
proxy port reaches it. /healthz, /readyz and /metrics need no token; /admin/* needs
`Authorization: Bearer <token>` (contract §7).
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from .config import ENV_ADMIN_TOKEN, Settings, parse_hostport
from .errors import ConfigError, openai_error

if TYPE_CHECKING:
    from .app import Parts

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def admin_token(settings: Settings, env: dict[str, str] | None = None) -> str:
    """$RUNTAP_ADMIN_TOKEN, else a fresh random token written beside the database (mode 0600).

    Refuses a non-loopback admin listener without $RUNTAP_ADMIN_TOKEN: a token on disk is
    only as private as the machine it is on.
    """
    env = dict(os.environ) if env is None else env
    token = env.get(ENV_ADMIN_TOKEN)
    host, _ = parse_hostport(settings.server.admin_listen)
    if not token and host not in _LOOPBACK and not host.startswith("127."):
        raise ConfigError(f"the admin listener on {host} is not loopback: set {ENV_ADMIN_TOKEN}")
    if token:
        return token
    token = secrets.token_urlsafe(32)
    path = token_path(settings)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    return token


def token_path(settings: Settings) -> Path:
    return Path(settings.recorder.db + ".admin-token")


def make_admin_app(parts: Parts, token: str) -> web.Application:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def require_token(request: web.Request, handler: web.Handler) -> web.StreamResponse:
        if request.path.startswith("/admin/"):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return openai_error(401, "admin endpoints need Authorization: Bearer <token>",
                                    "invalid_request_error", "invalid_admin_token")
        return await handler(request)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        writer = parts.writer
        if not writer.healthy:
            return web.json_response({"status": "not ready", "reason": writer.last_error}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application(middlewares=[require_token])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
