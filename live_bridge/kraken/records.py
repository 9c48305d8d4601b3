"""Typed results: balances (BalanceEx), orders, fills and order acknowledgements, all in Decimal."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from engine.errors import InputError
from engine.pairs import normalize_asset

from .rules import MalformedResult, dec

ZERO = Decimal(0)


@dataclass(frozen=True)
class AssetBalance:
    asset: str  # common code (BTC) for tradable assets, Kraken's id (XBT.F) otherwise
    kraken_id: str
    balance: Decimal
    hold_trade: Decimal

    @property
    def available(self) -> Decimal:
        """balance - hold_trade, never below zero (a credit line, if any, is ignored)."""
        return max(ZERO, self.balance - self.hold_trade)


@dataclass(frozen=True)
class Balances:
    """``tradable``: spot balances of assets this system knows, by common code. ``staked``:
    staking/rewards balances (``XBT.F``, ``DOT.S``, ``ETH2.M``, ``.B``, ``.P`` ...), reported only,
    never tradable. ``other``: assets this system does not know (fee credits, ...), reported only."""

    tradable: dict[str, AssetBalance]
    staked: dict[str, AssetBalance]
    other: dict[str, AssetBalance]

    def available(self, asset: str) -> Decimal:
        b = self.tradable.get(normalize_asset(asset))
        return b.available if b is not None else ZERO


def parse_balance_ex(result: Any) -> Balances:
    if not isinstance(result, dict):
        raise MalformedResult("BalanceEx: result is not an object")
    tradable: dict[str, AssetBalance] = {}
    staked: dict[str, AssetBalance] = {}
    other: dict[str, AssetBalance] = {}
    for kid, e in result.items():
        kid = str(kid)
        if not isinstance(e, dict):
            raise MalformedResult(f"BalanceEx {kid}: not an object")
        bal = dec(e.get("balance"), f"BalanceEx {kid}.balance")
        # no default: a missing hold_trade read as 0 would overstate what is available
        hold = dec(e.get("hold_trade"), f"BalanceEx {kid}.hold_trade")
        if "." in kid:
            staked[kid] = AssetBalance(kid, kid, bal, hold)
            continue
        try:
            code = normalize_asset(kid)
        except InputError:
            other[kid] = AssetBalance(kid, kid, bal, hold)
            continue
        prev = tradable.get(code)
        if prev is not None:  # two ids for one asset: add them up
            bal, hold = bal + prev.balance, hold + prev.hold_trade
        tradable[code] = AssetBalance(code, kid, bal, hold)
    return Balances(tradable, staked, other)


@dataclass(frozen=True)
class OrderInfo:
    txid: str
    pair: str  # canonical (BTC/USD) where known, else Kraken's altname
    side: str
    ordertype: str
    status: str  # pending | open | closed | canceled | expired
    vol: Decimal
    vol_exec: Decimal
    cost: Decimal  # quote spent/received, fee excluded
    fee: Decimal  # quote currency
    avg_price: Decimal
    limit_price: Decimal
    cl_ord_id: str | None
    userref: int | None
    opentm: float
    closetm: float | None
    reason: str | None
    trades: tuple[str, ...]
    oflags: str

    @property
    def final(self) -> bool:
        return self.status in ("closed", "canceled", "expired")


def parse_order(txid: str, e: Any, pair_of: Callable[[str], str]) -> OrderInfo:
    if not isinstance(e, dict) or not isinstance(e.get("descr"), dict):
        raise MalformedResult(f"order {txid}: not an order object")
    d = e["descr"]
    w = f"order {txid}"
    trades = e.get("trades") or []
    if not isinstance(trades, list):
        raise MalformedResult(f"{w}.trades: not a list")
    uref = e.get("userref")
    closetm = e.get("closetm")
    status = e.get("status")
    if not isinstance(status, str) or not status:
        raise MalformedResult(f"{w}.status: missing")
    return OrderInfo(
        txid=str(txid),
        pair=pair_of(str(d.get("pair", ""))),
        side=str(d.get("type", "")),
        ordertype=str(d.get("ordertype", "")),
        status=status,
        # no defaults: a missing vol_exec / cost / fee read as 0 would hide a fill
        vol=dec(e.get("vol"), f"{w}.vol"),
        vol_exec=dec(e.get("vol_exec"), f"{w}.vol_exec"),
        cost=dec(e.get("cost"), f"{w}.cost"),
        fee=dec(e.get("fee"), f"{w}.fee"),
        avg_price=dec(e.get("price"), f"{w}.price"),
        limit_price=dec(d.get("price", "0"), f"{w}.descr.price"),
        cl_ord_id=e.get("cl_ord_id"),
        userref=uref if isinstance(uref, int) and uref else None,
        opentm=float(e.get("opentm") or 0.0),
        closetm=float(closetm) if closetm else None,
        reason=e.get("reason"),
        trades=tuple(str(t) for t in trades),
        oflags=str(e.get("oflags", "")),
    )


def parse_orders(result: Any, key: str | None, pair_of: Callable[[str], str]) -> dict[str, OrderInfo]:
    """OpenOrders (key "open"), ClosedOrders ("closed") or QueryOrders (key None) -> txid -> order."""
    if not isinstance(result, dict):
        raise MalformedResult("orders: result is not an object")
    body = result.get(key) if key else result
    if not isinstance(body, dict):
        raise MalformedResult(f"orders: {key!r} is not an object")
    return {str(t): parse_order(str(t), e, pair_of) for t, e in body.items()}


@dataclass(frozen=True)
class Fill:
    trade_id: str  # Kraken's trade txid (the key fills are deduplicated by)
    ordertxid: str
    pair: str
    time: float
    side: str
    ordertype: str
    price: Decimal
    vol: Decimal
    cost: Decimal
    fee: Decimal  # quote currency, as Kraken charged it
    maker: bool | None


def parse_trades(result: Any, pair_of: Callable[[str], str]) -> tuple[dict[str, Fill], int]:
    if not isinstance(result, dict) or not isinstance(result.get("trades"), dict):
        raise MalformedResult("TradesHistory: no trades object")
    out = {}
    for tid, e in result["trades"].items():
        if not isinstance(e, dict):
            raise MalformedResult(f"trade {tid}: not an object")
        w = f"trade {tid}"
        mk = e.get("maker")
        out[str(tid)] = Fill(
            trade_id=str(tid),
            ordertxid=str(e.get("ordertxid", "")),
            pair=pair_of(str(e.get("pair", ""))),
            time=float(e.get("time") or 0.0),
            side=str(e.get("type", "")),
            ordertype=str(e.get("ordertype", "")),
            price=dec(e.get("price"), f"{w}.price"),
            vol=dec(e.get("vol"), f"{w}.vol"),
            cost=dec(e.get("cost"), f"{w}.cost"),
            fee=dec(e.get("fee"), f"{w}.fee"),
            maker=mk if isinstance(mk, bool) else None,
        )
    count = result.get("count", len(out))
    return out, int(count) if isinstance(count, int) else len(out)


@dataclass(frozen=True)
class OrderAck:
    """AddOrder's answer: the txid(s) Kraken assigned and its description of the order."""

    txids: tuple[str, ...]
    descr: str
    cl_ord_id: str


def parse_add_order(result: Any, cl_ord_id: str) -> OrderAck:
    if not isinstance(result, dict):
        raise MalformedResult("AddOrder: result is not an object")
    tx = result.get("txid")
    if not isinstance(tx, list) or not tx or not all(isinstance(t, str) and t for t in tx):
        raise MalformedResult("AddOrder: no txid in the answer (validate-only, or a malformed answer)")
    d = result.get("descr")
    if not isinstance(d, dict):
        d = {}
    return OrderAck(tuple(tx), str(d.get("order", "")), cl_ord_id)
