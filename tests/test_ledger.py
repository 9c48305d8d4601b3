"""The live bridge's ledger (live_bridge.ledger) on SQLite: migrations, exact decimals, the append-only
triggers, the hash chain against each kind of tampering, the queries the daemon / replay / operator
use, crash safety (SIGKILL during appends) and two concurrent writers.

:class:`LedgerSuite` holds every backend-neutral test; tests/test_ledger_pg.py runs it on PostgreSQL.
"""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal as D
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine.errors import InputError, KQError
from live_bridge.ledger import (
    ZERO_HASH,
    Kind,
    Ledger,
    LedgerConflict,
    LedgerError,
    LedgerIntegrityError,
    entry_hash,
    exact_decimal,
    head_revision,
    ledger_schema_version,
)
from live_bridge.ledger import records as rec
from live_bridge.ledger.migrate import resolve_url
from live_bridge.ledger.schema import VERSION_TABLE

H = 490_000  # an absolute hour (unix seconds // 3600), 2025-11-24
DIGEST = "ab" * 32
EXACT = [D("0.00000001"), D("12345678.12345678"), D("1.10"), D("0E-8"), D("-5"), D("999999999999.999999999999")]


@dataclass
class Target:
    """A database for one test: how to open the ledger on it and how to reach it with raw SQL."""

    dsn: str
    schema: str | None = None
    opened: list = field(default_factory=list)

    def open(self, **kw) -> Ledger:
        led = Ledger.open(self.dsn, schema=self.schema, **kw)
        self.opened.append(led)
        return led

    def engine(self) -> sa.Engine:
        url = resolve_url(self.dsn)
        args = {"options": f"-csearch_path={self.schema}"} if self.schema else {}
        return sa.create_engine(url, connect_args=args)

    def sql(self, *statements: str, params: dict | None = None) -> list:
        """Run raw SQL (the tamperer's view: no API); returns the last statement's rows, if any."""
        eng = self.engine()
        try:
            with eng.begin() as c:
                res = None
                for s in statements:
                    res = c.execute(sa.text(s), params or {})
                return list(res) if res is not None and res.returns_rows else []
        finally:
            eng.dispose()

    @property
    def pg(self) -> bool:
        return resolve_url(self.dsn).get_backend_name() == "postgresql"

    def drop_triggers(self) -> None:
        if self.pg:
            self.sql(
                "DROP TRIGGER ledger_entry_no_update_delete ON ledger_entry",
                "DROP TRIGGER ledger_entry_no_truncate ON ledger_entry",
                "DROP TRIGGER ledger_entry_insert_extends_chain ON ledger_entry",
            )
        else:
            self.sql(
                "DROP TRIGGER ledger_entry_no_update",
                "DROP TRIGGER ledger_entry_no_delete",
                "DROP TRIGGER ledger_entry_insert_extends_chain",
            )

    def close(self) -> None:
        for led in self.opened:
            led.close()


def sample_hour(led: Ledger, hour: int = H, cl: str = "kq-1", trade: str = "T-1") -> None:
    """One hour as the daemon would write it (15 rows)."""
    led.append(rec.cycle_start(hour, "git-abc123", DIGEST, {"mode": "paper"}))
    led.append(
        rec.bars(
            hour, "XBT/USD", [[hour * 3600, D("40000.1"), D("40100"), D("39950.5"), D("40050"), D("12.34567891"), 321]]
        )
    )
    led.append(rec.features(hour, "cd" * 32), rec.model(hour, "krakenquant/3", "ef" * 32))
    led.append(
        rec.prediction(
            hour, "XBT/USD", {"p_up": exact_decimal(0.5731), "e_r": exact_decimal(-1.25e-4)}, model_id="krakenquant/3"
        )
    )
    led.append(rec.risk_snapshot(hour, "before", b"\x00snapshot-before\xff"))
    led.append(rec.decision(hour, "ENTER", pair="XBT/USD", side="buy", qty=D("0.01"), price=D("40050")))
    led.append(rec.order_intent(hour, cl, "XBT/USD", "buy", D("0.01"), D("40050")))
    req = led.append(rec.order_request(hour, cl, "AddOrder", {"ordertype": "limit", "volume": D("0.01")}))[0]
    led.append(rec.order_response(hour, cl, "done", txid="OABC-1", request_seq=req.seq))
    led.append(
        rec.fill(
            hour,
            trade,
            "XBT/USD",
            "buy",
            D("0.01"),
            D("40050"),
            D("1.0413"),
            cl_ord_id=cl,
            txid="OABC-1",
            cost=D("400.50"),
        )
    )
    led.append(rec.order_final(hour, cl, "filled", filled_qty=D("0.01")))
    led.append(rec.reconciliation(hour, "ok", {"cash": D("9598.4587")}))
    led.append(rec.risk_snapshot(hour, "after", b"\x00snapshot-after\xff"))
    led.append(rec.cycle_end(hour, "completed"))


