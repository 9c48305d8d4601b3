"""Paper before live: what a paper ledger says about one model (docs/MODEL_LIFECYCLE.md, "Paper
before live").

:func:`read_paper_record` opens a paper ledger read-only (never creating or migrating one), verifies
its hash chain and returns :func:`paper_record` of it: an :class:`engine.lifecycle_config.PaperRecord`
that ``kq models promote --env live`` hands to the promote action in research (research never reads
a ledger). The rules, strict on purpose:

* **paper hours**: every hour with a ``cycle_end`` ``completed`` row whose last ``model`` row names
  the candidate's manifest digest (whatever the model id; contiguous or not). Hours of any other
  digest do not count, nor do failed or skipped hours.
* **the period**: the ledger rows from the first ``model`` row of the digest to the last row of the
  last hour that ran it (a completed or failed hour).
* **unresolved mismatch**: a ``reconciliation`` row ``mismatch`` in the period, unless an operator
  ``reactivate`` was applied after it (an ``operator_applied`` ``applied`` row, later in the ledger,
  referring to a ``reactivate`` ``operator_action``).
* **parity failure**: an ``event`` ``parity_failed`` in the period, or anywhere whose payload's
  ``manifest_sha256`` names the digest. Nothing clears one: the model needs a new paper period under
  a new digest. ``kq parity`` writes it (:func:`record_parity`): every run appends its outcome,
  ``parity_passed`` or ``parity_failed``, to the paper ledger of its config, naming the model's
  manifest digest, the window and the first difference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import InputError, one_line
from engine.lifecycle_config import PaperRecord
from live_bridge.ledger import Ledger
from live_bridge.ledger import records as rec
from live_bridge.ledger.migrate import LedgerError, redacted, resolve_url
from live_bridge.ledger.records import Entry, Kind

__all__ = [
    "PARITY_FAILED",
    "PARITY_PASSED",
    "existing_ledger",
    "paper_record",
    "parity_event",
    "read_paper_record",
    "record_parity",
]

PARITY_FAILED = "parity_failed"
PARITY_PASSED = "parity_passed"


def paper_record(ledger: Ledger, manifest_sha256: str) -> PaperRecord:
    """The paper record of ``manifest_sha256`` in an open ``ledger`` (not verified here: see
    :func:`read_paper_record`)."""
    digest = str(manifest_sha256)
    # the last model row of each hour decides whose hour it is (a re-run may write it again)
    models = ledger.entries(kind=Kind.MODEL)
    last_model: dict[int, Entry] = {}
    for e in models:
        if e.hour is not None:
            last_model[e.hour] = e
    mine = {h for h, e in last_model.items() if e.digest == digest}
    ends = ledger.entries(kind=Kind.CYCLE_END)
    done = sorted({e.hour for e in ends if e.code == "completed" and e.hour in mine})
    head_seq, head_hash = ledger.head()
    if not mine:  # no paper hour yet; a parity failure naming the digest still counts
        named = tuple(
            e.hour
            for e in ledger.entries(kind=Kind.EVENT)
            if e.code == PARITY_FAILED and e.payload.get("manifest_sha256") == digest
        )
        return PaperRecord(digest, 0, parity_failures=named, ledger=ledger.dsn, head_seq=head_seq, head_hash=head_hash)
    start = min(e.seq for e in models if e.digest == digest)
    end = max([e.seq for e in ends if e.hour in mine] + [last_model[h].seq for h in mine])

    reactivates = {e.seq for e in ledger.entries(kind=Kind.OPERATOR_ACTION) if e.code == "reactivate"}
    applied = [
        e.seq for e in ledger.entries(kind=Kind.OPERATOR_APPLIED) if e.code == "applied" and e.ref_seq in reactivates
    ]
    last_reactivate = max(applied, default=0)
    mismatches = tuple(
        e.hour
        for e in ledger.entries(kind=Kind.RECONCILIATION)
        if e.code == "mismatch" and start <= e.seq <= end and e.seq > last_reactivate
    )
    parity = tuple(
        e.hour
        for e in ledger.entries(kind=Kind.EVENT)
        if e.code == PARITY_FAILED and (start <= e.seq <= end or e.payload.get("manifest_sha256") == digest)
    )
    return PaperRecord(
        manifest_sha256=digest,
        hours=len(done),
        first_hour=done[0] if done else None,
        last_hour=done[-1] if done else None,
        mismatches=mismatches,
        parity_failures=parity,
        ledger=ledger.dsn,
        head_seq=head_seq,
        head_hash=head_hash,
    )


def existing_ledger(dsn: str | Path | None, hint: str) -> str:
    """The redacted address of the ledger at ``dsn``, which must exist (a SQLite file is never
    created by a reader); one-line :class:`InputError` otherwise: ``no paper ledger at X <hint>``."""
    try:
        url = resolve_url(dsn)
    except LedgerError as e:
        raise InputError(f"paper ledger: {e}") from None
    where = redacted(url)
    if url.get_backend_name() == "sqlite" and not Path(str(url.database)).expanduser().is_file():
        raise InputError(f"no paper ledger at {where} {hint}")
    return where


def read_paper_record(dsn: str | Path, manifest_sha256: str) -> PaperRecord:
    """Open the paper ledger at ``dsn`` without creating or migrating it, verify its chain, and read
    the paper record of ``manifest_sha256``. One-line :class:`InputError` when there is no such ledger,
    it cannot be opened or its chain does not verify."""
    where = existing_ledger(dsn, "(give --paper-ledger DSN or KQ_PAPER_LEDGER_DSN)")
    try:
        with Ledger.open(dsn, migrate=False) as led:
            rep = led.verify()
            if not rep.ok:
                raise InputError(f"paper ledger {where}: {rep.message}: its paper hours cannot be trusted")
            return paper_record(led, manifest_sha256)
    except LedgerError as e:
        raise InputError(f"paper ledger {where} unreadable: {one_line(str(e), 300)}") from None


def _plain(obj: Any) -> Any:
    """A JSON value the ledger takes: floats and anything else not str/int/bool/None as text."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return str(obj)


