"""Every op of the registry, through the one seam: its backward, its float64
twin and its layer exist; forward and backward agree with the twin in every
storage dtype (float32, float64, float16, bfloat16), over memory layouts and
with out=; inputs are never modified."""
import inspect

import ml_dtypes
import numpy as np
import pytest

import fastnorm
from fastnorm import _registry, functional, _dispatch
from fastnorm._dtypes import BF16, F16, F32, F64, machine_eps

DTYPES = [F32, F64, F16, BF16]
OP_IDS = [op.name for op in _registry.OPS]


def _eps(dtype):
    return float(ml_dtypes.finfo(dtype).eps)


def _to64(a):
    if isinstance(a, np.ndarray) and a.dtype.kind in "fV" or isinstance(a, np.ndarray) and a.dtype == BF16:
        return a.astype(np.float64)
    return a


def _call64(args, kwargs):
    return [_to64(a) for a in args], {k: _to64(v) for k, v in kwargs.items()}


def _close(got, ref, dtype, what, factor=1.0):
    """Within `factor` units of the dtype's rounding (float32: a float32
    computation's error) of the float64 reference, relative to its scale."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    assert got.shape == ref.shape, what
    tol = {F64: 1e-10, F32: 2e-5}.get(np.dtype(dtype), _eps(dtype)) * factor
    scale = max(1.0, float(np.abs(ref).max())) if ref.size else 1.0
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * scale, err_msg=what)


def _explicit_eps(fn, args, kwargs, dtype):
    """eps=None (RMSNorm's: the machine epsilon of x's dtype) spelled out, so
    that the float64 twin, given float64 arrays, uses the same eps."""
    sig = inspect.signature(fn)
    if "eps" not in sig.parameters:
        return args, kwargs
    bound = sig.bind(*args, **kwargs)
    if bound.arguments.get("eps", sig.parameters["eps"].default) is None:
        bound.arguments["eps"] = machine_eps(dtype)
    return bound.args, bound.kwargs


def _run(op, call, **extra):
    res = op.forward(*call.args, **call.kwargs, return_stats=True, **extra)
    return res[:call.n_outputs], res[call.n_outputs:]


def test_registry_covers_the_public_api():
    forwards = {name for name in fastnorm.__all__
                if callable(getattr(fastnorm, name))
                and getattr(fastnorm, name).__module__.startswith(functional.__name__ + ".")
                and not name.endswith("_backward")}
    assert forwards == set(OP_IDS)
    backwards = {name for name in fastnorm.__all__ if name.endswith("_backward")}
    assert backwards == {op.backward_name for op in _registry.OPS}


@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
def test_op_has_backward_twin_and_layer(op):
    assert callable(op.backward)
    # the layout mirrors the op list: an op and its backward live in their family's module
    assert op.forward.__module__ == op.backward.__module__ or op.name.startswith("add_")
    assert op.forward.__module__ == f"fastnorm.functional.{op.family}"
    assert callable(op.reference) and callable(op.reference_backward)
    assert op.reference.__module__ == "fastnorm.reference"
    if op.layer is None:
        assert op.no_layer, f"{op.name}: no layer and no stated exemption"
    else:
        layer = op.layer_class
        assert callable(getattr(layer, "forward")) and callable(getattr(layer, "backward"))
        assert op.make_layer is not None, f"{op.name}: no layer factory for the layer tests"


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("op", [o for o in _registry.OPS if o.layer], ids=lambda o: o.name)
def test_layer_in_every_dtype(op, dtype, rng):
    """Each layer built with dtype= runs forward and backward in that dtype,
    agrees with its functional op, and its state dict round-trips."""
    x = op.example(rng, dtype, op.default_shape).args[0]
    layer, args = op.make_layer(x, dtype)
    for name in layer._parameter_names:
        p = getattr(layer, name)
        if p is not None:
            assert p.dtype == dtype, (op.name, name, p.dtype)
    y = layer(*args)
    assert y.dtype == dtype
    g = np.linspace(-1, 1, y.size).reshape(y.shape).astype(dtype)
    gx = layer.backward(g)
    assert gx.dtype == dtype and gx.shape == (args[0].shape if args else y.shape)
    twin, twin_args = op.make_layer(x, dtype)
    twin.load_state_dict(layer.state_dict())
    for name, value in layer.state_dict().items():
        assert np.array_equal(value, twin.state_dict()[name], equal_nan=True), (op.name, name)
    if layer.training:
        layer.eval()
        twin.eval()
    assert np.array_equal(layer(*args), twin(*twin_args), equal_nan=True)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
def test_forward_backward_match_the_twin(op, dtype, rng):
    call = op.example(rng, dtype, op.default_shape)
    x = call.args[0]
    before = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in call.args]
    ref_args, ref_kwargs = _call64(call.args, call.kwargs)
    for i in op.mutates:  # running statistics: each side updates its own copy
        call.args = call.args[:i] + (np.array(call.args[i], copy=True),) + call.args[i + 1:]
    outputs, stats = _run(op, call)
    for i, a in enumerate(call.args):
        if isinstance(a, np.ndarray) and i not in op.mutates:
            assert np.array_equal(a, before[i], equal_nan=True) and a.dtype == before[i].dtype, \
                f"{op.name} modified argument {i}"
    ref = op.reference(*ref_args, **ref_kwargs, return_stats=True)
    ref_outputs, ref_stats = ref[:call.n_outputs], ref[call.n_outputs:]
    for k, (got, want) in enumerate(zip(outputs, ref_outputs)):
        assert got.dtype == x.dtype, f"{op.name} output {k} is {got.dtype} for {x.dtype} input"
        _close(got, want, dtype, f"{op.name} output {k}")
    assert len(stats) == len(ref_stats)
    for k, (s, want) in enumerate(zip(stats, ref_stats)):
        assert s.dtype.kind == "f" and s.dtype.itemsize >= 4, f"{op.name} stat {k} is {s.dtype}"
        # statistics of 16-bit data are float32, of the same (exactly widened)
        # values; the fused add + norm's are of h as stored (rounded to x's dtype)
        stat_dtype = dtype if op.name.startswith("add_") else (F64 if dtype == F64 else F32)
        _close(s, want, stat_dtype, f"{op.name} stat {k}", factor=10.0)
    for i in op.mutates:
        _close(call.args[i], ref_args[i], F32 if dtype != F64 else F64, f"{op.name} running stat {i}")

    g = (rng.standard_normal(outputs[0].shape)).astype(dtype)
    bargs, bkwargs = call.backward(outputs, stats, [g])
    grads = op.backward(*bargs, **bkwargs)
    grads = grads if isinstance(grads, tuple) else (grads,)
    rargs, rkwargs = _call64(bargs, bkwargs)
    ref_grads = op.reference_backward(*rargs, **rkwargs)
    ref_grads = ref_grads if isinstance(ref_grads, tuple) else (ref_grads,)
    assert len(grads) == len(ref_grads)
    for k, (got, want) in enumerate(zip(grads, ref_grads)):
        if want is None:
            assert got is None
            continue
        assert got.dtype == x.dtype, f"{op.name} gradient {k} is {got.dtype} for {x.dtype} input"
        # the statistics a 16-bit forward saves are float32: the twin's
        # backward gets the same ones, so the rounding of the result dominates
        _close(got, want, dtype, f"{op.name} gradient {k}", factor=2.0)


def _variants(x):
    """x in other memory layouts (same values)."""
    yield "reversed", np.ascontiguousarray(x[::-1])[::-1]
    big = np.zeros(x.shape[:-1] + (2 * x.shape[-1],), x.dtype)
    big[..., ::2] = x
    yield "inner_strided", big[..., ::2]
    yield "fortran", np.asfortranarray(x)
    ro = x.copy()
    ro.flags.writeable = False
    yield "readonly", ro


@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
def test_layouts_and_out_give_the_same_result(op, dtype, rng):
    call = op.example(rng, dtype, op.default_shape)
    x = call.args[0]
    fresh = lambda: tuple(np.array(a, copy=True) if i in op.mutates else a  # noqa: E731
                          for i, a in enumerate(call.args))
    base = op.forward(*fresh(), **call.kwargs)
    base = base[0] if isinstance(base, tuple) else base
    for name, xv in _variants(x):
        args = (xv,) + fresh()[1:]
        y = op.forward(*args, **call.kwargs)
        y = y[0] if isinstance(y, tuple) else y
        assert np.array_equal(y.view(np.uint8), base.view(np.uint8)) or np.array_equal(y, base), \
            f"{op.name} on {name} {dtype} input"
    out = np.full_like(x, np.nan)
    y = op.forward(*fresh(), **call.kwargs, out=out)
    y = y[0] if isinstance(y, tuple) else y
    assert y is out and np.array_equal(out, base)
    if op.name not in ("add_layer_norm", "add_rms_norm", "weight_norm"):
        xi = x.copy()
        y = op.forward(xi, *fresh()[1:], **call.kwargs, out=xi)
        y = y[0] if isinstance(y, tuple) else y
        assert y is xi and np.array_equal(xi, base), f"{op.name} in place"


ROW_SPELLINGS = {
    "int": lambda f, x, D, *p: f(x, D, *p),
    "tuple": lambda f, x, D, *p: f(x, (D,), *p),
    "list": lambda f, x, D, *p: f(x, [D], *p),
    "keyword": lambda f, x, D, *p: f(x, normalized_shape=(D,), **dict(zip(("weight", "bias"), p))),
    "default": lambda f, x, D, *p: f(x, None, *p),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", ["layer_norm", "rms_norm"])
def test_row_spellings_agree(name, dtype, rng):
    f = getattr(fastnorm, name)
    x = rng.standard_normal((3, 5, 16)).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(16)).astype(dtype)
    params = (w, w * 0.5) if name == "layer_norm" else (w,)
    results = {k: s(f, x, 16, *params) for k, s in ROW_SPELLINGS.items()}
    for k, y in results.items():
        assert y.dtype == x.dtype
        assert np.array_equal(y, results["int"]), k
    eps_pos = f(x, (16,), *params, 1e-3)
    assert np.array_equal(eps_pos, f(x, 16, *params, eps=1e-3))
    # trailing dims as a tuple, and the same rows flattened
    y2 = f(x, (5, 16), *(np.broadcast_to(p, (5, 16)).copy() for p in params))
    yflat = f(x.reshape(3, 80), 80, *(np.tile(p, 5) for p in params))
    assert np.array_equal(y2.reshape(3, 80), yflat)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
def test_float32_parameters_with_16bit_input(dtype, rng):
    """As torch's mixed-precision LayerNorm: float32 weight with 16-bit x,
    same result as the 16-bit weight's values; their gradients stay float32."""
    x = rng.standard_normal((4, 32)).astype(dtype)
    w16 = (1 + 0.1 * rng.standard_normal(32)).astype(dtype)
    w32 = w16.astype(np.float32)
    assert np.array_equal(fastnorm.layer_norm(x, 32, w32, w32), fastnorm.layer_norm(x, 32, w16, w16))
    y, mean, rstd = fastnorm.layer_norm(x, 32, w32, None, return_stats=True)
    assert mean.dtype == np.float32 and rstd.dtype == np.float32
    gx, gw, gb = fastnorm.layer_norm_backward(np.ones_like(x), x, mean, rstd, w32, None)
    assert gx.dtype == dtype and gw.dtype == np.float32 and gb is None


