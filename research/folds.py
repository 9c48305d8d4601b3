"""Purged walk-forward and combinatorial purged cross-validation over hourly bars.

Both splitters follow scikit-learn's splitter interface: ``split(X, y=None, groups=None)`` yields
``(train_idx, test_idx)`` pairs of sorted int64 row indices and ``get_n_splits`` counts them;
``__init__`` only stores parameters (they are checked when the splitter is used);
``get_params``/``set_params``/``repr`` behave like scikit-learn's.

Rows and bars
-------------
A row is a sample that belongs to one hourly bar: ``X`` may hold one row per bar or the rows of a
(bar, pair) long frame, in any order. The bar of every row is given as its **bar-open time** in
``groups`` (unix seconds, int; numpy ``datetime64`` and pandas datetimes are accepted too). This is
the ``groups`` argument of scikit-learn, so ``cross_val_score(model, X, y, groups=ts, cv=splitter)``
works; ``split`` also takes the same array as ``times=`` for readability (give one of the two).
Without either, a frame with a ``ts`` column or a ``DatetimeIndex`` gives the times; otherwise row
``i`` is bar ``i`` of a gap-free hourly grid. All rows of one bar always fall on the same side.

Bar counts are counts of HOURS on the hourly grid that starts at the earliest bar of the data, not
counts of rows: a missing hour (an exchange outage) still takes its place, so ``purge_bars=24``
is 24 hours even across a gap. Times must lie on the hourly grid (multiples of 3600 s).

Leakage rules (a label at bar t reads bars t .. t+h; a feature at bar t reads bars <= t):

* purge: between the last training bar and the first test bar lie ``purge_bars`` bars that are in
  neither set, so with ``purge_bars >= h`` no training label reads a test bar.
* walk-forward embargo: the ``embargo_bars`` bars right after every earlier test block are left out
  of every later fold's training (see :class:`PurgedWalkForward`).
* CPCV: ``purge_bars`` bars before and ``purge_bars + embargo_bars`` bars after every test group are
  left out of training (see :class:`CombinatorialPurgedCV`).
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.timeutil import HOUR
from research.folds_nb import cpcv_masks_nb, rows_in_mask_nb, wf_bounds_nb, wf_train_mask_nb

__all__ = [
    "CombinatorialPurgedCV",
    "PurgedWalkForward",
    "bar_times",
    "check_purge",
]


# --------------------------------------------------------------------------------------------
# helpers


def _int_param(owner: str, name: str, value: Any, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{owner}: {name} must be an integer number of bars, got {value!r}")
    v = int(value)
    if v < minimum:
        raise InputError(f"{owner}: {name} must be >= {minimum}, got {v}")
    return v


def bar_times(times: Any) -> np.ndarray:
    """Bar-open times as an int64 array of unix seconds on the hourly grid (InputError otherwise)."""
    arr = times
    if hasattr(arr, "to_numpy") and not isinstance(arr, np.ndarray):
        arr = arr.to_numpy()
    arr = np.asarray(arr)
    if arr.ndim != 1:
        raise InputError(f"bar times must be one-dimensional, got shape {arr.shape}")
    if arr.dtype.kind == "M":
        if np.isnat(arr).any():
            raise InputError("bar times contain NaT")
        arr = arr.astype("datetime64[s]").astype(np.int64)
    elif arr.dtype == object:
        import pandas as pd

        try:
            arr = np.asarray(pd.DatetimeIndex(arr).as_unit("s").asi8, dtype=np.int64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"bar times are not times: {exc}") from None
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InputError("bar times contain NaN or infinity")
        if np.any(arr != np.floor(arr)):
            raise InputError("bar times must be whole unix seconds")
        arr = arr.astype(np.int64)
    elif arr.dtype.kind in "iu":
        arr = arr.astype(np.int64)
    else:
        raise InputError(f"bar times must be unix seconds or datetimes, got dtype {arr.dtype}")
    if arr.size == 0:
        raise InputError("no rows to split")
    off = arr % HOUR != 0
    if off.any():
        raise InputError(
            f"bar times must lie on the hourly grid (multiples of 3600 s); "
            f"{int(off.sum())} do not, first {int(arr[off][0])}"
        )
    return np.ascontiguousarray(arr, dtype=np.int64)


def _n_rows(X: Any) -> int | None:
    if X is None:
        return None
    if hasattr(X, "shape") and len(X.shape) >= 1:
        return int(X.shape[0])
    return len(X)


def _row_times(X: Any, groups: Any, times: Any) -> np.ndarray:
    if groups is not None and times is not None:
        raise InputError("give the bar times either as groups or as times, not both")
    t = groups if groups is not None else times
    n = _n_rows(X)
    if t is None:
        if X is None:
            raise InputError("the splitter needs the data (X) or its bar times (groups=)")
        cols = getattr(X, "columns", None)
        index = getattr(X, "index", None)
        if cols is not None and "ts" in cols:
            t = X["ts"]
        elif index is not None and getattr(index, "dtype", None) is not None and index.dtype.kind == "M":
            t = index
        else:
            assert n is not None  # X is not None here, so _n_rows gave its row count
            return np.arange(n, dtype=np.int64) * HOUR
    out = bar_times(t)
    if n is not None and out.shape[0] != n:
        raise InputError(f"bar times have {out.shape[0]} rows but X has {n}")
    return out


def check_purge(purge_bars: int, horizons_bars: Any) -> None:
    """InputError unless ``purge_bars`` covers the longest label horizon (in bars = hours)."""
    hs = [int(h) for h in np.atleast_1d(np.asarray(horizons_bars))]
    if not hs:
        return
    if purge_bars < max(hs):
        raise InputError(
            f"purge_bars={purge_bars} is shorter than the longest label horizon "
            f"({max(hs)} bars): training labels would read test bars"
        )


@dataclass(frozen=True)
class _Grid:
    t0: int
    bar_idx: np.ndarray  # int64 per row
    present: np.ndarray  # bool per bar: at least one row
    n_bars: int

    def time(self, b: int) -> int:
        return self.t0 + int(b) * HOUR


def _grid(times: np.ndarray) -> _Grid:
    t0 = int(times.min())
    bar_idx = (times - t0) // HOUR
    n_bars = int(bar_idx.max()) + 1
    present = np.zeros(n_bars, dtype=np.bool_)
    present[bar_idx] = True
    return _Grid(t0, np.ascontiguousarray(bar_idx, dtype=np.int64), present, n_bars)


def _present_span(grid: _Grid, mask: np.ndarray) -> tuple[int, int, int]:
    """(first, last, count) of bars in mask that hold rows; (-1, -1, 0) if none."""
    bars = np.flatnonzero(mask & grid.present)
    if bars.size == 0:
        return -1, -1, 0
    return int(bars[0]), int(bars[-1]), int(bars.size)


class _SplitterBase:
    """get_params / set_params / __repr__ in scikit-learn's manner (parameters = __init__ args)."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values() if p.name != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> _SplitterBase:
        valid = set(self._param_names())
        for k, v in params.items():
            if k not in valid:
                raise InputError(f"{type(self).__name__}: unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


# --------------------------------------------------------------------------------------------
# walk-forward


@dataclass(frozen=True)
class _WFPlan:
    grid: _Grid
    bounds: np.ndarray  # (k, 4) candidate folds, bar indices
    kept: tuple[int, ...]  # candidate indices that become folds
    train_masks: tuple[np.ndarray, ...]  # per kept fold, bool over bars


class PurgedWalkForward(_SplitterBase):
    """Rolling or expanding walk-forward over hourly bars with a purge gap and an embargo.

    Parameters (all counts are bars = hours on the hourly grid)
    ----------
    train_bars : rolling training window length. With ``expanding=True`` training always starts at
        the first bar and ``train_bars`` is only the length of the first fold's window (it sets the
        default ``start``).
    test_bars : length of each test block.
    purge_bars : bars between the last training bar and the first test bar, in neither set. Must be
        >= the longest label horizon (:func:`check_purge`).
    embargo_bars : the ``embargo_bars`` bars right after each test block are dropped from the
        training set of every LATER fold. In walk-forward a fold's own training always ends before
        its test block, so nothing of fold k's test can leak into fold k's model through its own
        boundary; the embargo guards the *other* boundary: a later model does not train on the
        rows just after an earlier test block, whose backward-looking features straddle that
        block's end, so the out-of-sample track record that joins all test blocks (stacking, the
        report, the overfitting statistics) keeps a clean gap after every block, in the spirit of
        CPCV's embargo (which, unlike this one, also adds the purge after each test group).
        Default 0.
    expanding : expanding (anchored) instead of rolling training windows.
    min_train_bars : a fold is emitted only if its training set holds at least this many bars that
        have rows (after purge, embargo and data gaps); default 1 (only empty training sets are
        dropped). Folds whose test block holds no rows (an outage) are dropped too.
    step_bars : distance between the starts of consecutive test blocks, default ``test_bars``;
        must be >= ``test_bars`` (test blocks never overlap; a larger step leaves untested bars).
    start : open time (unix seconds) of the first test bar; default: the first bar of the data +
        ``train_bars + purge_bars`` hours, so the first fold has a full window. Earlier starts give
        the first folds truncated training windows.

    Fold k's test block is ``[s_k, s_k + test_bars - 1]`` with ``s_k = start + k * step_bars`` (the
    last block is cut at the last bar), its training window ``[s_k - purge_bars - train_bars,
    s_k - purge_bars - 1]`` (rolling; from the first bar when expanding) minus the embargoed bars.
    A fold depends only on bars up to its test end: appending or changing later bars leaves it
    unchanged. At least two folds are required: a single static train/test split is refused.
    """

    def __init__(
        self,
        train_bars: int,
        test_bars: int,
        purge_bars: int,
        embargo_bars: int = 0,
        expanding: bool = False,
        min_train_bars: int | None = None,
        step_bars: int | None = None,
        start: int | None = None,
    ) -> None:
        self.train_bars = train_bars
        self.test_bars = test_bars
        self.purge_bars = purge_bars
        self.embargo_bars = embargo_bars
        self.expanding = expanding
        self.min_train_bars = min_train_bars
        self.step_bars = step_bars
        self.start = start

    # -- parameters ---------------------------------------------------------------------------
    def _checked(self) -> tuple[int, int, int, int, bool, int, int]:
        own = type(self).__name__
        train = _int_param(own, "train_bars", self.train_bars, 1)
        test = _int_param(own, "test_bars", self.test_bars, 1)
        purge = _int_param(own, "purge_bars", self.purge_bars, 0)
        emb = _int_param(own, "embargo_bars", self.embargo_bars, 0)
        if not isinstance(self.expanding, (bool, np.bool_)):
            raise InputError(f"{own}: expanding must be true or false, got {self.expanding!r}")
        min_train = 1 if self.min_train_bars is None else _int_param(own, "min_train_bars", self.min_train_bars, 1)
        step = test if self.step_bars is None else _int_param(own, "step_bars", self.step_bars, 1)
        if step < test:
            raise InputError(
                f"{own}: step_bars={step} is smaller than test_bars={test}: "
                "test blocks would overlap and bars would be tested twice"
            )
        if self.start is not None:
            _int_param(own, "start", self.start, -(2**62))
        return train, test, purge, emb, bool(self.expanding), min_train, step

    # -- planning -----------------------------------------------------------------------------
    def _plan(self, times: np.ndarray) -> _WFPlan:
        own = type(self).__name__
        train, test, purge, emb, expanding, min_train, step = self._checked()
        grid = _grid(times)
        if self.start is None:
            first = train + purge
            need = train + purge + test
            if grid.n_bars < need:
                raise InputError(
                    f"{own}: the data span {grid.n_bars} hourly bars but one fold needs "
                    f"train_bars + purge_bars + test_bars = {need}; at least two folds are required"
                )
        else:
            st = int(self.start)
            if st % HOUR:
                raise InputError(f"{own}: start={st} is not on the hourly grid")
            first = max((st - grid.t0) // HOUR, 0)
            if first >= grid.n_bars:
                raise InputError(f"{own}: start={st} is after the last bar ({grid.time(grid.n_bars - 1)})")
        bounds = wf_bounds_nb(grid.n_bars, first, train, test, step, purge, expanding)
        kept: list[int] = []
        masks: list[np.ndarray] = []
        for i in range(bounds.shape[0]):
            lo, hi = int(bounds[i, 2]), int(bounds[i, 3])
            if not grid.present[lo : hi + 1].any():
                continue
            tm = wf_train_mask_nb(grid.n_bars, bounds, i, emb)
            if int((tm & grid.present).sum()) < min_train:
                continue
            kept.append(i)
            masks.append(tm)
        if len(kept) < 2:
            raise InputError(
                f"{own}: only {len(kept)} fold(s) fit the data ({grid.n_bars} hourly bars); "
                "walk-forward needs at least 2 (a single static split is refused): "
                "shorten train_bars/test_bars, move start earlier or add data"
            )
        return _WFPlan(grid, bounds, tuple(kept), tuple(masks))

    # -- scikit-learn interface ----------------------------------------------------------------
    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        return len(self._plan(_row_times(X, groups, None)).kept)

    def split(
        self, X: Any, y: Any = None, groups: Any = None, *, times: Any = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        plan = self._plan(_row_times(X, groups, times))
        g = plan.grid
        test_mask = np.zeros(g.n_bars, dtype=np.bool_)
        for i, tm in zip(plan.kept, plan.train_masks):
            lo, hi = int(plan.bounds[i, 2]), int(plan.bounds[i, 3])
            test_mask[:] = False
            test_mask[lo : hi + 1] = True
            yield rows_in_mask_nb(g.bar_idx, tm), rows_in_mask_nb(g.bar_idx, test_mask)

    # -- description for folds.json -------------------------------------------------------------
    def folds_table(self, times: Any) -> list[dict[str, Any]]:
        """One dict per fold, JSON-ready, in the shape of ``folds.json``.

        ``train_start``/``train_end``/``test_start``/``test_end`` are the first/last bar-open times
        (unix seconds, inclusive) that hold rows in each set; ``n_train_bars``/``n_test_bars``
        count those bars; ``purge_bars``/``embargo_bars`` are the lengths used; ``embargoed`` lists
        the [start, end] bar-open ranges (inclusive) cut out of the training window by the embargo.
        """
        plan = self._plan(bar_times(times))
        g = plan.grid
        emb = int(self.embargo_bars)
        rows = []
        for k, (i, tm) in enumerate(zip(plan.kept, plan.train_masks)):
            tr_lo, tr_hi, te_lo, te_hi = (int(v) for v in plan.bounds[i])
            test_mask = np.zeros(g.n_bars, dtype=np.bool_)
            test_mask[te_lo : te_hi + 1] = True
            a, b, n_tr = _present_span(g, tm)
            c, d, n_te = _present_span(g, test_mask)
            cut = []
            if emb > 0:
                for j in range(i):
                    e = int(plan.bounds[j, 3])
                    lo, hi = e + 1, min(e + emb, tr_hi)
                    if hi >= max(lo, tr_lo):
                        cut.append([g.time(max(lo, tr_lo)), g.time(hi)])
            rows.append(
                {
                    "fold": k,
                    "train_start": g.time(a),
                    "train_end": g.time(b),
                    "test_start": g.time(c),
                    "test_end": g.time(d),
                    "purge_bars": int(self.purge_bars),
                    "embargo_bars": emb,
                    "n_train_bars": n_tr,
                    "n_test_bars": n_te,
                    "expanding": bool(self.expanding),
                    "embargoed": cut,
                }
            )
        return rows


# --------------------------------------------------------------------------------------------
# combinatorial purged cross-validation


@dataclass(frozen=True)
class _CPCVPlan:
    grid: _Grid
    group_lo: np.ndarray
    group_hi: np.ndarray
    combos: tuple[tuple[int, ...], ...]


class CombinatorialPurgedCV(_SplitterBase):
    """Combinatorial purged cross-validation (Lopez de Prado, Advances in Financial ML, ch. 12).

    The bars that hold rows are cut, in time order, into ``n_groups`` contiguous groups of (nearly)
    equal bar counts; a group runs from its first to its last bar with rows, and the purge and
    embargo are counted in hours from those bars (a gap between groups belongs to none). Every combination of
    ``n_test_groups`` groups is one split (C(N, k) splits, in ``itertools.combinations`` order):
    its test set is those groups; its training set is every other bar minus ``purge_bars`` bars
    before each test group (training labels would read the test group) and ``purge_bars +
    embargo_bars`` bars after it (the test labels read those bars; the embargo adds a gap against
    serial correlation). Each group is tested in C(N-1, k-1) splits, which gives that many
    backtest paths: :meth:`paths` maps (path, group) to the split whose prediction fills it.
    """

    def __init__(self, n_groups: int, n_test_groups: int, purge_bars: int, embargo_bars: int = 0) -> None:
        self.n_groups = n_groups
        self.n_test_groups = n_test_groups
        self.purge_bars = purge_bars
        self.embargo_bars = embargo_bars

    def _checked(self) -> tuple[int, int, int, int]:
        own = type(self).__name__
        n = _int_param(own, "n_groups", self.n_groups, 2)
        k = _int_param(own, "n_test_groups", self.n_test_groups, 1)
        if k >= n:
            raise InputError(f"{own}: n_test_groups={k} must be smaller than n_groups={n}")
        purge = _int_param(own, "purge_bars", self.purge_bars, 0)
        emb = _int_param(own, "embargo_bars", self.embargo_bars, 0)
        return n, k, purge, emb

    def _plan(self, times: np.ndarray) -> _CPCVPlan:
        own = type(self).__name__
        n, k, purge, emb = self._checked()
        grid = _grid(times)
        bars = np.flatnonzero(grid.present)
        if bars.size < n:
            raise InputError(f"{own}: n_groups={n} but the data hold only {bars.size} bars")
        parts = np.array_split(bars, n)
        lo = np.array([int(p[0]) for p in parts], dtype=np.int64)
        hi = np.array([int(p[-1]) for p in parts], dtype=np.int64)  # last bar WITH rows
        combos = tuple(itertools.combinations(range(n), k))
        plan = _CPCVPlan(grid, lo, hi, combos)
        for c in combos:
            train, _ = self._masks(plan, c, purge, emb)
            if not (train & grid.present).any():
                raise InputError(
                    f"{own}: purge_bars + embargo_bars leave split {c} with no "
                    "training bars; use fewer test groups or shorter gaps"
                )
        return plan

    def _masks(self, plan: _CPCVPlan, combo: tuple[int, ...], purge: int, emb: int):
        is_test = np.zeros(plan.group_lo.shape[0], dtype=np.bool_)
        is_test[list(combo)] = True
        return cpcv_masks_nb(plan.grid.n_bars, plan.group_lo, plan.group_hi, is_test, purge, emb)

    # -- scikit-learn interface ----------------------------------------------------------------
    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        n, k, _, _ = self._checked()
        return math.comb(n, k)

    def split(
        self, X: Any, y: Any = None, groups: Any = None, *, times: Any = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        _, _, purge, emb = self._checked()
        plan = self._plan(_row_times(X, groups, times))
        for c in plan.combos:
            train, test = self._masks(plan, c, purge, emb)
            yield rows_in_mask_nb(plan.grid.bar_idx, train), rows_in_mask_nb(plan.grid.bar_idx, test)

    # -- path reconstruction -----------------------------------------------------------------
    def combinations(self) -> list[tuple[int, ...]]:
        """The test groups of each split, in split order."""
        n, k, _, _ = self._checked()
        return list(itertools.combinations(range(n), k))

    def get_n_paths(self) -> int:
        n, k, _, _ = self._checked()
        return math.comb(n - 1, k - 1)

    def paths(self) -> np.ndarray:
        """int64 (n_paths, n_groups): ``paths[p, g]`` is the split whose test prediction of group g
        belongs to backtest path p (the p-th split, in split order, that tests group g). Every
        path covers every group exactly once."""
        n, k, _, _ = self._checked()
        out = np.full((math.comb(n - 1, k - 1), n), -1, dtype=np.int64)
        seen = np.zeros(n, dtype=np.int64)
        for i, c in enumerate(itertools.combinations(range(n), k)):
            for g in c:
                out[seen[g], g] = i
                seen[g] += 1
        return out

    def row_groups(self, X: Any = None, groups: Any = None, *, times: Any = None) -> np.ndarray:
        """int64 group number (0 .. n_groups-1) of every row, to rebuild the paths."""
        plan = self._plan(_row_times(X, groups, times))
        bar_group = np.searchsorted(plan.group_lo, np.arange(plan.grid.n_bars), side="right") - 1
        return bar_group[plan.grid.bar_idx].astype(np.int64)

    def groups_table(self, times: Any) -> list[dict[str, Any]]:
        """Per group: ``group``, ``start``, ``end`` (first/last bar-open time with rows,
        inclusive) and ``n_bars``."""
        plan = self._plan(bar_times(times))
        g = plan.grid
        rows = []
        for i in range(plan.group_lo.shape[0]):
            m = np.zeros(g.n_bars, dtype=np.bool_)
            m[plan.group_lo[i] : plan.group_hi[i] + 1] = True
            a, b, cnt = _present_span(g, m)
            rows.append({"group": i, "start": g.time(a), "end": g.time(b), "n_bars": cnt})
        return rows
