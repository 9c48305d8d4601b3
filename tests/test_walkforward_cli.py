"""`kq walkforward --config configs/ci.toml` end to end on real Binance bars in a temporary store:
every output file with its documented columns, and bit-identical predictions on a second run."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

import kq.cli
from engine.paths import configs_dir


def _main(argv):
    mods = kq.cli.COMMAND_MODULES
    with pytest.MonkeyPatch.context() as mp:
        if "kq.research" not in mods:  # until the lead registers the module in kq/cli.py
            mp.setattr(kq.cli, "COMMAND_MODULES", mods + ("kq.research",))
        return kq.cli.main(argv)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from tests.conftest import require_shared

    d = require_shared()
    path = tmp_path_factory.mktemp("wf") / "m.duckdb"
    rc = _main(["data", "import", str(d / "binance_BTCUSDT_1h.parquet"), str(d / "binance_ETHUSDT_1h.parquet"),
                "--store", str(path)])
    assert rc == 0
    return path


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    base = tmp_path_factory.mktemp("wfout")
    outs = []
    for i in range(2):
        out = base / f"run{i}"
        rc = _main(["walkforward", "--config", str(configs_dir() / "ci.toml"), "--store", str(store),
                    "--out", str(out)])
        assert rc == 0
        outs.append(out)
    return outs


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_ci_config_writes_every_output_with_documented_columns(runs):
    out = runs[0]
    for f in ("folds.json", "predictions.parquet", "regime.parquet", "signals.parquet", "metrics.json",
              "report.html", "backtest/trades.parquet", "backtest/equity.parquet", "backtest/events.parquet",
              "backtest/metrics.json", "backtest/report.html"):
        assert (out / f).is_file(), f
    folds = json.loads((out / "folds.json").read_text())
    assert len(folds) == 2
    for fd in folds:
        assert {"fold", "train_start", "train_end", "test_start", "test_end", "purge_bars", "embargo_bars"} <= set(fd)
        assert fd["train_end"] + 24 * 3600 < fd["test_start"] <= fd["test_end"]
        assert fd["purge_bars"] == 24 and all(isinstance(fd[k], int) for k in ("train_start", "test_end"))
    p = pd.read_parquet(out / "predictions.parquet")
    assert list(p.columns) == ["ts", "pair", "horizon", "model", "fold", "p_up", "exp_return"]
    assert set(p["model"]) == {"xgboost", "lightgbm", "random_forest", "lstm", "transformer", "meta"}
    assert set(p["horizon"]) == {24} and set(p["pair"]) == {"BTC/USDT", "ETH/USDT"}
    assert p["ts"].dtype == np.int64 and (p["ts"] % 3600 == 0).all()
    counts = p.groupby("model").size()
    assert counts.nunique() == 1 and counts.iloc[0] == 2 * 2 * 720  # 2 folds x 720 bars x 2 pairs
    assert not p.duplicated(["ts", "pair", "horizon", "model"]).any()
    # no missing bar in this span, and the warm-up rows give the nets (seq_len 8) full windows
    assert p["p_up"].between(0, 1).all() and np.isfinite(p["exp_return"]).all()
    for fd in folds:
        s = p[p["fold"] == fd["fold"]]
        assert s["ts"].min() == fd["test_start"] and s["ts"].max() == fd["test_end"]
    rg = pd.read_parquet(out / "regime.parquet")
    assert {"ts", "pair", "fold", "regime"} <= set(rg.columns) and len(rg) == 2 * 2 * 720
    sig = pd.read_parquet(out / "signals.parquet")
    assert list(sig.columns) == ["ts", "pair", "p_up", "exp_return"]
    meta = p[p["model"] == "meta"].sort_values(["ts", "pair"])
    assert np.array_equal(sig.sort_values(["ts", "pair"])["p_up"].to_numpy(), meta["p_up"].to_numpy())
    m = json.loads((out / "metrics.json").read_text())
    assert m["suspected_leak"] is False and m["leak_flags"] == []
    rows = {(r["model"], r["fold"]): r for r in m["models"]}
    for mo in ("xgboost", "lightgbm", "random_forest", "lstm", "transformer", "meta"):
        for f in (0, 1, "all"):
            r = rows[(mo, f)]
            assert {"auc", "log_loss", "brier", "hit_rate"} <= set(r) and 0.3 < r["auc"] < 0.7
    bt = json.loads((out / "backtest" / "metrics.json").read_text())
    assert m["strategy"]["total_return"] == bt["total_return"] and m["strategy"]["n_trades"] == bt["n_trades"]
    eq = pd.read_parquet(out / "backtest" / "equity.parquet")
    assert eq["ts"].iloc[0] == folds[0]["test_start"] and eq["ts"].iloc[-1] == folds[-1]["test_end"]
    assert 0.0 <= m["overfitting"]["deflated_sharpe"]["dsr"] <= 1.0
    assert m["overfitting"]["deflated_sharpe"]["n_trials"] == 1
    assert 0.0 <= m["overfitting"]["pbo"]["pbo"] <= 1.0
    html = (out / "report.html").read_text()
    assert "Plotly.newPlot" in html and "<script src=" not in html and "regime per pair" in html


def test_same_config_and_seed_give_bit_identical_predictions(runs):
    a, b = runs
    assert _sha(a / "predictions.parquet") == _sha(b / "predictions.parquet")
    assert _sha(a / "regime.parquet") == _sha(b / "regime.parquet")
    assert _sha(a / "backtest" / "trades.parquet") == _sha(b / "backtest" / "trades.parquet")


def test_bad_input_is_a_one_line_error_and_writes_nothing(store, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text(f'extends = "{configs_dir() / "ci.toml"}"\n[research.folds]\npurge_bars = 4\n')
    out = tmp_path / "out"
    rc = _main(["walkforward", "--config", str(bad), "--store", str(store), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "research.folds.purge_bars" in err and "Traceback" not in err
    rc = _main(["walkforward", "--config", str(configs_dir() / "ci.toml"), "--store", str(store),
                "--start", "2024-03-01", "--end", "2024-02-01", "--out", str(out)])
    assert rc == 2 and "--end is before --start" in capsys.readouterr().err
    assert not out.exists()
