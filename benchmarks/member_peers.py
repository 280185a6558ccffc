"""The comparison table's newer members (Dynamic Tanh, AdaNorm, Weight
Standardization, Batch Renormalization): fastnorm against the composition
of torch operations a user writes for each (torch has none of them as an
op; autograd does the backward) and the same composition in NumPy.
Imported by peers.py into its OPS."""
import numpy as np

import fastnorm
from channel_peers import make_channel_case
from peers import make_case, to_torch

try:
    import torch
except ImportError:  # pragma: no cover - the peers are optional
    torch = None

EPS = 1e-5
ALPHA = 0.5
SCALE, K = 2.0, 0.1
R_MAX, D_MAX = 3.0, 5.0


def _torch_case(arrays, backward):
    """Tensors over the case's arrays (grad_out stays plain); fresh leaves for a backward."""
    ts = [to_torch(a) for a in arrays]
    if backward:
        ts = [t.detach().clone().requires_grad_() if i != 1 else t for i, t in enumerate(ts)]
    return ts


def _torch_run(forward, leaves, g, backward):
    if not backward:
        def run():
            with torch.no_grad():
                return forward()
        return run
    return lambda: torch.autograd.grad(forward(), leaves, g)


def _ours(fwd, bwd, backward, out, out_like):
    """fastnorm's timed call: fwd(**kw) is the forward, bwd(r) the backward
    from r = fwd(return_stats=True); with out, the forward into one
    preallocated array shaped like out_like."""
    if backward:
        return lambda: bwd(fwd(return_stats=True))
    if out:
        y = np.empty_like(out_like)
        return lambda: fwd(out=y)
    return fwd


# ---------------------------------------------------------------- Dynamic Tanh: (rows, C)

def fastnorm_dyt(x, g, w, b, threads, backward=False, out=False):
    a = np.full(1, ALPHA, w.dtype)
    return _ours(lambda **kw: fastnorm.dynamic_tanh(x, a, w, b, n_threads=threads, **kw),
                 lambda r: fastnorm.dynamic_tanh_backward(g, x, a, w, b, n_threads=threads), backward, out, x)


def torch_dyt(x, g, w, b, threads, backward=False):
    if torch is None:
        return None
    tx, tg, tw, tb = _torch_case((x, g, w, b), backward)
    ta = torch.full((1,), ALPHA, dtype=tw.dtype, requires_grad=backward)
    return _torch_run(lambda: tw * torch.tanh(ta * tx) + tb, (tx, ta, tw, tb), tg, backward)


def numpy_dyt(x, g, w, b, threads, backward=False):
    if not backward:
        return lambda: w * np.tanh(ALPHA * x) + b

    def run():
        t = np.tanh(ALPHA * x)
        w * t + b  # the forward's output (timed as part of fwd+bwd)
        gs = g * w * (1 - t * t)
        return gs * ALPHA, (gs * x).sum(), (g * t).sum(0), g.sum(0)
    return run


# ---------------------------------------------------------------- AdaNorm: (rows, D)

def fastnorm_ada(x, g, w, b, threads, backward=False, out=False):
    D = x.shape[-1]
    return _ours(lambda **kw: fastnorm.ada_norm(x, D, SCALE, K, EPS, n_threads=threads, **kw),
                 lambda r: fastnorm.ada_norm_backward(g, x, r[1], r[2], SCALE, K, EPS, n_threads=threads),
                 backward, out, x)


def torch_ada(x, g, w, b, threads, backward=False):
    if torch is None:
        return None
    tx, tg = _torch_case((x, g), backward)

    def forward():
        xc = tx - tx.mean(-1, keepdim=True)
        z = (xc - xc.mean(-1, keepdim=True)) / (xc.std(-1, keepdim=True) + EPS)
        return SCALE * (z - z * (K * z).detach())
    return _torch_run(forward, (tx,), tg, backward)


