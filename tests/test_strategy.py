"""Regime-aware strategy layer (engine.strategy): the six profiles on constructed bars (must and
must not enter), the P(up) gate for every profile, the regime labels and profile outputs causal on
real data (rows after t perturbed), hysteresis, the daemon's finite window equal to a full-history
run, the config table's validation, [strategy] off bit-identical to the code before the layer, and
with the selector on the RiskMachine loop equal to run_backtest bit for bit."""

from __future__ import annotations

import dataclasses
import functools
import hashlib

import numpy as np
import pytest

from engine.backtest.runner import make_inputs, run_backtest
from engine.config import config_from_dict, load_config, read_toml
from engine.errors import ConfigError
from engine.paths import configs_dir
from engine.risk.enums import SIZING_VOL_TARGET, EventCode, Reason
from engine.risk.machine import RiskMachine, bar_inputs
from engine.risk.params import params_from_config
from engine.store.panel import load_shared_panel
from engine.strategy import (
    PROFILE_NAMES,
    Profile,
    apply_strategy,
    profile_candidates,
    reason_code,
    regime_labels,
    selection_records,
)
from engine.strategy import (
    params_from_config as strategy_params,
)
from engine.strategy.config import StrategyConfig

PAIRS = [f"binance_{s}USDT_1h" for s in ("BTC", "ETH", "SOL", "XRP", "ADA", "DOGE")]
START = 1619337600 + 2200 * 3600  # 2021-07-27: missing hours inside


def _cfg(**strategy):
    raw = read_toml(configs_dir() / "default.toml")
    raw["strategy"] = {"enabled": True, **strategy}
    return config_from_dict(raw)


def _sp(entry=0.55, **kw):
    return strategy_params(StrategyConfig(**kw), entry)


def _cand(close, p_up, high=None, volume=None, **kw):
    c = np.asarray(close, dtype=np.float64)[:, None]
    h = c * 1.001 if high is None else np.asarray(high, dtype=np.float64)[:, None]
    v = np.ones_like(c) if volume is None else np.asarray(volume, dtype=np.float64)[:, None]
    pu = np.full_like(c, np.nan)
    pu[-1] = p_up
    out = profile_candidates(h, c, v, np.ones(c.shape, dtype=bool), pu, _sp(**kw))
    return {name: bool(out[q, -1, 0]) for q, name in enumerate(PROFILE_NAMES)}


N = 300


def _quiet(seed=0, sd=0.002):
    return 100.0 * np.exp(np.cumsum(np.random.default_rng(seed).normal(0.0, sd, N)))


# ---- each profile on constructed bars: must / must not enter, and the gate ------------------------


def test_trend_profile():
    up = 100.0 * np.exp(np.linspace(0.0, 0.3, N))
    assert _cand(up, 0.6)["trend"]
    assert not _cand(up[::-1], 0.6)["trend"]  # a falling market
    flat_dip = np.r_[up[:-1], up[-2] * 0.9]  # momentum still up, close now below its SMA
    assert not _cand(flat_dip, 0.6)["trend"]


def test_breakout_profile():
    c = np.full(N, 100.0)
    h = np.full(N, 101.0)
    v = np.ones(N)
    c2, h2, v2 = c.copy(), h.copy(), v.copy()
    c2[-1], h2[-1], v2[-1] = 102.0, 102.5, 3.0
    assert _cand(c2, 0.6, h2, v2)["breakout"]
    v2[-1] = 1.2  # a new high without rising volume
    assert not _cand(c2, 0.6, h2, v2)["breakout"]
    c2[-1], v2[-1] = 100.5, 3.0  # volume without a new high
    assert not _cand(c2, 0.6, h2, v2)["breakout"]


def test_mean_reversion_profile():
    c = _quiet()
    d = c.copy()
    d[-1] = c[-2] * 0.95  # a stretched fall below the 24-bar mean
    assert _cand(d, 0.6)["mean_reversion"]
    assert not _cand(c, 0.6)["mean_reversion"]
    u = c.copy()
    u[-1] = c[-2] * 1.05  # stretched UP: long only, no entry
    assert not _cand(u, 0.6)["mean_reversion"]


