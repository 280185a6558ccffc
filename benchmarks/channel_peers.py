"""Peers for the channel normalizations (BatchNorm, GroupNorm, InstanceNorm).

Same factory protocol as peers.py: f(x, g, w, b, threads, backward=False,
out=False) -> zero-argument callable, or None.  `x` is stored as the case says
(NCHW, or NHWC for the channels-last cases); torch gets the same memory
layout (torch.channels_last)."""
import numpy as np

import fastnorm

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover
    torch = None

EPS = 1e-5
GROUPS = 32


def make_channel_case(shape, channels_last=False, seed=0):
    """x, grad_out (NCHW shape, NHWC memory when channels_last), weight, bias."""
    rng = np.random.default_rng(seed)
    C = shape[1]
    stored = (shape[0],) + tuple(shape[2:]) + (C,) if channels_last else shape
    x = rng.standard_normal(stored, dtype=np.float32)
    g = rng.standard_normal(stored, dtype=np.float32)
    w = rng.standard_normal(C, dtype=np.float32)
    b = rng.standard_normal(C, dtype=np.float32)
    return x, g, w, b


def _axis(x, channels_last):
    return -1 if channels_last else 1


def _reduce_axes(x, channels_last, per_sample=False):
    axes = tuple(i for i in range(x.ndim) if i != (x.ndim - 1 if channels_last else 1))
    return axes[1:] if per_sample else axes


def _bcast(v, x, channels_last):
    return v if channels_last else v.reshape((1, -1) + (1,) * (x.ndim - 2))


# ---------------------------------------------------------------- fastnorm

def fastnorm_batch_norm(x, g, w, b, threads, backward=False, out=False, *, channels_last=False,
                        training=True):
    ax = _axis(x, channels_last)
    C = x.shape[ax]
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y = np.empty_like(x) if out else None
    if not backward:
        return lambda: fastnorm.batch_norm(x, rm, rv, w, b, training, 0.1, EPS, channel_axis=ax,
                                           out=y, n_threads=threads)

    def run():
        _, m, s = fastnorm.batch_norm(x, rm, rv, w, b, training, 0.1, EPS, channel_axis=ax,
                                      n_threads=threads, return_stats=True)
        return fastnorm.batch_norm_backward(g, x, m, s, w, b, training, channel_axis=ax,
                                            n_threads=threads)
    return run


def fastnorm_group_norm(x, g, w, b, threads, backward=False, out=False, *, channels_last=False):
    ax = _axis(x, channels_last)
    y = np.empty_like(x) if out else None
    if not backward:
        return lambda: fastnorm.group_norm(x, GROUPS, w, b, EPS, channel_axis=ax, out=y, n_threads=threads)

    def run():
        _, m, s = fastnorm.group_norm(x, GROUPS, w, b, EPS, channel_axis=ax, n_threads=threads,
                                      return_stats=True)
        return fastnorm.group_norm_backward(g, x, GROUPS, m, s, w, b, channel_axis=ax, n_threads=threads)
    return run


def fastnorm_instance_norm(x, g, w, b, threads, backward=False, out=False, *, channels_last=False):
    ax = _axis(x, channels_last)
    y = np.empty_like(x) if out else None
    if not backward:
        return lambda: fastnorm.instance_norm(x, None, None, w, b, channel_axis=ax, out=y, n_threads=threads)

    def run():
        _, m, s = fastnorm.instance_norm(x, None, None, w, b, channel_axis=ax, n_threads=threads,
                                         return_stats=True)
        return fastnorm.instance_norm_backward(g, x, m, s, w, b, channel_axis=ax, n_threads=threads)
    return run


# ---------------------------------------------------------------- NumPy (straightforward)

def numpy_batch_norm(x, g, w, b, threads, backward=False, *, channels_last=False, training=True):
    axes = _reduce_axes(x, channels_last)
    wb, bb = _bcast(w, x, channels_last), _bcast(b, x, channels_last)
    rm = np.zeros_like(wb)
    rv = np.ones_like(wb)

    def forward():
        if training:
            mean = x.mean(axis=axes, keepdims=True)
            xc = x - mean
            rstd = 1.0 / np.sqrt((xc * xc).mean(axis=axes, keepdims=True) + EPS)
        else:
            xc = x - rm
            rstd = 1.0 / np.sqrt(rv + EPS)
        xhat = xc * rstd
        return xhat * wb + bb, xhat, rstd

    if not backward:
        return lambda: forward()[0]

    def run():
        y, xhat, rstd = forward()
        gw = g * wb
        if training:
            gx = rstd * (gw - gw.mean(axis=axes, keepdims=True)
                         - xhat * (gw * xhat).mean(axis=axes, keepdims=True))
        else:
            gx = gw * rstd
        return gx, (g * xhat).sum(axis=axes), g.sum(axis=axes)
    return run


