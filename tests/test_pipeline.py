"""research.pipeline: the research run as a library. Specs with validated overrides (a bad one is one
clear line), and two different runs in parallel - threads and processes - give exactly the outputs
each gives alone (real Binance bars, tiny tree-only configs so it stays fast)."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

from engine.errors import ConfigError
from engine.paths import configs_dir

CI = configs_dir() / "ci.toml"
# two folds of 480 training + 24 purge + 168 test hours from 2024-01-01 (2024-02-04 is the last day)
TINY = {
    "research.folds.train_bars": 480,
    "research.folds.test_bars": 168,
    "research.start": "2024-01-01",
    "research.end": "2024-02-04",
    "research.tracking.enabled": False,
}
SPEC_A = TINY | {"research.base_models": ["xgboost", "random_forest"]}
SPEC_B = TINY | {"research.base_models": ["lightgbm", "xgboost"], "seed": 11, "research.models.meta.n_jobs": 1}
# files that must be identical byte for byte (metrics.json holds wall-clock timings: compared by key)
SAME = (
    "folds.json",
    "predictions.parquet",
    "regime.parquet",
    "signals.parquet",
    "backtest/trades.parquet",
    "backtest/equity.parquet",
    "backtest/events.parquet",
)


def test_overrides_are_validated_by_the_typed_config():
    from research.config import load_research_config
    from research.pipeline import DataSelection, load_spec

    cfg, rc = load_research_config(CI)
    s = load_spec(CI)
    assert s.config.content_hash() == cfg.content_hash() and s.research == rc and s.source == str(CI)
    o = load_spec(
        CI, {"research.folds.train_bars": 720, "risk": {"max_positions": 3}, "seed": 5}, DataSelection(venue="binance")
    )
    assert o.research.folds.train_bars == 720 and o.research.folds.test_bars == rc.folds.test_bars
    assert o.config.risk.max_positions == 3 and o.config.seed == 5 and o.data.venue == "binance"
    assert o.research.pairs == rc.pairs  # untouched keys keep the file's values
    assert s.research.folds.train_bars == 1440  # the base spec is not changed by an override of a copy
    t = s.with_overrides({"research.folds.train_bars": 720, "risk.max_positions": 3, "seed": 5})
    assert t.config.content_hash() == o.config.content_hash() and t.research == o.research
    cases = [
        ({"research.folds.train_bars": 5}, "+ overrides: research.folds.train_bars: Input should be greater"),
        ({"risk.no_such_rule": 1}, "risk.no_such_rule: unknown key"),
        ({"research.folds.purge_bars": 4}, "research.folds.purge_bars: 4 is shorter than the longest"),
        ({"research": 3}, "research: must be a table"),
        ({"research..folds": 1}, "not a dotted config key"),
    ]
    for bad, msg in cases:
        with pytest.raises(ConfigError, match=msg.replace("+", r"\+").replace("(", r"\(")) as e:
            s.with_overrides(bad)
        assert "\n" not in str(e.value)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A market store with Binance BTC/USDT and ETH/USDT, 2023-11-14 .. 2024-02-09 (warm-up included)."""
    import pandas as pd

    from engine.store.market import MarketStore
    from tests.conftest import require_shared

    d = require_shared()
    path = tmp_path_factory.mktemp("pipe") / "m.duckdb"
    frames = {}
    for pair, f in (("BTC/USDT", "binance_BTCUSDT_1h"), ("ETH/USDT", "binance_ETHUSDT_1h")):
        df = pd.read_parquet(d / f"{f}.parquet")
        frames[pair] = df[(df["ts"] >= 1699999200) & (df["ts"] < 1707523200)].reset_index(drop=True)
    with MarketStore(path) as s:
        s.import_frames(frames, "binance", "tests/test_pipeline.py slice")
    return str(path)


def _run(args):
    """One run into ``out`` (module level: a spawned process imports it)."""
    from research.pipeline import DataSelection, load_spec, run

    overrides, store, out = args
    run(load_spec(CI, overrides, DataSelection(store=store)), out)
    return out


def _outputs(out):
    from pathlib import Path

    d = Path(out)
    files = {f: (d / f).read_bytes() for f in SAME}
    m = json.loads((d / "metrics.json").read_text())
    keep = {k: m[k] for k in ("models", "strategy", "overfitting", "suspected_leak", "leak_flags")}
    keep["meta"] = {k: v for k, v in m["meta"].items() if k != "wall_seconds"}
    return files, keep


def test_two_runs_in_parallel_threads_and_processes_equal_each_run_alone(store, tmp_path):
    import multiprocessing

    jobs = {"A": SPEC_A, "B": SPEC_B}
    alone = {k: _outputs(_run((o, store, str(tmp_path / f"alone_{k}")))) for k, o in jobs.items()}
    assert alone["A"][0]["predictions.parquet"] != alone["B"][0]["predictions.parquet"]  # two different runs
    assert alone["A"][1]["strategy"]["n_fills"] >= 0 and alone["B"][1]["meta"]["seed"] == 11
    with ThreadPoolExecutor(max_workers=2) as ex:
        threads = dict(zip(jobs, ex.map(_run, [(o, store, str(tmp_path / f"thread_{k}")) for k, o in jobs.items()])))
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as ex:
        procs = dict(zip(jobs, ex.map(_run, [(o, store, str(tmp_path / f"proc_{k}")) for k, o in jobs.items()])))
    for k in jobs:
        for way, out in (("threads", threads[k]), ("processes", procs[k])):
            files, doc = _outputs(out)
            for f in SAME:
                assert files[f] == alone[k][0][f], (k, way, f)
            assert doc == alone[k][1], (k, way)
