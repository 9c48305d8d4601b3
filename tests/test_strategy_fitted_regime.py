"""``[strategy] regime_thresholds = "model"``: the selector's regime from the regime classifier the
walk-forward fits per fold (its windows and its thresholds fitted on the fold's training window),
and in the daemon from the approved bundle's; "config" (the default) is the fixed-threshold rule,
unchanged. On real Binance bars: the labels equal the classifier's own predict plus the engine's
hysteresis, a bar's label does not move when later bars are perturbed (the whole walk-forward
re-run), the per-regime table differs from "config", the daemon's window equals parity's
full-history backtest side at the last row, and a bundle without a regime model is refused at start."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from engine.config import config_from_dict, load_config, read_toml
from engine.errors import ConfigError, InputError
from engine.paths import configs_dir
from research.config import research_from_dict
from tests.conftest import require_shared

H = 3600
START = 1704067200  # 2024-01-01
WARM = 768
PAIRS = ["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"]


def _cfg(**strategy):
    raw = read_toml(configs_dir() / "default.toml")
    raw["strategy"] = {"enabled": True, **strategy}
    return config_from_dict(raw)


def _rc(cfg):
    return research_from_dict(
        {
            "tiny": True,
            "horizons": [24],
            "trade_horizon": 24,
            "base_models": ["xgboost"],
            "folds": {"train_bars": 720, "test_bars": 240, "purge_bars": 24, "embargo_bars": 24, "inner_folds": 2},
        },
        cfg,
    )


@functools.lru_cache(maxsize=1)
def _panel():
    require_shared()
    from engine.store.panel import load_shared_panel

    end = START + (720 + 24 + 480 - 1) * H  # two folds of 240 test bars
    return load_shared_panel(PAIRS, START - WARM * H, end)


@functools.lru_cache(maxsize=1)
def _wf():
    from research.walkforward import run_walkforward

    cfg = _cfg(regime_thresholds="model")
    return run_walkforward(_panel(), cfg, _rc(cfg), start_ts=START, keep_models=True)


def _sub_inputs(panel, res, cfg):
    """The walk-forward backtest's inputs over the out-of-sample span (research.walkforward._backtest)."""
    from engine.backtest.io import signals_to_arrays
    from engine.backtest.runner import make_inputs
    from research.walkforward import fold_raw_regime

    sig = res.signals
    t0, t1 = int(sig["ts"].min()), int(sig["ts"].max())
    lo, hi = int(np.searchsorted(panel.ts, t0)), int(np.searchsorted(panel.ts, t1, side="right"))
    sub = panel.slice(t0, t1)
    p_up, er = signals_to_arrays(sig, sub.ts, sub.pairs)
    raw = fold_raw_regime(panel, res.regime_rules, lo, hi) if cfg.strategy.regime_thresholds == "model" else None
    return lo, hi, make_inputs(sub, p_up, er, cfg, raw_regime=raw)


# ---- "config": the default, unchanged ------------------------------------------------------------


def test_config_is_the_default_and_leaves_hashes_alone():
    assert load_config().strategy.regime_thresholds == "config"
    on = _cfg()
    d = on.model_dump(mode="json")
    assert d["strategy"].pop("regime_thresholds") == "config"
    # the hash of an enabled [strategy] is what it was before the key existed
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"), allow_nan=False)
    assert on.content_hash() == hashlib.sha256(blob.encode()).hexdigest()
    assert _cfg(regime_thresholds="model").content_hash() != on.content_hash()
    with pytest.raises(ConfigError, match="regime_thresholds"):
        _cfg(regime_thresholds="fitted")


def test_model_needs_the_fitted_labels_and_config_refuses_them():
    from engine.backtest.runner import make_inputs

    p = _panel()
    n, m = p.close.shape
    pu = np.full((n, m), 0.6)
    with pytest.raises(InputError, match='regime_thresholds = "model" needs'):
        make_inputs(p, pu, pu * 0.0, _cfg(regime_thresholds="model"))
    raw = np.zeros((n, m), dtype=np.int8)
    with pytest.raises(InputError, match="raw_regime given"):
        make_inputs(p, pu, pu * 0.0, _cfg(), raw_regime=raw)
    with pytest.raises(InputError, match="raw_regime: shape"):
        make_inputs(p, pu, pu * 0.0, _cfg(regime_thresholds="model"), raw_regime=raw[1:])
    off = load_config()  # the layer off: raw_regime is not read, inputs unchanged
    assert make_inputs(p, pu, pu * 0.0, off, raw_regime=raw).p_up.tobytes() == pu.tobytes()


