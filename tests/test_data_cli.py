"""`kq data check/export/synth` and the demo job, through the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import duckdb
import pandas as pd
import pytest
from conftest import require_shared

from engine.errors import InputError
from engine.store.market import MarketStore
from kq.cli import main
from kq.data import parse_time

T0 = 1_700_000_000 // 3600 * 3600


@pytest.fixture
def csv_store(tmp_path):
    p = tmp_path / "XBTUSD_60.csv"
    p.write_text(
        "".join(
            f"{T0 + 3600 * i},{100 + i},{102 + i},{99 + i},{101 + i},{1 + i},{5 + i}\n" for i in range(30) if i != 7
        )
    )
    store = tmp_path / "m.duckdb"
    assert main(["data", "import", str(p), "--store", str(store)]) == 0
    return store


def test_check_prints_pairs_and_exits_0(csv_store, capsys):
    capsys.readouterr()
    assert main(["data", "check", "--store", str(csv_store)]) == 0
    out = capsys.readouterr().out
    assert "BTC/USD" in out and "kraken" in out and "2023-11-14 22:00" in out  # first bar, UTC, readable
    assert main(["data", "check", "--json", "--store", str(csv_store)]) == 0
    rep = json.loads(capsys.readouterr().out)
    (p,) = rep["pairs"]
    assert (p["pair"], p["rows"], p["missing_hours"], p["findings"], p["blocking"]) == ("BTC/USD", 29, 1, {"gap": 1}, 0)
    # the pair names check prints are accepted by load_panel / --pairs
    with MarketStore(csv_store, read_only=True) as s:
        assert s.load_panel([p["pair"]], p["venue"]).n_bars == 30


def test_check_exits_1_on_a_blocking_problem(csv_store, capsys):
    # a damaged store (written around the importer): high < low on a stored bar
    con = duckdb.connect(str(csv_store))
    con.execute("UPDATE bars SET low = high + 1 WHERE ts = ?", [T0 + 3 * 3600])
    con.close()
    capsys.readouterr()
    rc = main(["data", "check", "--store", str(csv_store)])
    cap = capsys.readouterr()
    assert rc == 1
    assert "ohlc" in cap.out and "BLOCKING" in cap.out
    assert cap.err.strip() == f"kq: error: 1 blocking integrity problem(s) in {csv_store}"


def test_check_without_store_is_a_clear_error(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "kq", "data", "check", "--store", str(tmp_path / "none.duckdb")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "no market store at" in r.stderr


def test_export_cli_with_iso_range(csv_store, tmp_path, capsys):
    out = tmp_path / "out" / "bars.parquet"
    start = pd.Timestamp(T0 + 2 * 3600, unit="s").strftime("%Y-%m-%dT%H:%M")
    assert (
        main(
            [
                "data",
                "export",
                "--out",
                str(out),
                "--pairs",
                "XBTUSD",
                "--start",
                start,
                "--end",
                str(T0 + 9 * 3600),
                "--store",
                str(csv_store),
            ]
        )
        == 0
    )
    df = pd.read_parquet(out)
    assert df["ts"].tolist() == [T0 + 3600 * i for i in range(2, 10) if i != 7]
    assert set(df["pair"]) == {"BTC/USD"} and set(df["venue"]) == {"kraken"}
    assert main(["data", "export", "--out", str(out), "--pairs", "ETH/USD", "--store", str(csv_store)]) == 2


def test_parse_time():
    assert parse_time("1700000000") == 1700000000
    assert parse_time("2020-09-22T06:00") == 1600754400
    assert parse_time("2020-09-22 06:00:00+00:00") == 1600754400
    assert parse_time("2025-11-15", end=True) == 1763251199  # the whole day: includes the 23:00 bar
    assert parse_time("2025-11-15") == 1763164800
    with pytest.raises(InputError, match="invalid time"):
        parse_time("yesterday")
    # Unicode digits pass str.isdigit() and were read as unix seconds ('²' raised a traceback)
    for bad in ("١٧٠٠٠٠٠٠٠٠", "²", "１７００００００００", "99999999999999999999"):
        with pytest.raises(InputError, match="invalid time"):
            parse_time(bad)


def test_synth_is_stored_as_synthetic_deterministic_and_idempotent(tmp_path, capsys):
    a, b, c = (tmp_path / f"{k}.duckdb" for k in "abc")
    args = ["data", "synth", "--pairs", "BTC/USD,ETH/USD,XDG/USD", "--bars", "300", "--start", "2023-01-01"]
    assert main([*args, "--seed", "3", "--store", str(a)]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out
    assert main([*args, "--seed", "3", "--store", str(b)]) == 0
    assert main([*args, "--seed", "4", "--store", str(c)]) == 0
    digests = []
    for p in (a, b, c):
        with MarketStore(p, read_only=True) as s:
            assert {(i.venue, i.pair, i.rows, i.first_ts) for i in s.list_pairs()} == {
                ("synthetic", x, 300, 1672531200) for x in ("BTC/USD", "ETH/USD", "DOGE/USD")
            }
            assert s.check()["blocking"] == 0
            digests.append(s.load_panel(["BTC/USD", "ETH/USD", "DOGE/USD"], "synthetic").close.tobytes())
    assert digests[0] == digests[1] and digests[0] != digests[2]
    # again with the same seed: nothing new
    with MarketStore(a) as s:
        before = s.content_digest()
    capsys.readouterr()
    assert main([*args, "--seed", "3", "--store", str(a)]) == 0
    assert "0 imported, 3 already imported" in capsys.readouterr().out
    with MarketStore(a, read_only=True) as s:
        assert s.content_digest() == before
    # another seed over the same hours conflicts: rejected, store unchanged
    assert main([*args, "--seed", "5", "--store", str(a)]) == 2
    with MarketStore(a, read_only=True) as s:
        assert s.content_digest() == before


def _demo(env_extra, tmp_path):
    import os

    env = {**os.environ, **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "kq.demo", "--data-only"], capture_output=True, text=True, env=env, cwd=tmp_path
    )


def test_demo_real_data_idempotent(tmp_path):
    shared = require_shared()
    fake = tmp_path / "shared" / "data" / "ohlcv"
    fake.mkdir(parents=True)
    for name in ("LTCUSD_1h.parquet", "binance_LINKUSDT_1h.parquet"):
        shutil.copyfile(shared / name, fake / name)  # copies: a link out of the folder is refused
    env = {"KQ_SHARED": str(tmp_path / "shared"), "KQ_STORE": str(tmp_path / "demo.duckdb")}
    r1 = _demo(env, tmp_path)
    assert r1.returncode == 0, r1.stderr
    assert "DATA: REAL market data" in r1.stdout and "SYNTHETIC" not in r1.stdout
    assert "2 imported" in r1.stdout and "LINK/USDT" in r1.stdout and "LTC/USD" in r1.stdout
    r2 = _demo(env, tmp_path)
    assert r2.returncode == 0 and "0 imported, 2 already imported" in r2.stdout and "nothing new" in r2.stdout


def test_demo_without_shared_data_uses_synthetic(tmp_path):
    env = {"KQ_SHARED": str(tmp_path / "nothing"), "KQ_STORE": str(tmp_path / "demo.duckdb")}
    r = _demo(env, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "DATA: SYNTHETIC market" in r.stdout and "synthetic" in r.stdout and "BTC/USD" in r.stdout
    with MarketStore(tmp_path / "demo.duckdb", read_only=True) as s:
        assert {i.venue for i in s.list_pairs()} == {"synthetic"}


def test_import_folder_via_cli_lists_every_file_and_check_filters_by_venue(tmp_path, capsys):
    d = tmp_path / "in"
    d.mkdir()
    for name, px in (("XBTUSD_60.csv", 30000), ("ETHUSD_60.csv", 2000)):
        (d / name).write_text("".join(f"{T0 + 3600 * i},{px},{px + 5},{px - 5},{px + 1},2.5,9\n" for i in range(4)))
    (d / "notes.txt").write_text("not data")  # ignored: not an importable suffix
    pq = tmp_path / "binance_SOLUSDT_1h.parquet"
    pd.DataFrame(
        {"ts": [T0, T0 + 3600], "open": 20.0, "high": 21.0, "low": 19.0, "close": 20.5, "volume": 100.0}
    ).to_parquet(pq)
    store = tmp_path / "m.duckdb"
    capsys.readouterr()
    assert main(["data", "import", str(d), str(pq), "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "XBTUSD_60.csv" in out and "ETHUSD_60.csv" in out and "binance_SOLUSDT_1h.parquet" in out
    assert "3 imported, 0 already imported, 0 skipped; 10 rows read, 10 new bars" in out
    assert main(["data", "check", "--venue", "binance", "--json", "--store", str(store)]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [(p["venue"], p["pair"], p["rows"]) for p in rep["pairs"]] == [("binance", "SOL/USDT", 2)]