def test_vol_expansion_profile():
    rng = np.random.default_rng(1)
    r = rng.normal(0.0, 0.01, N)
    r[-13:-1] = rng.normal(0.0, 0.001, 12)  # a quiet spell over the last 12 bars before t
    up = r.copy()
    up[-1] = 0.03
    assert _cand(100.0 * np.exp(np.cumsum(up)), 0.6)["vol_expansion"]
    dn = r.copy()
    dn[-1] = -0.03
    assert not _cand(100.0 * np.exp(np.cumsum(dn)), 0.6)["vol_expansion"]
    loud = rng.normal(0.0, 0.01, N)  # no contraction before the move
    loud[-1] = 0.03
    assert not _cand(100.0 * np.exp(np.cumsum(loud)), 0.6)["vol_expansion"]


def test_defensive_and_preservation_profiles():
    c = _quiet()
    assert _cand(c, 0.66)["defensive"] and not _cand(c, 0.64)["defensive"]  # gate 0.55 + margin 0.1
    assert not any(_cand(c, 1.0)[k] for k in ("preservation",))  # never enters, even at P(up) 1


@pytest.mark.parametrize("p_up", [0.5499999, 0.0, np.nan])
def test_gate_holds_for_every_profile_on_bars_where_each_must_enter(p_up):
    """On bars where every profile enters at P(up) 1 (except preservation), none enters below the gate."""
    up = 100.0 * np.exp(np.linspace(0.0, 0.3, N))
    c = up.copy()
    c[-1] = up[-2] * 1.02
    h = c * 1.001
    v = np.ones(N)
    v[-1] = 5.0
    assert _cand(c, 1.0, h, v)["trend"] and _cand(c, 1.0, h, v)["breakout"]
    d = _quiet()
    d[-1] = d[-2] * 0.95
    assert _cand(d, 1.0)["mean_reversion"] and _cand(d, 1.0)["defensive"]
    for bars in ((c, h, v), (d, None, None)):
        assert not any(_cand(bars[0], p_up, bars[1], bars[2]).values())


def test_gate_property_on_random_bars_and_thresholds():
    """For any bars, P(up) and threshold: a candidate of any profile implies P(up) >= threshold."""
    for seed in range(12):
        rng = np.random.default_rng(seed)
        n, m = 400, 3
        c = 100.0 * np.exp(np.cumsum(rng.normal(0.0, rng.uniform(0.001, 0.03), (n, m)), axis=0))
        h = c * (1.0 + rng.uniform(0.0, 0.02, (n, m)))
        v = rng.lognormal(0.0, 1.0, (n, m))
        valid = rng.random((n, m)) > 0.02
        pu = rng.uniform(0.0, 1.0, (n, m))
        pu[rng.random((n, m)) < 0.05] = np.nan
        entry = float(rng.uniform(0.3, 0.9))
        cand = profile_candidates(h, c, v, valid, pu, _sp(entry, defensive_margin=float(rng.uniform(0, 0.2))))
        assert cand[:, :, :].any(), "the random bars must give candidates for the property to mean something"
        assert not (cand & ~(pu >= entry)[None]).any(), f"seed {seed}: a profile entered below the gate"
        assert not cand[Profile.PRESERVATION].any()


# ---- regime labels: research rule shared, hysteresis, causality -------------------------------------


@functools.lru_cache(maxsize=1)
def _panel():
    from tests.conftest import require_shared

    require_shared()
    return load_shared_panel(PAIRS, start=START, end=START + 3600 * 1999)


def _signals(p, seed=7):
    n, m = p.close.shape
    rng = np.random.default_rng(seed)
    flips = rng.random((n, m)) < 0.04
    reg = np.cumsum(flips, axis=0) % 2
    pu = np.where(reg == 1, 0.75, 0.3) + rng.normal(0.0, 0.02, (n, m))
    er = np.where(reg == 1, 0.03, -0.01) * rng.uniform(0.5, 1.5, (n, m))
    return pu, er


