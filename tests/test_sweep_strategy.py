"""Sweeps and studies of the strategy layer's parameters (issue 18) on real bars: each strategy
configuration's sets run on inputs rebuilt from the same bars and signal (equal to a single
backtest of inputs built from scratch with the set's config), independent of chunking and
fan-out; strategy keys with the layer off and the [risk] stop/take-profit multiples with it on are
refused (one line, exit 2); a sweep-mode study tunes a strategy key without walk-forward retraining."""

from __future__ import annotations

import json

import numpy as np
import pytest

from engine.config import config_from_dict, read_toml
from engine.paths import configs_dir
from engine.risk.enums import metrics_dt
from kq.cli import main
from research.pipeline import apply_overrides
from research.sweep import config_overrides, expand, inputs_from_panel, parse_grid, results_frame, run_grid

START, END = 1640995200, 1640995200 + 3600 * 24 * 45 - 3600  # 2022-01-01 .. 2022-02-14 23:00
WARMUP = 768
FILES = ["binance_BTCUSDT_1h", "binance_ETHUSDT_1h", "binance_SOLUSDT_1h"]

# the risk key first: the last key varies fastest, so the strategy groups interleave in set order
GRID = {
    "params": {
        "risk.max_positions": [1, 3],
        "strategy.exits.trend.take_profit_atr_mult": [1.0, 4.0, 8.0],
    }
}
RANDOM = {
    "mode": "random",
    "n": 14,
    "seed": 4,
    "params": {
        "strategy.mr_z": [1.0, 2.0, 3.0],
        "strategy.selector.range": ["mean_reversion:0.6,vol_expansion:0.4", "trend", "defensive"],
        "risk.base_risk": [0.005, 0.02],
    },
}


@pytest.fixture(scope="module")
def raw():
    r = read_toml(configs_dir() / "default.toml")
    return apply_overrides(
        r,
        {
            "risk.p_up_exit": 0.48,
            "risk.dd_reduce_risk": 0.01,
            "risk.dd_reduce_exposure": 0.02,
            "strategy.enabled": True,
        },
    )


@pytest.fixture(scope="module")
def panel():
    from engine.store.panel import load_shared_panel
    from tests.conftest import require_shared

    require_shared()
    return load_shared_panel(FILES, start=START - WARMUP * 3600, end=END)


@pytest.fixture(scope="module")
def base(raw, panel):
    return inputs_from_panel(panel, config_from_dict(raw), START, END)


def _same(a, b) -> bool:
    """Bit-equal metrics records (NaN equals NaN)."""
    return all(np.array_equal(a[f], b[f], equal_nan=a.dtype[f].kind == "f") for f in metrics_dt.names or ())


def test_each_set_equals_a_backtest_of_inputs_built_with_its_config(raw, panel, base):
    """Every set of a strategy x risk grid: metrics and refusals byte-equal to run_backtest on
    make_inputs of the config with the set's values (built from scratch on the panel)."""
    from engine.backtest.runner import run_backtest
    from engine.risk.params import params_from_config
    from research.sweep import set_inputs

    spec = parse_grid(GRID)
    ex = expand(spec, raw)
    assert ex.group is not None and ex.group.tolist() == [0, 1, 2, 0, 1, 2] and len(ex.strategies) == 3
    res = run_grid(base.inp, spec, ex, chunk_size=2)
    df = results_frame(res)
    singles, refs = [], []
    for i, combo in enumerate(ex.values):
        cfg = config_from_dict(apply_overrides(raw, config_overrides(dict(zip(spec.keys, combo, strict=True)))))
        inp = inputs_from_panel(panel, cfg, START, END).inp
        r = run_backtest(inp, params_from_config(cfg), record=False)
        singles.append(r.metrics[0])
        refs.append(r.refusals)
        # the inputs the CLI re-runs the best set on (the deflated Sharpe ratio) are its group's
        assert _same(run_backtest(set_inputs(base.inp, ex, i), ex.params[i : i + 1], record=False).metrics, r.metrics)
    single = np.array(singles, dtype=metrics_dt)
    assert _same(res.metrics, single)
    assert np.array_equal(res.refusals, np.array(refs))
    assert df["strategy.exits.trend.take_profit_atr_mult"].tolist() == [1.0, 4.0, 8.0] * 2
    # the strategy values really change the results (a group reusing another's inputs is caught)
    assert len(set(single[["n_fills", "total_return"]].tolist())) == 6
    # and none of them equals the base inputs' run (take-profit 4.0 is the config's own value)
    plain = run_sweep_on(base.inp, ex.params)
    assert _same(plain[[1, 4]], res.metrics[[1, 4]]) and not _same(plain, res.metrics)


