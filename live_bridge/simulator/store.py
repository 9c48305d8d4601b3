"""SQLite persistence of the simulator's own state (accounts, balances, nonces, orders, trades,
clock, market status, faults), written through after every state change so a restart (or a
crash) resumes exactly where the exchange was.

Secrets are never stored: the ``secret`` column is always empty and every start reads the secrets
from the environment again (so a rotated KRAKEN_API_SECRET takes effect at the next start, and the
old one stops working). The file (and SQLite's -wal/-shm beside it) is created 0600; a file from an
older version that still holds secrets is scrubbed (secure_delete, WAL truncated) and set to 0600
on the first start that loads it.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import sqlite3
import threading
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import InputError

from .numbers import MAX_TIME, decimal_of, float_of, int_of

MAX_BALANCE = Decimal(10) ** 20  # a saved amount beyond this is corruption

if TYPE_CHECKING:
    from .exchange import Exchange

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (key TEXT PRIMARY KEY, name TEXT NOT NULL, secret TEXT NOT NULL,
    last_nonce TEXT NOT NULL, fee_tier TEXT, deadman REAL NOT NULL);
CREATE TABLE IF NOT EXISTS balances (account TEXT NOT NULL, asset TEXT NOT NULL, amount TEXT NOT NULL,
    PRIMARY KEY (account, asset));
CREATE TABLE IF NOT EXISTS orders (txid TEXT PRIMARY KEY, account TEXT NOT NULL, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trades (txid TEXT PRIMARY KEY, account TEXT NOT NULL, data TEXT NOT NULL);
"""
TABLES = {"meta", "accounts", "balances", "orders", "trades"}


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


class SimStore:
    """The state file, held exclusively (``flock`` on ``<state>.lock`` beside it) from open to
    :meth:`close`: a second simulator on the same file refuses to start instead of booking the same
    txids twice."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        if self.path.exists() and not self.path.is_file():
            raise InputError(f"{self.path}: the state file is not a regular file")
        self._take_lock()
        try:
            if not self.path.exists():  # created owner-only: sqlite gives -wal/-shm the same mode
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        except (sqlite3.Error, OSError) as e:
            self._release_lock()
            raise InputError(f"{self.path}: cannot open the state file ({e})") from None
        try:
            # look before writing: a file of someone else's (or missing tables) is refused untouched
            tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not tables >= TABLES:
                raise sqlite3.DatabaseError(f"tables {', '.join(sorted(TABLES - tables))} missing")
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA secure_delete=ON")  # replaced rows are zeroed, not left behind
            if not tables:
                self.conn.executescript(SCHEMA)
        except sqlite3.Error as e:
            self.close()
            raise InputError(
                f"{self.path}: not a usable simulator state file ({e}); move it aside or pass another --state"
            ) from None

    def _take_lock(self) -> None:
        lp = lock_path(self.path)
        try:
            fd = os.open(lp, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as e:
            raise InputError(f"{self.path}: cannot create the lock file {lp} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise InputError(
                f"{self.path} is in use by another simulator (lock {lp} is held); stop it first or pass another --state"
            ) from None
        self._lock_fd = fd

    @property
    def conn(self) -> sqlite3.Connection:
        """The open database; sqlite3.ProgrammingError (as sqlite3 raises itself) once closed."""
        if self._conn is None:
            raise sqlite3.ProgrammingError(f"{self.path}: the state file is closed")
        return self._conn

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def is_empty(self) -> bool:
        return self.conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0] == 0

    def save(self, ex: Exchange, dirty_orders: set[str], dirty_trades: set[str]) -> None:
        meta = {
            "now": repr(ex.clock.now()),
            "clock_mode": ex.clock.mode,
            "clock_speed": repr(ex.clock.speed),
            "status": ex.status,
            "pair_status": json.dumps(ex.pair_status),
            "seq": str(ex.seq),
            "trade_seq": str(ex.trade_seq),
            "processed": str(ex.processed),
            "faults": json.dumps(ex.faults.to_list()),
        }
        with self._lock:
            c = self.conn
            c.execute("BEGIN")
            try:
                c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
                keys = list(ex.accounts)
                marks = ", ".join("?" * len(keys))
                c.execute(f"DELETE FROM accounts WHERE key NOT IN ({marks})", keys)  # a rotated key's old row
                c.execute(f"DELETE FROM balances WHERE account NOT IN ({marks})", keys)
                for a in ex.accounts.values():
                    c.execute(
                        "INSERT OR REPLACE INTO accounts VALUES (?, ?, '', ?, ?, ?)",  # never the secret
                        (a.key, a.name, str(a.last_nonce), a.fee_tier, a.deadman),
                    )
                    c.executemany(
                        "INSERT OR REPLACE INTO balances VALUES (?, ?, ?)",
                        [(a.key, asset, str(v)) for asset, v in a.balances.items()],
                    )
                c.executemany(
                    "INSERT OR REPLACE INTO orders VALUES (?, ?, ?)",
                    [(t, ex.orders[t].account, json.dumps(ex.orders[t].to_json())) for t in dirty_orders],
                )
                c.executemany(
                    "INSERT OR REPLACE INTO trades VALUES (?, ?, ?)",
                    [(t, ex.trades[t].account, json.dumps(ex.trades[t].to_json())) for t in dirty_trades],
                )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def load(self) -> dict[str, Any]:
        with self._lock:
            c = self.conn
            meta = dict(c.execute("SELECT k, v FROM meta").fetchall())
            accounts = [
                dict(zip(("key", "name", "last_nonce", "fee_tier", "deadman"), r))
                for r in c.execute("SELECT key, name, last_nonce, fee_tier, deadman FROM accounts")
            ]
            balances: dict[str, dict[str, str]] = {}
            for acc, asset, amt in c.execute("SELECT account, asset, amount FROM balances"):
                balances.setdefault(acc, {})[asset] = amt  # parsed (strictly) by restore
            orders = [json.loads(d) for (d,) in c.execute("SELECT data FROM orders ORDER BY rowid")]
            trades = [json.loads(d) for (d,) in c.execute("SELECT data FROM trades ORDER BY rowid")]
        return {"meta": meta, "accounts": accounts, "balances": balances, "orders": orders, "trades": trades}

    def scrub(self) -> None:
        """After a successful load: owner-only modes, no secret left in the file or its WAL."""
        with self._lock:
            for p in (
                self.path,
                self.path.with_name(self.path.name + "-wal"),
                self.path.with_name(self.path.name + "-shm"),
            ):
                if p.exists():
                    os.chmod(p, 0o600)
            if self.conn.execute("SELECT COUNT(*) FROM accounts WHERE secret != ''").fetchone()[0]:
                self.conn.execute("UPDATE accounts SET secret = ''")
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.conn.execute("VACUUM")  # no free page keeps the old text either
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        """Close the database, then release the lock (idempotent)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            self._release_lock()


