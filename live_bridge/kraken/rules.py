"""Kraken's trading rules per pair (AssetPairs) and market status, applied with Decimal before
anything is sent: rounding, minimums, precision, and what each system/pair status lets through.

An order the exchange would refuse is never sent: :func:`check_order` raises
:class:`OrderRefused` (with a reason code) for a volume below ``ordermin``, a cost below
``costmin``, a volume or price with more decimals than the pair takes, a price off the tick, or a
status that forbids it (:func:`status_gate`).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_DOWN, ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

from engine.errors import InputError
from engine.pairs import Instrument, normalize_pair

SYSTEM_STATUSES = frozenset({"online", "maintenance", "cancel_only", "post_only"})
PAIR_STATUSES = frozenset({"online", "cancel_only", "post_only", "limit_only", "reduce_only"})


class OrderRefused(Exception):
    """The adapter refused to send an order (nothing was sent). ``code`` names the rule."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"order refused ({code}): {message}")
        self.code = code
        self.reason = message


class MalformedResult(ValueError):
    """A DONE answer whose result does not have the documented shape (the call counts as UNKNOWN)."""


def dec(v: Any, what: str) -> Decimal:
    """A finite Decimal from Kraken's decimal string (or int); MalformedResult otherwise."""
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise MalformedResult(f"{what}: expected a decimal string, got {type(v).__name__}")
    try:
        d = Decimal(str(v).strip())
    except InvalidOperation:
        raise MalformedResult(f"{what}: not a number") from None
    if not d.is_finite():
        raise MalformedResult(f"{what}: not finite")
    return d


def _int(v: Any, what: str, lo: int = 0, hi: int = 18) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise MalformedResult(f"{what}: expected an integer in [{lo}, {hi}]")
    return v


@dataclass(frozen=True)
class PairRules:
    """One pair's rules as Kraken published them, plus its trading status."""

    instrument: Instrument
    status: str

    @property
    def pair(self) -> str:
        return self.instrument.pair


def parse_asset_pairs(result: Any) -> dict[str, PairRules]:
    """AssetPairs result -> canonical pair name (engine.pairs) -> rules. Pairs whose assets this
    system does not know are skipped; a known pair with a malformed entry (a required field missing:
    decimals, ordermin, costmin, status) raises MalformedResult, which makes the whole answer
    UNKNOWN (no order is sent until AssetPairs loads)."""
    if not isinstance(result, dict):
        raise MalformedResult("AssetPairs: result is not an object")
    out: dict[str, PairRules] = {}
    for pid, e in result.items():
        if not isinstance(e, dict):
            raise MalformedResult(f"AssetPairs {pid}: not an object")
        try:
            pair = normalize_pair(str(e.get("altname") or pid))
        except InputError:
            continue
        ws = e.get("wsname") or ""
        inst = Instrument(
            pair=pair,
            kraken_id=str(pid),
            altname=str(e.get("altname", pid)),
            wsname=str(ws),
            base_id=str(e.get("base", "")),
            quote_id=str(e.get("quote", "")),
            pair_decimals=_int(e.get("pair_decimals"), f"{pid}.pair_decimals"),
            lot_decimals=_int(e.get("lot_decimals"), f"{pid}.lot_decimals"),
            cost_decimals=_int(e.get("cost_decimals", 8), f"{pid}.cost_decimals"),
            ordermin=dec(e.get("ordermin"), f"{pid}.ordermin"),
            costmin=dec(e.get("costmin"), f"{pid}.costmin"),  # no default: 0 would let any cost through
            tick_size=dec(e.get("tick_size") or f"1e-{e.get('pair_decimals')}", f"{pid}.tick_size"),
        )
        if inst.tick_size <= 0 or inst.ordermin < 0 or inst.costmin < 0:
            raise MalformedResult(f"AssetPairs {pid}: non-positive tick size or negative minimum")
        status = e.get("status")  # no default: a missing status is not "online"
        if not isinstance(status, str) or not status:
            raise MalformedResult(f"AssetPairs {pid}.status: missing")
        out[pair] = PairRules(inst, status)
    return out


def _places(d: Decimal) -> int:
    e = d.normalize().as_tuple().exponent
    return max(0, -int(e))  # type: ignore[arg-type]


def _need_decimal(v: Any, what: str) -> Decimal:
    """``v`` if it is a finite Decimal; TypeError for anything else (a float is already inexact:
    Decimal(0.0029) is 0.00289999...), ValueError for NaN / infinity."""
    if not isinstance(v, Decimal):
        raise TypeError(f"{what} must be a Decimal, not {type(v).__name__} {v!r}")
    if not v.is_finite():
        raise ValueError(f"{what} must be finite, not {v}")
    return v


def _need_side(side: Any) -> str:
    if side not in ("buy", "sell") or not isinstance(side, str):
        raise ValueError(f"side must be 'buy' or 'sell', not {side!r}")
    return side


