"""Pictures of weights and biases (matplotlib, an optional extra: ``pip install "fastwb[plots]"``).

Figures are built with ``matplotlib.figure.Figure`` directly, not pyplot, so
they need no display: ``visualize_weights(model).savefig("weights.png")``
works on a headless machine.
"""

import math

import numpy as np

__all__ = ["visualize_weights", "plot_reliability"]


def _figure(what):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f'{what} needs matplotlib: pip install "fastwb[plots]"') from None
    return Figure


def _layers(model):
    """(weights, biases) lists of an MLP or a fastwb.nn.Sequential (its Linear layers; a
    layer without bias is left out of the biases), an MNISTClassifier or anything with
    W1/b1, W2/b2."""
    if hasattr(model, "W") and hasattr(model, "b"):
        return list(model.W), [b for b in model.b if b is not None]
    Ws, bs, i = [], [], 1
    while hasattr(model, f"W{i}"):
        Ws.append(getattr(model, f"W{i}"))
        bs.append(getattr(model, f"b{i}"))
        i += 1
    if not Ws:
        raise TypeError(f"{type(model).__name__} has neither W/b lists nor W1/b1 attributes")
    return Ws, bs


def visualize_weights(model, n_images=25, bins=50):
    """A matplotlib Figure of a model's weights and biases.

    Top row (the slides' "Weight Visualization Techniques"): the weight
    distribution of every layer, and the first layer's weights of the first
    ``n_images`` units drawn as square images (28x28 for MNIST); bottom row
    (the second deck): the last layer's weight matrix as an image with a
    colour bar, and the bias distribution of every layer.
    """
    Figure = _figure("visualize_weights")
    Ws, bs = _layers(model)
    fig = Figure(figsize=(15, 10))
    axes = fig.subplots(2, 2)

    ax = axes[0, 0]
    for i, W in enumerate(Ws):
        ax.hist(np.ravel(W), bins=bins, alpha=0.5, density=True, label=f"Layer {i + 1}")
    ax.set(title="Weight Distributions", xlabel="Weight Value", ylabel="Density")
    ax.legend()

    ax = axes[0, 1]
    W0 = np.asarray(Ws[0])
    side = math.isqrt(W0.shape[0])
    k = min(n_images, W0.shape[1])
    grid = math.ceil(math.sqrt(k))
    if side * side == W0.shape[0] and k:
        tiles = np.full((grid * grid, side, side), np.nan)
        tiles[:k] = W0[:, :k].T.reshape(k, side, side)
        mosaic = tiles.reshape(grid, grid, side, side).transpose(0, 2, 1, 3).reshape(grid * side, grid * side)
        ax.imshow(mosaic, cmap="viridis")
        ax.set_title(f"First Layer Weight Patterns ({k} units)")
    else:
        ax.imshow(W0, aspect="auto", cmap="viridis")
        ax.set_title("First Layer Weights")
    ax.axis("off")

    ax = axes[1, 0]
    image = ax.imshow(np.asarray(Ws[-1]), aspect="auto", cmap="viridis")
    fig.colorbar(image, ax=ax)
    ax.set(title=f"Weight Matrix (layer {len(Ws)})", xlabel="output unit", ylabel="input unit")

    ax = axes[1, 1]
    for i, b in enumerate(bs):
        ax.hist(np.ravel(b), bins=20, alpha=0.5, density=True, label=f"Layer {i + 1}")
    ax.set(title="Bias Distribution", xlabel="Bias Value", ylabel="Density")
    ax.legend()
    fig.tight_layout()
    return fig


def plot_reliability(y, proba, n_bins=15):
    """A matplotlib Figure of a reliability diagram: top, the accuracy of each of
    ``n_bins`` equal-width confidence bins against the diagonal of perfect
    calibration (the gap to it shaded), titled with the expected calibration
    error; bottom, how many rows fall in each bin.  ``y``: class labels;
    ``proba``: (n, classes) probabilities; the bins and checks are those of
    :func:`fastwb.metrics.reliability_diagram`."""
    from fastwb import metrics

    Figure = _figure("plot_reliability")
    d = metrics.reliability_diagram(y, proba, n_bins)
    ece = metrics.expected_calibration_error(y, proba, n_bins)
    edges, width = d["edges"], np.diff(d["edges"])
    used = d["count"] > 0
    fig = Figure(figsize=(6, 7))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.bar(edges[:-1][used], d["accuracy"][used], width=width[used], align="edge", edgecolor="black",
            color="tab:blue", label="accuracy")
    top.bar(edges[:-1][used], (d["confidence"] - d["accuracy"])[used], bottom=d["accuracy"][used],
            width=width[used], align="edge", color="tab:red", alpha=0.3, hatch="//", label="gap to confidence")
    top.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    top.set(ylim=(0, 1), ylabel="Accuracy", title=f"Reliability diagram (ECE {ece:.4f}, {n_bins} bins)")
    top.legend(loc="upper left")
    bottom.bar(edges[:-1], d["count"], width=width, align="edge", edgecolor="black", color="tab:gray")
    bottom.set(xlim=(0, 1), xlabel="Confidence (largest probability)", ylabel="Count")
    fig.tight_layout()
    return fig
