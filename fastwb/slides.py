"""The course slides' API, backed by fastwb's compiled kernels.

Every function and class of "Weight and Bias Fundamentals" (and the
lecture's initialisations) under its slide name, with the slide's argument
names, defaults and return values; inputs are never modified.  Where the
slides have bugs, fastwb does the right thing and says so:

* ``initialize_weights`` is called Xavier/Glorot on the slide, but its
  formula ``randn * sqrt(2 / input_size)`` is He's; the formula is kept.
* an unknown ``activation`` / ``method`` raises ``ValueError`` listing the
  valid names (the slides fall through to an ``UnboundLocalError``).
* ``AdamOptimizer`` and ``MomentumOptimizer`` hold the state of one layer:
  use one per layer (the slides share one between two layers, so the second
  layer's gradients meet the first layer's state); a gradient of another
  shape raises ``ValueError``.
* ``DynamicPruningOptimizer`` updates the sparsity every
  ``max(1, prune_steps // 10)`` steps (the slide divides by zero below 10
  steps) and keeps pruned weights pruned (the slide recomputes the mask from
  already-pruned weights, so once the zeros reach the percentile the
  threshold drops to 0 and every pruned weight is revived); its masks are
  always boolean.  Its k-th sparsity is ``initial + k * increment`` (the
  target exactly from the last increment on), computed in O(1); the slide
  adds the increment k times, which differs in the last bits.

Random functions take an optional ``rng`` (Generator or seed); without one
they draw from NumPy's global state, as the slides do, so ``np.random.seed``
reproduces them.
"""

import math

import numpy as np

from fastwb import functional, init, optim, prune, regularization
from fastwb._validate import check_int, float_array, same_dtype
from fastwb.functional import leaky_relu
from fastwb.mlp import MLP
from fastwb.plots import visualize_weights

__all__ = [
    "initialize_weights", "update_parameters", "add_bias_activation", "initialize_layer_weights",
    "MomentumOptimizer", "compute_regularization", "prune_weights", "AdamOptimizer",
    "DynamicPruningOptimizer", "advanced_bias_initialization", "xavier_init",
    "zero_initialization", "random_initialization", "leaky_relu",
    "MNISTClassifier", "evaluate_model", "visualize_weights", "weight_statistics",
]

LAYER_METHODS = ("glorot", "he", "lecun")
SLIDE_ACTIVATIONS = ("identity", "relu", "leaky_relu", "sigmoid", "tanh")


def _rng(rng):
    return np.random.mtrand._rand if rng is None else init.as_generator(rng)


def _copy(name, a):
    return np.array(float_array(name, a, contiguous=False), order="C", copy=True)


def initialize_weights(input_size, hidden_size, rng=None):
    """Weights ``randn(input_size, hidden_size) * sqrt(2 / input_size)`` and zero biases.

    The slide calls this Xavier/Glorot; the formula is He's (Glorot's is
    ``sqrt(2 / (input_size + hidden_size))``).  Returns ``(weights, biases)``."""
    input_size = check_int("input_size", input_size, 1)
    hidden_size = check_int("hidden_size", hidden_size, 0)
    W = init.normal((input_size, hidden_size), math.sqrt(2.0 / input_size), _rng(rng))
    return W, np.zeros(hidden_size)


def update_parameters(weights, biases, gradients, learning_rate=0.01):
    """One gradient-descent step, ``W - lr * dW`` and ``b - lr * db``, as new arrays."""
    dW, db = gradients
    W, b = _copy("weights", weights), _copy("biases", biases)
    optim.SGD([W, b], lr=learning_rate).step([dW, db])
    return W, b


def add_bias_activation(inputs, weights, biases, activation="relu"):
    """``z = inputs @ weights + biases`` and ``act(z)``; returns ``(output, z)``.

    ``activation`` is one of identity, relu, leaky_relu (slope 0.01),
    sigmoid, tanh.  ``inputs`` may be one sample (1-D) or a batch (2-D)."""
    if activation not in SLIDE_ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; valid names are {', '.join(SLIDE_ACTIVATIONS)}")
    x = float_array("inputs", inputs, contiguous=False)
    single = x.ndim == 1
    z = functional.linear(x[None, :] if single else x, weights, biases)
    out = z.copy() if activation == "identity" else getattr(functional, activation)(z)
    return (out[0], z[0]) if single else (out, z)


def initialize_layer_weights(input_size, output_size, method="glorot", rng=None):
    """Weights by ``method`` and zero biases; returns ``(weights, biases)``.

    * glorot: U(-a, a), a = sqrt(6 / (input_size + output_size))
    * he: N(0, 2 / input_size)
    * lecun: N(0, 1 / input_size)
    """
    shape = (check_int("input_size", input_size, 1), check_int("output_size", output_size, 0))
    if method == "glorot":
        W = init.xavier_uniform(shape, rng=_rng(rng))
    elif method == "he":
        W = init.normal(shape, math.sqrt(2 / input_size), _rng(rng))
    elif method == "lecun":
        W = init.normal(shape, math.sqrt(1 / input_size), _rng(rng))
    else:
        raise ValueError(f"unknown method {method!r}; valid names are {', '.join(LAYER_METHODS)}")
    return W, np.zeros(output_size)


