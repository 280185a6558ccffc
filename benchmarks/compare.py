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


def time_case(impls, repeats, min_time):
    """{name: median seconds per call} with interleaved rounds."""
    loops = {}
    for name, fn in impls.items():
        fn()  # warm up (allocations, thread pools, ORT graph)
        loops[name] = calibrate(fn, min_time)
    samples = {name: [] for name in impls}
    for _ in range(repeats):
        for name, fn in impls.items():
            # let the previous implementation's spinning OpenMP workers (torch's
            # or fastnorm's) go idle, so that they do not steal this one's cores
            time.sleep(0.005)
            n = loops[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    return {name: statistics.median(s) for name, s in samples.items()}


def first_array(result):
    """The first output of an implementation's result (an array, a torch
    tensor, or the first of a tuple / list of them) as a flat float64 array
    in memory order (channels-last cases: torch's NCHW view of NHWC memory
    and fastnorm's NHWC array flatten alike)."""
    while isinstance(result, (tuple, list)):
        result = result[0]
    if hasattr(result, "detach"):
        result = result.detach().numpy()
    return np.asarray(result).astype(np.float64, order="K").ravel(order="K")


def check_agreement(case, impls, tol=2e-3):
    """Every peer must compute what fastnorm computes: its first output (y, or
    grad_x for fwd+bwd) within tol of fastnorm's, relative to its largest
    value.  A table that times a different computation is refused."""
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
        if not err <= tol * max(1.0, float(np.max(np.abs(ours)))):
            bad.append(f"{name}: max difference {err:.3g}")
    if bad:
        raise SystemExit(f"{case}: peers disagree with fastnorm ({'; '.join(bad)})")


def fmt_time(t):
    if t is None:
        return "n/a"
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    return f"{t * 1e3:.2f} ms"


def fmt_ratio(peer, ours):
    return "n/a" if peer is None or ours is None else f"{peer / ours:.2f}x"


def run(ops, shapes, threads, repeats, min_time, emit, check=True):
    peers.set_threads(threads)
    rows = []
    header = ("| case | shape | fastnorm | fastnorm out= | PyTorch | vs PyTorch | ONNX Runtime "
              "| vs ORT | NumPy | vs NumPy | copy limit | of copy |")
    emit(header)
    emit("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for op in ops:
        factories = peers.OPS[op]
        for backward in [d == "fwd+bwd" for d in factories["directions"]]:
            for shape in (shapes or factories["shapes"]):
                x, g, w, b = factories["make_case"](shape)
                impls = {"fastnorm": factories["fastnorm"](x, g, w, b, threads, backward=backward)}
                if not backward:
                    impls["fastnorm_out"] = factories["fastnorm"](x, g, w, b, threads, out=True)
                for peer in ("torch", "onnxruntime", "numpy", "scikit-learn"):
                    fn = factories[peer](x, g, w, b, threads, backward=backward) if peer in factories else None
                    if fn is not None:
                        impls[peer] = fn
                if "unfused" in factories:
                    impls["unfused"] = factories["unfused"](x, g, w, b, threads)
                impls["copy"] = factories.get("copy", peers.copy_limit)(x, g, w, b, threads, backward=backward)
                case = f"{op} {'fwd+bwd' if backward else 'fwd'}"
                if check:
                    check_agreement(f"{case} {shape}", impls)
                t = time_case(impls, repeats, min_time)
                ours = t["fastnorm"]
                limit_ours = t.get("fastnorm_out", ours)
                row = dict(case=case, shape=shape, times=t)
                rows.append(row)
                if "scikit-learn" in t:
                    case = (f"{case} (scikit-learn StandardScaler: {fmt_time(t['scikit-learn'])}, "
                            f"{t['scikit-learn'] / ours:.2f}x)")
                if "unfused" in t:
                    case = f"{case} (unfused add+norm: {fmt_time(t['unfused'])}, {t['unfused'] / ours:.2f}x)"
                emit(f"| {case} | {shape} | {fmt_time(ours)} | {fmt_time(t.get('fastnorm_out'))} "
                     f"| {fmt_time(t.get('torch'))} | {fmt_ratio(t.get('torch'), ours)} "
                     f"| {fmt_time(t.get('onnxruntime'))} | {fmt_ratio(t.get('onnxruntime'), ours)} "
                     f"| {fmt_time(t.get('numpy'))} | {fmt_ratio(t.get('numpy'), ours)} "
                     f"| {fmt_time(t['copy'])} | {limit_ours / t['copy']:.2f}x |")
    return rows


def summary(rows):
    lines = []
    for kind in ("fwd", "fwd+bwd"):
        ratios = [r["times"]["torch"] / r["times"]["fastnorm"] for r in rows
                  if r["case"].endswith(" " + kind) and "torch" in r["times"]]
        if ratios:
            gm = math.exp(sum(math.log(v) for v in ratios) / len(ratios))
            lines.append(f"- geometric mean of the PyTorch ratios, {kind}: {gm:.2f}x "
                         f"(min {min(ratios):.2f}x over {len(ratios)} cases)")
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
        "Every peer's output was checked against fastnorm's before timing.",
    ]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", nargs="+", default=None,
                   help="run the ops whose names start with these (default: all): " + ", ".join(peers.OPS))
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--min-time", type=float, default=0.02, help="seconds per timed loop")
    p.add_argument("--shapes", nargs="+", default=None, help="e.g. 64x768 8192x4096")
    p.add_argument("--no-check", action="store_true",
                   help="skip the check that every peer's output agrees with fastnorm's")
    p.add_argument("--save", metavar="FILE", help="also write the table, machine and versions to FILE")
    p.add_argument("--readme", metavar="FILE",
                   help="also replace the results block of FILE (between its results markers)")
    args = p.parse_args(argv)
    shapes = None if args.shapes is None else [tuple(int(v) for v in s.split("x")) for s in args.shapes]
    lines = []

    def emit(line):
        print(line, flush=True)
        lines.append(line)

    env = environment(args.threads)
    print("\n".join(env) + "\n", flush=True)
    ops = [op for op in peers.OPS if args.ops is None or any(op.startswith(p) for p in args.ops)]
    rows = run(ops, shapes, args.threads, args.repeats, args.min_time, emit, check=not args.no_check)
    tail = summary(rows)
    print("\n" + "\n".join(tail))
    body = "\n".join(env) + "\n\n" + "\n".join(lines) + "\n\n" + "\n".join(tail) + "\n"
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
