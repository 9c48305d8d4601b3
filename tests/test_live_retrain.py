"""Retraining in the training window (issue 17; live_bridge/retrain.py): the paper daemon against the
simulator replaying real Kraken bars, with the manual (exchange) clock, trading with a model that
``load_approved`` returns; ``[retrain]`` on with a tiny research config over the daemon's own bars.

The proof: no job while the wall hour is outside the window; exactly one when an hour inside it
begins; the job is another process and the daemon's hours keep completing while it trains; a restart
during the window starts no second job and the restarted daemon ledgers the first one's result; the
job registers a real, validated candidate and the approved model (and the approvals log) are
unchanged. A job that fails, hangs past its timeout or vanishes is ``retrain_failed`` and the daemon
keeps trading.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.paths import configs_dir
from live_bridge.ledger import Kind
from tests.live_harness import P0, SETTLE, H, kraken_store, make_daemon, shared_frames, sim_panel, tiny_model_dir

HOURS_AFTER = 12
SPAN = 300  # bars trained on: the 768-bar warm-up before them is in the store (it starts P0 - 1100 h)


def _events(ledger, code: str | None = None) -> list:
    return [
        e for e in ledger.entries(kind=Kind.EVENT) if e.code.startswith("retrain_") and (code is None or e.code == code)
    ]


@pytest.fixture(scope="module")
def approved(tmp_path_factory):
    """An engine config whose approvals store (in tmp) approves the tiny real bundle for paper (its
    walk-forward records purpose-made so it passes the gates), and that model as load_approved gives it."""
    from live_bridge.models import load_approved
    from research.lifecycle.actions import CandidateInfo, promote, validate
    from tests.lifecycle_helpers import backtest_records, rehash, write_records

    tmp = tmp_path_factory.mktemp("retrain_approved")
    engine = tmp / "engine.toml"
    engine.write_text(
        f'extends = "{configs_dir() / "default.toml"}"\n\n[lifecycle]\napprovals_dir = "{tmp / "approvals"}"\n'
    )
    from engine.config import load_config

    cfg = load_config(engine)
    bundle = tmp / "approved-bundle"
    shutil.copytree(tiny_model_dir(), bundle)
    write_records(bundle, *backtest_records())
    rehash(bundle)
    ci = CandidateInfo("tiny/1", bundle)
    v, _ = validate(ci, cfg)
    assert v.passed, [g.message for g in v.gates]
    promote(ci, "paper", "retrain test", "yes-promote", cfg)
    return engine, cfg, load_approved("paper", cfg)


def _research_toml(tmp: Path, engine: Path, train_bars: int = 168) -> Path:
    p = tmp / "research.toml"
    p.write_text(
        f'extends = "{engine}"\n\n[data]\nvenue = "kraken"\n\n[research]\nhorizons = [24]\ntrade_horizon = 24\n'
        'tiny = true\nbase_models = ["xgboost", "lightgbm"]\n\n'
        f"[research.folds]\ntrain_bars = {train_bars}\ntest_bars = 48\npurge_bars = 24\nembargo_bars = 24\n"
        f'inner_folds = 2\n\n[research.tracking]\nuri = "sqlite:///{tmp / "mlflow.db"}"\n'
    )
    return p


class Run:
    def __init__(self, tmp: Path, approved: Any, first: int, **retrain: Any) -> None:
        from live_bridge.simulator.testing import start_sim

        self.engine, self.cfg, self.model = approved
        self.tmp, self.first, self.n = tmp, first, 0
        tmp.mkdir(parents=True, exist_ok=True)
        self.research = _research_toml(tmp, self.engine, **retrain.pop("research", {}))
        kraken_store(tmp / "m.duckdb", shared_frames(HOURS_AFTER), upto=P0 - H)
        self.sim = start_sim(sim_panel(HOURS_AFTER), start=first + SETTLE, balances={"USD": "10000"})
        self.retrain = {
            "enabled": True,
            "config": str(self.research),
            "span_hours": SPAN,
            "out_root": str(tmp / "runs"),
            "nice": 0,  # the shared test machine is busy: the job at normal priority
            **retrain,
        }
        self.daemon = self.new_daemon()

    def new_daemon(self) -> Any:
        d = make_daemon(self.sim.url, self.tmp, self.model, engine_config=str(self.engine), retrain=self.retrain)
        rep = d.start()
        assert rep.reconcile == "ok" and not rep.latch, rep
        return d

    def hour(self) -> list:
        """The next hour: the simulator to its close + SETTLE, then the daemon's due hours (timed)."""
        self.n += 1
        self.sim.ex.advance(to=float(self.first + self.n * H + SETTLE))
        return self.daemon.run_once()

    def wait_job(self, limit_s: float = 150.0) -> list:
        """Poll (no hour due) until the job's end is ledgered."""
        t = time.monotonic()
        while time.monotonic() - t < limit_s:
            self.daemon.run_once()
            ends = _events(self.daemon.ledger, "retrain_finished") + _events(self.daemon.ledger, "retrain_failed")
            if ends:
                return ends
            time.sleep(0.3)
        raise AssertionError(f"no retrain_finished/failed within {limit_s} s: {self.log()}")

    def log(self) -> str:
        logs = list((self.tmp / "state" / "retrain").glob("*/log.txt"))
        return logs[0].read_text()[-3000:] if logs else "(no job log)"

    def close(self) -> None:
        self.daemon.close()
        self.sim.stop()


