"""Labels read the future, and only bars t .. t+h of it; the last h bars are NaN; costs are optional."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import require_shared
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import FeesConfig, LabelsConfig
from engine.features.labels import forward_log_return_nb, future_labels, future_up_label_nb
from engine.store.panel import FIELDS, Panel, load_shared_panel

FILES = ["binance_BTCUSDT_1h", "binance_ETHUSDT_1h", "binance_SOLUSDT_1h"]
START = 1617235200
END = START + 2000 * 3600


@pytest.fixture(scope="module")
def real():
    require_shared()
    return load_shared_panel(FILES, START, END)


def _ref_forward(c: np.ndarray, h: int) -> np.ndarray:
    n = c.shape[0]
    out = np.full(c.shape, np.nan)
    for t in range(n - h):
        seg = c[t : t + h + 1]
        if np.isfinite(seg).all():
            out[t] = np.log(c[t + h] / c[t])
    return out


def test_forward_returns_equal_reference_and_last_h_bars_are_nan(real):
    c = np.where(real.valid, real.close, np.nan)
    labels = future_labels(real)
    for h in LabelsConfig().horizons:
        fwd = labels[f"fwd_ret_{h}h"]
        assert np.isnan(fwd[-h:]).all()
        for j in range(c.shape[1]):
            # numpy's vectorised log may differ from libm's by 1 ulp on some CPUs (SIMD paths):
            # the reference contract is 1e-9 relative, NaNs in exactly the same places
            np.testing.assert_allclose(fwd[:, j], _ref_forward(c[:, j], h), rtol=1e-12, atol=0.0)
        up = labels[f"future_up_{h}h"]
        ok = np.isfinite(fwd)
        assert np.array_equal(np.isnan(up), ~ok)
        assert np.array_equal(up[ok] == 1.0, fwd[ok] > 0.0)
        assert 0.3 < up[ok].mean() < 0.7


def _perturb(p: Panel, rows: np.ndarray, rng) -> Panel:
    arrs = {f: getattr(p, f).copy() for f in FIELDS}
    for f in ("open", "high", "low", "close"):
        arrs[f][rows] *= np.exp(rng.normal(0, 0.05, size=(rows.size, p.n_pairs)))
    return Panel(p.venue, p.pairs, p.ts, *(arrs[f] for f in FIELDS), p.valid.copy())


@pytest.mark.parametrize("h", [1, 4, 24])
def test_label_at_t_depends_only_on_bars_t_to_t_plus_h(real, h):
    rng = np.random.default_rng(h)
    base = future_labels(real, LabelsConfig(horizons=(h,)))[f"fwd_ret_{h}h"]
    n = real.n_bars
    for t in (100, 777, 1500):
        outside = np.array([i for i in range(n) if i < t or i > t + h])
        other = future_labels(_perturb(real, outside, rng), LabelsConfig(horizons=(h,)))[f"fwd_ret_{h}h"]
        assert other[t].tobytes() == base[t].tobytes()  # past and far future: no effect
        inside = np.array([t + h])
        moved = future_labels(_perturb(real, inside, rng), LabelsConfig(horizons=(h,)))[f"fwd_ret_{h}h"]
        assert not np.array_equal(moved[t], base[t])  # the label does read bar t+h
        # a label at t never reads bars before t: perturbing bars < t changes no label at >= t
        past = future_labels(_perturb(real, np.arange(t), rng), LabelsConfig(horizons=(h,)))[f"fwd_ret_{h}h"]
        assert past[t:].tobytes() == base[t:].tobytes()


def test_labels_are_nan_across_a_hole():
    c = np.array([[100.0], [101.0], [np.nan], [103.0], [104.0], [105.0]])
    f = forward_log_return_nb(c, 2)
    assert np.isnan(f[:3, 0]).all() and np.isnan(f[4:, 0]).all()
    assert f[3, 0] == np.log(105.0 / 103.0)


def test_cost_threshold_option(real):
    fees = FeesConfig()
    cost = fees.round_trip_cost
    assert cost == pytest.approx(2 * 0.004 + 2 * 5e-4)
    plain = future_labels(real, LabelsConfig(horizons=(24,)))
    costly = future_labels(real, LabelsConfig(horizons=(24,)), fees=fees, with_cost=True)
    fwd = plain["fwd_ret_24h"]
    ok = np.isfinite(fwd)
    assert np.array_equal(costly["future_up_24h"][ok] == 1.0, fwd[ok] > cost)
    assert costly["future_up_24h"][ok].sum() < plain["future_up_24h"][ok].sum()
    np.testing.assert_array_equal(
        future_up_label_nb(np.array([[cost], [cost * 1.0001], [np.nan]]), cost)[:, 0], [0.0, 1.0, np.nan]
    )


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(5, 60), st.sampled_from([1, 2, 4, 24]), st.sampled_from([0.0, 0.1, 0.3]))
def test_label_window_property(seed, n, h, gap):
    # hypothesis panels with holes: each forward return reads exactly bars t .. t+h
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, size=(n, 2)), axis=0))
    c[rng.random(c.shape) < gap] = np.nan
    base = forward_log_return_nb(c, h)
    t = int(rng.integers(0, n))
    other = c * np.exp(rng.normal(0, 0.1, size=c.shape))
    other[t : t + h + 1] = c[t : t + h + 1]  # keep only bars t .. t+h
    assert forward_log_return_nb(other, h)[t].tobytes() == base[t].tobytes()
    for j in range(2):
        seg = c[t : t + h + 1, j]
        want = np.log(seg[-1] / seg[0]) if seg.size == h + 1 and np.isfinite(seg).all() else np.nan
        np.testing.assert_allclose(base[t, j], want, rtol=1e-12, atol=0.0)
