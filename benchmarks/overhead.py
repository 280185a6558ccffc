"""Per-call overhead: every public fastnorm op on a tiny input, in each spelling
a torch user writes, beside PyTorch's time for the same call.

    python benchmarks/compare.py --overhead-only --threads 2
    python benchmarks/overhead.py --quick          # the same (compare.py's flags)

On tiny inputs a normalization's time is its Python-level overhead: argument
parsing, validation, output allocation, the dispatch to a kernel.  Each row
is one literal call: the spelling column is the source that runs (compiled
from that string), and the PyTorch column runs its translation to torch
(torch.nn.functional's op under torch.no_grad() for forwards; for fwd+bwd the
autograd forward and torch.autograd.grad, as peers.py; fastnorm's fwd+bwd is
the forward with return_stats=True followed by the op's *_backward).  Where
torch has no op the column is scikit-learn's scaler (standardize,
min_max_scale), a torch composition (filter_response_norm), or n/a.

Before a row is timed, fastnorm's first output is checked against the peer's
(or, with no peer, against fastnorm.reference's float64 twin of the same
call): max |difference| within 1e-3 (bfloat16: 5e-2) of max(1, max |peer|).
A row that disagrees prints MISMATCH and is not timed.  A bfloat16 row whose
fastnorm call raises TypeError (a fastnorm without bfloat16) prints
"unsupported".  Timer: compare.py's auto-scaled loops in rounds that each
go over the whole table (compare.time_rounds: a slow spell of the machine
costs a row one round, not all of them), the minimum of the rounds.
Threads: torch.set_num_threads(n) and the OpenMP limit (threadpoolctl) for
fastnorm, which also runs inputs this small on one thread.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402

import fastnorm  # noqa: E402
from fastnorm import reference  # noqa: E402

torch = peers.torch
F = peers.TF if torch is not None else None

try:
    from sklearn.preprocessing import MinMaxScaler, StandardScaler
except ImportError:  # pragma: no cover - the bench extra installs it
    MinMaxScaler = StandardScaler = None

try:
    from threadpoolctl import threadpool_limits
except ImportError:  # pragma: no cover
    threadpool_limits = None

TOLERANCE = {"float32": 1e-3, "bfloat16": 5e-2}
BFLOAT16_OPS = ("layer_norm", "rms_norm", "batch_norm train", "batch_norm eval", "group_norm")

# the torch composition of filter_response_norm (torch has no op)
_FRN = "x * torch.rsqrt(x.square().mean((2, 3), keepdim=True) + 1e-6) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)"
_FRN_TLU = f"torch.maximum({_FRN}, t.view(1, -1, 1, 1))"

_DYT = "w * torch.tanh(al * x) + b"
_ADA = ("(lambda z: 2.0 * (z - z * (0.1 * z).detach()))"
        "((x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + 1e-5))")
_WS = "(v - v.mean(1, keepdim=True)) / (v.std(1, keepdim=True) + 1e-5)"
_C4 = "[None, :, None, None]"
_BRN = ("(lambda m, s, sr: ((x - m" + _C4 + ") / s" + _C4 + " * torch.clamp(s / sr, 1 / 3, 3).detach()" + _C4
        + " + torch.clamp((m - rm) / sr, -5, 5).detach()" + _C4 + ") * w" + _C4 + " + b" + _C4 + ")"
        "(x.mean((0, 2, 3)), torch.sqrt(x.var((0, 2, 3), unbiased=False) + 1e-5), torch.sqrt(rv + 1e-5))")

_SN = ("(lambda v, C: (lambda mi, vi: (lambda ml, tl, mb, tb_, mwt, vwt: "
       "((v - (mwt[0] * mi + mwt[1] * ml + mwt[2] * mb)) / (vwt[0] * vi + vwt[1] * (tl - ml ** 2) "
       "+ vwt[2] * (tb_ - mb ** 2) + 1e-5).sqrt()).view_as(x) * w.view(1, C, 1, 1) + b.view(1, C, 1, 1))"
       "(mi.mean(1, keepdim=True), (vi + mi ** 2).mean(1, keepdim=True), mi.mean(0, keepdim=True), "
       "(vi + mi ** 2).mean(0, keepdim=True), torch.softmax(mw, 0), torch.softmax(vw, 0)))"
       "(v.mean(-1, keepdim=True), v.var(-1, keepdim=True)))(x.reshape(x.shape[0], x.shape[1], -1), x.shape[1])")

_PN = "x / torch.sqrt(rv + 1e-5).view(1, -1, 1, 1) * w.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)"
_PN_BWD = ("(lambda z, s: (dy * w.view(1, -1, 1, 1) - 0.1 * t.view(1, -1, 1, 1) * z) "
           "/ torch.sqrt(s + 1e-5).view(1, -1, 1, 1))(x / torch.sqrt(rv + 1e-5).view(1, -1, 1, 1), "
           "(x * x).mean((0, 2, 3)))")

NO_OUT = "torch has no out="
NO_STATS = "torch returns no statistics"

# (op, family, direction, fastnorm spelling, peer spelling or None, note).  A
# spelling is Python source run as it is written; "; " separates statements
# and the last statement's value is the result.  The families' namespaces
# (below) define the names: x, w, b, dy, ... and, for the peer, their torch
# tensors (or the scikit-learn scalers).
SPECS = [
    # ---------------------------------------------------------------- rows: (1, 768)
    ("layer_norm", "rows", "fwd", "layer_norm(x, 768, w, b)", "F.layer_norm(x, (768,), w, b)",
     "torch takes no int"),
    ("layer_norm", "rows", "fwd", "layer_norm(x, (768,), w, b, 1e-5)", "F.layer_norm(x, (768,), w, b, 1e-5)", ""),
    ("layer_norm", "rows", "fwd", "layer_norm(x, [768], w, b)", "F.layer_norm(x, [768], w, b)", ""),
    ("layer_norm", "rows", "fwd", "layer_norm(x, normalized_shape=(768,), weight=w, bias=b, eps=1e-5)",
     "F.layer_norm(x, normalized_shape=(768,), weight=w, bias=b, eps=1e-5)", ""),
    ("layer_norm", "rows", "fwd", "layer_norm(x, (768,))", "F.layer_norm(x, (768,))", ""),
    ("layer_norm", "rows", "fwd", "layer_norm(x)", "F.layer_norm(x, x.shape[-1:])", ""),
    ("layer_norm", "rows", "fwd", "layer_norm(x, 768, w, b, return_stats=True)",
     "torch.native_layer_norm(x, (768,), w, b, 1e-5)", ""),
    ("layer_norm", "rows", "fwd", "layer_norm(x, 768, w, b, out=o)", "F.layer_norm(x, (768,), w, b)", NO_OUT),
    ("layer_norm", "rows", "fwd+bwd",
     "y, mean, rstd = layer_norm(x, 768, w, b, return_stats=True); layer_norm_backward(dy, x, mean, rstd, w, b)",
     "y = F.layer_norm(x, (768,), w, b); torch.autograd.grad(y, (x, w, b), dy)", ""),
    ("layer_norm", "rows", "fwd+bwd",
     "y, mean, rstd = layer_norm(x, normalized_shape=(768,), weight=w, bias=b, eps=1e-5, return_stats=True); "
     "layer_norm_backward(dy, x, mean, rstd, weight=w, bias=b)",
     "y = F.layer_norm(x, normalized_shape=(768,), weight=w, bias=b, eps=1e-5); "
     "torch.autograd.grad(y, (x, w, b), dy)", ""),
    ("layer_norm", "rows", "fwd+bwd",
     "y, mean, rstd = layer_norm(x, (768,), return_stats=True); layer_norm_backward(dy, x, mean, rstd)",
     "y = F.layer_norm(x, (768,)); torch.autograd.grad(y, (x,), dy)", ""),

    ("rms_norm", "rows", "fwd", "rms_norm(x, 768, w)", "F.rms_norm(x, (768,), w)", "torch takes no int"),
    ("rms_norm", "rows", "fwd", "rms_norm(x, (768,), w, 1e-5)", "F.rms_norm(x, (768,), w, 1e-5)", ""),
    ("rms_norm", "rows", "fwd", "rms_norm(x, (768,), w, None)", "F.rms_norm(x, (768,), w, None)", ""),
    ("rms_norm", "rows", "fwd", "rms_norm(x, [768], w)", "F.rms_norm(x, [768], w)", ""),
    ("rms_norm", "rows", "fwd", "rms_norm(x, normalized_shape=(768,), weight=w, eps=1e-5)",
     "F.rms_norm(x, normalized_shape=(768,), weight=w, eps=1e-5)", ""),
    ("rms_norm", "rows", "fwd", "rms_norm(x, (768,))", "F.rms_norm(x, (768,))", ""),
    ("rms_norm", "rows", "fwd", "rms_norm(x, 768, w, return_stats=True)",
     "torch._fused_rms_norm(x, [768], w, None)", ""),
    ("rms_norm", "rows", "fwd", "rms_norm(x, 768, w, out=o)", "F.rms_norm(x, (768,), w)", NO_OUT),
    ("rms_norm", "rows", "fwd+bwd",
     "y, rstd = rms_norm(x, 768, w, return_stats=True); rms_norm_backward(dy, x, rstd, w)",
     "y = F.rms_norm(x, (768,), w); torch.autograd.grad(y, (x, w), dy)", ""),
    ("rms_norm", "rows", "fwd+bwd",
     "y, rstd = rms_norm(x, normalized_shape=(768,), weight=w, eps=1e-5, return_stats=True); "
     "rms_norm_backward(dy, x, rstd, weight=w)",
     "y = F.rms_norm(x, normalized_shape=(768,), weight=w, eps=1e-5); torch.autograd.grad(y, (x, w), dy)", ""),
    ("rms_norm", "rows", "fwd+bwd",
     "y, rstd = rms_norm(x, (768,), return_stats=True); rms_norm_backward(dy, x, rstd)",
     "y = F.rms_norm(x, (768,)); torch.autograd.grad(y, (x,), dy)", ""),

    ("add_layer_norm", "rows", "fwd", "add_layer_norm(x, r, 768, w, b)",
     "h = x + r; F.layer_norm(h, (768,), w, b), h", ""),
    ("add_layer_norm", "rows", "fwd", "add_layer_norm(x, r, (768,), w, b, 1e-5)",
     "h = x + r; F.layer_norm(h, (768,), w, b, 1e-5), h", ""),
    ("add_layer_norm", "rows", "fwd",
     "add_layer_norm(x, residual=r, normalized_shape=(768,), weight=w, bias=b, eps=1e-5)",
     "h = x + r; F.layer_norm(h, normalized_shape=(768,), weight=w, bias=b, eps=1e-5), h", ""),
    ("add_layer_norm", "rows", "fwd", "add_layer_norm(x, r, (768,))", "h = x + r; F.layer_norm(h, (768,)), h", ""),
    ("add_layer_norm", "rows", "fwd", "add_layer_norm(x, r, 768, w, b, return_stats=True)",
     "h = x + r; torch.native_layer_norm(h, (768,), w, b, 1e-5), h", ""),
    ("add_layer_norm", "rows", "fwd", "add_layer_norm(x, r, 768, w, b, out=o, residual_out=o2)",
     "torch.add(x, r, out=o2); F.layer_norm(o2, (768,), w, b), o2", NO_OUT + " for layer_norm"),
    ("add_layer_norm", "rows", "fwd+bwd",
     "y, h, mean, rstd = add_layer_norm(x, r, 768, w, b, return_stats=True); "
     "layer_norm_backward(dy, h, mean, rstd, w, b)",
     "h = x + r; y = F.layer_norm(h, (768,), w, b); torch.autograd.grad(y, (x, r, w, b), dy)", ""),

    ("add_rms_norm", "rows", "fwd", "add_rms_norm(x, r, 768, w)", "h = x + r; F.rms_norm(h, (768,), w), h", ""),
    ("add_rms_norm", "rows", "fwd", "add_rms_norm(x, r, (768,), w, 1e-5)",
     "h = x + r; F.rms_norm(h, (768,), w, 1e-5), h", ""),
    ("add_rms_norm", "rows", "fwd", "add_rms_norm(x, residual=r, normalized_shape=(768,), weight=w, eps=1e-5)",
     "h = x + r; F.rms_norm(h, normalized_shape=(768,), weight=w, eps=1e-5), h", ""),
    ("add_rms_norm", "rows", "fwd", "add_rms_norm(x, r, (768,))", "h = x + r; F.rms_norm(h, (768,)), h", ""),
    ("add_rms_norm", "rows", "fwd", "add_rms_norm(x, r, 768, w, return_stats=True)",
     "h = x + r; torch._fused_rms_norm(h, [768], w, None), h", ""),
    ("add_rms_norm", "rows", "fwd", "add_rms_norm(x, r, 768, w, out=o, residual_out=o2)",
     "torch.add(x, r, out=o2); F.rms_norm(o2, (768,), w), o2", NO_OUT + " for rms_norm"),
    ("add_rms_norm", "rows", "fwd+bwd",
     "y, h, rstd = add_rms_norm(x, r, 768, w, return_stats=True); rms_norm_backward(dy, h, rstd, w)",
     "h = x + r; y = F.rms_norm(h, (768,), w); torch.autograd.grad(y, (x, r, w), dy)", ""),

    ("normalize", "rows", "fwd", "normalize(x, dim=-1)", "F.normalize(x, dim=-1)", ""),
    ("normalize", "rows", "fwd", "normalize(x, dim=1)", "F.normalize(x, dim=1)", ""),
    ("normalize", "rows", "fwd", "normalize(x)", "F.normalize(x)", ""),
    ("normalize", "rows", "fwd", "normalize(x, 2.0, -1)", "F.normalize(x, 2.0, -1)", ""),
    ("normalize", "rows", "fwd", "normalize(x, p=2.0, dim=-1, eps=1e-12)",
     "F.normalize(x, p=2.0, dim=-1, eps=1e-12)", ""),
    ("normalize", "rows", "fwd", "normalize(x, p=1.0, dim=-1)", "F.normalize(x, p=1.0, dim=-1)", ""),
    ("normalize", "rows", "fwd", "normalize(x, p=float('inf'), dim=-1)",
     "F.normalize(x, p=float('inf'), dim=-1)", ""),
    ("normalize", "rows", "fwd", "normalize(x, dim=-1, return_stats=True)", "F.normalize(x, dim=-1)",
     "torch returns no norm"),
    ("normalize", "rows", "fwd", "normalize(x, dim=-1, out=o)", "F.normalize(x, dim=-1, out=o)", ""),
    ("normalize", "rows", "fwd+bwd",
     "y, n = normalize(x, dim=-1, return_stats=True); normalize_backward(dy, x, n, dim=-1)",
     "y = F.normalize(x, dim=-1); torch.autograd.grad(y, (x,), dy)", ""),
    ("normalize", "rows", "fwd+bwd",
     "y, n = normalize(x, 1.0, 1, return_stats=True); normalize_backward(dy, x, n, 1.0, 1)",
     "y = F.normalize(x, 1.0, 1); torch.autograd.grad(y, (x,), dy)", ""),

    # ---------------------------------------------------------------- channels: (2, 16, 4, 4)
    ("batch_norm train", "channel", "fwd", "batch_norm(x, rm, rv, w, b, training=True)",
     "F.batch_norm(x, rm, rv, w, b, training=True)", ""),
    ("batch_norm train", "channel", "fwd", "batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)",
     "F.batch_norm(x, rm, rv, w, b, True, 0.1, 1e-5)", ""),
    ("batch_norm train", "channel", "fwd",
     "batch_norm(x, running_mean=rm, running_var=rv, weight=w, bias=b, training=True, momentum=0.1, eps=1e-5)",
     "F.batch_norm(x, running_mean=rm, running_var=rv, weight=w, bias=b, training=True, momentum=0.1, eps=1e-5)",
     ""),
    ("batch_norm train", "channel", "fwd", "batch_norm(x, rm, rv, training=True)",
     "F.batch_norm(x, rm, rv, training=True)", ""),
    ("batch_norm train", "channel", "fwd", "batch_norm(x, None, None, w, b, training=True)",
     "F.batch_norm(x, None, None, w, b, training=True)", ""),
    ("batch_norm train", "channel", "fwd", "batch_norm(xl, rm, rv, w, b, training=True, channel_axis=-1)",
     "F.batch_norm(xl, rm, rv, w, b, training=True)", "xl: torch.channels_last"),
    ("batch_norm train", "channel", "fwd", "batch_norm(x, rm, rv, w, b, training=True, return_stats=True)",
     "torch.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)", ""),
    ("batch_norm train", "channel", "fwd", "batch_norm(x, rm, rv, w, b, training=True, out=o)",
     "F.batch_norm(x, rm, rv, w, b, training=True)", NO_OUT),
    ("batch_norm train", "channel", "fwd+bwd",
     "y, mean, invstd = batch_norm(x, rm, rv, w, b, training=True, return_stats=True); "
     "batch_norm_backward(dy, x, mean, invstd, w, b, training=True)",
     "y = F.batch_norm(x, rm, rv, w, b, training=True); torch.autograd.grad(y, (x, w, b), dy)", ""),
    ("batch_norm train", "channel", "fwd+bwd",
     "y, mean, invstd = batch_norm(x, rm, rv, training=True, return_stats=True); "
     "batch_norm_backward(dy, x, mean, invstd, training=True)",
     "y = F.batch_norm(x, rm, rv, training=True); torch.autograd.grad(y, (x,), dy)", ""),
    ("batch_norm train", "channel", "fwd+bwd",
     "y, mean, invstd = batch_norm(xl, rm, rv, w, b, training=True, channel_axis=-1, return_stats=True); "
     "batch_norm_backward(dyl, xl, mean, invstd, w, b, training=True, channel_axis=-1)",
     "y = F.batch_norm(xl, rm, rv, w, b, training=True); torch.autograd.grad(y, (xl, w, b), dyl)",
     "xl: torch.channels_last"),

    ("batch_norm eval", "channel", "fwd", "batch_norm(x, rm, rv, w, b)", "F.batch_norm(x, rm, rv, w, b)", ""),
    ("batch_norm eval", "channel", "fwd", "batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5)",
     "F.batch_norm(x, rm, rv, w, b, False, 0.1, 1e-5)", ""),
    ("batch_norm eval", "channel", "fwd",
     "batch_norm(x, running_mean=rm, running_var=rv, weight=w, bias=b, training=False, eps=1e-5)",
     "F.batch_norm(x, running_mean=rm, running_var=rv, weight=w, bias=b, training=False, eps=1e-5)", ""),
    ("batch_norm eval", "channel", "fwd", "batch_norm(x, rm, rv)", "F.batch_norm(x, rm, rv)", ""),
    ("batch_norm eval", "channel", "fwd", "batch_norm(xl, rm, rv, w, b, channel_axis=-1)",
     "F.batch_norm(xl, rm, rv, w, b)", "xl: torch.channels_last"),
    ("batch_norm eval", "channel", "fwd", "batch_norm(x, rm, rv, w, b, return_stats=True)",
     "torch.native_batch_norm(x, w, b, rm, rv, False, 0.1, 1e-5)", ""),
    ("batch_norm eval", "channel", "fwd", "batch_norm(x, rm, rv, w, b, out=o)", "F.batch_norm(x, rm, rv, w, b)",
     NO_OUT),
    ("batch_norm eval", "channel", "fwd+bwd",
     "y, mean, invstd = batch_norm(x, rm, rv, w, b, return_stats=True); "
     "batch_norm_backward(dy, x, mean, invstd, w, b, training=False)",
     "y = F.batch_norm(x, rm, rv, w, b); torch.autograd.grad(y, (x, w, b), dy)", ""),

    ("group_norm", "channel", "fwd", "group_norm(x, 4, w, b)", "F.group_norm(x, 4, w, b)", ""),
    ("group_norm", "channel", "fwd", "group_norm(x, 4, w, b, 1e-5)", "F.group_norm(x, 4, w, b, 1e-5)", ""),
    ("group_norm", "channel", "fwd", "group_norm(x, num_groups=4, weight=w, bias=b, eps=1e-5)",
     "F.group_norm(x, num_groups=4, weight=w, bias=b, eps=1e-5)", ""),
    ("group_norm", "channel", "fwd", "group_norm(x, 4)", "F.group_norm(x, 4)", ""),
    ("group_norm", "channel", "fwd", "group_norm(xl, 4, w, b, channel_axis=-1)", "F.group_norm(xl, 4, w, b)",
     "xl: torch.channels_last"),
    ("group_norm", "channel", "fwd", "group_norm(x, 4, w, b, return_stats=True)",
     "torch.native_group_norm(x, w, b, 2, 16, 16, 4, 1e-5)", ""),
    ("group_norm", "channel", "fwd", "group_norm(x, 4, w, b, out=o)", "F.group_norm(x, 4, w, b)", NO_OUT),
    ("group_norm", "channel", "fwd+bwd",
     "y, mean, rstd = group_norm(x, 4, w, b, return_stats=True); group_norm_backward(dy, x, 4, mean, rstd, w, b)",
     "y = F.group_norm(x, 4, w, b); torch.autograd.grad(y, (x, w, b), dy)", ""),
    ("group_norm", "channel", "fwd+bwd",
     "y, mean, rstd = group_norm(x, num_groups=4, weight=w, bias=b, eps=1e-5, return_stats=True); "
     "group_norm_backward(dy, x, 4, mean, rstd, weight=w, bias=b)",
     "y = F.group_norm(x, num_groups=4, weight=w, bias=b, eps=1e-5); torch.autograd.grad(y, (x, w, b), dy)", ""),
    ("group_norm", "channel", "fwd+bwd",
     "y, mean, rstd = group_norm(x, 4, return_stats=True); group_norm_backward(dy, x, 4, mean, rstd)",
     "y = F.group_norm(x, 4); torch.autograd.grad(y, (x,), dy)", ""),
    ("group_norm", "channel", "fwd+bwd",
     "y, mean, rstd = group_norm(xl, 4, w, b, channel_axis=-1, return_stats=True); "
     "group_norm_backward(dyl, xl, 4, mean, rstd, w, b, channel_axis=-1)",
     "y = F.group_norm(xl, 4, w, b); torch.autograd.grad(y, (xl, w, b), dyl)", "xl: torch.channels_last"),

    ("instance_norm", "channel", "fwd", "instance_norm(x)", "F.instance_norm(x)", ""),
    ("instance_norm", "channel", "fwd", "instance_norm(x, None, None, w, b)", "F.instance_norm(x, None, None, w, b)",
     ""),
    ("instance_norm", "channel", "fwd", "instance_norm(x, weight=w, bias=b, eps=1e-5)",
     "F.instance_norm(x, weight=w, bias=b, eps=1e-5)", ""),
    ("instance_norm", "channel", "fwd", "instance_norm(x, rm, rv, w, b)", "F.instance_norm(x, rm, rv, w, b)", ""),
    ("instance_norm", "channel", "fwd", "instance_norm(x, rm, rv, w, b, use_input_stats=False)",
     "F.instance_norm(x, rm, rv, w, b, use_input_stats=False)", ""),
    ("instance_norm", "channel", "fwd", "instance_norm(x, weight=w, bias=b, return_stats=True)",
     "F.instance_norm(x, weight=w, bias=b)", NO_STATS),
    ("instance_norm", "channel", "fwd", "instance_norm(x, weight=w, bias=b, out=o)",
     "F.instance_norm(x, weight=w, bias=b)", NO_OUT),
    ("instance_norm", "channel", "fwd+bwd",
     "y, mean, rstd = instance_norm(x, None, None, w, b, return_stats=True); "
     "instance_norm_backward(dy, x, mean, rstd, w, b)",
     "y = F.instance_norm(x, None, None, w, b); torch.autograd.grad(y, (x, w, b), dy)", ""),
    ("instance_norm", "channel", "fwd+bwd",
     "y, mean, rstd = instance_norm(x, return_stats=True); instance_norm_backward(dy, x, mean, rstd)",
     "y = F.instance_norm(x); torch.autograd.grad(y, (x,), dy)", ""),

    ("local_response_norm", "channel", "fwd", "local_response_norm(x, 5)", "F.local_response_norm(x, 5)", ""),
    ("local_response_norm", "channel", "fwd", "local_response_norm(x, 5, 1e-4, 0.75, 1.0)",
     "F.local_response_norm(x, 5, 1e-4, 0.75, 1.0)", ""),
    ("local_response_norm", "channel", "fwd", "local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=1.0)",
     "F.local_response_norm(x, size=5, alpha=1e-4, beta=0.75, k=1.0)", ""),
    ("local_response_norm", "channel", "fwd", "local_response_norm(x, 5, return_stats=True)",
     "F.local_response_norm(x, 5)", "torch returns no scale"),
    ("local_response_norm", "channel", "fwd", "local_response_norm(x, 5, out=o)", "F.local_response_norm(x, 5)",
     NO_OUT),
    ("local_response_norm", "channel", "fwd+bwd",
     "y, scale = local_response_norm(x, 5, return_stats=True); local_response_norm_backward(dy, x, scale, 5)",
     "y = F.local_response_norm(x, 5); torch.autograd.grad(y, (x,), dy)", ""),

    ("filter_response_norm", "channel", "fwd", "filter_response_norm(x, w, b)", _FRN, "torch: composed"),
    ("filter_response_norm", "channel", "fwd", "filter_response_norm(x, w, b, t)", _FRN_TLU, "torch: composed"),
    ("filter_response_norm", "channel", "fwd", "filter_response_norm(x, w, b, t, 1e-6)", _FRN_TLU,
     "torch: composed"),
    ("filter_response_norm", "channel", "fwd", "filter_response_norm(x, weight=w, bias=b, tau=t, eps=1e-6)",
     _FRN_TLU, "torch: composed"),
    ("filter_response_norm", "channel", "fwd", "filter_response_norm(x, w, b, t, return_stats=True)", _FRN_TLU,
     "torch: composed"),
    ("filter_response_norm", "channel", "fwd", "filter_response_norm(x, w, b, t, out=o)", _FRN_TLU,
     "torch: composed"),
    ("filter_response_norm", "channel", "fwd+bwd",
     "y, rstd = filter_response_norm(x, w, b, t, return_stats=True); "
     "filter_response_norm_backward(dy, x, rstd, w, b, t)",
     f"y = {_FRN_TLU}; torch.autograd.grad(y, (x, w, b, t), dy)", "torch: composed"),

    # ---------------------------------------------------------------- the newer members (torch: composed)
    ("dynamic_tanh", "rows", "fwd", "dynamic_tanh(x, al, w, b)", _DYT, "torch: composed"),
    ("dynamic_tanh", "rows", "fwd", "dynamic_tanh(x, 0.5, w, b)", _DYT, "torch: composed"),
    ("dynamic_tanh", "rows", "fwd", "dynamic_tanh(x, alpha=al, weight=w, bias=b, channel_axis=-1)", _DYT,
     "torch: composed"),
    ("dynamic_tanh", "rows", "fwd", "dynamic_tanh(x, al, w, b, out=o)", _DYT, "torch: composed"),
    ("dynamic_tanh", "rows", "fwd+bwd",
     "y = dynamic_tanh(x, al, w, b); dynamic_tanh_backward(dy, x, al, w, b)",
     f"y = {_DYT}; torch.autograd.grad(y, (x, al, w, b), dy)", "torch: composed"),
    ("ada_norm", "rows", "fwd", "ada_norm(x, 768, 2.0)", _ADA, "torch: composed"),
    ("ada_norm", "rows", "fwd", "ada_norm(x, (768,), 2.0, 0.1, 1e-5)", _ADA, "torch: composed"),
    ("ada_norm", "rows", "fwd", "ada_norm(x, normalized_shape=None, scale=2.0)", _ADA, "torch: composed"),
    ("ada_norm", "rows", "fwd+bwd",
     "y, m, s = ada_norm(x, 768, 2.0, return_stats=True); ada_norm_backward(dy, x, m, s, 2.0)",
     f"y = {_ADA}; torch.autograd.grad(y, (x,), dy)", "torch: composed"),
    ("weight_standardization", "weight", "fwd", "weight_standardization(v)", _WS, "torch: composed"),
    ("weight_standardization", "weight", "fwd", "weight_standardization(v, 1e-5)", _WS, "torch: composed"),
    ("weight_standardization", "weight", "fwd", "weight_standardization(v, out=o)", _WS, "torch: composed"),
    ("weight_standardization", "weight", "fwd+bwd",
     "w_, m, s = weight_standardization(v, return_stats=True); weight_standardization_backward(dy, v, m, s)",
     f"w_ = {_WS}; torch.autograd.grad(w_, (v,), dy)", "torch: composed"),
    ("batch_renorm", "channel", "fwd", "batch_renorm(x, rm, rv, w, b, True)", _BRN, "torch: composed"),
    ("batch_renorm", "channel", "fwd", "batch_renorm(x, rm, rv, w, b, True, 0.1, 1e-5, 3.0, 5.0)", _BRN,
     "torch: composed"),
    ("batch_renorm", "channel", "fwd", "batch_renorm(x, rm, rv, weight=w, bias=b, training=True)", _BRN,
     "torch: composed"),
    ("batch_renorm", "channel", "fwd+bwd",
     "y, m, s, r, d = batch_renorm(x, rm, rv, w, b, True, return_stats=True); "
     "batch_renorm_backward(dy, x, m, s, r, d, w, b, True)",
     f"y = {_BRN}; torch.autograd.grad(y, (x, w, b), dy)", "torch: composed"),
    ("switchable_norm", "channel", "fwd", "switchable_norm(x, rm, rv, w, b, mw, vw, True)", _SN, "torch: composed"),
    ("switchable_norm", "channel", "fwd",
     "switchable_norm(x, rm, rv, weight=w, bias=b, mean_weight=mw, var_weight=vw, training=True)", _SN,
     "torch: composed"),
    ("switchable_norm", "channel", "fwd+bwd",
     "y, mi, vi, mb, vb = switchable_norm(x, rm, rv, w, b, mw, vw, True, return_stats=True); "
     "switchable_norm_backward(dy, x, mi, vi, mb, vb, w, b, mw, vw, True)",
     f"y = {_SN}; torch.autograd.grad(y, (x, w, b, mw, vw), dy)", "torch: composed"),
    ("power_norm", "channel", "fwd", "power_norm(x, rv, w, b, True)", f"(x * x).mean((0, 2, 3)); {_PN}",
     "torch: composed"),
    ("power_norm", "channel", "fwd", "power_norm(x, rv, weight=w, bias=b, training=True, momentum=0.1)",
     f"(x * x).mean((0, 2, 3)); {_PN}", "torch: composed"),
    ("power_norm", "channel", "fwd+bwd",
     "y, s, p = power_norm(x, rv, w, b, True, return_stats=True); power_norm_backward(dy, x, s, p, t, w, b)",
     f"y = {_PN}; {_PN_BWD}", "torch: the reference's approximate backward, composed"),
    ("cosine_linear", "rows", "fwd", "cosine_linear(x, wsq)",
     "F.normalize(x, dim=-1) @ F.normalize(wsq, dim=-1).T", "torch: composed"),
    ("cosine_linear", "rows", "fwd", "cosine_linear(x, weight=wsq, centered=False, eps=1e-12)",
     "F.normalize(x, dim=-1) @ F.normalize(wsq, dim=-1).T", "torch: composed"),
    ("cosine_linear", "rows", "fwd+bwd",
     "y, nx, nw = cosine_linear(x, wsq, return_stats=True); cosine_linear_backward(dy, x, wsq, nx, nw)",
     "y = F.normalize(x, dim=-1) @ F.normalize(wsq, dim=-1).T; torch.autograd.grad(y, (x, wsq), dy)",
     "torch: composed"),
    # the features family's peer is scikit-learn, which has no Batch Layer Norm: checked against the twin
    ("batch_layer_norm", "features", "fwd", "batch_layer_norm(x, rmf, rvf, wf, bf, True)", None, ""),
    ("batch_layer_norm", "features", "fwd",
     "batch_layer_norm(x, rmf, rvf, weight=wf, bias=bf, training=True, momentum=0.1, eps=1e-3)", None, ""),
    ("batch_layer_norm", "features", "fwd+bwd",
     "y, a, b_, c, d = batch_layer_norm(x, rmf, rvf, wf, bf, True, return_stats=True); "
     "batch_layer_norm_backward(dy, x, a, b_, c, d, wf, bf, True)", None, ""),
    ("cluster_norm", "rows", "fwd", "cluster_norm(x, cid, cmu, cls)",
     "(x - cmu[cid]) / (torch.exp(cls[cid]) + 1e-3)", "torch: composed"),
    ("cluster_norm", "rows", "fwd", "cluster_norm(x, cluster=cid, mean=cmu, log_scale=cls)",
     "(x - cmu[cid]) / (torch.exp(cls[cid]) + 1e-3)", "torch: composed"),
    ("cluster_norm", "rows", "fwd+bwd",
     "cluster_norm(x, cid, cmu, cls); cluster_norm_backward(dy, x, cid, cmu, cls)", None, ""),
    ("mixture_norm", "rows", "fwd", "mixture_norm(x, mrho, mE, mnu)", None, ""),
    ("mixture_norm", "rows", "fwd", "mixture_norm(x, prior_logits=mrho, means=mE, var_params=mnu, eps=1e-5)",
     None, ""),
    ("mixture_norm", "rows", "fwd+bwd",
     "y, tau = mixture_norm(x, mrho, mE, mnu, return_stats=True); mixture_norm_backward(dy, x, tau, mrho, mE, mnu)",
     None, ""),

    # ---------------------------------------------------------------- features: (32, 24)
    ("standardize", "features", "fwd", "standardize(x)", "StandardScaler().fit_transform(x)", ""),
    ("standardize", "features", "fwd", "standardize(x, 0, 0)", "StandardScaler().fit_transform(x)", ""),
    ("standardize", "features", "fwd", "standardize(x, axis=0, ddof=0)", "StandardScaler().fit_transform(x)", ""),
    ("standardize", "features", "fwd", "standardize(x, with_mean=False)",
     "StandardScaler(with_mean=False).fit_transform(x)", ""),
    ("standardize", "features", "fwd", "standardize(x, mean=m, std=s)", "sc.transform(x)", "sc: a fitted scaler"),
    ("standardize", "features", "fwd", "standardize(x, return_stats=True)", "StandardScaler().fit_transform(x)",
     ""),
    ("standardize", "features", "fwd", "standardize(x, out=o)", "StandardScaler().fit_transform(x)", ""),
    ("standardize", "features", "fwd+bwd",
     "z, mean, std = standardize(x, return_stats=True); standardize_backward(dy, x, mean, std)", None, ""),

    ("min_max_scale", "features", "fwd", "min_max_scale(x)", "MinMaxScaler().fit_transform(x)", ""),
    ("min_max_scale", "features", "fwd", "min_max_scale(x, 0, (0, 1))", "MinMaxScaler((0, 1)).fit_transform(x)",
     ""),
    ("min_max_scale", "features", "fwd", "min_max_scale(x, axis=0, feature_range=(-1, 1))",
     "MinMaxScaler(feature_range=(-1, 1)).fit_transform(x)", ""),
    ("min_max_scale", "features", "fwd", "min_max_scale(x, data_min=mn, data_max=mx)", "mm.transform(x)",
     "mm: a fitted scaler"),
    ("min_max_scale", "features", "fwd", "min_max_scale(x, return_stats=True)", "MinMaxScaler().fit_transform(x)",
     ""),
    ("min_max_scale", "features", "fwd", "min_max_scale(x, out=o)", "MinMaxScaler().fit_transform(x)", ""),
    ("min_max_scale", "features", "fwd+bwd",
     "y, dmin, dmax = min_max_scale(x, return_stats=True); min_max_scale_backward(dy, x, dmin, dmax)", None, ""),

    # ---------------------------------------------------------------- weight_norm: v (16, 8), dim 0
    ("weight_norm", "weight", "fwd", "weight_norm(v, g, 0)", "torch._weight_norm(v, g, 0)", ""),
    ("weight_norm", "weight", "fwd", "weight_norm(v, g)", "torch._weight_norm(v, g)", ""),
    ("weight_norm", "weight", "fwd", "weight_norm(v, g, dim=0)", "torch._weight_norm(v, g, dim=0)", ""),
    ("weight_norm", "weight", "fwd", "weight_norm(v, g0, None)", "torch._weight_norm(v, g0, -1)",
     "torch spells the whole tensor dim=-1"),
    ("weight_norm", "weight", "fwd", "weight_norm(v, g, 0, return_stats=True)",
     "torch._weight_norm_interface(v, g, 0)", ""),
    ("weight_norm", "weight", "fwd", "weight_norm(v, g, 0, out=o)", "torch._weight_norm(v, g, 0)", NO_OUT),
    ("weight_norm", "weight", "fwd+bwd",
     "w_, n = weight_norm(v, g, 0, return_stats=True); weight_norm_backward(dy, v, g, n, 0)",
     "w_ = torch._weight_norm(v, g, 0); torch.autograd.grad(w_, (v, g), dy)", ""),
    ("weight_norm", "weight", "fwd+bwd",
     "w_, n = weight_norm(v, g0, None, return_stats=True); weight_norm_backward(dy, v, g0, n, None)",
     "w_ = torch._weight_norm(v, g0, -1); torch.autograd.grad(w_, (v, g0), dy)",
     "torch spells the whole tensor dim=-1"),
]

OPS = list(dict.fromkeys(spec[0] for spec in SPECS))
SHAPES = {"rows": (1, 768), "channel": (2, 16, 4, 4), "features": (32, 24), "weight": (16, 8)}


# ---------------------------------------------------------------- the names a spelling sees

def _bf16_exact(a):
    return a.astype(peers.BFLOAT16).astype(np.float32) if peers.BFLOAT16 is not None else a


def _arrays(family, dtype, seed=0):
    """The family's NumPy arrays (in `dtype`; running statistics float32)."""
    rng = np.random.default_rng(seed)
    dt = peers.DTYPES[dtype]

    def normal(*shape):
        return rng.standard_normal(shape, dtype=np.float32).astype(dt)
    shape = SHAPES[family]
    if family == "rows":
        a = dict(x=normal(*shape), r=normal(*shape), w=normal(shape[-1]), b=normal(shape[-1]), dy=normal(*shape),
                 al=np.full(1, 0.5, np.float32).astype(dt),
                 wsq=(0.05 * rng.standard_normal((shape[-1], shape[-1]), dtype=np.float32)).astype(dt),
                 cid=np.zeros(shape[0], np.int64), cmu=normal(4, shape[-1]), cls=(0.1 * normal(4, shape[-1])),
                 mrho=normal(4), mE=(0.05 * normal(4, shape[-1])), mnu=normal(4, shape[-1]))
    elif family == "channel":
        C = shape[1]
        x, dy = normal(*shape), normal(*shape)
        # float32 running statistics that bfloat16 holds exactly (torch keeps them in the
        # parameters' dtype): eval rows normalize with the same values on both sides
        rm = _bf16_exact(0.1 * rng.standard_normal(C, dtype=np.float32))
        rv = _bf16_exact(rng.uniform(0.5, 1.5, C).astype(np.float32))
        a = dict(x=x, dy=dy, xl=np.ascontiguousarray(np.moveaxis(x, 1, -1)),
                 dyl=np.ascontiguousarray(np.moveaxis(dy, 1, -1)),
                 w=normal(C), b=normal(C), t=(np.full(C, -0.2, np.float32)).astype(dt), rm=rm, rv=rv,
                 mw=normal(3), vw=normal(3))
    elif family == "features":
        x = normal(*shape)
        a = dict(x=x, dy=normal(*shape), wf=normal(shape[-1]), bf=normal(shape[-1]),
                 rmf=np.zeros(shape[-1], np.float32), rvf=np.ones(shape[-1], np.float32))
    else:  # weight
        a = dict(v=normal(*shape), g=(np.abs(rng.standard_normal((shape[0], 1), dtype=np.float32)) + 0.5).astype(dt),
                 g0=np.array(2.0, np.float32).astype(dt), dy=normal(*shape))
    return a


