"""Print fastnorm's comparison table against PyTorch CPU, ONNX Runtime, NumPy
and the memory-copy limit (SPEC section 3).

    python benchmarks/compare.py                 # all cases, all cores
    python benchmarks/compare.py --threads 2 --save benchmarks/results/latest.md

Method: each implementation is timed with an auto-scaled loop (enough calls
to last --min-time seconds), repeated --repeats times; the rounds interleave
the implementations of a case so that they share the machine's state, and the
table shows each one's median.  Ratios are peer time / fastnorm time (above 1:
fastnorm is faster), measured side by side in this one run.  "copy" is the
memory limit: np.copyto of x (forward), plus np.add of two inputs into a third
(a backward's two reads and one write) for forward+backward; "of copy" is
fastnorm's time over that limit, with out= for forwards.  Before timing a
case, every peer's first output is checked against fastnorm's (--no-check
skips it): the table never times a different computation.

dtypes (--dtypes, default float32,bfloat16): the bfloat16 rows run the row
and channel cases on ml_dtypes.bfloat16 arrays against PyTorch on
torch.bfloat16 tensors (same memory), checked with a looser tolerance
(5e-2 of the output's scale); NumPy and ONNX Runtime are n/a there.  A
bfloat16 row whose fastnorm call raises TypeError (a fastnorm without
bfloat16) prints "unsupported"; one whose peers disagree prints MISMATCH and
is not timed (a float32 disagreement still stops the run).

The per-call overhead table (benchmarks/overhead.py; --no-overhead skips it,
--overhead-only runs only it) times every public op on a tiny input in each
spelling a torch user writes, beside torch's time for the same call.

    python benchmarks/compare.py --quick --ops layer_norm   # smoke run
"""
import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import overhead  # noqa: E402
import peers  # noqa: E402

import fastnorm  # noqa: E402


def calibrate(fn, min_time):
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_time or n >= 1 << 20:
            return n
        n = max(n * 2, int(n * min_time / max(dt, 1e-9) * 1.2))


def time_case(impls, repeats, min_time, reduce=statistics.median):
    """{name: median (or `reduce`) seconds per call} with interleaved rounds."""
    return time_rounds([impls], repeats, min_time, reduce)[0]


def time_rounds(groups, repeats, min_time, reduce=statistics.median):
    """time_case for many cases at once: each round times every case's
    implementations in turn, so a case's rounds are spread over the whole
    run and a slow spell of a shared machine hits one round of many cases,
    not every round of one.  Returns one {name: seconds} per group."""
    loops = []
    for impls in groups:
        loops.append({})
        for name, fn in impls.items():
            fn()  # warm up (allocations, thread pools, ORT graph)
            loops[-1][name] = calibrate(fn, min_time)
    samples = [{name: [] for name in impls} for impls in groups]
    for _ in range(repeats):
        for impls, n_of, got in zip(groups, loops, samples):
            for name, fn in impls.items():
                # let the previous implementation's spinning OpenMP workers (torch's
                # or fastnorm's) go idle, so that they do not steal this one's cores
                time.sleep(0.005)
                n = n_of[name]
                t0 = time.perf_counter()
                for _ in range(n):
                    fn()
                got[name].append((time.perf_counter() - t0) / n)
    return [{name: reduce(s) for name, s in got.items()} for got in samples]


def first_array(result):
    """The first output of an implementation's result (an array, a torch
    tensor, or the first of a tuple / list of them) as a flat float64 array
    in memory order (channels-last cases: torch's NCHW view of NHWC memory
    and fastnorm's NHWC array flatten alike)."""
    while isinstance(result, (tuple, list)):
        result = result[0]
    if hasattr(result, "detach"):
        result = result.detach()
        if not result.dtype.is_floating_point or result.dtype.itemsize < 4:
            result = result.float()  # torch.bfloat16 has no NumPy twin; .float() keeps the strides
        result = result.numpy()
    return np.asarray(result).astype(np.float64, order="K").ravel(order="K")


def check_agreement(case, impls, tol=2e-3):
    """Every peer must compute what fastnorm computes: its first output (y, or
    grad_x for fwd+bwd) within tol of fastnorm's, relative to its largest
    value.  A table that times a different computation is refused."""
    bad = disagreements(impls, tol)
    if bad:
        raise SystemExit(f"{case}: peers disagree with fastnorm ({'; '.join(bad)})")


