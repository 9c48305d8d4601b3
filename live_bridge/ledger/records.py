"""What the ledger records: the entry kinds, one builder per kind, and the rows read back.

Every row of the ledger is one :class:`Entry` of one :class:`Kind`, in one table
(``ledger_entry``), with typed columns for what queries need and exact NUMERIC decimals for money
and quantities; anything else goes into the row's canonical JSON ``payload``. A builder validates
its arguments and returns a :class:`Record`; :meth:`live_bridge.ledger.Ledger.append` chains and
writes records. Columns a kind does not use stay NULL.

========================  ====================================================================
kind                      columns (R = required, o = optional) and meaning
========================  ====================================================================
``cycle_start``           hour R, code R = code version, digest R = config digest
``cycle_end``             hour R, code R in :data:`CYCLE_END_CODES` (``completed`` ends an hour)
``bars``                  hour R, pair R, digest = sha256 of the bars (computed), payload.bars
``features``              hour R, digest R = feature hash
``model``                 hour R, code R = model id (``name/version``), digest R = manifest digest
``prediction``            hour R, pair R, payload.values = {name: Decimal}, code o = model id
``risk_snapshot``         hour R, code R = ``before``/``after`` (``shadow``: the shadow model's
                          machine, live_bridge/shadow.py), blob R = RiskMachine.snapshot()
                          bytes (opaque), digest = sha256(blob) (computed)
``decision``              hour R, code R = reason code, pair/side/qty/price o
``order_intent``          hour R, pair R, cl_ord_id R (one intent per id), side R, qty R > 0,
                          price o (> 0, the limit; NULL = market), code R = order type
``order_request``         hour R, cl_ord_id R (its intent must exist), code R = endpoint, payload
                          = the request's parameters (never credentials)
``order_response``        hour R, cl_ord_id R, code R = done/rejected/unknown, txid o, ref_seq o
``fill``                  hour R, pair R, trade_id R (unique), side R, qty R > 0, price R > 0,
                          fee R >= 0, cost o, txid o, code R = ``own`` (cl_ord_id R) or
                          ``external`` (cl_ord_id o)
``cancel``                hour R, cl_ord_id R, code R = requested/done/rejected/unknown, txid o
``order_final``           hour R, cl_ord_id R (once per id), code R in :data:`FINAL_CODES`,
                          qty o = filled quantity: the intent's terminal outcome
``reconciliation``        hour o, code R = ok/mismatch, payload = the comparison
``operator_action``       hour o, code R in :data:`OPERATOR_ACTIONS`, payload.reason / actor /
                          confirmation R (non-empty)
``operator_applied``      hour R, ref_seq R = the operator_action's seq (once), code R =
                          applied/refused
``event``                 hour o, code R, pair o: anything else the daemon reports (alerts)
========================  ====================================================================
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from typing import Any

from engine.errors import InputError
from live_bridge.ledger.canonical import normalize_payload, payload_text, sha256_hex, to_decimal

__all__ = [
    "CYCLE_END_CODES",
    "FINAL_CODES",
    "OPERATOR_ACTIONS",
    "SIDES",
    "Entry",
    "Kind",
    "Record",
    "bars",
    "cancel",
    "cycle_end",
    "cycle_start",
    "decision",
    "event",
    "features",
    "fill",
    "model",
    "operator_action",
    "operator_applied",
    "order_final",
    "order_intent",
    "order_request",
    "order_response",
    "prediction",
    "reconciliation",
    "risk_snapshot",
]


class Kind(StrEnum):
    CYCLE_START = "cycle_start"
    CYCLE_END = "cycle_end"
    BARS = "bars"
    FEATURES = "features"
    MODEL = "model"
    PREDICTION = "prediction"
    RISK_SNAPSHOT = "risk_snapshot"
    DECISION = "decision"
    ORDER_INTENT = "order_intent"
    ORDER_REQUEST = "order_request"
    ORDER_RESPONSE = "order_response"
    FILL = "fill"
    CANCEL = "cancel"
    ORDER_FINAL = "order_final"
    RECONCILIATION = "reconciliation"
    OPERATOR_ACTION = "operator_action"
    OPERATOR_APPLIED = "operator_applied"
    EVENT = "event"
    LEDGER_KEY = "ledger_key"  # written by the store only: every row from here on is HMAC-keyed


SIDES = ("buy", "sell")
CYCLE_END_CODES = ("completed", "failed", "skipped")
SNAPSHOT_PHASES = ("before", "after", "shadow")
OUTCOMES = ("done", "rejected", "unknown")
CANCEL_CODES = ("requested", "done", "rejected", "unknown")
FILL_CODES = ("own", "external")
#: terminal outcomes of an order intent; an intent without one is open (crash recovery looks it up)
FINAL_CODES = ("filled", "cancelled", "rejected", "expired", "not_sent")
RECONCILIATION_CODES = ("ok", "mismatch")
OPERATOR_ACTIONS = ("reactivate", "reset_halt", "pause", "resume", "flatten", "set_ceiling")
APPLIED_CODES = ("applied", "refused")

_ID = re.compile(r"[!-~]{1,64}")  # printable ASCII, no spaces
_HEX64 = re.compile(r"[0-9a-f]{64}")
MAX_HOUR = 1 << 40


@dataclass(frozen=True)
class Record:
    """A validated row not yet chained (no seq, time or hash)."""

    kind: Kind
    hour: int | None = None
    pair: str | None = None
    cl_ord_id: str | None = None
    txid: str | None = None
    trade_id: str | None = None
    side: str | None = None
    code: str | None = None
    qty: Decimal | None = None
    price: Decimal | None = None
    fee: Decimal | None = None
    cost: Decimal | None = None
    ref_seq: int | None = None
    digest: str | None = None
    blob: bytes | None = None
    payload: str = "{}"  # canonical JSON text

    def columns(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in COLUMNS}


COLUMNS = (
    "kind",
    "hour",
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
DECIMAL_COLUMNS = ("qty", "price", "fee", "cost")


@dataclass(frozen=True)
class Entry:
    """One stored row. Decimal columns are Decimals; ``payload`` is the parsed JSON object (its
    Decimals are strings)."""

    seq: int
    kind: str
    hour: int | None
    recorded_utc: str
    pair: str | None
    cl_ord_id: str | None
    txid: str | None
    trade_id: str | None
    side: str | None
    code: str | None
    qty: Decimal | None
    price: Decimal | None
    fee: Decimal | None
    cost: Decimal | None
    ref_seq: int | None
    digest: str | None
    blob: bytes | None
    payload: dict = field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""


# ---- validation helpers ------------------------------------------------------------------------


def _hour(hour: Any, required: bool = True) -> int | None:
    if hour is None and not required:
        return None
    try:  # int and numpy integers; not bool, float or str
        if isinstance(hour, bool) or type(hour).__name__ == "bool_":
            raise TypeError
        h = operator.index(hour)
    except TypeError:
        raise InputError(f"hour must be an int (unix seconds // 3600), got {hour!r}") from None
    if not 0 <= h < MAX_HOUR:
        raise InputError(f"hour {h} out of range")
    return h


def _ident(v: Any, what: str, required: bool = True) -> str | None:
    if v is None and not required:
        return None
    if not isinstance(v, str) or not _ID.fullmatch(v):
        raise InputError(f"{what} must be 1-64 printable ASCII characters without spaces, got {v!r}")
    return v


def _choice(v: Any, what: str, choices: Sequence[str]) -> str:
    if v not in choices:
        raise InputError(f"{what} must be one of {', '.join(choices)}, got {v!r}")
    return str(v)


def _digest(v: Any, what: str) -> str:
    if not isinstance(v, str) or not _HEX64.fullmatch(v):
        raise InputError(f"{what} must be a lowercase hex sha256 (64 characters), got {v!r}")
    return v


def _dec(v: Any, what: str, *, required: bool = True, positive: bool = False, nonneg: bool = False) -> Decimal | None:
    if v is None:
        if required:
            raise InputError(f"{what} is required")
        return None
    d = to_decimal(v, what)
    if positive and d <= 0:
        raise InputError(f"{what} must be > 0, got {d}")
    if nonneg and d < 0:
        raise InputError(f"{what} must be >= 0, got {d}")
    return d


def _seq(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise InputError(f"{what} must be a ledger seq (int >= 1), got {v!r}")
    return v


def _payload(payload: Mapping[str, Any] | None, extra: Mapping[str, Any] | None = None) -> str:
    merged = dict(payload or {})
    if extra:
        clash = sorted(set(merged) & set(extra))
        if clash:
            raise InputError(f"payload keys {clash} clash with the record's own fields")
        merged.update(extra)
    return payload_text(merged)


# ---- builders ----------------------------------------------------------------------------------


def cycle_start(hour: int, code_version: str, config_digest: str, payload: Mapping | None = None) -> Record:
    return Record(
        Kind.CYCLE_START,
        hour=_hour(hour),
        code=_ident(code_version, "code_version"),
        digest=_digest(config_digest, "config_digest"),
        payload=_payload(payload),
    )


def cycle_end(hour: int, status: str = "completed", payload: Mapping | None = None) -> Record:
    return Record(
        Kind.CYCLE_END,
        hour=_hour(hour),
        code=_choice(status, "cycle_end status", CYCLE_END_CODES),
        payload=_payload(payload),
    )


def bars(
    hour: int, pair: str, rows: Sequence[Mapping[str, Any]] | Sequence[Sequence[Any]], payload: Mapping | None = None
) -> Record:
    """The input bars of ``pair`` used at ``hour`` (Decimals/ints/strings, never floats); the digest
    is sha256 of the canonical JSON of ``rows``."""
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise InputError(f"bars rows must be a sequence, got {type(rows).__name__}")
    norm = normalize_payload(list(rows), "bars")
    from engine.hashing import canonical_json

    return Record(
        Kind.BARS,
        hour=_hour(hour),
        pair=_ident(pair, "pair"),
        digest=sha256_hex(canonical_json(norm)),
        payload=_payload(payload, {"bars": norm}),
    )


def features(hour: int, feature_hash: str, payload: Mapping | None = None) -> Record:
    return Record(
        Kind.FEATURES, hour=_hour(hour), digest=_digest(feature_hash, "feature_hash"), payload=_payload(payload)
    )


def model(hour: int, model_id: str, manifest_digest: str, payload: Mapping | None = None) -> Record:
    return Record(
        Kind.MODEL,
        hour=_hour(hour),
        code=_ident(model_id, "model_id"),
        digest=_digest(manifest_digest, "manifest_digest"),
        payload=_payload(payload),
    )


def prediction(
    hour: int, pair: str, values: Mapping[str, Any], model_id: str | None = None, payload: Mapping | None = None
) -> Record:
    if not isinstance(values, Mapping) or not values:
        raise InputError("prediction values must be a non-empty mapping of name -> Decimal")
    vals = {str(k): to_decimal(v, f"prediction {k}") for k, v in values.items()}
    return Record(
        Kind.PREDICTION,
        hour=_hour(hour),
        pair=_ident(pair, "pair"),
        code=_ident(model_id, "model_id", required=False),
        payload=_payload(payload, {"values": vals}),
    )


def risk_snapshot(hour: int, phase: str, snapshot: bytes, payload: Mapping | None = None) -> Record:
    """``RiskMachine.snapshot()`` bytes, stored as they are, with their sha256."""
    if not isinstance(snapshot, (bytes, bytearray, memoryview)) or not len(snapshot):
        raise InputError(f"risk snapshot must be non-empty bytes, got {type(snapshot).__name__}")
    b = bytes(snapshot)
    return Record(
        Kind.RISK_SNAPSHOT,
        hour=_hour(hour),
        code=_choice(phase, "snapshot phase", SNAPSHOT_PHASES),
        blob=b,
        digest=sha256_hex(b),
        payload=_payload(payload),
    )


def decision(
    hour: int,
    reason_code: str,
    pair: str | None = None,
    side: str | None = None,
    qty: Any = None,
    price: Any = None,
    payload: Mapping | None = None,
) -> Record:
    return Record(
        Kind.DECISION,
        hour=_hour(hour),
        code=_ident(reason_code, "reason_code"),
        pair=_ident(pair, "pair", required=False),
        side=None if side is None else _choice(side, "side", SIDES),
        qty=_dec(qty, "qty", required=False),
        price=_dec(price, "price", required=False),
        payload=_payload(payload),
    )


def order_intent(
    hour: int,
    cl_ord_id: str,
    pair: str,
    side: str,
    qty: Any,
    price: Any = None,
    order_type: str = "limit",
    payload: Mapping | None = None,
) -> Record:
    """Written BEFORE the order's request is sent (the ledger refuses a request without it)."""
    return Record(
        Kind.ORDER_INTENT,
        hour=_hour(hour),
        cl_ord_id=_ident(cl_ord_id, "cl_ord_id"),
        pair=_ident(pair, "pair"),
        side=_choice(side, "side", SIDES),
        qty=_dec(qty, "qty", positive=True),
        price=_dec(price, "price", required=False, positive=True),
        code=_ident(order_type, "order_type"),
        payload=_payload(payload),
    )


