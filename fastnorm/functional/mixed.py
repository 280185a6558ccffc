"""Normalizations built from per-statistic passes: Switchable Normalization
(Luo et al.), whose statistics mix several normalizers', and PowerNorm
(Shen et al.), whose backward carries a running gradient statistic.

Built on two channel-engine passes: the per-(sample, channel) moments
(``channel_moments``) and the per-statistic elementwise passes of
``_pointwise_kernels.pxi`` (``stat_sums``: sum g and sum g * (x - hi) per
statistic; ``stat_apply``: alpha * g + beta * (x - hi) + gamma per
statistic).  The mixing itself is arithmetic on (N, C) arrays."""
import numpy as np

from .. import _dispatch
from .._args import _as_float, check_eps, check_momentum
from .._buffers import empty as _empty
from .._dtypes import check_param_dtype, native_order
from .._validation import (
    ChannelLayout,
    as_float_array,
    channel_output,
    channel_stats_input,
    into_out,
    out_aliases,
    same_shape_input,
    to_kernel_layout,
)
from .channels import _running_buffer

__all__ = ["switchable_norm", "switchable_norm_backward", "power_norm", "power_norm_backward", "batch_layer_norm",
           "batch_layer_norm_backward"]




def _stat_apply(g, xk, out_k, P, C, Sk, R, hi, alpha, beta, gamma, cdt, n_threads):
    """out = alpha * g + beta * (x - hi) + gamma per statistic k = (p // R) *
    C + c of the (P, C, Sk) layout (coefficients: float64 (K,)), through the
    kernel; where a float32 beta would be out of range the pass is done in
    float64 instead (rare: pathological scales only)."""
    # a beta outside the kernels' float32 factor range (2^-100, 2^100) would
    # leave float32's range (beta ~ rstd^2 for data beyond 2^50 or under 2^-50)
    b = np.abs(beta)
    lo, hi_ = _dispatch.kernels.FLOAT_FACTOR_RANGE
    if cdt == np.float32 and np.any((b != 0) & ((b < lo) | (b > hi_)) & np.isfinite(b)):
        def per(a):
            return np.asarray(a, np.float64).reshape(P // R, 1, C, 1)
        shape = (P // R, R, C, Sk)
        x64 = xk.astype(np.float64).reshape(shape)
        g64 = g.astype(np.float64).reshape(shape)
        res = per(alpha) * g64 + per(beta) * (x64 - per(hi)) + per(gamma)
        out_k[...] = res.reshape(out_k.shape).astype(out_k.dtype)
        return
    _dispatch.kernels.stat_apply(g, xk, out_k, P, C, Sk, R,
                                 *(np.ascontiguousarray(a, cdt) for a in (hi, alpha, beta, gamma)), n_threads)


class _StatLayout:
    """x in the per-statistic kernels' flat (P, C, S) layout with R rows per
    sample (statistic (n, c) of every value)."""

    def __init__(self, x, channel_axis):
        self.layout = lay = ChannelLayout(x, channel_axis)
        self.N, self.C, self.S = lay.N, lay.C, lay.S
        if lay.cl:
            self.P, self.Sk, self.R = lay.N * lay.S, 1, lay.S
        else:
            self.P, self.Sk, self.R = lay.N, lay.S, 1

    def finish(self, y_k, direct, out):
        """The output written by a kernel into y_k (channel_output's buffer), in x's axis order / in out."""
        if direct:
            return out
        y = self.layout.restore(y_k)
        if out is not None:
            np.copyto(out, y)
            return out
        return y

    def moments(self, n_threads):
        """Per (sample, channel): mean and sum of squared deviations, (N, C) float64."""
        lay, N, C, S = self.layout, self.N, self.C, self.S
        mean, m2, count = np.empty(N * C), np.empty(N * C), np.empty(N * C)
        if not lay.cl:  # (N, C, S) is (1, N*C, S): BatchNorm's per-channel moments of N*C channels
            _dispatch.kernels.channel_moments(lay.data.reshape(1, N * C, S), False, 1, N * C, S, mean, m2,
                                              count, n_threads)
        else:
            for n in range(N):
                _dispatch.kernels.channel_moments(lay.data[n], True, 1, C, S, mean[n * C:(n + 1) * C],
                                                  m2[n * C:(n + 1) * C], count[n * C:(n + 1) * C], n_threads)
        return mean.reshape(N, C), m2.reshape(N, C)

    def sums(self, g, hi, cdt, n_threads):
        K = self.N * self.C
        sg, sgx = np.empty(K), np.empty(K)
        _dispatch.kernels.stat_sums(g, self.layout.data, self.P, self.C, self.Sk, self.R,
                                    np.ascontiguousarray(hi, cdt).reshape(K), sg, sgx, n_threads)
        return sg.reshape(self.N, self.C), sgx.reshape(self.N, self.C)

    def apply(self, g, out_k, hi, alpha, beta, gamma, cdt, n_threads):
        K = self.N * self.C
        coef = [np.ascontiguousarray(np.broadcast_to(a, (self.N, self.C)), np.float64).reshape(K)
                for a in (hi, alpha, beta, gamma)]
        _stat_apply(g, self.layout.data, out_k, self.P, self.C, self.Sk, self.R, *coef, cdt, n_threads)


def _softmax3(v, name, dtype, cdt):
    if v is None:
        return np.full(3, 1.0 / 3.0)
    a = np.asarray(v)
    if a.shape != (3,):
        raise ValueError(f"{name} must have shape (3,) (instance, layer, batch), got {a.shape}")
    a = check_param_dtype(native_order(a), name, dtype, cdt).astype(np.float64)
    e = np.exp(a - a.max())
    return e / e.sum()


def _mix(mean_in, var_in, mean_bn, var_bn, mw, vw):
    """The layer statistics from the instance ones, and the mixed (N, C) mean and var."""
    mean_ln = mean_in.mean(1)
    var_ln = (var_in + mean_in ** 2).mean(1) - mean_ln ** 2
    mean = mw[0] * mean_in + mw[1] * mean_ln[:, None] + mw[2] * mean_bn[None, :]
    var = vw[0] * var_in + vw[1] * var_ln[:, None] + vw[2] * var_bn[None, :]
    return mean_ln, var_ln, mean, var


def _vector(p, name, C, dtype, cdt, fill):
    if p is None:
        return np.full(C, fill)
    a = np.asarray(p)
    if a.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},) (the channels), got {a.shape}")
    return check_param_dtype(native_order(a), name, dtype, cdt).astype(np.float64)


