"""SIGKILL the daemon at named points of the cycle, restart it: the ledger, the positions and the
risk state equal those of a run that was never interrupted (docs/LIVE.md, "Crash safety").

The daemon runs in a child process (tests/live_crash_child.py) against a simulator running in this
process, started at 2022-06-02 06:00:30 UTC (``P0 + 30 h``): the first hour the daemon runs,
2022-06-02 05:00 (``KILL_HOUR``), decides an ENTRY (buy BTC/USD, a limit that rests unfilled, is
cancelled at its timeout, then the market fallback fills). The child kills itself with SIGKILL at
one point of that hour; a second child (no kill point) restarts the daemon at the same clock and
runs ``HOURS`` hours; the reference is one uninterrupted child on a fresh simulator started
identically, for the same hours.

Compared with the reference: every order intent, fill (pair, side, qty, price, fee, cost, trade
id, order txid: the simulator derives ids from a seed and a counter, so they match when the same
orders were placed in the same order), order final (code, filled qty, txids), decision row, risk
snapshot (every hour, before and after: the bytes, and the payload with its applied fills,
its journal of machine calls and its fill mark, the mark compared as the fill row it names, not as
a seq number) and completed hour;
the simulator's balances, orders and trades; at most one exchange order per ``cl_ord_id``;
``Ledger.verify()``. Not compared, because the restart legitimately writes them again or
differently: ``cycle_start``/``reconciliation``/``event`` rows (start-up recovery, a second
reconciliation), requests/responses/cancels (the restart's lookup cancels the resting limit
instead of the executor's timeout) and the free-text reasons of finals.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.live_harness import P0, SETTLE, H, kraken_store, shared_frames, sim_panel, tiny_model_dir

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
CHILD = ROOT / "tests" / "live_crash_child.py"
START = P0 + 30 * H + SETTLE  # the simulator's clock at start: hour P0 + 29 h has just closed
KILL_HOUR = P0 // H + 29  # 2022-06-02 05:00 UTC: ENTRY buy BTC/USD
HOURS = 3  # hours the restart (and the reference) run: the killed hour and two more
POINTS = ("after_intent", "after_request", "before_fill_row", "in_reconcile")
CHILD_TIMEOUT = 180


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    frames = shared_frames(48)
    root = tmp_path_factory.mktemp("crash")
    kraken_store(root / "m.duckdb", frames)
    return {"root": root, "model": tiny_model_dir(), "panel": sim_panel(48), "store": root / "m.duckdb"}


def _sim(world):
    from live_bridge.simulator.testing import start_sim

    return start_sim(world["panel"], start=START)


def _portfolio(world, name: str) -> Path:
    d = world["root"] / name
    d.mkdir()
    shutil.copy(world["store"], d / "m.duckdb")
    return d


def _child(world, sim, tmp: Path, hours: int, kill: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(CHILD), "--url", sim.url, "--tmp", str(tmp), "--model", str(world["model"])]
    cmd += ["--hours", str(hours)]
    if kill:
        cmd += ["--kill-at", kill, "--kill-hour", str(KILL_HOUR)]
    env = dict(os.environ)
    env.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".numba_cache"))
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT)


def _ledger(tmp: Path):
    from live_bridge.ledger import Ledger

    return Ledger.open(f"sqlite:///{tmp / 'ledger.sqlite'}")


def _seq_free(payload: dict[str, Any], led) -> dict[str, Any]:
    """A snapshot payload with its ledger seq numbers (which the restart's extra rows shift) replaced
    by the row they point at: ``fill_mark`` names the last own fill booked in the machine."""
    out = dict(payload)
    if "fill_mark" in out:
        e = led.entry(int(out["fill_mark"]))
        out["fill_mark"] = None if e is None else (e.kind, e.code, e.trade_id, e.hour)
    return out


def _view(tmp: Path, sim) -> dict[str, Any]:
    """What must not depend on whether the daemon was killed."""
    from live_bridge.ledger import Kind

    led = _ledger(tmp)
    try:
        rep = led.verify()
        rows = led.entries()
        by = collections.defaultdict(list)
        for e in rows:
            by[e.kind].append(e)
        finals = collections.Counter(e.cl_ord_id for e in by[Kind.ORDER_FINAL])
        last = led.last_risk_snapshot("after")
        view = {
            "verify": (rep.ok, rep.message() if not rep.ok else ""),
            "intents": [
                (e.hour, e.cl_ord_id, e.pair, e.side, e.code, e.qty, e.price, e.payload.get("leg"))
                for e in by[Kind.ORDER_INTENT]
            ],
            "fills": [
                (e.hour, e.cl_ord_id, e.code, e.trade_id, e.txid, e.pair, e.side, e.qty, e.price, e.fee, e.cost)
                for e in by[Kind.FILL]
            ],
            "finals": sorted(
                (e.cl_ord_id, e.code, e.qty, tuple(e.payload.get("txids", []))) for e in by[Kind.ORDER_FINAL]
            ),
            "finals_per_intent": sorted(set(finals.values())),
            "open_intents": [e.cl_ord_id for e in led.open_intents()],
            "decisions": [(e.hour, e.code, e.pair, e.side, e.qty, e.price, e.payload) for e in by[Kind.DECISION]],
            "snapshots": [(e.hour, e.code, e.digest, _seq_free(e.payload, led)) for e in by[Kind.RISK_SNAPSHOT]],
            "completed": [e.hour for e in by[Kind.CYCLE_END] if e.code == "completed"],
            "last_after": last.blob if last is not None else None,
        }
    finally:
        led.close()
    ex = sim.ex
    with ex.lock:
        view["balances"] = {a.key: dict(sorted(a.balances.items())) for a in ex.accounts.values()}
        view["orders"] = sorted(
            (o.txid, o.cl_ord_id, o.pair, o.side, o.ordertype, o.vol, o.price, o.status, o.vol_exec, tuple(o.trades))
            for o in ex.orders.values()
        )
        view["trades"] = sorted(
            (t.txid, t.ordertxid, t.pair, t.side, t.price, t.vol, t.fee, t.time) for t in ex.trades.values()
        )
        per_cid = collections.Counter(o.cl_ord_id for o in ex.orders.values())
    view["max_orders_per_cl_ord_id"] = max(per_cid.values(), default=0)
    return view


@pytest.fixture(scope="module")
def reference(world):
    """One uninterrupted run of ``HOURS`` hours (run once for the module)."""
    sim = _sim(world)
    try:
        tmp = _portfolio(world, "reference")
        t = time.perf_counter()
        p = _child(world, sim, tmp, HOURS)
        assert p.returncode == 0, p.stderr[-3000:]
        view = _view(tmp, sim)
        view["wall_s"] = time.perf_counter() - t
    finally:
        sim.stop()
    # the scenario the kill points need: the killed hour sends a limit (cancelled unfilled) and its
    # market fallback (filled), and nothing is left open
    assert [h for h in view["completed"]] == [KILL_HOUR + i for i in range(HOURS)]
    legs = [(i[0], i[3], i[7]) for i in view["intents"]]
    assert legs[:2] == [(KILL_HOUR, "buy", "main"), (KILL_HOUR, "buy", "fallback")], legs
    assert [f[0] for f in view["fills"]][:1] == [KILL_HOUR]
    assert view["open_intents"] == []
    return view


def _state_at_kill(point: str, tmp: Path, sim) -> None:
    """The child died where it was told: the ledger and the exchange show the half-done step."""
    from live_bridge.ledger import Kind

    led = _ledger(tmp)
    try:
        rows = led.entries(hour=KILL_HOUR)
        kinds = [e.kind for e in rows]
        assert Kind.CYCLE_END not in kinds  # the hour did not complete
        intents = [e for e in rows if e.kind == Kind.ORDER_INTENT]
        sim_orders = list(sim.ex.orders.values())
        if point == "after_intent":
            assert len(intents) == 1 and Kind.ORDER_REQUEST not in kinds and sim_orders == []
        elif point == "after_request":
            assert Kind.ORDER_REQUEST in kinds and Kind.ORDER_RESPONSE not in kinds
            assert [o.cl_ord_id for o in sim_orders] == [intents[0].cl_ord_id]  # on the exchange
        elif point == "before_fill_row":
            assert Kind.FILL not in kinds and len(sim.ex.trades) == 1  # filled there, not here
        elif point == "in_reconcile":
            assert Kind.FILL in kinds and not [e for e in rows if e.kind == Kind.RECONCILIATION]
        assert led.verify().ok
    finally:
        led.close()


@pytest.mark.parametrize("point", POINTS)
def test_sigkill_then_restart_equals_uninterrupted(world, reference, point):
    sim = _sim(world)
    try:
        tmp = _portfolio(world, point)
        t = time.perf_counter()
        killed = _child(world, sim, tmp, HOURS, kill=point)
        assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
        assert f"SIGKILL at {point}" in killed.stderr
        _state_at_kill(point, tmp, sim)
        again = _child(world, sim, tmp, HOURS)
        assert again.returncode == 0, again.stderr[-3000:]
        got = _view(tmp, sim)
        wall = time.perf_counter() - t
    finally:
        sim.stop()
    ref = {k: v for k, v in reference.items() if k != "wall_s"}
    assert got["verify"] == (True, "")
    assert got["max_orders_per_cl_ord_id"] == 1  # no AddOrder sent twice
    assert got["finals_per_intent"] == [1]
    for k in ref:
        assert got[k] == ref[k], f"{point}: {k} differs from the uninterrupted run"
    print(f"{point}: kill + restart {wall:.1f} s (reference {reference['wall_s']:.1f} s)")
