"""Alembic environment: runs on the connection :func:`live_bridge.ledger.migrate.upgrade` passes in
(``config.attributes["connection"]``), inside its transaction; offline SQL generation is not supported."""

from __future__ import annotations

from alembic import context

from live_bridge.ledger.schema import VERSION_TABLE

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError("the ledger's migrations run through live_bridge.ledger.migrate.upgrade()")

context.configure(connection=connection, target_metadata=None, version_table=VERSION_TABLE, transactional_ddl=True)
with context.begin_transaction():
    context.run_migrations()
