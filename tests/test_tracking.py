"""research/tracking.py against temporary MLflow stores: where runs go, what a run holds, the
candidate registry (with a hand-made bundle: no model fit here), one-line failures, quiet output and
two processes logging to one sqlite store at once. The end-to-end run (kq walkforward --register)
is in tests/test_walkforward_cli.py."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import InputError, IntegrityError
from research.config import TrackingConfig, load_research_config
from research.tracking import (
    TrackingError,
    check_tracking,
    flatten_params,
    get_candidate,
    list_candidates,
    log_walkforward_run,
    redact_uri,
    register_candidate,
    resolve_tracking,
)

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_env_uri(monkeypatch):
    monkeypatch.delenv("KQ_TRACKING_URI", raising=False)


@pytest.fixture
def tc(tmp_path):
    return TrackingConfig(uri=f"sqlite:///{tmp_path / 'ml' / 'mlflow.db'}")


def _metrics():
    rows = []
    for f, auc in ((0, 0.51), (1, 0.55), ("all", 0.53)):
        rows.append(
            {
                "model": "meta",
                "horizon": 24,
                "fold": f,
                "auc": auc,
                "log_loss": 0.69 + (0.01 if f == 1 else 0),
                "brier": 0.25,
                "hit_rate": 0.5,
                "n": 100,
            }
        )
    rows.append(
        {
            "model": "xgboost",
            "horizon": 24,
            "fold": 0,
            "auc": None,
            "log_loss": 0.7,
            "brier": 0.26,
            "hit_rate": 0.49,
            "n": 100,
        }
    )
    return {
        "models": rows,
        "strategy": {"total_return": -0.01, "sharpe": 0.3, "n_trades": 4, "note": "x", "bad": None},
        "overfitting": {"deflated_sharpe": {"dsr": 0.4}, "pbo": {"pbo": 0.25}},
        "suspected_leak": False,
    }


def _out(tmp_path):
    out = tmp_path / "wf"
    tmp_path.mkdir(parents=True, exist_ok=True)
    (out / "backtest").mkdir(parents=True)
    (out / "metrics.json").write_text(json.dumps(_metrics()))
    (out / "report.html").write_text("<html></html>")
    (out / "backtest" / "trades.parquet").write_bytes(b"PAR1")
    return out


META = {
    "venue": "binance",
    "pairs": "BTC/USDT,ETH/USDT",
    "start": 1704067200,
    "end": 1714521600,
    "config": "configs/ci.toml",
    "bars_loaded": 3000,
    "data_sha256": "d" * 64,
    "feature_schema_sha256": "f" * 64,
}


def _bundle(d: Path, train_end: int = 1714431600) -> Path:
    """A minimal bundle folder with a valid manifest (registry tests do not need a fitted model)."""
    from research.bundle import FORMAT, manifest_digest

    d.mkdir(parents=True)
    (d / "config.json").write_text("{}\n")
    (d / "models").mkdir()
    (d / "models" / "meta.pkl").write_bytes(b"not really a pickle")
    files = {r: hashlib.sha256((d / r).read_bytes()).hexdigest() for r in ("config.json", "models/meta.pkl")}
    man = {
        "format": FORMAT,
        "created_utc": "2026-11-22T00:00:00Z",
        "git_commit": "c" * 40,
        "git_dirty": False,
        "seed": 7,
        "config_sha256": "a" * 64,
        "research": {},
        "features": {"names": ["x"], "schema_sha256": "f" * 64, "warmup_bars": 10},
        "data": {
            "venue": "binance",
            "pairs": ["BTC/USDT"],
            "train_start": train_end - 1439 * 3600,
            "train_end": train_end,
        },
        "horizons": [24],
        "trade_horizon": 24,
        "warm_bars": 50,
        "outputs": ["p_up", "exp_return"],
        "models": [],
        "meta_files": {"24": "models/meta.pkl"},
        "walkforward": {"run_id": None},
        "files": files,
    }
    man["manifest_sha256"] = manifest_digest(man)
    (d / "manifest.json").write_text(json.dumps(man))
    return d


def test_default_store_is_under_the_data_dir_and_env_overrides(monkeypatch, tmp_path):
    monkeypatch.setenv("KQ_STORE", str(tmp_path / "d" / "market.duckdb"))
    uri, root = resolve_tracking(TrackingConfig())
    assert (
        uri == f"sqlite:///{tmp_path / 'd' / 'mlflow' / 'mlflow.db'}"
        and root == tmp_path / "d" / "mlflow" / "artifacts"
    )
    monkeypatch.delenv("KQ_STORE")
    uri, root = resolve_tracking(TrackingConfig())
    assert uri == f"sqlite:///{REPO / 'data' / 'mlflow' / 'mlflow.db'}"
    uri, root = resolve_tracking(TrackingConfig(uri="sqlite:////x/y/m.db"))
    assert uri == "sqlite:////x/y/m.db" and root == Path("/x/y/artifacts")
    assert resolve_tracking(TrackingConfig(uri="https://h:5000")) == ("https://h:5000", None)
    monkeypatch.setenv("KQ_TRACKING_URI", "sqlite:////tmp/o.db")
    assert resolve_tracking(TrackingConfig(uri="https://h:5000"))[0] == "sqlite:////tmp/o.db"


def test_config_table_validates_and_stays_out_of_the_research_json(tmp_path):
    from engine.errors import ConfigError
    from research.config import research_to_json

    p = tmp_path / "c.toml"
    p.write_text(
        f'extends = "{REPO / "configs" / "ci.toml"}"\n[research.tracking]\nenabled = false\n'
        'uri = "https://u:secret@h"\n'
    )
    cfg, rc = load_research_config(p)
    assert rc.tracking.enabled is False and rc.tracking.registered_model == "krakenquant"
    assert "tracking" not in research_to_json(rc) and "secret" not in json.dumps(research_to_json(rc))
    p.write_text(f'extends = "{REPO / "configs" / "ci.toml"}"\n[research.tracking]\nexperment = "x"\n')
    with pytest.raises(ConfigError, match="research.tracking.experment: unknown key"):
        load_research_config(p)


def test_redact_and_flatten():
    assert redact_uri("https://bob:pw@mlflow.example.com:5000/x") == "https://bob:***@mlflow.example.com:5000/x"
    assert redact_uri("sqlite:////a/b.db") == "sqlite:////a/b.db"
    assert flatten_params({"a": {"b": 1, "c": [1, 2]}, "d": None, "e": True}) == {
        "a.b": "1",
        "a.c": "[1, 2]",
        "d": "null",
        "e": "True",
    }


def test_run_holds_params_fold_metrics_tags_and_artifacts(tmp_path, tc, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.chdir(tmp_path)  # nothing may land in ./mlruns
    cfg, rc = load_research_config(REPO / "configs" / "ci.toml")
    out = _out(tmp_path)
    run_id = log_walkforward_run(out, _metrics(), META, cfg, rc, tc)
    cl = MlflowClient(resolve_tracking(tc)[0])
    run = cl.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "wf-binance-20240101-20240501"
    assert run.info.artifact_uri.startswith((tmp_path / "ml" / "artifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()
    p = run.data.params
    assert p["research.folds.train_bars"] == "1440" and p["seed"] == str(cfg.seed) and p["start"] == "1704067200"
    assert p["research.base_models"] == json.dumps(list(rc.base_models))
    hist = sorted((m.step, m.value) for m in cl.get_metric_history(run_id, "meta.24h.auc"))
    assert hist == [(0, 0.51), (1, 0.55)]
    assert sorted((m.step, m.value) for m in cl.get_metric_history(run_id, "meta.24h.log_loss")) == [
        (0, 0.69),
        (1, 0.70),
    ]
    mt = run.data.metrics
    assert mt["oos.meta.24h.auc"] == 0.53 and "xgboost.24h.auc" not in mt and mt["xgboost.24h.brier"] == 0.26
    assert mt["strategy.total_return"] == -0.01 and mt["strategy.n_trades"] == 4 and "strategy.bad" not in mt
    assert mt["overfitting.dsr"] == 0.4 and mt["overfitting.pbo"] == 0.25 and mt["suspected_leak"] == 0.0
    t = run.data.tags
    assert t["data_sha256"] == "d" * 64 and t["feature_schema_sha256"] == "f" * 64
    assert t["config_sha256"] == cfg.content_hash() and t["git_dirty"] in ("true", "false") and t["git_commit"]
    assert {a.path for a in cl.list_artifacts(run_id)} == {"metrics.json", "report.html", "backtest"}


def test_candidate_registration_lookup_and_refusals(tmp_path, tc):
    cfg, rc = load_research_config(REPO / "configs" / "ci.toml")
    assert list_candidates(tc) == []
    run_id = log_walkforward_run(_out(tmp_path), _metrics(), META, cfg, rc, tc, end_run=False)
    b = _bundle(tmp_path / "b1")
    c = register_candidate(b, tracking=tc, run_id=run_id)
    assert (c.name, c.version, c.run_id, c.ref) == ("krakenquant", 1, run_id, "krakenquant/1")
    assert (
        c.path.is_dir()
        and c.path != b
        and (c.path / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    )
    man = json.loads((b / "manifest.json").read_text())
    assert c.tags["manifest_sha256"] == man["manifest_sha256"] and c.tags["train_end"] == "1714431600"
    assert c.tags["feature_schema_sha256"] == "f" * 64 and c.tags["config_sha256"] == "a" * 64
    assert c.tags["git_commit"] == "c" * 40 and c.tags["train_start"] == str(1714431600 - 1439 * 3600)
    assert c.created > 1_700_000_000
    # one bundle per run: a second one would merge into the registered model/ folder
    with pytest.raises(InputError, match="already holds a model/ artifact"):
        register_candidate(_bundle(tmp_path / "b2", train_end=1714435200), tracking=tc, run_id=run_id)
    run2 = log_walkforward_run(_out(tmp_path / "o2"), _metrics(), META, cfg, rc, tc)
    c2 = register_candidate(tmp_path / "b2", tracking=tc, run_id=run2)
    assert c2.version == 2 and c2.path != c.path and c2.run_id == run2
    from research.bundle import verify_bundle

    assert verify_bundle(c.path)["manifest_sha256"] == man["manifest_sha256"]  # version 1 untouched
    assert get_candidate("1", tc) == c and get_candidate("krakenquant/2", tc) == c2
    assert [x.ref for x in list_candidates(tc)] == ["krakenquant/1", "krakenquant/2"]
    with pytest.raises(InputError, match="no candidate krakenquant/9"):
        get_candidate("9", tc)
    for bad in ("x", "krakenquant/", "krakenquant/0", "1.5"):
        with pytest.raises(InputError, match="expected NAME/VERSION or VERSION"):
            get_candidate(bad, tc)
    # a tampered bundle is never registered
    t = _bundle(tmp_path / "b3")
    (t / "config.json").write_text("{ }\n")
    with pytest.raises(IntegrityError, match="config.json: sha256 differs"):
        register_candidate(t, tracking=tc, run_id=run_id)
    assert len(list_candidates(tc)) == 2
    from research.tracking import set_candidate_tags

    c1 = set_candidate_tags("1", {"validation": "PASSED", "n": 3}, tc)
    assert c1.tags["validation"] == "PASSED" and c1.tags["n"] == "3" and c1.tags["train_end"] == "1714431600"
    with pytest.raises(InputError, match="no candidate krakenquant/9"):
        set_candidate_tags("9", {"a": "b"}, tc)
    other = TrackingConfig(uri=tc.uri, registered_model="other-model")
    assert list_candidates(other) == []


def test_store_failures_are_one_line_tracking_errors(tmp_path):
    bad = TrackingConfig(uri="http://127.0.0.1:9")
    with pytest.raises(TrackingError) as e:
        check_tracking(bad)
    msg = str(e.value)
    assert msg.startswith("MLflow tracking store failed at http://127.0.0.1:9") and "\n" not in msg
    assert TrackingError("x").exit_code == 1
    secret = TrackingConfig(uri="http://bob:hunter2@127.0.0.1:9")
    with pytest.raises(TrackingError) as e:
        check_tracking(secret)
    assert "hunter2" not in str(e.value) and "bob:***@127.0.0.1:9" in str(e.value)
    (tmp_path / "dir.db").mkdir()  # a sqlite "file" that is a folder
    with pytest.raises(TrackingError, match="MLflow .* failed at sqlite:///"):
        check_tracking(TrackingConfig(uri=f"sqlite:///{tmp_path / 'dir.db'}"))


_LOGGER = r"""
import json, sys
from pathlib import Path
from research.config import TrackingConfig, load_research_config
from research.tracking import log_walkforward_run
cfg, rc = load_research_config(sys.argv[3])
tc = TrackingConfig(uri=sys.argv[1])
out = Path(sys.argv[2])
metrics = json.loads((out / "metrics.json").read_text())
for i in range(3):
    log_walkforward_run(out, metrics, {"venue": "binance", "start": 0, "end": i}, cfg, rc, tc)
"""


def test_two_processes_log_to_one_fresh_sqlite_store_quietly(tmp_path):
    """Both processes create the store's tables at once, then log 3 runs each; nothing is lost and
    neither prints anything (no MLflow/alembic INFO lines)."""
    from mlflow.tracking import MlflowClient

    out = _out(tmp_path)
    uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    script = tmp_path / "log.py"
    script.write_text(_LOGGER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), uri, str(out), str(REPO / "configs" / "ci.toml")],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    res = [p.communicate(timeout=300) for p in procs]
    for p, (o, e) in zip(procs, res):
        assert p.returncode == 0, e[-3000:]
        assert o == "" and e == "", (o, e)
    cl = MlflowClient(uri)
    exp = cl.get_experiment_by_name("krakenquant-walkforward")
    runs = cl.search_runs([exp.experiment_id], max_results=100)
    assert len(runs) == 6 and all(r.info.status == "FINISHED" for r in runs)
    assert not (tmp_path / "mlruns").exists()