def switchable_norm(x, running_mean, running_var, weight=None, bias=None, mean_weight=None, var_weight=None,
                    training=False, momentum=0.1, eps=1e-5, *, channel_axis=1, out=None, n_threads=None,
                    return_stats=False):
    """Switchable Normalization (Luo et al. 2019), as the reference
    implementation's SwitchNorm2d (switchablenorms/Switchable-Normalization).

    Per (sample, channel): the instance mean and *unbiased* variance over the
    spatial positions (torch's ``var``, as the reference); the layer
    statistics derived from them (mean over channels of the means, and of
    var + mean^2, minus the mean squared) and the batch statistics likewise
    over samples (in eval, the running ones).  mean = softmax(mean_weight)
    . (instance, layer, batch means), var likewise with softmax(var_weight),
    y = (x - mean) / sqrt(var + eps) * weight + bias.

    In training the running statistics are updated in place with the batch
    statistics: running = (1 - momentum) * running + momentum * batch, torch's
    convention (the reference's momentum=0.997 / 0.9 means 1 - momentum here).
    mean_weight / var_weight: (3,) logits (None: equal weights).

    Returns y, or (y, mean_in, var_in, mean_bn, var_bn) with return_stats
    ((N, C), (N, C), (C,), (C,), float64: a variance of float32 data can be
    beyond float32's range) for `switchable_norm_backward`.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((4, 3, 5, 5)).astype(np.float32)
    >>> rm, rv = np.zeros(3, np.float32), np.zeros(3, np.float32)
    >>> y = switchable_norm(x, rm, rv, training=True)
    >>> y.shape
    (4, 3, 5, 5)
    """
    if out_aliases(out, (weight, bias, mean_weight, var_weight) + (() if training else (running_mean, running_var)),
                   (("running_mean", running_mean), ("running_var", running_var)) if training else ()):
        return into_out(out, switchable_norm(x, running_mean, running_var, weight, bias, mean_weight, var_weight,
                                             training, momentum, eps, channel_axis=channel_axis,
                                             n_threads=n_threads, return_stats=return_stats))
    x, cdt = as_float_array(x, "x")
    sl = _StatLayout(x, channel_axis)
    N, C, S = sl.N, sl.C, sl.S
    eps = check_eps(eps)
    momentum = check_momentum(momentum)
    running_mean = _running_buffer(running_mean, "running_mean", C, training)
    running_var = _running_buffer(running_var, "running_var", C, training)
    w = _vector(weight, "weight", C, x.dtype, cdt, 1.0)
    b = _vector(bias, "bias", C, x.dtype, cdt, 0.0)
    mw = _softmax3(mean_weight, "mean_weight", x.dtype, cdt)
    vw = _softmax3(var_weight, "var_weight", x.dtype, cdt)
    if S <= 1:
        raise ValueError(f"Expected more than 1 spatial value per channel (the instance variance is "
                         f"unbiased), got input size {x.shape}")
    if training and N * S <= 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    if not training and (running_mean is None or running_var is None):
        raise ValueError("running_mean and running_var are required when training=False")
    y_k, direct = channel_output(x, sl.layout, sl.layout.data, x.dtype, out)   # checks out first
    mean_in, m2 = sl.moments(n_threads)
    var_in = m2 / (S - 1)
    if training:
        mean_bn = mean_in.mean(0)
        var_bn = (var_in + mean_in ** 2).mean(0) - mean_bn ** 2
    else:
        mean_bn, var_bn = running_mean.astype(np.float64), running_var.astype(np.float64)
    _, _, mean, var = _mix(mean_in, var_in, mean_bn, var_bn, mw, vw)
    rs = 1.0 / np.sqrt(var + eps)
    # y = 0 * x + (w rs) * (x - mean) + b: the affine pass per statistic
    sl.apply(sl.layout.data, y_k, mean, 0.0, w * rs, b, cdt, n_threads)
    y = sl.finish(y_k, direct, out)
    if training:
        for buf, v in ((running_mean, mean_bn), (running_var, var_bn)):
            if buf is not None:
                buf *= 1.0 - momentum
                buf += (momentum * v).astype(buf.dtype)
    if not return_stats:
        return y
    # float64 statistics: a variance of float32 data beyond 2^64 is past float32's range
    return y, mean_in, var_in, mean_bn, var_bn


