"""Stacking meta-learner: the only model whose output becomes trade decisions.

Design
------
``fit(X, y, close=..., returns=...)`` on one training window: the rows of ONE pair in time order,
or several pairs pooled with ``segments`` (each row's pair; each pair's rows one contiguous block
in time order) and ``times`` (each row's bar-open time, passed to the splitter as ``groups`` so all
rows of a bar fall on the same side of every inner split):

1. Regime: a :class:`~research.models.regime.RegimeClassifier` (clone of ``regime``) is fitted on
   the window's closes; its causal label per row is one-hot encoded (4 columns, all zero where
   unknown).
2. Out-of-fold base predictions: the injected splitter ``cv`` (anything with a scikit-learn
   ``split(X, y, groups)``; default an expanding :class:`research.folds.PurgedWalkForward` with
   ``inner_folds`` test blocks and a ``purge_bars`` gap) splits the window. For every inner fold
   each base model is a fresh ``clone`` fitted on that fold's training rows only and predicts that
   fold's test rows. Tabular models get ``X[train]``; sequence models get the whole matrix with
   ``valid`` = the training rows and labels outside them set to NaN, so no training sequence
   spans the purge gap or a test row. Each row is tested at most once (``oof_``; NaN where never
   tested). Rows never tested (the first inner training block) do not train the stacker.
3. Stacker: a logistic regression of the label on ``[P_1 - 0.5, ..., P_5 - 0.5, regime one-hot]``
   over the OOF rows (a sequence model's missing P is taken as 0.5 = no view), and a ridge
   regression of the forward return on the same columns (the expected-return head; only when
   ``returns`` is given). The stacker never sees an in-sample base prediction (tested).
4. The base models are refitted on the whole window (``base_models_``), and predictions at test
   time go: refitted bases -> the same columns -> stacker.

Several horizons in one fit
---------------------------
``fit(X, Y)`` with an (n, H) label matrix (one column per horizon, NaN = no label; ``returns``
(n, H) too) shares the regime, the inner folds and, with ``share_horizons`` (default), every base
model whose ``supports_multi_output`` is set: the sequence nets are ONE network with H sigmoid
heads and the RandomForest ONE multi-output forest per inner fold and refit; the other models
(XGBoost, LightGBM) are fitted per column (:class:`PerHorizonModel` after the refit). Then one
stacker and one return head per horizon on that horizon's out-of-fold rows. ``share_horizons =
False`` gives exactly H single-horizon fits (tested bit for bit). ``predict_all`` returns base
(n, k, H), meta P(up) (n, H) and expected return (n, H) from one pass over the bases.

Cost controls (results never depend on ``n_jobs``)
-------------------------------------------------
``n_jobs``: independent base fits (inner folds x models [x horizons] and the refits) run on that
many threads; every neural-net fit in one chain (TensorFlow's seeding is process-global), the others
largest first. Each fit is seeded and single-threaded and stored by position: bit-identical output
for any ``n_jobs`` (tested). ``inner_stride`` = k > 1: the inner folds work on every k-th hour
(``times``; all pairs of a bar together): the tabular models' inner fits train on those hours of
the inner training block, and only those hours of the inner test blocks are predicted and stack
the meta-learner. The nets keep the whole inner training block (history) and their own
``train_stride``. Refits always use the whole window.

``predict_proba(X, close=...)`` is the meta P(up); ``predict_return`` the meta expected return;
``predict_base_proba`` gives the five base P(up) columns for reporting. The strategy layer must
take its decisions from the meta output only; base predictions are for diagnostics.

Prediction inputs: the sequence models and the regime labels need history (``seq_len`` and
``trend_bars`` rows). Pass the test block preceded by warm-up rows and slice the output.
"""

from __future__ import annotations

import math
import time
from typing import Any, cast

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError

from engine.errors import InputError
from research.models.base import BASE_MODEL_NAMES, check_label_matrix, check_returns, check_X_2d, make_model

__all__ = ["PerHorizonModel", "StackingMetaLearner"]


