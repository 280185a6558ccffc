"""The implementations fastnorm is compared against, one factory per (op, peer).

Every factory takes the case's arrays and returns a zero-argument callable
that runs the whole operation once, or None when the peer is not installed or
lacks the op.  Shared by the pytest-benchmark suite and `compare.py`.
"""
import numpy as np

import fastnorm

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover - the bench extra installs it
    torch = None

try:
    import onnx  # noqa: F401 - the model builder below needs it
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover
    ort = None

try:
    import ml_dtypes
    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - the bench extra installs it
    ml_dtypes = None
    BFLOAT16 = None

EPS = 1e-5

# the dtypes the comparison knows; an op's "dtypes" entry says which it runs
DTYPES = {"float32": np.dtype(np.float32)}
if BFLOAT16 is not None:
    DTYPES["bfloat16"] = BFLOAT16


def is_bfloat16(a):
    return BFLOAT16 is not None and getattr(a, "dtype", None) == BFLOAT16


def to_torch(a):
    """A torch tensor sharing a's memory; ml_dtypes.bfloat16 arrays become
    torch.bfloat16 tensors through their uint16 bits (torch.from_numpy does
    not know ml_dtypes)."""
    if is_bfloat16(a):
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def cast_case(arrays, dtype):
    """A case's arrays (float32, from make_case) in `dtype` ("float32" or "bfloat16")."""
    dt = DTYPES[dtype]
    if dt == np.float32:
        return arrays
    return tuple(None if a is None else a.astype(dt) for a in arrays)


def _bits(a):
    """The array's bytes as uint16 for bfloat16 (ml_dtypes' bfloat16 ufuncs
    convert element by element: np.add on them is compute-bound, ~20x a
    memory pass), else the array itself."""
    return a.view(np.uint16) if is_bfloat16(a) else a