def _softmax_grad(p, dp):
    return p * (dp - np.dot(p, dp))


def switchable_norm_backward(grad_out, x, mean_in, var_in, mean_bn, var_bn, weight=None, bias=None,
                             mean_weight=None, var_weight=None, training=True, eps=1e-5, *, channel_axis=1,
                             n_threads=None):
    """Gradients of `switchable_norm` through every statistic and the
    softmax mixing: (grad_x, grad_weight, grad_bias, grad_mean_weight,
    grad_var_weight), None for a parameter that was None.  In eval the batch
    statistics (the running ones) are constants.

    With m, v the mixed statistics, rs = 1/sqrt(v + eps) and per (n, c) the
    sums G = sum g and H = sum g (x - m): dL/dm = -w rs G, dL/dv = -w rs^3 H / 2,
    carried to the instance statistics through the mixing (the layer and
    batch statistics are means of them), then
    grad_x = g w rs + dL/dmean_in / S + dL/dvar_in * 2 (x - mean_in) / (S - 1).
    """
    x, cdt = as_float_array(x, "x")
    grad_out = same_shape_input(grad_out, "grad_out", x)
    sl = _StatLayout(x, channel_axis)
    N, C, S = sl.N, sl.C, sl.S
    eps = check_eps(eps)
    mean_in = channel_stats_input(mean_in, "mean_in", (N, C)).reshape(N, C)
    var_in = channel_stats_input(var_in, "var_in", (N, C)).reshape(N, C)
    mean_bn = channel_stats_input(mean_bn, "mean_bn", (C,))
    var_bn = channel_stats_input(var_bn, "var_bn", (C,))
    w = _vector(weight, "weight", C, x.dtype, cdt, 1.0)
    if bias is not None:
        _vector(bias, "bias", C, x.dtype, cdt, 0.0)
    mw = _softmax3(mean_weight, "mean_weight", x.dtype, cdt)
    vw = _softmax3(var_weight, "var_weight", x.dtype, cdt)
    mean_ln, var_ln, mean, var = _mix(mean_in, var_in, mean_bn, var_bn, mw, vw)
    rs = 1.0 / np.sqrt(var + eps)
    g = to_kernel_layout(grad_out, sl.layout)
    G, Hin = sl.sums(g, mean_in, cdt, n_threads)   # sum g, sum g (x - mean_in)
    H = Hin + (mean_in - mean) * G                 # sum g (x - m)
    Gm = -w * rs * G
    Gv = -0.5 * w * rs ** 3 * H
    stats_m = (mean_in, np.broadcast_to(mean_ln[:, None], (N, C)), np.broadcast_to(mean_bn, (N, C)))
    stats_v = (var_in, np.broadcast_to(var_ln[:, None], (N, C)), np.broadcast_to(var_bn, (N, C)))
    d_mw = np.array([(Gm * s).sum() for s in stats_m])
    d_vw = np.array([(Gv * s).sum() for s in stats_v])
    d_mean_in = mw[0] * Gm + mw[1] * Gm.mean(1, keepdims=True) \
        + vw[1] * Gv.sum(1, keepdims=True) * 2 * (mean_in - mean_ln[:, None]) / C
    d_var_in = vw[0] * Gv + vw[1] * Gv.mean(1, keepdims=True)
    if training:  # the batch statistics are means over the samples of the instance ones
        d_mean_in = d_mean_in + mw[2] * Gm.mean(0, keepdims=True) \
            + vw[2] * Gv.sum(0, keepdims=True) * 2 * (mean_in - mean_bn[None, :]) / N
        d_var_in = d_var_in + vw[2] * Gv.mean(0, keepdims=True)
    dx_k = sl.layout.empty(x.dtype)
    sl.apply(g, dx_k, mean_in, w * rs, 2 * d_var_in / (S - 1), d_mean_in / S, cdt, n_threads)
    grad_x = sl.layout.restore(dx_k)

    def like(v, p):
        return None if p is None else v.astype(np.asarray(p).dtype)
    return (grad_x, like((H * rs).sum(0), weight), like(G.sum(0), bias),
            like(_softmax_grad(mw, d_mw), mean_weight), like(_softmax_grad(vw, d_vw), var_weight))


