"""Database addresses and schema migrations for the ledger.

:func:`resolve_url` turns a DSN into a SQLAlchemy URL (``None`` -> ``KQ_LEDGER_DSN`` or
``sqlite:///data/ledger.sqlite``; a plain path -> SQLite; ``postgresql://`` -> psycopg 3).
:func:`upgrade` brings a database to the newest revision shipped in ``migrations/versions`` and
refuses one whose revision this code does not know (a newer krakenquant wrote it).
:func:`ledger_schema_version` reads a database's revision without changing anything.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import sqlalchemy as sa

from engine.errors import KQError, one_line
from engine.paths import data_dir
from live_bridge.ledger.schema import VERSION_TABLE

__all__ = [
    "HEAD",
    "LedgerError",
    "default_dsn",
    "head_revision",
    "ledger_schema_version",
    "make_engine",
    "redacted",
    "resolve_url",
    "upgrade",
]

#: the newest revision in migrations/versions (a test checks it against Alembic's view): opening a
#: ledger already there needs no Alembic import (the daemon's and the CLI's start-up stays fast)
HEAD = "0002"
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class LedgerError(KQError):
    """A ledger that cannot be opened or written as asked (bad DSN, unreachable, unknown revision,
    a record the ledger refuses)."""


def default_dsn() -> str:
    """``KQ_LEDGER_DSN`` if set, else the SQLite file ``data/ledger.sqlite``."""
    return os.environ.get("KQ_LEDGER_DSN") or f"sqlite:///{data_dir() / 'ledger.sqlite'}"


def resolve_url(dsn: str | Path | None = None) -> sa.URL:
    raw = default_dsn() if dsn is None else dsn
    if isinstance(raw, Path) or "://" not in str(raw):
        path = Path(raw).expanduser()
        if not str(raw).strip():
            raise LedgerError("ledger DSN is empty")
        url = sa.URL.create("sqlite", database=str(path))
    else:
        try:
            url = sa.make_url(str(raw))
        except sa.exc.ArgumentError:
            raise LedgerError(f"ledger DSN {one_line(str(raw).split('@')[-1], 200)!r} is not a database URL") from None
    backend = url.get_backend_name()
    if backend == "sqlite":
        if url.database in (None, "", ":memory:") or str(url.database).startswith("file::memory:"):
            raise LedgerError("an in-memory SQLite ledger would be lost at exit: give a file path")
        return url.set(drivername="sqlite+pysqlite")
    if backend in ("postgresql", "postgres"):
        return url.set(drivername="postgresql+psycopg")
    raise LedgerError(f"ledger DSN scheme {url.drivername!r} not supported (sqlite:///PATH or postgresql://...)")


def redacted(url: sa.URL) -> str:
    """The URL without its password (what errors and logs may show)."""
    return url.render_as_string(hide_password=True)


def _sqlite_connect(dbapi_conn, _rec) -> None:
    # the driver must not open transactions itself: BEGIN / BEGIN IMMEDIATE are ours (_sqlite_begin)
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cur.execute("PRAGMA synchronous=FULL")  # a committed append survives power loss, not only a crash
    # a REPLACE that deletes a conflicting row fires the DELETE trigger (which refuses it) only with
    # this on; the BEFORE INSERT trigger of revision 0002 refuses such rows for every connection anyway
    cur.execute("PRAGMA recursive_triggers=ON")
    cur.close()


def _sqlite_begin(conn) -> None:
    # a write transaction takes the database's write lock at BEGIN, before it reads the chain's head:
    # two writers queue instead of both appending after the same head
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("ledger_write") else "BEGIN")


def make_engine(url: sa.URL, schema: str | None = None, busy_timeout_s: float = 60.0) -> sa.Engine:
    if url.get_backend_name() == "sqlite":
        if schema is not None:
            raise LedgerError("a schema applies to PostgreSQL ledgers only")
        path = Path(str(url.database)).expanduser()
        if not path.parent.is_dir():
            if path.parent.resolve() == data_dir().resolve():
                path.parent.mkdir(parents=True, exist_ok=True)
            else:
                raise LedgerError(f"ledger {path}: folder {path.parent} does not exist")
        eng = sa.create_engine(url, connect_args={"timeout": float(busy_timeout_s)})
        sa.event.listen(eng, "connect", _sqlite_connect)
        sa.event.listen(eng, "begin", _sqlite_begin)
        return eng
    args: dict = {"connect_timeout": 10}
    if schema is not None:
        if not isinstance(schema, str) or not _SCHEMA.fullmatch(schema):
            raise LedgerError(f"ledger schema {schema!r}: lowercase letters, digits and _ only")
        args["options"] = f"-csearch_path={schema}"
    return sa.create_engine(url, connect_args=args, pool_pre_ping=True)


def _config():
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "live_bridge.ledger:migrations")
    return cfg


def head_revision() -> str:
    """The newest revision this code ships (read from the migration scripts)."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(_config()).get_current_head())


