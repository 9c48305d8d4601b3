"""Sequence models (LSTM, Transformer) and the causal sequence builder: contract, causality,
bit-identical seeded fits, a planted signal, chance level on shuffled real labels."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.metrics import roc_auc_score

from engine.errors import InputError
from research.models.base import make_model
from research.models.sequences import make_sequences, sequence_ends
from tests.conftest import require_shared

NETS = ("lstm", "transformer")
SEQ_PARAMS = {"seq_len": 8, "epochs": 3, "learning_rate": 1e-2, "train_stride": 1}


def planted_seq(n=700, seed=0):
    """Label at t depends on the feature vector at t and 3 rows earlier (a sequence signal)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    s = X[:, 0] + np.roll(X[:, 1], 3)
    y = (s + 0.6 * rng.normal(size=n) > 0).astype(float)
    y[:3] = np.nan
    return X, y


def test_make_sequences_windows_are_exact_rows_and_end_at_t():
    X = np.arange(40, dtype=float).reshape(20, 2)
    seqs, ends = make_sequences(X, 5)
    assert ends.tolist() == list(range(4, 20))
    for s, t in zip(seqs, ends):
        assert np.array_equal(s, X[t - 4 : t + 1])  # rows t-4..t, never a later row
    assert seqs.dtype == np.float32 and seqs.shape == (16, 5, 2)


def test_make_sequences_drops_windows_crossing_invalid_rows():
    X = np.ones((20, 2))
    X[7, 1] = np.nan
    valid = np.ones(20, dtype=bool)
    valid[14] = False
    _, ends = make_sequences(X, 4, valid)
    # windows containing row 7 (ends 7..10) or row 14 (ends 14..17) are gone
    assert ends.tolist() == [3, 4, 5, 6, 11, 12, 13, 18, 19]
    assert sequence_ends(np.ones(3, dtype=bool), 5).size == 0


def test_make_sequences_is_causal_perturbing_the_future():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(50, 3))
    Y = X.copy()
    Y[30:] = rng.normal(size=(20, 3)) * 100
    Y[35, 0] = np.nan
    a, ea = make_sequences(X, 6)
    b, eb = make_sequences(Y, 6)
    keep = ea < 30
    assert np.array_equal(a[keep], b[eb < 30]) and np.array_equal(ea[keep], eb[eb < 30])


def test_tensorflow_not_imported_by_engine_or_model_modules():
    """TensorFlow (~4.5 s, 700 MB) is imported only inside the nets' fit/predict."""
    import subprocess

    code = (
        "import sys, engine.config, research.models.base, research.models.trees, research.models.lstm, "
        "research.models.transformer, research.models.meta, research.models.regime; "
        "from research.models.base import make_model; make_model('lstm'); make_model('meta'); "
        "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module", params=NETS)
def twin_fits(request):
    """Two fits of the same net with the same seed on the planted data."""
    X, y = planted_seq()
    ms = [make_model(request.param, tiny=True, seed=5, **SEQ_PARAMS).fit(X[:500], y[:500]) for _ in range(2)]
    return request.param, X, y, ms


def test_same_seed_bit_identical_and_learns_planted_signal(twin_fits):
    name, X, y, (m1, m2) = twin_fits
    p1, p2 = m1.predict_proba(X), m2.predict_proba(X)
    assert np.array_equal(p1, p2, equal_nan=True)  # bit-identical, NaN rows included
    assert np.isnan(p1[:7]).all() and np.isfinite(p1[7:]).all()  # no full 8-row history before row 7
    te = np.arange(500, 700)
    auc = roc_auc_score(y[te], p1[te, 1])
    assert auc > 0.7, (name, auc)


