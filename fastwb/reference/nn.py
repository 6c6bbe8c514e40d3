"""Twin of :class:`fastwb.nn.Sequential`: the same layers run one at a time in
plain NumPy, over a dict of arrays named as in the state dict.

It takes the same layer objects (they are specifications only), starts from
a fastwb model's ``state_dict()``, and trains with the twin optimizers and
the twin losses, so that every step can be compared with fastwb's.  Dropout
uses the same counter-based masks, keyed like fastwb's (the model's seed
mixed with the layer's position, the step count).
"""

import numpy as np

from fastwb.nn.layers import BatchNorm1d, Dropout, Linear
from fastwb.reference import functional as F
from fastwb.reference import normalization as N
from fastwb.reference import optim as ropt

_LOSSES = {
    "cross_entropy": lambda out, y: F.softmax_cross_entropy(out, y),
    "mse": lambda out, y: F.mse_loss(out, y),
    "bce_with_logits": lambda out, y: F.bce_with_logits(out, y),
}


def _act(z, name, alpha):
    if name == "leaky_relu":
        return F.leaky_relu(z, alpha)
    return {"identity": lambda v: v.copy(), "relu": F.relu, "sigmoid": F.sigmoid, "tanh": F.tanh}[name](z)


def _act_backward(g, y, name, alpha):
    if name == "identity":
        return g
    if name == "leaky_relu":
        return F.leaky_relu_backward(g, y, alpha)
    return {"relu": F.relu_backward, "sigmoid": F.sigmoid_backward, "tanh": F.tanh_backward}[name](g, y)


class Sequential:
    """``Sequential(layers, state, seed, loss="cross_entropy")``: ``state`` a
    fastwb model's ``state_dict()`` (copied), ``seed`` its ``seed``."""

    def __init__(self, layers, state, seed, loss="cross_entropy"):
        self.layers = list(layers)
        self.state = {k: np.array(v, copy=True) for k, v in state.items()}
        self.seed = seed
        self.loss = loss
        self.step_count = 0
        self.names = [k for k in self.state if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
        self.optimizer = None

    def compile(self, optimizer, **hyper):
        classes = {"sgd": ropt.SGD, "momentum": ropt.Momentum, "adam": ropt.Adam, "adamw": ropt.AdamW,
                   "rmsprop": ropt.RMSprop}
        self.optimizer = classes[optimizer]([self.state[k] for k in self.names], **hyper)
        return self

    def forward(self, X, training):
        """Output and the per-layer record the backward pass needs."""
        x, record = X, []
        for i, layer in enumerate(self.layers):
            s = self.state
            if isinstance(layer, Linear):
                y = x @ s[f"{i}.weight"] + (s[f"{i}.bias"] if layer.bias else 0)
            elif isinstance(layer, BatchNorm1d):
                batch = training or not layer.track_running_stats
                rm, rv = (s.get(f"{i}.running_mean"), s.get(f"{i}.running_var")) if training or not batch else (None,
                                                                                                                 None)
                nbt = s.get(f"{i}.num_batches_tracked") if training and layer.track_running_stats else None
                nbt = None if nbt is None else nbt.reshape(1)
                y, mean, invstd = N.batch_norm(x, s.get(f"{i}.weight"), s.get(f"{i}.bias"), rm, rv, training=batch,
                                               momentum=layer.momentum, eps=layer.eps, num_batches_tracked=nbt)
                record.append((x, mean, invstd))
                x = y
                continue
            elif isinstance(layer, Dropout):
                y = N.dropout(x, layer.p, self._seed_of(i), self.step_count) if training else x.copy()
            else:
                y = _act(x, layer.activation, getattr(layer, "negative_slope", 0.01))
            record.append((x, y))
            x = y
        return x, record

    def _seed_of(self, i):
        """The seed fastwb gives the dropout at layer i: that of its stage's first layer."""
        from fastwb.nn.plan import stages

        for st in stages(self.layers):
            if i in st.layers:
                return (self.seed * 1000003 + st.index) % (2**31 - 1)
        raise AssertionError(i)

    def backward(self, g, record, training):
        grads = {}
        for i in range(len(self.layers) - 1, -1, -1):
            layer, rec = self.layers[i], record[i]
            s = self.state
            if isinstance(layer, Linear):
                x = rec[0]
                grads[f"{i}.weight"] = x.T @ g
                if layer.bias:
                    grads[f"{i}.bias"] = g.sum(axis=0)
                g = g @ s[f"{i}.weight"].T
            elif isinstance(layer, BatchNorm1d):
                x, mean, invstd = rec
                gx, gg, gb = N.batch_norm_backward(g, x, mean, invstd, s.get(f"{i}.weight"), s.get(f"{i}.bias"),
                                                   training=training or not layer.track_running_stats)
                if layer.affine:
                    grads[f"{i}.weight"], grads[f"{i}.bias"] = gg, gb
                g = gx
            elif isinstance(layer, Dropout):
                if training:
                    g = N.dropout_backward(g, layer.p, self._seed_of(i), self.step_count)
            else:
                g = _act_backward(g, rec[1], layer.activation, getattr(layer, "negative_slope", 0.01))
        return g, grads

    def train_step(self, X, y):
        out, record = self.forward(X, True)
        loss, g = _LOSSES[self.loss](out, y)
        _, grads = self.backward(g, record, True)
        self.optimizer.step([grads[k] for k in self.names])
        self.step_count += 1
        return loss

    def logits(self, X):
        return self.forward(X, False)[0]