def disagreements(impls, tol=2e-3):
    """The peers whose first output differs from fastnorm's (see check_agreement)."""
    ours = first_array(impls["fastnorm"]())
    bad = []
    for name, fn in impls.items():
        if name in ("fastnorm", "copy"):
            continue
        theirs = first_array(fn())
        if theirs.shape != ours.shape:
            bad.append(f"{name}: {theirs.size} values, fastnorm {ours.size}")
            continue
        err = float(np.max(np.abs(theirs - ours))) if ours.size else 0.0
        if not err <= tol * max(1.0, float(np.max(np.abs(ours))) if ours.size else 1.0):
            bad.append(f"{name}: max difference {err:.3g}")
    return bad


def fmt_time(t):
    if t is None:
        return "n/a"
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    return f"{t * 1e3:.2f} ms"


def fmt_ratio(peer, ours):
    return "n/a" if peer is None or ours is None else f"{peer / ours:.2f}x"


# the agreement tolerance per dtype (relative to the output's scale)
TOLERANCE = {"float32": 2e-3, "bfloat16": 5e-2}
# peers that run on float32 only (bfloat16 rows: n/a)
FLOAT32_ONLY_PEERS = ("onnxruntime", "numpy", "scikit-learn", "unfused")


def _probe(fn):
    """None when fn runs, else the TypeError's message (a dtype fastnorm does not take)."""
    try:
        fn()
    except TypeError as exc:
        return str(exc)
    return None


