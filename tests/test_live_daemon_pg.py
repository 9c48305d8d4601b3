"""The daemon's ledger on PostgreSQL: the same 45 paper hours (real Kraken bars through the
simulator, the tiny real model, an entry and an exit) with the ledger on SQLite and on the server
at ``KQ_TEST_PG_DSN`` give the same decisions, orders, fills and final risk snapshot bytes, and the
PostgreSQL chain verifies. Money columns come back as the same exact Decimals on both.

Server rules as tests/test_ledger_pg.py: set but unreachable fails; unset fails in CI and skips
elsewhere. The ledger lives in a fresh schema ``ledger_test_<uuid>``, dropped afterwards."""

from __future__ import annotations

import os
import uuid

from live_bridge.ledger import Kind
from tests.live_harness import (
    P0,
    BundleModel,
    kraken_store,
    make_daemon,
    run_hours,
    shared_frames,
    sim_panel,
    tiny_model_dir,
)

HOURS = 45


def _pg_dsn() -> str:
    from test_ledger_pg import pg_dsn_from

    return pg_dsn_from(os.environ)


def _run(tmp, ledger_over: dict):
    from live_bridge.simulator.testing import start_sim

    kraken_store(tmp / "m.duckdb", shared_frames(HOURS + 5))
    sim = start_sim(sim_panel(HOURS + 5), start=P0 + 30, balances={"USD": "10000"})
    try:
        d = make_daemon(sim.url, tmp, BundleModel(tiny_model_dir()), paths=ledger_over)
        d.start()
        reps = run_hours(sim, d, HOURS)
        led = d.ledger
        out = {
            "hours": [r.hour for r in reps],
            "decisions": [(e.hour, e.code, e.pair, e.side, e.qty, e.price) for e in led.entries(kind=Kind.DECISION)],
            "intents": [(e.hour, e.cl_ord_id, e.side, e.qty, e.price) for e in led.entries(kind=Kind.ORDER_INTENT)],
            "fills": [(e.trade_id, e.side, e.qty, e.price, e.fee, e.cost) for e in led.entries(kind=Kind.FILL)],
            "finals": [(e.cl_ord_id, e.code, e.qty) for e in led.entries(kind=Kind.ORDER_FINAL)],
            "snapshot": led.last_risk_snapshot("after").blob,
            "verify": led.verify().ok,
        }
        d.close()
        return out
    finally:
        sim.stop()


def test_daemon_ledger_on_postgresql_equals_sqlite(tmp_path):
    dsn = _pg_dsn()
    schema = f"ledger_test_{uuid.uuid4().hex[:12]}"
    try:
        pg = _run(tmp_path / "pg", {"ledger": dsn, "ledger_schema": schema})
    finally:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    lite = _run(tmp_path / "lite", {})
    assert pg["verify"] and lite["verify"]
    assert pg["hours"] == lite["hours"] == list(range(P0 // 3600, P0 // 3600 + HOURS))
    assert len(lite["fills"]) >= 2, "the window holds an entry and an exit"
    for k in ("decisions", "intents", "fills", "finals", "snapshot"):
        assert pg[k] == lite[k], k
