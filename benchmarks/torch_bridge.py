"""fastnorm.torch against torch's native ops, on torch tensors.

    python benchmarks/compare.py --torch-bridge-only --threads 2

Every op through ``fastnorm.torch`` (the functions, as a patched model calls
them) beside the same torch.nn.functional call, on the suite's shapes and a
tiny one, float32 and bfloat16 tensors, forward (under torch.no_grad) and
forward+backward (autograd forward + torch.autograd.grad of x and the
parameters).  The bridge's own cost (argument routing, the tensor / array
views) is inside fastnorm's time.  Outputs are checked against torch's before
timing (2e-3 of the output's scale; bfloat16 5e-2).
"""
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastnorm.torch as fnt  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
TOLERANCE = {"float32": 2e-3, "bfloat16": 5e-2}
ROWS = [(1, 768), (64, 768), (2048, 1024), (8192, 4096)]
TINY = (2, 16, 4, 4)


def _rows(shape, dt):
    n = shape[-1]
    return dict(x=torch.randn(shape).to(dt), r=torch.randn(shape).to(dt),
                w=(1 + 0.1 * torch.randn(n)).to(dt), b=(0.1 * torch.randn(n)).to(dt))


def _chan(shape, dt, channels_last=False):
    C = shape[1]
    x = torch.randn(shape).to(dt)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return dict(x=x, w=(1 + 0.1 * torch.randn(C)).to(dt), b=(0.1 * torch.randn(C)).to(dt),
                rm=torch.zeros(C, dtype=dt), rv=torch.ones(C, dtype=dt))


# (case, make(shape, dtype), shapes, differentiable inputs, call(module, arrays))
CASES = [
    ("layer_norm", _rows, ROWS, ("x", "w", "b"), lambda m, a: m.layer_norm(a["x"], (a["x"].shape[-1],), a["w"], a["b"])),
    ("rms_norm", _rows, ROWS, ("x", "w"), lambda m, a: m.rms_norm(a["x"], (a["x"].shape[-1],), a["w"])),
    ("normalize", _rows, [(1, 768), (8192, 4096)], ("x",), lambda m, a: m.normalize(a["x"], 2.0, -1)),
    ("batch_norm train NCHW", _chan, [TINY, (32, 64, 56, 56)], ("x", "w", "b"),
     lambda m, a: m.batch_norm(a["x"], a["rm"], a["rv"], a["w"], a["b"], True)),
    ("batch_norm train NHWC", lambda s, d: _chan(s, d, True), [TINY, (32, 64, 56, 56)], ("x", "w", "b"),
     lambda m, a: m.batch_norm(a["x"], a["rm"], a["rv"], a["w"], a["b"], True)),
    ("batch_norm eval NCHW", _chan, [TINY, (32, 64, 56, 56)], ("x", "w", "b"),
     lambda m, a: m.batch_norm(a["x"], a["rm"], a["rv"], a["w"], a["b"], False)),
    ("group_norm", _chan, [TINY, (8, 256, 32, 32)], ("x", "w", "b"),
     lambda m, a: m.group_norm(a["x"], 4 if a["x"].shape[1] == 16 else 32, a["w"], a["b"])),
    ("group_norm NHWC", lambda s, d: _chan(s, d, True), [TINY, (8, 256, 32, 32)], ("x", "w", "b"),
     lambda m, a: m.group_norm(a["x"], 4 if a["x"].shape[1] == 16 else 32, a["w"], a["b"])),
    ("instance_norm", _chan, [TINY, (8, 64, 64, 64)], ("x", "w", "b"),
     lambda m, a: m.instance_norm(a["x"], None, None, a["w"], a["b"])),
    ("local_response_norm", _chan, [TINY, (8, 96, 55, 55)], ("x",),
     lambda m, a: m.local_response_norm(a["x"], 5)),
]


def _callable(call, module, a, diff, backward):
    if not backward:
        def run():
            with torch.no_grad():
                return call(module, a)
        return run
    leaves = {k: (v.detach().clone(memory_format=torch.preserve_format).requires_grad_(k in diff)
                  if isinstance(v, torch.Tensor) else v) for k, v in a.items()}
    torch.manual_seed(1)  # the same upstream gradient for both (outputs: x's shape and memory format)
    grad = torch.randn(a["x"].shape).to(a["x"].dtype).contiguous(memory_format=_format(a["x"]))
    inputs = tuple(leaves[k] for k in diff)

    def run_bwd():
        return torch.autograd.grad(call(module, leaves), inputs, grad)
    return run_bwd


def _format(x):
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _first(r):
    while isinstance(r, (tuple, list)):
        r = r[0]
    return r.detach().double()


def run(threads, repeats, min_time, emit, dtypes=("float32", "bfloat16"), timer=None):
    import compare
    timer = timer or compare.time_case
    torch.set_num_threads(threads)
    emit("### fastnorm.torch vs torch (tensors)")
    emit("")
    emit(f"- threads: {threads} (torch.set_num_threads; fastnorm.torch follows torch's count). fwd: under "
         "torch.no_grad; fwd+bwd: autograd forward + torch.autograd.grad of x and the parameters. Medians "
         f"of {repeats} interleaved rounds; ratio = torch / fastnorm.torch (above 1: fastnorm is faster).")
    emit("")
    emit("| case | dtype | shape | direction | fastnorm.torch | torch | ratio |")
    emit("|---|---|---|---|---:|---:|---:|")
    rows = []
    for dname in dtypes:
        dt = DTYPES[dname]
        for name, make, shapes, diff, call in CASES:
            for shape in shapes:
                torch.manual_seed(0)
                a = make(shape, dt)
                for backward in (False, True):
                    ours = _callable(call, fnt, a, diff, backward)
                    theirs = _callable(call, F, {k: (v.clone() if isinstance(v, torch.Tensor) else v)
                                                 for k, v in a.items()}, diff, backward)
                    direction = "fwd+bwd" if backward else "fwd"
                    try:
                        t = _first(theirs())
                    except (NotImplementedError, RuntimeError) as exc:  # torch lacks the dtype
                        emit(f"| {name} | {dname} | {shape} | {direction} | not timed | torch: "
                             f"{str(exc).splitlines()[0][:60]} | n/a |")
                        continue
                    o = _first(ours())
                    err = float((o - t).abs().max())
                    if not err <= TOLERANCE[dname] * max(1.0, float(t.abs().max())):
                        emit(f"| {name} | {dname} | {shape} | {direction} | MISMATCH ({err:.3g}) | not timed | n/a |")
                        continue
                    times = timer({"fastnorm": ours, "torch": theirs}, repeats, min_time)
                    r = times["torch"] / times["fastnorm"]
                    rows.append(dict(case=name, dtype=dname, shape=shape, direction=direction, ratio=r))
                    emit(f"| {name} | {dname} | {shape} | {direction} | {compare.fmt_time(times['fastnorm'])} "
                         f"| {compare.fmt_time(times['torch'])} | {r:.2f}x |")
    emit("")
    slower = [r for r in rows if r["ratio"] < 1]
    emit(f"- fastnorm.torch faster than torch in {len(rows) - len(slower)} of {len(rows)} cases"
         + ("" if not slower else "; slower: " + ", ".join(
             f"{r['case']} {r['dtype']} {r['shape']} {r['direction']} ({r['ratio']:.2f}x)" for r in slower)))
    return rows


if __name__ == "__main__":
    import compare
    compare.main(["--torch-bridge-only"] + sys.argv[1:])
