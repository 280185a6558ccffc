"""WeightNorm (and centered WeightNorm): kernels vs the reference twin,
torch._weight_norm, finite differences, errors."""
import numpy as np
import pytest
import torch

import fastnorm
from fastnorm import nn
from fastnorm import reference as ref
from conftest import numeric_gradient

CASES = [((6, 5), 0), ((6, 5), 1), ((4, 3, 3, 3), 0), ((4, 3, 3, 3), 1), ((4, 3, 5), -1), ((7, 9), None),
         ((3, 4097), 0), ((1, 10), 0)]


def g_for(v, dim, rng, dtype):
    if dim is None:
        return np.asarray(rng.standard_normal(), dtype)
    d = dim % v.ndim
    return rng.standard_normal(tuple(v.shape[i] if i == d else 1 for i in range(v.ndim))).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("shape,dim", CASES)
def test_matches_reference(isa, rng, shape, dim, centered, dtype):
    v = (rng.standard_normal(shape) + 0.5).astype(dtype)
    g = g_for(v, dim, rng, dtype)
    gw = rng.standard_normal(shape).astype(dtype)
    before = v.copy()
    tol = dict(rtol=3e-5, atol=3e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-11)
    for n_threads in (1, 2):
        w, n = fastnorm.weight_norm(v, g, dim, centered=centered, return_stats=True, n_threads=n_threads)
        wr, nr = ref.weight_norm(v, g, dim, centered=centered, return_stats=True)
        assert w.dtype == dtype and n.shape == nr.shape
        np.testing.assert_allclose(w, wr, **tol)
        np.testing.assert_allclose(n, nr, **tol)
        gv, gg = fastnorm.weight_norm_backward(gw, v, g, n, dim, centered=centered, n_threads=n_threads)
        gvr, ggr = ref.weight_norm_backward(gw, v, g, nr, dim, centered=centered)
        assert gg.shape == np.shape(g)
        np.testing.assert_allclose(gv, gvr, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
        np.testing.assert_allclose(gg, ggr, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10)
    np.testing.assert_array_equal(v, before)


@pytest.mark.parametrize("dim", [0, 1, 2, None])
def test_matches_torch(rng, dim):
    """torch._weight_norm (torch spells 'whole tensor' as dim=-1; fastnorm as dim=None)."""
    v = rng.standard_normal((5, 4, 3))
    g = g_for(v, dim, rng, np.float64)
    gw = rng.standard_normal(v.shape)
    tv, tg = torch.tensor(v, requires_grad=True), torch.tensor(g, requires_grad=True)
    tw = torch._weight_norm(tv, tg, -1 if dim is None else dim)
    tw.backward(torch.tensor(gw))
    w, n = fastnorm.weight_norm(v, g, dim, return_stats=True)
    np.testing.assert_allclose(w, tw.detach().numpy(), rtol=1e-12)
    gv, gg = fastnorm.weight_norm_backward(gw, v, g, n, dim)
    np.testing.assert_allclose(gv, tv.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gg, tg.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("centered", [False, True])
def test_finite_differences_float64(rng, centered):
    v = rng.standard_normal((3, 4)) + 0.2
    g = rng.standard_normal((3, 1))
    gw = rng.standard_normal(v.shape)
    w, n = fastnorm.weight_norm(v, g, 0, centered=centered, return_stats=True)
    gv, gg = fastnorm.weight_norm_backward(gw, v, g, n, 0, centered=centered)

    def loss(vv, gg_):
        return float((fastnorm.weight_norm(vv, gg_, 0, centered=centered) * gw).sum())

    arrays = dict(vv=v, gg_=g)
    np.testing.assert_allclose(gv, numeric_gradient(loss, arrays, "vv"), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gg, numeric_gradient(loss, arrays, "gg_"), rtol=1e-6, atol=1e-8)


def test_centered_rows_have_zero_mean(rng):
    v = rng.standard_normal((8, 50)) + 1e4
    w = fastnorm.weight_norm(v, np.ones((8, 1)), 0, centered=True)
    np.testing.assert_allclose(w.mean(axis=1), 0, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1, rtol=1e-10)


class TestErrors:
    v = np.ones((4, 3), np.float32)

    def test_bad_arguments(self):
        with pytest.raises(ValueError, match="g must have shape"):
            fastnorm.weight_norm(self.v, np.ones((3, 1), np.float32), 0)
        with pytest.raises(TypeError, match="g must have the dtype"):
            fastnorm.weight_norm(self.v, np.ones((4, 1), np.float64), 0)
        with pytest.raises(ValueError, match="dim=2 is out of range"):
            fastnorm.weight_norm(self.v, np.ones((4, 1), np.float32), 2)
        with pytest.raises(TypeError, match="v must be a floating-point array"):
            fastnorm.weight_norm(np.ones((4, 3), np.int32), np.ones((4, 1), np.int32))
        w, n = fastnorm.weight_norm(self.v, np.ones((4, 1), np.float32), 0, return_stats=True)
        with pytest.raises(ValueError, match="norm must have shape"):
            fastnorm.weight_norm_backward(self.v, self.v, np.ones((4, 1), np.float32), n[:2], 0)
        with pytest.raises(ValueError, match="grad_w"):
            fastnorm.weight_norm_backward(self.v[:2], self.v, np.ones((4, 1), np.float32), n, 0)


@pytest.mark.filterwarnings("ignore:.*torch.nn.utils.weight_norm.*:FutureWarning")
def test_layer_matches_torch_weight_norm(rng):
    lin = torch.nn.Linear(6, 4)
    torch.nn.utils.weight_norm(lin, dim=0)
    with torch.no_grad():
        lin.weight_g.mul_(torch.tensor(rng.uniform(0.5, 2, (4, 1))))
    layer = nn.WeightNorm(np.ones((4, 6), np.float32))
    layer.load_state_dict({"weight_g": lin.weight_g, "weight_v": lin.weight_v})
    w = layer()
    lin(torch.zeros(1, 6))  # recompute lin.weight from g and v
    np.testing.assert_allclose(w, lin.weight.detach().numpy(), rtol=1e-6)
    gw = rng.standard_normal((4, 6)).astype(np.float32)
    lin.weight.backward(torch.tensor(gw))
    layer.backward(gw)
    np.testing.assert_allclose(layer.grad_weight_v, lin.weight_v.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.grad_weight_g, lin.weight_g.grad.numpy(), rtol=1e-5, atol=1e-6)
    fresh = nn.WeightNorm(w.copy())
    np.testing.assert_allclose(fresh(), w, rtol=1e-6)  # starts as the weight it was given


@pytest.mark.parametrize("path", ["fast", "general"])
@pytest.mark.parametrize("dim,g_shape,ok", [
    (0, (4, 1, 1), True), (0, (4,), True), (0, (4, 1), False), (0, (2, 2), False), (0, (1, 4, 1), False),
    (None, (), True), (None, (1,), True), (None, (1, 1), False), (None, (2,), False),
])
def test_g_and_norm_shapes_are_checked_on_every_path(dim, g_shape, ok, path, general_path):
    """g (and the saved norm) take torch's shape, (M,), or 0-d for one norm;
    the C fast entries accept exactly what the general path accepts."""
    if path == "general":
        general_path()
    v = np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 3, 2)
    g = np.full(g_shape, 2.0, np.float32)
    if not ok:
        with pytest.raises(ValueError, match="g must have shape"):
            fastnorm.weight_norm(v, g, dim)
        return
    w, norm = fastnorm.weight_norm(v, g, dim, return_stats=True)
    assert norm.shape == ((4, 1, 1) if dim == 0 else ())
    grad_v, grad_g = fastnorm.weight_norm_backward(np.ones_like(v), v, g, norm, dim)
    assert grad_g.shape == g_shape
    with pytest.raises(ValueError, match="norm must have shape"):
        fastnorm.weight_norm_backward(np.ones_like(v), v, g, norm.reshape(-1)[:1].reshape(1, 1, 1, 1)
                                      if dim is None else norm.reshape(2, 2), dim)