def test_walkforward_refuses_model_without_a_regime_classifier():
    from research.walkforward import run_walkforward

    cfg = _cfg(regime_thresholds="model")
    rc = _rc(cfg)
    rc = rc.model_copy(
        update={
            "models": rc.models.model_copy(update={"meta": rc.models.meta.model_copy(update={"use_regime": False})})
        }
    )
    with pytest.raises(ConfigError, match=r'regime_thresholds = "model" needs .*use_regime'):
        run_walkforward(_panel(), cfg, rc, start_ts=START)


# ---- "model" in the walk-forward -------------------------------------------------------------------


def test_model_labels_are_the_folds_classifier_predict_plus_hysteresis():
    from engine.strategy.nb import hysteresis_nb

    panel, res = _panel(), _wf()
    cfg = _cfg(regime_thresholds="model")
    lo, hi, inp = _sub_inputs(panel, res, cfg)
    close = np.where(panel.valid, panel.close, np.nan)
    want = np.full((hi - lo, len(PAIRS)), -1, dtype=np.int8)
    assert sorted(res.regime_rules) == [0, 1]
    for k, fd in enumerate(res.folds):
        reg = res.fitted[(k, 24)].regime_  # the classifier fitted inside fold k's meta-learner
        rule, t_first, t_last = res.regime_rules[k]
        assert (rule.vol_hi, rule.strength_hi, rule.crash_ret) == (reg.vol_hi_, reg.strength_hi_, reg.crash_ret_)
        assert (t_first, t_last) == (fd["test_start"], fd["test_end"])
        assert fd["train_end"] < t_first  # thresholds from a training window that ended before the bars
        rows = (panel.ts[lo:hi] >= t_first) & (panel.ts[lo:hi] <= t_last)
        for j in range(len(PAIRS)):
            want[rows, j] = reg.predict(close[:, j])[lo:hi][rows]  # its own predict over the whole history
    assert (want >= 0).mean() > 0.95  # warm from the first test bar: features read the panel's history
    sc = cfg.strategy
    assert np.array_equal(inp.strategy.regime, hysteresis_nb(want, sc.hysteresis_bars, sc.hysteresis_lookback))
    # and the walk-forward's regime.parquet (the same classifiers on the eligible test rows) agrees
    rg = res.regime
    t = np.searchsorted(panel.ts[lo:hi], rg["ts"].to_numpy())
    j = np.array([list(panel.pairs).index(x) for x in rg["pair"]])
    assert np.array_equal(want[t, j], rg["regime_code"].to_numpy().astype(np.int8))
    print(f"\nfold thresholds: {[dataclasses.astuple(res.regime_rules[k][0]) for k in (0, 1)]}")


def _perturbed(panel, t_cut: int, seed: int = 3):
    from engine.store.panel import Panel

    i = int(np.searchsorted(panel.ts, t_cut, side="right"))  # rows after t_cut
    f = np.ones(panel.close.shape)
    f[i:] = np.exp(np.cumsum(np.random.default_rng(seed).normal(0.0, 0.03, f[i:].shape), axis=0))
    cols = {
        k: getattr(panel, k) * (f if k in ("open", "high", "low", "close", "vwap") else 1.0)
        for k in ("open", "high", "low", "close", "volume", "trades", "vwap")
    }
    return Panel(panel.venue, panel.pairs, panel.ts, valid=panel.valid, **cols), i


