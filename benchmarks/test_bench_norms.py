"""pytest-benchmark suite: fastnorm and its peers on the SPEC cases, per op.

    pytest benchmarks/ --benchmark-only --benchmark-group-by=param:case
"""
import pytest

from peers import OPS, set_threads
import fastnorm

THREADS = fastnorm.max_threads()
IMPLS = ["fastnorm", "torch", "onnxruntime", "numpy"]
CASES = [(op, shape, direction) for op, spec in OPS.items()
         for shape in spec["shapes"] for direction in spec["directions"]]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}-{c[2]}")
def test_norm(benchmark, case, impl):
    op, shape, direction = case
    set_threads(THREADS)
    factory = OPS[op].get(impl)
    fn = factory(*OPS[op]["make_case"](shape), THREADS, backward=direction == "fwd+bwd") if factory else None
    if fn is None:
        pytest.skip(f"{impl} has no {op} {direction}")
    benchmark(fn)
