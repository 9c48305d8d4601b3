"""``kq doctor`` (issue 17): each blocking problem is named, with what to do, and exit 1; a healthy
paper setup against the simulator exits 0; nothing is written or sent that trades.

The proofs the issue names: a fresh checkout, a stale store, a tampered model bundle (a real
approvals store: a purpose-made candidate validated and promoted, then one byte of an artifact
flipped) and the simulator down. Besides: missing, real-shaped and wrong credentials (never shown),
clock skew, a running daemon's lock, a tampered ledger. The healthy case injects the harness's tiny
real model in place of ``live_bridge.models.load_approved`` (as tests/test_live_cli.py does): the
approval checks themselves are tested in tests/test_lifecycle_*.py and by the tampered-bundle test.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kq.cli import main
from live_bridge.config import live_config_from_dict
from live_bridge.doctor import Check, blocking, check_state, looks_like_kraken_key, run_checks
from live_bridge.simulator.testing import KEY, SECRET, start_sim
from tests.live_harness import P0, SETTLE, BundleModel, H, kraken_store, paper_dict, shared_frames, sim_panel
from tests.test_live_cli import write_toml

ENV = {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET}
DEAD_URL = "http://127.0.0.1:9"  # nothing listens there (discard port, not served)
HOURS_AFTER = 820


def engine_toml(tmp: Path) -> Path:
    """configs/default.toml with the approvals store under ``tmp`` (no test sees data/approvals)."""
    from engine.paths import configs_dir

    text = (configs_dir() / "default.toml").read_text()
    assert "\n[lifecycle]\n" in text
    text = text.replace("\n[lifecycle]\n", f'\n[lifecycle]\napprovals_dir = "{tmp / "approvals"}"\n', 1)
    p = tmp / "engine.toml"
    p.write_text(text)
    return p


def setup(tmp: Path, url: str, *, store: bool = True, **over: Any):
    """(LiveConfig, its TOML file): the harness's paper config on ``url``, the engine config of
    :func:`engine_toml`; with ``store``, the market store holds the Kraken bars up to P0 - 1 h."""
    tmp.mkdir(parents=True, exist_ok=True)
    if store:
        kraken_store(tmp / "m.duckdb", shared_frames(1))
    d = paper_dict(url, tmp, engine_config=str(engine_toml(tmp)), **over)
    path = write_toml(tmp / "paper.toml", d)
    return live_config_from_dict(d, str(path)), path


def by_name(checks: list[Check]) -> dict[str, Check]:
    out = {c.name: c for c in checks}
    assert len(out) == len(checks), [c.name for c in checks]
    return out


@pytest.fixture(scope="module")
def panel():
    return sim_panel(HOURS_AFTER)


@pytest.fixture
def healthy_model(monkeypatch):
    import live_bridge.models
    from tests.live_harness import tiny_model_dir

    m = BundleModel(tiny_model_dir())
    monkeypatch.setattr(live_bridge.models, "load_approved", lambda env, cfg=None, **_: m)
    return m


def test_a_healthy_paper_setup_passes_and_nothing_is_written_or_sent(
    tmp_path, panel, healthy_model, monkeypatch, capsys
):
    from engine.store.market import MarketStore
    from live_bridge.ledger import Ledger

    sim = start_sim(panel, start=P0 + SETTLE)
    try:
        live, path = setup(tmp_path, sim.url)
        Ledger.open(live.ledger_dsn()).close()
        (tmp_path / "state").mkdir()
        with MarketStore(tmp_path / "m.duckdb", read_only=True) as s:
            before = s.content_digest()
        sent_before = dict(sim.ex.state())
        checks = run_checks(live, ENV)
        c = by_name(checks)
        assert [x for x in checks if x.status != "ok"] == [], checks
        assert not blocking(checks)
        assert c["model (paper)"].detail.startswith("tiny/1 approved")
        assert (
            "newest bar of" in c["store freshness"].detail
            and "0.0 h before the exchange's time" in c["store freshness"].detail
        )
        assert "BalanceEx and OpenOrders answered" in c["credentials"].detail
        assert c["system status"].detail == "online"
        # the CLI: exit 0, one JSON object
        for k, v in ENV.items():
            monkeypatch.setenv(k, v)
        assert main(["doctor", "--config", str(path), "--json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["ok"] is True and doc["mode"] == "paper" and {x["status"] for x in doc["checks"]} == {"ok"}
        assert main(["doctor", "--config", str(path)]) == 0
        out = capsys.readouterr().out
        assert "ready" in out and "store freshness" in out
        # read-only: the store's contents, the empty ledger, the exchange's orders are unchanged
        with MarketStore(tmp_path / "m.duckdb", read_only=True) as s:
            assert s.content_digest() == before
        with Ledger.open(live.ledger_dsn(), migrate=False) as led:
            assert led.count() == 0
        after = sim.ex.state()
        for st in (after, sent_before):  # the private queries drew nonces: nothing else may differ
            st["accounts"]["default"].pop("last_nonce")
        assert after["accounts"] == sent_before["accounts"] and after["orders"] == sent_before["orders"] == {}
        assert after.get("trades", {}) == sent_before.get("trades", {})
        assert [p.name for p in (tmp_path / "state").iterdir() if not p.name.startswith("kraken-nonce-")] == []
    finally:
        sim.stop()


def test_a_stale_store_is_named_with_its_age(tmp_path, panel, healthy_model):
    sim = start_sim(panel, start=P0 + 5 * H + SETTLE)
    try:
        live, _ = setup(tmp_path, sim.url)
        c = by_name(run_checks(live, ENV))
        f = c["store freshness"]
        # 5 h behind: the daemon's data step fetches it at start (within OHLC's 720 bars): a warning
        assert f.status == "warn" and "stale" in f.detail and "5.0 h before the exchange's time" in f.detail, f
        assert "kq live run --once" in f.fix
        sim.ex.advance(to=float(P0 + 800 * H + SETTLE))
        checks = run_checks(live, ENV)
        f = by_name(checks)["store freshness"]
        assert f.status == "fail" and "800.0 h before the exchange's time" in f.detail, f
        assert "past OHLC's 720 bars" in f.detail and "kq data import" in f.fix
        assert blocking(checks)
        # warm-up is judged on the history held (768 contiguous bars up to the newest): still ready
        assert by_name(checks)["warm-up"].status == "ok"
    finally:
        sim.stop()


def test_a_tampered_model_bundle_is_named(tmp_path, monkeypatch):
    from engine.config import load_config
    from research.lifecycle.actions import CandidateInfo, promote, validate
    from tests.lifecycle_helpers import make_candidate

    monkeypatch.setenv("KQ_OPERATOR", "doctor-test")
    live, _ = setup(tmp_path, DEAD_URL, store=False)
    cfg = load_config(live.engine_path())
    cand = CandidateInfo(ref="krakenquant/1", path=make_candidate(tmp_path / "cands" / "a", cfg), run_id="run-a")
    v, _ = validate(cand, cfg, load=False)
    assert v.passed
    promote(cand, "paper", "doctor test", "yes-promote", cfg)
    f = cand.path / "models" / "h24" / "meta.pkl"
    b = bytearray(f.read_bytes())
    b[0] ^= 1
    f.write_bytes(bytes(b))
    m = by_name(run_checks(live, ENV))["model (paper)"]
    assert m.status == "fail" and "tampered" in m.detail and "models/h24/meta.pkl" in m.detail, m
    assert "kq models rollback --env paper" in m.fix


def test_the_simulator_down_is_named_with_its_url(tmp_path, panel, healthy_model, monkeypatch, capsys):
    sim = start_sim(panel, start=P0 + SETTLE)
    live, path = setup(tmp_path, sim.url)
    sim.stop()
    checks = run_checks(live, ENV)
    c = by_name(checks)
    assert c["exchange"].status == "fail" and f"{sim.url} not reachable" in c["exchange"].detail
    assert "kq sim serve" in c["exchange"].fix
    assert c["system status"].status == "fail" and c["clock skew"].status == "fail"
    assert c["credentials"].status == "warn" and "no private query tried" in c["credentials"].detail
    # the other checks still ran
    assert c["store"].status == "ok" and c["model (paper)"].status == "ok" and c["store integrity"].status == "ok"
    for k, v in ENV.items():
        monkeypatch.setenv(k, v)
    assert main(["doctor", "--config", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and any(sim.url in x["detail"] for x in doc["checks"] if x["name"] == "exchange")


def test_a_fresh_checkout_names_every_missing_piece(tmp_path, monkeypatch, capsys):
    for k in ("KRAKEN_API_KEY", "KRAKEN_API_SECRET", "KQ_LEDGER_DSN"):
        monkeypatch.delenv(k, raising=False)
    _, path = setup(tmp_path, DEAD_URL, store=False)
    assert main(["doctor", "--config", str(path), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    c = {x["name"]: x for x in doc["checks"]}
    assert c["config"]["status"] == "ok" and c["install"]["status"] == "ok"
    assert c["store"]["status"] == "fail" and "no market store at" in c["store"]["detail"]
    assert "kq data import" in c["store"]["fix"]
    assert c["model (paper)"]["status"] == "fail" and "no model is approved for paper" in c["model (paper)"]["detail"]
    assert c["exchange"]["status"] == "fail" and "not reachable" in c["exchange"]["detail"]
    assert c["credentials"]["status"] == "fail"
    assert c["credentials"]["detail"] == "KRAKEN_API_KEY and KRAKEN_API_SECRET not set in the environment"
    assert c["ledger"]["status"] == "warn" and "the daemon creates it" in c["ledger"]["detail"]
    assert c["state dir"]["status"] == "warn"
    # a config that does not load is itself the blocking problem, named with its key
    bad = tmp_path / "bad.toml"
    bad.write_text(path.read_text().replace('mode = "paper"', 'mode = "papr"'))
    assert main(["doctor", "--config", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "config" in out and "mode" in out and "fail" in out


def test_credentials_missing_real_shaped_or_wrong_are_named_never_shown(tmp_path, panel, healthy_model):
    sim = start_sim(panel, start=P0 + SETTLE)
    try:
        live, _ = setup(tmp_path, sim.url)
        cases = [
            ({"KRAKEN_API_KEY": KEY}, "KRAKEN_API_SECRET not set in the environment"),
            ({"KRAKEN_API_SECRET": SECRET}, "KRAKEN_API_KEY not set in the environment"),
            ({"KRAKEN_API_KEY": "A" * 52 + "b+/=", "KRAKEN_API_SECRET": SECRET}, "shaped like a real Kraken API key"),
            ({"KRAKEN_API_KEY": "kq-wrong-key", "KRAKEN_API_SECRET": SECRET}, "BalanceEx"),
        ]
        for env, want in cases:
            checks = run_checks(live, env)
            cr = by_name(checks)["credentials"]
            assert cr.status == "fail" and want in cr.detail, (env, cr)
            text = json.dumps([x.to_json() for x in checks])
            for v in env.values():
                assert v not in text
    finally:
        sim.stop()
    assert looks_like_kraken_key("A" * 52 + "b+/=") and not looks_like_kraken_key(KEY)
    assert not looks_like_kraken_key("A" * 55) and not looks_like_kraken_key("A" * 55 + "!")


def test_clock_skew_against_the_exchange(tmp_path, panel, healthy_model):
    sim = start_sim(panel, start=P0 + SETTLE)
    try:
        live, _ = setup(tmp_path, sim.url, cycle={"clock": "local"})
        t = float(sim.ex.now())
        got = {}
        for off in (0.0, 12.0, -100.0):
            got[off] = by_name(run_checks(live, ENV, now=t + off))["clock skew"]
        assert got[0.0].status == "ok", got
        assert got[12.0].status == "warn" and "+12" in got[12.0].detail and "NTP" in got[12.0].fix
        assert got[-100.0].status == "fail" and "-100" in got[-100.0].detail
    finally:
        sim.stop()


def test_a_running_daemon_and_a_tampered_ledger_are_named(tmp_path):
    import sqlite3

    from live_bridge.daemon import _exclusive
    from live_bridge.ledger import Ledger
    from live_bridge.ledger.records import event
    from tests.live_harness import paper_dict

    live = live_config_from_dict(paper_dict(DEAD_URL, tmp_path))
    (tmp_path / "state").mkdir()
    assert check_state(live).status == "ok"
    held = _exclusive(tmp_path / "state" / "daemon.lock")
    try:
        s = check_state(live)
        assert s.status == "warn" and "a daemon is running" in s.detail
    finally:
        held.close()
    assert check_state(live).status == "ok"  # the doctor's try released at once

    from live_bridge.doctor import check_ledger

    with Ledger.open(live.ledger_dsn()) as led:
        led.append(event("doctor_test", payload={"n": 1}), event("doctor_test", payload={"n": 2}))
    assert check_ledger(live, {}).status == "ok"
    with sqlite3.connect(tmp_path / "ledger.sqlite") as c:
        c.execute("DROP TRIGGER ledger_entry_no_update")
        c.execute("UPDATE ledger_entry SET payload = ? WHERE seq = 1", ('{"n":7}',))
    g = check_ledger(live, {})
    assert g.status == "fail" and "ledger broken at seq 1" in g.detail, g


def test_the_shadow_model_is_checked_as_the_daemon_loads_it(tmp_path, healthy_model, monkeypatch):
    """``[shadow] model``: none configured is fine; an unregistered ref is a warning (the daemon
    trades without it); the approved model as its own shadow fails (the daemon refuses to start)."""
    monkeypatch.setenv("KQ_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # an empty registry
    live, _ = setup(tmp_path / "none", DEAD_URL, store=False)
    c = by_name(run_checks(live, ENV))["shadow model"]
    assert c.status == "ok" and c.detail.startswith("none configured"), c
    live, _ = setup(tmp_path / "missing", DEAD_URL, store=False, shadow={"model": "krakenquant/7"})
    c = by_name(run_checks(live, ENV))["shadow model"]
    assert c.status == "warn" and "krakenquant/7" in c.detail and "trades without it" in c.detail, c
    assert "[shadow] model" in c.fix
    live, _ = setup(tmp_path / "self", DEAD_URL, store=False, shadow={"model": str(healthy_model.model)})
    c = by_name(run_checks(live, ENV))["shadow model"]
    assert c.status == "fail" and "is the approved model itself" in c.detail, c
