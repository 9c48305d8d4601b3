"""Stacking meta-learner: trained only on out-of-fold base predictions plus the regime state;
deterministic; the full five-model stack on real data through research.folds.PurgedWalkForward."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from engine.errors import InputError
from research.models.base import make_model
from research.models.meta import StackingMetaLearner
from research.models.regime import RegimeClassifier
from tests.conftest import require_shared


class SimplePurgedSplit:
    """Expanding walk-forward: k test blocks, ``purge`` rows dropped before each block."""

    def __init__(self, k=2, purge=24):
        self.k, self.purge = k, purge

    def split(self, X, y=None, groups=None):
        n = len(X)
        first = n // (self.k + 1)
        edges = np.linspace(first, n, self.k + 1).astype(int)
        for a, b in itertools.pairwise(edges):
            yield np.arange(0, a - self.purge), np.arange(a, b)


class DoubleTestSplit:
    def split(self, X, y=None, groups=None):
        yield np.arange(0, 100), np.arange(200, 300)
        yield np.arange(0, 150), np.arange(250, 350)


@pytest.fixture(scope="module")
def real_window():
    """Real BTC/USDT hours: causal features, next-bar label and return, closes."""
    require_shared()
    from engine.store.panel import load_shared_panel

    p = load_shared_panel(["binance_BTCUSDT_1h"])
    c = p.close[-2600:, 0]
    assert np.isfinite(c).all()
    lc = np.log(c)
    X = np.column_stack([lc - np.roll(lc, k) for k in (1, 2, 4, 12)])
    X[:12] = np.nan
    ret = np.append(c[1:] / c[:-1] - 1.0, np.nan)
    y = np.where(np.isfinite(ret), (ret > 0).astype(float), np.nan)
    return X, y, ret, c


def noise_trees(seed=0):
    # a memorising forest (full depth, all rows) and a small booster
    return [
        (
            "random_forest",
            make_model(
                "random_forest", n_estimators=30, max_depth=None, max_samples=1.0, min_samples_leaf=1, seed=seed
            ),
        ),
        ("xgboost", make_model("xgboost", tiny=True, seed=seed)),
    ]


def test_stacker_trains_on_out_of_fold_predictions_only(real_window):
    X, y, ret, c = real_window
    rng = np.random.default_rng(0)
    yn = np.where(np.isfinite(y), rng.integers(0, 2, len(y)).astype(float), np.nan)  # pure noise labels
    cv = SimplePurgedSplit(k=2, purge=24)
    m = StackingMetaLearner(models=noise_trees(), cv=cv, regime=RegimeClassifier(trend_bars=48, vol_bars=24))
    assert m.fit(X, yn, close=c, returns=ret) is m
    folds = list(cv.split(X))
    # 1. every OOF value is the prediction of a clone fitted on that inner fold's training rows only
    for j, (_, base) in enumerate(noise_trees()):
        for tr, te in folds:
            ok = np.isfinite(yn[tr])
            p = clone(base).fit(X[tr][ok], yn[tr][ok]).predict_proba(X[te])[:, 1]
            assert np.array_equal(m.oof_[te, j], p)
    # 2. the stacker's design matrix is built from those OOF values on tested rows only
    rows = m.stack_rows_
    assert np.intersect1d(rows, np.arange(0, folds[0][1][0])).size == 0
    assert np.array_equal(m.stack_X_[:, :2], m.oof_[rows] - 0.5)
    assert np.array_equal(m.stack_X_[:, 2:], m.regime_.transform(c)[rows])
    # 3. ...which are NOT the in-sample predictions: the memorising forest fits noise in-sample,
    #    but its column in the stacker's data carries no information about the labels
    insample = m.base_models_[0][1].predict_proba(X[rows])[:, 1]
    assert roc_auc_score(yn[rows], insample) > 0.9
    assert abs(roc_auc_score(yn[rows], m.stack_X_[:, 0]) - 0.5) < 0.05
    assert not np.allclose(insample - 0.5, m.stack_X_[:, 0])
    # hence the stacker learns no faith in it: its meta P(up) stays near 0.5
    assert np.abs(m.predict_proba(X, close=c)[rows, 1] - 0.5).max() < 0.1


def test_meta_same_seed_bit_identical_and_contract(real_window):
    X, y, ret, c = real_window
    kw = dict(models=noise_trees(3), cv=SimplePurgedSplit(), regime=RegimeClassifier(trend_bars=48, vol_bars=24))
    m1 = StackingMetaLearner(**kw)
    with pytest.raises(NotFittedError):
        m1.predict_proba(X, close=c)
    c1 = clone(m1)
    assert c1.get_params()["cv"] is not None and not hasattr(c1, "stacker_")
    m1.fit(X, y, close=c, returns=ret)
    m2 = StackingMetaLearner(**kw).fit(X, y, close=c, returns=ret)
    assert np.array_equal(m1.predict_proba(X, close=c), m2.predict_proba(X, close=c))
    assert np.array_equal(m1.predict_return(X, close=c), m2.predict_return(X, close=c))
    fitted = {a for a in vars(m1) if a.endswith("_") and not a.startswith("_")}
    assert {"stacker_", "return_head_", "base_models_", "regime_", "oof_", "stack_rows_"} <= fitted
    assert m1.predict_base_proba(X).shape == (len(X), 2) and m1.base_names_ == ("random_forest", "xgboost")
    with pytest.raises(InputError, match="close"):
        StackingMetaLearner(**kw).fit(X, y)
    with pytest.raises(InputError, match="close"):
        m1.predict_proba(X)
    with pytest.raises(InputError, match="twice"):
        StackingMetaLearner(models=noise_trees(), cv=DoubleTestSplit(), use_regime=False).fit(X, y)
    with pytest.raises(InputError, match="returns"):
        StackingMetaLearner(**kw).fit(X, y, close=c).predict_return(X, close=c)
    # no regime: the stacker has one column per base model only
    m3 = StackingMetaLearner(models=noise_trees(), cv=SimplePurgedSplit(), use_regime=False).fit(X, y)
    assert m3.stacker_.coef_.shape == (1, 2)
    # the default inner splitter: expanding PurgedWalkForward with inner_folds blocks and the purge
    m4 = StackingMetaLearner(models=noise_trees(), use_regime=False, inner_folds=2, purge_bars=24).fit(X, y)
    assert len(m4.inner_folds_) == 2
    assert all(tr.max() + 24 < te.min() for tr, te in m4.inner_folds_)


def test_five_model_stack_on_real_data_with_purged_walk_forward(real_window):
    """All five base models (tiny) through research.folds.PurgedWalkForward as the inner splitter,
    trained on the first 2,000 hours, predicting the next 600 unseen hours."""
    from research.folds import PurgedWalkForward

    X, y, ret, c = real_window
    tr = slice(0, 2000)
    cv = PurgedWalkForward(train_bars=800, test_bars=600, purge_bars=24, expanding=True)
    m = StackingMetaLearner(model_size="tiny", cv=cv, seed=1, regime=RegimeClassifier(trend_bars=48, vol_bars=24))
    m.fit(X[tr], y[tr], close=c[tr], returns=ret[tr])
    assert m.base_names_ == ("xgboost", "lightgbm", "random_forest", "lstm", "transformer")
    assert m.stacker_.coef_.shape == (1, 5 + 4)
    assert len(m.inner_folds_) == 2
    for itr, ite in m.inner_folds_:
        assert itr.max() + 24 < ite.min()  # the purge gap holds inside the window
    tested = np.isfinite(m.oof_).all(axis=1)
    assert tested.sum() > 1000 and not tested[:800].any()
    # predict the unseen stretch with its history in front (sequence and regime warm-up), slice it
    p = m.predict_proba(X, close=c)[2000:, 1]
    er = m.predict_return(X, close=c)[2000:]
    assert np.isfinite(p).all() and ((p > 0) & (p < 1)).all() and np.isfinite(er).all()
    ok = np.isfinite(y[2000:])
    auc = roc_auc_score(y[2000:][ok], p[ok])
    assert 0.4 < auc < 0.6, auc  # hourly direction: anything above 0.6 would be a leak
    base = m.predict_base_proba(X)[2000:]
    assert np.isfinite(base).all() and base.shape == (600, 5)


def test_pooled_pairs_with_times_and_segments():
    """Two pairs pooled (rows sorted by pair, then time): the inner purged splitter sees bar times,
    so every bar's rows fall on one side; sequence models never mix the pairs."""
    require_shared()
    from engine.store.panel import load_shared_panel
    from research.folds import PurgedWalkForward

    p = load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"])
    n = 1300
    ts, cc = p.ts[-n:], p.close[-n:]
    Xs, ys, rs = [], [], []
    for j in range(2):
        lc = np.log(cc[:, j])
        X = np.column_stack([lc - np.roll(lc, k) for k in (1, 4, 12)])
        X[:12] = np.nan
        r = np.append(cc[1:, j] / cc[:-1, j] - 1, np.nan)
        Xs.append(X), ys.append(np.where(np.isfinite(r), (r > 0).astype(float), np.nan)), rs.append(r)
    X, y, ret = np.vstack(Xs), np.concatenate(ys), np.concatenate(rs)
    times, seg, close = np.tile(ts, 2), np.repeat(["BTC/USDT", "ETH/USDT"], n), cc.T.reshape(-1)
    models = [
        ("xgboost", make_model("xgboost", tiny=True)),
        ("lstm", make_model("lstm", tiny=True, seq_len=8, learning_rate=1e-2)),
    ]
    cv = PurgedWalkForward(train_bars=500, test_bars=380, purge_bars=24, expanding=True)
    m = StackingMetaLearner(models=models, cv=cv, regime=RegimeClassifier(trend_bars=48, vol_bars=24))
    m.fit(X, y, close=close, returns=ret, times=times, segments=seg)
    for tr, te in m.inner_folds_:
        assert times[tr].max() + 24 * 3600 < times[te].min()
        assert np.array_equal(np.sort(te), np.sort(np.concatenate([te[te < n], te[te >= n]])))
        assert set(times[te[te < n]]) == set(times[te[te >= n]])  # both pairs of a bar together
    P = m.predict_base_proba(X, segments=seg)
    lstm = m.base_models_[1][1]
    assert np.array_equal(P[n:, 1], lstm.predict_proba(X[n:])[:, 1], equal_nan=True)
    assert np.isnan(P[n : n + 19, 1]).all()  # 12 NaN feature rows + 7 rows of warm-up of ETH alone
    pp = m.predict_proba(X, close=close, segments=seg)[:, 1]
    assert np.isfinite(pp).all()
    assert np.array_equal(m.regime_.predict(close, seg)[n:], m.regime_.predict(close[n:]))
    # a second fit with the same seeds (a net included) gives bit-identical meta output
    m2 = clone(m).fit(X, y, close=close, returns=ret, times=times, segments=seg)
    assert np.array_equal(m2.predict_proba(X, close=close, segments=seg)[:, 1], pp)
    assert np.array_equal(
        m2.predict_return(X, close=close, segments=seg), m.predict_return(X, close=close, segments=seg)
    )


