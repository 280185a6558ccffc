"""Array arguments: layout canonicalization, the output policy, saved statistics.

One mechanism per concern, shared by every op: `normalized_dims` and
`as_rows` (the row layout: a 2-D view with contiguous rows), `ChannelLayout`
(the channel layout, channels-first or -last, features being channels with
S = 1), `vector_param` / `ChannelLayout.channel_vector` (parameters),
`Output`, `channel_output` / `restored_output` (where a kernel writes,
`out=` and in place included), `stats_array` / `channel_stats_input`
(saved statistics given to a backward).  The dtype policy is
fastnorm._dtypes, the scalar checks fastnorm._args.
"""
import numbers

import numpy as np

from ._args import check_eps  # noqa: F401 (re-exported)
from ._buffers import empty as _empty
from ._dtypes import as_float_array, cast, check_param_dtype, compute_dtype, native_order  # noqa: F401 (re-exported)


def normalized_dims(x, normalized_shape, name="normalized_shape"):
    """Canonical normalized shape: (tuple of trailing dims, their product).

    None means the last dim; an int means (int,).  It must equal x's trailing
    dims, as in torch.nn.functional.layer_norm."""
    if type(normalized_shape) is int:  # fast path
        n = x.shape[-1] if x.ndim else -1
        if n == normalized_shape:
            return (n,), n
    if normalized_shape is None:
        if x.ndim == 0:
            raise ValueError("x must have at least 1 dimension, got a 0-d array")
        shape = x.shape[-1:]
    else:
        if isinstance(normalized_shape, (numbers.Integral, np.integer)) and not isinstance(normalized_shape, bool):
            shape = (int(normalized_shape),)
        else:
            try:
                shape = tuple(normalized_shape)
            except TypeError:
                shape = None
            if (shape is None or isinstance(normalized_shape, (str, bytes))
                    or not all(isinstance(d, (numbers.Integral, np.integer)) and not isinstance(d, bool)
                               for d in shape)):
                raise TypeError(
                    f"{name} must be an int or a tuple of ints, got {normalized_shape!r}"
                )
            shape = tuple(int(d) for d in shape)
        if len(shape) == 0 or len(shape) > x.ndim or x.shape[x.ndim - len(shape):] != shape:
            raise ValueError(
                f"{name}={shape} must equal the trailing dimensions of x, "
                f"but x has shape {x.shape}"
            )
    size = 1
    for d in shape:
        size *= d
    return shape, size


def as_rows(a, M, D, dtype):
    """(M, D) view of `a` in `dtype` whose rows are contiguous (any row stride);
    copies only when no such view exists or the dtype differs."""
    if a.dtype != dtype:
        return cast(np.ascontiguousarray(a), dtype).reshape(M, D)
    a2 = a if a.ndim == 2 and a.shape[0] == M else a.reshape(M, D)
    if D > 1 and M > 0 and a2.strides[1] != a2.itemsize:
        a2 = np.ascontiguousarray(a2)
    return a2


def vector_param(p, name, shape, D, data_dtype, cdt):
    """A weight or bias: None, or a contiguous array of `shape` flattened to (D,)."""
    if p is None:
        return None
    if type(p) is np.ndarray and p.dtype is cdt and p.shape == shape and p.flags.c_contiguous and p.flags.aligned:
        return p if p.ndim == 1 else p.reshape(D)  # fast path
    if type(p) is not np.ndarray:
        p = np.asarray(p)
    if p.shape != shape:
        raise ValueError(f"{name} must have shape {shape} (the normalized shape), got {p.shape}")
    p = check_param_dtype(p, name, data_dtype, cdt)
    return cast(p, cdt).reshape(D)


def stats_array(s, name, lead_shape, M, cdt):
    """Saved statistics given to a backward: shaped like x's leading dims
    (torch's keep-dims shape, with trailing 1s, is accepted too)."""
    if s is None:
        raise TypeError(f"{name} must be the array the forward returned, got None")
    if type(s) is not np.ndarray:
        s = np.asarray(s)
    if s.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {s.dtype}")
    if s.shape != lead_shape and not (
        s.ndim > len(lead_shape) and s.shape[: len(lead_shape)] == lead_shape
        and all(d == 1 for d in s.shape[len(lead_shape):])
    ):
        raise ValueError(
            f"{name} must have shape {lead_shape} (x's leading dimensions), got {s.shape}"
        )
    return np.ascontiguousarray(s, dtype=cdt).reshape(M)


def same_shape_input(a, name, x, x_name="x"):
    """An array that must match x in shape and dtype (e.g. grad_out)."""
    if type(a) is not np.ndarray:
        if a is None:
            raise TypeError(f"{name} must be an array, got None")
        a = np.asarray(a)
    if a.shape != x.shape:
        raise ValueError(f"{name} must have the shape of {x_name} {x.shape}, got {a.shape}")
    a = native_order(a)  # x is native already (as_float_array)
    if a.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of {x_name} ({x.dtype}), got {a.dtype}")
    return a


