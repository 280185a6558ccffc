"""Lp normalization (and cosine normalization from it) and weight normalization
(kernels in ``_normalize_kernels.pxi``)."""
import math
import numpy as np

from .. import _dispatch
from .._buffers import empty as _empty
from .._args import check_eps, check_p, check_dim
from .._dtypes import cast, check_param_dtype, native_order
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

__all__ = ["normalize", "normalize_backward", "weight_norm", "weight_norm_backward", "cosine_linear",
           "cosine_linear_backward"]


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


# ---------------------------------------------------------------- cosine-normalized linear layer

def _cosine_operands(x, weight, centered):
    """x as (B, I) rows and the weight as (O, I), both in the compute dtype
    (centred per row when `centered`), x's leading shape, and the dtypes."""
    x, cdt = as_float_array(x, "x")
    if x.ndim < 1:
        raise ValueError("x must have at least 1 dimension (..., in_features), got a 0-d array")
    if weight is None:
        raise TypeError("weight must be an array of shape (out_features, in_features), got None")
    w = np.asarray(weight)
    if w.ndim != 2 or w.shape[1] != x.shape[-1]:
        raise ValueError(f"weight must have shape (out_features, {x.shape[-1]}) (x's last dim is in_features), "
                         f"got {w.shape}")
    w = check_param_dtype(w, "weight", x.dtype, cdt)
    lead = x.shape[:-1]
    X = cast(np.ascontiguousarray(x), cdt).reshape(-1, x.shape[-1])
    W = cast(np.ascontiguousarray(w), cdt)
    if centered:
        X = X - X.mean(1, keepdims=True)
        W = W - W.mean(1, keepdims=True)
    return x, X, W, lead, cdt


# The elementwise passes around the BLAS products run on one thread unless
# n_threads says otherwise: the BLAS's own threads spin for a while after a
# product, and an OpenMP team started then competes with them for the cores
# (measured, 2 cores: cosine_linear forward (4096, 1024) x (1024, 1024) 77 ms
# with two-thread passes, NumPy's single-threaded composition 46 ms).
_BESIDE_BLAS = 1


def _row_dots(a, b, n_threads):
    """sum(a * b) per row of two C-contiguous (R, I) arrays of one dtype, in
    one threaded pass (the per-statistic sums, a statistic per row; float
    lanes added to double per piece)."""
    R, I = a.shape
    s, sab = np.empty(R), np.empty(R)
    _dispatch.kernels.stat_sums(np.ascontiguousarray(a), np.ascontiguousarray(b), R, 1, I, 1,
                                np.zeros(R, a.dtype), s, sab, n_threads)
    return sab


def _row_norms(a, n_threads):
    """Euclidean norms of a's rows."""
    return np.sqrt(_row_dots(a, a, n_threads))


# rows whose norm lies outside [2^-60, 2^60] enter the product scaled by a
# power of two (exact): unscaled, their products would fall into float32's
# subnormals (lost digits) or overflow; the cosine is scale-invariant
_NORM_SAFE = (2.0 ** -60, 2.0 ** 60)


def _unit_rows(A, norms, eps, cdt):
    """(A', r, e): A's rows divided by max(norm, eps) are r * A' per row, where
    A' is A but for the rows whose norm is out of _NORM_SAFE, scaled by 2^-e
    (e the norm's exponent, 0 elsewhere; r then 2^e / max(norm, eps), O(1)).
    r is float64; e is None when no row needed it."""
    r = 1.0 / np.maximum(norms, eps)
    bad = np.isfinite(norms) & (norms > 0) & ((norms < _NORM_SAFE[0]) | (norms > _NORM_SAFE[1]))
    if not bad.any():
        return A, r, None
    e = np.where(bad, np.frexp(np.where(bad, norms, 1.0))[1], 0)
    A = np.ldexp(A.astype(np.float64), -e[:, None]).astype(cdt)
    return A, np.ldexp(r, e), e


