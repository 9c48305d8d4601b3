"""`kq models` end to end through the CLI on purpose-made candidates registered in a temporary
MLflow registry: list/show/validate/promote/rollback/audit, exit codes and one-line refusals, the
registry tag, and the retraining window (a fake clock; no training here - test_lifecycle_e2e.py
trains a real candidate)."""

from __future__ import annotations

import json

import pytest

import kq.cli
import kq.models
from tests.lifecycle_helpers import make_candidate


def _main(argv):
    return kq.cli.main(argv)  # kq.research and kq.models are in COMMAND_MODULES


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    """Two registered candidates (1: sound, 2: loses money) and a config file pointing at a
    temporary registry and approvals store."""
    from research.config import TrackingConfig
    from research.tracking import _client, register_candidate

    tmp = tmp_path_factory.mktemp("models_cli")
    mp = pytest.MonkeyPatch()
    mp.setenv("KQ_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    mp.setenv("KQ_OPERATOR", "carol")
    cfg = tmp / "cfg.toml"
    from engine.paths import configs_dir

    cfg.write_text(
        f'extends = "{configs_dir() / "default.toml"}"\n\n[lifecycle]\napprovals_dir = "{tmp / "approvals"}"\n'
    )
    tracking = TrackingConfig()
    client = _client(tracking)[0]
    exp = client.create_experiment("cli-test", artifact_location=(tmp / "artifacts").as_uri())
    for name, kw in (("good", {}), ("bad", dict(drift=-0.0004))):
        b = make_candidate(tmp / "bundles" / name, **kw)
        run = client.create_run(exp)
        register_candidate(b, tracking=tracking, run_id=run.info.run_id)
    yield tmp, str(cfg)
    mp.undo()


def test_validate_writes_the_verdict_and_exit_code_names_the_failed_gate(reg, capsys):
    tmp, cfg = reg
    assert _main(["models", "validate", "1", "--config", cfg, "--no-load"]) == 0
    out = capsys.readouterr().out
    assert "gate 1 integrity: passed" in out and "gate 4 risk: passed" in out
    assert "oos_sharpe:" in out and ">= 0.5" in out and "krakenquant/1: validation PASSED" in out
    assert _main(["models", "validate", "krakenquant/2", "--config", cfg, "--no-load"]) == 1
    out = capsys.readouterr().out
    assert "gate 3 quality: FAILED: out-of-sample Sharpe -" in out and "below the minimum 0.5" in out
    from research.config import TrackingConfig
    from research.tracking import get_candidate

    c1, c2 = get_candidate("1", TrackingConfig()), get_candidate("2", TrackingConfig())
    assert c1.tags["validation"] == "passed" and c2.tags["validation"] == "failed"
    assert c2.tags["validation_failed_gates"] == "quality"
    v = json.loads((c1.path / "verdict.json").read_text())
    assert v["passed"] and v["manifest_sha256"] == c1.tags["manifest_sha256"] and v["who"] == "carol"
    # the schema gate loads the model unless --no-load: these opaque bytes are not a model
    assert _main(["models", "validate", "2", "--config", cfg]) == 1
    assert "the bundle does not load" in capsys.readouterr().out
    assert _main(["models", "validate", "2", "--config", cfg, "--no-load"]) == 1
    assert _main(["models", "validate", "9", "--config", cfg]) == 2
    assert "no candidate krakenquant/9" in capsys.readouterr().err


def test_promote_rollback_audit_list_show(reg, capsys):
    tmp, cfg = reg
    assert _main(["models", "validate", "1", "--config", cfg, "--no-load"]) == 0
    capsys.readouterr()
    assert _main(["models", "promote", "1", "--env", "paper", "--reason", "first", "--config", cfg]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kq: error: promote refused: pass --confirm yes-promote") and "nothing changed" in err
    assert not (tmp / "approvals" / "approvals.log").exists()
    assert (
        _main(
            ["models", "promote", "2", "--env", "paper", "--reason", "x", "--confirm", "yes-promote", "--config", cfg]
        )
        == 1
    )
    assert "validation FAILED" in capsys.readouterr().err
    assert (
        _main(
            [
                "models",
                "promote",
                "1",
                "--env",
                "paper",
                "--reason",
                "first",
                "--confirm",
                "yes-promote",
                "--config",
                cfg,
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "promoted krakenquant/1 to paper (log entry 1, hash " in out and "no rollback target" in out
    assert _main(["models", "rollback", "--env", "paper", "--confirm", "yes-rollback", "--config", cfg]) == 2
    assert "nothing to roll back to in paper" in capsys.readouterr().err
    assert _main(["models", "list", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "krakenquant/1" in out and "paper (current)" in out and "live: nothing approved" in out
    assert "failed: quality" in out
    assert _main(["models", "show", "1", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "approved for paper since" in out and "by carol" in out and "verdict: passed" in out
    assert _main(["models", "audit", "--config", cfg]) == 0
    assert "approvals log ok: 1 entries" in capsys.readouterr().out
    log = tmp / "approvals" / "approvals.log"
    good = log.read_text()
    log.write_text(good.replace('"reason":"first"', '"reason":"First"'))
    assert _main(["models", "audit", "--config", cfg]) == 1
    assert "line 1: content does not match its hash" in capsys.readouterr().err
    log.write_text(good)
    assert _main(["models", "audit", "--config", cfg]) == 0


def test_a_lax_config_cannot_get_a_losing_model_approved_for_live(reg, capsys):
    """issue 21 item 12: kq models validate/promote --config with min_sharpe = -10 recorded a losing
    model as approved for live. The config's looser values are ignored (with a warning naming them),
    the verdict is judged under the protected thresholds and promote refuses it."""
    tmp, cfg = reg
    lax = tmp / "lax.toml"
    lax.write_text(f'extends = "{cfg}"\n[lifecycle]\nmin_sharpe = -10.0\nmax_drawdown = 0.5\n')
    assert _main(["models", "validate", "2", "--config", str(lax), "--no-load"]) == 1
    cap = capsys.readouterr()
    assert "warning: lifecycle.min_sharpe -10 is looser than the protected 0.5: the protected value is used" in cap.err
    assert (
        "thresholds: min_sharpe >= 0.5, max_drawdown <= 0.15, max_daily_turnover <= 2, "
        "exposure_tolerance <= 0.05 (protected " in cap.out
    )
    assert "gate 3 quality: FAILED: out-of-sample Sharpe -" in cap.out and "validation FAILED" in cap.out
    assert (
        _main(
            [
                "models",
                "promote",
                "2",
                "--env",
                "live",
                "--reason",
                "x",
                "--confirm",
                "yes-promote",
                "--config",
                str(lax),
            ]
        )
        == 1
    )
    assert "promote refused: validation FAILED" in capsys.readouterr().err
    from engine.lifecycle_config import protected_sha256
    from research.config import TrackingConfig
    from research.tracking import get_candidate

    v = json.loads((get_candidate("2", TrackingConfig()).path / "verdict.json").read_text())
    assert v["thresholds"]["min_sharpe"] == 0.5 and v["thresholds_source"]["protected_sha256"] == protected_sha256()
    assert v["thresholds_source"]["config_source"] == str(lax)


def test_retrain_refuses_outside_the_window_and_waits_for_it(reg, capsys, monkeypatch):
    tmp, cfg = reg
    (tmp / "runs").mkdir(exist_ok=True)
    t = [1704067200 + 10 * 3600]  # 2024-01-01 10:00 UTC: outside 03:00-05:00
    monkeypatch.setattr(kq.models, "_clock", lambda: t[0])
    assert _main(["models", "retrain", "--config", cfg, "--out-root", str(tmp / "runs")]) == 2
    err = capsys.readouterr().err
    assert "outside the training window 03:00-05:00 UTC (next opens 2024-01-02 03:00 UTC)" in err
    slept, calls = [], []

    def fake_sleep(s):
        slept.append(s)
        t[0] += s

    import research.lifecycle.retrain
    from engine.errors import KQError

    def fake_retrain(config, out, **kw):  # the library call (research.pipeline), not the CLI
        calls.append((config, out, t[0]))
        raise KQError("stopped after the walk-forward would have started")

    monkeypatch.setattr(kq.models, "_sleep", fake_sleep)
    monkeypatch.setattr(research.lifecycle.retrain, "retrain", fake_retrain)
    with pytest.raises(KQError, match="retraining failed .* nothing was registered or promoted"):
        kq.models.run_retrain(cfg, wait=True, out_root=str(tmp / "runs"))
    assert "opens 2024-01-02 03:00 UTC (in 17.0 h)" in capsys.readouterr().out
    assert sum(slept) == 17 * 3600 and max(slept) <= 60
    config, out, at = calls[0]
    assert at == 1704164400 and config == cfg and out.parent == tmp / "runs" and out.name.startswith("retrain-")


def test_next_window_start_wraps_midnight_and_is_none_without_a_window():
    from research.lifecycle.retrain import next_window_start, window_status

    day = 1704067200
    assert next_window_start(day + 2 * 3600, ["03:00", "05:00"]) == day + 3 * 3600
    assert next_window_start(day + 3 * 3600, ["03:00", "05:00"]) == day + 27 * 3600
    assert window_status(day + 4 * 3600, ["03:00", "05:00"]) == (True, day + 27 * 3600)
    assert window_status(day + 5 * 3600, ["03:00", "05:00"])[0] is False
    assert window_status(day + 30 * 60, ["23:00", "01:00"]) == (True, day + 23 * 3600)
    assert next_window_start(day, []) is None
