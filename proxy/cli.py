"""`runtap`: the console command (contract §2).

`serve`, `fake-upstream`, `demo` and `key-id` live here; the read commands (`runs`, `run`,
`usage`, `sql`, `export`, `budgets`) belong to `analytics` and are dispatched to it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .errors import ConfigError, RuntapError

EXIT_CONFIG = 2
EXIT_STORE = 3
READ_COMMANDS = frozenset({"runs", "run", "usage", "sql", "export", "budgets"})


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .admin.listener import admin_token
    from .app import make_app
    from .config import ENV_ADMIN_TOKEN, load_settings, parse_hostport
    from .gc_policy import settle_after_startup
    from .malloc import fix_mmap_threshold
    from .relay.runner import run_relay_app

    overrides = {
        "server": {"upstream": args.upstream, "listen": args.listen, "admin_listen": args.admin_listen},
        "recorder": {"db": args.db},
    }
    settings = load_settings(args.config, overrides=overrides)
    token = admin_token(settings)
    from_env = bool(os.environ.get(ENV_ADMIN_TOKEN))
    if settings.server.uvloop:
        try:
            import uvloop

            uvloop.install()
        except ImportError:
            pass
    # Before the writer's first batch: its large buffers then go back to the system when freed.
    fix_mmap_threshold()
    host, port = parse_hostport(settings.server.listen)
    logging.getLogger("runtap").info("forwarding %s:%d → %s", host, port, settings.server.upstream)
    # SIGHUP re-reads the same file with the same flags: [budgets] (and [prices]) apply live.
    app = make_app(settings, admin_token=token, token_file=not from_env,
                   reload=lambda: load_settings(args.config, overrides=overrides))

    async def gc_after_startup(app: web.Application) -> None:
        settle_after_startup()  # after the cleanup_ctx start-up steps: migrations and ledger included

    app.on_startup.append(gc_after_startup)
    try:
        run_relay_app(app, host, port, shutdown_timeout=settings.server.shutdown_grace_s,
                      print_line=lambda line: print(f"runtap: {line}", file=sys.stderr))
    except OSError as e:  # a port in use, an address not on this machine
        raise ConfigError(f"cannot listen: {e}") from e
    return 0


def _fake_upstream(args: argparse.Namespace) -> int:
    from .config import parse_hostport
    from .testing.fake_upstream import run_fake_upstream

    host, port = parse_hostport(args.listen)
    run_fake_upstream(host, port)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.db)


def _key_id(args: argparse.Namespace) -> int:
    from .keys import fingerprint

    raw = sys.stdin.readline().strip()
    if not raw:
        print("runtap key-id: give the API key on stdin", file=sys.stderr)
        return EXIT_CONFIG
    print(fingerprint(raw))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runtap", description="Recording proxy for Assistants runs.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the proxy")
    serve.add_argument("--config", help="TOML config file (default: $RUNTAP_CONFIG)")
    serve.add_argument("--upstream", help="upstream base URL (default https://api.openai.com)")
    serve.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8080)")
    serve.add_argument("--admin-listen", help="HOST:PORT of the admin listener (default 127.0.0.1:9464)")
    serve.add_argument("--db", help="DuckDB file (default ./runtap.duckdb)")
    serve.set_defaults(run=_serve)
    fake = sub.add_parser("fake-upstream", help="the bundled fake Assistants server")
    fake.add_argument("--listen", default="127.0.0.1:8081", help="HOST:PORT (default 127.0.0.1:8081)")
    fake.set_defaults(run=_fake_upstream)
    demo = sub.add_parser("demo", help="fake upstream + proxy + a recorded tool-calling run")
    demo.add_argument("--db", default="./runtap-demo.duckdb", help="DuckDB file for the demo recording")
    demo.set_defaults(run=_demo)
    key_id = sub.add_parser("key-id", help="print the key_id of an API key read from stdin")
    key_id.set_defaults(run=_key_id)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if argv and argv[0] in READ_COMMANDS:
        try:
            from analytics.cli import main as analytics_main
        except ImportError:
            print(f"runtap {argv[0]}: the read commands are not available yet", file=sys.stderr)
            return EXIT_CONFIG
        return analytics_main(argv)
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except RuntapError as e:
        print(f"runtap: {e}", file=sys.stderr)
        from .record.writer import StoreError

        return EXIT_STORE if isinstance(e, StoreError) else EXIT_CONFIG


if __name__ == "__main__":
    sys.exit(main())
