"""The dashboard API (issue 20; ``kq serve``; live_bridge/api): against a ledger filled by a REAL
paper run (the daemon on the simulator replaying Kraken's real BTC/USD and ETH/USD bars with the
tiny model; tests/live_harness.py), through FastAPI's TestClient.

Proofs: every figure of the overview equals the ledger's own (the risk machine's last snapshot, the
daemon's machine after its last hour, the ledger's fill rows); a request without the token, or with
a wrong one, is refused on every route of the OpenAPI description; an operator action through the
API lands in the ledger through the CLI's path, and a bad confirmation writes nothing; a
property-based fuzzer over the OpenAPI description finds no 5xx.
"""

from __future__ import annotations

import shutil
import sys
import time
from decimal import Decimal as D
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from engine.risk.enums import KillReason, TradingState
from live_bridge.api import create_app
from live_bridge.ledger import Kind, Ledger
from live_bridge.ledger import records as rec
from live_bridge.operator import status
from tests.live_harness import P0, SETTLE, BundleModel, H, kraken_store, make_daemon, shared_frames, sim_panel

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALL_CHECKS = list(HealthCheck)
HOURS = 36  # ends holding ETH/USD (bought in hour 26) and BTC/USD (hour 34)
FIRST = P0 + 190 * H  # the window where the tiny model trades (tests/test_live_daemon.py)


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.delenv("KQ_LEDGER_DSN", raising=False)
    monkeypatch.delenv("KQ_LEDGER_HMAC_KEY", raising=False)
    monkeypatch.setenv("KQ_OPERATOR", "alice")


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """A paper run of HOURS hours: (ledger path, the daemon's machine state after its last hour)."""
    from live_bridge.simulator.testing import start_sim
    from tests.live_harness import run_hours, tiny_model_dir

    tmp = tmp_path_factory.mktemp("paper")
    hours_after = (FIRST - P0) // H + HOURS + 10
    kraken_store(tmp / "m.duckdb", shared_frames(hours_after), upto=P0 - H)
    sim = start_sim(sim_panel(hours_after), start=FIRST + SETTLE, balances={"USD": "10000"})
    t0 = time.perf_counter()
    model = BundleModel(tiny_model_dir())
    t1 = time.perf_counter()
    d = make_daemon(sim.url, tmp, model)
    try:
        d.start()
        reps = run_hours(sim, d, HOURS, first=FIRST)
        n_fills = len(d.ledger.entries(kind=Kind.FILL))
        print(f"\npaper run: model {t1 - t0:.1f} s, {HOURS} hours {time.perf_counter() - t1:.1f} s, {n_fills} fills")
        assert len(reps) == HOURS and all(r.status == "completed" for r in reps)
        m = d.cycle.machine
        machine = {
            "state": m.state[0].copy(),
            "positions": {p: m.positions[j].copy() for j, p in enumerate(m.pairs) if float(m.positions[j]["qty"]) > 0},
            "sim_fees": sum((t.fee for t in sim.ex.trades.values()), D(0)),
            "sim_trades": len(sim.ex.trades),
        }
    finally:
        d.close()
        sim.stop()
    return tmp / "ledger.sqlite", machine


@pytest.fixture(scope="module")
def client(paper):
    led_path, _ = paper
    return TestClient(create_app(str(led_path), led_path.parent / "runs", TOKEN))


def get(client: TestClient, path: str, **kw: Any) -> Any:
    r = client.get(path, headers=AUTH, **kw)
    assert r.status_code == 200, (path, r.status_code, r.text)
    return r.json()


def exact(x: float) -> D:
    return D(repr(float(x)))


# ---- the overview equals the ledger ------------------------------------------------------------------


