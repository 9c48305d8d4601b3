"""The backtest report as people read it (issue 20): `kq backtest` on real Binance bars writes a
report.html that loads plotly from ONE plotly.min.js beside it (not inlined), opens with the
headline figures as percentages next to buy-and-hold of the same pairs over the same hours, and
folds the configuration into a <details> at the bottom."""

from __future__ import annotations

import html as htmllib
import json
import re

import numpy as np
import pandas as pd
import pytest

from kq.cli import main

START = 1640995200  # 2022-01-01 00:00 UTC
END = START + 3600 * 24 * 60 - 3600  # 60 days of hourly bars
FILES = ("binance_BTCUSDT_1h", "binance_ETHUSDT_1h")
FEE = 0.004  # configs/default.toml [fees] fee_rate


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from tests.conftest import require_shared

    d = require_shared()
    root = tmp_path_factory.mktemp("rep")
    store = root / "m.duckdb"
    assert main(["data", "import", *(str(d / f"{f}.parquet") for f in FILES), "--store", str(store)]) == 0
    out = root / "bt"
    args = ["backtest", "--store", str(store), "--venue", "binance", "--start", str(START), "--end", str(END)]
    assert main([*args, "--out", str(out)]) == 0
    return d, out


def _cell(page: str, attr: str, key: str) -> str:
    m = re.search(rf"<td {attr}='{key}'>([^<]*)</td>", page)
    assert m, f"no {attr} cell for {key}"
    return m.group(1)


def _independent_buy_and_hold(d) -> tuple[float, float]:
    """Equal-weight buy-and-hold straight from the Parquet files: each pair bought at the close of
    its first bar in [START, END] after one fee, valued at its last close; (total return, max
    drawdown) of the mean of the two sleeves, hours aligned by ts (a missing hour keeps the last close)."""
    grid = pd.Index(np.arange(START, END + 1, 3600), name="ts")
    sleeves = []
    for f in FILES:
        df = pd.read_parquet(d / f"{f}.parquet", columns=["ts", "close"])
        s = df[(df["ts"] >= START) & (df["ts"] <= END)].set_index("ts")["close"].reindex(grid).ffill()
        sleeves.append((1.0 - FEE) * s / s.dropna().iloc[0])
    eq = pd.concat(sleeves, axis=1).mean(axis=1).to_numpy()
    peak = np.maximum.accumulate(np.concatenate(([1.0], eq)))[1:]
    return float(eq[-1] - 1.0), float((1.0 - eq / peak).max())


def test_report_loads_one_plotly_beside_it_and_is_small(run):
    _, out = run
    page = (out / "report.html").read_text()
    assert (out / "report.html").stat().st_size < 300_000 and "Copyright 2012" not in page
    assert "<script src='plotly.min.js'></script>" in page and "Plotly.newPlot" in page
    js = out / "plotly.min.js"
    assert js.is_file() and js.stat().st_size > 1_000_000  # the library itself, once, beside the report
    # nothing else is fetched: every script tag is inline or the relative plotly.min.js
    srcs = re.findall(r"<script[^>]*src=['\"]([^'\"]+)", page)
    assert srcs == ["plotly.min.js"]


def test_headline_is_percent_of_metrics_and_buy_and_hold_is_independent(run):
    d, out = run
    page = (out / "report.html").read_text()
    m = json.loads((out / "metrics.json").read_text())
    assert _cell(page, "data-key", "total_return") == f"{m['total_return'] * 100:.2f}%"
    assert _cell(page, "data-key", "max_drawdown") == f"{m['max_drawdown'] * 100:.2f}%"
    assert _cell(page, "data-key", "mean_exposure") == f"{m['mean_exposure'] * 100:.2f}%"
    assert _cell(page, "data-key", "n_trades") == f"{m['n_trades']:,}"
    tr, mdd = _independent_buy_and_hold(d)
    assert abs(tr) > 0.01  # a span where holding moved, so a wrong span cannot pass by chance
    assert _cell(page, "data-bh", "total_return") == f"{tr * 100:.2f}%"
    assert _cell(page, "data-bh", "max_drawdown") == f"{mdd * 100:.2f}%"
    assert _cell(page, "data-bh", "n_trades") == "2"
    assert _cell(page, "data-bh", "fees_paid") == f"{10_000 * FEE:,.2f}"
    # the headline comes before the charts, and no bare fraction of the metrics is printed
    assert page.index("class='headline'") < page.index("Plotly.newPlot")
    assert f"{m['total_return']:.4g}" not in page.split("<details")[0]


def test_configuration_is_folded_away_at_the_bottom(run):
    _, out = run
    page = (out / "report.html").read_text()
    top, _, folded = page.partition("<details class='config'>")
    assert folded and "</details>" in folded
    assert "fee_rate" not in top and "config_sha256" not in top
    body = htmllib.unescape(folded.split("</details>")[0])
    assert '"fee_rate": 0.004' in body and '"init_cash": 10000.0' in body  # pretty-printed JSON
    assert body.count("\n") > 30
