"""``kq features``: market store -> long-form Parquet of the feature set; clear errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from conftest import require_shared

from engine.config import load_config
from engine.features.featureset import build_features
from engine.store.panel import load_shared_panel
from kq.cli import main

T0 = 1704067200  # 2024-01-01
T1 = 1706745600 - 3600  # through 2024-01-31 23:00


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = require_shared()
    from engine.store.market import MarketStore

    path = tmp_path_factory.mktemp("kqf") / "m.duckdb"
    with MarketStore(path) as s:
        s.import_files([d / "binance_BTCUSDT_1h.parquet", d / "binance_ETHUSDT_1h.parquet"])
    return path


def test_kq_features_writes_the_feature_set(store, tmp_path, capsys):
    out = tmp_path / "f.parquet"
    rc = main(
        [
            "features",
            "--store",
            str(store),
            "--venue",
            "binance",
            "--pairs",
            "BTC/USDT,ETHUSDT",
            "--start",
            "2024-01-01",
            "--end",
            "2024-01-31",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    assert "wrote 1,488 rows x 21 features" in capsys.readouterr().out
    df = pd.read_parquet(out)
    cfg = load_config().features
    assert list(df.columns[:2]) == ["ts", "pair"] and df.shape == (1488, 2 + 21)
    assert df.ts.min() == T0 and df.ts.max() == T1
    # same numbers as building from the shared files with the same warm-up history
    p = load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"], T0 - cfg.warmup_bars * 3600, T1)
    fs = build_features(p, cfg).slice(start=T0)
    want = fs.to_long()
    for name in fs.names:
        np.testing.assert_array_equal(df[name].to_numpy(), want[name].to_numpy(), err_msg=name)
    assert df.drop(columns=["ts", "pair"]).notna().all().all()  # warm-up history loaded: no NaN at the start
    meta = json.loads(pq.read_schema(out).metadata[b"krakenquant.features"])
    assert meta["content_hash"] == fs.content_hash and meta["names"] == list(fs.names)


def test_bad_input_is_one_line_exit_2(store, tmp_path, capsys):
    cases = [
        (["--store", str(store), "--venue", "binance", "--out", str(tmp_path / "a.csv")], "must end in .parquet"),
        (
            ["--store", str(store), "--venue", "binance", "--pairs", "SOL/USDT", "--out", str(tmp_path / "a.parquet")],
            "no bars for SOL/USDT",
        ),
        (
            [
                "--store",
                str(store),
                "--venue",
                "binance",
                "--start",
                "2024-02-01",
                "--end",
                "2024-01-01",
                "--out",
                str(tmp_path / "a.parquet"),
            ],
            "--end is before --start",
        ),
    ]
    for args, msg in cases:
        assert main(["features", *args]) == 2, args
        err = capsys.readouterr().err
        assert "kq: error: " in err and msg in err
        assert not (tmp_path / "a.parquet").exists()  # nothing half-written
    # as a process: one line on stderr, no traceback
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "kq",
            "features",
            "--store",
            str(tmp_path / "none.duckdb"),
            "--out",
            str(tmp_path / "a.parquet"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("kq: error: no market store")


def test_universe_option_restricts_breadth(store, tmp_path):
    out = tmp_path / "u.parquet"
    args = ["features", "--store", str(store), "--venue", "binance", "--start", "2024-01-01", "--end", "2024-01-10"]
    assert main([*args, "--out", str(out), "--universe", "default"]) == 0
    assert main([*args, "--out", str(tmp_path / "all.parquet")]) == 0
    a, b = pd.read_parquet(out), pd.read_parquet(tmp_path / "all.parquet")
    assert len(a) == len(b)
    assert np.array_equal(a["ret_1h"].to_numpy(), b["ret_1h"].to_numpy())  # per-pair features unchanged
    from engine.universe import load_universe, universe_mask

    p = load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"], T0 - 768 * 3600, T0 + 9 * 86400 + 23 * 3600)
    mask = universe_mask(p, load_universe())
    fs = build_features(p, load_config().features, universe_mask=mask).slice(start=T0)
    np.testing.assert_array_equal(a["breadth_up"].to_numpy(), fs.to_long()["breadth_up"].to_numpy())