def test_overview_figures_equal_the_ledgers(client, paper):
    led_path, machine = paper
    ov = get(client, "/api/overview")
    st_, pos = machine["state"], machine["positions"]
    with Ledger.open(str(led_path), migrate=False) as led:
        s = status(led)
        fills = led.entries(kind=Kind.FILL)
        ends = [e for e in led.entries(kind=Kind.CYCLE_END) if e.code == "completed"]
        head = led.head()[0]
    assert len(fills) >= 2, f"the tiny model should trade in this window; {len(fills)} fills"
    assert len(pos) == 2, f"the run should end holding both pairs; {sorted(pos)}"
    # the daemon's own machine after its last hour (not a re-derivation of the API's source)
    assert D(ov["equity"]) == exact(st_["equity"]) == s.equity
    assert D(ov["cash"]) == exact(st_["cash"]) == s.cash
    assert D(ov["peak"]) == exact(st_["peak"]) == s.peak
    assert D(ov["drawdown"]) == exact(st_["drawdown"]) == s.drawdown
    assert D(ov["exposure"]) == exact(st_["exposure"]) == s.exposure
    assert ov["tier"] == int(st_["tier"]) == s.tier
    assert ov["state"] == TradingState(int(st_["trading_state"])).name == s.state
    assert ov["kill_switch"] is False and ov["kill_reason"] == "NONE" and ov["halted"] is False
    assert ov["n_positions"] == len(pos) == int(st_["n_positions"]) == len(s.positions)
    assert D(ov["init_cash"]) == D("10000") and ov["head_seq"] == head
    assert ov["last_completed"] == FIRST // H + HOURS - 1 == ends[-1].hour
    # the last cycle_end's own figures, and the equity curve's last point
    assert D(ov["equity"]) == D(ends[-1].payload["equity"]) and D(ov["cash"]) == D(ends[-1].payload["cash"])
    curve = get(client, "/api/equity", params={"limit": 5000})
    assert curve["total"] == HOURS and [p["hour"] for p in curve["points"]] == [e.hour for e in ends]
    assert D(curve["points"][-1]["equity"]) == D(ov["equity"])
    # fills and fees: the ledger's rows and the simulator's trades
    assert ov["fills"] == len(fills) == machine["sim_trades"]
    assert D(ov["fees"]) == sum(f.fee for f in fills) == machine["sim_fees"]
    fl = get(client, "/api/fills", params={"limit": 5000})
    assert fl["totals"]["count"] == len(fills) and D(fl["totals"]["fees"]) == D(ov["fees"])
    assert [f["trade_id"] for f in fl["fills"]] == [f.trade_id for f in fills]
    od = get(client, "/api/orders", params={"limit": 5000})
    assert sum(o["fills"] for o in od["orders"]) == len(fills)
    assert sum(D(o["fees"]) for o in od["orders"]) == D(ov["fees"])
    # positions: the machine's entry, stop, take-profit, mark; unrealised PnL = qty x (mark - entry)
    ps = get(client, "/api/positions")
    assert {p["pair"] for p in ps} == set(pos)
    for p in ps:
        m = pos[p["pair"]]
        assert D(p["qty"]) == exact(m["qty"]) and D(p["entry_price"]) == exact(m["entry_price"])
        assert D(p["mark"]) == exact(m["mark"])
        assert (p["stop"] is None) == (not np.isfinite(m["stop"]))
        assert p["stop"] is None or D(p["stop"]) == exact(m["stop"])
        assert D(p["unrealised_pnl"]) == exact(m["qty"]) * (exact(m["mark"]) - exact(m["entry_price"]))
    rk = get(client, "/api/risk")
    assert (rk["tier"], rk["drawdown"], rk["state"]) == (ov["tier"], ov["drawdown"], ov["state"])
    assert rk["kill_switch"]["latched"] is False


def test_read_routes_answer_from_the_ledger(client, paper):
    led_path, _ = paper
    last = FIRST // H + HOURS - 1
    pr = get(client, "/api/predictions")
    assert pr["hour"] == last and pr["model_id"] == "tiny/1"
    assert {p["pair"] for p in pr["predictions"]} == {"BTC/USD", "ETH/USD"}
    assert all("p_up" in p["values"] for p in pr["predictions"])
    iso = get(client, "/api/predictions", params={"hour": "2022-06-09T00:00"})
    assert iso["hour"] == 1654732800 // H and iso["predictions"]
    hours = get(client, "/api/replay/hours", params={"limit": 5000})
    assert hours["total"] == HOURS and hours["hours"][-1] == last
    man = get(client, f"/api/replay/{last}")
    assert man["hour"] == last and set(man["bars"]) == {"BTC/USD", "ETH/USD"} and man["ledger"]["chain_ok"] is True
    rs = get(client, f"/api/replay/{last}/status")
    assert rs["status"] == "reproduced" and rs["ok"] is True
    with Ledger.open(str(led_path), migrate=False) as led:
        n_rec = len(led.entries(kind=Kind.RECONCILIATION))
    rc = get(client, "/api/reconciliations", params={"limit": 5000})
    assert rc["total"] == n_rec > 0 and rc["mismatches"] == 0
    assert get(client, "/api/alerts")["total"] >= 0
    assert client.get(f"/api/replay/{FIRST // H - 500}", headers=AUTH).status_code == 404
    assert client.get("/api/replay/2022-06-09T00:30", headers=AUTH).status_code == 422  # not on the hour
    assert client.get("/api/replay/2022-13-09T00:00", headers=AUTH).status_code == 404  # no such hour
    r = client.get("/api/shadow", headers=AUTH)
    assert r.status_code == 404 and r.json()["detail"].startswith("no shadow configured")
    assert get(client, "/api/runs")["runs"] == []
    assert client.get("/api/runs/nope", headers=AUTH).status_code == 404
    assert client.get("/api/runs/..", headers=AUTH).status_code == 404


