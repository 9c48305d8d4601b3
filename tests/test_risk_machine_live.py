"""RiskMachine's live path (engine.risk.machine): exchange fills booked cumulatively (partial buys
and sells, dust), the fill's side, size and kind checked, over-fills and fills with no order booked
explicitly under the kill switch, the exchange's fee, the close's fallback reporting (never
re-issuing) orders, bars with impossible prices, and restore against the current configuration and
against foreign snapshots. Three synthetic pairs at a flat price, so every figure is known."""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest

from engine.config import load_config
from engine.errors import InputError
from engine.risk import machine as M
from engine.risk.enums import (
    EventCode,
    FillHow,
    KillReason,
    OrderKind,
    Reason,
    TradingState,
    bar_dt,
    prediction_dt,
)
from engine.risk.machine import RiskMachine, SnapshotError
from engine.risk.params import params_from_config

PAIRS = ("AAA", "BBB", "CCC")
H0 = 480_000  # an absolute hour
ORDERMIN = 0.5
INSTRUMENTS = (
    np.full(3, ORDERMIN),
    np.full(3, 0.5),
    np.full(3, 4, dtype=np.int64),
    np.full(3, 2, dtype=np.int64),
    np.full(3, 4, dtype=np.int64),
)
PX = 100.0


def _bars(c=PX, valid=True):
    b = np.zeros(3, dtype=bar_dt)
    b["open"], b["high"], b["low"], b["close"] = c, c * 1.002, c * 0.998, c
    b["volume"], b["valid"], b["atr"], b["spread"], b["cluster"] = 1e6, valid, c * 0.01, 0.001, -1
    return b


def _pred(pu, er):
    p = np.zeros(3, dtype=prediction_dt)
    p["p_up"], p["exp_ret"] = pu, er
    return p


BULL, BEAR = (0.9, 0.05), (0.3, -0.02)


def _params(**over):
    return params_from_config(load_config(), **over)


def _entered(entry_kind=OrderKind.MARKET, **over):
    """A machine whose close at hour H0+5 decided entries of 2.4 units in each pair."""
    m = RiskMachine(PAIRS, _params(entry_kind=int(entry_kind), **over), INSTRUMENTS)
    for h in range(5):
        m.on_bar(H0 + h, _bars(), _pred(*BEAR))
    r = m.on_bar(H0 + 5, _bars(), _pred(*BULL))
    assert list(r.order_pairs) == [0, 1, 2] and (r.orders["side"] == 1).all()
    assert (r.orders["qty"] == 2.4).all() and (r.orders["fallback"] == 0).all()
    return m


def _held(**over):
    """A machine holding 2.4 units of AAA (filled whole), BBB/CCC orders cancelled."""
    m = _entered(**over)
    m.on_fill("AAA", "buy", 2.4, PX, 0.96, FillHow.MARKET_OPEN)
    m.on_cancel("BBB")
    m.on_cancel("CCC")
    return m


def _exit_decided(m):
    """Feed a bearish close: an exit of AAA is decided (limit first)."""
    r = m.on_bar(H0 + 6, _bars(), _pred(*BEAR))
    assert list(r.order_pairs) == [0] and r.orders[0]["side"] == -1 and r.orders[0]["qty"] == 2.4
    return r


# ---- 1. partial fills


def test_a_buy_filled_in_two_parts_books_both():
    m = _entered()
    f1 = m.on_fill("AAA", "buy", 1.0, 100.0, 0.4, FillHow.MARKET_OPEN)
    assert f1.pending and f1.remaining == pytest.approx(1.4)
    o = m.pending[0]
    assert o["active"] == 1 and o["filled"] == 1.0 and o["qty"] == pytest.approx(1.4)
    f2 = m.on_fill("AAA", "buy", 1.4, 110.0, 0.616, FillHow.MARKET_OPEN)
    assert not f2.pending and f2.remaining == 0.0 and not m.pending[0]["active"]
    pos, st = m.positions[0], m.state[0]
    assert pos["qty"] == pytest.approx(2.4) and st["n_positions"] == 1
    assert pos["entry_price"] == pytest.approx((100.0 + 1.4 * 110.0) / 2.4)
    assert pos["entry_cost"] == pytest.approx(100.0 + 0.4 + 154.0 + 0.616)
    assert pos["entry_bar"] == H0 + 6  # the first part's bar
    assert pos["stop"] == pytest.approx(pos["entry_price"] - 2.0 * 1.0)
    assert float(st["cash"]) == pytest.approx(10_000.0 - 254.0 - 1.016)


