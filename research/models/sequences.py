"""Causal sequences of recent feature vectors, and the shared Keras training of the sequence models.

Sequence builder
----------------
``make_sequences(X_2d, seq_len, valid)`` takes the feature rows of ONE pair in time order (row t =
bar t) and returns the sequences and the row each one ends at. The sequence ending at row ``t`` is
rows ``t - seq_len + 1 .. t`` (inclusive), never a later row, so a prediction for bar t uses only
features known at bar t's close. A sequence is built only when all its ``seq_len`` rows are valid
(``valid[r]`` and every feature of row r finite): sequences that would cross a missing bar, a NaN
feature (warm-up) or a row the caller marked invalid (e.g. a purge gap) are DROPPED, never padded.
Rows without a sequence get no prediction (``NaN`` P(up)).

Several pairs pooled: give ``segments`` (one id per row, e.g. the pair); the rows of each segment
must form one contiguous block in time order (sort the long frame by pair, then time). A window
never spans two segments, so a pair's sequence holds only that pair's rows.

This module imports TensorFlow only inside the functions that train or predict.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.exceptions import NotFittedError

from engine.errors import InputError
from research.models.base import ModelBase, check_label_matrix, check_returns

__all__ = ["SequenceModelBase", "make_sequences", "segment_starts", "sequence_ends", "tf_setup"]


def segment_starts(segments: Any, n: int) -> np.ndarray | None:
    """Bool (n,): True where a new segment starts (row 0 excluded); None without segments.
    InputError if a segment's rows are not one contiguous block."""
    if segments is None:
        return None
    g = np.asarray(segments).reshape(-1)
    if g.shape[0] != n:
        raise InputError(f"segments has {g.shape[0]} rows, X has {n}")
    start = np.zeros(n, dtype=bool)
    start[1:] = g[1:] != g[:-1]
    if int(start.sum()) + 1 != len(np.unique(g)):
        raise InputError(
            "segments: the rows of each segment (pair) must be one contiguous block "
            "in time order; sort rows by pair, then time"
        )
    return start


def sequence_ends(row_ok: npt.ArrayLike, seq_len: int, seg_start: np.ndarray | None = None) -> np.ndarray:
    """Rows t (int64, ascending) whose window ``t-seq_len+1 .. t`` is all ``row_ok`` and, with
    ``seg_start`` (see :func:`segment_starts`), lies inside one segment."""
    ok = np.asarray(row_ok, dtype=bool).reshape(-1)
    if seq_len < 1:
        raise InputError(f"seq_len must be >= 1, got {seq_len}")
    bad = np.concatenate([[0], np.cumsum(~ok)])  # bad[i] = invalid rows among 0..i-1
    t = np.arange(seq_len - 1, ok.shape[0], dtype=np.int64)
    keep = (bad[t + 1] - bad[t + 1 - seq_len]) == 0
    if seg_start is not None:
        # a segment start at rows t-seq_len+2 .. t means the window begins in an earlier segment
        sb = np.concatenate([[0], np.cumsum(seg_start)])
        keep &= (sb[t + 1] - sb[t + 2 - seq_len]) == 0
    return t[keep]


