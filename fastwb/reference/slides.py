"""Twins of the slide API (fastwb.slides): the slides' NumPy code, with the
slides' bugs fixed as fastwb.slides documents.  The slides' initialisers have
no compiled part; fastwb.slides' own versions serve as their twins."""

import numpy as np

from fastwb.reference.functional import leaky_relu, relu, sigmoid, tanh  # noqa: F401
from fastwb.slides import (  # noqa: F401  (plain NumPy: their own twins)
    advanced_bias_initialization,
    initialize_layer_weights,
    initialize_weights,
    random_initialization,
    xavier_init,
    zero_initialization,
)

_ACT = {"identity": lambda z: z.copy(), "relu": relu, "leaky_relu": leaky_relu, "sigmoid": sigmoid, "tanh": tanh}


def update_parameters(weights, biases, gradients, learning_rate=0.01):
    dW, db = gradients
    return weights - learning_rate * dW, biases - learning_rate * db


def add_bias_activation(inputs, weights, biases, activation="relu"):
    if activation not in _ACT:
        raise ValueError(f"unknown activation {activation!r}")
    z = np.dot(inputs, weights) + biases
    return _ACT[activation](z), z


class MomentumOptimizer:
    def __init__(self, learning_rate=0.01, momentum=0.9):
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.velocity_W = None
        self.velocity_b = None

    def update(self, weights, biases, gradients):
        dW, db = gradients
        if self.velocity_W is None:
            self.velocity_W = np.zeros_like(weights)
            self.velocity_b = np.zeros_like(biases)
        if self.velocity_W.shape != np.shape(weights):
            raise ValueError("state shape differs: use one MomentumOptimizer per layer")
        self.velocity_W = self.momentum * self.velocity_W - self.learning_rate * dW
        self.velocity_b = self.momentum * self.velocity_b - self.learning_rate * db
        return weights + self.velocity_W, biases + self.velocity_b


def compute_regularization(weights, lambda_param=0.01, method="l2"):
    if method == "l2":
        return 0.5 * lambda_param * np.sum(weights ** 2), lambda_param * weights
    if method == "l1":
        return lambda_param * np.sum(np.abs(weights)), lambda_param * np.sign(weights)
    raise ValueError(f"unknown method {method!r}")


def prune_weights(weights, threshold_percentile=90):
    threshold = np.percentile(np.abs(weights), float(threshold_percentile))
    mask = np.abs(weights) >= threshold
    return weights * mask, 1.0 - np.count_nonzero(mask) / mask.size, mask


class AdamOptimizer:
    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8):
        self.learning_rate = learning_rate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.m_W = self.v_W = self.m_b = self.v_b = None
        self.t = 0

    def update(self, weights, biases, gradients):
        dW, db = gradients
        if self.m_W is None:
            self.m_W, self.v_W = np.zeros_like(weights), np.zeros_like(weights)
            self.m_b, self.v_b = np.zeros_like(biases), np.zeros_like(biases)
        if self.m_W.shape != np.shape(weights):
            raise ValueError("state shape differs: use one AdamOptimizer per layer")
        self.t += 1
        b1, b2, lr, eps = self.beta1, self.beta2, self.learning_rate, self.epsilon
        self.m_W = b1 * self.m_W + (1 - b1) * dW
        self.v_W = b2 * self.v_W + (1 - b2) * dW ** 2
        self.m_b = b1 * self.m_b + (1 - b1) * db
        self.v_b = b2 * self.v_b + (1 - b2) * db ** 2
        m_W_hat = self.m_W / (1 - b1 ** self.t)
        v_W_hat = self.v_W / (1 - b2 ** self.t)
        m_b_hat = self.m_b / (1 - b1 ** self.t)
        v_b_hat = self.v_b / (1 - b2 ** self.t)
        return (weights - lr * m_W_hat / (np.sqrt(v_W_hat) + eps),
                biases - lr * m_b_hat / (np.sqrt(v_b_hat) + eps))


class DynamicPruningOptimizer:
    def __init__(self, initial_sparsity=0.0, target_sparsity=0.9, prune_steps=10):
        self.initial_sparsity = self.current_sparsity = initial_sparsity
        self.target_sparsity = target_sparsity
        self.prune_steps = prune_steps
        self.step_size = (target_sparsity - initial_sparsity) / prune_steps
        self.mask = None
        self.step_count = 0

    def calculate_threshold(self, weights):
        return np.percentile(np.abs(weights), self.current_sparsity * 100)

    def update_mask(self, weights):
        return (np.abs(weights) >= self.calculate_threshold(weights)) & self.mask

    def apply_pruning(self, weights, gradients):
        self.step_count += 1
        every = max(1, self.prune_steps // 10)
        if self.step_count % every == 0:
            # the k-th increment, as initial + k * step (the slides add it k times: equal up to rounding)
            k = self.step_count // every
            self.current_sparsity = (self.target_sparsity if k >= self.prune_steps else  # k >= 1 here
                                     min(self.initial_sparsity + k * self.step_size, self.target_sparsity))
        self.mask = np.ones(np.shape(weights), bool) if self.mask is None else self.update_mask(weights)
        return weights * self.mask, gradients * self.mask, self.mask
