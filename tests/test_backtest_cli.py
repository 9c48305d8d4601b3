"""`kq backtest` end to end on real bars in a temporary market store."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from kq.cli import main


@pytest.fixture(scope="module")
def store(
    tmp_path_factory,
):
    from tests.conftest import require_shared

    d = require_shared()
    path = tmp_path_factory.mktemp("bt") / "m.duckdb"
    rc = main(
        [
            "data",
            "import",
            str(d / "binance_BTCUSDT_1h.parquet"),
            str(d / "binance_ETHUSDT_1h.parquet"),
            "--store",
            str(path),
        ]
    )
    assert rc == 0
    return path


def _signals(path, ts, pairs, **cols):
    rng = np.random.default_rng(3)
    rows = [(t, p, float(rng.random()), 0.02) for t in ts for p in pairs]
    df = pd.DataFrame(rows, columns=["ts", "pair", "p_up", "exp_return"])
    for k, v in cols.items():
        df[k] = v
    df.to_parquet(path, index=False)


def test_backtest_with_signals_writes_everything(store, tmp_path):
    start = 1640995200  # 2022-01-01
    ts = np.arange(start, start + 3600 * 24 * 60, 3600)
    sig = tmp_path / "sig.parquet"
    _signals(sig, ts, ["BTC/USDT", "XETH/USDT".replace("XETH", "ETH")])
    out = tmp_path / "out"
    rc = main(
        [
            "backtest",
            "--store",
            str(store),
            "--venue",
            "binance",
            "--signals",
            str(sig),
            "--start",
            "2022-01-01",
            "--end",
            "2022-03-01",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    tr = pd.read_parquet(out / "trades.parquet")
    eq = pd.read_parquet(out / "equity.parquet")
    ev = pd.read_parquet(out / "events.parquet")
    m = json.loads((out / "metrics.json").read_text())
    assert list(tr.columns[:8]) == ["ts", "pair", "side", "quantity", "price", "notional", "fee", "reason"]
    assert {"ts", "equity", "cash", "exposure", "drawdown", "trading_state"} <= set(eq.columns)
    assert len(tr) > 10 and set(tr["pair"]) <= {"BTC/USDT", "ETH/USDT"}
    assert np.allclose(tr["fee"], tr["notional"] * 0.004, rtol=1e-15)
    assert len(eq) == 24 * 60  # --end as a bare date includes that whole day
    assert m["n_fills"] == len(tr) and "refusals_by_reason" in m and "bars_in_state" in m
    assert len(ev) > 0
    html = (out / "report.html").read_text()
    # plotly.js loaded from the one copy beside the report (works offline), not inlined
    assert "Plotly.newPlot" in html and len(html) < 300_000 and "<script src='plotly.min.js'>" in html
    assert (out / "plotly.min.js").is_file()


def test_backtest_bad_signals_is_one_line_error(store, tmp_path, capsys):
    sig = tmp_path / "bad.parquet"
    _signals(sig, [1640995200], ["BTC/USDT"], p_up=1.5)
    out = tmp_path / "out"
    rc = main(["backtest", "--store", str(store), "--venue", "binance", "--signals", str(sig), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "p_up 1.5 outside [0, 1]" in err and "Traceback" not in err
    assert not out.exists()
    pd.DataFrame({"ts": [1], "pair": ["BTC/USDT"]}).to_parquet(sig)
    rc = main(["backtest", "--store", str(store), "--venue", "binance", "--signals", str(sig), "--out", str(out)])
    assert rc == 2 and "missing column(s) p_up, exp_return" in capsys.readouterr().err