def order_request(hour: int, cl_ord_id: str, endpoint: str, params: Mapping[str, Any]) -> Record:
    return Record(
        Kind.ORDER_REQUEST,
        hour=_hour(hour),
        cl_ord_id=_ident(cl_ord_id, "cl_ord_id"),
        code=_ident(endpoint, "endpoint"),
        payload=_payload(params),
    )


def order_response(
    hour: int,
    cl_ord_id: str,
    outcome: str,
    txid: str | None = None,
    request_seq: int | None = None,
    payload: Mapping | None = None,
) -> Record:
    return Record(
        Kind.ORDER_RESPONSE,
        hour=_hour(hour),
        cl_ord_id=_ident(cl_ord_id, "cl_ord_id"),
        code=_choice(outcome, "outcome", OUTCOMES),
        txid=_ident(txid, "txid", required=False),
        ref_seq=None if request_seq is None else _seq(request_seq, "request_seq"),
        payload=_payload(payload),
    )


def fill(
    hour: int,
    trade_id: str,
    pair: str,
    side: str,
    qty: Any,
    price: Any,
    fee: Any,
    cl_ord_id: str | None = None,
    txid: str | None = None,
    cost: Any = None,
    external: bool = False,
    payload: Mapping | None = None,
) -> Record:
    """One trade. ``trade_id`` is unique in the ledger: appending the same fill again is a no-op that
    returns the stored entry; a different fill under a stored trade id is a :class:`LedgerConflict`."""
    if not external and cl_ord_id is None:
        raise InputError("a fill of our own order needs its cl_ord_id (external=True for one we did not make)")
    return Record(
        Kind.FILL,
        hour=_hour(hour),
        trade_id=_ident(trade_id, "trade_id"),
        pair=_ident(pair, "pair"),
        side=_choice(side, "side", SIDES),
        qty=_dec(qty, "qty", positive=True),
        price=_dec(price, "price", positive=True),
        fee=_dec(fee, "fee", nonneg=True),
        cost=_dec(cost, "cost", required=False, nonneg=True),
        cl_ord_id=_ident(cl_ord_id, "cl_ord_id", required=False),
        txid=_ident(txid, "txid", required=False),
        code="external" if external else "own",
        payload=_payload(payload),
    )


