"""Crash-safe order execution: one order intent -> ledgered requests, fills and a final outcome.

The daemon builds an :class:`OrderIntent` from each order the RiskMachine returns at a close
(:meth:`OrderIntent.from_pending`) and hands it to :meth:`Executor.execute`, which returns the fills
(Kraken's, in Decimal, with Kraken's fee) for ``RiskMachine.on_fill``. See docs/LIVE.md, "Execution".

The rules that protect capital, in the order they apply:

1. The client order id (``cl_ord_id``) is a UUID derived from (hour, pair, side, reason): a restarted
   daemon recomputes the same id, and the ledger holds at most one intent per id. One intent is
   one order on the exchange: the market fallback of a limit is an intent of its own (its id
   derived from the limit's), so a lookup by id always concerns exactly one order.
2. The intent is ledgered BEFORE anything is sent; each AddOrder/CancelOrder is ledgered as a
   request before it is sent (with the AddOrder's deadline) and as a response after. An intent
   whose ledger already shows a request is never sent again: it is resolved by looking it up.
3. An order the exchange would refuse (ordermin, costmin, precision, market status, not enough
   AVAILABLE balance from BalanceEx) is never sent; it is ledgered ``not_sent`` with the reason.
4. After an UNKNOWN answer the order is looked up by ``cl_ord_id`` in OpenOrders and ClosedOrders
   (:meth:`KrakenAdapter.find_order`) before anything else. The adapter concludes "absent" only
   after the request's ``deadline`` (plus a visibility margin) and repeated empty lookups; then the
   intent is final ``expired`` (not placed). A lookup that stays unknown leaves the intent
   unresolved (no final, nothing resent: the daemon latches the kill switch).
5. Limit first; at the timeout the limit is cancelled, then queried WITH its trades (a fill can
   land while the cancel is in flight), its final written, and only the remainder goes out as
   the market fallback.
6. A fill is recorded once, by Kraken's trade id (the ledger makes a repeated append a no-op).

:func:`resume` is crash recovery: every intent without a final outcome is resolved by lookup.
"""

from __future__ import annotations

import inspect
import logging
import operator
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from engine.errors import InputError
from engine.pairs import normalize_pair, split_pair
from live_bridge.kraken import (
    CallResult,
    Fill,
    KrakenAdapter,
    OrderInfo,
    OrderRefused,
    check_order,
    round_price,
    round_volume,
)
from live_bridge.ledger import Entry, Kind, Ledger
from live_bridge.ledger import records as rec

__all__ = [
    "KINDS",
    "LIMIT_FIRST",
    "MARKET",
    "ExecConfig",
    "ExecutionResult",
    "Executor",
    "OrderIntent",
    "ResumeReport",
    "cl_ord_id_for",
    "fill_record",
    "resume",
]

log = logging.getLogger("live_bridge.execution")

LIMIT_FIRST = "limit_first"
MARKET = "market"
KINDS = (LIMIT_FIRST, MARKET)
LEGS = ("main", "fallback")
#: namespace of the deterministic client order ids (uuid5); never change it (ids would move)
CL_ORD_NAMESPACE = uuid.UUID("6f1d7c2e-3b0a-5e4f-9a8b-2c1d0e9f8a7b")
ZERO = Decimal(0)


def cl_ord_id_for(hour: int, pair: str, side: str, reason: str, n: int = 0, leg: str = "main") -> str:
    """The client order id of an intent: uuid5 of (hour, pair, side, reason, n[, leg]).
    Deterministic, so a restarted daemon that decides the same order again finds its earlier
    intent; Kraken takes a UUID as ``cl_ord_id``. ``n`` separates two intents of one (hour, pair,
    side, reason) (never needed while the RiskMachine keeps one pending order per pair); ``leg``
    ``fallback`` is the market fallback of a limit."""
    key = f"kq|{int(hour)}|{normalize_pair(pair)}|{side}|{reason}|{int(n)}"
    return str(uuid.uuid5(CL_ORD_NAMESPACE, key if leg == "main" else f"{key}|{leg}"))


def _dec(v: Any, what: str, *, optional: bool = False) -> Decimal | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (Decimal, str, int)):
        raise InputError(f"{what} must be a Decimal (or decimal string), got {type(v).__name__}")
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise InputError(f"{what} is not a number: {v!r}") from None
    if not d.is_finite() or d <= 0:
        raise InputError(f"{what} must be a finite number > 0, got {d}")
    return d


def _float_dec(x: float) -> Decimal | None:
    """An engine float (order_dt) as the Decimal of its shortest repr; None for NaN."""
    x = float(x)
    if x != x:
        return None
    return Decimal(repr(x))


