"""The benchmarks cover the op registry: every op has forward and
forward+backward rows, in several spellings, in the call overhead table
(benchmarks/overhead.py)."""
import importlib.util
import os

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
