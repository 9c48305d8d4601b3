"""The main job (``make demo``): fill the market store, then print the data report.

Real data first: every file in the shared OHLCV folder (``../shared/data/ohlcv`` or ``$KQ_SHARED``)
is imported (idempotent: a second run finds every file already imported and writes nothing).
Without that folder, a SYNTHETIC market (invented data, venue ``synthetic``) is generated instead.
The report says which data was used. Then the research loop runs end to end on the small
``configs/ci.toml`` configuration (walk-forward folds, the model ensemble, the meta-learner's
out-of-sample signals through the risk state machine): outputs in ``data/runs/demo-walkforward/``.
The run is logged to the embedded MLflow store (``data/mlflow/``) and its final model is registered
as a candidate (``kq walkforward --register``): the start of the model lifecycle.
``--data-only`` stops after the data report.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str] | None = None) -> int:
    from engine.errors import KQError
    from engine.paths import default_store_path, shared_ohlcv_dir
    from kq.data import _console, print_report

    con = _console()
    store = default_store_path()
    shared = shared_ohlcv_dir()
    try:
        from engine.store.market import MarketStore
        from engine.store.readers import SUPPORTED_SUFFIXES

        files = (
            sorted(p for p in shared.glob("*") if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES)
            if shared.is_dir()
            else []
        )
        t0 = time.perf_counter()
        if files:
            con.print(f"[bold]DATA: REAL market data[/] from {shared} ({len(files)} files)")
            with MarketStore(store) as s:
                rep = s.import_files(files)
            con.print(
                f"import: {rep.summary()} in {time.perf_counter() - t0:.2f} s"
                + (" (nothing new: already imported)" if rep.noop else "")
            )
            venue = None
        else:
            from kq.data import synth_into_store

            con.print(
                f"[bold yellow]DATA: SYNTHETIC market (invented data, venue 'synthetic'): no shared "
                f"data found at {shared}[/]"
            )
            rep, _ = synth_into_store(store, None, None, 8760, 7)
            con.print(f"synthetic: {rep.summary()} in {time.perf_counter() - t0:.2f} s")
            venue = "synthetic"
        with MarketStore(store, read_only=True) as s:
            report = s.check(venue)
        print_report(report, con)
        if files and any(p["venue"] == "synthetic" for p in report["pairs"]):
            con.print(
                "note: this store also holds SYNTHETIC bars (venue 'synthetic'); they are never mixed with real venues"
            )
        if report["blocking"]:
            return 1
        if (argv is not None and "--data-only" in argv) or "--data-only" in sys.argv[1:]:
            return 0
        return _walkforward(con, store, synthetic=venue == "synthetic")
    except KQError as e:
        print(f"kq demo: error: {e}", file=sys.stderr)
        return e.exit_code


def _walkforward(con, store, synthetic: bool) -> int:
    from engine.paths import configs_dir, data_dir
    from kq.cli import main as kq_main

    out = data_dir() / "runs" / "demo-walkforward"
    out.parent.mkdir(parents=True, exist_ok=True)
    args = [
        "walkforward",
        "--config",
        str(configs_dir() / "ci.toml"),
        "--store",
        str(store),
        "--out",
        str(out),
        "--register",
    ]
    if synthetic:  # ci.toml names Binance pairs; on a fresh machine run the same loop on the synthetic market
        args += ["--venue", "synthetic", "--pairs", "BTC/USD,ETH/USD", "--start", "2022-03-01", "--end", "2022-07-01"]
        con.print("[bold yellow]research run on SYNTHETIC data: the numbers say nothing about real markets[/]")
    con.print(f"[bold]research:[/] kq {' '.join(args)}")
    rc = kq_main(args)
    if rc == 0:
        con.print(f"open {out / 'report.html'} (walk-forward) and {out / 'backtest' / 'report.html'} (backtest)")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
