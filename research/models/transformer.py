"""A small Transformer encoder over causal sequences of recent feature vectors (Keras 3, CPU).

Input, sequences, NaN rules, standardisation and determinism: see
:mod:`research.models.sequences`. TensorFlow is imported inside ``fit``/``predict`` only.
Network: Dense(``d_model``) projection + fixed sinusoidal position encoding -> one encoder block
(multi-head self-attention, residual, LayerNorm, feed-forward ``ff_dim``, residual, LayerNorm) ->
the LAST position's vector -> Dense(1, sigmoid) (Dense(H) with an (n, H) label matrix, one head per
horizon; see :mod:`research.models.lstm`). Only the last position's query is computed (attention
of the last bar over the whole window; the other positions' outputs were never read). Every
position of a sequence is at or before the bar being predicted, so attention over the whole window
sees no future. No dropout.
"""

from __future__ import annotations

import numpy as np

from research.models.sequences import SequenceModelBase, make_sequences

__all__ = ["TransformerModel", "make_sequences"]


def _positions(seq_len: int, d: int) -> np.ndarray:
    pos = np.arange(seq_len)[:, None]
    i = np.arange(d)[None, :]
    angle = pos / np.power(10000.0, (2 * (i // 2)) / d)
    return np.where(i % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)


class TransformerModel(SequenceModelBase):
    """Seeded, op-deterministic Transformer-encoder classifier; small by default."""

    def __init__(
        self,
        seq_len: int = 48,
        d_model: int = 32,
        num_heads: int = 2,
        ff_dim: int = 64,
        epochs: int = 2,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        train_stride: int = 4,
        seed: int = 7,
    ) -> None:
        self.seq_len = seq_len
        self.d_model = d_model
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.train_stride = train_stride
        self.seed = seed

    def _build(self, keras, n_features: int, n_outputs: int = 1):
        layers = keras.layers
        inp = keras.Input(shape=(self.seq_len, n_features))
        h = layers.Dense(self.d_model)(inp)
        h = h + keras.ops.convert_to_tensor(_positions(self.seq_len, self.d_model))[None, :, :]
        # only the last position's output is read, and in a single encoder block position i's
        # output depends on the sequence through its own query only: attend with the LAST query
        # over all keys/values (the same function as full self-attention sliced at the end, at
        # about a third of the cost)
        q = h[:, -1:, :]
        att = layers.MultiHeadAttention(num_heads=self.num_heads, key_dim=max(1, self.d_model // self.num_heads))(q, h)
        z = layers.LayerNormalization(epsilon=1e-6)(q + att)
        ff = layers.Dense(self.ff_dim, activation="relu")(z)
        ff = layers.Dense(self.d_model)(ff)
        z = layers.LayerNormalization(epsilon=1e-6)(z + ff)
        last = z[:, 0, :]
        out = layers.Dense(n_outputs, activation="sigmoid")(last)
        return keras.Model(inp, out)
