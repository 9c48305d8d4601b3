"""Promotion, rollback and the hash-chained approvals log on purpose-made candidates.

Every refusal (no confirm word, unvalidated, failed, changed since validation, tampered, nothing to
roll back to, edited/deleted log line, edited state) leaves the approved model unchanged; paper and
live are independent; the loader refuses everything but an intact, approved, passed, schema-matching
model (its success path, which unpickles a real model, is in test_lifecycle_e2e.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from engine.errors import ConfigError, InputError, IntegrityError
from live_bridge.models import load_approved
from research.lifecycle.actions import CandidateInfo, promote, rollback, store_for, validate
from research.lifecycle.approvals import entry_hash
from research.lifecycle.util import ZERO_HASH, canonical_json
from tests.lifecycle_helpers import lifecycle_config, make_candidate, paper_record_for


def _paper(cand):
    """720 clean paper hours of the candidate's manifest (what a live promotion needs)."""
    return paper_record_for(cand.path.parent, cand.path)


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("KQ_OPERATOR", "alice")
    cfg = lifecycle_config(tmp_path)
    cands = {}
    for name, kw in (("a", {}), ("b", dict(frac=0.07)), ("c", dict(frac=0.06)), ("bad", dict(drift=-0.0004))):
        p = make_candidate(tmp_path / "cands" / name, **kw)
        cands[name] = CandidateInfo(ref=f"krakenquant/{name}", path=p, run_id=f"run-{name}")
    return cfg, cands, store_for(cfg)


def _snapshot(store):
    files = sorted(p for p in store.root.rglob("*") if p.is_file() and p.name != ".lock") if store.root.exists() else []
    return {p.relative_to(store.root).as_posix(): p.read_bytes() for p in files}


def _current(store, e):
    s = store.state(e)["current"]
    return s["model"] if s else None


def test_promote_needs_the_exact_confirm_word_and_a_passed_verdict(env):
    cfg, c, store = env
    validate(c["a"], cfg, load=False)
    for word in (None, "yes", "YES-PROMOTE", "yes-promote "):
        with pytest.raises(InputError, match="promote refused: pass --confirm yes-promote.*nothing changed"):
            promote(c["a"], "paper", "first", word, cfg)
    assert _snapshot(store) == {}
    with pytest.raises(IntegrityError, match="has not been validated"):
        promote(c["b"], "paper", "first", "yes-promote", cfg)
    v, _ = validate(c["bad"], cfg, load=False)
    assert not v.passed
    with pytest.raises(IntegrityError, match=r"validation FAILED \(quality: FAILED: out-of-sample Sharpe"):
        promote(c["bad"], "paper", "first", "yes-promote", cfg)
    with pytest.raises(InputError, match="--reason"):
        promote(c["a"], "paper", "  ", "yes-promote", cfg)
    with pytest.raises(InputError, match="--env staging"):
        promote(c["a"], "staging", "x", "yes-promote", cfg)
    assert _snapshot(store) == {}
    e, st = promote(c["a"], "paper", "first", "yes-promote", cfg)
    assert _current(store, "paper") == "krakenquant/a" and _current(store, "live") is None
    assert e["who"] == "alice" and e["reason"] == "first" and e["env"] == "paper" and e["seq"] == 1
    assert [g["gate"] for g in e["gates"]] == ["integrity", "schema", "quality", "risk"]
    assert all(g["passed"] for g in e["gates"])
    with pytest.raises(InputError, match="already the approved paper model"):
        promote(c["a"], "paper", "again", "yes-promote", cfg)


def test_a_candidate_changed_after_validation_or_tampered_is_refused(env):
    cfg, c, store = env
    validate(c["a"], cfg, load=False)
    validate(c["b"], cfg, load=False)
    promote(c["a"], "paper", "first", "yes-promote", cfg)
    before = _snapshot(store)
    f = c["b"].path / "models" / "h24" / "meta.pkl"
    f.write_bytes(f.read_bytes() + b"!")
    with pytest.raises(IntegrityError, match="tampered or incomplete model .*meta.pkl: sha256 differs"):
        promote(c["b"], "paper", "second", "yes-promote", cfg)
    from tests.lifecycle_helpers import rehash

    rehash(c["b"].path)  # consistent again, but not the manifest the verdict judged
    with pytest.raises(IntegrityError, match="verdict .* is for another manifest"):
        promote(c["b"], "paper", "second", "yes-promote", cfg)
    assert _snapshot(store) == before and _current(store, "paper") == "krakenquant/a"


