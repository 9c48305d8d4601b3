"""Purged walk-forward and CPCV splitters: leakage rules, coverage, determinism, no lookahead."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from engine.errors import InputError
from research.folds import CombinatorialPurgedCV, PurgedWalkForward, bar_times, check_purge
from tests.conftest import require_shared

H = 3600
T0 = 1_600_000_000 // H * H
HORIZON = 24  # the longest label horizon (24h)


def grid(n: int, t0: int = T0) -> np.ndarray:
    return t0 + np.arange(n, dtype=np.int64) * H


def long_times(bar_ts: np.ndarray, n_pairs: int, seed: int = 0, drop: float = 0.0) -> np.ndarray:
    """Row times of a shuffled (bar, pair) long frame; ``drop`` removes that share of rows."""
    rng = np.random.default_rng(seed)
    t = np.repeat(bar_ts, n_pairs)
    if drop:
        t = t[rng.random(t.size) >= drop]
    return t[rng.permutation(t.size)]


def check_wf(times: np.ndarray, cv: PurgedWalkForward, purge: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Invariants every walk-forward split must satisfy; returns the folds."""
    folds = list(cv.split(np.zeros((times.size, 1)), groups=times))
    assert len(folds) == cv.get_n_splits(groups=times) >= 2
    tested = Counter()
    prev_test_end = None
    for tr, te in folds:
        assert tr.dtype == np.int64 and te.dtype == np.int64
        assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)  # sorted, unique
        assert te.size > 0 and tr.size > 0
        assert np.intersect1d(tr, te).size == 0
        ttr, tte = times[tr], times[te]
        # rows of one bar never split: no bar time on both sides, and every row of a test bar is in test
        assert np.intersect1d(ttr, tte).size == 0
        assert te.size == np.isin(times, np.unique(tte)).sum()
        assert tr.size == np.isin(times, np.unique(ttr)).sum()
        # purge: at least `purge` whole bars between the last training bar and the first test bar
        assert tte.min() - ttr.max() >= (purge + 1) * H
        assert ttr.max() < tte.min()  # walk-forward: train precedes test
        if prev_test_end is not None:
            assert tte.min() > prev_test_end  # test blocks walk forward
        prev_test_end = tte.max()
        tested.update(np.unique(tte).tolist())
    assert max(tested.values()) == 1  # no bar tested twice
    return folds


# ---------------------------------------------------------------------------------------------
# walk-forward


def test_rolling_sizes_purge_and_full_coverage():
    n, train, test, purge = 1000, 300, 100, HORIZON
    times = grid(n)
    cv = PurgedWalkForward(train, test, purge)
    folds = check_wf(times, cv, purge)
    # default start: first test bar = train + purge; blocks tile every later bar exactly once
    first = train + purge
    assert len(folds) == math.ceil((n - first) / test) == 7
    all_test = np.concatenate([te for _, te in folds])
    assert np.array_equal(np.sort(all_test), np.arange(first, n))
    for k, (tr, te) in enumerate(folds):
        s = first + k * test
        assert np.array_equal(te, np.arange(s, min(s + test, n)))
        assert np.array_equal(tr, np.arange(s - purge - train, s - purge))  # rolling: constant size
    assert folds[-1][1].size == (n - first) % test == 76  # the last block is cut at the last bar


def test_expanding_windows_grow_from_first_bar():
    n, train, test, purge = 900, 200, 120, HORIZON
    times = grid(n)
    roll = list(PurgedWalkForward(train, test, purge).split(times, groups=times))
    exp = list(PurgedWalkForward(train, test, purge, expanding=True).split(times, groups=times))
    assert len(roll) == len(exp)
    for k, ((tr_r, te_r), (tr_e, te_e)) in enumerate(zip(roll, exp)):
        assert np.array_equal(te_r, te_e)
        assert tr_r.size == train
        assert tr_e[0] == 0 and tr_e.size == train + k * test
        assert tr_e[-1] == tr_r[-1] == te_e[0] - purge - 1


def test_step_and_start_and_min_train():
    times = grid(600)
    cv = PurgedWalkForward(100, 50, HORIZON, step_bars=80, start=int(times[200]))
    folds = check_wf(times, cv, HORIZON)
    starts = [te[0] for _, te in folds]
    assert starts == list(range(200, 600, 80))
    # start early: first folds have truncated windows; min_train_bars drops the short ones
    early = PurgedWalkForward(100, 50, HORIZON, start=int(times[40]))
    tr0 = next(iter(early.split(times, groups=times)))[0]
    assert np.array_equal(tr0, np.arange(0, 40 - HORIZON))
    strict = PurgedWalkForward(100, 50, HORIZON, start=int(times[40]), min_train_bars=100)
    assert all(tr.size >= 100 for tr, _ in strict.split(times, groups=times))
    assert strict.get_n_splits(groups=times) < early.get_n_splits(groups=times)


