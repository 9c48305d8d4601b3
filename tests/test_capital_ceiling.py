"""The capital ceiling (R3b of docs/RISK_RULES.md, ``risk.capital_ceiling``; live: ``capital_ceiling``
in configs/live.toml): every cap and size that scales with equity reads min(equity, ceiling)
(``engine.risk.nb.cap_base_nb``), at the decision and again at the fill, identically in the
backtester and in the RiskMachine.

Real bars: 10 Binance pairs, 2,200 hours (missing bars inside), random persistent signals that
trade. An account of 100,000 under a ceiling of 10,000 never decides an entry past 20% x 10,000 of
total exposure nor 10% x 10,000 in a cluster, and never fills one past them; the backtest and a
RiskMachine loop agree bit for bit with the ceiling on (also when equity crosses the ceiling both
ways); with the ceiling off (inf, the default) or above every equity reached, results are the ones
of the code before the ceiling existed."""

from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
from decimal import Decimal

import numpy as np
import pytest

import engine.risk.machine as M
from engine.backtest.runner import make_inputs, run_backtest
from engine.config import config_from_dict, load_config
from engine.errors import ConfigError
from engine.risk.enums import SIZING_VOL_TARGET, EventCode, Reason, params_dt
from engine.risk.machine import RiskMachine, SnapshotError, bar_inputs
from engine.risk.params import params_from_config
from engine.store.panel import load_shared_panel