def test_promote_keeps_the_previous_model_as_rollback_target_and_rollback_restores_it(env):
    cfg, c, store = env
    for k in ("a", "b", "c"):
        validate(c[k], cfg, load=False)
    with pytest.raises(InputError, match="nothing to roll back to in paper \\(nothing is approved"):
        rollback("paper", "yes-rollback", cfg)
    promote(c["a"], "paper", "first", "yes-promote", cfg)
    with pytest.raises(InputError, match="nothing to roll back to in paper \\(krakenquant/a is the only approval"):
        rollback("paper", "yes-rollback", cfg)
    promote(c["b"], "paper", "second", "yes-promote", cfg)
    _, st = promote(c["c"], "paper", "third", "yes-promote", cfg)
    assert [p["model"] for p in st["previous"]] == ["krakenquant/a", "krakenquant/b"]
    before = _snapshot(store)
    with pytest.raises(InputError, match="pass --confirm yes-rollback"):
        rollback("paper", "yes-promote", cfg)
    assert _snapshot(store) == before
    e, st = rollback("paper", "yes-rollback", cfg, reason="c misbehaves")
    assert e["model"] == "krakenquant/b" and e["replaced"] == "krakenquant/c" and e["reason"] == "c misbehaves"
    assert _current(store, "paper") == "krakenquant/b" and [p["model"] for p in st["previous"]] == ["krakenquant/a"]
    rollback("paper", "yes-rollback", cfg)
    assert _current(store, "paper") == "krakenquant/a"
    with pytest.raises(InputError, match="nothing to roll back to"):
        rollback("paper", "yes-rollback", cfg)
    assert store.audit().ok and store.audit().n_entries == 5


def test_rollback_to_a_tampered_model_is_refused_and_changes_nothing(env):
    cfg, c, store = env
    for k in ("a", "b"):
        validate(c[k], cfg, load=False)
    promote(c["a"], "live", "first", "yes-promote", cfg, paper_record=_paper(c["a"]))
    promote(c["b"], "live", "second", "yes-promote", cfg, paper_record=_paper(c["b"]))
    (c["a"].path / "config.json").write_text("{}")
    before = _snapshot(store)
    with pytest.raises(IntegrityError, match="rollback refused: tampered or incomplete model .*config.json"):
        rollback("live", "yes-rollback", cfg)
    assert _snapshot(store) == before and _current(store, "live") == "krakenquant/b"


def test_paper_and_live_approvals_are_independent(env):
    cfg, c, store = env
    for k in ("a", "b"):
        validate(c[k], cfg, load=False)
    promote(
        c["a"], "live", "straight to live", "yes-promote", cfg, paper_record=_paper(c["a"])
    )  # paper hours, no paper approval
    promote(c["b"], "paper", "try b", "yes-promote", cfg)
    promote(c["a"], "paper", "a on paper too", "yes-promote", cfg)
    assert _current(store, "live") == "krakenquant/a" and _current(store, "paper") == "krakenquant/a"
    rollback("paper", "yes-rollback", cfg)
    assert _current(store, "paper") == "krakenquant/b" and _current(store, "live") == "krakenquant/a"
    assert store.state("live")["previous"] == []


def test_the_log_is_a_sha256_chain_starting_from_zeros(env):
    cfg, c, store = env
    for k in ("a", "b"):
        validate(c[k], cfg, load=False)
    promote(c["a"], "paper", "one", "yes-promote", cfg)
    promote(c["b"], "live", "two", "yes-promote", cfg, paper_record=_paper(c["b"]))
    lines = store.log_path.read_text().splitlines()
    assert len(lines) == 2
    prev = ZERO_HASH
    for i, line in enumerate(lines, start=1):
        e = json.loads(line)
        body = {k: v for k, v in e.items() if k != "hash"}
        assert e["seq"] == i and e["prev_hash"] == prev
        assert e["hash"] == hashlib.sha256((prev + canonical_json(body)).encode()).hexdigest() == entry_hash(prev, e)
        assert {"who", "ts_utc", "env", "model", "reason", "gates", "manifest_sha256"} <= set(e)
        prev = e["hash"]


