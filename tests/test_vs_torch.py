"""fastnorm against PyTorch CPU: values and autograd gradients.

torch is a hard requirement of the test suite (the test extra pins it): an
ImportError here fails the run instead of skipping the comparison."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import fastnorm
from fastnorm import nn

CASES = [((4, 768), (768,)), ((2, 3, 64), (64,)), ((3, 4, 5), (4, 5)), ((7, 1), (1,)), ((1, 4097), (4097,))]


def close(a, t, dtype, scale=1.0):
    rtol, atol = (2e-5, 2e-5 * scale) if dtype == np.float32 else (1e-10, 1e-10 * scale)
    np.testing.assert_allclose(a, t.detach().numpy(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ns", CASES)
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_matches_torch(rng, shape, ns, dtype, affine):
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal(ns) + 1).astype(dtype) if affine else None
    b = rng.standard_normal(ns).astype(dtype) if affine else None
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True) if affine else None
    tb = torch.tensor(b, requires_grad=True) if affine else None
    ty = TF.layer_norm(tx, ns, tw, tb, 1e-5)
    ty.backward(torch.tensor(g))
    y, m, r = fastnorm.layer_norm(x, ns, w, b, 1e-5, return_stats=True)
    close(y, ty, dtype)
    gx, gw, gb = fastnorm.layer_norm_backward(g, x, m, r, w, b)
    close(gx, tx.grad, dtype, 10)
    if affine:
        scale = max(1.0, float(tw.grad.abs().max())) * 10
        close(gw, tw.grad, dtype, scale)
        close(gb, tb.grad, dtype, scale)
    else:
        assert gw is None and gb is None
    # the saved statistics are torch's native_layer_norm's
    _, tm, tr = torch.native_layer_norm(torch.tensor(x), ns, None, None, 1e-5)
    close(m, tm.reshape(m.shape), dtype)
    close(r, tr.reshape(r.shape), dtype, 100)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,ns", CASES)
@pytest.mark.parametrize("eps", [None, 1e-6])
def test_rms_norm_matches_torch(rng, shape, ns, dtype, eps):
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(dtype)
    g = rng.standard_normal(shape).astype(dtype)
    w = (rng.standard_normal(ns) + 1).astype(dtype)
    tx = torch.tensor(x, requires_grad=True)
    tw = torch.tensor(w, requires_grad=True)
    ty = TF.rms_norm(tx, ns, tw, eps)
    ty.backward(torch.tensor(g))
    y, r = fastnorm.rms_norm(x, ns, w, eps, return_stats=True)
    close(y, ty, dtype)
    gx, gw = fastnorm.rms_norm_backward(g, x, r, w)
    close(gx, tx.grad, dtype, 10)
    close(gw, tw.grad, dtype, max(1.0, float(tw.grad.abs().max())) * 10)


def test_float32_large_offset_beats_torch(rng):
    """Rows of 1e4 + N(0,1) and 1e5 + 0.1 N(0,1) in float32: fastnorm stays
    within 1e-4 of the float64 result (and is at least as close as torch)."""
    for offset, spread in ((1e4, 1.0), (1e5, 0.1)):
        x = (offset + spread * rng.standard_normal((16, 4096))).astype(np.float32)
        exact = TF.layer_norm(torch.tensor(x, dtype=torch.float64), (4096,)).numpy()
        ours = np.abs(fastnorm.layer_norm(x) - exact).max()
        theirs = np.abs(TF.layer_norm(torch.tensor(x), (4096,)).numpy() - exact).max()
        assert ours < 1e-4
        assert ours <= theirs


@pytest.mark.parametrize("momentumless_layer", ["LayerNorm", "RMSNorm"])
def test_layers_load_torch_state_and_match(rng, momentumless_layer):
    shape = (3, 5, 32)
    if momentumless_layer == "LayerNorm":
        tl = torch.nn.LayerNorm(32, eps=1e-5)
        fl = nn.LayerNorm(32, eps=1e-5)
    else:
        tl = torch.nn.RMSNorm(32)
        fl = nn.RMSNorm(32)
    with torch.no_grad():
        for p in tl.parameters():
            p.copy_(torch.randn(p.shape))
    fl.load_state_dict(tl.state_dict())
    assert set(fl.state_dict()) == set(tl.state_dict())
    x = rng.standard_normal(shape).astype(np.float32)
    g = rng.standard_normal(shape).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = tl(tx)
    ty.backward(torch.tensor(g))
    y = fl(x)
    close(y, ty, np.float32)
    gx = fl.backward(g)
    close(gx, tx.grad, np.float32, 10)
    close(fl.grad_weight, tl.weight.grad, np.float32, float(tl.weight.grad.abs().max()) * 10)
    if momentumless_layer == "LayerNorm":
        close(fl.grad_bias, tl.bias.grad, np.float32, float(tl.bias.grad.abs().max()) * 10)
