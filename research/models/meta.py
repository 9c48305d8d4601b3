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

``predict_proba(X, close=...)`` is the meta P(up); ``predict_return`` the meta expected return;
``predict_base_proba`` gives the five base P(up) columns for reporting. The strategy layer must
take its decisions from the meta output only; base predictions are for diagnostics.

Prediction inputs: the sequence models and the regime labels need history (``seq_len`` and
``trend_bars`` rows). Pass the test block preceded by warm-up rows and slice the output.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError

from engine.errors import InputError
from research.models.base import BASE_MODEL_NAMES, check_labels, check_returns, check_X_2d, make_model

__all__ = ["StackingMetaLearner"]


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
    """

    def __init__(self, models: list | None = None, cv: Any = None, regime: Any = None,
                 use_regime: bool = True, inner_folds: int = 3, purge_bars: int = 24, C: float = 1.0,
                 ridge_alpha: float = 1.0, model_size: str = "research", seed: int = 7) -> None:
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
        return PurgedWalkForward(train_bars=first, test_bars=test, purge_bars=self.purge_bars,
                                 expanding=True)

    def _regime_cols(self, reg, close: Any, n: int, segments: Any = None) -> np.ndarray:
        if not self.use_regime:
            return np.zeros((n, 0))
        if close is None:
            raise InputError("StackingMetaLearner: close= (the pair's close prices, one per row) is "
                             "required for the regime state (or set use_regime=False)")
        c = np.asarray(close, dtype=np.float64).reshape(-1)
        if c.shape[0] != n:
            raise InputError(f"StackingMetaLearner: close has {c.shape[0]} rows, X has {n}")
        return reg.transform(c, segments)

    @staticmethod
    def _base_fit(est, X, y, rows: np.ndarray | None, returns=None, segments=None):
        """Fit ``est`` on ``rows`` of the window (all rows when None)."""
        if getattr(est, "uses_sequences", False):
            if rows is None:
                return est.fit(X, y, returns=returns, segments=segments)
            valid = np.zeros(X.shape[0], dtype=bool)
            valid[rows] = True
            ym = np.full(X.shape[0], np.nan)
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
            return est.predict_proba(X[lo:hi], segments=seg)[rows - lo, 1]
        return est.predict_proba(X if rows is None else X[rows])[:, 1]

    @staticmethod
    def _design(P: np.ndarray, R: np.ndarray) -> np.ndarray:
        return np.column_stack([np.where(np.isfinite(P), P, 0.5) - 0.5, R])

    # ---------------------------------------------------------------------------------------------
    def fit(self, X: Any, y: Any, *, close: Any = None, returns: Any = None, times: Any = None,
            segments: Any = None) -> "StackingMetaLearner":
        from sklearn.linear_model import LogisticRegression, Ridge

        from research.models.regime import RegimeClassifier

        Xa = check_X_2d(X, "StackingMetaLearner")
        n = Xa.shape[0]
        ya = check_labels(y, n, "StackingMetaLearner")
        ra = check_returns(returns, n, "StackingMetaLearner")
        models = self._models()

        reg = None
        if self.use_regime:
            reg = clone(self.regime) if self.regime is not None else RegimeClassifier()
            if close is None:
                self._regime_cols(None, None, n)
            reg.fit(np.asarray(close, dtype=np.float64).reshape(-1), segments=segments)
        R = self._regime_cols(reg, close, n, segments)

        # 1. out-of-fold base predictions over the inner purged folds
        oof = np.full((n, len(models)), np.nan)
        tested = np.zeros(n, dtype=bool)
        folds = []
        for tr, te in self._cv(n, times).split(Xa, ya, times):
            tr = np.asarray(tr, dtype=np.int64)
            te = np.asarray(te, dtype=np.int64)
            if tested[te].any():
                raise InputError("StackingMetaLearner: the inner splitter tests a row twice; "
                                 "use a walk-forward splitter (each row tested at most once)")
            tested[te] = True
            folds.append((tr, te))
            ytr = ya[tr]
            lab = ytr[np.isfinite(ytr)]
            if (lab == 1).sum() == 0 or (lab == 0).sum() == 0:
                raise InputError("StackingMetaLearner: an inner training fold has only one label class")
            for j, (_, m) in enumerate(models):
                est = self._base_fit(clone(m), Xa, ya, tr, segments=segments)
                oof[te, j] = self._base_p(est, Xa, te, segments)
        if not folds:
            raise InputError("StackingMetaLearner: the inner splitter produced no folds")

        rows = np.flatnonzero(tested & np.isfinite(ya))
        Z = self._design(oof, R)
        yz = ya[rows].astype(np.int64)
        if (yz == 1).sum() == 0 or (yz == 0).sum() == 0:
            raise InputError("StackingMetaLearner: out-of-fold rows hold only one label class")
        stacker = LogisticRegression(C=self.C, max_iter=1000)
        stacker.fit(Z[rows], yz)
        head = None
        if ra is not None:
            rr = rows[np.isfinite(ra[rows])]
            if rr.size:
                head = Ridge(alpha=self.ridge_alpha).fit(Z[rr], ra[rr])

        # 2. base models refitted on the whole window
        base = [(name, self._base_fit(clone(m), Xa, ya, None, ra, segments)) for name, m in models]

        self.regime_ = reg
        self.base_models_ = base
        self.base_names_ = tuple(name for name, _ in base)
        self.oof_ = oof
        self.stack_rows_ = rows
        self.stack_X_ = Z[rows]
        self.inner_folds_ = folds
        self.stacker_ = stacker
        self.return_head_ = head
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = Xa.shape[1]
        return self

    # ---------------------------------------------------------------------------------------------
    def _check(self) -> None:
        if not hasattr(self, "stacker_"):
            raise NotFittedError("StackingMetaLearner is not fitted yet: call fit(X, y, close=...) first")

    def predict_base_proba(self, X: Any, *, segments: Any = None) -> np.ndarray:
        """(n, k) P(up) of the refitted base models, columns in ``base_names_`` order (NaN where a
        sequence model has no full history)."""
        self._check()
        Xa = check_X_2d(X, "StackingMetaLearner", self.n_features_in_)
        return np.column_stack([self._base_p(est, Xa, None, segments) for _, est in self.base_models_])

    def _Z(self, X: Any, close: Any, segments: Any) -> np.ndarray:
        P = self.predict_base_proba(X, segments=segments)
        R = self._regime_cols(self.regime_, close, P.shape[0], segments)
        return self._design(P, R)

    def predict_proba(self, X: Any, *, close: Any = None, segments: Any = None) -> np.ndarray:
        """Meta (n, 2), P(up) in column 1. ``close`` is required when ``use_regime``."""
        self._check()
        return self.stacker_.predict_proba(self._Z(X, close, segments))

    def predict(self, X: Any, *, close: Any = None, segments: Any = None) -> np.ndarray:
        return (self.predict_proba(X, close=close, segments=segments)[:, 1] >= 0.5).astype(np.int64)

    def predict_return(self, X: Any, *, close: Any = None, segments: Any = None) -> np.ndarray:
        """Meta expected forward return (ridge head on the stacked columns)."""
        self._check()
        if self.return_head_ is None:
            raise InputError("StackingMetaLearner: fit(..., returns=...) was not given forward returns, "
                             "so there is no expected-return head")
        return self.return_head_.predict(self._Z(X, close, segments))
