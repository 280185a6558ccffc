"""pytest-benchmark form of the short shape grid (benchmarks/grid.py): every
case of the grid, float32 and bfloat16, forward and forward+backward, for
fastnorm and PyTorch, so that a saved baseline can be compared against a new
build:

    pytest benchmarks/test_bench_grid.py --benchmark-only --benchmark-save=base
    # ... change, rebuild ...
    pytest benchmarks/test_bench_grid.py --benchmark-only --benchmark-compare=0001 \\
        --benchmark-compare-fail=median:10%
    pytest-benchmark compare 0001 0002 --group-by=param:case

-k narrows it (e.g. -k "layer_norm and fastnorm").  The threads are
fastnorm.max_threads(); FASTNORM_BENCH_FULL=1 takes the full grid.
"""
import os

import pytest

import grid
import peers
import fastnorm

THREADS = fastnorm.max_threads()
FULL = os.environ.get("FASTNORM_BENCH_FULL") == "1"
CASES = [(op, shape, cl, dtype, d) for op, shape, cl in grid.cases(FULL)
         for dtype in ("float32", "bfloat16") for d in ("fwd", "fwd+bwd")]


def case_id(case):
    op, shape, cl, dtype, d = case
    return f"{op.replace(' ', '_')}{'-NHWC' if cl else ''}-{'x'.join(map(str, shape))}-{dtype}-{d}"


@pytest.mark.parametrize("impl", ["fastnorm", "torch"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_grid(benchmark, case, impl):
    op, shape, cl, dtype, d = case
    if impl == "torch" and peers.torch is None:
        pytest.skip("PyTorch is not installed")
    peers.set_threads(THREADS)
    fast_f, torch_f, make_case = grid._entry(op, cl)
    x, g, w, b = peers.cast_case(make_case(shape), dtype)
    backward = d == "fwd+bwd"
    if impl == "fastnorm":
        fn = fast_f(x, g, w, b, THREADS, backward=backward, **({} if backward else {"out": True}))
    else:
        fn = torch_f(x, g, w, b, THREADS, backward=backward)
    benchmark.group = case_id(case)
    benchmark(fn)
