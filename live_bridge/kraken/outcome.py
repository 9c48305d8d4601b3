"""What one Kraken call did: DONE, REJECTED (definitive) or UNKNOWN, and when to halt.

Kraken answers HTTP 200 with ``{"error": [...], "result": ...}``; python-kraken-sdk raises for some
error strings and hands others back as the raw dict, raises a bare ``Exception("502 - ...")`` for
any other HTTP status, and lets ``requests`` exceptions through. The adapter therefore reads the
raw HTTP answer itself and classifies it with :func:`classify_http` / :func:`classify_envelope` /
:func:`classify_exception`, one table for all of it.

The rule that protects capital: **unknown never means rejected**. REJECTED is only given for
error codes listed in :data:`ERROR_TABLE` as definitive (the exchange says no action was taken);
a timeout, a 5xx, a reset connection, a truncated body, ``EService:Busy``/``Unavailable``/
``Throttled``, a ``W...`` warning or any code not in the table is UNKNOWN, and an order call with an
UNKNOWN outcome must be looked up by its client order id before anything is resent.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Outcome(StrEnum):
    DONE = "done"
    REJECTED = "rejected"
    UNKNOWN = "unknown"


class Halt(StrEnum):
    """Why the adapter stops sending altogether (the daemon's kill-switch input)."""

    LOCKOUT = "lockout"  # EGeneral:Temporary lockout
    NONCE = "nonce"  # EAPI:Invalid nonce, repeated
    CREDENTIALS = "credentials"  # EAPI:Invalid key / EAPI:Invalid signature
    NONCE_STATE = "nonce_state"  # the persisted nonce counter is unreadable


class KrakenHalt(Exception):
    """Trading must stop: retrying would make it worse (a lockout, a nonce or key problem).

    Raised by the call that met the condition and by every later call (latched) until an operator
    calls :meth:`KrakenAdapter.reset_halt`. ``code`` is a :class:`Halt`; the message is one line and
    never contains credentials."""

    def __init__(self, code: Halt, message: str, errors: tuple[str, ...] = ()) -> None:
        super().__init__(f"kraken halt ({code.value}): {message}")
        self.code = code
        self.reason = message
        self.errors = errors


@dataclass(frozen=True)
class Rule:
    outcome: Outcome
    transient: bool = False  # a definitive refusal that may pass later (rate limit, deadline)
    halt: Halt | None = None


# Error code prefixes -> rule. Longest matching prefix wins; a code matching nothing is UNKNOWN.
ERROR_TABLE: dict[str, Rule] = {
    # halt: retrying can only lead to (or prolong) a lockout
    "EGeneral:Temporary lockout": Rule(Outcome.REJECTED, halt=Halt.LOCKOUT),
    "EAPI:Invalid key": Rule(Outcome.REJECTED, halt=Halt.CREDENTIALS),
    "EAPI:Invalid signature": Rule(Outcome.REJECTED, halt=Halt.CREDENTIALS),
    # refused before anything executed, may pass later (the adapter counts nonces: repeated -> halt)
    "EAPI:Invalid nonce": Rule(Outcome.REJECTED, transient=True),
    "EAPI:Rate limit exceeded": Rule(Outcome.REJECTED, transient=True),
    "EOrder:Rate limit exceeded": Rule(Outcome.REJECTED, transient=True),
    "EService:Deadline elapsed": Rule(Outcome.REJECTED, transient=True),
    "EService:Market in ": Rule(Outcome.REJECTED, transient=True),  # cancel_only / post_only / ...
    # definitive refusals of the request as sent
    "EGeneral:Invalid arguments": Rule(Outcome.REJECTED),
    "EGeneral:Permission denied": Rule(Outcome.REJECTED),
    "EAPI:Invalid arguments": Rule(Outcome.REJECTED),
    "EAPI:Feature disabled": Rule(Outcome.REJECTED),
    "EQuery:Unknown asset": Rule(Outcome.REJECTED),  # and "... pair"
    "EOrder:Insufficient funds": Rule(Outcome.REJECTED),
    "EOrder:Cost minimum not met": Rule(Outcome.REJECTED),
    "EOrder:Order minimum not met": Rule(Outcome.REJECTED),
    "EOrder:Invalid price": Rule(Outcome.REJECTED),
    "EOrder:Tick size check failed": Rule(Outcome.REJECTED),
    "EOrder:Orders limit exceeded": Rule(Outcome.REJECTED),
    "EOrder:Unknown order": Rule(Outcome.REJECTED),  # cancel of an order that is not open
    "EOrder:Invalid order": Rule(Outcome.REJECTED),
    "EOrder:Reduce only": Rule(Outcome.REJECTED),
    "EOrder:Post only": Rule(Outcome.REJECTED),
    # explicitly unknown (listed so the table documents them; unlisted codes are unknown too)
    "EService:Busy": Rule(Outcome.UNKNOWN),
    "EService:Unavailable": Rule(Outcome.UNKNOWN),
    "EService:Throttled": Rule(Outcome.UNKNOWN),
    "EGeneral:Internal error": Rule(Outcome.UNKNOWN),
    "EOrder:Cancel pending": Rule(Outcome.UNKNOWN),
}
_PREFIXES = sorted(ERROR_TABLE, key=len, reverse=True)
UNMAPPED = Rule(Outcome.UNKNOWN)


def rule_for(code: str) -> Rule:
    """The rule of one error code; ``W...`` warnings and unlisted codes are UNKNOWN."""
    if not isinstance(code, str) or not code.startswith("E"):
        return UNMAPPED
    for p in _PREFIXES:
        if code.startswith(p):
            return ERROR_TABLE[p]
    return UNMAPPED


@dataclass(frozen=True)
class Verdict:
    """Classification of one answer before the result is parsed."""

    outcome: Outcome
    errors: tuple[str, ...] = ()
    reason: str = ""
    transient: bool = False
    halt: Halt | None = None
    payload: Any = None  # the envelope's ``result`` (None unless there was one)
    http_status: int | None = None
    raw: str = ""
    #: AddOrder: the deadline (unix seconds) the request carried, set just before it was sent; None
    #: for other calls and for an order refused before sending
    deadline: float | None = None


def classify_errors(errors: tuple[str, ...], payload: Any, http_status: int | None, raw: str) -> Verdict:
    if not errors:
        return Verdict(Outcome.DONE, (), "", payload=payload, http_status=http_status, raw=raw)
    rules = [rule_for(e) for e in errors]
    halts = [r.halt for r in rules if r.halt is not None]
    if halts:
        return Verdict(
            Outcome.REJECTED,
            errors,
            "; ".join(errors),
            halt=halts[0],
            payload=payload,
            http_status=http_status,
            raw=raw,
        )
    if any(r.outcome is Outcome.UNKNOWN for r in rules):
        warn = any(isinstance(e, str) and e.startswith("W") for e in errors)
        why = "warning" if warn else "not definitive"
        return Verdict(
            Outcome.UNKNOWN, errors, f"{why}: {'; '.join(errors)}", payload=payload, http_status=http_status, raw=raw
        )
    return Verdict(
        Outcome.REJECTED,
        errors,
        "; ".join(errors),
        transient=all(r.transient for r in rules),
        payload=payload,
        http_status=http_status,
        raw=raw,
    )


def classify_envelope(data: Any, http_status: int | None = 200, raw: str = "") -> Verdict:
    """Kraken's ``{"error": [...], "result": ...}``; anything else (or a missing ``result``) is UNKNOWN."""
    if not isinstance(data, dict) or not isinstance(data.get("error", None), list):
        return Verdict(Outcome.UNKNOWN, (), "malformed answer (no error list)", http_status=http_status, raw=raw)
    errors = tuple(str(e) for e in data["error"])
    if not errors and "result" not in data:
        return Verdict(Outcome.UNKNOWN, (), "malformed answer (no result)", http_status=http_status, raw=raw)
    return classify_errors(errors, data.get("result"), http_status, raw)


def classify_http(status: int, text: str) -> Verdict:
    """An HTTP answer: 200 with a JSON envelope is read; any other status or a bad body is UNKNOWN."""
    raw = text[:2000]
    if status != 200:
        return Verdict(Outcome.UNKNOWN, (), f"HTTP {status}", http_status=status, raw=raw)
    try:
        data = json.loads(text)
    except ValueError:
        return Verdict(
            Outcome.UNKNOWN, (), "HTTP 200 with a body that is not JSON (truncated?)", http_status=status, raw=raw
        )
    return classify_envelope(data, status, raw)


_CODE_RE = re.compile(r"""['"]([EW][A-Za-z]+:[^'"]*)['"]""")


def classify_exception(exc: BaseException) -> Verdict:
    """An exception from the transport or the SDK. Network failures (timeouts, resets, refused
    connections), the SDK's bare ``Exception("502 - ...")`` and JSON decode errors are UNKNOWN;
    an SDK ``Kraken*Error`` is classified by the error codes its message carries."""
    import requests

    name = type(exc).__name__
    if isinstance(exc, requests.exceptions.Timeout):
        return Verdict(Outcome.UNKNOWN, (), f"timeout ({name})")
    if isinstance(exc, requests.exceptions.RequestException):
        return Verdict(Outcome.UNKNOWN, (), f"network error ({name})")
    mod = type(exc).__module__ or ""
    if mod.startswith("kraken.exceptions"):
        codes = tuple(_CODE_RE.findall(str(exc)))
        if codes:
            return classify_errors(codes, None, 200, "")
        return Verdict(Outcome.UNKNOWN, (), f"SDK error without a Kraken code ({name})")
    m = re.match(r"^(\d{3}) - ", str(exc))
    if m:
        return Verdict(Outcome.UNKNOWN, (), f"HTTP {m.group(1)}", http_status=int(m.group(1)))
    return Verdict(Outcome.UNKNOWN, (), f"{name}")


@dataclass(frozen=True)
class CallResult(Generic[T]):
    """The typed answer of one adapter call (never a bare dict).

    ``result`` is the parsed, typed result when ``outcome`` is DONE (None otherwise); ``errors`` the
    Kraken codes; ``raw`` the response body (cut at 2000 characters; never credentials);
    ``transient`` marks a REJECTED that may pass later (rate limit, deadline, market mode)."""

    endpoint: str
    outcome: Outcome
    result: T | None = None
    errors: tuple[str, ...] = ()
    reason: str = ""
    transient: bool = False
    http_status: int | None = None
    raw: str = ""
    #: AddOrder: the deadline (unix seconds) the request carried, set just before it was sent; None
    #: for other calls and for an order refused before sending
    deadline: float | None = None

    @property
    def done(self) -> bool:
        return self.outcome is Outcome.DONE

    @property
    def rejected(self) -> bool:
        return self.outcome is Outcome.REJECTED

    @property
    def unknown(self) -> bool:
        return self.outcome is Outcome.UNKNOWN
