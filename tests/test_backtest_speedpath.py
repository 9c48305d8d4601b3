"""The fused backtest kernel (``simulate_nb``) against the reference path (``simulate_reference_nb``:
a plain loop over the per-bar ``step_nb`` the live bridge uses), bit for bit, on real bars (10
Binance pairs, a window with missing hours) under configs that exercise every rule: drawdown tiers,
the halt and its reset, every kill-switch trigger and its reactivation, operator resets, market and
limit-first orders, risk and fixed-fraction sizing, precision on and off, stops, take-profits and
time exits. Trades, events, equity rows, metrics and refusal counts must be byte-identical."""

from __future__ import annotations

import functools
from dataclasses import replace

import numpy as np
import pytest

from engine.backtest.demo import ma_signal
from engine.backtest.runner import _rules, make_inputs, run_backtest, run_sweep
from engine.config import config_from_dict, load_config, read_toml
from engine.paths import configs_dir
from engine.risk.enums import (
    N_REASONS,
    SIZING_FIXED_FRACTION,
    SIZING_RISK,
    Reason,
    equity_dt,
    event_dt,
    metrics_dt,
    trade_dt,
)
from engine.risk.nb import N_CNT
from engine.risk.params import params_from_config
from engine.store.panel import load_shared_panel

PAIRS10 = [f"binance_{s}USDT_1h" for s in ["BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "AVAX", "DOGE"]]
START = 1619337600 + 2200 * 3600  # 2021-07-27: a stretch with missing hours inside (data kill switch)
N_BARS = 2000


@functools.lru_cache(maxsize=1)
def _inputs():
    from tests.conftest import require_shared

    require_shared()
    p = load_shared_panel(PAIRS10, start=START, end=START + 3600 * (N_BARS - 1))
    assert not p.valid.all(), "the window must contain missing bars"
    cfg = load_config()
    pu, er = ma_signal(p.close, 6, 24, 80.0)
    return cfg, make_inputs(p, pu, er, cfg)


def _reference(inp, params):
    """The same run through simulate_reference_nb (step_nb per bar), with full records."""
    from engine.backtest.nb import simulate_reference_nb

    n, m = inp.shape
    ordermin, costmin, lot, price, quote = _rules(inp)
    trades = np.zeros(n * m + 1, dtype=trade_dt)
    events = np.zeros(n * (2 * m + 6) + 1, dtype=event_dt)
    eqrows = np.zeros(n, dtype=equity_dt)
    metrics = np.zeros(1, dtype=metrics_dt)
    refusals = np.zeros(N_REASONS, dtype=np.int64)
    cnt = np.zeros(N_CNT, dtype=np.int64)
    simulate_reference_nb(
        inp.open,
        inp.high,
        inp.low,
        inp.close,
        inp.volume,
        inp.valid,
        inp.p_up,
        inp.exp_ret,
        inp.bar_exits,
        inp.atr,
        inp.spread,
        inp.cluster,
        inp.tradable,
        inp.entry_block,
        inp.api_fault,
        inp.operator,
        inp.month_id,
        ordermin,
        costmin,
        lot,
        price,
        quote,
        params[0],
        True,
        trades,
        events,
        eqrows,
        metrics[0],
        refusals,
        cnt,
    )
    assert not metrics[0]["records_overflow"]
    return metrics, refusals, trades[: cnt[0]], events[: cnt[1]], eqrows


def _cases():
    cfg, inp = _inputs()
    pcfg = load_config(configs_dir() / "vectorbt_parity.toml")
    n, m = inp.shape
    rng = np.random.default_rng(11)
    api = rng.random(n) < 0.004
    op = np.where(rng.random(n) < 0.006, rng.integers(1, 4, n), 0).astype(np.int64)
    noisy_pu = np.clip(inp.p_up + rng.normal(0.0, 0.15, inp.p_up.shape), 0.0, 1.0)
    big_er = np.abs(inp.exp_ret) * 5.0
    spread = inp.spread.copy()
    spread[rng.random(spread.shape) < 0.001] = 0.05  # spread anomalies (spread_max and the EWMA rule)
    # universe membership switching on and off per pair (R9) and a random entry-block schedule (R25)
    tradable = np.repeat(rng.random((n // 50 + 1, m)) < 0.7, 50, axis=0)[:n]
    block = rng.random(n) < 0.1
    return {
        "default": (inp, params_from_config(cfg)),
        "halt_resets": (
            inp,
            params_from_config(
                cfg,
                halt_reset_bars=150,
                dd_tier1=0.01,
                dd_tier2=0.02,
                dd_halt=0.04,
                sizing=SIZING_RISK,
                base_risk=0.1,
                max_exposure=0.8,
                max_cluster_exposure=0.5,
            ),
        ),
        "faults_operator_market": (
            replace(inp, api_fault=api, operator=op, spread=spread),
            params_from_config(
                cfg,
                dd_tier1=0.01,
                dd_tier2=0.02,
                dd_halt=0.03,
                halt_reset_bars=100,
                vol_spike_mult=3.0,
                spread_anomaly_mult=2.0,
                entry_kind=1,
                exit_kind=1,
                sizing=SIZING_RISK,
                base_risk=0.2,
                max_exposure=0.9,
                max_cluster_exposure=0.5,
            ),
        ),
        "noisy_caps": (
            replace(inp, p_up=noisy_pu, exp_ret=big_er, tradable=tradable, entry_block=block),
            params_from_config(
                cfg, max_exposure=0.6, max_cluster_exposure=0.3, max_positions=4, min_edge=0.0, kill_reset_bars=6
            ),
        ),
        "fixed_fraction_no_precision": (
            replace(inp, p_up=noisy_pu, exp_ret=big_er, tradable=tradable),
            params_from_config(
                cfg,
                sizing=SIZING_FIXED_FRACTION,
                fixed_fraction=0.3,
                max_exposure=1.0,
                max_cluster_exposure=1.0,
                min_edge=0.0,
                stop_atr_mult=1.0,
                tp_atr_mult=0.0,
                max_hold_bars=5,
                enforce_precision=0,
                kill_reset_bars=3,
            ),
        ),
        "parity": (replace(inp, exp_ret=np.full_like(inp.exp_ret, 1.0)), params_from_config(pcfg, kill_reset_bars=4)),
        # per-bar exit parameters (R26): random stop/take-profit multiples (0 = none), size scales and
        # stop floors (about a third of the held bars), NaN fields falling back to [risk]'s
        "bar_exits_random": (
            replace(inp, p_up=noisy_pu, exp_ret=big_er, bar_exits=_random_exits(inp, rng)),
            params_from_config(cfg, max_exposure=0.6, max_cluster_exposure=0.4, max_positions=5, min_edge=0.0),
        ),
        # the strategy layer's own selection ([strategy] enabled in make_inputs)
        "strategy_selector": (_strategy_inputs(), params_from_config(cfg, min_edge=0.0)),
        # one pair, the benchmark sweep's rules (all-in fixed fraction, enter on any up-signal): long
        # flat and held stretches (the quiet and hold runs of the records-off loop), data kill-switch
        # latches and resets, then the halt with every later candidate refused
        "one_pair_runs": (
            _one_pair(inp),
            params_from_config(
                pcfg,
                fixed_fraction=1.0,
                min_edge=-1.0,
                p_up_entry=0.5 + 1e-9,
                p_up_exit=0.5,
                dd_halt=0.2,
                kill_reset_bars=4,
            ),
        ),
    }


def _random_exits(inp, rng):
    from engine.risk.enums import BX_FLOOR, BX_N, BX_SIZE, BX_STOP, BX_TP

    n, m = inp.shape
    bx = np.empty((n, m, BX_N))
    bx[:, :, BX_STOP] = rng.choice([0.0, 0.5, 1.0, 2.5, np.nan], (n, m))
    bx[:, :, BX_TP] = rng.choice([0.0, 1.0, 3.0, np.nan], (n, m))
    bx[:, :, BX_SIZE] = rng.choice([0.25, 0.5, 1.0, np.nan], (n, m))
    k = rng.uniform(0.2, 1.5, (n, m))
    bx[:, :, BX_FLOOR] = np.where(rng.random((n, m)) < 0.35, inp.close - k * inp.atr, np.nan)
    return bx


def _strategy_inputs():
    from tests.conftest import require_shared

    require_shared()
    p = load_shared_panel(PAIRS10, start=START, end=START + 3600 * (N_BARS - 1))
    raw = read_toml(configs_dir() / "default.toml")
    raw["strategy"] = {"enabled": True, "trend_bars": 48, "crash_ret": -0.04, "crash_drawdown": 0.04}
    cfg = config_from_dict(raw)
    pu, er = ma_signal(p.close, 6, 24, 80.0)
    return make_inputs(p, pu, er, cfg)


def _one_pair(inp):
    one = replace(
        inp,
        pairs=inp.pairs[:1],
        **{
            f: np.ascontiguousarray(getattr(inp, f)[:, :1])
            for f in ("open", "high", "low", "close", "volume", "valid", "atr", "spread", "cluster", "tradable")
        },
    )
    pu, er = ma_signal(one.close, 5, 45, 1e6)
    return replace(one, p_up=pu, exp_ret=er)


CASES = [
    "default",
    "halt_resets",
    "faults_operator_market",
    "noisy_caps",
    "fixed_fraction_no_precision",
    "parity",
    "one_pair_runs",
    "bar_exits_random",
    "strategy_selector",
]


@pytest.mark.parametrize("case", CASES)
def test_fused_kernel_bit_identical_to_step_nb_loop(case):
    inp, params = _cases()[case]
    fast = run_backtest(inp, params, record=True)
    ref_metrics, ref_refusals, ref_trades, ref_events, ref_equity = _reference(inp, params)
    assert fast.trades.tobytes() == ref_trades.tobytes()
    assert fast.events.tobytes() == ref_events.tobytes()
    assert fast.equity.tobytes() == ref_equity.tobytes()
    assert fast.metrics.tobytes() == ref_metrics.tobytes()
    assert fast.refusals.tobytes() == ref_refusals.tobytes()
    # records off (the sweep path) changes nothing but the records
    lean = run_backtest(inp, params, record=False)
    assert lean.metrics.tobytes() == ref_metrics.tobytes()
    assert lean.refusals.tobytes() == ref_refusals.tobytes()
    # not vacuous: the run traded, and the rule this case targets fired
    m = fast.metrics[0]
    assert m["n_fills"] > 0 and len(fast.events) > 0
    if case == "halt_resets":
        assert m["bars_halted"] > 0 and (fast.events["reason"] == 43).any()  # RESET_HALT
    if case == "faults_operator_market":
        reasons = set(fast.events["reason"].tolist())
        assert {30, 42}.issubset(reasons) and m["bars_reducing_1"] + m["bars_reducing_2"] > 0
    if case in ("default", "noisy_caps"):  # the entry-block window (default config 03:00-05:00)
        assert fast.refusals[Reason.REFUSE_TRAINING_WINDOW] > 0
    if case in ("noisy_caps", "fixed_fraction_no_precision"):
        assert fast.refusals[Reason.REFUSE_NOT_TRADABLE] > 0
    if case in ("bar_exits_random", "strategy_selector"):
        from engine.risk.enums import EventCode

        assert inp.bar_exits.shape == (*inp.shape, 4)
        assert np.isfinite(inp.bar_exits[:, :, 3]).sum() > 100  # preservation floors (crash bars)
        assert (fast.events["code"] == EventCode.STOP).any()  # a floor raised a held stop
        if case == "bar_exits_random":
            assert (fast.events["code"] == EventCode.STOP).sum() > 5  # floors raised held stops
            assert (fast.events["reason"] == Reason.EXIT_STOP).sum() > 5
    if case == "one_pair_runs":
        assert m["bars_halted"] > 500 and fast.refusals[Reason.REFUSE_HALTED] > 100
        assert m["n_fills"] > 20 and m["bars_kill_switch"] > 0 and m["mean_exposure"] > 0.15


def test_sweep_matches_reference_per_set():
    _, inp = _inputs()
    cfg = load_config()
    rng = np.random.default_rng(5)
    S = 4
    params = np.repeat(params_from_config(cfg), S)
    params["p_up_entry"] = rng.uniform(0.5, 0.7, S)
    params["max_exposure"] = rng.uniform(0.1, 0.9, S)
    params["entry_kind"] = [1, 2, 1, 2]
    metrics, refusals = run_sweep(inp, params)
    for s in range(S):
        ref_metrics, ref_refusals, *_ = _reference(inp, params[s : s + 1])
        assert metrics[s : s + 1].tobytes() == ref_metrics.tobytes()
        assert refusals[s].tobytes() == ref_refusals.tobytes()


def test_sweep_with_differing_kill_params_matches_reference():
    """Sets whose kill-switch parameters differ take the per-bar trigger path (no shared pre-pass)."""
    _, inp = _inputs()
    cfg = load_config()
    params = np.repeat(params_from_config(cfg, halt_reset_bars=150), 3)
    params["vol_spike_mult"] = [8.0, 3.0, 0.0]
    params["spread_anomaly_mult"] = [5.0, 2.0, 0.0]
    metrics, refusals = run_sweep(inp, params)
    assert len(set(metrics["n_kill_events"].tolist())) > 1  # the parameters matter on these bars
    for s in range(3):
        ref_metrics, ref_refusals, *_ = _reference(inp, params[s : s + 1])
        assert metrics[s : s + 1].tobytes() == ref_metrics.tobytes()
        assert refusals[s].tobytes() == ref_refusals.tobytes()


def test_memoised_kill_triggers_follow_the_kill_params_and_the_inputs():
    """run_backtest memoises the kill-switch triggers on the inputs, per kill-parameter tuple: runs
    that alternate kill parameters on one inputs object each equal the step_nb loop, and inputs made
    with dataclasses.replace (new spreads) start with an empty memo, so no stale trigger is reused."""
    _, inp = _inputs()
    inp = replace(inp)  # a private copy: its memo starts empty
    cfg = load_config()
    a = params_from_config(cfg, halt_reset_bars=150)
    b = params_from_config(cfg, halt_reset_bars=150, vol_spike_mult=3.0, spread_anomaly_mult=2.0)
    runs = [run_backtest(inp, pr, record=False) for pr in (a, b, a, b)]
    assert len(inp._kill_memo) == 2
    assert runs[0].metrics["n_kill_events"][0] != runs[1].metrics["n_kill_events"][0]
    for pr, r in zip((a, b, a, b), runs):
        ref_metrics, ref_refusals, *_ = _reference(inp, pr)
        assert r.metrics.tobytes() == ref_metrics.tobytes()
        assert r.refusals.tobytes() == ref_refusals.tobytes()
    spread = inp.spread.copy()
    spread[::97] = 0.05  # spread anomalies the first memo has not seen
    inp2 = replace(inp, spread=spread)
    assert inp2._kill_memo == {}
    r2 = run_backtest(inp2, a, record=False)
    ref_metrics, *_ = _reference(inp2, a)
    assert r2.metrics.tobytes() == ref_metrics.tobytes()
    assert r2.metrics["n_kill_events"][0] > runs[0].metrics["n_kill_events"][0]


def test_ma_sweep_matches_single_runs():
    """The fused signal + backtest + metrics sweep (ma_sweep_nb, shared kill triggers, one signal
    buffer per thread reused across its sets, SMAs from a shared table or per set) equals one
    run_backtest per set on the same signal, bit for bit, on 1 thread and on every thread."""
    import numba

    from engine.backtest.runner import run_ma_sweep

    _, inp = _inputs()
    cfg = load_config()
    sub = replace(
        inp,
        pairs=inp.pairs[:2],
        **{
            f: np.ascontiguousarray(getattr(inp, f)[:, :2])
            for f in (
                "open",
                "high",
                "low",
                "close",
                "volume",
                "valid",
                "p_up",
                "exp_ret",
                "atr",
                "spread",
                "cluster",
                "tradable",
            )
        },
    )
    fasts = np.array([3, 6, 12], dtype=np.int64)
    slows = np.array([20, 24, 48], dtype=np.int64)
    params = np.repeat(params_from_config(cfg, halt_reset_bars=100, min_edge=0.0), 3)
    metrics, refusals = run_ma_sweep(sub, fasts, slows, 80.0, params)
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        m1, r1 = run_ma_sweep(sub, fasts, slows, 80.0, params)
    finally:
        numba.set_num_threads(threads)
    assert m1.tobytes() == metrics.tobytes() and r1.tobytes() == refusals.tobytes()
    # without the shared SMA table (each set computes its own SMAs): the same results
    m0, r0 = run_ma_sweep(sub, fasts, slows, 80.0, params, table_budget_mb=0.0)
    assert m0.tobytes() == metrics.tobytes() and r0.tobytes() == refusals.tobytes()
    for s in range(3):
        pu, er = ma_signal(sub.close, int(fasts[s]), int(slows[s]), 80.0)
        one = run_backtest(replace(sub, p_up=pu, exp_ret=er), params[s : s + 1], record=False)
        assert one.metrics[0]["n_fills"] > 0
        assert metrics[s : s + 1].tobytes() == one.metrics.tobytes()
        assert refusals[s].tobytes() == one.refusals.tobytes()


@functools.lru_cache(maxsize=1)
def _plain_ma_signal_nb():
    """The demo signal written plainly (two SMA arrays, numba's tanh everywhere)."""
    from numba import njit

    from engine.backtest.demo import sma_nb

    @njit
    def plain(close, fast, slow, scale):
        f = sma_nb(close, fast)
        s = sma_nb(close, slow)
        n, m = close.shape
        p_up = np.full((n, m), np.nan)
        er = np.full((n, m), np.nan)
        for t in range(n):
            for j in range(m):
                a = f[t, j]
                b = s[t, j]
                if a == a and b == b and b > 0.0:
                    g = a / b - 1.0
                    p_up[t, j] = 0.5 + 0.5 * np.tanh(scale * g)
                    er[t, j] = g
        return p_up, er

    @njit
    def tanh(x):
        out = np.empty_like(x)
        for i in range(x.shape[0]):
            out[i] = np.tanh(x[i])
        return out

    return plain, tanh


def test_ma_signal_equals_the_two_sma_formula_bit_for_bit():
    """The one-pass demo signal (with the tanh saturation shortcut), and the same signal from a table
    of SMAs, equal the plain formula 0.5 + 0.5 * tanh(scale * (SMA_fast / SMA_slow - 1)) on real bars
    with gaps, for small and huge scales."""
    from engine.backtest.demo import ma_signal_from_sma_nb, sma_nb

    plain, tanh = _plain_ma_signal_nb()
    _, inp = _inputs()
    c = inp.close
    for fast, slow, scale in ((3, 20, 80.0), (12, 48, 50.0), (2, 45, 1e6), (7, 7, 1e3)):
        pu, er = ma_signal(c, fast, slow, scale)
        ref_pu, ref_er = plain(c, fast, slow, scale)
        assert np.array_equal(er, ref_er, equal_nan=True)
        assert np.array_equal(pu, ref_pu, equal_nan=True)
        assert (~np.isnan(pu)).sum() > 1000
        # from a shared SMA table (ma_sweep_nb): the same values
        t_pu, t_er = np.empty_like(c), np.empty_like(c)
        ma_signal_from_sma_nb(sma_nb(c, fast), sma_nb(c, slow), scale, t_pu, t_er)
        assert np.array_equal(t_er, ref_er, equal_nan=True) and np.array_equal(t_pu, ref_pu, equal_nan=True)
    # the saturation the shortcut relies on: numba's tanh is exactly +-1 from |x| = 20 on
    x = np.concatenate([np.linspace(20.0, 60.0, 40001), [1e300, np.inf]])
    assert (tanh(x) == 1.0).all() and (tanh(-x) == -1.0).all()


def test_more_pairs_than_one_mask_word_bit_identical():
    """70 pairs (the 10 real ones, 7 times, each copy with its own noisy signal): the entry masks and
    the held-pair mask span two 64-bit words (engine.backtest.bits); the records-off loop still
    equals the step_nb loop bit for bit, and pairs past the first word are held and refused."""
    _, inp = _inputs()
    cfg = load_config()
    k = 7
    rng = np.random.default_rng(70)
    n, m = inp.shape

    def tile(a):
        return np.ascontiguousarray(np.tile(a, (1, k)))

    noisy = np.clip(tile(inp.p_up) + rng.normal(0.0, 0.2, (n, m * k)), 0.0, 1.0)
    wide = replace(
        inp,
        pairs=inp.pairs * k,
        open=tile(inp.open),
        high=tile(inp.high),
        low=tile(inp.low),
        close=tile(inp.close),
        volume=tile(inp.volume),
        valid=tile(inp.valid),
        p_up=noisy,
        exp_ret=np.abs(tile(inp.exp_ret)) * 5.0,
        atr=tile(inp.atr),
        spread=tile(inp.spread),
        cluster=np.full((n, m * k), -1, dtype=np.int64),
        tradable=np.repeat(rng.random((n // 50 + 1, m * k)) < 0.8, 50, axis=0)[:n],
        bar_exits=None,
    )
    params = params_from_config(cfg, max_positions=40, max_exposure=0.9, min_edge=0.0, halt_reset_bars=100)
    ref_metrics, ref_refusals, ref_trades, *_ = _reference(wide, params)
    lean = run_backtest(wide, params, record=False)
    assert lean.metrics.tobytes() == ref_metrics.tobytes()
    assert lean.refusals.tobytes() == ref_refusals.tobytes()
    assert (ref_trades["pair"] >= 64).sum() > 10  # pairs of the second word traded
    assert ref_refusals[Reason.REFUSE_NOT_TRADABLE] > 0


def test_bit_counting_intrinsics():
    from numba import njit

    from engine.backtest.bits import ctz_nb, popcount_nb

    @njit
    def both(x):
        return popcount_nb(x), ctz_nb(x)

    rng = np.random.default_rng(3)
    words = [0, 1, 2**63, 2**64 - 1, *rng.integers(0, 2**63, 50, dtype=np.uint64).tolist()]
    for w in words:
        pc, tz = both(np.uint64(w))
        assert pc == bin(w).count("1")
        assert tz == (64 if w == 0 else (w & -w).bit_length() - 1)


def test_valid_bars_without_a_close_mark_as_the_reference():
    """A valid bar whose close is NaN: a pair opened there takes its last valid close as its mark, as
    the step_nb loop marks it (the fused loop once kept a stale mark): equity rows and metrics, records
    on and off, equal the reference's."""
    _, inp = _inputs()
    cfg = load_config()
    rng = np.random.default_rng(12)
    close = inp.close.copy()
    close[(rng.random(close.shape) < 0.03) & inp.valid] = np.nan
    odd = replace(inp, close=close, p_up=np.clip(inp.p_up + rng.normal(0.0, 0.15, inp.p_up.shape), 0.0, 1.0))
    params = params_from_config(cfg, max_positions=5, max_cluster_exposure=0.4, halt_reset_bars=100, min_edge=0.0)
    ref_metrics, ref_refusals, _, _, ref_equity = _reference(odd, params)
    fast = run_backtest(odd, params, record=True)
    lean = run_backtest(odd, params, record=False)
    assert fast.equity.tobytes() == ref_equity.tobytes()
    assert fast.metrics.tobytes() == ref_metrics.tobytes() == lean.metrics.tobytes()
    assert lean.refusals.tobytes() == ref_refusals.tobytes()
    assert fast.metrics[0]["n_fills"] > 20