def numpy_ada(x, g, w, b, threads, backward=False):
    def forward():
        xc = x - x.mean(-1, keepdims=True)
        s = xc.std(-1, ddof=1, keepdims=True)
        z = xc / (s + EPS)
        return SCALE * z * (1 - K * z), xc, s
    if not backward:
        return lambda: forward()[0]

    def run():
        _, xc, s = forward()
        inv = 1 / (s + EPS)
        u = g * SCALE * (1 - K * xc * inv)
        n = x.shape[-1]
        return inv * (u - u.mean(-1, keepdims=True)) - xc * inv * inv / ((n - 1) * s) * (u * xc).sum(-1, keepdims=True)
    return run


# ---------------------------------------------------------------- Weight Standardization: (O, I, kh, kw)

def ws_case(shape):
    rng = np.random.default_rng(0)
    v = (0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    return v, rng.standard_normal(shape, dtype=np.float32), None, None


def fastnorm_ws(v, g, w, b, threads, backward=False, out=False):
    return _ours(lambda **kw: fastnorm.weight_standardization(v, EPS, n_threads=threads, **kw),
                 lambda r: fastnorm.weight_standardization_backward(g, v, r[1], r[2], EPS, n_threads=threads),
                 backward, out, v)


def torch_ws(v, g, w, b, threads, backward=False):
    if torch is None:
        return None
    tv, tg = _torch_case((v, g), backward)
    O = v.shape[0]

    def forward():
        f = tv.reshape(O, -1)
        return ((f - f.mean(1, keepdim=True)) / (f.std(1, keepdim=True) + EPS)).reshape(tv.shape)
    return _torch_run(forward, (tv,), tg, backward)


def numpy_ws(v, g, w, b, threads, backward=False):
    O = v.shape[0]

    def forward():
        f = v.reshape(O, -1)
        fc = f - f.mean(1, keepdims=True)
        s = fc.std(1, ddof=1, keepdims=True)
        return (fc / (s + EPS)).reshape(v.shape), fc, s
    if not backward:
        return lambda: forward()[0]

    def run():
        _, fc, s = forward()
        gf = g.reshape(O, -1)
        inv = 1 / (s + EPS)
        n = fc.shape[1]
        return (inv * (gf - gf.mean(1, keepdims=True))
                - fc * inv * inv / ((n - 1) * s) * (gf * fc).sum(1, keepdims=True)).reshape(v.shape)
    return run


# ---------------------------------------------------------------- Batch Renorm: (N, C, H, W) training

def _running(C):
    rng = np.random.default_rng(1)
    return (0.1 * rng.standard_normal(C)).astype(np.float32), (0.8 + 0.4 * rng.random(C)).astype(np.float32)


def fastnorm_brn(x, g, w, b, threads, backward=False, out=False):
    rm0, rv0 = _running(x.shape[1])

    def fwd(**kw):  # fresh running statistics per call: every call computes the same thing
        return fastnorm.batch_renorm(x, rm0.copy(), rv0.copy(), w, b, True, 0.1, EPS, R_MAX, D_MAX,
                                     n_threads=threads, **kw)
    return _ours(fwd, lambda r: fastnorm.batch_renorm_backward(g, x, *r[1:], w, b, True, n_threads=threads),
                 backward, out, x)


def _v(a):
    return a.reshape(1, -1, 1, 1)


def torch_brn(x, g, w, b, threads, backward=False):
    if torch is None:
        return None
    tx, tg, tw, tb = _torch_case((x, g, w, b), backward)
    rm, rv = (torch.from_numpy(a) for a in _running(x.shape[1]))
    sigma = torch.sqrt(rv + EPS)

    def forward():
        mu = tx.mean((0, 2, 3))
        sb = torch.sqrt(tx.var((0, 2, 3), unbiased=False) + EPS)
        r = torch.clamp(sb / sigma, 1 / R_MAX, R_MAX).detach()
        d = torch.clamp((mu - rm) / sigma, -D_MAX, D_MAX).detach()
        return ((tx - _v(mu)) / _v(sb) * _v(r) + _v(d)) * _v(tw) + _v(tb)
    return _torch_run(forward, (tx, tw, tb), tg, backward)


def numpy_brn(x, g, w, b, threads, backward=False):
    rm, rv = _running(x.shape[1])
    sigma = np.sqrt(rv + EPS)

    def forward():
        mu = x.mean((0, 2, 3))
        sb = np.sqrt(x.var((0, 2, 3)) + EPS)
        r = np.clip(sb / sigma, 1 / R_MAX, R_MAX)
        d = np.clip((mu - rm) / sigma, -D_MAX, D_MAX)
        xhat = (x - _v(mu)) / _v(sb)
        return (xhat * _v(r) + _v(d)) * _v(w) + _v(b), xhat, r, d, sb
    if not backward:
        return lambda: forward()[0]

    def run():
        _, xhat, r, d, sb = forward()
        gw = g * _v(w * r)
        gx = (gw - gw.mean((0, 2, 3), keepdims=True) - xhat * (gw * xhat).mean((0, 2, 3), keepdims=True)) / _v(sb)
        return gx, r * (g * xhat).sum((0, 2, 3)) + d * g.sum((0, 2, 3)), g.sum((0, 2, 3))
    return run


# ---------------------------------------------------------------- Switchable Norm: (N, C, H, W) training

def _mix_logits():
    return np.array([0.3, -0.2, 0.1], np.float32), np.array([-0.1, 0.2, 0.4], np.float32)


def fastnorm_sn(x, g, w, b, threads, backward=False, out=False):
    mw, vw = (a.astype(w.dtype) for a in _mix_logits())
    C = x.shape[1]

    def fwd(**kw):
        return fastnorm.switchable_norm(x, np.zeros(C, np.float32), np.zeros(C, np.float32), w, b, mw, vw, True,
                                        n_threads=threads, **kw)
    return _ours(fwd, lambda r: fastnorm.switchable_norm_backward(g, x, *r[1:], w, b, mw, vw, True,
                                                                  n_threads=threads), backward, out, x)


def torch_sn(x, g, w, b, threads, backward=False):
    if torch is None:
        return None
    tx, tg, tw, tb = _torch_case((x, g, w, b), backward)
    tmw, tvw = (to_torch(a.astype(w.dtype)).clone().requires_grad_(backward) for a in _mix_logits())
    N, C = x.shape[:2]

    def forward():
        v = tx.reshape(N, C, -1)
        mi, vi = v.mean(-1, keepdim=True), v.var(-1, keepdim=True)
        ml, tl = mi.mean(1, keepdim=True), (vi + mi ** 2).mean(1, keepdim=True)
        mb, tb_ = mi.mean(0, keepdim=True), (vi + mi ** 2).mean(0, keepdim=True)
        mwt, vwt = torch.softmax(tmw, 0), torch.softmax(tvw, 0)
        mean = mwt[0] * mi + mwt[1] * ml + mwt[2] * mb
        var = vwt[0] * vi + vwt[1] * (tl - ml ** 2) + vwt[2] * (tb_ - mb ** 2)
        return ((v - mean) / (var + EPS).sqrt()).view_as(tx) * _v(tw) + _v(tb)
    return _torch_run(forward, (tx, tw, tb, tmw, tvw), tg, backward)


def numpy_sn(x, g, w, b, threads, backward=False):
    if backward:
        return None  # the gradient through the mixing: no NumPy composition written here
    mw, vw = _mix_logits()
    mw, vw = np.exp(mw) / np.exp(mw).sum(), np.exp(vw) / np.exp(vw).sum()
    N, C = x.shape[:2]

    def fwd():
        v = x.reshape(N, C, -1)
        mi, vi = v.mean(-1, keepdims=True), v.var(-1, ddof=1, keepdims=True)
        ml, tl = mi.mean(1, keepdims=True), (vi + mi ** 2).mean(1, keepdims=True)
        mb, tb_ = mi.mean(0, keepdims=True), (vi + mi ** 2).mean(0, keepdims=True)
        mean = mw[0] * mi + mw[1] * ml + mw[2] * mb
        var = vw[0] * vi + vw[1] * (tl - ml ** 2) + vw[2] * (tb_ - mb ** 2)
        return ((v - mean) / np.sqrt(var + EPS)).reshape(x.shape) * _v(w) + _v(b)
    return fwd


# ---------------------------------------------------------------- PowerNorm: (N, C, H, W) training, after warmup

def fastnorm_pn(x, g, w, b, threads, backward=False, out=False):
    C = x.shape[1]
    phi0 = _running(C)[1]
    ema = np.full(C, 0.05, np.float32)
    return _ours(lambda **kw: fastnorm.power_norm(x, phi0.copy(), w, b, True, n_threads=threads, **kw),
                 lambda r: fastnorm.power_norm_backward(g, x, r[1], r[2], ema, w, b, 0.9, True, n_threads=threads),
                 backward, out, x)


def torch_pn(x, g, w, b, threads, backward=False):
    """The forward composed in torch; the backward is the reference's
    PowerFunction.backward composed in torch (autograd would compute the
    exact gradient, a different computation)."""
    if torch is None:
        return None
    tx, tg, tw, tb = _torch_case((x, g, w, b), False)
    C = x.shape[1]
    phi = torch.from_numpy(_running(C)[1]).to(tw.dtype)
    ema = torch.full((C,), 0.05, dtype=tw.dtype)

    def forward():
        psi2 = (tx * tx).mean((0, 2, 3))
        z = tx / _v(torch.sqrt(phi + EPS))
        return _v(tw) * z + _v(tb), z, psi2
    if not backward:
        def run():
            with torch.no_grad():
                return forward()[0]
        return run

    def run():
        with torch.no_grad():
            y, z, psi2 = forward()
            approx = tg * _v(tw) - 0.1 * _v(ema) * z
            gx = approx / _v(torch.sqrt(psi2 + EPS))
            return gx, (tg * z).sum((0, 2, 3)), tg.sum((0, 2, 3)), ema + (approx * z).mean((0, 2, 3))
    return run


def numpy_pn(x, g, w, b, threads, backward=False):
    C = x.shape[1]
    phi = _running(C)[1]
    ema = np.full(C, 0.05, np.float32)

    def forward():
        psi2 = (x * x).mean((0, 2, 3))
        z = x / _v(np.sqrt(phi + EPS))
        return _v(w) * z + _v(b), z, psi2
    if not backward:
        return lambda: forward()[0]

    def run():
        y, z, psi2 = forward()
        approx = g * _v(w) - 0.1 * _v(ema) * z
        return approx / _v(np.sqrt(psi2 + EPS)), (g * z).sum((0, 2, 3)), g.sum((0, 2, 3))
    return run


# ---------------------------------------------------------------- cosine_linear: x (B, I) @ W (O, I)^T

def cos_case(shape):
    """x (B, I), grad (B, O), the weight (O, I) in the weight slot (O = I here)."""
    rng = np.random.default_rng(0)
    B, I = shape
    x = rng.standard_normal((B, I), dtype=np.float32)
    w = (0.05 * rng.standard_normal((I, I), dtype=np.float32))
    return x, rng.standard_normal((B, I), dtype=np.float32), w, None


def fastnorm_cos(x, g, w, b, threads, backward=False, out=False):
    return _ours(lambda **kw: fastnorm.cosine_linear(x, w, **kw),
                 lambda r: fastnorm.cosine_linear_backward(g, x, w, r[1], r[2]), backward, out,
                 np.empty((x.shape[0], w.shape[0]), x.dtype))


def torch_cos(x, g, w, b, threads, backward=False):
    if torch is None:
        return None
    tx, tg, tw = _torch_case((x, g, w), backward)
    import torch.nn.functional as TF
    return _torch_run(lambda: TF.normalize(tx, dim=-1) @ TF.normalize(tw, dim=-1).T, (tx, tw), tg, backward)


def numpy_cos(x, g, w, b, threads, backward=False):
    if backward:
        return None
    return lambda: (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T


# ---------------------------------------------------------------- Batch Layer Norm: (N, d) training

def fastnorm_bln(x, g, w, b, threads, backward=False, out=False):
    K = x[0].size
    return _ours(lambda **kw: fastnorm.batch_layer_norm(x, np.zeros(K, np.float32), np.ones(K, np.float32), w, b,
                                                        True, n_threads=threads, **kw),
                 lambda r: fastnorm.batch_layer_norm_backward(g, x, *r[1:], w, b, True, n_threads=threads),
                 backward, out, x)


def torch_bln(x, g, w, b, threads, backward=False):
    if torch is None:
        return None
    tx, tg, tw, tb = _torch_case((x, g, w, b), backward)
    N, d = x.shape[0], x.shape[-1]

    def forward():
        xb = (tx - tx.mean(0)) / torch.sqrt(tx.var(0, unbiased=False) + 1e-3)
        xf = (tx - tx.mean(-1, keepdim=True)) / torch.sqrt(tx.var(-1, unbiased=False, keepdim=True) + 1e-3)
        return tw * ((1 / N - 1e-4) * xf + (1 - 1 / N - 1e-4) * xb) / d ** 0.5 + tb
    return _torch_run(forward, (tx, tw, tb), tg, backward)


def numpy_bln(x, g, w, b, threads, backward=False):
    if backward:
        return None
    N, d = x.shape[0], x.shape[-1]

    def fwd():
        xb = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3)
        xf = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-3)
        return w * ((1 / N - 1e-4) * xf + (1 - 1 / N - 1e-4) * xb) / d ** 0.5 + b
    return fwd


