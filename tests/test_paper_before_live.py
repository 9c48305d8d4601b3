"""Paper before live (issue 17): promoting a model to live needs 720 completed paper hours of the
same manifest digest in the paper ledger, no unresolved reconciliation mismatch and no parity
failure over them; promoting to paper needs nothing new. Synthetic paper ledgers written with the
ledger's own record builders; purpose-made candidates (tests/lifecycle_helpers.py)."""

from __future__ import annotations

import pytest

import kq.cli
from engine.errors import InputError
from engine.lifecycle_config import PROTECTED_MIN_PAPER_HOURS, required_paper_hours
from live_bridge.ledger import Ledger
from live_bridge.ledger import records as rec
from live_bridge.paper_record import read_paper_record
from research.lifecycle.actions import CandidateInfo, promote, store_for, validate
from research.lifecycle.gates import read_manifest
from tests.lifecycle_helpers import PAPER_START_HOUR, lifecycle_config, make_candidate, write_paper_ledger

H0 = PAPER_START_HOUR  # 2022-06-01 00:00 UTC


@pytest.fixture(scope="module")
def cand(tmp_path_factory):
    """One validated candidate, its manifest digest and a lifecycle config (approvals under tmp)."""
    tmp = tmp_path_factory.mktemp("paper_live")
    mp = pytest.MonkeyPatch()
    mp.setenv("KQ_OPERATOR", "erin")
    cfg = lifecycle_config(tmp)
    c = CandidateInfo(ref="krakenquant/7", path=make_candidate(tmp / "cands" / "a"), run_id="run-a")
    validate(c, cfg, load=False)
    yield c, read_manifest(c.path)["manifest_sha256"], cfg, tmp
    mp.undo()


def _fresh_store(cfg, tmp, name):
    return store_for(cfg).__class__(tmp / name)


def test_the_minimum_is_protected_and_a_config_can_only_raise_it(tmp_path):
    assert PROTECTED_MIN_PAPER_HOURS == 720
    assert required_paper_hours(lifecycle_config(tmp_path).lifecycle) == (720, [])
    low, ignored = required_paper_hours(lifecycle_config(tmp_path, min_paper_hours=24).lifecycle)
    assert low == 720 and ignored == ["lifecycle.min_paper_hours 24 is below the protected 720"]
    assert required_paper_hours(lifecycle_config(tmp_path, min_paper_hours=1000).lifecycle)[0] == 1000


def test_719_hours_are_refused_naming_what_is_missing_and_720_are_allowed(cand, tmp_path):
    c, digest, cfg, _ = cand
    led = write_paper_ledger(tmp_path / "paper.sqlite", c.ref, digest, hours=719)
    store = _fresh_store(cfg, tmp_path, "approvals")
    r = read_paper_record(led, digest)
    assert (r.hours, r.first_hour, r.last_hour) == (719, H0, H0 + 718)
    with pytest.raises(InputError) as ei:
        promote(c, "live", "ready", "yes-promote", cfg, store=store, paper_record=r)
    msg = str(ei.value)
    assert f"719 of 720 paper hours for manifest {digest[:16]}" in msg and "nothing changed" in msg
    assert "\n" not in msg and not store.log_path.exists()  # nothing written
    write_paper_ledger(led, c.ref, digest, hours=1, start_hour=H0 + 719)  # the 720th hour
    e, st = promote(c, "live", "ready", "yes-promote", cfg, store=store, paper_record=read_paper_record(led, digest))
    assert st["current"]["model"] == c.ref and e["paper_record"]["hours"] == 720
    assert e["paper_record"]["hours_required"] == 720 and e["paper_record"]["first_hour_utc"] == "2022-06-01 00:00"
    assert e["paper_record"]["last_hour_utc"] == "2022-06-30 23:00"


