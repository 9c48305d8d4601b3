"""`kq sweep` and research.sweep on real bars: per-set metrics equal single backtests, expansion,
bad grids, chunking, and the results table in DuckDB."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from engine.config import config_from_dict, read_toml
from engine.paths import configs_dir
from engine.risk.enums import metrics_dt
from kq.cli import main
from research.pipeline import apply_overrides
from research.sweep import PARAM_KEYS, expand, inputs_from_panel, parse_grid, results_frame, run_grid

START, END = 1640995200, 1640995200 + 3600 * 24 * 45 - 3600  # 2022-01-01 .. 2022-02-14 23:00
WARMUP = 768
FILES = ["binance_BTCUSDT_1h", "binance_ETHUSDT_1h", "binance_SOLUSDT_1h"]

GRID = {
    "mode": "grid",
    "objective": "sharpe",
    "params": {
        "risk.sizing": ["vol_target", "risk"],
        "risk.position_size": [0.02, 0.08],
        "risk.max_positions": [1, 3],
        "risk.p_up_entry": {"low": 0.5, "high": 0.6, "step": 0.05},
        "risk.dd_halt": [0.03, 0.2],
        "backtest.halt_reset_bars": [0, 48],
    },
}  # 2 x 2 x 2 x 3 x 2 x 2 = 96 sets


@pytest.fixture(scope="module")
def raw():
    r = read_toml(configs_dir() / "default.toml")
    return apply_overrides(r, {"risk.p_up_exit": 0.48, "risk.dd_reduce_risk": 0.01, "risk.dd_reduce_exposure": 0.02})


@pytest.fixture(scope="module")
def sweep_inputs(raw):
    from engine.store.panel import load_shared_panel
    from tests.conftest import require_shared

    require_shared()
    cfg = config_from_dict(raw)
    panel = load_shared_panel(FILES, start=START - WARMUP * 3600, end=END)
    return inputs_from_panel(panel, cfg, START, END)


def _same(a, b) -> bool:
    """Bit-equal metrics records (NaN equals NaN)."""
    return all(np.array_equal(a[f], b[f], equal_nan=a.dtype[f].kind == "f") for f in metrics_dt.names or ())


def test_sweep_metrics_equal_single_backtests(raw, sweep_inputs):
    """Every set's metrics and refusals from the chunked sweep equal a single run_backtest of the
    same parameters, built independently from the config with the set's values."""
    from engine.backtest.runner import run_backtest
    from engine.risk.params import params_from_config

    spec = parse_grid(GRID)
    ex = expand(spec, raw)
    assert len(ex.values) == 96
    inp = sweep_inputs.inp
    res = run_grid(inp, spec, ex, chunk_size=40)
    df = results_frame(res)
    singles, refs = [], []
    for combo in ex.values:
        cfg = config_from_dict(apply_overrides(raw, dict(zip(spec.keys, combo, strict=True))))
        r = run_backtest(inp, params_from_config(cfg), record=False)
        singles.append(r.metrics[0])
        refs.append(r.refusals)
    single = np.array(singles, dtype=metrics_dt)
    refusals = np.array(refs)
    for f in metrics_dt.names or ():
        assert np.array_equal(res.metrics[f], single[f], equal_nan=single.dtype[f].kind == "f"), f
        assert np.array_equal(df[f].to_numpy(), single[f], equal_nan=single.dtype[f].kind == "f"), f
    assert np.array_equal(res.refusals, refusals)
    assert df["refusals.REFUSE_MAX_POSITIONS"].tolist() == refusals[:, 15].tolist()
    # the table's parameter columns are the values each row ran with
    for j, k in enumerate(spec.keys):
        assert df[k].tolist() == [v[j] for v in ex.values], k
    # the sets really differ, so a shifted parameter row would be caught above
    assert len({tuple(m) for m in single[["total_return", "n_fills", "n_refusals"]].tolist()}) > 30
    shifted = np.roll(single, 1)
    assert not _same(res.metrics, shifted)
    assert (df["n_trades"] > 0).any() and (df["bars_halted"] > 0).any()