@dataclass(frozen=True)
class OrderIntent:
    """One order the daemon wants executed.

    ``hour``: the decision hour (unix seconds // 3600, the bar whose close decided it). ``kind``:
    ``limit_first`` (limit at ``limit_price``, market fallback for the remainder after the timeout)
    or ``market``. ``ref_price``: the close at the decision (cost minimum and balance check of a
    market order). ``reason``: the RiskMachine's reason name (``ENTRY``, ``EXIT_STOP``, ...).
    ``leg``: ``main``, or ``fallback`` for the market remainder of a limit_first intent."""

    hour: int
    pair: str
    side: str
    qty: Decimal
    kind: str
    limit_price: Decimal | None
    reason: str
    ref_price: Decimal | None = None
    n: int = 0
    leg: str = "main"

    def __post_init__(self) -> None:
        try:
            h = operator.index(self.hour)
        except TypeError:
            raise InputError(f"intent hour must be an int, got {self.hour!r}") from None
        if isinstance(self.hour, bool) or h < 0:
            raise InputError(f"intent hour must be >= 0, got {self.hour!r}")
        object.__setattr__(self, "hour", h)
        object.__setattr__(self, "pair", normalize_pair(str(self.pair)))
        if self.side not in ("buy", "sell"):
            raise InputError(f"intent side must be buy or sell, got {self.side!r}")
        if self.kind not in KINDS:
            raise InputError(f"intent kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.leg not in LEGS or (self.leg == "fallback" and self.kind != MARKET):
            raise InputError(f"intent leg must be main, or fallback for a market intent, got {self.leg!r}")
        object.__setattr__(self, "qty", _dec(self.qty, "intent qty"))
        object.__setattr__(self, "limit_price", _dec(self.limit_price, "limit price", optional=True))
        object.__setattr__(self, "ref_price", _dec(self.ref_price, "reference price", optional=True))
        if self.kind == LIMIT_FIRST and self.limit_price is None:
            raise InputError("a limit_first intent needs a limit price")
        if self.kind == MARKET and self.limit_price is not None:
            raise InputError("a market intent takes no limit price")
        if not isinstance(self.reason, str) or not self.reason or len(self.reason) > 40 or not self.reason.isascii():
            raise InputError(f"intent reason must be a short ASCII name, got {self.reason!r}")

    @property
    def cl_ord_id(self) -> str:
        return cl_ord_id_for(self.hour, self.pair, self.side, self.reason, self.n, self.leg)

    def fallback(self, qty: Decimal) -> OrderIntent:
        """The market fallback of this limit_first intent for ``qty`` (its own intent and id)."""
        return OrderIntent(
            self.hour, self.pair, self.side, qty, MARKET, None, self.reason, self.ref_price, self.n, "fallback"
        )

    @classmethod
    def from_pending(cls, order: Any, pair: str, hour: int) -> OrderIntent:
        """The intent of one RiskMachine pending order (a record of ``engine.risk.enums.order_dt``).

        Mapping: ``side`` 1 -> buy, -1 -> sell; ``kind`` OrderKind.LIMIT_FIRST -> limit_first,
        OrderKind.MARKET -> market; ``reason`` -> its Reason name; ``qty``, ``limit_price``
        (NaN for market) and ``ref_price`` (close at decision) from their float64 fields through
        their shortest repr (the executor rounds them to the pair's grid before sending); ``qty`` is
        what is left to fill (the RiskMachine books partial fills and lowers it). ``pair`` is the
        universe member of the order's column and ``hour`` the decision bar's hour, which is the
        record's ``bar`` (the RiskMachine records absolute hours, unix seconds // 3600). ``atr``,
        ``spread``, ``frac``, ``filled`` and ``fallback`` stay with the RiskMachine. The executor
        owns the limit -> market fallback within the hour; an order with ``fallback`` 1 is one the
        machine's close turned to market because it was still pending (a re-issue, not a new
        decision: this method derives the same ``cl_ord_id`` as for the original, so the ledger,
        which holds one intent per id, resolves it as that order)."""
        from engine.risk.enums import OrderKind, Reason

        side = {1: "buy", -1: "sell"}.get(int(order["side"]))
        if side is None:
            raise InputError(f"pending order side {int(order['side'])} is neither BUY (1) nor SELL (-1)")
        kind = {int(OrderKind.LIMIT_FIRST): LIMIT_FIRST, int(OrderKind.MARKET): MARKET}.get(int(order["kind"]))
        if kind is None:
            raise InputError(f"pending order kind {int(order['kind'])} is not an OrderKind")
        qty = _float_dec(order["qty"])
        if qty is None:
            raise InputError("pending order quantity is NaN")
        return cls(
            hour=hour,
            pair=pair,
            side=side,
            qty=qty,
            kind=kind,
            limit_price=_float_dec(order["limit_price"]) if kind == LIMIT_FIRST else None,
            reason=Reason(int(order["reason"])).name,
            ref_price=_float_dec(order["ref_price"]),
        )

    @classmethod
    def from_entry(cls, e: Entry) -> OrderIntent:
        """The intent as ledgered (quantity and price as they were rounded and sent)."""
        p = e.payload
        ref = p.get("ref_price")
        kind = p.get("kind") or (LIMIT_FIRST if e.price is not None else MARKET)
        return cls(
            hour=int(e.hour or 0),
            pair=str(e.pair),
            side=str(e.side),
            qty=e.qty or ZERO,
            kind=str(kind),
            limit_price=e.price,
            reason=str(p.get("reason") or "UNKNOWN"),
            ref_price=Decimal(ref) if ref is not None else None,
            n=int(p.get("n", 0)),
            leg=str(p.get("leg", "main")),
        )


@dataclass(frozen=True)
class ExecConfig:
    """Execution settings. Times are in seconds of the adapter's clock."""

    limit_timeout_s: float = 300.0  # how long the limit rests before the market fallback
    poll_interval_s: float = 10.0  # QueryOrders interval while it rests
    lookup_attempts: int = 3  # find_order attempts (late-visible orders)
    lookup_interval_s: float = 2.0
    lookup_margin_s: float = 10.0  # REST visibility lag allowed past an AddOrder deadline
    track_attempts: int = 5  # queries after a cancel / for a market order to reach a final state
    fee_rate: Decimal = Decimal("0.004")  # fee assumed by the balance check (Kraken's top tier)
    market_buffer: Decimal = Decimal("0.02")  # price move allowed for a market buy's balance check
    market_fallback: bool = True  # send the remainder of a limit_first intent as a market order

    def __post_init__(self) -> None:
        for k in ("limit_timeout_s", "poll_interval_s", "lookup_interval_s", "lookup_margin_s"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 3600:
                raise InputError(f"execution {k} must be between 0 and 3600 seconds, got {v!r}")
        if self.poll_interval_s <= 0:
            raise InputError("execution poll_interval_s must be > 0")
        for k in ("lookup_attempts", "track_attempts"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100:
                raise InputError(f"execution {k} must be an integer in [1, 100], got {v!r}")
        for k in ("fee_rate", "market_buffer"):
            v = getattr(self, k)
            if not isinstance(v, Decimal) or not v.is_finite() or not 0 <= v < 1:
                raise InputError(f"execution {k} must be a Decimal in [0, 1), got {v!r}")


@dataclass(frozen=True)
class ExecutionResult:
    """What happened to one intent (with its market fallback, if it had one). ``status``: a ledger
    final code (filled, cancelled, rejected, expired, not_sent), ``pending`` (resume: ledgered but
    never sent; the daemon may execute it, which sends it once), or ``unresolved`` (the order may
    exist and could not be looked up: no final written, nothing resent; the daemon latches the kill
    switch). ``fills``: fills ledgered by THIS call (apply each with ``RiskMachine.on_fill``);
    ``filled_qty``: everything filled for the intent and its fallback so far."""

    cl_ord_id: str
    intent: OrderIntent
    status: str
    fills: tuple[Fill, ...] = ()
    filled_qty: Decimal = ZERO
    reason: str = ""
    txids: tuple[str, ...] = ()

    @property
    def unresolved(self) -> bool:
        return self.status == "unresolved"


def fill_record(hour: int, cl_ord_id: str | None, f: Fill, *, external: bool = False) -> rec.Record:
    """The ledger record of one Kraken fill (one function, so the executor and reconciliation write
    identical rows and the ledger's trade-id idempotence holds)."""
    return rec.fill(
        hour,
        f.trade_id,
        f.pair,
        f.side,
        f.vol,
        f.price,
        f.fee,
        cl_ord_id=cl_ord_id,
        txid=f.ordertxid or None,
        cost=f.cost,
        external=external,
        payload={"time": Decimal(repr(float(f.time))), "ordertype": f.ordertype, "maker": f.maker},
    )


class _Unknown(Exception):
    """A call whose answer was not definitive: the intent cannot be advanced safely now."""


T = TypeVar("T")


def _result(r: CallResult[T]) -> T:
    """The result of a DONE call (a DONE call without one is not definitive)."""
    if not r.done or r.result is None:
        raise _Unknown(f"{r.endpoint}: {r.outcome.value} ({r.reason})")
    return r.result


@dataclass
class _State:
    intent: OrderIntent
    cid: str
    txids: list[str] = field(default_factory=list)  # the order(s) carrying this intent's id
    seen: set[str] = field(default_factory=set)  # trade ids ledgered for it
    new_fills: list[Fill] = field(default_factory=list)  # ledgered by this call
    filled: Decimal = ZERO
    by_order: dict[str, Decimal] = field(default_factory=dict)  # txid -> volume of its ledgered trades


class Executor:
    """Executes intents through one adapter into one ledger. ``clock``/``sleep`` default to the
    adapter's (so the AddOrder deadline and the waits share one clock)."""

    def __init__(
        self,
        ledger: Ledger,
        adapter: KrakenAdapter,
        config: ExecConfig | None = None,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.ledger = ledger
        self.adapter = adapter
        self.config = config or ExecConfig()
        self.clock = clock or adapter.clock
        self.sleep = sleep or adapter.sleep
        self._caps_deadline = "latest_deadline" in inspect.signature(adapter.add_order).parameters

    # ---- entry point ---------------------------------------------------------------------------
    def execute(self, intent: OrderIntent) -> ExecutionResult:
        """Execute one intent, or continue it where the ledger left it (idempotent per cl_ord_id):
        a final outcome is returned as ledgered, a ledgered request is resolved by lookup, a
        ledgered intent never sent is sent. A limit_first intent cancelled with a remainder goes on
        to its market fallback (once: the fallback is an intent of its own).

        A KrakenHalt propagates (the intent stays open for :func:`resume`)."""
        res = self._execute_one(intent)
        it = res.intent
        if it.kind != LIMIT_FIRST or not self.config.market_fallback or res.status != "cancelled":
            return res
        remainder = it.qty - res.filled_qty
        try:
            rules = self.adapter.rules(it.pair)
        except OrderRefused as e:
            return _merge(res, None, f"market remainder not sent ({e.code}): {e.reason}")
        qty = round_volume(rules, remainder)
        if qty <= 0:
            return _merge(res, None, f"remainder {remainder} is below the lot size: not sent")
        return _merge(res, self._execute_one(it.fallback(qty)))

    def _execute_one(self, intent: OrderIntent) -> ExecutionResult:
        cid = intent.cl_ord_id
        hist = self.ledger.order_entries(cid)
        stored = next((e for e in hist if e.kind == Kind.ORDER_INTENT.value), None)
        done = _final_of(hist)
        if done is not None:
            return self._from_ledger(OrderIntent.from_entry(stored) if stored else intent, hist, done)
        if any(e.kind == Kind.ORDER_REQUEST.value for e in hist):
            return self._resolve(OrderIntent.from_entry(stored) if stored else intent, hist)
        if stored is not None:  # ledgered by an earlier run that stopped before sending: it wins
            sent = OrderIntent.from_entry(stored)
            asked = stored.payload.get("requested_qty")
            if asked is not None and Decimal(str(asked)) != intent.qty:
                log.warning(
                    "execution: %s was ledgered for %s, asked again for %s: the ledgered intent is executed",
                    cid,
                    asked,
                    intent.qty,
                )
            return self._run(sent)
        try:
            self.adapter.ensure_fresh()
            rules = self.adapter.rules(intent.pair)
        except OrderRefused as e:
            self._append(self._intent_record(intent, intent.qty, intent.limit_price))
            return self._refuse(intent, e.code, e.reason)
        qty = round_volume(rules, intent.qty)
        price = round_price(rules, intent.side, intent.limit_price) if intent.limit_price is not None else None
        if qty <= 0:
            self._append(self._intent_record(intent, intent.qty, price))
            return self._refuse(
                intent, "below_ordermin", f"{intent.qty} rounds to 0 at {rules.instrument.lot_decimals} lot decimals"
            )
        sent = OrderIntent(
            intent.hour,
            intent.pair,
            intent.side,
            qty,
            intent.kind,
            price,
            intent.reason,
            intent.ref_price,
            intent.n,
            intent.leg,
        )
        self._append(self._intent_record(sent, qty, price, requested=intent))
        return self._run(sent)

    # ---- the normal path -----------------------------------------------------------------------
    def _run(self, it: OrderIntent) -> ExecutionResult:
        st = _State(it, it.cl_ord_id)
        ordertype = "limit" if it.kind == LIMIT_FIRST else "market"
        why = self._precheck(it, ordertype, it.qty, it.limit_price)
        if why is not None:
            return self._refuse(it, *why)
        try:
            o, why_not = self._place(st, ordertype, it.qty, it.limit_price)
            if o is None:
                return self._final(st, why_not[0], why_not[1])
            if ordertype == "limit":
                o = self._rest(st, o)
            else:
                o = self._track(st, o)
            if not o.final:
                self._cancel_and_query(st, o)
        except _Unknown as e:
            return self._unresolved(st, str(e))
        return self._final(
            st,
            "filled" if st.filled >= it.qty else "cancelled",
            "" if st.filled >= it.qty else f"{st.filled} of {it.qty} filled, the rest cancelled",
        )

    def _precheck(self, it: OrderIntent, ordertype: str, qty: Decimal, price: Decimal | None) -> tuple[str, str] | None:
        """(code, reason) if the exchange would refuse this order or capital does not cover it."""
        a = self.adapter
        ref = it.ref_price if ordertype == "market" else None
        try:
            a.ensure_fresh()
            rules = a.rules(it.pair)
            check_order(rules, side=it.side, ordertype=ordertype, volume=qty, price=price, ref_price=ref)
            why = a.order_gate(rules, side=it.side, ordertype=ordertype, post_only=False)
            if why:
                return "market_status", f"{rules.pair}: {why}"
        except OrderRefused as e:
            return e.code, e.reason
        base, quote = split_pair(it.pair)
        r = a.balances()
        if not r.done or r.result is None:
            return "balance_unknown", f"BalanceEx {r.outcome.value} ({r.reason}): capital not confirmed"
        bal = r.result
        if it.side == "buy":
            px = price if price is not None else ref * (1 + self.config.market_buffer)  # type: ignore[operator]
            need = qty * px * (1 + self.config.fee_rate)
            have = bal.available(quote)
            if have < need:
                return "insufficient_available", (
                    f"{quote} available {have} < {need} needed for {qty} {it.pair} at {px} with fees"
                )
        else:
            have = bal.available(base)
            if have < qty:
                return "insufficient_available", f"{base} available {have} < {qty} to sell"
        return None

    def _place(
        self, st: _State, ordertype: str, qty: Decimal, price: Decimal | None
    ) -> tuple[OrderInfo | None, tuple[str, str]]:
        """Send the intent's AddOrder (ledgered before and after). Returns (order, _) when it was
        placed, or (None, (final code, reason)) when it definitively was not; raises _Unknown when
        that cannot be established."""
        it, a = st.intent, self.adapter
        deadline_at = Decimal(repr(round(self.clock() + a.deadline_s, 3)))
        params = {
            "leg": it.leg,
            "pair": it.pair,
            "side": it.side,
            "ordertype": ordertype,
            "volume": qty,
            "price": price,
            "deadline_at": deadline_at,
        }
        req = self._append(rec.order_request(it.hour, st.cid, "AddOrder", params))[0]
        kw: dict[str, Any] = {"latest_deadline": float(deadline_at)} if self._caps_deadline else {}
        try:
            res = a.add_order(
                it.pair,
                it.side,
                ordertype,
                qty,
                cl_ord_id=st.cid,
                price=price,
                ref_price=it.ref_price if ordertype == "market" else None,
                **kw,
            )
        except OrderRefused as e:  # the adapter's own check (status changed since the precheck): nothing sent
            self._append(
                rec.order_response(it.hour, st.cid, "rejected", None, req.seq, {"refused": e.code, "reason": e.reason})
            )
            return None, ("not_sent", f"refused before sending ({e.code}): {e.reason}")
        ack = res.result if res.done else None
        txid = ack.txids[0] if ack is not None else None
        self._append(
            rec.order_response(
                it.hour,
                st.cid,
                res.outcome.value,
                txid,
                req.seq,
                {"errors": list(res.errors), "reason": res.reason, "txids": list(ack.txids) if ack is not None else []},
            )
        )
        if res.rejected:
            return None, ("rejected", f"AddOrder rejected: {res.reason}")
        if ack is not None and txid is not None:
            st.txids.extend(t for t in ack.txids if t not in st.txids)
            o = self._query(st, txid)
            return (o if o is not None else _pending_view(txid, it, ordertype, qty, price)), ("", "")
        # UNKNOWN: look it up before anything else; never resend
        found = self._find(st, float(deadline_at))
        if not found:
            self._append(
                rec.event(
                    "order_not_placed",
                    it.hour,
                    it.pair,
                    {"cl_ord_id": st.cid, "leg": it.leg, "deadline_at": deadline_at},
                )
            )
            return None, (
                "expired",
                "AddOrder answer unknown; no order carries its cl_ord_id after the deadline: not placed",
            )
        for o in found:
            if o.txid not in st.txids:
                st.txids.append(o.txid)
            self._record(st, o)
        if len(found) > 1:
            log.error("execution: %d orders carry cl_ord_id %s after one request", len(found), st.cid)
        return (self._query(st, found[-1].txid) or found[-1]), ("", "")

    def _find(self, st: _State, deadline_at: float | None) -> tuple[OrderInfo, ...]:
        """The orders carrying the intent's id, or () once the adapter concludes it absent (only
        after ``deadline_at`` plus the margin; ``None``: no request was ever sent, absent may be
        concluded now). Waits for the deadline if needed; _Unknown if it stays unknown."""
        c, a = self.config, self.adapter
        kw: dict[str, Any] = {"margin_s": c.lookup_margin_s}
        if deadline_at is None:
            kw = {"absent_ok_after": self.clock()}
        else:
            kw["deadline"] = deadline_at
        r: CallResult = a.find_order(st.cid, attempts=c.lookup_attempts, interval_s=c.lookup_interval_s, **kw)
        if not r.done and deadline_at is not None:
            wait = deadline_at + c.lookup_margin_s - self.clock()
            if wait > 0:
                self.sleep(wait)
                r = a.find_order(st.cid, attempts=c.lookup_attempts, interval_s=c.lookup_interval_s, **kw)
        if not r.done:
            raise _Unknown(f"lookup of {st.cid} is unknown ({r.reason})")
        return tuple(_result(r))

    def _rest(self, st: _State, o: OrderInfo) -> OrderInfo:
        """Poll the resting limit until it is final or the timeout passes."""
        end = self.clock() + self.config.limit_timeout_s
        while not o.final and self.clock() < end:
            self.sleep(min(self.config.poll_interval_s, max(0.0, end - self.clock())))
            o = self._query(st, o.txid) or o
        return o

    def _track(self, st: _State, o: OrderInfo) -> OrderInfo:
        for _ in range(self.config.track_attempts):
            if o.final:
                break
            self.sleep(self.config.poll_interval_s)
            o = self._query(st, o.txid) or o
        return o

    def _cancel_and_query(self, st: _State, o: OrderInfo) -> OrderInfo:
        """Cancel, then query WITH trades until final (fills that landed during the cancel)."""
        it = st.intent
        self._append(rec.cancel(it.hour, st.cid, "requested", o.txid))
        c = self.adapter.cancel_order(txid=o.txid, pair=it.pair)
        self._append(
            rec.cancel(
                it.hour,
                st.cid,
                c.outcome.value,
                o.txid,
                {"errors": list(c.errors), "reason": c.reason, "count": c.result if c.done else None},
            )
        )
        for i in range(self.config.track_attempts):
            if i:
                self.sleep(self.config.poll_interval_s)
            q = self._query(st, o.txid)
            if q is not None:
                o = q
                if o.final:
                    return o
        raise _Unknown(f"order {o.txid} of {st.cid} is not final after its cancel ({o.status})")

    # ---- fills ---------------------------------------------------------------------------------
    def _query(self, st: _State, txid: str) -> OrderInfo | None:
        r = self.adapter.query_orders([txid], trades=True)
        if not r.done or r.result is None or txid not in r.result:
            return None
        o = r.result[txid]
        return o if self._record(st, o) else None

    def _record(self, st: _State, o: OrderInfo) -> bool:
        """Ledger every trade of ``o`` not yet recorded (by trade id). False if a trade's details
        could not be fetched (the order is then treated as not yet queried)."""
        missing = [t for t in o.trades if t not in st.seen]
        if missing:
            fills = self._trades(missing, o.opentm)
            if fills is None:
                return False
            for t in missing:
                f = fills[t]
                if f.ordertxid and f.ordertxid != o.txid:
                    raise _Unknown(f"trade {t} names order {f.ordertxid}, not {o.txid}")
                head = self.ledger.head()[0]
                entry = self._append(fill_record(st.intent.hour, st.cid, f))[0]
                st.seen.add(t)
                if entry.seq > head:  # else reconciliation ledgered it first and returned it then
                    st.new_fills.append(f)
                st.filled += f.vol
                st.by_order[o.txid] = st.by_order.get(o.txid, ZERO) + f.vol
        if o.final and o.vol_exec != st.by_order.get(o.txid, ZERO):
            raise _Unknown(
                f"order {o.txid}: vol_exec {o.vol_exec} differs from its recorded trades "
                f"({st.by_order.get(o.txid, ZERO)})"
            )
        return True

    def _trades(self, ids: list[str], since: float) -> dict[str, Fill] | None:
        want, ofs = set(ids), 0
        out: dict[str, Fill] = {}
        while want - set(out):
            r = self.adapter.trades_history(start=since - 1, ofs=ofs or None)
            if not r.done:
                return None
            if not r.done or r.result is None:
                return None
            page, count = r.result
            out.update({k: v for k, v in page.items() if k in want})
            ofs += len(page)
            if not page or ofs >= count:
                break
        return out if not want - set(out) else None

    # ---- resolution after a crash or an earlier unknown ----------------------------------------
    def _resolve(self, it: OrderIntent, hist: list[Entry], *, current_hour: int | None = None) -> ExecutionResult:
        st = _State(it, it.cl_ord_id)
        self._load(st, hist)
        requests = [e for e in hist if e.kind == Kind.ORDER_REQUEST.value and e.code == "AddOrder"]
        try:
            deadline = max((float(Decimal(str(e.payload.get("deadline_at", "0")))) for e in requests), default=None)
            found = {o.txid: o for o in self._find(st, deadline)}
            missing = [t for t in st.txids if t not in found]
            if missing:  # acknowledged but not shown by the lookup: ask for it by txid
                q = self.adapter.query_orders(missing, trades=True)
                if not q.done:
                    raise _Unknown(f"QueryOrders of {missing} is unknown ({q.reason})")
                shown: dict[str, OrderInfo] = _result(q)
                found.update(shown)
            if not found:
                if requests:
                    return self._final(st, "expired", "no order carries its cl_ord_id after the deadline: not placed")
                if current_hour is not None and it.hour == current_hour:
                    return ExecutionResult(st.cid, it, "pending", reason="ledgered, never sent")
                return self._final(st, "not_sent", "the daemon stopped before sending it; nothing was sent")
            for t in sorted(found, key=lambda t: found[t].opentm):
                o = found[t]
                if t not in st.txids:
                    st.txids.append(t)
                if not self._record(st, o):
                    raise _Unknown(f"trades of {t} could not be fetched")
                if not o.final:
                    self._cancel_and_query(st, o)
        except _Unknown as e:
            return self._unresolved(st, str(e))
        if st.filled >= it.qty:
            return self._final(st, "filled", "resolved by lookup")
        return self._final(st, "cancelled", f"resolved by lookup: {st.filled} of {it.qty} filled")

    def _load(self, st: _State, hist: list[Entry]) -> None:
        for e in hist:
            if e.kind == Kind.ORDER_RESPONSE.value:
                for t in [e.txid, *e.payload.get("txids", [])]:
                    if t and t not in st.txids:
                        st.txids.append(t)
            elif e.kind == Kind.FILL.value and e.trade_id not in st.seen:
                st.seen.add(str(e.trade_id))
                st.filled += e.qty or ZERO
                if e.txid:
                    st.by_order[e.txid] = st.by_order.get(e.txid, ZERO) + (e.qty or ZERO)

    # ---- ledger helpers ------------------------------------------------------------------------
    def _append(self, *records: rec.Record) -> list[Entry]:
        return self.ledger.append(*records)

    @staticmethod
    def _intent_record(
        it: OrderIntent, qty: Decimal, price: Decimal | None, requested: OrderIntent | None = None
    ) -> rec.Record:
        asked = requested or it
        payload = {
            "kind": it.kind,
            "reason": it.reason,
            "ref_price": it.ref_price,
            "n": it.n,
            "leg": it.leg,
            "requested_qty": asked.qty,
            "requested_price": asked.limit_price,
        }
        if it.leg == "fallback":
            payload["parent"] = cl_ord_id_for(it.hour, it.pair, it.side, it.reason, it.n)
        return rec.order_intent(
            it.hour,
            it.cl_ord_id,
            it.pair,
            it.side,
            qty,
            price,
            "limit" if it.kind == LIMIT_FIRST else "market",
            payload,
        )

    def _refuse(self, it: OrderIntent, code: str, reason: str) -> ExecutionResult:
        log.warning("execution: %s %s %s not sent (%s): %s", it.pair, it.side, it.qty, code, reason)
        self._append(rec.order_final(it.hour, it.cl_ord_id, "not_sent", ZERO, {"refused": code, "reason": reason}))
        return ExecutionResult(it.cl_ord_id, it, "not_sent", reason=f"{code}: {reason}")

    def _final(self, st: _State, code: str, reason: str) -> ExecutionResult:
        self._append(
            rec.order_final(st.intent.hour, st.cid, code, st.filled, {"reason": reason, "txids": list(st.txids)})
        )
        return ExecutionResult(st.cid, st.intent, code, tuple(st.new_fills), st.filled, reason, tuple(st.txids))

    def _unresolved(self, st: _State, reason: str) -> ExecutionResult:
        log.error("execution: %s UNRESOLVED: %s", st.cid, reason)
        self._append(
            rec.event("order_unresolved", st.intent.hour, st.intent.pair, {"cl_ord_id": st.cid, "reason": reason})
        )
        return ExecutionResult(st.cid, st.intent, "unresolved", tuple(st.new_fills), st.filled, reason, tuple(st.txids))

    @staticmethod
    def _from_ledger(intent: OrderIntent, hist: list[Entry], final: Entry) -> ExecutionResult:
        filled = sum((e.qty or ZERO for e in hist if e.kind == Kind.FILL.value), ZERO)
        return ExecutionResult(
            intent.cl_ord_id,
            intent,
            str(final.code),
            (),
            filled,
            str(final.payload.get("reason", "")),
            tuple(final.payload.get("txids", [])),
        )


def _merge(main: ExecutionResult, fb: ExecutionResult | None, why: str = "") -> ExecutionResult:
    """A limit_first intent's result with its market fallback's."""
    if fb is None:
        return ExecutionResult(
            main.cl_ord_id,
            main.intent,
            main.status,
            main.fills,
            main.filled_qty,
            "; ".join(x for x in (main.reason, why) if x),
            main.txids,
        )
    filled = main.filled_qty + fb.filled_qty
    if fb.unresolved:
        status = "unresolved"
    elif filled >= main.intent.qty:
        status = "filled"
    else:
        status = "cancelled"
    reason = "; ".join(
        x for x in (main.reason, f"market fallback {fb.status}" + (f": {fb.reason}" if fb.reason else "")) if x
    )
    return ExecutionResult(
        main.cl_ord_id, main.intent, status, main.fills + fb.fills, filled, reason, main.txids + fb.txids
    )


def _final_of(hist: Iterable[Entry]) -> Entry | None:
    return next((e for e in hist if e.kind == Kind.ORDER_FINAL.value), None)


def _pending_view(txid: str, it: OrderIntent, ordertype: str, qty: Decimal, price: Decimal | None) -> OrderInfo:
    """An acknowledged order not visible to QueryOrders yet: treated as open until queried."""
    return OrderInfo(
        txid=txid,
        pair=it.pair,
        side=it.side,
        ordertype=ordertype,
        status="pending",
        vol=qty,
        vol_exec=ZERO,
        cost=ZERO,
        fee=ZERO,
        avg_price=ZERO,
        limit_price=price or ZERO,
        cl_ord_id=it.cl_ord_id,
        userref=None,
        opentm=0.0,
        closetm=None,
        reason=None,
        trades=(),
        oflags="",
    )


@dataclass(frozen=True)
class ResumeReport:
    results: tuple[ExecutionResult, ...]

    @property
    def unresolved(self) -> tuple[ExecutionResult, ...]:
        return tuple(r for r in self.results if r.unresolved)

    @property
    def pending(self) -> tuple[OrderIntent, ...]:
        return tuple(r.intent for r in self.results if r.status == "pending")

    @property
    def fills(self) -> tuple[Fill, ...]:
        return tuple(f for r in self.results for f in r.fills)


def resume(
    ledger: Ledger,
    adapter: KrakenAdapter,
    config: ExecConfig | None = None,
    *,
    current_hour: int | None = None,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> ResumeReport:
    """Crash recovery: resolve every intent without a final outcome by looking it up, never by
    resending. Found -> its fills ledgered, an open order cancelled and queried, then the final;
    not found after its last AddOrder's deadline -> ``expired`` (not placed); no request ever
    ledgered -> ``not_sent`` (``pending`` if its hour is ``current_hour``: the daemon may execute it,
    which sends it once); a lookup that stays unknown -> ``unresolved`` (the daemon latches the kill
    switch). Nothing is sent except cancels of orders found open. Returns the results; their
    ``fills`` are fills the daemon has not applied yet. A limit cancelled here does not get its
    market fallback unless the daemon executes the intent again (then it does, once)."""
    ex = Executor(ledger, adapter, config, clock=clock, sleep=sleep)
    out = []
    for e in ledger.open_intents():
        hist = ledger.order_entries(str(e.cl_ord_id))
        out.append(ex._resolve(OrderIntent.from_entry(e), hist, current_hour=current_hour))
    return ResumeReport(tuple(out))