# A child process that appends until killed (crash test) or N times after a start signal (two writers).
CHILD = textwrap.dedent("""
    import os, sys, time
    from decimal import Decimal as D
    from live_bridge.ledger import Ledger, records as rec
    dsn, schema, mode, tag, arg = sys.argv[1:6]
    led = Ledger.open(dsn, schema=schema or None)
    if mode == "loop":                      # batches of 3 rows for one hour, forever
        h = int(tag[1:]) * 10**8 + int(time.time() * 1000) % 10**8
        print("ready", flush=True)
        while True:
            h += 1
            led.append(rec.bars(h, "XBT/USD", [[h, D("1.5"), D("2"), D("1"), D("1.75"), D("3"), 7]]),
                       rec.prediction(h, "XBT/USD", {"p_up": D("0.51")}),
                       rec.decision(h, "HOLD", pair="XBT/USD"))
    else:                                   # n single appends, after the start file appears
        open(f"{arg}.{tag}.ready", "w").close()
        while not os.path.exists(arg + ".go"):
            time.sleep(0.005)
        t0 = time.time()
        n = int(arg.rsplit("-", 1)[1])
        other = "B" if tag == "A" else "A"
        for i in range(n):
            if i == n // 2:                 # a barrier: each waits at half-way for the other
                open(f"{arg}.{tag}.half", "w").close()
                while not os.path.exists(f"{arg}.{other}.half"):
                    time.sleep(0.005)
            led.append(rec.event("w", pair=tag, payload={"i": i}))
        print(t0, time.time(), flush=True)
""")


def run_child(target: Target, mode: str, tag: str, arg: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, target.dsn, target.schema or "", mode, tag, arg],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _tamper(target: Target, led: Ledger, how: str) -> None:
    """Change the stored chain as someone with write access to the database could."""
    target.drop_triggers()
    rows = {e.seq: e for e in led.iter_entries()}
    n = max(rows)
    if how == "edit_qty":  # a fill's quantity doubled
        fill = next(e for e in rows.values() if e.kind == "fill")
        target.sql("UPDATE ledger_entry SET qty = :q WHERE seq = :s", params={"q": "0.02", "s": fill.seq})
    elif how == "edit_payload":  # a prediction's value changed, still canonical JSON
        p = next(e for e in rows.values() if e.kind == "prediction")
        target.sql(
            "UPDATE ledger_entry SET payload = :p WHERE seq = :s",
            params={"p": '{"values":{"e_r":"-0.000125","p_up":"0.9"}}', "s": p.seq},
        )
    elif how == "edit_blob":  # a risk snapshot's bytes replaced
        s = next(e for e in rows.values() if e.kind == "risk_snapshot")
        target.sql("UPDATE ledger_entry SET blob = :b WHERE seq = :s", params={"b": b"\x00forged", "s": s.seq})
    elif how == "delete":
        target.sql("DELETE FROM ledger_entry WHERE seq = 7")
    elif how == "insert":  # a forged row slipped in after seq 6, later rows renumbered
        for s in range(n, 6, -1):
            target.sql("UPDATE ledger_entry SET seq = :t WHERE seq = :s", params={"t": s + 1, "s": s})
        cols = {
            "seq": 7,
            "kind": "event",
            "hour": H,
            "recorded_utc": rows[6].recorded_utc,
            "code": "forged",
            "payload": "{}",
        }
        h = entry_hash(rows[6].hash, cols)
        target.sql(
            "INSERT INTO ledger_entry (seq, kind, hour, recorded_utc, code, payload, prev_hash, hash) "
            "VALUES (:seq, :kind, :hour, :recorded_utc, :code, :payload, :p, :h)",
            params={**cols, "p": rows[6].hash, "h": h},
        )
    elif how == "reorder":  # rows 8 and 9 swapped
        target.sql(
            "UPDATE ledger_entry SET seq = 999999 WHERE seq = 8",
            "UPDATE ledger_entry SET seq = 8 WHERE seq = 9",
            "UPDATE ledger_entry SET seq = 9 WHERE seq = 999999",
        )
    elif how == "relink":  # row 5 edited, re-hashed, and row 6 re-linked to the new hash
        e = rows[5]
        cols = _cols(e)
        cols["code"] = "after"
        h = entry_hash(e.prev_hash, cols)
        target.sql(
            "UPDATE ledger_entry SET code = 'after', hash = :h WHERE seq = 5",
            "UPDATE ledger_entry SET prev_hash = :h WHERE seq = 6",
            params={"h": h},
        )
    elif how in ("rewrite_tail", "drop_last"):
        if how == "drop_last":
            target.sql("DELETE FROM ledger_entry WHERE seq = :s", params={"s": n})
        else:  # row 10 edited and EVERY later row re-hashed: only an anchor sees it
            prev = rows[9].hash
            for s in range(10, n + 1):
                cols = _cols(rows[s])
                if s == 10:
                    cols["txid"] = "OFORGED"
                h = entry_hash(prev, cols)
                target.sql(
                    "UPDATE ledger_entry SET txid = :t, prev_hash = :p, hash = :h WHERE seq = :s",
                    params={"t": cols["txid"], "p": prev, "h": h, "s": s},
                )
                prev = h
    else:  # pragma: no cover
        raise AssertionError(how)