class _LayerOptimizer:
    """Shared machinery of the slides' optimizer classes: one layer's
    (weights, biases), a fast optimizer holding their state, new arrays out."""

    def _step(self, make, weights, biases, gradients):
        dW, db = gradients
        W, b = _copy("weights", weights), _copy("biases", biases)
        same_dtype(weights=W, biases=b)
        if self._opt is None:
            self._opt = make([W, b])
        else:
            self._opt.rebind([W, b])
        self._opt.step([dW, db])
        return W, b

    def _state(self, index, name):
        return None if self._opt is None else self._opt.state[index][name]


class MomentumOptimizer(_LayerOptimizer):
    """Momentum for one layer: ``v = momentum * v - lr * grad``, ``param += v``.

    ``update(weights, biases, gradients)`` returns the new ``(weights, biases)``;
    ``velocity_W`` and ``velocity_b`` hold the state."""

    def __init__(self, learning_rate=0.01, momentum=0.9):
        self.learning_rate = learning_rate
        self.momentum = momentum
        self._opt = None

    velocity_W = property(lambda self: self._state(0, "velocity"))
    velocity_b = property(lambda self: self._state(1, "velocity"))

    def update(self, weights, biases, gradients):
        return self._step(lambda p: optim.Momentum(p, lr=self.learning_rate, momentum=self.momentum),
                          weights, biases, gradients)


class AdamOptimizer(_LayerOptimizer):
    r"""Adam for one layer, with bias correction:

    .. math:: m \leftarrow \beta_1 m + (1-\beta_1) g,\ v \leftarrow \beta_2 v + (1-\beta_2) g^2,\
              w \leftarrow w - \eta\,\frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon}

    ``update(weights, biases, gradients)`` returns the new ``(weights, biases)``;
    ``m_W, v_W, m_b, v_b`` and ``t`` hold the state."""

    def __init__(self, learning_rate=0.001, beta1=0.9, beta2=0.999, epsilon=1e-8):
        self.learning_rate = learning_rate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self._opt = None

    m_W = property(lambda self: self._state(0, "exp_avg"))
    v_W = property(lambda self: self._state(0, "exp_avg_sq"))
    m_b = property(lambda self: self._state(1, "exp_avg"))
    v_b = property(lambda self: self._state(1, "exp_avg_sq"))
    t = property(lambda self: 0 if self._opt is None else self._opt.step_count)

    def update(self, weights, biases, gradients):
        return self._step(lambda p: optim.Adam(p, lr=self.learning_rate, betas=(self.beta1, self.beta2),
                                               eps=self.epsilon), weights, biases, gradients)


def compute_regularization(weights, lambda_param=0.01, method="l2"):
    """``(reg_loss, reg_grad)``: ``0.5 * lambda * sum(w^2)``, ``lambda * w`` (l2) or
    ``lambda * sum(|w|)``, ``lambda * sign(w)`` (l1), in one pass."""
    return regularization.penalty(weights, lambda_param, method)


def prune_weights(weights, threshold_percentile=90):
    """``(pruned_weights, sparsity, mask)``: weights with ``|w|`` below the
    ``threshold_percentile``-th percentile of ``|w|`` set to 0."""
    return prune.magnitude_prune(weights, threshold_percentile)


class DynamicPruningOptimizer:
    """Gradually raise the sparsity of one weight array while it trains.

    Every ``max(1, prune_steps // 10)`` calls of ``apply_pruning`` the
    sparsity grows by ``(target - initial) / prune_steps`` up to
    ``target_sparsity``.  The first call keeps everything; later calls prune
    the weights below the current sparsity's percentile of ``|w|`` and keep
    pruned weights pruned.  ``apply_pruning(weights, gradients)`` returns
    ``(pruned_weights, pruned_gradients, mask)``."""

    def __init__(self, initial_sparsity=0.0, target_sparsity=0.9, prune_steps=10):
        self.schedule = prune.LinearSchedule(initial_sparsity, target_sparsity, prune_steps)
        self.current_sparsity = float(initial_sparsity)
        self.target_sparsity = float(target_sparsity)
        self.prune_steps = int(prune_steps)
        self.step_size = self.schedule.step_size
        self.mask = None
        self.step_count = 0

    def calculate_threshold(self, weights):
        """Threshold for the current sparsity: its percentile of ``|weights|``."""
        return prune.magnitude_threshold(weights, self.current_sparsity * 100)

    def update_mask(self, weights):
        """The mask for the current sparsity, never reviving a pruned weight."""
        keep = prune.magnitude_prune(weights, self.current_sparsity * 100)[2]
        return keep if self.mask is None else keep & self.mask

    def apply_pruning(self, weights, gradients):
        w = float_array("weights", weights)
        g = float_array("gradients", gradients)
        same_dtype(weights=w, gradients=g)
        if g.shape != w.shape:
            raise ValueError(f"gradients has shape {g.shape} but weights has shape {w.shape}")
        if self.mask is not None and self.mask.shape != w.shape:
            raise ValueError(f"weights has shape {w.shape}, this optimizer's mask {self.mask.shape}; "
                             "use one DynamicPruningOptimizer per layer")
        self.step_count += 1
        self.current_sparsity = self.schedule(self.step_count)
        self.mask = np.ones(w.shape, bool) if self.mask is None else self.update_mask(w)
        return (prune.apply_mask(w.copy(), self.mask), prune.apply_mask(g.copy(), self.mask), self.mask)


