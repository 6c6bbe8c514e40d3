"""Twins of the slides' MNISTClassifier and evaluate_model: the slide code with
its bugs fixed (one AdamOptimizer per layer, max-subtracted softmax, probs
left intact by backward), in plain NumPy."""

import math

import numpy as np

from fastwb import init
from fastwb.reference.slides import AdamOptimizer


class MNISTClassifier:
    def __init__(self, input_size=784, hidden_size=256, output_size=10, dtype=np.float64, rng=None):
        r = np.random.mtrand._rand if rng is None else init.as_generator(rng)
        self.W1 = (r.standard_normal((input_size, hidden_size)) * math.sqrt(2.0 / input_size)).astype(dtype)
        self.b1 = np.zeros(hidden_size, dtype)
        self.W2 = (r.standard_normal((hidden_size, output_size)) * math.sqrt(2.0 / hidden_size)).astype(dtype)
        self.b2 = np.zeros(output_size, dtype)
        self.optimizers = [AdamOptimizer(), AdamOptimizer()]
        self.dtype = np.dtype(dtype)

    def forward(self, X):
        X = np.asarray(X, self.dtype)
        self.z1 = X @ self.W1 + self.b1
        self.a1 = np.maximum(self.z1, 0)
        self.z2 = self.a1 @ self.W2 + self.b2
        e = np.exp(self.z2 - self.z2.max(axis=1, keepdims=True))
        self.probs = e / e.sum(axis=1, keepdims=True)
        return self.probs

    def backward(self, X, y, batch_size):
        X = np.asarray(X, self.dtype)
        dz2 = self.probs.copy()
        dz2[np.arange(batch_size), y] -= 1
        dz2 /= batch_size
        dW2 = self.a1.T @ dz2
        db2 = dz2.sum(axis=0)
        dz1 = (dz2 @ self.W2.T) * (self.z1 > 0)
        dW1 = X.T @ dz1
        db1 = dz1.sum(axis=0)
        return [(dW1, db1), (dW2, db2)]

    def train_step(self, X_batch, y_batch):
        probs = self.forward(X_batch)
        loss = -np.mean(np.log(probs[np.arange(len(y_batch)), y_batch]))
        (dW1, db1), (dW2, db2) = self.backward(X_batch, y_batch, len(X_batch))
        self.W1, self.b1 = self.optimizers[0].update(self.W1, self.b1, (dW1, db1))
        self.W2, self.b2 = self.optimizers[1].update(self.W2, self.b2, (dW2, db2))
        return float(loss)


def evaluate_model(model, X, y):
    predictions = np.argmax(model.forward(X), axis=1)
    return float(np.mean(predictions == y)), predictions