def _cols(e) -> dict:
    import json

    from live_bridge.ledger.canonical import canonical_decimal
    from live_bridge.ledger.records import COLUMNS

    cols = {c: getattr(e, c) for c in COLUMNS}
    for c in ("qty", "price", "fee", "cost"):
        if cols[c] is not None:
            cols[c] = canonical_decimal(cols[c])
    cols["payload"] = json.dumps(e.payload, sort_keys=True, separators=(",", ":"))
    cols.update(seq=e.seq, recorded_utc=e.recorded_utc)
    return cols


class LedgerSuite:
    """Backend-neutral tests; a subclass provides the ``target`` fixture."""

    # ---- migrations -----------------------------------------------------------------------------

    def test_open_migrates_to_head_and_reopens(self, target):
        assert ledger_schema_version(target.dsn, schema=target.schema) is None
        led = target.open()
        assert led.schema_version == head_revision() == "0002"
        assert ledger_schema_version(target.dsn, schema=target.schema) == head_revision()
        led.append(rec.event("hello", hour=H))
        again = target.open()  # a second open runs no migration and keeps the rows
        assert again.count() == 1 and again.verify().ok
        assert target.open(migrate=False).schema_version == head_revision()

    def test_refuses_a_newer_unknown_revision(self, target):
        target.open().close()
        target.sql(f"UPDATE {VERSION_TABLE} SET version_num = 'zz99'")
        for migrate in (True, False):
            with pytest.raises(LedgerError) as ei:
                target.open(migrate=migrate)
            msg = str(ei.value)
            assert "zz99" in msg and "newer" in msg and "\n" not in msg and ei.value.exit_code == 2
        assert ledger_schema_version(target.dsn, schema=target.schema) == "zz99"

    # ---- exact values ---------------------------------------------------------------------------

    def test_decimals_round_trip_exactly(self, target):
        led = target.open()
        led.append(rec.order_intent(H, "kq-x", "XBT/USD", "sell", D("1"), D("1")))
        for i, v in enumerate(EXACT):
            led.append(rec.decision(H, "D", qty=v, price=abs(v) if v else None, payload={"v": v, "l": [v]}))
            if v > 0:
                led.append(rec.fill(H, f"T{i}", "XBT/USD", "sell", v, v, D("0E-8"), cl_ord_id="kq-x", cost=v))
        back = target.open()
        decisions = back.entries(H, kind=Kind.DECISION)
        assert [e.qty for e in decisions] == EXACT
        assert [str(e.qty) for e in decisions] == [str(v) for v in EXACT]  # scale kept: "1.10"
        assert [e.qty.as_tuple() for e in decisions[:3]] == [v.as_tuple() for v in EXACT[:3]]
        assert [D(e.payload["v"]) for e in decisions] == EXACT
        fills = back.fills_since(0)
        assert [(f.qty, f.price, f.cost) for f in fills] == [(v, v, v) for v in EXACT if v > 0]
        assert all(f.fee == 0 and str(f.fee) == "0E-8" for f in fills)
        assert back.verify().ok
        # exact at the database too: the column holds the digits, not a binary float
        raw = target.sql("SELECT qty FROM ledger_entry WHERE kind = 'decision' ORDER BY seq")
        assert [D(str(r[0])) for r in raw] == EXACT

    def test_floats_are_refused_and_nothing_is_written(self, target):
        led = target.open()
        led.append(rec.order_intent(H, "kq-f", "XBT/USD", "buy", D("1"), D("1")))
        n = led.count()
        builders = [
            lambda: rec.order_intent(H, "kq-g", "XBT/USD", "buy", 0.1, D("1")),
            lambda: rec.order_intent(H, "kq-g", "XBT/USD", "buy", D("1"), 40000.0),
            lambda: rec.fill(H, "T9", "XBT/USD", "buy", D("1"), D("1"), 0.0, cl_ord_id="kq-f"),
            lambda: rec.prediction(H, "XBT/USD", {"p_up": 0.57}),
            lambda: rec.decision(H, "D", payload={"nested": [{"x": 1.5}]}),
            lambda: rec.reconciliation(H, "ok", {"cash": 1e3}),
        ]
        for b in builders:
            with pytest.raises(TypeError, match="float"):
                b()
        for bad in (D("NaN"), D("Infinity"), D("1E+999"), "abc"):
            with pytest.raises(InputError):
                rec.decision(H, "D", qty=bad)
        with pytest.raises(InputError):
            rec.order_intent(H, "kq-g", "XBT/USD", "buy", D("0"), D("1"))  # qty must be > 0
        with pytest.raises(TypeError):
            led.append({"kind": "fill"})  # only built records
        assert led.count() == n

    # ---- append-only ----------------------------------------------------------------------------

    def test_database_refuses_update_and_delete(self, target):
        led = target.open()
        sample_hour(led)
        before = led.head()
        for stmt in (
            "UPDATE ledger_entry SET code = 'x' WHERE seq = 3",
            "DELETE FROM ledger_entry WHERE seq = 3",
            "UPDATE ledger_entry SET qty = 0 WHERE kind = 'fill'",
            "DELETE FROM ledger_entry",
        ):
            with pytest.raises(sa.exc.DBAPIError, match="append-only"):
                target.sql(stmt)
        assert led.head() == before and led.verify().ok

    def test_database_refuses_replace_upsert_and_out_of_chain_inserts(self, target):
        led = target.open()
        sample_hour(led)
        before = led.head()
        fill = led.entries(H, kind="fill")[0]
        names = [c for c in _cols(fill) if c not in ("digest", "blob")] + ["prev_hash", "hash"]
        insert = f"INTO ledger_entry ({', '.join(names)}) VALUES ({', '.join(':' + c for c in names)})"

        def forged(seq: int, prev: str, **change) -> dict:
            cols = _cols(fill) | {"seq": seq} | change
            return {c: cols.get(c) for c in names[:-2]} | {"prev_hash": prev, "hash": entry_hash(prev, cols)}

        half = forged(fill.seq, fill.prev_hash, qty="0.005")  # the fill's quantity halved, re-hashed
        attempts = [
            (f"REPLACE {insert}", half),
            (f"INSERT OR REPLACE {insert}", half),
            (f"INSERT {insert} ON CONFLICT (seq) DO UPDATE SET qty = excluded.qty, hash = excluded.hash", half),
            (f"INSERT {insert} ON CONFLICT DO NOTHING", half),
            # the next seq, linked to the head, but the recorded trade id: a REPLACE would delete the fill
            (f"REPLACE {insert}", forged(before[0] + 1, before[1], qty="0.005")),
            (f"INSERT {insert}", forged(before[0] + 2, before[1], trade_id="T-new")),  # a gap in seq
            (f"INSERT {insert}", forged(before[0] + 1, ZERO_HASH, trade_id="T-new")),  # not linked to the head
            (f"INSERT {insert}", forged(3, fill.prev_hash, trade_id="T-new")),  # into the middle
        ]
        for stmt, params in attempts:
            with pytest.raises(sa.exc.DBAPIError) as ei:
                target.sql(stmt, params=params)
            if not (target.pg and stmt.startswith(("REPLACE", "INSERT OR"))):  # PostgreSQL has no REPLACE
                assert "append-only" in str(ei.value), (stmt, str(ei.value)[:300])
        assert led.head() == before and led.verify().ok and led.entry(fill.seq).qty == D("0.01")
        assert led.count() == 15 and len(led.fills_since(0)) == 1
        led.append(rec.event("still-appendable"))
        assert led.verify(anchor=before).ok

    def test_a_0001_ledger_upgrades_and_keeps_its_chain(self, target):
        from alembic import command

        from live_bridge.ledger import migrate

        url = resolve_url(target.dsn)
        eng = migrate.make_engine(url, target.schema)
        with eng.connect().execution_options(ledger_write=True) as conn, conn.begin():
            if target.schema:
                conn.exec_driver_sql(f'CREATE SCHEMA IF NOT EXISTS "{target.schema}"')
            cfg = migrate._config()
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0001")
        old = Ledger(eng, url, "0001")
        sample_hour(old)
        anchor = old.head()
        old.close()
        assert ledger_schema_version(target.dsn, schema=target.schema) == "0001"
        led = target.open()
        assert led.schema_version == "0002" and led.verify(anchor=anchor).ok
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            target.sql(
                "INSERT INTO ledger_entry (seq, kind, recorded_utc, payload, prev_hash, hash) "
                "VALUES (3, 'event', 'x', '{}', 'p', 'h')"
            )
        led.append(rec.event("after-upgrade"))
        assert led.verify(anchor=anchor).ok and led.count() == 16

    def test_api_has_no_way_to_change_a_row(self):
        verbs = ("update", "delete", "edit", "remove", "replace", "set", "truncate", "drop", "rewrite")
        public = [n for n in dir(Ledger) if not n.startswith("_")]
        assert [n for n in public if n.startswith(verbs)] == []

    # ---- the hash chain -------------------------------------------------------------------------

    def test_chain_links_every_row(self, target):
        led = target.open()
        sample_hour(led)
        rows = list(led.iter_entries(batch=4))  # pages of 4: the pager is exercised
        assert [e.seq for e in rows] == list(range(1, 16))
        assert rows[0].prev_hash == ZERO_HASH
        assert all(b.prev_hash == a.hash for a, b in itertools.pairwise(rows))
        assert all(entry_hash(e.prev_hash, _cols(e)) == e.hash for e in rows)
        rep = led.verify(batch=5)
        assert rep.ok and rep.rows == 15 and (rep.head_seq, rep.head_hash) == led.head() == (15, rows[-1].hash)
        assert led.verify(anchor=(10, rows[9].hash)).ok

    @pytest.mark.parametrize(
        "how,seq,fld",
        [
            ("edit_qty", 11, "hash"),
            ("edit_payload", 5, "hash"),
            ("edit_blob", 6, "digest"),
            ("delete", 7, "seq"),
            ("insert", 8, "prev_hash"),
            ("reorder", 8, "prev_hash"),
            ("relink", 6, "hash"),  # the re-linked row's own hash covers its prev_hash
        ],
    )
    def test_verify_names_the_first_tampered_row(self, target, how, seq, fld):
        led = target.open()
        sample_hour(led)
        assert led.verify().ok
        _tamper(target, led, how)
        rep = led.verify(batch=5)
        assert not rep.ok and (rep.broken_seq, rep.field) == (seq, fld), rep.message
        assert f"seq {seq} ({fld})" in rep.message and "\n" not in rep.message
        with pytest.raises(LedgerIntegrityError, match=f"seq {seq}"):
            rep.raise_if_broken()

    @pytest.mark.parametrize("how", ["rewrite_tail", "drop_last"])
    def test_a_rewritten_or_truncated_tail_needs_the_anchor(self, target, how):
        led = target.open()
        sample_hour(led)
        anchor = led.head()
        _tamper(target, led, how)
        assert led.verify().ok  # internally consistent: the chain alone cannot tell
        rep = led.verify(anchor=anchor)
        assert (rep.ok, rep.broken_seq, rep.field) == (False, 15, "anchor"), rep.message

    def test_an_hmac_key_catches_a_forged_tail_row(self, target, monkeypatch):
        import json

        monkeypatch.delenv("KQ_LEDGER_HMAC_KEY", raising=False)
        key = "kq-test-ledger-key-" + "x" * 16

        def forge_tail(led: Ledger) -> int:
            """An operator 'reactivate' appended by hand with a correct (unkeyed) hash: the triggers
            let it through, it links to the head."""
            seq, head = led.head()
            payload = json.dumps(
                {"actor": "mallory", "confirmation": "REACTIVATE", "params": {}, "reason": "x"},
                sort_keys=True,
                separators=(",", ":"),
            )
            cols = {
                "seq": seq + 1,
                "kind": "operator_action",
                "recorded_utc": "2026-12-07T12:00:00.000000Z",
                "code": "reactivate",
                "payload": payload,
            }
            target.sql(
                "INSERT INTO ledger_entry (seq, kind, recorded_utc, code, payload, prev_hash, hash) "
                "VALUES (:seq, :kind, :recorded_utc, :code, :payload, :p, :h)",
                params={**cols, "p": head, "h": entry_hash(head, cols)},
            )
            return seq + 1

        plain = target.open()
        sample_hour(plain)  # 15 rows written before the key was introduced
        monkeypatch.setenv("KQ_LEDGER_HMAC_KEY", key)
        led = target.open()  # keys it: row 16 names the key (never the key itself)
        k = led.entry(16)
        assert (k.kind, len(k.code), k.payload["alg"]) == ("ledger_key", 16, "HMAC-SHA256") and led.count() == 16
        assert key not in json.dumps(k.payload) and key not in k.code
        assert [e.seq for e in led.append(rec.event("keyed"))] == [17] and led.verify().ok
        assert target.open().count() == 17  # a second keyed open writes no second key row
        with pytest.raises(LedgerError, match="HMAC-keyed from seq 16"):
            plain.append(rec.event("without-the-key"))
        forged = forge_tail(led)
        rep = led.verify()
        assert (rep.ok, rep.broken_seq, rep.field) == (False, forged, "hash"), rep.message
        # the same handles without the key / with another key cannot verify or append
        monkeypatch.delenv("KQ_LEDGER_HMAC_KEY")
        assert (plain.verify().broken_seq, plain.verify().field) == (16, "hmac")
        with pytest.raises(LedgerError, match="not the key this ledger was keyed with"):
            target.open(hmac_key="another-key-" + "y" * 16)
        other = target.open(hmac_key="another-key-" + "y" * 16, migrate=False)
        assert (other.verify().broken_seq, other.verify().field) == (16, "hmac")
        with pytest.raises(LedgerError, match="at least 16 bytes"):
            target.open(hmac_key="short")

    def test_without_a_key_a_forged_tail_row_passes_verify(self, target, monkeypatch):
        """What the key is for: an unkeyed chain cannot tell a well-formed forged tail row (only an
        anchor kept outside the database can), and removing a keyed ledger's key row is noticed."""
        import json

        monkeypatch.delenv("KQ_LEDGER_HMAC_KEY", raising=False)
        led = target.open()
        sample_hour(led)
        seq, head = led.head()
        cols = {
            "seq": seq + 1,
            "kind": "operator_action",
            "recorded_utc": "2026-12-07T12:00:00.000000Z",
            "code": "reactivate",
            "payload": json.dumps({"reason": "x"}, separators=(",", ":")),
        }
        target.sql(
            "INSERT INTO ledger_entry (seq, kind, recorded_utc, code, payload, prev_hash, hash) "
            "VALUES (:seq, :kind, :recorded_utc, :code, :payload, :p, :h)",
            params={**cols, "p": head, "h": entry_hash(head, cols)},
        )
        assert led.verify().ok and led.verify(anchor=(seq, head)).ok  # undetectable without a key
        keyed = target.open(hmac_key="kq-test-ledger-key-" + "x" * 16)
        assert keyed.verify().ok and keyed.count() == 17
        target.drop_triggers()
        target.sql("DELETE FROM ledger_entry WHERE seq = 17")  # the key row
        rep = keyed.verify()
        assert (rep.ok, rep.field) == (False, "hmac") and "no row is keyed" in rep.message

    # ---- what the ledger refuses ----------------------------------------------------------------

    def test_order_records_need_their_intent_and_end_once(self, target):
        led = target.open()
        with pytest.raises(LedgerError, match="without an order intent"):
            led.append(rec.order_request(H, "kq-9", "AddOrder", {"volume": D("1")}))
        with pytest.raises(LedgerError, match="without an order intent"):
            led.append(rec.fill(H, "T-9", "XBT/USD", "buy", D("1"), D("2"), D("0"), cl_ord_id="kq-9"))
        # the intent and its request in one batch: the request sees the intent written before it
        led.append(
            rec.order_intent(H, "kq-9", "XBT/USD", "buy", D("1")),
            rec.order_request(H, "kq-9", "AddOrder", {"volume": D("1")}),
        )
        with pytest.raises(LedgerConflict, match="already has an order intent"):
            led.append(rec.order_intent(H, "kq-9", "XBT/USD", "buy", D("1")))
        with pytest.raises(LedgerConflict, match="is a sell of XBT/USD but its intent"):
            led.append(rec.fill(H, "T-9", "XBT/USD", "sell", D("1"), D("2"), D("0"), cl_ord_id="kq-9"))
        with pytest.raises(LedgerError, match="not a request of kq-9"):
            led.append(rec.order_response(H, "kq-9", "done", request_seq=1))
        led.append(rec.order_final(H, "kq-9", "cancelled"))
        with pytest.raises(LedgerConflict, match="already has its final outcome cancelled"):
            led.append(rec.order_final(H, "kq-9", "filled"))
        assert led.count() == 3 and led.verify().ok

    def test_a_fill_is_recorded_once(self, target):
        led = target.open()
        led.append(rec.order_intent(H, "kq-1", "ETH/USD", "buy", D("2"), D("2000")))
        f = rec.fill(H, "T-1", "ETH/USD", "buy", D("0.5"), D("2000"), D("0.8"), cl_ord_id="kq-1", txid="O-1")
        first = led.append(f)[0]
        # found again after a crash (even in a later hour): a no-op that returns the stored entry
        again = led.append(
            rec.fill(H + 1, "T-1", "ETH/USD", "buy", D("0.50"), D("2000"), D("0.80"), cl_ord_id="kq-1", txid="O-1")
        )
        assert again == [first] and led.count() == 2
        # the same trade id with other content: refused, and nothing of its batch is written
        with pytest.raises(LedgerConflict, match="trade T-1 is already recorded .* price '2000', not '2001'"):
            led.append(
                rec.event("before-the-conflict", hour=H),
                rec.fill(H, "T-1", "ETH/USD", "buy", D("0.5"), D("2001"), D("0.8"), cl_ord_id="kq-1", txid="O-1"),
            )
        # a duplicate inside one batch is one row too
        out = led.append(
            rec.fill(H, "T-2", "ETH/USD", "buy", D("1"), D("2000"), D("1.6"), cl_ord_id="kq-1"),
            rec.fill(H, "T-2", "ETH/USD", "buy", D("1"), D("2000"), D("1.6"), cl_ord_id="kq-1"),
        )
        assert out[0] == out[1] and led.count() == 3
        ext = led.append(rec.fill(H, "T-X", "ETH/USD", "sell", D("1"), D("2100"), D("0"), external=True))[0]
        assert ext.code == "external" and ext.cl_ord_id is None
        assert [e.trade_id for e in led.fills_since(0)] == ["T-1", "T-2", "T-X"]
        assert led.verify().ok

    def test_operator_actions_are_applied_once(self, target):
        led = target.open()
        with pytest.raises(InputError, match="non-empty reason"):
            rec.operator_action("reactivate", " ", "alice", "REACTIVATE")
        with pytest.raises(InputError, match="operator action must be one of"):
            rec.operator_action("liquidate-everything", "r", "alice", "yes")
        a = led.append(rec.operator_action("reactivate", "API fault cleared", "alice", "REACTIVATE"))[0]
        b = led.append(rec.operator_action("pause", "news", "bob", "PAUSE", params={"until_hour": H + 3}))[0]
        assert [e.seq for e in led.pending_operator_actions()] == [a.seq, b.seq]
        assert b.payload == {"actor": "bob", "confirmation": "PAUSE", "params": {"until_hour": H + 3}, "reason": "news"}
        led.append(rec.operator_applied(H, a.seq))
        assert [e.seq for e in led.pending_operator_actions()] == [b.seq]
        with pytest.raises(LedgerConflict, match="already applied"):
            led.append(rec.operator_applied(H + 1, a.seq))
        with pytest.raises(LedgerError, match="not an operator action"):
            led.append(rec.operator_applied(H, 3))
        led.append(rec.operator_applied(H, b.seq, "refused", {"why": "halted"}))
        assert led.pending_operator_actions() == []

    # ---- queries --------------------------------------------------------------------------------

    def test_queries_for_daemon_replay_and_operator(self, target):
        led = target.open()
        assert (led.last_completed_hour(), led.last_risk_snapshot(), led.head()) == (None, None, (0, ZERO_HASH))
        sample_hour(led, H, "kq-1", "T-1")
        sample_hour(led, H + 1, "kq-2", "T-2")
        led.append(
            rec.cycle_start(H + 2, "git-abc123", DIGEST),
            rec.risk_snapshot(H + 2, "before", b"\x01b2"),
            rec.order_intent(H + 2, "kq-3", "XBT/USD", "sell", D("0.01"), D("41000")),
            rec.order_intent(H + 2, "kq-4", "XBT/USD", "sell", D("0.01")),
        )
        led.append(rec.order_final(H + 2, "kq-4", "not_sent"))
        hour1 = led.entries(H + 1)
        assert len(hour1) == 15 and {e.hour for e in hour1} == {H + 1}
        assert [e.kind for e in hour1][:3] == ["cycle_start", "bars", "features"]
        assert led.last_completed_hour() == H + 1  # H + 2 started, not completed
        assert [e.cl_ord_id for e in led.open_intents()] == ["kq-3"]
        assert [e.kind for e in led.order_entries("kq-2")] == [
            "order_intent",
            "order_request",
            "order_response",
            "fill",
            "order_final",
        ]
        fills = led.fills_since(0)
        assert [f.trade_id for f in fills] == ["T-1", "T-2"]
        assert [f.trade_id for f in led.fills_since(fills[0].seq)] == ["T-2"]
        snap = led.last_risk_snapshot()
        assert (snap.hour, snap.code, snap.blob) == (H + 2, "before", b"\x01b2")
        assert led.last_risk_snapshot("after").blob == b"\x00snapshot-after\xff"
        bars = led.entries(H, kind="bars")[0]
        assert bars.payload["bars"][0][1] == "40000.1" and len(bars.digest) == 64
        pred = led.entries(H, kind=Kind.PREDICTION)[0]
        assert float(D(pred.payload["values"]["p_up"])) == 0.5731  # float64 back bit for bit
        assert led.entry(1).kind == "cycle_start" and led.entry(10**6) is None
        assert led.verify().ok

    # ---- crashes and concurrency ----------------------------------------------------------------

    def test_sigkill_during_appends_leaves_a_valid_chain(self, target):
        target.open().close()  # migrated before the children start
        # three writers append batches side by side; they are killed one by one, each at whatever point
        # of an append it has reached (often mid-transaction or waiting on the write lock)
        procs = [run_child(target, "loop", f"c{i}", "-") for i in range(3)]
        try:
            for p in procs:
                assert p.stdout.readline().strip() == "ready", p.stderr.read()
            for p in procs:
                time.sleep(0.3)
                p.send_signal(signal.SIGKILL)
        finally:
            for p in procs:
                p.kill()
                p.wait(timeout=30)
        assert [p.returncode for p in procs] == [-signal.SIGKILL] * 3
        led = target.open()
        rep = led.verify()
        assert rep.ok, rep.message
        rows = list(led.iter_entries())
        assert len(rows) >= 30 and len(rows) % 3 == 0  # every batch whole, none half-written
        by_hour: dict[int, list[str]] = {}
        for e in rows:
            by_hour.setdefault(e.hour, []).append(e.kind)
        assert all(k == ["bars", "prediction", "decision"] for k in by_hour.values())
        led.append(rec.event("after-crash"))  # and it goes on from the head
        assert led.verify().ok

    def test_a_writer_queues_behind_the_write_lock(self, target):
        led, other = target.open(), target.open()
        led.append(rec.event("first"))
        done: list = []
        with led._write() as conn:  # a writer mid-append: lock taken, head read
            assert led._head(conn)[0] == 1
            t = threading.Thread(target=lambda: done.append(other.append(rec.event("second"))))
            t.start()
            t.join(0.6)
            assert t.is_alive() and done == []  # the second writer waits; it did not read the head
        t.join(30)
        assert [e.seq for e in done[0]] == [2] and led.verify().ok

    def test_two_writers_make_one_chain(self, target, tmp_path):
        target.open().close()
        n = 60
        go = tmp_path / "start"
        procs = [run_child(target, "count", tag, f"{go}-{n}") for tag in ("A", "B")]
        deadline = time.time() + 60
        while not all(Path(f"{go}-{n}.{tag}.ready").exists() for tag in "AB") and time.time() < deadline:
            time.sleep(0.01)  # both children imported and open
        Path(f"{go}-{n}.go").touch()
        spans = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-2000:]
            spans.append([float(x) for x in out.split()])
        led = target.open()
        rep = led.verify()
        assert rep.ok and rep.rows == 2 * n, rep.message
        rows = list(led.iter_entries())
        for tag in ("A", "B"):
            assert [e.payload["i"] for e in rows if e.pair == tag] == list(range(n))
        (a0, a1), (b0, b1) = spans
        assert max(a0, b0) < min(a1, b1)  # they did write at the same time (the half-way barrier)


