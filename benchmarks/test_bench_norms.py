"""pytest-benchmark suite: fastnorm and its peers on the SPEC shapes, per op.

    pytest benchmarks/ --benchmark-only --benchmark-group-by=func,param:op,param:shape,param:direction
"""
import pytest

from peers import OPS, SHAPES, make_case, set_threads
import fastnorm

THREADS = fastnorm.max_threads()
IMPLS = ["fastnorm", "torch", "onnxruntime", "numpy"]


@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("op", list(OPS))
def test_row_norm(benchmark, op, shape, impl, direction):
    set_threads(THREADS)
    fn = OPS[op][impl](*make_case(shape), THREADS, backward=direction == "fwd+bwd")
    if fn is None:
        pytest.skip(f"{impl} has no {op} {direction}")
    benchmark(fn)
