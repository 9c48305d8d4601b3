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
                     not executed. A ``W...`` message (a Kraken warning) is different: the request
                     IS executed and the warning is added to the ``error`` list of its normal answer.
  ``lockout``        the calling key is locked out for ``seconds``: EGeneral:Temporary lockout.
order faults (taken by the next AddOrder(s) inside the window; ``pair`` optional):
  ``partial_fills``  the order fills over ``polls`` later QueryOrders/OpenOrders polls.
  ``stuck_open``     the order never fills (until cancelled).
  ``invisible``      the order is missing from QueryOrders/OpenOrders/ClosedOrders for ``seconds``
                     wall seconds after AddOrder.
market faults (in force inside their sim-time window; ``pair`` optional = every pair):
  ``market_status``  ``status`` = cancel_only | post_only | limit_only | reduce_only | maintenance |
                     online. Without ``pair``, limit_only / reduce_only hold for every pair while
                     SystemStatus stays online (Kraken has them as pair statuses only).
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
from decimal import Decimal
from typing import Any

from engine.errors import InputError

from .numbers import MAX_TIME, BadNumber, decimal_of, float_of, int_of

REQUEST_KINDS = {"timeout", "http_error", "http_429", "truncated_json", "error", "lockout"}
ORDER_KINDS = {"partial_fills", "stuck_open", "invisible"}
MARKET_KINDS = {
    "market_status",
    "spread_blowup",
    "price_gap",
    "missing_candle",
    "late_candle",
    "empty_book",
    "stale_ticker",
    "clock_skew",
    "delist",
    "rules_change",
}
RULE_FIELDS = {"ordermin", "costmin", "tick_size", "pair_decimals", "lot_decimals"}
KINDS = REQUEST_KINDS | ORDER_KINDS | MARKET_KINDS
SYSTEM_STATUSES = {"online", "cancel_only", "post_only", "maintenance"}  # SystemStatus values
PAIR_ONLY_STATUSES = {"limit_only", "reduce_only"}  # AssetPairs status values a venue-wide status never takes
STATUSES = SYSTEM_STATUSES | PAIR_ONLY_STATUSES


# Parameters each kind takes: name -> parser (value, field name) -> typed value. Anything else is refused.
def _secs(hi: float, lo: float = 0.0):
    return lambda v, w: float_of(v, w, lo, hi)


def _bool(v: Any, w: str) -> bool:
    if not isinstance(v, bool):
        raise BadNumber(f"{w} must be true or false")
    return v


def _status_code(v: Any, w: str) -> int:
    return int_of(v, w, 400, 599)


def _message(v: Any, w: str) -> str:
    if not (isinstance(v, str) and v[:1] in ("E", "W") and len(v) <= 200 and v.isascii() and v.isprintable()):
        raise InputError(
            "error fault needs a Kraken error (EService:Busy, ...) or warning (WGeneral:...) "
            "message: printable ASCII, at most 200 characters"
        )
    return v


def _status(v: Any, w: str) -> str:
    if v not in STATUSES:
        raise InputError(f"market_status needs status in {sorted(STATUSES)}")
    return v


def _positive(hi: float):
    def parse(v: Any, w: str) -> float:
        x = float_of(v, w, 0, hi)
        if x <= 0:
            raise BadNumber(f"{w} must be > 0")
        return x

    return parse


def _rule_amount(v: Any, w: str) -> str:
    d = decimal_of(v, w, 0, 10**9)
    if d < Decimal("1e-12"):
        raise BadNumber(f"{w} must be >= 1e-12")
    return str(d)