def fastnorm_namespace(family, dtype, functions=fastnorm):
    a = _arrays(family, dtype)
    ns = {name: getattr(functions, name) for name in fastnorm.__all__ if hasattr(functions, name)}
    ns.update(a)
    if family == "features":
        x = a["x"].astype(np.float64)
        ns.update(m=x.mean(0), s=x.std(0), mn=x.min(0), mx=x.max(0))
    for name in ("x", "xl", "v"):
        if name in a:
            ns["o" if name != "xl" else "ol"] = np.empty_like(a[name])
    if "x" in a:
        ns["o2"] = np.empty_like(a["x"])
    return ns


def peer_namespace(family, dtype, backward):
    """The same names for the peer: torch tensors over the same values (with
    requires_grad on the differentiated inputs for fwd+bwd), or the
    scikit-learn scalers for the features family."""
    a = _arrays(family, dtype)
    if family == "features":
        if StandardScaler is None:
            return None
        x = a["x"]
        return dict(x=x, StandardScaler=StandardScaler, MinMaxScaler=MinMaxScaler,
                    sc=StandardScaler().fit(x), mm=MinMaxScaler().fit(x))
    if torch is None:
        return None
    ns = {"torch": torch, "F": F}
    for name, arr in a.items():
        if name in ("xl", "dyl"):  # NCHW indices over NHWC memory: torch.channels_last
            t = peers.to_torch(arr).movedim(-1, 1)
        else:
            t = peers.to_torch(arr)
        if name in ("rm", "rv"):  # torch wants them in the parameters' dtype
            t = t.to(peers.to_torch(a["w"]).dtype).clone()
        elif backward and name not in ("dy", "dyl"):
            t = t.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        ns[name] = t
    for name in ("x", "xl", "v"):
        if name in ns:
            ns["o" if name != "xl" else "ol"] = torch.empty_like(ns[name]).detach()
    if "x" in ns:
        ns["o2"] = torch.empty_like(ns["x"]).detach()
    return ns


