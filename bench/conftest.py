"""The pytest-benchmark suite is generated from fastwb.benchmark.cases(): one
group per comparison, holding fastwb, its NumPy twin and (when installed)
PyTorch CPU at fastwb's thread count.  ``--quick`` uses the smaller problems
of ``fastwb bench --quick``."""

import fastwb.benchmark


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", help="smaller problems (the suite then runs in minutes)")
    parser.addoption("--bench-dtype", default="both", choices=["float32", "float64", "both"],
                     help="dtypes to benchmark")


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        opt = metafunc.config.getoption
        dtypes = ("float32", "float64") if opt("bench_dtype") == "both" else (opt("bench_dtype"),)
        cases = fastwb.benchmark.cases(opt("quick"), dtypes)
        metafunc.parametrize("case", cases, ids=[f"{c[0]} {c[1]}".replace(" ", "_") for c in cases])