def test_contract_and_fitted_attributes(twin_fits):
    name, X, y, (m, _) = twin_fits
    fitted = {a for a in vars(m) if a.endswith("_") and not a.startswith("_")}
    assert {"model_", "n_features_in_", "mean_", "scale_", "classes_"} <= fitted
    c = clone(m)
    assert c.get_params() == m.get_params() and not hasattr(c, "model_")
    with pytest.raises(NotFittedError):
        c.predict_proba(X)
    with pytest.raises(InputError, match="features"):
        m.predict_proba(X[:, :2])
    with pytest.raises(InputError, match="seq_len"):
        m.predict_proba(np.zeros((3, 5, 4)))
    # a 3-D input gives the same P(up) as the 2-D path for the same windows
    seqs, ends = make_sequences(X, m.seq_len)
    p3 = m.predict_proba(seqs.astype(np.float64))
    assert np.allclose(p3[:, 1], m.predict_proba(X)[ends, 1], atol=1e-6)


def test_predictions_at_t_ignore_later_rows(twin_fits):
    name, X, y, (m, _) = twin_fits
    Y = X.copy()
    Y[400:] = np.random.default_rng(9).normal(size=(300, 4)) * 50
    a, b = m.predict_proba(X), m.predict_proba(Y)
    assert np.array_equal(a[:400], b[:400], equal_nan=True)
    assert not np.allclose(a[400:], b[400:])
    # dropping the later rows altogether changes nothing either (fixed prediction batch shapes)
    assert np.array_equal(m.predict_proba(X[:400]), a[:400], equal_nan=True)


def test_valid_mask_excludes_rows_from_training_and_history():
    X, y = planted_seq(300)
    valid = np.ones(300, dtype=bool)
    valid[150:160] = False
    m = make_model("lstm", tiny=True, seed=2, **SEQ_PARAMS).fit(X, y, valid=valid)
    # ends whose window touches rows 150..159 cannot train: 300 - 7 warm-up - 3 unlabeled - 17 windows
    assert m.n_train_sequences_ == len(np.setdiff1d(np.arange(7, 300), np.arange(150, 167)))
    p = m.predict_proba(X, valid=valid)
    assert np.isnan(p[150:167]).all() and np.isfinite(p[167:]).all()


@pytest.mark.parametrize("name", NETS)
def test_shuffled_real_labels_give_chance_auc(name):
    require_shared()
    from engine.store.panel import load_shared_panel

    p = load_shared_panel(["binance_BTCUSDT_1h"])
    c = p.close[-4030:, 0]
    lr = np.diff(np.log(c), prepend=np.nan)
    X = np.column_stack([lr, np.log(c) - np.log(np.roll(c, 4))])
    X[:4] = np.nan
    nxt = np.append(c[1:], np.nan)
    y = np.where(np.isfinite(nxt) & np.isfinite(c), (nxt > c).astype(float), np.nan)
    ys = y.copy()
    tr = np.arange(2500)
    rng = np.random.default_rng(3)
    ys[tr] = rng.permutation(y[tr])
    ys[2500:] = np.nan  # only the first 2,500 hours train
    m = make_model(name, tiny=True, seed=1, **SEQ_PARAMS).fit(X, ys)
    pr = m.predict_proba(X)[:, 1]
    te = np.arange(2524, 4029)
    ok = np.isfinite(pr[te]) & np.isfinite(y[te])
    auc = roc_auc_score(y[te][ok], pr[te][ok])
    assert ok.sum() > 1400 and abs(auc - 0.5) < 0.05, (name, auc)  # ~1,500 hours: sd of AUC ~0.015


def test_segments_keep_each_pairs_sequences_apart(twin_fits):
    """Pairs pooled as contiguous blocks: no window spans two pairs, and a pair's predictions
    equal those of the same model given that pair alone."""
    name, X, y, (m, _) = twin_fits
    seg = np.repeat(["BTC/USD", "ETH/USD"], 350)
    _, ends = make_sequences(X, 8, segments=seg)
    assert not np.isin(np.arange(350, 357), ends).any() and np.isin(np.arange(357, 700), ends).all()
    p = m.predict_proba(X, segments=seg)
    assert np.isnan(p[350:357]).all()
    assert np.array_equal(p[357:], m.predict_proba(X[350:])[7:])  # bit for bit (fixed batch shapes)
    assert np.array_equal(p[:350], m.predict_proba(X[:350]), equal_nan=True)
    with pytest.raises(InputError, match="contiguous"):
        make_sequences(X, 8, segments=np.tile([0, 1], 350))


