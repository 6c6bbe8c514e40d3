"""fastwb's engine: models composed of layers, trained in fused steps over one buffer.

    from fastwb import nn
    model = nn.Sequential(nn.Linear(784, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.2),
                          nn.Linear(256, 10), dtype="float32", rng=0)
    model.compile("adam", lr=1e-3, loss="cross_entropy")
    model.fit(X, y, epochs=5, validation_data=(Xv, yv), callbacks=[nn.EarlyStopping("val_loss", patience=3)])

* :mod:`fastwb.nn.layers`: ``Linear``, ``BatchNorm1d``, ``Dropout`` and the
  activations, with PyTorch's names, defaults and semantics;
* :mod:`fastwb.nn.sequential`: ``Sequential``, its fused plan, ``fit``, state
  dicts and v2 checkpoints (:func:`load`);
* :mod:`fastwb.nn.losses`: ``cross_entropy``, ``mse``, ``bce_with_logits``;
* :mod:`fastwb.nn.callbacks`: ``EarlyStopping``, ``LearningRateScheduler``,
  ``ModelCheckpoint``, ``Unfreeze``.
"""

from fastwb.nn.callbacks import Callback, EarlyStopping, LearningRateScheduler, ModelCheckpoint, Unfreeze
from fastwb.nn.interop import from_torch
from fastwb.nn.layers import BatchNorm1d, Dropout, Identity, LeakyReLU, Linear, ReLU, Sigmoid, Tanh, activation_layer
from fastwb.nn.losses import LOSSES
from fastwb.nn.sequential import Sequential, load

__all__ = ["Sequential", "load", "Linear", "BatchNorm1d", "Dropout", "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
           "Identity", "activation_layer", "LOSSES", "Callback", "EarlyStopping", "LearningRateScheduler",
           "ModelCheckpoint", "Unfreeze", "from_torch"]