def _two_horizons(real_window):
    X, y, ret, c = real_window
    r4 = np.append(c[4:] / c[:-4] - 1.0, [np.nan] * 4)
    y4 = np.where(np.isfinite(r4), (r4 > 0).astype(float), np.nan)
    return X, np.column_stack([y, y4]), np.column_stack([ret, r4]), c


def _mixed_models(seed=0):
    return [
        ("xgboost", make_model("xgboost", tiny=True, seed=seed)),
        ("random_forest", make_model("random_forest", tiny=True, seed=seed)),
        ("lstm", make_model("lstm", tiny=True, seed=seed)),
    ]


def test_multi_horizon_fit_without_sharing_equals_one_meta_per_horizon(real_window):
    """An (n, H) label matrix with share_horizons=False is exactly H single-horizon meta-learners:
    same inner folds, same base fits, same stackers (bit for bit)."""
    X, Y, R, c = _two_horizons(real_window)
    kw = dict(
        models=_mixed_models(), cv=SimplePurgedSplit(k=2, purge=24), regime=RegimeClassifier(trend_bars=48, vol_bars=24)
    )
    mm = StackingMetaLearner(share_horizons=False, **kw).fit(X, Y, close=c, returns=R)
    out = mm.predict_all(X, close=c)
    assert out["base"].shape == (len(X), 3, 2) and out["p_up"].shape == (len(X), 2)
    for col in range(2):
        m1 = StackingMetaLearner(**kw).fit(X, Y[:, col], close=c, returns=R[:, col])
        assert np.array_equal(out["p_up"][:, col], m1.predict_proba(X, close=c)[:, 1])
        assert np.array_equal(out["exp_return"][:, col], m1.predict_return(X, close=c))
        assert np.array_equal(out["base"][:, :, col], m1.predict_base_proba(X), equal_nan=True)
        assert np.array_equal(mm.oof_[:, :, col], m1.oof_, equal_nan=True)


