"""Every row width takes the same numerics.

The row kernels change strategy with the width: rows narrower than the lane
block (a scalar loop), rows of a few values with the rows in the vector
lanes (RMSNorm), narrow rows whose rstd is taken ROW_GROUP rows at a time,
a partial last lane block summed as a masked whole one, single-block rows
totalled in registers, multi-block rows.  None of it may change a result:
a row's result does not depend on the rows around it (a batch equals its
rows one at a time, bit for bit), the 16-bit kernels stay the float32
kernels on widened values (bit for bit), and everything agrees with the
float64 reference.  Parametrized over the registry's row ops and the
channel ops (whose blocks use the same sums), on every instruction-set
build.
"""
import numpy as np
import pytest

from fastnorm import _registry
from fastnorm._dtypes import BF16, F16, F32

from conftest import tol

ROW_OPS = [op for op in _registry.OPS if op.family == "rows"]
# the fused add + norm ops round h = x + residual to the 16-bit dtype before
# normalizing it (as PyTorch's bfloat16 add does): not the float32 run's h
NORM_OPS = [op for op in ROW_OPS if not op.name.startswith("add_")]
WIDTHS = [1, 2, 3, 5, 8, 9, 16, 17, 31, 32, 33, 63, 127, 129, 255, 256, 257, 300, 1000]
ROWS = 37   # two whole row groups and a remainder


def _call(op, rng, dtype, n):
    return op.example(rng, dtype, (ROWS, n))


def _row(args, r):
    """The arguments of row r alone (the per-row arrays sliced)."""
    return tuple(a[r:r + 1] if isinstance(a, np.ndarray) and a.shape[:1] == (ROWS,) else a for a in args)


def _first(res):
    return res[0] if isinstance(res, tuple) else res


@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("op", ROW_OPS, ids=lambda op: op.name)
def test_batch_equals_rows_one_at_a_time(op, n, isa):
    rng = np.random.default_rng(n)
    call = _call(op, rng, F32, n)
    full = op.forward(*call.args, **call.kwargs, return_stats=True)
    for r in (0, 15, 16, ROWS - 1):
        one = op.forward(*_row(call.args, r), **call.kwargs, return_stats=True)
        for a, b in zip(full, one):
            assert np.array_equal(a[r:r + 1].view(np.uint32), b.view(np.uint32)), (op.name, n, r)


@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("op", ROW_OPS, ids=lambda op: op.name)
def test_backward_rows_do_not_depend_on_their_neighbours(op, n, isa):
    """grad_x of a row of a batch equals that row's grad_x alone, bit for bit."""
    rng = np.random.default_rng(n)
    call = _call(op, rng, F32, n)
    res = op.forward(*call.args, **call.kwargs, return_stats=True)
    outputs, stats = res[:call.n_outputs], res[call.n_outputs:]
    g = rng.standard_normal(outputs[0].shape).astype(F32)
    bargs, bkwargs = call.backward(outputs, stats, [g])
    full = op.backward(*bargs, **bkwargs)[0]
    for r in (0, 15, 16, ROWS - 1):
        one = op.backward(*_row(bargs, r), **bkwargs)[0]
        assert np.array_equal(full[r:r + 1].view(np.uint32), one.view(np.uint32)), (op.name, n, r)


@pytest.mark.parametrize("dtype", [BF16, F16], ids=str)
@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("op", NORM_OPS, ids=lambda op: op.name)
def test_16bit_rows_are_float32_rows_rounded(op, n, dtype, isa):
    rng = np.random.default_rng(n)
    call = _call(op, rng, dtype, n)
    # parameters in float32, the same values in both runs
    args16 = tuple(a.astype(F32) if isinstance(a, np.ndarray) and a.shape[:1] != (ROWS,) else a
                   for a in call.args)
    args32 = tuple(a.astype(F32) if isinstance(a, np.ndarray) else a for a in args16)
    y16 = _first(op.forward(*args16, **call.kwargs))
    y32 = _first(op.forward(*args32, **call.kwargs))
    assert y16.dtype == dtype
    assert np.array_equal(y16.view(np.uint16), y32.astype(dtype).view(np.uint16))