def make_case(shape, seed=0):
    """x, grad_out, weight, bias (float32) for a (rows, width) case."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape, dtype=np.float32)
    g = rng.standard_normal(shape, dtype=np.float32)
    w = rng.standard_normal(shape[-1], dtype=np.float32)
    b = rng.standard_normal(shape[-1], dtype=np.float32)
    return x, g, w, b


def set_threads(n):
    if torch is not None:
        torch.set_num_threads(n)


# ---------------------------------------------------------------- memory limit

def copy_limit(x, g, w, b, threads, backward=False):
    """One read and one write of x (np.copyto); with backward, add the time
    of two reads and one write (np.add), the floor of a backward pass."""
    out = np.empty_like(x)
    if not backward:
        return lambda: np.copyto(out, x)
    out2 = np.empty_like(x)
    xa, ga, oa = _bits(x), _bits(g), _bits(out2)  # bfloat16: the same bytes as uint16

    def run():
        np.copyto(out, x)
        np.add(xa, ga, out=oa)
    return run


# ---------------------------------------------------------------- fastnorm

def fastnorm_layer_norm(x, g, w, b, threads, backward=False, out=False):
    n = x.shape[-1]
    if not backward:
        if out:
            y = np.empty_like(x)
            return lambda: fastnorm.layer_norm(x, n, w, b, EPS, out=y, n_threads=threads)
        return lambda: fastnorm.layer_norm(x, n, w, b, EPS, n_threads=threads)

    def run():
        y, mean, rstd = fastnorm.layer_norm(x, n, w, b, EPS, n_threads=threads, return_stats=True)
        return fastnorm.layer_norm_backward(g, x, mean, rstd, w, b, n_threads=threads)
    return run


def fastnorm_rms_norm(x, g, w, b, threads, backward=False, out=False):
    n = x.shape[-1]
    if not backward:
        if out:
            y = np.empty_like(x)
            return lambda: fastnorm.rms_norm(x, n, w, EPS, out=y, n_threads=threads)
        return lambda: fastnorm.rms_norm(x, n, w, EPS, n_threads=threads)

    def run():
        y, rstd = fastnorm.rms_norm(x, n, w, EPS, n_threads=threads, return_stats=True)
        return fastnorm.rms_norm_backward(g, x, rstd, w, n_threads=threads)
    return run


# ---------------------------------------------------------------- NumPy

def numpy_layer_norm(x, g, w, b, threads, backward=False):
    def forward():
        mean = x.mean(-1, keepdims=True)
        xc = x - mean
        rstd = 1.0 / np.sqrt((xc * xc).mean(-1, keepdims=True) + EPS)
        xhat = xc * rstd
        return xhat * w + b, xhat, rstd

    if not backward:
        return lambda: forward()[0]

    def run():
        y, xhat, rstd = forward()
        gw = g * w
        gx = rstd * (gw - gw.mean(-1, keepdims=True) - xhat * (gw * xhat).mean(-1, keepdims=True))
        return gx, (g * xhat).sum(0), g.sum(0)
    return run


def numpy_rms_norm(x, g, w, b, threads, backward=False):
    def forward():
        rstd = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + EPS)
        return x * rstd * w, rstd

    if not backward:
        return lambda: forward()[0]

    def run():
        y, rstd = forward()
        gw = g * w
        gx = rstd * gw - x * rstd ** 3 * (gw * x).mean(-1, keepdims=True)
        return gx, (g * x * rstd).sum(0)
    return run


# ---------------------------------------------------------------- PyTorch

def _torch_args(x, g, w, b, backward):
    tx = to_torch(x)
    tw = to_torch(w)
    tb = to_torch(b)
    if backward:
        tx = tx.clone().requires_grad_()
        tw = tw.clone().requires_grad_()
        tb = tb.clone().requires_grad_()
    return tx, to_torch(g), tw, tb


def torch_layer_norm(x, g, w, b, threads, backward=False):
    if torch is None:
        return None
    tx, tg, tw, tb = _torch_args(x, g, w, b, backward)
    shape = (x.shape[-1],)
    if not backward:
        def run():
            with torch.no_grad():
                return TF.layer_norm(tx, shape, tw, tb, EPS)
        return run

    def run():  # what a training step runs: autograd's forward and backward
        y = TF.layer_norm(tx, shape, tw, tb, EPS)
        return torch.autograd.grad(y, (tx, tw, tb), tg)
    return run


def torch_rms_norm(x, g, w, b, threads, backward=False):
    if torch is None:
        return None
    tx, tg, tw, tb = _torch_args(x, g, w, b, backward)
    shape = (x.shape[-1],)
    if not backward:
        def run():
            with torch.no_grad():
                return TF.rms_norm(tx, shape, tw, EPS)
        return run

    def run():
        y = TF.rms_norm(tx, shape, tw, EPS)
        return torch.autograd.grad(y, (tx, tw), tg)
    return run


# ---------------------------------------------------------------- ONNX Runtime

def _ort_session(node, opset, inputs, initializers, threads):
    graph = helper.make_graph(
        [node], "norm",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)) for name, shape in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        initializer=[numpy_helper.from_array(arr, name) for name, arr in initializers],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10  # the IR of opset 23; newer onnx writes an IR older runtimes refuse
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def ort_layer_norm(x, g, w, b, threads, backward=False):
    if ort is None or backward:
        return None
    node = helper.make_node("LayerNormalization", ["x", "w", "b"], ["y"], axis=-1, epsilon=EPS)
    sess = _ort_session(node, 17, [("x", x.shape)], [("w", w), ("b", b)], threads)
    feed = {"x": x}
    return lambda: sess.run(None, feed)


def ort_rms_norm(x, g, w, b, threads, backward=False):
    if ort is None or backward:
        return None
    node = helper.make_node("RMSNormalization", ["x", "w"], ["y"], axis=-1, epsilon=EPS)
    try:
        sess = _ort_session(node, 23, [("x", x.shape)], [("w", w)], threads)
    except Exception:  # an onnxruntime without opset 23
        return None
    feed = {"x": x}
    return lambda: sess.run(None, feed)


def fastnorm_normalize(x, g, w, b, threads, backward=False, out=False):
    if not backward:
        y = np.empty_like(x) if out else None
        return lambda: fastnorm.normalize(x, 2.0, -1, out=y, n_threads=threads)

    def run():
        y, n = fastnorm.normalize(x, 2.0, -1, n_threads=threads, return_stats=True)
        return fastnorm.normalize_backward(g, x, n, 2.0, -1, n_threads=threads)
    return run


def numpy_normalize(x, g, w, b, threads, backward=False):
    def forward():
        n = np.sqrt((x * x).sum(-1, keepdims=True))
        return x / np.maximum(n, 1e-12), n

    if not backward:
        return lambda: forward()[0]

    def run():
        y, n = forward()
        return g / n - x * ((g * x).sum(-1, keepdims=True) / n ** 3)
    return run


def torch_normalize(x, g, w, b, threads, backward=False):
    if torch is None:
        return None
    tx, tg, _, _ = _torch_args(x, g, w, b, backward)
    if not backward:
        def run():
            with torch.no_grad():
                return TF.normalize(tx, 2.0, -1)
        return run

    def run():
        return torch.autograd.grad(TF.normalize(tx, 2.0, -1), (tx,), tg)
    return run


def ort_normalize(x, g, w, b, threads, backward=False):
    if ort is None or backward:
        return None
    node = helper.make_node("LpNormalization", ["x"], ["y"], axis=-1, p=2)
    sess = _ort_session(node, 17, [("x", x.shape)], [], threads)
    feed = {"x": x}
    return lambda: sess.run(None, feed)


def _add_norm_factories(rms):
    """fastnorm fused, NumPy, PyTorch composition, ORT Skip*LayerNormalization,
    an unfused fastnorm (np.add then the norm), and the memory limit (two
    copies: the fused op reads two arrays and writes two)."""
    def fast(x, g, w, b, threads, backward=False, out=False):
        if backward:
            return None
        y = np.empty_like(x) if out else None
        h = np.empty_like(x) if out else None
        if rms:
            return lambda: fastnorm.add_rms_norm(x, g, None, w, EPS, out=y, residual_out=h, n_threads=threads)
        return lambda: fastnorm.add_layer_norm(x, g, None, w, b, EPS, out=y, residual_out=h,
                                               n_threads=threads)

    def unfused(x, g, w, b, threads, backward=False):
        if backward:
            return None
        h = np.empty_like(x)

        def run():
            np.add(x, g, out=h)
            if rms:
                return fastnorm.rms_norm(h, None, w, EPS, n_threads=threads), h
            return fastnorm.layer_norm(h, None, w, b, EPS, n_threads=threads), h
        return run

    def numpy_(x, g, w, b, threads, backward=False):
        if backward:
            return None
        norm = numpy_rms_norm if rms else numpy_layer_norm

        def run():
            h = x + g
            return norm(h, g, w, b, threads)(), h
        return run

    def torch_(x, g, w, b, threads, backward=False):
        if torch is None or backward:
            return None
        tx, tr, tw, tb = torch.from_numpy(x), torch.from_numpy(g), torch.from_numpy(w), torch.from_numpy(b)
        shape = (x.shape[-1],)

        def run():
            with torch.no_grad():
                h = tx + tr
                y = TF.rms_norm(h, shape, tw, EPS) if rms else TF.layer_norm(h, shape, tw, tb, EPS)
                return y, h
        return run

    def ort_(x, g, w, b, threads, backward=False):
        if ort is None or backward:
            return None
        x3, g3 = x.reshape((1,) + x.shape), g.reshape((1,) + g.shape)
        op = "SkipSimplifiedLayerNormalization" if rms else "SkipLayerNormalization"
        ins = ["x", "skip", "gamma"] if rms else ["x", "skip", "gamma", "beta"]
        node = helper.make_node(op, ins, ["y", "", "", "h"], domain="com.microsoft", epsilon=EPS)
        graph = helper.make_graph(
            [node], "skipnorm",
            [helper.make_tensor_value_info(n_, TensorProto.FLOAT, list(x3.shape)) for n_ in ("x", "skip")],
            [helper.make_tensor_value_info(n_, TensorProto.FLOAT, None) for n_ in ("y", "h")],
            initializer=[numpy_helper.from_array(w, "gamma")] + ([] if rms else [numpy_helper.from_array(b, "beta")]),
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 10
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception:
            return None
        feed = {"x": x3, "skip": g3}
        return lambda: sess.run(None, feed)

    def limit(x, g, w, b, threads, backward=False):
        o1, o2 = np.empty_like(x), np.empty_like(x)

        def run():
            np.copyto(o1, x)
            np.copyto(o2, g)
        return run

    return {"fastnorm": fast, "torch": torch_, "onnxruntime": ort_, "numpy": numpy_,
            "unfused": unfused, "copy": limit,
            "shapes": [(8192, 4096)], "directions": ("fwd",), "make_case": make_case}


def _standardize_factories():
    try:
        from sklearn.preprocessing import StandardScaler
    except ImportError:  # pragma: no cover - the bench extra installs it
        StandardScaler = None

    def fast(x, g, w, b, threads, backward=False, out=False):
        if backward:
            return None
        y = np.empty_like(x) if out else None
        return lambda: fastnorm.standardize(x, out=y, n_threads=threads)

    def numpy_(x, g, w, b, threads, backward=False):
        return None if backward else (lambda: (x - x.mean(0)) / x.std(0))

    def sklearn_(x, g, w, b, threads, backward=False):
        if StandardScaler is None or backward:
            return None
        return lambda: StandardScaler().fit_transform(x)

    return {"fastnorm": fast, "scikit-learn": sklearn_, "numpy": numpy_,
            "shapes": [(1_000_000, 64)], "directions": ("fwd",), "make_case": make_case}


def _standardize_transform_factories():
    """Applying known statistics (the transform of fit/transform): one pass."""
    try:
        from sklearn.preprocessing import StandardScaler
    except ImportError:  # pragma: no cover
        StandardScaler = None

    def fast(x, g, w, b, threads, backward=False, out=False):
        if backward:
            return None
        y = np.empty_like(x) if out else None
        _, m, s = fastnorm.standardize(x, return_stats=True)
        return lambda: fastnorm.standardize(x, mean=m, std=s, out=y, n_threads=threads)

    def numpy_(x, g, w, b, threads, backward=False):
        if backward:
            return None
        m, s = x.mean(0), x.std(0)
        return lambda: (x - m) / s

    def sklearn_(x, g, w, b, threads, backward=False):
        if StandardScaler is None or backward:
            return None
        sc = StandardScaler().fit(x)
        return lambda: sc.transform(x)

    return {"fastnorm": fast, "scikit-learn": sklearn_, "numpy": numpy_,
            "shapes": [(1_000_000, 64)], "directions": ("fwd",), "make_case": make_case}


def _weight_norm_factories():
    def case(shape):
        x, g, w, b = make_case(shape)
        return x, g, np.abs(w[:, None]) + 0.5, b  # v, grad_w, g (out, 1), unused

    def fast(v, gw, g, b, threads, backward=False, out=False):
        if not backward:
            return lambda: fastnorm.weight_norm(v, g, 0, n_threads=threads)

        def run():
            w, n = fastnorm.weight_norm(v, g, 0, n_threads=threads, return_stats=True)
            return fastnorm.weight_norm_backward(gw, v, g, n, 0, n_threads=threads)
        return run

    def torch_(v, gw, g, b, threads, backward=False):
        if torch is None:
            return None
        tv, tg, tgw = torch.from_numpy(v), torch.from_numpy(g), torch.from_numpy(gw)
        if not backward:
            def run():
                with torch.no_grad():
                    return torch._weight_norm(tv, tg, 0)
            return run
        tv = tv.clone().requires_grad_()
        tg = tg.clone().requires_grad_()
        return lambda: torch.autograd.grad(torch._weight_norm(tv, tg, 0), (tv, tg), tgw)

    def numpy_(v, gw, g, b, threads, backward=False):
        def forward():
            n = np.sqrt((v * v).sum(1, keepdims=True))
            return g * v / n, n
        if not backward:
            return lambda: forward()[0]

        def run():
            w, n = forward()
            d = (gw * v).sum(1, keepdims=True)
            return g / n * (gw - v * d / n ** 2), d / n
        return run

    return {"fastnorm": fast, "torch": torch_, "numpy": numpy_,
            "shapes": [(4096, 4096)], "directions": ("fwd", "fwd+bwd"), "make_case": case}


SHAPES = [(1, 768), (64, 768), (2048, 1024), (8192, 4096)]

# op -> its implementations, shapes, directions, case builder and dtypes
# ("dtypes" absent: float32 only; bfloat16 runs fastnorm, PyTorch and the copy
# limit: the NumPy and ONNX Runtime peers are float32-only here)
OPS = {
    "layer_norm": {
        "fastnorm": fastnorm_layer_norm, "torch": torch_layer_norm,
        "onnxruntime": ort_layer_norm, "numpy": numpy_layer_norm,
        "shapes": SHAPES, "directions": ("fwd", "fwd+bwd"), "make_case": make_case,
        "dtypes": ("float32", "bfloat16"),
    },
    "rms_norm": {
        "fastnorm": fastnorm_rms_norm, "torch": torch_rms_norm,
        "onnxruntime": ort_rms_norm, "numpy": numpy_rms_norm,
        "shapes": SHAPES, "directions": ("fwd", "fwd+bwd"), "make_case": make_case,
        "dtypes": ("float32", "bfloat16"),
    },
}

OPS["normalize"] = {
    "fastnorm": fastnorm_normalize, "torch": torch_normalize,
    "onnxruntime": ort_normalize, "numpy": numpy_normalize,
    "shapes": [(8192, 4096)], "directions": ("fwd", "fwd+bwd"), "make_case": make_case,
}

OPS["add_layer_norm"] = _add_norm_factories(False)
OPS["add_rms_norm"] = _add_norm_factories(True)
OPS["weight_norm"] = _weight_norm_factories()
OPS["standardize fit+transform"] = _standardize_factories()
OPS["standardize transform"] = _standardize_transform_factories()

from channel_peers import CHANNEL_OPS  # noqa: E402

OPS.update(CHANNEL_OPS)

from member_peers import MEMBER_OPS  # noqa: E402

OPS.update(MEMBER_OPS)
