"""Alerts (live_bridge/alerts.py): JSON log lines and webhook POSTs, received here by a real HTTP
server on 127.0.0.1. The daemon tests drive a paper daemon against the simulator replaying Kraken's
real bars (tests/live_harness.py) into a kill-switch latch, a dead webhook and a Kraken lockout; the
webhook URL carries a token that must never reach a log line."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from engine.errors import ConfigError
from live_bridge.alerts import ENV_WEBHOOK, Alert, Alerter, alerts_for, failure_alert
from live_bridge.config import live_config_from_dict
from live_bridge.cycle import HourReport
from live_bridge.daemon import DaemonStopped
from live_bridge.ledger import Kind
from live_bridge.simulator.testing import start_sim
from tests.live_harness import (
    P0,
    SETTLE,
    BundleModel,
    H,
    kraken_store,
    make_daemon,
    paper_dict,
    shared_frames,
    sim_panel,
    tiny_model_dir,
)

TOKEN = "tok-3f9a71c2e8d54b06"  # what a real webhook URL carries: it must never be logged
HOURS_AFTER = 48
ENTRY_HOUR = P0 // H + 29  # the bar at whose close this window buys BTC/USD (tests/test_live_faults.py)


# ---- a webhook receiver --------------------------------------------------------------------------
class Hook:
    """An HTTP server on 127.0.0.1 (port 0) recording every POST; answers ``statuses`` in order,
    then 200."""

    def __init__(self, statuses: tuple[int, ...] = ()) -> None:
        self.posts: list[tuple[str, bytes, int]] = []  # (path, body, answer)
        self._statuses = list(statuses)
        self._lock = threading.Lock()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with hook._lock:
                    code = hook._statuses.pop(0) if hook._statuses else 200
                    hook.posts.append((self.path, body, code))
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *a: Any) -> None:  # quiet
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/hook/{TOKEN}?token={TOKEN}"

    def delivered(self) -> list[dict]:
        with self._lock:
            return [json.loads(b) for _, b, code in self.posts if code == 200]

    def close(self) -> None:
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def hook():
    made: list[Hook] = []

    def make(*statuses: int) -> Hook:
        h = Hook(statuses)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def dead_url() -> str:
    """A loopback URL nothing listens on (connection refused)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}/hook/{TOKEN}"


def log_alerts(caplog) -> list[tuple[int, dict]]:
    return [
        (r.levelno, json.loads(r.getMessage()))
        for r in caplog.records
        if r.name == "live_bridge.alerts" and r.getMessage().startswith("{")
    ]


def no_token(caplog) -> None:
    assert caplog.records
    for r in caplog.records:
        assert TOKEN not in r.getMessage(), r.getMessage()
    assert TOKEN not in caplog.text


# ---- the daemon ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return BundleModel(tiny_model_dir())


@pytest.fixture(scope="module")
def frames():
    return shared_frames(HOURS_AFTER)


@pytest.fixture(scope="module")
def panel():
    return sim_panel(HOURS_AFTER)


class Rig:
    """The simulator at the close of the bar before ``first``, a store up to it, a started paper daemon."""

    def __init__(self, tmp: Path, model, frames, panel, first: int, **over: Any) -> None:
        kraken_store(tmp / "m.duckdb", frames, upto=(first - 1) * H)
        self.sim = start_sim(panel, start=float(first * H + SETTLE))
        self.daemon = make_daemon(self.sim.url, tmp, model, **over)
        self.daemon.start()

    def run(self, hour: int) -> list:
        self.sim.ex.advance(to=float((hour + 1) * H + SETTLE))
        return self.daemon.run_once()

    def ohlc_fails(self, hour: int) -> None:
        """Every OHLC call of ``hour``'s data step answers EService:Busy."""
        win = {"endpoint": "OHLC", "from_ts": (hour + 1) * H, "until_ts": (hour + 1) * H + SETTLE + 1}
        fault = {"kind": "error", "message": "EService:Busy", "count": None, **win}
        code, body = self.sim.admin("/admin/faults", fault)
        assert code == 200, body

    def close(self) -> None:
        self.daemon.close()
        self.sim.stop()


