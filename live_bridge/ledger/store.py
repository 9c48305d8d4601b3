"""The ledger store: :class:`Ledger` opens a database, appends chained records and answers the
queries the daemon, replay and the operator commands need. There is no update and no delete.

Appends: :meth:`Ledger.append` writes one or more records in ONE transaction that first takes the
ledger's write lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: ``LOCK TABLE ledger_entry IN SHARE ROW
EXCLUSIVE MODE``, which queues writers and never blocks readers), then reads the head (last seq and
hash), then inserts. A crash before COMMIT leaves nothing; after it, the whole batch. Two writers
cannot fork the chain: they queue on the lock, and ``seq`` is the primary key besides.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine.errors import IntegrityError, one_line
from engine.hashing import canonical_json
from live_bridge.ledger.canonical import (
    HMAC_ENV,
    ZERO_HASH,
    canonical_decimal,
    entry_hash,
    hmac_key_from_env,
    key_id,
    payload_text,
)
from live_bridge.ledger.migrate import LedgerError, make_engine, redacted, resolve_url, upgrade
from live_bridge.ledger.records import COLUMNS, DECIMAL_COLUMNS, Entry, Kind, Record
from live_bridge.ledger.schema import TABLE, entry_table

__all__ = ["Ledger", "LedgerConflict", "LedgerError", "LedgerIntegrityError", "VerifyReport"]

T = entry_table
_KINDS = {k.value for k in Kind}
#: what identifies a fill; a second append with the same trade id must match these to be a no-op
#: (decimals by value: "0.50" from one report equals "0.5" from another)
_FILL_IDENTITY = ("pair", "cl_ord_id", "txid", "side", "code", "qty", "price", "fee", "cost", "payload")


class LedgerConflict(LedgerError):
    """A record that contradicts what the ledger holds (a second intent for a client order id, a
    different fill under a recorded trade id, a second terminal outcome, ...)."""


class LedgerIntegrityError(IntegrityError):
    """The hash chain does not verify."""


@dataclass(frozen=True)
class VerifyReport:
    """What :meth:`Ledger.verify` found. ``broken_seq``/``field`` name the first failing check:
    ``seq`` (a row missing: deleted), ``prev_hash`` (the link to the previous row: a row inserted,
    reordered, or an earlier row re-hashed), ``hash`` (the row's content differs from what was
    hashed: an edited row), ``digest`` (a snapshot's or bars' digest differs from its bytes), a
    column name (a stored value that is not in canonical form), or ``anchor``."""

    ok: bool
    rows: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None
    field: str | None = None
    reason: str | None = None

    @property
    def message(self) -> str:
        if self.ok:
            return f"ledger verified: {self.rows} rows, head seq {self.head_seq} hash {self.head_hash}"
        return f"ledger broken at seq {self.broken_seq} ({self.field}): {self.reason}"

    def raise_if_broken(self) -> VerifyReport:
        if not self.ok:
            raise LedgerIntegrityError(self.message)
        return self


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _utc_text(dt: datetime) -> str:
    if dt.tzinfo is None:
        raise LedgerError("the ledger clock must return timezone-aware datetimes")
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decode_decimal(v: Any, col: str) -> Decimal | None:
    """A stored decimal column (canonical digit string) as a Decimal; ValueError if not canonical."""
    if v is None:
        return None
    try:
        d = Decimal(v) if isinstance(v, str) else None
    except InvalidOperation:
        d = None
    if d is None or canonical_decimal(d, col) != v:
        raise ValueError(f"stored value {str(v)[:40]!r} is not a canonical decimal")
    return d


def _stored(row: sa.Row) -> dict[str, Any]:
    m = dict(row._mapping)
    if m.get("blob") is not None:
        m["blob"] = bytes(m["blob"])
    return m


def _record_cols(r: Record) -> dict[str, Any]:
    """A record's columns as they are stored: decimals as canonical digit strings."""
    cols = r.columns()
    cols["kind"] = r.kind.value
    for c in DECIMAL_COLUMNS:
        if cols[c] is not None:
            cols[c] = canonical_decimal(cols[c], c)
    return cols