def parity_event(summary: dict[str, Any]) -> rec.Record:
    """The ledger row of one ``kq parity`` outcome (``live_bridge.parity.ParityReport.summary()``):
    ``parity_failed`` when it found any difference, else ``parity_passed``; the payload names the
    model's manifest digest (what :func:`paper_record` keys on), the window, the counts compared and
    the first difference."""
    n = int(summary["mismatches"])
    digest = str(summary.get("manifest_sha256") or "")
    if not digest:
        raise InputError("a parity outcome without the model's manifest digest cannot be recorded")
    first = summary.get("first_mismatch")
    payload = {
        "manifest_sha256": digest,
        "model": str(summary.get("model") or ""),
        "window": summary["window"],
        "pairs": list(summary.get("pairs") or []),
        "mismatches": n,
        "compared": _plain(summary.get("compared") or {}),
        "first_mismatch": _plain(first) if first else None,
    }
    return rec.event(PARITY_FAILED if n else PARITY_PASSED, payload=payload)


def record_parity(dsn: str | Path | None, summary: dict[str, Any]) -> Entry:
    """Append the outcome of a ``kq parity`` run (:func:`parity_event`) to the paper ledger at
    ``dsn`` (None: ``KQ_LEDGER_DSN`` or the SQLite default, as the daemon). The ledger must exist:
    it is never created or migrated here (one-line :class:`InputError` otherwise), so a parity run
    cannot start a stray ledger; a failure recorded here refuses ``kq models promote --env live``
    for that digest for good."""
    row = parity_event(summary)
    where = existing_ledger(dsn, "to record the parity outcome in (--no-record skips it)")
    try:
        with Ledger.open(dsn, migrate=False) as led:
            (entry,) = led.append(row)
            return entry
    except LedgerError as e:
        raise InputError(f"paper ledger {where}: {one_line(str(e), 300)}: the parity outcome is not recorded") from None
