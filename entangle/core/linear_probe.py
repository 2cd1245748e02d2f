"""Robust-feature leakage, measured the way Goh (Distill 2019, "Robust Feature Leakage") did:
a linear classifier on a robust model's representation, trained on a relabelled set and
scored on the true labels of the test set.

A relabelled set whose perturbations carry robust features of the new label lets even a
linear read-out of robust features learn that label; its test accuracy above chance is
leakage that can, by itself, make a model trained on the set beat chance. The fit is
multinomial logistic regression with an L2 penalty, by scipy's L-BFGS (deterministic).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import optimize
from scipy.special import log_softmax

from entangle import data
from entangle.core import models, robustify


@dataclasses.dataclass(frozen=True)
class LinearProbe:
    """Standardisation and weights of a fitted multinomial logistic regression."""
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray     # (features + 1, classes); the last row is the bias

    def predict(self, features: np.ndarray) -> np.ndarray:
        z = (np.asarray(features, np.float64) - self.mean) / self.scale
        return np.argmax(z @ self.weights[:-1] + self.weights[-1], axis=1)


def fit_linear(features: np.ndarray, labels: np.ndarray, num_classes: int,
               l2: float = 1e-3, max_iter: int = 500) -> LinearProbe:
    """Multinomial logistic regression on standardised features; ``l2`` multiplies the mean
    squared weight (not the bias) added to the mean cross-entropy."""
    x = np.asarray(features, np.float64)
    y = np.asarray(labels, np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need (n, d) features and n labels; got {x.shape} and {y.shape}")
    mean, scale = x.mean(0), x.std(0) + 1e-8
    z = np.concatenate([(x - mean) / scale, np.ones((len(x), 1))], axis=1)
    onehot = np.eye(num_classes)[y]
    shape = (z.shape[1], num_classes)
    penalty = np.ones(shape)
    penalty[-1] = 0.0

    def loss_and_grad(flat):
        w = flat.reshape(shape)
        logp = log_softmax(z @ w, axis=1)
        loss = -np.mean(np.sum(onehot * logp, axis=1)) + l2 * np.sum(penalty * w ** 2)
        grad = z.T @ (np.exp(logp) - onehot) / len(z) + 2 * l2 * penalty * w
        return loss, grad.ravel()

    res = optimize.minimize(loss_and_grad, np.zeros(np.prod(shape)), jac=True,
                            method="L-BFGS-B", options={"maxiter": max_iter})
    return LinearProbe(mean, scale, res.x.reshape(shape))


def leakage(robust_model, train_sets: dict, test: data.Dataset, *, l2: float = 1e-3,
            batch_size: int = 256, layer=models.REPRESENTATION_LAYER) -> dict:
    """name -> per-image correctness on ``test`` of a linear probe on ``robust_model``'s
    representation, trained on ``train_sets[name] = (images, labels)``. The representation
    is computed once for the test set and once per distinct array of images (relabelled sets
    share theirs)."""
    rep = models.representation_model(robust_model, layer)
    test_features = robustify.representations(rep, test.x, batch_size)
    features = {}
    out = {}
    for name, (x, labels) in train_sets.items():
        if id(x) not in features:
            features[id(x)] = robustify.representations(rep, x, batch_size)
        probe = fit_linear(features[id(x)], labels, test.num_classes, l2)
        out[name] = probe.predict(test_features) == np.asarray(test.y)
    return out
