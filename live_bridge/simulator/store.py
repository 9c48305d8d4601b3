"""SQLite persistence of the simulator's own state (accounts, balances, nonces, orders, trades,
clock, market status, faults), written through after every state change so a restart (or a
crash) resumes exactly where the exchange was.

Secrets are stored as given (the state file is the exchange's own database, like Kraken's); keep
it out of the repository (default under data/, which git ignores).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


class SimStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)

    def is_empty(self) -> bool:
        return self.conn.execute("SELECT COUNT(*) FROM meta").fetchone()[0] == 0

    def save(self, ex: "Exchange", dirty_orders: set[str], dirty_trades: set[str]) -> None:
        meta = {"now": repr(ex.clock.now()), "clock_mode": ex.clock.mode, "clock_speed": repr(ex.clock.speed),
                "status": ex.status, "pair_status": json.dumps(ex.pair_status), "seq": str(ex.seq),
                "trade_seq": str(ex.trade_seq), "processed": str(ex.processed),
                "faults": json.dumps(ex.faults.to_list())}
        with self._lock:
            c = self.conn
            c.execute("BEGIN")
            try:
                c.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
                for a in ex.accounts.values():
                    c.execute("INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?, ?, ?)",
                              (a.key, a.name, a.secret, str(a.last_nonce), a.fee_tier, a.deadman))
                    c.executemany("INSERT OR REPLACE INTO balances VALUES (?, ?, ?)",
                                  [(a.key, asset, str(v)) for asset, v in a.balances.items()])
                c.executemany("INSERT OR REPLACE INTO orders VALUES (?, ?, ?)",
                              [(t, ex.orders[t].account, json.dumps(ex.orders[t].to_json())) for t in dirty_orders])
                c.executemany("INSERT OR REPLACE INTO trades VALUES (?, ?, ?)",
                              [(t, ex.trades[t].account, json.dumps(ex.trades[t].to_json())) for t in dirty_trades])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def load(self) -> dict[str, Any]:
        with self._lock:
            c = self.conn
            meta = dict(c.execute("SELECT k, v FROM meta").fetchall())
            accounts = [dict(zip(("key", "name", "secret", "last_nonce", "fee_tier", "deadman"), r))
                        for r in c.execute("SELECT key, name, secret, last_nonce, fee_tier, deadman FROM accounts")]
            balances: dict[str, dict[str, Decimal]] = {}
            for acc, asset, amt in c.execute("SELECT account, asset, amount FROM balances"):
                balances.setdefault(acc, {})[asset] = Decimal(amt)
            orders = [json.loads(d) for (d,) in c.execute("SELECT data FROM orders ORDER BY rowid")]
            trades = [json.loads(d) for (d,) in c.execute("SELECT data FROM trades ORDER BY rowid")]
        return {"meta": meta, "accounts": accounts, "balances": balances, "orders": orders, "trades": trades}

    def close(self) -> None:
        with self._lock:
            self.conn.close()


def restore(ex: "Exchange", store: SimStore) -> bool:
    """Load a saved state into a fresh exchange; False if the file holds none."""
    from .exchange import Account, Order, Trade

    if store.is_empty():
        return False
    s = store.load()
    m = s["meta"]
    unknown = sorted({d["pair"] for d in s["orders"]} - set(ex.market.instruments))
    if unknown:
        from engine.errors import InputError

        raise InputError(f"{store.path} holds orders on pairs this market does not serve "
                         f"({', '.join(unknown)}): replay the same data or start a new --state file")
    ex.clock.set(max(float(m["now"]), ex.clock.now()))
    ex.status = m.get("status", "online")
    ex.pair_status = json.loads(m.get("pair_status", "{}"))
    ex.seq = int(m.get("seq", 0))
    ex.trade_seq = int(m.get("trade_seq", 0))
    ex.processed = int(m.get("processed", 0))
    ex.faults.load(json.loads(m.get("faults", "[]")))
    ex.faults.apply_market(ex.market)
    ex.accounts = {}
    for a in s["accounts"]:
        ex.accounts[a["key"]] = Account(name=a["name"], key=a["key"], secret=a["secret"],
                                        balances=s["balances"].get(a["key"], {}),
                                        last_nonce=int(a["last_nonce"]), fee_tier=a["fee_tier"],
                                        deadman=float(a["deadman"]))
    ex.orders = {d["txid"]: Order.from_json(d) for d in s["orders"]}
    ex.trades = {d["txid"]: Trade.from_json(d) for d in s["trades"]}
    ex.open_ids = {t: None for t, o in sorted(ex.orders.items(), key=lambda kv: kv[1].seqno)
                   if o.status == "open"}
    return True