def test_a_label_does_not_move_when_later_bars_change():
    """Bars after t perturbed and the WHOLE walk-forward re-run (folds, fits, thresholds): every
    regime label, selected profile and gated P(up) at rows <= t is unchanged."""
    from research.walkforward import run_walkforward

    panel, res = _panel(), _wf()
    cfg = _cfg(regime_thresholds="model")
    t_cut = int(res.folds[1]["test_start"]) + 120 * H  # inside the second fold's test block
    p2, i = _perturbed(panel, t_cut)
    res2 = run_walkforward(p2, cfg, _rc(cfg), start_ts=START, backtest=False)
    lo, _, a = _sub_inputs(panel, res, cfg)
    _, _, b = _sub_inputs(p2, res2, cfg)
    r = i - lo  # first perturbed row of the out-of-sample span
    assert 0 < r < a.p_up.shape[0]
    for name in ("regime", "profile", "candidate", "p_up_gated"):
        x, y = getattr(a.strategy, name), getattr(b.strategy, name)
        assert np.array_equal(x[:r], y[:r], equal_nan=name == "p_up_gated"), name
    assert not np.array_equal(a.strategy.regime[r:], b.strategy.regime[r:])  # the perturbation bites


def test_walkforward_model_per_regime_table_differs_from_config():
    from research.walkforward import _backtest, oos_backtest

    panel, res = _panel(), _wf()
    cfg = _cfg(regime_thresholds="model")
    st = res.strategy_stats["strategy"]
    assert st["regime_thresholds"] == "model" and "fitted on its training window" in st["note"]
    # the same predictions under "config": the fixed thresholds
    _, st_c = _backtest(panel, _cfg(), _rc(cfg), res.predictions, res.regime_rules)
    model_t, conf_t = st["selector"]["per_regime"], st_c["strategy"]["selector"]["per_regime"]
    assert "regime_thresholds" not in st_c["strategy"]
    assert model_t != conf_t
    hours = {k: (model_t[k]["pair_hours"], conf_t[k]["pair_hours"]) for k in model_t}
    assert hours["unknown"] == (0, 0)  # both warm on the bars before the span (history)
    # the progress callback's backtest with every fold's predictions equals the result's
    oos = oos_backtest(panel, cfg, _rc(cfg), [res.predictions], res.regime_rules)
    assert oos.equity.tobytes() == res.backtest.equity.tobytes()
    print(f"\npair hours per regime (model, config): {hours}")


# ---- "model" in the daemon ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Bundle:
    trade_horizon: int
    metas: dict


class _Model:
    """The face of live_bridge.models.ApprovedModel: a bundle holding the walk-forward's last fold's
    meta-learner, and a deterministic P(up) per bar and pair."""

    def __init__(self, meta):
        self.bundle = _Bundle(24, {24: meta})

    def predict(self, features, panel, at=None):
        x = np.arange(len(panel.pairs))
        p = 0.55 + 0.2 * np.sin(int(at) / 7200.0 + x)
        return pd.DataFrame({"pair": list(panel.pairs), "horizon": 24, "p_up": p, "exp_return": 0.01 * p})


def test_daemon_window_equals_parity_backtest_at_the_last_row():
    from engine.backtest.runner import make_inputs
    from engine.store.panel import Panel
    from live_bridge.cycle import strategy_lookback, strategy_raw_regime
    from live_bridge.parity import backtest_inputs

    panel, res = _panel(), _wf()
    cfg = _cfg(regime_thresholds="model")
    model = _Model(res.fitted[(1, 24)])
    need = strategy_lookback(cfg, model)
    assert need == cfg.strategy.lookback_for(48, 24) != cfg.strategy.lookback_bars  # the bundle's windows
    n = panel.close.shape[0]
    for end_row in (n - 1, n - 37):
        end, start = int(panel.ts[end_row]) // H, int(panel.ts[end_row - 5]) // H
        bt = backtest_inputs(cfg, None, model, panel, start, end, np.zeros(6, dtype=np.int64))
        w0 = end_row + 1 - 400  # the daemon's window: history_bars rows ending at the bar
        assert need <= 400
        win = Panel(
            panel.venue,
            panel.pairs,
            panel.ts[w0 : end_row + 1],
            valid=panel.valid[w0 : end_row + 1],
            **{
                k: getattr(panel, k)[w0 : end_row + 1]
                for k in ("open", "high", "low", "close", "volume", "trades", "vwap")
            },
        )
        pu = np.full(win.close.shape, np.nan)
        pr = model.predict(None, win, at=int(win.ts[-1]))
        pu[-1] = pr["p_up"].to_numpy()
        live = make_inputs(win, pu, pu * 0.01, cfg, raw_regime=strategy_raw_regime(cfg, model, win))
        for name in ("regime", "profile", "candidate", "p_up_gated", "stop_atr_mult", "size_scale"):
            assert np.array_equal(getattr(live.strategy, name)[-1], getattr(bt.strategy, name)[-1]), name
        assert np.array_equal(live.bar_exits[-1], bt.bar_exits[-1], equal_nan=True)
        assert np.array_equal(live.p_up[-1], bt.p_up[-1])
    # the rule is the bundle's, not the config's: the config's thresholds label the bars otherwise
    conf = make_inputs(win, pu, pu * 0.01, _cfg())
    assert not np.array_equal(conf.strategy.regime, live.strategy.regime)


