"""Twins of fastwb.optim, written from PyTorch's documented update rules.

Each class updates its parameter arrays in place, like fastwb's, with the
same constructor arguments; masked entries are held at 0 with their state
frozen.
"""

import math

import numpy as np


class _Twin:
    _state_names = ()

    def __init__(self, params, masks=None, **hyper):
        self.params = [params] if isinstance(params, np.ndarray) else list(params)
        self.hyper = hyper
        self.step_count = 0
        self.state = [{k: np.zeros_like(p) for k in self._names()} for p in self.params]
        self.masks = [None] * len(self.params)
        if masks is not None:
            self.set_masks(masks)

    def _names(self):
        return self._state_names

    def set_masks(self, masks):
        self.masks = [None if m is None else np.asarray(m, bool) for m in masks]
        for p, m, s in zip(self.params, self.masks, self.state):
            if m is not None:
                p[~m] = 0
                for buf in s.values():
                    buf[~m] = 0

    def step(self, grads):
        self.step_count += 1
        for p, g, s, m in zip(self.params, grads, self.state, self.masks):
            h = self.hyper
            d = g + h["weight_decay"] * p if h["weight_decay"] and not getattr(self, "decoupled", False) else g
            if h["l1"]:
                d = d + h["l1"] * np.sign(p)
            new_p, new_s = self._rule(p, d, {k: v.copy() for k, v in s.items()})
            for v in new_s.values():            # state below the smallest normal number is stored as 0
                v[np.abs(v) < np.finfo(v.dtype).tiny] = 0
            if m is None:
                p[...] = new_p
                for k in s:
                    s[k][...] = new_s[k]
            else:
                p[...] = np.where(m, new_p, 0)
                for k in s:
                    np.copyto(s[k], new_s[k], where=m)


class SGD(_Twin):
    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False, l1=0.0,
                 masks=None):
        super().__init__(params, masks, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, l1=l1)

    def _names(self):
        return ("momentum_buffer",) if self.hyper["momentum"] else ()

    def _rule(self, p, d, s):
        h = self.hyper
        if h["momentum"]:
            if self.step_count == 1:
                s["momentum_buffer"] = d.copy()
            else:
                s["momentum_buffer"] = h["momentum"] * s["momentum_buffer"] + (1 - h["dampening"]) * d
            d = d + h["momentum"] * s["momentum_buffer"] if h["nesterov"] else s["momentum_buffer"]
        return p - h["lr"] * d, s


class Momentum(_Twin):
    _state_names = ("velocity",)

    def __init__(self, params, lr=0.01, momentum=0.9, weight_decay=0.0, l1=0.0, masks=None):
        super().__init__(params, masks, lr=lr, momentum=momentum, weight_decay=weight_decay, l1=l1)

    def _rule(self, p, d, s):
        s["velocity"] = self.hyper["momentum"] * s["velocity"] - self.hyper["lr"] * d
        return p + s["velocity"], s


class Adam(_Twin):
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False, l1=0.0,
                 masks=None):
        super().__init__(params, masks, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, l1=l1)

    def _names(self):
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.hyper["amsgrad"] else ())

    def _rule(self, p, d, s):
        h = self.hyper
        b1, b2 = h["betas"]
        t = self.step_count
        if self.decoupled:
            p = p * (1 - h["lr"] * h["weight_decay"])
        s["exp_avg"] = b1 * s["exp_avg"] + (1 - b1) * d
        s["exp_avg_sq"] = b2 * s["exp_avg_sq"] + (1 - b2) * d * d
        v = s["exp_avg_sq"]
        if h["amsgrad"]:
            s["max_exp_avg_sq"] = np.maximum(s["max_exp_avg_sq"], v)
            v = s["max_exp_avg_sq"]
        m_hat = s["exp_avg"] / (1 - b1 ** t)
        denom = np.sqrt(v) / math.sqrt(1 - b2 ** t) + h["eps"]
        return p - h["lr"] * m_hat / denom, s


class AdamW(Adam):
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False, l1=0.0,
                 masks=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, l1, masks)


class RMSprop(_Twin):
    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                 l1=0.0, masks=None):
        super().__init__(params, masks, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, l1=l1)

    def _names(self):
        h = self.hyper
        return ("square_avg",) + (("grad_avg",) if h["centered"] else ()) + (
            ("momentum_buffer",) if h["momentum"] else ())

    def _rule(self, p, d, s):
        h = self.hyper
        a = h["alpha"]
        s["square_avg"] = a * s["square_avg"] + (1 - a) * d * d
        if h["centered"]:
            s["grad_avg"] = a * s["grad_avg"] + (1 - a) * d
            avg = np.sqrt(s["square_avg"] - s["grad_avg"] ** 2) + h["eps"]
        else:
            avg = np.sqrt(s["square_avg"]) + h["eps"]
        if h["momentum"]:
            s["momentum_buffer"] = h["momentum"] * s["momentum_buffer"] + d / avg
            return p - h["lr"] * s["momentum_buffer"], s
        return p - h["lr"] * d / avg, s