@pytest.mark.parametrize("n", WIDTHS)
@pytest.mark.parametrize("op", ROW_OPS, ids=lambda op: op.name)
def test_rows_match_the_reference(op, n, isa):
    rng = np.random.default_rng(n)
    call = _call(op, rng, F32, n)
    got = op.forward(*call.args, **call.kwargs, return_stats=True)
    # the RMS ops' default eps is the input dtype's machine eps: float32's for both
    kw = dict(call.kwargs, eps=float(np.finfo(F32).eps)) if "rms" in op.name else call.kwargs
    ref = op.reference(*[a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in call.args],
                       **kw, return_stats=True)
    rtol, atol = tol(F32)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a, b, rtol=rtol * 5, atol=atol * 5)
    # and the backward, through the same widths
    outputs, stats = got[:call.n_outputs], got[call.n_outputs:]
    g = np.linspace(-1, 1, outputs[0].size).reshape(outputs[0].shape).astype(F32)
    bargs, bkwargs = call.backward(outputs, stats, [g])
    grads = op.backward(*bargs, **bkwargs)
    rb = [a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in bargs]
    ref_grads = op.reference_backward(*rb, **bkwargs)
    # grad_x is rstd * (g*w - mean terms): its error is float32 rounding of
    # those terms, which cancel (a row of one value has grad_x ~ eps / x^3)
    rstd = np.asarray(stats[-1], dtype=np.float64).reshape(-1, 1)
    w = next(a for a in call.args[1:] if isinstance(a, np.ndarray) and a.shape == (n,))
    term = np.abs(g) * rstd * np.max(np.abs(w))
    for i, (a, b) in enumerate(zip(grads, ref_grads)):
        assert (a is None) == (b is None)
        if a is not None:
            scale = term if i == 0 else max(1.0, float(np.max(np.abs(b))))
            assert np.all(np.abs(a - b) <= 1e-4 * np.abs(b) + 1e-4 * scale), (op.name, n, i)


@pytest.mark.parametrize("name,S", [(name, S) for name in ("batch_norm", "group_norm", "instance_norm")
                                    for S in (1, 7, 31, 33, 35, 100, 257, 300)
                                    if not (name == "instance_norm" and S == 1)])  # torch's error
def test_channel_blocks_16bit_backward_is_float32_backward(name, S, isa):
    """The channels-first blocks' sums (partial last lane block included)
    are one code for float32 and the 16-bit dtypes: parameter gradients
    equal bit for bit."""
    op = _registry.by_name(name)
    rng = np.random.default_rng(S)
    call = op.example(rng, F32, (3, 8, S))
    for a in call.args:
        if isinstance(a, np.ndarray) and a.dtype == F32:
            a[...] = a.astype(BF16).astype(F32)

    def grads(x):
        args = (x,) + tuple(np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in call.args[1:])
        res = op.forward(*args, **call.kwargs, return_stats=True)
        outputs, stats = res[:call.n_outputs], res[call.n_outputs:]
        g = np.linspace(-1, 1, x.size).reshape(x.shape).astype(BF16).astype(x.dtype)
        bargs, bkwargs = call.backward(outputs, stats, [g])
        bargs = tuple(x if a is call.args[0] else a for a in bargs)
        out = op.backward(*bargs, **bkwargs)
        return out if isinstance(out, tuple) else (out,)

    g16 = grads(call.args[0].astype(BF16))
    g32 = grads(call.args[0])
    assert np.array_equal(g16[0].view(np.uint16), g32[0].astype(BF16).view(np.uint16))
    for a, b in zip(g16[1:], g32[1:]):
        assert (a is None) == (b is None)
        if a is not None:
            assert np.array_equal(a, b)
