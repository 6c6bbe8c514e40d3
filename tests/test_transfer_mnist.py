"""The README's transfer-learning example, run on the real MNIST (skipped without it).

Pretrain 784-256-128-10 on digits 0-4; learn digits 5-9 from 100 examples of
each with the base frozen, fine-tuned, and from scratch; print the three test
accuracies.  Measured: the frozen base loses to a network trained from scratch
(0.81 against 0.91; see the README), so the test checks that each of the three
trains to the accuracy it reaches, not an ordering the data do not give."""

import contextlib
import io
import os
import re

import pytest

from test_readme import BLOCKS, README


def test_worked_example_on_real_mnist(mnist_folder, tmp_path):
    block = next(((line, src) for line, src in BLOCKS if ".freeze(" in src and 'datasets.load("mnist"' in src), None)
    if block is None:
        pytest.skip("the README no longer has the transfer-learning example")
    line, source = block
    (tmp_path / "data").mkdir()
    os.symlink(os.path.abspath(mnist_folder), tmp_path / "data" / "mnist")
    out, cwd = io.StringIO(), os.getcwd()
    os.chdir(tmp_path)
    try:
        with contextlib.redirect_stdout(out):
            namespace = {"__name__": "__transfer__"}
            exec(compile("\n" * (line - 1) + source, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    print(out.getvalue())
    acc = {name.strip(): float(v) for name, v in re.findall(r"^(.*?): test accuracy on digits 5-9 ([\d.]+)$",
                                                             out.getvalue(), re.M)}
    assert set(acc) == {"frozen base", "fine-tuned", "from scratch"}
    assert acc["frozen base"] > 0.7            # chance is 0.2
    assert acc["fine-tuned"] > 0.88 and acc["from scratch"] > 0.88
    frozen, base = namespace["frozen"], namespace["base"]
    for name in ("0.weight", "0.bias", "2.weight", "2.bias"):
        assert (frozen.state_dict()[name] == base.state_dict()[name]).all(), name
