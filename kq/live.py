"""``kq live``: the hourly paper/live daemon (``run``) and the check of its ledger (``verify``).
docs/LIVE.md, "Daemon", describes both. Errors are one line: a bad config, missing credentials,
no approved model or ``--live`` with a paper config exit 2 before anything is sent; a Kraken halt
stops the daemon with exit 3."""

from __future__ import annotations

import typer

from engine.errors import InputError, IntegrityError


def _when(hour: int | None) -> str:
    from datetime import UTC, datetime

    if hour is None:
        return "none (a new portfolio starts at the newest closed bar)"
    return datetime.fromtimestamp(hour * 3600, UTC).strftime("%Y-%m-%d %H:00 UTC")


def start_lines(daemon, rep) -> list[str]:
    """The StartReport as two lines: what runs, then what recovery found (with the ledger head)."""
    live = daemon.live
    seq, h = daemon.ledger.head()
    first = (
        f"kq live: {live.mode}  exchange {live.exchange.url}  pairs {', '.join(live.universe.pairs)}  "
        f"model {daemon.model.model} (manifest {str(daemon.model.manifest_sha256)[:16]})  ledger {daemon.ledger.dsn}"
    )
    second = (
        f"kq live: last completed bar {_when(rep.last_completed)}; resumed {rep.resumed} order(s), "
        f"{rep.unresolved} unresolved; reconcile {rep.reconcile or 'n/a'}; ledger head seq {seq} hash {h[:16]}"
    )
    if rep.latch:
        second += f"; kill switch asked at the next bar: {rep.latch}"
    return [first, second]


def _ledger_target(config: str | None, dsn: str | None) -> tuple[str | None, str | None]:
    """(DSN, PostgreSQL schema) to verify: ``--dsn``, else the config's ledger, else None (the
    ledger's default: KQ_LEDGER_DSN, else data/ledger.sqlite)."""
    if config and dsn:
        raise InputError("give --config or --dsn, not both")
    if dsn is not None:
        if not dsn.strip():
            raise InputError("--dsn is empty")
        return dsn, None
    if config:
        from live_bridge.config import load_live_config

        cfg = load_live_config(config)
        return cfg.ledger_dsn(), cfg.paths.ledger_schema
    return None, None


def _parse_anchor(anchor: str | None) -> tuple[int, str] | None:
    if anchor is None:
        return None
    seq, sep, h = anchor.partition(":")
    ok = sep and seq.isdigit() and int(seq) > 0 and len(h) == 64 and all(c in "0123456789abcdef" for c in h)
    if not ok:
        raise InputError(f"--anchor {anchor[:90]!r}: use SEQ:HASH as printed by kq live verify (64 hex characters)")
    return int(seq), h


def register(app: typer.Typer) -> None:
    live = typer.Typer(help="Paper/live trading daemon and its ledger.", no_args_is_help=True)

    @live.command("run")
    def run(
        config: str = typer.Option(..., "--config", help="configs/paper.toml or configs/live.toml"),
        allow_live: bool = typer.Option(False, "--live", help="trade real money (needs a config with mode = 'live')"),
        once: bool = typer.Option(False, "--once", help="run the hours that are due, then exit"),
    ) -> None:
        """Run the hourly cycle: recover at start (open orders looked up, reconciliation), then one
        cycle per closed bar. Credentials come from KRAKEN_API_KEY / KRAKEN_API_SECRET; the model is
        the one approved for the config's mode. SIGTERM / Ctrl-C finish the current hour first."""
        from live_bridge.config import load_live_config
        from live_bridge.daemon import Daemon

        cfg = load_live_config(config)
        daemon = Daemon.from_config(cfg, allow_live=allow_live)
        try:
            rep = daemon.start()
            for line in start_lines(daemon, rep):
                typer.echo(line)
            if once:
                for r in daemon.run_once():
                    typer.echo(r.line())
                return
            daemon.run_forever(on_hour=lambda r: typer.echo(r.line()))
            typer.echo("kq live: stopped")
        finally:
            daemon.close()

    @live.command("verify")
    def verify(
        config: str = typer.Option(None, "--config", help="verify the ledger this daemon config writes"),
        dsn: str = typer.Option(None, "--dsn", help="ledger DSN or SQLite path (default: KQ_LEDGER_DSN, else data/)"),
        anchor: str = typer.Option(None, "--anchor", help="SEQ:HASH printed by an earlier verify: must still hold"),
    ) -> None:
        """Walk the ledger's hash chain from its first row; print the head (seq, hash) to keep as an
        anchor elsewhere. Exit 1 naming the first broken row. Nothing is written."""
        from pathlib import Path

        from live_bridge.ledger import Ledger
        from live_bridge.ledger.migrate import redacted, resolve_url

        target, schema = _ledger_target(config, dsn)
        anc = _parse_anchor(anchor)
        url = resolve_url(target)
        if url.get_backend_name() == "sqlite" and not Path(str(url.database)).expanduser().is_file():
            raise InputError(f"no ledger at {redacted(url)}")
        with Ledger.open(target, schema=schema, migrate=False) as led:
            rep = led.verify(anchor=anc)
        if not rep.ok:
            raise IntegrityError(f"{rep.message} (rows 1..{rep.head_seq} verify; last good hash {rep.head_hash})")
        typer.echo(rep.message)
        typer.echo(f"anchor {rep.head_seq}:{rep.head_hash}")

    app.add_typer(live, name="live")
