"""Layers: construction like torch, state dicts, forward/backward bookkeeping."""
import numpy as np
import pytest

import fastnorm
from fastnorm import nn


def test_layer_norm_defaults_and_params():
    ln = nn.LayerNorm((4, 8))
    assert ln.normalized_shape == (4, 8) and ln.eps == 1e-5
    assert ln.weight.shape == (4, 8) and ln.weight.dtype == np.float32
    np.testing.assert_array_equal(ln.weight, 1)
    np.testing.assert_array_equal(ln.bias, 0)
    assert nn.LayerNorm(8, bias=False).bias is None
    noaff = nn.LayerNorm(8, elementwise_affine=False)
    assert noaff.weight is None and noaff.bias is None and noaff.state_dict() == {}


def test_forward_backward_bookkeeping(rng):
    ln = nn.LayerNorm(16, dtype=np.float64)
    ln.weight[:] = rng.standard_normal(16)
    x = rng.standard_normal((5, 16))
    g = rng.standard_normal((5, 16))
    with pytest.raises(RuntimeError, match="before forward"):
        ln.backward(g)
    y = ln(x)
    np.testing.assert_allclose(y, fastnorm.layer_norm(x, 16, ln.weight, ln.bias))
    gx = ln.backward(g)
    y2, m, r = fastnorm.layer_norm(x, 16, ln.weight, ln.bias, return_stats=True)
    egx, egw, egb = fastnorm.layer_norm_backward(g, x, m, r, ln.weight, ln.bias)
    np.testing.assert_allclose(gx, egx)
    np.testing.assert_allclose(ln.grad_weight, egw)
    np.testing.assert_allclose(ln.grad_bias, egb)


def test_rms_norm_layer(rng):
    rn = nn.RMSNorm(10, eps=1e-6)
    x = rng.standard_normal((3, 10)).astype(np.float32)
    y = rn(x)
    np.testing.assert_allclose(y, fastnorm.rms_norm(x, 10, rn.weight, 1e-6))
    gx = rn.backward(np.ones_like(x))
    assert gx.shape == x.shape and rn.grad_weight.shape == (10,)
    assert nn.RMSNorm(10, elementwise_affine=False).weight is None


def test_state_dict_round_trip_and_errors():
    a = nn.LayerNorm(6)
    a.weight[:] = np.arange(6)
    b = nn.LayerNorm(6)
    b.load_state_dict(a.state_dict())
    np.testing.assert_array_equal(b.weight, np.arange(6))
    sd = a.state_dict()
    sd["weight"][:] = -1  # a copy: the layer is not affected
    assert a.weight[0] == 0
    with pytest.raises(KeyError, match="missing keys"):
        b.load_state_dict({"weight": np.ones(6)})
    with pytest.raises(KeyError, match="unexpected keys"):
        b.load_state_dict({"weight": np.ones(6), "bias": np.ones(6), "extra": 1})
    report = b.load_state_dict({"weight": np.full(6, 2.0)}, strict=False)
    np.testing.assert_array_equal(b.weight, 2)
    assert report == nn.IncompatibleKeys(missing_keys=["bias"], unexpected_keys=[])
    with pytest.raises(ValueError, match="size mismatch for weight"):
        b.load_state_dict({"weight": np.ones(5), "bias": np.ones(6)})