def test_a_config_that_raises_the_minimum_is_honoured(cand, tmp_path):
    c, digest, _, _ = cand
    strict = lifecycle_config(tmp_path, min_paper_hours=721)
    led = write_paper_ledger(tmp_path / "paper.sqlite", c.ref, digest, hours=720)
    with pytest.raises(InputError, match="720 of 721 paper hours"):
        promote(
            c,
            "live",
            "x",
            "yes-promote",
            strict,
            store=_fresh_store(strict, tmp_path, "a"),
            paper_record=read_paper_record(led, digest),
        )


def test_hours_of_another_digest_failed_hours_and_no_record_do_not_count(cand, tmp_path):
    c, digest, cfg, _ = cand
    other = "f" * 64
    led = write_paper_ledger(tmp_path / "paper.sqlite", c.ref, other, hours=720)  # same id, other manifest
    write_paper_ledger(led, c.ref, digest, hours=700, start_hour=H0 + 720)
    with Ledger.open(led) as lg:  # 20 more hours of this digest, but failed
        for h in range(H0 + 1420, H0 + 1440):
            lg.append(rec.model(h, c.ref, digest), rec.cycle_end(h, "failed"))
    r = read_paper_record(led, digest)
    assert r.hours == 700 and read_paper_record(led, other).hours == 720
    store = _fresh_store(cfg, tmp_path, "a")
    with pytest.raises(InputError, match=f"700 of 720 paper hours for manifest {digest[:16]}"):
        promote(c, "live", "x", "yes-promote", cfg, store=store, paper_record=r)
    # a record for another manifest is refused, and so is none at all
    with pytest.raises(InputError, match=f"paper record is for manifest {other[:16]}, not {digest[:16]}"):
        promote(c, "live", "x", "yes-promote", cfg, store=store, paper_record=read_paper_record(led, other))
    with pytest.raises(InputError, match="needs 720 paper hours .* no paper ledger was read"):
        promote(c, "live", "x", "yes-promote", cfg, store=store)
    assert not store.log_path.exists()


def test_a_mismatch_refuses_until_a_later_reactivate_is_applied(cand, tmp_path):
    c, digest, cfg, _ = cand
    bad = H0 + 3 * 24 + 4  # 2022-06-04 04:00
    led = write_paper_ledger(tmp_path / "paper.sqlite", c.ref, digest, hours=720, mismatch_at={bad})
    store = _fresh_store(cfg, tmp_path, "a")
    with pytest.raises(InputError) as ei:
        promote(c, "live", "x", "yes-promote", cfg, store=store, paper_record=read_paper_record(led, digest))
    assert "1 unresolved reconciliation mismatch at 2022-06-04 04:00" in str(ei.value)
    assert "paper hours" not in str(ei.value)  # the hours are there; only the mismatch is missing
    with Ledger.open(led) as lg:
        a = lg.append(rec.operator_action("reactivate", "checked the balances", "erin", "reactivate"))[0]
        # an action written but not applied does not clear it
        assert read_paper_record(led, digest).mismatches == (bad,)
        lg.append(rec.operator_applied(H0 + 720, a.seq))
    r = read_paper_record(led, digest)
    assert r.mismatches == ()
    e, _ = promote(c, "live", "x", "yes-promote", cfg, store=store, paper_record=r)
    assert e["paper_record"]["hours"] == 720


def test_a_reactivate_before_the_mismatch_does_not_clear_it(cand, tmp_path):
    c, digest, _, _ = cand
    led = tmp_path / "paper.sqlite"
    with Ledger.open(led) as lg:
        a = lg.append(rec.operator_action("reactivate", "early", "erin", "reactivate"))[0]
        lg.append(rec.operator_applied(H0 - 1, a.seq))
    write_paper_ledger(led, c.ref, digest, hours=720, mismatch_at={H0 + 10})
    assert read_paper_record(led, digest).mismatches == (H0 + 10,)