class TestLedgerSQLite(LedgerSuite):
    @pytest.fixture
    def target(self, tmp_path):
        t = Target(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
        yield t
        t.close()


# ---- SQLite and DSN specifics -------------------------------------------------------------------


def test_dsn_forms_and_one_line_errors(tmp_path, monkeypatch):
    from engine.paths import data_dir
    from live_bridge.ledger import default_dsn

    monkeypatch.delenv("KQ_LEDGER_DSN", raising=False)
    assert resolve_url(None).database == str(data_dir() / "ledger.sqlite")
    assert default_dsn().endswith("data/ledger.sqlite")
    monkeypatch.setenv("KQ_LEDGER_DSN", "postgresql://u:pw@db.example/ledger")
    assert resolve_url(None).drivername == "postgresql+psycopg"
    assert resolve_url(tmp_path / "x.sqlite").database == str(tmp_path / "x.sqlite")
    bad = {
        "sqlite://": "in-memory",
        "sqlite:///:memory:": "in-memory",
        "mysql://u@h/db": "not supported",
        str(tmp_path / "missing" / "l.sqlite"): "does not exist",
        "": "empty",
    }
    for dsn, msg in bad.items():
        with pytest.raises(LedgerError, match=msg) as ei:
            Ledger.open(dsn)
        assert isinstance(ei.value, KQError) and "\n" not in str(ei.value)
    with pytest.raises(LedgerError, match="PostgreSQL ledgers only"):
        Ledger.open(tmp_path / "l.sqlite", schema="x")


def test_sqlite_stores_decimals_as_exact_text_and_verify_checks_the_form(tmp_path):
    t = Target(f"sqlite:///{tmp_path / 'l.sqlite'}")
    led = t.open()
    sample_hour(led)
    fill = led.entries(H, kind="fill")[0]
    assert t.sql("SELECT typeof(qty), qty FROM ledger_entry WHERE seq = :s", params={"s": fill.seq}) == [
        ("text", "0.01")
    ]
    t.drop_triggers()
    t.sql("UPDATE ledger_entry SET qty = '1E-2' WHERE seq = :s", params={"s": fill.seq})  # same value, other form
    rep = led.verify()
    assert (rep.ok, rep.broken_seq, rep.field) == (False, fill.seq, "qty")
    t.close()


def test_a_busy_sqlite_ledger_is_a_one_line_ledger_error(tmp_path):
    led = Ledger.open(tmp_path / "l.sqlite")
    other = Ledger.open(tmp_path / "l.sqlite", busy_timeout_s=0.2)
    led.append(rec.event("first"))
    with led._write():  # another writer holds the write lock past the busy timeout
        with pytest.raises(LedgerError, match="database is locked") as ei:
            other.append(rec.event("second"))
        assert isinstance(ei.value, KQError) and "\n" not in str(ei.value) and "l.sqlite" in str(ei.value)
        assert other.count() == 1  # readers are not blocked (WAL)
    assert [e.seq for e in other.append(rec.event("second"))] == [2] and other.verify().ok
    led.close()
    other.close()


def test_exact_decimal_round_trips_every_float_it_accepts():
    for x in (0.1, 1 / 3, 5e-324, sys.float_info.max, -2.5e-300, 0.5731, -1.25e-4, 0.0):
        d = exact_decimal(x)
        assert isinstance(d, D) and float(d) == x
    for bad in (float("nan"), float("inf"), "0.1", True):
        with pytest.raises(InputError):
            exact_decimal(bad)


def test_the_migrations_ship_inside_the_package():
    import live_bridge.ledger as pkg
    from live_bridge.ledger.migrate import HEAD

    assert head_revision() == HEAD  # the fast open path's constant follows the scripts
    versions = Path(pkg.__file__).parent / "migrations" / "versions"
    assert (versions.parent / "env.py").is_file() and sorted(p.name for p in versions.glob("0*.py")) == [
        "0001_initial.py",
        "0002_chain_insert_check.py",
    ]


def test_rows_carry_the_injected_clock_and_naive_clocks_are_refused(tmp_path):
    from datetime import UTC, datetime

    led = Ledger.open(tmp_path / "l.sqlite", clock=lambda: datetime(2026, 12, 7, 12, 0, 1, 5, tzinfo=UTC))
    assert led.append(rec.event("tick"))[0].recorded_utc == "2026-12-07T12:00:01.000005Z"
    led.close()
    naive = Ledger.open(tmp_path / "l.sqlite", clock=lambda: datetime(2026, 12, 7, 12))
    with pytest.raises(LedgerError, match="timezone-aware"):
        naive.append(rec.event("tick"))
    assert naive.count() == 1
    naive.close()