def test_engine_regime_features_match_research_and_research_uses_the_engine_rule():
    from engine.strategy.nb import regime_features_nb, regime_rule_nb
    from research.models.regime import RegimeClassifier, regime_features

    p = _panel()
    for j in range(p.close.shape[1]):
        c = p.close[:, j]
        f = regime_features(c, 168, 72)
        g = regime_features_nb(p.close, p.valid, 168, 72)
        for k, a in zip(("trend", "vol", "dd", "strength"), g, strict=True):
            assert np.array_equal(np.isnan(f[k]), np.isnan(a[:, j])), k
            assert np.nanmax(np.abs(f[k] - a[:, j])) < 1e-9, k
        rc = RegimeClassifier().fit(c)
        lab = regime_rule_nb(
            *(np.ascontiguousarray(f[k]) for k in ("trend", "vol", "dd", "strength")),
            rc.crash_ret_,
            rc.crash_drawdown,
            rc.vol_hi_,
            rc.strength_hi_,
        )
        assert np.array_equal(lab, rc.predict(c))


def test_hysteresis_no_label_shorter_than_n_bars():
    p = _panel()
    for nb in (1, 6, 12):
        raw, lab = regime_labels(p.close, p.valid, _sp(hysteresis_bars=nb, hysteresis_lookback=168))
        if nb == 1:
            assert np.array_equal(raw, lab)
            continue
        for j in range(lab.shape[1]):
            x = lab[:, j]
            cut = np.flatnonzero(np.diff(x)) + 1
            runs = np.diff(np.r_[0, cut, x.shape[0]])
            assert (runs[1:-1] >= nb).all(), f"a label held fewer than {nb} bars"
            assert np.count_nonzero(np.diff(raw[:, j])) > 2 * cut.size  # it does damp the raw flips
            assert set(np.unique(x)) >= {0, 1}


def test_hysteresis_causal_at_every_row():
    """On raw labels that flip often, the label at every row t from rows <= t only equals the full
    run's (the kernel never reads past t)."""
    from engine.strategy.nb import hysteresis_nb

    rng = np.random.default_rng(3)
    raw = np.repeat(rng.integers(-1, 4, (400, 3)), rng.integers(1, 4, 400), axis=0)[:400].astype(np.int8)
    for nb, lb in ((2, 5), (3, 10), (6, 30)):
        full = hysteresis_nb(raw, nb, lb)
        for t in range(raw.shape[0]):
            assert np.array_equal(hysteresis_nb(raw[: t + 1], nb, lb)[t], full[t]), t


@pytest.mark.parametrize("t", [400, 777, 1100, 1333, 1700, 1950])
def test_regime_and_profiles_causal_on_real_data(t):
    """Perturbing every bar (and P(up)) after t leaves every regime, candidate and selection value at
    rows <= t unchanged."""
    p = _panel()
    pu, _ = _signals(p)
    cfg = _cfg()
    a = apply_strategy(p.high, p.close, p.volume, p.valid, pu, cfg)
    rng = np.random.default_rng(t)
    k = p.close.shape[0] - t - 1
    s = np.exp(rng.normal(0.0, 0.05, (k, p.close.shape[1])))
    hi, cl, vo, pu2 = p.high.copy(), p.close.copy(), p.volume.copy(), pu.copy()
    hi[t + 1 :] *= s * 1.01
    cl[t + 1 :] *= s
    vo[t + 1 :] *= s * 3
    pu2[t + 1 :] = rng.uniform(0, 1, pu2[t + 1 :].shape)
    valid2 = p.valid.copy()
    valid2[t + 1 :: 7] = False
    b = apply_strategy(hi, cl, vo, valid2, pu2, cfg)
    sp = strategy_params(cfg.strategy, cfg.risk.p_up_entry)
    ca = profile_candidates(p.high, p.close, p.volume, p.valid, pu, sp)
    cb = profile_candidates(hi, cl, vo, valid2, pu2, sp)
    assert np.array_equal(ca[:, : t + 1], cb[:, : t + 1])
    for f in ("regime", "profile", "candidate", "p_up_gated", "stop_atr_mult", "take_profit_atr_mult", "size_scale"):
        x, y = getattr(a, f)[: t + 1], getattr(b, f)[: t + 1]
        assert x.tobytes() == y.tobytes(), f
    assert not np.array_equal(a.regime, b.regime)  # the perturbation does reach the later rows


