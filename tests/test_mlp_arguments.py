"""Bad values for MLP's size-like arguments and its constructor: a clear error naming
the argument, before any work (``fastwb._validate.check_int``: ValueError for an
integer out of range, TypeError for a bool, a float or a non-number).

Before the fix, ``logits/predict/predict_proba`` with ``batch_size <= 0``
returned uninitialised memory (``evaluate`` returned ``(0.0, 0.0)``), and
``fit`` accepted ``batch_size=2.7`` or ``True``.
"""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastwb

MODEL = fastwb.MLP([4, 6, 3], rng=0)
X = np.random.default_rng(3).standard_normal((10, 4)).astype(np.float32)
Y = np.arange(10) % 3

CALLS = {
    "logits": lambda v: MODEL.logits(X, batch_size=v),
    "predict": lambda v: MODEL.predict(X, batch_size=v),
    "predict_proba": lambda v: MODEL.predict_proba(X, batch_size=v),
    "evaluate": lambda v: MODEL.evaluate(X, Y, batch_size=v),
    "fit batch_size": lambda v: MODEL.fit(X, Y, epochs=1, batch_size=v, verbose=False),
    "fit epochs": lambda v: MODEL.fit(X, Y, epochs=v, batch_size=4, verbose=False),
}

bad_counts = st.one_of(
    st.integers(max_value=0),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(np.float64(4.0)),
    st.just(np.bool_(True)),
    st.text(max_size=3),
    st.none(),
    st.lists(st.integers(1, 5), max_size=2),
)


@pytest.mark.parametrize("batch_size", [0, -1, -1024])
@pytest.mark.parametrize("method", ["logits", "predict", "predict_proba", "evaluate"])
def test_nonpositive_batch_size_is_an_error(method, batch_size):
    with pytest.raises(ValueError, match=f"^batch_size must be >= 1, got {batch_size}$"):
        CALLS[method](batch_size)


@given(call=st.sampled_from(sorted(CALLS)), value=bad_counts)
def test_bad_size_arguments(call, value):
    before = MODEL.params.copy()
    name = call.split()[-1] if " " in call else "batch_size"
    is_int = isinstance(value, int) and not isinstance(value, bool)
    with pytest.raises(ValueError if is_int else TypeError, match=f"^{name} must be "):
        CALLS[call](value)
    np.testing.assert_array_equal(MODEL.params, before)        # nothing was trained


@pytest.mark.parametrize("value", [1, 3, 10, 11, np.int64(4), 10**12])
def test_integer_batch_sizes_give_the_same_answer(value):
    expected = MODEL.logits(X, batch_size=len(X))
    np.testing.assert_allclose(MODEL.logits(X, batch_size=value), expected, rtol=1e-6, atol=1e-6)
    assert MODEL.evaluate(X, Y, batch_size=value)[1] == MODEL.evaluate(X, Y)[1]


sizes = st.integers(1, 6)
bad_size = st.one_of(st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=2), st.none())


@st.composite
def bad_layer_sizes(draw):
    kind = draw(st.sampled_from(["element", "short", "not a sequence"]))
    if kind == "short":
        return draw(st.lists(sizes, max_size=1))
    if kind == "not a sequence":
        return draw(st.one_of(st.integers(), st.floats(), st.text(max_size=3), st.none()))
    good = draw(st.lists(sizes, min_size=2, max_size=4))
    good.insert(draw(st.integers(0, len(good))), draw(bad_size))
    return good


bad_constructor_args = st.one_of(
    st.builds(lambda v: ({"layer_sizes": v}, "layer_sizes"), bad_layer_sizes()),
    st.builds(lambda v: ({"activation": v}, "activation"),
              st.one_of(st.text(max_size=5), st.integers(), st.none(),
                        st.lists(st.sampled_from(["relu", "tanh", "gelu", 3]), max_size=3).filter(
                            lambda a: len(a) != 1 or a[0] not in ("relu", "tanh")))),
    st.builds(lambda v: ({"init": v}, "init"), st.one_of(st.text(max_size=5), st.integers(), st.none())),
    st.builds(lambda v: ({"dtype": v}, "dtype"),
              st.sampled_from([np.float16, np.int32, "int64", "foo", complex, bool, object])),
    st.builds(lambda v: ({"alpha": v}, "alpha"),
              st.one_of(st.floats(max_value=-1e-300), st.just(math.nan), st.sampled_from(["", "abc", "x1"]), st.none())),
)


@given(case=bad_constructor_args)
def test_bad_constructor_arguments(case):
    kwargs, name = case
    args = {"layer_sizes": [3, 4, 2], "activation": "relu", "init": "he", "dtype": np.float32, "alpha": 0.01}
    args.update(kwargs)
    if name == "activation" and args["activation"] in ("identity", "relu", "leaky_relu", "sigmoid", "tanh"):
        return
    if name == "init" and args["init"] in ("he", "glorot", "lecun", "uniform"):
        return
    with pytest.raises((ValueError, TypeError), match=name):
        fastwb.MLP(**args)