def out_aliases(out, reads=(), writes=()):
    """The one aliasing rule for `out=` beside x (x itself may always be out:
    in place), for every op: an array argument the op only reads (weight,
    bias, tau, given statistics) may share memory with out -- the result is
    computed first and copied into out after (True: the caller recomputes with
    out=None and calls into_out); one the op also updates (running
    statistics: `writes`, (name, array) pairs) may not, as either write would
    destroy the other: a ValueError naming it."""
    if out is None:
        return False
    for name, a in writes:
        if type(a) is np.ndarray and np.may_share_memory(out, a):
            raise ValueError(f"out must not share memory with {name}: the op writes both")
    if type(out) is np.ndarray and not out.flags.aligned:
        return True  # the kernels do not store to misaligned memory: computed, then copied in
    return any(type(a) is np.ndarray and np.may_share_memory(out, a) for a in reads)


def into_out(out, result):
    """Copy an op's output (the first element of a result tuple) into `out`
    and return the result with `out` in its place (see out_aliases)."""
    y = result[0] if isinstance(result, tuple) else result
    check_out(out, y, y.dtype)
    np.copyto(out, y)
    return (out,) + result[1:] if isinstance(result, tuple) else out


def check_out(out, x, data_dtype, name="out"):
    """`out` must be a writeable ndarray of x's shape and dtype."""
    if type(out) is not np.ndarray:
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{name} must have shape {x.shape}, got {out.shape}")
    if out.dtype != data_dtype:
        raise TypeError(f"{name} must have dtype {data_dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")


class Output:
    """Where a kernel writes an output shaped like x.

    Without `out`, a fresh C-contiguous array.  With `out` (validated: an
    ndarray of x's shape and dtype, writeable), the kernel writes straight into
    it when it has contiguous rows and cannot partially overlap the inputs
    (`out is x` is fine: every kernel reads a row before writing it);
    otherwise into a temporary that `finish` copies into `out`."""

    __slots__ = ("result", "rows", "_target", "_dtype")

    def __init__(self, x, M, D, data_dtype, cdt, out=None, inputs=(), name="out"):
        self._target = None
        self._dtype = data_dtype
        if out is None:
            if data_dtype == cdt:
                self.result = _empty(x.shape, cdt)
                self.rows = self.result.reshape(M, D)
            else:
                self.rows = np.empty((M, D), dtype=cdt)
                self.result = None
            return
        check_out(out, x, data_dtype, name)
        self.result = out
        direct = out.dtype == cdt and out.flags.aligned  # misaligned: a temporary, copied in
        if direct:
            try:
                rows = np.reshape(out, (M, D), copy=False)  # raises instead of copying
            except ValueError:
                rows = None
            if rows is None or (D > 1 and M > 0 and rows.strides[1] != rows.itemsize):
                direct = False
        if direct:
            for a in inputs:
                if a is not out and np.may_share_memory(a, out):
                    direct = False
                    break
        if direct:
            self.rows = rows
        else:
            self.rows = np.empty((M, D), dtype=cdt)
            self._target = out

    def finish(self, shape):
        """The output array (copied into `out` when it was not written directly)."""
        if self._target is not None:
            np.copyto(self._target, cast(self.rows, self._dtype).reshape(shape))
            return self._target
        if self.result is None:  # computed in a wider dtype than the data
            return cast(self.rows, self._dtype).reshape(shape)
        return self.result