def test_a_partial_buy_then_fallback_sends_only_the_remainder():
    m = _entered(entry_kind=OrderKind.LIMIT_FIRST)
    m.on_fill("AAA", "buy", 1.0, 99.9, 0.1, FillHow.LIMIT)
    r = m.on_bar(H0 + 6, _bars(), _pred(*BULL))
    assert not r.complete
    k = list(r.order_pairs).index(0)
    assert r.orders[k]["qty"] == pytest.approx(1.4) and r.orders[k]["kind"] == OrderKind.MARKET
    assert r.orders[k]["fallback"] == 1 and r.orders[k]["filled"] == 1.0
    m.on_cancel("AAA")  # cancelled at the exchange: the filled part stays booked
    assert m.positions[0]["qty"] == 1.0 and m.state[0]["n_positions"] == 1
    m.on_cancel("BBB")
    m.on_cancel("CCC")
    assert m.finish_bar().complete


def test_a_sell_filled_60_percent_books_that_part_then_the_rest():
    m = _held()
    _exit_decided(m)
    cost0 = float(m.positions[0]["entry_cost"])
    f = m.on_fill("AAA", "sell", 1.44, 110.0, 0.5, FillHow.LIMIT)
    assert f.pending and f.remaining == pytest.approx(0.96)
    pos = m.positions[0]
    assert pos["qty"] == pytest.approx(0.96) and m.state[0]["n_positions"] == 1
    assert pos["entry_cost"] == pytest.approx(cost0 * 0.4)
    assert f.trades[0]["pnl"] == pytest.approx(1.44 * 110.0 - 0.5 - cost0 * 0.6)
    assert m.acc[3] == 0.0  # no round trip closed yet
    f2 = m.on_fill("AAA", "sell", 0.96, 105.0, 0.3, FillHow.LIMIT)
    assert not f2.pending and not m.pending[0]["active"]
    assert m.positions[0]["qty"] == 0.0 and m.state[0]["n_positions"] == 0
    total = f.trades[0]["pnl"] + f2.trades[0]["pnl"]
    assert total == pytest.approx(1.44 * 110 + 0.96 * 105 - 0.8 - cost0)
    assert m.acc[3] == 1.0 and m.acc[0] == pytest.approx(total)  # one round trip, its whole P&L


def test_a_sell_leaving_less_than_ordermin_closes_the_position_as_dust():
    m = _held()
    _exit_decided(m)
    cost0 = float(m.positions[0]["entry_cost"])
    f = m.on_fill("AAA", "sell", 2.0, 110.0, 0.5, FillHow.LIMIT)  # 0.4 left < ordermin 0.5
    assert not f.pending and not m.pending[0]["active"]
    assert m.positions[0]["qty"] == 0.0 and m.state[0]["n_positions"] == 0
    dust = f.events[f.events["code"] == EventCode.DUST]
    assert len(dust) == 1 and dust[0]["reason"] == Reason.DUST and dust[0]["value"] == pytest.approx(0.4)
    assert f.trades[0]["pnl"] == pytest.approx(220.0 - 0.5 - cost0)  # the dust's cost written off


# ---- 2, 5. what a fill may be; fills the machine did not order


def test_a_fill_must_match_the_orders_side_size_and_kind():
    m = _entered()
    before = m.snapshot()
    with pytest.raises(InputError, match="a sell against the pending buy"):
        m.on_fill("AAA", "sell", 1.0, PX, 0.0, FillHow.MARKET_OPEN)
    with pytest.raises(InputError, match=r"quantity 24\.0 above the order's remaining 2\.4 plus one lot step"):
        m.on_fill("AAA", "buy", 24.0, PX, 0.0, FillHow.MARKET_OPEN)
    with pytest.raises(InputError, match="how must be a FillHow"):
        m.on_fill("AAA", "buy", 1.0, PX, 0.0, 999)
    with pytest.raises(InputError, match="fee"):
        m.on_fill("AAA", "buy", 1.0, PX, -1.0, FillHow.MARKET_OPEN)
    with pytest.raises(InputError, match="side"):
        m.on_fill("AAA", 0, 1.0, PX, 0.0, FillHow.MARKET_OPEN)
    assert m.snapshot() == before  # nothing booked by the refused calls
    # one lot step over is rounding, booked
    f = m.on_fill("AAA", "buy", 2.4001, PX, 0.0, FillHow.MARKET_OPEN)
    assert not f.pending and m.positions[0]["qty"] == 2.4001


