"""Each import format, overlap rules, re-import no-ops, pair and venue naming."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import require_shared

from engine.errors import InputError
from engine.store.market import MarketStore
from engine.store.panel import read_shared_parquet

T0 = 1_700_000_000 // 3600 * 3600


def kraken_text(n=5, t0=T0, px=100.0, skip=()):
    return "".join(
        f"{t0 + 3600 * i},{px + i},{px + i + 2},{px + i - 1},{px + i + 1},{1.5 + i},{10 + i}\n"
        for i in range(n)
        if i not in skip
    )


def rest_rows(n, t0=T0):
    return [
        [t0 + 3600 * i, f"{10 + i}.0", f"{12 + i}.0", f"{9 + i}.0", f"{11 + i}.0", f"{10.5 + i}", f"{2.5 + i}", 7 + i]
        for i in range(n)
    ]


@pytest.fixture
def store(tmp_path):
    with MarketStore(tmp_path / "m.duckdb") as s:
        yield s


def test_kraken_csv_values_pair_and_raw_layer(store, tmp_path):
    p = tmp_path / "XBTUSD_60.csv"
    p.write_text(kraken_text(5, skip=(2,)))  # one missing hour
    rep = store.import_files([p])
    r = rep.results[0]
    assert (r.status, r.kind, r.venue, r.pair, r.rows, r.new_bars) == (
        "imported",
        "kraken-csv",
        "kraken",
        "BTC/USD",
        4,
        4,
    )
    panel = store.load_panel(["XBT/USD"], "kraken")
    assert panel.ts.tolist() == [T0 + 3600 * i for i in range(5)]
    assert panel.valid[:, 0].tolist() == [True, True, False, True, True]
    assert panel.close[3, 0] == 104.0 and panel.trades[3, 0] == 13.0 and np.isnan(panel.vwap).all()
    assert np.isnan(panel.close[2, 0])  # missing hour stays missing
    raw = store.con.execute("SELECT line, ts, close, trades FROM raw_rows ORDER BY line").fetchall()
    assert raw[0] == (1, float(T0), 101.0, 10.0) and [x[0] for x in raw] == [1, 2, 3, 4]
    f = store.con.execute("SELECT name, kind, venue, pair, source_pair, rows, length(sha256) FROM files").fetchall()
    assert f == [("XBTUSD_60.csv", "kraken-csv", "kraken", "BTC/USD", "XBTUSD", 4, 64)]
    gaps = store.integrity_findings(pair="BTC/USD")
    assert gaps[["ts", "kind", "value"]].values.tolist() == [[T0 + 7200, "gap", 1.0]]
    info = store.list_pairs()[0]
    assert (info.rows, info.first_ts, info.last_ts, info.missing_hours) == (4, T0, T0 + 4 * 3600, 1)


def test_kraken_csv_equals_shared_parquet_of_the_same_source(store, tmp_path):
    shared = require_shared()
    # XBTUSD_1h.parquet is Kraken's own OHLCVT file; write part of it back as Kraken CSV.
    ref = read_shared_parquet(shared / "XBTUSD_1h.parquet").iloc[:3000]
    lines = [
        ",".join([str(int(t)), *(repr(float(x)) for x in row[:5]), str(int(row[5]))])
        for t, row in zip(ref["ts"], ref[["open", "high", "low", "close", "volume", "trades"]].to_numpy())
    ]
    csv = tmp_path / "XBTUSD_60.csv"
    csv.write_text("\n".join(lines) + "\n")
    store.import_files([shared / "XBTUSD_1h.parquet"])
    rep = store.import_files([csv])
    assert rep.results[0].new_bars == 0 and rep.results[0].existing_bars == 3000  # identical overlap: accepted


def test_zip_takes_hourly_members_and_skips_the_rest(store, tmp_path):
    z = tmp_path / "Kraken_OHLCVT.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("XBTUSD_60.csv", kraken_text(6))
        zf.writestr("XDGUSD_60.csv", kraken_text(3, px=0.1 * 1000))
        zf.writestr("XBTUSD_15.csv", kraken_text(4))
        zf.writestr("XBTUSD_1440.csv", kraken_text(2))
        zf.writestr("1INCHEUR_60.csv", kraken_text(2))
        zf.writestr("readme.txt", "hello")
    rep = store.import_files([z])
    st = {r.label.split(":")[-1]: (r.status, r.reason) for r in rep.results}
    assert st["XBTUSD_60.csv"][0] == "imported" and st["XDGUSD_60.csv"][0] == "imported"
    assert st["XBTUSD_15.csv"] == ("skipped", "15-minute bars; only hourly (_60) files are imported")
    assert st["XBTUSD_1440.csv"][0] == "skipped" and "unknown pair" in st["1INCHEUR_60.csv"][1]
    assert st["readme.txt"] == ("skipped", "not a CSV file")
    assert {(i.pair, i.rows) for i in store.list_pairs("kraken")} == {("BTC/USD", 6), ("DOGE/USD", 3)}
    # same zip again, and the same member content as a plain file: no-ops
    before = store.content_digest()
    again = store.import_files([z])
    assert again.imported == 0 and again.unchanged == 2
    plain = tmp_path / "XBTUSD_60.csv"
    plain.write_text(kraken_text(6))
    assert store.import_files([plain]).results[0].status == "already imported"
    assert store.content_digest() == before


def test_rest_json_envelope_with_vwap_drops_forming_candle(store, tmp_path):
    rows = rest_rows(5)
    p = tmp_path / "ohlc_xbt.json"
    p.write_text(json.dumps({"error": [], "result": {"XXBTZUSD": rows, "last": T0 + 3 * 3600}}))
    rep = store.import_files([p])
    r = rep.results[0]
    assert (r.kind, r.venue, r.pair, r.rows, r.new_bars) == ("kraken-rest", "kraken", "BTC/USD", 5, 4)
    panel = store.load_panel(["BTC/USD"], "kraken")
    assert panel.n_bars == 4  # the forming candle (time > last) is not a bar
    assert panel.vwap[:, 0].tolist() == [10.5, 11.5, 12.5, 13.5]
    assert panel.volume[:, 0].tolist() == [2.5, 3.5, 4.5, 5.5] and panel.trades[:, 0].tolist() == [7, 8, 9, 10]
    note = store.con.execute("SELECT line, note FROM raw_rows WHERE note IS NOT NULL").fetchall()
    assert note == [(5, "forming candle (time > last): not stored")]
    # the bare result (no envelope) holding two pairs
    q = tmp_path / "ohlc_result.json"
    q.write_text(json.dumps({"XETHZUSD": rest_rows(3), "SOLUSD": rest_rows(2), "last": T0 + 3600 * 9}))
    rep2 = store.import_files([q])
    assert sorted((r.pair, r.new_bars) for r in rep2.results) == [("ETH/USD", 3), ("SOL/USD", 2)]


def test_rest_rows_function_backfill_overlaps(store):
    rep = store.import_rest_rows(rest_rows(6), "XBT/USD", last=T0 + 4 * 3600)
    assert rep.new_bars == 5
    # the next poll overlaps: committed bars come back identical, one more bar is new
    rep2 = store.import_rest_rows(rest_rows(8)[3:], "XXBTZUSD", last=T0 + 5 * 3600)
    assert rep2.results[0].existing_bars == 2 and rep2.results[0].new_bars == 1
    assert store.import_rest_rows(rest_rows(8)[3:], "XBTUSD", last=T0 + 5 * 3600).unchanged == 1
    assert store.list_pairs()[0].rows == 6
    # vwap 0 (Kraken's value for a bar without trades) is stored as unknown
    z = rest_rows(1, t0=T0 + 20 * 3600)
    z[0][5], z[0][6], z[0][7] = "0", "0.00000000", 0
    store.import_rest_rows(z, "BTC/USD")
    v = store.con.execute("SELECT vwap, volume, trades FROM bars WHERE ts = ?", [T0 + 20 * 3600]).fetchall()
    assert v == [(None, 0.0, 0)]
    assert "zero_volume" in set(store.integrity_findings()["kind"])


def test_overrides_and_pair_spellings(store, tmp_path):
    p = tmp_path / "my_export.csv"
    p.write_text(kraken_text(3))
    r = store.import_files([p], venue="Coinbase", pair="xbt-usd").results[0]
    assert (r.venue, r.pair) == ("coinbase", "BTC/USD")
    for name, pair in (("XXBTZUSD_60.csv", "BTC/USD"), ("XDGUSD_60.csv", "DOGE/USD"), ("ETHUSDT_60.csv", "ETH/USDT")):
        q = tmp_path / name
        q.write_text(kraken_text(2, px=50.0 + len(name)))
        assert store.import_files([q]).results[0].pair == pair
    assert store.load_panel(["XBT/USD"], "COINBASE").pairs == ("BTC/USD",)


def test_parquet_layout_metadata_and_name(store, tmp_path):
    df = pd.DataFrame(
        {
            "ts": np.arange(T0, T0 + 3 * 3600, 3600, dtype=np.int64),
            "open": 1.0,
            "high": 2.0,
            "low": 0.5,
            "close": 1.5,
            "volume": 4.0,
        }
    )
    t = pa.Table.from_pandas(df, preserve_index=False)
    t = t.replace_schema_metadata({"venue": "Coinbase (spot)", "pair": "ETH/USD", "interval": "1h"})
    pq.write_table(t, tmp_path / "whatever.parquet")
    df.assign(volume=5.0).to_parquet(tmp_path / "binance_SOLUSDT_1h.parquet")
    df.assign(volume=6.0).to_parquet(tmp_path / "XBTUSD_1h.parquet")  # no metadata: pair from the name
    df.assign(volume=7.0).to_parquet(tmp_path / "LTCUSD.parquet")
    rep = store.import_files(
        [
            tmp_path / n
            for n in ("whatever.parquet", "binance_SOLUSDT_1h.parquet", "XBTUSD_1h.parquet", "LTCUSD.parquet")
        ]
    )
    assert [(r.venue, r.pair) for r in rep.results] == [
        ("coinbase", "ETH/USD"),
        ("binance", "SOL/USDT"),
        ("kraken", "BTC/USD"),
        ("kraken", "LTC/USD"),
    ]
    df.to_parquet(tmp_path / "XBTUSD_15m.parquet")
    with pytest.raises(InputError, match=r"XBTUSD_15m.parquet: 15m bars; only hourly"):
        store.import_files([tmp_path / "XBTUSD_15m.parquet"])


def test_import_bars_frame_and_export_roundtrip(store, tmp_path):
    n = 48
    ts = np.arange(T0, T0 + n * 3600, 3600, dtype=np.int64)
    c = 100 + np.cumsum(np.sin(np.arange(n)))
    df = pd.DataFrame(
        {"ts": ts, "open": c, "high": c + 1, "low": c - 1, "close": c, "volume": 2.0, "trades": 3.0, "vwap": c + 0.1}
    )
    rep = store.import_bars(df.drop(index=[5, 6]), "synthetic", "BTC/USD", "unit-test")
    assert rep.new_bars == n - 2
    assert store.import_bars(df.drop(index=[5, 6]), "synthetic", "BTC/USD", "unit-test").unchanged == 1
    out = tmp_path / "x.parquet"
    assert store.export_parquet(out, ["BTC/USD"], "synthetic", T0 + 3600, T0 + 10 * 3600) == 8
    back = pd.read_parquet(out)
    assert list(back.columns) == ["venue", "pair", "ts", "open", "high", "low", "close", "volume", "trades", "vwap"]
    assert back["ts"].tolist() == [T0 + 3600 * i for i in (1, 2, 3, 4, 7, 8, 9, 10)]
    p = store.load_panel(["BTC/USD"], "synthetic", T0 + 3600, T0 + 10 * 3600).to_long()
    assert np.array_equal(back["close"].to_numpy(), p["close"].to_numpy())
    assert np.array_equal(back["vwap"].to_numpy(), p["vwap"].to_numpy())


def test_load_panel_errors_name_the_problem(store, tmp_path):
    from engine.errors import InputError

    p = tmp_path / "XBTUSD_60.csv"
    p.write_text(kraken_text(3))
    store.import_files([p])
    with pytest.raises(InputError, match=r"no bars for ETH/USD on venue 'kraken' \(stored pairs: BTC/USD\)"):
        store.load_panel(["BTC/USD", "ETH/USD"], "kraken")
    with pytest.raises(InputError, match="given twice"):
        store.load_panel(["BTC/USD", "XBTUSD"], "kraken")
    # a range with no bars still gives the grid, all invalid (no invented prices)
    empty = store.load_panel(["BTC/USD"], "kraken", T0 + 100 * 3600, T0 + 101 * 3600)
    assert empty.n_bars == 2 and not empty.valid.any() and np.isnan(empty.close).all()


def test_reimport_under_another_pair_or_venue_stores_the_bars(store, tmp_path):
    # dedup keys on content + the venue and pair it is imported as (issue 21: a re-import under
    # another --pair said "already imported" and stored nothing)
    p = tmp_path / "export.csv"
    p.write_text(kraken_text(4))
    assert store.import_files([p], pair="ETH/USD").new_bars == 4
    again = store.import_files([p], pair="ETH/USD")
    assert (again.imported, again.unchanged, again.new_bars) == (0, 1, 0)
    assert again.results[0].reason == "same content imported before as kraken ETH/USD"
    other = store.import_files([p], pair="BTC/USD")
    assert (other.imported, other.unchanged, other.new_bars) == (1, 0, 4)
    venue = store.import_files([p], pair="BTC/USD", venue="binance")
    assert (venue.imported, venue.new_bars) == (1, 4)
    assert {(i.venue, i.pair, i.rows) for i in store.list_pairs()} == {
        ("kraken", "ETH/USD", 4),
        ("kraken", "BTC/USD", 4),
        ("binance", "BTC/USD", 4),
    }
    before = store.content_digest()
    assert store.import_files([p], pair="XBTUSD", venue="Binance").unchanged == 1  # same pair, any spelling
    assert store.content_digest() == before


def test_version_1_store_is_migrated_keeping_every_file(tmp_path):
    import duckdb

    path = tmp_path / "v1.duckdb"
    p = tmp_path / "XBTUSD_60.csv"
    p.write_text(kraken_text(3))
    with MarketStore(path) as s:
        s.import_files([p])
    con = duckdb.connect(str(path))  # turn it into a version-1 store: files unique per (sha256, member)
    con.execute("CREATE TABLE f1 AS SELECT * FROM files")
    con.execute("DROP TABLE files")
    con.execute("""CREATE TABLE files (file_id INTEGER PRIMARY KEY, sha256 VARCHAR NOT NULL, member VARCHAR NOT NULL,
        name VARCHAR NOT NULL, label VARCHAR NOT NULL, kind VARCHAR NOT NULL, venue VARCHAR NOT NULL,
        pair VARCHAR NOT NULL, source_pair VARCHAR, rows BIGINT NOT NULL, new_bars BIGINT NOT NULL, meta VARCHAR,
        imported_at TIMESTAMP NOT NULL, UNIQUE (sha256, member))""")
    con.execute("INSERT INTO files SELECT * FROM f1")
    con.execute("DROP TABLE f1")
    con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    rows_v1 = con.execute("SELECT * FROM files").fetchall()
    con.close()
    with MarketStore(path) as s:
        assert s.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall() == [("2",)]
        assert s.con.execute("SELECT * FROM files").fetchall() == rows_v1
        assert s.import_files([p]).unchanged == 1
        rep = s.import_files([p], pair="ETH/USD")  # same content, other pair: stored
        assert rep.new_bars == 3 and {i.pair for i in s.list_pairs()} == {"BTC/USD", "ETH/USD"}
    con = duckdb.connect(str(path))
    con.execute("UPDATE meta SET value = '9' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(InputError, match=r"schema version '9'; this krakenquant writes version 2"):
        MarketStore(path)