@pytest.fixture
def rig(tmp_path, model, frames, panel):
    made: list[Rig] = []

    def make(first: int, **over: Any) -> Rig:
        r = Rig(tmp_path, model, frames, panel, first, **over)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


def test_kill_switch_latch_is_posted_and_logged_with_its_reason(rig, hook, caplog):
    caplog.set_level(logging.DEBUG)
    h = ENTRY_HOUR
    wh = hook()
    r = rig(h - 1, cycle={"max_api_failures": 1}, alerts={"webhook_url": wh.url, "retry_wait_s": 0.05})
    (rep,) = r.run(h - 1)
    assert rep.state == "ACTIVE" and r.daemon.alerter.flush(10)
    assert [a for a in wh.delivered() if a["severity"] == "critical"] == []  # a clean hour
    r.ohlc_fails(h)
    (rep,) = r.run(h)
    assert rep.status == "completed" and rep.state == "KILL_SWITCH"
    assert r.daemon.alerter.flush(10)
    got = wh.delivered()
    (kill,) = [a for a in got if a["kind"] == "kill_switch"]
    assert kill["severity"] == "critical" and kill["hour"] == h
    assert kill["details"]["trigger"] == "KILL_API" and kill["details"]["mode"] == "paper"
    assert "API instability" in kill["message"] and "2 failed API calls in the data step" in kill["message"]
    assert set(kill) == {"ts", "severity", "kind", "hour", "pair", "message", "details"}
    data = sorted((a["pair"], a["severity"]) for a in got if a["kind"] == "data_problem")
    assert data == [("BTC/USD", "warning"), ("ETH/USD", "warning")]
    assert all("EService:Busy" in a["message"] for a in got if a["kind"] == "data_problem")
    assert any(a["kind"] == "kill_switch_requested" and a["severity"] == "critical" for a in got)
    # the same alert is one JSON log line at CRITICAL on live_bridge.alerts
    logged = [(lv, a) for lv, a in log_alerts(caplog) if a["kind"] == "kill_switch"]
    assert [(lv, a["message"], a["ts"]) for lv, a in logged] == [(logging.CRITICAL, kill["message"], kill["ts"])]
    no_token(caplog)


def test_dead_webhook_or_failing_alerts_never_break_the_cycle(rig, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)
    h = ENTRY_HOUR
    r = rig(
        h - 1,
        cycle={"max_api_failures": 1},
        alerts={"webhook_url": dead_url(), "retries": 2, "retry_wait_s": 0.01, "timeout_s": 1},
    )

    def boom(*a: Any) -> list:
        raise RuntimeError("alerts broke")

    monkeypatch.setattr("live_bridge.daemon.alerts_for", boom)
    (rep,) = r.run(h - 1)
    assert rep.status == "completed" and r.daemon.ledger.last_completed_hour() == h - 1
    assert "alerts failed: RuntimeError" in caplog.text
    monkeypatch.undo()
    r.ohlc_fails(h)
    (rep,) = r.run(h)
    assert rep.status == "completed" and rep.state == "KILL_SWITCH"
    assert r.daemon.ledger.last_completed_hour() == h
    assert r.daemon.alerter.flush(10)
    a = r.daemon.alerter
    assert a.delivered == 0 and a.failed >= 1  # every POST refused, each one given up
    assert "attempt 2/2 failed: ConnectionRefusedError" in caplog.text
    assert any(x["kind"] == "kill_switch" for _, x in log_alerts(caplog))  # still in the log
    no_token(caplog)


def test_kraken_lockout_stops_the_daemon_with_a_critical_alert(rig, hook, caplog):
    caplog.set_level(logging.DEBUG)
    h = ENTRY_HOUR
    wh = hook()
    r = rig(h, alerts={"webhook_url": wh.url})
    code, body = r.sim.admin("/admin/faults", {"kind": "lockout", "endpoint": "AddOrder", "seconds": 1.0})
    assert code == 200, body
    with pytest.raises(DaemonStopped):
        r.run(h)
    assert r.daemon.alerter.flush(10)
    (halt,) = [a for a in wh.delivered() if a["kind"] == "kraken_halt"]
    assert halt["severity"] == "critical" and halt["hour"] == h and "lockout" in halt["message"].lower()
    assert [e.code for e in r.daemon.ledger.entries(h, Kind.CYCLE_END)] == ["failed"]
    no_token(caplog)