def test_the_exchanges_fee_is_booked():
    m = _entered()
    f = m.on_fill("AAA", "buy", 2.4, PX, 0.123, FillHow.MARKET_OPEN)
    assert f.trades[0]["fee"] == 0.123 and m.state[0]["fees_paid"] == 0.123
    assert m.positions[0]["entry_cost"] == 240.123


def test_an_over_fill_is_booked_explicitly_and_latches_the_kill_switch():
    m = _entered()
    f = m.on_unexpected_fill("AAA", "buy", 24.0, PX, 9.6, FillHow.MARKET_OPEN)
    assert m.positions[0]["qty"] == 24.0 and not m.pending[0]["active"]
    assert m.state[0]["kill_reason"] == KillReason.API_INSTABILITY
    assert m.state[0]["trading_state"] == TradingState.KILL_SWITCH
    kill = f.events[f.events["code"] == EventCode.KILL]
    assert len(kill) == 1 and kill[0]["reason"] == Reason.KILL_API and kill[0]["pair"] == 0


def test_a_fill_with_no_order_pending_is_booked_explicitly():
    m = _held()
    with pytest.raises(InputError, match="no order pending.*on_unexpected_fill"):
        m.on_fill("BBB", "buy", 1.0, PX, 0.0, FillHow.MARKET_OPEN)
    f = m.on_unexpected_fill("BBB", "buy", 1.0, PX, 0.4, FillHow.MARKET_OPEN)
    assert m.positions[1]["qty"] == 1.0 and m.state[0]["n_positions"] == 2
    assert np.isnan(m.positions[1]["stop"]) and f.trades[0]["reason"] == Reason.NONE
    assert m.state[0]["kill_reason"] == KillReason.API_INSTABILITY
    # an external sell of what is held closes it; the kill switch stays latched
    m.on_unexpected_fill("BBB", "sell", 1.0, PX, 0.4, FillHow.MARKET_OPEN)
    assert m.positions[1]["qty"] == 0.0 and m.state[0]["n_positions"] == 1
    assert RiskMachine.restore(m.snapshot()).snapshot() == m.snapshot()


# ---- 4, 8. the close's fallback


def test_the_close_reports_a_market_order_still_pending_without_reissuing_it():
    m = _entered(entry_kind=OrderKind.MARKET)
    r = m.on_bar(H0 + 6, _bars(), _pred(*BULL))
    assert not r.complete and list(r.order_pairs) == [0, 1, 2]
    assert (r.orders["fallback"] == 0).all() and (r.orders["kind"] == OrderKind.MARKET).all()
    assert not (r.events["code"] == EventCode.ORDER).any()  # nothing new to send


def test_a_limit_falls_back_once_and_is_marked():
    m = _entered(entry_kind=OrderKind.LIMIT_FIRST)
    r = m.on_bar(H0 + 6, _bars(), _pred(*BULL))
    assert (r.orders["fallback"] == 1).all() and (r.orders["kind"] == OrderKind.MARKET).all()
    assert ((r.events["code"] == EventCode.ORDER) & (r.events["reason"] == Reason.ENTRY)).sum() == 3


def test_the_close_cancels_an_order_whose_bar_is_missing():
    m = _entered(entry_kind=OrderKind.LIMIT_FIRST)
    b = _bars()
    b["valid"][1] = False
    r = m.on_bar(H0 + 6, b, _pred(*BULL))
    assert not m.pending[1]["active"]
    c = r.events[(r.events["code"] == EventCode.CANCEL) & (r.events["pair"] == 1)]
    assert len(c) == 1 and c[0]["reason"] == Reason.REFUSE_NO_BAR


# ---- 9. bars with impossible prices


@pytest.mark.parametrize(
    "field,value", [("close", -5.0), ("open", np.nan), ("low", 0.0), ("high", np.inf), ("close", 150.0)]
)
def test_a_bar_with_impossible_prices_is_a_missing_bar(field, value):
    m = RiskMachine(PAIRS, _params(), INSTRUMENTS)
    m.on_bar(H0, _bars(), _pred(*BEAR))
    b = _bars()
    b[field][2] = value
    r = m.on_bar(H0 + 1, b, _pred(*BEAR))
    assert m.state[0]["kill_reason"] == KillReason.DATA_INTEGRITY
    assert ((r.events["code"] == EventCode.KILL) & (r.events["pair"] == 2)).any()
    assert not m.bar["valid"][2] and b["valid"][2]  # the caller's array is left alone


