"""Operator pause, resume and flatten in the risk step (issue 17; R22a, R22b): over real bars of ten
pairs, OP_PAUSE at bar k and OP_RESUME at bar k+n refuse every entry in between with REFUSE_PAUSED
while exits still happen; OP_FLATTEN at a bar with open positions exits every one at the next bar
with EXIT_OPERATOR and decides no entry at that close. The backtester and a RiskMachine loop fed
the same operator input agree bit for bit (trades, events, equity rows, refusal counts), and the
backtester without records (its quiet-bar fast paths) ends on the same equity and counts."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from engine.backtest.runner import make_inputs, run_backtest
from engine.config import load_config
from engine.errors import InputError
from engine.risk.enums import (
    OP_FLATTEN,
    OP_PAUSE,
    OP_RESUME,
    SIZING_VOL_TARGET,
    EventCode,
    Reason,
    TradingState,
)
from engine.risk.machine import SNAPSHOT_VERSION, RiskMachine, bar_inputs
from engine.risk.params import params_from_config
from engine.store.panel import load_shared_panel
from tests.test_risk_machine import PAIRS10, START

N_BARS = 1200
K, N = 300, 120  # pause at bar K, resume at bar K + N


@functools.lru_cache(maxsize=1)
def _base():
    from tests.conftest import require_shared

    require_shared()
    p = load_shared_panel(PAIRS10, start=START, end=START + 3600 * (N_BARS - 1))
    n, m = p.close.shape
    rng = np.random.default_rng(11)
    flips = rng.random((n, m)) < 0.04
    regime = np.cumsum(flips, axis=0) % 2
    pu = np.where(regime == 1, 0.75, 0.3) + rng.normal(0.0, 0.02, (n, m))
    er = np.where(regime == 1, 0.03, -0.01) * rng.uniform(0.5, 1.5, (n, m))
    cfg = load_config()
    params = params_from_config(
        cfg,
        sizing=SIZING_VOL_TARGET,
        position_size=0.1,
        max_hold_bars=12,
        kill_reset_bars=24,
        max_exposure=0.9,
        max_cluster_exposure=0.5,
    )
    return p, pu, er, cfg, params


def _run(op):
    p, pu, er, cfg, params = _base()
    inp = make_inputs(p, pu, er, cfg, operator=op)
    bt = run_backtest(inp, params, record=True)
    m = RiskMachine(inp.pairs, params)
    res = [m.on_bar(*bar_inputs(inp, t), simulate_fills=True) for t in range(N_BARS)]
    h0 = int(inp.ts[0]) // 3600
    tr = np.concatenate([r.trades for r in res])
    ev = np.concatenate([r.events for r in res])
    eq = np.concatenate([r.equity for r in res])
    for a in (tr, ev, eq):
        a["bar"] -= h0
    # bit for bit: the machine loop and the backtester with the same operator input
    assert tr.tobytes() == bt.trades.tobytes(), "trades differ"
    assert ev.tobytes() == bt.events.tobytes(), "events differ"
    assert eq.tobytes() == bt.equity.tobytes(), "equity rows differ"
    assert np.array_equal(m.refusals, bt.refusals)
    # the backtester's fast paths (no records) make the same decisions
    fast = run_backtest(inp, params, record=False)
    assert fast.metrics[0].tobytes() == bt.metrics[0].tobytes()
    assert np.array_equal(fast.refusals, bt.refusals)
    return bt, m


def _pause_ops():
    op = np.zeros(N_BARS, dtype=np.int64)
    op[K] = OP_PAUSE
    op[K + N] = OP_RESUME
    return op


def test_pause_refuses_entries_until_resume_exits_still_happen():
    base, _ = _run(np.zeros(N_BARS, dtype=np.int64))
    bt, m = _run(_pause_ops())
    ev, tr = bt.events, bt.trades
    # the baseline would have entered inside the window; the paused run refuses with REFUSE_PAUSED
    inside = (base.events["bar"] >= K) & (base.events["bar"] < K + N)
    assert ((base.events["reason"] == Reason.ENTRY) & inside).sum() >= 3
    win = (ev["bar"] >= K) & (ev["bar"] < K + N)
    assert ((ev["code"] == EventCode.ORDER) & (ev["reason"] == Reason.ENTRY) & win).sum() == 0
    paused_ref = ev[(ev["code"] == EventCode.REFUSAL) & (ev["reason"] == Reason.REFUSE_PAUSED)]
    assert len(paused_ref) >= 3
    assert paused_ref["bar"].min() >= K and paused_ref["bar"].max() < K + N
    assert bt.refusals[Reason.REFUSE_PAUSED] == len(paused_ref)
    # exits still happen while paused (orders decided and filled inside the window)
    sells = tr[(tr["side"] < 0) & (tr["bar"] > K) & (tr["bar"] <= K + N)]
    assert len(sells) >= 1
    # one PAUSE and one RESUME event, portfolio-level, at K and K + N; entries again after
    (pe,) = ev[ev["code"] == EventCode.PAUSE]
    (re,) = ev[ev["code"] == EventCode.RESUME]
    assert (pe["bar"], pe["pair"], pe["reason"]) == (K, -1, Reason.OPERATOR_PAUSE)
    assert (re["bar"], re["pair"], re["reason"]) == (K + N, -1, Reason.OPERATOR_RESUME)
    assert ((ev["reason"] == Reason.ENTRY) & (ev["bar"] >= K + N)).sum() >= 1
    assert int(m.state[0]["paused"]) == 0
    # the paused state is no trading state of its own (bar counts unchanged in kind)
    assert set(np.unique(bt.equity["trading_state"])) <= {int(s) for s in TradingState}


def test_flatten_exits_every_position_at_the_next_bar_and_decides_no_entry():
    first, _ = _run(_pause_ops())
    eqr = first.equity
    cand = [t for t in range(K + N + 20, N_BARS - 5) if eqr["n_positions"][t] >= 2]
    assert cand, "no bar with two open positions"
    f = cand[0]
    held = int(eqr["n_positions"][f])
    op = _pause_ops()
    op[f] = OP_FLATTEN
    bt, m = _run(op)
    ev, tr = bt.events, bt.trades
    at_f = ev[ev["bar"] == f]
    orders = at_f[at_f["code"] == EventCode.ORDER]
    assert len(orders) == held and (orders["reason"] == Reason.EXIT_OPERATOR).all()
    assert len(at_f[at_f["code"] == EventCode.REFUSAL]) == 0  # no entry decided at all at that close
    sells = tr[(tr["bar"] == f + 1) & (tr["reason"] == Reason.EXIT_OPERATOR)]
    assert len(sells) == held and (sells["side"] < 0).all()
    assert sorted(sells["pair"].tolist()) == sorted(orders["pair"].tolist())
    assert (tr["reason"] == Reason.EXIT_OPERATOR).sum() == held
    # after the fills of bar f + 1 the book is flat (equity row of f + 1, before new entries fill)
    assert int(bt.equity["n_positions"][f + 1]) == 0
    # identical to the run without the flatten up to bar f
    assert bt.equity[:f].tobytes() == first.equity[:f].tobytes()


def test_operator_values_and_snapshot_version():
    assert (OP_PAUSE, OP_RESUME, OP_FLATTEN) == (4, 8, 16)
    assert SNAPSHOT_VERSION == 6
    p, pu, er, cfg, params = _base()
    inp = make_inputs(p, pu, er, cfg)
    m = RiskMachine(inp.pairs, params)
    h, bars, pred, trd, blk, api, _, _ = bar_inputs(inp, 0)
    for bad in (-1, 32):
        with pytest.raises(InputError, match="operator must be a combination"):
            m.on_bar(h, bars, pred, trd, blk, api, bad)
    m.on_bar(h, bars, pred, trd, blk, api, OP_PAUSE | OP_FLATTEN)
    assert int(m.state[0]["paused"]) == 1 and int(m.state[0]["flatten"]) == 0
