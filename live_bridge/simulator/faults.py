"""Scriptable faults, per endpoint and per simulated time (POST /admin/faults).

A fault is a JSON object ``{"kind": ..., "endpoint": "AddOrder" | "*", "pair": ..., "from_ts": ...,
"until_ts": ..., "count": n, ...}``. ``from_ts``/``until_ts`` bound it in *simulated* time (either
may be omitted); ``count`` is how many times a request/order fault fires (default 1; ``null`` means
every time inside its window). Kinds:

request faults (matched on the endpoint name, e.g. ``AddOrder``, ``Ticker``, or ``*``):
  ``timeout``        sleep ``seconds`` (default 11, past the SDK's 10 s) before answering; with
                     ``apply`` true the request is executed first (a ghost order), else it is not
                     and the late answer is an HTML 504.
  ``http_error``     HTTP ``status`` (default 502) with an HTML body; ``apply`` as above.
  ``http_429``       HTTP 429 Too Many Requests, not executed.
  ``truncated_json`` the real answer (the request IS executed) cut in half.
  ``error``          the Kraken error ``message`` (EService:Unavailable, EService:Busy,
                     EService:Throttled:<ts>, EAPI:Rate limit exceeded, EAPI:Invalid nonce, ...),
                     not executed.
  ``lockout``        the calling key is locked out for ``seconds``: EGeneral:Temporary lockout.
order faults (taken by the next AddOrder(s) inside the window; ``pair`` optional):
  ``partial_fills``  the order fills over ``polls`` later QueryOrders/OpenOrders polls.
  ``stuck_open``     the order never fills (until cancelled).
  ``invisible``      the order is missing from QueryOrders/OpenOrders/ClosedOrders for ``seconds``
                     wall seconds after AddOrder.
market faults (in force inside their sim-time window; ``pair`` optional = every pair):
  ``market_status``  ``status`` = cancel_only | post_only | maintenance | online.
  ``spread_blowup``  spread times ``factor``.
  ``price_gap``      every bar from ``from_ts`` on is scaled by ``factor`` (a 10-30 % gap).
  ``missing_candle`` the bar at ``ts`` does not exist (no OHLC row, no fills).
  ``late_candle``    bars are committed ``delay`` seconds after they close.
  ``empty_book``     Depth has no levels.
  ``stale_ticker``   Ticker stays frozen at its value at ``from_ts``.
  ``clock_skew``     Time reports the simulated time plus ``seconds``.
market rule changes (take effect when posted, until the faults are cleared; ``pair`` required):
  ``delist``         the pair disappears from AssetPairs/Ticker/OHLC/Depth, AddOrder answers
                     EQuery:Unknown asset pair, and its open orders are cancelled ("Pair delisted").
  ``rules_change``   new ``ordermin`` / ``costmin`` / ``tick_size`` / ``pair_decimals`` /
                     ``lot_decimals`` for the pair (AssetPairs shows them, AddOrder enforces them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import InputError

REQUEST_KINDS = {"timeout", "http_error", "http_429", "truncated_json", "error", "lockout"}
ORDER_KINDS = {"partial_fills", "stuck_open", "invisible"}
MARKET_KINDS = {"market_status", "spread_blowup", "price_gap", "missing_candle", "late_candle", "empty_book",
                "stale_ticker", "clock_skew", "delist", "rules_change"}
RULE_FIELDS = {"ordermin", "costmin", "tick_size", "pair_decimals", "lot_decimals"}
KINDS = REQUEST_KINDS | ORDER_KINDS | MARKET_KINDS
STATUSES = {"online", "cancel_only", "post_only", "maintenance"}


@dataclass
class Fault:
    kind: str
    endpoint: str = "*"
    pair: str | None = None
    from_ts: float | None = None
    until_ts: float | None = None
    count: int | None = 1
    params: dict[str, Any] = field(default_factory=dict)
    fired: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any], resolve_pair) -> "Fault":
        d = dict(d)
        kind = d.pop("kind", None)
        if kind not in KINDS:
            raise InputError(f"unknown fault kind {kind!r} (one of {', '.join(sorted(KINDS))})")
        pair = d.pop("pair", None)
        if pair is not None:
            p = resolve_pair(pair)
            if p is None:
                raise InputError(f"fault names unknown pair {pair!r}")
            pair = p
        f = cls(kind=kind, endpoint=str(d.pop("endpoint", "*")), pair=pair,
                from_ts=d.pop("from_ts", None), until_ts=d.pop("until_ts", None),
                count=d.pop("count", 1 if kind in REQUEST_KINDS | ORDER_KINDS else None),
                params=d.pop("params", {}) | d)
        if kind == "market_status" and f.params.get("status") not in STATUSES:
            raise InputError(f"market_status needs status in {sorted(STATUSES)}")
        if kind == "missing_candle" and "ts" not in f.params:
            raise InputError("missing_candle needs ts")
        if kind in {"spread_blowup", "price_gap"} and not float(f.params.get("factor", 0)) > 0:
            raise InputError(f"{kind} needs a positive factor")
        if kind == "price_gap" and f.from_ts is None:
            raise InputError("price_gap needs from_ts")
        if kind in {"delist", "rules_change"} and pair is None:
            raise InputError(f"{kind} needs a pair")
        if kind == "rules_change":
            bad = set(f.params) - RULE_FIELDS
            if bad or not f.params:
                raise InputError(f"rules_change takes {sorted(RULE_FIELDS)}, not {sorted(bad) or 'nothing'}")
        if kind == "error" and not str(f.params.get("message", "")).startswith("E"):
            raise InputError("error fault needs a Kraken error message (EService:Busy, ...)")
        return f

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "endpoint": self.endpoint, "pair": self.pair, "from_ts": self.from_ts,
                "until_ts": self.until_ts, "count": self.count, "fired": self.fired, **self.params}

    def in_window(self, now: float) -> bool:
        return (self.from_ts is None or now >= self.from_ts) and (self.until_ts is None or now < self.until_ts)

    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count


class FaultPlan:
    def __init__(self) -> None:
        self.faults: list[Fault] = []

    def add(self, f: Fault) -> None:
        self.faults.append(f)

    def clear(self) -> None:
        self.faults.clear()

    def take_request(self, endpoint: str, now: float) -> Fault | None:
        for f in self.faults:
            if (f.kind in REQUEST_KINDS and f.endpoint in ("*", endpoint) and f.in_window(now)
                    and not f.exhausted()):
                f.fired += 1
                return f
        return None

    def take_order(self, pair: str, now: float) -> list[Fault]:
        out = []
        for f in self.faults:
            if (f.kind in ORDER_KINDS and (f.pair is None or f.pair == pair) and f.in_window(now)
                    and not f.exhausted()):
                f.fired += 1
                out.append(f)
        return out

    def status(self, pair: str | None, now: float) -> str | None:
        """A market_status fault in force for this pair (or globally when pair is None)."""
        for f in self.faults:
            if f.kind == "market_status" and f.in_window(now) and (f.pair is None or f.pair == pair):
                return str(f.params["status"])
        return None

    def apply_market(self, market) -> None:
        """Rebuild the market's fault lists from the plan."""
        market.gaps = [(f.pair, float(f.from_ts), float(f.params["factor"]))
                       for f in self.faults if f.kind == "price_gap"]
        market.missing = set()
        for f in self.faults:
            if f.kind == "missing_candle":
                pairs = [f.pair] if f.pair else list(market.panel.pairs)
                market.missing |= {(p, int(f.params["ts"])) for p in pairs}
        market.spread_blowups = [(f.pair, float(f.from_ts if f.from_ts is not None else float("-inf")),
                                  float(f.until_ts if f.until_ts is not None else float("inf")),
                                  float(f.params["factor"])) for f in self.faults if f.kind == "spread_blowup"]
        def win(f):
            return (float(f.from_ts if f.from_ts is not None else float("-inf")),
                    float(f.until_ts if f.until_ts is not None else float("inf")))

        market.empty_book = [(f.pair, *win(f)) for f in self.faults if f.kind == "empty_book"]
        market.stale = [(f.pair, *win(f)) for f in self.faults if f.kind == "stale_ticker"]
        market.skew = [(*win(f), float(f.params.get("seconds", 0))) for f in self.faults if f.kind == "clock_skew"]
        market.delisted = {f.pair for f in self.faults if f.kind == "delist"}
        from dataclasses import replace
        from decimal import Decimal

        market.instruments = dict(market.base_instruments)
        for f in self.faults:
            if f.kind == "rules_change":
                ch = {k: (int(v) if k.endswith("decimals") else Decimal(str(v))) for k, v in f.params.items()}
                market.instruments[f.pair] = replace(market.instruments[f.pair], **ch)
        market.late = [(float(f.from_ts if f.from_ts is not None else float("-inf")),
                        float(f.until_ts if f.until_ts is not None else float("inf")),
                        float(f.params.get("delay", 600))) for f in self.faults if f.kind == "late_candle"]

    def to_list(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self.faults]

    def load(self, items: list[dict[str, Any]]) -> None:
        self.faults = []
        for d in items:
            d = dict(d)
            fired = d.pop("fired", 0)
            f = Fault(kind=d.pop("kind"), endpoint=d.pop("endpoint", "*"), pair=d.pop("pair", None),
                      from_ts=d.pop("from_ts", None), until_ts=d.pop("until_ts", None),
                      count=d.pop("count", None), params=d, fired=fired)
            self.faults.append(f)
