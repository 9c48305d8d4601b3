"""The main job (``make demo``): fill the market store, then print the data report.

Real data first: every file in the shared OHLCV folder (``../shared/data/ohlcv`` or ``$KQ_SHARED``)
is imported (idempotent: a second run finds every file already imported and writes nothing).
Without that folder, a SYNTHETIC market (invented data, venue ``synthetic``) is generated instead.
The report says which data was used. Then the research loop runs end to end on the small
``configs/ci.toml`` configuration (walk-forward folds, the model ensemble, the meta-learner's
out-of-sample signals through the risk state machine): outputs in ``data/runs/demo-walkforward/``.
The run is logged to the embedded MLflow store (``data/mlflow/``) and its final model is registered
as a candidate (``kq walkforward --register``): the start of the model lifecycle.
Last, the paper run (:func:`paper_run`, skipped when the walk-forward failed or on the synthetic
market): 24 hourly cycles of the paper daemon (``live_bridge.daemon``) against the in-process
simulator, from 2024-05-01 (after the model's training span), on Binance BTC/USDT and ETH/USDT bars
RELABELLED as Kraken's BTC/USD and ETH/USD, with the walk-forward's model injected (a candidate, NOT
approved): paper mechanics only. Its store, ledger and state are in ``data/demo-paper/`` (deleted
first: every demo starts a fresh portfolio; the main store is never touched).
``--data-only`` stops after the data report.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


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
        rc = _walkforward(con, store, synthetic=venue == "synthetic")
        if rc != 0:
            con.print("[bold red]paper run skipped: the walk-forward step failed[/]")
            return rc
        from engine.paths import data_dir

        if venue == "synthetic":
            con.print("paper run skipped: it replays the shared Binance bars, and there are none here")
            dashboard_hint(con, None)
            return 0
        rc = paper_run(con, data_dir() / "runs" / "demo-walkforward" / "model")
        dashboard_hint(con, PAPER_FOLDER_NAME)
        return rc
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


PAPER_FOLDER_NAME = "demo-paper"  # under data/: the demo paper run's store, ledger and state


def dashboard_hint(con, paper_folder: str | None) -> None:
    """The last lines of the demo: the command and URL that open the dashboard on what it just made
    (the paper ledger, and the research runs under data/runs). The token is the user's to choose:
    the demo never makes or prints one."""
    from engine.paths import data_dir
    from kq.serve import DEFAULT_PORT

    runs = data_dir() / "runs"
    ledger = f" --dsn sqlite:///{data_dir() / paper_folder / 'ledger.sqlite'}" if paper_folder else ""
    con.print("[bold]dashboard:[/] on the runs (and the paper ledger) this demo just made:", highlight=False)
    con.print(
        "  export KQ_API_TOKEN=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')",
        markup=False,
        highlight=False,
    )
    con.print(f"  .venv/bin/kq serve{ledger} --runs {runs}", markup=False, highlight=False)
    con.print(
        f"  then open http://127.0.0.1:{DEFAULT_PORT}/ and paste the token ($KQ_API_TOKEN)",
        markup=False,
        highlight=False,
    )


# ---- the paper run ---------------------------------------------------------------------------------

PAPER_COINS = ("BTC", "ETH")
PAPER_PAIRS = tuple(f"{c}/USD" for c in PAPER_COINS)
PAPER_START = "2024-05-01"  # after ci.toml's span (2024-01..04): the model never saw these bars
PAPER_HOURS = 24
PAPER_HISTORY = 1100  # hours in the demo store before the first cycle (the features need 768)
PAPER_SETTLE = 30  # seconds after each close at which the cycle runs (the paper config's settle delay)
PAPER_USD = "100000"
H = 3600


def _paper_frames(shared: Path, p0: int, hours: int) -> dict[str, pd.DataFrame]:
    """{BTC/USD: frame, ETH/USD: frame}: Binance's BTC/USDT and ETH/USDT hourly bars RELABELLED,
    from ``PAPER_HISTORY`` hours before ``p0`` to 2 hours after the last cycle's bar."""
    from engine.errors import InputError
    from engine.store.panel import read_shared_parquet

    lo, hi = p0 - PAPER_HISTORY * H, p0 + (hours + 2) * H
    out = {}
    for coin, pair in zip(PAPER_COINS, PAPER_PAIRS, strict=True):
        p = shared / f"binance_{coin}USDT_1h.parquet"
        if not p.is_file():
            raise InputError(f"paper run: {p} not found")
        df = read_shared_parquet(p)
        df = df[(df.ts >= lo) & (df.ts <= hi)].reset_index(drop=True)
        if len(df) != (hi - lo) // H + 1:
            raise InputError(f"paper run: {p.name} lacks hours in {_utc(lo)}..{_utc(hi)} ({len(df)} bars)")
        out[pair] = df
    return out


