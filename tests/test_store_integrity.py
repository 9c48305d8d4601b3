"""Integrity rules on small hand-made series: what is flagged, with which severity, and what is not."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from engine.store.integrity import BAD_PRINT_FACTOR, KINDS, MAX_TRADES
from engine.store.market import MarketStore

T0 = 1_700_000_000 // 3600 * 3600


def frame(n=12, px=100.0, **edits):
    ts = T0 + 3600 * np.arange(n, dtype=np.int64)
    c = np.full(n, px)
    df = pd.DataFrame({"ts": ts, "open": c, "high": c * 1.01, "low": c * 0.99, "close": c, "volume": 5.0})
    for key, val in edits.items():
        col, i = key.rsplit("_", 1)
        df.loc[int(i), col] = val
    return df


def findings(tmp_path, df, name="s"):
    with MarketStore(tmp_path / f"{name}.duckdb") as s:
        s.import_bars(df, "kraken", "BTC/USD", "test")
        return s.integrity_findings()


def test_isolated_low_and_high_wicks_are_bad_prints_and_kept(tmp_path):
    f = findings(tmp_path, frame(low_4=100.0 / (BAD_PRINT_FACTOR * 1.2), high_8=100.0 * BAD_PRINT_FACTOR * 1.2))
    bp = f[f.kind == "bad_print"]
    assert bp["ts"].tolist() == [T0 + 4 * 3600, T0 + 8 * 3600]
    assert set(bp["severity"]) == {"warning"}
    with MarketStore(tmp_path / "s.duckdb", read_only=True) as s:
        p = s.load_panel(["BTC/USD"], "kraken")
        assert p.valid.all() and p.low[4, 0] == pytest.approx(100.0 / (BAD_PRINT_FACTOR * 1.2))


def test_wicks_within_the_factor_or_not_isolated_are_not_bad_prints(tmp_path):
    # a deep but plausible wick (4x), and a crash that the close follows (body moves too)
    f = findings(
        tmp_path,
        frame(
            low_3=100.0 / 4.0,
            open_7=100.0,
            low_7=5.0,
            close_7=6.0,
            high_7=101.0,
            open_8=6.0,
            high_8=7.0,
            low_8=5.5,
            close_8=6.5,
            open_9=6.5,
            high_9=7.0,
            low_9=6.0,
            close_9=6.8,
        ),
        "a",
    )
    assert "bad_print" not in set(f["kind"])
    # two adjacent deep lows: neither is isolated
    g = findings(tmp_path, frame(low_5=1.0, low_6=1.0), "b")
    assert "bad_print" not in set(g["kind"])


def test_gaps_and_zero_volume_are_warnings(tmp_path):
    df = frame(volume_2=0.0).drop(index=[5, 6, 7])
    f = findings(tmp_path, df)
    assert f[f.kind == "gap"][["ts", "value"]].values.tolist() == [[T0 + 5 * 3600, 3.0]]
    assert f[f.kind == "zero_volume"]["ts"].tolist() == [T0 + 2 * 3600]
    assert set(f["severity"]) == {"warning"}
    with MarketStore(tmp_path / "s.duckdb", read_only=True) as s:
        assert s.check()["blocking"] == 0 and s.list_pairs()[0].missing_hours == 3


@pytest.mark.parametrize(
    "kind, sql",
    [
        ("ohlc", "UPDATE bars SET high = low * 0.5 WHERE ts = {t}"),
        ("non_positive", "UPDATE bars SET low = -1 WHERE ts = {t}"),
        ("non_finite", "UPDATE bars SET close = 'NaN'::DOUBLE WHERE ts = {t}"),
        ("off_grid", "UPDATE bars SET ts = ts + 60 WHERE ts = {t}"),
        ("duplicate", "INSERT INTO bars SELECT * FROM bars WHERE ts = {t}"),
        # what an overflowing cast of a 1e23 trade count left before the importer's range check
        ("bad_trades", "UPDATE bars SET trades = -9223372036854775808 WHERE ts = {t}"),
        ("bad_trades", "UPDATE bars SET trades = 1000000000001 WHERE ts = {t}"),
        ("non_positive", "UPDATE bars SET volume = -0.5 WHERE ts = {t}"),
        ("non_finite", "UPDATE bars SET volume = 'inf'::DOUBLE WHERE ts = {t}"),
        ("non_finite", "UPDATE bars SET vwap = 'NaN'::DOUBLE WHERE ts = {t}"),
    ],
)
def test_damaged_store_is_blocking(tmp_path, kind, sql):
    path = tmp_path / "d.duckdb"
    with MarketStore(path) as s:
        s.import_bars(frame().assign(trades=7.0, vwap=100.0), "kraken", "BTC/USD", "test")
        assert s.check()["blocking"] == 0
    con = duckdb.connect(str(path))
    con.execute(sql.format(t=T0 + 3 * 3600))
    con.close()
    with MarketStore(path, read_only=True) as s:
        rep = s.check()
    assert KINDS[kind] == "blocking"
    assert rep["blocking"] >= 1 and kind in {f["kind"] for f in rep["blocking_findings"]}
    assert rep["pairs"][0]["findings"].get(kind, 0) >= 1


def test_trade_count_at_the_limit_is_kept_and_not_flagged(tmp_path):
    f = findings(tmp_path, frame().assign(trades=float(MAX_TRADES)))
    assert "bad_trades" not in set(f["kind"])
    with MarketStore(tmp_path / "s.duckdb", read_only=True) as s:
        assert s.con.execute("SELECT max(trades) FROM bars").fetchall() == [(MAX_TRADES,)]
