"""RiskMachine (engine.risk.machine) against the backtester, bit for bit, on real bars: 10 Binance
pairs, 2,200 hours with missing bars (data kill switch), random persistent signals that trade, tight
drawdown tiers with timed halt resets, short time exits, API faults and operator resets. The machine
is fed one bar at a time (absolute hours) with the backtester's fill model; its trades, events and
equity rows must equal ``run_backtest``'s, also when it is snapshotted, dropped and restored at every
bar, and when a restored machine is fed from inputs whose rows start mid-window. Then the live path
(exchange fills through on_fill, market fallbacks, cancels) and the snapshot's integrity checks."""

from __future__ import annotations

import functools
import struct
from dataclasses import replace

import numpy as np
import pytest

from engine.backtest.runner import make_inputs, run_backtest
from engine.config import load_config
from engine.errors import InputError
from engine.risk.enums import SIZING_VOL_TARGET, EventCode, FillHow, OrderKind, Reason, TradingState
from engine.risk.machine import SNAPSHOT_VERSION, RiskMachine, SnapshotError, bar_inputs
from engine.risk.params import params_from_config
from engine.store.panel import load_shared_panel

PAIRS10 = [f"binance_{s}USDT_1h" for s in ("BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "AVAX", "DOGE")]
START = 1619337600 + 2200 * 3600  # 2021-07-27: missing hours inside (data kill switch, resets)
N_BARS = 2200


@functools.lru_cache(maxsize=1)
def _case():
    from tests.conftest import require_shared

    require_shared()
    p = load_shared_panel(PAIRS10, start=START, end=START + 3600 * (N_BARS - 1))
    assert p.n_bars == N_BARS and not p.valid.all()
    n, m = p.close.shape
    rng = np.random.default_rng(7)
    # random persistent signals: each pair's P(up) holds a regime, switching with probability 0.04 an hour
    flips = rng.random((n, m)) < 0.04
    regime = np.cumsum(flips, axis=0) % 2
    pu = np.where(regime == 1, 0.75, 0.3) + rng.normal(0.0, 0.02, (n, m))
    er = np.where(regime == 1, 0.03, -0.01) * rng.uniform(0.5, 1.5, (n, m))
    api = rng.random(n) < 0.003
    op = np.where(rng.random(n) < 0.004, rng.integers(1, 4, n), 0).astype(np.int64)
    cfg = load_config()
    inp = make_inputs(p, pu, er, cfg, api_fault=api, operator=op)
    params = params_from_config(
        cfg,
        sizing=SIZING_VOL_TARGET,
        position_size=0.1,
        max_hold_bars=12,
        dd_tier1=0.01,
        dd_tier2=0.02,
        dd_halt=0.04,
        halt_reset_bars=60,
        kill_reset_bars=24,
        max_exposure=0.9,
        max_cluster_exposure=0.5,
    )
    bt = run_backtest(inp, params, record=True)
    # the run must exercise what the bar ids carry: time exits, kill-switch latches and timed
    # resets, the halt and its timed reset, and both fill paths
    tr, ev = bt.trades, bt.events
    assert (tr["reason"] == Reason.EXIT_TIME).sum() >= 5 and (tr["side"] > 0).sum() >= 50
    assert (ev["reason"] == Reason.RESET_KILL).sum() >= 2 and (ev["reason"] == Reason.RESET_HALT).sum() >= 1
    assert (ev["reason"] == Reason.KILL_DATA).sum() >= 1 and (ev["reason"] == Reason.HALT).sum() >= 1
    assert (tr["how"] == FillHow.MARKET_CLOSE).sum() >= 1 and (tr["how"] == FillHow.LIMIT).sum() >= 1
    return inp, params, bt


def _collect(results, hour0):
    """Trades, events and equity rows of a run of BarResults, bar ids back to rows."""
    tr = np.concatenate([r.trades for r in results])
    ev = np.concatenate([r.events for r in results])
    eq = np.concatenate([r.equity for r in results])
    for a in (tr, ev, eq):
        a["bar"] -= hour0
    return tr, ev, eq


def _assert_equal(results, inp, bt):
    tr, ev, eq = _collect(results, int(inp.ts[0]) // 3600)
    assert tr.tobytes() == bt.trades.tobytes(), "trades differ"
    assert ev.tobytes() == bt.events.tobytes(), "events differ"
    assert eq.tobytes() == bt.equity.tobytes(), "equity rows differ"


def _run(machine, inp, rows):
    out = []
    for t in rows:
        out.append(machine.on_bar(*bar_inputs(inp, t), simulate_fills=True))
    return machine, out


def test_machine_equals_backtest_bit_for_bit():
    inp, params, bt = _case()
    m, res = _run(RiskMachine(inp.pairs, params), inp, range(N_BARS))
    _assert_equal(res, inp, bt)
    assert m.last_hour == int(inp.ts[-1]) // 3600
    assert float(m.state[0]["equity"]) == float(bt.metrics[0]["final_equity"])
    assert np.array_equal(m.refusals, bt.refusals)


def test_machine_restored_at_every_bar_equals_backtest():
    """Restored from its snapshot before every bar, the machine's records equal (full snapshot,
    byte for byte) those of a machine that never stopped, after every bar; its output equals the
    backtest's."""
    inp, params, bt = _case()
    a = RiskMachine(inp.pairs, params)
    b = RiskMachine(inp.pairs, params)
    res = []
    for t in range(N_BARS):
        b = RiskMachine.restore(b.snapshot())
        args = bar_inputs(inp, t)
        a.on_bar(*args, simulate_fills=True)
        res.append(b.on_bar(*args, simulate_fills=True))
        assert b.snapshot() == a.snapshot(), f"records differ after row {t}"
    _assert_equal(res, inp, bt)


def test_machine_restored_into_a_feeder_whose_rows_start_mid_window():
    """The first machine runs rows [0, k); a machine restored from its snapshot is fed from inputs
    cut at k (its rows start at 0 again, hours continue): together they equal the backtest."""
    inp, params, bt = _case()
    # cut where positions are open, so their entry bars cross the restart
    k = next(t for t in range(1200, N_BARS) if bt.equity[t - 1]["n_positions"] >= 2)
    m1, res1 = _run(RiskMachine(inp.pairs, params), inp, range(k))
    assert m1.positions["qty"].any()
    cut = replace(
        inp,
        ts=inp.ts[k:],
        month_id=inp.month_id[k:],
        api_fault=inp.api_fault[k:],
        operator=inp.operator[k:],
        entry_block=inp.entry_block[k:],
        **{
            f: getattr(inp, f)[k:]
            for f in (
                "open",
                "high",
                "low",
                "close",
                "volume",
                "valid",
                "p_up",
                "exp_ret",
                "atr",
                "spread",
                "cluster",
                "tradable",
            )
        },
    )
    m2 = RiskMachine.restore(m1.snapshot())
    _, res2 = _run(m2, cut, range(N_BARS - k))
    _assert_equal(res1 + res2, inp, bt)


# ---- the live path: exchange fills, fallbacks, cancels


def _live_machine(**over):
    inp, _, _ = _case()
    cfg = load_config()
    params = params_from_config(cfg, **over)
    return inp, RiskMachine(inp.pairs, params)


def _first_order_bar(machine, inp, start):
    for t in range(start, start + 500):
        r = machine.on_bar(*bar_inputs(inp, t))
        assert r.complete
        if len(r.orders):
            return t, r
    raise AssertionError("no order decided")


def test_live_fill_books_the_position_and_settles_the_order():
    inp, m = _live_machine(entry_kind=int(OrderKind.MARKET))
    t, r = _first_order_bar(m, inp, 300)
    j = int(r.order_pairs[0])
    o = r.orders[0]
    assert o["side"] == 1 and o["kind"] == OrderKind.MARKET and o["bar"] == int(inp.ts[t]) // 3600
    ev = r.events[(r.events["code"] == EventCode.ORDER) & (r.events["pair"] == j)]
    assert len(ev) == 1 and ev[0]["reason"] == Reason.ENTRY
    free = next(i for i in range(m.n_pairs) if not m.pending[i]["active"])
    with pytest.raises(InputError, match="no order pending"):
        m.on_fill(free, "buy", 1.0, 1.0, 0.0, FillHow.MARKET_OPEN)
    price = float(inp.open[t + 1, j])
    cash0 = float(m.state[0]["cash"])
    fee = float(o["qty"]) * price * 0.0026  # the exchange's fee, booked as reported
    tr = m.on_fill(m.pairs[j], "buy", float(o["qty"]), price, fee, FillHow.MARKET_OPEN).trades
    assert tr[0]["fee"] == fee
    hour_exec = int(inp.ts[t + 1]) // 3600
    assert tr[0]["bar"] == hour_exec and tr[0]["pair"] == j and tr[0]["qty"] == o["qty"]
    pos = m.positions[j]
    p = m.params[0]
    assert pos["qty"] == o["qty"] and pos["entry_bar"] == hour_exec and pos["entry_price"] == price
    assert pos["stop"] == price - p["stop_atr_mult"] * o["atr"]
    assert float(m.state[0]["cash"]) == cash0 - (tr[0]["notional"] + tr[0]["fee"])
    assert not m.pending[j]["active"]
    # the restored machine holds the same position and exits it on time like the original
    m2 = RiskMachine.restore(m.snapshot())
    assert m2.positions.tobytes() == m.positions.tobytes() and m2.state.tobytes() == m.state.tobytes()


def test_live_unfilled_limit_falls_back_to_market_and_the_close_waits():
    inp, m = _live_machine(entry_kind=int(OrderKind.LIMIT_FIRST))
    t, r = _first_order_bar(m, inp, 300)
    j = int(r.order_pairs[0])
    assert r.orders[0]["kind"] == OrderKind.LIMIT_FIRST
    # no fill during bar t+1: at its close the entry falls back to market and the close waits
    r2 = m.on_bar(*bar_inputs(inp, t + 1))
    assert not r2.complete and r2.equity is None and m.awaiting_fills
    k = list(r2.order_pairs).index(j)
    assert r2.orders[k]["kind"] == OrderKind.MARKET and np.isnan(r2.orders[k]["limit_price"])
    with pytest.raises(InputError, match="waits for fills"):
        m.on_bar(*bar_inputs(inp, t + 2))
    with pytest.raises(InputError, match="still pending"):
        m.finish_bar()
    # a restart while waiting keeps the wait
    m = RiskMachine.restore(m.snapshot())
    for i in r2.order_pairs:
        if i == j:
            q, px = float(r2.orders[k]["qty"]), float(inp.close[t + 1, j])
            tr = m.on_fill(j, "buy", q, px, q * px * 0.004, FillHow.MARKET_CLOSE).trades
            assert tr[0]["bar"] == int(inp.ts[t + 1]) // 3600
        else:
            m.on_cancel(int(i))
    r3 = m.finish_bar()
    assert r3.complete and r3.equity[0]["bar"] == int(inp.ts[t + 1]) // 3600
    assert m.positions[j]["qty"] > 0.0
    m.on_bar(*bar_inputs(inp, t + 2))


def test_live_fallback_entry_cancelled_under_the_kill_switch():
    inp, m = _live_machine(entry_kind=int(OrderKind.LIMIT_FIRST))
    t, r = _first_order_bar(m, inp, 300)
    args = list(bar_inputs(inp, t + 1))
    args[5] = True  # API fault at bar t+1: the kill switch latches
    r2 = m.on_bar(*args)
    assert m.state[0]["trading_state"] == TradingState.KILL_SWITCH
    cancels = r2.events[r2.events["code"] == EventCode.CANCEL]
    buys = {int(i) for i, o in zip(r.order_pairs, r.orders) if o["side"] > 0}
    assert buys and set(cancels["pair"].tolist()) == buys
    assert (cancels["reason"] == Reason.REFUSE_KILL_SWITCH).all()
    assert not m.pending["active"][sorted(buys)].any()


def test_hours_must_come_in_order_and_inputs_are_checked():
    inp, m = _live_machine()
    m.on_bar(*bar_inputs(inp, 10))
    with pytest.raises(InputError, match="feed every hour in order"):
        m.on_bar(*bar_inputs(inp, 12))
    with pytest.raises(InputError, match="feed every hour in order"):
        m.on_bar(*bar_inputs(inp, 10))
    h, bars, pred, trd, blk, api, op, _ = bar_inputs(inp, 11)
    with pytest.raises(InputError, match="bars"):
        m.on_bar(h, bars[:3], pred, trd, blk, api, op)
    with pytest.raises(InputError, match="operator"):
        m.on_bar(h, bars, pred, trd, blk, api, 32)
    with pytest.raises(InputError, match="hour must be an int"):
        m.on_bar(float(h), bars, pred, trd, blk, api, op)
    assert m.last_hour == int(inp.ts[10]) // 3600  # nothing changed by the refused calls


# ---- snapshot integrity


def test_snapshot_refuses_corrupted_truncated_and_foreign_bytes():
    inp, params, _ = _case()
    m, _ = _run(RiskMachine(inp.pairs, params), inp, range(400))
    blob = m.snapshot()
    assert RiskMachine.restore(blob).snapshot() == blob
    bad = bytearray(blob)
    bad[len(blob) // 2] ^= 0x01
    with pytest.raises(SnapshotError, match="digest mismatch"):
        RiskMachine.restore(bytes(bad))
    with pytest.raises(SnapshotError, match="truncated"):
        RiskMachine.restore(blob[:-7])
    with pytest.raises(SnapshotError, match="truncated"):
        RiskMachine.restore(blob[:20])
    other = blob[:8] + struct.pack("<I", SNAPSHOT_VERSION + 1) + blob[12:]
    with pytest.raises(SnapshotError, match=f"version {SNAPSHOT_VERSION + 1}"):
        RiskMachine.restore(other)
    with pytest.raises(SnapshotError, match="not a RiskMachine snapshot"):
        RiskMachine.restore(b"PK\x03\x04" + blob[4:])
    with pytest.raises(SnapshotError, match="expected bytes"):
        RiskMachine.restore("not bytes")


def test_snapshot_of_another_record_layout_is_refused():
    """A snapshot whose records were written with another layout (e.g. a build with other state
    fields) is refused by name, even with a valid digest."""
    import hashlib
    import json

    from engine.risk import machine as M

    inp, params, _ = _case()
    blob = RiskMachine(inp.pairs, params).snapshot()
    body = blob[M._HEADER.size :]
    (ml,) = struct.unpack_from("<I", body)
    meta = json.loads(body[4 : 4 + ml])
    for a in meta["arrays"]:
        if a[0] == "positions":
            a[1] = [d if d[0] != "entry_bar" else ["entry_hour", d[1]] for d in a[1]]
    mj = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    body2 = struct.pack("<I", len(mj)) + mj + body[4 + ml :]
    blob2 = M._HEADER.pack(M.SNAPSHOT_MAGIC, M.SNAPSHOT_VERSION, len(body2), hashlib.sha256(body2).digest()) + body2
    with pytest.raises(SnapshotError, match="record 'positions' differs"):
        RiskMachine.restore(blob2)