def run_sweep_on(inp, params):
    from engine.backtest.runner import run_sweep

    return run_sweep(inp, params)[0]


def test_chunking_and_workers_do_not_change_the_results(raw, base):
    """Random sets over a strategy scalar, a selector row and a risk key: chunk size 1 and all in
    one chunk, and two fan-out workers, give the same results in set order."""
    spec = parse_grid(RANDOM)
    ex = expand(spec, raw)
    assert len(ex.strategies) > 3 and len(set(ex.group.tolist())) == len(ex.strategies)
    one = run_grid(base.inp, spec, ex, chunk_size=len(ex.values))
    per = run_grid(base.inp, spec, ex, chunk_size=1)
    assert _same(one.metrics, per.metrics) and np.array_equal(one.refusals, per.refusals)
    fanned = run_grid(base.inp, spec, ex, chunk_size=3, workers=2)
    assert _same(one.metrics, fanned.metrics) and np.array_equal(one.refusals, fanned.refusals)
    assert len({float(x) for x in one.metrics["total_return"]}) > 3


def test_sets_differing_only_in_risk_keys_share_one_configuration(raw):
    """2 and 2.0 are the same [strategy] table: one group, no second rebuild."""
    ex = expand(parse_grid({"params": {"strategy.mr_z": [2, 2.0], "risk.base_risk": [0.01, 0.02]}}), raw)
    assert ex.group.tolist() == [0, 0, 0, 0] and len(ex.strategies) == 1
    plain = expand(parse_grid({"params": {"risk.base_risk": [0.01, 0.02]}}), raw)
    assert plain.group is None and plain.strategies == () and plain.config is None


def _grid_file(tmp_path, text: str):
    p = tmp_path / "grid.toml"
    p.write_text(text)
    return p


def _config_on(tmp_path):
    p = tmp_path / "on.toml"
    p.write_text(f'extends = "{configs_dir() / "default.toml"}"\n[strategy]\nenabled = true\n')
    return p


@pytest.mark.parametrize(
    "text, on, needle",
    [
        (
            '[params]\n"strategy.mr_z" = [1.0, 2.0]\n',
            False,
            "params strategy.mr_z: strategy keys need [strategy] enabled = true in the config",
        ),
        (
            '[params]\n"risk.take_profit_atr_mult" = [2.0, 4.0]\n',
            True,
            "risk.take_profit_atr_mult: not sweepable with [strategy] enabled",
        ),
        (
            '[params]\n"strategy.exits.trend.stop_atr_mult" = [1.0, 3.0]\n',
            True,
            "strategy.exits.trend.stop_atr_mult = 3.0: wider than risk.stop_atr_mult = 2.0, so it changes nothing",
        ),
        ('[params]\n"strategy.exits.preservation.size_scale" = [0.5]\n', True, "not a backtest parameter key"),
        ('mode = "random"\nn = 600\n[params]\n"strategy.mr_z" = {low = 1.0, high = 3.0}\n', True, "distinct"),
        ('[params]\n"strategy.mr_z" = [0.0]\n', True, "params.strategy.mr_z = 0.0: strategy.mr_z: Input should be"),
        ('[params]\n"strategy.selector.crash" = ["rocket"]\n', True, "unknown profile 'rocket'"),
        ('[params]\n"strategy.selector.crash" = ["trend:x"]\n', True, "weight 'x' is not a number"),
        ('[params]\n"strategy.selector.crash" = [1]\n', True, "a list of selector rows"),
    ],
)
def test_bad_strategy_grid_exits_2_one_line(tmp_path, capsys, text, on, needle):
    out = tmp_path / "out"
    args = ["sweep", "--grid", str(_grid_file(tmp_path, text)), "--out", str(out), "--store", str(tmp_path / "x")]
    if on:
        args += ["--config", str(_config_on(tmp_path))]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("kq: error: grid ") and err.count("\n") == 1 and needle in err, err
    assert not out.exists()


def test_cli_strategy_sweep_counts_every_set(tmp_path, capsys):
    """`kq sweep` end to end with strategy keys: the table holds each set's values, sweep.json the
    number of strategy configurations and a deflated Sharpe ratio over all the sets tried."""
    import pandas as pd

    from tests.conftest import require_shared

    d = require_shared()
    store = tmp_path / "m.duckdb"
    assert main(["data", "import", *(str(d / f"{f}.parquet") for f in FILES[:2]), "--store", str(store)]) == 0
    grid = _grid_file(
        tmp_path, '[params]\n"strategy.selector.range" = ["trend", "defensive"]\n"strategy.hysteresis_bars" = [2, 12]\n'
    )
    out = tmp_path / "sw"
    span = ["--store", str(store), "--venue", "binance", "--start", "2022-01-01", "--end", "2022-02-14"]
    cfg = str(_config_on(tmp_path))
    rc = main(["sweep", "--grid", str(grid), "--out", str(out), "--config", cfg, "--no-progress", *span])
    assert rc == 0, capsys.readouterr().err
    df = pd.read_parquet(out / "results.parquet")
    assert df["strategy.selector.range"].tolist() == ["trend", "trend", "defensive", "defensive"]
    assert df["n_fills"].nunique() > 1
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["n_sets"] == 4 and doc["n_strategy_configs"] == 4
    assert doc["best"]["deflated_sharpe"]["n_trials"] == 4.0