def advanced_bias_initialization(layer_sizes, activation_types, rng=None):
    """One bias vector per layer, scaled for its activation (see
    :func:`fastwb.init.bias_for_activation`): He-normal for relu, 0.1 for
    sigmoid, Glorot-uniform for tanh, zeros for linear."""
    layer_sizes = list(layer_sizes)
    activation_types = list(activation_types)
    if len(activation_types) != len(layer_sizes) - 1:
        raise ValueError(f"{len(layer_sizes)} layer sizes make {len(layer_sizes) - 1} layers, "
                         f"but {len(activation_types)} activation types were given")
    r = _rng(rng)
    return [init.bias_for_activation(n_in, n_out, act, r)
            for n_in, n_out, act in zip(layer_sizes[:-1], layer_sizes[1:], activation_types)]


def xavier_init(shape, rng=None):
    """Glorot uniform: U(-r, r), r = sqrt(6 / (shape[0] + shape[1]))."""
    return init.xavier_uniform(shape, rng=_rng(rng))


def zero_initialization(shape):
    """The lecture's zero initialisation (symmetric: every neuron learns the same)."""
    return init.zeros(shape)


def random_initialization(shape, low=-0.1, high=0.1, rng=None):
    """The lecture's small random initialisation: U(-0.1, 0.1)."""
    return init.uniform(shape, low, high, _rng(rng))


class MNISTClassifier:
    """The slides' two-layer MNIST classifier (ReLU hidden layer, softmax output,
    Adam), built on :class:`fastwb.MLP`.

    ``W1, b1, W2, b2`` are views of the engine's parameter buffer; weights
    start He-normal (``randn * sqrt(2 / fan_in)``), biases at 0.  float64 by
    default, as the slides compute; ``dtype=np.float32`` for speed.  The
    optimizer is Adam (lr 0.001): one fused state over both layers, which is
    exactly one Adam state per layer with one step count each (the slides
    share one AdamOptimizer between layers of different shapes).  The
    softmax subtracts the row maximum, and ``backward`` leaves ``probs``
    untouched (the slides overwrite it).
    """

    def __init__(self, input_size=784, hidden_size=256, output_size=10, dtype=np.float64, rng=None):
        self.net = MLP([input_size, hidden_size, output_size], "relu", dtype=dtype, rng=0)
        r = _rng(rng)
        for W in self.net.W:
            W[...] = init.normal(W.shape, math.sqrt(2.0 / W.shape[0]), r)
        self.net.compile("adam", lr=0.001)
        self.probs = None

    W1 = property(lambda self: self.net.W[0])
    b1 = property(lambda self: self.net.b[0])
    W2 = property(lambda self: self.net.W[1])
    b2 = property(lambda self: self.net.b[1])
    optimizer = property(lambda self: self.net.optimizer)

    def _x(self, X):
        return np.ascontiguousarray(X, dtype=self.net.dtype)

    def forward(self, X):
        """Class probabilities of each row of X (also kept as ``self.probs``)."""
        self.probs = self.net.predict_proba(self._x(X))
        return self.probs

    def backward(self, X, y, batch_size):
        """Gradients of the mean cross-entropy: ``[(dW1, db1), (dW2, db2)]``."""
        X = self._x(X)
        if batch_size != len(X):
            raise ValueError(f"batch_size={batch_size} but X has {len(X)} rows")
        _, dW, db = self.net.gradients(X, y)
        return [(dW[0].copy(), db[0].copy()), (dW[1].copy(), db[1].copy())]

    def train_step(self, X_batch, y_batch):
        """One Adam step on a batch; returns its mean loss."""
        return self.net.train_step(self._x(X_batch), y_batch)


def evaluate_model(model, X, y):
    """``(accuracy, predictions)``: argmax of ``model.forward(X)`` against y."""
    predictions = np.argmax(model.forward(X), axis=1)
    return float(np.mean(predictions == np.asarray(y))), predictions


def weight_statistics(model):
    """The slides' weight and bias statistics: per layer mean and std of W and b
    (of each Linear layer of a fastwb.nn.Sequential; 0.0 for a layer without bias)."""
    Ws = model.net.W if isinstance(model, MNISTClassifier) else model.W
    bs = model.net.b if isinstance(model, MNISTClassifier) else model.b
    return [{"layer": i + 1, "W_mean": float(W.mean()), "W_std": float(W.std()),
             "b_mean": float(b.mean()) if b is not None else 0.0, "b_std": float(b.std()) if b is not None else 0.0}
            for i, (W, b) in enumerate(zip(Ws, bs))]