def test_daemon_window_equals_full_history():
    """The daemon builds its inputs from its last history_bars rows: from row lookback_bars of any
    window on, the selection equals a full-history run's."""
    p = _panel()
    pu, _ = _signals(p)
    cfg = _cfg()
    a = apply_strategy(p.high, p.close, p.volume, p.valid, pu, cfg)
    L = cfg.strategy.lookback_bars
    for k in (500, 1000):
        b = apply_strategy(p.high[k:], p.close[k:], p.volume[k:], p.valid[k:], pu[k:], cfg)
        for f in ("regime", "profile", "candidate", "p_up_gated", "size_scale"):
            assert getattr(a, f)[k + L :].tobytes() == getattr(b, f)[L:].tobytes(), f


# ---- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "msg"),
    [
        ({"selector": {"range": [{"profile": "nope"}]}}, "unknown profile"),
        ({"selector": {"range": [{"profile": "trend", "weight": 0.5}]}}, "weights must sum to 1"),
        ({"selector": {"crash": []}}, "one or two profiles"),
        ({"selector": {"crash": [{"profile": p, "weight": 1 / 3} for p in PROFILE_NAMES[:3]]}}, "one or two"),
        ({"selector": {"crash": [{"profile": "trend", "weight": 0.5}] * 2}}, "the same profile twice"),
        ({"hysteresis_bars": 0}, "hysteresis_bars"),
        ({"vx_short_bars": 200}, "vx_short_bars must be below"),
        ({"bogus": 1}, "unknown key"),
    ],
)
def test_config_errors_are_one_line(table, msg):
    with pytest.raises(ConfigError) as e:
        _cfg(**table)
    assert msg in str(e.value) and "\n" not in str(e.value) and "strategy" in str(e.value)


def test_default_config_hash_and_inputs_unchanged_with_the_layer_off():
    cfg = load_config()
    assert not cfg.strategy.enabled
    # the content hash of configs/default.toml at f4a347f, before the [strategy] section existed
    assert cfg.content_hash() == DEFAULT_CONFIG_SHA256
    assert _cfg().content_hash() != cfg.content_hash()


# ---- backtest: off bit-identical, on equal to the RiskMachine loop ----------------------------------


def _params(cfg):
    return params_from_config(
        cfg,
        sizing=SIZING_VOL_TARGET,
        position_size=0.1,
        max_hold_bars=12,
        max_exposure=0.9,
        max_cluster_exposure=0.5,
    )


def _digest(res) -> str:
    h = hashlib.sha256()
    for a in (res.metrics, res.refusals, res.trades, res.events, res.equity):
        h.update(a.tobytes())
    return h.hexdigest()


# run_backtest on _panel() with _signals() and _params(load_config()) at f4a347f (before the layer)
DEFAULT_CONFIG_SHA256 = "dfa1d69d203faef70503799c75a2b5d73eaa664630ea36f55e5b2555286ec7f3"
OFF_DIGEST = "329c92db3c0a4fa8fe1131cfc41e73d071f56ab34bfb74f430e5a13b18129d52"


def test_layer_off_backtest_bit_identical_to_before():
    p = _panel()
    pu, er = _signals(p)
    cfg = load_config()
    inp = make_inputs(p, pu, er, cfg)
    assert inp.strategy is None and inp.p_up.tobytes() == np.ascontiguousarray(pu).tobytes()
    assert _digest(run_backtest(inp, _params(cfg))) == OFF_DIGEST


@functools.lru_cache(maxsize=1)
def _on_case():
    p = _panel()
    pu, er = _signals(p)
    cfg = _cfg()
    inp = make_inputs(p, pu, er, cfg)
    return inp, cfg, run_backtest(inp, _params(cfg))


