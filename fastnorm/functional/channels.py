"""Channel normalizations: BatchNorm, GroupNorm, InstanceNorm.

One channel engine (``_channel_kernels.pxi``) serves the three, channels-first
and channels-last; see its header for the statistics each op pools."""
import numpy as np

from .. import _dispatch
from .._args import _as_float, check_eps, check_momentum, check_groups
from .._validation import (
    single_value_stats,
    ChannelLayout,
    as_float_array,
    channel_stats_input,
    check_out,
    into_out,
    out_aliases,
    same_shape_input,
    to_kernel_layout,
)

__all__ = ["batch_norm", "batch_norm_backward", "group_norm", "group_norm_backward", "instance_norm",
           "instance_norm_backward", "batch_renorm", "batch_renorm_backward"]


def _running_buffer(a, name, C, updated):
    """A running statistic: None, or a float (C,) ndarray, writeable when the
    call updates it (checked here, before anything is written: a failed call
    leaves every buffer as it was)."""
    if a is None:
        return None
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray (it is updated in place), got {type(a).__name__}")
    if a.shape != (C,):
        raise ValueError(f"{name} must have shape ({C},), got {a.shape}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    if updated and not a.flags.writeable:
        raise ValueError(f"{name} is read-only, but this call updates it in place")
    return a


def _blend_running(buf, value, momentum):
    """buf = (1 - momentum) * buf + momentum * value(), in place; nothing (and
    value is not computed) when buf is None."""
    if buf is not None:
        buf *= 1.0 - momentum
        buf += (momentum * value()).astype(buf.dtype)


def _channel_run(x, layout, cdt, cpg, per_sample, weight, bias, eps, batch_stats,
                 st_mean, st_var, out, n_threads):
    """Run the channel forward kernel; returns y in x's axis order (into `out` if given)."""
    # the kernels take the data in its storage dtype, the parameters in the compute dtype
    w = layout.channel_vector(weight, "weight", x.dtype, cdt)
    b = layout.channel_vector(bias, "bias", x.dtype, cdt)
    data = layout.data
    y_k = None
    if out is not None:
        check_out(out, x, x.dtype)
        y_k = layout.to_kernel(out)
        if y_k is not None and y_k is not data and np.may_share_memory(y_k, data) and not (
                y_k.__array_interface__["data"][0] == data.__array_interface__["data"][0]):
            y_k = None  # partial overlap with x: go through a temporary
        if y_k is not None:
            _dispatch.kernels.channel_forward(data, y_k, layout.cl, layout.N, layout.C, layout.S, cpg,
                                     per_sample, w, b, eps, batch_stats, st_mean, st_var, n_threads)
            return out
    y_k = layout.empty(x.dtype)
    _dispatch.kernels.channel_forward(data, y_k, layout.cl, layout.N, layout.C, layout.S, cpg, per_sample,
                             w, b, eps, batch_stats, st_mean, st_var, n_threads)
    y = layout.restore(y_k)
    if out is not None:
        np.copyto(out, y)
        return out
    return y


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5, *, channel_axis=1, out=None, n_threads=None,
               return_stats=False):
    """Batch normalization, as torch.nn.functional.batch_norm.

    y = (x - mean_c) / sqrt(var_c + eps) * weight_c + bias_c per channel c.
    Training: mean and biased var over every axis but the channel axis, and
    running_mean / running_var (if given) updated in place:
    running = (1 - momentum) * running + momentum * batch statistic, with the
    unbiased variance.  Eval: the running statistics, folded into one
    scale-and-shift pass.

    Parameters
    ----------
    x : (N, C, *spatial) float array, or (N, *spatial, C) with channel_axis=-1.
    running_mean, running_var : float (C,) arrays or None (training only).
    weight, bias : (C,) arrays of x's dtype, optional.
    channel_axis : 1 (channels-first, default) or -1 (channels-last).
    return_stats : also return (mean, invstd) of shape (C,): the batch's in
        training, the running ones in eval; `batch_norm_backward` takes them.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((8, 3, 4, 4)).astype(np.float32)
    >>> rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    >>> y = batch_norm(x, rm, rv, training=True)
    >>> bool(abs(y.mean(axis=(0, 2, 3))).max() < 1e-5)
    True
    """
    fast = _dispatch.kernels.channel_norm_fast(0, x, running_mean, running_var, weight, bias, training,
                                      momentum, eps, None, channel_axis, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    if out_aliases(out, (weight, bias) + (() if training else (running_mean, running_var)),
                   (("running_mean", running_mean), ("running_var", running_var)) if training else ()):
        return into_out(out, batch_norm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                        channel_axis=channel_axis, n_threads=n_threads,
                                        return_stats=return_stats))
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    C = layout.C
    eps = check_eps(eps)
    momentum = check_momentum(momentum)
    running_mean = _running_buffer(running_mean, "running_mean", C, training)
    running_var = _running_buffer(running_var, "running_var", C, training)
    st_mean = np.empty(C, np.float64)
    st_var = np.empty(C, np.float64)
    if training:
        count = layout.N * layout.S
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when training=False")
        st_mean[:] = running_mean
        st_var[:] = running_var
    y = _channel_run(x, layout, cdt, 1, False, weight, bias, eps, training, st_mean, st_var,
                     out, n_threads)
    if training:
        _blend_running(running_mean, lambda: st_mean, momentum)
        _blend_running(running_var, lambda: st_var * (count / (count - 1)), momentum)
    if not return_stats:
        return y
    invstd = 1.0 / np.sqrt(st_var + eps)
    return y, st_mean.astype(cdt), invstd.astype(cdt)