def test_multi_horizon_shared_fits_out_of_fold_and_thread_count_invariant(real_window):
    """share_horizons: the RandomForest and the LSTM are fitted ONCE per inner fold for both
    horizons (multi-output), XGBoost per horizon; every stacker column is still an out-of-fold
    prediction; two threads give bit-identical results to one (each fit seeded, single-threaded,
    stored by position)."""
    X, Y, R, c = _two_horizons(real_window)
    kw = dict(
        models=_mixed_models(1),
        cv=SimplePurgedSplit(k=2, purge=24),
        regime=RegimeClassifier(trend_bars=48, vol_bars=24),
    )
    m1 = StackingMetaLearner(n_jobs=1, **kw).fit(X, Y, close=c, returns=R)
    m2 = StackingMetaLearner(n_jobs=2, **kw).fit(X, Y, close=c, returns=R)
    o1, o2 = m1.predict_all(X, close=c), m2.predict_all(X, close=c)
    for key in ("base", "p_up", "exp_return"):
        assert np.array_equal(o1[key], o2[key], equal_nan=True), key
    assert np.array_equal(m1.oof_, m2.oof_, equal_nan=True)
    # the shared models are multi-output, XGBoost one model per horizon
    names = dict(m1.base_models_)
    assert names["random_forest"].model_.n_outputs_ == 2 and names["lstm"].n_outputs_ == 2
    assert len(names["xgboost"].estimators_) == 2
    # out of fold: the OOF block of each inner fold is a clone fitted on that fold's rows only
    for tr, te in SimplePurgedSplit(k=2, purge=24).split(X):
        rf = clone(dict(_mixed_models(1))["random_forest"]).fit(X[tr], Y[tr])
        assert np.array_equal(m1.oof_[te, 1, :], rf.predict_up(X[te]))
        for col in range(2):
            ok = np.isfinite(Y[tr, col])
            xg = clone(dict(_mixed_models(1))["xgboost"]).fit(X[tr][ok], Y[tr, col][ok])
            assert np.array_equal(m1.oof_[te, 0, col], xg.predict_proba(X[te])[:, 1])
    for col in range(2):
        rows = m1.stack_rows_[col]
        assert np.array_equal(
            m1.stack_X_[col][:, :3], np.where(np.isfinite(m1.oof_[rows, :, col]), m1.oof_[rows, :, col], 0.5) - 0.5
        )
        assert not np.intersect1d(rows, np.arange(0, 866)).size  # the first inner training block is never tested
    assert isinstance(m1.predict_proba(X, close=c), list) and m1.predict_return(X, close=c).shape == (len(X), 2)