# ---- access --------------------------------------------------------------------------------------------


def _concrete(path: str) -> str:
    return path.replace("{hour}", str(FIRST // H)).replace("{run_id}", "x").replace("{action}", "pause")


def test_every_route_but_health_refuses_a_missing_or_wrong_token(client, paper):
    led_path, _ = paper
    assert client.get("/api/health").json() == {"status": "ok"}
    assert client.get("/api/openapi.json").status_code == 401
    spec = get(client, "/api/openapi.json")
    routes = [(m.upper(), p) for p, ops in spec["paths"].items() for m in ops]
    assert len(routes) >= 18 and ("POST", "/api/operator/{action}") in routes
    with Ledger.open(str(led_path), migrate=False) as led:
        n = led.count()
    bad = [{}, {"Authorization": "Bearer wrong-token-0123456789abcdef"}, {"Authorization": f"Basic {TOKEN}"}]
    bad.append({"Authorization": f"Bearer {TOKEN[:-1]}"})
    for method, path in routes:
        if path == "/api/health":
            continue
        for hdr in bad:
            body = {"reason": "r", "confirm": "pause"} if method == "POST" else None
            r = client.request(method, _concrete(path), headers=hdr, json=body)
            assert r.status_code == 401, (method, path, hdr, r.status_code, r.text)
            assert r.json() == {"detail": "missing or wrong bearer token"}
    with Ledger.open(str(led_path), migrate=False) as led:
        assert led.count() == n  # a refused POST wrote nothing


def test_an_absent_ledger_is_a_one_line_503(tmp_path):
    c = TestClient(create_app(str(tmp_path / "none.sqlite"), tmp_path, TOKEN))
    r = c.get("/api/overview", headers=AUTH)
    assert r.status_code == 503 and r.json()["detail"].startswith("no ledger at ")
    assert not (tmp_path / "none.sqlite").exists()
    assert c.get("/api/health").status_code == 200
    with pytest.raises(Exception, match="at least 16"):
        create_app(None, tmp_path, "short")


# ---- operator actions -------------------------------------------------------------------------------


def kill_ledger(path: Path | str, hour: int, schema: str | None = None) -> str:
    """A ledger whose last completed hour left the kill switch latched (API instability)."""
    from engine.config import load_config
    from engine.risk.machine import RiskMachine
    from live_bridge.cycle import live_params

    m = RiskMachine(["BTC/USD", "ETH/USD"], live_params(load_config(), D("100000")))
    s = m.state[0]
    s["bar"], s["cash"], s["equity"], s["peak"] = hour, 100_000.0, 100_000.0, 100_000.0
    s["trading_state"], s["kill_reason"] = int(TradingState.KILL_SWITCH), int(KillReason.API_INSTABILITY)
    with Ledger.open(str(path), schema=schema) as led:
        led.append(
            rec.decision(hour, "KILL:KILL_API", "BTC/USD", payload={"tag": "close", "value": "3"}),
            rec.risk_snapshot(hour, "after", m.snapshot(), payload={"init_cash": D("100000"), "pairs": list(m.pairs)}),
            rec.cycle_end(hour, "completed", payload={"latch_next": []}),
        )
    return str(path)


def test_reactivate_through_the_api_is_the_clis_path_and_a_bad_confirmation_writes_nothing(tmp_path):
    hour = P0 // H + 10
    dsn = kill_ledger(tmp_path / "ledger.sqlite", hour)
    c = TestClient(create_app(dsn, tmp_path, TOKEN))
    (al,) = get(c, "/api/alerts")["alerts"]
    assert (al["severity"], al["kind"], al["hour"], al["pair"]) == ("critical", "kill_switch", hour, "BTC/USD")
    assert al["message"] == "kill switch latched: API instability"
    rk = get(c, "/api/risk")
    assert rk["kill_switch"]["latched"] is True and rk["kill_switch"]["reason"] == "API_INSTABILITY"
    assert rk["kill_switch"]["hour"] == hour and rk["kill_switch"]["trigger"] == "KILL_API"
    with Ledger.open(dsn, migrate=False) as led:
        n = led.count()
    refused = [
        ("reactivate", {"reason": "OHLC back", "confirm": "reset-halt"}, 400, "is not 'reactivate': nothing written"),
        ("reactivate", {"reason": "OHLC back", "confirm": ""}, 400, "is not 'reactivate'"),
        ("reactivate", {"reason": "  ", "confirm": "reactivate"}, 400, "reason is empty"),
        ("reset-halt", {"reason": "x", "confirm": "reset-halt"}, 409, "the drawdown halt is not latched"),
        ("resume", {"reason": "x", "confirm": "resume"}, 409, "trading is not paused"),
    ]
    for action, body, code, needle in refused:
        r = c.post(f"/api/operator/{action}", headers=AUTH, json=body)
        assert r.status_code == code, (action, body, r.text)
        d = r.json()["detail"]
        assert needle in d and "\n" not in d, d
    for path, body in (("/api/operator/flatten", {"reason": "x", "confirm": "flatten"}), ("/api/operator/pause", {})):
        assert c.post(path, headers=AUTH, json=body).status_code == 422
    with Ledger.open(dsn, migrate=False) as led:
        assert led.count() == n  # nothing written by any refusal
    r = c.post("/api/operator/reactivate", headers=AUTH, json={"reason": "OHLC back", "confirm": "reactivate"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["action"] == "reactivate" and out["actor"] == "alice" and out["apply_hour"] == hour + 1
    with Ledger.open(dsn, migrate=False) as led:
        (act,) = led.entries(kind=Kind.OPERATOR_ACTION)
        assert led.count() == n + 1 and act.seq == out["seq"]
    assert act.code == "reactivate" and act.payload["reason"] == "OHLC back" and act.payload["actor"] == "alice"
    assert act.payload["confirmation"] == "reactivate"
    assert act.payload["params"]["seen"]["kill_reason"] == "API_INSTABILITY"
    acts = get(c, "/api/operator/actions")["actions"]
    assert [(a["seq"], a["outcome"], a["actor"]) for a in acts] == [(act.seq, "pending", "alice")]
    assert [a["seq"] for a in get(c, "/api/overview")["pending_actions"]] == [act.seq]
    # the same action again while pending: refused as the CLI refuses it
    r = c.post("/api/operator/reactivate", headers=AUTH, json={"reason": "again", "confirm": "reactivate"})
    assert r.status_code == 409 and "already pending" in r.json()["detail"]


# ---- the fuzzer over the OpenAPI description ----------------------------------------------------------

TEXT = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["0", "-1", "1e9", "99999999999999", "2022-06-09T00:00", "../..", "%00", "reactivate", "NaN"]),
)


def _value(schema: dict[str, Any]) -> st.SearchStrategy:
    t = schema.get("type")
    if "enum" in schema:
        return st.one_of(st.sampled_from(schema["enum"]), TEXT)
    if t == "integer":
        return st.one_of(st.integers(-(2**63), 2**63), TEXT)
    if "anyOf" in schema:
        return st.one_of(*[_value(s) for s in schema["anyOf"]])
    return TEXT


def test_hostile_strings_in_every_parameter_find_no_5xx(paper, tmp_path):
    """Every operation of the OpenAPI description, with the token, with generated path and query
    parameters (the schema's types, then hostile strings) and JSON bodies: no 5xx, always JSON
    ``{"detail"}`` on an error. On a copy of the paper ledger (a POST may write)."""
    led_path, _ = paper
    copy = tmp_path / "ledger.sqlite"
    shutil.copy(led_path, copy)
    c = TestClient(create_app(str(copy), tmp_path, TOKEN), raise_server_exceptions=False)
    spec = get(c, "/api/openapi.json")
    ops = []
    for path, items in spec["paths"].items():
        for method, op in items.items():
            params = op.get("parameters", [])
            body = "requestBody" in op
            ops.append((method.upper(), path, params, body))
    seen: set[tuple[str, str]] = set()

    @st.composite
    def request(draw):
        method, path, params, body = draw(st.sampled_from(ops))
        url, query = path, {}
        for p in params:
            v = draw(_value(p.get("schema", {})))
            if p["in"] == "path":
                url = url.replace("{" + p["name"] + "}", quote(str(v), safe="") or "x")
            elif draw(st.booleans()):
                query[p["name"]] = str(v)
        js = None
        if body:
            js = draw(
                st.one_of(
                    st.fixed_dictionaries({"reason": TEXT, "confirm": TEXT}),
                    st.dictionaries(st.text(max_size=8), st.one_of(TEXT, st.integers(), st.none()), max_size=3),
                    st.none(),
                    st.integers(),
                )
            )
        return method, path, url, query, js

    @settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=ALL_CHECKS)
    @given(request())
    def fuzz(req):
        method, path, url, query, js = req
        seen.add((method, path))
        r = c.request(method, url, params=query, json=js, headers=AUTH)
        assert r.status_code < 500, (method, url, query, js, r.status_code, r.text)
        if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
            d = r.json()["detail"]
            assert isinstance(d, str) and "\n" not in d and "Traceback" not in d, d

    fuzz()
    assert len(seen) >= len(ops) - 2, sorted(set((m, p) for m, p, _, _ in ops) - seen)


def test_schemathesis_over_the_openapi_description_finds_no_5xx_and_no_contract_breach(paper, tmp_path):
    """Schemathesis generates requests from the OpenAPI description itself (valid and invalid
    parameters and bodies) for every operation, with the token, and runs its checks on each answer:
    no server error, status codes and bodies as described, auth not ignored. The operator POST is
    exempt from "valid data accepted" only: a schema-valid but wrong confirmation word is refused
    (400) by design. On a copy of the paper ledger (a POST may write)."""
    import schemathesis
    from hypothesis import given, settings
    from schemathesis.checks import positive_data_acceptance

    led_path, _ = paper
    copy = tmp_path / "ledger.sqlite"
    shutil.copy(led_path, copy)
    app = create_app(str(copy), tmp_path, TOKEN)
    schema = schemathesis.openapi.from_asgi("/api/openapi.json", app, headers=AUTH)
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) >= 18
    cases = 0

    def checker(op: Any) -> Any:
        excluded = [positive_data_acceptance] if op.method.upper() == "POST" else []

        @settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=ALL_CHECKS)
        @given(op.as_strategy())
        def check(case):
            nonlocal cases
            cases += 1
            case.call_and_validate(headers=AUTH, excluded_checks=excluded)

        return check

    for op in ops:
        checker(op)()
    print(f"\nschemathesis: {cases} cases over {len(ops)} operations")
    assert cases >= 10 * len(ops)


