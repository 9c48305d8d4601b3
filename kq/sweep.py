"""``kq sweep``: a grid or random sweep of strategy and risk parameters over one signal, through the
many-set backtester in chunks (library: :mod:`research.sweep`)."""

from __future__ import annotations

from pathlib import Path

import typer

from engine.errors import InputError

WF_SIGNALS = "signals.parquet"  # what kq walkforward writes into its out folder


def _signals_source(path: str) -> tuple[Path, str | None]:
    """(signals file, venue recorded beside it or None): a ``kq walkforward`` out folder (its
    signals.parquet and metrics.json) or a signals Parquet file as ``kq backtest --signals`` takes."""
    import json

    p = Path(path)
    if p.is_dir():
        f = p / WF_SIGNALS
        if not f.is_file():
            raise InputError(f"--signals {path}: a folder without {WF_SIGNALS} (not a kq walkforward output)")
        venue = None
        m = p / "metrics.json"
        if m.is_file():
            try:
                venue = (json.loads(m.read_text()).get("meta") or {}).get("venue")
            except (ValueError, OSError, AttributeError):
                venue = None
        return f, venue if isinstance(venue, str) else None
    if not p.exists():
        raise InputError(f"--signals {path}: no such file or folder")
    return p, None


def register(app: typer.Typer) -> None:
    @app.command("sweep")
    def sweep(
        grid: str = typer.Option(..., "--grid", help="grid TOML file (params of dotted config keys; docs/STUDIES.md)"),
        out: str = typer.Option(..., "--out", help="output folder (results.parquet, sweep.json, report.html)"),
        config: str = typer.Option(None, "--config", help="config TOML (default configs/default.toml)"),
        signals: str = typer.Option(
            None,
            "--signals",
            help="a kq walkforward out folder (its signals.parquet) or a signals Parquet file "
            "(ts, pair, p_up, exp_return); default: the built-in SMA demo signal",
        ),
        pairs: str = typer.Option(
            None, "--pairs", help="comma-separated pairs (default: the signals' pairs, else all stored)"
        ),
        venue: str = typer.Option(None, "--venue", help="venue (default: the walk-forward's, else data.venue)"),
        store: str = typer.Option(None, "--store", help="market store file (default $KQ_STORE or data/market.duckdb)"),
        start: str = typer.Option(None, "--start", help="first bar: unix seconds or ISO date/datetime (UTC)"),
        end: str = typer.Option(None, "--end", help="last bar, inclusive"),
        warmup_bars: int = typer.Option(
            768, "--warmup-bars", min=0, help="bars before --start loaded for ATR, spread, clusters and the demo signal"
        ),
        chunk_size: int = typer.Option(256, "--chunk-size", min=1, help="parameter sets per run_sweep call"),
        workers: int = typer.Option(1, "--workers", min=1, help="local worker processes for the chunks (Dask)"),
        scheduler: str = typer.Option(None, "--scheduler", help="Dask scheduler address, e.g. tcp://host:8786"),
        force: bool = typer.Option(False, "--force", help="write into a non-empty --out folder"),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar over the chunks"),
    ) -> None:
        """Sweep risk and strategy parameters over cached signals; results table and report."""
        import time

        from engine.config import config_from_dict, read_toml
        from engine.paths import check_out_dir, configs_dir
        from engine.store.market import MarketStore
        from kq.backtest import _common_span
        from kq.data import parse_pairs, parse_time
        from research.sweep import deflated_sharpe_of_best, expand, load_grid, run_grid, write_sweep

        t_start = time.perf_counter()
        cpath = Path(config) if config else configs_dir() / "default.toml"
        raw = read_toml(cpath)
        cfg = config_from_dict({k: v for k, v in raw.items() if k != "research"}, str(cpath))
        o = check_out_dir(out)
        if o.is_dir() and any(o.iterdir()) and not force:
            raise InputError(f"--out {out}: folder is not empty (use --force to write into it)")
        spec = load_grid(grid)
        ex = expand(spec, raw, str(cpath))  # every set validated before any data is read
        t0, t1 = parse_time(start), parse_time(end, end=True)
        if t0 is not None and t1 is not None and t1 < t0:
            raise InputError("--end is before --start")
        names = parse_pairs(pairs)
        sig, sig_file, src = None, None, None
        v: str | None = venue
        if signals:
            from engine.backtest.io import read_signals

            sig_file, wf_venue = _signals_source(signals)
            sig = read_signals(str(sig_file), tuple(names) if names else None)
            if sig.empty:
                raise InputError(f"--signals {signals}: no rows")
            v = v or wf_venue
            names = names or sorted(set(sig["pair"]))
            s0, s1 = int(sig["ts"].min()), int(sig["ts"].max())
            t0 = s0 if t0 is None else max(t0, s0)
            t1 = s1 if t1 is None else min(t1, s1)
            if t1 < t0:
                raise InputError(f"--signals {signals}: no signals inside --start/--end")
            src = f"signals file {sig_file}"
        v = v or cfg.data.venue
        with MarketStore(store or cfg.data.store, read_only=True) as s:
            stored = {i.pair: i for i in s.list_pairs(v)}
            if names is None:
                names = sorted(stored)
                if not names:
                    raise InputError(f"no pairs stored for venue {v!r}")
            t0, t1 = _common_span(names, stored, t0, t1, v)
            panel = s.load_panel(names, v, t0 - warmup_bars * 3600, t1)
        from research.sweep import inputs_from_panel

        si = inputs_from_panel(panel, cfg, t0, t1, sig, src)
        t_run = time.perf_counter()
        res = run_grid(si.inp, spec, ex, chunk_size=chunk_size, workers=workers, scheduler=scheduler, progress=progress)
        run_s = time.perf_counter() - t_run
        from research.sweep import best_set, results_frame, set_inputs

        df = results_frame(res)
        b = best_set(df, spec.objective, spec.direction)
        dsr = None
        if b is not None:
            # the best set re-run on its own inputs (its strategy group's when strategy keys are swept)
            best_inp = set_inputs(si.inp, ex, b)
            dsr = deflated_sharpe_of_best(best_inp, ex.params[b : b + 1], res.metrics["sharpe"], len(df))
        from engine.hashing import sha256_file, sha256_json

        meta = {
            "config": str(cpath),
            "config_sha256": cfg.content_hash(),
            "grid_sha256": sha256_json(spec.raw),
            "signals_file_sha256": sha256_file(sig_file) if sig_file is not None else None,
        }
        doc = write_sweep(out, res, si, meta, dsr=dsr)
        best = doc.get("best")
        line = f"{len(df):,} sets in {run_s:.1f} s ({len(df) / max(run_s, 1e-9):,.1f} sets/s)"
        if ex.skipped:
            line += f", {ex.skipped:,} refused combinations left out"
        if best is not None:
            d = best.get("deflated_sharpe") or {}
            val = best["metrics"].get(spec.objective)
            line += f"; best set {best['set_id']}: {spec.objective} {val if val is None else f'{val:.4g}'}" + (
                f", deflated Sharpe {d['dsr']:.3f} given {len(df):,} sets" if "dsr" in d else ""
            )
        typer.echo(f"{line}; wrote {out}/ ({time.perf_counter() - t_start:.1f} s)")