def test_daemon_refuses_a_bundle_without_a_regime_model(tmp_path):
    from live_bridge.config import live_config_from_dict
    from live_bridge.cycle import model_regime_rule
    from live_bridge.daemon import Daemon
    from live_bridge.simulator.testing import KEY, SECRET
    from tests.live_harness import paper_dict

    assert model_regime_rule(_cfg(), object()) is None  # "config": no bundle regime read
    eng = tmp_path / "engine.toml"
    eng.write_text(
        f'extends = "{configs_dir() / "default.toml"}"\n[strategy]\nenabled = true\nregime_thresholds = "model"\n'
    )
    live = live_config_from_dict(paper_dict("http://127.0.0.1:1", tmp_path, engine_config=str(eng)))
    for model in (object(), _Model(object()), _Model(type("M", (), {"regime_": None})())):
        with pytest.raises(ConfigError) as e:
            Daemon.from_config(live, environ={"KRAKEN_API_KEY": KEY, "KRAKEN_API_SECRET": SECRET}, model=model)
        msg = str(e.value)
        assert 'regime_thresholds = "model"' in msg and "no fitted regime classifier" in msg and "\n" not in msg
    assert not (tmp_path / "state").exists()  # refused before any state was touched


def test_the_oos_window_warms_up_on_a_cut_history_like_the_full_panel():
    """The walk-forward's out-of-sample inputs (and a study's hold-out, the same helpers) keep only
    the selector's lookback of history, labelled by the folds' rules (the first fold's before its
    block): the span's labels equal a run over the whole panel with the same codes; none unknown."""
    from engine.backtest.runner import make_inputs
    from research.walkforward import _oos_window, oos_raw_regime, strategy_history_bars

    panel, res = _panel(), _wf()
    cfg = _cfg(regime_thresholds="model")
    w = _oos_window(panel, cfg, res.signals, res.regime_rules)
    keep = strategy_history_bars(cfg, res.regime_rules)
    assert w.history is not None and w.history.n_bars == keep < int(np.searchsorted(panel.ts, w.t0))
    cut = w.inputs(res.signals, cfg).strategy
    lo = int(np.searchsorted(panel.ts, w.t0))
    hi = lo + w.sub.n_bars
    from engine.backtest.io import signals_to_arrays

    p_up, er = signals_to_arrays(res.signals, panel.ts[:hi], panel.pairs)
    whole = make_inputs(
        panel.slice(int(panel.ts[0]), int(panel.ts[hi - 1])),
        p_up,
        er,
        cfg,
        raw_regime=oos_raw_regime(panel, cfg, res.regime_rules, hi),
    ).strategy
    for f in ("regime", "profile", "candidate", "p_up_gated"):
        assert np.array_equal(getattr(cut, f), getattr(whole, f)[lo:], equal_nan=True), f
    assert (cut.regime != -1).all()


def test_model_thresholds_are_refused_where_no_fold_was_fitted(tmp_path):
    """A sweep over a stored signal, or a sweep-mode study, has no fitted regime rule: one line."""
    from research.sweep import expand, parse_grid

    raw = read_toml(configs_dir() / "default.toml")
    raw["strategy"] = {"enabled": True, "regime_thresholds": "model"}
    spec = parse_grid({"params": {"risk.max_positions": [2, 3]}}, "grid.toml")
    with pytest.raises(ConfigError, match='regime_thresholds = "model" needs a walk-forward'):
        expand(spec, raw, "engine.toml")