def test_selector_gates_entries_and_every_entry_has_a_selected_candidate():
    inp, cfg, bt = _on_case()
    sel = inp.strategy
    rows = selection_records(sel, cfg.risk.p_up_entry)
    assert rows["candidate"].sum() >= 50 and (~rows["candidate"]).sum() >= 50  # both sides exercised
    assert len(set(rows["profile"][rows["candidate"]].tolist())) >= 3  # several profiles enter
    parked = ~sel.candidate & (sel.p_up >= cfg.risk.p_up_entry)
    assert (inp.p_up[parked] == cfg.risk.p_up_exit).all()
    assert (inp.p_up[~parked] == sel.p_up[~parked]).all()
    ev = bt.events
    entries = ev[(ev["code"] == EventCode.ORDER) & (ev["reason"] == Reason.ENTRY)]
    assert len(entries) >= 20
    assert sel.candidate[entries["bar"], entries["pair"]].all(), "an entry the selector did not pass"
    assert (bt.trades["reason"] == Reason.EXIT_STOP).sum() + (bt.trades["reason"] == Reason.EXIT_TIME).sum() > 0
    assert reason_code(int(Profile.MEAN_REVERSION), False) == "strategy_mean_reversion_no_entry"
    # phase 2 (R26): the risk step applies the selected profile's exits; without them the same gated
    # signal trades differently; entries come from several profiles, some of them scaled down
    assert inp.bar_exits.shape == (*inp.shape, 4)
    plain = run_backtest(dataclasses.replace(inp, bar_exits=None), _params(cfg))
    assert plain.trades.tobytes() != bt.trades.tobytes()
    buys = bt.trades[bt.trades["side"] == 1]
    dec = buys["bar"] - 1
    prof = sel.profile[dec, buys["pair"]]
    assert set(prof.tolist()) >= {int(Profile.TREND), int(Profile.MEAN_REVERSION)}
    assert (sel.size_scale[dec, buys["pair"]] < 1.0).any()  # some entries were scaled down


def test_selector_on_machine_equals_backtest_bit_for_bit():
    inp, cfg, bt = _on_case()
    m = RiskMachine(inp.pairs, _params(cfg))
    out = [m.on_bar(*bar_inputs(inp, t), simulate_fills=True) for t in range(inp.shape[0])]
    h0 = int(inp.ts[0]) // 3600
    tr = np.concatenate([r.trades for r in out])
    ev = np.concatenate([r.events for r in out])
    eq = np.concatenate([r.equity for r in out])
    for a in (tr, ev, eq):
        a["bar"] -= h0
    assert tr.tobytes() == bt.trades.tobytes()
    assert ev.tobytes() == bt.events.tobytes()
    assert eq.tobytes() == bt.equity.tobytes()
    assert np.array_equal(m.refusals, bt.refusals)


def test_breakdown_attributes_round_trips_to_the_entry_decision_bar():
    from engine.risk.enums import trade_dt
    from engine.strategy.report import breakdown

    tr = np.zeros(5, dtype=trade_dt)
    # pair 0: buy at bar 3 (decided at 2), sold in two parts at 5 and 6; pair 1: buy 4, sell 8
    rows = ((3, 0, 1, 0.0), (4, 1, 1, 0.0), (5, 0, -1, 2.0), (6, 0, -1, -0.5), (8, 1, -1, -1.0))
    for i, (bar, pair, side, pnl) in enumerate(rows):
        tr[i]["bar"], tr[i]["pair"], tr[i]["side"], tr[i]["pnl"] = bar, pair, side, pnl
    regime = np.zeros((10, 2), dtype=np.int8)
    regime[2, 0] = 1  # trending at pair 0's decision bar
    profile = np.full((10, 2), int(Profile.MEAN_REVERSION), dtype=np.int8)
    profile[2, 0] = int(Profile.TREND)
    b = breakdown(tr, regime, profile)
    assert b["per_regime"]["trending"] == {"pair_hours": 1, "trades": 1, "hit_rate": 1.0, "pnl_after_fees": 1.5}
    assert b["per_regime"]["range"] == {"pair_hours": 19, "trades": 1, "hit_rate": 0.0, "pnl_after_fees": -1.0}
    assert b["per_profile"]["trend"]["trades"] == 1 and b["per_profile"]["mean_reversion"]["pnl_after_fees"] == -1.0