PARAMS: dict[str, dict[str, Any]] = {
    "timeout": {"seconds": _secs(600.0), "apply": _bool},
    "http_error": {"status": _status_code, "apply": _bool},
    "http_429": {},
    "truncated_json": {"apply": _bool},
    "error": {"message": _message},
    "lockout": {"seconds": _secs(86400.0)},
    "partial_fills": {"polls": lambda v, w: int_of(v, w, 1, 1000)},
    "stuck_open": {},
    "invisible": {"seconds": _secs(3600.0)},
    "market_status": {"status": _status},
    "spread_blowup": {"factor": _positive(1000.0)},
    "price_gap": {"factor": _positive(100.0)},
    "missing_candle": {"ts": lambda v, w: int_of(v, w, 0, int(MAX_TIME))},
    "late_candle": {"delay": _secs(86400.0)},
    "empty_book": {},
    "stale_ticker": {},
    "clock_skew": {"seconds": _secs(1e7, -1e7)},
    "delist": {},
    "rules_change": {
        "ordermin": _rule_amount,
        "costmin": _rule_amount,
        "tick_size": _rule_amount,
        "pair_decimals": lambda v, w: int_of(v, w, 0, 12),
        "lot_decimals": lambda v, w: int_of(v, w, 0, 12),
    },
}
REQUIRED = {
    "error": {"message"},
    "market_status": {"status"},
    "spread_blowup": {"factor"},
    "price_gap": {"factor"},
    "missing_candle": {"ts"},
}
COMMON = {"kind", "endpoint", "pair", "from_ts", "until_ts", "count", "params"}
MAX_FAULTS = 1000


def _time_or_none(v: Any, w: str) -> float | None:
    return None if v is None else float_of(v, w, 0, MAX_TIME)


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
    def from_dict(cls, d: Any, resolve_pair) -> Fault:
        """A validated fault from a caller's JSON object; InputError names what is wrong."""
        if not isinstance(d, dict):
            raise InputError("a fault must be a JSON object")
        kind = d.get("kind")
        if not isinstance(kind, str) or kind not in KINDS:
            raise InputError(f"unknown fault kind {kind!r} (one of {', '.join(sorted(KINDS))})")
        nested = d.get("params", {})
        if not isinstance(nested, dict):
            raise InputError("params must be a JSON object")
        params = {k: v for k, v in d.items() if k not in COMMON}
        dupes = set(params) & set(nested)
        if dupes:
            raise InputError(f"{sorted(dupes)} given twice (top level and params)")
        params |= nested
        allowed = PARAMS[kind]
        bad = sorted(set(params) - set(allowed))
        if bad:
            raise InputError(f"{kind} takes {sorted(allowed) or 'no parameters'}, not {bad}")
        missing = sorted(REQUIRED.get(kind, set()) - set(params))
        if missing:
            raise InputError(f"{kind} needs {', '.join(missing)}")
        if kind == "rules_change" and not params:
            raise InputError(f"rules_change takes {sorted(RULE_FIELDS)}, not nothing")
        try:
            params = {k: allowed[k](v, f"{kind}.{k}") for k, v in params.items()}
            endpoint = d.get("endpoint", "*")
            if not isinstance(endpoint, str) or not (
                endpoint == "*" or (endpoint.isascii() and endpoint.isalpha() and len(endpoint) <= 40)
            ):
                raise InputError("endpoint must be a Kraken method name (AddOrder, Ticker, ...) or *")
            pair = d.get("pair")
            if pair is not None:
                p = resolve_pair(pair) if isinstance(pair, str) and len(pair) <= 40 else None
                if p is None:
                    raise InputError(f"fault names unknown pair {pair!r}")
                pair = p
            from_ts, until_ts = _time_or_none(d.get("from_ts"), "from_ts"), _time_or_none(d.get("until_ts"), "until_ts")
            if from_ts is not None and until_ts is not None and until_ts < from_ts:
                raise InputError("until_ts is before from_ts")
            count = d.get("count", 1 if kind in REQUEST_KINDS | ORDER_KINDS else None)
            count = None if count is None else int_of(count, "count", 1, 10**6)
        except BadNumber as e:
            raise InputError(str(e)) from None
        if kind == "price_gap" and from_ts is None:
            raise InputError("price_gap needs from_ts")
        if kind in {"delist", "rules_change"} and pair is None:
            raise InputError(f"{kind} needs a pair")
        return cls(
            kind=kind, endpoint=endpoint, pair=pair, from_ts=from_ts, until_ts=until_ts, count=count, params=params
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "endpoint": self.endpoint,
            "pair": self.pair,
            "from_ts": self.from_ts,
            "until_ts": self.until_ts,
            "count": self.count,
            "fired": self.fired,
            **self.params,
        }

    def in_window(self, now: float) -> bool:
        return (self.from_ts is None or now >= self.from_ts) and (self.until_ts is None or now < self.until_ts)

    def exhausted(self) -> bool:
        return self.count is not None and self.fired >= self.count

    def gap_start(self) -> float:
        """A price_gap's ``from_ts`` (from_dict refuses a price_gap without one)."""
        if self.from_ts is None:
            raise InputError("price_gap needs from_ts")
        return float(self.from_ts)