def _utc(ts: int) -> str:
    return time.strftime("%Y-%m-%d %H:00 UTC", time.gmtime(ts))


def _paper_config(url: str, folder: Path) -> Any:
    from engine.paths import configs_dir
    from live_bridge.config import live_config_from_dict

    return live_config_from_dict(
        {
            "mode": "paper",
            "engine_config": str(configs_dir() / "default.toml"),
            "exchange": {"url": url, "tier": "starter"},
            "universe": {"pairs": list(PAPER_PAIRS)},
            # the simulator's clock decides the hour; a bar not there at once is missing (no 4 min wait)
            "cycle": {"settle_delay_s": PAPER_SETTLE, "clock": "exchange", "behind_retries": 0, "poll_s": 0.05},
            "execution": {
                "limit_timeout_s": 0.2,  # limit orders rest 0.2 s (wall clock), then the market fallback
                "poll_interval_s": 0.1,
                "lookup_interval_s": 0.05,
                "lookup_margin_s": 0.5,
            },
            "paths": {
                "store": str(folder / "market.duckdb"),
                "state_dir": str(folder / "state"),
                "ledger": f"sqlite:///{folder / 'ledger.sqlite'}",
            },
        },
        source="kq demo paper run",
    )


def paper_run(
    con: Any,
    model_dir: Path,
    *,
    folder: Path | None = None,
    shared: Path | None = None,
    start: str = PAPER_START,
    hours: int = PAPER_HOURS,
) -> int:
    """``hours`` hourly cycles of the paper daemon against the in-process simulator from ``start``
    on Binance bars relabelled as Kraken USD pairs, with the walk-forward's model injected. Starts
    clean: ``folder`` (``data/demo-paper/``) is deleted first. Returns 0, or 1 when an hour did not
    complete, the books do not match the simulator's or the ledger does not verify."""
    import shutil
    from collections import Counter
    from decimal import Decimal

    from engine.errors import InputError
    from engine.paths import data_dir, shared_ohlcv_dir
    from engine.store.market import MarketStore
    from engine.store.panel import panel_from_frames
    from kq.data import parse_time
    from live_bridge.daemon import Daemon
    from live_bridge.kraken import RateBudget
    from live_bridge.ledger import Kind
    from live_bridge.simulator.testing import KEY, SECRET, start_sim

    t_all = time.perf_counter()
    folder = folder or data_dir() / PAPER_FOLDER_NAME
    shared = shared or shared_ohlcv_dir()
    t0 = parse_time(start)
    if t0 is None:
        raise InputError("paper run: no start")
    p0 = int(t0) // H * H
    con.print(
        f"\n[bold]paper run:[/] {hours} hourly cycles of the paper daemon (live_bridge.daemon) against the "
        f"in-process simulator, {_utc(p0)} onward"
    )
    con.print(
        "[bold yellow]PAPER MECHANICS ONLY: Binance bars stand in for Kraken's (BTC/USDT, ETH/USDT relabelled "
        "BTC/USD, ETH/USD); the model is a demo candidate, NOT approved: paper mechanics only. "
        "No real money, no real exchange.[/]"
    )
    from live_bridge.simulator.testing import UnapprovedModel, VirtualClock

    model = UnapprovedModel(model_dir, "demo-candidate-NOT-approved")
    man = model.bundle.manifest
    train_end, horizon = int(man["data"]["train_end"]), int(man["trade_horizon"])
    seen = train_end + horizon * H  # the last bar the training labels looked at
    if seen >= p0:
        raise InputError(
            f"paper run: the model's training data reach {_utc(seen)}, not before the paper start {_utc(p0)} "
            "(lookahead)"
        )
    con.print(
        f"model: {model_dir} (manifest {model.manifest_sha256[:16]}); trained on {man['data']['venue']} "
        f"{', '.join(man['data']['pairs'])} up to {_utc(seen)} (labels included): before the first paper bar"
    )
    frames = _paper_frames(shared, p0, hours)
    if folder.exists():
        shutil.rmtree(folder)  # each demo starts a fresh portfolio, store and ledger
    folder.mkdir(parents=True)
    with MarketStore(folder / "market.duckdb") as s:  # the demo's own store, never data/market.duckdb
        for pair, df in frames.items():
            s.import_bars(df[df.ts <= p0 - H], "kraken", pair, f"demo-relabelled-binance-{pair}")
    # the simulator's account: its test key/secret, passed to it and to the daemon, never exported
    env = {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET}
    sim = start_sim(panel_from_frames(frames, "kraken"), start=p0, balances={"USD": PAPER_USD})
    daemon = None
    reports: list[Any] = []
    try:
        clk = VirtualClock()
        live = _paper_config(sim.url, folder)
        daemon = Daemon.from_config(
            live,
            environ=env,
            model=model,
            budget=RateBudget(live.exchange.tier, clock=clk.now, sleep=clk.sleep),
        )
        rep = daemon.start()
        con.print(
            f"daemon: store {folder / 'market.duckdb'} ({PAPER_HISTORY} relabelled hours before the start), "
            f"simulator {sim.url} with {int(Decimal(PAPER_USD)):,} USD; start-up reconcile {rep.reconcile}"
            + (f"; kill switch asked: {rep.latch}" if rep.latch else "")
        )
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("paper hours"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=con,
            transient=True,
        ) as bar:
            task = bar.add_task("paper", total=hours)
            for i in range(hours):
                sim.ex.advance(to=float(p0 + (i + 1) * H + PAPER_SETTLE))
                for r in daemon.run_once():
                    reports.append(r)
                    bar.console.print(r.line(), markup=False, highlight=False)
                bar.advance(task)
        acct = sim.ex.state()["accounts"]["default"]["balances"]
        n_rows = daemon.ledger.count()
        refused = Counter(
            str(e.code).removeprefix("REFUSAL:")
            for e in daemon.ledger.entries(kind=Kind.DECISION)
            if str(e.code).startswith("REFUSAL:")
        )
        ver = daemon.ledger.verify()
    finally:
        if daemon is not None:
            daemon.close()
        sim.stop()
    done = [r for r in reports if r.status == "completed"]
    bal = {k: Decimal(v) for k, v in acct.items()}
    usd = bal.get("USD", Decimal(0))
    last = p0 + (hours - 1) * H  # the last cycle's bar: the daemon marks its positions at its close
    value = usd
    for coin, pair in zip(PAPER_COINS, PAPER_PAIRS, strict=True):
        df = frames[pair]
        close = float(df.loc[df.ts == last, "close"].iloc[0])
        value += bal.get(coin, Decimal(0)) * Decimal(repr(close))
    ok = len(done) == hours
    orders, fills = sum(r.orders for r in done), sum(r.fills for r in done)
    con.print(
        f"paper summary: {len(done)} of {hours} hours completed, {orders} orders, {fills} fills, "
        f"{sum(1 for r in done if r.latch)} hour(s) asking for the kill switch; "
        f"end state {done[-1].state if done else '-'}; entries refused by the risk rules: "
        + (", ".join(f"{n} {k}" for k, n in sorted(refused.items())) or "none")
    )
    if done:
        eq, cash = Decimal(repr(done[-1].equity)), Decimal(repr(done[-1].cash))
        cent = Decimal("0.01")
        same_eq, same_cash = abs(eq - value) <= cent, abs(cash - usd) <= cent
        ok = ok and same_eq and same_cash
        coins = ", ".join(f"{c} {bal.get(c, Decimal(0))}" for c in PAPER_COINS)
        con.print(
            f"  equity {eq.quantize(cent):,} USD vs simulator {value.quantize(cent):,} USD (USD {usd.quantize(cent):,} "
            f"+ {coins} at the {_utc(last)} close): {'match to the cent' if same_eq else '[bold red]MISMATCH[/]'}; "
            f"cash {cash.quantize(cent):,} vs simulator USD {usd.quantize(cent):,}: "
            f"{'match' if same_cash else '[bold red]MISMATCH[/]'}"
        )
    ok = ok and ver.ok
    con.print(
        f"  ledger: {n_rows} rows, verify {'ok' if ver.ok else '[bold red]BROKEN[/]: ' + ver.message}, head "
        f"{ver.head_seq}:{ver.head_hash[:16]}; try: kq live verify --dsn sqlite:///{folder / 'ledger.sqlite'}"
    )
    con.print(f"  paper run: {time.perf_counter() - t_all:.1f} s; demo store, ledger and state in {folder}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
