"""Twin of fastwb.regularization."""

import numpy as np


def penalty(weights, lambda_param=0.01, method="l2", out=None):
    if method == "l2":
        loss = 0.5 * lambda_param * np.sum(weights ** 2)
        grad = np.multiply(lambda_param, weights, out=out)
    elif method == "l1":
        loss = lambda_param * np.sum(np.abs(weights))
        grad = np.multiply(lambda_param, np.sign(weights), out=out)
    else:
        raise ValueError(f"unknown method {method!r}; valid names are 'l1', 'l2'")
    return float(loss), grad
