"""``kq doctor``: every check the paper/live daemon's start-up depends on (live_bridge/doctor.py),
as a table of check, status, detail and fix; exit 1 when any check fails (blocking). Read-only:
nothing is sent that trades and no state is changed. docs/LIVE.md, "kq doctor"."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor_cmd(
        config: str = typer.Option("configs/paper.toml", "--config", help="the daemon config to check"),
        as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
    ) -> int:
        """Is this machine ready to run `kq live run --config FILE`? Install, config, market store
        (freshness, warm-up, integrity), the approved model, the ledger, the exchange (reachable,
        clock skew, system status), the API key (a read-only private query) and the state folder.
        Exit 1 on any blocking problem."""
        import json
        import logging

        from live_bridge.doctor import blocking, doctor

        # the adapter logs each unanswered call as a warning; here the table says it, once
        logging.getLogger("live_bridge.kraken").setLevel(logging.ERROR)
        live, checks = doctor(config)
        bad = blocking(checks)
        if as_json:
            doc = {
                "config": config,
                "mode": live.mode if live is not None else None,
                "ok": not bad,
                "checks": [c.to_json() for c in checks],
            }
            typer.echo(json.dumps(doc, sort_keys=True, allow_nan=False))
        else:
            _print(checks, bad)
        return 1 if bad else 0


def _print(checks, bad: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colour = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    t = Table(title="kq doctor", show_lines=False)
    for col in ("check", "status", "detail", "fix"):
        t.add_column(col, overflow="fold")
    for c in checks:
        t.add_row(escape(c.name), f"[{colour[c.status]}]{c.status}[/]", escape(c.detail), escape(c.fix))
    con = Console(width=max(Console().width, 140))
    con.print(t)
    n = {s: sum(1 for c in checks if c.status == s) for s in ("ok", "warn", "fail")}
    verdict = "blocking problems: fix the failed checks first" if bad else "ready"
    con.print(f"{n['ok']} ok, {n['warn']} warn, {n['fail']} fail: {verdict}")