def batch_norm_backward(grad_out, x, mean, invstd, weight=None, bias=None, training=True, *,
                        channel_axis=1, n_threads=None):
    """Gradients of `batch_norm`, given the (mean, invstd) it returned.

    Training, with xhat = (x - mean) * invstd and m values per channel:
    grad_x = invstd * w * (g - mean_c(g) - xhat * mean_c(g * xhat)).
    Eval: grad_x = g * w * invstd.  grad_weight = sum_c(g * xhat), grad_bias = sum_c(g).

    Returns (grad_x, grad_weight, grad_bias), None for a parameter that was None.
    """
    fast = _dispatch.kernels.channel_backward_fast(0, grad_out, x, mean, invstd, weight, bias,
                                          bool(training), None, channel_axis, n_threads)
    if fast is not NotImplemented:
        return single_value_stats(fast, x, invstd, bool(training))
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    mean = channel_stats_input(mean, "mean", (layout.C,))
    invstd = channel_stats_input(invstd, "invstd", (layout.C,))
    return _channel_backward_common(grad_out, x, layout, cdt, 1, False, mean, invstd,
                                    weight, bias, bool(training), n_threads)


def _channel_backward_common(grad_out, x, layout, cdt, cpg, per_sample, mean, rstd, weight, bias,
                             batch_stats, n_threads):
    grad_out = same_shape_input(grad_out, "grad_out", x)
    g = to_kernel_layout(grad_out, layout)
    w = layout.channel_vector(weight, "weight", x.dtype, cdt)
    if bias is not None:
        layout.channel_vector(bias, "bias", x.dtype, cdt)
    data = layout.data
    dx_k = layout.empty(x.dtype)
    grad_w = np.empty(layout.C, np.float64) if weight is not None else None
    grad_b = np.empty(layout.C, np.float64) if bias is not None else None
    _dispatch.kernels.channel_backward(g, data, dx_k, layout.cl, layout.N, layout.C, layout.S, cpg,
                              per_sample, w, mean, rstd, batch_stats, grad_w, grad_b, n_threads)
    dx = layout.restore(dx_k)
    return single_value_stats((dx,
                               None if grad_w is None else grad_w.astype(np.asarray(weight).dtype),
                               None if grad_b is None else grad_b.astype(np.asarray(bias).dtype)),
                              x, rstd, batch_stats)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5, *, channel_axis=1, out=None,
               n_threads=None, return_stats=False):
    """Group normalization, as torch.nn.functional.group_norm.

    The C channels are split into num_groups groups of C/num_groups adjacent
    channels; each (sample, group) is normalized with its own mean and biased
    variance, then y = xhat * weight_c + bias_c.

    Returns y, or (y, mean, rstd) with mean/rstd of shape (N, num_groups).
    """
    fast = _dispatch.kernels.channel_norm_fast(1, x, None, None, weight, bias, True, 0.0, eps, num_groups,
                                      channel_axis, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    if out_aliases(out, (weight, bias)):
        return into_out(out, group_norm(x, num_groups, weight, bias, eps, channel_axis=channel_axis,
                                        n_threads=n_threads, return_stats=return_stats))
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    cpg = check_groups(num_groups, layout.C)
    eps = check_eps(eps)
    n_stats = layout.N * int(num_groups)
    st_mean = np.empty(n_stats, np.float64)
    st_var = np.empty(n_stats, np.float64)
    y = _channel_run(x, layout, cdt, cpg, True, weight, bias, eps, True, st_mean, st_var,
                     out, n_threads)
    if not return_stats:
        return y
    shape = (layout.N, int(num_groups))
    return y, st_mean.astype(cdt).reshape(shape), (1.0 / np.sqrt(st_var + eps)).astype(cdt).reshape(shape)


def group_norm_backward(grad_out, x, num_groups, mean, rstd, weight=None, bias=None, *,
                        channel_axis=1, n_threads=None):
    """Gradients of `group_norm`: (grad_x, grad_weight, grad_bias)."""
    fast = _dispatch.kernels.channel_backward_fast(1, grad_out, x, mean, rstd, weight, bias, True, num_groups,
                                          channel_axis, n_threads)
    if fast is not NotImplemented:
        return single_value_stats(fast, x, rstd)
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    cpg = check_groups(num_groups, layout.C)
    shape = (layout.N, int(num_groups))
    mean = channel_stats_input(mean, "mean", shape)
    rstd = channel_stats_input(rstd, "rstd", shape)
    return _channel_backward_common(grad_out, x, layout, cdt, cpg, True, mean, rstd, weight, bias,
                                    True, n_threads)


def instance_norm(x, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5, *, channel_axis=1, out=None,
                  n_threads=None, return_stats=False):
    """Instance normalization, as torch.nn.functional.instance_norm.

    Each (sample, channel) is normalized over its spatial positions.  With
    use_input_stats and running statistics given, these are updated in place
    with the batch-mean of the per-instance mean and unbiased variance (as
    torch).  use_input_stats=False normalizes with the running statistics.

    Returns y, or (y, mean, rstd) with mean/rstd of shape (N, C).
    """
    fast = _dispatch.kernels.channel_norm_fast(2, x, running_mean, running_var, weight, bias,
                                               use_input_stats, momentum, eps, None, channel_axis, out,
                                               n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    if out_aliases(out, (weight, bias) + (() if use_input_stats else (running_mean, running_var)),
                   (("running_mean", running_mean), ("running_var", running_var)) if use_input_stats else ()):
        return into_out(out, instance_norm(x, running_mean, running_var, weight, bias, use_input_stats,
                                           momentum, eps, channel_axis=channel_axis, n_threads=n_threads,
                                           return_stats=return_stats))
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    N, C, S = layout.N, layout.C, layout.S
    if x.ndim < 3:
        raise ValueError(f"x must have at least 3 dimensions (N, C, *spatial), got shape {x.shape}")
    eps = check_eps(eps)
    momentum = check_momentum(momentum)
    running_mean = _running_buffer(running_mean, "running_mean", C, use_input_stats)
    running_var = _running_buffer(running_var, "running_var", C, use_input_stats)
    if use_input_stats:
        if S <= 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input size {x.shape}")
        st_mean = np.empty(N * C, np.float64)
        st_var = np.empty(N * C, np.float64)
        y = _channel_run(x, layout, cdt, 1, True, weight, bias, eps, True, st_mean, st_var,
                         out, n_threads)
        _blend_running(running_mean, lambda: st_mean.reshape(N, C).mean(axis=0), momentum)
        _blend_running(running_var, lambda: (st_var.reshape(N, C) * (S / (S - 1))).mean(axis=0), momentum)
        mean_nc, var_nc = st_mean, st_var
    else:
        if running_mean is None or running_var is None:
            raise ValueError("running_mean and running_var are required when use_input_stats=False")
        st_mean = np.asarray(running_mean, np.float64).copy()
        st_var = np.asarray(running_var, np.float64).copy()
        y = _channel_run(x, layout, cdt, 1, False, weight, bias, eps, False, st_mean, st_var,
                         out, n_threads)
        mean_nc, var_nc = np.tile(st_mean, N), np.tile(st_var, N)
    if not return_stats:
        return y
    return (y, mean_nc.astype(cdt).reshape(N, C),
            (1.0 / np.sqrt(var_nc + eps)).astype(cdt).reshape(N, C))


def instance_norm_backward(grad_out, x, mean, rstd, weight=None, bias=None, use_input_stats=True, *,
                           channel_axis=1, n_threads=None):
    """Gradients of `instance_norm`: (grad_x, grad_weight, grad_bias).

    use_input_stats=False: the statistics were running statistics (constants)."""
    fast = _dispatch.kernels.channel_backward_fast(2, grad_out, x, mean, rstd, weight, bias,
                                          bool(use_input_stats), None, channel_axis, n_threads)
    if fast is not NotImplemented:
        return single_value_stats(fast, x, rstd, bool(use_input_stats))
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    shape = (layout.N, layout.C)
    mean = channel_stats_input(mean, "mean", shape)
    rstd = channel_stats_input(rstd, "rstd", shape)
    return _channel_backward_common(grad_out, x, layout, cdt, 1, True, mean, rstd, weight, bias,
                                    bool(use_input_stats), n_threads)


def renorm_scalars(eps, momentum, r_max, d_max, running_mean, running_var):
    """Batch Renorm's scalar arguments checked (fastnorm.dask's too): (eps,
    momentum, r_max, d_max); the running statistics are required."""
    eps, momentum = check_eps(eps), check_momentum(momentum)
    r_max, d_max = _check_clip(r_max, d_max)
    if running_mean is None or running_var is None:
        raise ValueError("running_mean and running_var are required (batch_renorm corrects the batch "
                         "statistics towards them)")
    return eps, momentum, r_max, d_max


def _check_clip(r_max, d_max):
    for name, v in (("r_max", r_max), ("d_max", d_max)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a real number, got {v!r}")
    r_max, d_max = _as_float(r_max, "r_max"), _as_float(d_max, "d_max")
    if not r_max >= 1.0:
        raise ValueError(f"r_max must be >= 1, got {r_max!r}")
    if not d_max >= 0.0:
        raise ValueError(f"d_max must be >= 0, got {d_max!r}")
    return r_max, d_max


def renorm_factors(mean, var, running_mean, running_var, eps, r_max, d_max):
    """Batch Renorm's (r, d) per channel from the batch's mean and biased var."""
    sigma = np.sqrt(running_var.astype(np.float64) + eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.clip(np.sqrt(var + eps) / sigma, 1.0 / r_max, r_max)
        d = np.clip((mean - running_mean) / sigma, -d_max, d_max)
    return r, d


def renorm_update(running_mean, running_var, mean, var, momentum, eps):
    """The paper's running updates, on the mean and on sigma = sqrt(running_var + eps)."""
    sigma = np.sqrt(running_var.astype(np.float64) + eps)
    running_mean += (momentum * (mean - running_mean)).astype(running_mean.dtype)
    sigma += momentum * (np.sqrt(var + eps) - sigma)
    running_var[...] = np.maximum(sigma * sigma - eps, 0.0)


def batch_renorm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                 eps=1e-5, r_max=3.0, d_max=5.0, *, channel_axis=1, out=None, n_threads=None,
                 return_stats=False):
    """Batch Renormalization (Ioffe 2017).

    Training, per channel with the batch's mean mu_B and biased variance,
    sigma_B = sqrt(var_B + eps) and the running sigma = sqrt(running_var + eps):
    r = clip(sigma_B / sigma, 1/r_max, r_max), d = clip((mu_B - running_mean) / sigma, -d_max, d_max),
    y = ((x - mu_B) / sigma_B * r + d) * weight + bias, r and d held constant
    in the backward.  The running statistics are updated as the paper's
    Algorithm 1 (on the mean and on sigma, not on the variance):
    running_mean += momentum * (mu_B - running_mean),
    sigma += momentum * (sigma_B - sigma), stored as running_var = sigma^2 - eps,
    so that the buffers keep BatchNorm's names and eval-mode meaning.  The
    paper's schedule that raises r_max from 1 and d_max from 0 during
    training is the caller's (pass the current values).  Eval: BatchNorm's.

    Returns y, or (y, mean, invstd, r, d) with return_stats (each (C,); the
    running statistics, r = 1 and d = 0 in eval) for `batch_renorm_backward`.

    Examples
    --------
    >>> x = np.random.default_rng(0).standard_normal((16, 3, 4, 4)).astype(np.float32)
    >>> rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    >>> y = batch_renorm(x, rm, rv, training=True)
    >>> y.shape
    (16, 3, 4, 4)
    """
    if out_aliases(out, (weight, bias) + (() if training else (running_mean, running_var)),
                   (("running_mean", running_mean), ("running_var", running_var)) if training else ()):
        return into_out(out, batch_renorm(x, running_mean, running_var, weight, bias, training, momentum, eps,
                                          r_max, d_max, channel_axis=channel_axis, n_threads=n_threads,
                                          return_stats=return_stats))
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    C = layout.C
    eps, momentum, r_max, d_max = renorm_scalars(eps, momentum, r_max, d_max, running_mean, running_var)
    running_mean = _running_buffer(running_mean, "running_mean", C, training)
    running_var = _running_buffer(running_var, "running_var", C, training)
    w = layout.channel_vector(weight, "weight", x.dtype, np.float64)
    b = layout.channel_vector(bias, "bias", x.dtype, np.float64)
    w = np.ones(C) if w is None else w
    b = np.zeros(C) if b is None else b
    if training:
        count = layout.N * layout.S
        if count <= 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        mean, m2, n = np.empty(C), np.empty(C), np.empty(C)
        _dispatch.kernels.channel_moments(layout.data, layout.cl, layout.N, C, layout.S, mean, m2, n, n_threads)
        var = m2 / count
        r, d = renorm_factors(mean, var, running_mean, running_var, eps, r_max, d_max)
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
        r, d = np.ones(C), np.zeros(C)
    # y = (x - mean) / sqrt(var + eps) * (w r) + (w d + b): the eval-mode channel pass
    y = _channel_run(x, layout, cdt, 1, False, (w * r).astype(cdt), (w * d + b).astype(cdt), eps, False,
                     np.ascontiguousarray(mean, np.float64), np.ascontiguousarray(var, np.float64),
                     out, n_threads)
    if training:
        renorm_update(running_mean, running_var, mean, var, momentum, eps)
    if not return_stats:
        return y
    invstd = 1.0 / np.sqrt(var + eps)
    return y, mean.astype(cdt), invstd.astype(cdt), r.astype(cdt), d.astype(cdt)


def batch_renorm_backward(grad_out, x, mean, invstd, r, d, weight=None, bias=None, training=True, *,
                          channel_axis=1, n_threads=None):
    """Gradients of `batch_renorm`, r and d held constant (as the paper).

    With xhat = (x - mean) * invstd: training, grad_x is BatchNorm's
    training backward with the weight w * r; eval, grad_x = g * w * invstd.
    grad_weight = sum_c(g * (xhat * r + d)), grad_bias = sum_c(g).

    Returns (grad_x, grad_weight, grad_bias), None for a parameter that was None.
    """
    x, cdt = as_float_array(x, "x")
    layout = ChannelLayout(x, channel_axis)
    C = layout.C
    mean = channel_stats_input(mean, "mean", (C,))
    invstd = channel_stats_input(invstd, "invstd", (C,))
    r = channel_stats_input(r, "r", (C,))
    d = channel_stats_input(d, "d", (C,))
    grad_out = same_shape_input(grad_out, "grad_out", x)
    w = layout.channel_vector(weight, "weight", x.dtype, np.float64)
    if bias is not None:
        layout.channel_vector(bias, "bias", x.dtype, np.float64)
    w = np.ones(C) if w is None else w
    g = to_kernel_layout(grad_out, layout)
    dx_k = layout.empty(x.dtype)
    sum_gxhat, sum_g = np.empty(C), np.empty(C)
    _dispatch.kernels.channel_backward(g, layout.data, dx_k, layout.cl, layout.N, C, layout.S, 1, False,
                                       (w * r).astype(cdt), mean, invstd, bool(training), sum_gxhat, sum_g,
                                       n_threads)
    grad_w = None if weight is None else (r * sum_gxhat + d * sum_g).astype(np.asarray(weight).dtype)
    grad_b = None if bias is None else sum_g.astype(np.asarray(bias).dtype)
    return layout.restore(dx_k), grad_w, grad_b
