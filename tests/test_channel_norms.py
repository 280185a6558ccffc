"""BatchNorm, GroupNorm, InstanceNorm: fast kernels vs the reference twins and
torch, over ranks, channels-first/last, memory layouts, threads, out=; running
statistics; finite differences; hard inputs; errors."""
import numpy as np
import pytest
import torch

import fastnorm
from fastnorm import nn, _dispatch
from fastnorm import reference as ref
from conftest import numeric_gradient

SHAPES = [(4, 6), (3, 6, 7), (2, 6, 5, 4), (2, 6, 3, 2, 4), (5, 12, 33)]
LAYOUTS = ["contiguous", "other_memory_format", "strided", "fortran"]
OPS = ["batch_train", "batch_eval", "group", "instance"]


def make_input(shape, channel_axis, layout, dtype, rng, offset=0.5):
    """x with its channels on channel_axis, stored in `layout`."""
    logical = shape if channel_axis == 1 else (shape[0],) + shape[2:] + (shape[1],)
    x = (rng.standard_normal(logical) * 2 + offset).astype(dtype)
    if layout == "contiguous":
        return x
    if layout == "other_memory_format":  # NCHW data in NHWC memory, or the reverse
        axis = 1 if channel_axis == 1 else x.ndim - 1
        other = -1 if axis == 1 else 1
        return np.moveaxis(np.ascontiguousarray(np.moveaxis(x, axis, other)), other, axis)
    if layout == "strided":
        big = np.zeros((2 * x.shape[0],) + x.shape[1:], dtype)
        big[::2] = x
        return big[::2]
    if layout == "fortran":
        return np.asfortranarray(x)
    raise ValueError(layout)


def run(op, x, w, b, channel_axis, n_threads, G=3):
    """(y, stats..., grads) of fastnorm and of the reference for one op."""
    C = w.shape[0]
    g = np.cos(np.arange(x.size, dtype=np.float64)).reshape(x.shape).astype(x.dtype)
    kw = dict(channel_axis=channel_axis)
    if op.startswith("batch"):
        training = op == "batch_train"
        rm = np.linspace(-1, 1, C).astype(x.dtype)
        rv = np.linspace(0.5, 2, C).astype(x.dtype)
        rm_r, rv_r = rm.astype(np.float64), rv.astype(np.float64)
        y, m, s = fastnorm.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5, return_stats=True,
                                      n_threads=n_threads, **kw)
        yr, mr, sr = ref.batch_norm(x, rm_r, rv_r, w, b, training, 0.1, 1e-5, return_stats=True, **kw)
        grads = fastnorm.batch_norm_backward(g, x, m, s, w, b, training, n_threads=n_threads, **kw)
        grads_r = ref.batch_norm_backward(g, x, mr, sr, w, b, training, **kw)
        return (y, m, s, rm, rv) + grads, (yr, mr, sr, rm_r, rv_r) + grads_r
    if op == "group":
        y, m, s = fastnorm.group_norm(x, G, w, b, return_stats=True, n_threads=n_threads, **kw)
        yr, mr, sr = ref.group_norm(x, G, w, b, return_stats=True, **kw)
        grads = fastnorm.group_norm_backward(g, x, G, m, s, w, b, n_threads=n_threads, **kw)
        grads_r = ref.group_norm_backward(g, x, G, mr, sr, w, b, **kw)
        return (y, m, s) + grads, (yr, mr, sr) + grads_r
    rm = np.zeros(C, x.dtype)
    rv = np.ones(C, x.dtype)
    rm_r, rv_r = rm.astype(np.float64), rv.astype(np.float64)
    y, m, s = fastnorm.instance_norm(x, rm, rv, w, b, True, 0.1, 1e-5, return_stats=True,
                                     n_threads=n_threads, **kw)
    yr, mr, sr = ref.instance_norm(x, rm_r, rv_r, w, b, True, 0.1, 1e-5, return_stats=True, **kw)
    grads = fastnorm.instance_norm_backward(g, x, m, s, w, b, n_threads=n_threads, **kw)
    grads_r = ref.instance_norm_backward(g, x, mr, sr, w, b, **kw)
    return (y, m, s, rm, rv) + grads, (yr, mr, sr, rm_r, rv_r) + grads_r


