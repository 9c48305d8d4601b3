"""Hostile callers against every simulator endpoint (issue 21 items 1, 2, 6, 8, 9, 11), in process.

Targets (``count_case`` names): ``sim public`` (/0/public/*, GET and POST, random params and raw
bodies), ``sim private`` (/0/private/*, signed form bodies built from plausible requests with
hostile values, plus auth defects: bad or non-ASCII signature, unknown key, foreign Origin/Host,
raw bytes), ``sim private json`` (signed JSON bodies: booleans, floats, NaN literals, nesting,
non-objects) and ``sim admin`` (/admin/*: hostile JSON and raw bodies, every header combination of
token, Origin, Host and Content-Type).

Also covered: AddOrder ``deadline`` (RFC 3339 inside/outside Kraken's now+2..60 s window, malformed)
and ``cl_ord_id`` forms, QueryTrades, ``W...`` warning faults on private calls (the warning rides
along; with no ``E`` error the call may change the books), and ``/admin/limits``.

Values: NaN/inf spellings, 1e25 and 1e999999999, Unicode digits (``²``, ``١٢``), underscores,
blanks, hex, booleans, empty strings, random text, huge integers, nested JSON.

Every case must hold:
* never a 5xx; the Kraken paths answer HTTP 200 with Kraken's envelope ``{"error": [str...],
  "result": ...}`` and never ``EGeneral:Internal error`` (a caught bug); admin answers JSON, 4xx
  with ``{"error": str}`` when refused (401/403 for a missing/wrong token or a foreign Host/Origin);
* a refused request changes nothing (balances, orders, trades, clock, faults, market status);
* every balance stays finite and >= 0, every order number finite, and ``/admin/state`` is strict
  JSON (no NaN/Infinity).
"""

from __future__ import annotations

import json
import math
import time
import urllib.parse
from decimal import Decimal

from fuzzing import count_case, fuzz_settings
from hypothesis import given
from hypothesis import strategies as st

from live_bridge.simulator.app import PRIVATE, PUBLIC, sign
from live_bridge.simulator.faults import KINDS, Fault
from live_bridge.simulator.server import build_exchange
from live_bridge.simulator.testing import ADMIN_TOKEN, KEY, SECRET, T0, flat_panel, local_client, sim_test_config

ENV = {"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET}

NUMBERISH = [
    "NaN",
    "nan",
    "-nan",
    "inf",
    "-inf",
    "+inf",
    "Infinity",
    "1e25",
    "1e999999999",
    "-1e999999999",
    "1e-999999999",
    "-1",
    "0",
    "-0",
    "١٢",
    "²",
    "¹²",
    "1_000",
    " 1",
    "1 ",
    "0x10",
    "True",
    "False",
    "",
    "0.01",
    "0.0001",
    "19000",
    "19000.05",
    "20000",
    "+3600",
    "+nan",
    "9" * 40,
    ".5",
    "5.",
    "1e3",
    "1e",
    "12",
    "-12",
    "2147483648",
    "86399",
    str(T0 + 6 * 3600),
]
# AddOrder deadline / cl_ord_id spellings: malformed times, Unicode digits, bad offsets, UUID look-alikes
STRINGISH = [
    "2026-12-07T15:00:00Z",
    "2026-13-40T25:61:61Z",
    "2026-12-07t15:00:00z",
    "2026-12-07T15:00:00+25:00",
    "2026-12-07T15:00:00." + "9" * 30 + "Z",
    "٢٠٢٦-12-07T15:00:00Z",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "2026-12-07 15:00:00",
    "6d1b345e-2821-40e2-ad83-4ecb18a06876",
    "da8e4ad59b78481c93e589746b0cf91f",
    "da8e4ad59b78481c93e589746b0cf91",
    "x" * 18,
    "x" * 19,
    "café",
    "TAAAAA-AAAAA-AAAAAA",
    "TAAAAA-AAAAA-AAAAAA," * 21,
    "true",
    "TRUE",
    "maybe",
]


def _rfc3339_in(seconds: float) -> str:
    """A deadline ``seconds`` from the wall clock when drawn (inside, at and outside Kraken's window)."""
    from datetime import UTC, datetime

    return datetime.fromtimestamp(time.time() + seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


hostile_text = st.one_of(
    st.sampled_from(NUMBERISH),
    st.sampled_from(STRINGISH),
    st.floats(-120, 120).map(_rfc3339_in),
    st.text(max_size=24),
    st.integers().map(str),
    st.floats().map(repr),
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
)
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(10**40), max_value=10**40), st.floats(), hostile_text
)
json_value = st.recursive(
    json_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6
)