# ---- kq serve: the refusals before anything listens -----------------------------------------------------


def kq_serve(args: list[str], env: dict[str, Any]) -> tuple[int, str]:
    from kq.cli import main

    with CliRunner().isolation(env=env) as (out, err, _):
        rc = main(["serve", *args])
        sys.stderr.flush()
        return rc, err.getvalue().decode()


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        ([], {"KQ_API_TOKEN": None}, "KQ_API_TOKEN is not set"),
        ([], {"KQ_API_TOKEN": "short"}, "KQ_API_TOKEN is too short"),
        (["--host", "0.0.0.0"], {"KQ_API_TOKEN": TOKEN}, "--host 0.0.0.0 is not loopback: add --allow-remote"),
        (["--runs", "/nonexistent/runs"], {"KQ_API_TOKEN": TOKEN}, "--runs /nonexistent/runs: no such folder"),
    ],
)
def test_kq_serve_refuses_to_start_in_one_line(args, env, needle):
    rc, err = kq_serve(args, env)
    e = err.strip()
    assert rc == 2 and e.startswith("kq: error: ") and needle in e and "\n" not in e, err
    assert TOKEN not in err


# ---- research runs ------------------------------------------------------------------------------------


def test_runs_list_and_chart_data_equal_the_backtests_own_files(tmp_path):
    """A real backtest (two Binance pairs, 2,400 hours, the MA demo signal) written by the
    backtester's own writer: the runs list and the run's page carry its metrics and equity as written."""
    import json

    import pandas as pd

    from engine.backtest.demo import ma_signal
    from engine.backtest.io import write_outputs
    from engine.backtest.runner import make_inputs, run_backtest
    from engine.config import load_config
    from engine.risk.params import params_from_config
    from engine.store.panel import load_shared_panel
    from tests.conftest import require_shared

    require_shared()
    cfg = load_config()
    start = 1672531200  # 2023-01-01
    panel = load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"], start, start + 2400 * H)
    p_up, er = ma_signal(panel.close, 12, 48, 50.0)
    res = run_backtest(make_inputs(panel, p_up, er, cfg), params_from_config(cfg))
    runs = tmp_path / "runs"
    runs.mkdir()
    write_outputs(runs / "bt-ma", res, cfg, {"note": "api test"})
    (runs / "not-a-run").mkdir()
    (runs / "broken").mkdir()
    (runs / "broken" / "sweep.json").write_text("{not json")
    c = TestClient(create_app(str(tmp_path / "none.sqlite"), runs, TOKEN))
    listed = {r["id"]: r for r in get(c, "/api/runs")["runs"]}
    assert set(listed) == {"bt-ma", "broken"}
    assert listed["broken"]["kind"] == "sweep" and "not readable JSON" in listed["broken"]["headline"]["error"]
    metrics = json.loads((runs / "bt-ma" / "metrics.json").read_text())
    head = listed["bt-ma"]["headline"]
    assert listed["bt-ma"]["kind"] == "backtest" and head
    assert all(metrics[k] == v for k, v in head.items())
    run = get(c, "/api/runs/bt-ma")
    assert run["metrics"] == json.loads(json.dumps(metrics)) and "equity.parquet" in run["files"]
    assert run["benchmark"] is None and "benchmark.json" not in run["files"]  # written without the market
    eq = pd.read_parquet(runs / "bt-ma" / "equity.parquet")
    pts = run["equity"]
    assert 2 <= len(pts) <= 2000 < len(eq)  # downsampled, first and last points kept
    assert (pts[0]["ts"], pts[0]["equity"]) == (int(eq.ts.iloc[0]), float(eq.equity.iloc[0]))
    assert (pts[-1]["ts"], pts[-1]["equity"]) == (int(eq.ts.iloc[-1]), float(eq.equity.iloc[-1]))
    assert c.get("/api/runs/not-a-run", headers=AUTH).status_code == 404
    assert c.get("/api/runs/broken", headers=AUTH).status_code == 503


