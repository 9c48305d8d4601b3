"""Numba index kernels behind :mod:`research.folds`.

Everything here works on *bar indices* of a contiguous hourly grid: bar ``b`` is the hour
``t0 + b * 3600`` where ``t0`` is the earliest bar time of the data. Ranges are inclusive
``[lo, hi]``; an empty range has ``hi < lo``. The Python wrappers in ``research/folds.py`` turn
times into bar indices, validate parameters and turn masks into row indices.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True)
def wf_bounds_nb(n_bars, first_test, train_bars, test_bars, step, purge, expanding):
    """Candidate walk-forward folds as an (k, 4) int64 array ``[train_lo, train_hi, test_lo, test_hi]``.

    Test blocks start at ``first_test, first_test + step, ...`` while the start is a bar of the
    data; each holds ``test_bars`` bars (the last one is cut at the last bar). Training ends
    ``purge`` bars before the test block (``train_hi = test_lo - purge - 1``) and starts
    ``train_bars`` bars earlier (rolling) or at bar 0 (expanding), clipped at bar 0. A fold whose
    ``train_hi < 0`` has an empty training window (``train_lo > train_hi``).
    """
    k = 0
    s = first_test
    while s < n_bars:
        k += 1
        s += step
    out = np.empty((k, 4), dtype=np.int64)
    for i in range(k):
        lo = first_test + i * step
        hi = min(lo + test_bars, n_bars) - 1
        tr_hi = lo - purge - 1
        if expanding:
            tr_lo = 0
        else:
            tr_lo = max(tr_hi - train_bars + 1, 0)
        if tr_hi < 0:
            tr_lo = 0
        out[i, 0] = tr_lo
        out[i, 1] = tr_hi
        out[i, 2] = lo
        out[i, 3] = hi
    return out


@njit(cache=True)
def wf_train_mask_nb(n_bars, bounds, fold, embargo):
    """Training bars of ``fold``: its train window minus the embargo after every earlier test block.

    The embargo of test block ``j < fold`` is the ``embargo`` bars right after it,
    ``[test_hi_j + 1, test_hi_j + embargo]``; those bars never enter a later fold's training.
    """
    mask = np.zeros(n_bars, dtype=np.bool_)
    lo = bounds[fold, 0]
    hi = min(bounds[fold, 1], n_bars - 1)
    for b in range(lo, hi + 1):
        mask[b] = True
    if embargo > 0:
        for j in range(fold):
            e = bounds[j, 3]
            stop = min(e + embargo, hi)
            for b in range(e + 1, stop + 1):
                mask[b] = False
    return mask


@njit(cache=True)
def cpcv_masks_nb(n_bars, group_lo, group_hi, is_test, purge, embargo):
    """Train and test bar masks of one CPCV split.

    Test = the bars of every group with ``is_test``; train = all other bars, minus ``purge`` bars
    before each test group and ``purge + embargo`` bars after it (train labels that read into the
    test group, and train bars whose past the test labels read, are dropped; the embargo adds a
    further gap after each test group).
    """
    test = np.zeros(n_bars, dtype=np.bool_)
    for g in range(group_lo.shape[0]):
        if is_test[g]:
            for b in range(group_lo[g], group_hi[g] + 1):
                test[b] = True
    train = ~test
    for g in range(group_lo.shape[0]):
        if is_test[g]:
            for b in range(max(group_lo[g] - purge, 0), group_lo[g]):
                train[b] = False
            for b in range(group_hi[g] + 1, min(group_hi[g] + purge + embargo, n_bars - 1) + 1):
                train[b] = False
    return train, test


@njit(cache=True)
def rows_in_mask_nb(bar_idx, mask):
    """Sorted int64 row indices ``i`` with ``mask[bar_idx[i]]``."""
    n = 0
    for i in range(bar_idx.shape[0]):
        if mask[bar_idx[i]]:
            n += 1
    out = np.empty(n, dtype=np.int64)
    k = 0
    for i in range(bar_idx.shape[0]):
        if mask[bar_idx[i]]:
            out[k] = i
            k += 1
    return out
