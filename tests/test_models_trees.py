"""Tabular models (XGBoost, LightGBM, RandomForest), the registry and configs: contract,
determinism, a planted signal, chance level on shuffled real labels."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from engine.errors import InputError
from research.models.base import CONFIGS, MODEL_NAMES, TINY_PARAMS, ModelsConfig, make_model, model_class
from tests.conftest import require_shared

TREES = ("xgboost", "lightgbm", "random_forest")


def planted(n=1500, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 6))
    X[rng.random((n, 6)) < 0.02] = np.nan  # trees take NaN features
    s = np.nan_to_num(X[:, 0]) - 0.7 * np.nan_to_num(X[:, 2])
    y = (s + 0.8 * rng.normal(size=n) > 0).astype(float)
    ret = 0.01 * s + 0.005 * rng.normal(size=n)
    return X, y, ret


def real_features(n_rows=9000):
    """Causal features of real BTC/USDT hours (lagged returns, trailing volatility) and the
    next-bar up label; rows with any NaN dropped."""
    require_shared()
    from engine.store.panel import load_shared_panel

    p = load_shared_panel(["binance_BTCUSDT_1h"])
    c = p.close[-(n_rows + 60) :, 0]
    lr = np.diff(np.log(c), prepend=np.nan)
    feats = [lr]
    for k in (2, 4, 12, 24):
        feats.append(np.log(c) - np.log(np.roll(c, k)))
    vol = np.array([np.nan] * 24 + [np.std(lr[i - 23 : i + 1]) for i in range(24, len(c))])
    feats.append(vol)
    X = np.column_stack(feats)
    X[:25] = np.nan
    nxt = np.append(c[1:], np.nan)
    y = np.where(np.isfinite(nxt) & np.isfinite(c), (nxt > c).astype(float), np.nan)
    ok = np.isfinite(X).all(axis=1) & np.isfinite(y)
    return X[ok][-n_rows:], y[ok][-n_rows:]


@pytest.mark.parametrize("name", TREES)
def test_contract_clone_fit_returns_self_fitted_attributes(name):
    X, y, ret = planted(400)
    m = make_model(name, tiny=True, seed=3)
    with pytest.raises(NotFittedError):
        m.predict_proba(X)
    c = clone(m)
    assert c.get_params() == m.get_params() and c is not m
    assert m.set_params(seed=4) is m and m.seed == 4
    assert m.fit(X, y, returns=ret) is m
    fitted = [a for a in vars(m) if a.endswith("_") and not a.startswith("_")]
    assert {"model_", "n_features_in_", "classes_", "mu_up_", "mu_down_"} <= set(fitted)
    assert not any(a.endswith("_") for a in vars(clone(m)))  # clone carries params only
    p = m.predict_proba(X)
    assert p.shape == (400, 2) and np.allclose(p.sum(axis=1), 1.0)
    assert set(np.unique(m.predict(X))) <= {0, 1}
    # the expected-return mapping: P(up) mu_up + (1 - P(up)) mu_down, from the training rows
    assert m.mu_up_ == pytest.approx(ret[y == 1].mean()) and m.mu_down_ == pytest.approx(ret[y == 0].mean())
    assert np.allclose(m.predict_return(X), p[:, 1] * m.mu_up_ + p[:, 0] * m.mu_down_)
    with pytest.raises(InputError, match="features"):
        m.predict_proba(X[:, :3])
    with pytest.raises(InputError, match="returns"):
        make_model(name, tiny=True).fit(X, y).predict_return(X)


@pytest.mark.parametrize("name", TREES)
def test_labels_nan_rows_skipped_and_bad_labels_refused(name):
    X, y, _ = planted(400)
    y2 = y.copy()
    y2[:50] = np.nan
    a = make_model(name, tiny=True).fit(X, y2).predict_proba(X)
    b = make_model(name, tiny=True).fit(X[50:], y[50:]).predict_proba(X)
    assert np.array_equal(a, b)
    with pytest.raises(InputError, match="both up"):
        make_model(name, tiny=True).fit(X, np.ones(400))
    with pytest.raises(InputError, match="0 \\(down\\)"):
        make_model(name, tiny=True).fit(X, y * 2)


@pytest.mark.parametrize("name", TREES)
def test_same_seed_bit_identical_and_learns_planted_signal(name):
    X, y, _ = planted(1500)
    tr, te = slice(0, 1000), slice(1000, None)
    p1 = make_model(name, tiny=True, seed=11).fit(X[tr], y[tr]).predict_proba(X[te])
    p2 = make_model(name, tiny=True, seed=11).fit(X[tr], y[tr]).predict_proba(X[te])
    assert np.array_equal(p1, p2)
    assert roc_auc_score(y[te], p1[:, 1]) > 0.75


@pytest.mark.parametrize("name", TREES)
def test_shuffled_real_labels_give_chance_auc(name):
    X, y = real_features(9000)
    rng = np.random.default_rng(5)
    tr, te = slice(0, 6000), slice(6000, None)
    ys = y[tr].copy()
    rng.shuffle(ys)
    m = make_model(name, tiny=True, seed=1).fit(X[tr], ys)
    auc = roc_auc_score(y[te], m.predict_proba(X[te])[:, 1])
    assert abs(auc - 0.5) < 0.04, auc  # 3,000 test hours: sd of AUC ~0.011
    # the same model on the real labels stays in the range real skill lives in (no leak)
    real = roc_auc_score(y[te], make_model(name, tiny=True, seed=1).fit(X[tr], y[tr]).predict_proba(X[te])[:, 1])
    assert real < 0.6, real


def test_registry_configs_and_tiny_sizes():
    assert set(MODEL_NAMES) == {"xgboost", "lightgbm", "random_forest", "lstm", "transformer", "meta", "regime"}
    for name in ("xgboost", "lightgbm", "random_forest", "lstm", "transformer", "regime"):
        cls = model_class(name)
        # the constructor defaults are the research defaults of the config section
        assert cls().get_params() == CONFIGS[name]().model_dump(), name
        assert make_model(name, tiny=True).get_params() == {**cls().get_params(), **TINY_PARAMS[name]}
    cfg = ModelsConfig(xgboost={"n_estimators": 5})
    assert make_model("xgboost", config=cfg.xgboost).n_estimators == 5
    with pytest.raises(InputError, match="unknown model"):
        make_model("svm")
    assert make_model("random_forest").get_params()["max_samples"] == 0.25


def test_random_forest_multi_output_one_forest_for_every_column():
    """RandomForest with an (n, H) label matrix grows ONE forest (scikit-learn multi-output) on the
    rows labelled in every column; each column keeps its own signal; seeded fits are identical;
    XGBoost/LightGBM refuse a label matrix (the meta-learner fits them per horizon)."""
    from sklearn.ensemble import RandomForestClassifier

    X, y, ret = planted(1500)
    rng = np.random.default_rng(2)
    y2 = (np.nan_to_num(X[:, 3]) + 0.8 * rng.normal(size=1500) > 0).astype(float)
    Y = np.column_stack([y, y2])
    Y[-50:, 1] = np.nan  # a longer horizon's missing label tail
    R = np.column_stack([ret, ret * 2])
    tr, te = np.arange(1200), np.arange(1200, 1450)
    m = make_model("random_forest", n_estimators=40, max_depth=6, seed=3).fit(X[tr], Y[tr], returns=R[tr])
    m2 = make_model("random_forest", n_estimators=40, max_depth=6, seed=3).fit(X[tr], Y[tr], returns=R[tr])
    assert m.model_.n_outputs_ == 2 and len(m.model_.estimators_) == 40
    P = m.predict_up(X)
    assert P.shape == (1500, 2) and np.array_equal(P, m2.predict_up(X))
    assert roc_auc_score(Y[te, 0], P[te, 0]) > 0.7 and roc_auc_score(Y[te, 1], P[te, 1]) > 0.7
    # exactly scikit-learn's multi-output forest on the fully labelled rows
    ok = np.isfinite(Y[tr]).all(axis=1)
    ref = RandomForestClassifier(
        n_estimators=40, max_depth=6, max_samples=0.25, min_samples_leaf=20, max_features=0.5, random_state=3
    ).fit(X[tr][ok], Y[tr][ok].astype(int))
    assert np.array_equal(P[:, 1], ref.predict_proba(X)[1][:, 1])
    assert m.mu_up_.shape == (2,) and np.isfinite(m.mu_up_).all()
    er = m.predict_return(X)
    assert np.allclose(er, P * m.mu_up_ + (1 - P) * m.mu_down_)
    for name in ("xgboost", "lightgbm"):
        with pytest.raises(InputError):
            make_model(name, tiny=True).fit(X[tr], Y[tr])
