"""engine.backtest.io: the output folder's schemas, the one atomic-folder write, and read_outputs
decoding reason and state codes by name (a real backtest of two Binance pairs)."""

from __future__ import annotations

import json
import threading

import numpy as np
import pandas as pd
import pytest

from engine.backtest.io import (
    EQUITY_COLUMNS,
    EVENT_COLUMNS,
    METRICS_KEYS,
    TRADE_COLUMNS,
    enum_codes,
    read_outputs,
    write_outputs,
)
from engine.errors import InputError, IntegrityError
from engine.risk.enums import EventCode, KillReason, Reason, TradingState

START = 1672531200  # 2023-01-01


@pytest.fixture(scope="module")
def run():
    from tests.conftest import require_shared

    require_shared()
    from engine.backtest.demo import ma_signal
    from engine.backtest.runner import make_inputs, run_backtest
    from engine.config import load_config
    from engine.risk.params import params_from_config
    from engine.store.panel import load_shared_panel

    cfg = load_config()
    panel = load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"], START, START + 2400 * 3600)
    p_up, er = ma_signal(panel.close, 12, 48, 50.0)
    res = run_backtest(make_inputs(panel, p_up, er, cfg), params_from_config(cfg))
    assert len(res.trades) > 10 and len(res.events) > 10
    return cfg, res


def _siblings(d):
    return sorted(p.name for p in d.parent.iterdir() if p.name.startswith(f".{d.name}."))


def test_round_trip_schemas_and_codes_decoded_by_name(run, tmp_path):
    cfg, res = run
    out = tmp_path / "bt"
    m = write_outputs(out, res, cfg, {"note": "io test"})
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["trades.parquet", "equity.parquet", "events.parquet", "metrics.json", "report.html", "plotly.min.js"]
    )
    assert _siblings(out) == []  # no temporary folder left behind
    assert tuple(pd.read_parquet(out / "trades.parquet").columns) == TRADE_COLUMNS
    assert tuple(pd.read_parquet(out / "equity.parquet").columns) == EQUITY_COLUMNS
    assert tuple(pd.read_parquet(out / "events.parquet").columns) == EVENT_COLUMNS
    doc = json.loads((out / "metrics.json").read_text())
    assert set(METRICS_KEYS) <= set(doc) and doc["config_sha256"] == cfg.content_hash() == m["config_sha256"]
    o = read_outputs(out)
    assert o.metrics == doc
    # every enum column comes back as names of its enum, and maps back to the kernel's codes
    assert list(o.trades["reason"].cat.categories) == [r.name for r in sorted(Reason, key=int)]
    assert np.array_equal(enum_codes(o.trades["reason"], Reason), res.trades["reason"])
    assert np.array_equal(enum_codes(o.events["reason"], Reason), res.events["reason"])
    assert np.array_equal(enum_codes(o.events["event"], EventCode), res.events["code"])
    assert np.array_equal(enum_codes(o.equity["trading_state"], TradingState), res.equity["trading_state"])
    assert np.array_equal(enum_codes(o.equity["kill_reason"], KillReason), res.equity["kill_reason"])
    assert (o.trades["reason"] == "ENTRY").sum() == int((res.trades["reason"] == int(Reason.ENTRY)).sum())
    assert np.array_equal(o.equity["equity"].to_numpy(), res.equity["equity"])


def test_unknown_names_damaged_and_missing_files_are_integrity_errors(run, tmp_path):
    cfg, res = run
    out = tmp_path / "bt"
    write_outputs(out, res, cfg, {})
    tr = pd.read_parquet(out / "trades.parquet")
    tr.loc[3, "reason"] = "ENTRY_MAYBE"
    tr.to_parquet(out / "trades.parquet", index=False)
    with pytest.raises(IntegrityError, match=r"trades.parquet: row 3: reason 'ENTRY_MAYBE' is not a Reason name"):
        read_outputs(out)
    write_outputs(out, res, cfg, {})
    eq = pd.read_parquet(out / "equity.parquet")
    eq.loc[5, "kill_reason"] = 9
    eq.to_parquet(out / "equity.parquet", index=False)
    with pytest.raises(IntegrityError, match=r"equity.parquet: row 5: kill_reason 9 is not a KillReason code"):
        read_outputs(out)
    write_outputs(out, res, cfg, {})
    (out / "events.parquet").write_bytes(b"not parquet")
    with pytest.raises(IntegrityError, match=r"events.parquet is not a readable Parquet file"):
        read_outputs(out)
    (out / "events.parquet").unlink()
    with pytest.raises(IntegrityError, match=r"events.parquet is missing"):
        read_outputs(out)
    write_outputs(out, res, cfg, {})
    doc = json.loads((out / "metrics.json").read_text())
    doc["refusals_by_reason"]["REFUSE_BECAUSE"] = 1
    (out / "metrics.json").write_text(json.dumps(doc))
    with pytest.raises(IntegrityError, match=r"'REFUSE_BECAUSE' is not a Reason name"):
        read_outputs(out)
    with pytest.raises(InputError, match="no backtest output folder"):
        read_outputs(tmp_path / "nowhere")


def test_failed_write_leaves_the_folder_untouched_and_replaces_only_its_own_files(run, tmp_path, monkeypatch):
    import engine.backtest.io as bio

    cfg, res = run
    out = tmp_path / "bt"
    write_outputs(out, res, cfg, {"run": 1})
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bio, "write_report", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        write_outputs(out, res, cfg, {"run": 2})
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before and _siblings(out) == []
    monkeypatch.undo()
    write_outputs(out, res, cfg, {"run": 3})
    assert (out / "notes.txt").read_text() == "mine"  # files the output does not have are kept
    assert json.loads((out / "metrics.json").read_text())["meta"] == {"run": 3}
    with pytest.raises(InputError, match="exists and is not a folder"):
        write_outputs(out / "notes.txt", res, cfg, {})


def test_atomic_folder_replaces_subfolders_whole_and_drops_stale_ones(tmp_path):
    from engine.paths import atomic_folder

    out = tmp_path / "wf"
    with atomic_folder(out) as t:
        (t / "backtest").mkdir()
        (t / "backtest" / "old.txt").write_text("1")
        (t / "model").mkdir()
    with atomic_folder(out) as t:
        (t / "backtest").mkdir()
        (t / "backtest" / "new.txt").write_text("2")
    assert sorted(p.name for p in (out / "backtest").iterdir()) == ["new.txt"] and (out / "model").is_dir()
    with atomic_folder(out, drop=("backtest",)) as t:
        (t / "metrics.json").write_text("{}")
    assert not (out / "backtest").exists() and (out / "model").is_dir() and _siblings(out) == []


def test_parallel_writers_each_get_their_own_folder(run, tmp_path):
    cfg, res = run
    errs = []

    def go(i):
        try:
            write_outputs(tmp_path / f"bt{i}", res, cfg, {"i": i})
        except Exception as e:  # pragma: no cover - reported below
            errs.append(e)

    ts = [threading.Thread(target=go, args=(i,)) for i in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errs
    ref = (tmp_path / "bt0" / "trades.parquet").read_bytes()
    for i in range(3):
        assert (tmp_path / f"bt{i}" / "trades.parquet").read_bytes() == ref
        assert json.loads((tmp_path / f"bt{i}" / "metrics.json").read_text())["meta"] == {"i": i}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bt0", "bt1", "bt2"]
