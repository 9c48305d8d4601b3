"""The ledger's Alembic migrations, shipped inside the package (``live_bridge.ledger:migrations``) so
they install with it. :func:`live_bridge.ledger.migrate.upgrade` runs them; there is no alembic.ini.

A new migration is a new module in ``versions/`` written by hand after ``0001_initial.py`` (its
``down_revision`` the current head), creating DDL explicitly (never from ``schema.py``, which follows
the newest revision). Migrations only add: the ledger's rows are never rewritten, and a column added
later is nullable so the hash of every older row stays valid (NULL columns are not hashed)."""