def run(ops, shapes, threads, repeats, min_time, emit, check=True, dtypes=("float32",)):
    peers.set_threads(threads)
    rows = []
    header = ("| case | dtype | shape | fastnorm | fastnorm out= | PyTorch | vs PyTorch | ONNX Runtime "
              "| vs ORT | NumPy | vs NumPy | copy limit | of copy |")
    emit(header)
    emit("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for dtype in dtypes:
        for op in ops:
            factories = peers.OPS[op]
            if dtype not in factories.get("dtypes", ("float32",)):
                continue
            for backward in [d == "fwd+bwd" for d in factories["directions"]]:
                for shape in (shapes or factories["shapes"]):
                    rows.append(_run_case(op, factories, backward, shape, dtype, threads, repeats,
                                          min_time, emit, check))
    return rows


def _run_case(op, factories, backward, shape, dtype, threads, repeats, min_time, emit, check):
    x, g, w, b = peers.cast_case(factories["make_case"](shape), dtype)
    ours_impls = {"fastnorm": factories["fastnorm"](x, g, w, b, threads, backward=backward)}
    if not backward:
        ours_impls["fastnorm_out"] = factories["fastnorm"](x, g, w, b, threads, out=True)
    impls, unsupported = {}, {}
    for name, fn in ours_impls.items():
        why = _probe(fn) if dtype != "float32" else None
        if why is None:
            impls[name] = fn
        else:
            unsupported[name] = why
    for peer in ("torch", "onnxruntime", "numpy", "scikit-learn"):
        if dtype != "float32" and peer in FLOAT32_ONLY_PEERS:
            continue
        fn = factories[peer](x, g, w, b, threads, backward=backward) if peer in factories else None
        if fn is not None:
            impls[peer] = fn
    if "unfused" in factories and dtype == "float32":
        impls["unfused"] = factories["unfused"](x, g, w, b, threads)
    impls["copy"] = factories.get("copy", peers.copy_limit)(x, g, w, b, threads, backward=backward)
    case = f"{op} {'fwd+bwd' if backward else 'fwd'}"
    if check and "fastnorm" in impls:
        tol = TOLERANCE.get(dtype, 2e-3)
        if dtype == "float32":
            check_agreement(f"{case} {shape}", impls, tol)
        else:  # a newer dtype's disagreement refuses its row, not the whole table
            bad = disagreements(impls, tol)
            if bad:
                emit(f"| {case} | {dtype} | {shape} | MISMATCH ({'; '.join(bad)}) | not timed |"
                     + " n/a |" * 8)
                return dict(case=case, dtype=dtype, shape=shape, times={}, unsupported={},
                            mismatch=bad)
    t = time_case(impls, repeats, min_time)
    ours = t.get("fastnorm")
    limit_ours = t.get("fastnorm_out", ours)
    row = dict(case=case, dtype=dtype, shape=shape, times=t, unsupported=unsupported)
    label = case
    if "scikit-learn" in t:
        label = (f"{label} (scikit-learn StandardScaler: {fmt_time(t['scikit-learn'])}, "
                 f"{t['scikit-learn'] / ours:.2f}x)")
    if "unfused" in t:
        label = f"{label} (unfused add+norm: {fmt_time(t['unfused'])}, {t['unfused'] / ours:.2f}x)"

    def ours_time(name):
        return "unsupported" if name in unsupported else fmt_time(t.get(name))
    of_copy = "n/a" if limit_ours is None else f"{limit_ours / t['copy']:.2f}x"
    emit(f"| {label} | {dtype} | {shape} | {ours_time('fastnorm')} | {ours_time('fastnorm_out')} "
         f"| {fmt_time(t.get('torch'))} | {fmt_ratio(t.get('torch'), ours)} "
         f"| {fmt_time(t.get('onnxruntime'))} | {fmt_ratio(t.get('onnxruntime'), ours)} "
         f"| {fmt_time(t.get('numpy'))} | {fmt_ratio(t.get('numpy'), ours)} "
         f"| {fmt_time(t['copy'])} | {of_copy} |")
    return row


def summary(rows):
    lines = []
    dtypes = list(dict.fromkeys(r.get("dtype", "float32") for r in rows))
    for dtype in dtypes:
        for kind in ("fwd", "fwd+bwd"):
            ratios = [r["times"]["torch"] / r["times"]["fastnorm"] for r in rows
                      if r["case"].endswith(" " + kind) and r.get("dtype", "float32") == dtype
                      and "torch" in r["times"] and "fastnorm" in r["times"]]
            what = kind if dtypes == ["float32"] else f"{kind}, {dtype}"
            if ratios:
                gm = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
                lines.append(f"- geometric mean of the PyTorch ratios, {what}: {gm:.2f}x "
                             f"(min {min(ratios):.2f}x over {len(ratios)} cases)")
        n_unsupported = sum(1 for r in rows if r.get("dtype") == dtype and r.get("unsupported"))
        if n_unsupported:
            lines.append(f"- {dtype}: {n_unsupported} cases unsupported by this fastnorm "
                         "(its call raised TypeError)")
        n_mismatch = sum(1 for r in rows if r.get("dtype") == dtype and r.get("mismatch"))
        if n_mismatch:
            lines.append(f"- {dtype}: {n_mismatch} cases not timed: a peer disagreed with fastnorm (MISMATCH)")
    return lines


def environment(threads):
    cfg = fastnorm.get_config()
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = [f"fastnorm {cfg['version']} (kernels: {cfg['isa']}, OpenMP: {cfg['openmp']})",
                f"NumPy {np.__version__}", f"Python {platform.python_version()}"]
    if peers.torch is not None:
        versions.append(f"PyTorch {peers.torch.__version__}")
    if peers.ort is not None:
        versions.append(f"ONNX Runtime {peers.ort.__version__}")
    return [
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {cpu}, {os.cpu_count()} logical cores, {platform.system()} {platform.machine()}",
        f"- threads: {threads} for every implementation (NumPy's ufuncs are single-threaded)",
        "- versions: " + ", ".join(versions),
        "- PyTorch: torch.nn.functional's op under no_grad (fwd); autograd forward + "
        "torch.autograd.grad (fwd+bwd); channels-last cases in torch.channels_last memory. "
        "ONNX Runtime: LayerNormalization (opset 17), RMSNormalization (opset 23), "
        "LpNormalization, LRN (opset 13), com.microsoft SkipLayerNormalization / "
        "SkipSimplifiedLayerNormalization; thread spinning off. scikit-learn: StandardScaler. "
        "float32, eps=1e-5, with weight and bias (weight only for RMSNorm); "
        "BatchNorm train updates running statistics; GroupNorm with 32 groups. "
        "bfloat16 rows: ml_dtypes.bfloat16 arrays (x, grad, weight, bias; BatchNorm's running "
        "statistics float32 for fastnorm, bfloat16 for PyTorch, which requires the parameters' "
        "dtype) against torch.bfloat16 tensors over the same memory; their copy limit adds "
        "np.add of the uint16 views for fwd+bwd (the same bytes: ml_dtypes' element-wise add "
        "is compute-bound). "
        "Every peer's output was checked against fastnorm's before timing "
        "(within 2e-3 of the output's scale; bfloat16: 5e-2).",
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", nargs="+", default=None,
                   help="run the ops whose names start with these (default: all): " + ", ".join(peers.OPS)
                   + "; the overhead table's ops too: " + ", ".join(overhead.OPS))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 9; --quick 3)")
    p.add_argument("--min-time", type=float, default=None,
                   help="seconds per timed loop (default 0.02; --quick 0.005)")
    p.add_argument("--shapes", nargs="+", default=None, help="e.g. 64x768 8192x4096")
    p.add_argument("--dtypes", default=",".join(peers.DTYPES),
                   help="comma-separated dtypes of the rows: float32, bfloat16 (default: both, where "
                        "ml_dtypes is installed; bfloat16 covers the row and channel cases and, in the "
                        "overhead table, the layer_norm / rms_norm / batch_norm / group_norm calls)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: lower --min-time / --repeats (and the overhead table's)")
    p.add_argument("--no-overhead", action="store_true", help="skip the per-call overhead table")
    p.add_argument("--overhead-only", action="store_true", help="print only the per-call overhead table")
    p.add_argument("--overhead-repeats", type=int, default=None,
                   help="timed rounds per overhead call, the minimum is shown (default 15; --quick 3)")
    p.add_argument("--overhead-min-time", type=float, default=None,
                   help="seconds per timed loop of an overhead call (default 0.005; --quick 0.002)")
    p.add_argument("--no-torch-bridge", action="store_true", help="skip the fastnorm.torch vs torch table")
    p.add_argument("--torch-bridge-only", action="store_true", help="print only the fastnorm.torch vs torch table")
    p.add_argument("--no-models", action="store_true", help="skip the real-model table")
    p.add_argument("--models-only", action="store_true", help="print only the real-model table")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check that every peer's output agrees with fastnorm's")
    p.add_argument("--save", metavar="FILE", help="also write the table, machine and versions to FILE")
    p.add_argument("--readme", metavar="FILE",
                   help="also replace the results block of FILE (between its results markers)")
    args = p.parse_args(argv)
    if args.no_overhead and args.overhead_only:
        p.error("--no-overhead and --overhead-only exclude each other")
    if args.torch_bridge_only or args.models_only:
        args.overhead_only, args.no_overhead = True, True
    if args.models_only:
        args.torch_bridge_only, args.no_torch_bridge = False, True
    if args.torch_bridge_only:
        args.no_models = True
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in ("float32", "bfloat16"):
            p.error(f"--dtypes: unknown dtype {d!r} (float32, bfloat16)")
        if d not in peers.DTYPES:
            p.error(f"--dtypes {d}: ml_dtypes is not installed")
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 9)
    min_time = args.min_time if args.min_time is not None else (0.005 if args.quick else 0.02)
    oh_repeats = args.overhead_repeats if args.overhead_repeats is not None else (3 if args.quick else 15)
    oh_min_time = (args.overhead_min_time if args.overhead_min_time is not None
                   else (0.002 if args.quick else 0.005))
    shapes = None if args.shapes is None else [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    lines = []

    def emit(line):
        print(line, flush=True)
        lines.append(line)

    env = environment(args.threads)
    print("\n".join(env) + "\n", flush=True)
    sections = []
    if not args.overhead_only:
        ops = [op for op in peers.OPS if args.ops is None or any(op.startswith(p) for p in args.ops)]
        rows = run(ops, shapes, args.threads, repeats, min_time, emit, check=not args.no_check,
                   dtypes=dtypes)
        tail = summary(rows)
        print("\n" + "\n".join(tail) + "\n", flush=True)
        sections += ["\n".join(lines), "\n".join(tail)]
        del lines[:]
    if not args.no_overhead:
        overhead.run(args.threads, oh_repeats, oh_min_time, emit, ops=args.ops, dtypes=dtypes,
                     check=not args.no_check, timer=time_rounds)
        sections.append("\n".join(lines))
        del lines[:]
    if (args.torch_bridge_only or not args.no_torch_bridge) and peers.torch is not None:
        import torch_bridge
        torch_bridge.run(args.threads, min(repeats, 5), min_time, emit, dtypes=dtypes, timer=time_case)
        sections.append("\n".join(lines))
        del lines[:]
    if not args.no_models and peers.torch is not None:
        import models
        models.run(args.threads, min(repeats, 5), min_time, emit, dtypes=dtypes, timer=time_case)
        sections.append("\n".join(lines))
    body = "\n\n".join(["\n".join(env)] + [s for s in sections if s]) + "\n"
    if args.save:
        with open(args.save, "w") as f:
            f.write("# fastnorm benchmark comparison\n\n")
            f.write("Produced by `python benchmarks/compare.py "
                    + " ".join(a for a in (argv if argv is not None else sys.argv[1:])) + "`\n\n")
            f.write(body)
    if args.readme:
        start, end = "<!-- results:start -->", "<!-- results:end -->"
        with open(args.readme) as f:
            text = f.read()
        if start not in text or end not in text:
            sys.exit(f"{args.readme} has no {start} ... {end} block")
        head, rest = text.split(start, 1)
        _, foot = rest.split(end, 1)
        with open(args.readme, "w") as f:
            f.write(head + start + "\n" + body + end + foot)


if __name__ == "__main__":
    main()
