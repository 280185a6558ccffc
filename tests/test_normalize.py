"""Lp normalize: kernels vs the reference twin and torch, any p and dim,
layouts, threads, out=, eps clamp, finite differences, errors."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import fastnorm
from fastnorm import reference as ref
from conftest import numeric_gradient
from zoo import make

PS = [2.0, 1.0, 3.0, 0.5, np.inf]
CASES = [((7,), 0), ((4, 9), 1), ((4, 9), 0), ((3, 5, 33), -1), ((3, 5, 33), 1), ((2, 3, 4, 4097), -1), ((0, 8), 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["contiguous", "fortran", "strided_rows", "readonly"])
@pytest.mark.parametrize("shape,dim", CASES)
@pytest.mark.parametrize("p", PS)
def test_matches_reference(isa, rng, p, shape, dim, layout, dtype):
    x = make(shape, layout, dtype, rng)
    before = x.copy()
    g = make(shape, "contiguous", dtype, rng, offset=0.0)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    for n_threads in (1, 2):
        y, n = fastnorm.normalize(x, p, dim, return_stats=True, n_threads=n_threads)
        yr, nr = ref.normalize(x, p, dim, return_stats=True)
        assert y.dtype == dtype and y.shape == x.shape and n.shape == nr.shape
        np.testing.assert_allclose(y, yr, **tol)
        np.testing.assert_allclose(n, nr, rtol=tol["rtol"] * 10)
        gx = fastnorm.normalize_backward(g, x, n, p, dim, n_threads=n_threads)
        np.testing.assert_allclose(gx, ref.normalize_backward(g, x, nr, p, dim),
                                   rtol=tol["rtol"] * 20, atol=tol["atol"] * 20)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_matches_torch(rng, p, dim):
    x = rng.standard_normal((6, 5, 7)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = TF.normalize(tx, p, dim)
    ty.backward(torch.tensor(g))
    y, n = fastnorm.normalize(x, p, dim, return_stats=True)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(fastnorm.normalize_backward(g, x, n, p, dim), tx.grad.numpy(),
                               rtol=1e-4, atol=1e-5)


def test_eps_clamp_and_zero_rows(rng):
    x = np.zeros((3, 4), np.float64)
    x[1] = [1e-14, 0, 0, 0]
    x[2] = [3, 4, 0, 0]
    y, n = fastnorm.normalize(x, dim=1, eps=1e-12, return_stats=True)
    np.testing.assert_array_equal(y[0], 0)
    np.testing.assert_allclose(y[1], x[1] / 1e-12)
    np.testing.assert_allclose(y[2], [0.6, 0.8, 0, 0])
    g = np.ones_like(x)
    gx = fastnorm.normalize_backward(g, x, n, dim=1, eps=1e-12)
    np.testing.assert_allclose(gx[0], 1e12)  # clamped rows: the constant 1/eps
    tx = torch.tensor(x, requires_grad=True)
    TF.normalize(tx, dim=1, eps=1e-12).backward(torch.tensor(g))
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-10)


@pytest.mark.parametrize("p", [2.0, 1.5, np.inf])
def test_finite_differences_float64(rng, p):
    x = rng.standard_normal((3, 5)) + 0.3
    g = rng.standard_normal(x.shape)
    y, n = fastnorm.normalize(x, p, 1, return_stats=True)
    gx = fastnorm.normalize_backward(g, x, n, p, 1)

    def loss(xx):
        return float((fastnorm.normalize(xx, p, 1) * g).sum())

    np.testing.assert_allclose(gx, numeric_gradient(loss, dict(xx=x), "xx"), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("p", PS)
def test_nonfinite_rows_as_torch(p):
    """A NaN makes its row's norm NaN and the row NaN (the clamp does not hide
    it); an inf makes the norm inf; other rows are untouched.  Values and
    gradients as torch."""
    x = np.array([[1.0, np.nan, 2.0, 0.5], [np.inf, 1.0, 0.0, -2.0], [3.0, -4.0, 0.0, 1.0],
                  [-np.inf, np.inf, 1.0, 0.0]], np.float32)
    g = np.array([[1.0, 2.0, -1.0, 0.5]] * 4, np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = TF.normalize(tx, p, 1)
    ty.backward(torch.tensor(g))
    y, n = fastnorm.normalize(x, p, 1, return_stats=True)
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-6, atol=1e-7)
    assert np.isnan(n[0]) and np.isinf(n[1]) and np.isfinite(n[2])
    np.testing.assert_allclose(fastnorm.normalize_backward(g, x, n, p, 1), tx.grad.numpy(),
                               rtol=1e-5, atol=1e-6)
    with np.errstate(invalid="ignore"):  # inf / inf in the reference, as in torch
        np.testing.assert_allclose(y, ref.normalize(x, p, 1), rtol=1e-6, atol=1e-7)


def test_inf_norm_splits_ties_as_torch():
    """p = inf: the gradient through max |x| is shared evenly by tied maxima."""
    x = np.array([[3.0, -3.0, 1.0, 2.0], [0.5, -4.0, 4.0, 4.0], [1.0, 2.0, 3.0, -0.5]])
    g = np.array([[1.0, 2.0, 3.0, 4.0], [1.0, 1.0, 1.0, 1.0], [0.5, -1.0, 2.0, 1.0]])
    tx = torch.tensor(x, requires_grad=True)
    TF.normalize(tx, float("inf"), 1).backward(torch.tensor(g))
    y, n = fastnorm.normalize(x, np.inf, 1, return_stats=True)
    np.testing.assert_array_equal(n, [3.0, 4.0, 3.0])
    gx = fastnorm.normalize_backward(g, x, n, np.inf, 1)
    np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(ref.normalize_backward(g, x, n, np.inf, 1), gx, rtol=1e-12)


def test_out_and_in_place(rng):
    x = rng.standard_normal((8, 300)).astype(np.float32)
    expected = fastnorm.normalize(x, dim=-1)
    out = np.empty_like(x)
    assert fastnorm.normalize(x, dim=-1, out=out) is out
    np.testing.assert_array_equal(out, expected)
    xi = x.copy()
    fastnorm.normalize(xi, dim=-1, out=xi)
    np.testing.assert_array_equal(xi, expected)


def test_cosine_similarity_composition(rng):
    """Cosine normalization of a linear layer: normalize inputs and weight rows, then matmul."""
    x = rng.standard_normal((5, 16))
    w = rng.standard_normal((3, 16))
    cos = fastnorm.normalize(x, dim=-1) @ fastnorm.normalize(w, dim=-1).T
    expected = TF.cosine_similarity(torch.tensor(x)[:, None, :], torch.tensor(w)[None, :, :], dim=-1)
    np.testing.assert_allclose(cos, expected.numpy(), rtol=1e-10)


class TestErrors:
    x = np.ones((3, 4), np.float32)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="p must be > 0"):
            fastnorm.normalize(self.x, p=0)
        with pytest.raises(ValueError, match="p must be > 0"):
            fastnorm.normalize(self.x, p=-2)
        with pytest.raises(ValueError, match="p must be > 0"):
            fastnorm.normalize(self.x, p=float("nan"))
        with pytest.raises(ValueError, match="p must be > 0"):
            fastnorm.normalize(self.x, p=-np.inf)
        with pytest.raises(ValueError, match="dim=2 is out of range"):
            fastnorm.normalize(self.x, dim=2)
        with pytest.raises(TypeError, match="dim must be an int"):
            fastnorm.normalize(self.x, dim=1.0)
        with pytest.raises(TypeError, match="x must be a floating-point array"):
            fastnorm.normalize(np.ones((3, 4), np.int64))
        with pytest.raises(ValueError, match="out"):
            fastnorm.normalize(self.x, out=np.empty((3, 5), np.float32))

    def test_backward_bad_norm(self):
        y, n = fastnorm.normalize(self.x, return_stats=True)
        with pytest.raises(ValueError, match="norm"):
            fastnorm.normalize_backward(self.x, self.x, n[:2])
        with pytest.raises(ValueError, match="grad_out"):
            fastnorm.normalize_backward(self.x[:2], self.x, n)
