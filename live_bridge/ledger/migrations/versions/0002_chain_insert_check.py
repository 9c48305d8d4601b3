"""Inserts must extend the chain: the database itself refuses a row unless it is the next seq and links
to the head's hash, and (SQLite) a row that would take the place of an existing one.

Before this revision SQLite's ``INSERT OR REPLACE`` / ``REPLACE INTO`` could overwrite a row: the
REPLACE deletes the old row without firing the DELETE trigger (SQLite fires delete triggers for a
REPLACE only with ``PRAGMA recursive_triggers`` on, a per-connection setting). A BEFORE INSERT
trigger runs before any conflict resolution, so a REPLACE of an existing seq, an ``ON CONFLICT``
upsert, a row inserted into the middle of the chain or one that does not link to the head are all
refused, whatever the connection's settings.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ZERO = "0" * 64
_REFUSE = "ledger is append-only"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # the head is read from the trigger's own table (TG_TABLE_SCHEMA), whatever the caller's
        # search_path; a VOLATILE row trigger sees the rows inserted earlier by the same statement
        op.execute(f"""
            CREATE FUNCTION ledger_entry_check_append() RETURNS trigger LANGUAGE plpgsql AS $$
            DECLARE
                head_seq bigint;
                head_hash text;
            BEGIN
                EXECUTE format('SELECT seq, hash FROM %I.%I ORDER BY seq DESC LIMIT 1',
                               TG_TABLE_SCHEMA, TG_TABLE_NAME) INTO head_seq, head_hash;
                IF head_seq IS NULL THEN
                    head_seq := 0;
                    head_hash := '{_ZERO}';
                END IF;
                IF NEW.seq IS DISTINCT FROM head_seq + 1 OR NEW.prev_hash IS DISTINCT FROM head_hash THEN
                    RAISE EXCEPTION '{_REFUSE}: INSERT of seq % refused (the next row is seq %, linked to '
                                    'the hash of seq %)', NEW.seq, head_seq + 1, head_seq;
                END IF;
                RETURN NEW;
            END $$""")
        op.execute("""CREATE TRIGGER ledger_entry_insert_extends_chain BEFORE INSERT ON ledger_entry
                      FOR EACH ROW EXECUTE FUNCTION ledger_entry_check_append()""")
        return
    # SQLite: refuse out of order / unlinked rows, and any row a REPLACE would make room for by
    # deleting another (same seq, or the same value in one of the unique indexes of 0001)
    op.execute(f"""
        CREATE TRIGGER ledger_entry_insert_extends_chain BEFORE INSERT ON ledger_entry
        BEGIN
            SELECT RAISE(ABORT, '{_REFUSE}: INSERT refused: seq must be the next one and prev_hash the head''s hash')
            WHERE NEW.seq IS NOT (SELECT COALESCE(MAX(seq), 0) + 1 FROM ledger_entry)
               OR NEW.prev_hash IS NOT COALESCE((SELECT hash FROM ledger_entry ORDER BY seq DESC LIMIT 1), '{_ZERO}');
            SELECT RAISE(ABORT, '{_REFUSE}: INSERT refused: it would replace a recorded row')
            WHERE (NEW.trade_id IS NOT NULL AND EXISTS (SELECT 1 FROM ledger_entry WHERE trade_id = NEW.trade_id))
               OR (NEW.kind IN ('order_intent', 'order_final') AND EXISTS (
                       SELECT 1 FROM ledger_entry WHERE kind = NEW.kind AND cl_ord_id = NEW.cl_ord_id))
               OR (NEW.kind = 'operator_applied' AND EXISTS (
                       SELECT 1 FROM ledger_entry WHERE kind = NEW.kind AND ref_seq = NEW.ref_seq));
        END""")


def downgrade() -> None:
    raise RuntimeError("the ledger is append-only: its migrations are never reversed")