# ---- 6. restore against the current configuration


def test_restore_checks_params_and_pairs_and_takes_instruments_fresh():
    m = _held()
    blob = m.snapshot()
    same = RiskMachine.restore(blob, params=m.params, pairs=PAIRS)
    assert same.snapshot() == blob
    tight = _params(entry_kind=int(OrderKind.MARKET), max_exposure=0.1)
    with pytest.raises(SnapshotError, match=r"differ from the configuration in max_exposure \(0\.2 -> 0\.1\)"):
        RiskMachine.restore(blob, params=tight)
    r = RiskMachine.restore(blob, params=tight, accept_param_change=True)
    assert r.params[0]["max_exposure"] == 0.1 and r.positions.tobytes() == m.positions.tobytes()
    with pytest.raises(SnapshotError, match="universe must not change"):
        RiskMachine.restore(blob, pairs=("AAA", "CCC", "BBB"))
    fresh = (
        np.full(3, 2.0),
        np.full(3, 5.0),
        np.full(3, 3, dtype=np.int64),
        np.full(3, 1, dtype=np.int64),
        np.full(3, 8, dtype=np.int64),
    )
    r = RiskMachine.restore(blob, instruments=fresh)
    assert (r.ordermin == 2.0).all() and (r.lot_dec == 3).all() and (r.quote_dec == 8).all()
    assert (RiskMachine.restore(blob).quote_dec == 4).all()  # the snapshot's own
    with pytest.raises(InputError, match="quote_decimals"):
        RiskMachine.restore(blob, instruments=fresh[:4])


# ---- 7. restore robustness


def _reblob(blob, edit_meta=None, edit_body=None):
    body = blob[M._HEADER.size :]
    (ml,) = struct.unpack_from("<I", body)
    meta = json.loads(body[4 : 4 + ml])
    data = bytearray(body[4 + ml :])
    if edit_meta:
        edit_meta(meta)
    if edit_body:
        edit_body(meta, data)
    mj = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    b2 = struct.pack("<I", len(mj)) + mj + bytes(data)
    return M._HEADER.pack(M.SNAPSHOT_MAGIC, M.SNAPSHOT_VERSION, len(b2), hashlib.sha256(b2).digest()) + b2


def _entry(meta, name):
    return next(a for a in meta["arrays"] if a[0] == name)


def test_restore_refuses_foreign_snapshots_by_name():
    blob = _held().snapshot()

    def ins_dtype(meta):
        _entry(meta, "instruments")[1] = [
            ["ordermin", "<f8"],
            ["costmin", "<f8"],
            ["lot", "<i8"],
            ["dec", "<i8"],
            ["quote", "<i8"],
        ]

    with pytest.raises(SnapshotError, match="record 'instruments' differs"):
        RiskMachine.restore(_reblob(blob, ins_dtype))

    def nbytes(meta):
        _entry(meta, "state")[3] += 8

    with pytest.raises(SnapshotError, match="record 'state' says"):
        RiskMachine.restore(_reblob(blob, nbytes))
    for edit in (
        lambda meta: meta.pop("pairs"),
        lambda meta: meta.pop("arrays"),
        lambda meta: _entry(meta, "cnt").pop(),
        lambda meta: _entry(meta, "cnt").__setitem__(1, "no-such-dtype"),
        lambda meta: _entry(meta, "cnt").__setitem__(2, [-1]),
        lambda meta: meta.__setitem__("pairs", [1, 2, 3]),
    ):
        with pytest.raises(SnapshotError):
            RiskMachine.restore(_reblob(blob, edit))


def test_restore_refuses_a_book_that_breaks_its_invariants():
    m = _held()
    m.state[0]["n_positions"] = 2  # one position open
    with pytest.raises(SnapshotError, match="n_positions 2 but 1 positions open"):
        RiskMachine.restore(m.snapshot())
    m = _held()
    m.positions[1]["qty"] = -1.0
    with pytest.raises(SnapshotError, match="negative"):
        RiskMachine.restore(m.snapshot())