def numpy_group_norm(x, g, w, b, threads, backward=False, *, channels_last=False, groups=GROUPS):
    """Channels-first only (the suite's GroupNorm and InstanceNorm cases are NCHW)."""
    N = x.shape[0]
    wb, bb = _bcast(w, x, channels_last), _bcast(b, x, channels_last)

    def forward():
        xg = x.reshape(N, groups, -1)
        mean = xg.mean(axis=2, keepdims=True)
        xc = xg - mean
        rstd = 1.0 / np.sqrt((xc * xc).mean(axis=2, keepdims=True) + EPS)
        xhat = (xc * rstd).reshape(x.shape)
        return xhat * wb + bb, xhat, rstd

    if not backward:
        return lambda: forward()[0]

    def run():
        y, xhat, rstd = forward()
        gw = (g * wb).reshape(N, groups, -1)
        xh = xhat.reshape(N, groups, -1)
        gx = rstd * (gw - gw.mean(axis=2, keepdims=True) - xh * (gw * xh).mean(axis=2, keepdims=True))
        axes = (0,) + tuple(range(2, x.ndim))
        return gx.reshape(x.shape), (g * xhat).sum(axis=axes), g.sum(axis=axes)
    return run


def numpy_instance_norm(x, g, w, b, threads, backward=False, *, channels_last=False):
    return numpy_group_norm(x, g, w, b, threads, backward, channels_last=channels_last, groups=x.shape[1])


# ---------------------------------------------------------------- PyTorch

def _torch_inputs(x, g, w, b, backward, channels_last):
    from peers import to_torch  # bfloat16 arrays -> torch.bfloat16 tensors (zero-copy)
    if channels_last:  # logical NCHW over NHWC memory: torch's channels_last format
        tx = to_torch(x).movedim(-1, 1)
        tg = to_torch(g).movedim(-1, 1)
    else:
        tx, tg = to_torch(x), to_torch(g)
    tw, tb = to_torch(w), to_torch(b)
    if backward:
        tx = tx.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        tw = tw.clone().requires_grad_()
        tb = tb.clone().requires_grad_()
    return tx, tg, tw, tb


def _torch_run(fwd, tx, tg, tw, tb, backward):
    if not backward:
        def run():
            with torch.no_grad():
                return fwd(tx, tw, tb)
        return run

    def run():
        y = fwd(tx, tw, tb)
        return torch.autograd.grad(y, (tx, tw, tb), tg)
    return run


def torch_batch_norm(x, g, w, b, threads, backward=False, *, channels_last=False, training=True):
    if torch is None:
        return None
    tx, tg, tw, tb = _torch_inputs(x, g, w, b, backward, channels_last)
    C = tw.shape[0]
    # torch's CPU batch_norm takes running statistics of the parameters' dtype
    # (bfloat16 with bfloat16 weights); fastnorm's stay float32
    rm, rv = torch.zeros(C, dtype=tw.dtype), torch.ones(C, dtype=tw.dtype)
    return _torch_run(lambda a, ww, bb: TF.batch_norm(a, rm, rv, ww, bb, training, 0.1, EPS),
                      tx, tg, tw, tb, backward)


def torch_group_norm(x, g, w, b, threads, backward=False, *, channels_last=False):
    if torch is None:
        return None
    tx, tg, tw, tb = _torch_inputs(x, g, w, b, backward, channels_last)
    return _torch_run(lambda a, ww, bb: TF.group_norm(a, GROUPS, ww, bb, EPS), tx, tg, tw, tb, backward)


def torch_instance_norm(x, g, w, b, threads, backward=False, *, channels_last=False):
    if torch is None:
        return None
    tx, tg, tw, tb = _torch_inputs(x, g, w, b, backward, channels_last)
    return _torch_run(lambda a, ww, bb: TF.instance_norm(a, None, None, ww, bb, True, 0.1, EPS),
                      tx, tg, tw, tb, backward)


def _variant(factory, **fixed):
    def f(*args, **kwargs):
        return factory(*args, **kwargs, **fixed)
    return f


def _entry(fast, torch_f, numpy_f, shapes, directions, channels_last=False, **fixed):
    return {
        "dtypes": ("float32", "bfloat16"),
        "fastnorm": _variant(fast, channels_last=channels_last, **fixed),
        "torch": _variant(torch_f, channels_last=channels_last, **fixed),
        "numpy": _variant(numpy_f, channels_last=channels_last, **fixed),
        "shapes": shapes,
        "directions": directions,
        "make_case": lambda shape: make_channel_case(shape, channels_last),
    }


