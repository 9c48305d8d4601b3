"""The HTTP face of the simulator: Kraken's spot REST API at ``/0/public/*`` and ``/0/private/*``,
and an admin API under ``/admin/*`` (clock, faults, market status, rate limits, balances, full state).

Kraken conventions kept: every answer is ``{"error": [...], "result": ...}`` (both keys, HTTP 200
for API errors), numbers are decimal strings, result keys are Kraken pair ids whatever alias was
asked. Private calls are checked like Kraken does: API-Key known, API-Sign =
base64(HMAC-SHA512(base64decode(secret), path + SHA256(nonce + body))) over the exact body, nonce
strictly increasing per key, a REST rate counter with decay, and a temporary lockout after
repeated bad keys/signatures/nonces.

Access control (docs/SECURITY.md): every request must name a loopback host in its ``Host`` header
(no DNS rebinding) and carry no foreign ``Origin`` (no web page may drive it); the admin API also
needs ``Authorization: Bearer <token>`` (``KQ_SIM_ADMIN_TOKEN``, compared in constant time) and
JSON bodies only. Without a token the admin API is off. Admin refusals are 4xx JSON
``{"error": "..."}``; Kraken paths always answer Kraken's envelope.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import re
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.errors import InputError

from .config import RateLimitConfig
from .exchange import Account, Exchange, KrakenAPIError
from .faults import MAX_FAULTS, PAIR_ONLY_STATUSES, STATUSES, Fault
from .numbers import MAX_AMOUNT, MAX_STEP, MAX_TIME, BadNumber, decimal_of, float_of, int_of

PUBLIC = ("Time", "SystemStatus", "Assets", "AssetPairs", "Ticker", "OHLC", "Depth")
PRIVATE = (
    "Balance",
    "BalanceEx",
    "TradeBalance",
    "OpenOrders",
    "ClosedOrders",
    "QueryOrders",
    "TradesHistory",
    "QueryTrades",
    "AddOrder",
    "CancelOrder",
    "CancelAll",
    "CancelAllOrdersAfter",
)
HISTORY_CALLS = {"ClosedOrders", "TradesHistory", "QueryTrades", "Ledgers", "QueryLedgers"}
UNCOUNTED = {"AddOrder", "CancelOrder"}  # they count on the matching-engine counter instead

HTML_ERROR = (
    "<html><head><title>{code} {text}</title></head><body><center><h1>{code} {text}</h1>"
    "</center><hr><center>cloudflare</center></body></html>"
)
HTTP_TEXT = {
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Time-out",
    520: "Web Server Returned an Unknown Error",
    429: "Too Many Requests",
}


# Kraken's published limits per verification tier: REST counter (ceiling, decay per second) and the
# per-pair matching-engine counter (threshold, decay per second).
RATE_TIERS: dict[str, dict[str, float]] = {
    "starter": {"max_counter": 15.0, "decay_per_s": 0.33, "order_max_counter": 60.0, "order_decay_per_s": 1.0},
    "intermediate": {"max_counter": 20.0, "decay_per_s": 0.5, "order_max_counter": 125.0, "order_decay_per_s": 2.34},
    "pro": {"max_counter": 20.0, "decay_per_s": 1.0, "order_max_counter": 180.0, "order_decay_per_s": 3.75},
}
# Settable counter fields: (low, high, integer?)
LIMIT_FIELDS: dict[str, tuple[float, float, bool]] = {
    "max_counter": (0.0, 1e12, False),
    "decay_per_s": (0.0, 1e12, False),
    "order_max_counter": (0.0, 1e12, False),
    "order_decay_per_s": (0.0, 1e12, False),
    "lockout_after": (1, 10**6, True),
    "lockout_window_s": (0.0, 7 * 86400.0, False),
    "lockout_s": (0.0, 7 * 86400.0, False),
}

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
ADMIN_MAX_BODY = 64 * 1024
KRAKEN_MAX_BODY = 256 * 1024
INVALID = "EGeneral:Invalid arguments"
log = logging.getLogger(__name__)


async def read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None if it is longer than ``limit`` bytes (not read past the limit)."""
    n = request.headers.get("content-length", "")
    if n.isascii() and n.isdigit() and int(n) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


MIN_TOKEN_LEN = 16


