"""`kq walkforward --config configs/ci.toml` end to end on real Binance bars in a temporary store:
every output file with its documented columns, and bit-identical predictions on a second run.
MLflow (temporary sqlite store): the first run is logged and registers a candidate (--register); the
second run's logging is made to fail, which must leave its outputs on disk."""

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
    rc = _main(
        [
            "data",
            "import",
            str(d / "binance_BTCUSDT_1h.parquet"),
            str(d / "binance_ETHUSDT_1h.parquet"),
            "--store",
            str(path),
        ]
    )
    assert rc == 0
    return path


@pytest.fixture(scope="module", autouse=True)
def tracking_uri(tmp_path_factory):
    """Every run of this module logs to a temporary MLflow store (never data/mlflow/)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KQ_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="module")
def runs(store, tracking_uri, tmp_path_factory):
    import contextlib
    import io

    import research.tracking
    from research.tracking import TrackingError

    base = tmp_path_factory.mktemp("wfout")
    outs, stdout, stderr, rcs = [], [], [], []
    for i in range(2):
        out = base / f"run{i}"
        o, e = io.StringIO(), io.StringIO()
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
            if i == 1:  # the store works (checked before training) but logging the run fails

                def boom(*a, **k):
                    raise TrackingError("MLflow logging failed at sqlite:///x.db: OperationalError: disk I/O error")

                mp.setattr(research.tracking, "log_walkforward_run", boom)
            rcs.append(
                _main(
                    [
                        "walkforward",
                        "--config",
                        str(configs_dir() / "ci.toml"),
                        "--store",
                        str(store),
                        "--out",
                        str(out),
                    ]
                    + (["--register"] if i == 0 else [])
                )
            )
        outs.append(out)
        stdout.append(o.getvalue())
        stderr.append(e.getvalue())
    assert rcs[0] == 0, stderr[0][-2000:]
    return {"outs": outs, "stdout": stdout, "stderr": stderr, "rc": rcs}


def _sha(p):
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_ci_config_writes_every_output_with_documented_columns(runs):
    out = runs["outs"][0]
    for f in (
        "folds.json",
        "predictions.parquet",
        "regime.parquet",
        "signals.parquet",
        "metrics.json",
        "report.html",
        "backtest/trades.parquet",
        "backtest/equity.parquet",
        "backtest/events.parquet",
        "backtest/metrics.json",
        "backtest/report.html",
    ):
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
    assert "Plotly.newPlot" in html and "<script src='plotly.min.js'>" in html and "regime per pair" in html
    # plotly.js not inlined (its copyright banner is only in the file beside the report)
    assert (out / "plotly.min.js").is_file() and "Copyright 2012" not in html and len(html) < 1_000_000
    assert "<td data-bh='total_return'>" in html and html.index("class='headline'") < html.index("Plotly.newPlot")
    assert "<details class='config'>" in html and "data_sha256" not in html.split("<details")[0]


def test_same_config_and_seed_give_bit_identical_predictions(runs):
    a, b = runs["outs"]
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
    rc = _main(
        [
            "walkforward",
            "--config",
            str(configs_dir() / "ci.toml"),
            "--store",
            str(store),
            "--start",
            "2024-03-01",
            "--end",
            "2024-02-01",
            "--out",
            str(out),
        ]
    )
    assert rc == 2 and "--end is before --start" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------------------------
# MLflow tracking and the candidate (research/tracking.py, research/bundle.py)


def _run_id(stdout):
    import re

    return re.search(r"MLflow run ([0-9a-f]{32})", stdout).group(1)


def test_run_is_logged_to_mlflow_with_params_fold_metrics_tags_and_artifacts(runs, tracking_uri):
    import subprocess

    from mlflow.tracking import MlflowClient

    from engine.features.featureset import feature_schema_sha256
    from research.config import load_research_config

    out = runs["outs"][0]
    run_id = _run_id(runs["stdout"][0])
    cl = MlflowClient(tracking_uri)
    run = cl.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert cl.get_experiment(run.info.experiment_id).name == "krakenquant-walkforward"
    m = json.loads((out / "metrics.json").read_text())
    cfg, rc = load_research_config(configs_dir() / "ci.toml")
    p = run.data.params
    assert p["research.folds.train_bars"] == "1440" and p["research.folds.inner_folds"] == "2"
    assert p["seed"] == str(cfg.seed) and p["pairs"] == "BTC/USDT,ETH/USDT" and p["venue"] == "binance"
    assert p["research.horizons"] == "[24]" and p["start"] == str(m["meta"]["start"])
    assert not any(k.startswith("research.tracking") for k in p)
    # per-fold metric history: step = fold, values = metrics.json
    for model in ("meta", "xgboost", "lstm"):
        for k in ("auc", "log_loss", "brier", "hit_rate"):
            hist = sorted((x.step, x.value) for x in cl.get_metric_history(run_id, f"{model}.24h.{k}"))
            want = sorted(
                (r["fold"], r[k])
                for r in m["models"]
                if r["model"] == model and r["fold"] != "all" and r["horizon"] == 24
            )
            assert hist == want and len(hist) == 2, (model, k)
    pooled = next(r for r in m["models"] if r["model"] == "meta" and r["fold"] == "all")
    assert run.data.metrics["oos.meta.24h.auc"] == pooled["auc"]
    assert run.data.metrics["strategy.total_return"] == m["strategy"]["total_return"]
    assert run.data.metrics["overfitting.pbo"] == m["overfitting"]["pbo"]["pbo"]
    t = run.data.tags
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=configs_dir().parent)
    if head.returncode == 0:
        assert t["git_commit"] == head.stdout.strip() and t["git_dirty"] in ("true", "false")
    assert t["data_sha256"] == m["meta"]["data_sha256"] and len(t["data_sha256"]) == 64
    assert t["feature_schema_sha256"] == feature_schema_sha256(cfg.features)
    assert t["config_sha256"] == cfg.content_hash() == m["meta"]["config_sha256"]
    top = {a.path for a in cl.list_artifacts(run_id)}
    assert {
        "report.html",
        "metrics.json",
        "folds.json",
        "predictions.parquet",
        "signals.parquet",
        "backtest",
        "model",
    } <= top
    assert {a.path for a in cl.list_artifacts(run_id, "backtest")} >= {
        "backtest/trades.parquet",
        "backtest/metrics.json",
    }


def test_register_creates_a_candidate_whose_bundle_loads(runs, tracking_uri):
    from engine.config import load_config  # noqa: F401 - config types for the loaded bundle
    from research.bundle import load_bundle
    from research.config import load_research_config
    from research.tracking import get_candidate, list_candidates

    out = runs["outs"][0]
    run_id = _run_id(runs["stdout"][0])
    cfg, rc = load_research_config(configs_dir() / "ci.toml")
    assert runs["stdout"][0].strip().splitlines()[-1] == "candidate: krakenquant/1"
    cands = list_candidates(rc.tracking)
    assert [c.ref for c in cands] == ["krakenquant/1"]
    c = get_candidate("krakenquant/1", rc.tracking)
    assert c == get_candidate("1", rc.tracking) and c.run_id == run_id and c.path.is_dir()
    assert c.path != out / "model" and (out / "model" / "manifest.json").is_file()
    b = load_bundle(c.path)  # every sha256 checked
    man = b.manifest
    assert man["walkforward"]["run_id"] == run_id
    m = json.loads((out / "metrics.json").read_text())
    assert man["walkforward"]["strategy"] == m["strategy"]
    assert (c.path / "walkforward" / "metrics.json").read_bytes() == (out / "metrics.json").read_bytes()
    for k in ("feature_schema_sha256", "config_sha256", "git_commit", "train_start", "train_end", "manifest_sha256"):
        assert k in c.tags
    assert c.tags["train_end"] == str(man["data"]["train_end"]) and c.tags["manifest_sha256"] == man["manifest_sha256"]
    # the final window: 1440 hours ending at the last bar with a 24 h label (2024-04-29 23:00 UTC)
    assert man["data"]["train_windows"]["24"] == [1714431600 - 1439 * 3600, 1714431600]
    assert b.horizons == (24,) and b.trade_horizon == 24 and b.pairs == ("BTC/USDT", "ETH/USDT")
    # the registered copy and the local copy are the same bundle
    local = load_bundle(out / "model")
    assert local.manifest["manifest_sha256"] == man["manifest_sha256"]


def test_failed_logging_keeps_the_outputs_and_says_so(runs):
    out = runs["outs"][1]
    err = runs["stderr"][1]
    assert runs["rc"][1] == 1
    line = [x for x in err.splitlines() if x.startswith("kq: error:")]
    assert len(line) == 1 and "Traceback" not in err
    assert "MLflow logging failed" in line[0] and f"outputs are on disk in {out}/ (nothing lost)" in line[0]
    assert (out / "metrics.json").is_file() and (out / "predictions.parquet").is_file()
    assert not (out / "model").exists()


def test_unreachable_tracking_server_fails_before_training(store, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KQ_TRACKING_URI", "http://127.0.0.1:9")
    out = tmp_path / "out"
    rc = _main(["walkforward", "--config", str(configs_dir() / "ci.toml"), "--store", str(store), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and "127.0.0.1:9" in err and "nothing was run" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    rc = _main(
        [
            "walkforward",
            "--config",
            str(configs_dir() / "ci.toml"),
            "--store",
            str(store),
            "--out",
            str(out),
            "--register",
            "--no-track",
        ]
    )
    assert rc == 2 and "--register needs MLflow tracking" in capsys.readouterr().err
