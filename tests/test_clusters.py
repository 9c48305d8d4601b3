"""Correlation matrix and correlation clusters: exact, causal, deterministic labels."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from conftest import require_shared

from engine.features import nb
from engine.paths import REPO_ROOT
from engine.store.panel import load_shared_panel

sys.path.insert(0, str(REPO_ROOT))
from benchmarks import feature_reference as ref

BINANCE10 = [f"binance_{s}USDT_1h" for s in ["BTC", "ETH", "SOL", "XRP", "ADA", "LTC", "DOT", "LINK", "AVAX", "DOGE"]]
START = 1640995200  # 2022-01-01 .. +1,800 bars


@pytest.fixture(scope="module")
def rets():
    require_shared()
    p = load_shared_panel(BINANCE10, START, START + 1800 * 3600)
    c = np.where(p.valid, p.close, np.nan)
    return p, nb.log_return_nb(c, 1)


def _factor_returns(n=400, seed=0):
    """Columns 0, 2, 4 follow factor A, 1 and 5 factor B, 3 is alone."""
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=n), rng.normal(size=n)
    noise = rng.normal(size=(n, 6)) * 0.3
    r = noise.copy()
    for j in (0, 2, 4):
        r[:, j] += a
    for j in (1, 5):
        r[:, j] += b
    r[:, 3] = rng.normal(size=n)
    return r


def test_clusters_recover_a_known_structure_with_ordered_labels():
    r = _factor_returns()
    lab = nb.average_linkage_labels_nb(nb.corr_matrix_nb(r, r.shape[0] - 1, 300, 200), np.ones(6, np.bool_), 0.7)
    assert lab.tolist() == [0, 1, 0, 2, 0, 1]  # labels in order of each cluster's lowest column


def test_column_order_changes_only_the_label_names():
    r = _factor_returns(seed=1)
    perm = np.array([3, 5, 1, 0, 4, 2])
    lab = nb.average_linkage_labels_nb(nb.corr_matrix_nb(r, 399, 300, 200), np.ones(6, np.bool_), 0.7)
    lp = nb.average_linkage_labels_nb(
        nb.corr_matrix_nb(np.ascontiguousarray(r[:, perm]), 399, 300, 200), np.ones(6, np.bool_), 0.7
    )
    part = {frozenset(np.flatnonzero(lab == k)) for k in set(lab)}
    part_p = {frozenset(perm[np.flatnonzero(lp == k)]) for k in set(lp)}
    assert part == part_p
    assert lp[0] == 0  # the first column always gets label 0


def test_ineligible_pairs_get_minus_one():
    r = _factor_returns()
    elig = np.array([True, True, False, True, True, True])
    lab = nb.average_linkage_labels_nb(nb.corr_matrix_nb(r, 399, 300, 200), elig, 0.7)
    assert lab[2] == -1 and lab[0] == 0 and lab[4] == 0


def test_corr_matrix_equals_pandas_pairwise_on_real_data(rets):
    p, r = rets
    assert np.isnan(r).any()  # real gaps in the window
    for t in (900, 1400, 1799):
        got = nb.corr_matrix_nb(r, t, 720, 600)
        want = pd.DataFrame(r[t - 719 : t + 1]).corr(min_periods=600).to_numpy()
        np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize("threshold,every", [(0.5, 24), (0.7, 24), (0.8, 24), (0.7, 25)])
def test_clusters_equal_scipy_average_linkage_on_real_data(rets, threshold, every):
    # every=24 divides the 720-bar window (block sums); every=25 does not (two-pass per refresh)
    p, r = rets
    member = np.ones(r.shape, np.bool_)
    member[:, 8] = p.ts % (7 * 86400) < 3 * 86400  # a pair that leaves/joins the universe
    got = nb.corr_clusters_nb(r, p.ts // 3600, member, 720, 600, every, threshold)
    want = ref.clusters(r, p.ts, member, 720, 600, every, threshold)
    np.testing.assert_array_equal(got, want)
    assert (got >= 0).any() and (got[:, 8] == -1).any()


def test_clusters_refresh_only_at_anchored_hours_and_are_causal(rets):
    p, r = rets
    hour = p.ts // 3600
    member = np.ones(r.shape, np.bool_)
    got = nb.corr_clusters_nb(r, hour, member, 720, 600, 24, 0.7)
    change = np.flatnonzero((got[1:] != got[:-1]).any(axis=1)) + 1
    assert change.size >= 3 and np.all(hour[change] % 24 == 0)
    assert len(np.unique(got[got >= 0])) >= 2
    t = 1500
    r2 = r.copy()
    r2[t + 1 :] = np.random.default_rng(0).normal(size=r2[t + 1 :].shape)
    assert np.array_equal(nb.corr_clusters_nb(r2, hour, member, 720, 600, 24, 0.7)[: t + 1], got[: t + 1])
    again = nb.corr_clusters_nb(r, hour, member, 720, 600, 24, 0.7)
    assert again.tobytes() == got.tobytes()