def check_admin_token(token: str | None) -> str:
    """The admin token as given, or InputError: 16-512 printable ASCII characters, no spaces."""
    if not token:
        raise InputError(
            "KQ_SIM_ADMIN_TOKEN is not set: the simulator's admin API needs a bearer token, e.g. "
            "export KQ_SIM_ADMIN_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )
    if not (MIN_TOKEN_LEN <= len(token) <= 512 and all(33 <= ord(c) < 127 for c in token)):
        raise InputError(f"KQ_SIM_ADMIN_TOKEN must be {MIN_TOKEN_LEN} to 512 printable ASCII characters without spaces")
    return token


def host_name(header: str) -> str:
    """The host name of a ``Host`` header (``[::1]:8765`` -> ``::1``); "" if malformed."""
    h = header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        if end < 0:
            return ""
        name, rest = h[1:end], h[end + 1 :]
    else:
        name, sep, port = h.partition(":")
        rest = sep + port
    if rest and not (rest[0] == ":" and 1 <= len(rest) <= 6 and rest[1:].isascii() and rest[1:].isdigit()):
        return ""
    return name


def foreign_request(headers) -> str | None:
    """Why a request is refused before anything else: a non-loopback Host or a foreign Origin."""
    host = headers.get("host")
    if host is None or host_name(host) not in LOOPBACK_HOSTS:
        return "Host must name the loopback address the simulator is bound to"
    origin = headers.get("origin")
    if origin is not None:
        try:
            u = urlsplit(origin)
            ok = u.scheme in ("http", "https") and (u.hostname or "") in LOOPBACK_HOSTS
        except ValueError:
            ok = False
        if not ok:
            return "cross-origin requests are refused"
    return None


class AdminError(Exception):
    """A refused admin request: HTTP ``status`` with ``{"error": message}``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def strict_json(raw: bytes | str) -> Any:
    """JSON as RFC 8259 defines it: no NaN/Infinity, no duplicate keys; ValueError otherwise."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def no_dupes(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        d = dict(pairs)
        if len(d) != len(pairs):
            raise ValueError("duplicate keys")
        return d

    try:
        return json.loads(raw, parse_constant=no_constant, object_pairs_hook=no_dupes)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None


def envelope(result: Any = None, errors: list[str] | None = None) -> bytes:
    return json.dumps(
        {"error": errors or [], "result": result if result is not None else {}}, separators=(",", ":")
    ).encode()


def is_warning(fault: Fault) -> bool:
    """An ``error`` fault whose message is a Kraken warning (``W...``): the call runs, the warning rides along."""
    return fault.kind == "error" and str(fault.params.get("message", "")).startswith("W")


def with_warning(body: bytes, warning: str) -> bytes:
    """A Kraken answer with ``warning`` appended to its ``error`` list (the result kept as it is)."""
    d = json.loads(body)
    return json.dumps(
        {"error": list(d.get("error") or []) + [warning], "result": d.get("result", {})}, separators=(",", ":")
    ).encode()


def json_response(body: bytes, status: int = 200) -> Response:
    return Response(body, status_code=status, media_type="application/json")


def html_response(status: int) -> Response:
    return Response(
        HTML_ERROR.format(code=status, text=HTTP_TEXT.get(status, "Error")), status_code=status, media_type="text/html"
    )


class LRU(OrderedDict):
    """A dict that keeps its ``cap`` most recently written keys."""

    def __init__(self, cap: int) -> None:
        super().__init__()
        self.cap = cap

    def put(self, key: str, value: Any) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.cap:
            self.popitem(last=False)


class Guard:
    """Per-key REST rate counter (decaying) and the lockout after repeated authentication failures.

    Memory is bounded whatever callers send: keys the exchange knows have their own entries (as
    many as accounts); any other API-Key header is tracked by a 16-byte digest in an LRU table of
    ``MAX_STRANGERS`` entries, so a flood of made-up keys can neither grow memory nor evict the
    lockout of a real key."""

    MAX_STRANGERS = 4096

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.counters: dict[str, tuple[float, float]] = {}
        self.failures: dict[str, deque[float]] = {}
        self.locked_until: dict[str, float] = {}
        self.stranger_failures = LRU(self.MAX_STRANGERS)
        self.stranger_locked = LRU(self.MAX_STRANGERS)

    def _slot(self, key: str) -> tuple[dict, dict, str]:
        if key in self.ex.accounts:
            return self.failures, self.locked_until, key
        digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()
        return self.stranger_failures, self.stranger_locked, digest

    def locked(self, key: str) -> bool:
        _, locked, k = self._slot(key)
        return locked.get(k, 0.0) > time.monotonic()

    def lock(self, key: str, seconds: float) -> None:
        _, locked, k = self._slot(key)
        until = time.monotonic() + seconds
        locked.put(k, until) if isinstance(locked, LRU) else locked.__setitem__(k, until)

    def fail(self, key: str) -> None:
        rl = self.ex.config.rate_limit
        now = time.monotonic()
        failures, _, k = self._slot(key)
        dq = failures.get(k) or deque()
        dq.append(now)
        while dq and dq[0] < now - rl.lockout_window_s:
            dq.popleft()
        if len(dq) >= rl.lockout_after:
            self.lock(key, rl.lockout_s)
            dq.clear()
        failures.put(k, dq) if isinstance(failures, LRU) else failures.__setitem__(k, dq)

    def charge(self, key: str, cost: float) -> bool:
        rl = self.ex.config.rate_limit
        now = time.monotonic()
        val, t = self.counters.get(key, (0.0, now))
        val = max(0.0, val - (now - t) * rl.decay_per_s)
        if val + cost > rl.max_counter:
            self.counters[key] = (val, now)
            return False
        self.counters[key] = (val + cost, now)
        return True


def sign(secret_b64: str, path: str, nonce: str, body: str) -> str:
    mac = hmac.new(
        base64.b64decode(secret_b64), path.encode() + hashlib.sha256((nonce + body).encode()).digest(), hashlib.sha512
    )
    return base64.b64encode(mac.digest()).decode()


def create_app(ex: Exchange, admin_token: str | None = None) -> FastAPI:
    """The ASGI app. ``admin_token`` None leaves the admin API off (every /admin call refused)."""
    app = FastAPI(title="krakenquant Kraken simulator", docs_url=None, redoc_url=None, openapi_url=None)
    guard = Guard(ex)
    app.state.exchange = ex
    app.state.guard = guard
    token = check_admin_token(admin_token).encode() if admin_token is not None else None

    # ---- fault wrapper --------------------------------------------------------------------------
    async def run_with_faults(name: str, action: Callable[[], bytes], fault: Fault | None) -> Response:
        if fault is None:
            return json_response(action())
        k, prm = fault.kind, fault.params
        apply = bool(prm.get("apply", k == "truncated_json"))
        if k == "error" and is_warning(fault):
            return json_response(with_warning(action(), str(prm["message"])))
        if k == "error":
            return json_response(envelope(None, [str(prm["message"])]))
        if k == "http_429":
            return html_response(429)
        if k == "timeout":
            body = action() if apply else None
            await asyncio.sleep(float(prm.get("seconds", 11)))
            return json_response(body) if body is not None else html_response(504)
        if k == "http_error":
            if apply:
                action()
            return html_response(int(prm.get("status", 502)))
        if k == "truncated_json":
            body = action()
            return json_response(body[: max(1, len(body) // 2)])
        return json_response(action())

    # ---- public --------------------------------------------------------------------------------
    @app.api_route("/0/public/{name}", methods=["GET", "POST"])
    async def public(name: str, request: Request) -> Response:
        if foreign_request(request.headers):
            return json_response(envelope(None, ["EGeneral:Permission denied"]))
        if name not in PUBLIC:
            return json_response(envelope(None, ["EGeneral:Unknown method"]))
        params = dict(request.query_params)
        if request.method == "POST":
            raw = await read_body(request, KRAKEN_MAX_BODY)
            try:  # UTF-8 only, also inside %-escapes (a non-UTF-8 body raised: HTTP 500)
                if raw is None:
                    raise ValueError("body too large")
                params |= dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict"))
            except ValueError:
                return json_response(envelope(None, [INVALID]))
        fault = ex.faults.take_request(name, ex.now())
        if fault is not None and fault.kind == "lockout":
            fault = None  # lockout is per key: only private calls
        return await run_with_faults(name, lambda: _guarded(lambda: _public(ex, name, params)), fault)

    # ---- private -------------------------------------------------------------------------------
    @app.post("/0/private/{name}")
    async def private(name: str, request: Request) -> Response:
        received = ex.wall()  # when the request arrived: AddOrder's deadline window is checked against it
        if foreign_request(request.headers):
            return json_response(envelope(None, ["EGeneral:Permission denied"]))
        body = await read_body(request, KRAKEN_MAX_BODY)
        if body is None:
            return json_response(envelope(None, [INVALID]))
        raw = body.decode("utf-8", "replace")
        if name not in PRIVATE:
            return json_response(envelope(None, ["EGeneral:Unknown method"]))
        key = request.headers.get("API-Key", "")
        fault = ex.faults.take_request(name, ex.now())
        if fault is not None and fault.kind == "lockout":
            guard.lock(key, float(fault.params.get("seconds", 60)))
            fault = None
        if fault is not None and (
            (fault.kind == "error" and not is_warning(fault))
            or fault.kind == "http_429"
            or (fault.kind in ("timeout", "http_error") and not fault.params.get("apply"))
        ):
            return await run_with_faults(name, lambda: b"", fault)
        ctype = request.headers.get("content-type", "")
        if "json" in ctype:
            try:
                d = strict_json(raw or "{}")
                if not isinstance(d, dict):
                    raise ValueError("not an object")
                params = {
                    k: (v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v))
                    for k, v in d.items()
                }
            except ValueError:
                return json_response(envelope(None, [INVALID]))
        else:
            params = dict(parse_qsl(raw, keep_blank_values=True))
        path = request.url.path
        with ex.lock:
            err = _authenticate(ex, guard, key, request.headers.get("API-Sign", ""), path, raw, params)
            if err:
                return json_response(envelope(None, [err]))
            acct = ex.accounts[key]
            if name not in UNCOUNTED and not guard.charge(key, 2.0 if name in HISTORY_CALLS else 1.0):
                ex.persist()
                return json_response(envelope(None, ["EAPI:Rate limit exceeded"]))
        params.pop("nonce", None)

        def action() -> bytes:
            try:
                return _guarded(lambda: _private(ex, name, acct, params, received))
            finally:
                ex.persist()

        return await run_with_faults(name, action, fault)

    @app.api_route("/0/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    async def unknown(rest: str, request: Request) -> Response:
        if foreign_request(request.headers):
            return json_response(envelope(None, ["EGeneral:Permission denied"]))
        return json_response(envelope(None, ["EGeneral:Unknown method"]))

    @app.exception_handler(StarletteHTTPException)
    async def not_routed(request: Request, exc: StarletteHTTPException) -> Response:
        """What no route takes (e.g. a path with a newline, which the /0/ catch-all pattern does not
        match): Kraken's envelope under /0/, a JSON ``{"error": ...}`` elsewhere."""
        if request.url.path.startswith("/0/"):
            refused = foreign_request(request.headers)
            return json_response(
                envelope(None, ["EGeneral:Permission denied" if refused else "EGeneral:Unknown method"])
            )
        return _admin_error(str(exc.detail), exc.status_code if 400 <= exc.status_code < 500 else 400)

    # ---- admin ---------------------------------------------------------------------------------
    async def admin_body(request: Request, needs_body: bool) -> Any:
        """Host/Origin, bearer token, JSON-only body: the gate every admin call passes first."""
        why = foreign_request(request.headers)
        if why:
            raise AdminError(why, 403)
        if token is None:
            raise AdminError("the admin API is off: start the simulator with KQ_SIM_ADMIN_TOKEN set", 403)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("latin-1"), token):
            raise AdminError("missing or wrong admin token (Authorization: Bearer $KQ_SIM_ADMIN_TOKEN)", 401)
        raw = await read_body(request, ADMIN_MAX_BODY)
        if raw is None:
            raise AdminError(f"body larger than {ADMIN_MAX_BODY} bytes", 413)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if raw and ctype != "application/json":
            raise AdminError("admin bodies must be JSON (Content-Type: application/json)", 415)
        if not needs_body:
            return None
        if ctype != "application/json":
            raise AdminError("admin bodies must be JSON (Content-Type: application/json)", 415)
        try:
            d = strict_json(raw)
        except ValueError as e:
            raise AdminError(f"body is not valid JSON: {e}") from None
        return d

    def admin_route(path: str, method: str, needs_body: bool) -> Callable:
        def deco(fn: Callable[[Any], Any]) -> Callable:
            async def endpoint(request: Request) -> Response:
                try:
                    d = await admin_body(request, needs_body)
                    out = fn(d)
                except AdminError as e:
                    return _admin_error(str(e), e.status)
                except (InputError, KrakenAPIError) as e:
                    return _admin_error(e.message if isinstance(e, KrakenAPIError) else str(e))
                return json_response(json.dumps(out, allow_nan=False, default=str).encode())

            app.add_api_route(path, endpoint, methods=[method], name=f"admin {method} {path}")
            return fn

        return deco

    def obj(d: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(d, dict):
            raise AdminError("body must be a JSON object")
        extra = sorted(set(d) - allowed)
        if extra:
            raise AdminError(f"unknown field(s) {', '.join(map(repr, extra))} (allowed: {', '.join(sorted(allowed))})")
        return d

    @admin_route("/admin/state", "GET", False)
    def admin_state(_: Any) -> Any:
        return ex.state()

    @admin_route("/admin/clock/advance", "POST", True)
    def admin_advance(d: Any) -> Any:
        d = obj(d, {"to", "seconds", "bars"})
        try:
            if "to" in d:
                if "seconds" in d or "bars" in d:
                    raise AdminError("give either to, or seconds and/or bars")
                to = float_of(d["to"], "to", 0, MAX_TIME)
                return {"now": ex.advance(to=to)}
            step = float_of(d.get("seconds", 0), "seconds", 0, MAX_STEP) + 3600.0 * float_of(
                d.get("bars", 0), "bars", 0, MAX_STEP / 3600
            )
        except BadNumber as e:
            raise AdminError(str(e)) from None
        if step > MAX_STEP:
            raise AdminError(f"one advance moves the clock at most {MAX_STEP:.0f} seconds")
        return {"now": ex.advance(seconds=step)}

    @admin_route("/admin/faults", "GET", False)
    def admin_faults_get(_: Any) -> Any:
        return ex.faults.to_list()

    @admin_route("/admin/faults", "POST", True)
    def admin_faults_add(d: Any) -> Any:
        if isinstance(d, dict) and "faults" in d:
            d = obj(d, {"faults"})["faults"]
        items = d if isinstance(d, list) else [d]
        with ex.lock:
            if len(ex.faults.faults) + len(items) > MAX_FAULTS:
                raise AdminError(f"at most {MAX_FAULTS} faults in force")
            new = [Fault.from_dict(item, ex.market.resolve) for item in items]  # all valid, or none added
            for f in new:
                ex.faults.add(f)
            ex.faults_changed()
        return ex.faults.to_list()

    @admin_route("/admin/faults", "DELETE", False)
    def admin_faults_clear(_: Any) -> Any:
        with ex.lock:
            ex.faults.clear()
            ex.faults_changed()
        return []

    @admin_route("/admin/status", "POST", True)
    def admin_status(d: Any) -> Any:
        d = obj(d, {"status", "pair"})
        st = d.get("status")
        if not isinstance(st, str) or st not in STATUSES:
            raise AdminError("status must be online, cancel_only, post_only, limit_only, reduce_only or maintenance")
        pair = d.get("pair")
        if pair is not None and not isinstance(pair, str):
            raise AdminError("pair must be a string")
        if not pair and st in PAIR_ONLY_STATUSES:
            raise AdminError(f"{st} is a pair status (Kraken's SystemStatus has no {st}): name a pair")
        with ex.lock:
            if pair:
                p = ex.market.resolve(pair) if len(pair) <= 40 else None
                if p is None:
                    raise AdminError(f"unknown pair {pair[:40]!r}")
                ex.pair_status[p] = st
            else:
                ex.status = st
            ex.persist()
        return {"status": ex.status, "pair_status": ex.pair_status}

    @admin_route("/admin/limits", "GET", False)
    def admin_limits_get(_: Any) -> Any:
        return {"rate_limit": ex.config.rate_limit.model_dump()}

    @admin_route("/admin/limits", "POST", True)
    def admin_limits(d: Any) -> Any:
        """Rate limits at runtime (until the simulator restarts): a Kraken verification ``tier``
        (starter, intermediate, pro: REST and matching-engine counters as Kraken publishes them)
        and/or single counter settings; ``reset_counters`` true also empties every key's counters."""
        d = obj(d, {"tier", "reset_counters", *LIMIT_FIELDS})
        tier = d.get("tier")
        if tier is not None and (not isinstance(tier, str) or tier not in RATE_TIERS):
            raise AdminError(f"tier must be one of {', '.join(RATE_TIERS)}")
        reset = d.get("reset_counters", False)
        if not isinstance(reset, bool):
            raise AdminError("reset_counters must be true or false")
        if tier is None and not set(d) & set(LIMIT_FIELDS) and not reset:
            raise AdminError(f"give a tier, reset_counters and/or any of {', '.join(LIMIT_FIELDS)}")
        new = ex.config.rate_limit.model_dump() | (RATE_TIERS[tier] if tier else {})
        try:
            for k, (lo, hi, is_int) in LIMIT_FIELDS.items():
                if k in d:
                    # an integer field's bounds are written as ints in LIMIT_FIELDS: int() only retypes them
                    new[k] = int_of(d[k], k, int(lo), int(hi)) if is_int else float_of(d[k], k, lo, hi)
        except BadNumber as e:
            raise AdminError(str(e)) from None
        for k in ("max_counter", "order_max_counter", "lockout_window_s"):
            if new[k] <= 0:
                raise AdminError(f"{k} must be > 0")
        with ex.lock:
            try:
                rl = RateLimitConfig.model_validate(new)
            except ValidationError as e:
                raise AdminError(f"bad rate limits: {e.errors()[0]['msg']}") from None
            ex.config = ex.config.model_copy(update={"rate_limit": rl})
            if reset:
                guard.counters.clear()
                ex.reset_order_counters()
        log.info("simulator: rate limits set to %s%s", new, " (counters reset)" if reset else "")
        return {"rate_limit": ex.config.rate_limit.model_dump()}

    @admin_route("/admin/balance", "POST", True)
    def admin_balance(d: Any) -> Any:
        d = obj(d, {"account", "asset", "delta"})
        for k in ("account", "asset", "delta"):
            if k not in d:
                raise AdminError(f"bad balance change: {k} is missing")
        if not isinstance(d["account"], str) or not isinstance(d["asset"], str):
            raise AdminError("bad balance change: account and asset must be strings")
        try:
            delta = decimal_of(d["delta"], "delta", -MAX_AMOUNT, MAX_AMOUNT)
            acct = ex.account_by_name(d["account"])
            ex.change_balance(acct, d["asset"], delta)
        except (BadNumber, KrakenAPIError, InputError) as e:
            raise AdminError(f"bad balance change: {e}") from None
        return ex.balance(acct)

    return app


def _admin_error(msg: str, status: int = 400) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(json.dumps({"error": msg}), status_code=status, media_type="application/json", headers=headers)


def _guarded(fn: Callable[[], Any]) -> bytes:
    """Run one Kraken call: its result, its Kraken error, or (a bug) Kraken's EGeneral:Internal error
    with the traceback logged: a client never sees an HTTP 500 (the fuzz suite asserts none occurs)."""
    try:
        return envelope(fn())
    except KrakenAPIError as e:
        return envelope(None, [e.message])
    except Exception:
        log.exception("simulator: unexpected error in a Kraken call")
        return envelope(None, ["EGeneral:Internal error"])


def _authenticate(
    ex: Exchange, guard: Guard, key: str, sig: str, path: str, raw: str, params: dict[str, str]
) -> str | None:
    if guard.locked(key):
        return "EGeneral:Temporary lockout"
    acct = ex.accounts.get(key) if key else None
    if acct is None or not acct.secret:  # no secret in this environment: not served
        guard.fail(key)
        return "EAPI:Invalid key"
    nonce = params.get("nonce", "")
    try:
        expected = sign(acct.secret, path, nonce, raw)
    except (binascii.Error, ValueError):
        expected = ""
    # bytes, not str: compare_digest refuses non-ASCII str (a header byte 0xff raised TypeError: HTTP 500)
    if not sig or not hmac.compare_digest(expected.encode(), sig.encode("latin-1", "replace")):
        guard.fail(key)
        return "EAPI:Invalid signature"
    n = int(nonce) if _NONCE.fullmatch(nonce) else -1  # ASCII digits, unsigned 64-bit
    if n < 0 or n >= 2**64:
        guard.fail(key)
        return "EAPI:Invalid nonce"
    if n <= acct.last_nonce:
        guard.fail(key)
        return "EAPI:Invalid nonce"
    acct.last_nonce = n
    return None


_NONCE = re.compile(r"[0-9]{1,20}")


def _pairs_arg(ex: Exchange, raw: str | None, required: bool) -> list[str]:
    if not raw:
        if required:
            raise KrakenAPIError("EGeneral:Invalid arguments:pair")
        return ex.market.listed()
    out = []
    for n in raw.split(","):
        p = ex.market.resolve(n)
        if p is None:
            raise KrakenAPIError("EQuery:Unknown asset pair")
        out.append(p)
    return out


def _public(ex: Exchange, name: str, p: dict[str, str]) -> Any:
    with ex.lock:
        ex.sync()
        now = ex.now()
        if name == "Time":
            t = int(now + ex.market.time_skew(now))
            return {"unixtime": t, "rfc1123": datetime.fromtimestamp(t, tz=UTC).strftime("%a, %d %b %y %H:%M:%S +0000")}
        if name == "SystemStatus":
            return {
                "status": ex.market_status(None, now),
                "timestamp": datetime.fromtimestamp(int(now), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        if name == "Assets":
            return ex.assets([a for a in p.get("asset", "").split(",") if a] or None)
        if name == "AssetPairs":
            return ex.asset_pairs([a for a in p.get("pair", "").split(",") if a] or None)
        if name == "Ticker":
            out = {}
            for pair in _pairs_arg(ex, p.get("pair"), required=False):
                tick = ex.market.ticker(pair, now)
                if tick is not None:
                    out[ex.market.instruments[pair].kraken_id] = tick
            return out
        if name == "OHLC":
            pairs = _pairs_arg(ex, p.get("pair"), required=True)
            if len(pairs) != 1:
                raise KrakenAPIError("EGeneral:Invalid arguments:pair")
            if str(p.get("interval", "1")) != "60":
                raise KrakenAPIError("EGeneral:Invalid arguments:interval (the simulator serves 60 only)")
            since = p.get("since")
            try:
                s = float_of(since, "since", -MAX_TIME, MAX_TIME) if since not in (None, "") else None
            except BadNumber:
                raise KrakenAPIError("EGeneral:Invalid arguments:since") from None
            rows, last = ex.market.ohlc(pairs[0], now, s)
            return {ex.market.instruments[pairs[0]].kraken_id: rows, "last": last}
        if name == "Depth":
            pairs = _pairs_arg(ex, p.get("pair"), required=True)
            try:
                count = int_of(p.get("count", 100), "count")
            except BadNumber:
                raise KrakenAPIError("EGeneral:Invalid arguments:count") from None
            count = max(1, min(500, count))
            return {ex.market.instruments[pr].kraken_id: ex.market.depth(pr, now, count) for pr in pairs[:1]}
    raise KrakenAPIError("EGeneral:Unknown method")


def _private(ex: Exchange, name: str, acct: Account, p: dict[str, str], received: float | None = None) -> Any:
    if name == "Balance":
        return ex.balance(acct)
    if name == "BalanceEx":
        return ex.balance_ex(acct)
    if name == "TradeBalance":
        return ex.trade_balance(acct, p.get("asset"))
    if name == "OpenOrders":
        return ex.open_orders(acct, p)
    if name == "ClosedOrders":
        return ex.closed_orders(acct, p)
    if name == "QueryOrders":
        return ex.query_orders(acct, p)
    if name == "TradesHistory":
        return ex.trades_history(acct, p)
    if name == "QueryTrades":
        return ex.query_trades(acct, p)
    if name == "AddOrder":
        return ex.add_order(acct, p, received=received)
    if name == "CancelOrder":
        return ex.cancel(acct, p.get("txid"), p.get("cl_ord_id"))
    if name == "CancelAll":
        return ex.cancel_all(acct)
    if name == "CancelAllOrdersAfter":
        return ex.cancel_after(acct, p.get("timeout"))
    raise KrakenAPIError("EGeneral:Unknown method")
