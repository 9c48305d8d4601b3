"""``kq backtest``: run the risk state machine over stored bars and write trades, equity, events,
metrics and an HTML report (files read and written by :mod:`engine.backtest.io`)."""

from __future__ import annotations

import typer

from engine.errors import InputError


def _common_span(names, stored, t0, t1, venue):
    """Default the range to the hours every selected pair has data for.

    The risk state machine treats a missing bar of a pair it has seen as a data-integrity failure
    (kill switch), so a range past one pair's last bar would keep tripping it. An explicit range
    is kept as asked, with a warning on stderr naming the pairs whose data does not cover it.
    """
    from datetime import UTC, datetime

    from engine.pairs import normalize_pair

    infos = []
    for n in names:
        p = normalize_pair(n)
        if p not in stored:
            raise InputError(f"no bars stored for {p} on venue {venue!r} (see kq data check)")
        infos.append(stored[p])
    first = max(i.first_ts for i in infos)
    last = min(i.last_ts for i in infos)
    if first > last:

        def utc(ts: int) -> str:
            return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")

        raise InputError(
            "the selected pairs have no hours in common: "
            + ", ".join(f"{i.pair} {utc(i.first_ts)}..{utc(i.last_ts)}" for i in infos)
        )
    short = [i.pair for i in infos if (t0 is not None and t0 < i.first_ts) or (t1 is not None and t1 > i.last_ts)]
    if short:
        typer.echo(
            f"kq: warning: no data for {', '.join(short)} over part of the range; missing bars of a "
            "pair already seen latch the data-integrity kill switch",
            err=True,
        )
    return (first if t0 is None else t0), (last if t1 is None else t1)


def register(app: typer.Typer) -> None:
    @app.command("backtest")
    def backtest(
        out: str = typer.Option(
            ..., "--out", help="output folder (trades/equity/events .parquet, metrics.json, report.html)"
        ),
        config: str = typer.Option(None, "--config", help="config TOML (default configs/default.toml)"),
        pairs: str = typer.Option(
            None, "--pairs", help="comma-separated pairs (default: the signals' pairs, else all of the venue)"
        ),
        venue: str = typer.Option(None, "--venue", help="venue (default: the config's data.venue)"),
        signals: str = typer.Option(
            None, "--signals", help="Parquet with ts, pair, p_up, exp_return (default: built-in MA demo signal)"
        ),
        start: str = typer.Option(None, "--start", help="first bar: unix seconds or ISO date/datetime (UTC)"),
        end: str = typer.Option(None, "--end", help="last bar, inclusive"),
        store: str = typer.Option(None, "--store", help="market store file (default $KQ_STORE or data/market.duckdb)"),
    ) -> None:
        """Backtest signals through the risk state machine and the shared fill model."""
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        from engine.backtest.demo import ma_signal
        from engine.backtest.io import read_signals, signals_to_arrays, write_outputs
        from engine.backtest.runner import make_inputs, run_backtest
        from engine.config import load_config
        from engine.paths import check_out_dir
        from engine.risk.params import params_from_config
        from engine.store.market import MarketStore
        from kq.data import parse_pairs, parse_time

        cfg = load_config(config)
        check_out_dir(out)  # before the run, so a bad --out never wastes one
        v = venue or cfg.data.venue
        t0, t1 = parse_time(start), parse_time(end, end=True)
        if t0 is not None and t1 is not None and t1 < t0:
            raise InputError("--end is before --start")
        names = parse_pairs(pairs)
        sig = read_signals(signals, tuple(names) if names else None) if signals else None
        if names is None and sig is not None:
            names = sorted(set(sig["pair"]))
        with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()) as prog:
            task = prog.add_task("loading bars", total=4)
            with MarketStore(store or cfg.data.store, read_only=True) as s:
                stored = {i.pair: i for i in s.list_pairs(v)}
                if names is None:
                    names = sorted(stored)
                    if not names:
                        raise InputError(f"no pairs stored for venue {v!r}")
                t0, t1 = _common_span(names, stored, t0, t1, v)
                panel = s.load_panel(names, v, t0, t1)
            if panel.n_bars < 2:
                raise InputError("fewer than 2 bars in the selected range")
            prog.update(
                task, advance=1, description=f"signals and inputs ({panel.n_bars:,} bars x {panel.n_pairs} pairs)"
            )
            if sig is not None:
                p_up, er = signals_to_arrays(sig, panel.ts, panel.pairs)
                source = f"signals file {signals}"
            else:
                p_up, er = ma_signal(panel.close, 12, 48, 50.0)
                source = "built-in demo signal (SMA 12/48 crossover; not a model)"
            tradable = None
            if cfg.backtest.apply_universe:
                from engine.universe import universe_mask

                tradable = universe_mask(panel)
            inp = make_inputs(panel, p_up, er, cfg, tradable=tradable)
            prog.update(task, advance=1, description="running the risk state machine")
            res = run_backtest(inp, params_from_config(cfg))
            prog.update(task, advance=1, description=f"writing {out}")
            meta = {
                "venue": panel.venue,
                "pairs": ",".join(panel.pairs),
                "bars": panel.n_bars,
                "start": int(panel.ts[0]),
                "end": int(panel.ts[-1]),
                "signals": source,
                "config": config or "configs/default.toml",
            }
            write_outputs(out, res, cfg, meta, market=panel)
            prog.update(task, advance=1, description="done")
        m = res.metrics[0]
        typer.echo(
            f"{source}; {panel.venue} {', '.join(panel.pairs)}, {panel.n_bars:,} bars: total return "
            f"{m['total_return']:+.2%}, max drawdown {m['max_drawdown']:.2%}, {int(m['n_trades'])} trades, "
            f"{int(m['n_refusals'])} refusals; wrote {out}/"
        )
