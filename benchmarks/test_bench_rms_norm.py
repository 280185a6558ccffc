"""pytest-benchmark suite for rms_norm: fastnorm and its peers on the SPEC shapes.

    pytest benchmarks/ --benchmark-only --benchmark-group-by=param:shape,param:direction
"""
import pytest

from peers import OPS, SHAPES, make_case, set_threads
import fastnorm

THREADS = fastnorm.max_threads()
IMPLS = ["fastnorm", "torch", "onnxruntime", "numpy"]


@pytest.mark.parametrize("direction", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_rms_norm(benchmark, shape, impl, direction):
    set_threads(THREADS)
    fn = OPS["rms_norm"][impl](*make_case(shape), THREADS, backward=direction == "fwd+bwd")
    if fn is None:
        pytest.skip(f"{impl} has no rms_norm {direction}")
    benchmark(fn)