def _known() -> set[str]:
    from alembic.script import ScriptDirectory

    return {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}


def _current(conn) -> tuple[str, ...]:
    """The revisions recorded in the version table (empty: none yet)."""
    if not sa.inspect(conn).has_table(VERSION_TABLE):
        return ()
    return tuple(r[0] for r in conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")))


def _check_known(current: tuple[str, ...], where: str) -> None:
    if current == (HEAD,):
        return
    unknown = [r for r in current if r not in _known()]
    if unknown:
        raise LedgerError(
            f"ledger {where} is at schema revision {', '.join(unknown)}, which this code does "
            f"not know (its newest is {HEAD}): a newer krakenquant wrote it; "
            "upgrade this one, never downgrade the ledger"
        )


def upgrade(engine: sa.Engine, where: str, schema: str | None = None, migrate: bool = True) -> str:
    """Bring the database to :data:`HEAD` (one transaction; concurrent openers queue on a lock) and
    return the revision. ``migrate=False`` only checks that it is already there."""
    pg = engine.dialect.name == "postgresql"
    with engine.connect() as conn, conn.begin():  # fast path: already at HEAD, no lock, no Alembic
        if _current(conn) == (HEAD,):
            return HEAD
    with engine.connect().execution_options(ledger_write=migrate) as conn, conn.begin():
        if pg and migrate:
            conn.execute(
                sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"),
                {"k": f"krakenquant-ledger-migrate:{schema or ''}"},
            )
            if schema is not None:
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        current = _current(conn)
        _check_known(current, where)
        if current == (HEAD,):
            return HEAD
        if not migrate:
            raise LedgerError(
                f"ledger {where} is at schema revision {', '.join(current) or 'none'}, not "
                f"{HEAD}: open it with migrations"
            )
        from alembic import command

        cfg = _config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        current = _current(conn)
        if current != (HEAD,):  # pragma: no cover - a migration added without moving HEAD
            raise LedgerError(f"ledger migrations ended at {current}, but this code expects {HEAD}")
    return HEAD


def ledger_schema_version(dsn: str | Path | None = None, schema: str | None = None) -> str | None:
    """The revision the database at ``dsn`` is at (None: no ledger there yet). Creates nothing.
    Raises :class:`LedgerError` (one line) when the database cannot be reached."""
    url = resolve_url(dsn)
    if url.get_backend_name() == "sqlite" and not Path(str(url.database)).expanduser().exists():
        return None
    engine = make_engine(url, schema)
    try:
        with engine.connect() as conn:
            cur = _current(conn)
    except sa.exc.DBAPIError as e:
        msg = str(e.orig).strip().splitlines()[0] if e.orig is not None else str(e)
        raise LedgerError(f"ledger {redacted(url)}: {one_line(msg, 300)}") from None
    finally:
        engine.dispose()
    return cur[0] if len(cur) == 1 else (",".join(cur) or None)