def compile_call(code, ns, no_grad=False):
    """A zero-argument function that runs `code` (statements separated by
    "; ", the last one's value returned) with `ns` as its globals."""
    stmts = [s.strip() for s in code.split("; ")]
    body = stmts[:-1] + ["return " + stmts[-1]]
    if no_grad:
        body = ["with torch.no_grad():"] + ["    " + s for s in body]
    src = "def _call():\n" + "".join(f"    {s}\n" for s in body)
    exec(compile(src, f"<{code}>", "exec"), ns)
    return ns.pop("_call")


# ---------------------------------------------------------------- agreement

def _first(result):
    while isinstance(result, (tuple, list)):
        result = result[0]
    if hasattr(result, "detach"):
        result = result.detach()
        if result.dtype != torch.float64:
            result = result.float()
        return result.numpy().astype(np.float64)
    return np.asarray(result).astype(np.float64)


def disagreement(ours, theirs, dtype, channels_last=False):
    """None when fastnorm's first output matches the peer's, else why not."""
    a, t = _first(ours), _first(theirs)
    if channels_last and a.ndim >= 3:
        a = np.moveaxis(a, -1, 1)  # fastnorm's NHWC array in torch's NCHW indices
    if a.shape != t.shape:
        if a.size != t.size:
            return f"shape {a.shape} vs {t.shape}"
        a, t = a.ravel(), t.ravel()
    if a.size == 0:
        return None
    err = float(np.max(np.abs(a - t)))
    scale = max(1.0, float(np.max(np.abs(t))))
    tol = TOLERANCE[dtype] * scale
    if not err <= tol:  # NaN fails too
        return f"max diff {err:.3g} > {tol:.3g}"
    return None