def _approvals(cfg) -> tuple[str, bytes]:
    from live_bridge.models import load_approved
    from research.lifecycle.actions import approvals_dir

    d = approvals_dir(cfg)
    blob = b"".join(p.read_bytes() for p in sorted(d.glob("*")) if p.is_file() and p.name != ".lock")
    return load_approved("paper", cfg).manifest_sha256, blob


# ---- the window job, end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def job(tmp_path_factory, approved):
    """Daemon from 2022-06-01 01:00 UTC; the window (default 03:00-05:00) begins after its 2nd hour."""
    t0 = time.perf_counter()
    run = Run(tmp_path_factory.mktemp("retrain_job"), approved, first=P0 + H)
    before = _approvals(run.cfg)
    out: dict[str, Any] = {"before": before}
    out["h1"] = run.hour()  # bar 01:00 run at 02:00:30: the wall hour 02:00 is outside the window
    out["after_h1"] = _events(run.daemon.ledger)
    t = time.perf_counter()
    out["h2"] = run.hour()  # bar 02:00 run at 03:00:30: the hour 03:00 begins inside the window
    out["h2_s"] = time.perf_counter() - t
    out["after_h2"] = _events(run.daemon.ledger)
    t = time.perf_counter()
    out["h3"] = run.hour()  # bar 03:00 while the job trains
    out["h3_s"] = time.perf_counter() - t
    out["ends_after_h3"] = [e for e in _events(run.daemon.ledger) if e.code != "retrain_started"]
    # restart during the window, the job still running: the new daemon must not start another
    run.daemon.close()
    run.daemon = run.new_daemon()
    run.daemon.run_once()
    out["after_restart"] = _events(run.daemon.ledger)
    out["h4"] = run.hour()  # bar 04:00 at 05:00:30 (window over)
    t1 = time.perf_counter()
    out["ends"] = run.wait_job()
    print(
        f"\nretrain job: set-up and 4 hours {t1 - t0:.1f} s, then waited {time.perf_counter() - t1:.1f} s; hour 02:00 "
        f"(+ export and spawn) took {out['h2_s']:.1f} s, hour 03:00 (job training) took {out['h3_s']:.1f} s; "
        f"job {out['ends'][0].payload.get('seconds')} s"
    )
    out["after"] = _approvals(run.cfg)
    out["ledger"] = run.daemon.ledger
    yield run, out
    run.close()


def test_no_job_outside_the_window_and_exactly_one_inside(job):
    run, o = job
    assert [r.status for r in o["h1"]] == ["completed"] and o["after_h1"] == []
    assert [r.status for r in o["h2"]] == ["completed"]
    started = [e for e in o["after_h2"] if e.code == "retrain_started"]
    assert len(started) == 1, [e.code for e in o["after_h2"]]
    p = started[0].payload
    assert started[0].hour == (P0 + 3 * H) // H and p["window_open"] == P0 + 3 * H
    # the job trains on bars up to the last completed hour (02:00), never the hour that is running
    assert p["data_end"] == P0 + 2 * H and len(p["config_sha256"]) == 64
    assert len(_events(o["ledger"], "retrain_started")) == 1  # also after the restart and the wait