# ---------------------------------------------------------------- PowerNorm

def power_norm(x, running_phi, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5, *,
               warmup=False, channel_axis=1, out=None, n_threads=None, return_stats=False):
    """PowerNorm (Shen et al. 2020, "PowerNorm: Rethinking Batch Normalization
    in Transformers"), as the reference implementation's PowerFunction
    (sIncerass/powernorm, ``mask_powernorm.py``).

    Per channel, the quadratic mean psi2 = mean(x^2) over every axis but the
    channel axis (no centering).  Training: z = x / sqrt(phi + eps) with phi
    the running quadratic mean (or, with ``warmup=True``, the batch's psi2, as
    the reference during its warmup iterations); running_phi is then updated
    in place, running_phi = (1 - momentum) * running_phi + momentum * psi2
    (the reference's alpha_fwd = 1 - momentum; its warmup-time cumulative
    average is `nn.PowerNorm`'s choice of momentum).  Eval: z = x / sqrt(running_phi + eps).
    y = weight * z + bias.  The reference's GroupScaling1D, a separate
    per-token rescaling before the norm, is not part of this op.

    Returns y, or (y, psi2, phi) with return_stats ((C,) float64: the batch's
    quadratic mean and the normalizer used; float32 could not hold them for
    data beyond 2^64) for `power_norm_backward`.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((8, 4, 5, 5)).astype(np.float32)
    >>> phi = np.ones(4, np.float32)
    >>> y = power_norm(x, phi, training=True)
    >>> y.shape
    (8, 4, 5, 5)
    """
    if out_aliases(out, (weight, bias) + (() if training else (running_phi,)),
                   (("running_phi", running_phi),) if training else ()):
        return into_out(out, power_norm(x, running_phi, weight, bias, training, momentum, eps, warmup=warmup,
                                        channel_axis=channel_axis, n_threads=n_threads,
                                        return_stats=return_stats))
    x, cdt = as_float_array(x, "x")
    sl = _StatLayout(x, channel_axis)
    N, C, S = sl.N, sl.C, sl.S
    eps = check_eps(eps)
    momentum = check_momentum(momentum)
    if running_phi is None:
        raise ValueError("running_phi is required (the running quadratic mean)")
    running_phi = _running_buffer(running_phi, "running_phi", C, training)
    w = _vector(weight, "weight", C, x.dtype, cdt, 1.0)
    b = _vector(bias, "bias", C, x.dtype, cdt, 0.0)
    y_k, direct = channel_output(x, sl.layout, sl.layout.data, x.dtype, out)
    count = N * S
    if training:
        if count < 1:
            raise ValueError(f"Expected at least 1 value per channel when training, got input size {x.shape}")
        lay = sl.layout
        mean, m2, n = np.empty(C), np.empty(C), np.empty(C)
        _dispatch.kernels.channel_moments(lay.data, lay.cl, N, C, S, mean, m2, n, n_threads)
        psi2 = m2 / count + mean * mean
        bad = ~np.isfinite(psi2)
        if bad.any():
            # a channel holding +-inf: its moments about a shift are NaN (inf -
            # inf), its quadratic mean is inf (NaN only where a NaN is)
            axis = channel_axis % x.ndim if x.ndim > 1 else 0
            rows = np.moveaxis(x, axis, 0).reshape(C, -1)[bad].astype(np.float64)
            with np.errstate(over="ignore"):
                psi2[bad] = (rows * rows).mean(axis=1)
        phi = psi2 if warmup else running_phi.astype(np.float64)
    else:
        psi2 = phi = running_phi.astype(np.float64)
    r = 1.0 / np.sqrt(phi + eps)
    zero = np.zeros(C)
    # y = (w r) x + b per channel: the per-statistic pass with one statistic per channel (R = P)
    _dispatch.kernels.stat_apply(sl.layout.data, sl.layout.data, y_k, sl.P, C, sl.Sk, sl.P,
                                 *(np.ascontiguousarray(a, cdt) for a in (zero, zero, w * r, b)), n_threads)
    y = sl.finish(y_k, direct, out)
    if training:
        running_phi *= 1.0 - momentum
        running_phi += (momentum * psi2).astype(running_phi.dtype)
    if not return_stats:
        return y
    return y, psi2, phi  # float64: a quadratic mean of float32 data beyond 2^64 is past float32's range