# ---------------------------------------------------------------- the table

def fmt_us(t):
    return "n/a" if t is None else f"{t * 1e6:.2f}"


def cases(ops=None, dtypes=("float32",)):
    """(op, family, direction, dtype, fastnorm code, peer code, note) in table order."""
    chosen = [s for s in SPECS if ops is None or any(s[0].startswith(p) for p in ops)]
    out = []
    for dtype in dtypes:
        for op, family, direction, code, peer, note in chosen:
            if dtype == "float32" or op in BFLOAT16_OPS:
                out.append((op, family, direction, dtype, code, peer, note))
    return out


def _peer_kind(family, note):
    if family == "features":
        return "scikit-learn"
    return "PyTorch (composed)" if "composed" in note else "PyTorch"


def _timer():
    import compare  # time_rounds; imported late: compare imports this module
    return compare.time_rounds


def _store_times(row, t):
    row["ours"], row["theirs"] = t.get("fastnorm"), t.get("peer")


def prepare_one(op, family, direction, dtype, code, peer, note, check=True):
    """One row's cells before timing, and its calls to time: (row, {"fastnorm":
    call, "peer": call}); the calls are empty when the row is not timed."""
    backward = direction == "fwd+bwd"
    row = dict(op=f"{op} {direction}", dtype=dtype, code=code, peer_code=peer, note=note,
               kind=_peer_kind(family, note), status="ok", ours=None, theirs=None, detail="")
    ours = compile_call(code, fastnorm_namespace(family, dtype))
    try:
        our_result = ours()
    except TypeError as exc:
        if dtype == "float32":
            row.update(status="error", detail=f"TypeError: {exc}")
            return row, {}
        row.update(status="unsupported", detail=str(exc))
        ours = None
    except Exception as exc:  # a fastnorm that fails a call is reported, not timed
        row.update(status="error", detail=f"{type(exc).__name__}: {exc}")
        return row, {}
    theirs = None
    if peer is not None:
        pns = peer_namespace(family, dtype, backward)
        if pns is not None:
            theirs = compile_call(peer, pns, no_grad=(not backward and "torch" in pns))
            try:
                their_result = theirs()
            except Exception as exc:
                row["detail"] = f"peer failed: {type(exc).__name__}: {str(exc)[:80]}"
                theirs = None
    if ours is not None and check:
        if theirs is not None:
            why = disagreement(our_result, their_result, dtype, channels_last="xl" in code)
            row["checked"] = row["kind"]
        else:  # no peer: fastnorm.reference's float64 twin of the same call
            try:
                ref_result = compile_call(code, fastnorm_namespace(family, dtype, functions=reference))()
            except Exception as exc:
                why = None
                row["checked"] = f"unchecked (reference: {type(exc).__name__})"
            else:
                why = disagreement(our_result, ref_result, dtype, channels_last="xl" in code)
                row["checked"] = "fastnorm.reference"
        if why is not None:
            row.update(status="MISMATCH", detail=why)
            return row, {}
    impls = {}
    if ours is not None:
        impls["fastnorm"] = ours
    if theirs is not None:
        impls["peer"] = theirs
    return row, impls