def test_embargo_drops_bars_after_earlier_test_blocks():
    n, train, test, purge, emb = 1200, 400, 100, HORIZON, 12
    times = grid(n)
    cv = PurgedWalkForward(train, test, purge, embargo_bars=emb)
    plain = list(PurgedWalkForward(train, test, purge).split(times, groups=times))
    folds = check_wf(times, cv, purge)
    test_ends = [te[-1] for _, te in folds]
    for k, ((tr, te), (tr0, te0)) in enumerate(zip(folds, plain)):
        assert np.array_equal(te, te0)
        banned = set()
        for e in test_ends[:k]:
            banned.update(range(e + 1, e + emb + 1))
        # exactly the embargoed bars of earlier blocks are missing from the rolling window
        assert set(tr.tolist()) == set(tr0.tolist()) - banned
        assert not banned.intersection(tr.tolist())
    assert any(len(tr) < train for tr, _ in folds)  # the embargo did bite somewhere
    table = cv.folds_table(times)
    assert sum(len(r["embargoed"]) for r in table) > 0
    for r, (tr, _) in zip(table, folds):
        for a, b in r["embargoed"]:
            assert not np.any((times[tr] >= a) & (times[tr] <= b))


def test_long_frame_rows_of_one_bar_stay_together_and_unsorted_rows():
    bars = grid(700)
    times = long_times(bars, n_pairs=4, seed=3, drop=0.1)
    X = pd.DataFrame({"ts": times, "f": np.arange(times.size, dtype=float)})
    cv = PurgedWalkForward(200, 60, HORIZON, embargo_bars=6, expanding=True)
    folds = check_wf(times, cv, HORIZON)
    # the frame's ts column is used when groups is not given; times= is the same as groups=
    via_col = list(cv.split(X))
    via_kw = list(cv.split(X, times=times))
    for (a, b), (c, d), (e, f) in zip(folds, via_col, via_kw):
        assert np.array_equal(a, c) and np.array_equal(b, d)
        assert np.array_equal(a, e) and np.array_equal(b, f)


def test_folds_table_matches_split_and_is_json():
    times = long_times(grid(800), n_pairs=3, seed=1, drop=0.05)
    cv = PurgedWalkForward(240, 96, HORIZON, embargo_bars=24)
    table = cv.folds_table(times)
    folds = list(cv.split(times, groups=times))
    assert len(table) == len(folds)
    json.dumps(table)
    for k, (r, (tr, te)) in enumerate(zip(table, folds)):
        assert r["fold"] == k
        assert (r["train_start"], r["train_end"]) == (times[tr].min(), times[tr].max())
        assert (r["test_start"], r["test_end"]) == (times[te].min(), times[te].max())
        assert r["n_train_bars"] == np.unique(times[tr]).size
        assert r["n_test_bars"] == np.unique(times[te]).size
        assert r["purge_bars"] == HORIZON and r["embargo_bars"] == 24
        assert r["test_start"] - r["train_end"] >= (HORIZON + 1) * H


def test_real_btcusdt_timestamps_with_gaps():
    require_shared()
    from engine.store.panel import load_shared_panel

    p = load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"])
    long = p.to_long()  # valid (bar, pair) rows only: real exchange outages are missing hours
    times = long["ts"].to_numpy()
    assert np.unique(times).size < p.n_bars  # the data really has gaps
    cv = PurgedWalkForward(24 * 365, 24 * 90, HORIZON, embargo_bars=HORIZON)
    folds = check_wf(times, cv, HORIZON)
    assert len(folds) >= 20
    # every valid bar from the first test bar on is tested exactly once
    first = int(p.ts[0]) + (24 * 365 + HORIZON) * H
    expected = np.unique(times[times >= first])
    got = np.concatenate([np.unique(times[te]) for _, te in folds])
    assert np.array_equal(np.sort(got), expected)
    # a gap keeps its place on the clock: the purge is 24 hours even when bars are missing
    table = cv.folds_table(times)
    for r in table:
        assert r["test_start"] - r["train_end"] >= (HORIZON + 1) * H
        assert r["n_test_bars"] <= 24 * 90
    assert min(r["n_test_bars"] for r in table[:-1]) < 24 * 90  # some block holds an outage
    # CPCV on the same real times
    cp = CombinatorialPurgedCV(8, 2, HORIZON, HORIZON)
    check_cpcv(times, cp)