def test_the_api_reads_and_writes_a_postgresql_ledger_the_same_way():
    """The same routes over a PostgreSQL ledger (KQ_TEST_PG_DSN; a fresh schema, dropped after):
    the risk latch read back, a reactivation ledgered through the CLI's path, a refusal writes
    nothing, no token is 401."""
    import os
    import uuid

    from tests.test_ledger_pg import _drop_schema, pg_dsn_from

    dsn = pg_dsn_from(os.environ)
    schema = f"ledger_test_{uuid.uuid4().hex[:16]}"
    hour = P0 // H + 10
    try:
        kill_ledger(dsn, hour, schema)
        c = TestClient(create_app(dsn, "/nonexistent", TOKEN, schema=schema))
        assert c.get("/api/overview").status_code == 401
        ov = get(c, "/api/overview")
        assert (ov["state"], ov["kill_reason"], D(ov["equity"])) == ("KILL_SWITCH", "API_INSTABILITY", D(100000))
        assert "password" not in ov["ledger"]
        r = c.post("/api/operator/reactivate", headers=AUTH, json={"reason": "r", "confirm": "pause"})
        assert r.status_code == 400
        r = c.post("/api/operator/reactivate", headers=AUTH, json={"reason": "feed back", "confirm": "reactivate"})
        assert r.status_code == 200, r.text
        with Ledger.open(dsn, schema=schema, migrate=False) as led:
            (act,) = led.entries(kind=Kind.OPERATOR_ACTION)
            assert led.verify().ok
        assert (act.seq, act.payload["actor"], act.payload["reason"]) == (r.json()["seq"], "alice", "feed back")
    finally:
        _drop_schema(dsn, schema)