def power_norm_backward(grad_out, x, psi2, phi, ema_gz, weight=None, bias=None, alpha_bkw=0.9, training=True,
                        eps=1e-5, *, channel_axis=1, n_threads=None):
    """PowerNorm's approximate backward, as the reference's PowerFunction:
    with z = x / sqrt(phi + eps) and g' = grad_out * weight,
    approx = g' - (1 - alpha_bkw) * ema_gz * z, grad_x = approx / sqrt(psi2 + eps)
    (the batch's quadratic mean, as the reference, also after warmup), and
    the running gradient statistic ema_gz + mean(approx * z) per channel.
    Eval: grad_x = g' / sqrt(phi + eps) exactly.  grad_weight = sum(grad_out
    * z), grad_bias = sum(grad_out).

    Returns (grad_x, grad_weight, grad_bias, new_ema_gz): the updated
    ema_gz is returned, not written into the argument (the layer keeps it).
    """
    x, cdt = as_float_array(x, "x")
    grad_out = same_shape_input(grad_out, "grad_out", x)
    sl = _StatLayout(x, channel_axis)
    N, C, S = sl.N, sl.C, sl.S
    eps = check_eps(eps)
    if isinstance(alpha_bkw, bool) or not isinstance(alpha_bkw, (int, float, np.integer, np.floating)):
        raise TypeError(f"alpha_bkw must be a real number, got {alpha_bkw!r}")
    alpha_bkw = _as_float(alpha_bkw, "alpha_bkw")
    psi2 = channel_stats_input(psi2, "psi2", (C,))
    phi = channel_stats_input(phi, "phi", (C,))
    ema_in, _ = as_float_array(ema_gz, "ema_gz")   # any float dtype, 16-bit included
    ema = channel_stats_input(ema_in.astype(np.float64), "ema_gz", (C,))
    w = _vector(weight, "weight", C, x.dtype, cdt, 1.0)
    if bias is not None:
        _vector(bias, "bias", C, x.dtype, cdt, 0.0)
    g = to_kernel_layout(grad_out, sl.layout)
    zero = np.zeros(C, cdt)
    sg, sgx = np.empty(C), np.empty(C)
    _dispatch.kernels.stat_sums(g, sl.layout.data, sl.P, C, sl.Sk, sl.P, zero, sg, sgx, n_threads)
    rz = 1.0 / np.sqrt(phi + eps)
    count = max(N * S, 1)
    if training:
        c = (1.0 - alpha_bkw) * ema
        rb = 1.0 / np.sqrt(psi2 + eps)
        alpha, beta = w * rb, -c * rz * rb
        # mean(approx * z) = w mean(g z) - c mean(z^2), mean(z^2) = rz^2 psi2
        new_ema = ema + (w * rz * sgx - c * rz * rz * psi2 * count) / count
    else:
        alpha, beta = w * rz, np.zeros(C)
        new_ema = ema.copy()
    dx_k = sl.layout.empty(x.dtype)
    _stat_apply(g, sl.layout.data, dx_k, sl.P, C, sl.Sk, sl.P, zero, alpha, beta, zero, cdt, n_threads)

    def like(v, p):
        return None if p is None else v.astype(np.asarray(p).dtype)
    return (sl.layout.restore(dx_k), like(rz * sgx, weight), like(sg, bias),
            new_ema.astype(ema_in.dtype))