def cosine_linear(x, weight, *, centered=False, eps=1e-12, out=None, n_threads=None, return_stats=False):
    """The cosine-normalized fully connected layer (Luo et al. 2017, "Cosine
    Normalization"): y = (x / ||x||) @ (W / ||W_rows||)^T, every output the
    cosine of an input row and a weight row; ``centered=True`` subtracts
    each row's mean first (the Pearson correlation form).  Norms are floored
    at eps, as torch.nn.functional.normalize.

    Fused: no normalized copy of the weight (or of x) is built; the product
    x @ W^T (NumPy's BLAS, into a cached buffer or `out`) is scaled in place
    by 1/||x|| per row and 1/||W_o|| per column, so a call costs one read of
    W for its row norms beside the product (a cache of the norms would cost
    the same read to validate).  float16 / bfloat16 are multiplied in
    float32 (NumPy has no 16-bit matrix product) and rounded once.  The
    products run on NumPy's BLAS with its thread count (threadpoolctl sets
    it); `n_threads` is the elementwise passes' (default 1: see _BESIDE_BLAS).

    x: (..., in_features); weight: (out_features, in_features).  Returns y
    (..., out_features), or (y, x_norm, w_norm) with return_stats (the
    norms before the eps floor, of the centred rows when centered).

    Examples
    --------
    >>> x = np.array([[3.0, 4.0]]); w = np.array([[1.0, 0.0], [0.0, 2.0]])
    >>> cosine_linear(x, w)
    array([[0.6, 0.8]])
    """
    x, X, W, lead, cdt = _cosine_operands(x, weight, centered)
    eps = check_eps(eps)
    n_threads = _BESIDE_BLAS if n_threads is None else n_threads
    O = W.shape[0]
    nx, nw = _row_norms(X, n_threads), _row_norms(W, n_threads)
    X, rx, _ = _unit_rows(X, nx, eps, cdt)
    W, rw, _ = _unit_rows(W, nw, eps, cdt)
    rx, rw = rx.astype(cdt), rw.astype(cdt)
    direct = False
    if out is not None:
        check_out(out, np.empty(lead + (O,), x.dtype), x.dtype)
        direct = (out.dtype == cdt and out.flags.c_contiguous and out.flags.aligned
                  and not np.may_share_memory(out, X) and not np.may_share_memory(out, W))
    P = out.reshape(-1, O) if direct else _empty((X.shape[0], O), cdt)
    np.matmul(X, W.T, out=P)
    # P *= rx per row, then rw per column: two threaded in-place passes (a
    # statistic per row, then one per column of the rows)
    B = P.shape[0]
    zb, zo = np.zeros(B, cdt), np.zeros(O, cdt)
    _dispatch.kernels.stat_apply(P, P, P, B, 1, O, 1, zb, zb, rx, zb, n_threads)
    _dispatch.kernels.stat_apply(P, P, P, B, O, 1, B, zo, zo, rw, zo, n_threads)
    if direct:
        y = out
    else:
        y = cast(P, x.dtype).reshape(lead + (O,))
        if out is not None:
            np.copyto(out, y)
            y = out
    if not return_stats:
        return y
    return y, nx.astype(cdt).reshape(lead), nw.astype(cdt)


def _minus_row_multiple(a, rows, coef, cdt, n_threads):
    """a -= rows * coef[:, None] in place (one threaded pass: the
    per-statistic kernel with a statistic per row)."""
    R, I = a.shape
    zero = np.zeros(R, cdt)
    _dispatch.kernels.stat_apply(a, np.ascontiguousarray(rows), a, R, 1, I, 1, zero, np.ones(R, cdt),
                                 np.ascontiguousarray(-coef, cdt), zero, n_threads)


def cosine_linear_backward(grad_out, x, weight, x_norm, w_norm, *, centered=False, eps=1e-12, n_threads=None):
    """Gradients of `cosine_linear`: (grad_x, grad_weight).

    With H = grad_out / (||x|| ||W_o||) elementwise: grad_x = H @ W - x *
    sum_o(grad_out * y) / ||x||^2, grad_W = H^T @ x - W * sum_b(grad_out * y) /
    ||W_o||^2 (no second term where a norm is under eps: the floor is
    constant there); centred, each row's gradient has its mean removed.
    """
    x, X, W, lead, cdt = _cosine_operands(x, weight, centered)
    eps = check_eps(eps)
    n_threads = _BESIDE_BLAS if n_threads is None else n_threads
    O, I = W.shape
    grad_out = same_shape_input(grad_out, "grad_out", np.empty(lead + (O,), x.dtype), "y")
    nx = stats_array(x_norm, "x_norm", lead, X.shape[0], np.float64)
    nw = np.asarray(w_norm, np.float64).reshape(-1)
    if nw.shape != (O,):
        raise ValueError(f"w_norm must have shape ({O},), got {np.shape(w_norm)}")
    G = cast(np.ascontiguousarray(grad_out), cdt).reshape(-1, O)
    # rows out of _NORM_SAFE enter scaled by 2^-e (their products would
    # underflow or overflow in float32); each gradient is then
    # 2^-e (g' - A' r'^2 s') in the scaled operands, the same formula
    X, rx, ex = _unit_rows(X, nx, eps, cdt)
    W, rw, ew = _unit_rows(W, nw, eps, cdt)
    H = _empty(G.shape, cdt)
    np.multiply(G, rx.astype(cdt)[:, None], out=H)
    np.multiply(H, rw.astype(cdt)[None, :], out=H)
    gx = np.matmul(H, W, out=_empty(X.shape, cdt))      # H @ W, then the norm's term
    gW = np.matmul(H.T, X, out=_empty(W.shape, cdt))    # H^T @ x, likewise
    del H
    # sum_o grad_out * y = sum_o H * (x @ W^T) = rowsum(x * (H @ W)), and likewise for W
    sx = _row_dots(X, gx, n_threads)
    sw = _row_dots(W, gW, n_threads)
    _minus_row_multiple(gx, X, np.where(nx > eps, rx * rx * sx, 0.0), cdt, n_threads)
    _minus_row_multiple(gW, W, np.where(nw > eps, rw * rw * sw, 0.0), cdt, n_threads)
    if I == 1:  # a row of one value normalizes to +-1, a constant: its gradient is exactly 0 (NaN kept)
        gx[nx > eps] *= 0
        gW[nw > eps] *= 0
    for grad, e in ((gx, ex), (gW, ew)):
        if e is not None:
            grad[...] = np.ldexp(grad.astype(np.float64), -e[:, None]).astype(cdt)
    if centered:
        gx -= gx.mean(1, keepdims=True)
        gW -= gW.mean(1, keepdims=True)
    return cast(gx, x.dtype).reshape(x.shape), cast(gW, native_order(np.asarray(weight)).dtype)