@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
def test_unsupported_dtypes_raise_type_error(op, rng):
    call = op.example(rng, F32, op.default_shape)
    for bad in (np.int32, np.bool_, np.complex64):
        args = (call.args[0].astype(bad),) + call.args[1:]
        with pytest.raises(TypeError, match="x|v|weight"):
            op.forward(*args, **call.kwargs)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("name,shape,kwargs", [
    ("layer_norm", (7, 37), {}), ("layer_norm", (3, 4100), {}), ("rms_norm", (7, 37), {}),
    ("batch_norm", (3, 8, 5, 7), {}), ("batch_norm", (3, 8, 5, 7), {"channel_axis": -1}),
    ("group_norm", (3, 8, 5, 7), {}), ("group_norm", (2, 5, 3, 16), {"channel_axis": -1}),
    ("instance_norm", (3, 8, 5, 7), {}), ("standardize", (33, 20), {}),
    ("filter_response_norm", (3, 8, 5, 7), {}), ("filter_response_norm", (2, 4, 70), {}),
    ("filter_response_norm", (3, 8, 5, 7), {"channel_axis": -1}),
    ("filter_response_norm", (1, 6, 150, 3), {"channel_axis": -1}),
    ("weight_norm", (9, 40), {}), ("normalize", (7, 37), {}),
    ("local_response_norm", (3, 8, 5, 7), {}), ("local_response_norm", (2, 6, 3, 16), {"channel_axis": -1}),
    ("local_response_norm", (2, 5, 1200), {}),
    ("dynamic_tanh", (7, 37), {}), ("dynamic_tanh", (3, 4100), {}), ("ada_norm", (7, 37), {}),
    ("ada_norm", (3, 4100), {}), ("weight_standardization", (9, 4, 3, 3), {}),
    ("batch_renorm", (3, 8, 5, 7), {}), ("batch_renorm", (3, 8, 5, 7), {"channel_axis": -1}),
])
def test_16bit_kernels_equal_float32_kernels_rounded(name, shape, kwargs, dtype, rng, isa):
    """A 16-bit input is widened in registers and computed by the float32
    algorithm: the result is the float32 result on the widened input,
    rounded once (bit for bit), on every instruction-set build."""
    op = _registry.by_name(name)
    call = op.example(rng, dtype, shape)
    x = call.args[0]
    if kwargs.get("channel_axis") == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    # parameters in float32 (as torch's mixed precision), so both runs see the same values
    params = tuple(a.astype(np.float32) if isinstance(a, np.ndarray) and a.dtype == dtype else a
                   for a in call.args[1:])
    copy = lambda p: tuple(np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in p)  # noqa: E731
    y16 = getattr(functional, name)(x, *copy(params), **call.kwargs, **kwargs)
    y32 = getattr(functional, name)(x.astype(np.float32), *copy(params), **call.kwargs, **kwargs)
    y16 = y16[0] if isinstance(y16, tuple) else y16
    y32 = y32[0] if isinstance(y32, tuple) else y32
    assert y16.dtype == dtype
    assert np.array_equal(y16.view(np.uint16), y32.astype(dtype).view(np.uint16))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
