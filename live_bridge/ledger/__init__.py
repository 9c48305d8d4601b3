"""The live bridge's append-only, hash-chained ledger (SQLAlchemy 2, Alembic migrations shipped in
``migrations/``; SQLite under ``data/`` by default, PostgreSQL by DSN). See docs/LIVE.md, "Ledger".

    from live_bridge.ledger import Ledger, records as rec
    with Ledger.open() as led:                       # data/ledger.sqlite, migrated to head
        led.append(rec.order_intent(hour, "kq-1", "XBT/USD", "buy", Decimal("0.01"), Decimal("40000")))
        led.verify().raise_if_broken()
"""

from live_bridge.ledger import records
from live_bridge.ledger.canonical import HMAC_ENV, ZERO_HASH, entry_hash, exact_decimal
from live_bridge.ledger.migrate import LedgerError, default_dsn, head_revision, ledger_schema_version
from live_bridge.ledger.records import Entry, Kind, Record
from live_bridge.ledger.store import Ledger, LedgerConflict, LedgerIntegrityError, VerifyReport

__all__ = [
    "HMAC_ENV",
    "ZERO_HASH",
    "Entry",
    "Kind",
    "Ledger",
    "LedgerConflict",
    "LedgerError",
    "LedgerIntegrityError",
    "Record",
    "VerifyReport",
    "default_dsn",
    "entry_hash",
    "exact_decimal",
    "head_revision",
    "ledger_schema_version",
    "records",
]
