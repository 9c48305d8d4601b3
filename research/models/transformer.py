"""A small Transformer encoder over causal sequences of recent feature vectors (Keras 3, CPU).

Input, sequences, NaN rules, standardisation and determinism: see
:mod:`research.models.sequences`. TensorFlow is imported inside ``fit``/``predict`` only.
Network: Dense(``d_model``) projection + fixed sinusoidal position encoding -> one encoder block
(multi-head self-attention, residual, LayerNorm, feed-forward ``ff_dim``, residual, LayerNorm) ->
the LAST position's vector -> Dense(1, sigmoid). Every position of a sequence is at or before the
bar being predicted, so attention over the whole window sees no future. No dropout.
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

    def __init__(self, seq_len: int = 48, d_model: int = 32, num_heads: int = 2, ff_dim: int = 64,
                 epochs: int = 2, batch_size: int = 256, learning_rate: float = 1e-3,
                 train_stride: int = 4, seed: int = 7) -> None:
        self.seq_len = seq_len
        self.d_model = d_model
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.train_stride = train_stride
        self.seed = seed

    def _build(self, keras, n_features: int):
        layers = keras.layers
        inp = keras.Input(shape=(self.seq_len, n_features))
        h = layers.Dense(self.d_model)(inp)
        h = h + keras.ops.convert_to_tensor(_positions(self.seq_len, self.d_model))[None, :, :]
        att = layers.MultiHeadAttention(num_heads=self.num_heads,
                                        key_dim=max(1, self.d_model // self.num_heads))(h, h)
        h = layers.LayerNormalization(epsilon=1e-6)(h + att)
        ff = layers.Dense(self.ff_dim, activation="relu")(h)
        ff = layers.Dense(self.d_model)(ff)
        h = layers.LayerNormalization(epsilon=1e-6)(h + ff)
        last = h[:, -1, :]
        out = layers.Dense(1, activation="sigmoid")(last)
        return keras.Model(inp, out)
