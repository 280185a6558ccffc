"""The benchmarks cover the op registry: every op has forward and
forward+backward rows, in several spellings, in the call overhead table
(benchmarks/overhead.py)."""
import importlib.util
import os

import numpy as np
import pytest

from fastnorm import _registry

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _overhead():
    import sys
    sys.path.insert(0, _PATH)
    spec = importlib.util.spec_from_file_location("overhead", os.path.join(_PATH, "overhead.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SPECS = _overhead().SPECS


@pytest.mark.parametrize("op", _registry.OPS, ids=lambda o: o.name)
def test_every_op_has_overhead_rows(op):
    rows = [spec for spec in SPECS if spec[0].split()[0] == op.name]
    forwards = [spec for spec in rows if spec[2] == "fwd"]
    backwards = [spec for spec in rows if spec[2] == "fwd+bwd"]
    assert len(forwards) >= 2, f"{op.name}: fewer than two forward spellings in benchmarks/overhead.py"
    assert backwards, f"{op.name}: no forward+backward row in benchmarks/overhead.py"
    assert all(op.backward_name in spec[3] for spec in backwards), op.name


def _leaves(result):
    if isinstance(result, (tuple, list)):
        return [leaf for r in result for leaf in _leaves(r)]
    return [result]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s[3][:60])
def test_every_spelling_gives_the_general_paths_result(spec, dtype, general_path):
    """Each literal call of the overhead table, whatever its spelling, returns
    bit for bit what the validating general path returns, and leaves the
    namespace's arrays (running statistics, out= buffers) the same."""
    overhead = _overhead()
    if dtype == "float16":
        overhead.peers.DTYPES.setdefault("float16", np.float16)
    op, family, _direction, code = spec[:4]

    def run():
        ns = overhead.fastnorm_namespace(family, dtype)
        arrays = {k: v for k, v in ns.items() if isinstance(v, np.ndarray)}
        for k in ("o", "o2", "ol"):  # out= buffers: compare what the call wrote
            if k in arrays:
                arrays[k][...] = 0
        result = overhead.compile_call(code, ns)()
        return _leaves(result) + [arrays[k] for k in sorted(arrays)]

    fast = run()
    general_path()
    general = run()
    assert len(fast) == len(general)
    for k, (a, b) in enumerate(zip(fast, general)):
        if a is None or b is None:
            assert a is b, k
            continue
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape, (code, k)
        assert np.array_equal(a, b, equal_nan=True), (code, k)