def test_chunking_does_not_change_results(raw, sweep_inputs):
    spec = parse_grid(GRID | {"mode": "random", "n": 24, "seed": 3})
    ex = expand(spec, raw)
    inp = sweep_inputs.inp
    one = run_grid(inp, spec, ex, chunk_size=len(ex.values))
    for cs in (1, 7):
        other = run_grid(inp, spec, ex, chunk_size=cs)
        assert _same(one.metrics, other.metrics) and np.array_equal(one.refusals, other.refusals)


def test_two_workers_give_the_serial_results(raw, sweep_inputs):
    """Chunks fanned out to two local worker processes (research.fanout, Dask) come back in order
    with the serial metrics."""
    spec = parse_grid(GRID | {"mode": "random", "n": 12, "seed": 5})
    ex = expand(spec, raw)
    serial = run_grid(sweep_inputs.inp, spec, ex, chunk_size=12)
    fanned = run_grid(sweep_inputs.inp, spec, ex, chunk_size=4, workers=2)
    assert _same(serial.metrics, fanned.metrics) and np.array_equal(serial.refusals, fanned.refusals)


def test_grid_and_random_expansion(raw):
    g = parse_grid(
        {
            "params": {
                "risk.base_risk": [0.01, 0.02],
                "risk.max_positions": {"low": 2, "high": 6, "step": 2},
                "risk.p_up_entry": {"low": 0.5, "high": 0.7, "step": 0.05},
            }
        }
    )
    ex = expand(g, raw)
    assert len(ex.values) == 2 * 3 * 5 and ex.skipped == 0
    assert ex.values[:2] == [(0.01, 2, 0.5), (0.01, 2, 0.55)]  # last key fastest, stepped values rounded
    assert sorted({v[2] for v in ex.values}) == [0.5, 0.55, 0.6, 0.65, 0.7]
    assert ex.params["max_positions"].tolist()[:5] == [2] * 5 and set(ex.params["max_positions"]) == {2, 4, 6}
    rnd = {
        "mode": "random",
        "n": 60,
        "seed": 11,
        "params": {
            "risk.vol_target": {"low": 0.004, "high": 0.05, "log": True},
            "risk.max_hold_bars": {"low": 12, "high": 96},
            "risk.sizing": ["vol_target", "risk"],
            "risk.stop_atr_mult": {"low": 1.0, "high": 3.0, "step": 0.5},
        },
    }
    a, b = expand(parse_grid(rnd), raw), expand(parse_grid(rnd), raw)
    c = expand(parse_grid(rnd | {"seed": 12}), raw)
    assert len(a.values) == 60 and a.values == b.values and a.values != c.values
    assert a.params.tobytes() == b.params.tobytes()
    vt = np.array([v[0] for v in a.values])
    assert vt.min() >= 0.004 and vt.max() <= 0.05 and np.array_equal(a.params["vol_target"], vt)
    assert all(isinstance(v[1], int) and 12 <= v[1] <= 96 for v in a.values)
    assert {v[2] for v in a.values} == {"vol_target", "risk"}
    assert {v[3] for v in a.values} <= {1.0, 1.5, 2.0, 2.5, 3.0}


def test_every_param_key_changes_the_parameter_record(raw):
    """PARAM_KEYS names the fields each key sets; a key that stopped reaching params_dt (the inputs
    are built once, so it would be swept in vain) fails here."""
    from engine.risk.enums import params_dt

    probe = {
        "risk.sizing": "fixed_fraction",
        "risk.capital_ceiling": 5000.0,
        "risk.spread_max": 0.05,
        "risk.p_up_entry": 0.6,
        "risk.dd_reduce_exposure": 0.05,
        "risk.vol_adj_max": 3.0,
        "execution.limit_offset_bps": 7.0,
        "execution.impact_coef": 0.25,
        "execution.min_slippage_bps": 3.0,
        "execution.slip_buffer_bps": 11.0,
    }
    base = expand(parse_grid({"params": {"risk.base_risk": [0.02]}}), raw).params[0]
    covered = set()
    for key, fields in PARAM_KEYS.items():
        table, name = key.split(".")
        cur = config_from_dict(raw).model_dump()[table][name]
        if key in probe:
            v = probe[key]
        elif key.endswith("_order"):
            v = "market" if cur == "limit_first" else "limit_first"
        elif isinstance(cur, bool):
            v = not cur
        else:
            v = cur * 0.5 if isinstance(cur, float) else cur + 1
        p = expand(parse_grid({"params": {key: [v]}}), raw).params[0]
        changed = {f for f in params_dt.names or () if p[f] != base[f]}
        assert changed == set(fields), key
        covered |= changed
    assert covered == set(params_dt.names or ())  # every field of the record can be swept