def test_no_lookahead_future_bars_do_not_move_a_fold():
    rng = np.random.default_rng(5)
    bars = grid(1500)
    times = long_times(bars, n_pairs=2, seed=5, drop=0.05)
    order = np.argsort(times, kind="stable")
    times = times[order]  # appended data goes to the end, as in a growing store
    cv = PurgedWalkForward(300, 100, HORIZON, embargo_bars=10)
    full = list(cv.split(times, groups=times))
    for k in range(1, len(full)):
        tr, te = full[k]
        end = times[te].max()
        cut = times <= end
        # (a) data truncated right after fold k's test end
        trunc = list(cv.split(times[cut], groups=times[cut]))
        assert np.array_equal(trunc[k][0], tr) and np.array_equal(trunc[k][1], te)
        # (b) future bars perturbed: some dropped (outages), others shifted by whole hours
        fut = times[~cut]
        keep = rng.random(fut.size) > 0.3
        fut = np.sort(fut[keep] + H * rng.integers(0, 3, keep.sum()))
        pert = np.concatenate([times[cut], fut])
        again = list(cv.split(pert, groups=pert))
        assert np.array_equal(again[k][0], tr) and np.array_equal(again[k][1], te)
        # (c) the feature values of later rows do not matter (the splitter reads times only)
        X = rng.normal(size=(pert.size, 2))
        X[cut.sum() :] = 1e9  # rows after the fold's test end
        third = list(cv.split(X, groups=pert))
        assert np.array_equal(third[k][0], tr)


def test_determinism():
    times = long_times(grid(900), n_pairs=3, seed=9, drop=0.1)
    for cv in (PurgedWalkForward(200, 80, HORIZON, embargo_bars=5), CombinatorialPurgedCV(6, 2, HORIZON, 5)):
        a = list(cv.split(times, groups=times))
        b = list(type(cv)(**cv.get_params()).split(times.copy(), groups=times.copy()))
        assert len(a) == len(b)
        for (x1, y1), (x2, y2) in zip(a, b):
            assert np.array_equal(x1, x2) and np.array_equal(y1, y2)


def test_sklearn_interface():
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    cv = PurgedWalkForward(100, 50, HORIZON, embargo_bars=2)
    assert cv.get_params() == {
        "train_bars": 100,
        "test_bars": 50,
        "purge_bars": HORIZON,
        "embargo_bars": 2,
        "expanding": False,
        "min_train_bars": None,
        "step_bars": None,
        "start": None,
    }
    assert repr(cv).startswith("PurgedWalkForward(train_bars=100, test_bars=50, purge_bars=24")
    c2 = clone(cv)
    assert c2.get_params() == cv.get_params() and c2 is not cv
    cv.set_params(expanding=True)
    assert cv.expanding is True
    with pytest.raises(InputError, match="unknown parameter"):
        cv.set_params(nope=1)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    y = (X[:, 0] + 0.1 * rng.normal(size=400) > 0).astype(int)
    times = grid(400)
    scores = cross_val_score(LogisticRegression(), X, y, groups=times, cv=cv)
    assert len(scores) == cv.get_n_splits(X, groups=times) and scores.min() > 0.8
    # one row per bar without times: row i is bar i
    assert [len(te) for _, te in cv.split(X)] == [len(te) for _, te in cv.split(X, groups=times)]
    cp = CombinatorialPurgedCV(5, 2, 3)
    assert repr(cp) == "CombinatorialPurgedCV(n_groups=5, n_test_groups=2, purge_bars=3, embargo_bars=0)"
    assert cp.get_n_splits() == 10 and cp.get_n_paths() == 4
    # datetimes are accepted as bar times
    dt = pd.to_datetime(times, unit="s", utc=True)
    assert np.array_equal(bar_times(dt), times)
    assert np.array_equal(bar_times(times.astype("datetime64[s]")), times)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(train_bars=-1, test_bars=10, purge_bars=24), "train_bars must be >= 1"),
        (dict(train_bars=10, test_bars=0, purge_bars=24), "test_bars must be >= 1"),
        (dict(train_bars=10, test_bars=10, purge_bars=-2), "purge_bars must be >= 0"),
        (dict(train_bars=10, test_bars=10, purge_bars=2, embargo_bars=-1), "embargo_bars must be >= 0"),
        (dict(train_bars=10.5, test_bars=10, purge_bars=2), "integer"),
        (dict(train_bars=True, test_bars=10, purge_bars=2), "integer"),
        (dict(train_bars=10, test_bars=10, purge_bars=2, step_bars=5), "test blocks would overlap"),
        (dict(train_bars=10, test_bars=10, purge_bars=2, min_train_bars=0), "min_train_bars"),
        (dict(train_bars=10, test_bars=10, purge_bars=2, expanding="yes"), "expanding"),
        (dict(train_bars=10, test_bars=10, purge_bars=2, start=T0 + 1), "hourly grid"),
        (dict(train_bars=10, test_bars=10, purge_bars=2, start=T0 + 10**7 * H), "after the last bar"),
        (dict(train_bars=100, test_bars=150, purge_bars=24), "one fold needs"),
        (dict(train_bars=126, test_bars=100, purge_bars=24), "at least 2"),
    ],
)
def test_bad_walk_forward_parameters(kwargs, match):
    times = grid(250)
    cv = PurgedWalkForward(**kwargs)  # __init__ only stores
    with pytest.raises(InputError, match=match):
        list(cv.split(times, groups=times))