def test_a_parity_failure_refuses(cand, tmp_path):
    c, digest, cfg, _ = cand
    led = write_paper_ledger(tmp_path / "paper.sqlite", c.ref, digest, hours=400)
    with Ledger.open(led) as lg:
        lg.append(rec.event("parity_failed", H0 + 399, payload={"detail": "replay differs"}))
    write_paper_ledger(led, c.ref, digest, hours=320, start_hour=H0 + 400)
    r = read_paper_record(led, digest)
    assert r.hours == 720 and r.parity_failures == (H0 + 399,)
    store = _fresh_store(cfg, tmp_path, "a")
    with pytest.raises(InputError, match="1 parity failure at 2022-06-17 15:00"):
        promote(c, "live", "x", "yes-promote", cfg, store=store, paper_record=r)
    assert not store.log_path.exists()
    # outside the period it counts only when it names this manifest
    led2 = write_paper_ledger(tmp_path / "p2.sqlite", c.ref, digest, hours=720)
    with Ledger.open(led2) as lg:
        lg.append(rec.event("parity_failed", payload={"manifest_sha256": "e" * 64}))
    assert read_paper_record(led2, digest).parity_failures == ()
    with Ledger.open(led2) as lg:
        lg.append(rec.event("parity_failed", payload={"manifest_sha256": digest}))
    assert read_paper_record(led2, digest).parity_failures == (None,)


def test_no_ledger_or_a_broken_one_refuses_in_one_line(cand, tmp_path):
    _, digest, _, _ = cand
    missing = tmp_path / "nope.sqlite"
    with pytest.raises(InputError, match="no paper ledger at .*nope.sqlite"):
        read_paper_record(missing, digest)
    assert not missing.exists()  # not created
    with pytest.raises(InputError, match="paper ledger .* unreadable: ") as ei:
        read_paper_record("postgresql://kq:secret@127.0.0.1:1/kq", digest)
    assert "secret" not in str(ei.value) and "\n" not in str(ei.value)
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"not a database at all" * 100)
    with pytest.raises(InputError, match="paper ledger .* unreadable"):
        read_paper_record(junk, digest)


def test_the_cli_reads_the_paper_ledger_and_paper_promotion_is_unaffected(cand, tmp_path, monkeypatch, capsys):
    """kq models promote through the CLI with a stub registry lookup: paper needs no ledger, live
    refuses without one (one line, exit 2, nothing written) and with 719 hours, and passes with 720."""
    import research.lifecycle.registry as registry

    c, digest, _, _ = cand
    cfg = tmp_path / "cfg.toml"
    from engine.paths import configs_dir

    cfg.write_text(
        f'extends = "{configs_dir() / "default.toml"}"\n\n[lifecycle]\napprovals_dir = "{tmp_path / "ap"}"\n'
    )
    monkeypatch.setattr(registry, "resolve", lambda model, tracking: c)
    monkeypatch.setenv("KQ_PAPER_LEDGER_DSN", str(tmp_path / "absent.sqlite"))
    base = ["models", "promote", "7", "--reason", "r", "--confirm", "yes-promote", "--config", str(cfg)]
    assert kq.cli.main([*base, "--env", "paper"]) == 0
    assert kq.cli.main([*base, "--env", "live"]) == 2
    err = capsys.readouterr().err
    assert "no paper ledger at" in err and "absent.sqlite" in err and "Traceback" not in err
    led = write_paper_ledger(tmp_path / "paper.sqlite", c.ref, digest, hours=719)
    capsys.readouterr()
    assert kq.cli.main([*base, "--env", "live", "--paper-ledger", str(led)]) == 2
    assert f"719 of 720 paper hours for manifest {digest[:16]}" in capsys.readouterr().err
    assert not (tmp_path / "ap" / "live" / "state.json").exists()
    write_paper_ledger(led, c.ref, digest, hours=1, start_hour=H0 + 719)
    monkeypatch.setenv("KQ_PAPER_LEDGER_DSN", str(led))  # the environment default
    assert kq.cli.main([*base, "--env", "live"]) == 0
    out = capsys.readouterr().out
    assert "promoted krakenquant/7 to live" in out and "paper record: 720 hours (>= 720)" in out
