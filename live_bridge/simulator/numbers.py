"""Strict number parsing for everything a caller sends the simulator (Kraken params, admin JSON,
fault plans) and everything it reads back from its state file.

Accepted: JSON numbers (not booleans) and ASCII decimal strings (``12``, ``-0.5``, ``1e-3``).
Refused: NaN, infinities, booleans, Unicode digits (``²``, ``١٢``), underscores, surrounding
blanks, hex, and anything outside the bounds the caller names. Python's ``float()``/``int()``/
``Decimal()`` accept most of those, which is how NaN balances and an infinite clock got in.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from typing import Any

MAX_AMOUNT = Decimal(10) ** 15  # largest balance, volume, price or notional the books take
MAX_TIME = 4_102_444_800.0  # 2100-01-01 UTC: the simulated clock never passes it
MAX_STEP = 100 * 366 * 86400.0  # one clock advance

_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]{1,10})?")
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")


class BadNumber(ValueError):
    """A value that is not a finite number in range; the message names it."""


class OutOfRange(BadNumber):
    """A well-formed finite number outside the bounds asked for."""


def decimal_of(v: Any, what: str, lo: Decimal | float | None = None, hi: Decimal | float | None = None) -> Decimal:
    """A finite Decimal from a JSON number or an ASCII decimal string, within [lo, hi]."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise BadNumber(f"{what} must be a number, not {type(v).__name__}")
    if isinstance(v, float):
        if not math.isfinite(v):
            raise BadNumber(f"{what} must be a finite number")
        d = Decimal(repr(v))
    elif isinstance(v, int):
        if abs(v) > 10**30:
            raise OutOfRange(f"{what} is out of range")
        d = Decimal(v)
    else:
        if len(v) > 64 or not _DECIMAL.fullmatch(v):
            raise BadNumber(f"{what} must be a decimal number")
        try:
            d = Decimal(v)
        except InvalidOperation:  # pragma: no cover - the pattern admits only valid literals
            raise BadNumber(f"{what} must be a decimal number") from None
    if not d.is_finite():
        raise BadNumber(f"{what} must be a finite number")
    if d.adjusted() > 30 or (d != 0 and d.adjusted() < -30):
        raise OutOfRange(f"{what} is out of range")
    if lo is not None and d < Decimal(str(lo)):
        raise OutOfRange(f"{what} must be >= {lo}")
    if hi is not None and d > Decimal(str(hi)):
        raise OutOfRange(f"{what} must be <= {hi}")
    return d


def float_of(v: Any, what: str, lo: float | None = None, hi: float | None = None) -> float:
    """A finite float from a JSON number or an ASCII decimal string, within [lo, hi]."""
    return float(decimal_of(v, what, lo, hi))


def int_of(v: Any, what: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer from a JSON integer or an ASCII digit string (no exponent, no fraction)."""
    if isinstance(v, bool) or not isinstance(v, (int, str)):
        raise BadNumber(f"{what} must be an integer, not {type(v).__name__}")
    if isinstance(v, str):
        if not _INTEGER.fullmatch(v):
            raise BadNumber(f"{what} must be an integer")
        v = int(v)
    if lo is not None and v < lo:
        raise OutOfRange(f"{what} must be >= {lo}")
    if hi is not None and v > hi:
        raise OutOfRange(f"{what} must be <= {hi}")
    return v
