"""Fused residual add + LayerNorm / RMSNorm: one pass equals the composition."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import fastnorm
from fastnorm import reference as ref
from conftest import tol
from zoo import LAYOUTS, SHAPES, make, norm_shape_of

OPS = ["add_layer_norm", "add_rms_norm"]


def call(op, x, r, ns, w, b, **kw):
    if op == "add_layer_norm":
        return fastnorm.add_layer_norm(x, r, ns, w, b, **kw)
    return fastnorm.add_rms_norm(x, r, ns, w, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape,normalized_shape", SHAPES)
@pytest.mark.parametrize("op", OPS)
def test_matches_composition(isa, rng, op, shape, normalized_shape, layout, dtype):
    x = make(shape, layout, dtype, rng)
    r = make(shape, "contiguous", dtype, rng, offset=-0.5)
    before = (x.copy(), r.copy())
    ns = norm_shape_of(shape, normalized_shape)
    w = (rng.standard_normal(ns) + 1).astype(dtype)
    b = rng.standard_normal(ns).astype(dtype)
    rtol, atol = tol(dtype)
    for n_threads in (1, 2):
        out = call(op, x, r, normalized_shape, w, b, return_stats=True, n_threads=n_threads)
        y, h = out[:2]
        np.testing.assert_array_equal(h, x + r)
        if op == "add_layer_norm":
            yr, mr, sr = ref.layer_norm(x + r, normalized_shape, w, b, return_stats=True)
            np.testing.assert_allclose(out[2], mr, rtol=rtol, atol=atol)
            np.testing.assert_allclose(out[3], sr, rtol=rtol, atol=atol)
        else:
            yr, sr = ref.rms_norm(x + r, normalized_shape, w, return_stats=True)
            np.testing.assert_allclose(out[2], sr, rtol=rtol, atol=atol)
        np.testing.assert_allclose(y, yr, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(r, before[1])


@pytest.mark.parametrize("op", OPS)
def test_in_place_variants(rng, op):
    x = rng.standard_normal((9, 64)).astype(np.float32)
    r = rng.standard_normal((9, 64)).astype(np.float32)
    w = rng.standard_normal(64).astype(np.float32)
    y0, h0 = call(op, x, r, 64, w, None)
    r1 = r.copy()
    y1, h1 = call(op, x, r1, 64, w, None, residual_out=r1)  # the residual stream updated in place
    assert h1 is r1
    np.testing.assert_array_equal(h1, h0)
    np.testing.assert_array_equal(y1, y0)
    x2, r2 = x.copy(), r.copy()
    y2, h2 = call(op, x2, r2, 64, w, None, out=x2, residual_out=r2)
    assert y2 is x2 and h2 is r2
    np.testing.assert_array_equal(y2, y0)
    np.testing.assert_array_equal(h2, h0)


def test_backward_through_layer_norm_matches_torch(rng):
    """The backward is layer_norm_backward on h; it reaches x and residual unchanged."""
    x = rng.standard_normal((5, 32))
    r = rng.standard_normal((5, 32))
    w = rng.standard_normal(32)
    b = rng.standard_normal(32)
    g = rng.standard_normal((5, 32))
    y, h, m, s = fastnorm.add_layer_norm(x, r, 32, w, b, return_stats=True)
    gh, gw, gb = fastnorm.layer_norm_backward(g, h, m, s, w, b)
    tx, tr = torch.tensor(x, requires_grad=True), torch.tensor(r, requires_grad=True)
    TF.layer_norm(tx + tr, (32,), torch.tensor(w), torch.tensor(b)).backward(torch.tensor(g))
    np.testing.assert_allclose(gh, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gh, tr.grad.numpy(), rtol=1e-10, atol=1e-12)


class TestErrors:
    x = np.zeros((3, 8), np.float32)

    def test_bad_inputs(self):
        with pytest.raises(ValueError, match="residual"):
            fastnorm.add_layer_norm(self.x, self.x[:, :4])
        with pytest.raises(TypeError, match="residual"):
            fastnorm.add_rms_norm(self.x, self.x.astype(np.float64))
        out = np.empty_like(self.x)
        with pytest.raises(ValueError, match="out and residual_out must be different"):
            fastnorm.add_layer_norm(self.x, self.x, out=out, residual_out=out)
        with pytest.raises(ValueError, match="residual_out"):
            fastnorm.add_layer_norm(self.x, self.x, residual_out=np.empty((3, 7), np.float32))
        with pytest.raises(ValueError, match="normalized_shape"):
            fastnorm.add_rms_norm(self.x, self.x, 7)
