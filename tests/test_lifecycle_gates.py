"""The four validation gates on purpose-made candidates: each passes on a sound candidate and fails,
naming the gate, the measured value and the threshold, on one built to fail it. The independent
risk audit catches each rule breach planted in otherwise consistent backtest records."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from research.lifecycle.gates import GATES, read_verdict, validate_bundle, write_verdict
from research.lifecycle.riskaudit import audit_backtest
from tests.lifecycle_helpers import backtest_records, lifecycle_config, make_candidate, rehash, write_records


@pytest.fixture
def cfg(tmp_path):
    return lifecycle_config(tmp_path)


def _gate(v, name):
    return next(g for g in v.gates if g.gate == name)


def _failed(v):
    return {g.gate for g in v.gates if not g.passed}


def test_sound_candidate_passes_all_four_gates_and_the_verdict_binds_to_its_manifest(tmp_path, cfg):
    c = make_candidate(tmp_path / "good")
    v = validate_bundle(c, cfg, load=False)
    assert v.passed and [g.gate for g in v.gates] == list(GATES), [g.message for g in v.gates]
    q = {ch.name: ch for ch in _gate(v, "quality").checks}
    assert q["oos_sharpe"].measured > 0.5 and q["oos_sharpe"].threshold == 0.5 and q["oos_sharpe"].op == ">="
    assert q["oos_max_drawdown"].measured < 0.15
    r = {ch.name: ch for ch in _gate(v, "risk").checks}
    assert 0 < r["daily_turnover"].measured < 2.0 and r["risk_audit"].measured == 0
    p = write_verdict(c, v)
    stored = read_verdict(c)
    man = json.loads((c / "manifest.json").read_text())
    assert p == c / "verdict.json" and stored["passed"] is True
    assert stored["manifest_sha256"] == man["manifest_sha256"]
    assert not list(c.parent.glob(".verdict*"))  # no temp file left anywhere
    # deterministic: the same candidate and config give the same gate results
    again = validate_bundle(c, cfg, load=False)
    assert [g.to_json() for g in again.gates] == [g.to_json() for g in v.gates]


def test_integrity_gate_fails_on_a_changed_missing_or_extra_file_and_on_an_edited_manifest(tmp_path, cfg):
    c = make_candidate(tmp_path / "c")
    f = c / "models" / "h24" / "meta.pkl"
    b = bytearray(f.read_bytes())
    b[3] ^= 1
    f.write_bytes(bytes(b))
    v = validate_bundle(c, cfg, load=False)
    assert _failed(v) == {"integrity"}
    assert "models/h24/meta.pkl: sha256 differs" in _gate(v, "integrity").message
    rehash(c)
    (c / "walkforward" / "extra.txt").write_text("x")
    assert "walkforward/extra.txt: not listed" in _gate(validate_bundle(c, cfg, load=False), "integrity").message
    (c / "walkforward" / "extra.txt").unlink()
    (c / "config.json").rename(c / "config.moved")
    msg = _gate(validate_bundle(c, cfg, load=False), "integrity").message
    assert "config.json: missing" in msg
    (c / "config.moved").rename(c / "config.json")
    m = json.loads((c / "manifest.json").read_text())
    m["data"]["train_end"] += 3600  # an edit without re-digesting
    (c / "manifest.json").write_text(json.dumps(m))
    v = validate_bundle(c, cfg, load=False)
    assert "integrity" in _failed(v) and "manifest_sha256" in _gate(v, "integrity").message


def test_integrity_gate_checks_registry_tags_against_the_manifest(tmp_path, cfg):
    c = make_candidate(tmp_path / "c")
    man = json.loads((c / "manifest.json").read_text())
    ok = validate_bundle(c, cfg, load=False, tags={"manifest_sha256": man["manifest_sha256"]})
    assert ok.passed
    bad = validate_bundle(c, cfg, load=False, tags={"manifest_sha256": "0" * 64})
    assert _failed(bad) == {"integrity"} and "registry tag manifest_sha256" in _gate(bad, "integrity").message


def test_schema_gate_fails_when_the_current_features_differ_or_inputs_are_reordered(tmp_path, cfg):
    c = make_candidate(tmp_path / "c")
    other = lifecycle_config(tmp_path)
    other = other.model_copy(update={"features": other.features.model_copy(update={"mom_horizons": (1, 4, 12)})})
    v = validate_bundle(c, other, load=False)
    assert _failed(v) == {"schema"}
    msg = _gate(v, "schema").message
    assert "missing ['ret_12h']" in msg and "extra ['ret_24h']" in msg and "feature schema hash" in msg
    m = json.loads((c / "manifest.json").read_text())
    m["features"]["names"] = m["features"]["names"][1:] + m["features"]["names"][:1]
    (c / "manifest.json").write_text(json.dumps(m))
    rehash(c)
    v = validate_bundle(c, cfg, load=False)
    assert _failed(v) == {"schema"} and "input order differs" in _gate(v, "schema").message
    m = json.loads((c / "manifest.json").read_text())
    m["features"]["names"] = m["features"]["names"][-1:] + m["features"]["names"][:-1]
    m["outputs"] = ["p_up"]
    (c / "manifest.json").write_text(json.dumps(m))
    rehash(c)
    v = validate_bundle(c, cfg, load=False)
    assert _failed(v) == {"schema"} and "outputs ['p_up'] are not ['p_up', 'exp_return']" in _gate(v, "schema").message


def test_quality_gate_fails_on_a_losing_candidate_naming_value_and_threshold(tmp_path, cfg):
    c = make_candidate(tmp_path / "c", drift=-0.0004)
    v = validate_bundle(c, cfg, load=False)
    assert _failed(v) == {"quality"}
    ch = next(x for x in _gate(v, "quality").checks if x.name == "oos_sharpe")
    assert not ch.passed and ch.measured < 0 and ch.threshold == 0.5
    assert f"out-of-sample Sharpe {ch.measured:.3f} is below the minimum 0.5" in _gate(v, "quality").message


def test_quality_gate_fails_on_drawdown_above_the_configured_maximum(tmp_path):
    """A config may TIGHTEN a threshold: max_drawdown 0.02 (protected 0.15) is used and recorded."""
    c = make_candidate(tmp_path / "c", crash_at=310)
    cfg = lifecycle_config(tmp_path, max_drawdown=0.02)
    v = validate_bundle(c, cfg, load=False)
    assert _failed(v) == {"quality"}
    ch = next(x for x in _gate(v, "quality").checks if x.name == "oos_max_drawdown")
    assert ch.measured == pytest.approx(0.0327, abs=1e-3) and ch.threshold == 0.02
    assert "max drawdown 3.27% is above the maximum 2.00%" in _gate(v, "quality").message
    assert v.thresholds["max_drawdown"] == 0.02 and v.thresholds_source["tightened_by_config"] == ["max_drawdown"]
    v = validate_bundle(c, lifecycle_config(tmp_path), load=False)
    ch = next(x for x in _gate(v, "quality").checks if x.name == "oos_max_drawdown")
    assert ch.passed and ch.threshold == 0.15


def test_a_lax_config_cannot_loosen_the_protected_gate_thresholds(tmp_path):
    """issue 21 item 12: a model with Sharpe -3.3 was 'approved' under a config with min_sharpe = -10.
    The protected thresholds (engine.lifecycle_config) are a floor; the verdict names them and their
    digest, and what the config asked for that was ignored."""
    from engine.lifecycle_config import PROTECTED_SOURCE, protected_sha256, protected_thresholds

    c = make_candidate(tmp_path / "c", crash_at=310)
    lax = lifecycle_config(
        tmp_path, min_sharpe=-10.0, max_drawdown=0.5, max_daily_turnover=100.0, exposure_tolerance=0.5
    )
    v = validate_bundle(c, lax, load=False)
    assert not v.passed and _failed(v) == {"quality"}
    ch = next(x for x in _gate(v, "quality").checks if x.name == "oos_sharpe")
    assert not ch.passed and ch.measured < 0 and ch.threshold == 0.5
    assert (
        v.thresholds
        == protected_thresholds()
        == {"min_sharpe": 0.5, "max_drawdown": 0.15, "max_daily_turnover": 2.0, "exposure_tolerance": 0.05}
    )
    src = v.thresholds_source
    assert src["protected"] == PROTECTED_SOURCE and src["protected_sha256"] == protected_sha256()
    assert src["config_thresholds"]["min_sharpe"] == -10.0 and src["tightened_by_config"] == []
    assert (
        len(src["ignored_as_looser"]) == 4
        and "lifecycle.min_sharpe -10 is looser than the protected 0.5" in src["ignored_as_looser"]
    )
    from research.lifecycle.gates import read_verdict, write_verdict

    write_verdict(c, v)
    stored = read_verdict(c)
    assert (
        stored["thresholds"] == v.thresholds and stored["thresholds_source"]["protected_sha256"] == protected_sha256()
    )


@pytest.mark.parametrize(
    "section,changes",
    [
        ("fees", {"fee_rate": 0.0, "slippage_bps": 0.0}),
        ("risk", {"max_exposure": 1.0}),
        ("backtest", {"init_cash": 1e6}),
    ],
)
def test_a_candidate_backtested_under_another_config_fails_for_paper_and_live(tmp_path, cfg, section, changes):
    """A Sharpe measured without fees (or under looser caps) is not judged against the protected 0.5:
    the candidate's fees/execution/risk/backtest sections must equal the validating config's."""
    from engine.config import load_config
    from engine.errors import IntegrityError
    from research.lifecycle.actions import check_approvable

    base = load_config()
    lax = base.model_copy(update={section: getattr(base, section).model_copy(update=changes)})
    c = make_candidate(tmp_path / "c", cfg=lax)
    v = validate_bundle(c, cfg, load=False)
    assert not v.passed and "quality" in _failed(v)
    ch = next(x for x in _gate(v, "quality").checks if x.name == "backtest_config")
    keys = sorted(f"{section}.{k}" for k in changes)
    assert not ch.passed and [d["key"] for d in ch.measured["differs"]] == keys
    msg = _gate(v, "quality").message
    assert all(k in msg for k in keys) and "retrain" in msg
    write_verdict(c, v)
    stored = read_verdict(c)
    assert [d["key"] for d in stored["config"]["differs"]] == keys
    assert stored["config"]["compared_sections"] == ["fees", "execution", "risk", "backtest"]
    for env in ("paper", "live"):
        with pytest.raises(IntegrityError, match="validation FAILED.*backtest ran under a config"):
            check_approvable(c, cfg, env=env)
    # the same records under the validating config pass: it is the config that failed
    ok = make_candidate(tmp_path / "ok", cfg=base)
    assert validate_bundle(ok, cfg, load=False).passed


def test_quality_gate_refuses_metrics_that_disagree_with_the_records(tmp_path, cfg):
    c = make_candidate(tmp_path / "c", drift=-0.0004)
    eq, tr, ev = backtest_records(drift=-0.0004)
    write_records(c, eq, tr, ev, metrics_override={"sharpe": 2.5})  # a doctored metrics.json
    rehash(c)
    v = validate_bundle(c, cfg, load=False)
    assert "quality" in _failed(v)
    assert "metrics.json sharpe 2.5 disagrees with the backtest records" in _gate(v, "quality").message


def test_risk_gate_fails_on_turnover_above_the_daily_maximum(tmp_path, cfg):
    c = make_candidate(tmp_path / "c", entry_hour=None, hold=1, frac=0.095)
    v = validate_bundle(c, cfg, load=False)
    assert "risk" in _failed(v)
    ch = next(x for x in _gate(v, "risk").checks if x.name == "daily_turnover")
    assert ch.measured > 2.0 and ch.threshold == 2.0
    assert "per day" in _gate(v, "risk").message and "above the maximum 2.0x per day" in _gate(v, "risk").message
    assert next(x for x in _gate(v, "risk").checks if x.name == "risk_audit").passed


def _plant(kind: str):
    eq, tr, ev = backtest_records()
    buys = tr.index[tr["side"] == "buy"]
    if kind == "cash":
        eq.loc[100:110, "cash"] = -5.0
    elif kind == "long_only":  # an extra sell while flat
        row = tr.loc[[buys[0]]].copy()
        row["side"] = "sell"
        row["ts"] = row["ts"] - 3600 * 3
        tr = pd.concat([tr.iloc[:0], row, tr]).reset_index(drop=True)
    elif kind == "halt_kill":
        b = int((tr.loc[buys[2], "ts"] - eq["ts"].iloc[0]) // 3600)
        eq.loc[b - 1, "trading_state"] = "HALTED"
    elif kind == "exposure":
        b = int((tr.loc[buys[1], "ts"] - eq["ts"].iloc[0]) // 3600)
        eq.loc[b, "exposure"] = 0.35
    elif kind == "max_positions":
        eq.loc[50:60, "n_positions"] = 11
    elif kind == "training_window":
        tr.loc[buys[0], "ts"] = tr.loc[buys[0], "ts"] - 8 * 3600  # 12:00 -> 04:00 UTC
        tr = tr.sort_values("ts", kind="stable").reset_index(drop=True)
    return eq, tr, ev


@pytest.mark.parametrize("rule", ["cash", "long_only", "halt_kill", "exposure", "max_positions", "training_window"])
def test_risk_audit_catches_each_planted_breach_and_the_risk_gate_fails(tmp_path, cfg, rule):
    eq, tr, ev = _plant(rule)
    c = make_candidate(tmp_path / "c", records=(eq, tr, ev))
    res = audit_backtest(c / "walkforward" / "backtest", cfg)
    assert rule in res.n_breaches_by_rule, (rule, res.breaches[:3])
    v = validate_bundle(c, cfg, load=False)
    assert "risk" in _failed(v)
    assert "risk-rule breach" in _gate(v, "risk").message and rule in _gate(v, "risk").message


def test_risk_audit_is_clean_on_sound_records_and_flags_missing_files(tmp_path, cfg):
    c = make_candidate(tmp_path / "c")
    res = audit_backtest(c / "walkforward" / "backtest", cfg)
    assert res.ok and res.checked["cash"] == 30 and res.checked["exposure"] == 15
    (c / "walkforward" / "backtest" / "events.parquet").unlink()
    res = audit_backtest(c / "walkforward" / "backtest", cfg)
    assert not res.ok and "events.parquet is missing" in res.breaches[0].message


def test_exposure_tolerance_is_the_configured_relative_slack(tmp_path):
    eq, tr, ev = backtest_records()
    b = int((tr.loc[tr.index[tr["side"] == "buy"][0], "ts"] - eq["ts"].iloc[0]) // 3600)
    eq.loc[b, "exposure"] = 0.2 * 1.04  # inside 5% slack, outside 3%
    c = make_candidate(tmp_path / "c", records=(eq, tr, ev))
    assert audit_backtest(c / "walkforward" / "backtest", lifecycle_config(tmp_path)).ok
    r = audit_backtest(c / "walkforward" / "backtest", lifecycle_config(tmp_path, exposure_tolerance=0.03))
    assert set(r.n_breaches_by_rule) == {"exposure"} and r.breaches[0].limit == pytest.approx(0.2)
    assert np.isclose(r.breaches[0].measured, 0.208)


def test_lifecycle_config_section_errors_name_the_key(tmp_path):
    from engine.config import config_from_dict
    from engine.errors import ConfigError

    with pytest.raises(ConfigError, match=r"lifecycle\.max_drawdown: Input should be less than or equal to 1"):
        config_from_dict({"lifecycle": {"max_drawdown": 1.5}})
    with pytest.raises(ConfigError, match=r"lifecycle\.max_turnover: unknown key"):
        config_from_dict({"lifecycle": {"max_turnover": 2.0}})
    c = config_from_dict({})
    assert (c.lifecycle.min_sharpe, c.lifecycle.max_drawdown, c.lifecycle.max_daily_turnover) == (0.5, 0.15, 2.0)