def test_walkforward_compares_the_selector_with_the_default_rule_set():
    """research.walkforward's comparison on the real panel with constructed out-of-sample signals:
    the selector run is the [strategy]-on backtest, the default the same signals with it off."""
    from types import SimpleNamespace

    import pandas as pd

    from research.walkforward import _backtest

    p = _panel()
    pu, er = _signals(p)
    n, m = pu.shape
    preds = pd.DataFrame(
        {
            "ts": np.repeat(p.ts, m),
            "pair": np.tile(np.asarray(p.pairs, dtype=object), n),
            "horizon": 24,
            "model": "meta",
            "p_up": pu.ravel(),
            "exp_return": er.ravel(),
        }
    )
    cfg = _cfg()
    rc = SimpleNamespace(trade_horizon=24, base_models=(), n_trials=1)
    res, stats = _backtest(p, cfg, rc, preds)
    s = stats["strategy"]
    # phase 2: the selector parks entries but its profiles' tighter stops and take-profits turn over
    # more often, so its round-trip count differs either way
    assert s["selector"]["trades"] != s["default"]["trades"]
    assert sum(v["trades"] for v in s["selector"]["per_profile"].values()) == s["selector"]["trades"]
    assert sum(v["pair_hours"] for v in s["default"]["per_regime"].values()) == n * m
    assert s["better_out_of_sample"] in ("selector", "default")
    off = run_backtest(make_inputs(p, pu, er, load_config()), params_from_config(cfg))
    assert res.trades.tobytes() != off.trades.tobytes()
    from engine.strategy.report import summary

    assert {k: s["default"][k] for k in summary(off)} == summary(off)  # the default IS the layer-off run
    # the walk-forward report's tables carry these figures, in percent, per regime and per profile
    from engine.report_html import pct, selector_tables

    page = selector_tables(s)
    assert f"<td>{pct(s['selector']['total_return'])}</td><td>{pct(s['default']['total_return'])}</td>" in page
    assert f"<b>{s['better_out_of_sample']}</b>" in page
    for name, st in s["selector"]["per_profile"].items():
        assert f"<td class='k'>{name}</td><td>{st['pair_hours']:,}</td><td>{st['trades']:,}</td>" in page
    assert all(f"<td class='k'>{r}</td>" in page for r in s["default"]["per_regime"])
    assert selector_tables(None) == ""


def test_a_span_cut_from_a_longer_panel_is_labelled_as_in_the_full_history():
    """Sweeps, studies and the walk-forward cut their span out of a longer panel; with ``history``
    (the bars before it) the selector warms up on them, as ATR does, so the span's first rows get
    the full history's labels instead of a cold start ("unknown" for the first lookback bars)."""
    from engine.backtest.runner import history_before

    p = _panel()
    pu, er = _signals(p)
    cfg = _cfg()
    full = make_inputs(p, pu, er, cfg)
    lo = 700
    sub = p.slice(int(p.ts[lo]), int(p.ts[-1]))
    kw = dict(atr=full.atr[lo:], spread=full.spread[lo:], cluster=full.cluster[lo:])
    warm = make_inputs(sub, pu[lo:], er[lo:], cfg, history=history_before(p, lo), **kw)
    for f in ("regime", "profile", "candidate", "p_up_gated", "size_scale"):
        assert np.array_equal(getattr(warm.strategy, f), getattr(full.strategy, f)[lo:], equal_nan=True), f
    assert np.array_equal(warm.bar_exits, full.bar_exits[lo:], equal_nan=True)
    cold = make_inputs(sub, pu[lo:], er[lo:], cfg, **kw)
    assert (cold.strategy.regime[:160] == -1).all() and (warm.strategy.regime[:160] != -1).mean() > 0.9
    # the sweep's inputs and a rebuild under another [strategy] table warm up the same way
    from research.sweep import inputs_from_panel, strategy_inputs

    si = inputs_from_panel(p, cfg, start=int(p.ts[lo]))
    assert si.inp.strategy_history is not None and (si.inp.strategy.regime[:300] != -1).mean() > 0.9
    cfg2 = _cfg(hysteresis_bars=3)
    again = strategy_inputs(si.inp, cfg2)
    assert (again.strategy.regime[:300] != -1).mean() > 0.9