# ---------------------------------------------------------------- Batch Layer Normalization

def _bln_mix(batch_size, N, d):
    B = N if batch_size is None else batch_size
    if isinstance(B, bool) or not isinstance(B, (int, np.integer)) or B < 1:
        raise ValueError(f"batch_size must be a positive int (or None: the batch's N), got {batch_size!r}")
    return (1.0 / B - 1e-4) / np.sqrt(d), (1.0 - 1.0 / B - 1e-4) / np.sqrt(d)


def _bln_operands(x):
    x, cdt = as_float_array(x, "x")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (N, ..., features), got shape {x.shape}")
    N, d = x.shape[0], x.shape[-1]
    return x, cdt, N, d, x.reshape(N, -1)


def batch_layer_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                     eps=1e-3, batch_size=None, *, out=None, n_threads=None, return_stats=False):
    """Batch Layer Normalization (Ziaee and Cano), as the reference
    implementation's layer (A2Amir/Batch-Layer-Normalization, ``bln_layer.py``).

    x: (N, ..., d).  x_b standardizes each position over the batch axis
    (BatchNorm's statistics of x as (N, K) columns, K = x.size / N), x_f each
    sample's position over the last axis (LayerNorm's), both with the biased
    variance and eps inside the square root (eps = 1e-3, as the reference);
    y = weight * ((1/B - 1e-4) x_f + (1 - 1/B - 1e-4) x_b) / sqrt(d) + bias,
    B = `batch_size` (the reference's fixed batch size; None: N), weight and
    bias of shape (d,).  Training uses the batch's x_b statistics and updates
    running_mean / running_var ((K,)) in place, as `batch_norm` (momentum,
    unbiased variance); eval uses them for x_b and the current statistics for
    x_f, the reference's defaults.  The reference keeps per-epoch averages
    instead of a moving average; the layer here follows BatchNorm.

    Returns y, or (y, mean_f, rstd_f, mean_b, invstd_b) with return_stats.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    >>> rm, rv = np.zeros(8, np.float32), np.ones(8, np.float32)
    >>> y = batch_layer_norm(x, rm, rv, training=True)
    >>> y.shape
    (16, 8)
    """
    from .channels import batch_norm
    from .rows import layer_norm
    if out_aliases(out, (weight, bias) + (() if training else (running_mean, running_var)),
                   (("running_mean", running_mean), ("running_var", running_var)) if training else ()):
        return into_out(out, batch_layer_norm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                              batch_size, n_threads=n_threads, return_stats=return_stats))
    x, cdt, N, d, x2 = _bln_operands(x)
    a, c = _bln_mix(batch_size, N, d)
    eps = check_eps(eps)
    w = _vector(weight, "weight", d, x.dtype, cdt, 1.0)
    b = _vector(bias, "bias", d, x.dtype, cdt, 0.0)
    if out is not None:
        from .._validation import check_out
        check_out(out, x, x.dtype)
    K = x2.shape[1]
    # x_b: BatchNorm of the (N, K) columns (checks the running statistics before anything is written)
    xb, mean_b, invstd_b = batch_norm(x2, running_mean, running_var, None, None, training, momentum, eps,
                                      channel_axis=-1, n_threads=n_threads, return_stats=True)
    xf, mean_f, rstd_f = layer_norm(x, d, None, None, eps, n_threads=n_threads, return_stats=True)
    # y = (w a) x_f + (w c) x_b + bias per column: the per-statistic pass (a statistic per column)
    reps = K // d if d else 0
    coef = [np.ascontiguousarray(np.tile(v, reps), cdt) for v in (np.zeros(d), w * a, w * c, b)]
    y = out if out is not None and out.dtype == x.dtype and out.flags.c_contiguous else _empty(x.shape, x.dtype)
    _dispatch.kernels.stat_apply(np.ascontiguousarray(xf).reshape(N, K), np.ascontiguousarray(xb), y.reshape(N, K),
                                 N, K, 1, N, *coef, n_threads)
    if out is not None and y is not out:
        np.copyto(out, y)
        y = out
    if not return_stats:
        return y
    return y, mean_f, rstd_f, mean_b, invstd_b