@pytest.mark.parametrize("edit", ["edit_reason", "delete_first", "delete_last", "swap", "edit_state", "garbage"])
def test_an_edited_log_or_state_is_detected_and_blocks_promote_rollback_and_loading(env, edit):
    cfg, c, store = env
    for k in ("a", "b", "c"):
        validate(c[k], cfg, load=False)
    promote(c["a"], "paper", "one", "yes-promote", cfg)
    promote(c["b"], "paper", "two", "yes-promote", cfg)
    assert store.audit().ok
    lines = store.log_path.read_text().splitlines(keepends=True)
    if edit == "edit_reason":
        lines[0] = lines[0].replace('"reason":"one"', '"reason":"on3"')
    elif edit == "delete_first":
        lines = lines[1:]
    elif edit == "delete_last":
        lines = lines[:-1]
    elif edit == "swap":
        lines = lines[::-1]
    elif edit == "garbage":
        lines.insert(1, "not json\n")
    if edit == "edit_state":
        p = store.state_path("paper")
        s = json.loads(p.read_text())
        s["current"], s["previous"] = s["previous"][0], []
        p.write_text(json.dumps(s))
    else:
        store.log_path.write_text("".join(lines))
    rep = store.audit()
    assert not rep.ok and rep.problems
    before = _snapshot(store)
    with pytest.raises(IntegrityError, match="promote refused: approvals log FAILED its audit.*nothing changed"):
        promote(c["c"], "paper", "three", "yes-promote", cfg)
    with pytest.raises(IntegrityError, match="rollback refused: approvals log FAILED its audit"):
        rollback("paper", "yes-rollback", cfg)
    with pytest.raises(IntegrityError, match=r"model loader \(paper\): approvals log FAILED its audit"):
        load_approved("paper", cfg)
    assert _snapshot(store) == before


def test_an_interrupted_promote_is_reported_and_state_can_be_rebuilt_from_a_sound_chain(env):
    cfg, c, store = env
    for k in ("a", "b"):
        validate(c[k], cfg, load=False)
    promote(c["a"], "paper", "one", "yes-promote", cfg)
    saved = store.state_path("paper").read_bytes()
    promote(c["b"], "paper", "two", "yes-promote", cfg)
    store.state_path("paper").write_bytes(saved)  # as if the state write after the log append was lost
    rep = store.audit()
    assert not rep.ok and "paper/state.json differs from the log replay" in rep.problems[0]
    with store.locked():
        assert store.rebuild_states() == ["paper"]
    assert store.audit().ok and _current(store, "paper") == "krakenquant/b"
    store.log_path.write_text(store.log_path.read_text().replace('"reason":"two"', '"reason":"tw0"'))
    with store.locked(), pytest.raises(IntegrityError, match="state rebuild refused"):
        store.rebuild_states()


def test_loader_refuses_when_nothing_is_approved_or_the_approved_model_was_tampered_with(env):
    cfg, c, store = env
    with pytest.raises(ConfigError, match=r"model loader \(live\): no model is approved for live"):
        load_approved("live", cfg)
    with pytest.raises(ConfigError, match="unknown environment"):
        load_approved("prod", cfg)
    validate(c["a"], cfg, load=False)
    promote(c["a"], "live", "one", "yes-promote", cfg, paper_record=_paper(c["a"]))
    with pytest.raises(ConfigError, match=r"no model is approved for paper"):
        load_approved("paper", cfg)  # a live approval does not make a paper one
    f = c["a"].path / "walkforward" / "metrics.json"
    good = f.read_bytes()
    f.write_bytes(good + b" ")
    with pytest.raises(IntegrityError, match=r"model loader \(live\) refused: tampered .*walkforward/metrics.json"):
        load_approved("live", cfg)
    f.write_bytes(good)
    v = c["a"].path / "verdict.json"
    doc = json.loads(v.read_text())
    doc["passed"] = False
    v.write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match="validation FAILED"):
        load_approved("live", cfg)
    v.unlink()
    with pytest.raises(IntegrityError, match="has not been validated"):
        load_approved("live", cfg)
    validate(c["a"], cfg, load=False)
    other = cfg.model_copy(update={"features": cfg.features.model_copy(update={"mom_horizons": (1, 4, 12)})})
    with pytest.raises(ConfigError, match="schema: FAILED"):
        load_approved("live", other)


def _protected(monkeypatch, **gates):
    """Patch the protected table (the code constant) for both environments: how a verdict judged under
    looser thresholds (older code, or a patched copy) is made on purpose."""
    import engine.lifecycle_config as lc

    t = dict(lc.PROTECTED_GATE_THRESHOLDS["live"], **gates)
    monkeypatch.setattr(lc, "PROTECTED_GATE_THRESHOLDS", {"paper": t, "live": t})