def test_fast_entries_agree_with_the_general_path(op, dtype, rng, general_path):
    """The C-level fast entries and the Python path are one seam: same
    outputs, statistics, gradients and running-statistic updates, bit for bit."""
    call = op.example(rng, dtype, op.default_shape)

    def run():
        args = tuple(np.array(a, copy=True) if i in op.mutates else a for i, a in enumerate(call.args))
        res = op.forward(*args, **call.kwargs, return_stats=True)
        outputs, stats = res[:call.n_outputs], res[call.n_outputs:]
        g = np.linspace(-1, 1, outputs[0].size).reshape(outputs[0].shape).astype(dtype)
        bargs, bkwargs = call.backward(outputs, stats, [g])
        grads = op.backward(*bargs, **bkwargs)
        grads = grads if isinstance(grads, tuple) else (grads,)
        return list(res) + [args[i] for i in op.mutates] + [gr for gr in grads if gr is not None]

    def run_out():
        """The forward into preallocated out= (and residual_out= for the fused ops)."""
        args = tuple(np.array(a, copy=True) if i in op.mutates else a for i, a in enumerate(call.args))
        extra = {"out": np.empty_like(args[0])}
        if op.name.startswith("add_"):
            extra["residual_out"] = np.empty_like(args[0])
        res = op.forward(*args, **call.kwargs, **extra)
        return list(res) if isinstance(res, tuple) else [res]

    fast = run() + run_out()
    general_path()
    general = run() + run_out()
    assert len(fast) == len(general)
    for k, (a, b) in enumerate(zip(fast, general)):
        assert a.dtype == b.dtype and a.shape == b.shape, (op.name, k)
        assert np.array_equal(a, b, equal_nan=True), (op.name, k)