class FaultPlan:
    def __init__(self) -> None:
        self.faults: list[Fault] = []

    def add(self, f: Fault) -> None:
        self.faults.append(f)

    def clear(self) -> None:
        self.faults.clear()

    def take_request(self, endpoint: str, now: float) -> Fault | None:
        for f in self.faults:
            if f.kind in REQUEST_KINDS and f.endpoint in ("*", endpoint) and f.in_window(now) and not f.exhausted():
                f.fired += 1
                return f
        return None

    def take_order(self, pair: str, now: float) -> list[Fault]:
        out = []
        for f in self.faults:
            if f.kind in ORDER_KINDS and (f.pair is None or f.pair == pair) and f.in_window(now) and not f.exhausted():
                f.fired += 1
                out.append(f)
        return out

    def status(self, pair: str | None, now: float) -> str | None:
        """A market_status fault in force for this pair, or for the venue when pair is None (then a
        pair-only status, limit_only / reduce_only, is not the venue's)."""
        for f in self.faults:
            if f.kind == "market_status" and f.in_window(now) and (f.pair is None or f.pair == pair):
                if pair is None and f.params["status"] in PAIR_ONLY_STATUSES:
                    continue
                return str(f.params["status"])
        return None

    def apply_market(self, market) -> None:
        """Rebuild the market's fault lists from the plan."""
        market.gaps = [(f.pair, f.gap_start(), float(f.params["factor"])) for f in self.faults if f.kind == "price_gap"]
        market.missing = set()
        for f in self.faults:
            if f.kind == "missing_candle":
                pairs = [f.pair] if f.pair else list(market.panel.pairs)
                market.missing |= {(p, int(f.params["ts"])) for p in pairs}
        market.spread_blowups = [
            (
                f.pair,
                float(f.from_ts if f.from_ts is not None else float("-inf")),
                float(f.until_ts if f.until_ts is not None else float("inf")),
                float(f.params["factor"]),
            )
            for f in self.faults
            if f.kind == "spread_blowup"
        ]

        def win(f):
            return (
                float(f.from_ts if f.from_ts is not None else float("-inf")),
                float(f.until_ts if f.until_ts is not None else float("inf")),
            )

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
        market.late = [
            (
                float(f.from_ts if f.from_ts is not None else float("-inf")),
                float(f.until_ts if f.until_ts is not None else float("inf")),
                float(f.params.get("delay", 600)),
            )
            for f in self.faults
            if f.kind == "late_candle"
        ]

    def to_list(self) -> list[dict[str, Any]]:
        return [f.to_dict() for f in self.faults]

    def load(self, items: Any, resolve_pair) -> None:
        """Restore a saved plan, validated like a new one (a bad saved plan raises InputError)."""
        if not isinstance(items, list):
            raise InputError("the saved fault plan is not a list")
        faults = []
        for d in items:
            if not isinstance(d, dict):
                raise InputError("a saved fault is not a JSON object")
            d = dict(d)
            fired = d.pop("fired", 0)
            f = Fault.from_dict(d, resolve_pair)
            try:
                f.fired = int_of(fired, "fired", 0)
            except BadNumber as e:
                raise InputError(str(e)) from None
            faults.append(f)
        self.faults = faults