def test_kq_serve_listens_on_loopback_serves_the_dashboard_and_never_logs_the_token(tmp_path):
    """``kq serve`` as a process: health open, the API behind the token, the static export at /,
    and the token nowhere in its output."""
    import os
    import socket
    import subprocess

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    static = tmp_path / "out"
    static.mkdir()
    (static / "index.html").write_text("<html><body>kq dashboard</body></html>")
    dsn = kill_ledger(tmp_path / "ledger.sqlite", P0 // H + 10)
    env = dict(os.environ, KQ_API_TOKEN=TOKEN, KQ_OPERATOR="alice")
    args = ["serve", "--dsn", dsn, "--port", str(port), "--static", str(static), "--runs", str(tmp_path)]
    p = subprocess.Popen(
        [sys.executable, "-m", "kq", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            pytest.fail("kq serve did not answer in 30 s")
        assert httpx.get(f"{base}/api/overview").status_code == 401
        ov = httpx.get(f"{base}/api/overview", headers=AUTH)
        assert ov.status_code == 200 and ov.json()["state"] == "KILL_SWITCH"
        page = httpx.get(f"{base}/")
        assert page.status_code == 200 and "kq dashboard" in page.text
        miss = httpx.get(f"{base}/api/nope", headers=AUTH)
        assert miss.status_code == 404 and miss.json() == {"detail": "no API route /api/nope"}
        assert httpx.delete(f"{base}/api/overview", headers=AUTH).status_code == 405
        assert "access-control-allow-origin" not in {k.lower() for k in ov.headers}
        pre = httpx.options(f"{base}/api/overview", headers={"Origin": "http://evil.example", **AUTH})
        assert "access-control-allow-origin" not in {k.lower() for k in pre.headers}
    finally:
        p.terminate()
        out, _ = p.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in out and TOKEN not in out, out


def test_predictions_carry_the_regime_and_the_selected_profile_the_cycle_ledgers(tmp_path):
    """The rows the cycle writes with ``[strategy]`` enabled (live_bridge/cycle.py: one
    ``strategy_<profile>_entry|no_entry`` event per pair past the entry threshold, regime and profile
    as codes) come back as names beside that pair's prediction; the hour's regime and profile when
    the pairs agree."""
    from live_bridge.api.app import _names

    def name(kind: str, code: int) -> str:  # engine/strategy's names (the codes where it is absent)
        names = _names(kind)
        return names[code] if names else str(code)

    hour = P0 // H + 10
    dsn = str(tmp_path / "ledger.sqlite")
    rows = [rec.model(hour, "tiny/1", "ab" * 32)]
    for pair, p_up in (("BTC/USD", "0.61"), ("ETH/USD", "0.42")):
        rows.append(rec.prediction(hour, pair, {"p_up": D(p_up), "exp_return": D("0.001")}, model_id="tiny/1"))
    payload = {"regime": 1, "profile": 0, "candidate": True, "p_up": D("0.61")}
    rows.append(rec.event("strategy_trend_entry", hour, "BTC/USD", payload=payload))
    rows.append(rec.cycle_end(hour, "completed", payload={"latch_next": []}))
    with Ledger.open(dsn) as led:
        led.append(*rows)
    c = TestClient(create_app(dsn, tmp_path, TOKEN))
    pr = get(c, "/api/predictions")
    assert pr["hour"] == hour and (pr["regime"], pr["profile"]) == (name("regime", 1), name("profile", 0))
    by = {p["pair"]: p for p in pr["predictions"]}
    assert by["BTC/USD"]["values"] == {"p_up": "0.61", "exp_return": "0.001"}
    btc = by["BTC/USD"]
    assert (btc["regime"], btc["profile"], btc["strategy_entry"]) == (name("regime", 1), name("profile", 0), True)
    assert name("profile", 0) in ("trend", "0")
    assert (by["ETH/USD"]["regime"], by["ETH/USD"]["profile"], by["ETH/USD"]["strategy_entry"]) == (None, None, None)
    assert get(c, "/api/predictions", params={"hour": str(hour)}) == pr
    assert c.get("/api/predictions", params={"hour": str(hour + 1)}, headers=AUTH).status_code == 404


def test_runs_of_kq_sweep_and_kq_backtest_as_the_cli_writes_them(tmp_path):
    """``kq sweep`` (4 sets) and ``kq backtest`` over six weeks of two Binance pairs, written into a
    runs folder by the CLI itself: the runs list names both kinds, the sweep's page carries its
    document and its results table row for row, the backtest's its metrics."""
    import json

    import pandas as pd

    from kq.cli import main
    from tests.conftest import require_shared

    d = require_shared()
    store = tmp_path / "m.duckdb"
    files = [str(d / f"{f}.parquet") for f in ("binance_BTCUSDT_1h", "binance_ETHUSDT_1h")]
    assert main(["data", "import", *files, "--store", str(store)]) == 0
    span = ["--store", str(store), "--venue", "binance", "--start", "2022-01-01", "--end", "2022-02-14"]
    grid = tmp_path / "grid.toml"
    grid.write_text('[params]\n"risk.max_positions" = [10, 1]\n"fees.slippage_bps" = [5.0, 20.0]\n')
    runs = tmp_path / "runs"
    runs.mkdir()
    sw = ["sweep", "--grid", str(grid), "--out", str(runs / "sw"), "--warmup-bars", "0", "--no-progress"]
    assert main([*sw, *span]) == 0
    assert main(["backtest", "--out", str(runs / "bt"), *span]) == 0
    c = TestClient(create_app(None, runs, TOKEN))
    listed = {r["id"]: r for r in get(c, "/api/runs")["runs"]}
    assert {k: r["kind"] for k, r in listed.items()} == {"sw": "sweep", "bt": "backtest"}
    doc = json.loads((runs / "sw" / "sweep.json").read_text())
    head = listed["sw"]["headline"]
    assert head["n_sets"] == doc["n_sets"] == 4 and head["objective"] == doc["objective"]
    assert all(doc["best"]["metrics"][k] == v for k, v in head.items() if k not in ("n_sets", "objective"))
    page = get(c, "/api/runs/sw")
    assert page["metrics"] == json.loads(json.dumps(doc)) and page["equity"] == []
    df = pd.read_parquet(runs / "sw" / "results.parquet")
    assert len(page["table"]) == len(df) == 4
    for row, (_, want) in zip(page["table"], df.iterrows(), strict=True):
        assert row["set_id"] == want["set_id"] and row["final_equity"] == want["final_equity"]
    bt = get(c, "/api/runs/bt")
    assert bt["metrics"]["final_equity"] == json.loads((runs / "bt" / "metrics.json").read_text())["final_equity"]
    assert bt["equity"][-1]["equity"] == bt["metrics"]["final_equity"]
    assert page["benchmark"] is None  # a sweep has no single curve to compare
    # buy-and-hold of the same pairs over the same hours, recomputed here from the Parquet files
    # (each pair's sleeve bought at its first close of the span after one fee, valued at later closes)
    eq = pd.read_parquet(runs / "bt" / "equity.parquet")
    grid = pd.Index(eq["ts"].to_numpy(), name="ts")
    from engine.config import load_config

    cfg = load_config()  # kq backtest's configuration when none is given
    fee, cash = cfg.fees.fee_rate, cfg.backtest.init_cash
    sleeves = []
    for f in files:
        px = pd.read_parquet(f, columns=["ts", "close"]).set_index("ts")["close"]
        px = px[(px.index >= grid[0]) & (px.index <= grid[-1])].reindex(grid).ffill()
        sleeves.append(0.5 * cash * (1.0 - fee) * px / px.dropna().iloc[0])
    want = pd.concat(sleeves, axis=1).sum(axis=1).to_numpy()
    peak = np.maximum.accumulate(np.concatenate(([cash], want)))[1:]
    want_dd = 1.0 - want / peak
    bench = bt["benchmark"]
    assert "equal weight" in bench["definition"]
    assert bench["metrics"]["total_return"] == pytest.approx(want[-1] / cash - 1.0, rel=1e-9)
    assert bench["metrics"]["max_drawdown"] == pytest.approx(want_dd.max(), rel=1e-9)
    assert bench["metrics"]["trades"] == 2
    # the curve sits on the strategy curve's own (downsampled) hours, point for point
    assert [p["ts"] for p in bench["curve"]] == [p["ts"] for p in bt["equity"]]
    at = {int(t): i for i, t in enumerate(grid)}
    for p in bench["curve"]:
        assert p["equity"] == pytest.approx(want[at[p["ts"]]], rel=1e-9)
        assert p["drawdown"] == pytest.approx(want_dd[at[p["ts"]]], rel=1e-9, abs=1e-12)


def test_hours_beyond_the_calendar_are_404_not_500(paper, tmp_path):
    """A 12-digit hour is a valid hour number but has no UTC label (year > 9999): 404 with one line,
    never a 500 from the date arithmetic (found by review: 999999999999 gave 500)."""
    led_path, _ = paper
    c = TestClient(create_app(str(led_path), tmp_path, TOKEN), raise_server_exceptions=False)
    for url in ("/api/predictions?hour=999999999999", "/api/replay/999999999999", "/api/replay/2562047788/status"):
        r = c.get(url, headers=AUTH)
        assert r.status_code == 404, (url, r.status_code, r.text)
        assert "beyond the year 9999" in r.json()["detail"]
