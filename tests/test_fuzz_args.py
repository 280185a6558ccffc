"""Fuzzing the argument parsing of every op (hypothesis).

Each example takes an op's example call (forward, then its backward) and
replaces one to three of its arguments with hostile values: None, wrong
dtypes (int, bool, complex, object, bfloat16 beside float32), 0-d and empty
arrays, wrong shapes and ranks, byte-swapped and non-contiguous views, NaN
and inf scalars, huge, negative and zero integers, floats where ints belong,
strings, lists.  The op must either return or raise ValueError / TypeError:
never another exception (OverflowError, ZeroDivisionError, IndexError,
MemoryError, SystemError, ...) and never a crash.

The examples per op come from FASTNORM_HYPOTHESIS_EXAMPLES (default 12, the
CI's derandomized profile); a long campaign runs with, e.g.,
FASTNORM_HYPOTHESIS_PROFILE=fuzz FASTNORM_HYPOTHESIS_EXAMPLES=20000.
"""
import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastnorm import _registry
from fastnorm._dtypes import F32

import test_properties  # noqa: F401  (registers and loads the hypothesis profiles)
from test_registry import OP_IDS

ALLOWED = (ValueError, TypeError)


def _hostile_values(like):
    """Strategies of replacements for an argument that was `like`."""
    real = isinstance(like, np.ndarray) and like.ndim and like.dtype.kind in "fiu" and like.dtype.isnative
    arr = like.astype(F32) if real else np.ones(3, F32)
    swapped = arr.astype(arr.dtype.newbyteorder("S")) if arr.dtype.kind == "f" else arr
    return st.sampled_from([
        None, 0, -1, 1, 2, 3, 10**30, -10**30, 2**63, 2**31, 0.5, -0.0, float("nan"), float("inf"),
        -float("inf"), 1e308, True, "16", [1, 2], (), (0,), (-1,), (2**40,), 1j,
        np.float32(np.nan), np.int64(-5), np.array(1.0), np.array([]), np.zeros((0, 3), F32),
        arr.astype(np.int32), arr.astype(bool), arr.astype(np.complex64), arr.astype(object),
        arr.astype(ml_dtypes.bfloat16), arr.astype(np.float16), arr.astype(np.float64),
        arr.reshape(-1), arr.reshape(-1)[:1], arr[..., None], np.swapaxes(arr, 0, -1),
        swapped, arr[::-1], np.full_like(arr, np.nan), np.full_like(arr, np.inf),
        np.zeros(arr.shape[:-1] + (arr.shape[-1] + 1,), arr.dtype),
    ])


def _call(fn, args, kwargs):
    try:
        fn(*args, **kwargs)
    except ALLOWED:
        pass


def _mutated(data, args, kwargs, label):
    args, kwargs = list(args), dict(kwargs)
    slots = [("a", i) for i in range(len(args))] + [("k", k) for k in kwargs]
    extra = ["eps", "n_threads", "channel_axis", "out", "momentum", "dim", "axis", "p", "size"]
    for _ in range(data.draw(st.integers(1, 3), label=f"{label} mutations")):
        kind, key = data.draw(st.sampled_from(slots + [("k", e) for e in extra]), label=f"{label} slot")
        old = args[key] if kind == "a" else kwargs.get(key)
        new = data.draw(_hostile_values(old), label=f"{label} {key}")
        if kind == "a":
            args[key] = new
        else:
            kwargs[key] = new
    return tuple(args), kwargs


@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
@given(data=st.data())
def test_hostile_arguments_are_value_or_type_errors(op, data):
    call = op.example(np.random.default_rng(0), F32, op.default_shape)
    fresh = tuple(np.array(a, copy=True) if i in op.mutates else a for i, a in enumerate(call.args))
    args, kwargs = _mutated(data, fresh, call.kwargs, "forward")
    _call(op.forward, args, kwargs)

    args = tuple(np.array(a, copy=True) if i in op.mutates else a for i, a in enumerate(call.args))
    res = op.forward(*args, **call.kwargs, return_stats=True)
    outputs, stats = res[:call.n_outputs], res[call.n_outputs:]
    g = np.ones(outputs[0].shape, outputs[0].dtype)
    bargs, bkwargs = call.backward(outputs, stats, [g])
    bargs, bkwargs = _mutated(data, bargs, bkwargs, "backward")
    _call(op.backward, bargs, bkwargs)