PAIRS10 = [f"binance_{s}USDT_1h" for s in ("BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "AVAX", "DOGE")]
START = 1619337600 + 2200 * 3600  # 2021-07-27 (the window of tests/test_risk_machine.py)
N_BARS = 2200
CASH, CEIL = 100_000.0, 10_000.0
# sizes that make both caps bind: 10% of the cap base per entry at the target volatility
BIG = dict(sizing=SIZING_VOL_TARGET, position_size=0.1, max_exposure=0.2, max_cluster_exposure=0.1)
# sha256 of trades + events + equity rows + refusal counts of the default-parameter backtest of
# _inputs(), measured with the code before the ceiling existed (commit f2189bf): the ceiling at its
# default (inf) must leave every result bit-identical. A deliberate change of a risk rule changes it:
# 2026-12-07 market fill prices on the tick and fees in the quote's decimals (was d7cf18bca7ee6eb9);
# 2026-12-07 round_down_nb snaps a quantity already on its lot (was ea9325bf326155d7: the first
# change is AVAX's bar-15 buy: 8.51926977, on its lot but 851926976.9999999 lots in float, now
# filled whole instead of 8.51926976; every later row follows from that one lot).
PRE_CEILING_DEFAULT = "5e37020e93979c49"


@functools.lru_cache(maxsize=1)
def _inputs():
    from tests.conftest import require_shared

    require_shared()
    p = load_shared_panel(PAIRS10, start=START, end=START + 3600 * (N_BARS - 1))
    n, m = p.close.shape
    rng = np.random.default_rng(7)
    flips = rng.random((n, m)) < 0.04
    regime = np.cumsum(flips, axis=0) % 2
    pu = np.where(regime == 1, 0.75, 0.3) + rng.normal(0.0, 0.02, (n, m))
    er = np.where(regime == 1, 0.03, -0.01) * rng.uniform(0.5, 1.5, (n, m))
    return make_inputs(p, pu, er, load_config())


def _digest(bt) -> str:
    blob = bt.trades.tobytes() + bt.events.tobytes() + bt.equity.tobytes() + bt.refusals.tobytes()
    return hashlib.sha256(blob).hexdigest()[:16]


def _params(**over):
    return params_from_config(load_config(), **over)


def _same(a, b) -> bool:
    return (
        a.trades.tobytes() == b.trades.tobytes()
        and a.events.tobytes() == b.events.tobytes()
        and a.equity.tobytes() == b.equity.tobytes()
        and np.array_equal(a.refusals, b.refusals)
    )


# ---- off by default: nothing changes


def test_default_is_off_and_results_are_those_before_the_ceiling():
    cfg = load_config()
    assert cfg.risk.capital_ceiling == math.inf and params_from_config(cfg)[0]["capital_ceiling"] == math.inf
    inp = _inputs()
    bt = run_backtest(inp, params_from_config(cfg), record=True)
    assert len(bt.trades) > 1000
    assert _digest(bt) == PRE_CEILING_DEFAULT
    # a ceiling no equity reaches takes the same path: bit-identical too
    top = float(bt.equity["equity"].max())
    assert _same(bt, run_backtest(inp, _params(capital_ceiling=top * 1.0001), record=True))


# ---- the ceiling binds: 100,000 of equity under a 10,000 ceiling


@functools.lru_cache(maxsize=1)
def _capped_run():
    """A RiskMachine loop (the backtester's fill model) under the ceiling, with the committed
    exposure (positions at their marks + pending entries at their decision close) after every
    decision, in total and per cluster of each new entry."""
    inp = _inputs()
    params = _params(init_cash=CASH, capital_ceiling=CEIL, **BIG)
    m = RiskMachine(inp.pairs, params)
    res, checks = [], []
    for t in range(N_BARS):
        r = m.on_bar(*bar_inputs(inp, t), simulate_fills=True)
        res.append(r)
        new = r.events[(r.events["code"] == EventCode.ORDER) & (r.events["reason"] == Reason.ENTRY)]
        if len(new) == 0:
            continue
        pos, pend = m.positions, m.pending
        held = pos["qty"] * pos["mark"]
        buy = np.where((pend["active"] == 1) & (pend["side"] == 1), pend["qty"] * pend["ref_price"], 0.0)
        cl = inp.cluster[t]
        clusters = [
            float(held[cl == cl[j]].sum() + buy[cl == cl[j]].sum()) if cl[j] >= 0 else float(held[j] + buy[j])
            for j in new["pair"]
        ]
        checks.append((t, float(held.sum() + buy.sum()), max(clusters), float(m.state[0]["equity"])))
    return inp, params, m, res, checks


def test_entries_never_exceed_the_caps_of_the_ceiling_at_decision():
    _, _, m, _, checks = _capped_run()
    assert len(checks) >= 50
    total = np.array([c[1] for c in checks])
    cluster = np.array([c[2] for c in checks])
    equity = np.array([c[3] for c in checks])
    assert (equity > 9 * CEIL).all()  # the account is ~10x the ceiling throughout
    assert total.max() <= 0.2 * CEIL * (1 + 1e-9), total.max()  # 2,000, not 20,000
    assert cluster.max() <= 0.1 * CEIL * (1 + 1e-9), cluster.max()  # 1,000, not 10,000
    assert total.max() > 0.95 * 0.2 * CEIL  # the cap is reached: the rule is exercised
    assert m.refusals[Reason.REFUSE_EXPOSURE] > 0 and m.refusals[Reason.REFUSE_CLUSTER] > 0


def test_fills_never_exceed_the_caps_of_the_ceiling():
    """At the fill (position at its fill price, the others at the open's marks): exposure after
    <= 20% x 10,000 (``execute_buy_nb``'s clip)."""
    _, _, _, res, _ = _capped_run()
    tr = np.concatenate([r.trades for r in res])
    buys = tr[tr["side"] == 1]
    assert len(buys) >= 50
    expo = buys["exposure_after"] * buys["equity_after"]
    assert expo.max() <= 0.2 * CEIL * (1 + 1e-9), expo.max()
    assert (buys["qty"] * buys["price"]).max() <= 0.1 * CEIL * (1 + 1e-9)


def test_backtest_equals_the_machine_bit_for_bit_under_the_ceiling():
    inp, params, m, res, _ = _capped_run()
    bt = run_backtest(inp, params, record=True)
    h0 = int(inp.ts[0]) // 3600
    tr = np.concatenate([r.trades for r in res])
    ev = np.concatenate([r.events for r in res])
    eq = np.concatenate([r.equity for r in res])
    for a in (tr, ev, eq):
        a["bar"] -= h0
    assert tr.tobytes() == bt.trades.tobytes() and ev.tobytes() == bt.events.tobytes()
    assert eq.tobytes() == bt.equity.tobytes() and np.array_equal(m.refusals, bt.refusals)
    # the ceiling changed the result: without it the same account commits ten times more
    free = run_backtest(inp, _params(init_cash=CASH, **BIG), record=True)
    b = free.trades[free.trades["side"] == 1]
    assert (b["exposure_after"] * b["equity_after"]).max() > 5 * 0.2 * CEIL


def test_equity_crossing_the_ceiling_both_ways_keeps_parity():
    """An account of 10,000 under a ceiling of 10,000 with large sizes: its equity is above the
    ceiling at some entries and below it at others (both branches of ``cap_base_nb``); the machine
    still equals the backtest bit for bit."""
    inp = _inputs()
    params = _params(init_cash=CEIL, capital_ceiling=CEIL, **{**BIG, "max_exposure": 0.9, "max_cluster_exposure": 0.5})
    bt = run_backtest(inp, params, record=True)
    buys = bt.trades[bt.trades["side"] == 1]
    before = bt.equity["equity"][np.maximum(buys["bar"] - 1, 0)]  # equity at the decision close
    assert (before > CEIL).sum() >= 10 and (before < CEIL).sum() >= 10
    m = RiskMachine(inp.pairs, params)
    res = [m.on_bar(*bar_inputs(inp, t), simulate_fills=True) for t in range(N_BARS)]
    tr = np.concatenate([r.trades for r in res])
    tr["bar"] -= int(inp.ts[0]) // 3600
    assert tr.tobytes() == bt.trades.tobytes()
    assert float(m.state[0]["equity"]) == float(bt.metrics[0]["final_equity"])


# ---- configuration: engine [risk], live config, snapshot


def test_config_key_bounds_and_inf():
    assert config_from_dict({"risk": {"capital_ceiling": 25000}}).risk.capital_ceiling == 25000.0
    c = config_from_dict({"risk": {"capital_ceiling": "inf"}})
    assert c.risk.capital_ceiling == math.inf and c.model_dump(mode="json")["risk"]["capital_ceiling"] == "inf"
    for bad in (0, -1, float("nan"), "25000", True):
        with pytest.raises(ConfigError, match=r"risk\.capital_ceiling"):
            config_from_dict({"risk": {"capital_ceiling": bad}})


def test_live_config_ceiling_reaches_the_machine_params():
    from live_bridge.config import live_config_from_dict
    from live_bridge.cycle import live_params

    raw = {"mode": "paper", "universe": {"pairs": ["BTC/USD", "ETH/USD"]}}
    assert live_config_from_dict(raw).capital_ceiling is None
    lc = live_config_from_dict({**raw, "capital_ceiling": "25000"})
    assert lc.capital_ceiling == Decimal("25000")
    assert live_config_from_dict(raw).digest() != lc.digest()
    cfg = load_config()
    assert live_params(cfg, Decimal("100000"))[0]["capital_ceiling"] == math.inf
    assert live_params(cfg, Decimal("100000"), lc.capital_ceiling)[0]["capital_ceiling"] == 25000.0
    # the lower of the engine config's and the live config's rules
    tight = config_from_dict({"risk": {"capital_ceiling": 5000}})
    assert live_params(tight, Decimal("100000"), lc.capital_ceiling)[0]["capital_ceiling"] == 5000.0
    for bad in ("0", "-5", "NaN", "inf", "lots"):
        with pytest.raises(ConfigError, match="capital_ceiling"):
            live_config_from_dict({**raw, "capital_ceiling": bad})


def _small_machine(**over):
    inp = _inputs()
    m = RiskMachine(inp.pairs, _params(**over))
    for t in range(30):
        m.on_bar(*bar_inputs(inp, t), simulate_fills=True)
    return m


def test_restore_refuses_a_changed_ceiling_naming_it():
    m = _small_machine(capital_ceiling=CEIL)
    blob = m.snapshot()
    assert RiskMachine.restore(blob, _params(capital_ceiling=CEIL), _inputs().pairs).snapshot() == blob
    raised = _params(capital_ceiling=2 * CEIL)
    with pytest.raises(SnapshotError, match=r"from the configuration in capital_ceiling \(10000\.0 -> 20000\.0\)"):
        RiskMachine.restore(blob, raised, _inputs().pairs)
    with pytest.raises(SnapshotError, match=r"capital_ceiling \(10000\.0 -> inf\)"):
        RiskMachine.restore(blob, _params(), _inputs().pairs)


def test_snapshots_of_the_build_before_the_ceiling_are_refused_by_version():
    """A version-2 snapshot (params without capital_ceiling) names the versions, as does a version-3
    one (state without the operator pause, issue 17); the same bytes under the current header name
    the params record."""
    assert M.SNAPSHOT_VERSION >= 5 and "capital_ceiling" in (params_dt.names or ())
    blob = _small_machine().snapshot()
    body = blob[M._HEADER.size :]
    (ml,) = struct.unpack_from("<I", body)
    meta = json.loads(body[4 : 4 + ml])
    data = body[4 + ml :]
    old_dt = np.dtype([(n, params_dt.fields[n][0]) for n in params_dt.names if n != "capital_ceiling"])
    chunks, pos = [], 0
    for entry in meta["arrays"]:
        nb = entry[3]
        part = data[pos : pos + nb]
        if entry[0] == "params":
            p = np.frombuffer(part, dtype=params_dt)
            old = np.zeros(1, dtype=old_dt)
            for n in old_dt.names:
                old[0][n] = p[0][n]
            part = old.tobytes()
            entry[1], entry[3] = np.lib.format.dtype_to_descr(old_dt), len(part)
        chunks.append(part)
        pos += nb
    mj = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
    b2 = struct.pack("<I", len(mj)) + mj + b"".join(chunks)

    def blob_v(v):
        return M._HEADER.pack(M.SNAPSHOT_MAGIC, v, len(b2), hashlib.sha256(b2).digest()) + b2

    for v in (2, 3, 4):
        with pytest.raises(
            SnapshotError, match=rf"^RiskMachine snapshot version {v}; this build reads version {M.SNAPSHOT_VERSION}"
        ):
            RiskMachine.restore(blob_v(v))
    with pytest.raises(SnapshotError, match="record 'params' differs"):
        RiskMachine.restore(blob_v(M.SNAPSHOT_VERSION))


# ---- the daemon: the live config's ceiling rules the portfolio; a changed one stops it


def test_daemon_runs_under_its_ceiling_and_stops_when_it_changes(tmp_path):
    """A paper daemon with ``capital_ceiling = "2000"`` (the account holds 10,000): the ledgered
    snapshots carry 2000.0 as the machine's ceiling; restarted with 3000 under the same ledger, its
    next cycle stops with the one line naming capital_ceiling, and no order reaches the exchange."""
    from tests.live_harness import P0, BundleModel, H, make_daemon, tiny_model_dir
    from tests.test_live_daemon import advance, snapshot_after, start_run

    model = BundleModel(tiny_model_dir())
    run = start_run(tmp_path, model, hours_after=20, capital_ceiling="2000")
    try:
        advance(run, 3)
        last = P0 // H + 2
        m = RiskMachine.restore(snapshot_after(run.ledger, last))
        assert m.params[0]["capital_ceiling"] == 2000.0
        run.daemon.close()
        sent = len(run.add_orders)
        run.daemon = make_daemon(run.sim.url, tmp_path, model, capital_ceiling="3000")
        run.daemon.start()
        with pytest.raises(SnapshotError) as e:
            advance(run, 1, first=P0 + 3 * H)
        assert "capital_ceiling (2000.0 -> 3000.0)" in str(e.value) and "\n" not in str(e.value)
        assert len(run.add_orders) == sent and run.ledger.last_completed_hour() == last
    finally:
        run.close()