def cancel(hour: int, cl_ord_id: str, status: str, txid: str | None = None, payload: Mapping | None = None) -> Record:
    return Record(
        Kind.CANCEL,
        hour=_hour(hour),
        cl_ord_id=_ident(cl_ord_id, "cl_ord_id"),
        code=_choice(status, "cancel status", CANCEL_CODES),
        txid=_ident(txid, "txid", required=False),
        payload=_payload(payload),
    )


def order_final(
    hour: int, cl_ord_id: str, outcome: str, filled_qty: Any = None, payload: Mapping | None = None
) -> Record:
    return Record(
        Kind.ORDER_FINAL,
        hour=_hour(hour),
        cl_ord_id=_ident(cl_ord_id, "cl_ord_id"),
        code=_choice(outcome, "final outcome", FINAL_CODES),
        qty=_dec(filled_qty, "filled_qty", required=False, nonneg=True),
        payload=_payload(payload),
    )


def reconciliation(hour: int | None, status: str, payload: Mapping[str, Any]) -> Record:
    return Record(
        Kind.RECONCILIATION,
        hour=_hour(hour, required=False),
        code=_choice(status, "reconciliation status", RECONCILIATION_CODES),
        payload=_payload(payload),
    )


def operator_action(
    action: str,
    reason: str,
    actor: str,
    confirmation: str,
    hour: int | None = None,
    params: Mapping[str, Any] | None = None,
) -> Record:
    """An operator's command, applied at the next bar close (then :func:`operator_applied`)."""
    for what, v in (("reason", reason), ("actor", actor), ("confirmation", confirmation)):
        if not isinstance(v, str) or not v.strip():
            raise InputError(f"operator action needs a non-empty {what}")
    return Record(
        Kind.OPERATOR_ACTION,
        hour=_hour(hour, required=False),
        code=_choice(action, "operator action", OPERATOR_ACTIONS),
        payload=_payload(
            {"reason": reason, "actor": actor, "confirmation": confirmation, "params": dict(params or {})}
        ),
    )


def operator_applied(hour: int, action_seq: int, status: str = "applied", payload: Mapping | None = None) -> Record:
    return Record(
        Kind.OPERATOR_APPLIED,
        hour=_hour(hour),
        ref_seq=_seq(action_seq, "action_seq"),
        code=_choice(status, "operator applied status", APPLIED_CODES),
        payload=_payload(payload),
    )


def event(code: str, hour: int | None = None, pair: str | None = None, payload: Mapping | None = None) -> Record:
    return Record(
        Kind.EVENT,
        hour=_hour(hour, required=False),
        code=_ident(code, "event code"),
        pair=_ident(pair, "pair", required=False),
        payload=_payload(payload),
    )
