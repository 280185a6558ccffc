"""The dtype policy: which storage dtypes fastnorm takes, what it computes them in.

| storage  | compute | kernels                                              |
|----------|---------|------------------------------------------------------|
| float32  | float32 | native                                               |
| float64  | float64 | native                                               |
| float16  | float32 | row kernels stage rows through float32 in cache      |
| bfloat16 | float32 | (``ml_dtypes.bfloat16``, registered lazily), as float16 |

Saved statistics are in the compute dtype.  Parameters (weight, bias, ...)
are in x's dtype, or float32 when x is a 16-bit storage type (PyTorch's
mixed-precision LayerNorm / GroupNorm take float32 parameters with bfloat16
input); their gradients come back in the parameter's dtype.
"""
import sys

import numpy as np

F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
F16 = np.dtype(np.float16)

COMPUTE = {F32: F32, F64: F64, F16: F32}
HALF = {F16}   # staged through float32; bfloat16 joins when registered

# bfloat16 is ml_dtypes' dtype, whose import costs ~0.8 s (it registers its
# casts with NumPy): fastnorm does not import it.  A program holding bfloat16
# arrays has imported ml_dtypes already, so the dtype is registered at
# fastnorm's import when ml_dtypes is loaded, or else the first time such an
# array reaches fastnorm (compute_dtype).  `BF16` (the module attribute)
# imports ml_dtypes on first use.
_bf16 = None


def _register_bfloat16(dtype):
    """Adopt ml_dtypes.bfloat16: the dtype tables here and every kernel module."""
    global _bf16
    if _bf16 is None:
        _bf16 = dtype
        COMPUTE[dtype] = F32
        HALF.add(dtype)
        from . import _config
        _config.register_bfloat16(dtype.num)
    return _bf16


def _is_bfloat16(dtype):
    ml = sys.modules.get("ml_dtypes")
    return ml is not None and dtype.name == "bfloat16" and dtype == np.dtype(ml.bfloat16)


def compute_dtype(dtype):
    """The compute dtype of a storage dtype, or None when fastnorm takes no such data."""
    cdt = COMPUTE.get(dtype)
    if cdt is None and _bf16 is None and _is_bfloat16(dtype):
        _register_bfloat16(dtype)
        cdt = F32
    return cdt


def bfloat16():
    """ml_dtypes.bfloat16 as a NumPy dtype (importing ml_dtypes), or None
    without ml_dtypes."""
    if _bf16 is None:
        try:
            import ml_dtypes
        except ImportError:  # pragma: no cover - ml_dtypes is a dependency
            return None
        _register_bfloat16(np.dtype(ml_dtypes.bfloat16))
    return _bf16


def __getattr__(name):
    if name == "BF16":
        return bfloat16()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_if_loaded():
    """At import: adopt bfloat16 when ml_dtypes is already loaded."""
    ml = sys.modules.get("ml_dtypes")
    if ml is not None:
        _register_bfloat16(np.dtype(ml.bfloat16))


_NAMES = "float32, float64, float16 or bfloat16 (ml_dtypes.bfloat16)"


def machine_eps(dtype):
    """The machine epsilon of the dtype x is computed in (torch's rms_norm
    eps=None: float32's for float16 / bfloat16 input, as its opmath type)."""
    return float(np.finfo(compute_dtype(np.dtype(dtype))).eps)


def as_float_array(x, name):
    """x as an ndarray of a supported storage dtype; returns (array, compute dtype).

    Integer, bool, complex and object data raise TypeError naming the
    argument (as torch's normalizations do); byte-swapped floats are brought
    to native order once."""
    if type(x) is not np.ndarray:
        if x is None:
            raise TypeError(f"{name} must be an array of floats, got None")
        x = np.asarray(x)
    cdt = compute_dtype(x.dtype)
    if cdt is None:
        native = native_order(x)
        cdt = compute_dtype(native.dtype) if native is not x else None
        if cdt is not None:
            return native, cdt
        raise TypeError(f"{name} must be a floating-point array ({_NAMES}), got dtype {x.dtype}")
    return (x if x.flags.aligned else x.copy()), cdt


def native_order(a):
    """`a` in native byte order and aligned to its itemsize: a copy only when
    it is byte-swapped, or a view at an address the kernels may not load
    from (a float32 view of a byte buffer at an odd offset).  Every array
    argument passes here (as_float_array, check_param_dtype)."""
    if a.dtype.byteorder not in "=|" and a.dtype.kind == "f":
        return a.astype(a.dtype.newbyteorder("="))
    if not a.flags.aligned:
        return a.copy()
    return a


def check_param_dtype(p, name, data_dtype, cdt):
    """A parameter may be in x's dtype, or in float32 when x is 16-bit;
    returns it in native byte order (every array argument goes through this
    or as_float_array: one mechanism for byte-swapped data)."""
    p = native_order(p)
    if p.dtype != data_dtype and not (data_dtype in HALF and p.dtype == cdt):
        allowed = f"the dtype of x ({data_dtype})"
        if data_dtype in HALF:
            allowed += " or float32"
        raise TypeError(f"{name} must have {allowed}, got {p.dtype}")
    return p


def cast(a, dtype):
    """`a` in `dtype` (a itself when it already is): 16-bit <-> float32 of
    contiguous arrays by the kernels' parallel conversion (round to nearest
    even), anything else by NumPy."""
    dtype = np.dtype(dtype)
    if a.dtype == dtype:
        return a
    if (a.dtype in HALF and dtype == F32) or (a.dtype == F32 and dtype in HALF):
        from ._config import kernels
        src = np.ascontiguousarray(a)
        return kernels.widen_narrow(src, np.empty(a.shape, dtype))
    return a.astype(dtype)
