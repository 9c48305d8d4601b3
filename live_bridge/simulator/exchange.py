"""The simulator's books: accounts, balances, orders, trades and matching, all in Decimal.

Every money amount booked (cost, fee, balance) is a Decimal quantised to the asset's decimals
(USD/EUR/GBP 4, USDT/USDC/DAI 8, crypto 10; volumes to the pair's lot_decimals), so balances add up
exactly. Holds are never stored: they are recomputed from the open orders, so they cannot drift.

Fill model (the backtester's, through the shared kernels in :mod:`engine.execution.nb`):

* every fee is ``fee_nb`` of the float quantity times the float price, rounded UP to the quote
  currency's decimals (the backtester's fee to the bit); the cost is the Decimal ``qty * price``
  quantised to those decimals.

* a market order (and a limit order that is marketable when placed and not post-only) fills at
  once, in full, at the forming bar's open (the price known at that time) moved against the taker
  by ``slippage_frac_nb`` (half the spread + impact from the last closed bar's volatility and quote
  volume), rounded to the tick against the taker (``taker_tick_nb``); it pays the taker fee.
* a resting limit order fills in a later closed bar only if that bar trades THROUGH its price
  (``limit_touched_nb``), at its limit price, at most ``participation_cap`` of the bar's volume per
  bar (the remainder rests: partial fills), paying the maker fee. Bars count from the bar forming
  when the order was placed.
* post-only orders that would cross the spread are cancelled; IOC remainders are cancelled; GTD
  orders expire at ``expiretm`` (a bar closing after ``expiretm`` does not fill them).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, ROUND_UP, Context, Decimal, DivisionByZero, InvalidOperation, Overflow
from typing import Any

from engine.errors import InputError
from engine.execution.nb import (
    BUY,
    SELL,
    fee_nb,
    limit_touched_nb,
    market_fill_price_nb,
    slippage_frac_nb,
    taker_tick_nb,
)
from engine.pairs import STABLE8, Instrument, asset_decimals, kraken_asset_alt, kraken_asset_id, normalize_asset
from engine.store.panel import HOUR

from .config import FeeTier, SimConfig
from .faults import FaultPlan
from .market import Market, SimClock, fmt
from .numbers import MAX_AMOUNT, MAX_STEP, MAX_TIME, BadNumber, OutOfRange, decimal_of, float_of, int_of

_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
HISTORY_PAGE = 50


class KrakenAPIError(Exception):
    """An error answered in Kraken's envelope (HTTP 200, ``{"error": [msg], "result": {}}``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# Quantising in a wide context: a large (bounded) amount at 10 decimals never overflows the default
# 28 digits (which raised InvalidOperation: an HTTP 500).
WIDE = Context(prec=60, traps=[InvalidOperation, DivisionByZero, Overflow])


def q(x: Decimal, places: int, rounding=ROUND_HALF_EVEN) -> Decimal:
    return x.quantize(Decimal(1).scaleb(-places), rounding=rounding, context=WIDE)


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(int(t), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decimals_of(d: Decimal) -> int:
    e = d.normalize().as_tuple().exponent
    return max(0, -int(e))


@dataclass
class Account:
    name: str
    key: str
    secret: str  # base64, from the environment; "" = not served (never persisted)
    balances: dict[str, Decimal] = field(default_factory=dict)  # common asset code -> amount
    last_nonce: int = 0
    fee_tier: str | None = None
    deadman: float = 0.0  # CancelAllOrdersAfter trigger (sim seconds), 0 = off


@dataclass
class Order:
    txid: str
    account: str
    pair: str
    side: str  # buy | sell
    ordertype: str  # market | limit
    vol: Decimal
    price: Decimal | None
    oflags: str
    timeinforce: str
    opentm: float
    eligible_from: int
    status: str = "open"
    expiretm: float = 0.0
    userref: int | None = None
    cl_ord_id: str | None = None
    closetm: float | None = None
    reason: str | None = None
    vol_exec: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    fee: Decimal = Decimal(0)
    trades: list[str] = field(default_factory=list)
    misc: str = ""
    stuck: bool = False
    poll_fills: int = 0  # fault: fill over this many polls
    poll_price: Decimal | None = None
    invisible_until: float = 0.0  # wall monotonic
    placed_wall: float = 0.0
    seqno: int = 0  # placement sequence (time priority, survives restarts)

    @property
    def remaining(self) -> Decimal:
        return self.vol - self.vol_exec

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Decimal):
                d[k] = str(v)
        d["invisible_until"] = 0.0
        d["placed_wall"] = 0.0
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Order:
        d = dict(d)
        for k in ("vol", "vol_exec", "cost", "fee"):
            d[k] = Decimal(d[k])
        for k in ("price", "poll_price"):
            d[k] = Decimal(d[k]) if d.get(k) is not None else None
        return cls(**d)


@dataclass
class Trade:
    txid: str
    ordertxid: str
    account: str
    pair: str
    time: float
    side: str
    ordertype: str
    price: Decimal
    vol: Decimal
    cost: Decimal
    fee: Decimal
    maker: bool
    trade_id: int

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, Decimal):
                d[k] = str(v)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Trade:
        d = dict(d)
        for k in ("price", "vol", "cost", "fee"):
            d[k] = Decimal(d[k])
        return cls(**d)