# ------------------------------------------------------------------------------------------------
# studies


@pytest.fixture(scope="module")
def study_store(tmp_path_factory):
    """Binance BTC/USDT + ETH/USDT, 2023-11-14 .. 2024-04-01 (tests/test_study.py's slice)."""
    from tests.test_study import store_slice

    return store_slice(tmp_path_factory, "tests/test_sweep_strategy.py slice")


def _study_config(tmp_path, space: str, enabled: bool = True) -> str:
    p = tmp_path / "s.toml"
    p.write_text(
        f'extends = "{configs_dir() / "ci.toml"}"\n[strategy]\nenabled = {str(enabled).lower()}\n'
        '[research]\nstart = "2024-01-01"\nend = "2024-03-15"\n'
        '[study]\nmode = "sweep"\nobjectives = ["sharpe"]\nmin_trades = 0\nn_folds = 2\npruning = false\n'
        f'holdout_start = "2024-03-01"\nseed = 3\n[study.space]\n{space}'
    )
    return str(p)


SPACE = (
    '"strategy.hysteresis_bars" = { low = 1, high = 48 }\n'
    '"strategy.selector.range" = { choices = ["trend", "mean_reversion:0.6,vol_expansion:0.4"] }\n'
    '"risk.max_positions" = { low = 1, high = 2 }\n'
)


def test_sweep_mode_study_tunes_strategy_keys_without_retraining(tmp_path, study_store, monkeypatch):
    """A sweep-mode study over strategy keys: N trials run on the cached signal (no walk-forward,
    no model trained), every trial's strategy values reach its backtests, and all N count."""
    from optuna.trial import TrialState

    import research.pipeline
    from research.pipeline import DataSelection
    from research.study import Evaluator, count_configurations, load_study_spec, make_storage, open_study, run_worker

    def no_training(*a, **k):
        raise AssertionError("a sweep-mode study must not run a walk-forward")

    monkeypatch.setattr(research.pipeline, "run", no_training)
    seen: list = []
    real = Evaluator.backtest

    def spy(self, cfg, sigarr, lo, hi):
        seen.append((cfg.strategy.hysteresis_bars, tuple(s.profile for s in cfg.strategy.selector.range)))
        return real(self, cfg, sigarr, lo, hi)

    monkeypatch.setattr(Evaluator, "backtest", spy)
    ss = load_study_spec(_study_config(tmp_path, SPACE), None, None, DataSelection(store=study_store))
    assert ss.mode == "sweep"
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = open_study(ss, make_storage(url, ss), 4)
    assert run_worker(ss, url, ss.name, 0, track=False) == 4
    t = study.get_trials()
    assert [x.state for x in t] == [TrialState.COMPLETE] * 4, [x.user_attrs.get("error") for x in t]
    assert count_configurations(t)["configurations"] == 4
    # each trial's two folds ran with that trial's strategy values (after the evaluator's warm-up run)
    want = [
        (
            x.params["strategy.hysteresis_bars"],
            tuple(r["profile"] for r in config_overrides(x.params)["strategy.selector.range"]),
        )
        for x in t
    ]
    assert seen[1:] == [w for w in want for _ in range(2)]
    assert len({x.values[0] for x in t}) > 1


@pytest.mark.parametrize(
    "space, enabled, needle",
    [
        ('"strategy.mr_z" = { low = 1.0, high = 3.0 }\n', False, "strategy keys need [strategy] enabled = true"),
        ('"risk.take_profit_atr_mult" = { low = 1.0, high = 3.0 }\n', True, "not tunable with [strategy] enabled"),
        ('"strategy.selector.range" = { choices = ["rocket"] }\n', True, "unknown profile 'rocket'"),
    ],
)
def test_bad_strategy_study_space_is_one_config_error(tmp_path, space, enabled, needle):
    from engine.errors import ConfigError
    from research.study import load_study_spec

    with pytest.raises(ConfigError) as e:
        load_study_spec(_study_config(tmp_path, space, enabled))
    assert needle in str(e.value) and "\n" not in str(e.value)
