"""Exact values and one spelling per row: the ledger's decimals, payloads and hash.

* A decimal is written in plain fixed-point notation (:func:`canonical_decimal`): ``1E+2`` ->
  ``"100"``, ``-0`` -> ``"0"``, trailing zeros kept (``"1.10"`` stays ``"1.10"``: the scale a
  price was quoted with is part of the record). PostgreSQL's NUMERIC returns exactly this digit
  string, so what is hashed is what comes back. At most :data:`MAX_INT_DIGITS` digits before the
  point and :data:`MAX_FRAC_DIGITS` after it.
* A float is refused everywhere (``TypeError``): binary floats cannot carry a price or a quantity
  exactly, and a value that drifted by 1 ulp would still hash "correctly". A model's float64 output
  enters as :func:`exact_decimal` (the shortest repr, which converts back to the same float64).
* A payload is a JSON object of str / int / bool / None / Decimal / list / tuple / dict (str keys);
  Decimals are written as strings (read them back with ``Decimal(s)``).
* A row's hash is ``sha256(prev_hash + canonical JSON of the row)``, where the row is every column
  except ``prev_hash`` and ``hash``, NULL columns left out (a nullable column added by a later
  migration does not change the hash of older rows), bytes as base64, the payload as its object.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import os
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from engine.errors import InputError
from engine.hashing import canonical_json

__all__ = [
    "HMAC_ENV",
    "MAX_FRAC_DIGITS",
    "MAX_INT_DIGITS",
    "ZERO_HASH",
    "canonical_decimal",
    "entry_hash",
    "exact_decimal",
    "hmac_key_from_env",
    "key_id",
    "normalize_payload",
    "payload_text",
    "row_doc",
    "sha256_hex",
    "to_decimal",
]

#: the ``prev_hash`` of the first row
ZERO_HASH = "0" * 64
#: bounds that admit every finite float64 (max ~1.8e308, smallest subnormal 5e-324) and nothing absurd
MAX_INT_DIGITS = 310
MAX_FRAC_DIGITS = 400


class _Refused(TypeError):
    pass


def to_decimal(value: Any, what: str = "value") -> Decimal:
    """``value`` (Decimal, int or decimal string) as a finite Decimal in canonical form.

    Floats (and bools) are refused with ``TypeError``; NaN, infinities, malformed strings and values
    beyond the digit limits with :class:`~engine.errors.InputError`."""
    if isinstance(value, float):
        raise TypeError(
            f"{what}: float {value!r} refused by the ledger; pass a Decimal (exact_decimal() "
            "converts a model's float64 output exactly)"
        )
    if isinstance(value, bool) or not isinstance(value, (Decimal, int, str)):
        raise TypeError(f"{what}: expected a Decimal, got {type(value).__name__}")
    if isinstance(value, str):
        try:
            value = Decimal(value.strip())
        except InvalidOperation:
            raise InputError(f"{what}: {value[:40]!r} is not a decimal number") from None
    d = Decimal(value)
    if not d.is_finite():
        raise InputError(f"{what}: {d} is not a finite number")
    return Decimal(canonical_decimal(d, what))


def canonical_decimal(d: Decimal, what: str = "value") -> str:
    """The fixed-point digit string of a finite Decimal (see the module docstring)."""
    if isinstance(d, float):
        raise TypeError(f"{what}: float {d!r} refused by the ledger; pass a Decimal")
    if not isinstance(d, Decimal) or not d.is_finite():
        raise InputError(f"{what}: {d!r} is not a finite Decimal")
    exp = d.as_tuple().exponent
    if (isinstance(exp, int) and exp < -MAX_FRAC_DIGITS) or (not d.is_zero() and d.adjusted() >= MAX_INT_DIGITS):
        raise InputError(
            f"{what}: {d:.6E} has more than {MAX_INT_DIGITS} integer or {MAX_FRAC_DIGITS} fractional digits"
        )
    s = format(d, "f")
    if s.startswith("-") and not d.is_zero():
        sign, body = "-", s[1:]
    else:
        sign, body = "", s.lstrip("-")
    ip, _, fp = body.partition(".")
    ip = ip.lstrip("0") or "0"
    if len(ip) > MAX_INT_DIGITS or len(fp) > MAX_FRAC_DIGITS:
        raise InputError(
            f"{what}: {s[:24]}... has more than {MAX_INT_DIGITS} integer or {MAX_FRAC_DIGITS} fractional digits"
        )
    return sign + ip + ("." + fp if fp else "")


def exact_decimal(x: float) -> Decimal:
    """A finite float64 as the Decimal of its shortest repr: ``float(exact_decimal(x)) == x`` for every
    finite ``x`` (how a model's prediction enters the ledger without drift)."""
    if isinstance(x, bool) or not isinstance(x, (float, int)) or not math.isfinite(x):
        raise InputError(f"exact_decimal: {x!r} is not a finite float")
    return to_decimal(repr(float(x)), "exact_decimal")


def normalize_payload(obj: Any, path: str = "payload") -> Any:
    """``obj`` with Decimals as canonical strings and tuples as lists; floats and any other type
    refused (``TypeError``)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, float):
        raise TypeError(f"{path}: float {obj!r} refused by the ledger; pass a Decimal")
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, Decimal):
        return str(to_decimal(obj, path))
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise TypeError(f"{path}: keys must be strings, got {k!r}")
            out[k] = normalize_payload(v, f"{path}.{k}")
        return out
    if isinstance(obj, (list, tuple)):
        return [normalize_payload(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    # numpy scalars and arrays, sets, bytes, datetimes: the caller converts explicitly
    raise TypeError(
        f"{path}: {type(obj).__name__} is not a ledger payload value (str, int, bool, None, Decimal, list, dict)"
    )


def payload_text(payload: Mapping[str, Any] | None) -> str:
    """The canonical JSON text of a payload object (``{}`` for None)."""
    if payload is None:
        payload = {}
    if not isinstance(payload, Mapping):
        raise TypeError(f"payload must be a mapping, got {type(payload).__name__}")
    return canonical_json(normalize_payload(payload))


#: the hashed columns, in no particular order (the canonical JSON sorts keys)
HASHED_COLUMNS = (
    "seq",
    "kind",
    "hour",
    "recorded_utc",
    "pair",
    "cl_ord_id",
    "txid",
    "trade_id",
    "side",
    "code",
    "qty",
    "price",
    "fee",
    "cost",
    "ref_seq",
    "digest",
    "blob",
    "payload",
)


def row_doc(cols: Mapping[str, Any]) -> dict:
    """The object whose canonical JSON a row's hash covers. ``cols`` holds the stored values: decimals
    as canonical strings (or Decimals), ``blob`` as bytes, ``payload`` as its canonical JSON text."""
    doc: dict[str, Any] = {}
    for k in HASHED_COLUMNS:
        v = cols.get(k)
        if v is None:
            continue
        if k == "payload":
            v = json.loads(v)
        elif k == "blob":
            v = base64.b64encode(bytes(v)).decode("ascii")
        elif isinstance(v, Decimal):
            v = canonical_decimal(v, k)
        doc[k] = v
    return doc


def entry_hash(prev_hash: str, cols: Mapping[str, Any], key: bytes | None = None) -> str:
    """``sha256(prev_hash + canonical JSON of the row)``, hex; with ``key`` (a keyed ledger, see
    :func:`hmac_key_from_env`) ``HMAC-SHA256(key, same text)`` instead."""
    text = (prev_hash + canonical_json(row_doc(cols))).encode("ascii")
    if key is not None:
        return hmac.new(key, text, hashlib.sha256).hexdigest()
    return hashlib.sha256(text).hexdigest()


#: the environment variable holding the ledger's HMAC key (never stored, never logged)
HMAC_ENV = "KQ_LEDGER_HMAC_KEY"
HMAC_MIN_BYTES = 16


def hmac_key_from_env(env: Mapping[str, str] | None = None) -> bytes | None:
    """The key in ``KQ_LEDGER_HMAC_KEY`` as bytes (None when unset or empty); InputError when it is
    shorter than 16 bytes."""
    raw = (os.environ if env is None else env).get(HMAC_ENV) or ""
    if not raw:
        return None
    key = raw.encode("utf-8")
    if len(key) < HMAC_MIN_BYTES:
        raise InputError(f"{HMAC_ENV} is shorter than {HMAC_MIN_BYTES} bytes: use a long random secret")
    return key


def key_id(key: bytes) -> str:
    """A public name for a key (what the ledger records; the key itself cannot be derived from it)."""
    return hmac.new(key, b"krakenquant-ledger-key-id", hashlib.sha256).hexdigest()[:16]


def sha256_hex(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return hashlib.sha256(data).hexdigest()
