"""Speed of ``kq study``: trials per minute of a small sweep-mode study with 1 and 2 local worker
processes sharing one PostgreSQL server.

    python -m benchmarks study [--trials 30] [--dsn postgresql://...] [--no-track] [--json FILE]
    python benchmarks/bench_study.py ...

The study: Binance BTC/USDT + ETH/USDT (shared ``binance_*USDT_1h`` files), 2024-01-01 ..
2024-03-15 with the hold-out from 2024-03-01 (configs/ci.toml's engine settings), the MA signal,
objective Sharpe over 3 folds with pruning, four parameters (signal.fast, signal.slow,
risk.p_up_entry, risk.max_positions). Each trial is an MLflow run (a temporary sqlite store)
unless ``--no-track``. The DSN comes from ``--dsn``, else ``$KQ_TEST_PG_DSN``, else
postgresql://postgres@127.0.0.1:5432/test; each run uses a fresh study, deleted afterwards.

Figures: wall seconds of the whole command (spec, study creation, worker start-up, trials, report
with the hold-out re-run), the steady rate (trials finished between the first trial's start and
the last one's end, per minute: what more trials would cost) and the median trial seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPACE = """
[study.space]
"signal.fast" = { low = 4, high = 24 }
"signal.slow" = { low = 36, high = 120 }
"risk.p_up_entry" = { low = 0.5, high = 0.6 }
"risk.max_positions" = { low = 1, high = 2 }
"""


def _store(folder: Path) -> str:
    import pandas as pd

    from engine.paths import shared_ohlcv_dir
    from engine.store.market import MarketStore

    d = shared_ohlcv_dir()
    frames = {}
    for pair, f in (("BTC/USDT", "binance_BTCUSDT_1h"), ("ETH/USDT", "binance_ETHUSDT_1h")):
        df = pd.read_parquet(d / f"{f}.parquet")
        frames[pair] = df[(df["ts"] >= 1699999200) & (df["ts"] < 1712000000)].reset_index(drop=True)
    path = folder / "m.duckdb"
    with MarketStore(path) as s:
        s.import_frames(frames, "binance", "benchmarks/bench_study.py")
    return str(path)


def _config(folder: Path) -> str:
    from engine.paths import configs_dir

    p = folder / "bench_study.toml"
    p.write_text(
        f'extends = "{configs_dir() / "ci.toml"}"\n[research]\nstart = "2024-01-01"\nend = "2024-03-15"\n'
        '[study]\nobjectives = ["sharpe"]\nmin_trades = 2\nn_folds = 3\nholdout_start = "2024-03-01"\n'
        f"seed = 3\n{SPACE}"
    )
    return str(p)


def one(cfg: str, store: str, dsn: str, trials: int, workers: int, out: Path, track: bool) -> dict:
    import optuna
    import pandas as pd

    from kq.study import run_study
    from research.study import make_storage

    name = f"kq-bench-{uuid.uuid4().hex[:10]}"
    t0 = time.perf_counter()
    try:
        doc = run_study(
            cfg, trials, workers, str(out), storage=dsn, study_name=name, store=store, track=track, progress=False
        )
    finally:
        with contextlib.suppress(KeyError):
            optuna.delete_study(study_name=name, storage=make_storage(dsn))
    wall = time.perf_counter() - t0
    df = pd.read_parquet(out / "trials.parquet")
    span = (df["datetime_complete"].max() - df["datetime_start"].min()).total_seconds()
    return {
        "workers": workers,
        "trials": len(df),
        "states": doc["counts"]["by_state"],
        "wall_s": round(wall, 1),
        "trials_per_min_wall": round(60 * len(df) / wall, 1),
        "trials_per_min_steady": round(60 * len(df) / span, 1) if span > 0 else None,
        "median_trial_s": round(float(df["seconds"].median()), 3),
        "report_s": doc.get("report_seconds"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--dsn", default=None)
    ap.add_argument("--no-track", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    dsn = a.dsn or os.environ.get("KQ_TEST_PG_DSN") or "postgresql://postgres@127.0.0.1:5432/test"
    rows = []
    with tempfile.TemporaryDirectory(prefix="kq-bench-study-") as tmp:
        folder = Path(tmp)
        os.environ["KQ_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
        store, cfg = _store(folder), _config(folder)
        for k in (1, 2):
            r = one(cfg, store, dsn, a.trials, k, folder / f"out{k}", not a.no_track)
            rows.append(r)
            print(json.dumps(r), flush=True)
    print(f"cpus: {os.cpu_count()}; load average: {os.getloadavg()[0]:.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