# ---- delivery ------------------------------------------------------------------------------------
def test_webhook_answering_500_twice_then_200_is_retried_and_delivered_once(hook, caplog):
    caplog.set_level(logging.DEBUG)
    wh = hook(500, 500)
    al = Alerter(wh.url, retries=3, retry_wait_s=0.01, timeout_s=2)
    al.emit([Alert("critical", "kill_switch", "kill switch latched: test", 123)])
    assert al.flush(10)
    assert [code for _, _, code in wh.posts] == [500, 500, 200]
    assert len({b for _, b, _ in wh.posts}) == 1  # the same JSON each attempt
    assert wh.posts[0][0] == f"/hook/{TOKEN}?token={TOKEN}"
    assert al.delivered == 1 and al.failed == 0 and len(wh.delivered()) == 1
    assert "attempt 1/3 failed: HTTP 500" in caplog.text and "attempt 2/3 failed: HTTP 500" in caplog.text
    time.sleep(0.2)
    assert len(wh.posts) == 3  # nothing sent after the 200
    # every attempt refused: given up after `retries`, a warning, nothing raised
    wh2 = hook(500, 500, 500)
    al2 = Alerter(wh2.url, retries=3, retry_wait_s=0.01, timeout_s=2)
    al2.emit([Alert("critical", "halt", "x", 1)])
    assert al2.flush(10) and al2.failed == 1 and len(wh2.posts) == 3
    assert "not delivered after 3 attempts" in caplog.text
    al.close()
    al2.close()
    no_token(caplog)


def test_min_severity_filters_the_posts_not_the_log(caplog):
    caplog.set_level(logging.DEBUG)
    sent: list[bytes] = []
    al = Alerter("http://127.0.0.1:9/x", min_severity="critical", post=lambda u, b, t: sent.append(b) or 200)
    al.emit(
        [
            Alert("info", "reset", "r"),
            Alert("warning", "tier_change", "t"),
            Alert("critical", "halt", "h", 5),
        ]
    )
    assert al.flush(5)
    assert [json.loads(b)["kind"] for b in sent] == ["halt"]
    assert [(lv, a["kind"]) for lv, a in log_alerts(caplog)] == [
        (logging.INFO, "reset"),
        (logging.WARNING, "tier_change"),
        (logging.CRITICAL, "halt"),
    ]
    al.close()


def test_a_full_queue_drops_with_a_warning(caplog):
    release = threading.Event()

    def slow(u: str, b: bytes, t: float) -> int:
        release.wait(5)
        return 200

    al = Alerter("http://127.0.0.1:9/x", queue_size=1, post=slow)
    t0 = time.monotonic()
    al.emit([Alert("critical", "halt", str(i)) for i in range(5)])
    assert time.monotonic() - t0 < 1  # emit never waits for the network
    assert al.dropped >= 3 and "this one is dropped" in caplog.text
    release.set()
    assert al.flush(5)
    assert al.delivered + al.dropped == 5
    al.close()


# ---- deriving alerts -----------------------------------------------------------------------------
class FakeLedger:
    def __init__(self, rows: list[SimpleNamespace]) -> None:
        self.rows = rows

    def entries(self, hour: int | None = None, kind: Any = None) -> list:
        return [e for e in self.rows if (hour is None or e.hour == hour) and (kind is None or e.kind == kind)]


def row(kind: Kind, code: str, pair: str | None = None, hour: int = 100, **payload: Any) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, code=code, pair=pair, hour=hour, payload=payload)