def test_inner_stride_trains_tabular_inner_fits_and_the_stacker_on_every_kth_hour():
    """inner_stride=3: the stacker's rows and every out-of-fold prediction lie on hours divisible
    by 3 (all pairs of a bar together); a tabular OOF block is a clone fitted on the fold's
    on-grid training rows only; the refit still uses the whole window."""
    require_shared()
    from engine.store.panel import load_shared_panel
    from research.folds import PurgedWalkForward

    p = load_shared_panel(["binance_BTCUSDT_1h", "binance_ETHUSDT_1h"])
    n = 1300
    ts, cc = p.ts[-n:], p.close[-n:]
    Xs, ys = [], []
    for j in range(2):
        lc = np.log(cc[:, j])
        X = np.column_stack([lc - np.roll(lc, k) for k in (1, 4, 12)])
        X[:12] = np.nan
        r = np.append(cc[1:, j] / cc[:-1, j] - 1, np.nan)
        Xs.append(X), ys.append(np.where(np.isfinite(r), (r > 0).astype(float), np.nan))
    X, y = np.vstack(Xs), np.concatenate(ys)
    times, seg = np.tile(ts, 2), np.repeat([0, 1], n)
    models = [("xgboost", make_model("xgboost", tiny=True)), ("lstm", make_model("lstm", tiny=True))]
    cv = PurgedWalkForward(train_bars=500, test_bars=380, purge_bars=24, expanding=True)
    m = StackingMetaLearner(models=models, cv=cv, use_regime=False, inner_stride=3)
    m.fit(X, y, times=times, segments=seg)
    hour = times // 3600
    assert (hour[m.stack_rows_] % 3 == 0).all() and m.stack_rows_.size > 450  # ~2 x 760 tested hours / 3
    assert np.isnan(m.oof_[hour % 3 != 0]).all()
    for tr, te in m.inner_folds_:
        assert (hour[te] % 3 == 0).all()
        trg = tr[(hour[tr] % 3 == 0) & np.isfinite(y[tr])]
        xg = make_model("xgboost", tiny=True).fit(X[trg], y[trg])
        assert np.array_equal(m.oof_[te, 0], xg.predict_proba(X[te])[:, 1])
    full = make_model("xgboost", tiny=True).fit(X, y)
    assert np.array_equal(m.base_models_[0][1].predict_proba(X)[:, 1], full.predict_proba(X)[:, 1])