PARAM_NAMES = [
    "pair",
    "type",
    "ordertype",
    "volume",
    "price",
    "oflags",
    "timeinforce",
    "expiretm",
    "userref",
    "cl_ord_id",
    "validate",
    "txid",
    "trades",
    "start",
    "end",
    "ofs",
    "asset",
    "timeout",
    "interval",
    "since",
    "count",
    "nonce",
    "deadline",
]
BASE = {
    "AddOrder": {"pair": "XBTUSD", "type": "buy", "ordertype": "limit", "volume": "0.01", "price": "19000"},
    "CancelOrder": {"txid": "12"},
    "QueryOrders": {"txid": "OAAAAA-AAAAA-AAAAAA"},
    "QueryTrades": {"txid": "TAAAAA-AAAAA-AAAAAA", "trades": "true"},
    "CancelAllOrdersAfter": {"timeout": "0"},
    "OHLC": {"pair": "XBTUSD", "interval": "60"},
    "Depth": {"pair": "XBTUSD"},
    "Ticker": {"pair": "XBTUSD"},
}
params_st = st.dictionaries(st.one_of(st.sampled_from(PARAM_NAMES), st.text(max_size=8)), hostile_text, max_size=5)

ADMIN_CALLS = [
    ("GET", "/admin/state"),
    ("POST", "/admin/clock/advance"),
    ("GET", "/admin/faults"),
    ("POST", "/admin/faults"),
    ("DELETE", "/admin/faults"),
    ("POST", "/admin/status"),
    ("POST", "/admin/balance"),
    ("PUT", "/admin/balance"),
    ("POST", "/admin/nope"),
    ("GET", "/admin/limits"),
    ("POST", "/admin/limits"),
    ("DELETE", "/admin/limits"),
]
UNROUTED = {("POST", "/admin/nope"), ("PUT", "/admin/balance"), ("DELETE", "/admin/limits")}
number_st = st.one_of(
    st.sampled_from(NUMBERISH),
    st.sampled_from([math.nan, math.inf, -math.inf, 1e308, True, False, None, 10**40, -1, 0, 3600, 0.5]),
    json_value,
)
BODY_FOR = {
    "/admin/balance": st.fixed_dictionaries(
        {
            "account": st.one_of(st.just("default"), json_value),
            "asset": st.one_of(st.sampled_from(["USD", "XBT", "ZUSD", "BTC", "DOGE", "usd"]), json_value),
            "delta": number_st,
        }
    ),
    "/admin/clock/advance": st.dictionaries(
        st.sampled_from(["to", "bars", "seconds", "hours"]), number_st, min_size=1, max_size=2
    ),
    "/admin/faults": st.builds(
        lambda k, extra: {"kind": k} | extra,
        st.sampled_from(sorted(KINDS)),
        st.dictionaries(
            st.sampled_from(
                [
                    "seconds",
                    "status",
                    "factor",
                    "ts",
                    "delay",
                    "polls",
                    "message",
                    "apply",
                    "pair",
                    "from_ts",
                    "until_ts",
                    "count",
                    "endpoint",
                    "tick_size",
                    "ordermin",
                    "pair_decimals",
                    "params",
                ]
            ),
            st.one_of(
                number_st,
                st.sampled_from(
                    ["XBTUSD", "maintenance", "EService:Busy", "*", "limit_only", "reduce_only", "WGeneral:Warn", "W"]
                ),
            ),
            max_size=3,
        ),
    ),
    "/admin/limits": st.dictionaries(
        st.sampled_from(
            [
                "tier",
                "reset_counters",
                "max_counter",
                "decay_per_s",
                "order_max_counter",
                "order_decay_per_s",
                "lockout_after",
                "lockout_window_s",
                "lockout_s",
                "burst",
            ]
        ),
        st.one_of(number_st, st.sampled_from(["starter", "intermediate", "pro", "platinum"])),
        max_size=4,
    ),
    "/admin/status": st.fixed_dictionaries(
        {"status": st.one_of(st.sampled_from(["online", "maintenance", "limit_only", "reduce_only"]), json_value)},
        optional={"pair": st.one_of(st.just("XBTUSD"), json_value)},
    ),
}


