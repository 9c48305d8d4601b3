"""Gradient-boosted and bagged trees on the tabular features: XGBoost, LightGBM, RandomForest.

Each is a binary classifier of the direction label (see :mod:`research.models.base` for the label,
the NaN rules and the expected-return mapping). Trees accept NaN features natively. All three are
seeded and single-threaded by default (``n_jobs``), which makes two fits bit-identical.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from research.models.base import ModelBase, check_label_matrix, check_labels, check_returns, check_X_2d

__all__ = ["LightGBMModel", "RandomForestModel", "XGBoostModel"]


class _TreeModel(ModelBase):
    def _make(self):  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, X: Any, y: Any, *, returns: Any = None) -> _TreeModel:
        name = type(self).__name__
        Xa = check_X_2d(X, name)
        if self.supports_multi_output:
            ya = check_label_matrix(y, Xa.shape[0], name)
        else:
            ya = check_labels(y, Xa.shape[0], name)
        ra = check_returns(returns, Xa.shape[0], name)
        if ya.ndim == 2:
            # one multi-output model for every label column: trained on the rows labelled in ALL
            # columns (inside a walk-forward window the horizons differ only at data gaps)
            used = np.isfinite(ya).all(axis=1)
            for h in range(ya.shape[1]):
                check_labels(ya[used, h], int(used.sum()), f"{name} (rows labelled in every column)")
        else:
            used = np.isfinite(ya)
        model = self._make()
        model.fit(Xa[used], ya[used].astype(np.int64))
        self.model_ = model
        self.n_features_in_ = Xa.shape[1]
        self._fit_return_map(ya, ra, used)
        return self

    def predict_proba(self, X: Any) -> np.ndarray | list[np.ndarray]:
        """(n, 2) with P(up) in column 1; after a multi-output fit a list of (n, 2), one per column."""
        self._check_fitted()
        Xa = check_X_2d(X, type(self).__name__, self.n_features_in_)
        p = self.model_.predict_proba(Xa)
        if isinstance(p, list):
            return [np.asarray(q, dtype=np.float64) for q in p]
        return np.asarray(p, dtype=np.float64)


class XGBoostModel(_TreeModel):
    """XGBoost ``hist`` classifier (seeded; ``n_jobs`` threads)."""

    def __init__(
        self,
        n_estimators: int = 300,
        max_depth: int = 6,
        learning_rate: float = 0.05,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        min_child_weight: float = 50.0,
        reg_lambda: float = 1.0,
        n_jobs: int = 1,
        seed: int = 7,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.n_jobs = n_jobs
        self.seed = seed

    def _make(self):
        import xgboost as xgb

        return xgb.XGBClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            min_child_weight=self.min_child_weight,
            reg_lambda=self.reg_lambda,
            tree_method="hist",
            n_jobs=self.n_jobs,
            random_state=self.seed,
            objective="binary:logistic",
            eval_metric="logloss",
            verbosity=0,
        )


class LightGBMModel(_TreeModel):
    """LightGBM classifier with ``deterministic=True`` and row-wise histograms (seeded)."""

    def __init__(
        self,
        n_estimators: int = 300,
        num_leaves: int = 63,
        learning_rate: float = 0.05,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        min_child_samples: int = 100,
        reg_lambda: float = 1.0,
        n_jobs: int = 1,
        seed: int = 7,
    ) -> None:
        self.n_estimators = n_estimators
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.min_child_samples = min_child_samples
        self.reg_lambda = reg_lambda
        self.n_jobs = n_jobs
        self.seed = seed

    def _make(self):
        import lightgbm as lgb

        return lgb.LGBMClassifier(
            n_estimators=self.n_estimators,
            num_leaves=self.num_leaves,
            learning_rate=self.learning_rate,
            subsample=self.subsample,
            subsample_freq=1 if self.subsample < 1 else 0,
            colsample_bytree=self.colsample_bytree,
            min_child_samples=self.min_child_samples,
            reg_lambda=self.reg_lambda,
            n_jobs=self.n_jobs,
            random_state=self.seed,
            deterministic=True,
            force_row_wise=True,
            verbose=-1,
        )


class RandomForestModel(_TreeModel):
    """scikit-learn RandomForest: ``max_samples`` rows per tree keep it fast (MEASUREMENTS).

    Multi-output: ``fit(X, Y)`` with an (n, H) label matrix grows ONE forest whose leaves hold
    the class frequencies of every column (splits minimise the summed Gini impurity), so the
    walk-forward fits one forest for the 1/4/24 h labels instead of three."""

    supports_multi_output = True

    def __init__(
        self,
        n_estimators: int = 100,
        max_depth: int = 8,
        max_samples: float = 0.25,
        min_samples_leaf: int = 20,
        max_features: float = 0.5,
        n_jobs: int = 1,
        seed: int = 7,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.max_samples = max_samples
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.n_jobs = n_jobs
        self.seed = seed

    def _make(self):
        from sklearn.ensemble import RandomForestClassifier

        return RandomForestClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            max_samples=self.max_samples,
            min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features,
            bootstrap=True,
            n_jobs=self.n_jobs,
            random_state=self.seed,
        )
