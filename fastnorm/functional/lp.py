"""Lp normalization (and cosine normalization from it) and weight normalization
(kernels in ``_normalize_kernels.pxi``)."""
import math
import numpy as np

from .. import _dispatch
from .._buffers import empty as _empty
from .._args import check_eps, check_p, check_dim
from .._dtypes import cast, check_param_dtype
from .._validation import (
    into_out,
    out_aliases,
    Output,
    as_float_array,
    as_rows,
    check_out,
    same_shape_input,
    stats_array,
)

__all__ = ["normalize", "normalize_backward", "weight_norm", "weight_norm_backward"]


def normalize(x, p=2.0, dim=1, eps=1e-12, *, out=None, n_threads=None, return_stats=False):
    """Lp normalization along `dim`, as torch.nn.functional.normalize.

    y = x / max(||x||_p, eps), the norm taken over `dim` for every other index.
    Cosine normalization of a linear layer composes from it:
    ``normalize(x, dim=-1) @ normalize(w, dim=-1).T`` (w of shape (out, in)).

    Parameters
    ----------
    x : float array.  p : p > 0, or inf for max |x| (default 2).  dim : int (default 1, as torch).
    eps : the floor of the norm.  out, n_threads : as the other ops.
    return_stats : also return ``norm`` = ||x||_p (x's shape without `dim`),
        for `normalize_backward`.

    The last dim runs in place on contiguous rows (memory speed for p = 2);
    another dim is moved last through a copy.

    Examples
    --------
    >>> normalize(np.array([[3.0, 4.0]]), dim=-1)
    array([[0.6, 0.8]])
    """
    fast = _dispatch.kernels.normalize_fast(x, p, dim, eps, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension, got a 0-d array")
    p = check_p(p)
    dim = check_dim(dim, x.ndim)
    eps = check_eps(eps)
    xm = x if dim == x.ndim - 1 else np.moveaxis(x, dim, -1)
    D = xm.shape[-1]
    M = xm.size // D if D else int(math.prod(xm.shape[:-1]))
    rows = as_rows(xm, M, D, x.dtype)
    norms = np.empty(M, dtype=cdt) if return_stats else None
    if dim == x.ndim - 1:  # rows of x: the output allocator handles out= and in place
        y = Output(x, M, D, x.dtype, x.dtype, out, (x,))
        if D > 0:
            _dispatch.kernels.normalize_forward(rows, y.rows, p, eps, norms, n_threads)
        result = y.finish(x.shape)
    else:
        if out is not None:
            check_out(out, x, x.dtype)
        y_rows = np.empty((M, D), dtype=x.dtype)
        if D > 0:
            _dispatch.kernels.normalize_forward(rows, y_rows, p, eps, norms, n_threads)
        result = np.moveaxis(y_rows.reshape(xm.shape), -1, dim)
        if out is not None:
            np.copyto(out, result)
            result = out
    if norms is not None and D == 0:
        norms.fill(0)
    if not return_stats:
        return result
    return result, norms.reshape(xm.shape[:-1])


def normalize_backward(grad_out, x, norm, p=2.0, dim=1, eps=1e-12, *, n_threads=None):
    """Gradient of `normalize` w.r.t. x, given the ``norm`` it returned.

    With N = ||x||_p along `dim`: where N >= eps,
    grad_x = g / N - sum(g * x) / N^(p+1) * sign(x) |x|^(p-1); elsewhere g / eps.
    p = inf: the norm's gradient goes to the elements with |x| = N, split
    evenly between ties (as torch).
    """
    fast = _dispatch.kernels.normalize_backward_fast(grad_out, x, norm, p, dim, eps, n_threads)
    if fast is not NotImplemented:
        return fast
    x, cdt = as_float_array(x, "x")
    if x.ndim == 0:
        raise ValueError("x must have at least 1 dimension, got a 0-d array")
    grad_out = same_shape_input(grad_out, "grad_out", x)
    p = check_p(p)
    dim = check_dim(dim, x.ndim)
    eps = check_eps(eps)
    xm = x if dim == x.ndim - 1 else np.moveaxis(x, dim, -1)
    gm = grad_out if dim == x.ndim - 1 else np.moveaxis(grad_out, dim, -1)
    D = xm.shape[-1]
    M = int(math.prod(xm.shape[:-1]))
    norm = stats_array(norm, "norm", xm.shape[:-1], M, cdt)
    dx = np.empty((M, D), dtype=x.dtype)
    if D > 0:
        _dispatch.kernels.normalize_backward(as_rows(gm, M, D, x.dtype), as_rows(xm, M, D, x.dtype), norm, dx,
                                    p, eps, n_threads)
    result = dx.reshape(xm.shape)
    if dim != x.ndim - 1:
        result = np.moveaxis(result, -1, dim)
    return result


def _weight_rows(v, dim, name="v"):
    """v as (rows, n): rows along `dim` (moved first), or one row (dim=None)."""
    if dim is None:
        vm = v.reshape(1, -1) if v.size else v.reshape(1, 0)
        return vm, 1, v.size, (lambda a: a.reshape(v.shape)), None
    d = check_dim(dim, v.ndim)
    moved = v if d == 0 else np.moveaxis(v, d, 0)
    M = moved.shape[0]
    n = int(math.prod(moved.shape[1:]))
    if d == 0:
        return moved, M, n, (lambda a: a.reshape(moved.shape)), d
    return moved, M, n, (lambda a: np.moveaxis(a.reshape(moved.shape), 0, d)), d


def _g_shape(v, d):
    """torch's shape for g and the norm: v's size along dim, 1 elsewhere."""
    if d is None:
        return ()
    return tuple(v.shape[i] if i == d else 1 for i in range(v.ndim))


def _g_vector(g, v, d, M, cdt):
    if g is None:
        raise TypeError("g must be an array, got None")
    g = np.asarray(g)
    g = check_param_dtype(g, "g", v.dtype, cdt)
    if g.size != M or (g.ndim > 1 and g.shape != _g_shape(v, d)):
        raise ValueError(f"g must have shape {_g_shape(v, d)} (or ({M},)), got {g.shape}")
    return cast(np.ascontiguousarray(g), cdt).reshape(M)


def weight_norm(v, g, dim=0, *, centered=False, out=None, n_threads=None, return_stats=False):
    """Weight normalization, as torch._weight_norm: w = g * v / ||v||.

    The norm is taken over every dim but `dim` (dim=None: one norm over the
    whole tensor); g has v's size along `dim` (torch's shape (out, 1, ...) or
    flat).  centered=True is centered weight normalization: v minus its mean
    over the same dims is normalized instead.

    Returns w, or (w, norm) with return_stats, norm shaped like torch's
    (v's size along dim, 1 elsewhere), for `weight_norm_backward`.

    Examples
    --------
    >>> weight_norm(np.array([[3.0, 4.0]]), np.array([[10.0]]))
    array([[6., 8.]])
    """
    fast = _dispatch.kernels.weight_norm_fast(v, g, dim, centered, out, n_threads, return_stats)
    if fast is not NotImplemented:
        return fast
    if out_aliases(out, (g,)):
        return into_out(out, weight_norm(v, g, dim, centered=centered, n_threads=n_threads,
                                         return_stats=return_stats))
    v, cdt = as_float_array(v, "v")
    if v.ndim == 0:
        raise ValueError("v must have at least 1 dimension, got a 0-d array")
    vm, M, n, restore, d = _weight_rows(v, dim)
    gv = _g_vector(g, v, d, M, cdt)
    rows = as_rows(vm, M, n, v.dtype)  # the kernels stage 16-bit rows through float32
    w_rows = _empty((M, n), v.dtype)
    norms = np.empty(M, np.float64)
    means = np.empty(M, np.float64)
    _dispatch.kernels.weight_norm_forward(rows, w_rows, gv, bool(centered), norms, means, n_threads)
    w = restore(w_rows)
    if out is not None:
        check_out(out, v, v.dtype, "out")
        np.copyto(out, w)
        w = out
    if not return_stats:
        return w
    return w, norms.astype(cdt).reshape(_g_shape(v, d))


def weight_norm_backward(grad_w, v, g, norm, dim=0, *, centered=False, n_threads=None):
    """Gradients of `weight_norm`: (grad_v, grad_g).

    With u = v (minus its mean when centered), N = ||u||, d = sum(grad_w * u):
    grad_g = d / N; grad_v = g / N * (grad_w - u * d / N^2), minus its mean
    over the normalized dims when centered.
    """
    fast = _dispatch.kernels.weight_norm_backward_fast(grad_w, v, g, norm, dim, centered, n_threads)
    if fast is not NotImplemented:
        return fast
    v, cdt = as_float_array(v, "v")
    grad_w = same_shape_input(grad_w, "grad_w", v, "v")
    vm, M, n, restore, d = _weight_rows(v, dim)
    gm = _weight_rows(grad_w, dim)[0]
    gv = _g_vector(g, v, d, M, cdt)
    norm = np.asarray(norm)
    if norm.size != M or (norm.ndim > 1 and norm.shape != _g_shape(v, d)):
        raise ValueError(f"norm must have shape {_g_shape(v, d)}, got {norm.shape}")
    if norm.dtype.kind != "f":
        raise TypeError(f"norm must be a floating-point array, got dtype {norm.dtype}")
    norm = np.ascontiguousarray(norm, dtype=cdt).reshape(M)
    grad_v = _empty((M, n), v.dtype)
    grad_g = np.empty(M, cdt)
    _dispatch.kernels.weight_norm_backward(as_rows(gm, M, n, v.dtype), as_rows(vm, M, n, v.dtype),
                                           grad_v, gv, bool(centered), norm, grad_g, n_threads)
    g = np.asarray(g)
    return restore(grad_v), cast(grad_g, g.dtype).reshape(g.shape)