@st.composite
def admin_request(draw):
    """(method, path, headers, body bytes): mostly well-formed gates with hostile bodies, sometimes
    hostile gates (token, Origin, Host, Content-Type) and raw bytes."""
    method, path = draw(st.sampled_from(ADMIN_CALLS))
    body = draw(BODY_FOR[path] if path in BODY_FOR and draw(st.integers(0, 4)) else json_value)
    content = json.dumps(body).encode()  # nan/inf floats become the NaN/Infinity literals
    if draw(st.integers(0, 9)) == 0:
        content = draw(st.binary(max_size=64))
    gate_ok = draw(st.integers(0, 9)) < 7
    token = "ok" if gate_ok else draw(st.sampled_from(["ok", "none", "wrong", "prefix", "basic", "empty"]))
    origin = (
        None
        if gate_ok
        else draw(st.sampled_from([None, "http://evil.example", "null", "http://localhost:3000", "file://"]))
    )
    host = (
        None
        if gate_ok
        else draw(
            st.sampled_from(
                [None, "evil.example", "127.0.0.1.evil.example:8765", "localhost:8765", "[::1]:8765", "127.0.0.1:x"]
            )
        )
    )
    ctype = (
        "application/json"
        if gate_ok
        else draw(
            st.sampled_from(
                [
                    "application/json",
                    "text/plain",
                    None,
                    "application/x-www-form-urlencoded",
                    "application/json; charset=utf-8",
                ]
            )
        )
    )
    headers = {}
    if token != "none":
        headers["Authorization"] = {
            "ok": f"Bearer {ADMIN_TOKEN}",
            "wrong": "Bearer not-the-token-at-all",
            "prefix": f"Bearer {ADMIN_TOKEN[:-2]}",
            "basic": f"Basic {ADMIN_TOKEN}",
            "empty": "Bearer ",
        }[token]
    if origin:
        headers["Origin"] = origin
    if host:
        headers["Host"] = host
    if ctype:
        headers["Content-Type"] = ctype
    foreign = host not in (None, "localhost:8765", "[::1]:8765") or origin in ("http://evil.example", "null", "file://")
    return method, path, headers, content, token, foreign


def new_exchange():
    cfg = sim_test_config(rate_limit={"lockout_after": 10**9})
    return build_exchange(
        flat_panel(), config=cfg, start=T0 + 5 * 3600, env=ENV, balances={"USD": Decimal("100000"), "BTC": Decimal("1")}
    )


def books(ex) -> tuple:
    st_ = ex.state()
    accts = {n: (a["balances"], a["deadman"]) for n, a in st_["accounts"].items()}
    return (
        st_["now"],
        accts,
        st_["orders"],
        st_["trades"],
        st_["faults"],
        st_["status"],
        st_["pair_status"],
        ex.config.rate_limit,
    )