def _entry(m: dict[str, Any]) -> Entry:
    vals = dict(m)
    for c in DECIMAL_COLUMNS:
        vals[c] = _decode_decimal(m[c], c)
    vals["payload"] = json.loads(m["payload"])
    return Entry(**vals)


class Ledger:
    """An open ledger. Use :meth:`open`; close with :meth:`close` or a ``with`` block."""

    def __init__(
        self,
        engine: sa.Engine,
        url: sa.URL,
        schema_version: str,
        clock: Callable[[], datetime] | None = None,
        hmac_key: bytes | None = None,
    ) -> None:
        self._engine = engine
        self._url = url
        self.schema_version = schema_version
        self._clock = clock or _utc_now
        self._key = hmac_key

    # ---- opening --------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        dsn: str | Path | None = None,
        *,
        schema: str | None = None,
        migrate: bool = True,
        clock: Callable[[], datetime] | None = None,
        busy_timeout_s: float = 60.0,
        hmac_key: bytes | str | None = None,
    ) -> Ledger:
        """Open (creating and migrating to the newest revision) the ledger at ``dsn``: None ->
        ``KQ_LEDGER_DSN`` or ``data/ledger.sqlite``; a path -> SQLite; ``postgresql://...`` ->
        PostgreSQL (``schema``: its tables live in that schema, created if absent). Refuses, with a
        one-line :class:`LedgerError`, an unreachable database and one at a revision this code does not
        know. ``clock`` (tests) returns the aware datetime recorded on each row. ``busy_timeout_s``
        (SQLite) is how long a writer waits for another's write lock before a one-line LedgerError.
        ``hmac_key`` (default: ``KQ_LEDGER_HMAC_KEY``, if set) keys the chain: the first open with a
        key (``migrate=True``) appends a ``ledger_key`` row naming the key (never the key itself),
        and every row from it on is hashed with HMAC-SHA256 (see :meth:`verify`)."""
        key = hmac_key.encode("utf-8") if isinstance(hmac_key, str) else hmac_key
        if key is None:
            key = hmac_key_from_env()
        elif len(key) < 16:
            raise LedgerError("the ledger's HMAC key must be at least 16 bytes")
        url = resolve_url(dsn)
        engine = make_engine(url, schema, busy_timeout_s)
        where = redacted(url) + (f" (schema {schema})" if schema else "")
        try:
            version = upgrade(engine, where, schema, migrate)
        except LedgerError:
            engine.dispose()
            raise
        except sa.exc.DBAPIError as e:
            engine.dispose()
            msg = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
            raise LedgerError(f"ledger {where}: {one_line(msg, 300)}") from None
        led = cls(engine, url, version, clock, key)
        if key is not None and migrate:
            try:
                led.append()  # writes the ledger_key row if the ledger is not keyed yet
            except LedgerError:
                led.close()
                raise
        return led

    @property
    def dsn(self) -> str:
        """The database URL, password hidden."""
        return redacted(self._url)

    @property
    def backend(self) -> str:
        return self._engine.dialect.name

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextmanager
    def _db_errors(self) -> Iterator[None]:
        """A database error (SQLite busy past its timeout, a lost server, a refused statement) as a
        one-line LedgerError naming the ledger (never the password); the transaction is rolled back."""
        try:
            yield
        except sa.exc.DBAPIError as e:
            text = str(e.orig).strip() if e.orig is not None else ""
            msg = text.splitlines()[0] if text else type(e).__name__
            raise LedgerError(f"ledger {self.dsn}: {one_line(msg, 300)}") from None

    @contextmanager
    def _write(self) -> Iterator[sa.Connection]:
        with self._db_errors(), self._engine.connect().execution_options(ledger_write=True) as conn, conn.begin():
            if self.backend == "postgresql":
                conn.exec_driver_sql(f"LOCK TABLE {TABLE} IN SHARE ROW EXCLUSIVE MODE")
            yield conn

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with self._db_errors(), self._engine.connect() as conn:
            yield conn

    # ---- appending ------------------------------------------------------------------------------

    @staticmethod
    def _head(conn: sa.Connection) -> tuple[int, str]:
        row = conn.execute(sa.select(T.c.seq, T.c.hash).order_by(T.c.seq.desc()).limit(1)).first()
        return (0, ZERO_HASH) if row is None else (int(row.seq), row.hash)

    def append(self, *records: Record) -> list[Entry]:
        """Chain and write ``records`` in one transaction; returns their entries in order. A fill
        whose trade id is already recorded with the same content returns the stored entry and writes
        nothing (idempotent: a fill found again after a crash is not counted twice); with different
        content it raises :class:`LedgerConflict` and nothing of the batch is written."""
        for r in records:
            if not isinstance(r, Record):
                raise TypeError(
                    f"Ledger.append takes records built by live_bridge.ledger.records, got {type(r).__name__}"
                )
            if r.kind == Kind.LEDGER_KEY:
                raise LedgerError("ledger_key rows are written by the ledger itself")
        if not records and self._key is None:
            return []
        with self._write() as conn:
            seq, prev = self._head(conn)
            key, activate = self._signing_key(conn)
            if activate:
                kid = key_id(activate)
                records = (
                    Record(Kind.LEDGER_KEY, code=kid, payload=payload_text({"alg": "HMAC-SHA256", "key_id": kid})),
                    *records,
                )
            recorded = _utc_text(self._clock())  # under the lock: recorded times follow seq order
            batch: list[dict[str, Any]] = []
            out: list[Entry] = []
            for r in records:
                if r.kind == Kind.LEDGER_KEY:
                    known = None
                else:
                    known = self._check(conn, r, batch)
                if known is not None:
                    out.append(known)
                    continue
                seq += 1
                cols = _record_cols(r)
                cols.update(seq=seq, recorded_utc=recorded)
                h = entry_hash(prev, cols, key)
                cols.update(prev_hash=prev, hash=h)
                batch.append(cols)
                if r.kind != Kind.LEDGER_KEY:
                    out.append(_entry(cols))
                prev = h
            if batch:
                conn.execute(sa.insert(T), batch)
        return out

    def _signing_key(self, conn: sa.Connection) -> tuple[bytes | None, bytes | None]:
        """(the key new rows are hashed with, the key to activate now or None), checked against the
        ledger's ``ledger_key`` row: a keyed ledger is never appended to without its key."""
        row = conn.execute(
            sa.select(T.c.seq, T.c.code).where(T.c.kind == Kind.LEDGER_KEY.value).order_by(T.c.seq).limit(1)
        ).first()
        if row is None:
            return self._key, self._key
        if self._key is None:
            raise LedgerError(f"this ledger is HMAC-keyed from seq {row.seq}: set {HMAC_ENV} to append to it")
        if row.code != key_id(self._key):
            raise LedgerError(f"{HMAC_ENV} is not the key this ledger was keyed with (seq {row.seq})")
        return self._key, None

    @property
    def keyed(self) -> bool:
        """Whether this handle holds an HMAC key (rows it appends are keyed)."""
        return self._key is not None

    def _find(self, conn: sa.Connection, batch: list[dict], **where: Any) -> dict | None:
        """The first row (stored, else earlier in this batch) whose columns equal ``where``."""
        for cols in batch:
            if all(cols.get(k) == v for k, v in where.items()):
                return cols
        q = sa.select(T).where(*[T.c[k] == v for k, v in where.items()]).order_by(T.c.seq).limit(1)
        row = conn.execute(q).first()
        return None if row is None else _stored(row)

    def _check(self, conn: sa.Connection, r: Record, batch: list[dict]) -> Entry | None:
        k = r.kind
        if k == Kind.ORDER_INTENT:
            old = self._find(conn, batch, kind=Kind.ORDER_INTENT.value, cl_ord_id=r.cl_ord_id)
            if old is not None:
                raise LedgerConflict(
                    f"cl_ord_id {r.cl_ord_id} already has an order intent (seq {old['seq']}); "
                    "a client order id is never reused"
                )
            return None
        if k == Kind.FILL:
            old = self._find(conn, batch, kind=Kind.FILL.value, trade_id=r.trade_id)
            if old is not None:
                new = _record_cols(r)
                for c in _FILL_IDENTITY:
                    a, b = old.get(c), new.get(c)
                    same = a == b or (c in DECIMAL_COLUMNS and a is not None and b is not None and D(a) == D(b))
                    if not same:
                        raise LedgerConflict(
                            f"trade {r.trade_id} is already recorded (seq {old['seq']}) with {c} {a!r}, not {b!r}"
                        )
                return _entry(old)
        if k in (Kind.ORDER_REQUEST, Kind.ORDER_RESPONSE, Kind.CANCEL, Kind.ORDER_FINAL) or (
            k == Kind.FILL and r.code == "own"
        ):
            intent = self._find(conn, batch, kind=Kind.ORDER_INTENT.value, cl_ord_id=r.cl_ord_id)
            if intent is None:
                raise LedgerError(
                    f"{k.value} for cl_ord_id {r.cl_ord_id} without an order intent: the intent "
                    "is written before the request is sent"
                )
            if k == Kind.FILL and (intent["pair"], intent["side"]) != (r.pair, r.side):
                raise LedgerConflict(
                    f"fill {r.trade_id} is a {r.side} of {r.pair} but its intent "
                    f"{r.cl_ord_id} is a {intent['side']} of {intent['pair']}"
                )
        if k == Kind.ORDER_FINAL:
            old = self._find(conn, batch, kind=Kind.ORDER_FINAL.value, cl_ord_id=r.cl_ord_id)
            if old is not None:
                raise LedgerConflict(
                    f"cl_ord_id {r.cl_ord_id} already has its final outcome {old['code']} (seq {old['seq']})"
                )
        if k == Kind.ORDER_RESPONSE and r.ref_seq is not None:
            req = self._find(conn, batch, seq=r.ref_seq)
            if req is None or req["kind"] != Kind.ORDER_REQUEST.value or req["cl_ord_id"] != r.cl_ord_id:
                raise LedgerError(f"order_response refers to seq {r.ref_seq}, which is not a request of {r.cl_ord_id}")
        if k == Kind.OPERATOR_APPLIED:
            act = self._find(conn, batch, seq=r.ref_seq)
            if act is None or act["kind"] != Kind.OPERATOR_ACTION.value:
                raise LedgerError(f"operator_applied refers to seq {r.ref_seq}, which is not an operator action")
            old = self._find(conn, batch, kind=Kind.OPERATOR_APPLIED.value, ref_seq=r.ref_seq)
            if old is not None:
                raise LedgerConflict(f"operator action {r.ref_seq} was already applied (seq {old['seq']})")
        return None

    # ---- queries --------------------------------------------------------------------------------

    def _select(self, q) -> list[Entry]:
        with self._read() as conn:
            return [_entry(_stored(r)) for r in conn.execute(q)]

    def head(self) -> tuple[int, str]:
        """(last seq, its hash); (0, 64 zeros) for an empty ledger. Kept elsewhere (a log line, a
        ticket), it anchors :meth:`verify` against a rewrite of the whole tail."""
        with self._read() as conn:
            return self._head(conn)

    def count(self) -> int:
        with self._read() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(T)).scalar_one())

    def entry(self, seq: int) -> Entry | None:
        rows = self._select(sa.select(T).where(T.c.seq == seq))
        return rows[0] if rows else None

    def entries(self, hour: int | None = None, kind: Kind | str | None = None) -> list[Entry]:
        """Entries of ``hour`` (all hours if None), optionally of one ``kind``, in seq order."""
        q = sa.select(T)
        if hour is not None:
            q = q.where(T.c.hour == int(hour))
        if kind is not None:
            q = q.where(T.c.kind == Kind(kind).value)
        return self._select(q.order_by(T.c.seq))

    def iter_entries(self, after_seq: int = 0, batch: int = 1000) -> Iterator[Entry]:
        """Every entry after ``after_seq`` in seq order, read in pages of ``batch``."""
        last = int(after_seq)
        while True:
            page = self._select(sa.select(T).where(T.c.seq > last).order_by(T.c.seq).limit(batch))
            yield from page
            if len(page) < batch:
                return
            last = page[-1].seq

    def last_completed_hour(self) -> int | None:
        """The latest hour whose cycle ended ``completed`` (None before the first)."""
        q = sa.select(sa.func.max(T.c.hour)).where(T.c.kind == Kind.CYCLE_END.value, T.c.code == "completed")
        with self._read() as conn:
            v = conn.execute(q).scalar_one_or_none()
        return None if v is None else int(v)

    def open_intents(self) -> list[Entry]:
        """Order intents without an ``order_final``: after a crash, each may or may not have reached
        the exchange and must be looked up by its cl_ord_id before anything is sent."""
        f = T.alias("f")
        done = sa.select(f.c.seq).where(f.c.kind == Kind.ORDER_FINAL.value, f.c.cl_ord_id == T.c.cl_ord_id)
        return self._select(sa.select(T).where(T.c.kind == Kind.ORDER_INTENT.value, ~sa.exists(done)).order_by(T.c.seq))

    def order_entries(self, cl_ord_id: str) -> list[Entry]:
        """Everything recorded about one client order id (intent, requests, responses, fills, ...)."""
        return self._select(sa.select(T).where(T.c.cl_ord_id == cl_ord_id).order_by(T.c.seq))

    def fills_since(self, seq: int = 0) -> list[Entry]:
        """Fills recorded after ``seq``."""
        return self._select(sa.select(T).where(T.c.kind == Kind.FILL.value, T.c.seq > int(seq)).order_by(T.c.seq))

    def last_risk_snapshot(self, phase: str | None = None) -> Entry | None:
        """The newest risk snapshot (of ``phase`` "before"/"after" if given); its ``blob`` is the
        RiskMachine.snapshot() bytes, checked against its digest."""
        q = sa.select(T).where(T.c.kind == Kind.RISK_SNAPSHOT.value)
        if phase is not None:
            q = q.where(T.c.code == phase)
        rows = self._select(q.order_by(T.c.seq.desc()).limit(1))
        if not rows:
            return None
        e = rows[0]
        if e.blob is None or hashlib.sha256(e.blob).hexdigest() != e.digest:
            raise LedgerIntegrityError(f"risk snapshot at seq {e.seq}: its bytes do not match its digest")
        return e

    def pending_operator_actions(self) -> list[Entry]:
        """Operator actions without an ``operator_applied`` (to be applied at the next bar close)."""
        a = T.alias("a")
        applied = sa.select(a.c.seq).where(a.c.kind == Kind.OPERATOR_APPLIED.value, a.c.ref_seq == T.c.seq)
        return self._select(
            sa.select(T).where(T.c.kind == Kind.OPERATOR_ACTION.value, ~sa.exists(applied)).order_by(T.c.seq)
        )

    # ---- verification ---------------------------------------------------------------------------

    def verify(self, anchor: tuple[int, str] | None = None, batch: int = 2000) -> VerifyReport:
        """Walk the whole chain from seq 1 and report the first broken row and check (see
        :class:`VerifyReport`). ``anchor`` = a (seq, hash) recorded elsewhere earlier: the chain must
        still hold that row (detects a deleted or rewritten tail, which the chain alone cannot).

        Keyed ledgers: rows from the ``ledger_key`` row on must carry HMAC-SHA256 hashes under this
        handle's key (field ``hmac`` when the key is missing or another one; ``hash`` for a row
        forged without it); with a key and rows but no ``ledger_key`` row, the report is broken
        (field ``hmac``: the key row was removed and the chain re-hashed, or no keyed open wrote it)."""
        expected, prev, rows = 1, ZERO_HASH, 0
        keyed_from: int | None = None

        def broken(seq: int, fld: str, reason: str) -> VerifyReport:
            return VerifyReport(False, rows, expected - 1, prev, seq, fld, reason)

        anchored = anchor is None
        last = 0
        while True:
            with self._read() as conn:
                page = [
                    _stored(r) for r in conn.execute(sa.select(T).where(T.c.seq > last).order_by(T.c.seq).limit(batch))
                ]
            for m in page:
                seq = int(m["seq"])
                if seq != expected:
                    return broken(
                        expected, "seq", f"row {expected} is missing (next stored row is {seq}): a row was deleted"
                    )
                if m["prev_hash"] != prev:
                    return broken(
                        seq,
                        "prev_hash",
                        "does not link to the previous row's hash: a row was "
                        "inserted, reordered or re-hashed before it",
                    )
                if m["kind"] == Kind.LEDGER_KEY.value:
                    if keyed_from is not None:
                        return broken(seq, "hmac", f"a second key row (the ledger is keyed from seq {keyed_from})")
                    if self._key is None:
                        return broken(seq, "hmac", f"the ledger is HMAC-keyed from here: set {HMAC_ENV} to verify it")
                    if m["code"] != key_id(self._key):
                        return broken(seq, "hmac", f"{HMAC_ENV} is not the key this ledger was keyed with")
                    keyed_from = seq
                problem = _content_problem(m)
                if problem is not None:
                    return broken(seq, *problem)
                if entry_hash(prev, m, self._key if keyed_from is not None else None) != m["hash"]:
                    return broken(seq, "hash", "the row's content does not match its hash: the row was edited")
                if anchor is not None and seq == anchor[0]:
                    if m["hash"] != anchor[1]:
                        return broken(
                            seq,
                            "anchor",
                            f"hash {m['hash']} differs from the anchor {anchor[1]}: "
                            "the chain was rewritten from here or earlier",
                        )
                    anchored = True
                prev, expected, rows = m["hash"], expected + 1, rows + 1
            if len(page) < batch:
                break
            last = int(page[-1]["seq"])
        if self._key is not None and keyed_from is None and rows:
            return broken(
                expected,
                "hmac",
                f"{HMAC_ENV} is set but no row is keyed: the key row was removed and the chain "
                "re-hashed, or the ledger was never opened with the key",
            )
        if anchor is not None and not anchored:
            return broken(
                expected,
                "anchor",
                f"the chain ends at seq {expected - 1} but the anchor names seq "
                f"{anchor[0]}: rows were deleted from the end",
            )
        return VerifyReport(True, rows, expected - 1, prev)


def _content_problem(m: dict[str, Any]) -> tuple[str, str] | None:
    """A stored value that is not in the form the ledger writes, or a digest that does not match."""
    if m["kind"] not in _KINDS:
        return "kind", f"unknown kind {str(m['kind'])[:40]!r}"
    for c in DECIMAL_COLUMNS:
        try:
            _decode_decimal(m[c], c)
        except Exception as e:  # a hand-planted value of any shape
            return c, one_line(str(e), 200)
    try:
        obj = json.loads(m["payload"])
        if not isinstance(obj, dict) or canonical_json(obj) != m["payload"]:
            raise ValueError
    except ValueError:
        return "payload", "the payload is not canonical JSON of an object"
    if m["kind"] == Kind.RISK_SNAPSHOT.value and (
        m["blob"] is None or hashlib.sha256(m["blob"]).hexdigest() != m["digest"]
    ):
        return "digest", "the snapshot's bytes do not match its digest"
    if (
        m["kind"] == Kind.BARS.value
        and hashlib.sha256(canonical_json(obj.get("bars")).encode()).hexdigest() != m["digest"]
    ):
        return "digest", "the bars do not match their digest"
    for c in COLUMNS:
        if c not in m:
            return c, "column missing"
    return None
