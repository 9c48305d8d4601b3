"""Reconciliation: the exchange's balances, open orders and fills against the ledger's view, at
start and every hour. See docs/LIVE.md, "Reconciliation".

The ledger's view: the balances recorded by the previous reconciliation (the last known point),
plus every fill ledgered since (own and external). The exchange's view: BalanceEx totals,
OpenOrders, and TradesHistory since the previous point's last trade time (minus a look-back).

* A trade the ledger lacks on an order of one of our intents (looked up by its order's
  ``cl_ord_id``) is a fill execution lost: it is ledgered as our own (the same row execution
  writes) and returned in ``recovered_fills`` for ``RiskMachine.on_fill``.
* A trade on any other order, and any open order not carrying one of our intents' ids, are
  external: the fill is ledgered ``external``, the order as an ``external_order`` event; both are
  reported, never traded against.
* A balance that differs from the ledger's view after all fills is an external balance change
  (deposit, withdrawal, fee credit): reported and taken as the new baseline.
* What cannot be explained asks for the kill switch (``latch``, with ``reason``): a base asset
  below the position our own fills hold, a ledgered fill the exchange does not show, a trade whose
  amounts differ from its ledger row, an order still open after its intent's final outcome.
* A call that does not answer definitively makes the result ``incomplete`` (nothing compared, an
  ``reconcile_incomplete`` event ledgered): the daemon counts it as an API failure.

The result is ledgered (``reconciliation`` record, code ok/mismatch) and its balances are the
next reconciliation's starting point.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from engine.errors import InputError
from engine.pairs import split_pair
from live_bridge.execution import fill_record
from live_bridge.kraken import Fill, KrakenAdapter, OrderInfo
from live_bridge.ledger import Entry, Kind, Ledger, LedgerConflict
from live_bridge.ledger import records as rec

__all__ = ["KILL_INPUT", "ReconcileConfig", "ReconcileResult", "reconcile"]

log = logging.getLogger("live_bridge.reconcile")
ZERO = Decimal(0)
#: the RiskMachine input a mismatch latches (the backtester's API/data fault input)
KILL_INPUT = "API/data input"


@dataclass(frozen=True)
class ReconcileConfig:
    lookback_s: float = 3600.0  # trades re-read before the last known trade time
    tolerance: Decimal = ZERO  # absolute difference per asset treated as equal
    max_pages: int = 200  # TradesHistory pages (50 trades each) read at most
    snapshot_attempts: int = 3  # tries for trades/balances/orders that agree with each other

    def __post_init__(self) -> None:
        if not isinstance(self.lookback_s, (int, float)) or not 0 <= self.lookback_s <= 7 * 86400:
            raise InputError("reconcile lookback_s must be between 0 and 604800 seconds")
        if not isinstance(self.tolerance, Decimal) or not self.tolerance.is_finite() or self.tolerance < 0:
            raise InputError("reconcile tolerance must be a Decimal >= 0")


@dataclass(frozen=True)
class ReconcileResult:
    """``status``: ok, mismatch (``latch`` true, ``reason`` says why) or incomplete (an API call
    was not definitive; nothing compared). Amounts are Decimal; assets by common code."""

    status: str
    latch: bool = False
    reason: str = ""
    problems: tuple[str, ...] = ()
    balances: dict[str, Decimal] = field(default_factory=dict)
    expected: dict[str, Decimal] = field(default_factory=dict)
    external_balance_changes: dict[str, Decimal] = field(default_factory=dict)
    positions: dict[str, Decimal] = field(default_factory=dict)
    external_fills: tuple[Fill, ...] = ()
    recovered_fills: tuple[tuple[str, Fill], ...] = ()  # (cl_ord_id, fill)
    external_orders: tuple[OrderInfo, ...] = ()
    own_open_orders: tuple[OrderInfo, ...] = ()
    baseline: bool = False
    seq: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class _Incomplete(Exception):
    pass


def _need(r: Any, what: str) -> Any:
    if not r.done:
        raise _Incomplete(f"{what}: {r.outcome.value} ({r.reason})")
    return r.result


def _s(d: dict[str, Decimal]) -> dict[str, Decimal]:
    return {k: d[k] for k in sorted(d)}


def reconcile(
    ledger: Ledger, adapter: KrakenAdapter, *, hour: int | None = None, config: ReconcileConfig | None = None
) -> ReconcileResult:
    """Compare the exchange with the ledger, ledger what was found, return the result."""
    cfg = config or ReconcileConfig()
    try:
        return _reconcile(ledger, adapter, hour, cfg)
    except _Incomplete as e:
        log.warning("reconcile: incomplete: %s", e)
        ledger.append(rec.event("reconcile_incomplete", hour, payload={"reason": str(e)}))
        return ReconcileResult("incomplete", reason=f"exchange data unavailable: {e}")


def _trades_since(adapter: KrakenAdapter, since: float | None, cfg: ReconcileConfig) -> dict[str, Fill]:
    out: dict[str, Fill] = {}
    ofs = 0
    for _ in range(cfg.max_pages):
        page, count = _need(adapter.trades_history(start=since, ofs=ofs or None), "TradesHistory")
        out.update(page)
        ofs += len(page)
        if not page or ofs >= count:
            return out
    raise _Incomplete(f"TradesHistory: more than {cfg.max_pages} pages since {since}")


def _reconcile(ledger: Ledger, adapter: KrakenAdapter, hour: int | None, cfg: ReconcileConfig) -> ReconcileResult:
    recs = ledger.entries(kind=Kind.RECONCILIATION)
    last = recs[-1] if recs else None
    if last is None:  # the first reconciliation: the exchange as it stands is the starting point
        for _ in range(cfg.snapshot_attempts):
            first, _count = _need(adapter.trades_history(), "TradesHistory")
            bal = _need(adapter.balances(), "BalanceEx")
            open_orders = _need(adapter.open_orders(trades=True), "OpenOrders")
            again, _count = _need(adapter.trades_history(), "TradesHistory")
            if set(again) <= set(first):
                break
        else:
            raise _Incomplete(f"trades kept arriving during {cfg.snapshot_attempts} snapshots")
        exchange = {a: b.balance for a, b in bal.tradable.items()}
        until = max((f.time for f in first.values()), default=0.0)
        payload = {
            "baseline": True,
            "balances": _s(exchange),
            "trades_until": Decimal(repr(until)),
            "history_until": Decimal(repr(until)),
            "staked": {k: v.balance for k, v in sorted(bal.staked.items())},
            "open_orders": sorted(open_orders),
        }
        e = ledger.append(rec.reconciliation(hour, "ok", payload))[0]
        return ReconcileResult(
            "ok",
            balances=exchange,
            expected=dict(exchange),
            baseline=True,
            seq=e.seq,
            own_open_orders=tuple(open_orders.values()),
        )

    base_bal = {k: Decimal(v) for k, v in last.payload.get("balances", {}).items()}
    since_t = float(Decimal(str(last.payload.get("trades_until", "0"))))
    history_until = Decimal(str(last.payload.get("history_until", "0")))
    start = max(0.0, since_t - cfg.lookback_s) or None
    # one consistent snapshot: the trades read before and after the balances must agree (a fill
    # landing in between would otherwise look like a balance change or a missing position)
    for _ in range(cfg.snapshot_attempts):
        trades = _trades_since(adapter, start, cfg)
        bal = _need(adapter.balances(), "BalanceEx")
        open_orders = _need(adapter.open_orders(trades=True), "OpenOrders")
        after, _n = _need(adapter.trades_history(start=start), "TradesHistory")
        if set(after) <= set(trades):
            break
    else:
        raise _Incomplete(f"trades kept arriving during {cfg.snapshot_attempts} snapshots")
    exchange = {a: b.balance for a, b in bal.tradable.items()}

    intents = {e.cl_ord_id: e for e in ledger.entries(kind=Kind.ORDER_INTENT)}
    finals = {e.cl_ord_id for e in ledger.entries(kind=Kind.ORDER_FINAL)}
    fills = {e.trade_id: e for e in ledger.entries(kind=Kind.FILL)}
    own_txid: dict[str, str] = {}
    for e in ledger.entries(kind=Kind.ORDER_RESPONSE):
        for t in [e.txid, *e.payload.get("txids", [])]:
            if t:
                own_txid[t] = str(e.cl_ord_id)
    for e in fills.values():
        if e.code == "own" and e.txid:
            own_txid[e.txid] = str(e.cl_ord_id)

    problems: list[str] = []
    # ---- trades the ledger lacks: ours (lost by execution) or external ---------------------------
    # trades up to the first reconciliation's last trade are history from before the ledger
    new = {t: f for t, f in trades.items() if t not in fills and Decimal(repr(f.time)) > history_until}
    unknown_orders = sorted({f.ordertxid for f in new.values() if f.ordertxid not in own_txid})
    if unknown_orders:
        info = _need(adapter.query_orders(unknown_orders, trades=False), "QueryOrders")
        for t, o in info.items():
            if o.cl_ord_id and o.cl_ord_id in intents:
                own_txid[t] = o.cl_ord_id
    recovered: list[tuple[str, Fill]] = []
    external: list[Fill] = []
    records = []
    for t in sorted(new, key=lambda k: (new[k].time, k)):
        f = new[t]
        cid = own_txid.get(f.ordertxid)
        if cid is not None:
            it = intents[cid]
            records.append(fill_record(int(it.hour or 0), cid, f))
            recovered.append((cid, f))
        else:
            records.append(fill_record(hour if hour is not None else int(f.time // 3600), None, f, external=True))
            external.append(f)
    # ---- trades the ledger has: same amounts? ---------------------------------------------------
    for t, f in trades.items():
        row = fills.get(t)
        if row is not None and (row.qty, row.price, row.fee, row.side, row.pair) != (
            f.vol,
            f.price,
            f.fee,
            f.side,
            f.pair,
        ):
            problems.append(
                f"trade {t}: the exchange shows {f.side} {f.vol} {f.pair} @ {f.price} fee {f.fee}, "
                f"the ledger {row.side} {row.qty} {row.pair} @ {row.price} fee {row.fee}"
            )
    window = max(0.0, since_t - cfg.lookback_s)
    for e in ledger.fills_since(last.seq):
        ft = Decimal(str(e.payload.get("time", "0")))
        if e.trade_id not in trades and float(ft) > window:
            problems.append(f"fill {e.trade_id} ({e.side} {e.qty} {e.pair}) is in the ledger, not on the exchange")
    # ---- open orders ---------------------------------------------------------------------------
    ext_orders: list[OrderInfo] = []
    own_open: list[OrderInfo] = []
    known_events = {str(e.payload.get("txid")) for e in ledger.entries(kind=Kind.EVENT) if e.code == "external_order"}
    for t, o in sorted(open_orders.items()):
        cid = o.cl_ord_id if o.cl_ord_id in intents else own_txid.get(t)
        if cid is None:
            ext_orders.append(o)
            if t not in known_events:
                records.append(
                    rec.event(
                        "external_order",
                        hour,
                        o.pair if "/" in o.pair else None,
                        {
                            "txid": t,
                            "side": o.side,
                            "ordertype": o.ordertype,
                            "vol": o.vol,
                            "vol_exec": o.vol_exec,
                            "price": o.limit_price,
                            "cl_ord_id": o.cl_ord_id,
                        },
                    )
                )
        else:
            own_open.append(o)
            if cid in finals:
                problems.append(f"order {t} of intent {cid} is still open after its final outcome")
    try:
        if records:
            ledger.append(*records)
    except LedgerConflict as err:  # nothing of the batch was written: nothing to apply either
        problems.append(f"ledger refused a fill found on the exchange: {err}")
        recovered, external = [], []
    # ---- balances ------------------------------------------------------------------------------
    expected = dict(base_bal)
    for row in ledger.fills_since(last.seq):
        _apply(expected, row)
    changes: dict[str, Decimal] = {}
    for a in sorted(set(expected) | set(exchange)):
        d = exchange.get(a, ZERO) - expected.get(a, ZERO)
        if abs(d) > cfg.tolerance:
            changes[a] = d
    positions = _own_positions(ledger.entries(kind=Kind.FILL))
    for a, q in sorted(positions.items()):
        have = exchange.get(a, ZERO)
        if have + cfg.tolerance < q:
            problems.append(f"{a}: the exchange holds {have}, below the {q} our own fills hold")
    latch = bool(problems)
    reason = f"latch kill switch ({KILL_INPUT}): {'; '.join(problems)}" if latch else ""
    payload = {
        "balances": _s(exchange),
        "expected": _s(expected),
        "external_balance_changes": _s(changes),
        "positions": _s(positions),
        "external_fills": sorted(f.trade_id for f in external),
        "recovered_fills": sorted(f.trade_id for _, f in recovered),
        "external_orders": sorted(o.txid for o in ext_orders),
        "own_open_orders": sorted(o.txid for o in own_open),
        "problems": problems,
        "latch": latch,
        "reason": reason,
        "trades_until": Decimal(repr(max([since_t, *(f.time for f in trades.values())]))),
        "history_until": history_until,
        "staked": {k: v.balance for k, v in sorted(bal.staked.items())},
    }
    extra = [rec.event("external_balance_change", hour, payload={"changes": _s(changes)})] if changes else []
    stored = ledger.append(*extra, rec.reconciliation(hour, "mismatch" if latch else "ok", payload))[-1]
    if latch:
        log.error("reconcile: %s", reason)
    elif external or ext_orders or changes:
        log.warning(
            "reconcile: external activity: %d fills, %d orders, balance changes %s",
            len(external),
            len(ext_orders),
            changes,
        )
    return ReconcileResult(
        "mismatch" if latch else "ok",
        latch,
        reason,
        tuple(problems),
        exchange,
        expected,
        changes,
        positions,
        tuple(external),
        tuple(recovered),
        tuple(ext_orders),
        tuple(own_open),
        False,
        stored.seq,
    )


def _apply(bal: dict[str, Decimal], e: Entry) -> None:
    base, quote = split_pair(str(e.pair))
    qty, fee = e.qty or ZERO, e.fee or ZERO
    cost = e.cost if e.cost is not None else qty * (e.price or ZERO)
    if e.side == "buy":
        bal[base] = bal.get(base, ZERO) + qty
        bal[quote] = bal.get(quote, ZERO) - cost - fee
    else:
        bal[base] = bal.get(base, ZERO) - qty
        bal[quote] = bal.get(quote, ZERO) + cost - fee


def _own_positions(fills: Iterable[Entry]) -> dict[str, Decimal]:
    """Base units bought minus sold by our own fills, per asset (what the RiskMachine holds)."""
    pos: dict[str, Decimal] = {}
    for e in fills:
        if e.code != "own":
            continue
        base, _ = split_pair(str(e.pair))
        q = e.qty or ZERO
        pos[base] = pos.get(base, ZERO) + (q if e.side == "buy" else -q)
    return {a: q for a, q in pos.items() if q != 0}