def batch_layer_norm_backward(grad_out, x, mean_f, rstd_f, mean_b, invstd_b, weight=None, bias=None,
                              training=True, batch_size=None, *, n_threads=None):
    """Gradients of `batch_layer_norm`: (grad_x, grad_weight, grad_bias).

    The sum of LayerNorm's backward (the weight w (1/B - 1e-4) / sqrt(d)) and
    BatchNorm's over the (N, K) columns (the weight w (1 - 1/B - 1e-4) /
    sqrt(d); eval: the running statistics are constants), each through its
    statistics; grad_weight = (a sum g x_f + c sum g x_b) / sqrt(d) per
    feature, grad_bias = sum g.
    """
    from .channels import batch_norm_backward
    from .rows import layer_norm_backward
    x, cdt, N, d, x2 = _bln_operands(x)
    grad_out = same_shape_input(grad_out, "grad_out", x)
    a, c = _bln_mix(batch_size, N, d)
    w = _vector(weight, "weight", d, x.dtype, cdt, 1.0)
    if bias is not None:
        _vector(bias, "bias", d, x.dtype, cdt, 0.0)
    K = x2.shape[1]
    reps = K // d if d else 0
    gf, swf, _ = layer_norm_backward(grad_out, x, mean_f, rstd_f, (w * a).astype(cdt), None, n_threads=n_threads)
    gb, swb, sb = batch_norm_backward(grad_out.reshape(N, K), x2, mean_b, invstd_b,
                                      np.tile(w * c, reps).astype(cdt), np.zeros(K, cdt), training,
                                      channel_axis=-1, n_threads=n_threads)
    grad_x = np.add(gf, gb.reshape(x.shape), out=gf)
    # the kernels' grad_weight are sum g * x_f and sum g * x_b (independent of the weight given)
    gw = (a * swf.astype(np.float64).reshape(d) + c * swb.astype(np.float64).reshape(reps, d).sum(0))
    gbias = sb.astype(np.float64).reshape(reps, d).sum(0)

    def like(v, p):
        return None if p is None else v.astype(np.asarray(p).dtype)
    return grad_x, like(gw, weight), like(gbias, bias)
