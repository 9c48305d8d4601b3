"""Every malformed input is rejected whole: one line naming file, line and rule, exit 2, store unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pandas as pd
import pytest

from engine.errors import InputError
from engine.store.market import MarketStore
from kq.cli import main

T0 = 1_700_000_000 // 3600 * 3600


def kraken_lines(n=5, t0=T0, px=100.0):
    return [f"{t0 + 3600 * i},{px + i},{px + i + 2},{px + i - 1},{px + i + 1},{1.5 + i},{10 + i}" for i in range(n)]


def write(path, lines):
    path.write_text("\n".join(lines) + ("\n" if lines else ""))
    return path


@pytest.fixture
def store(tmp_path):
    """A store already holding a good ETH/USD file, so 'unchanged' is checked on real content."""
    p = tmp_path / "market.duckdb"
    good = write(tmp_path / "ETHUSD_60.csv", kraken_lines(24))
    assert main(["data", "import", str(good), "--store", str(p)]) == 0
    return p


def digest(p):
    with MarketStore(p, read_only=True) as s:
        return s.content_digest(), s.table_counts()


def reject(store, capsys, path, *extra, line=None, rule, named=True):
    """Import must fail with exit 2, a one-line message naming file/line/rule, and change nothing."""
    before = digest(store)
    capsys.readouterr()
    rc = main(
        [
            "data",
            "import",
            *[str(x) for x in ([path] if not isinstance(path, list) else path)],
            "--store",
            str(store),
            *extra,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("kq: error: ") and "\n" not in err
    name = (path[-1] if isinstance(path, list) else path).name
    assert name in err or not named
    if line is not None:
        assert line in err, err
    assert rule in err, err
    assert digest(store) == before
    return err


def test_wrong_column_count(store, tmp_path, capsys):
    lines = kraken_lines()
    lines[2] = lines[2].rsplit(",", 1)[0]  # 6 fields on line 3
    reject(store, capsys, write(tmp_path / "XBTUSD_60.csv", lines), line="line 3", rule="wrong column count")


def test_non_numeric_field(store, tmp_path, capsys):
    lines = kraken_lines()
    lines[1] = lines[1].replace(",101.0,", ",abc,", 1)
    reject(store, capsys, write(tmp_path / "XBTUSD_60.csv", lines), line="line 2", rule="non-numeric field 'open'")


def test_duplicate_timestamp(store, tmp_path, capsys):
    lines = kraken_lines()
    lines[3] = lines[1]
    err = reject(store, capsys, write(tmp_path / "XBTUSD_60.csv", lines), line="line 4", rule="duplicate timestamp")
    assert "first on line 2" in err


def test_off_grid_timestamp(store, tmp_path, capsys):
    lines = kraken_lines()
    lines[2] = str(T0 + 2 * 3600 + 1800) + lines[2][len(str(T0)) :]
    reject(store, capsys, write(tmp_path / "XBTUSD_60.csv", lines), line="line 3", rule="off the hourly grid")


def test_high_below_low(store, tmp_path, capsys):
    lines = kraken_lines()
    lines[4] = f"{T0 + 4 * 3600},104,100,103,104,1,1"
    reject(store, capsys, write(tmp_path / "XBTUSD_60.csv", lines), line="line 5", rule="high < low")


def test_non_positive_price(store, tmp_path, capsys):
    lines = kraken_lines()
    lines[1] = f"{T0 + 3600},101,103,0,102,1,1"
    reject(store, capsys, write(tmp_path / "XBTUSD_60.csv", lines), line="line 2", rule="non-positive price")


def test_close_outside_range(store, tmp_path, capsys):
    lines = kraken_lines()
    lines[0] = f"{T0},100,102,99,105,1,1"
    reject(store, capsys, write(tmp_path / "XBTUSD_60.csv", lines), line="line 1", rule="outside [low, high]")


def test_empty_file(store, tmp_path, capsys):
    reject(store, capsys, write(tmp_path / "XBTUSD_60.csv", []), rule="empty file")


def test_unknown_pair_name(store, tmp_path, capsys):
    reject(store, capsys, write(tmp_path / "FOOBAR_60.csv", kraken_lines()), rule="unknown pair name 'FOOBAR'")


def test_non_hourly_file(store, tmp_path, capsys):
    reject(store, capsys, write(tmp_path / "XBTUSD_15.csv", kraken_lines()), rule="only hourly")


def test_milliseconds_timestamps(store, tmp_path, capsys):
    lines = [f"{(T0 + 3600 * i) * 1000},1,2,0.5,1.5,1,1" for i in range(3)]
    reject(store, capsys, write(tmp_path / "XBTUSD_60.csv", lines), line="line 1", rule="not in unix seconds")


def test_one_bad_file_rejects_the_whole_import(store, tmp_path, capsys):
    good = write(tmp_path / "XBTUSD_60.csv", kraken_lines(10, px=30000.0))
    bad_lines = kraken_lines()
    bad_lines[2] = bad_lines[2] + ",7"
    bad = write(tmp_path / "SOLUSD_60.csv", bad_lines)
    reject(store, capsys, [good, bad], line="line 3", rule="wrong column count")
    with MarketStore(store, read_only=True) as s:
        assert [i.pair for i in s.list_pairs()] == ["ETH/USD"]  # the good file was not written either


def test_conflicting_overlap_is_rejected(store, tmp_path, capsys):
    lines = kraken_lines(24)[10:14]
    lines[2] = lines[2].replace(",13.5,", ",99.0,")  # other volume for a stored hour
    sub = tmp_path / "other"
    sub.mkdir()
    err = reject(
        store, capsys, write(sub / "ETHUSD_60.csv", lines), line="line 3", rule="conflicts with the stored bar"
    )
    assert "overlapping bars must be identical" in err


def test_bad_rest_json_row(store, tmp_path, capsys):
    rows = [[T0 + 3600 * i, "1.0", "2.0", "0.5", "1.5", "1.2", "3.0", 5] for i in range(4)]
    rows[2] = rows[2][:7]
    p = tmp_path / "ohlc.json"
    p.write_text(json.dumps({"error": [], "result": {"XXBTZUSD": rows, "last": T0 + 3 * 3600}}))
    reject(store, capsys, p, line="row 3", rule="wrong column count")


def test_rest_json_kraken_error(store, tmp_path, capsys):
    p = tmp_path / "ohlc.json"
    p.write_text(json.dumps({"error": ["EQuery:Unknown asset pair"], "result": {}}))
    reject(store, capsys, p, rule="Kraken returned an error")


def test_bad_parquet_duplicate_ts(store, tmp_path, capsys):
    df = pd.DataFrame(
        {
            "ts": np.array([T0, T0 + 3600, T0 + 3600], dtype=np.int64),
            "open": 1.0,
            "high": 2.0,
            "low": 0.5,
            "close": 1.5,
            "volume": 3.0,
        }
    )
    p = tmp_path / "binance_BTCUSDT_1h.parquet"
    df.to_parquet(p)
    reject(store, capsys, p, line="row 3", rule="duplicate timestamp")


def test_bad_zip_member_rejects_zip(store, tmp_path, capsys):
    lines = kraken_lines()
    lines[1] = lines[1].replace(",101.0,", ",x,", 1)
    p = tmp_path / "kraken.zip"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("XBTUSD_60.csv", "\n".join(kraken_lines()) + "\n")
        z.writestr("LTCUSD_60.csv", "\n".join(lines) + "\n")
    err = reject(store, capsys, p, line="line 2", rule="non-numeric field")
    assert "kraken.zip:LTCUSD_60.csv" in err


def test_unknown_pair_option(store, tmp_path, capsys):
    err = reject(
        store,
        capsys,
        write(tmp_path / "data.csv", kraken_lines()),
        "--pair",
        "NOPE/USD",
        rule="unknown pair 'NOPE/USD'",
        named=False,
    )
    assert err.startswith("kq: error: --pair:")


def test_no_such_file(store, tmp_path, capsys):
    reject(store, capsys, tmp_path / "missing_60.csv", rule="no such file")


def test_api_raises_input_error_and_rolls_back(store, tmp_path):
    bad = pd.DataFrame(
        {
            "ts": [T0, T0 + 7200],
            "open": [1.0, 1.0],
            "high": [2.0, 0.5],
            "low": [0.5, 0.6],
            "close": [1.0, 0.55],
            "volume": [1.0, 1.0],
        }
    )
    before = digest(store)
    with MarketStore(store) as s, pytest.raises(InputError, match=r"row 2: high < low"):
        s.import_bars(bad, "kraken", "XBTUSD", "test")
    assert digest(store) == before


def test_subprocess_no_traceback(store, tmp_path):
    lines = kraken_lines()
    lines[3] = lines[3].replace(",103.0,", ",nan?,", 1)
    bad = write(tmp_path / "XBTUSD_60.csv", lines)
    before = digest(store)
    r = subprocess.run(
        [sys.executable, "-m", "kq", "data", "import", str(bad), "--store", str(store)], capture_output=True, text=True
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0
    assert f"{bad}: line 4: non-numeric field" in r.stderr
    assert digest(store) == before


def test_conflict_found_after_other_files_were_written_rolls_all_back(store, tmp_path, capsys):
    # the first file is valid and new (its bars go in inside the transaction); the second conflicts
    new = write(tmp_path / "XBTUSD_60.csv", kraken_lines(10, px=30000.0))
    sub = tmp_path / "b"
    sub.mkdir()
    lines = kraken_lines(24)[:3]
    lines[1] = lines[1].replace(",101.0,", ",101.5,", 1)  # another open for a stored ETH/USD hour
    reject(
        store, capsys, [new, write(sub / "ETHUSD_60.csv", lines)], line="line 2", rule="conflicts with the stored bar"
    )
    with MarketStore(store, read_only=True) as s:
        assert [(i.pair, i.rows) for i in s.list_pairs()] == [("ETH/USD", 24)]
        assert s.table_counts() == {"files": 1, "raw_rows": 24, "bars": 24, "integrity": 0}
    # and the same valid file alone still imports with file id 2 (no id burnt by the rollback)
    with MarketStore(store) as s:
        assert s.import_files([new]).new_bars == 10
        assert s.con.execute("SELECT max(file_id) FROM files").fetchall()[0][0] == 2


@pytest.mark.parametrize("trades", ["1e23", "9223372036854775808", "1000000000001"])
def test_trade_count_out_of_range_is_refused(store, tmp_path, capsys, trades):
    # 1e23 was stored as -9223372036854775808 (an overflowing int64 cast)
    lines = kraken_lines()
    lines[3] = lines[3].rsplit(",", 1)[0] + "," + trades
    reject(store, capsys, write(tmp_path / "XBTUSD_60.csv", lines), line="line 4", rule="trade count above 1e+12")


def test_rest_trade_count_out_of_range_is_refused(store, tmp_path, capsys):
    rows = [[T0 + 3600 * i, "1.0", "2.0", "0.5", "1.5", "1.2", "3.0", 5] for i in range(4)]
    rows[1][7] = 10**23
    p = tmp_path / "ohlc.json"
    p.write_text(json.dumps({"error": [], "result": {"XXBTZUSD": rows, "last": T0 + 3 * 3600}}))
    reject(store, capsys, p, line="row 2", rule="trade count above 1e+12")


# ---- hostile inputs that raised tracebacks (exit 1) instead of the one-line error (issue 21) ----


def encrypt_flag(data: bytes) -> bytes:
    """Set the 'encrypted' flag bit on every local and central header (zipfile cannot write one)."""
    b = bytearray(data)
    for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = b.find(sig)
        while i >= 0:
            b[i + off] |= 0x1
            i = b.find(sig, i + 4)
    return bytes(b)


def test_encrypted_zip_member(store, tmp_path, capsys):
    buf = tmp_path / "plain.zip"
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("XBTUSD_60.csv", "\n".join(kraken_lines()) + "\n")
    p = tmp_path / "locked.zip"
    p.write_bytes(encrypt_flag(buf.read_bytes()))
    err = reject(store, capsys, p, rule="encrypted member; refused")
    assert "locked.zip:XBTUSD_60.csv" in err


def test_corrupt_zip_member_data(store, tmp_path, capsys):
    p = tmp_path / "bad.zip"
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("XBTUSD_60.csv", "\n".join(kraken_lines(50)) + "\n")
    b = bytearray(p.read_bytes())
    b[60:70] = b"\xff" * 10  # inside the deflate stream
    p.write_bytes(bytes(b))
    reject(store, capsys, p, rule="cannot be read from the archive")


def parquet(path, **cols):
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = {
        "ts": pa.array([T0 + 3600 * i for i in range(3)], pa.int64()),
        "open": [1.0] * 3,
        "high": [2.0] * 3,
        "low": [0.5] * 3,
        "close": [1.5] * 3,
        "volume": [3.0] * 3,
    }
    base.update(cols)
    pq.write_table(pa.table(base), path)
    return path


@pytest.mark.parametrize(
    "cols, rule",
    [
        ({"open": [[1.0], [1.0], [1.0]]}, "column 'open' has type 'list<element: double>'; numbers expected"),
        ({"trades": ["5", "6", "7"]}, "column 'trades' has type 'string'; numbers expected"),
        ({"trades": [2**63 - 1, 5, 6]}, "row 1: trade count above 1e+12"),
        ({"volume": [True, False, True]}, "column 'volume' has type 'bool'; numbers expected"),
        ({"ts": [f"{T0}", "x", "y"]}, "column 'ts' has type 'string'"),
        ({"close": [{"a": 1.5}] * 3}, "column 'close' has type 'struct<a: double>'"),
    ],
)
def test_parquet_wrong_column_types(store, tmp_path, capsys, cols, rule):
    reject(store, capsys, parquet(tmp_path / "XBTUSD_1h.parquet", **cols), rule=rule)


@pytest.mark.parametrize(
    "body, rule",
    [
        ("[" * 100_000 + "]" * 100_000, "JSON nested too deeply"),
        ('{"XXBTZUSD": [[@T, NaN, "2", "0.5", "1.5", "1", "3", 5]], "last": @T}', "NaN is not a JSON number"),
        ('{"XXBTZUSD": [[@T, "1", "2", "0.5", "1.5", "1", "3", 5]], "last": NaN}', "NaN is not a JSON number"),
        (
            '{"XXBTZUSD": [[@T, "1", "2", "0.5", "1.5", "1", "3", 5]], "last": -Infinity}',
            "-Infinity is not a JSON number",
        ),
        (
            '{"XXBTZUSD": [[@T, "1", "2", "0.5", "1.5", "1", "3", 5]], "last": "soon"}',
            "'last' is not a whole number of unix seconds ('soon')",
        ),
        (
            '{"XXBTZUSD": [[@T, "1", "2", "0.5", "1.5", "1", "3", 5]], "last": 1e999}',
            "'last' is not a whole number of unix seconds (inf)",
        ),
        ('{"XXBTZUSD": [[@T, [["1"]], "2", "0.5", "1.5", "1", "3", 5]]}', "row 1: non-numeric field 'open'"),
        ('{"XXBTZUSD": [[@T, {"a": 1}, "2", "0.5", "1.5", "1", "3", 5]]}', "row 1: non-numeric field 'open'"),
        (
            '{"XXBTZUSD": [[@T, "1", "2", "0.5", "1.5", "1", "3", 1' + "0" * 400 + "]]}",
            "row 1: non-numeric field 'count'",
        ),
        ('{"error": ["line one\\nline two"], "result": {}}', "Kraken returned an error: ['line one\\nline two']"),
    ],
)
def test_rest_json_hostile_structure(store, tmp_path, capsys, body, rule):
    p = tmp_path / "ohlc.json"
    p.write_text(body.replace("@T", str(T0)))
    reject(store, capsys, p, rule=rule)


def test_file_name_with_a_newline_or_markup(store, tmp_path, capsys):
    bad = write(tmp_path / "XBT\nUSD_60.csv", kraken_lines())
    err = reject(store, capsys, bad, rule="cannot infer the pair", named=False)
    assert "XBT\\nUSD_60.csv" in err
    ok = write(tmp_path / "[red]x[bold].csv", kraken_lines(3, px=30000.0))  # shown as text, not markup
    capsys.readouterr()
    assert main(["data", "import", str(ok), "--pair", "XBTUSD", "--store", str(store)]) == 0
    assert "[red]x[bold].csv" in capsys.readouterr().out


def test_long_field_is_cut_in_the_message(store, tmp_path, capsys):
    lines = kraken_lines()
    lines[1] = lines[1].replace(",101.0,", "," + "A" * 100_000 + ",", 1)
    err = reject(store, capsys, write(tmp_path / "XBTUSD_60.csv", lines), line="line 2", rule="non-numeric field")
    assert len(err) < 300


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_export_out_to_a_folder_or_under_a_file(store, tmp_path, capsys, where):
    out = tmp_path / "exports"
    out.mkdir()
    if where == "under_a_file":
        (out / "f").write_text("x")
        out = out / "f" / "bars.parquet"
    capsys.readouterr()
    rc = main(["data", "export", "--out", str(out), "--store", str(store)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith(f"kq: error: {out}: ") and "\n" not in err
    assert ("is a folder" if where == "folder" else "cannot") in err
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ([] if where == "folder" else ["f"])


# ---- loose acceptance (issue 21): venues are a fixed set; booleans and Unicode digits are not numbers ----


SQLISH = "kraken'; DROP TABLE bars; --"


def test_venue_option_outside_the_fixed_set(store, tmp_path, capsys):
    p = write(tmp_path / "XBTUSD_60.csv", kraken_lines())
    err = reject(store, capsys, p, "--venue", SQLISH, rule="unknown venue", named=False)
    assert err.startswith("kq: error: --venue: unknown venue") and "known: kraken, binance, coinbase, synthetic" in err
    reject(store, capsys, p, "--venue", "krakenfutures", rule="unknown venue 'krakenfutures'", named=False)
    reject(store, capsys, p, "--venue", "kraken\n", rule="unknown venue 'kraken\\n'", named=False)  # found by fuzz


def test_venue_from_parquet_metadata_or_name_outside_the_fixed_set(store, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pa.table(
        {
            "ts": pa.array([T0, T0 + 3600], pa.int64()),
            "open": [1.0, 1.0],
            "high": [2.0, 2.0],
            "low": [0.5, 0.5],
            "close": [1.5, 1.5],
            "volume": [3.0, 3.0],
        }
    )
    p = tmp_path / "XBTUSD_1h.parquet"
    pq.write_table(t.replace_schema_metadata({"venue": SQLISH}), p)
    reject(store, capsys, p, rule="unknown venue")
    q = tmp_path / "evil_BTCUSDT_1h.parquet"
    pq.write_table(t, q)
    reject(store, capsys, q, rule="unknown venue 'evil'")


@pytest.mark.parametrize(
    "field, value",
    [(6, True), (7, False), (0, True), (2, "٣"), (6, "１２３"), (1, "1_000"), (3, "0x10"), (4, "Infinity")],
)
def test_rest_booleans_and_unicode_digits_are_not_numbers(store, tmp_path, capsys, field, value):
    rows = [[T0 + 3600 * i, "1.0", "2.0", "0.5", "1.5", "1.2", "3.0", 5] for i in range(3)]
    rows[1][field] = value
    p = tmp_path / "ohlc.json"
    p.write_text(json.dumps({"XXBTZUSD": rows}))
    name = ("time", "open", "high", "low", "close", "vwap", "volume", "count")[field]
    reject(store, capsys, p, line="row 2", rule=f"non-numeric field '{name}'")


@pytest.mark.parametrize("value", ["١٠٥", "１０５", "10５", "True"])
def test_csv_unicode_digits_are_not_numbers(store, tmp_path, capsys, value):
    lines = kraken_lines()
    lines[2] = ",".join([*lines[2].split(",")[:5], value, "7"])
    reject(store, capsys, write(tmp_path / "XBTUSD_60.csv", lines), line="line 3", rule="non-numeric field 'volume'")
