"""The Kraken adapter: python-kraken-sdk wrapped so every call returns a typed
:class:`~live_bridge.kraken.outcome.CallResult` (DONE / REJECTED / UNKNOWN), private calls carry a
persisted, locked nonce, the rate budget is kept client-side, and no order the exchange would
refuse (precision, minimums, market status) is ever sent.

How the SDK is used (python-kraken-sdk 3.x, unmodified):

* ``User`` and ``Trade`` are subclassed only to override ``get_nonce`` (the SDK's hook; its default
  is time-based and unlocked) with :class:`~live_bridge.kraken.nonce.NonceCounter`; the request
  runs inside the counter's lock, so nonces reach Kraken in the order they were drawn.
* The clients run with the SDK's ``_use_custom_exceptions`` off, so every SDK method returns the
  raw ``requests.Response``: the adapter classifies status code, body and error list itself, one
  table for all (the SDK would raise for some error strings, return the raw dict for others
  (``EService:Busy``...), and raise a bare ``Exception`` for a 5xx).
* AssetPairs goes through ``Market.request`` because ``Market.get_asset_pairs`` is lru-cached (a
  daily reload would return the first answer forever). ``Trade.truncate`` / ``create_order(
  truncate=True)`` are never used (they call api.kraken.com through an internal ``Market()``).

Credentials come from ``KRAKEN_API_KEY`` / ``KRAKEN_API_SECRET`` only and are never logged, put
in a repr, an exception or a file (the nonce file is named by a fingerprint of the key).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import logging
import os
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from engine.errors import InputError, KQError
from engine.pairs import normalize_pair

from .budget import RateBudget, RateTier, cancel_penalty
from .nonce import NonceCounter, key_fingerprint
from .outcome import (
    CallResult,
    Halt,
    KrakenHalt,
    Outcome,
    Verdict,
    classify_envelope,
    classify_exception,
    classify_http,
)
from .records import (
    Balances,
    Fill,
    OrderAck,
    OrderInfo,
    parse_add_order,
    parse_balance_ex,
    parse_orders,
    parse_trades,
)
from .rules import MalformedResult, OrderRefused, PairRules, check_order, parse_asset_pairs, status_gate

log = logging.getLogger("live_bridge.kraken")

KRAKEN_URL = "https://api.kraken.com"
# A UUID (long or 32-hex form) or free text of at most 18 characters (kept to a safe alphabet).
CL_ORD_ID_RE = re.compile(
    r"^(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32}|[A-Za-z0-9_.:-]{1,18})$"
)


_UUID_RE = re.compile(
    r"^(?:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
    r"|[0-9a-fA-F]{32})$"
)


def normalize_cl_ord_id(cl_ord_id: str) -> str:
    """One spelling per client order id: a UUID (dashed or 32-hex, any case) as its canonical dashed
    lowercase form; anything else as it is (free-text ids compare exactly)."""
    if _UUID_RE.match(cl_ord_id):
        return str(uuid.UUID(cl_ord_id))
    return cl_ord_id


def same_cl_ord_id(a: str | None, b: str | None) -> bool:
    """True if ``a`` and ``b`` name the same client order id (None matches nothing)."""
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    return normalize_cl_ord_id(a) == normalize_cl_ord_id(b)


class CredentialsError(KQError):
    """Missing or malformed KRAKEN_API_KEY / KRAKEN_API_SECRET (the message never shows them)."""


class Credentials:
    """An API key and its base64 secret. The repr shows a fingerprint only."""

    __slots__ = ("key", "secret")

    def __init__(self, key: str, secret: str) -> None:
        if not key or not key.isascii() or any(c.isspace() for c in key):
            raise CredentialsError("KRAKEN_API_KEY is empty or not a plain ASCII token")
        try:
            raw = base64.b64decode(secret, validate=True) if secret else b""
        except (binascii.Error, ValueError):
            raw = b""
        if not raw:
            raise CredentialsError("KRAKEN_API_SECRET is empty or not valid base64")
        self.key, self.secret = key, secret

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials:
        e = os.environ if env is None else env
        missing = [n for n in ("KRAKEN_API_KEY", "KRAKEN_API_SECRET") if not e.get(n)]
        if missing:
            raise CredentialsError(f"{' and '.join(missing)} not set in the environment")
        return cls(e["KRAKEN_API_KEY"], e["KRAKEN_API_SECRET"])

    @property
    def fingerprint(self) -> str:
        return key_fingerprint(self.key)

    def redact(self, text: str) -> str:
        for s in (self.secret, self.key):
            if s:
                text = text.replace(s, "***")
        return text

    def __repr__(self) -> str:
        return f"Credentials(key=#{self.fingerprint})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled along with something else
        raise TypeError("Credentials are not picklable")


def _sdk_clients(
    creds: Credentials, url: str, nonces: NonceCounter, timeout_s: float, public_timeout_s: float | None = None
):
    from kraken.spot import Market, Trade, User

    class _User(User):
        def get_nonce(self) -> str:  # the SDK's hook for every private request
            return str(nonces.next())

    class _Trade(Trade):
        def get_nonce(self) -> str:
            return str(nonces.next())

    out: list[Any] = []
    for cls in (_User, _Trade):
        c = cls(key=creds.key, secret=creds.secret, url=url)
        out.append(c)
    out.append(Market(url=url))
    for c in out:
        c._use_custom_exceptions = False  # raw requests.Response back: the adapter classifies
        c.TIMEOUT = timeout_s
    out[2].TIMEOUT = timeout_s if public_timeout_s is None else public_timeout_s
    return SdkClients(*out)


@dataclass
class SdkClients:
    """The three SDK clients the adapter drives (tests pass stubs with the same methods)."""

    user: Any
    trade: Any
    market: Any

    def __repr__(self) -> str:
        return "SdkClients(...)"


def _fmt(d: Decimal) -> str:
    return format(d, "f")


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class KrakenAdapter:
    """One API key's connection to Kraken (or to ``kq sim serve``).

    ``state_dir`` holds the nonce counter. ``tier`` is the account's rate-limit tier (starter,
    intermediate, pro, or a :class:`RateTier`). ``timeout_s`` is the HTTP timeout of private calls,
    ``public_timeout_s`` (default: the same) that of SystemStatus / AssetPairs / Time. ``clock``
    (wall time, for nonces and deadlines), ``monotonic`` and ``sleep`` (rate budget, status ages)
    are injectable for tests. ``sdk`` replaces
    the real SDK clients with stubs (tests only)."""

    def __init__(
        self,
        creds: Credentials,
        *,
        state_dir: str | Path,
        url: str = KRAKEN_URL,
        tier: str | RateTier = "starter",
        timeout_s: float = 10.0,
        public_timeout_s: float | None = None,
        deadline_s: float = 5.0,
        status_max_age_s: float = 300.0,
        rules_max_age_s: float = 86400.0,
        nonce_halt_after: int = 2,
        nonce_window_s: float = 900.0,
        lookup_margin_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        budget: RateBudget | None = None,
        sdk: SdkClients | None = None,
    ) -> None:
        if not 2.5 <= deadline_s <= 60:
            raise InputError("deadline_s must be between 2.5 and 60 seconds (Kraken takes now+2 s .. now+60 s)")
        if not 0 < timeout_s <= 60:
            raise InputError("timeout_s must be in (0, 60]")
        if public_timeout_s is not None and not 0 < public_timeout_s <= 60:
            raise InputError("public_timeout_s must be in (0, 60]")
        self._creds = creds
        self.url = url
        self.timeout_s, self.deadline_s = timeout_s, deadline_s
        self.status_max_age_s, self.rules_max_age_s = status_max_age_s, rules_max_age_s
        self.nonce_halt_after, self.nonce_window_s = max(1, nonce_halt_after), nonce_window_s
        self.lookup_margin_s = float(lookup_margin_s)  # REST visibility lag allowed past a deadline
        self.clock, self.monotonic, self.sleep = clock, monotonic, sleep
        self.nonces = NonceCounter(state_dir, creds.key, clock=clock)
        self.budget = budget or RateBudget(tier, clock=monotonic, sleep=sleep)
        self.public_timeout_s = timeout_s if public_timeout_s is None else public_timeout_s
        self._sdk = sdk or _sdk_clients(creds, url, self.nonces, timeout_s, public_timeout_s)
        self._halt: KrakenHalt | None = None
        self._bad_nonces: deque[float] = deque()
        self._lock = threading.RLock()
        self.system_status_value: str | None = None
        self.pairs: dict[str, PairRules] = {}
        self._alt_to_pair: dict[str, str] = {}
        self._status_at: float | None = None
        self._rules_at: float | None = None
        self._placed: dict[str, tuple[str, float]] = {}  # txid / cl_ord_id -> (pair, monotonic placed)
        self._deadlines: dict[str, float] = {}  # normalised cl_ord_id -> latest AddOrder deadline sent
        self.sent: Counter[str] = Counter()  # requests sent, by endpoint

    @classmethod
    def from_env(cls, *, env: Mapping[str, str] | None = None, **kw: Any) -> KrakenAdapter:
        return cls(Credentials.from_env(env), **kw)

    @property
    def calls_sent(self) -> int:
        return sum(self.sent.values())

    def __repr__(self) -> str:
        return f"KrakenAdapter(url={self.url!r}, key=#{self._creds.fingerprint}, halted={self.halted})"

    # ---- halt latch ----------------------------------------------------------------------------
    @property
    def halted(self) -> KrakenHalt | None:
        return self._halt

    def _latch(self, h: KrakenHalt) -> KrakenHalt:
        with self._lock:
            if self._halt is None:
                self._halt = h
                log.error("kraken: HALT %s: %s", h.code.value, h.reason)
        return h

    def reset_halt(self, operator_reason: str) -> None:
        """Operator action: clear the halt latch (after the cause is fixed, e.g. the lockout expired)."""
        with self._lock:
            if self._halt is not None:
                log.warning("kraken: halt %s cleared by operator: %s", self._halt.code.value, operator_reason)
            self._halt = None
            self._bad_nonces.clear()

    # ---- the one call path ---------------------------------------------------------------------
    def _verdict(self, resp: Any) -> Verdict:
        if hasattr(resp, "status_code") and hasattr(resp, "text"):
            return classify_http(int(resp.status_code), str(resp.text))
        if isinstance(resp, dict):
            return classify_envelope(resp, 200, "")
        return Verdict(Outcome.UNKNOWN, (), f"unexpected answer type {type(resp).__name__}")

    def _call(
        self,
        endpoint: str,
        invoke: Callable[[], Any],
        parse: Callable[[Any], Any],
        *,
        private: bool,
        order_pair: str | None = None,
        order_cost: float = 0.0,
    ) -> CallResult:
        h = self._halt
        if h is not None:  # latched: a fresh exception each time (no traceback growing on one instance)
            raise KrakenHalt(h.code, h.reason, h.errors)
        if private:
            self.budget.acquire_rest(endpoint)
        if order_pair is not None and order_cost > 0:
            self.budget.acquire_order(order_pair, order_cost)
        self.sent[endpoint] += 1
        try:
            if private:
                with self.nonces.hold():
                    resp = invoke()
            else:
                resp = invoke()
            v = self._verdict(resp)
        except KrakenHalt as halt:
            raise self._latch(halt) from None
        except OrderRefused:  # refused by invoke itself before anything was sent
            self.sent[endpoint] -= 1
            raise
        except Exception as e:  # network, SDK, anything: not definitive
            v = classify_exception(e)
        redact = self._creds.redact
        errors = tuple(redact(e) for e in v.errors)
        reason, raw = redact(v.reason), redact(v.raw)
        if v.halt is not None:
            raise self._latch(KrakenHalt(v.halt, f"{endpoint}: {reason}", errors))
        if any(e.startswith("EAPI:Invalid nonce") for e in errors):
            now = self.monotonic()
            with self._lock:
                self._bad_nonces.append(now)
                while self._bad_nonces and self._bad_nonces[0] < now - self.nonce_window_s:
                    self._bad_nonces.popleft()
                n = len(self._bad_nonces)
            if n >= self.nonce_halt_after:
                raise self._latch(
                    KrakenHalt(
                        Halt.NONCE,
                        f"{endpoint}: EAPI:Invalid nonce {n} times within {self.nonce_window_s:.0f} s: "
                        "another client uses this key or its nonce state was lost; stop it (or give "
                        "this process its own key) before resuming",
                        errors,
                    )
                )
        if "EAPI:Rate limit exceeded" in errors:
            self.budget.saturate_rest()
        if order_pair is not None and "EOrder:Rate limit exceeded" in errors:
            self.budget.saturate_order(order_pair)
        result = None
        outcome = v.outcome
        if outcome is Outcome.DONE:
            try:
                result = parse(v.payload)
            except (MalformedResult, TypeError, ValueError, AttributeError) as e:
                outcome, reason = Outcome.UNKNOWN, redact(f"malformed result: {e}")
            else:
                with self._lock:
                    self._bad_nonces.clear()
        cr = CallResult(
            endpoint,
            outcome,
            result,
            errors,
            reason,
            v.transient if outcome is Outcome.REJECTED else False,
            v.http_status,
            raw,
        )
        lvl = logging.INFO if outcome is Outcome.DONE else logging.WARNING
        log.log(lvl, "kraken %s -> %s%s", endpoint, outcome.value, f" ({reason})" if reason else "")
        return cr

    # ---- public: status and rules --------------------------------------------------------------
    def public_query(self, endpoint: str, params: dict[str, Any], parse: Callable[[Any], Any]) -> CallResult:
        """One public call, GET /0/public/<endpoint> with ``params``, through the adapter's call path
        (its URL and timeout, outcome classification, halt latch and rate budget); ``parse`` turns
        the result into the returned value (raise MalformedResult for a bad answer -> UNKNOWN)."""
        return self._call(
            endpoint,
            lambda: self._sdk.market.request(method="GET", uri=f"/0/public/{endpoint}", params=params, auth=False),
            parse,
            private=False,
        )

    def server_time(self) -> CallResult[float]:
        return self._call(
            "Time",
            lambda: self._sdk.market.request(method="GET", uri="/0/public/Time", auth=False),
            lambda r: float(r["unixtime"]),
            private=False,
        )

    def system_status(self) -> CallResult[str]:
        def parse(r: Any) -> str:
            st = r.get("status") if isinstance(r, dict) else None
            if not isinstance(st, str):
                raise MalformedResult("SystemStatus: no status")
            return st

        res = self._call("SystemStatus", lambda: self._sdk.market.get_system_status(), parse, private=False)
        if res.done:
            self.system_status_value = res.result
        return res

    def asset_pairs(self) -> CallResult[dict[str, PairRules]]:
        res = self._call(
            "AssetPairs",
            lambda: self._sdk.market.request(method="GET", uri="/0/public/AssetPairs", auth=False),
            parse_asset_pairs,
            private=False,
        )
        if res.done:
            with self._lock:
                self.pairs = dict(res.result or {})
                self._alt_to_pair = {}
                for p, r in self.pairs.items():
                    for alias in (r.instrument.altname, r.instrument.kraken_id, r.instrument.wsname):
                        self._alt_to_pair[alias] = p
                self._rules_at = self.monotonic()
        return res

    def refresh(self) -> bool:
        """Reload SystemStatus and AssetPairs; True if both answered."""
        ok = self.system_status().done
        ok = self.asset_pairs().done and ok
        if ok:
            self._status_at = self.monotonic()
        return ok

    def _fresh(self, at: float | None, max_age: float) -> bool:
        return at is not None and self.monotonic() - at <= max_age

    def rules(self, pair: str) -> PairRules:
        """The pair's rules (reloading AssetPairs when older than ``rules_max_age_s``)."""
        if not self._fresh(self._rules_at, self.rules_max_age_s):
            self.asset_pairs()
        try:
            canon = normalize_pair(pair)
        except InputError:
            raise OrderRefused("unknown_pair", f"unknown pair {pair!r}") from None
        r = self.pairs.get(canon)
        if r is None:
            raise OrderRefused("unknown_pair", f"Kraken lists no pair {canon} (delisted, or AssetPairs unavailable)")
        return r

    def pair_of(self, kraken_name: str) -> str:
        """Canonical name for a Kraken pair id / altname / wsname as found in answers."""
        p = self._alt_to_pair.get(kraken_name)
        if p is not None:
            return p
        try:
            return normalize_pair(kraken_name)
        except InputError:
            return kraken_name

    # ---- private: balances, orders, fills ------------------------------------------------------
    def balances(self) -> CallResult[Balances]:
        return self._call("BalanceEx", lambda: self._sdk.user.get_balances(), parse_balance_ex, private=True)

    def open_orders(self, cl_ord_id: str | None = None, *, trades: bool = True) -> CallResult[dict[str, OrderInfo]]:
        kw: dict[str, Any] = {"trades": trades}
        if cl_ord_id is not None:
            kw["cl_ord_id"] = cl_ord_id
        return self._call(
            "OpenOrders",
            lambda: self._sdk.user.get_open_orders(**kw),
            lambda r: parse_orders(r, "open", self.pair_of),
            private=True,
        )

    def closed_orders(
        self, cl_ord_id: str | None = None, *, start: int | None = None, ofs: int | None = None, trades: bool = True
    ) -> CallResult[dict[str, OrderInfo]]:
        kw: dict[str, Any] = {"trades": trades}
        if cl_ord_id is not None:
            kw["cl_ord_id"] = cl_ord_id
        if start is not None:
            kw["start"] = start
        if ofs is not None:
            kw["ofs"] = ofs
        return self._call(
            "ClosedOrders",
            lambda: self._sdk.user.get_closed_orders(**kw),
            lambda r: parse_orders(r, "closed", self.pair_of),
            private=True,
        )

    def query_orders(
        self, txids: list[str] | tuple[str, ...], *, trades: bool = True
    ) -> CallResult[dict[str, OrderInfo]]:
        """QueryOrders (with trade ids) in batches of 50. Kraken answers ``{}`` for a txid it does not
        show yet: absent is not proof of anything right after AddOrder."""
        ids = list(dict.fromkeys(txids))
        if not ids:
            raise ValueError("query_orders needs at least one txid")
        out: dict[str, OrderInfo] = {}
        last: CallResult | None = None
        for i in range(0, len(ids), 50):
            chunk = ",".join(ids[i : i + 50])
            last = self._call(
                "QueryOrders",
                functools.partial(self._get_orders_info, chunk, trades),
                lambda r: parse_orders(r, None, self.pair_of),
                private=True,
            )
            if not last.done or last.result is None:
                return last
            out.update(last.result)
        assert last is not None
        return CallResult("QueryOrders", Outcome.DONE, out, (), "", False, last.http_status, "")

    def _get_orders_info(self, txids: str, trades: bool) -> Any:
        return self._sdk.user.get_orders_info(txid=txids, trades=trades)

    def find_order(
        self,
        cl_ord_id: str,
        *,
        attempts: int = 1,
        interval_s: float = 2.0,
        sent_at: float | None = None,
        deadline: float | None = None,
        absent_ok_after: float | None = None,
        min_lookups: int = 2,
        margin_s: float | None = None,
    ) -> CallResult[tuple[OrderInfo, ...]]:
        """Every order carrying ``cl_ord_id``, open or closed (the lookup after an UNKNOWN AddOrder).

        DONE with orders: found. UNKNOWN: a lookup was not definitive, or nothing is visible YET.
        DONE with an empty tuple ("absent") only when both hold:

        * the wall clock is past the time after which the order could no longer appear: the latest
          of ``deadline`` + ``margin_s`` (the request's deadline; after a restart, from the ledger),
          ``sent_at`` + ``deadline_s`` + ``margin_s`` (the send time) and ``absent_ok_after`` (an
          explicit time); with none of these given, an empty answer is always UNKNOWN;
        * at least ``min_lookups`` lookups (OpenOrders and ClosedOrders), all empty, started after it.

        Orders show up late over REST and Kraken keeps ``cl_ord_id`` unique among OPEN orders only,
        so "nothing visible" right after a send proves nothing, and resending on it could double a
        position. An empty answer is retried up to ``attempts`` times ``interval_s`` apart (more, up
        to ``min_lookups``, once the time has passed)."""
        self._check_cl_ord_id(cl_ord_id)
        margin = self.lookup_margin_s if margin_s is None else float(margin_s)
        limits = [
            t
            for t in (
                absent_ok_after,
                None if deadline is None else deadline + margin,
                None if sent_at is None else sent_at + self.deadline_s + margin,
            )
            if t is not None
        ]
        known = self._deadlines.get(normalize_cl_ord_id(cl_ord_id))
        if limits and known is not None:  # this process sent it: its real deadline can only be later
            limits.append(known + margin)
        absent_after = max(limits) if limits else None
        lookups = late = 0
        while True:
            if lookups:
                self.sleep(interval_s)
            started = self.clock()
            found: dict[str, OrderInfo] = {}
            for call in (self.open_orders, self.closed_orders):
                r = call(cl_ord_id)
                if not r.done:
                    return CallResult(
                        "find_order",
                        Outcome.UNKNOWN,
                        None,
                        r.errors,
                        f"{r.endpoint}: {r.reason}",
                        False,
                        r.http_status,
                        r.raw,
                    )
                for t, o in (r.result or {}).items():
                    if not same_cl_ord_id(o.cl_ord_id, cl_ord_id):  # never dropped: it may be ours
                        return CallResult(
                            "find_order",
                            Outcome.UNKNOWN,
                            None,
                            (),
                            f"{r.endpoint} filtered by cl_ord_id {cl_ord_id} returned order {t} "
                            f"with cl_ord_id {o.cl_ord_id!r}",
                        )
                    found[t] = o
            lookups += 1
            if found:
                return CallResult("find_order", Outcome.DONE, tuple(sorted(found.values(), key=lambda o: o.opentm)))
            passed = absent_after is not None and started >= absent_after
            late += passed
            if lookups >= max(1, attempts) and (not passed or late >= min_lookups):
                break
        if absent_after is not None and late >= max(1, min_lookups):
            return CallResult("find_order", Outcome.DONE, ())
        why = (
            "no send time or deadline given"
            if absent_after is None
            else f"absent is concluded only after {_rfc3339(absent_after)} and {max(1, min_lookups)} lookups then "
            f"({late} made)"
        )
        return CallResult(
            "find_order",
            Outcome.UNKNOWN,
            None,
            (),
            f"no order with cl_ord_id {cl_ord_id} visible in {lookups} lookup(s): {why}",
        )

    def trades_history(
        self, *, start: float | None = None, end: float | None = None, ofs: int | None = None
    ) -> CallResult[tuple[dict[str, Fill], int]]:
        kw: dict[str, Any] = {}
        for k, v in (("start", start), ("end", end), ("ofs", ofs)):
            if v is not None:
                kw[k] = v
        return self._call(
            "TradesHistory",
            lambda: self._sdk.user.get_trades_history(**kw),
            lambda r: parse_trades(r, self.pair_of),
            private=True,
        )

    # ---- orders --------------------------------------------------------------------------------
    @staticmethod
    def _check_cl_ord_id(cl_ord_id: str) -> None:
        if not isinstance(cl_ord_id, str) or not CL_ORD_ID_RE.match(cl_ord_id):
            raise OrderRefused("bad_cl_ord_id", "cl_ord_id must be a UUID or 1-18 characters of [A-Za-z0-9_.:-]")

    def ensure_fresh(self) -> None:
        """SystemStatus and AssetPairs no older than ``status_max_age_s``, or OrderRefused."""
        if self._fresh(self._status_at, self.status_max_age_s):
            return
        if not self.refresh():
            raise OrderRefused("status_unknown", "market status or pair rules could not be loaded: nothing is sent")

    def order_gate(self, rules: PairRules, *, side: str, ordertype: str, post_only: bool) -> str | None:
        return status_gate(
            self.system_status_value or "unknown", rules.status, side=side, ordertype=ordertype, post_only=post_only
        )

    def add_order(
        self,
        pair: str,
        side: str,
        ordertype: str,
        volume: Decimal,
        *,
        cl_ord_id: str,
        price: Decimal | None = None,
        ref_price: Decimal | None = None,
        post_only: bool = False,
        timeinforce: str | None = None,
        expiretm: int | None = None,
        latest_deadline: float | None = None,
    ) -> CallResult[OrderAck]:
        """Place one order, or raise OrderRefused (nothing sent) if the exchange would refuse it.

        ``volume`` and ``price`` must already be on the pair's grid (:func:`round_volume`,
        :func:`round_price`); ``ref_price`` is required for a market order (cost minimum). The
        request carries ``cl_ord_id`` and a ``deadline`` ``deadline_s`` ahead of the moment it is
        sent (computed after the rate-budget wait, under the nonce lock), so a delayed request is
        refused by the engine instead of executing late; the result's ``deadline`` is that time.
        ``latest_deadline`` (unix seconds; e.g. the deadline a caller ledgered before calling) caps
        it, so the recorded time stays an upper bound; if less than 2 s of it is left at sending,
        OrderRefused("deadline_passed") and nothing is sent. After an UNKNOWN outcome, call
        :meth:`find_order` before anything else; never resend the intent blindly."""
        self._check_cl_ord_id(cl_ord_id)
        self.ensure_fresh()
        rules = self.rules(pair)
        check_order(rules, side=side, ordertype=ordertype, volume=volume, price=price, ref_price=ref_price)
        why = self.order_gate(rules, side=side, ordertype=ordertype, post_only=post_only)
        if why:
            raise OrderRefused("market_status", f"{rules.pair}: {why}")
        if post_only and ordertype != "limit":
            raise OrderRefused("bad_ordertype", "post-only needs a limit order")
        if timeinforce not in (None, "GTC", "IOC", "GTD"):
            raise OrderRefused("bad_timeinforce", f"timeinforce {timeinforce!r}")
        inst = rules.instrument
        kw: dict[str, Any] = {
            "ordertype": ordertype,
            "side": side,
            "pair": inst.altname,
            "volume": _fmt(volume),
            "cl_ord_id": cl_ord_id,
            "validate": False,
            "truncate": False,
        }
        if price is not None:
            kw["price"] = _fmt(price)
        # fee in the quote currency on both sides: Kraken's default for a sell is the BASE currency
        # (fcib), which would take the fee out of the coins sold while every book here (the
        # RiskMachine, the ledger, reconciliation) charges fees in quote
        kw["oflags"] = "post,fciq" if post_only else "fciq"
        if timeinforce is not None:
            kw["timeinforce"] = timeinforce
        if expiretm is not None:
            kw["expiretm"] = str(int(expiretm))
        sent: dict[str, float] = {}

        def send() -> Any:  # runs inside _call: after the budget waits, under the nonce lock
            now = self.clock()
            dl = now + self.deadline_s
            if latest_deadline is not None:
                dl = min(dl, float(latest_deadline))
                if dl - now < 2.0:
                    raise OrderRefused(
                        "deadline_passed",
                        f"less than 2 s left before the latest deadline "
                        f"{_rfc3339(float(latest_deadline))}: nothing sent",
                    )
            kw["deadline"] = _rfc3339(dl)
            sent["deadline"], sent["placed"] = dl, self.monotonic()
            with self._lock:
                key = normalize_cl_ord_id(cl_ord_id)
                self._deadlines[key] = max(dl, self._deadlines.get(key, dl))
            return self._sdk.trade.create_order(**kw)

        res = self._call(
            "AddOrder",
            send,
            lambda r: parse_add_order(r, cl_ord_id),
            private=True,
            order_pair=rules.pair,
            order_cost=1.0,
        )
        res = dataclasses.replace(res, deadline=sent.get("deadline"))
        placed_at = sent.get("placed", self.monotonic())  # its age for the cancel penalty starts at sending
        if res.outcome is not Outcome.REJECTED:  # an UNKNOWN order may exist: keep its age for cancels
            with self._lock:
                self._placed[cl_ord_id] = (rules.pair, placed_at)
                for t in res.result.txids if res.done and res.result is not None else ():
                    self._placed[t] = (rules.pair, placed_at)
        if res.rejected and any(e.startswith("EService:Market in") for e in res.errors):
            self._status_at = None  # the exchange disagrees with our status: reload before the next order
        return res

    def cancel_order(
        self, *, txid: str | None = None, cl_ord_id: str | None = None, pair: str | None = None
    ) -> CallResult[int]:
        """CancelOrder by txid or cl_ord_id -> number cancelled. Always query the order with its
        trades afterwards (a fill can land while the cancel is in flight)."""
        if (txid is None) == (cl_ord_id is None):
            raise ValueError("cancel_order takes exactly one of txid, cl_ord_id")
        ref = txid if txid is not None else cl_ord_id
        assert ref is not None
        if cl_ord_id is not None:
            self._check_cl_ord_id(cl_ord_id)
        known = self._placed.get(ref)
        cpair = known[0] if known else (normalize_pair(pair) if pair else None)
        if cpair is None:
            raise ValueError("cancel_order: pass pair= for an order this adapter did not place")
        cost = cancel_penalty(self.monotonic() - known[1] if known else None)
        kw = {"txid": txid} if txid is not None else {"cl_ord_id": cl_ord_id}

        def parse(r: Any) -> int:
            c = r.get("count") if isinstance(r, dict) else None
            if not isinstance(c, int):
                raise MalformedResult("CancelOrder: no count")
            return c

        return self._call(
            "CancelOrder",
            lambda: self._sdk.trade.cancel_order(**kw),
            parse,
            private=True,
            order_pair=cpair,
            order_cost=cost,
        )
