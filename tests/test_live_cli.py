"""`kq live run` and `kq live verify` through the real CLI entry point (``kq.cli.main``).

`kq live run --once` runs against the simulator replaying Kraken's real BTC/USD and ETH/USD bars
around 2022-06-01 (tests/live_harness.py), with a store pre-filled from the same bars. Model
injection: the CLI loads the model approved for the config's mode through
``live_bridge.models.load_approved``; these tests monkeypatch that function, in this process, to
return the harness's tiny real bundle (``BundleModel``), so they do not depend on an approvals log
(the approval checks are tested in tests/test_lifecycle_*.py). Everything else is the CLI's own
path: the TOML file, ``Daemon.from_config`` with credentials from the environment, start-up
recovery, the cycle, the ledger on disk.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from kq.cli import main
from live_bridge.simulator.testing import KEY, SECRET, start_sim
from tests.live_harness import (
    P0,
    SETTLE,
    BundleModel,
    H,
    kraken_store,
    paper_dict,
    shared_frames,
    sim_panel,
    tiny_model_dir,
)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string for the paths and URLs used here
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(type(v))


def write_toml(path: Path, d: dict) -> Path:
    """The harness's config dict as a TOML file (top-level keys, then one level of tables)."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in d.items() if not isinstance(v, dict)]
    for k, v in d.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines += [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def model(monkeypatch):
    """The tiny bundle stands in for the approved model (see the module docstring)."""
    import live_bridge.models

    m = BundleModel(tiny_model_dir())
    seen: list[str] = []

    def fake_load_approved(env: str, cfg: Any = None, **_: Any) -> BundleModel:
        seen.append(env)
        return m

    monkeypatch.setattr(live_bridge.models, "load_approved", fake_load_approved)
    return seen


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("KRAKEN_API_KEY", KEY)
    monkeypatch.setenv("KRAKEN_API_SECRET", SECRET)
    monkeypatch.delenv("KQ_LEDGER_DSN", raising=False)
    monkeypatch.delenv("KQ_LEDGER_HMAC_KEY", raising=False)


@pytest.fixture
def sim():
    frames = shared_frames(hours_after=48)
    s = start_sim(sim_panel(hours_after=48), start=P0)
    s.frames = frames  # type: ignore[attr-defined]
    yield s
    s.stop()


def one_error(capsys, needle: str) -> str:
    cap = capsys.readouterr()
    err = cap.err.strip()
    assert "\n" not in err and "Traceback" not in cap.err + cap.out, cap.err
    assert err.startswith("kq: error: ") and needle in err, err
    return err


def test_once_runs_the_due_hour_then_resumes_from_the_ledger(tmp_path, capsys, model, creds, sim):
    kraken_store(tmp_path / "m.duckdb", sim.frames)
    cfg = write_toml(tmp_path / "paper.toml", paper_dict(sim.url, tmp_path))
    sim.ex.advance(to=float(P0 + H + SETTLE))

    assert main(["live", "run", "--config", str(cfg), "--once"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert model == ["paper"]  # the config's mode picks the approval environment
    assert len(out) == 3, out
    assert out[0].startswith("kq live: paper  exchange http://127.0.0.1:") and "model tiny/1" in out[0]
    assert "last completed bar none" in out[1] and "reconcile ok" in out[1]
    assert out[2].startswith("2022-06-01 00:00 UTC: ACTIVE equity 100,000.00"), out[2]

    # a second process finds the hour completed in the ledger: nothing is due, nothing re-run
    assert main(["live", "run", "--config", str(cfg), "--once"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "last completed bar 2022-06-01 00:00 UTC" in out[1], out

    # the next close: exactly the next hour
    sim.ex.advance(to=float(P0 + 2 * H + SETTLE))
    assert main(["live", "run", "--config", str(cfg), "--once"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[2].startswith("2022-06-01 01:00 UTC: "), out

    # the ledger it wrote verifies; the printed anchor is its head
    assert main(["live", "verify", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("ledger verified: ") and out[1].startswith("anchor ")
    anchor = out[1].removeprefix("anchor ")
    seq = int(anchor.split(":")[0])
    assert seq > 20
    assert main(["live", "verify", "--dsn", str(tmp_path / "ledger.sqlite"), "--anchor", anchor]) == 0
    capsys.readouterr()

    # a tampered copy: one model output changed in place (triggers dropped, as a DB admin could)
    bad = tmp_path / "tampered.sqlite"
    with sqlite3.connect(tmp_path / "ledger.sqlite") as src, sqlite3.connect(bad) as dst:
        src.backup(dst)
    from engine.hashing import canonical_json

    with sqlite3.connect(bad) as c:
        for t in ("ledger_entry_no_update", "ledger_entry_no_delete", "ledger_entry_insert_extends_chain"):
            c.execute(f"DROP TRIGGER {t}")
        pseq, payload = c.execute(
            "SELECT seq, payload FROM ledger_entry WHERE kind = 'prediction' ORDER BY seq LIMIT 1"
        ).fetchone()
        p = json.loads(payload)
        p["values"]["p_up"] = "0.99"
        c.execute("UPDATE ledger_entry SET payload = ? WHERE seq = ?", (canonical_json(p), pseq))
    assert main(["live", "verify", "--dsn", str(bad)]) == 1
    err = one_error(capsys, f"ledger broken at seq {pseq} (hash)")
    assert f"rows 1..{pseq - 1} verify" in err
    # the original is untouched
    assert main(["live", "verify", "--dsn", str(tmp_path / "ledger.sqlite"), "--anchor", anchor]) == 0


def test_verify_detects_a_deleted_tail_with_the_anchor(tmp_path, capsys, model, creds, sim):
    kraken_store(tmp_path / "m.duckdb", sim.frames)
    cfg = write_toml(tmp_path / "paper.toml", paper_dict(sim.url, tmp_path))
    sim.ex.advance(to=float(P0 + H + SETTLE))
    assert main(["live", "run", "--config", str(cfg), "--once"]) == 0
    capsys.readouterr()
    assert main(["live", "verify", "--config", str(cfg)]) == 0
    anchor = capsys.readouterr().out.splitlines()[1].removeprefix("anchor ")
    seq = int(anchor.split(":")[0])
    cut = tmp_path / "cut.sqlite"
    shutil.copy(tmp_path / "ledger.sqlite", cut)
    with sqlite3.connect(cut) as c:
        c.execute("DROP TRIGGER ledger_entry_no_delete")
        c.execute("DELETE FROM ledger_entry WHERE seq >= ?", (seq - 1,))
    # the chain alone still verifies (a clean shorter chain) ...
    assert main(["live", "verify", "--dsn", str(cut)]) == 0
    capsys.readouterr()
    # ... the anchor kept elsewhere does not
    assert main(["live", "verify", "--dsn", str(cut), "--anchor", anchor]) == 1
    one_error(capsys, f"but the anchor names seq {seq}")


def test_run_forever_prints_each_hour_and_stops_cleanly(tmp_path, capsys, monkeypatch, model, creds, sim):
    """Without --once the CLI hands run_forever a printer; the test stops the loop after the first
    hour (as SIGTERM would: Daemon.stop) and the command exits 0 with its last line."""
    from live_bridge.daemon import Daemon

    orig = Daemon.run_forever

    def stop_after_first(self, on_hour=None):
        def hour(r):
            on_hour(r)
            self.stop()

        return orig(self, on_hour=hour)

    monkeypatch.setattr(Daemon, "run_forever", stop_after_first)
    kraken_store(tmp_path / "m.duckdb", sim.frames)
    cfg = write_toml(tmp_path / "paper.toml", paper_dict(sim.url, tmp_path))
    sim.ex.advance(to=float(P0 + H + SETTLE))
    assert main(["live", "run", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[2].startswith("2022-06-01 00:00 UTC: ACTIVE ") and out[3] == "kq live: stopped", out


def test_a_kraken_halt_stops_the_daemon_with_exit_3(tmp_path, capsys, model, creds, sim):
    """A halt (bad credentials) in the hour: one line, exit 3; the failed cycle is ledgered, and
    the next start runs the hour again with the kill switch asked for."""
    kraken_store(tmp_path / "m.duckdb", sim.frames)
    cfg = write_toml(tmp_path / "paper.toml", paper_dict(sim.url, tmp_path))
    sim.ex.advance(to=float(P0 + H + SETTLE))
    assert main(["live", "run", "--config", str(cfg), "--once"]) == 0
    capsys.readouterr()
    sim.ex.advance(to=float(P0 + 2 * H + SETTLE))
    code, body = sim.admin("/admin/faults", {"kind": "error", "endpoint": "BalanceEx", "message": "EAPI:Invalid key"})
    assert code == 200, body
    assert main(["live", "run", "--config", str(cfg), "--once"]) == 3
    err = one_error(capsys, "Kraken halt (credentials)")
    assert "trading stopped, see docs/LIVE.md" in err and KEY not in err and SECRET not in err

    sim.admin("/admin/faults", method="DELETE")
    assert main(["live", "run", "--config", str(cfg), "--once"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("2022-06-01 01:00 UTC: KILL_SWITCH "), out


def test_live_flag_with_a_paper_config_is_refused(tmp_path, capsys, model, creds):
    cfg = write_toml(tmp_path / "paper.toml", paper_dict("http://127.0.0.1:9", tmp_path))
    assert main(["live", "run", "--config", str(cfg), "--live", "--once"]) == 2
    one_error(capsys, "--live needs a config with mode = 'live' (this one is paper)")
    assert model == [] and not (tmp_path / "ledger.sqlite").exists()


def test_live_config_without_the_flag_is_refused(tmp_path, capsys, model, creds):
    d = paper_dict("https://api.kraken.com", tmp_path, mode="live")
    cfg = write_toml(tmp_path / "live.toml", d)
    assert main(["live", "run", "--config", str(cfg), "--once"]) == 2
    one_error(capsys, "mode is live: add --live to trade real money")
    assert model == [] and not (tmp_path / "ledger.sqlite").exists()


@pytest.mark.parametrize("unset", ["KRAKEN_API_KEY", "KRAKEN_API_SECRET"])
def test_missing_credentials_are_one_line(tmp_path, capsys, monkeypatch, model, creds, unset):
    monkeypatch.delenv(unset)
    cfg = write_toml(tmp_path / "paper.toml", paper_dict("http://127.0.0.1:9", tmp_path))
    assert main(["live", "run", "--config", str(cfg), "--once"]) == 2
    err = one_error(capsys, f"{unset} not set in the environment")
    assert KEY not in err and SECRET not in err
    assert not (tmp_path / "ledger.sqlite").exists()


def test_bad_secret_is_one_line_without_the_value(tmp_path, capsys, monkeypatch, model, creds):
    monkeypatch.setenv("KRAKEN_API_SECRET", "not-base64!!")
    cfg = write_toml(tmp_path / "paper.toml", paper_dict("http://127.0.0.1:9", tmp_path))
    assert main(["live", "run", "--config", str(cfg), "--once"]) == 2
    err = one_error(capsys, "KRAKEN_API_SECRET is empty or not valid base64")
    assert "not-base64!!" not in err


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"cycle": {"settle_dealy_s": 5}}, "cycle.settle_dealy_s: Extra inputs are not permitted"),
        ({"universe": {"pairs": ["BTC/USD", "ETH/USDT"]}}, "universe.pairs: all pairs must share one quote currency"),
        ({"exchange": {"url": "http://10.0.0.1:8765"}}, "mode paper trades against the local simulator only"),
        ({"cycle": {"history_bars": 100}}, "cycle.history_bars: Input should be greater than or equal to 800"),
    ],
)
def test_bad_config_is_one_line(tmp_path, capsys, model, creds, over, needle):
    cfg = write_toml(tmp_path / "paper.toml", paper_dict("http://127.0.0.1:9", tmp_path, **over))
    assert main(["live", "run", "--config", str(cfg), "--once"]) == 2
    err = one_error(capsys, needle)
    assert str(cfg) in err
    assert model == []


def test_missing_and_invalid_config_files(tmp_path, capsys):
    assert main(["live", "run", "--config", str(tmp_path / "nope.toml")]) == 2
    one_error(capsys, "no such live config file")
    bad = tmp_path / "bad.toml"
    bad.write_text("mode = paper\n")
    assert main(["live", "run", "--config", str(bad)]) == 2
    one_error(capsys, "invalid TOML")


def test_verify_refuses_a_missing_ledger_and_bad_arguments(tmp_path, capsys):
    assert main(["live", "verify", "--dsn", str(tmp_path / "none.sqlite")]) == 2
    one_error(capsys, "no ledger at")
    assert not (tmp_path / "none.sqlite").exists()  # verify never creates one
    assert main(["live", "verify", "--dsn", "x.sqlite", "--config", "configs/paper.toml"]) == 2
    one_error(capsys, "give --config or --dsn, not both")
    assert main(["live", "verify", "--dsn", "x.sqlite", "--anchor", "12"]) == 2
    one_error(capsys, "--anchor '12': use SEQ:HASH")
