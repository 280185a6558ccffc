"""Property-based tests over every op of the registry (hypothesis).

Each example draws a shape (of the op's example rank, every dimension from 1
up, odd sizes included), a storage dtype, a memory layout and byte order for
x, a power-of-two scale of the values across the dtype's range, and a
special-value class (none, one NaN, one +-inf, a few subnormals), then runs
the forward and the backward and checks them against the float64 reference
twin on the same values: the same finite / non-finite pattern (a NaN or inf
stays in the row, channel or sample where the twin puts it) and the finite
values within the dtype's rounding, relative to their own magnitude.  The
ops that PyTorch has are also checked against torch's float64 autograd.

The number of examples per op is FASTNORM_HYPOTHESIS_EXAMPLES (default 12);
the `ci` profile is derandomized so that a CI run is reproducible, and the
`fuzz` profile (FASTNORM_HYPOTHESIS_PROFILE=fuzz) explores at random.
"""
import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, reject, settings, strategies as st

from fastnorm import _registry
from fastnorm._dtypes import BF16, F16, F32, F64

from test_registry import OP_IDS, _call64, _explicit_eps

_EXAMPLES = int(os.environ.get("FASTNORM_HYPOTHESIS_EXAMPLES", "12"))
settings.register_profile("ci", max_examples=_EXAMPLES, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("fuzz", max_examples=_EXAMPLES, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("FASTNORM_HYPOTHESIS_PROFILE", "ci"))

DTYPES = [F32, F64, F16, BF16]
# scale exponents k (values ~ 2**k): the statistics stay inside the dtype
EXPONENT_RANGE = {F32: 120, BF16: 120, F16: 12, F64: 300}
LAYOUTS = ["contiguous", "reversed", "inner_strided", "fortran", "readonly", "byteswapped"]
SPECIALS = ["none", "nan", "inf", "-inf", "subnormal"]
MAX_ELEMENTS = 6000


@st.composite
def _shapes(draw, op):
    """A shape of the example's rank; sizes from 1, sometimes just around a
    vector width, capped in total size."""
    dims = []
    for d in op.default_shape:
        dims.append(draw(st.one_of(st.integers(1, max(2 * d, 9)), st.sampled_from([15, 16, 17, 31, 33, 65]))))
    while int(np.prod(dims)) > MAX_ELEMENTS:
        i = int(np.argmax(dims))
        dims[i] = max(1, dims[i] // 2)
    return tuple(dims)


def _layout(a, layout):
    if layout == "reversed":
        return np.ascontiguousarray(a[::-1])[::-1]
    if layout == "inner_strided":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
        big[..., ::2] = a
        return big[..., ::2]
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "readonly":
        a = a.copy()
        a.flags.writeable = False
        return a
    if layout == "byteswapped" and a.dtype.kind == "f":
        return a.astype(a.dtype.newbyteorder("S"))
    return a


def _special(a, kind, where):
    """a (a fresh array) with the special-value class applied at flat index
    `where` (modulo its size)."""
    if kind == "none" or a.size == 0:
        return a
    flat = a.reshape(-1)
    i = where % a.size
    if kind == "subnormal":
        tiny = float(ml_dtypes.finfo(a.dtype).smallest_subnormal)
        for j in range(i, min(i + 5, a.size)):
            flat[j] = tiny * (j - i + 1) * (-1) ** j
    else:
        flat[i] = {"nan": np.nan, "inf": np.inf, "-inf": -np.inf}[kind]
    return a


def _compute_eps(dtype):
    """The rounding unit of the precision the kernels compute in (float32 for
    the 16-bit dtypes, whose values are widened exactly)."""
    return 2.0 ** -52 if np.dtype(dtype) == F64 else 2.0 ** -23


def _perturbed(args, rel, rng):
    """args with every floating-point array multiplied elementwise by
    1 + rel * u, u uniform in [-1, 1] (integer arrays, scalars and None kept)."""
    out = []
    for a in args:
        if isinstance(a, np.ndarray) and a.dtype.kind == "f":
            a = a * (1.0 + rel * rng.uniform(-1.0, 1.0, a.shape))
        out.append(a)
    return out


def _twin_spread(fn, args, kwargs, dtype, rng, mutates=(), draws=2):
    """How far the float64 twin's results move when its inputs move by a few
    rounding units of the compute precision: the conditioning of the problem
    at this point, which bounds how closely any algorithm working in that
    precision can be checked (a cancelling gradient, a tie in a max)."""
    def run(a):
        a = [np.array(v, copy=True) if i in mutates else v for i, v in enumerate(a)]
        with np.errstate(all="ignore"):
            r = fn(*a, **kwargs)
        return [np.asarray(v, dtype=np.float64) if v is not None else None
                for v in (r if isinstance(r, tuple) else (r,))]
    base = run(list(args))
    spread = [0.0] * len(base)
    for _ in range(draws):
        for j, (b, p) in enumerate(zip(base, run(_perturbed(args, 4 * _compute_eps(dtype), rng)))):
            if b is None:
                continue
            both = np.isfinite(b) & np.isfinite(p)
            if both.any():
                spread[j] = max(spread[j], float(np.abs(b[both] - p[both]).max()))
    return spread


def _gain(y, x, g):
    """max|g| * max|y| / max|x| over the finite values: the size of the terms
    a gradient of x is made of (the Jacobian of a normalization scales like
    y / x), below which a cancelled gradient cannot be resolved in the compute
    precision."""
    def top(a):
        a = np.asarray(a, np.float64)
        a = np.abs(a[np.isfinite(a)])
        return float(a.max()) if a.size else 0.0
    tx = top(x)
    return top(g) * top(y) / tx if tx > 0 else 0.0


def _check(got, want, dtype, what, spread=0.0, stat=False, gain=0.0, exact_inf=True, held_inf=False):
    """got equals the twin's answer (as got's dtype holds it): the same
    non-finite positions, and with exact_inf (forward outputs) the same NaN
    and the same infs; a gradient or statistic may be NaN where the twin has
    an inf.  A statistic of data that held an inf may be NaN where the twin's
    is finite: the kernels' moments are sums about a shift (x - x0 is inf -
    inf there), so the mean of [inf, 1] comes out NaN, not inf, and a
    statistic made from it (Batch Renorm's clipped d) is NaN too; the outputs
    are NaN either way.
    and the finite values within the dtype's rounding of their own magnitude
    (or of `gain`, the size of a gradient's terms, if larger) plus twice the
    twin's spread."""
    got = np.asarray(got)
    with np.errstate(over="ignore", invalid="ignore"):
        want = np.asarray(want).astype(got.dtype.newbyteorder("=")).astype(np.float64)
    got = got.astype(np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, twin {want.shape}"
    bad = np.isfinite(got) != np.isfinite(want)
    if stat and held_inf:
        bad &= ~np.isnan(got)  # a statistic of data holding an inf may be NaN (below)
    if exact_inf:
        bad |= np.isnan(got) != np.isnan(want)
        bad |= np.isinf(got) & np.isinf(want) & (got != want)
    assert not bad.any(), \
        f"{what}: non-finite values differ at {np.argwhere(bad)[:5].tolist()}: {got[bad][:5]} vs twin {want[bad][:5]}"
    finite = np.isfinite(want) & np.isfinite(got)
    if not finite.any():
        return
    scale = max(float(np.abs(want[finite]).max()), gain)
    if scale == 0:
        assert np.array_equal(got[finite], want[finite]), what
        return
    tol = {F32: 5e-5, F64: 1e-9}.get(np.dtype(dtype), float(ml_dtypes.finfo(dtype).eps) * 4)
    err = float(np.abs(got[finite] - want[finite]).max())
    assert err <= tol * scale + 2 * spread, \
        f"{what}: error {err:.3e} at scale {scale:.3e} (tolerance {tol:.0e} of it + 2 x spread {spread:.2e})"


def _draw_case(data, op):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    shape = data.draw(_shapes(op), label="shape")
    emax = EXPONENT_RANGE[dtype]
    k = data.draw(st.one_of(st.just(0), st.integers(-emax, emax)), label="scale exponent")
    layout = data.draw(st.sampled_from(LAYOUTS), label="layout")
    special = data.draw(st.sampled_from(SPECIALS), label="special")
    where = data.draw(st.integers(0, 2**31), label="where")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    return dtype, shape, k, layout, special, where, seed


def _prepared(op, dtype, shape, k, special, where, seed):
    """The example call with x (and the fused ops' residual) scaled by 2**k
    and the special values applied; running statistics copied."""
    rng = np.random.default_rng(seed)
    call = op.example(rng, dtype, shape)
    args = list(call.args)
    replaced = {}
    for i in ((0, 1) if op.name.startswith("add_") else (0,)):
        with np.errstate(over="ignore"):
            new = (args[i].astype(np.float64) * 2.0 ** k).astype(dtype)
        if i == 0:
            new = _special(new, special, where)
        replaced[id(args[i])] = (args[i], new)  # the original kept alive: its id is not reused
        args[i] = new
    for i in op.mutates:
        args[i] = np.array(args[i], copy=True)
    call.args, call.kwargs = _explicit_eps(op.forward, tuple(args), call.kwargs, dtype)
    return call, replaced, rng


def _forward_or_refusal(op, args, kwargs):
    """The forward's results; a batch too small for training statistics (one
    value per channel, as torch) must be refused with torch's ValueError, and
    the example is then dropped."""
    try:
        return op.forward(*args, **kwargs, return_stats=True)
    except ValueError as e:
        assert "Expected more than 1" in str(e), f"{op.name}: unexpected refusal: {e}"
        reject()


@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_forward_and_backward_agree_with_the_twin(op, data):
    dtype, shape, k, layout, special, where, seed = _draw_case(data, op)
    call, replaced, rng = _prepared(op, dtype, shape, k, special, where, seed)
    what = f"{op.name} {np.dtype(dtype).name} {shape} 2**{k} {layout} {special}"
    ref_args, ref_kwargs = _call64(call.args, call.kwargs)
    ref_args = [np.array(a, copy=True) if i in op.mutates else a for i, a in enumerate(ref_args)]
    fargs = (_layout(call.args[0], layout),) + call.args[1:]
    with np.errstate(all="ignore"):
        ref = op.reference(*[np.array(a, copy=True) if i in op.mutates else a for i, a in enumerate(ref_args)],
                           **ref_kwargs, return_stats=True)
    spread = _twin_spread(lambda *a, **kw: op.reference(*a, **kw, return_stats=True), ref_args,
                          ref_kwargs, dtype, rng, op.mutates)
    with np.errstate(all="ignore"):
        op.reference(*ref_args, **ref_kwargs)  # the running statistics' update, once
    res = _forward_or_refusal(op, fargs, call.kwargs)
    outputs, stats = res[:call.n_outputs], res[call.n_outputs:]
    stat_dtype = F64 if dtype == F64 else F32
    for j, (got, want) in enumerate(zip(outputs, ref[:call.n_outputs])):
        assert got.dtype == np.dtype(dtype), f"{what}: output {j} is {got.dtype}"
        _check(got, want, dtype, f"{what}: output {j}", spread[j])
    for j, (got, want) in enumerate(zip(stats, ref[call.n_outputs:])):
        _check(got, want, dtype if op.name.startswith("add_") else stat_dtype, f"{what}: stat {j}",
               spread[call.n_outputs + j], stat=True, exact_inf=False, held_inf="inf" in special)
    for i in op.mutates:
        _check(call.args[i], ref_args[i], stat_dtype if call.args[i].dtype != dtype else dtype,
               f"{what}: running stat {i}", stat=True, exact_inf=False, held_inf="inf" in special)

    g = rng.standard_normal(outputs[0].shape).astype(dtype)
    bargs, bkwargs = call.backward(outputs, stats, [g])
    bargs = tuple(replaced[id(a)][1] if id(a) in replaced else a for a in bargs)
    # the exact gradient: the twin's backward from the twin's own forward (a
    # float32 statistic beyond float32's range, LRN's scale of |x| > 2^64, is
    # inf: the kernels must not depend on it)
    rargs, rkwargs = call.backward(ref[:call.n_outputs], ref[call.n_outputs:], [g.astype(np.float64)])
    rargs = tuple(replaced[id(a)][1] if id(a) in replaced else a for a in rargs)
    rargs, rkwargs = _call64(rargs, rkwargs)
    bargs = tuple(_layout(a, layout) if isinstance(a, np.ndarray) and a.dtype.kind in "fV" and a.ndim
                  and layout == "byteswapped" else a for a in bargs)
    grads = op.backward(*bargs, **bkwargs)
    grads = grads if isinstance(grads, tuple) else (grads,)
    with np.errstate(all="ignore"):
        ref_grads = op.reference_backward(*rargs, **rkwargs)
    ref_grads = ref_grads if isinstance(ref_grads, tuple) else (ref_grads,)
    spread = _twin_spread(op.reference_backward, rargs, rkwargs, dtype, rng)
    gain = _gain(outputs[0], call.args[0], g)
    assert len(grads) == len(ref_grads), what
    for j, (got, want) in enumerate(zip(grads, ref_grads)):
        if want is None:
            assert got is None, f"{what}: gradient {j}"
        else:
            _check(got, want, dtype, f"{what}: gradient {j}", spread[j], gain=gain, exact_inf=False)


# ---------------------------------------------------------------- against torch

def _t(a):
    import torch
    return torch.tensor(np.asarray(a, dtype=np.float64), requires_grad=True)


TORCH = {
    # op name -> (indices of the float64 tensors that get gradients, torch's forward on the call's args)
    "layer_norm": ((0, 2, 3), lambda TF, a, kw: TF.layer_norm(a[0], (a[1],), a[2], a[3], a[4])),
    "rms_norm": ((0, 2), lambda TF, a, kw: TF.rms_norm(a[0], (a[1],), a[2], a[3])),
    "group_norm": ((0, 2, 3), lambda TF, a, kw: TF.group_norm(a[0], a[1], a[2], a[3], 1e-5)),
    "instance_norm": ((0, 3, 4), lambda TF, a, kw: TF.instance_norm(a[0], None, None, a[3], a[4], eps=1e-5)),
    "batch_norm": ((0, 3, 4), lambda TF, a, kw: TF.batch_norm(a[0], a[1], a[2], a[3], a[4], training=True)),
    "local_response_norm": ((0,), lambda TF, a, kw: TF.local_response_norm(a[0], a[1], **kw)),
    "normalize": ((0,), lambda TF, a, kw: TF.normalize(a[0], **kw)),
}


@pytest.mark.parametrize("name", sorted(TORCH))
@given(data=st.data())
def test_forward_and_backward_agree_with_torch(name, data):
    """The same drawn cases without special values, against torch's float64
    autograd (an oracle independent of fastnorm's twins).  torch is imported
    here, not at the module's top, so that the sanitizer job can run the rest
    of the module without it (-k "not torch")."""
    import torch
    import torch.nn.functional as TF
    op = _registry.by_name(name)
    dtype, shape, k, layout, _, where, seed = _draw_case(data, op)
    call, replaced, rng = _prepared(op, dtype, shape, k, "none", where, seed)
    what = f"{name} {np.dtype(dtype).name} {shape} 2**{k} {layout}"
    grad_idx, torch_fn = TORCH[name]
    targs = [_t(a) if i in grad_idx else
             torch.tensor(np.asarray(a, dtype=np.float64)) if isinstance(a, np.ndarray) else a
             for i, a in enumerate(call.args)]
    fargs = (_layout(call.args[0], layout),) + call.args[1:]
    res = _forward_or_refusal(op, fargs, call.kwargs)
    try:
        ty = torch_fn(TF, targs, dict(call.kwargs))
    except ValueError as e:  # torch's GroupNorm refuses one value per group in training; fastnorm does not
        assert "Expected more than 1" in str(e), e
        reject()
    outputs, stats = res[:call.n_outputs], res[call.n_outputs:]
    ref_args, ref_kwargs = _call64(call.args, call.kwargs)
    spread = _twin_spread(op.reference, ref_args, ref_kwargs, dtype, rng, op.mutates)
    _check(outputs[0], ty.detach().numpy(), dtype, f"{what}: output", spread[0])
    g = rng.standard_normal(outputs[0].shape).astype(dtype)
    ty.backward(torch.tensor(g.astype(np.float64)))
    bargs, bkwargs = call.backward(outputs, stats, [g])
    bargs = tuple(replaced[id(a)][1] if id(a) in replaced else a for a in bargs)
    grads = op.backward(*bargs, **bkwargs)
    grads = grads if isinstance(grads, tuple) else (grads,)
    rargs, rkwargs = _call64(bargs, bkwargs)
    spread = _twin_spread(op.reference_backward, rargs, rkwargs, dtype, rng)
    for j, i in enumerate(grad_idx):
        if grads[j] is not None:
            _check(grads[j], targs[i].grad.numpy(), dtype, f"{what}: gradient {j}", spread[j],
                   gain=_gain(outputs[0], call.args[0], g))