# ---------------------------------------------------------------- CB-Norm: (65536, 256) rows, K = 4

K_COMPONENTS = 4


def mixture_case(shape):
    """x, grad and the mixture's parameters (logits, means, var_params) in the weight slot."""
    rng = np.random.default_rng(0)
    B, D = shape
    x = rng.standard_normal(shape, dtype=np.float32)
    params = (np.array([0.1, -0.2, 0.3, 0.0], np.float32), 0.05 * rng.standard_normal((K_COMPONENTS, D), dtype=np.float32),
              (0.5 + 0.1 * rng.standard_normal((K_COMPONENTS, D), dtype=np.float32)))
    return x, rng.standard_normal(shape, dtype=np.float32), params, None


def fastnorm_mix(x, g, p, b, threads, backward=False, out=False):
    return _ours(lambda **kw: fastnorm.mixture_norm(x, *p, **kw),
                 lambda r: fastnorm.mixture_norm_backward(g, x, r[1], *p), backward, out, x)


def torch_mix(x, g, p, b, threads, backward=False):
    if torch is None:
        return None
    tx, tg = _torch_case((x, g), backward)
    trho, tE, tnu = (torch.from_numpy(a).clone().requires_grad_(backward) for a in p)

    def forward():
        pi = torch.softmax(trho, 0)
        V = torch.nn.functional.softplus(tnu)
        logp = torch.log(pi)[None] - 0.5 * (((tx[:, None] - tE[None]) ** 2 / V[None]).sum(-1)
                                            + torch.log(2 * np.pi * V).sum(-1)[None])
        tau = torch.softmax(logp, 1)
        return (tau[..., None] / torch.sqrt(pi + 1e-5)[None, :, None] * (tx[:, None] - tE[None])
                / torch.sqrt(V + 1e-5)[None]).sum(1)
    return _torch_run(forward, (tx, trho, tE, tnu), tg, backward)