def check_invariants(ex, client) -> None:
    assert math.isfinite(ex.now())
    for a in ex.accounts.values():
        for asset, v in a.balances.items():
            assert v.is_finite() and v >= 0, (asset, v)
    for o in ex.orders.values():
        for x in (o.vol, o.vol_exec, o.cost, o.fee, o.price, o.opentm, o.expiretm, o.closetm):
            assert x is None or (x.is_finite() if isinstance(x, Decimal) else math.isfinite(x)), o
    r = client.get("/admin/state", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200

    def no_constant(name):
        raise AssertionError(f"{name} in /admin/state")

    json.loads(r.text, parse_constant=no_constant)


def kraken_answer(r) -> dict:
    assert r.status_code == 200, (r.status_code, r.text[:300])
    b = json.loads(r.text)
    assert isinstance(b, dict) and set(b) == {"error", "result"}, b
    assert isinstance(b["error"], list) and all(isinstance(e, str) for e in b["error"]), b
    assert "EGeneral:Internal error" not in b["error"], b
    return b


_nonce = [time.time_ns()]


def next_nonce() -> str:
    _nonce[0] += 1
    return str(_nonce[0])


@fuzz_settings()
@given(
    name=st.one_of(st.sampled_from(PUBLIC), st.text(max_size=10)),
    method=st.sampled_from(["GET", "POST"]),
    params=params_st,
    raw=st.one_of(st.none(), st.binary(max_size=64)),
    base=st.booleans(),
    origin=st.sampled_from([None, None, None, "http://evil.example", "null"]),
)
def test_fuzz_public(name, method, params, raw, base, origin):
    count_case("sim public")
    ex = _shared("public")
    c = _client("public")
    before = books(ex)
    p = (BASE.get(name, {}) if base else {}) | params
    headers = {"Origin": origin} if origin else {}
    path = "/0/public/" + urllib.parse.quote(name, safe="")
    if method == "GET":
        r = c.get(path, params=p, headers=headers)
    else:
        body = raw if raw is not None else urllib.parse.urlencode(p).encode()
        r = c.post(path, content=body, headers=headers | {"Content-Type": "application/x-www-form-urlencoded"})
    kraken_answer(r)
    assert books(ex) == before
    check_invariants(ex, c)


@fuzz_settings()
@given(
    name=st.one_of(st.sampled_from(PRIVATE), st.sampled_from(PRIVATE), st.sampled_from(PRIVATE), st.text(max_size=10)),
    params=params_st,
    base=st.booleans(),
    auth=st.sampled_from(
        ["ok"] * 6
        + [
            "bad_sig",
            "non_ascii_sig",
            "no_key",
            "unknown_key",
            "foreign_origin",
            "foreign_host",
            "hostile_nonce",
            "raw",
        ]
    ),
    nonce=hostile_text,
    raw=st.binary(max_size=64),
    warn=st.integers(0, 5),
)
def test_fuzz_private(name, params, base, auth, nonce, raw, warn):
    count_case("sim private")
    ex = _shared("private")
    c = _client("private")
    if warn == 0:  # a W... warning fault: the call runs, the warning rides along in the answer
        ex.faults.add(Fault.from_dict({"kind": "error", "message": "WGeneral:fuzz"}, ex.market.resolve))
    before = books(ex)
    p = (BASE.get(name, {}) if base else {}) | params
    p["nonce"] = nonce if auth == "hostile_nonce" else next_nonce()
    body = urllib.parse.urlencode(p)
    path = "/0/private/" + urllib.parse.quote(name, safe="")
    headers = {
        "API-Key": KEY,
        "API-Sign": sign(SECRET, path, p["nonce"], body),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    if auth == "bad_sig":
        headers["API-Sign"] = sign("eHh4eA==", path, p["nonce"], body)
    elif auth == "non_ascii_sig":
        headers["API-Sign"] = "\u00ff" + headers["API-Sign"][1:]
    elif auth == "no_key":
        del headers["API-Key"]
    elif auth == "unknown_key":
        headers["API-Key"] = "someone-else"
    elif auth == "foreign_origin":
        headers["Origin"] = "http://evil.example"
    elif auth == "foreign_host":
        headers["Host"] = "evil.example:8765"
    content = raw if auth == "raw" else body.encode()
    r = c.post(path, content=content, headers={k: v.encode("latin-1") for k, v in headers.items()})
    b = kraken_answer(r)
    errors = [e for e in b["error"] if not e.startswith("W")]
    if warn == 0:
        fired = ex.faults.faults[0].fired
        ex.faults.clear()
        before = before[:4] + ([],) + before[5:]  # the fault plan itself is not the call's doing
        if fired and not errors:
            assert b["error"] == ["WGeneral:fuzz"], b
    if auth in ("foreign_origin", "foreign_host"):
        assert b["error"] == ["EGeneral:Permission denied"]
    if auth in ("bad_sig", "non_ascii_sig", "no_key", "unknown_key", "raw") or errors:
        assert books(ex) == before, (name, p, b)
    check_invariants(ex, c)


def _signed(c, name: str, p: dict) -> dict:
    p = p | {"nonce": next_nonce()}
    body = urllib.parse.urlencode(p)
    path = f"/0/private/{name}"
    headers = {
        "API-Key": KEY,
        "API-Sign": sign(SECRET, path, p["nonce"], body),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    return kraken_answer(c.post(path, content=body.encode(), headers=headers))


@fuzz_settings()
@given(
    deadline=st.one_of(st.none(), st.floats(-120, 120).map(_rfc3339_in), st.sampled_from(STRINGISH), hostile_text),
    cl_ord_id=st.one_of(
        st.none(),
        st.uuids().map(str),
        st.uuids().map(lambda u: u.hex),
        st.text(max_size=20),
        st.sampled_from(STRINGISH),
    ),
    side=st.sampled_from(["buy", "sell"]),
    market=st.booleans(),
    extra=params_st,
    picks=st.lists(st.integers(0, 10**6), max_size=25),
    junk=st.lists(hostile_text, max_size=3),
    trades=st.one_of(st.none(), hostile_text),
)
def test_fuzz_add_order_and_query_trades(deadline, cl_ord_id, side, market, extra, picks, junk, trades):
    """AddOrder's deadline and cl_ord_id, then QueryTrades over real and hostile trade txids."""
    count_case("sim add order")
    ex = _shared("add order")
    c = _client("add order")
    if len(ex.open_ids) > 40:  # a long campaign keeps placing: stay under the open-orders limit
        ex.cancel_all(next(iter(ex.accounts.values())))
    before = books(ex)
    p = BASE["AddOrder"] | {"type": side, "volume": "0.001"} | ({"ordertype": "market"} if market else {})
    p |= {k: v for k, v in (("deadline", deadline), ("cl_ord_id", cl_ord_id)) if v is not None}
    p |= {k: v for k, v in extra.items() if k not in ("nonce", "pair", "volume", "validate")}
    b = _signed(c, "AddOrder", p)
    if b["error"]:
        assert books(ex) == before, (p, b)
    else:
        assert len(b["result"]["txid"]) == 1
    ids = sorted(ex.trades)
    asked = [ids[i % len(ids)] for i in picks] if ids else []
    q = {"txid": ",".join(asked + junk)} | ({"trades": trades} if trades is not None else {})
    before = books(ex)
    r = _signed(c, "QueryTrades", q)
    assert books(ex) == before
    if not r["error"]:
        assert set(r["result"]) <= set(ex.trades) and set(r["result"]) >= set(asked), (q, r)
    check_invariants(ex, c)


@fuzz_settings()
@given(
    name=st.sampled_from(PRIVATE),
    body=st.one_of(st.dictionaries(st.sampled_from(PARAM_NAMES), json_value, max_size=5), json_value),
    base=st.booleans(),
    nan_literal=st.booleans(),
)
def test_fuzz_private_json(name, body, base, nan_literal):
    count_case("sim private json")
    ex = _shared("private json")
    c = _client("private json")
    before = books(ex)
    nonce = next_nonce()
    if isinstance(body, dict):
        body = (BASE.get(name, {}) if base else {}) | body | {"nonce": nonce}
    text = json.dumps(body)  # floats nan/inf become the NaN/Infinity literals strict JSON refuses
    if nan_literal and isinstance(body, dict):
        text = text[:-1] + ', "x": NaN}'
    path = f"/0/private/{name}"
    headers = {"API-Key": KEY, "API-Sign": sign(SECRET, path, nonce, text), "Content-Type": "application/json"}
    b = kraken_answer(c.post(path, content=text.encode(), headers=headers))
    if b["error"]:
        assert books(ex) == before, (name, text, b)
    check_invariants(ex, c)


@fuzz_settings()
@given(req=admin_request())
def test_fuzz_admin(req):
    count_case("sim admin")
    ex = _shared("admin")
    c = _client("admin")
    before = books(ex)
    method, path, headers, content, token, foreign = req
    r = c.request(method, path, content=content if method != "GET" else None, headers=headers)
    assert r.status_code < 500, (method, path, headers, content[:100], r.status_code, r.text[:200])
    answer = json.loads(r.text)
    if (method, path) not in UNROUTED:
        if foreign:
            assert r.status_code == 403, (headers, r.text)
        elif token != "ok":
            assert r.status_code == 401, (headers, r.text)
    if r.status_code != 200:
        assert 400 <= r.status_code < 500
        assert books(ex) == before, (method, path, content[:100], r.text)
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer
    if ex.faults.faults:  # keep the plan small: a case's faults do not carry into the next
        ex.faults.clear()
        ex.faults_changed()
    check_invariants(ex, c)


# One exchange and client per target for the whole run (built on first use): cases accumulate
# orders, fills and clock moves like a long session would.
_EX: dict = {}
_CL: dict = {}


def _shared(target: str):
    if target not in _EX:
        _EX[target] = new_exchange()
    return _EX[target]


def _client(target: str):
    if target not in _CL:
        _CL[target] = local_client(_shared(target))  # used without `with`: no lifespan, nothing to close
    return _CL[target]
