"""The admin listener: health, readiness, and (with a token) the /admin endpoints.

It is a separate aiohttp app on its own listener (default 127.0.0.1:9464), so no path on the
proxy port reaches it. /healthz, /readyz and /metrics need no token; /admin/* needs
`Authorization: Bearer <token>` (contract §7).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from ..budgets.report import add_budget_routes
from ..config import ENV_ADMIN_TOKEN, Settings, parse_hostport
from ..errors import ConfigError, openai_error
from ..telemetry.metrics import add_metrics_route
from .sql import add_sql_routes

if TYPE_CHECKING:
    from ..app import Parts

def admin_token(settings: Settings, env: Mapping[str, str] | None = None) -> str:
    """$RUNTAP_ADMIN_TOKEN, else a fresh random token (to be written by `write_token_file`).

    Refuses a non-loopback admin listener without $RUNTAP_ADMIN_TOKEN: a token on disk is
    only as private as the machine it is on.
    """
    env = os.environ if env is None else env
    token = env.get(ENV_ADMIN_TOKEN)
    host, _ = parse_hostport(settings.server.admin_listen)
    if not token and not _is_loopback(host):
        raise ConfigError(f"the admin listener on {host} is not loopback: set {ENV_ADMIN_TOKEN}")
    return token or secrets.token_urlsafe(32)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # any other name may resolve anywhere: 127.attacker.example is not loopback


def write_token_file(settings: Settings, token: str) -> Path:
    """Write the token beside the database, mode 0600, where the read commands find it.

    Called only once this process holds the database: a second proxy refused by the lock must
    not replace the running one's token.
    """
    path = token_path(settings)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)  # a file left behind by someone else may have had wider bits
    return path


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
        if not getattr(parts, "started", True):  # a stub Parts in tests has no start-up
            return web.json_response({"status": "not ready", "reason": "starting"}, status=503)
        if not writer.healthy:
            return web.json_response({"status": "not ready", "reason": writer.last_error}, status=503)
        return web.json_response({"status": "ready"})

    app = web.Application(middlewares=[require_token])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    add_sql_routes(app, parts)
    service = getattr(parts, "budgets", None)  # None: a stub Parts without budgets
    add_budget_routes(app, service.budgets if service is not None else None)
    add_metrics_route(app, getattr(parts, "registry", None))  # None: a stub Parts without metrics
    return app