class StackingMetaLearner(ClassifierMixin, BaseEstimator):
    """Logistic stacker over out-of-fold base P(up) plus the regime one-hot (see module doc).

    Parameters
    ----------
    models : list of (name, estimator); default the five registry base models
        (``xgboost``, ``lightgbm``, ``random_forest``, ``lstm``, ``transformer``) at ``model_size``.
    cv : inner splitter with ``split(X, y, groups)``; default expanding PurgedWalkForward.
    regime : a RegimeClassifier (default ``RegimeClassifier()``), used when ``use_regime``.
    inner_folds, purge_bars : the default splitter's number of test blocks and purge gap.
    C, ridge_alpha : regularisation of the logistic stacker and of the return head.
    model_size : ``"research"`` or ``"tiny"`` sizes for the default base models.
    seed : seed of the default base models.
    share_horizons : with an (n, H) label matrix, fit multi-output-capable bases once for all H.
    n_jobs : threads for independent base fits (results do not depend on it).
    inner_stride : inner folds on every k-th hour (tabular inner fits and stacker rows).
    """

    def __init__(
        self,
        models: list | None = None,
        cv: Any = None,
        regime: Any = None,
        use_regime: bool = True,
        inner_folds: int = 3,
        purge_bars: int = 24,
        C: float = 1.0,
        ridge_alpha: float = 1.0,
        model_size: str = "research",
        seed: int = 7,
        share_horizons: bool = True,
        n_jobs: int = 1,
        inner_stride: int = 1,
    ) -> None:
        self.models = models
        self.cv = cv
        self.regime = regime
        self.use_regime = use_regime
        self.inner_folds = inner_folds
        self.purge_bars = purge_bars
        self.C = C
        self.ridge_alpha = ridge_alpha
        self.model_size = model_size
        self.seed = seed
        self.share_horizons = share_horizons
        self.n_jobs = n_jobs
        self.inner_stride = inner_stride

    # ---------------------------------------------------------------------------------------------
    def _models(self) -> list[tuple[str, Any]]:
        if self.models is None:
            if self.model_size not in ("research", "tiny"):
                raise InputError(f"StackingMetaLearner: model_size must be research or tiny, got {self.model_size!r}")
            return [(n, make_model(n, tiny=self.model_size == "tiny", seed=self.seed)) for n in BASE_MODEL_NAMES]
        out = []
        for item in self.models:
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
                raise InputError("StackingMetaLearner: models must be a list of (name, estimator)")
            out.append(item)
        if len({n for n, _ in out}) != len(out) or not out:
            raise InputError("StackingMetaLearner: model names must be unique and non-empty")
        return out

    def _cv(self, n: int, times: Any = None):
        if self.cv is not None:
            return self.cv
        from research.folds import PurgedWalkForward, bar_times

        if times is not None:  # pooled pairs: count hours on the grid, not rows
            t = bar_times(times)
            n = int((t.max() - t.min()) // 3600) + 1
        k = int(self.inner_folds)
        first = n // (k + 1)
        test = math.ceil((n - first - self.purge_bars) / k)
        if first < 1 or test < 1:
            raise InputError(f"StackingMetaLearner: {n} rows are too few for {k} inner folds")
        return PurgedWalkForward(train_bars=first, test_bars=test, purge_bars=self.purge_bars, expanding=True)

    def _regime_cols(self, reg, close: Any, n: int, segments: Any = None) -> np.ndarray:
        if not self.use_regime:
            return np.zeros((n, 0))
        if close is None:
            raise InputError(
                "StackingMetaLearner: close= (the pair's close prices, one per row) is "
                "required for the regime state (or set use_regime=False)"
            )
        c = np.asarray(close, dtype=np.float64).reshape(-1)
        if c.shape[0] != n:
            raise InputError(f"StackingMetaLearner: close has {c.shape[0]} rows, X has {n}")
        return reg.transform(c, segments)

    @staticmethod
    def _base_fit(est, X, y, rows: np.ndarray | None, returns=None, segments=None):
        """Fit ``est`` on ``rows`` of the window (all rows when None); ``y`` is (n,) or, for a
        multi-output fit, (n, H)."""
        if getattr(est, "uses_sequences", False):
            if rows is None:
                return est.fit(X, y, returns=returns, segments=segments)
            valid = np.zeros(X.shape[0], dtype=bool)
            valid[rows] = True
            ym = np.full(np.shape(y), np.nan)
            ym[rows] = y[rows]
            return est.fit(X, ym, valid=valid, segments=segments)
        if rows is None:
            return est.fit(X, y, returns=returns)
        return est.fit(X[rows], y[rows])

    @staticmethod
    def _base_p(est, X, rows: np.ndarray | None = None, segments=None) -> np.ndarray:
        if getattr(est, "uses_sequences", False):
            if rows is None:
                return est.predict_proba(X, segments=segments)[:, 1]
            # a sequence ending at row t reads rows t-seq_len+1..t only: slice to what is read
            lo = max(0, int(rows.min()) - int(est.seq_len) + 1)
            hi = int(rows.max()) + 1
            seg = None if segments is None else np.asarray(segments).reshape(-1)[lo:hi]
            return est.predict_up(X[lo:hi], segments=seg, at=rows - lo)[rows - lo, 0]
        return est.predict_proba(X if rows is None else X[rows])[:, 1]

    @staticmethod
    def _base_up(est, X, rows: np.ndarray | None = None, segments=None) -> np.ndarray:
        """(len(rows), H) P(up) of a multi-output (or per-horizon) base model."""
        if getattr(est, "uses_sequences", False):
            if rows is None:
                return est.predict_up(X, segments=segments)
            lo = max(0, int(rows.min()) - int(est.seq_len) + 1)
            hi = int(rows.max()) + 1
            seg = None if segments is None else np.asarray(segments).reshape(-1)[lo:hi]
            return est.predict_up(X[lo:hi], segments=seg, at=rows - lo)[rows - lo]
        return est.predict_up(X if rows is None else X[rows])

    @staticmethod
    def _design(P: np.ndarray, R: np.ndarray) -> np.ndarray:
        return np.column_stack([np.where(np.isfinite(P), P, 0.5) - 0.5, R])

    # ---------------------------------------------------------------------------------------------
    def _plan(
        self,
        models: list,
        Xa: np.ndarray,
        Y: np.ndarray,
        R2: np.ndarray | None,
        folds: list,
        tab_rows: list,
        segments: Any,
        multi: bool,
        on_fit: Any = None,
    ) -> list[tuple[bool, float, Any]]:
        """The independent base fits of one ``fit``: (is a neural net, size, job) in the sequential
        order (inner folds x models [x horizons], then the refits). Each job fits a fresh clone and
        returns the OOF predictions (inner folds) or the fitted model (refit). Inner-fold training
        rows: ``tab_rows`` for the tabular models (every ``inner_stride``-th hour), the fold's whole
        training block for the sequence models (history; their targets follow ``train_stride``).
        ``on_fit(event, name, arg)``: see :meth:`fit`."""
        H = Y.shape[1]

        def job(name, m, tr, te, col):
            def run():
                if col is None:  # one multi-output fit for every horizon
                    y = Y
                    r = R2
                else:
                    y = Y[:, col]
                    r = None if R2 is None else R2[:, col]
                if on_fit is not None:
                    on_fit("start", name, tr is None)
                t0 = time.perf_counter()
                est = self._base_fit(clone(m), Xa, y, tr, r if tr is None else None, segments)
                if on_fit is not None:
                    on_fit("done", name, time.perf_counter() - t0)
                if te is None:
                    return est
                if col is None:
                    return self._base_up(est, Xa, te, segments)
                return self._base_p(est, Xa, te, segments)[:, None]

            return run

        jobs = []
        for (tr, te), trt in zip(folds + [(None, None)], tab_rows + [None]):
            for name, m in models:
                net = bool(getattr(m, "uses_sequences", False))
                rows = tr if net else trt
                size = float(Xa.shape[0] if rows is None else len(rows))
                if multi and self.share_horizons and getattr(m, "supports_multi_output", False):
                    jobs.append((net, size, job(name, m, rows, te, None)))
                else:
                    for c in range(H):
                        jobs.append((net, size, job(name, m, rows, te, c)))
        return jobs

    def _run(self, jobs: list[tuple[bool, float, Any]]) -> list:
        """Run the jobs; with ``n_jobs`` > 1 on threads (the tree libraries and TensorFlow release
        the GIL): every neural-net job in ONE chain (TensorFlow's seeding is process-global), the
        other jobs largest first on the other threads. Each job is seeded and single-threaded and
        its result is stored by its index, so the output does not depend on the scheduling."""
        n_jobs = int(self.n_jobs)
        if n_jobs <= 1 or len(jobs) < 2:
            return [f() for _, _, f in jobs]
        from concurrent.futures import ThreadPoolExecutor

        out: list = [None] * len(jobs)

        def chain(idx):
            for i in idx:
                out[i] = jobs[i][2]()

        nets = [i for i, (net, _, _) in enumerate(jobs) if net]
        rest = sorted((i for i, (net, _, _) in enumerate(jobs) if not net), key=lambda i: (-jobs[i][1], i))
        with ThreadPoolExecutor(max_workers=n_jobs) as ex:
            futs = ([ex.submit(chain, nets)] if nets else []) + [ex.submit(chain, [i]) for i in rest]
            for f in futs:
                f.result()
        return out

    def fit(
        self,
        X: Any,
        y: Any,
        *,
        close: Any = None,
        returns: Any = None,
        times: Any = None,
        segments: Any = None,
        on_fit: Any = None,
    ) -> StackingMetaLearner:
        """Fit on one window. ``y`` (n,) is one horizon's label; an (n, H) matrix (one column per
        horizon, NaN = no label) fits every horizon at once: the regime, the inner folds and every
        base model that supports multi-output (the sequence nets: one network with H heads; the
        RandomForest: one multi-output forest) are shared by the horizons when ``share_horizons``,
        the others are fitted per column; then one stacker and return head per horizon.
        ``returns`` then is (n, H) too. ``on_fit(event, name, arg)``, when given, is called around
        every base fit: ``("start", name, is_refit)`` and ``("done", name, seconds)`` (from the
        fitting thread; it is not stored, so a fitted learner holds no callback)."""
        from sklearn.linear_model import LogisticRegression, Ridge

        from research.models.regime import RegimeClassifier

        Xa = check_X_2d(X, "StackingMetaLearner")
        n = Xa.shape[0]
        ya = check_label_matrix(y, n, "StackingMetaLearner")
        multi = ya.ndim == 2
        Y = ya if multi else ya[:, None]
        H = Y.shape[1]
        ra = check_returns(returns, n, "StackingMetaLearner")
        R2 = None if ra is None else ra.reshape(n, -1)
        if R2 is not None and R2.shape[1] != H:
            raise InputError(f"StackingMetaLearner: returns has {R2.shape[1]} columns, y has {H}")
        models = self._models()

        reg = None
        if self.use_regime:
            reg = clone(self.regime) if self.regime is not None else RegimeClassifier()
            if close is None:
                self._regime_cols(None, None, n)
            reg.fit(np.asarray(close, dtype=np.float64).reshape(-1), segments=segments)
        Rg = self._regime_cols(reg, close, n, segments)

        # 1. out-of-fold base predictions over the inner purged folds
        stride = int(self.inner_stride)
        if stride < 1:
            raise InputError(f"StackingMetaLearner: inner_stride must be >= 1, got {stride}")
        on_grid = None
        if stride > 1:  # every stride-th hour (all pairs of a bar together), or row without times
            from research.folds import bar_times

            hour = bar_times(times) // 3600 if times is not None else np.arange(n, dtype=np.int64)
            on_grid = (hour % stride) == 0
        seen = np.zeros(n, dtype=bool)
        tested = np.zeros(n, dtype=bool)
        folds, tab_rows = [], []
        for tr, te in self._cv(n, times).split(Xa, Y[:, 0], times):
            tr = np.asarray(tr, dtype=np.int64)
            te = np.asarray(te, dtype=np.int64)
            if seen[te].any():
                raise InputError(
                    "StackingMetaLearner: the inner splitter tests a row twice; "
                    "use a walk-forward splitter (each row tested at most once)"
                )
            seen[te] = True
            if on_grid is not None:
                te = te[on_grid[te]]
            tested[te] = True
            folds.append((tr, te))
            tab_rows.append(tr if on_grid is None else tr[on_grid[tr]])
            for c in range(H):
                ytr = Y[tab_rows[-1], c]
                lab = ytr[np.isfinite(ytr)]
                if (lab == 1).sum() == 0 or (lab == 0).sum() == 0:
                    raise InputError("StackingMetaLearner: an inner training fold has only one label class")
        if not folds:
            raise InputError("StackingMetaLearner: the inner splitter produced no folds")
        jobs = self._plan(models, Xa, Y, R2, folds, tab_rows, segments, multi, on_fit)
        results = self._run(jobs)

        # collect: the same order as _plan
        K = len(models)
        oof = np.full((n, K, H), np.nan)
        it = iter(results)
        base = []
        for _tr, te in folds + [(None, None)]:
            for j, (name, m) in enumerate(models):
                shared = multi and self.share_horizons and getattr(m, "supports_multi_output", False)
                got = [next(it)] if shared else [next(it) for _ in range(H)]
                if te is not None:
                    oof[te, j, :] = got[0] if shared else np.column_stack([g[:, 0] for g in got])
                elif not multi:
                    base.append((name, got[0]))
                else:
                    base.append((name, got[0] if shared else PerHorizonModel(got)))

        stackers, heads, rows_h, stack_X = [], [], [], []
        for c in range(H):
            rows = np.flatnonzero(tested & np.isfinite(Y[:, c]))
            Z = self._design(oof[:, :, c], Rg)
            yz = Y[rows, c].astype(np.int64)
            if (yz == 1).sum() == 0 or (yz == 0).sum() == 0:
                raise InputError("StackingMetaLearner: out-of-fold rows hold only one label class")
            stacker = LogisticRegression(C=self.C, max_iter=1000)
            stacker.fit(Z[rows], yz)
            head = None
            if R2 is not None:
                rr = rows[np.isfinite(R2[rows, c])]
                if rr.size:
                    head = Ridge(alpha=self.ridge_alpha).fit(Z[rr], R2[rr, c])
            stackers.append(stacker)
            heads.append(head)
            rows_h.append(rows)
            stack_X.append(Z[rows])

        self.regime_ = reg
        self.base_models_ = base
        self.base_names_ = tuple(name for name, _ in base)
        self.n_horizons_ = H if multi else 0
        self.oof_ = oof if multi else oof[:, :, 0]
        self.stack_rows_ = rows_h if multi else rows_h[0]
        self.stack_X_ = stack_X if multi else stack_X[0]
        self.inner_folds_ = folds
        self.stackers_ = tuple(stackers)  # one logistic stacker per horizon (label column)
        self.return_heads_ = tuple(heads)
        # one per horizon (a tuple) after a multi-horizon fit, else the single stacker / head
        self.stacker_: Any = tuple(stackers) if multi else stackers[0]
        self.return_head_: Any = tuple(heads) if multi else heads[0]
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = Xa.shape[1]
        return self

    # ---------------------------------------------------------------------------------------------
    def _check(self) -> None:
        if not hasattr(self, "stacker_"):
            raise NotFittedError("StackingMetaLearner is not fitted yet: call fit(X, y, close=...) first")

    def _multi(self) -> bool:
        return bool(getattr(self, "n_horizons_", 0))

    def predict_base_proba(self, X: Any, *, segments: Any = None) -> np.ndarray:
        """(n, k) P(up) of the refitted base models, columns in ``base_names_`` order (NaN where a
        sequence model has no full history); (n, k, H) after a multi-horizon fit."""
        self._check()
        Xa = check_X_2d(X, "StackingMetaLearner", self.n_features_in_)
        if self._multi():
            return np.stack([self._base_up(est, Xa, None, segments) for _, est in self.base_models_], axis=1)
        return np.column_stack([self._base_p(est, Xa, None, segments) for _, est in self.base_models_])

    def _Zs(self, X: Any, close: Any, segments: Any, P: np.ndarray | None = None) -> list[np.ndarray]:
        if P is None:
            P = self.predict_base_proba(X, segments=segments)
        R = self._regime_cols(self.regime_, close, P.shape[0], segments)
        if self._multi():
            return [self._design(P[:, :, c], R) for c in range(P.shape[2])]
        return [self._design(P, R)]

    def _Z(self, X: Any, close: Any, segments: Any) -> np.ndarray:
        return self._Zs(X, close, segments)[0]

    def predict_all(self, X: Any, *, close: Any = None, segments: Any = None) -> dict[str, np.ndarray]:
        """Everything one pass gives: ``base`` (n, k, H) base P(up), ``p_up`` (n, H) meta P(up),
        ``exp_return`` (n, H) meta expected return (NaN without a return head); H = 1 after a
        single-label fit. The base models are evaluated once."""
        self._check()
        P = self.predict_base_proba(X, segments=segments)
        P3 = P if P.ndim == 3 else P[:, :, None]
        Zs = self._Zs(X, close, segments, P)
        st = self.stacker_ if self._multi() else (self.stacker_,)
        hd = self.return_head_ if self._multi() else (self.return_head_,)
        p = np.column_stack([s.predict_proba(Z)[:, 1] for s, Z in zip(st, Zs)])
        r = np.column_stack([h.predict(Z) if h is not None else np.full(Z.shape[0], np.nan) for h, Z in zip(hd, Zs)])
        return {"base": P3, "p_up": p, "exp_return": r}

    def predict_proba(self, X: Any, *, close: Any = None, segments: Any = None) -> np.ndarray | list[np.ndarray]:
        """Meta (n, 2), P(up) in column 1 (a list of (n, 2), one per horizon, after a
        multi-horizon fit). ``close`` is required when ``use_regime``."""
        self._check()
        if self._multi():
            p = self.predict_all(X, close=close, segments=segments)["p_up"]
            return [np.column_stack([1.0 - p[:, c], p[:, c]]) for c in range(p.shape[1])]
        return self.stacker_.predict_proba(self._Z(X, close, segments))

    def predict(self, X: Any, *, close: Any = None, segments: Any = None) -> np.ndarray:
        if self._multi():
            return (self.predict_all(X, close=close, segments=segments)["p_up"] >= 0.5).astype(np.int64)
        # a single-label fit: predict_proba gives one (n, 2) array
        p = cast(np.ndarray, self.predict_proba(X, close=close, segments=segments))
        return (p[:, 1] >= 0.5).astype(np.int64)

    def predict_return(self, X: Any, *, close: Any = None, segments: Any = None) -> np.ndarray:
        """Meta expected forward return (ridge head on the stacked columns); (n, H) after a
        multi-horizon fit."""
        self._check()
        heads = self.return_head_ if self._multi() else (self.return_head_,)
        if any(h is None for h in heads):
            raise InputError(
                "StackingMetaLearner: fit(..., returns=...) was not given forward returns, "
                "so there is no expected-return head"
            )
        if self._multi():
            return self.predict_all(X, close=close, segments=segments)["exp_return"]
        return self.return_head_.predict(self._Z(X, close, segments))


class PerHorizonModel:
    """A single-label base model fitted once per horizon, seen as one multi-output model: the
    meta-learner's refit of XGBoost/LightGBM (or of any model with ``share_horizons = false``) in
    a multi-horizon fit. ``estimators_[c]`` is the model of label column c."""

    def __init__(self, estimators: list) -> None:
        self.estimators_ = list(estimators)

    @property
    def uses_sequences(self) -> bool:
        return bool(getattr(self.estimators_[0], "uses_sequences", False))

    @property
    def seq_len(self) -> int:
        return int(getattr(self.estimators_[0], "seq_len", 1))

    @property
    def mu_up_(self) -> np.ndarray:
        return np.array([e.mu_up_ for e in self.estimators_], dtype=np.float64)

    @property
    def mu_down_(self) -> np.ndarray:
        return np.array([e.mu_down_ for e in self.estimators_], dtype=np.float64)

    def predict_up(self, X: Any, **kw: Any) -> np.ndarray:
        return np.column_stack([e.predict_up(X, **kw)[:, 0] for e in self.estimators_])
