"""Shared pieces of the research models: input checks, the return mapping, configs, registry.

Every model follows the scikit-learn estimator contract: ``__init__`` only stores its parameters,
``fit(X, y, ...)`` returns ``self``, fitted attributes end in ``_``, ``predict_proba(X)`` returns an
``(n, 2)`` array with P(up) in column 1, and ``get_params``/``set_params``/``clone`` work.

Labels
------
``y`` is the binary direction label of the row's horizon (1 = up, 0 = not up). ``NaN`` in ``y``
means "no label" (the label window runs past the data): such a row is never a training target
(the sequence models still use its features as history for later rows).

Expected return (one definition for every base model)
-----------------------------------------------------
``predict_return(X) = P(up) * mu_up_ + (1 - P(up)) * mu_down_`` where ``mu_up_``/``mu_down_`` are
the mean forward returns of the training rows labelled up/down (given to ``fit`` as ``returns=``,
the same horizon's forward return, e.g. ``close[t+h] / close[t] - 1``). It is the expectation of the
return under the model's P(up) and the training window's conditional return means; it is exact
when P(up) is calibrated and the return distribution within each direction does not depend on X.
Without ``returns`` the model still classifies, and ``predict_return`` raises a clear error.
The meta-learner has its own regression head (see :mod:`research.models.meta`).

Research-sized defaults (the constructor defaults, from docs MEASUREMENTS) and tiny test sizes are
both kept here: :data:`TINY_PARAMS` and :func:`make_model`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.exceptions import NotFittedError

from engine.config import Frozen
from engine.errors import InputError

__all__ = [
    "BASE_MODEL_NAMES",
    "MODEL_NAMES",
    "TINY_PARAMS",
    "ModelBase",
    "ModelsConfig",
    "check_X_2d",
    "check_label_matrix",
    "check_labels",
    "make_model",
    "model_class",
]

BASE_MODEL_NAMES: tuple[str, ...] = ("xgboost", "lightgbm", "random_forest", "lstm", "transformer")
MODEL_NAMES: tuple[str, ...] = BASE_MODEL_NAMES + ("meta", "regime")


# ------------------------------------------------------------------------------------------------
# input checks


def check_X_2d(X: Any, owner: str, n_features: int | None = None) -> np.ndarray:
    """``X`` as a float64 2-D array (NaN allowed: trees handle it, nets treat the row as invalid)."""
    if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):
        X = X.to_numpy()
    try:
        a = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InputError(f"{owner}: X must be numeric: {e}") from None
    if a.ndim == 1:
        a = a.reshape(-1, 1)
    if a.ndim != 2:
        raise InputError(f"{owner}: X must be 2-D (rows, features), got shape {a.shape}")
    if a.shape[0] == 0:
        raise InputError(f"{owner}: X has no rows")
    if np.isinf(a).any():
        raise InputError(f"{owner}: X contains inf")
    if n_features is not None and a.shape[1] != n_features:
        raise InputError(f"{owner}: X has {a.shape[1]} features, the model was fitted on {n_features}")
    return a


def check_labels(y: Any, n: int, owner: str) -> np.ndarray:
    """``y`` as float64 (n,) of 0/1/NaN; at least one 0 and one 1 among the labelled rows."""
    if hasattr(y, "to_numpy") and not isinstance(y, np.ndarray):
        y = y.to_numpy()
    try:
        a = np.asarray(y, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise InputError(f"{owner}: y must be numeric 0/1: {e}") from None
    if a.shape[0] != n:
        raise InputError(f"{owner}: y has {a.shape[0]} rows, X has {n}")
    lab = a[np.isfinite(a)]
    if not np.isin(lab, (0.0, 1.0)).all():
        raise InputError(f"{owner}: y must hold 0 (down), 1 (up) or NaN (no label)")
    if (lab == 1).sum() == 0 or (lab == 0).sum() == 0:
        raise InputError(f"{owner}: y needs both up (1) and down (0) labels to fit a classifier")
    return a


def check_returns(returns: Any, n: int, owner: str) -> np.ndarray | None:
    if returns is None:
        return None
    r = np.asarray(returns, dtype=np.float64)
    r = r if r.ndim == 2 else r.reshape(-1)
    if r.shape[0] != n:
        raise InputError(f"{owner}: returns has {r.shape[0]} rows, X has {n}")
    return r


def check_label_matrix(y: Any, n: int, owner: str) -> np.ndarray:
    """``y`` as float64 (n,) like :func:`check_labels`, or (n, H) with every column checked
    (a multi-output fit: one label column per horizon)."""
    if hasattr(y, "to_numpy") and not isinstance(y, np.ndarray):
        y = y.to_numpy()
    a = np.asarray(y, dtype=np.float64)
    if a.ndim == 2 and a.shape[1] > 1:
        if a.shape[0] != n:
            raise InputError(f"{owner}: y has {a.shape[0]} rows, X has {n}")
        for h in range(a.shape[1]):
            check_labels(a[:, h], n, f"{owner} (label column {h})")
        return a
    return check_labels(a.reshape(-1) if a.ndim == 2 else a, n, owner)


def _return_means(y: np.ndarray, returns: np.ndarray, used: np.ndarray) -> tuple[float, float]:
    ok = used & np.isfinite(returns) & np.isfinite(y)
    up = ok & (y == 1)
    dn = ok & (y == 0)
    return (float(returns[up].mean()) if up.any() else np.nan, float(returns[dn].mean()) if dn.any() else np.nan)


# ------------------------------------------------------------------------------------------------
# shared estimator base


class ModelBase(ClassifierMixin, BaseEstimator):
    """Common behaviour of the base models: the return mapping and fitted checks."""

    #: sequence models need rows in time order of one pair (see research.models.sequences)
    uses_sequences: bool = False

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        return tags

    #: fit(X, Y) accepts an (n, H) label matrix (one column per horizon) and learns all H at once
    supports_multi_output: bool = False

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_in_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit(X, y) first")

    def _fit_return_map(self, y: np.ndarray, returns: np.ndarray | None, used: np.ndarray) -> None:
        """Set ``mu_up_``/``mu_down_`` from the training rows ``used`` (bool mask) with a return.
        With an (n, H) label matrix (multi-output fit) they are (H,) arrays, one per column."""
        self.classes_ = np.array([0, 1])
        if y.ndim == 2:
            H = y.shape[1]
            if returns is None:
                # (H,) arrays after a multi-output fit, floats after a single-label one
                self.mu_up_: np.ndarray | float = np.full(H, np.nan)
                self.mu_down_: np.ndarray | float = np.full(H, np.nan)
                return
            r2 = returns.reshape(y.shape[0], -1)
            if r2.shape[1] != H:
                raise InputError(f"{type(self).__name__}: returns has {r2.shape[1]} columns, y has {H}")
            mu = [_return_means(y[:, h], r2[:, h], used) for h in range(H)]
            self.mu_up_ = np.array([a for a, _ in mu])
            self.mu_down_ = np.array([b for _, b in mu])
            return
        if returns is None:
            self.mu_up_ = np.nan
            self.mu_down_ = np.nan
            return
        self.mu_up_, self.mu_down_ = _return_means(y, returns, used)

    def predict_up(self, X: Any, **kw: Any) -> np.ndarray:
        """(n, H) P(up), one column per fitted label column (H = 1 for a single-label fit)."""
        p = self.predict_proba(X, **kw)
        if isinstance(p, list):  # multi-output fit: one (n, 2) array per column (scikit-learn style)
            return np.column_stack([q[:, 1] for q in p])
        return p[:, 1:2]

    def predict(self, X: Any) -> np.ndarray:
        """Direction 1/0 where P(up) >= 0.5 (rows without a prediction: -1); (n, H) after a
        multi-output fit."""
        p = self.predict_up(X)
        out = np.where(p >= 0.5, 1, 0)
        out[~np.isfinite(p)] = -1
        return out[:, 0] if np.ndim(self.mu_up_) == 0 else out

    def predict_return(self, X: Any) -> np.ndarray:
        """Expected forward return: ``P(up) * mu_up_ + (1 - P(up)) * mu_down_`` (see module doc);
        (n, H) after a multi-output fit."""
        p = self.predict_up(X)
        if not (np.isfinite(self.mu_up_).all() and np.isfinite(self.mu_down_).all()):
            raise InputError(
                f"{type(self).__name__}: fit(..., returns=...) was not given forward returns, "
                "so there is no expected-return mapping"
            )
        out = p * np.atleast_1d(self.mu_up_) + (1.0 - p) * np.atleast_1d(self.mu_down_)
        return out[:, 0] if np.ndim(self.mu_up_) == 0 else out


# ------------------------------------------------------------------------------------------------
# configs (research-sized defaults; the estimator constructors use the same defaults, tested)

# upper bounds: far above any sensible run, low enough that a typo cannot ask for an absurd fit
MAX_JOBS = 256  # threads
MAX_SEED = 2**32 - 1  # numpy / sklearn / TensorFlow seeds
MAX_TREES = 100_000
MAX_ROWS = 10_000_000  # rows per leaf
MAX_WIDTH = 4096  # LSTM units, Transformer d_model
MAX_EPOCHS = 10_000
MAX_BATCH = 1 << 20


class XGBoostConfig(Frozen):
    n_estimators: int = Field(300, ge=1, le=MAX_TREES)
    max_depth: int = Field(6, ge=1, le=16)
    learning_rate: float = Field(0.05, gt=0, le=1)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    min_child_weight: float = Field(50.0, ge=0, le=1e9)
    reg_lambda: float = Field(1.0, ge=0, le=1e6)
    n_jobs: int = Field(1, ge=1, le=MAX_JOBS)
    seed: int = Field(7, ge=0, le=MAX_SEED)


class LightGBMConfig(Frozen):
    n_estimators: int = Field(300, ge=1, le=MAX_TREES)
    num_leaves: int = Field(63, ge=2, le=131_072)
    learning_rate: float = Field(0.05, gt=0, le=1)
    subsample: float = Field(0.8, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    min_child_samples: int = Field(100, ge=1, le=MAX_ROWS)
    reg_lambda: float = Field(1.0, ge=0, le=1e6)
    n_jobs: int = Field(1, ge=1, le=MAX_JOBS)
    seed: int = Field(7, ge=0, le=MAX_SEED)


class RandomForestConfig(Frozen):
    n_estimators: int = Field(100, ge=1, le=MAX_TREES)
    max_depth: int = Field(8, ge=1, le=64)
    max_samples: float = Field(0.25, gt=0, le=1)
    min_samples_leaf: int = Field(20, ge=1, le=MAX_ROWS)
    max_features: float = Field(0.5, gt=0, le=1)
    n_jobs: int = Field(1, ge=1, le=MAX_JOBS)
    seed: int = Field(7, ge=0, le=MAX_SEED)


class LSTMConfig(Frozen):
    seq_len: int = Field(48, ge=1, le=1000)
    units: int = Field(32, ge=1, le=MAX_WIDTH)
    epochs: int = Field(2, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(256, ge=1, le=MAX_BATCH)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    train_stride: int = Field(4, ge=1, le=720)
    seed: int = Field(7, ge=0, le=MAX_SEED)


class TransformerConfig(Frozen):
    seq_len: int = Field(48, ge=1, le=1000)
    d_model: int = Field(32, ge=2, le=MAX_WIDTH)
    num_heads: int = Field(2, ge=1, le=64)
    ff_dim: int = Field(64, ge=1, le=4 * MAX_WIDTH)
    epochs: int = Field(2, ge=1, le=MAX_EPOCHS)
    batch_size: int = Field(256, ge=1, le=MAX_BATCH)
    learning_rate: float = Field(1e-3, gt=0, le=1)
    train_stride: int = Field(4, ge=1, le=720)
    seed: int = Field(7, ge=0, le=MAX_SEED)


class RegimeConfig(Frozen):
    trend_bars: int = Field(168, ge=2, le=100_000)
    vol_bars: int = Field(72, ge=2, le=100_000)
    high_vol_quantile: float = Field(0.85, gt=0, lt=1)
    trend_quantile: float = Field(0.7, gt=0, lt=1)
    crash_drawdown: float = Field(0.15, gt=0, lt=1)
    crash_return_quantile: float = Field(0.05, gt=0, lt=0.5)


class MetaConfig(Frozen):
    C: float = Field(1.0, gt=0, le=1e6)
    ridge_alpha: float = Field(1.0, ge=0, le=1e6)
    use_regime: bool = True
    share_horizons: bool = Field(
        True,
        description="one multi-output fit for every horizon where the model "
        "supports it (LSTM, Transformer, RandomForest)",
    )
    n_jobs: int = Field(
        1, ge=1, le=64, description="threads running independent base fits (results do not depend on it)"
    )
    inner_stride: int = Field(
        1,
        ge=1,
        le=24,
        description="inner folds use every k-th hour: tabular models train on it, the stacker is fitted on it",
    )


class ModelsConfig(Frozen):
    """A ``[models]`` config section (for the lead to add to engine.config._sections)."""

    xgboost: XGBoostConfig = XGBoostConfig()
    lightgbm: LightGBMConfig = LightGBMConfig()
    random_forest: RandomForestConfig = RandomForestConfig()
    lstm: LSTMConfig = LSTMConfig()
    transformer: TransformerConfig = TransformerConfig()
    regime: RegimeConfig = RegimeConfig()
    meta: MetaConfig = MetaConfig()


CONFIGS: dict[str, type[Frozen]] = {
    "xgboost": XGBoostConfig,
    "lightgbm": LightGBMConfig,
    "random_forest": RandomForestConfig,
    "lstm": LSTMConfig,
    "transformer": TransformerConfig,
    "regime": RegimeConfig,
    "meta": MetaConfig,
}

#: tiny sizes for tests and the CI config: seconds on a shared 2-core machine
TINY_PARAMS: dict[str, dict[str, Any]] = {
    "xgboost": {"n_estimators": 20, "max_depth": 3, "min_child_weight": 5.0},
    "lightgbm": {"n_estimators": 20, "num_leaves": 7, "min_child_samples": 10},
    "random_forest": {"n_estimators": 10, "max_depth": 4, "max_samples": 0.5, "min_samples_leaf": 5},
    "lstm": {"seq_len": 8, "units": 8, "epochs": 1, "batch_size": 64, "train_stride": 1},
    "transformer": {
        "seq_len": 8,
        "d_model": 8,
        "num_heads": 2,
        "ff_dim": 16,
        "epochs": 1,
        "batch_size": 64,
        "train_stride": 1,
    },
    "regime": {"trend_bars": 48, "vol_bars": 24},
    "meta": {},
}


def model_class(name: str) -> type:
    """The estimator class registered under ``name`` (imports TensorFlow only for the nets' fit)."""
    cls: type
    if name == "xgboost":
        from research.models.trees import XGBoostModel as cls
    elif name == "lightgbm":
        from research.models.trees import LightGBMModel as cls
    elif name == "random_forest":
        from research.models.trees import RandomForestModel as cls
    elif name == "lstm":
        from research.models.lstm import LSTMModel as cls
    elif name == "transformer":
        from research.models.transformer import TransformerModel as cls
    elif name == "meta":
        from research.models.meta import StackingMetaLearner as cls
    elif name == "regime":
        from research.models.regime import RegimeClassifier as cls
    else:
        raise InputError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES)}")
    return cls


def make_model(name: str, *, tiny: bool = False, config: Frozen | None = None, **params: Any):
    """Build a model by registry name: research defaults, or ``tiny`` sizes, or a config section,
    then ``params`` on top (``make_model("xgboost", tiny=True, seed=3)``)."""
    cls = model_class(name)
    kw: dict[str, Any] = {}
    if config is not None:
        if not isinstance(config, CONFIGS[name]):
            raise InputError(f"make_model({name!r}): config must be a {CONFIGS[name].__name__}")
        kw.update(config.model_dump())
    if tiny:
        kw.update(TINY_PARAMS[name])
    kw.update(params)
    return cls(**kw)