def test_a_verdict_judged_under_looser_thresholds_is_not_enough_to_promote_or_load(env, tmp_path, monkeypatch):
    cfg, c, store = env
    loser = CandidateInfo(ref="krakenquant/loser", path=make_candidate(tmp_path / "cands" / "loser", crash_at=310))
    lax = lifecycle_config(tmp_path, min_sharpe=-10.0, max_drawdown=0.5)
    with monkeypatch.context() as m:
        _protected(m, min_sharpe=-10.0, max_drawdown=0.5)
        v, _ = validate(loser, lax, load=False)
    q = {ch.name: ch for g in v.gates for ch in g.checks}
    assert v.passed and v.thresholds["min_sharpe"] == -10.0 and q["oos_sharpe"].measured < -3  # a losing model
    for who in (cfg, lax):  # neither the real config nor the lax one that judged it can promote it
        with pytest.raises(
            IntegrityError,
            match=r"validated under looser thresholds than the protected paper gates "
            r".*min_sharpe -10.0 vs 0.5; max_drawdown 0.5 vs 0.15",
        ):
            promote(loser, "paper", "sneak", "yes-promote", who)
    assert _snapshot(store) == {}
    # approved while the protected floor was lower: the loader (live bridge) refuses it now
    with monkeypatch.context() as m:
        _protected(m, min_sharpe=-10.0, max_drawdown=0.5)
        promote(loser, "paper", "old floor", "yes-promote", lax)
    for who in (cfg, lax):
        with pytest.raises(IntegrityError, match="looser thresholds"):
            load_approved("paper", who)


def test_a_lax_config_cannot_approve_a_losing_model_and_the_approval_names_its_thresholds(env, tmp_path):
    """issue 21 item 12: validate + promote under a config with min_sharpe = -10 recorded a losing
    model as approved for live. Now the protected thresholds apply; the verdict and the log entry
    name the thresholds used and the protected table's digest."""
    from engine.lifecycle_config import protected_sha256

    cfg, c, store = env
    lax = lifecycle_config(tmp_path, min_sharpe=-10.0, max_drawdown=0.5, max_daily_turnover=100.0)
    v, _ = validate(c["bad"], lax, load=False)
    assert not v.passed and v.thresholds["min_sharpe"] == 0.5
    assert v.thresholds_source["protected_sha256"] == protected_sha256()
    with pytest.raises(IntegrityError, match=r"validation FAILED \(quality: FAILED: out-of-sample Sharpe -38"):
        promote(c["bad"], "live", "sneak", "yes-promote", lax, paper_record=_paper(c["bad"]))
    assert _snapshot(store) == {}
    validate(c["a"], lax, load=False)
    e, _ = promote(c["a"], "live", "sound", "yes-promote", lax, paper_record=_paper(c["a"]))
    want = {"min_sharpe": 0.5, "max_drawdown": 0.15, "max_daily_turnover": 2.0, "exposure_tolerance": 0.05}
    assert e["thresholds"] == want and e["thresholds_required"] == want
    assert e["thresholds_protected_sha256"] == e["verdict_protected_sha256"] == protected_sha256()
    logged = json.loads(store.log_path.read_text().splitlines()[-1])
    assert logged["thresholds"] == want and logged["hash"] == entry_hash(logged["prev_hash"], logged)
    assert store.audit().ok


def test_a_stricter_config_is_honoured_and_a_verdict_judged_more_loosely_than_it_is_refused(env, tmp_path):
    cfg, c, store = env
    strict = lifecycle_config(tmp_path, min_sharpe=5.0)
    v, _ = validate(c["a"], strict, load=False)  # Sharpe 3.3 < 5
    assert not v.passed and v.thresholds["min_sharpe"] == 5.0
    validate(c["a"], cfg, load=False)  # passed under the protected 0.5
    with pytest.raises(IntegrityError, match=r"looser thresholds .*min_sharpe 0.5 vs 5.0"):
        promote(c["a"], "paper", "x", "yes-promote", strict)


def test_a_verdict_whose_gate_checks_used_looser_thresholds_than_it_claims_is_refused(env):
    from research.lifecycle.gates import VERDICT_NAME

    cfg, c, store = env
    validate(c["a"], cfg, load=False)
    p = c["a"].path / VERDICT_NAME
    v = json.loads(p.read_text())
    for g in v["gates"]:
        for ch in g["checks"]:
            if ch["name"] == "daily_turnover":
                ch["threshold"] = 50.0
    p.write_text(json.dumps(v))
    with pytest.raises(IntegrityError, match=r"check daily_turnover: max_daily_turnover 50.0 vs 2.0"):
        promote(c["a"], "paper", "x", "yes-promote", cfg)
    assert _snapshot(store) == {}