def _grid_file(tmp_path, text: str):
    p = tmp_path / "grid.toml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    "text, needle",
    [
        ('[params]\n"risk.base_risk" = [0.01, 0.1]\n', "params.risk.base_risk = 0.1: risk.base_risk: Input should be"),
        ('[params]\n"risk.dd_halt" = [1.5]\n', "params.risk.dd_halt = 1.5"),
        ('[params]\n"features.atr_window" = [10, 20]\n', "params.features.atr_window: not a backtest parameter"),
        (
            '[params]\n"risk.p_up_exit" = [0.5, 0.6]\n',
            "risk.p_up_exit = 0.6: risk: Value error, p_up_exit must be below",
        ),
        (
            'mode = "grid"\n[params]\n"risk.vol_target" = {low = 0.01, high = 0.02}\n',
            "a range in grid mode needs a step",
        ),
        ('mode = "random"\n[params]\n"risk.base_risk" = [0.01]\n', "random mode needs n"),
        ('objective = "luck"\n[params]\n"risk.base_risk" = [0.01]\n', "objective = 'luck'"),
    ],
)
def test_bad_grid_exits_2_one_line_nothing_written(tmp_path, capsys, text, needle):
    out = tmp_path / "out"
    rc = main(["sweep", "--grid", str(_grid_file(tmp_path, text)), "--out", str(out), "--store", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("kq: error: grid ") and err.count("\n") == 1 and needle in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["grid.toml"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from tests.conftest import require_shared

    d = require_shared()
    path = tmp_path_factory.mktemp("sweep") / "m.duckdb"
    assert main(["data", "import", *(str(d / f"{f}.parquet") for f in FILES[:2]), "--store", str(path)]) == 0
    return path


def test_cli_demo_signal_set_equals_kq_backtest(tmp_path, store):
    """Without --signals and with no warm-up, the set holding the config's own values reproduces
    `kq backtest` over the same bars (same inputs: demo signal, universe, entry block)."""
    span = ["--store", str(store), "--venue", "binance", "--start", "2022-01-01", "--end", "2022-02-14"]
    grid = _grid_file(tmp_path, '[params]\n"risk.max_positions" = [10, 1]\n"fees.slippage_bps" = [5.0, 20.0]\n')
    out = tmp_path / "sw"
    assert main(["sweep", "--grid", str(grid), "--out", str(out), "--warmup-bars", "0", "--no-progress", *span]) == 0
    assert main(["backtest", "--out", str(tmp_path / "bt"), *span]) == 0
    m = json.loads((tmp_path / "bt" / "metrics.json").read_text())
    df = pd.read_parquet(out / "results.parquet")
    row = df[(df["risk.max_positions"] == 10) & (df["fees.slippage_bps"] == 5.0)].iloc[0]
    for k in ("final_equity", "total_return", "max_drawdown", "n_fills", "n_trades", "n_refusals", "fees_paid"):
        assert row[k] == m[k], k
    assert m["n_fills"] > 10 and df["n_fills"].nunique() > 1
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["signals"].startswith("built-in demo signal") and doc["data"]["warmup_bars"] == 0


def test_cli_walkforward_signals_results_in_duckdb(tmp_path, capsys, store):
    """A walk-forward-style out folder (signals.parquet + metrics.json) swept end to end; the
    results table is queryable in DuckDB and the report carries the multiple-testing figure."""
    import duckdb

    from engine.backtest.demo import ma_signal
    from engine.store.panel import load_shared_panel

    panel = load_shared_panel(FILES[:2], start=START - 200 * 3600, end=END)
    p_up, er = ma_signal(panel.close, 12, 48, 50.0)
    keep = panel.ts >= START
    rows = [
        (int(t), pr, float(p_up[i, j]), float(er[i, j]))
        for i, t in enumerate(panel.ts)
        if keep[i]
        for j, pr in enumerate(panel.pairs)
    ]
    wf = tmp_path / "wf"
    wf.mkdir()
    pd.DataFrame(rows, columns=["ts", "pair", "p_up", "exp_return"]).to_parquet(wf / "signals.parquet", index=False)
    (wf / "metrics.json").write_text(json.dumps({"meta": {"venue": "binance"}}))
    grid = _grid_file(
        tmp_path,
        'heatmap = ["risk.position_size", "risk.max_positions"]\n[params]\n'
        '"risk.position_size" = [0.02, 0.05, 0.1]\n"risk.max_positions" = [1, 2]\n'
        '"risk.take_profit_atr_mult" = [2.0, 4.0]\n',
    )
    out = tmp_path / "sweep"
    args = ["sweep", "--grid", str(grid), "--out", str(out), "--store", str(store), "--signals", str(wf)]
    assert main([*args, "--chunk-size", "5", "--no-progress"]) == 0
    res = duckdb.sql(
        f"select set_id, \"risk.position_size\", sharpe, total_return from '{out / 'results.parquet'}' order by set_id"
    ).fetchall()
    assert len(res) == 12 and [r[0] for r in res] == list(range(12)) and res[0][1] == 0.02
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["n_sets"] == 12 and doc["data"]["venue"] == "binance" and doc["data"]["start"] == START
    assert doc["data"]["pairs"] == ["BTC/USDT", "ETH/USDT"] and doc["signals_file_sha256"]
    best = doc["best"]
    assert best["metrics"]["sharpe"] == max(r[2] for r in res if r[2] == r[2])
    assert best["deflated_sharpe"]["n_trials"] == 12.0 and 0.0 <= best["deflated_sharpe"]["dsr"] <= 1.0
    html = (out / "report.html").read_text()
    assert "src='plotly.min.js'" in html and (out / "plotly.min.js").stat().st_size > 1_000_000
    assert len(html) < 200_000 and "12 parameter sets tried" in html and "deflated Sharpe ratio" in html
    assert "%" in html
    # the same sweep again is bit-identical; a non-empty --out is refused without --force
    capsys.readouterr()
    assert main([*args, "--no-progress"]) == 2
    assert "not empty" in capsys.readouterr().err
    out2 = tmp_path / "sweep2"
    assert main([*args[:4], str(out2), *args[5:], "--no-progress", "--chunk-size", "12"]) == 0
    assert (out2 / "results.parquet").read_bytes() == (out / "results.parquet").read_bytes()
    assert (out2 / "sweep.json").read_text() == (out / "sweep.json").read_text()


def test_thresholds_the_selector_gates_with_are_not_sweepable_with_it_on():
    """[strategy] enabled parks refused entries at the config's p_up_exit inside the shared inputs; a
    set with another p_up_entry / p_up_exit would read those bars as entries or signal exits, so such
    a grid is refused (one line); with [strategy] off the same grid expands."""
    from engine.config import read_toml
    from engine.errors import ConfigError, InputError
    from engine.paths import configs_dir
    from research.sweep import expand, parse_grid

    raw = read_toml(configs_dir() / "default.toml")
    grid = parse_grid({"params": {"risk.p_up_entry": [0.55, 0.6], "risk.base_risk": [0.01]}})
    assert len(expand(grid, raw).params) == 2
    on = dict(raw) | {"strategy": {"enabled": True}}
    with pytest.raises((InputError, ConfigError), match=r"risk.p_up_entry: not sweepable with \[strategy\] enabled"):
        expand(grid, on)
    assert len(expand(parse_grid({"params": {"risk.base_risk": [0.01, 0.02]}}), on).params) == 2