OP_SHAPES = [(op, shape) for op in OPS for shape in SHAPES if op != "instance" or len(shape) > 2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("op,shape", OP_SHAPES, ids=lambda v: v if isinstance(v, str) else "x".join(map(str, v)))
def test_matches_reference(isa, rng, op, shape, channel_axis, layout, dtype):
    x = make_input(shape, channel_axis, layout, dtype, rng)
    before = x.copy()
    C = shape[1]
    w = (rng.standard_normal(C) + 1).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    tol = dict(rtol=5e-5, atol=5e-5) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    for n_threads in (1, 2):
        ours, theirs = run(op, x, w, b, channel_axis, n_threads)
        for a, r in zip(ours, theirs):
            assert a.dtype == dtype
            scale = max(1.0, float(np.abs(r).max()))
            np.testing.assert_allclose(a, r, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10 * scale)
        assert ours[0].shape == x.shape
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_torch_layers_match_over_steps(rng, channel_axis):
    """Layers loaded from torch state give torch's outputs, gradients and
    running statistics over several train steps, momentum incl. None, then eval."""
    for momentum in (0.1, None):
        tl = torch.nn.BatchNorm2d(6, momentum=momentum)
        with torch.no_grad():
            tl.weight.copy_(torch.randn(6))
            tl.bias.copy_(torch.randn(6))
        fl = nn.BatchNorm2d(6, momentum=momentum, channel_axis=channel_axis)
        fl.load_state_dict(tl.state_dict())
        for step in range(3):
            x = (rng.standard_normal((4, 6, 5, 5)) * (step + 1) + step).astype(np.float32)
            g = rng.standard_normal(x.shape).astype(np.float32)
            tx = torch.tensor(x, requires_grad=True)
            ty = tl(tx)
            ty.backward(torch.tensor(g))
            xin = x if channel_axis == 1 else np.ascontiguousarray(np.moveaxis(x, 1, -1))
            gin = g if channel_axis == 1 else np.ascontiguousarray(np.moveaxis(g, 1, -1))
            y = fl(xin)
            gx = fl.backward(gin)
            if channel_axis == -1:
                y, gx = np.moveaxis(y, -1, 1), np.moveaxis(gx, -1, 1)
            np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(gx, tx.grad.numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(fl.grad_weight, tl.weight.grad.numpy(), rtol=1e-4, atol=1e-3)
            np.testing.assert_allclose(fl.grad_bias, tl.bias.grad.numpy(), rtol=1e-4, atol=1e-3)
            tl.weight.grad = None
            tl.bias.grad = None
            for key, value in tl.state_dict().items():
                np.testing.assert_allclose(fl.state_dict()[key], value.numpy(), rtol=1e-5, atol=1e-6)
        tl.eval()
        fl.eval()
        x = rng.standard_normal((3, 6, 4, 4)).astype(np.float32)
        xin = x if channel_axis == 1 else np.ascontiguousarray(np.moveaxis(x, 1, -1))
        y = fl(xin)
        y = y if channel_axis == 1 else np.moveaxis(y, -1, 1)
        np.testing.assert_allclose(y, tl(torch.tensor(x)).detach().numpy(), rtol=1e-4, atol=1e-4)


def test_group_and_instance_layers_match_torch(rng):
    x = rng.standard_normal((3, 8, 6, 5)).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    for tl, fl in [(torch.nn.GroupNorm(4, 8), nn.GroupNorm(4, 8)),
                   (torch.nn.InstanceNorm2d(8, affine=True, track_running_stats=True),
                    nn.InstanceNorm2d(8, affine=True, track_running_stats=True))]:
        with torch.no_grad():
            tl.weight.copy_(torch.randn(8))
            tl.bias.copy_(torch.randn(8))
        fl.load_state_dict(tl.state_dict())
        tx = torch.tensor(x, requires_grad=True)
        ty = tl(tx)
        ty.backward(torch.tensor(g))
        np.testing.assert_allclose(fl(x), ty.detach().numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fl.backward(g), tx.grad.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(fl.grad_weight, tl.weight.grad.numpy(), rtol=1e-4, atol=1e-3)
        for key, value in tl.state_dict().items():
            np.testing.assert_allclose(fl.state_dict()[key], value.numpy(), rtol=1e-5, atol=1e-6)
        tl.eval()
        fl.eval()
        np.testing.assert_allclose(fl(x), tl(torch.tensor(x)).detach().numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("op", OPS)
def test_finite_differences_float64(rng, op):
    x = rng.standard_normal((3, 6, 4))
    w = rng.standard_normal(6)
    b = rng.standard_normal(6)
    g = rng.standard_normal(x.shape)
    rm, rv = np.zeros(6), np.ones(6)

    def forward(xx, ww, bb):
        if op.startswith("batch"):
            return fastnorm.batch_norm(xx, rm.copy(), rv.copy(), ww, bb, op == "batch_train", 0.1, 1e-3,
                                       return_stats=True)
        if op == "group":
            return fastnorm.group_norm(xx, 3, ww, bb, 1e-3, return_stats=True)
        return fastnorm.instance_norm(xx, None, None, ww, bb, True, 0.1, 1e-3, return_stats=True)

    def loss(xx, ww, bb):
        return float((forward(xx, ww, bb)[0] * g).sum())

    y, m, s = forward(x, w, b)
    if op.startswith("batch"):
        grads = fastnorm.batch_norm_backward(g, x, m, s, w, b, op == "batch_train")
    elif op == "group":
        grads = fastnorm.group_norm_backward(g, x, 3, m, s, w, b)
    else:
        grads = fastnorm.instance_norm_backward(g, x, m, s, w, b)
    arrays = dict(xx=x, ww=w, bb=b)
    for grad, name in zip(grads, ("xx", "ww", "bb")):
        np.testing.assert_allclose(grad, numeric_gradient(loss, arrays, name), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_large_offset_channels_float32(isa, rng, channel_axis):
    x = (1e4 + rng.standard_normal((16, 8, 32, 32))).astype(np.float32)
    if channel_axis == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    y = fastnorm.batch_norm(x, rm, rv, training=True, channel_axis=channel_axis)
    yr = ref.batch_norm(x.astype(np.float64), None, None, training=True, channel_axis=channel_axis)
    assert np.abs(y - yr).max() < 1e-4
    yg = fastnorm.group_norm(x, 4, channel_axis=channel_axis)
    assert np.abs(yg - ref.group_norm(x.astype(np.float64), 4, channel_axis=channel_axis)).max() < 1e-4


def test_nan_confined_to_its_channel_and_group(rng):
    x = rng.standard_normal((4, 6, 5, 5)).astype(np.float32)
    x[1, 2, 3, 3] = np.nan
    y = fastnorm.batch_norm(x, None, None, training=True)
    assert np.isnan(y[:, 2]).all() and np.isfinite(np.delete(y, 2, axis=1)).all()
    yg = fastnorm.group_norm(x, 3)  # channel 2 is in group 1 (channels 2, 3) of sample 1
    assert np.isnan(yg[1, 2:4]).all()
    assert np.isfinite(yg[0]).all() and np.isfinite(yg[1, :2]).all() and np.isfinite(yg[1, 4:]).all()


def test_out_and_in_place(rng):
    x = rng.standard_normal((4, 6, 5, 5)).astype(np.float32)
    expected = fastnorm.group_norm(x, 2)
    out = np.empty_like(x)
    assert fastnorm.group_norm(x, 2, out=out) is out
    np.testing.assert_array_equal(out, expected)
    xi = x.copy()
    fastnorm.group_norm(xi, 2, out=xi)
    np.testing.assert_array_equal(xi, expected)


class TestErrors:
    x = np.zeros((2, 6, 4, 4), np.float32)

    def test_batch_norm(self):
        with pytest.raises(ValueError, match="Expected more than 1 value per channel when training"):
            fastnorm.batch_norm(np.zeros((1, 6), np.float32), None, None, training=True)
        with pytest.raises(ValueError, match="running_mean"):
            fastnorm.batch_norm(self.x, np.zeros(5, np.float32), np.ones(6, np.float32), training=True)
        with pytest.raises(ValueError, match="running_mean and running_var are required"):
            fastnorm.batch_norm(self.x, None, None, training=False)
        with pytest.raises(ValueError, match="weight"):
            fastnorm.batch_norm(self.x, None, None, np.ones(4, np.float32), training=True)
        with pytest.raises(TypeError, match="x must be a floating-point array"):
            fastnorm.batch_norm(self.x.astype(np.int32), None, None, training=True)
        with pytest.raises(ValueError, match="channel_axis"):
            fastnorm.batch_norm(self.x, None, None, training=True, channel_axis=2)
        with pytest.raises(ValueError, match="at least 2 dimensions"):
            fastnorm.batch_norm(np.zeros(6, np.float32), None, None, training=True)

    def test_group_norm(self):
        with pytest.raises(ValueError, match="divisible by num_groups"):
            fastnorm.group_norm(self.x, 4)
        with pytest.raises(ValueError, match="num_groups"):
            fastnorm.group_norm(self.x, 0)
        y, m, r = fastnorm.group_norm(self.x, 3, return_stats=True)
        with pytest.raises(ValueError, match="mean"):
            fastnorm.group_norm_backward(self.x, self.x, 3, m[:1], r)
        with pytest.raises(ValueError, match="grad_out"):
            fastnorm.group_norm_backward(self.x[:1], self.x, 3, m, r)
        with pytest.raises(ValueError, match="divisible"):
            nn.GroupNorm(4, 6)

    def test_instance_norm(self):
        with pytest.raises(ValueError, match="at least 3 dimensions"):
            fastnorm.instance_norm(np.zeros((2, 6), np.float32))
        with pytest.raises(ValueError, match="more than 1 spatial element"):
            fastnorm.instance_norm(np.zeros((2, 6, 1), np.float32))
        with pytest.raises(ValueError, match="BatchNorm2d expects 4-D"):
            nn.BatchNorm2d(6)(np.zeros((2, 6, 3), np.float32))


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_out_in_other_layouts_and_overlap(rng, channel_axis):
    x = make_input((3, 6, 5, 4), channel_axis, "contiguous", np.float32, rng)
    expected = fastnorm.batch_norm(x, None, None, training=True, channel_axis=channel_axis)
    for out in (np.empty_like(x), np.asfortranarray(np.empty_like(x)), np.empty_like(x)[..., ::-1][..., ::-1]):
        assert fastnorm.batch_norm(x, None, None, training=True, channel_axis=channel_axis, out=out) is out
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    xi = x.copy()
    fastnorm.batch_norm(xi, None, None, training=True, channel_axis=channel_axis, out=xi)
    np.testing.assert_allclose(xi, expected, rtol=1e-6, atol=1e-6)
    big = np.concatenate([x, x])  # out overlapping x partially
    src, dst = big[1:4], big[0:3]
    expected_shift = fastnorm.batch_norm(src.copy(), None, None, training=True, channel_axis=channel_axis)
    fastnorm.batch_norm(src, None, None, training=True, channel_axis=channel_axis, out=dst)
    np.testing.assert_allclose(dst, expected_shift, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_large_outputs(isa, rng, channel_axis):
    """Outputs of 17 MB (out of cache), train, eval and backward."""
    x = make_input((16, 64, 64, 65), channel_axis, "contiguous", np.float32, rng)
    w = rng.standard_normal(64).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    kw = dict(channel_axis=channel_axis)
    for training in (True, False):
        rm, rv = np.full(64, 0.5, np.float32), np.full(64, 2.0, np.float32)
        y, m, s = fastnorm.batch_norm(x, rm, rv, w, b, training, return_stats=True, **kw)
        yr, mr, sr = ref.batch_norm(x, rm.astype(np.float64), rv.astype(np.float64), w, b, training,
                                    return_stats=True, **kw)
        np.testing.assert_allclose(y, yr, rtol=1e-4, atol=1e-4)
        gx, gw, gb = fastnorm.batch_norm_backward(g, x, m, s, w, b, training, **kw)
        gxr, gwr, gbr = ref.batch_norm_backward(g, x, mr, sr, w, b, training, **kw)
        np.testing.assert_allclose(gx, gxr, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(gw, gwr, rtol=1e-4, atol=1e-2)


@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("op", OPS)
def test_streaming_path_gives_identical_results(isa, rng, op, channel_axis):
    """Large outputs take a streaming-store path; forced on for a small input
    it must give bitwise the results of the plain path."""
    x = make_input((3, 6, 7, 9), channel_axis, "contiguous", np.float32, rng)
    w = rng.standard_normal(6).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    previous = _dispatch.kernels.set_stream_threshold(1 << 60)
    try:
        plain = run(op, x, w, b, channel_axis, 2)[0]
        _dispatch.kernels.set_stream_threshold(0)
        streamed = run(op, x, w, b, channel_axis, 2)[0]
    finally:
        _dispatch.kernels.set_stream_threshold(previous)
    for a, c in zip(plain, streamed):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("C", [3, 8, 16, 40, 64, 100, 200, 257, 1030])
def test_channels_last_widths(isa, rng, C, dtype):
    """Channels-last rows of up to 1 KiB go through register panels (whole
    panels of vectors, then single vectors, then single values), longer rows
    through flat tiles; each sample spans more than one 64-row block.  Every
    width against the reference, and the streaming path bitwise equal to the
    plain one (whole aligned vectors stream, other rows fall back)."""
    x = make_input((2, C, 9, 11), -1, "contiguous", dtype, rng, offset=3.0)
    w = (rng.standard_normal(C) + 1).astype(dtype)
    b = rng.standard_normal(C).astype(dtype)
    tol = 2e-4 if dtype == np.float32 else 1e-9
    G = 2 if C % 2 == 0 else 1
    for op in OPS:
        ours, theirs = run(op, x, w, b, -1, 2, G=G)
        for a, r in zip(ours, theirs):
            np.testing.assert_allclose(a, r, rtol=tol, atol=tol * max(1.0, float(np.abs(r).max())))
        previous = _dispatch.kernels.set_stream_threshold(0)
        try:
            streamed = run(op, x, w, b, -1, 2, G=G)[0]
        finally:
            _dispatch.kernels.set_stream_threshold(previous)
        for a, c in zip(ours, streamed):
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_streaming_backward_eval_keeps_nonfinite_out(isa, rng, channel_axis):
    """Eval backward is g * w * invstd: an inf in x must not leak into grad_x,
    on the plain and on the streaming path."""
    x = make_input((3, 6, 7, 9), channel_axis, "contiguous", np.float32, rng)
    x[0, 0, 0, 0] = np.inf
    g = np.ones_like(x)
    m, s = np.zeros(6, np.float32), np.ones(6, np.float32)
    previous = _dispatch.kernels.set_stream_threshold(0)
    try:
        gx = fastnorm.batch_norm_backward(g, x, m, s, np.ones(6, np.float32), None, False,
                                          channel_axis=channel_axis)[0]
    finally:
        _dispatch.kernels.set_stream_threshold(previous)
    assert np.isfinite(gx).all()


@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("op", OPS)
def test_repeatable_for_a_thread_count(rng, op, channel_axis):
    """Per-unit partial sums are merged in a fixed order: bitwise repeatable."""
    x = make_input((8, 12, 17, 9), channel_axis, "contiguous", np.float32, rng)
    w = rng.standard_normal(12).astype(np.float32)
    b = rng.standard_normal(12).astype(np.float32)
    first = run(op, x, w, b, channel_axis, 2)[0]
    for _ in range(3):
        for a, c in zip(first, run(op, x, w, b, channel_axis, 2)[0]):
            np.testing.assert_array_equal(a, c)


def test_float16_and_empty_batches(rng):
    x = rng.standard_normal((4, 6, 5)).astype(np.float16)
    w = np.ones(6, np.float16)
    y = fastnorm.group_norm(x, 3, w, None)
    assert y.dtype == np.float16
    np.testing.assert_allclose(y, ref.group_norm(x.astype(np.float32), 3), atol=5e-3)
    yb, m, s = fastnorm.batch_norm(x, None, None, w, None, True, return_stats=True)
    assert yb.dtype == np.float16 and m.dtype == np.float32
    gx, gw, gb = fastnorm.batch_norm_backward(np.ones_like(x), x, m, s, w, None, True)
    assert gx.dtype == gw.dtype == np.float16 and gb is None
    empty = np.empty((0, 6, 5), np.float32)
    assert fastnorm.group_norm(empty, 3).shape == (0, 6, 5)
    rm, rv = np.zeros(6, np.float32), np.ones(6, np.float32)
    assert fastnorm.batch_norm(empty, rm, rv, training=False).shape == (0, 6, 5)
    y0, m0, s0 = fastnorm.instance_norm(empty, return_stats=True)
    assert y0.shape == (0, 6, 5) and m0.shape == (0, 6)
    gx0, gw0, gb0 = fastnorm.group_norm_backward(empty, empty, 3, np.empty((0, 3)), np.empty((0, 3)),
                                                 np.ones(6, np.float32), np.zeros(6, np.float32))
    assert gx0.shape == (0, 6, 5)
    np.testing.assert_array_equal(gw0, 0)


@pytest.mark.parametrize("channel_axis", [1, -1])
def test_backward_with_float64_stats_for_float32_data(rng, channel_axis):
    """Statistics given in float64 (a mean float32 cannot hold exactly) are
    used to full precision."""
    x = make_input((6, 5, 7, 3), channel_axis, "contiguous", np.float32, rng, offset=1e3)
    g = rng.standard_normal(x.shape).astype(np.float32)
    _, m64, s64 = ref.batch_norm(x, None, None, training=True, channel_axis=channel_axis, return_stats=True)
    gx, _, _ = fastnorm.batch_norm_backward(g, x, m64, s64, None, None, True, channel_axis=channel_axis)
    gxr, _, _ = ref.batch_norm_backward(g, x, m64, s64, None, None, True, channel_axis=channel_axis)
    np.testing.assert_allclose(gx, gxr, rtol=1e-4, atol=1e-4 * np.abs(gxr).max())


def test_no_channels_or_features():
    """Zero channels (or features) give empty outputs and NaN statistics, not
    a crash (GroupNorm's groups are empty then)."""
    x = np.ones((2, 0, 5), np.float32)
    y, m, r = fastnorm.group_norm(x, 1, return_stats=True)
    assert y.shape == x.shape and m.shape == (2, 1) and np.isnan(m).all()
    dx, _, _ = fastnorm.group_norm_backward(x, x, 1, m, r)
    assert dx.shape == x.shape
    y, m, r = fastnorm.instance_norm(x, return_stats=True)
    assert y.shape == x.shape and m.shape == (2, 0)
    y, m, r = fastnorm.batch_norm(x, None, None, training=True, return_stats=True)
    assert y.shape == x.shape and m.shape == (0,)
    z, mean, std = fastnorm.standardize(np.ones((3, 0)), return_stats=True)
    assert z.shape == (3, 0) and mean.shape == (0,) and std.shape == (0,)
    assert fastnorm.min_max_scale(np.ones((3, 0))).shape == (3, 0)


def test_group_norm_threads_agree_bitwise_over_repeats(isa, rng):
    """GroupNorm's per-group statistics on 2 threads equal the 1-thread ones
    bit for bit, call after call (a variance once shared by the threads
    through a pointer gave a wrong group now and then)."""
    x = (1e4 + rng.standard_normal((16, 8, 32, 32))).astype(np.float32)
    one = fastnorm.group_norm(x, 4, n_threads=1, return_stats=True)
    for _ in range(40):
        two = fastnorm.group_norm(x, 4, n_threads=2, return_stats=True)
        for a, b in zip(one, two):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16"])
@pytest.mark.parametrize("affine", ["wb", "w", "none"])
@pytest.mark.parametrize("shape", [(5, 96), (3, 64, 1, 1), (130, 32)])
def test_group_norm_one_value_per_channel(isa, rng, dtype, affine, shape):
    """GroupNorm with one value per channel (S = 1: the flat per-group loops)
    forward and backward against the float64 reference, one thread and two
    (which must agree bitwise), and a constant group (rstd = 1/sqrt(eps))."""
    from fastnorm._dtypes import BF16, F16
    dt = {"bfloat16": BF16, "float16": F16}.get(dtype, np.dtype(dtype))
    rtol = {"bfloat16": 1.6e-2, "float16": 2e-3, "float32": 2e-5, "float64": 1e-11}[dtype]
    C = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1).astype(dt)
    x[1, :C // 8] = 2.5  # one constant group
    g = rng.standard_normal(shape).astype(dt)
    w = (rng.standard_normal(C) + 1).astype(dt) if affine != "none" else None
    b = rng.standard_normal(C).astype(dt) if affine == "wb" else None
    f64 = lambda a: None if a is None else a.astype(np.float64)
    yr, mr, rr = ref.group_norm(f64(x), 8, f64(w), f64(b), 1e-5, return_stats=True)
    outs = []
    for nt in (1, 2):
        y, m, r = fastnorm.group_norm(x, 8, w, b, 1e-5, return_stats=True, n_threads=nt)
        grads = fastnorm.group_norm_backward(g, x, 8, m, r, w, b, n_threads=nt)
        exp = ref.group_norm_backward(f64(g), f64(x), 8, f64(m), f64(r), f64(w), f64(b))
        np.testing.assert_allclose(y.astype(np.float64), yr, rtol=rtol, atol=rtol * 4 * np.abs(yr).max())
        for a, e in zip(grads, exp):
            assert (a is None) == (e is None)
            if a is not None:
                assert a.dtype == dt
                np.testing.assert_allclose(a.astype(np.float64), e, rtol=rtol,
                                           atol=rtol * 4 * np.abs(e).max())
        outs.append([y] + [a for a in grads if a is not None])
    for a, c in zip(*outs):
        np.testing.assert_array_equal(a, c)
