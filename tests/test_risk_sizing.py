"""Vol-target sizing under the default config (R1, R2, R3, R4, R5 of docs/RISK_RULES.md), bar by bar
through step_nb on constructed bars whose volatility is known exactly.

Every pair's price is flat at its level (``PRICE``: 250.0 or 0.5, never 1.0, so that a sizing that
forgets to divide the ATR by the close is caught) with a constant range of ``atr_frac x price``, so its
Wilder ATR / close is exactly ``atr_frac`` once the ATR has warmed up: the wanted entry is
``position_size x clamp(vol_target / atr_frac, vol_adj_min, vol_adj_max)`` of equity, times the tier
multiplier. The seed's numbers must bind: tier 1 halves an entry, tier 2 lowers the exposure cap
and the position count, and 10 positions of 2% fill the 20% exposure cap at once.
"""

from __future__ import annotations

import numpy as np
import pytest
from risk_harness import StepHarness

from engine.backtest.runner import default_atr
from engine.config import config_from_dict, load_config
from engine.errors import ConfigError
from engine.risk.enums import SIZING_RISK, SIZING_VOL_TARGET, EventCode, Reason, TradingState
from engine.risk.params import params_from_config

PAIRS = (
    "BTC/USD",
    "ETH/USD",
    "SOL/USD",
    "XRP/USD",
    "ADA/USD",
    "LTC/USD",
    "DOT/USD",
    "LINK/USD",
    "AVAX/USD",
    "DOGE/USD",
)
# flat price level per pair: 250.0 where Kraken's ordermin allows a 1% entry in few units, else 0.5
PRICE = np.array([250.0, 0.5, 250.0, 0.5, 0.5, 250.0, 0.5, 250.0, 250.0, 0.5])
N = 60
WARM = 40  # bars stepped without signals (the 14-bar Wilder ATR settles on the constant range)


class Sim(StepHarness):
    """step_nb bar by bar on flat bars at ``PRICE``; ``atr_frac[j]`` is pair j's ATR / close (its
    high - low as a fraction of the close)."""

    def __init__(self, atr_frac, **overrides):
        self.cfg = load_config()
        self.params = params_from_config(self.cfg, **overrides)
        m = len(PAIRS)
        af = np.broadcast_to(np.asarray(atr_frac, dtype=np.float64), (m,))
        self.c = np.tile(PRICE, (N, 1))
        self.o = self.c.copy()
        self.h = self.c * (1.0 + af / 2.0)
        self.l = self.c * (1.0 - af / 2.0)
        self.v = np.full((N, m), 1e9)
        self.valid = np.ones((N, m), dtype=np.bool_)
        self.atr = default_atr(self.h, self.l, self.c, self.cfg.features.atr_window)
        self.spread = np.full((N, m), 0.001)
        self.p_up = np.full((N, m), np.nan)
        self.exp_ret = np.full((N, m), 0.05)
        self.cluster = np.tile(np.arange(m, dtype=np.int64), (N, 1))  # every pair its own cluster
        self.init_books(PAIRS)
        self.step(WARM)
        assert np.allclose(self.atr[WARM - 1], af * PRICE, rtol=1e-9)  # ATR in price units
        assert np.allclose(self.atr[WARM - 1] / self.c[WARM - 1], af, rtol=1e-9)

    def hold(self, j, frac):
        """A position in pair j worth ``frac`` of equity (no stop, no take-profit)."""
        px = self.c[self.t - 1, j]
        q = frac * self.st["equity"] / px
        self.pos[j]["qty"], self.pos[j]["entry_price"], self.pos[j]["entry_cost"] = q, px, q * px
        self.pos[j]["entry_bar"], self.pos[j]["stop"], self.pos[j]["take_profit"] = self.t - 1, np.nan, np.nan
        self.st["cash"] -= q * px
        self.st["n_positions"] += 1

    def decide(self, pairs, dd=None):
        """Signal ``pairs`` at bar WARM (optionally at drawdown ``dd``): (wanted notional / equity per
        pair, refusal reasons by pair)."""
        if dd is not None:
            self.set_drawdown(dd)
        self.p_up[self.t, list(pairs)] = 0.9
        self.step(self.t + 1)
        eq = self.st["equity"]  # the equity the decision at bar t sized against
        t = self.t - 1
        ev = self.events[: self.cnt[1]]
        refused = {
            int(e["pair"]): Reason(int(e["reason"])) for e in ev if e["bar"] == t and e["code"] == EventCode.REFUSAL
        }
        size = {j: self.pend[j]["qty"] * self.c[t, j] / eq for j in pairs if self.pend[j]["active"]}
        return size, refused


def test_default_is_vol_target_two_percent_at_the_target_volatility():
    cfg = load_config()
    assert cfg.risk.sizing == "vol_target" and cfg.risk.position_size == 0.02
    assert params_from_config(cfg)[0]["sizing"] == SIZING_VOL_TARGET
    s = Sim(cfg.risk.vol_target)
    size, refused = s.decide([0])
    assert not refused
    assert size[0] == pytest.approx(0.02, rel=1e-6)