def restore(ex: Exchange, store: SimStore) -> bool:
    """Load a saved state into a fresh exchange; False if the file holds none. A file that cannot be
    read, or holds anything but finite numbers in range, raises InputError (one line) and is left as
    it is: nothing is written before the whole state has loaded."""
    try:
        if store.is_empty():
            return False
        s = store.load()
    except (sqlite3.Error, ValueError, InvalidOperation) as e:
        raise InputError(
            f"{store.path}: not a readable simulator state file ({_why(e)}); move it aside or pass another --state"
        ) from None
    unknown = sorted(
        {str(d.get("pair")) if isinstance(d, dict) else "?" for d in s["orders"]} - set(ex.market.instruments)
    )
    if unknown:
        raise InputError(
            f"{store.path} holds orders on pairs this market does not serve "
            f"({', '.join(unknown)}): replay the same data or start a new --state file"
        )
    try:
        _restore(ex, s)
    except (KeyError, TypeError, ValueError, AttributeError, InvalidOperation, InputError) as e:
        raise InputError(
            f"{store.path}: corrupt simulator state ({_why(e)}); move it aside or pass another --state"
        ) from None
    return True


def _why(e: BaseException) -> str:
    msg = str(e).splitlines()[0][:200] if str(e) else ""
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


def _restore(ex: Exchange, s: dict[str, Any]) -> None:
    from .exchange import Account, Order, Trade
    from .faults import STATUSES

    m = s["meta"]
    now = float_of(m["now"], "now", 0, MAX_TIME)
    status = m.get("status", "online")
    pair_status = json.loads(m.get("pair_status", "{}"))
    if (
        status not in STATUSES
        or not isinstance(pair_status, dict)
        or not all(p in ex.market.instruments and v in STATUSES for p, v in pair_status.items())
    ):
        raise ValueError("market status")
    seq, trade_seq = int_of(m.get("seq", "0"), "seq", 0), int_of(m.get("trade_seq", "0"), "trade_seq", 0)
    processed = int_of(m.get("processed", "0"), "processed", 0)
    ex.faults.load(json.loads(m.get("faults", "[]")), ex.market.resolve)
    accounts = {}
    for a in s["accounts"]:
        bal = {}
        for asset, amt in s["balances"].get(a["key"], {}).items():
            bal[asset] = decimal_of(amt, f"balance {asset}", 0, MAX_BALANCE)
        accounts[a["key"]] = Account(
            name=str(a["name"]),
            key=str(a["key"]),
            secret="",
            balances=bal,
            last_nonce=int_of(a["last_nonce"], "last_nonce", 0),
            fee_tier=a["fee_tier"],
            deadman=float_of(a["deadman"], "deadman", 0, MAX_TIME),
        )
    orders = {}
    for d in s["orders"]:
        o = Order.from_json(d)
        _finite(o, ("vol", "vol_exec", "cost", "fee", "price", "poll_price", "opentm", "expiretm", "closetm"))
        orders[o.txid] = o
    trades = {}
    for d in s["trades"]:
        t = Trade.from_json(d)
        _finite(t, ("price", "vol", "cost", "fee", "time"))
        trades[t.txid] = t
    # everything parsed: only now does the exchange change
    ex.clock.set(max(now, ex.clock.now()))
    ex.status, ex.pair_status = status, pair_status
    ex.seq, ex.trade_seq, ex.processed = seq, trade_seq, processed
    ex.faults.apply_market(ex.market)
    ex.accounts = accounts
    ex.orders = orders
    ex.trades = trades
    ex.open_ids = {t: None for t, o in sorted(ex.orders.items(), key=lambda kv: kv[1].seqno) if o.status == "open"}


def _finite(obj: Any, fields: tuple[str, ...]) -> None:
    for f in fields:
        v = getattr(obj, f)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float, Decimal)):
            raise TypeError(f"{f} is {type(v).__name__}")
        if (isinstance(v, Decimal) and not v.is_finite()) or (isinstance(v, float) and not math.isfinite(v)):
            raise ValueError(f"{f} is not finite")
        # abs() of each type (a Decimal's rounds to the context, as always); split only because mypy
        # types abs() of the int | float | Decimal union as object
        size: Decimal | float
        if isinstance(v, Decimal):
            size = abs(v)
        else:
            size = abs(v)
        if size > MAX_BALANCE:
            raise ValueError(f"{f} is out of range")