def round_volume(rules: PairRules, qty: Decimal) -> Decimal:
    """Quantity rounded DOWN to the pair's lot decimals (never more than asked). ``qty`` must be a
    Decimal (TypeError otherwise)."""
    return _need_decimal(qty, "volume").quantize(Decimal(1).scaleb(-rules.instrument.lot_decimals), rounding=ROUND_DOWN)


def round_price(rules: PairRules, side: str, price: Decimal) -> Decimal:
    """Limit price on the tick grid and to the pair's decimals: a buy rounds down, a sell up
    (never a worse price than asked). ``price`` must be a Decimal (TypeError otherwise) and ``side``
    exactly "buy" or "sell" (ValueError otherwise)."""
    inst = rules.instrument
    mode = ROUND_FLOOR if _need_side(side) == "buy" else ROUND_CEILING
    p = (_need_decimal(price, "price") / inst.tick_size).to_integral_value(rounding=mode) * inst.tick_size
    return p.quantize(Decimal(1).scaleb(-inst.pair_decimals), rounding=mode)


def status_gate(system: str, pair: str, *, side: str, ordertype: str, post_only: bool) -> str | None:
    """Why a new order may not be sent under these statuses (None: it may).

    maintenance: nothing (wait it out); cancel_only: no new orders; reduce_only: no buys (a long-only
    spot book only reduces by selling); post_only: only post-only limit orders; limit_only: no
    market orders. An unknown status lets nothing through."""
    for where, st, known in (("system", system, SYSTEM_STATUSES), ("pair", pair, PAIR_STATUSES)):
        if st not in known and st != "maintenance":
            return f"{where} status {st!r} is not one this adapter knows: nothing is sent"
        if st == "maintenance":
            return f"{where} in maintenance: wait it out"
        if st == "cancel_only":
            return f"{where} in cancel_only: no new orders"
        if st == "reduce_only" and side == "buy":
            return f"{where} in reduce_only: no new buys"
        if st == "post_only" and (ordertype != "limit" or not post_only):
            return f"{where} in post_only: only post-only limit orders"
        if st == "limit_only" and ordertype != "limit":
            return f"{where} in limit_only: no market orders"
    return None


def check_order(
    rules: PairRules, *, side: str, ordertype: str, volume: Decimal, price: Decimal | None, ref_price: Decimal | None
) -> None:
    """Refuse (OrderRefused) an order Kraken would reject for precision or minimums.

    ``price`` is the limit price (None for a market order); ``ref_price`` the price used for the
    cost minimum of a market order (required then: no market order is sent unchecked). A
    ``volume``, ``price`` or ``ref_price`` that is not a Decimal (a float) raises TypeError."""
    inst = rules.instrument
    for v, what in ((volume, "volume"), (price, "price"), (ref_price, "ref_price")):
        if (v is not None or what == "volume") and not isinstance(v, Decimal):
            raise TypeError(f"{what} must be a Decimal, not {type(v).__name__} {v!r}")
    if side not in ("buy", "sell"):
        raise OrderRefused("bad_side", f"side must be buy or sell, not {side!r}")
    if ordertype not in ("limit", "market"):
        raise OrderRefused("bad_ordertype", f"ordertype must be limit or market, not {ordertype!r}")
    if not isinstance(volume, Decimal) or not volume.is_finite() or volume <= 0:
        raise OrderRefused("bad_volume", f"volume must be a positive Decimal, not {volume!r}")
    if _places(volume) > inst.lot_decimals:
        raise OrderRefused(
            "bad_precision",
            f"{inst.pair} volume {volume} has more than {inst.lot_decimals} decimals (round_volume first)",
        )
    if volume < inst.ordermin:
        raise OrderRefused("below_ordermin", f"{inst.pair} volume {volume} is below ordermin {inst.ordermin}")
    if ordertype == "limit":
        if not isinstance(price, Decimal) or not price.is_finite() or price <= 0:
            raise OrderRefused("bad_price", f"a limit order needs a positive Decimal price, not {price!r}")
        if _places(price) > inst.pair_decimals:
            raise OrderRefused(
                "bad_precision",
                f"{inst.pair} price {price} has more than {inst.pair_decimals} decimals (round_price first)",
            )
        if price % inst.tick_size != 0:
            raise OrderRefused(
                "bad_precision", f"{inst.pair} price {price} is not a multiple of the tick {inst.tick_size}"
            )
        cost_price = price
    else:
        if price is not None:
            raise OrderRefused("bad_price", "a market order takes no price")
        if not isinstance(ref_price, Decimal) or not ref_price.is_finite() or ref_price <= 0:
            raise OrderRefused("no_ref_price", "a market order needs a positive reference price for the cost minimum")
        cost_price = ref_price
    if volume * cost_price < inst.costmin:
        raise OrderRefused("below_costmin", f"{inst.pair} cost {volume * cost_price} is below costmin {inst.costmin}")