def planted_multi(n=800, seed=0):
    """Three label columns (like the 1/4/24 h horizons): column 0 depends on the features at t and
    3 rows earlier, column 1 on feature 2 only, column 2 is pure noise with its last 60 labels
    missing (a longer horizon's label tail) and a few holes."""
    X, y0 = planted_seq(n, seed)
    rng = np.random.default_rng(seed + 1)
    y1 = (X[:, 2] + 0.6 * rng.normal(size=n) > 0).astype(float)
    y2 = rng.integers(0, 2, n).astype(float)
    y2[-60:] = np.nan
    y2[rng.random(n) < 0.05] = np.nan
    return X, np.column_stack([y0, y1, y2])


@pytest.fixture(scope="module", params=NETS)
def twin_multi(request):
    X, Y = planted_multi()
    ms = [make_model(request.param, tiny=True, seed=5, **SEQ_PARAMS).fit(X[:600], Y[:600]) for _ in range(2)]
    return request.param, X, Y, ms


def test_multi_horizon_net_one_head_per_column_deterministic_and_causal(twin_multi):
    """One network with one sigmoid head per label column (the walk-forward's 1/4/24 h): two
    seeded fits are bit-identical, each head learns its own column's signal (and the noise
    column stays at chance), P(up) at t ignores rows after t, the return map is per column."""
    name, X, Y, (m1, m2) = twin_multi
    assert m1.n_outputs_ == 3 and m1.model_.output_shape[-1] == 3
    P1, P2 = m1.predict_up(X), m2.predict_up(X)
    assert P1.shape == (800, 3) and np.array_equal(P1, P2, equal_nan=True)
    assert np.isnan(P1[:7]).all() and np.isfinite(P1[7:]).all()
    te = np.arange(600, 800)
    auc = [roc_auc_score(Y[te, c][np.isfinite(Y[te, c])], P1[te, c][np.isfinite(Y[te, c])]) for c in range(3)]
    assert auc[0] > 0.7 and auc[1] > 0.7 and abs(auc[2] - 0.5) < 0.12, (name, auc)
    # the scikit-learn multi-output form: one (n, 2) array per column
    pl = m1.predict_proba(X)
    assert isinstance(pl, list) and len(pl) == 3 and np.array_equal(pl[1][:, 1], P1[:, 1], equal_nan=True)
    # causal: changing rows >= 500 leaves every head's P(up) before 500 bit-identical
    Z = X.copy()
    Z[500:] = np.random.default_rng(4).normal(size=(300, 4)) * 50
    assert np.array_equal(m1.predict_up(Z)[:500], P1[:500], equal_nan=True)
    # rows with no label in ANY column never train; a row labelled in one column does
    lab = np.isfinite(Y[:600]).any(axis=1)
    assert m1.n_train_sequences_ == int(lab[7:].sum())
    with pytest.raises(InputError, match="returns"):
        m1.predict_return(X)
    r = np.column_stack([np.where(Y[:, c] == 1, 0.01, -0.01) for c in range(3)])
    m3 = make_model(name, tiny=True, seed=5, **SEQ_PARAMS).fit(X[:600], Y[:600], returns=r[:600])
    assert m3.mu_up_.shape == (3,) and np.allclose(m3.mu_up_, 0.01) and np.allclose(m3.mu_down_, -0.01)
    er = m3.predict_return(X)
    P3 = m3.predict_up(X)
    assert np.allclose(er, P3 * 0.01 - (1 - P3) * 0.01, equal_nan=True)


def test_predict_at_rows_is_bit_identical_to_the_full_prediction(twin_fits):
    """``predict_up(X, at=rows)`` (the inner folds' strided out-of-fold rows) predicts only those
    rows, each bit-identical to the full prediction; the other rows stay NaN."""
    name, X, y, (m, _) = twin_fits
    full = m.predict_up(X)
    rows = np.arange(3, 700, 3)
    part = m.predict_up(X, at=rows)
    assert np.array_equal(part[rows], full[rows], equal_nan=True)
    other = np.setdiff1d(np.arange(700), rows)
    assert np.isnan(part[other]).all() and np.isfinite(part[rows[rows >= 7]]).all()