def _edit_verdict(path, edit):
    from research.lifecycle.gates import VERDICT_NAME

    p = path / VERDICT_NAME
    v = json.loads(p.read_text())
    edit(v)
    p.write_text(json.dumps(v))


def _pass_everything(v):
    v["passed"] = True
    for g in v["gates"]:
        g["passed"] = True
        g["message"] = f"{g['gate']}: passed"
        for ch in g["checks"]:
            ch["passed"], ch["message"] = True, ""


def _check_named(check, **fields):
    def edit(v):
        for g in v["gates"]:
            for ch in g["checks"]:
                if ch["name"] == check:
                    ch.update(fields)

    return edit


def test_a_hand_edited_verdict_is_refused_by_promote_rollback_and_the_loader(env):
    """verdict.json is not covered by the manifest: promote, rollback and the loader re-run the gates
    that read only the bundle's files and refuse a verdict that is not what they say."""
    cfg, c, store = env
    validate(c["bad"], cfg, load=False)  # a losing model: quality FAILED
    _edit_verdict(c["bad"].path, _pass_everything)
    with pytest.raises(IntegrityError, match=r"re-running the gates .* FAILED \(quality: FAILED: out-of-sample Sharpe"):
        promote(c["bad"], "paper", "sneak", "yes-promote", cfg)
    assert _snapshot(store) == {}
    # a passing model whose recorded figures were "improved": refused although it would pass
    validate(c["a"], cfg, load=False)
    _edit_verdict(c["a"].path, _check_named("oos_sharpe", measured=9.9))
    with pytest.raises(
        IntegrityError, match=r"verdict.json differs from a re-run .*quality check oos_sharpe: recorded measured"
    ):
        promote(c["a"], "live", "x", "yes-promote", cfg, paper_record=_paper(c["a"]))
    _edit_verdict(c["a"].path, _check_named("oos_sharpe", name="renamed"))
    with pytest.raises(IntegrityError, match="quality check oos_sharpe: recorded missing"):
        promote(c["a"], "live", "x", "yes-promote", cfg, paper_record=_paper(c["a"]))
    assert _snapshot(store) == {}
    # approved, then edited: the loader and a rollback to it refuse
    validate(c["a"], cfg, load=False)
    validate(c["b"], cfg, load=False)
    promote(c["a"], "live", "one", "yes-promote", cfg, paper_record=_paper(c["a"]))
    promote(c["b"], "live", "two", "yes-promote", cfg, paper_record=_paper(c["b"]))
    _edit_verdict(c["b"].path, _check_named("risk_audit", message="edited"))
    with pytest.raises(
        IntegrityError, match=r"model loader \(live\) refused: .*risk check risk_audit: recorded message"
    ):
        load_approved("live", cfg)
    _edit_verdict(c["a"].path, _check_named("daily_turnover", measured=0.0))
    before = _snapshot(store)
    with pytest.raises(IntegrityError, match="rollback refused: .*risk check daily_turnover: recorded measured"):
        rollback("live", "yes-rollback", cfg)
    assert _snapshot(store) == before


def _promote_in_child(args):
    import os

    cfg_kw, path, ref, env_name = args
    os.environ["KQ_OPERATOR"] = ref
    from research.lifecycle.actions import CandidateInfo, promote

    cfg = lifecycle_config(cfg_kw)
    cand = CandidateInfo(ref=ref, path=path)
    promote(cand, env_name, "race", "yes-promote", cfg, paper_record=_paper(cand))
    return ref


def test_concurrent_promotes_serialise_on_the_lock(env, tmp_path):
    import multiprocessing as mp

    cfg, c, store = env
    for k in ("a", "b", "c"):
        validate(c[k], cfg, load=False)
    ctx = mp.get_context("fork")
    with ctx.Pool(3) as pool:
        done = pool.map(_promote_in_child, [(tmp_path, c[k].path, c[k].ref, "live") for k in ("a", "b", "c")])
    assert sorted(done) == ["krakenquant/a", "krakenquant/b", "krakenquant/c"]
    rep = store.audit()
    assert rep.ok and rep.n_entries == 3
    st = store.state("live")
    assert len(st["previous"]) == 2 and {st["current"]["model"], *(p["model"] for p in st["previous"])} == set(done)