def test_bad_times_and_purge_check():
    cv = PurgedWalkForward(10, 10, 2)
    with pytest.raises(InputError, match="hourly grid"):
        list(cv.split(np.zeros(100), groups=grid(100) + 60))
    with pytest.raises(InputError, match="rows but X has"):
        list(cv.split(np.zeros(99), groups=grid(100)))
    with pytest.raises(InputError, match="not both"):
        list(cv.split(np.zeros(100), groups=grid(100), times=grid(100)))
    with pytest.raises(InputError, match="NaN"):
        list(cv.split(np.zeros(3), groups=np.array([0.0, np.nan, 3600.0])))
    with pytest.raises(InputError, match="needs the data"):
        cv.get_n_splits()
    with pytest.raises(InputError, match="longest label horizon"):
        check_purge(4, [1, 4, 24])
    check_purge(24, [1, 4, 24])
    for kw, match in [
        (dict(n_groups=1, n_test_groups=1, purge_bars=0), "n_groups must be >= 2"),
        (dict(n_groups=4, n_test_groups=4, purge_bars=0), "smaller than n_groups"),
        (dict(n_groups=4, n_test_groups=0, purge_bars=0), "n_test_groups must be >= 1"),
        (dict(n_groups=4, n_test_groups=1, purge_bars=-1), "purge_bars"),
        (dict(n_groups=50, n_test_groups=1, purge_bars=0), "only 40 bars"),
        (dict(n_groups=4, n_test_groups=3, purge_bars=20), "no training bars"),
    ]:
        with pytest.raises(InputError, match=match):
            list(CombinatorialPurgedCV(**kw).split(np.zeros(40), groups=grid(40)))


# ---------------------------------------------------------------------------------------------
# CPCV


def check_cpcv(times: np.ndarray, cv: CombinatorialPurgedCV) -> None:
    n, k = cv.n_groups, cv.n_test_groups
    purge, emb = cv.purge_bars, cv.embargo_bars
    folds = list(cv.split(times, groups=times))
    combos = cv.combinations()
    assert len(folds) == len(combos) == math.comb(n, k) == cv.get_n_splits()
    rg = cv.row_groups(groups=times)
    table = cv.groups_table(times)
    assert [r["group"] for r in table] == list(range(n))
    sizes = [r["n_bars"] for r in table]
    assert max(sizes) - min(sizes) <= 1  # groups of (nearly) equal bar counts
    for r in table:
        assert np.all(rg[(times >= r["start"]) & (times <= r["end"])] == r["group"])
    tested = Counter()
    for (tr, te), c in zip(folds, combos):
        assert np.intersect1d(tr, te).size == 0
        assert np.array_equal(te, np.flatnonzero(np.isin(rg, c)))  # test = exactly its groups
        assert np.intersect1d(times[tr], times[te]).size == 0  # bars never split
        ttr = times[tr]
        for g in c:
            lo, hi = table[g]["start"], table[g]["end"]
            # purge before, purge + embargo after each test group
            assert not np.any((ttr >= lo - purge * H) & (ttr < lo))
            assert not np.any((ttr > hi) & (ttr <= hi + (purge + emb) * H))
        # nothing else is dropped: train = all rows not in test and not in those gaps
        dropped = np.zeros(times.size, dtype=bool)
        for g in c:
            lo, hi = table[g]["start"], table[g]["end"]
            dropped |= (times >= lo - purge * H) & (times <= hi + (purge + emb) * H)
        assert np.array_equal(tr, np.flatnonzero(~dropped))
        tested.update(c)
    # each group is tested in C(N-1, k-1) splits
    assert all(tested[g] == math.comb(n - 1, k - 1) for g in range(n))
    paths = cv.paths()
    assert paths.shape == (math.comb(n - 1, k - 1), n)
    for p in range(paths.shape[0]):
        for g in range(n):
            assert g in combos[paths[p, g]]  # the split that fills (p, g) really tests g
    # every (split, group) test prediction is used by exactly one path
    used = Counter((int(paths[p, g]), g) for p in range(paths.shape[0]) for g in range(n))
    assert set(used) == {(i, g) for i, c in enumerate(combos) for g in c}
    assert max(used.values()) == 1


