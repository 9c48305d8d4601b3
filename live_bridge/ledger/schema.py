"""The ledger's table as SQLAlchemy Core sees it (reads and inserts). The DDL that creates it, its
indexes and its append-only triggers lives in the Alembic migrations (``migrations/versions``); a
change here needs a new migration."""

from __future__ import annotations

from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

from live_bridge.ledger.canonical import canonical_decimal, to_decimal

__all__ = ["TABLE", "VERSION_TABLE", "ExactDecimal", "entry_table", "metadata"]

TABLE = "ledger_entry"
#: Alembic's version table, named for the ledger so a database shared with other tools does not clash
VERSION_TABLE = "ledger_alembic_version"


class ExactDecimal(TypeDecorator):
    """NUMERIC (arbitrary precision) on PostgreSQL, TEXT on SQLite (whose NUMERIC affinity would turn
    the value into a binary float). Binds a canonical Decimal; reads back the canonical digit string
    (converted to Decimal, and checked, by the store)."""

    impl = sa.Text
    cache_ok = True

    def load_dialect_impl(self, dialect):
        if dialect.name == "postgresql":
            return dialect.type_descriptor(sa.Numeric(asdecimal=True))
        return dialect.type_descriptor(sa.Text())

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        s = canonical_decimal(to_decimal(value))
        return Decimal(s) if dialect.name == "postgresql" else s

    def process_result_value(self, value, dialect):
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, Decimal):
            return canonical_decimal(value)
        return repr(value)  # anything else (a float planted by hand) fails the store's check


metadata = sa.MetaData()

entry_table = sa.Table(
    TABLE,
    metadata,
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("hour", sa.BigInteger),
    sa.Column("recorded_utc", sa.String(32), nullable=False),
    sa.Column("pair", sa.String(64)),
    sa.Column("cl_ord_id", sa.String(64)),
    sa.Column("txid", sa.String(64)),
    sa.Column("trade_id", sa.String(64)),
    sa.Column("side", sa.String(8)),
    sa.Column("code", sa.String(64)),
    sa.Column("qty", ExactDecimal()),
    sa.Column("price", ExactDecimal()),
    sa.Column("fee", ExactDecimal()),
    sa.Column("cost", ExactDecimal()),
    sa.Column("ref_seq", sa.BigInteger),
    sa.Column("digest", sa.String(64)),
    sa.Column("blob", sa.LargeBinary),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("prev_hash", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
)