def test_alerts_for_names_each_event_of_the_hour():
    led = FakeLedger(
        [
            row(Kind.DECISION, "TIER:TIER_CHANGE", value="0.1012"),
            row(Kind.DECISION, "TIER:HALT", value="0.2031"),
            row(Kind.DECISION, "KILL:KILL_SPREAD", "ETH/USD", value="0.05"),
            row(Kind.DECISION, "RESET:RESET_KILL", value="1"),
            row(Kind.DECISION, "STATE:HALTED", kill_reason=2),
            row(Kind.DECISION, "TIER:TIER_CHANGE", hour=99, value="0.05"),  # another hour
            row(Kind.RECONCILIATION, "mismatch", problems=["XBT: the exchange holds 0, below the 0.1 ..."]),
            row(Kind.EVENT, "data_behind", "BTC/USD", reason="BTC/USD: Kraken's last ...", detail="d"),
            row(Kind.EVENT, "model_failed", reason="model prediction failed: ValueError: x"),
        ]
    )
    rep = HourReport(100, "completed", state="HALTED", reconcile="mismatch", latch="latch kill switch (x)")
    rep.notes = ["BTC/USD: Kraken's last ...", "fill T1 of BTC/USD booked outside its order's hour"]
    got = {(a.kind, a.severity, a.pair) for a in alerts_for(rep, led)}
    assert got == {
        ("tier_change", "warning", None),
        ("halt", "critical", None),
        ("kill_switch", "critical", "ETH/USD"),
        ("reset", "info", None),
        ("reconcile_mismatch", "critical", None),
        ("data_problem", "warning", "BTC/USD"),
        ("note", "warning", None),
        ("model_failed", "warning", None),
        ("kill_switch_requested", "critical", None),
    }
    by = {a.kind: a for a in alerts_for(rep, led)}
    assert "20.31%" in by["halt"].message and "reset-halt" in by["halt"].message
    assert "spread anomaly" in by["kill_switch"].message and by["kill_switch"].details["kill_reason"] == 2
    assert "XBT: the exchange holds 0" in by["reconcile_mismatch"].message
    rep2 = HourReport(100, "completed", reconcile="incomplete", notes=["reconciliation incomplete: Balance: unknown"])
    assert [(a.kind, a.severity) for a in alerts_for(rep2, FakeLedger([]))] == [("reconcile_incomplete", "warning")]
    assert alerts_for(HourReport(100, "skipped"), led) == []
    assert alerts_for(HourReport(101, "completed", state="ACTIVE"), led) == []
    f = failure_alert(7, "hour 7 failed", "kraken_halt")
    line = json.loads(f.json())
    assert line["severity"] == "critical" and line["kind"] == "kraken_halt" and line["hour"] == 7


# ---- the configuration ---------------------------------------------------------------------------
def test_webhook_from_the_environment_is_a_secret():
    tmp = Path("/nonexistent")
    url = f"https://hooks.example.com/services/{TOKEN}"
    plain = live_config_from_dict(paper_dict("http://127.0.0.1:1", tmp))
    in_file = live_config_from_dict(paper_dict("http://127.0.0.1:1", tmp, alerts={"webhook_url": url}))
    # never in the repr, the dump or the digest (alerts change no decision)
    assert TOKEN not in repr(in_file) and TOKEN not in json.dumps(in_file.model_dump(mode="json"))
    assert in_file.digest() == plain.digest()
    assert Alerter.from_config(plain, {}).webhook is False
    env = Alerter.from_config(plain, {ENV_WEBHOOK: url})
    assert env.webhook is True and TOKEN not in repr(env)
    assert Alerter.from_config(in_file, {}).webhook is True
    with pytest.raises(ConfigError) as ei:
        Alerter.from_config(plain, {ENV_WEBHOOK: f"ftp://x/{TOKEN}"})
    assert TOKEN not in str(ei.value) and ENV_WEBHOOK in str(ei.value)
    with pytest.raises(ConfigError) as ei:
        live_config_from_dict(paper_dict("http://127.0.0.1:1", tmp, alerts={"webhook_url": f"hooks/{TOKEN}"}))
    assert TOKEN not in str(ei.value) and "alerts.webhook_url" in str(ei.value)
    with pytest.raises(ConfigError, match="bounded by 30 s"):
        live_config_from_dict(paper_dict("http://127.0.0.1:1", tmp, alerts={"retries": 10, "timeout_s": 5}))