def format_row(row):
    if row["status"] == "ok":
        ours = fmt_us(row["ours"])
    elif row["status"] == "unsupported":
        ours = "unsupported"
    else:
        ours = f"{row['status']} ({row['detail']})"
    if row["peer_code"] is None:
        peer_call = f"n/a (checked against {row.get('checked', 'nothing')})"
    else:
        prefix = "" if row["kind"] == "PyTorch" else f"{row['kind']}: "
        peer_call = f"{prefix}`{row['peer_code']}`" + (f" ({row['note']})" if row["note"] else "")
        if row["detail"].startswith("peer failed"):
            peer_call += f" ({row['detail']})"
    if row["status"] in ("ok", "unsupported"):
        theirs = fmt_us(row["theirs"])
    else:
        theirs = "not timed"
    ratio = (f"{row['theirs'] / row['ours']:.2f}x"
             if row["status"] == "ok" and row["ours"] and row["theirs"] else "n/a")
    return f"| {row['op']} | {row['dtype']} | `{row['code']}` | {ours} | {peer_call} | {theirs} | {ratio} |"


def run(threads, repeats, min_time, emit, ops=None, dtypes=("float32",), check=True, timer=None):
    """Print the overhead table through `emit`; returns the rows.  ops: name
    prefixes to keep (None: all of OPS); timer: compare.time_case (default)."""
    peers.set_threads(threads)
    timer = timer or _timer()
    todo = cases(ops, dtypes)
    if not todo:
        return []
    emit("### Per-call overhead (tiny inputs)")
    emit("")
    emit("- inputs: rows ops (layer_norm, rms_norm, add_*_norm, normalize) (1, 768); channel ops "
         "(batch_norm, group_norm with 4 groups, instance_norm, local_response_norm size 5, "
         "filter_response_norm) (2, 16, 4, 4), `xl` the same values in NHWC memory (torch: "
         "channels_last); standardize / min_max_scale (32, 24); weight_norm v (16, 8), g (16, 1), "
         "g0 a 0-d array. x, r (residual), w, b, t (tau), dy (grad) random; running statistics "
         "rm, rv float32 (PyTorch's in the parameters' dtype); o, o2 preallocated outputs.")
    emit("- each row times the literal call in the spelling column, compiled from that text; the "
         "PyTorch column runs its translation to torch (forwards under torch.no_grad(); fwd+bwd: "
         "autograd forward + torch.autograd.grad); scikit-learn's scalers where torch has no op. "
         "Times in microseconds per call, the minimum over rounds of auto-scaled loops, each round "
         "going over the whole table; ratio = "
         "peer / fastnorm (above 1: fastnorm is faster).")
    emit(f"- threads: {threads} for both (torch.set_num_threads; fastnorm through the OpenMP "
         "limit, and its inputs under 32K elements run on one thread anyway)")
    emit("- checked before timing: fastnorm's first output against the peer's (no peer: against "
         "fastnorm.reference), within 1e-3 (bfloat16: 5e-2) of max(1, max |peer|); MISMATCH rows "
         "are not timed. bfloat16 rows: ml_dtypes.bfloat16 arrays vs torch.bfloat16 tensors; "
         "\"unsupported\": fastnorm raised TypeError for the bfloat16 call.")
    emit("")
    emit("| op | dtype | spelling | fastnorm us | PyTorch call | PyTorch us | ratio |")
    emit("|---|---|---|---:|---|---:|---:|")
    rows, timed = [], []
    limits = threadpool_limits(limits=threads, user_api="openmp") if threadpool_limits else None
    try:
        for spec in todo:
            row, impls = prepare_one(*spec, check=check)
            rows.append(row)
            if impls:
                timed.append((row, impls))
        # the rounds go over the whole table (see compare.time_rounds)
        times = timer([impls for _, impls in timed], repeats, min_time, reduce=min)
        for (row, _), t in zip(timed, times):
            _store_times(row, t)
    finally:
        if limits is not None:
            limits.restore_original_limits()
    for row in rows:
        emit(format_row(row))
    ratios = {}
    for r in rows:
        if r["status"] == "ok" and r["ours"] and r["theirs"] and r["kind"] == "PyTorch":
            ratios.setdefault((r["dtype"], r["op"].rsplit(" ", 1)[1]), []).append(r["theirs"] / r["ours"])
    emit("")
    for (dtype, direction), v in ratios.items():
        gm = float(np.exp(np.mean(np.log(v))))
        emit(f"- overhead, {dtype} {direction}: geometric mean of the PyTorch ratios {gm:.2f}x "
             f"(min {min(v):.2f}x over {len(v)} calls)")
    counts = {}
    for r in rows:
        if r["status"] != "ok":
            counts.setdefault((r["dtype"], r["status"]), 0)
            counts[(r["dtype"], r["status"])] += 1
    for (dtype, status), n in counts.items():
        emit(f"- overhead, {dtype}: {n} calls {status}")
    return rows


if __name__ == "__main__":
    import compare
    compare.main(["--overhead-only"] + sys.argv[1:])