def test_state_dict_prefix_strict_and_report_as_torch():
    """prefix= on both sides, the IncompatibleKeys report, RuntimeError for
    strict failures, and nothing loaded when any check fails."""
    torch = pytest.importorskip("torch")
    t = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.LayerNorm(6))
    with torch.no_grad():
        t[1].weight.uniform_()
    layer = nn.LayerNorm(6)
    report = layer.load_state_dict(t.state_dict(), prefix="1.")
    assert report.missing_keys == [] and report.unexpected_keys == []
    np.testing.assert_array_equal(layer.weight, t[1].weight.detach().numpy())
    assert set(layer.state_dict(prefix="1.")) == {"1.weight", "1.bias"}
    theirs = torch.nn.LayerNorm(6)
    theirs.load_state_dict({k[2:]: torch.from_numpy(v) for k, v in layer.state_dict(prefix="1.").items()})
    np.testing.assert_array_equal(theirs.weight.detach().numpy(), layer.weight)
    extra = dict(t.state_dict(), **{"1.running": torch.ones(1)})
    with pytest.raises(RuntimeError, match=r"unexpected keys \['1.running'\]"):
        layer.load_state_dict(extra, prefix="1.")
    before = layer.weight.copy()
    with pytest.raises(ValueError, match="size mismatch for 1.bias"):
        layer.load_state_dict({"1.weight": np.zeros(6), "1.bias": np.zeros(5)}, prefix="1.")
    np.testing.assert_array_equal(layer.weight, before)  # the valid weight was not loaded either
    report = layer.load_state_dict({"1.weight": np.zeros(6), "0.x": 1}, strict=False, prefix="1.")
    assert report == (["1.bias"], [])


def test_train_eval_flags():
    ln = nn.LayerNorm(4)
    assert ln.training
    assert ln.eval() is ln and not ln.training
    assert ln.train() is ln and ln.training
    assert "LayerNorm((4,)" in repr(ln)


def test_bfloat16_torch_state_dict_loads():
    """A bfloat16 torch module's state dict loads into a bfloat16 layer (same
    bits) and into a float32 one (converted), and the outputs follow."""
    import ml_dtypes
    import torch

    t = torch.nn.LayerNorm(32, dtype=torch.bfloat16)
    with torch.no_grad():
        t.weight.copy_(torch.linspace(0.5, 1.5, 32))
        t.bias.copy_(torch.linspace(-1, 1, 32))
    layer = nn.LayerNorm(32, dtype=ml_dtypes.bfloat16)
    layer.load_state_dict(t.state_dict())
    assert layer.weight.dtype == ml_dtypes.bfloat16
    assert np.array_equal(layer.weight.view(np.uint16), t.weight.detach().view(torch.int16).numpy().view(np.uint16))
    wide = nn.LayerNorm(32)
    wide.load_state_dict(t.state_dict())
    assert np.array_equal(wide.weight, layer.weight.astype(np.float32))
    x = np.random.default_rng(0).standard_normal((4, 32)).astype(ml_dtypes.bfloat16)
    tx = torch.from_numpy(x.view(np.uint16).copy()).view(torch.bfloat16)
    ty = t(tx).detach().float().numpy()
    np.testing.assert_allclose(layer(x).astype(np.float32), ty, atol=2 * 2.0 ** -7 * 4)


@pytest.mark.parametrize("cls,shape", [("BatchNorm1d", (4, 8)), ("BatchNorm2d", (4, 8, 3, 3)), ("BatchNorm3d", (2, 8, 2, 2, 2)),
                                       ("InstanceNorm2d", (2, 8, 3, 3))])
def test_channel_count_mismatch_names_the_layer_and_changes_nothing(cls, shape):
    """A layer of 16 channels fed 8 says so (not a running_mean shape error),
    before any state changes; without per-channel state (InstanceNorm's
    default, as torch) any channel count normalizes."""
    kwargs = {"affine": True} if cls.startswith("Instance") else {}
    layer = getattr(fastnorm.nn, cls)(16, **kwargs)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    tracked = None if layer.num_batches_tracked is None else int(layer.num_batches_tracked)
    with pytest.raises(ValueError, match=rf"{cls}\(16\) expects 16 channels along axis 1, got 8"):
        layer(x)
    if tracked is not None:
        assert int(layer.num_batches_tracked) == tracked
    if cls.startswith("Instance"):
        assert getattr(fastnorm.nn, cls)(16)(x).shape == shape


def test_load_state_dict_takes_a_mapping():
    with pytest.raises(TypeError, match="state_dict must be a mapping"):
        fastnorm.nn.LayerNorm(4).load_state_dict(None)
