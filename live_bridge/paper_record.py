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
  a new digest (``kq parity`` itself is planned, issue 16; this is its hook).
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import InputError, one_line
from engine.lifecycle_config import PaperRecord
from live_bridge.ledger import Ledger
from live_bridge.ledger.migrate import LedgerError, redacted, resolve_url
from live_bridge.ledger.records import Entry, Kind

__all__ = ["PARITY_FAILED", "paper_record", "read_paper_record"]

PARITY_FAILED = "parity_failed"


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
    if not mine:
        return PaperRecord(digest, 0, ledger=ledger.dsn, head_seq=head_seq, head_hash=head_hash)
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


def read_paper_record(dsn: str | Path, manifest_sha256: str) -> PaperRecord:
    """Open the paper ledger at ``dsn`` without creating or migrating it, verify its chain, and read
    the paper record of ``manifest_sha256``. One-line :class:`InputError` when there is no such ledger,
    it cannot be opened or its chain does not verify."""
    try:
        url = resolve_url(dsn)
    except LedgerError as e:
        raise InputError(f"paper ledger: {e}") from None
    where = redacted(url)
    if url.get_backend_name() == "sqlite" and not Path(str(url.database)).expanduser().is_file():
        raise InputError(f"no paper ledger at {where} (give --paper-ledger DSN or KQ_PAPER_LEDGER_DSN)")
    try:
        with Ledger.open(dsn, migrate=False) as led:
            rep = led.verify()
            if not rep.ok:
                raise InputError(f"paper ledger {where}: {rep.message}: its paper hours cannot be trusted")
            return paper_record(led, manifest_sha256)
    except LedgerError as e:
        raise InputError(f"paper ledger {where} unreadable: {one_line(str(e), 300)}") from None