@pytest.mark.parametrize("n, k, purge, emb", [(6, 2, HORIZON, 6), (5, 1, HORIZON, 0), (7, 3, 4, 4)])
def test_cpcv_groups_purge_embargo_paths(n, k, purge, emb):
    times = long_times(grid(1400), n_pairs=3, seed=n, drop=0.1)
    check_cpcv(times, CombinatorialPurgedCV(n, k, purge, emb))


# ---------------------------------------------------------------------------------------------
# property tests


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_bars=hst.integers(60, 500),
    train=hst.integers(5, 150),
    test=hst.integers(1, 80),
    purge=hst.integers(0, 30),
    emb=hst.integers(0, 20),
    expanding=hst.booleans(),
    extra_step=hst.integers(0, 10),
    n_pairs=hst.integers(1, 3),
    drop=hst.floats(0, 0.4),
    seed=hst.integers(0, 10**6),
)
def test_walk_forward_properties(n_bars, train, test, purge, emb, expanding, extra_step, n_pairs, drop, seed):
    times = long_times(grid(n_bars), n_pairs, seed, drop)
    if times.size == 0:
        return
    cv = PurgedWalkForward(train, test, purge, emb, expanding, step_bars=test + extra_step)
    try:
        n = cv.get_n_splits(groups=times)
    except InputError as exc:
        # refused only when fewer than two folds fit
        assert "at least 2" in str(exc) or "one fold needs" in str(exc)
        return
    folds = check_wf(times, cv, purge)
    assert len(folds) == n
    t0 = times.min()
    for tr, te in folds:
        ttr, tte = times[tr], times[te]
        assert tte.max() - tte.min() <= (test - 1) * H
        if expanding:
            assert ttr.min() == t0  # anchored at the first bar
        else:
            assert ttr.max() - ttr.min() <= (train - 1) * H  # rolling window length


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_bars=hst.integers(80, 400),
    n=hst.integers(2, 7),
    k=hst.integers(1, 3),
    purge=hst.integers(0, 6),
    emb=hst.integers(0, 4),
    n_pairs=hst.integers(1, 2),
    seed=hst.integers(0, 10**6),
)
def test_cpcv_properties(n_bars, n, k, purge, emb, n_pairs, seed):
    if k >= n:
        return
    times = long_times(grid(n_bars), n_pairs, seed, drop=0.1)
    check_cpcv(times, CombinatorialPurgedCV(n, k, purge, emb))


@pytest.mark.parametrize("n, k, purge, emb", [(6, 2, 5, 3), (5, 3, 0, 0), (8, 2, 24, 24)])
def test_cpcv_matches_skfolio(n, k, purge, emb):
    """Independent implementation: skfolio's CombinatorialPurgedCV (same purge-before, purge +
    embargo-after rule) on one row per bar with a size its fold rule splits like ours."""
    from skfolio.model_selection import CombinatorialPurgedCV as SkCPCV

    times = grid(120 * n)
    ours = CombinatorialPurgedCV(n, k, purge, emb)
    ref = SkCPCV(n_folds=n, n_test_folds=k, purged_size=purge, embargo_size=emb)
    X = np.zeros((times.size, 1))
    got = list(ours.split(X, groups=times))
    exp = list(ref.split(X))
    assert len(got) == len(exp) == ref.get_n_splits()
    for (tr, te), (tr_ref, te_ref) in zip(got, exp):
        assert np.array_equal(tr, tr_ref)
        assert np.array_equal(te, np.sort(np.concatenate(te_ref)))
    assert ours.get_n_paths() == ref.n_test_paths
    assert np.array_equal(ours.paths().T, ref.recombined_paths)
