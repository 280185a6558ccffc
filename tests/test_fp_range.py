"""The floating-point range, for every op of the registry: inputs scaled by a
power of two from near the smallest normal to near the largest finite value
of their dtype give the float64 twin's answer on the same values, forward
(outputs and saved statistics) and backward.

Normalization is scale-invariant, so a representable input has a
representable answer; a kernel that squares or sums in its storage type
without guarding its range overflows (large scales) or loses its digits to
underflow (small scales).  Where an op takes eps, the small scales shrink eps
with the square of the scale, so that the variance, not eps, decides the
answer (eps dominating would hide an underflowed variance); the large scales
keep eps.  Each result is compared relative to its own magnitude, not to 1.
"""
import inspect

import ml_dtypes
import numpy as np
import pytest

from fastnorm import _registry
from fastnorm._dtypes import BF16, F16, F32, F64, machine_eps

from test_registry import OP_IDS, _call64, _run

# exponents k of the scale 2**k: the values reach ~2**(k+3); the statistics
# (a norm grows with sqrt(n)) stay representable in the dtype
EXPONENTS = {F32: (-120, -90, -60, 60, 90, 120), BF16: (-120, -60, 60, 120),
             F16: (-12, 12), F64: (-300, 300)}
CASES = [(d, k) for d in (F32, BF16, F16, F64) for k in EXPONENTS[d]]


def _wide(shape):
    """The example's shape with a last dimension long enough for the vector
    loops, their blocks and tails."""
    return shape[:-1] + (shape[-1] * 37,)


def _scaled_eps(fn, args, kwargs, k, dtype):
    """(args, kwargs) with eps (given, or the default) times 4**k for k < 0."""
    params = inspect.signature(fn).parameters
    if k >= 0 or "eps" not in params:
        return args, kwargs
    bound = inspect.signature(fn).bind(*args, **kwargs)
    eps = bound.arguments.get("eps", params["eps"].default)
    if eps is None:
        eps = machine_eps(dtype)
    bound.arguments["eps"] = float(eps) * 4.0 ** k
    return bound.args, bound.kwargs


def _close_rel(got, want, dtype, what):
    # the twin's answer as the result's dtype holds it (a statistic beyond
    # float32's range is inf there: the representable answer)
    got = np.asarray(got)
    with np.errstate(over="ignore"):
        want = np.asarray(want).astype(got.dtype).astype(np.float64)
    got = got.astype(np.float64)
    assert got.shape == want.shape, what
    assert np.array_equal(np.isfinite(got), np.isfinite(want)), \
        f"{what}: {int((np.isfinite(got) != np.isfinite(want)).sum())} values differ in finiteness"
    finite = np.isfinite(want)
    if not finite.any():
        return
    scale = float(np.abs(want[finite]).max())
    if scale == 0:
        assert np.array_equal(got[finite], want[finite]), what
        return
    tol = {F32: 2e-5, F64: 1e-10}.get(np.dtype(dtype), float(ml_dtypes.finfo(dtype).eps) * 2)
    err = float(np.abs(got[finite] - want[finite]).max()) / scale
    assert err <= tol, f"{what}: error {err:.2e} of its scale {scale:.3e} (tolerance {tol:.0e})"


def _scaled_call(op, dtype, shape, k, rng):
    call = op.example(rng, dtype, shape)
    s = 2.0 ** k
    originals = {}
    args = list(call.args)
    for i in ((0, 1) if op.name.startswith("add_") else (0,)):
        scaled = (args[i].astype(np.float64) * s).astype(dtype)
        originals[id(args[i])] = (args[i], scaled)  # the original kept alive: its id is not reused
        args[i] = scaled
    for i in op.mutates:
        args[i] = np.array(args[i], copy=True)
    call.args, call.kwargs = _scaled_eps(op.forward, tuple(args), call.kwargs, k, dtype)
    return call, originals


@pytest.mark.parametrize("wide", [False, True], ids=["example", "wide"])
@pytest.mark.parametrize("dtype, k", CASES, ids=[f"{np.dtype(d).name}-2^{k}" for d, k in CASES])
@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
def test_scaled_inputs_give_the_twins_answer(op, dtype, k, wide):
    shape = _wide(op.default_shape) if wide else op.default_shape
    if True:
        rng = np.random.default_rng(abs(k))
        call, originals = _scaled_call(op, dtype, shape, k, rng)
        ref_args, ref_kwargs = _call64(call.args, call.kwargs)
        ref_args = [np.array(a, copy=True) if i in op.mutates else a for i, a in enumerate(ref_args)]
        outputs, stats = _run(op, call)
        ref = op.reference(*ref_args, **ref_kwargs, return_stats=True)
        what = f"{op.name} {np.dtype(dtype).name} at 2**{k}"
        stat_dtype = F64 if dtype == F64 else F32
        for j, (got, want) in enumerate(zip(outputs, ref[:call.n_outputs])):
            _close_rel(got, want, dtype, f"{what}: output {j}")
        for j, (got, want) in enumerate(zip(stats, ref[call.n_outputs:])):
            _close_rel(got, want, dtype if op.name.startswith("add_") else stat_dtype, f"{what}: stat {j}")

        g = rng.standard_normal(outputs[0].shape).astype(dtype)
        bargs, bkwargs = call.backward(outputs, stats, [g])
        bargs = tuple(originals[id(a)][1] if id(a) in originals else a for a in bargs)
        bargs, bkwargs = _scaled_eps(op.backward, bargs, bkwargs, k, dtype)
        grads = op.backward(*bargs, **bkwargs)
        grads = grads if isinstance(grads, tuple) else (grads,)
        # the exact gradient: the twin's backward from the twin's own forward
        # (a float32 statistic beyond float32's range, LRN's scale at 2**90,
        # is inf: the kernels must not need it)
        rargs, rkwargs = call.backward(ref[:call.n_outputs], ref[call.n_outputs:], [g.astype(np.float64)])
        rargs = tuple(originals[id(a)][1] if id(a) in originals else a for a in rargs)
        rargs, rkwargs = _scaled_eps(op.backward, rargs, rkwargs, k, dtype)
        rargs, rkwargs = _call64(rargs, rkwargs)
        ref_grads = op.reference_backward(*rargs, **rkwargs)
        ref_grads = ref_grads if isinstance(ref_grads, tuple) else (ref_grads,)
        for j, (got, want) in enumerate(zip(grads, ref_grads)):
            if want is not None:
                _close_rel(got, want, dtype, f"{what}: gradient {j}")