class ChannelLayout:
    """x (N, C, *spatial) or channels-last (N, *spatial, C) canonicalized for
    the channel kernels: `data` is C-contiguous (N, C, S) (cl False) or
    (N, S, C) (cl True), a view of x when x's memory already has either
    layout, else a copy.  `restore` gives an array of the kernel layout back
    in x's axis order."""

    __slots__ = ("data", "cl", "N", "C", "S", "axis", "moved")

    def __init__(self, x, channel_axis, name="x"):
        if x.ndim < 2:
            raise ValueError(f"{name} must have at least 2 dimensions (N, C, ...), got shape {x.shape}")
        if isinstance(channel_axis, bool) or channel_axis not in (1, -1, x.ndim - 1):
            raise ValueError(f"channel_axis must be 1 (channels-first) or -1 (channels-last), "
                             f"got {channel_axis!r}")
        axis = 1 if channel_axis == 1 else x.ndim - 1
        self.axis = axis
        self.N = x.shape[0]
        self.C = x.shape[axis]
        S = 1
        for i, d in enumerate(x.shape):
            if i != 0 and i != axis:
                S *= d
        self.S = S
        if x.flags.c_contiguous and S > 1:  # the common case, without moveaxis
            self.data, self.cl, self.moved = x, axis != 1, False
            return
        # the layout x's memory already has, if any; channels-first wins ties
        cf_view = x if axis == 1 else np.moveaxis(x, axis, 1)
        cl_view = np.moveaxis(x, axis, -1) if axis != x.ndim - 1 else x
        if S == 1:  # (N, C): rows of C
            self.data, self.cl, self.moved = np.ascontiguousarray(cl_view), True, axis != x.ndim - 1
        elif cf_view.flags.c_contiguous:
            self.data, self.cl, self.moved = cf_view, False, axis != 1
        elif cl_view.flags.c_contiguous:
            self.data, self.cl, self.moved = cl_view, True, axis != x.ndim - 1
        elif axis == 1:
            self.data, self.cl, self.moved = np.ascontiguousarray(x), False, False
        else:
            self.data, self.cl, self.moved = np.ascontiguousarray(x), True, False

    def empty(self, dtype):
        return _empty(self.data.shape, dtype)

    def to_kernel(self, a):
        """A view of `a` (shaped like x) in the kernel layout, or None when
        a's memory does not have that layout (then a copy is needed)."""
        if self.moved:
            a = np.moveaxis(a, self.axis, -1 if self.cl else 1)
        if a.shape != self.data.shape or not a.flags.c_contiguous or not a.flags.aligned:
            return None
        return a

    def restore(self, a):
        """An array in the kernel layout (shaped like `data`) in x's axis order."""
        if not self.moved:
            return a
        return np.moveaxis(a, 1, self.axis) if not self.cl else np.moveaxis(a, -1, self.axis)

    def channel_vector(self, p, name, dtype, cdt=None):
        """weight / bias: None or a contiguous (C,) array, in x's dtype (or
        float32 for 16-bit x), returned in `cdt` (default: as given)."""
        if p is None:
            return None
        p = np.asarray(p)
        if p.shape != (self.C,):
            raise ValueError(f"{name} must have shape ({self.C},) (the channels), got {p.shape}")
        p = check_param_dtype(p, name, dtype, compute_dtype(dtype))
        return np.ascontiguousarray(p) if cdt is None else cast(np.ascontiguousarray(p), cdt)


def lead_dims(x, nd):
    """x's leading shape (the dims not normalized) and its size."""
    lead = x.shape[: x.ndim - nd]
    M = 1
    for d in lead:
        M *= d
    return lead, M


def stats_out(M, cdt, want):
    return np.empty(M, dtype=cdt) if want else None


def to_kernel_layout(a, layout):
    """`a` (shaped like x) in the kernel layout of `layout`, C-contiguous."""
    if layout.S == 1 or layout.cl:
        v = np.moveaxis(a, layout.axis, -1) if layout.axis != a.ndim - 1 else a
    else:
        v = np.moveaxis(a, layout.axis, 1) if layout.axis != 1 else a
    return np.ascontiguousarray(v)


def channel_stats_input(s, name, shape):
    """A saved statistic handed back to a backward: float64, flat, checked
    against the shape the forward gave it."""
    if s is None:
        raise TypeError(f"{name} must be the array the forward returned, got None")
    s = np.asarray(s)
    if s.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {s.dtype}")
    if s.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {s.shape}")
    return np.ascontiguousarray(s, dtype=np.float64).reshape(-1)


def restored_output(x, y, cdt, out):
    """y (already in x's axis order) in x's dtype, copied into `out` if given."""
    y = cast(y, x.dtype)
    if out is not None:
        check_out(out, x, x.dtype)
        np.copyto(out, y)
        return out
    return y


def channel_output(x, layout, data, cdt, out):
    """Where a kernel reading `data` (x in the kernel's layout) writes: straight
    into `out` when out's memory has that layout, is of the compute dtype and
    is clear of the kernel's input; else into a fresh buffer
    (_restored_output copies it).  Returns (buffer, direct)."""
    if out is not None:
        check_out(out, x, x.dtype)
        if out.dtype == cdt and not np.may_share_memory(out, data):
            view = layout.to_kernel(out)
            if view is not None and view.shape == data.shape:
                return view, True
    return _empty(data.shape, cdt), False


def single_value_stats(grads, x, stat, centred=True):
    """The backward of a centred normalization whose every statistic is over
    one value (a LayerNorm row of width 1, a BatchNorm channel of one value,
    ...): x - mean is 0 there, the output does not depend on x and grad_x is
    exactly 0, which the kernels' fused products (g * w rounded once in the
    sums, once more inside an fma) miss by a rounding.  Multiplying by 0
    keeps NaN (and turns inf into NaN) where the inputs held them."""
    if centred and np.size(stat) == np.size(x) and np.size(x):
        gx = grads[0]
        gx *= gx.dtype.type(0)
    return grads