def numpy_mix(x, g, p, b, threads, backward=False):
    if backward:
        return None
    from fastnorm import reference
    return lambda: reference.mixture_norm(x, *p)


def cluster_case(shape):
    """x, grad, (cluster ids, mean, log_scale) in the weight slot."""
    rng = np.random.default_rng(0)
    B, D = shape
    params = (rng.integers(0, K_COMPONENTS, B), rng.standard_normal((K_COMPONENTS, D), dtype=np.float32),
              0.1 * rng.standard_normal((K_COMPONENTS, D), dtype=np.float32))
    return rng.standard_normal(shape, dtype=np.float32), rng.standard_normal(shape, dtype=np.float32), params, None


def fastnorm_cb(x, g, p, b, threads, backward=False, out=False):
    return _ours(lambda **kw: fastnorm.cluster_norm(x, *p, **kw),
                 lambda r: fastnorm.cluster_norm_backward(g, x, *p), backward, out, x)


def torch_cb(x, g, p, b, threads, backward=False):
    if torch is None:
        return None
    tx, tg = _torch_case((x, g), backward)
    c = torch.from_numpy(p[0])
    tmu, tls = (torch.from_numpy(a).clone().requires_grad_(backward) for a in p[1:])
    return _torch_run(lambda: (tx - tmu[c]) / (torch.exp(tls[c]) + 1e-3), (tx, tmu, tls), tg, backward)


