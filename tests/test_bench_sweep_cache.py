"""benchmarks/bench_sweep.py's cache of meta-learner signals: the key follows the walk-forward's
configuration and data, and a matching cached folder is reused without a new walk-forward."""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest

from benchmarks import bench_sweep as bs
from engine.store.panel import load_shared_panel


@pytest.fixture(scope="module")
def small_panel():
    # two real pairs, one week: enough to hash (no walk-forward runs here)
    return load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"], start=bs.START, end=bs.START + 167 * 3600)


def _overrides(**folds):
    o = copy.deepcopy(bs.SIGNAL_OVERRIDES)
    o["research"]["folds"].update(folds)
    return o


def test_cache_key_follows_config_and_data(small_panel):
    data = bs.panel_sha256(small_panel)
    spec = bs.signal_spec()
    key = bs.cache_key(spec, data)
    assert key == bs.cache_key(bs.signal_spec(), bs.panel_sha256(small_panel))  # same inputs, same key
    assert bs.cache_key(bs.signal_spec(_overrides(test_bars=4380)), data) != key  # research table
    other = copy.deepcopy(bs.SIGNAL_OVERRIDES) | {"risk.p_up_entry": 0.7}
    assert bs.cache_key(bs.signal_spec(other), data) != key  # engine config
    shorter = small_panel.slice(None, int(small_panel.ts[-2]))
    assert bs.cache_key(spec, bs.panel_sha256(shorter)) != key  # data


def test_meta_signals_reuses_a_matching_cache_only(small_panel, tmp_path, monkeypatch):
    key = bs.cache_key(bs.signal_spec(), bs.panel_sha256(small_panel))
    folder = tmp_path / f"sweep_signals_{key[:16]}"
    folder.mkdir()
    pd.DataFrame({"ts": [bs.START], "pair": ["BTC/USDT"], "p_up": [0.6], "exp_return": [0.01]}).to_parquet(
        folder / "signals.parquet"
    )
    (folder / "bench_signals.json").write_text(json.dumps({"key": key, "produced_s": 12.5}))

    def no_walkforward(*a, **k):
        raise RuntimeError("walk-forward ran")

    monkeypatch.setattr("research.walkforward.run_walkforward", no_walkforward)
    out, info = bs.meta_signals(small_panel, cache_dir=tmp_path, log=lambda *a, **k: None)
    assert out == folder and info["cached"] and info["produced_s"] == 12.5
    # a cached folder written for another key is not reused: the walk-forward runs
    (folder / "bench_signals.json").write_text(json.dumps({"key": "0" * 64, "produced_s": 12.5}))
    with pytest.raises(RuntimeError, match="walk-forward ran"):
        bs.meta_signals(small_panel, cache_dir=tmp_path, log=lambda *a, **k: None)
    with pytest.raises(RuntimeError, match="walk-forward ran"):  # --rebuild
        bs.meta_signals(small_panel, rebuild=True, cache_dir=tmp_path, log=lambda *a, **k: None)