def make_sequences(
    X_2d: Any, seq_len: int, valid: Any = None, ends: np.ndarray | None = None, segments: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(seqs, ends)``: ``seqs[k] = X_2d[ends[k]-seq_len+1 : ends[k]+1]`` (float32, shape
    (k, seq_len, features)); only fully valid windows inside one segment (see module doc).
    ``ends`` restricts the output to those end rows (they must be valid ends)."""
    X = np.asarray(X_2d, dtype=np.float64)
    if X.ndim != 2:
        raise InputError(f"make_sequences: X must be 2-D (rows in time order, features), got {X.shape}")
    n = X.shape[0]
    ok = np.isfinite(X).all(axis=1)
    if valid is not None:
        v = np.asarray(valid, dtype=bool).reshape(-1)
        if v.shape[0] != n:
            raise InputError(f"make_sequences: valid has {v.shape[0]} rows, X has {n}")
        ok &= v
    all_ends = sequence_ends(ok, seq_len, segment_starts(segments, n))
    if ends is not None:
        ends = np.asarray(ends, dtype=np.int64)
        if not np.isin(ends, all_ends).all():
            raise InputError("make_sequences: some requested end rows have no fully valid window")
    else:
        ends = all_ends
    idx = ends[:, None] + np.arange(-seq_len + 1, 1, dtype=np.int64)[None, :]
    return X[idx].astype(np.float32), ends


_TF_READY = False
PREDICT_BATCH = 1024
#: TensorFlow's seeding is process-global: one network is built and trained at a time per process
_TF_LOCK = threading.RLock()


def tf_setup(seed: int):
    """Import TensorFlow/Keras, switch op determinism on, prefer one thread, seed everything."""
    global _TF_READY
    import os

    # 3: TensorFlow C++ logs only fatal errors (keras 3.15 on TF 2.21 prints a harmless NodeDef
    # "use_unbounded_threadpool" error line on every fit otherwise); set it lower to debug.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    import tensorflow as tf

    if not _TF_READY:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:  # runtime already initialised by someone else: determinism still holds
            pass
        tf.config.experimental.enable_op_determinism()
        _TF_READY = True
    keras.utils.set_random_seed(int(seed))
    return tf, keras


class SequenceModelBase(ModelBase):
    """Fit/predict over sequences; subclasses build the Keras network in ``_build``.

    ``X`` is either the 2-D feature matrix of ONE pair in time order, or of several pairs stacked
    as contiguous blocks with ``segments`` naming each row's pair (sequences are built with
    :func:`make_sequences`; ``valid`` marks usable rows, a NaN label means "not a target") or a
    3-D ``(samples, seq_len, features)`` array with one label per sample. Features are
    standardised with the training rows' mean and standard deviation (``mean_``, ``scale_``).
    ``train_stride`` keeps only training targets at rows ``t % train_stride == 0`` (every 4th hour
    by default, as in MEASUREMENTS); prediction covers every row.
    """

    uses_sequences = True
    supports_multi_output = True

    def _build(self, keras, n_features: int, n_outputs: int = 1):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- helpers --
    def _prep(self, seqs: np.ndarray) -> np.ndarray:
        z = (seqs - self.mean_.astype(np.float32)) / self.scale_.astype(np.float32)
        return np.nan_to_num(z, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    def _as_array(self, X: Any) -> np.ndarray:
        if hasattr(X, "to_numpy") and not isinstance(X, np.ndarray):
            X = X.to_numpy()
        a = np.asarray(X, dtype=np.float64)
        if a.ndim not in (2, 3) or a.shape[0] == 0:
            raise InputError(
                f"{type(self).__name__}: X must be 2-D (rows in time order, features) "
                f"or 3-D (samples, seq_len, features), got shape {a.shape}"
            )
        if a.ndim == 3 and a.shape[1] != self.seq_len:
            raise InputError(
                f"{type(self).__name__}: 3-D X has sequences of {a.shape[1]} rows, seq_len is {self.seq_len}"
            )
        if np.isinf(a).any():
            raise InputError(f"{type(self).__name__}: X contains inf")
        return a

    def fit(self, X: Any, y: Any, *, returns: Any = None, valid: Any = None, segments: Any = None) -> SequenceModelBase:
        name = type(self).__name__
        a = self._as_array(X)
        ya = check_label_matrix(y, a.shape[0], name)
        ra = check_returns(returns, a.shape[0], name)
        multi = ya.ndim == 2
        if multi and a.ndim == 3:
            raise InputError(f"{name}: a label matrix (one column per horizon) needs 2-D X")
        labelled = np.isfinite(ya).any(axis=1) if multi else np.isfinite(ya)
        if a.ndim == 2:
            seqs, ends = make_sequences(a, self.seq_len, valid, segments=segments)
            keep = labelled[ends] & (ends % self.train_stride == 0)
            seqs, ends = seqs[keep], ends[keep]
            row_ok = np.isfinite(a).all(axis=1)
            if valid is not None:
                row_ok &= np.asarray(valid, dtype=bool)
            stats_rows = a[row_ok]
            used = np.zeros(a.shape[0], dtype=bool)
            used[ends] = True
        else:
            keep = np.isfinite(ya)
            seqs, ends = a[keep].astype(np.float32), np.flatnonzero(keep)
            stats_rows = a[keep].reshape(-1, a.shape[2])
            used = keep
        target = ya[ends]
        cols = target.T if multi else target[None, :]
        if seqs.shape[0] == 0 or any(not ((c == 1).any() and (c == 0).any()) for c in cols):
            raise InputError(
                f"{name}: no training sequences with both up and down labels "
                f"(seq_len {self.seq_len}, {a.shape[0]} rows)"
            )
        self.n_features_in_ = a.shape[-1]
        self.n_outputs_ = ya.shape[1] if multi else 1
        with np.errstate(invalid="ignore"):
            self.mean_ = np.nanmean(stats_rows, axis=0)
            sd = np.nanstd(stats_rows, axis=0)
        self.mean_ = np.nan_to_num(self.mean_)
        self.scale_ = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)
        with _TF_LOCK:
            self._train(seqs, target, multi)
        self.n_train_sequences_ = int(seqs.shape[0])
        self._fit_return_map(ya, ra, used)
        return self

    def _train(self, seqs: np.ndarray, target: np.ndarray, multi: bool) -> None:
        tf, keras = tf_setup(self.seed)
        loss: str | Callable[[Any, Any], Any]
        if multi:
            # one network, one sigmoid head per label column; the loss averages the binary
            # cross-entropy over the labelled (sequence, column) pairs only (NaN = no label -> -1)
            model = self._build(keras, self.n_features_in_, self.n_outputs_)
            loss = masked_bce
            target = np.where(np.isfinite(target), target, -1.0)
        else:
            model = self._build(keras, self.n_features_in_)
            loss = "binary_crossentropy"
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=self.learning_rate), loss=loss)
        model.fit(
            self._prep(seqs),
            target.astype(np.float32),
            epochs=self.epochs,
            batch_size=self.batch_size,
            shuffle=True,
            verbose=0,
        )
        self.model_ = model

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(f"{type(self).__name__} is not fitted yet: call fit(X, y) first")

    def _predict_seqs(self, seqs: np.ndarray) -> np.ndarray:
        """P(up) per sequence, computed in zero-padded batches of exactly PREDICT_BATCH rows: the
        kernels then always see the same shapes, so a sequence's P(up) does not depend on how many
        other sequences are predicted with it (float32 results can differ by ~1e-7 between batch
        shapes otherwise)."""
        k = seqs.shape[0]
        if k == 0:
            return np.zeros(0)
        B = PREDICT_BATCH
        z = self._prep(seqs)
        pad = (-k) % B
        if pad:
            z = np.concatenate([z, np.zeros((pad,) + z.shape[1:], dtype=np.float32)])
        with _TF_LOCK:
            out = self.model_.predict(z, batch_size=B, verbose=0)
        return np.asarray(out, dtype=np.float64).reshape(z.shape[0], -1)[:k]

    def predict_proba(self, X: Any, *, valid: Any = None, segments: Any = None) -> np.ndarray | list[np.ndarray]:
        """(n, 2); for 2-D X, rows without a full valid sequence get NaN in both columns. After a
        multi-output fit: a list of (n, 2), one per label column (scikit-learn's multi-output form)."""
        p = self.predict_up(X, valid=valid, segments=segments)
        if getattr(self, "n_outputs_", 1) == 1:
            return np.column_stack([1.0 - p[:, 0], p[:, 0]])
        return [np.column_stack([1.0 - p[:, h], p[:, h]]) for h in range(p.shape[1])]

    # ModelBase.predict_up forwards **kw to predict_proba; the nets name the keywords theirs takes
    def predict_up(  # type: ignore[override]
        self, X: Any, *, valid: Any = None, segments: Any = None, at: Any = None
    ) -> np.ndarray:
        """(n, H) P(up), H = number of label columns fitted (NaN rows: no full valid sequence).
        ``at`` (row indices, 2-D X only): predict those rows only, the others stay NaN; a row's value
        is bit-identical to a full prediction (fixed batch shapes)."""
        self._check_fitted()
        a = self._as_array(X)
        if a.shape[-1] != self.n_features_in_:
            raise InputError(
                f"{type(self).__name__}: X has {a.shape[-1]} features, the model was fitted on {self.n_features_in_}"
            )
        if a.ndim == 3:
            p = self._predict_seqs(a.astype(np.float32))
        else:
            p = np.full((a.shape[0], getattr(self, "n_outputs_", 1)), np.nan)
            row_ok = np.isfinite(a).all(axis=1)
            if valid is not None:
                row_ok &= np.asarray(valid, dtype=bool).reshape(-1)
            ends = sequence_ends(row_ok, self.seq_len, segment_starts(segments, a.shape[0]))
            if at is not None:
                ends = ends[np.isin(ends, np.asarray(at, dtype=np.int64))]
            chunk = 16384
            for s in range(0, ends.shape[0], chunk):
                seqs, e = make_sequences(a, self.seq_len, valid, ends=ends[s : s + chunk], segments=segments)
                p[e] = self._predict_seqs(seqs)
        return p


def masked_bce(y_true, y_pred):
    """Binary cross-entropy per sample averaged over its labelled columns (label -1 = none): the
    loss of a multi-horizon network (a module-level function, so a saved model names it)."""
    from keras import ops

    mask = ops.cast(ops.greater_equal(y_true, 0.0), y_pred.dtype)
    y = ops.clip(y_true, 0.0, 1.0)
    p = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
    bce = -(y * ops.log(p) + (1.0 - y) * ops.log(1.0 - p))
    return ops.sum(bce * mask, axis=-1) / ops.maximum(ops.sum(mask, axis=-1), 1.0)
