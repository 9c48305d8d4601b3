"""``kq parity``: the vectorised backtester against the paper daemon over one window, bar by bar
(:mod:`live_bridge.parity`, issue 16).

Exit codes: 0 the two agree (``"mismatches": 0``); 1 a difference (the first differing bar and
field is printed with both values); 2 bad input (one line)."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import typer

from engine.errors import InputError


def _hour(value: str, what: str, *, end: bool = False) -> int:
    from kq.replay import _hour as hour

    return hour(value, what, end=end)


def _operation(text: str) -> Any:
    """``TIME=ACTION`` (e.g. ``2022-06-02T05:00=pause``): written to the daemon's ledger before that
    hour runs, so its close applies it."""
    from live_bridge.parity import OPERATOR_ACTIONS, Operation

    at, sep, action = text.partition("=")
    if not sep or action.strip() not in OPERATOR_ACTIONS:
        raise InputError(f"--operator {text!r}: TIME=ACTION with ACTION one of {', '.join(OPERATOR_ACTIONS)}")
    return Operation(_hour(at.strip(), "--operator"), action.strip(), "kq parity --operator")


def _check_ledger(dsn: str | None) -> None:
    """The paper ledger the outcome goes to: it must exist (never created by a parity run) and open
    now (a PostgreSQL server down, an old schema), not only after the whole run."""
    from engine.errors import one_line
    from live_bridge.ledger import Ledger
    from live_bridge.ledger.migrate import LedgerError
    from live_bridge.paper_record import existing_ledger

    where = existing_ledger(dsn, "to record the outcome in (--paper-ledger DSN, or --no-record)")
    try:
        with Ledger.open(dsn, migrate=False) as led:
            led.head()
    except LedgerError as e:
        raise InputError(f"paper ledger {where}: {one_line(str(e), 300)} (--no-record skips it)") from None


def register(app: typer.Typer) -> None:
    @app.command("parity")
    def parity(
        config: str = typer.Option(
            ..., "--config", help="daemon config (configs/paper.toml): pairs, engine config, cycle"
        ),
        start: str = typer.Option(..., "--start", help="first bar's open, UTC (ISO or unix seconds)"),
        end: str = typer.Option(..., "--end", help="last bar's open, UTC, inclusive (a bare date: its 23:00 bar)"),
        model: str = typer.Option(
            None, "--model", help="a saved model bundle folder (default: the model approved for paper)"
        ),
        bars: str = typer.Option(
            "shared", "--bars", help="'shared' (Kraken's files under ../shared/data/ohlcv) or 'store' (the config's)"
        ),
        init_cash: str = typer.Option("10000", "--init-cash", help="the paper account's quote balance"),
        history: int = typer.Option(1168, "--history", help="hours of bars before --start (>= cycle.history_bars)"),
        operator: list[str] = typer.Option(
            [], "--operator", help="TIME=ACTION applied at that hour's close (reactivate, reset_halt, pause, ...)"
        ),
        restart: list[str] = typer.Option(
            [], "--restart-after", help="TIME: stop the daemon after that hour and start a new one"
        ),
        work: str = typer.Option(None, "--work", help="keep the paper run's store, ledger and state here"),
        record: bool = typer.Option(
            True, "--record/--no-record", help="append the outcome to the paper ledger (parity_passed/parity_failed)"
        ),
        paper_ledger: str = typer.Option(
            None, "--paper-ledger", help="the paper ledger to record in (default: the config's paths.ledger)"
        ),
        as_json: bool = typer.Option(False, "--json", help="print the summary as JSON"),
        quiet: bool = typer.Option(False, "--quiet", help="no progress bar"),
    ) -> int:
        """Run the backtester over the window and the paper daemon against the simulator replaying
        it hour by hour (same bars, model, config and operator actions); compare inputs, decisions,
        orders, fills, cash, positions and equity bar by bar. Exit 0 only if they agree. The outcome
        is appended to the config's paper ledger (``parity_failed`` refuses ``kq models promote --env
        live`` for that model's digest); that ledger must exist (checked before anything runs)."""
        from engine.config import load_config
        from engine.store.panel import HOUR
        from live_bridge.config import load_live_config
        from live_bridge.parity import hour_label, run_parity, shared_panel, store_panel

        h0, h1 = _hour(start, "--start"), _hour(end, "--end", end=True)
        if h1 < h0:
            raise InputError(f"--end {end!r} is before --start {start!r}")
        try:
            cash = Decimal(init_cash)
        except InvalidOperation:
            raise InputError(f"--init-cash {init_cash!r} is not a number") from None
        if not cash.is_finite() or cash <= 0:
            raise InputError(f"--init-cash {init_cash!r} must be a positive amount")
        live = load_live_config(config)
        if history < int(live.cycle.history_bars):
            raise InputError(f"--history {history} is below cycle.history_bars {live.cycle.history_bars}")
        ops = [_operation(x) for x in operator]
        restarts = [_hour(x, "--restart-after") for x in restart]
        pairs = list(live.universe.pairs)
        lo, hi = (h0 - history) * HOUR, (h1 + 1) * HOUR
        if bars == "shared":
            panel = shared_panel(pairs, lo, hi)
        elif bars == "store":
            panel = store_panel(live.paths.store, pairs, lo, hi)
        else:
            raise InputError(f"--bars {bars!r}: 'shared' or 'store'")
        if int(panel.ts[-1]) < hi or int(panel.ts[0]) > lo:
            raise InputError(
                f"the bars cover {hour_label(int(panel.ts[0]) // HOUR)} .. {hour_label(int(panel.ts[-1]) // HOUR)}; "
                f"parity needs {hour_label(lo // HOUR)} .. {hour_label(hi // HOUR)} (--history hours before "
                "--start, and the bar after --end for the last orders' fills)"
            )
        if model and not (Path(model) / "manifest.json").is_file():
            raise InputError(f"--model {model}: no saved bundle (manifest.json) there")
        ledger_dsn = (paper_ledger or live.ledger_dsn()) if record else None
        if record:
            _check_ledger(ledger_dsn)
        if model:
            from live_bridge.simulator.testing import UnapprovedModel

            m: Any = UnapprovedModel(Path(model), model_id=Path(model).name)
        else:
            from live_bridge.models import load_approved

            m = load_approved("paper", load_config(live.engine_path()))
        wdir = Path(work) if work else None
        if wdir is not None and wdir.exists() and any(wdir.iterdir()):
            raise InputError(f"--work {wdir} is not empty (the paper run needs a fresh ledger)")
        kw = dict(model=m, panel=panel, init_cash=cash, operations=ops, restart_after=restarts, work=wdir)
        if quiet or as_json:
            rep = run_parity(live, h0, h1, **kw)  # type: ignore[arg-type]
        else:
            from kq.progress import progress_bar

            with progress_bar("paper hours") as prog:
                task = prog.add_task("", total=h1 - h0 + 1)
                rep = run_parity(live, h0, h1, progress=lambda k: prog.advance(task, k), **kw)  # type: ignore[arg-type]
        s = rep.summary()
        if record:
            from live_bridge.paper_record import record_parity

            entry = record_parity(ledger_dsn, s)
            s["recorded"] = {"code": entry.code, "seq": entry.seq}
        if as_json:
            typer.echo(json.dumps(s, indent=2))
        else:
            c = s["compared"]
            fin = s["final"] or {
                "backtest": {"cash": "n/a", "equity": "n/a"},
                "paper": {"cash": "n/a", "equity": "n/a"},
            }
            rows = [
                ("window", f"{s['window']['start']} .. {s['window']['end']} ({s['window']['hours']} hours)"),
                ("pairs", ", ".join(s["pairs"])),
                ("model", f"{s['model']} ({s['manifest_sha256'][:16]})"),
                ("fills", f"backtest {c['fills']['backtest']}, paper {c['fills']['paper']}"),
                ("decisions", str(c["decisions"])),
                ("final cash", f"backtest {fin['backtest']['cash']}, paper {fin['paper']['cash']}"),
                ("final equity", f"backtest {fin['backtest']['equity']}, paper {fin['paper']['equity']}"),
                ("fill model", s["fill_model"]),
                *[("adjusted", a) for a in s["adjustments"]],
                ("restarts", ", ".join(s["restarts"]) or "none"),
                ("time", ", ".join(f"{k} {v:.1f} s" for k, v in s["wall_s"].items())),
                ("mismatches", str(s["mismatches"])),
                ("recorded", f"{s['recorded']['code']} (paper ledger seq {s['recorded']['seq']})" if record else "no"),
            ]
            w = max(len(k) for k, _ in rows)
            for k, v in rows:
                typer.echo(f"{k:<{w}}  {v}")
            for mm in rep.mismatches[:10]:
                typer.echo(f"  {mm.line()}")
        return 0 if rep.ok else 1