def numpy_cb(x, g, p, b, threads, backward=False):
    if backward:
        return None
    c, mu, ls = p
    return lambda: (x - mu[c]) / (np.exp(ls[c]) + 1e-3)


def _entry(fast, torch_f, numpy_f, shapes, make):
    return {"fastnorm": fast, "torch": torch_f, "numpy": numpy_f, "shapes": shapes,
            "directions": ("fwd", "fwd+bwd"), "make_case": make, "dtypes": ("float32", "bfloat16")}


MEMBER_OPS = {
    "dynamic_tanh": _entry(fastnorm_dyt, torch_dyt, numpy_dyt, [(8192, 4096)], make_case),
    "ada_norm": _entry(fastnorm_ada, torch_ada, numpy_ada, [(8192, 4096)], make_case),
    # the (1024, 512, 3, 3) weight is 9.4 MB in bfloat16, inside a
    # 32 MiB L3; (4096, 512, 3, 3) is out of cache, where the issue's
    # copy-limit target applies
    "weight_standardization": _entry(fastnorm_ws, torch_ws, numpy_ws, [(1024, 512, 3, 3), (4096, 512, 3, 3)],
                                     ws_case),
    "batch_renorm train NCHW": _entry(fastnorm_brn, torch_brn, numpy_brn, [(32, 64, 56, 56)],
                                      lambda shape: make_channel_case(shape)),
    "switchable_norm train NCHW": _entry(fastnorm_sn, torch_sn, numpy_sn, [(32, 64, 56, 56)],
                                         lambda shape: make_channel_case(shape)),
    "power_norm train NCHW": _entry(fastnorm_pn, torch_pn, numpy_pn, [(32, 64, 56, 56)],
                                    lambda shape: make_channel_case(shape)),
    # the (32, 64, 56, 56) images, channels-last as the reference (TF): d = C = 64
    "batch_layer_norm NHWC": _entry(fastnorm_bln, torch_bln, numpy_bln, [(32, 56, 56, 64)], make_case),
    "cluster_norm (CB-Norm supervised, K=4)": dict(_entry(fastnorm_cb, torch_cb, numpy_cb, [(65536, 256)],
                                                          cluster_case), dtypes=("float32",)),
    "mixture_norm (CB-Norm unsupervised, K=4)": dict(_entry(fastnorm_mix, torch_mix, numpy_mix, [(65536, 256)],
                                                            mixture_case), dtypes=("float32",)),
    "cosine_linear": dict(_entry(fastnorm_cos, torch_cos, numpy_cos, [(4096, 1024)], cos_case),
                          dtypes=("float32",)),
}
