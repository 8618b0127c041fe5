"""A multinomial logistic regression in numpy: the classifier both category judges share.

Small, deterministic (full-batch descent from zeros, no random init) and serialisable as plain
JSON lists, so a judge fitted at training time travels with the model (``qa/scorer.json``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Softmax:
    """Multinomial logistic regression on standardised features."""

    names: list[str]
    mean: np.ndarray
    std: np.ndarray
    weights: np.ndarray  # (D, K)
    bias: np.ndarray  # (K,)

    @classmethod
    def fit(cls, x: np.ndarray, labels: list[str], l2: float = 1e-2, steps: int = 400, lr: float = 0.5) -> "Softmax":
        x = np.asarray(x, np.float64)  # so the JSON state round-trips exactly
        names = sorted(set(labels))
        y = np.array([names.index(c) for c in labels])
        mean, std = x.mean(0), x.std(0) + 1e-6
        z = (x - mean) / std
        onehot = np.eye(len(names))[y]
        w = np.zeros((x.shape[1], len(names)))
        b = np.zeros(len(names))
        for _ in range(steps):
            p = softmax(z @ w + b)
            g = (p - onehot) / len(z)
            w -= lr * (z.T @ g + l2 * w)
            b -= lr * g.sum(0)
        return cls(names, mean, std, w, b)

    def proba(self, x: np.ndarray) -> np.ndarray:
        return softmax(((x - self.mean) / self.std) @ self.weights + self.bias)

    def predict(self, x: np.ndarray) -> list[str]:
        return [self.names[i] for i in self.proba(x).argmax(1)]

    def state(self) -> dict:
        return {"names": self.names, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "weights": self.weights.tolist(), "bias": self.bias.tolist()}

    @classmethod
    def from_state(cls, state: dict) -> "Softmax":
        return cls(list(state["names"]), np.asarray(state["mean"]), np.asarray(state["std"]),
                   np.asarray(state["weights"]), np.asarray(state["bias"]))


def softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