class Exchange:
    """All state of the simulated venue; every public method runs under one lock."""

    def __init__(self, market: Market, clock: SimClock, config: SimConfig | None = None, store=None) -> None:
        self.market = market
        self.clock = clock
        self.config = config or SimConfig()
        self.store = store
        self.lock = threading.RLock()
        self.accounts: dict[str, Account] = {}  # by key
        self.orders: dict[str, Order] = {}
        self.open_ids: dict[str, None] = {}  # open orders in placement order (hot loops use it)
        self.trades: dict[str, Trade] = {}
        self.faults = FaultPlan()
        self.status = "online"
        self.pair_status: dict[str, str] = {}
        self.seq = 0
        self.trade_seq = 0
        self.processed = market.closed_count(clock.now())
        self._dirty_orders: set[str] = set()
        self._dirty_trades: set[str] = set()
        self._order_counter: dict[tuple[str, str], tuple[float, float]] = {}
        self._hold_cache: dict[str, tuple[tuple, tuple[str, Decimal]]] = {}
        self.wall = time.time  # real time: AddOrder ``deadline`` is a wall-clock time, as on Kraken

    # ---- ids ----------------------------------------------------------------------------------
    def _id(self, prefix: str) -> str:
        self.seq += 1
        h = hashlib.sha256(f"{self.config.seed}:{prefix}:{self.seq}".encode()).digest()
        n = int.from_bytes(h[:12], "big")
        chars = []
        for _ in range(16):
            chars.append(_B32[n % 32])
            n //= 32
        s = prefix + "".join(chars)
        return f"{s[:6]}-{s[6:11]}-{s[11:17]}"

    # ---- accounts -----------------------------------------------------------------------------
    def add_account(
        self, name: str, key: str, secret: str, balances: dict[str, Decimal] | None = None, fee_tier: str | None = None
    ) -> Account:
        with self.lock:
            if key in self.accounts:
                return self.accounts[key]
            acct = Account(
                name=name,
                key=key,
                secret=secret,
                fee_tier=fee_tier,
                balances={normalize_asset(a): Decimal(v) for a, v in (balances or {}).items()},
            )
            for a in list(acct.balances):
                acct.balances[a] = q(acct.balances[a], asset_decimals(a))
            self.accounts[key] = acct
            self.persist()
            return acct

    def set_credentials(
        self, name: str, key: str, secret: str, balances: dict[str, Decimal] | None = None, fee_tier: str | None = None
    ) -> Account:
        """Serve account ``name`` under ``key``/``secret`` (read from the environment at each start).
        A new account gets ``balances``; an existing one keeps its books, takes the new secret and,
        if the key changed, moves its orders and trades to the new key (the old key stops working)."""
        with self.lock:
            acct = self.accounts.get(key)
            if acct is not None and acct.name != name:
                raise InputError(f"accounts {acct.name!r} and {name!r} are given the same API key")
            if acct is None:
                old = next((a for a in self.accounts.values() if a.name == name), None)
                if old is None:
                    return self.add_account(name, key, secret, balances, fee_tier)
                del self.accounts[old.key]
                for o in self.orders.values():
                    if o.account == old.key:
                        o.account = key
                        self._dirty_orders.add(o.txid)
                for t in self.trades.values():
                    if t.account == old.key:
                        t.account = key
                        self._dirty_trades.add(t.txid)
                old.key = key
                self.accounts[key] = acct = old
            acct.secret = secret
            self.persist()
            return acct

    def account_by_name(self, name: str) -> Account:
        for a in self.accounts.values():
            if a.name == name or a.key == name:
                return a
        raise KrakenAPIError("EGeneral:Invalid arguments:account")

    def fee_rates(self, acct: Account, pair: str) -> FeeTier:
        fees = self.config.fees
        for alias, tier in fees.pairs.items():
            if self.market.resolve(alias) == pair:
                return tier
        if acct.fee_tier and acct.fee_tier in fees.tiers:
            return fees.tiers[acct.fee_tier]
        return fees.default

    def _hold_of(self, acct: Account, o: Order) -> tuple[str, Decimal]:
        """(asset, amount) one open order holds; cached until its fill state or rules change."""
        inst = self.market.instruments[o.pair]
        key = (o.vol_exec, o.poll_price, id(inst))
        hit = self._hold_cache.get(o.txid)
        if hit is not None and hit[0] == key:
            return hit[1]
        if o.side == "sell":
            val = (inst.base, o.remaining)
        else:
            px = o.price if o.price is not None else (o.poll_price or Decimal(0))
            rate = self.fee_rates(acct, o.pair)
            val = (
                inst.quote,
                q(o.remaining * px * (1 + max(rate.maker, rate.taker)), asset_decimals(inst.quote), ROUND_UP),
            )
        self._hold_cache[o.txid] = (key, val)
        return val

    def holds(self, acct: Account) -> dict[str, Decimal]:
        """Funds held by the account's open orders, per common asset code."""
        out: dict[str, Decimal] = {}
        for o in self.open_orders_list():
            if o.account == acct.key:
                asset, amt = self._hold_of(acct, o)
                out[asset] = out.get(asset, Decimal(0)) + amt
        return out

    def available(self, acct: Account, asset: str) -> Decimal:
        return acct.balances.get(asset, Decimal(0)) - self.holds(acct).get(asset, Decimal(0))

    def change_balance(self, acct: Account, asset: str, delta: Decimal) -> None:
        """An external deposit/withdrawal (admin fault): finite, at most the asset's decimals, never
        below what open orders hold (nor below zero), never above MAX_AMOUNT; InputError otherwise."""
        with self.lock:
            self.sync()
            a = normalize_asset(asset)
            d = Decimal(delta)
            places = asset_decimals(a)
            if not d.is_finite() or abs(d) > MAX_AMOUNT:
                raise InputError(f"delta must be a finite amount of at most {MAX_AMOUNT:,}")
            if decimals_of(d) > places:
                raise InputError(f"{a} amounts take at most {places} decimals")
            new = acct.balances.get(a, Decimal(0)) + d
            held = self.holds(acct).get(a, Decimal(0))
            if new < held:
                raise InputError(
                    f"{a} would fall to {new}, below the {held} its open orders hold"
                    if held
                    else f"{a} would fall below zero ({new})"
                )
            if new > MAX_AMOUNT:
                raise InputError(f"{a} would exceed {MAX_AMOUNT:,}")
            acct.balances[a] = q(new, places)
            self.persist()

    # ---- clock and matching -------------------------------------------------------------------
    def now(self) -> float:
        return self.clock.now()

    def advance(self, seconds: float | None = None, to: float | None = None) -> float:
        with self.lock:
            if to is not None:
                self.clock.set(float(to))
            elif seconds is not None:
                self.clock.advance(float(seconds))
            self.sync()
            self.persist()
            return self.now()

    def sync(self) -> None:
        """Process every bar closed since the last call: expiries, dead-man switches, limit fills."""
        with self.lock:
            now = self.now()
            closed = self.market.closed_count(now)
            changed = False
            for i in range(self.processed, closed):
                ts = int(self.market.panel.ts[i])
                end = ts + HOUR
                changed |= self._expire(end)
                changed |= self._deadman(end)
                changed |= self._fill_bar(i, ts, end)
            self.processed = max(self.processed, closed)
            changed |= self._expire(now, strict=False)
            changed |= self._deadman(now)
            if changed:
                self.persist()

    def open_orders_list(self) -> list[Order]:
        """Open orders in placement order (time priority)."""
        return [self.orders[t] for t in self.open_ids]

    def _expire(self, t: float, strict: bool = True) -> bool:
        changed = False
        for o in self.open_orders_list():
            if o.status == "open" and o.expiretm and (o.expiretm < t if strict else o.expiretm <= t):
                self._close(o, "expired", o.expiretm, None)
                changed = True
        return changed

    def _deadman(self, t: float) -> bool:
        changed = False
        for acct in self.accounts.values():
            if acct.deadman and acct.deadman <= t:
                trig = acct.deadman
                acct.deadman = 0.0
                for o in self.open_orders_list():
                    if o.account == acct.key:
                        self._close(o, "canceled", trig, "Dead man's switch")
                changed = True
        return changed

    def _fill_bar(self, i: int, ts: int, end: float) -> bool:
        changed = False
        for o in self.open_orders_list():
            if o.status != "open" or o.ordertype != "limit" or o.stuck or o.poll_fills or ts < o.eligible_from:
                continue
            j = self.market.panel.column(o.pair)
            b = self.market.bar(i, j)
            if b is None:
                continue
            limit = o.price
            if limit is None:  # add_order always prices a limit order; only a corrupt state file lacks one
                raise RuntimeError(f"simulator invariant broken: limit order {o.txid} has no price")
            side = BUY if o.side == "buy" else SELL
            if not limit_touched_nb(side, float(limit), b[2], b[1]):
                continue
            inst = self.market.instruments[o.pair]
            cap = q(Decimal(repr(b[4] * self.config.fills.participation_cap)), inst.lot_decimals, ROUND_DOWN)
            qty = min(o.remaining, cap)
            if qty <= 0:
                continue
            self._fill(o, qty, limit, end, maker=True)
            changed = True
        return changed

    def _close(self, o: Order, status: str, t: float, reason: str | None) -> None:
        o.status = status
        self.open_ids.pop(o.txid, None)
        self._hold_cache.pop(o.txid, None)
        o.closetm = float(t)
        o.reason = reason
        self._dirty_orders.add(o.txid)

    def _fill(self, o: Order, qty: Decimal, price: Decimal, t: float, maker: bool) -> bool:
        """Book one fill; False (and the order cancelled) if the account can no longer pay."""
        acct = self.accounts[o.account]
        inst = self.market.instruments[o.pair]
        qd = asset_decimals(inst.quote)
        rate = self.fee_rates(acct, o.pair)
        cost = q(qty * price, qd)
        # the backtester's fee kernel on the same floats, rounded UP to the quote decimals (exact on
        # its grid: the Decimal of its repr quantises to itself)
        f = fee_nb(float(qty) * float(price), float(rate.maker if maker else rate.taker), qd)
        fee = q(Decimal(repr(f)), qd)
        base, quote = inst.base, inst.quote
        if o.side == "buy":
            if acct.balances.get(quote, Decimal(0)) < cost + fee:
                self._close(o, "canceled", t, "Insufficient funds")
                return False
            acct.balances[quote] = acct.balances.get(quote, Decimal(0)) - cost - fee
            acct.balances[base] = acct.balances.get(base, Decimal(0)) + qty
        else:
            if acct.balances.get(base, Decimal(0)) < qty:
                self._close(o, "canceled", t, "Insufficient funds")
                return False
            acct.balances[base] = acct.balances.get(base, Decimal(0)) - qty
            acct.balances[quote] = acct.balances.get(quote, Decimal(0)) + cost - fee
        self.trade_seq += 1
        tr = Trade(
            txid=self._id("T"),
            ordertxid=o.txid,
            account=acct.key,
            pair=o.pair,
            time=float(t),
            side=o.side,
            ordertype=o.ordertype,
            price=price,
            vol=qty,
            cost=cost,
            fee=fee,
            maker=maker,
            trade_id=self.trade_seq,
        )
        self.trades[tr.txid] = tr
        self._dirty_trades.add(tr.txid)
        o.vol_exec += qty
        o.cost += cost
        o.fee += fee
        o.trades.append(tr.txid)
        if o.remaining <= 0:
            self._close(o, "closed", t, None)
        else:
            o.misc = "partial"
        self._dirty_orders.add(o.txid)
        return True

    def taker_price(self, pair: str, side: str, vol: Decimal, now: float) -> Decimal | None:
        """Fill price of a market order placed now: the shared slippage model around the known mid."""
        m = self.market.mid(pair, now)
        if m is None:
            return None
        fc = self.config.fills
        s = self.market.spread_frac(pair, now)
        slip = slippage_frac_nb(
            s,
            self.market.vol_frac(pair, now),
            float(vol) * m,
            self.market.quote_volume(pair, now),
            fc.impact_coef,
            fc.min_slip,
        )
        sd = BUY if side == "buy" else SELL
        px = market_fill_price_nb(sd, m, slip)
        inst = self.market.instruments[pair]
        if inst.tick_size == Decimal(1).scaleb(-inst.pair_decimals):
            # the backtester's tick kernel (every pair Kraken lists: tick = 10**-pair_decimals)
            return q(Decimal(repr(taker_tick_nb(sd, px, inst.pair_decimals))), inst.pair_decimals)
        # a tick that is not a power of ten (a rules_change fault): to the tick in Decimal
        d = Decimal(repr(px))
        d = (d / inst.tick_size).to_integral_value(rounding=ROUND_UP if sd == BUY else ROUND_DOWN) * inst.tick_size
        return q(d, inst.pair_decimals)

    def market_status(self, pair: str | None, now: float) -> str:
        """The pair's status (AssetPairs), or the venue's (SystemStatus) when ``pair`` is None: a
        pair-only status (limit_only, reduce_only) never shows as the venue's."""
        s = self.faults.status(pair, now)
        if s is not None:
            return s
        if pair is not None and pair in self.pair_status:
            return self.pair_status[pair]
        return self.status

    # ---- rate limits --------------------------------------------------------------------------
    def order_counter(self, acct: Account, pair: str, add: float) -> None:
        rl = self.config.rate_limit
        k = (acct.key, pair)
        val, t = self._order_counter.get(k, (0.0, time.monotonic()))
        now = time.monotonic()
        val = max(0.0, val - (now - t) * rl.order_decay_per_s)
        if val + add > rl.order_max_counter:
            self._order_counter[k] = (val, now)
            raise KrakenAPIError("EOrder:Rate limit exceeded")
        self._order_counter[k] = (val + add, now)

    def reset_order_counters(self) -> None:
        """Empty every matching-engine counter (admin: new rate limits start from zero)."""
        with self.lock:
            self._order_counter.clear()

    # ---- AddOrder -----------------------------------------------------------------------------
    def add_order(
        self, acct: Account, p: dict[str, str], order_faults=None, received: float | None = None
    ) -> dict[str, Any]:
        """Place (or with ``validate`` check) one order. ``received``: the wall time the request
        arrived (the ``deadline`` window is checked against it; the deadline itself against the
        wall time the order is processed)."""
        deadline = _deadline(p.get("deadline"), self.wall() if received is None else received)
        with self.lock:
            if deadline is not None and self.wall() > deadline:
                raise KrakenAPIError("EService:Deadline elapsed")
            self.sync()
            now = self.now()
            pair = self.market.resolve(p.get("pair", ""))
            if pair is None:
                raise KrakenAPIError("EQuery:Unknown asset pair")
            inst = self.market.instruments[pair]
            side = p.get("type", "")
            if side not in ("buy", "sell"):
                raise KrakenAPIError("EGeneral:Invalid arguments:type")
            ordertype = p.get("ordertype", "")
            if ordertype not in ("market", "limit"):
                raise KrakenAPIError("EGeneral:Invalid arguments:ordertype")
            flags = [f for f in p.get("oflags", "").split(",") if f]
            if any(f not in ("post", "fcib", "fciq", "nompp", "viqc") for f in flags):
                raise KrakenAPIError("EGeneral:Invalid arguments:oflags")
            if "viqc" in flags:
                raise KrakenAPIError("EGeneral:Invalid arguments:viqc not supported by the simulator")
            post = "post" in flags
            if post and ordertype != "limit":
                raise KrakenAPIError("EGeneral:Invalid arguments:post only flag requires a limit order")
            tif = p.get("timeinforce", "GTC") or "GTC"
            if tif not in ("GTC", "IOC", "GTD"):
                raise KrakenAPIError("EGeneral:Invalid arguments:timeinforce")
            try:
                vol = decimal_of(p.get("volume", ""), "volume", 0, MAX_AMOUNT)
            except BadNumber:
                raise KrakenAPIError("EGeneral:Invalid arguments:volume") from None
            if vol <= 0:
                raise KrakenAPIError("EGeneral:Invalid arguments:volume")
            if decimals_of(vol) > inst.lot_decimals:
                raise KrakenAPIError(
                    f"EGeneral:Invalid arguments:volume can only be specified up to {inst.lot_decimals} decimals"
                )
            price: Decimal | None = None
            if ordertype == "limit":
                try:
                    price = decimal_of(p.get("price", ""), "price", None, MAX_AMOUNT)
                except OutOfRange:
                    raise KrakenAPIError("EOrder:Invalid price") from None
                except BadNumber:
                    raise KrakenAPIError("EGeneral:Invalid arguments:price") from None
                if price <= 0:
                    raise KrakenAPIError("EGeneral:Invalid arguments:price")
                if decimals_of(price) > inst.pair_decimals:
                    raise KrakenAPIError(
                        f"EOrder:Invalid price:{inst.altname} price can only be specified up to "
                        f"{inst.pair_decimals} decimals."
                    )
                if price % inst.tick_size != 0:
                    raise KrakenAPIError("EOrder:Tick size check failed")
            userref = _userref(p)
            cl = p.get("cl_ord_id")
            if cl is not None:
                if userref is not None:
                    raise KrakenAPIError("EGeneral:Invalid arguments:cl_ord_id and userref are exclusive")
                if not valid_cl_ord_id(cl):
                    raise KrakenAPIError("EGeneral:Invalid arguments:cl_ord_id")
            expiretm = 0.0
            if tif == "GTD" or p.get("expiretm") not in (None, "", "0"):
                raw = p.get("expiretm", "")
                try:  # "+<seconds>" from now, or a unix time; finite and before 2100 either way
                    expiretm = (
                        now + float_of(raw[1:], "expiretm", 0, MAX_STEP)
                        if raw.startswith("+")
                        else float_of(raw, "expiretm", 0, MAX_TIME)
                    )
                except BadNumber:
                    raise KrakenAPIError("EGeneral:Invalid arguments:expiretm") from None
                if expiretm > MAX_TIME:
                    raise KrakenAPIError("EGeneral:Invalid arguments:expiretm")
                if tif != "GTD":
                    raise KrakenAPIError("EGeneral:Invalid arguments:expiretm requires timeinforce GTD")
                if expiretm <= now + 5:
                    raise KrakenAPIError("EGeneral:Invalid arguments:expiretm must be in the future")
            if vol < inst.ordermin:
                raise KrakenAPIError("EGeneral:Invalid arguments:volume minimum not met")
            quotes = self.market.quotes(pair, now)
            if quotes is None:
                raise KrakenAPIError("EService:Unavailable")
            bid, ask, mid = quotes
            ref = price if price is not None else Decimal(repr(mid))
            if vol * ref > MAX_AMOUNT:  # more than any balance can hold (and past exact arithmetic)
                raise KrakenAPIError("EOrder:Insufficient funds")
            if vol * ref < inst.costmin:
                raise KrakenAPIError("EOrder:Cost minimum not met")
            status = self.market_status(pair, now)
            if status == "maintenance":
                raise KrakenAPIError("EService:Unavailable")
            if status == "cancel_only":
                raise KrakenAPIError("EService:Market in cancel_only mode")
            if status == "post_only" and not post:
                raise KrakenAPIError("EService:Market in post_only mode")
            if status == "limit_only" and ordertype != "limit":
                raise KrakenAPIError("EService:Market in limit_only mode")
            if status == "reduce_only" and side == "buy":  # spot, no margin: only a sell reduces a holding
                raise KrakenAPIError("EService:Market in reduce_only mode")
            n_open = sum(1 for o in self.open_orders_list() if o.account == acct.key and o.pair == pair)
            if n_open >= self.config.fills.max_open_orders:
                raise KrakenAPIError("EOrder:Orders limit exceeded")
            # from here on ``price is None`` exactly for a market order (a limit order's price was parsed above)
            if ordertype == "limit" and price is None:
                raise RuntimeError("simulator invariant broken: a limit order without a price")
            # taker price if the order crosses now
            crosses = price is None or (side == "buy" and price >= ask) or (side == "sell" and price <= bid)
            tpx = self.taker_price(pair, side, vol, now) if crosses else None
            if (
                tpx is not None
                and price is not None  # a limit order
                and not post
                and ((side == "buy" and tpx > price) or (side == "sell" and tpx < price))
            ):
                tpx = None  # slippage would pass the limit: it rests instead
            rate = self.fee_rates(acct, pair)
            qd = asset_decimals(inst.quote)
            if side == "buy":
                # post only: its limit price (post requires a limit order); else the taker price, the limit, the ask
                px = tpx if tpx is not None and not post else price if price is not None else ask
                need = q(vol * px * (1 + max(rate.maker, rate.taker)), qd, ROUND_UP)
                if self.available(acct, inst.quote) < need:
                    raise KrakenAPIError("EOrder:Insufficient funds")
            elif self.available(acct, inst.base) < vol:
                raise KrakenAPIError("EOrder:Insufficient funds")
            descr = self._descr_order(side, vol, inst, ordertype, price)
            if p.get("validate", "false").lower() in ("true", "1"):
                return {"descr": {"order": descr}}
            self.order_counter(acct, pair, 1.0)
            o = Order(
                txid=self._id("O"),
                account=acct.key,
                pair=pair,
                side=side,
                ordertype=ordertype,
                vol=vol,
                price=price,
                oflags=",".join(flags) or ("fciq" if side == "buy" else "fcib"),
                timeinforce=tif,
                opentm=now,
                eligible_from=int(self.market.t0 + self.market.forming_index(now) * HOUR),
                expiretm=expiretm,
                userref=userref,
                cl_ord_id=cl,
                placed_wall=time.monotonic(),
                seqno=self.seq,
            )
            self.orders[o.txid] = o
            self.open_ids[o.txid] = None
            self._dirty_orders.add(o.txid)
            for f in order_faults if order_faults is not None else self.faults.take_order(pair, now):
                if f.kind == "stuck_open":
                    o.stuck = True
                elif f.kind == "partial_fills":
                    o.poll_fills = max(1, int(f.params.get("polls", 3)))
                elif f.kind == "invisible":
                    o.invisible_until = time.monotonic() + float(f.params.get("seconds", 5))
            if post and crosses:
                self._close(o, "canceled", now, "Post only order")
            elif o.stuck:
                o.poll_price = tpx  # a stuck market order still holds its funds
            elif tpx is not None and o.poll_fills:
                o.poll_price = tpx
            elif tpx is not None:
                self._fill(o, vol, tpx, now, maker=False)
            elif ordertype == "market":
                self._close(o, "canceled", now, "No liquidity")
            if o.status == "open" and tif == "IOC" and not o.stuck and not o.poll_fills:
                self._close(o, "canceled", now, "Immediate or cancel")
            self.persist()
            return {"descr": {"order": descr}, "txid": [o.txid]}

    @staticmethod
    def _descr_order(side: str, vol: Decimal, inst: Instrument, ordertype: str, price: Decimal | None) -> str:
        s = f"{side} {fmt(vol, inst.lot_decimals)} {inst.altname} @ {ordertype}"
        return s + (f" {fmt(price, inst.pair_decimals)}" if price is not None else "")

    # ---- polls (fault: partial fills over several polls) -----------------------------------------
    def _poll(self, o: Order) -> None:
        if o.status != "open" or not o.poll_fills or o.poll_price is None:
            return
        inst = self.market.instruments[o.pair]
        step = q(o.remaining / o.poll_fills, inst.lot_decimals, ROUND_UP)
        o.poll_fills -= 1
        qty = o.remaining if o.poll_fills == 0 else min(step, o.remaining)
        self._fill(o, qty, o.poll_price, self.now(), maker=False)
        if o.status == "open" and o.poll_fills == 0:
            o.poll_fills = 0
        if o.status == "open" and o.timeinforce == "IOC" and o.poll_fills == 0:
            self._close(o, "canceled", self.now(), "Immediate or cancel")

    def _visible(self, o: Order) -> bool:
        return o.invisible_until <= time.monotonic()

    # ---- cancels ------------------------------------------------------------------------------
    def cancel(self, acct: Account, txid: str | None, cl_ord_id: str | None) -> dict[str, Any]:
        with self.lock:
            self.sync()
            now = self.now()
            if not txid and not cl_ord_id:
                raise KrakenAPIError("EGeneral:Invalid arguments:txid or cl_ord_id required")
            targets: list[Order] = []
            mine = [o for o in self.open_orders_list() if o.account == acct.key]
            if cl_ord_id:
                targets = [o for o in mine if o.cl_ord_id == cl_ord_id]
            else:
                for t in str(txid).split(","):
                    t = t.strip()
                    try:  # an int32 (ASCII digits only) is a userref; anything else a txid
                        ref = int_of(t, "txid", -(2**31), 2**31 - 1)
                    except BadNumber:
                        targets += [o for o in mine if o.txid == t]
                    else:
                        targets += [o for o in mine if o.userref == ref]
            targets = [o for o in targets if o.status == "open"]
            if not targets:
                raise KrakenAPIError("EOrder:Unknown order")
            for o in targets:
                early = 8.0 if time.monotonic() - o.placed_wall < 5 and o.placed_wall else 0.0
                self.order_counter(acct, o.pair, early)
                self._close(o, "canceled", now, "User requested")
            self.persist()
            return {"count": len(targets)}

    def cancel_all(self, acct: Account) -> dict[str, Any]:
        with self.lock:
            self.sync()
            n = 0
            for o in self.open_orders_list():
                if o.account == acct.key:
                    self._close(o, "canceled", self.now(), "User requested")
                    n += 1
            self.persist()
            return {"count": n}

    def cancel_after(self, acct: Account, timeout: str | None) -> dict[str, Any]:
        with self.lock:
            self.sync()
            try:
                t = int_of(timeout or "", "timeout", 0, 86399)
            except BadNumber:
                raise KrakenAPIError("EGeneral:Invalid arguments:timeout") from None
            now = self.now()
            acct.deadman = 0.0 if t == 0 else now + t
            self.persist()
            return {"currentTime": rfc3339(now), "triggerTime": "0" if t == 0 else rfc3339(acct.deadman)}

    # ---- queries ------------------------------------------------------------------------------
    def order_view(self, o: Order, trades: bool = False) -> dict[str, Any]:
        inst = self.market.instruments[o.pair]
        qd = asset_decimals(inst.quote)
        avg = o.cost / o.vol_exec if o.vol_exec > 0 else Decimal(0)
        v: dict[str, Any] = {
            "refid": None,
            "userref": o.userref if o.userref is not None else 0,
            "status": o.status,
            "opentm": o.opentm,
            "starttm": 0,
            "expiretm": o.expiretm,
            "descr": {
                "pair": inst.altname,
                "type": o.side,
                "ordertype": o.ordertype,
                "price": fmt(o.price, inst.pair_decimals) if o.price is not None else "0",
                "price2": "0",
                "leverage": "none",
                "order": self._descr_order(o.side, o.vol, inst, o.ordertype, o.price),
                "close": "",
            },
            "vol": fmt(o.vol, inst.lot_decimals),
            "vol_exec": fmt(o.vol_exec, inst.lot_decimals),
            "cost": fmt(o.cost, qd),
            "fee": fmt(o.fee, qd),
            "price": fmt(avg, inst.pair_decimals),
            "stopprice": "0.00000",
            "limitprice": "0.00000",
            "misc": o.misc,
            "oflags": o.oflags,
        }
        if o.cl_ord_id is not None:
            v["cl_ord_id"] = o.cl_ord_id
        if o.timeinforce != "GTC":
            v["timeinforce"] = o.timeinforce
        if o.closetm is not None:
            v["closetm"] = o.closetm
            if o.reason is not None:
                v["reason"] = o.reason
        if trades and o.trades:
            v["trades"] = list(o.trades)
        return v

    def open_orders(self, acct: Account, p: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            self.sync()
            sel = self._select(acct, p, open_=True)
            for o in sel:
                self._poll(o)
            self.persist()
            tr = _true(p.get("trades"))
            return {"open": {o.txid: self.order_view(o, tr) for o in sel if o.status == "open"}}

    def _select(self, acct: Account, p: dict[str, str], open_: bool) -> list[Order]:
        out = []
        uref = _userref(p, blank_ok=True)
        cl = p.get("cl_ord_id")
        for o in self.open_orders_list() if open_ else self.orders.values():
            if o.account != acct.key or not self._visible(o):
                continue
            if (o.status == "open") != open_:
                continue
            if uref is not None and o.userref != uref:
                continue
            if cl not in (None, "") and o.cl_ord_id != cl:
                continue
            out.append(o)
        return out

    def closed_orders(self, acct: Account, p: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            self.sync()
            sel = self._select(acct, p, open_=False)
            start, end = _num(p, "start"), _num(p, "end")
            sel = [
                o
                for o in sel
                if (start is None or (o.closetm or 0) > start) and (end is None or (o.closetm or 0) <= end)
            ]
            sel.sort(key=lambda o: (o.closetm or 0, o.txid), reverse=True)
            ofs = _ofs(p)
            tr = _true(p.get("trades"))
            page = sel[ofs : ofs + HISTORY_PAGE]
            return {"closed": {o.txid: self.order_view(o, tr) for o in page}, "count": len(sel)}

    def query_orders(self, acct: Account, p: dict[str, str]) -> dict[str, Any]:
        """QueryOrders: txid -> order for the (up to 50) txids asked. A txid Kraken does not know,
        another key's, or one not visible yet (the ``invisible`` fault) is simply absent: a lookup
        right after AddOrder can answer ``{}``, which proves nothing about the order."""
        with self.lock:
            self.sync()
            raw = p.get("txid") or ""
            ids = [t.strip() for t in raw.split(",") if t.strip()]
            if not ids:
                raise KrakenAPIError("EGeneral:Invalid arguments:txid")
            if len(ids) > 50:
                raise KrakenAPIError("EGeneral:Invalid arguments:txid (at most 50)")
            uref = _userref(p, blank_ok=True)
            out = {}
            for t in ids:
                o = self.orders.get(t)
                if o is None or o.account != acct.key or not self._visible(o):
                    continue  # Kraken: a txid it does not know (yet) is left out, not an error
                if uref is not None and o.userref != uref:
                    continue
                self._poll(o)
                out[t] = self.order_view(o, _true(p.get("trades")))
            self.persist()
            return out

    def trades_history(self, acct: Account, p: dict[str, str]) -> dict[str, Any]:
        with self.lock:
            self.sync()
            start, end = _num(p, "start"), _num(p, "end")
            typ = p.get("type") or "all"
            sel = [
                t
                for t in self.trades.values()
                if t.account == acct.key and (start is None or t.time > start) and (end is None or t.time <= end)
            ]
            if typ in ("buy", "sell"):
                sel = [t for t in sel if t.side == typ]
            sel.sort(key=lambda t: (t.time, t.trade_id), reverse=True)
            ofs = _ofs(p)
            return {"trades": {t.txid: self.trade_view(t) for t in sel[ofs : ofs + HISTORY_PAGE]}, "count": len(sel)}

    def trade_view(self, t: Trade) -> dict[str, Any]:
        """One trade as TradesHistory and QueryTrades show it."""
        inst = self.market.instruments[t.pair]
        qd = asset_decimals(inst.quote)
        return {
            "ordertxid": t.ordertxid,
            "postxid": "TKH2SE-M7IF5-CFI7LT",
            "pair": inst.kraken_id,
            "time": t.time,
            "type": t.side,
            "ordertype": t.ordertype,
            "price": fmt(t.price, inst.pair_decimals),
            "cost": fmt(t.cost, qd),
            "fee": fmt(t.fee, qd),
            "vol": fmt(t.vol, inst.lot_decimals),
            "margin": fmt(0, qd),
            "leverage": "0",
            "misc": "",
            "trade_id": t.trade_id,
            "maker": t.maker,
        }

    def query_trades(self, acct: Account, p: dict[str, str]) -> dict[str, Any]:
        """QueryTrades: trade txid -> trade for the (up to 20) comma-separated txids asked. ``trades``
        (include trades related to a position) is a boolean; spot has no positions, so it adds
        nothing. Unknown and other keys' txids are left out, as QueryOrders does."""
        with self.lock:
            self.sync()
            ids = [t.strip() for t in (p.get("txid") or "").split(",") if t.strip()]
            if not ids:
                raise KrakenAPIError("EGeneral:Invalid arguments:txid")
            if len(ids) > 20:
                raise KrakenAPIError("EGeneral:Invalid arguments:txid (at most 20)")
            if str(p.get("trades", "false")).lower() not in ("true", "false", "1", "0"):
                raise KrakenAPIError("EGeneral:Invalid arguments:trades")
            out = {}
            for t in ids:
                tr = self.trades.get(t)
                if tr is not None and tr.account == acct.key:
                    out[t] = self.trade_view(tr)
            return out

    def balance(self, acct: Account) -> dict[str, str]:
        with self.lock:
            self.sync()
            return {kraken_asset_id(a): fmt(v, asset_decimals(a)) for a, v in sorted(acct.balances.items())}

    def balance_ex(self, acct: Account) -> dict[str, dict[str, str]]:
        with self.lock:
            self.sync()
            h = self.holds(acct)
            return {
                kraken_asset_id(a): {
                    "balance": fmt(v, asset_decimals(a)),
                    "hold_trade": fmt(h.get(a, Decimal(0)), asset_decimals(a)),
                }
                for a, v in sorted(acct.balances.items())
            }

    def value_in(self, asset: str, amount: Decimal, target: str, now: float) -> Decimal | None:
        if asset == target:
            return amount
        for pair in (f"{asset}/{target}",):
            if pair in self.market.instruments:
                m = self.market.mid(pair, now)
                if m is not None:
                    return amount * Decimal(repr(m))
        if target == "USD":
            for quote in ("USDT", "USDC"):
                pair = f"{asset}/{quote}"
                if pair in self.market.instruments:
                    m = self.market.mid(pair, now)
                    if m is not None:
                        return amount * Decimal(repr(m))
            if asset in STABLE8:
                return amount
        return None

    def trade_balance(self, acct: Account, asset: str | None) -> dict[str, str]:
        with self.lock:
            self.sync()
            try:
                target = normalize_asset(asset or "ZUSD")
            except Exception:
                raise KrakenAPIError("EQuery:Unknown asset") from None
            now = self.now()
            total = Decimal(0)
            for a, v in acct.balances.items():
                val = self.value_in(a, v, target, now)
                if val is not None:
                    total += val
            uv = Decimal(0)
            for o in self.open_orders_list():
                if o.account == acct.key:
                    px = o.price if o.price is not None else (o.poll_price or Decimal(0))
                    val = self.value_in(self.market.instruments[o.pair].quote, o.remaining * px, target, now)
                    uv += val or Decimal(0)
            d = asset_decimals(target)
            z = fmt(0, d)
            return {
                "eb": fmt(total, d),
                "tb": fmt(total, d),
                "m": z,
                "n": z,
                "c": z,
                "v": z,
                "e": fmt(total, d),
                "mf": fmt(total, d),
                "uv": fmt(uv, d),
            }

    # ---- public data --------------------------------------------------------------------------
    def asset_pairs(self, names: list[str] | None) -> dict[str, Any]:
        pairs = self.market.listed()
        if names:
            pairs = []
            for n in names:
                p = self.market.resolve(n)
                if p is None:
                    raise KrakenAPIError("EQuery:Unknown asset pair")
                pairs.append(p)
        now = self.now()
        out = {}
        for p in pairs:
            inst = self.market.instruments[p]
            st = self.market_status(p, now)
            tier = self.config.fees.default
            out[inst.kraken_id] = {
                "altname": inst.altname,
                "wsname": inst.wsname,
                "aclass_base": "currency",
                "base": inst.base_id,
                "aclass_quote": "currency",
                "quote": inst.quote_id,
                "lot": "unit",
                "cost_decimals": inst.cost_decimals,
                "pair_decimals": inst.pair_decimals,
                "lot_decimals": inst.lot_decimals,
                "lot_multiplier": 1,
                "leverage_buy": [],
                "leverage_sell": [],
                "fees": [[0, float(tier.taker * 100)]],
                "fees_maker": [[0, float(tier.maker * 100)]],
                "fee_volume_currency": "ZUSD",
                "margin_call": 80,
                "margin_stop": 40,
                "ordermin": f"{inst.ordermin:f}",
                "costmin": f"{inst.costmin:f}",
                "tick_size": f"{inst.tick_size:f}",
                "status": "online" if st == "maintenance" else st,
            }
        return out

    def assets(self, names: list[str] | None) -> dict[str, Any]:
        codes = set()
        for p in self.market.listed():
            inst = self.market.instruments[p]
            codes |= {inst.base, inst.quote}
        if names:
            sel = set()
            for n in names:
                try:
                    a = normalize_asset(n)
                except Exception:
                    raise KrakenAPIError("EQuery:Unknown asset") from None
                if a not in codes:
                    raise KrakenAPIError("EQuery:Unknown asset")
                sel.add(a)
            codes = sel
        return {
            kraken_asset_id(a): {
                "aclass": "currency",
                "altname": kraken_asset_alt(a),
                "decimals": asset_decimals(a),
                "display_decimals": min(5, asset_decimals(a)),
                "status": "enabled",
            }
            for a in sorted(codes)
        }

    # ---- state --------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything, for /admin/state. No credentials: accounts, orders and trades are named by
        account name, never by API key, and secrets are never included."""
        with self.lock:
            self.sync()
            name = {a.key: a.name for a in self.accounts.values()}

            def named(d: dict[str, Any]) -> dict[str, Any]:
                d["account"] = name.get(d["account"], "?")
                return d

            return {
                "now": self.now(),
                "clock": self.clock.mode,
                "status": self.status,
                "pair_status": self.pair_status,
                "processed_bars": self.processed,
                "spread_source": self.market.spread_source,
                "pairs": {p: i.kraken_id for p, i in self.market.instruments.items()},
                "accounts": {
                    a.name: {
                        "balances": {k: str(v) for k, v in a.balances.items()},
                        "holds": {k: str(v) for k, v in self.holds(a).items()},
                        "last_nonce": a.last_nonce,
                        "deadman": a.deadman,
                    }
                    for a in self.accounts.values()
                },
                "orders": {t: named(o.to_json()) for t, o in self.orders.items()},
                "trades": {t: named(tr.to_json()) for t, tr in self.trades.items()},
                "faults": self.faults.to_list(),
            }

    def faults_changed(self) -> None:
        """Apply the fault plan to the market; cancel open orders on delisted pairs."""
        with self.lock:
            self.faults.apply_market(self.market)
            for o in self.open_orders_list():
                if o.pair in self.market.delisted:
                    self._close(o, "canceled", self.now(), "Pair delisted")
            self.persist()

    def persist(self) -> None:
        if self.store is not None:
            self.store.save(self, self._dirty_orders, self._dirty_trades)
        self._dirty_orders = set()
        self._dirty_trades = set()


_UUID_LONG = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")
_UUID_SHORT = re.compile(r"[0-9A-Fa-f]{32}")
_FREE_TEXT = re.compile(r"[\x20-\x7e]{1,18}")


def valid_cl_ord_id(cl: str) -> bool:
    """The ``cl_ord_id`` forms Kraken's AddOrder takes: a long UUID (32 hex digits in 8-4-4-4-12
    groups), a short UUID (32 hex digits) or free ASCII text of at most 18 characters."""
    return bool(_UUID_LONG.fullmatch(cl) or _UUID_SHORT.fullmatch(cl) or _FREE_TEXT.fullmatch(cl))


DEADLINE_MIN_S, DEADLINE_MAX_S = 2.0, 60.0  # Kraken: min now() + 2 seconds, max now() + 60 seconds
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(?:\.[0-9]{1,9})?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def _deadline(v: str | None, received: float) -> float | None:
    """AddOrder's optional ``deadline``: an RFC 3339 time between ``received`` + 2 s and + 60 s (the
    window Kraken documents), as unix seconds; EGeneral:Invalid arguments:deadline otherwise."""
    if v is None:
        return None
    bad = KrakenAPIError("EGeneral:Invalid arguments:deadline")
    if not _RFC3339.fullmatch(v):
        raise bad
    frac = ""
    if "." in v:  # fromisoformat takes at most 6 fraction digits
        head, _, rest = v.partition(".")
        m = re.match(r"[0-9]+", rest)
        if m is None:  # unreachable: _RFC3339 puts 1-9 digits after the dot
            raise bad
        digits = m.group(0)
        frac, v = "0." + digits, head + rest[len(digits) :]
    try:
        t = datetime.fromisoformat(v.upper().replace("Z", "+00:00")).timestamp() + (float(frac) if frac else 0.0)
    except ValueError:  # e.g. month 13, hour 25
        raise bad from None
    if not received + DEADLINE_MIN_S <= t <= received + DEADLINE_MAX_S:
        raise bad
    return t


def _true(v: str | None) -> bool:
    return str(v).lower() in ("true", "1")


def _num(p: dict[str, str], name: str) -> float | None:
    """An optional time parameter (start/end): a finite number, ASCII digits only."""
    v = p.get(name)
    if v in (None, ""):
        return None
    try:
        return float_of(v, name, -MAX_TIME, MAX_TIME)
    except BadNumber:
        raise KrakenAPIError(f"EGeneral:Invalid arguments:{name}") from None


def _userref(p: dict[str, str], blank_ok: bool = False) -> int | None:
    """The optional ``userref``: an int32 in ASCII digits (a blank filter is no filter)."""
    v = p.get("userref")
    if v is None or (blank_ok and v == ""):
        return None
    try:
        return int_of(v, "userref", -(2**31), 2**31 - 1)
    except BadNumber:
        raise KrakenAPIError("EGeneral:Invalid arguments:userref") from None


def _ofs(p: dict[str, str]) -> int:
    """The history page offset: a non-negative integer in ASCII digits."""
    try:
        return int_of(p.get("ofs") or "0", "ofs", 0, 10**9)
    except BadNumber:
        raise KrakenAPIError("EGeneral:Invalid arguments:ofs") from None
