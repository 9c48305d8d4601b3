"""``kq serve``: the dashboard API over a ledger and the research outputs (issue 20;
live_bridge/api; docs/DASHBOARD.md). Needs ``KQ_API_TOKEN`` (at least 16 characters; never
logged); binds 127.0.0.1 unless ``--allow-remote`` is given with another ``--host``."""

from __future__ import annotations

import os

import typer

from engine.errors import InputError

ENV_TOKEN = "KQ_API_TOKEN"
LOOPBACK = ("127.0.0.1", "::1", "localhost")
DEFAULT_PORT = 8770  # not 8765: the simulator (kq sim serve) listens there


def api_token(environ: dict[str, str] | None = None) -> str:
    """The bearer token from ``KQ_API_TOKEN``; InputError (exit 2, one line) when absent or short."""
    env = os.environ if environ is None else environ
    tok = (env.get(ENV_TOKEN) or "").strip()
    if not tok:
        raise InputError(f"{ENV_TOKEN} is not set: the API needs a bearer token (e.g. secrets.token_urlsafe(32))")
    if len(tok) < 16:
        raise InputError(f"{ENV_TOKEN} is too short: use at least 16 characters")
    return tok


def check_host(host: str, allow_remote: bool) -> bool:
    """True when ``host`` is not loopback (allowed only with ``allow_remote``)."""
    h = host.strip()
    if not h:
        raise InputError("--host is empty")
    if h in LOOPBACK:
        return False
    if not allow_remote:
        raise InputError(f"--host {h} is not loopback: add --allow-remote to serve beyond this machine")
    return True


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        dsn: str = typer.Option(None, "--dsn", help="ledger DSN or SQLite path (default: KQ_LEDGER_DSN, else data/)"),
        config: str = typer.Option(None, "--config", help="daemon config: serve the ledger it writes"),
        runs: str = typer.Option(None, "--runs", help="folder of backtest/walk-forward/sweep/study outputs"),
        host: str = typer.Option("127.0.0.1", "--host", help="bind address (loopback by default)"),
        port: int = typer.Option(DEFAULT_PORT, "--port", min=1, max=65535, help="TCP port"),
        static: str = typer.Option(
            None, "--static", help="dashboard static export (default: KQ_DASHBOARD, else dashboard/out)"
        ),
        allow_remote: bool = typer.Option(False, "--allow-remote", help="allow a non-loopback --host"),
    ) -> None:
        """Serve the dashboard API (and the dashboard's static export) over the ledger: read-only
        but for the operator actions (reactivate, reset-halt, pause, resume), which need the token,
        a reason and the typed confirmation and go through the same path as kq live."""
        from pathlib import Path

        from engine.paths import REPO_ROOT, data_dir

        token = api_token()
        remote = check_host(host, allow_remote)
        schema = None
        if dsn is not None and config is not None:
            raise InputError("give --dsn or --config, not both")
        if dsn is not None and not dsn.strip():
            raise InputError("--dsn is empty")
        if config is not None:
            from live_bridge.config import load_live_config

            cfg = load_live_config(config)
            dsn, schema = cfg.ledger_dsn(), cfg.paths.ledger_schema
        runs_dir = Path(runs) if runs else data_dir() / "runs"
        if runs and not runs_dir.is_dir():
            raise InputError(f"--runs {runs}: no such folder")
        import os

        named = static or os.environ.get("KQ_DASHBOARD") or None  # the container sets KQ_DASHBOARD
        static_dir = Path(named) if named else REPO_ROOT / "dashboard" / "out"
        if named and not static_dir.is_dir():
            raise InputError(f"{'--static' if static else 'KQ_DASHBOARD'} {named}: no such folder")

        import uvicorn

        from live_bridge.api import create_app

        api = create_app(dsn, runs_dir, token, static_dir if static_dir.is_dir() else None, schema=schema)
        if remote:
            typer.echo(
                f"kq serve: warning: listening on {host}, beyond this machine; put TLS in front (the token "
                "travels in a header)",
                err=True,
            )
        where = "[" + host + "]" if ":" in host else host
        typer.echo(f"kq serve: http://{where}:{port}/ (API under /api; token from {ENV_TOKEN})", err=True)
        uvicorn.run(api, host=host, port=port, log_level="info", server_header=False)