def test_hours_keep_completing_while_the_job_trains(job):
    run, o = job
    assert [r.status for r in o["h3"]] == ["completed"] and [r.status for r in o["h4"]] == ["completed"]
    assert o["ends_after_h3"] == [], "the job ended before the next hour: nothing proves the cycle did not wait"
    led = o["ledger"]
    fin = o["ends"][0]
    done = {e.hour: e.seq for e in led.entries(kind=Kind.CYCLE_END) if e.code == "completed"}
    st = _events(led, "retrain_started")[0]
    # hours 03:00 and 04:00 completed between the job's start and its end: the cycle never waited
    assert st.seq < done[(P0 + 3 * H) // H] < done[(P0 + 4 * H) // H] < fin.seq
    assert o["h3_s"] < 30, f"an hour took {o['h3_s']:.1f} s while the job trained"


def test_restart_during_the_window_starts_no_second_job(job):
    run, o = job
    assert [e.code for e in o["after_restart"]] == ["retrain_started"]
    assert len(list((run.tmp / "state" / "retrain").iterdir())) == 1


def test_job_registers_a_validated_candidate_and_approves_nothing(job):
    from research.lifecycle.gates import read_manifest, read_verdict
    from research.lifecycle.registry import load_configs, resolve

    run, o = job
    assert [e.code for e in o["ends"]] == ["retrain_finished"], (o["ends"][0].payload, run.log())
    p = o["ends"][0].payload
    _, tracking = load_configs(run.research)
    cand = resolve(p["candidate"], tracking)
    man = read_manifest(cand.path)
    assert p["manifest_sha256"] == man["manifest_sha256"]
    assert set(p["verdicts"]) == {"integrity", "schema", "quality", "risk"}
    v = read_verdict(cand.path)
    assert v is not None and v["manifest_sha256"] == man["manifest_sha256"] and v["passed"] == p["passed"]
    assert cand.tags.get("stage") == "candidate" and cand.tags.get("produced_by") == "live-retrain"
    # real bars of the daemon's pairs, none after the data end (the hour before the window)
    assert man["data"]["venue"] == "kraken" and sorted(man["data"]["pairs"]) == ["BTC/USD", "ETH/USD"]
    assert man["data"]["train_end"] <= P0 + 2 * H
    # the approved model and the approvals log are exactly as before: the job approves nothing
    assert o["after"] == o["before"]
    assert cand.path != run.model.path


# ---- failures ------------------------------------------------------------------------------------


def test_a_failing_job_is_ledgered_and_the_daemon_keeps_trading(tmp_path, approved):
    # train_bars far beyond the 300 bars of the span: the job's walk-forward fails (in its process)
    run = Run(tmp_path, approved, first=P0 + 2 * H, research={"train_bars": 5000})
    try:
        assert [r.status for r in run.hour()] == ["completed"]
        assert len(_events(run.daemon.ledger, "retrain_started")) == 1
        ends = run.wait_job(120)
        assert [e.code for e in ends] == ["retrain_failed"]
        why = ends[0].payload["message"]
        assert "failed" in why and "\n" not in why and len(why) < 600, why
        assert [r.status for r in run.hour()] == ["completed"]  # the daemon trades on
        assert len(_events(run.daemon.ledger, "retrain_started")) == 1  # not retried in the same window
    finally:
        run.close()


def _hung(monkeypatch) -> None:
    import live_bridge.retrain as rt

    monkeypatch.setattr(rt, "job_argv", lambda jd: [sys.executable, "-c", "import time; time.sleep(120)"])


def test_a_job_past_its_timeout_is_killed_and_reported(tmp_path, approved, monkeypatch):
    _hung(monkeypatch)
    run = Run(tmp_path, approved, first=P0 + 2 * H, timeout_s=2)
    try:
        run.hour()
        pid = int(next((run.tmp / "state" / "retrain").glob("*/pid")).read_text())
        ends = run.wait_job(30)
        assert [e.code for e in ends] == ["retrain_failed"] and "timed out" in ends[0].payload["message"]
        for _ in range(50):  # the process group was killed
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        else:
            raise AssertionError("the timed-out job still runs")
        assert [r.status for r in run.hour()] == ["completed"]
    finally:
        run.close()


def test_a_vanished_job_is_reported_failed_even_after_a_restart(tmp_path, approved, monkeypatch):
    _hung(monkeypatch)
    run = Run(tmp_path, approved, first=P0 + 2 * H)
    try:
        run.hour()
        run.daemon.close()  # the daemon goes down while the job runs ...
        pid = int(next((run.tmp / "state" / "retrain").glob("*/pid")).read_text())
        os.killpg(pid, signal.SIGKILL)  # ... and the job dies without a result
        run.daemon = run.new_daemon()
        ends = run.wait_job(30)
        assert [e.code for e in ends] == ["retrain_failed"] and "process is gone" in ends[0].payload["message"]
        assert len(_events(run.daemon.ledger, "retrain_started")) == 1  # no second job in that window
    finally:
        run.close()


# ---- rules ---------------------------------------------------------------------------------------


def test_window_open_and_cadence_rules():
    from live_bridge.retrain import should_start, window_open

    day = 86_400
    w = ("03:00", "05:00")
    assert window_open(P0 + 2 * H, w) is None and window_open(P0 + 5 * H, w) is None
    assert window_open(P0 + 3 * H, w) == window_open(P0 + 4 * H, w) == P0 + 3 * H
    assert window_open(P0 + 23 * H, ("23:00", "01:00")) == window_open(P0 + day, ("23:00", "01:00")) == P0 + 23 * H
    assert window_open(P0 + 3 * H, []) is None
    kw = {"started_windows": set(), "last_finished": None, "every_hours": 24, "weekday": "any"}
    opened = P0 + 3 * H  # a Wednesday
    assert should_start(opened, **kw) is None
    assert "already started" in should_start(opened, **{**kw, "started_windows": {opened}})
    assert should_start(opened + day, **{**kw, "last_finished": opened}) is None
    assert "younger" in should_start(opened + day, **{**kw, "last_finished": opened, "every_hours": 48})
    assert should_start(opened, **{**kw, "weekday": "wed"}) is None
    assert "mon only" in should_start(opened, **{**kw, "weekday": "mon"})


def test_the_job_cannot_promote_or_write_approvals(tmp_path):
    from live_bridge.retrain import RetrainForbidden, no_approvals
    from research.lifecycle import actions
    from research.lifecycle.approvals import ApprovalStore

    real = actions.promote
    with no_approvals():
        with pytest.raises(RetrainForbidden):
            actions.promote(None, "paper", "x", "yes-promote", None)
        with pytest.raises(RetrainForbidden):
            actions.rollback("paper", "yes-rollback", None)
        with pytest.raises(RetrainForbidden):
            ApprovalStore(tmp_path)._write_state("paper", {})
    assert actions.promote is real


def test_retrain_config_is_checked(tmp_path):
    from live_bridge.config import live_config_from_dict, load_live_config
    from tests.live_harness import paper_dict

    d = paper_dict("http://127.0.0.1:1", tmp_path)
    assert live_config_from_dict(d).retrain.enabled is False
    with pytest.raises(ConfigError, match="retrain.enabled needs retrain.config"):
        live_config_from_dict({**d, "retrain": {"enabled": True}})
    with pytest.raises(ConfigError, match="retrain.weekday"):
        live_config_from_dict({**d, "retrain": {"weekday": "funday"}})
    # [retrain] is not in the digest: it never changes a decision
    on = live_config_from_dict({**d, "retrain": {"enabled": True, "config": "r.toml"}})
    assert on.digest() == live_config_from_dict(d).digest()
    f = tmp_path / "paper.toml"
    eng = str(configs_dir() / "default.toml")
    f.write_text(
        f'mode = "paper"\nengine_config = "{eng}"\n[universe]\npairs = ["BTC/USD"]\n'
        '[retrain]\nenabled = true\nconfig = "missing.toml"\n'
    )
    with pytest.raises(ConfigError, match="retrain.config: no such file"):
        load_live_config(f)
    assert "retrain" not in on.model_dump()


def test_the_job_never_receives_a_secret(monkeypatch):
    """The training job's environment: no exchange key, ledger DSN or signing key, API or simulator
    token, webhook, nor any variable whose name says it is a secret; the rest passes through."""
    from live_bridge.retrain import _child_env

    secrets = {
        "KRAKEN_API_KEY": "k",
        "KRAKEN_API_SECRET": "s",
        "KQ_LEDGER_DSN": "postgresql://u:p@h/db",
        "KQ_LEDGER_HMAC_KEY": "h",
        "KQ_API_TOKEN": "t" * 20,
        "KQ_SIM_ADMIN_TOKEN": "a",
        "KQ_ALERT_WEBHOOK": "https://x/y",
        "MY_DB_PASSWORD": "p",
        "aws_secret_access_key": "z",
    }
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("KQ_TRACKING_URI", "sqlite:///x.db")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "m")  # the job registers its candidate on the server
    env = _child_env()
    assert not set(secrets) & set(env), sorted(set(secrets) & set(env))
    assert env["KQ_TRACKING_URI"] == "sqlite:///x.db" and "PATH" in env and env["MLFLOW_TRACKING_TOKEN"] == "m"