def test_vol_adjustment_and_its_clamp_at_both_ends():
    vt = load_config().risk.vol_target
    # adjustment vol_target / (ATR/close): 4 -> clamped to 2; 1.5; 0.75; 0.25 -> clamped to 0.5
    af = np.full(len(PAIRS), vt)
    af[:4] = (vt / 4.0, vt / 1.5, vt / 0.75, vt / 0.25)
    s = Sim(af)
    size, refused = s.decide([0, 1, 2, 3])
    assert not refused
    assert size[0] == pytest.approx(0.02 * 2.0, rel=1e-6)  # upper clamp: 4% of equity, not 8%
    assert size[1] == pytest.approx(0.02 * 1.5, rel=1e-6)
    assert size[2] == pytest.approx(0.02 * 0.75, rel=1e-6)
    assert size[3] == pytest.approx(0.02 * 0.5, rel=1e-6)  # lower clamp: 1% of equity, not 0.5%
    # a configured clamp is the one applied
    s = Sim(af, vol_adj_min=0.2, vol_adj_max=3.0)
    size, _ = s.decide([0, 3])
    assert size[0] == pytest.approx(0.02 * 3.0, rel=1e-6) and size[3] == pytest.approx(0.02 * 0.25, rel=1e-6)


@pytest.mark.parametrize("adj", [1.0, 2.0, 0.5])  # inside the clamp, and clamped at each end
def test_tier1_halves_an_entry(adj):
    vt = load_config().risk.vol_target
    af = vt / (4.0 if adj == 2.0 else 0.25 if adj == 0.5 else 1.0)
    size0, _ = Sim(af).decide([0], dd=0.0)
    s = Sim(af)
    size1, refused = s.decide([0], dd=0.11)
    assert s.st["trading_state"] == TradingState.REDUCING_1 and not refused
    assert size0[0] == pytest.approx(0.02 * adj, rel=1e-6)
    assert size1[0] == pytest.approx(0.5 * size0[0], rel=1e-6)  # tier1_risk_mult = 0.5


def test_tier2_lowers_the_exposure_cap():
    vt = load_config().risk.vol_target
    for dd, state, refusal in (
        (0.0, TradingState.ACTIVE, None),
        (0.16, TradingState.REDUCING_2, Reason.REFUSE_EXPOSURE),
    ):
        s = Sim(vt)
        for j in (1, 2, 3):
            s.hold(j, 0.035)  # 10.5% in 3 positions: inside 20%, above the tier-2 cap of 10%
        size, refused = s.decide([0], dd=dd)
        assert s.st["trading_state"] == state
        if refusal is None:
            assert size[0] == pytest.approx(0.02, rel=1e-6) and not refused
        else:
            assert refused == {0: refusal} and not size


def test_tier2_lowers_the_position_count():
    vt = load_config().risk.vol_target
    for dd, n_new in ((0.0, 5), (0.16, 0)):
        s = Sim(vt)
        for j in range(5):
            s.hold(j, 0.01)  # 5 positions, 5%: the exposure cap binds in neither state
        size, refused = s.decide(range(5, 10), dd=dd)
        assert len(size) == n_new
        assert refused == {j: Reason.REFUSE_MAX_POSITIONS for j in range(5, 10)} if n_new == 0 else not refused
    # from a flat book at tier 2: 5 entries (of 1%: tier 2 keeps tier 1's cut), the rest refused
    s = Sim(vt)
    size, refused = s.decide(range(10), dd=0.16)
    assert len(size) == 5 and all(v == pytest.approx(0.01, rel=1e-6) for v in size.values())
    assert refused == {j: Reason.REFUSE_MAX_POSITIONS for j in range(5, 10)}


def test_ten_positions_open_at_once_under_the_default_config():
    cfg = load_config()
    assert (cfg.risk.max_positions, cfg.risk.max_exposure) == (10, 0.20)
    s = Sim(cfg.risk.vol_target)
    size, refused = s.decide(range(10))
    assert not refused and len(size) == 10
    assert sum(size.values()) == pytest.approx(0.20, rel=1e-3)
    s.step(s.t + 1)  # the orders fill in the next bar
    assert s.st["n_positions"] == 10 and np.count_nonzero(s.pos["qty"]) == 10
    assert s.st["exposure"] / s.st["equity"] == pytest.approx(0.20, rel=0.01)
    assert s.st["exposure"] / s.st["equity"] <= 0.20 * (1.0 + 1e-9)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("sizing", "kelly", "risk.sizing"),
        ("position_size", 0.5, "risk.position_size"),
        ("vol_target", 0.0, "risk.vol_target"),
        ("vol_adj_min", 1.5, "risk.vol_adj_min"),
        ("vol_adj_max", 0.5, "risk.vol_adj_max"),
    ],
)
def test_bad_sizing_values_name_the_key(key, value, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        config_from_dict({"risk": {key: value}})


def test_atr_risk_sizing_stays_a_config_option():
    cfg = config_from_dict({"risk": {"sizing": "risk"}})
    assert params_from_config(cfg)[0]["sizing"] == SIZING_RISK
    # 2% risked at a 2-ATR stop: notional = 0.02 / (2 x ATR/close) of equity, clipped by the 10% cluster cap
    s = Sim(0.2, sizing=SIZING_RISK)
    size, refused = s.decide([0])
    assert size[0] == pytest.approx(0.05, rel=1e-6) and not refused
    s = Sim(0.05, sizing=SIZING_RISK)
    size, _ = s.decide([0])
    assert size[0] == pytest.approx(0.10, rel=1e-6)
