"""The ledger table, its indexes and the triggers that make it append-only.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_REFUSE = "ledger is append-only"


def upgrade() -> None:
    pg = op.get_bind().dialect.name == "postgresql"
    # exact decimals: NUMERIC on PostgreSQL; TEXT on SQLite (its NUMERIC affinity stores binary floats)
    dec = sa.Numeric() if pg else sa.Text()
    op.create_table(
        "ledger_entry",
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
        sa.Column("qty", dec),
        sa.Column("price", dec),
        sa.Column("fee", dec),
        sa.Column("cost", dec),
        sa.Column("ref_seq", sa.BigInteger),
        sa.Column("digest", sa.String(64)),
        sa.Column("blob", sa.LargeBinary),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.CheckConstraint("seq >= 1", name="ck_ledger_entry_seq"),
    )
    op.create_index("ix_ledger_entry_kind_seq", "ledger_entry", ["kind", "seq"])
    op.create_index("ix_ledger_entry_hour_seq", "ledger_entry", ["hour", "seq"])
    op.create_index("ix_ledger_entry_cl_ord_id", "ledger_entry", ["cl_ord_id", "seq"])
    op.create_index("ix_ledger_entry_ref_seq", "ledger_entry", ["ref_seq"])
    # a trade id is recorded once; one intent and one terminal outcome per client order id; an
    # operator action is applied once
    op.create_index("uq_ledger_entry_trade_id", "ledger_entry", ["trade_id"], unique=True)
    for name, cols, kind in (
        ("uq_ledger_entry_intent", ["cl_ord_id"], "order_intent"),
        ("uq_ledger_entry_final", ["cl_ord_id"], "order_final"),
        ("uq_ledger_entry_applied", ["ref_seq"], "operator_applied"),
    ):
        where = sa.text(f"kind = '{kind}'")
        op.create_index(name, "ledger_entry", cols, unique=True, sqlite_where=where, postgresql_where=where)

    if pg:
        op.execute(f"""
            CREATE FUNCTION ledger_entry_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION '{_REFUSE}: % on % refused', TG_OP, TG_TABLE_NAME;
            END $$""")
        op.execute("""CREATE TRIGGER ledger_entry_no_update_delete BEFORE UPDATE OR DELETE ON ledger_entry
                      FOR EACH ROW EXECUTE FUNCTION ledger_entry_refuse_change()""")
        op.execute("""CREATE TRIGGER ledger_entry_no_truncate BEFORE TRUNCATE ON ledger_entry
                      FOR EACH STATEMENT EXECUTE FUNCTION ledger_entry_refuse_change()""")
    else:
        for op_name in ("UPDATE", "DELETE"):
            op.execute(f"""CREATE TRIGGER ledger_entry_no_{op_name.lower()} BEFORE {op_name} ON ledger_entry
                           BEGIN SELECT RAISE(ABORT, '{_REFUSE}: {op_name} on ledger_entry refused'); END""")


def downgrade() -> None:
    raise RuntimeError("the ledger is append-only: its migrations are never reversed")
