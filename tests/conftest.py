import numpy as np
import pytest

from fastnorm import _config, _dispatch


@pytest.fixture(params=_config.available_isas())
def isa(request, monkeypatch):
    """Run a test once per instruction-set build this CPU can run."""
    monkeypatch.setattr(_dispatch, "kernels", _config.load_isa(request.param))
    return request.param


class NoFastPaths:
    """The kernel module with every *_fast entry declining (NotImplemented),
    so that each call takes the validating general path."""

    def __init__(self, kernels):
        self._kernels = kernels

    def __getattr__(self, name):
        if name.endswith("_fast"):
            return lambda *args, **kwargs: NotImplemented
        return getattr(self._kernels, name)


@pytest.fixture
def general_path(monkeypatch):
    """A function that switches the rest of the test to the general path."""
    return lambda: monkeypatch.setattr(_dispatch, "kernels", NoFastPaths(_dispatch.kernels))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def tol(dtype):
    """(rtol, atol) for comparing a fastnorm result with the float64 reference."""
    return (2e-5, 2e-5) if np.dtype(dtype) == np.float32 else (1e-12, 1e-12)


def numeric_gradient(loss, arrays, which, h=1e-3):
    """4th-order central finite difference of loss(**arrays) w.r.t. arrays[which]."""
    base = arrays[which]
    grad = np.zeros_like(base)
    for idx in np.ndindex(base.shape):
        vals = []
        for step in (-2, -1, 1, 2):
            a = base.copy()
            a[idx] += step * h
            vals.append(loss(**{**arrays, which: a}))
        grad[idx] = (vals[0] - 8 * vals[1] + 8 * vals[2] - vals[3]) / (12 * h)
    return grad