BN_SHAPE = [(32, 64, 56, 56)]
CHANNEL_OPS = {
    "batch_norm train NCHW": _entry(fastnorm_batch_norm, torch_batch_norm, numpy_batch_norm,
                                    BN_SHAPE, ("fwd", "fwd+bwd")),
    "batch_norm train NHWC": _entry(fastnorm_batch_norm, torch_batch_norm, numpy_batch_norm,
                                    BN_SHAPE, ("fwd", "fwd+bwd"), channels_last=True),
    "batch_norm eval NCHW": _entry(fastnorm_batch_norm, torch_batch_norm, numpy_batch_norm,
                                   BN_SHAPE, ("fwd",), training=False),
    "batch_norm eval NHWC": _entry(fastnorm_batch_norm, torch_batch_norm, numpy_batch_norm,
                                   BN_SHAPE, ("fwd",), channels_last=True, training=False),
    "group_norm": _entry(fastnorm_group_norm, torch_group_norm, numpy_group_norm,
                         [(8, 256, 32, 32)], ("fwd", "fwd+bwd")),
    "instance_norm": _entry(fastnorm_instance_norm, torch_instance_norm, numpy_instance_norm,
                            [(8, 64, 64, 64)], ("fwd", "fwd+bwd")),
}


# ---------------------------------------------------------------- Local Response Normalization

LRN_SIZE = 5


def fastnorm_lrn(x, g, w, b, threads, backward=False, out=False):
    y = np.empty_like(x) if out else None
    if not backward:
        return lambda: fastnorm.local_response_norm(x, LRN_SIZE, out=y, n_threads=threads)

    def run():
        _, s = fastnorm.local_response_norm(x, LRN_SIZE, n_threads=threads, return_stats=True)
        return fastnorm.local_response_norm_backward(g, x, s, LRN_SIZE, n_threads=threads)
    return run


def torch_lrn(x, g, w, b, threads, backward=False):
    if torch is None:
        return None
    tx, tg = torch.from_numpy(x), torch.from_numpy(g)
    if not backward:
        def run():
            with torch.no_grad():
                return TF.local_response_norm(tx, LRN_SIZE)
        return run
    tx = tx.clone().requires_grad_()
    return lambda: torch.autograd.grad(TF.local_response_norm(tx, LRN_SIZE), (tx,), tg)


def _window_sum(a, before, after):
    """Sum over channels c - before .. c + after (zero-padded) of an NCHW array,
    from a cumulative sum."""
    N, C = a.shape[:2]
    zeros = np.zeros((N, 1) + a.shape[2:], a.dtype)
    padded = np.concatenate([np.repeat(zeros, before + 1, axis=1), a,
                             np.repeat(zeros, after, axis=1)], axis=1)
    cs = np.cumsum(padded, axis=1)
    return cs[:, before + after + 1:before + after + 1 + C] - cs[:, :C]


def numpy_lrn(x, g, w, b, threads, backward=False):
    """torch's formula with window sums from cumulative sums: forward, and the
    backward through the mirrored window."""
    alpha, beta = 1e-4, 0.75
    lo, hi = LRN_SIZE // 2, (LRN_SIZE - 1) // 2

    def forward():
        scale = 1.0 + alpha / LRN_SIZE * _window_sum(x * x, lo, hi)
        return x * scale ** -beta, scale

    if not backward:
        return lambda: forward()[0]

    def run():
        y, scale = forward()
        t = g * x * scale ** (-beta - 1)
        return g * scale ** -beta - (2 * alpha * beta / LRN_SIZE) * x * _window_sum(t, hi, lo)
    return run


def ort_lrn(x, g, w, b, threads, backward=False):
    """ONNX's LRN (opset 13): the window c - (size-1)//2 .. c + size//2 and
    alpha / size as torch's, for odd sizes."""
    from peers import _ort_session, helper, ort
    if ort is None or backward:
        return None
    node = helper.make_node("LRN", ["x"], ["y"], size=LRN_SIZE, alpha=1e-4, beta=0.75, bias=1.0)
    sess = _ort_session(node, 13, [("x", x.shape)], [], threads)
    feed = {"x": x}
    return lambda: sess.run(None, feed)


CHANNEL_OPS["local_response_norm"] = {
    "fastnorm": fastnorm_lrn, "torch": torch_lrn, "numpy": numpy_lrn, "onnxruntime": ort_lrn,
    "shapes": [(8, 96, 55, 55)], "directions": ("fwd", "fwd+bwd"),
    "make_case": lambda shape: make_channel_case(shape),
}
