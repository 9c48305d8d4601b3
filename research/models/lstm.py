"""LSTM over causal sequences of recent feature vectors (Keras 3 on TensorFlow, CPU).

Input, sequences, NaN rules, standardisation and determinism: see
:mod:`research.models.sequences`. TensorFlow is imported inside ``fit``/``predict`` only.
Network: LSTM(``units``) -> Dense(1, sigmoid), Adam, binary cross-entropy. With an (n, H) label
matrix (one column per horizon) the same trunk feeds Dense(H, sigmoid): one network for every
horizon, loss = binary cross-entropy averaged over the labelled columns.
"""

from __future__ import annotations

from research.models.sequences import SequenceModelBase, make_sequences

__all__ = ["LSTMModel", "make_sequences"]


class LSTMModel(SequenceModelBase):
    """Seeded, op-deterministic LSTM classifier; small by default so a CPU trains it."""

    def __init__(
        self,
        seq_len: int = 48,
        units: int = 32,
        epochs: int = 2,
        batch_size: int = 256,
        learning_rate: float = 1e-3,
        train_stride: int = 4,
        seed: int = 7,
    ) -> None:
        self.seq_len = seq_len
        self.units = units
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.train_stride = train_stride
        self.seed = seed

    def _build(self, keras, n_features: int, n_outputs: int = 1):
        layers = keras.layers
        return keras.Sequential(
            [
                keras.Input(shape=(self.seq_len, n_features)),
                layers.LSTM(self.units),
                layers.Dense(n_outputs, activation="sigmoid"),
            ]
        )