@pytest.mark.parametrize("x_dtype,p_dtype", [(F32, F16), (F32, BF16), (BF16, F16), (BF16, F64), (F16, BF16),
                                             (F64, F32)], ids=str)
@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
def test_mixed_parameter_dtypes_raise_type_error(op, x_dtype, p_dtype, rng):
    """A parameter may be in x's dtype, or float32 with 16-bit x (as torch's
    mixed precision); any other mix is a TypeError naming the parameter,
    never a silent cast."""
    call = op.example(rng, x_dtype, op.default_shape)
    params = [i for i, a in enumerate(call.args) if i > 0 and i not in op.mutates
              and isinstance(a, np.ndarray) and a.dtype == x_dtype]
    if op.name.startswith("add_"):
        params = params[1:]  # the residual is a second input, not a parameter
    if not params:
        assert op.name in ("normalize", "standardize", "min_max_scale", "local_response_norm", "ada_norm",
                           "weight_standardization"), op.name
        return
    i = params[0]
    args = call.args[:i] + (call.args[i].astype(p_dtype),) + call.args[i + 1:]
    with pytest.raises(TypeError, match="dtype"):
        op.forward(*args, **call.kwargs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channel_axis", [1, -1])
@pytest.mark.parametrize("name,training", [("batch_norm", True), ("batch_norm", False),
                                           ("instance_norm", True), ("instance_norm", False)])
def test_running_statistics_fast_and_general_agree(name, training, channel_axis, dtype, rng, general_path):
    """Running statistics (float32 and float64 buffers) are updated, and used,
    identically by the fast entries and the general path."""
    x = rng.standard_normal((4, 6, 5, 3)).astype(dtype)
    if channel_axis == -1:
        x = np.ascontiguousarray(np.moveaxis(x, 1, -1))
    C = 6
    w = rng.standard_normal(C).astype(dtype)
    f = getattr(functional, name)

    def run():
        out = []
        for rdt in (np.float32, np.float64):
            rm = np.linspace(-1, 1, C).astype(rdt)
            rv = np.linspace(0.5, 2, C).astype(rdt)
            res = f(x, rm, rv, w, w, training, 0.1, 1e-5, channel_axis=channel_axis, return_stats=True)
            out += list(res) + [rm, rv]
        return out

    fast = run()
    general_path()
    general = run()
    for k, (a, b) in enumerate(zip(fast, general)):
        assert a.dtype == b.dtype and np.array_equal(a, b), (name, k)


def _misaligned_copy(a, offset):
    """a's values in memory `offset` bytes past an allocation's start (not
    aligned to the item size when offset is odd): a view of a byte buffer."""
    buf = np.zeros(a.nbytes + 16, np.uint8)
    v = np.frombuffer(buf.data, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape)
    v[...] = a
    return v


@pytest.mark.parametrize("offset", [1, 2, 6])
@pytest.mark.parametrize("dtype", [F32, BF16, F16], ids=str)
@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
def test_misaligned_arrays_with_streaming_stores(op, dtype, offset, rng, monkeypatch):
    """Inputs and out= arrays at any byte offset (views of byte buffers) give
    the aligned result, streaming stores forced on: no fault, no difference."""
    call = op.example(rng, dtype, op.default_shape)
    fresh = lambda: tuple(np.array(a, copy=True) if i in op.mutates else a  # noqa: E731
                          for i, a in enumerate(call.args))
    base = op.forward(*fresh(), **call.kwargs)
    base = base[0] if isinstance(base, tuple) else base
    previous = _dispatch.kernels.set_stream_threshold(0)
    try:
        x = _misaligned_copy(call.args[0], offset)
        out = _misaligned_copy(np.zeros_like(call.args[0]), offset)
        y = op.forward(x, *fresh()[1:], **call.kwargs, out=out)
    finally:
        _dispatch.kernels.set_stream_threshold(previous)
    y = y[0] if isinstance(y, tuple) else y
    assert y is out
    assert np.array_equal(out, base, equal_nan=True)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("name", ["layer_norm", "rms_norm"])
def test_wide_16bit_rows_split_across_threads(name, dtype, rng):
    """A few rows wider than the split threshold (65536) run in segments on
    every thread: the result is the one-thread result up to the rounding of
    the segment sums (within one unit of the dtype), and the float32 one."""
    f = getattr(functional, name)
    x = (rng.standard_normal((1, 70001)) * 2 + 3).astype(dtype)
    w = (1 + 0.1 * rng.standard_normal(70001)).astype(dtype)
    one = f(x, 70001, w, n_threads=1).astype(np.float64)
    two = f(x, 70001, w, n_threads=2).astype(np.float64)
    wide32 = f(x.astype(np.float32), 70001, w.astype(np.float32), n_threads=2).astype(dtype).astype(np.float64)
    unit = float(ml_dtypes.finfo(dtype).eps) * max(1.0, float(np.abs(one).max()))
    assert np.abs(two - one).max() <= unit
    assert np.abs(two - wide32).max() <= unit


def _conversion_floats(rng):
    """float32 bit patterns that stress a 16-bit rounding: every high half
    with low halves at, just below and just above the rounding tie, random
    bits, subnormals (alone and among normal values in one vector), NaN
    payloads, infinities and the largest finite values."""
    high = np.arange(65536, dtype=np.uint32) << 16
    lows = np.array([0x0000, 0x7fff, 0x8000, 0x8001, 0xffff], np.uint32)
    bits = [(high[:, None] | lows[None, :]).ravel(), rng.integers(0, 2**32, 400_000, dtype=np.uint32)]
    sub = rng.integers(1, 0x00800000, 4096, dtype=np.uint32) | (rng.integers(0, 2, 4096, dtype=np.uint32) << 31)
    mixed = rng.integers(0x3f800000, 0x40000000, 4096, dtype=np.uint32)
    mixed[::37] = sub[::37]  # one subnormal in some vectors of normal values
    bits += [sub, mixed, np.array([0x7f800000, 0xff800000, 0x7f7fffff, 0x7f7f8000, 0x7fc00001, 0xffa00000],
                                  np.uint32)]
    return np.concatenate(bits).view(np.float32)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
def test_conversions_are_bit_exact_on_every_build(dtype, rng, isa):
    """Widening every 16-bit pattern and narrowing ~0.75M float32 patterns
    give NumPy's / ml_dtypes' bits (round to nearest even, subnormals kept,
    NaN quiet), on every instruction-set build: the kernels' vector paths
    (widen_narrow narrows whole vectors with the kernels' pack)."""
    every = np.arange(65536, dtype=np.uint16).view(dtype)
    wide = _dispatch.kernels.widen_narrow(every, np.empty(65536, np.float32))
    expected = every.astype(np.float32)
    nan = np.isnan(expected)
    assert np.array_equal(np.isnan(wide), nan)
    assert np.array_equal(wide.view(np.uint32)[~nan], expected.view(np.uint32)[~nan])
    f = _conversion_floats(rng)
    for offset in (0, 1, 7):  # whole vectors and tails at every alignment
        src = f[offset:]
        got = _dispatch.kernels.widen_narrow(src, np.empty(src.size, dtype)).view(np.uint16)
        with np.errstate(invalid="ignore", over="ignore"):  # NumPy warns on NaN, inf -> float16
            want = src.astype(dtype).view(np.uint16)
        finite = ~np.isnan(src)
        assert np.array_equal(got[finite], want[finite]), dtype
        # NaN stays NaN (quiet), with its sign
        g = got[~finite]
        exp_mask = 0x7c00 if dtype == F16 else 0x7f80
        assert ((g & exp_mask) == exp_mask).all() and ((g & ~np.uint16(0x8000 | exp_mask)) != 0).all()
        assert np.array_equal(g >> 15, (src[~finite].view(np.uint32) >> 31).astype(np.uint16))


@pytest.mark.parametrize("dtype", [F16, BF16], ids=str)
@pytest.mark.parametrize("name,shape,kwargs", [
    ("filter_response_norm", (3, 8, 5, 7), {}), ("filter_response_norm", (2, 5, 140, 3), {"channel_axis": -1}),
    ("local_response_norm", (3, 8, 5, 7), {}), ("local_response_norm", (2, 6, 3, 16), {"channel_axis": -1}),
    ("standardize", (70, 9), {}), ("min_max_scale", (70, 9), {}), ("batch_norm", (3, 8, 5, 7), {}),
    ("dynamic_tanh", (70, 9), {}), ("dynamic_tanh", (5, 3000), {}), ("ada_norm", (7, 37), {}),
    ("weight_standardization", (9, 4, 3, 3), {}), ("batch_renorm", (3, 8, 5, 7), {}),
])
def test_16bit_backward_equals_float32_backward_rounded(name, shape, kwargs, dtype, isa):
    """The backward over 16-bit storage is the float32 backward on the widened
    inputs: grad_x rounded once, float32 parameter gradients equal, bit for bit."""
    op = _registry.by_name(name)
    call = op.example(np.random.default_rng(7), F32, shape)
    for a in call.args:  # values the 16-bit dtype holds exactly (in place: the backward closure sees them)
        if isinstance(a, np.ndarray) and a.dtype == F32:
            a[...] = a.astype(dtype).astype(np.float32)
    x32 = call.args[0]
    if kwargs.get("channel_axis") == -1:
        x32 = np.ascontiguousarray(np.moveaxis(x32, 1, -1))

    def grads(x):
        args = (x,) + tuple(np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in call.args[1:])
        res = op.forward(*args, **call.kwargs, **kwargs, return_stats=True)
        outputs, stats = res[:call.n_outputs], res[call.n_outputs:]
        g = np.linspace(-1, 1, x.size).reshape(x.shape).astype(dtype).astype(x.dtype)
        bargs, bkwargs = call.backward(outputs, stats, [g])
        bargs = tuple(x if a is call.args[0] else a for a in bargs)
        out = op.backward(*bargs, **bkwargs, **kwargs)
        return out if isinstance(out, tuple) else (out,)

    g16 = grads(x32.astype(dtype))
    g32 = grads(x32)
    assert g16[0].dtype == dtype
    assert np.array_equal(g16[0].view(np.uint16), g32[0].astype(dtype).view(np.uint16))
    for a, b in zip(g16[1:], g32[1:]):
        assert (a is None) == (b is None)
        if a is not None:
            assert np.array_equal(a, b)


def _aliased(a, size, dtype):
    """(out buffer of `size` values, a copy of `a` living in that buffer's first bytes)."""
    buf = np.zeros(max(size, a.size), dtype)
    alias = buf[:a.size].reshape(a.shape)
    alias[...] = a
    return buf[:size], alias


@pytest.mark.parametrize("dtype", [F32, BF16], ids=str)
@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
def test_out_sharing_memory_with_an_argument(op, dtype, rng):
    """The one aliasing rule, for every op and every array argument besides x:
    an argument the op only reads may share memory with out (the result is
    the one computed without the overlap); one it also updates (running
    statistics) may not: a ValueError naming it, with nothing written."""
    call = op.example(rng, dtype, op.default_shape)
    x = call.args[0]
    checked = 0
    for i, a in enumerate(call.args):
        if i == 0 or not isinstance(a, np.ndarray) or a.dtype != x.dtype:
            continue  # out has x's dtype: only such arrays can be its memory
        base = tuple(np.array(b, copy=True) if isinstance(b, np.ndarray) else b for b in call.args)
        expected = op.forward(*base, **call.kwargs)
        expected = expected[0] if isinstance(expected, tuple) else expected
        flat, alias = _aliased(a, x.size, x.dtype)
        out = flat.reshape(x.shape)
        args = tuple(alias if j == i else (np.array(b, copy=True) if isinstance(b, np.ndarray) else b)
                     for j, b in enumerate(call.args))
        if i in op.mutates:
            before = [np.array(b, copy=True) for b in args if isinstance(b, np.ndarray)]
            with pytest.raises(ValueError, match="out must not share memory"):
                op.forward(*args, **call.kwargs, out=out)
            after = [b for b in args if isinstance(b, np.ndarray)]
            assert all(np.array_equal(p, q, equal_nan=True) for p, q in zip(before, after))
        else:
            y = op.forward(*args, **call.kwargs, out=out)
            y = y[0] if isinstance(y, tuple) else y
            assert y is out
            assert np.array_equal(out, expected, equal_nan=True), (op.name, i)
        checked += 1
    # ops whose only array argument besides x is 16-bit-incompatible have nothing to alias
    assert checked or op.name in ("normalize", "local_response_norm", "standardize", "min_max_scale",
                                  "add_layer_norm", "add_rms_norm", "ada_norm", "weight_standardization") \
        or dtype == BF16 and op.mutates


@pytest.mark.parametrize("op", [o for o in _registry.OPS if o.mutates], ids=lambda o: o.name)
def test_read_only_running_statistics_change_nothing(op, rng):
    """Every argument is checked before anything is written: a read-only
    running statistic is a ValueError, and the other one is left as it was."""
    call = op.example(rng, F32, op.default_shape)
    for i in op.mutates:
        args = [np.array(b, copy=True) if isinstance(b, np.ndarray) else b for b in call.args]
        args[i].flags.writeable = False
        before = [np.array(args[j], copy=True) for j in op.mutates]
        with pytest.raises(ValueError, match="read-only"):
            op.forward(*args, **call.kwargs)
        assert all(np.array_equal(args[j], b) for j, b in zip(op.mutates, before))


def _swapped(a):
    """a as a byte-swapped (non-native order) array of the same values."""
    if isinstance(a, np.ndarray) and a.dtype.kind == "f":
        return a.astype(a.dtype.newbyteorder("S"))
    return a


@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
def test_byte_swapped_arguments_give_the_native_result(op, dtype, rng):
    """Every array argument, forward and backward, may be in non-native byte
    order: the values are the native call's, bit for bit (one mechanism:
    as_float_array / check_param_dtype / same_shape_input bring them to
    native order)."""
    call = op.example(rng, dtype, op.default_shape)

    def run(convert):
        args = tuple(convert(np.array(a, copy=True)) if isinstance(a, np.ndarray) else a for a in call.args)
        res = op.forward(*args, **call.kwargs, return_stats=True)
        outputs, stats = res[:call.n_outputs], res[call.n_outputs:]
        g = np.linspace(-1, 1, outputs[0].size).reshape(outputs[0].shape).astype(dtype)
        bargs, bkwargs = call.backward(tuple(np.asarray(o) for o in outputs),
                                       tuple(np.asarray(s) for s in stats), [g])
        grads = op.backward(*(convert(a) if isinstance(a, np.ndarray) else a for a in bargs), **bkwargs)
        grads = grads if isinstance(grads, tuple) else (grads,)
        return [np.asarray(r, dtype=np.asarray(r).dtype.newbyteorder("=")) for r in res] + \
            [np.asarray(args[i], dtype=args[i].dtype.newbyteorder("=")) for i in op.mutates] + \
            [gr for gr in grads if gr is not None]

    native = run(lambda a: a)
    swapped = run(_swapped)
    assert len(native) == len(swapped)
    for k, (a, b) in enumerate(zip(native, swapped)):
        assert np.array_equal(a, b, equal_nan=True), (op.name, k)


@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
def test_huge_scalar_arguments_are_named_errors(op, rng):
    """A scalar that fits no C type (an int like 10**400 for eps, momentum,
    p, alpha, ...) is a ValueError or TypeError naming the argument, never the
    conversion's OverflowError; a thread count beyond the machine's is capped."""
    call = op.example(rng, F32, op.default_shape)
    slots = [("arg", i) for i, a in enumerate(call.args) if type(a) is float]
    slots += [("kw", k) for k, v in call.kwargs.items() if type(v) is float]
    for kind, key in slots:
        args, kwargs = list(call.args), dict(call.kwargs)
        if kind == "arg":
            args[key] = 10**400
        else:
            kwargs[key] = 10**400
        with pytest.raises((ValueError, TypeError)) as info:
            op.forward(*args, **kwargs)
        assert not isinstance(info.value, OverflowError), (op.name, key)
    copies = lambda: [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in call.args]  # noqa: E731
    expected = op.forward(*copies(), **call.kwargs)
    got = op.forward(*copies(), **call.kwargs, n_threads=10**30)
    for a, b in zip(expected if isinstance(expected, tuple) else (expected,), got if isinstance(got, tuple) else (got,)):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("make", [
    lambda: fastnorm.nn.GroupNorm(0, 6), lambda: fastnorm.nn.GroupNorm(2.0, 6), lambda: fastnorm.nn.LayerNorm("16"),
    lambda: fastnorm.nn.LayerNorm(-3), lambda: fastnorm.nn.RMSNorm((4, 0)), lambda: fastnorm.nn.BatchNorm2d(2.5),
    lambda: fastnorm.nn.InstanceNorm2d(0), lambda: fastnorm.nn.WeightNorm(np.array(2.0)),
    lambda: fastnorm.set_output_cache(-1),
], ids=["groups0", "groups_float", "shape_str", "shape_neg", "shape_zero", "features_float", "features0",
        "weightnorm_0d", "cache_neg"])
def test_layer_constructor_arguments_are_checked(make):
    """Counts in layer constructors are ints >= 1 (a string is not a shape);
    bad ones are a ValueError / TypeError naming them, not a ZeroDivisionError
    or a silently wrong layer."""
    with pytest.raises((ValueError, TypeError)) as info:
        make()
    assert type(info.value) in (ValueError, TypeError)


@pytest.mark.parametrize("op", [op for op in _registry.OPS if op.make_layer is not None
                                and op.name not in ("weight_norm", "weight_standardization")],
                         ids=lambda op: op.name)
def test_eval_forward_skips_statistics_and_backward_recomputes_them(op, rng, monkeypatch):
    """An eval-mode layer calls its op without return_stats (the cost of the
    functional call), and a backward after it still gets the gradients of an
    eval forward: the layer recomputes the statistics from the saved input.
    Nothing is updated twice (running statistics, num_batches_tracked)."""
    x = op.example(rng, F32, op.default_shape).args[0]
    layer, args = op.make_layer(x, F32)
    layer.eval()
    flags = []
    real = getattr(functional, op.name)

    def spy(*a, **k):
        flags.append(k.get("return_stats", False))
        return real(*a, **k)
    import fastnorm.nn as fnn
    monkeypatch.setattr(fnn.F, op.name, spy)
    state = {k: v.copy() for k, v in layer.state_dict().items()}
    y = layer(*args)
    assert flags == [False], (op.name, flags)
    g = np.linspace(-1, 1, y.size).reshape(y.shape).astype(F32)
    gx = layer.backward(g)
    assert flags == [False, True]
    for k, v in layer.state_dict().items():
        assert np.array_equal(v, state[k], equal_nan=True), (op.name, k)
    twin, twin_args = op.make_layer(x, F32)  # the same layer, eval forward with statistics saved
    twin.load_state_dict(state)
    twin.eval()
    monkeypatch.setattr(fnn.F, op.name, real)
    twin._forward = lambda call, x_, *extra: _forward_with_stats(twin, call, x_, extra)
    assert np.array_equal(twin(*twin_args), y, equal_nan=True)
    np.testing.assert_array_equal(twin.backward(g), gx)


def _forward_with_stats(layer, call, x, extra):
    r = call(True)
    layer._saved = (np.asarray(x),) + tuple(r[1:]) + extra
    return r[0]


@pytest.mark.parametrize("dtype", [F32, F64, BF16], ids=str)
@pytest.mark.parametrize("op", _registry.OPS, ids=OP_IDS)
def test_statistics_of_one_value_give_exact_zero_gradients(op, dtype, rng):
    """Where every statistic is over one value (x of shape (3, 1, ...): a
    LayerNorm row of width 1, a GroupNorm group of one value, ...) and the
    float64 twin's grad_x is exactly 0 (x - mean is 0: the output does not
    depend on x), fastnorm's is exactly 0 too, not a rounding of it.  Ops the
    shape does not make degenerate have a non-zero twin gradient and are not
    asserted on; a refused shape (training statistics of one value) is a
    ValueError as torch's."""
    shape = (3,) + (1,) * (len(op.default_shape) - 1)
    call = op.example(rng, dtype, shape)
    call.args, call.kwargs = _explicit_eps(op.forward, call.args, call.kwargs, dtype)
    fresh = lambda: [np.array(a, copy=True) if i in op.mutates else a  # noqa: E731
                     for i, a in enumerate(call.args)]
    try:
        res = op.forward(*fresh(), **call.kwargs, return_stats=True)
    except ValueError as e:
        assert "Expected more than 1" in str(e)
        return
    args64, kwargs64 = _call64(fresh(), call.kwargs)
    ref = op.reference(*args64, **kwargs64, return_stats=True)
    g = rng.standard_normal(res[0].shape).astype(dtype)
    rb, rkw = call.backward(ref[:call.n_outputs], ref[call.n_outputs:], [g.astype(np.float64)])
    rb, rkw = _call64(rb, rkw)
    want = op.reference_backward(*rb, **rkw)
    want = want[0] if isinstance(want, tuple) else want
    if np.any(want != 0):
        return
    bargs, bkwargs = call.backward(res[:call.n_outputs], res[call.n_outputs:], [g])
    got = op.backward(*bargs, **bkwargs)
    got = got[0] if isinstance(got, tuple) else got
    assert np.array_equal(got.astype(np.float64), np.zeros(got.shape)), \
        f"{op.name}: grad_x {got.ravel()[:4]} where every statistic is over one value"
