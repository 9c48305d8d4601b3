"""kq backtest defaults its range to the hours all selected pairs share (no spurious kill switches)."""

import json

from engine.store.market import MarketStore
from engine.synth import generate_market
from kq.cli import main


def _store(tmp_path):
    frames = generate_market(["BTC/USD", "ETH/USD"], n_bars=2000, seed=3)
    path = tmp_path / "m.duckdb"
    with MarketStore(path) as s:
        s.import_bars(frames["BTC/USD"], "synthetic", "BTC/USD", "synth-btc")
        # ETH's history ends 500 bars earlier than BTC's
        s.import_bars(frames["ETH/USD"].iloc[:1500], "synthetic", "ETH/USD", "synth-eth")
    return path, frames


def test_default_range_is_the_common_span(tmp_path, capsys):
    path, frames = _store(tmp_path)
    out = tmp_path / "bt"
    rc = main(["backtest", "--venue", "synthetic", "--store", str(path), "--out", str(out)])
    assert rc == 0
    meta = json.loads((out / "metrics.json").read_text())["meta"]
    assert meta["start"] == int(frames["BTC/USD"]["ts"].iloc[0])
    assert meta["end"] == int(frames["ETH/USD"]["ts"].iloc[1499])
    assert "warning" not in capsys.readouterr().err


def test_explicit_range_past_a_pairs_data_warns(tmp_path, capsys):
    path, frames = _store(tmp_path)
    end = int(frames["BTC/USD"]["ts"].iloc[-1])
    rc = main(
        ["backtest", "--venue", "synthetic", "--store", str(path), "--end", str(end), "--out", str(tmp_path / "bt")]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "warning" in err and "ETH/USD" in err


def test_pairs_without_common_hours_are_a_clear_error(tmp_path, capsys):
    frames = generate_market(["BTC/USD", "ETH/USD"], n_bars=400, seed=3)
    path = tmp_path / "m.duckdb"
    with MarketStore(path) as s:
        s.import_bars(frames["BTC/USD"].iloc[:100], "synthetic", "BTC/USD", "a")
        s.import_bars(frames["ETH/USD"].iloc[200:], "synthetic", "ETH/USD", "b")
    rc = main(["backtest", "--venue", "synthetic", "--store", str(path), "--out", str(tmp_path / "bt")])
    assert rc == 2
    assert "no hours in common" in capsys.readouterr().err
    assert not (tmp_path / "bt" / "metrics.json").exists()
