"""fastnorm over a grid of shapes, not a list: each case against PyTorch and
against the all-threads memory limit (SPEC section 3).

    python benchmarks/grid.py --threads 2                 # the short grid
    python benchmarks/grid.py --threads 2 --full          # the full grid
    python benchmarks/grid.py --threads 2 --save benchmarks/results/grid.md --plot grid.png
    python benchmarks/grid.py --threads 2 --json new.json    # raw results, for --compare
    python benchmarks/grid.py --compare old.json new.json    # regressions between two runs

The limit of a forward is the fastest copy of x into a preallocated array
on the same thread count: the minimum of np.copyto (one thread), fastnorm's
own OpenMP copy (``kernels.parallel_copy``: streaming stores from the
kernels' threshold, and forced on) and torch's ``Tensor.copy_`` (its own
threads).  The limit of a forward+backward adds one read-read-write pass
over x's size (the faster of np.add and torch.add with out=, on the same
threads).  Each case reports fastnorm's time (out= for forwards), its time
on one thread, PyTorch's, the ratio (PyTorch / fastnorm: above 1 fastnorm
is faster), fastnorm's and PyTorch's time as a fraction of the limit, and
fastnorm's effective bandwidth (the limit's bytes over fastnorm's time).

Timing as benchmarks/compare.py: auto-scaled loops, interleaved rounds,
medians.  Every case's PyTorch output is checked against fastnorm's first.
A progress bar (tqdm, where installed) shows the run; --plot writes a
matplotlib picture of each case's fraction of the limit and its speedup.

--compare reads two --json runs and lists, case by case, fastnorm's time in
the new run over the old one, flagging those slower by more than
--threshold (default 1.10).  The ratio is taken of each case's time as a
fraction of its own run's limit, which takes out most of what a different
or busier machine changes; the raw time ratio is listed beside it.  With
--fail-on-regression the command exits 1 when any case is flagged.  The
pytest-benchmark form of the short grid is benchmarks/test_bench_grid.py.
"""
import argparse
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import channel_peers  # noqa: E402
import compare  # noqa: E402
import peers  # noqa: E402

from fastnorm import _dispatch  # noqa: E402

torch = peers.torch  # None without PyTorch (peers imports it optionally)

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover
    tqdm = None

# rows x widths of the row ops; cases above MAX_VALUES values are left out
ROWS_SHORT = (1, 8, 512, 16384)
WIDTHS_SHORT = (1, 127, 768, 1023, 4097, 65536, 1 << 20)
ROWS_FULL = tuple(sorted(set(ROWS_SHORT) | {2, 7, 64, 4096, 100_000}))
WIDTHS_FULL = tuple(sorted(set(WIDTHS_SHORT) | {3, 64, 128, 129, 1000, 1024, 1025, 4095, 4096, 16384,
                                                 262_144, 1_000_000}))
MAX_VALUES = 1 << 25           # 128 MiB of float32: out of cache, not out of memory
MIN_VALUES = 1                 # (1, 1) included: the call overhead shows as a limit fraction
ROW_OPS = ("layer_norm", "rms_norm")
ROW_OPS_FULL = ROW_OPS + ("normalize", "add_layer_norm")

# (N, C, spatial side) of the channel ops; channels-first and channels-last
CHANNEL_SHORT = ((1, 64, 56), (32, 64, 56), (8, 256, 32), (64, 1024, 1), (2, 3, 224))
CHANNEL_FULL = CHANNEL_SHORT + ((1, 1, 512), (256, 32, 7), (8, 2048, 7), (16, 32, 128), (128, 96, 14))
CHANNEL_OPS = ("batch_norm train", "instance_norm", "group_norm")


def _row_cases(full):
    rows, widths = (ROWS_FULL, WIDTHS_FULL) if full else (ROWS_SHORT, WIDTHS_SHORT)
    for op in (ROW_OPS_FULL if full else ROW_OPS):
        for r in rows:
            for w in widths:
                if MIN_VALUES <= r * w <= MAX_VALUES:
                    yield op, (r, w), False


def _channel_cases(full):
    for op in CHANNEL_OPS:
        for n, c, side in (CHANNEL_FULL if full else CHANNEL_SHORT):
            shape = (n, c, side, side)
            if math.prod(shape) > MAX_VALUES:
                continue
            if op == "group_norm" and c % channel_peers.GROUPS:
                continue  # the peers' GroupNorm has 32 groups
            if op == "instance_norm" and side * side < 2:
                continue  # one value per (sample, channel): no variance
            for cl in (False, True):
                if op == "instance_norm" and cl:
                    continue  # the peers' InstanceNorm cases are channels-first
                yield op, shape, cl


def _entry(op, channels_last):
    """The peers' factories of a case: (fastnorm, torch, make_case)."""
    if op in peers.OPS:
        e = peers.OPS[op]
        return e["fastnorm"], e["torch"], e["make_case"]
    key = {"batch_norm train": "batch_norm train " + ("NHWC" if channels_last else "NCHW")}.get(op, op)
    e = channel_peers.CHANNEL_OPS[key]
    return e["fastnorm"], e["torch"], e["make_case"]


def cases(full=False):
    """Every (op, shape, channels_last) of the grid."""
    return list(_row_cases(full)) + list(_channel_cases(full))


# ---------------------------------------------------------------- the limit

def limit_impls(x, g, threads, backward):
    """{name: fn} of the copies whose fastest is the limit."""
    out = np.empty_like(x)
    kern = _dispatch.kernels
    impls = {
        "np.copyto": lambda: np.copyto(out, x),
        "fastnorm copy": lambda: kern.parallel_copy(x, out, threads),
        "fastnorm copy (streaming)": lambda: kern.parallel_copy(x, out, threads, True),
    }
    if torch is not None:
        tx, tout = peers.to_torch(x), peers.to_torch(out)
        impls["torch copy_"] = lambda: tout.copy_(tx)
    if not backward:
        return impls
    out2 = np.empty_like(x)
    xa, ga, oa = peers._bits(x), peers._bits(g), peers._bits(out2)
    adds = {"np.add": lambda: np.add(xa, ga, out=oa)}
    if torch is not None:
        txa, tga, toa = (torch.from_numpy(a) if a.dtype != np.uint16 else torch.from_numpy(a.view(np.int16))
                         for a in (xa, ga, oa))
        adds["torch.add"] = lambda: torch.add(txa, tga, out=toa)
    return impls, adds


def time_limit(x, g, threads, backward, repeats, min_time):
    """(seconds, what it was) of the case's limit."""
    if not backward:
        t = compare.time_case(limit_impls(x, g, threads, False), repeats, min_time)
        name = min(t, key=t.get)
        return t[name], name
    copies, adds = limit_impls(x, g, threads, True)
    tc = compare.time_case(copies, repeats, min_time)
    ta = compare.time_case(adds, repeats, min_time)
    c, a = min(tc, key=tc.get), min(ta, key=ta.get)
    return tc[c] + ta[a], f"{c} + {a}"


# ---------------------------------------------------------------- one case

def run_case(op, shape, channels_last, dtype, direction, threads, repeats, min_time):
    fast_f, torch_f, make_case = _entry(op, channels_last)
    backward = direction == "fwd+bwd"
    x, g, w, b = peers.cast_case(make_case(shape), dtype)
    fast = fast_f(x, g, w, b, threads, backward=backward, **({} if backward else {"out": True}))
    one = fast_f(x, g, w, b, 1, backward=backward, **({} if backward else {"out": True}))
    impls = {"fastnorm": fast}
    if torch is not None:
        impls["torch"] = torch_f(x, g, w, b, threads, backward=backward)
    tol = compare.TOLERANCE[dtype]
    bad = compare.disagreements(impls, tol)
    if bad:
        return {"mismatch": "; ".join(bad)}
    t = compare.time_case(dict(impls, **{"fastnorm 1T": one}), repeats, min_time)
    lim, how = time_limit(x, g, threads, backward, repeats, min_time)
    moved = x.nbytes * (5 if backward else 2)  # the limit's bytes: 1R+1W, plus 2R+1W
    return {"fastnorm": t["fastnorm"], "fastnorm 1T": t["fastnorm 1T"], "torch": t.get("torch"),
            "limit": lim, "limit_by": how, "gbs": moved / t["fastnorm"] / 1e9}


def _fmt_time(s):
    if s is None:
        return "n/a"
    return f"{s * 1e3:.2f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def _label(op, shape, cl):
    return f"{op}{' NHWC' if cl else ''} {shape}"


def table(results):
    lines = ["| case | dtype | dir | fastnorm | 1 thread | PyTorch | vs PyTorch | of limit | PyTorch of limit "
             "| GB/s | limit (by) |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for (op, shape, cl, dtype, d), r in results:
        if "mismatch" in r:
            lines.append(f"| {_label(op, shape, cl)} | {dtype} | {d} | MISMATCH: {r['mismatch']} "
                         "| | | | | | | |")
            continue
        ratio = f"{r['torch'] / r['fastnorm']:.2f}x" if r["torch"] else "n/a"
        tl = f"{r['torch'] / r['limit']:.2f}x" if r["torch"] else "n/a"
        lines.append(f"| {_label(op, shape, cl)} | {dtype} | {d} | {_fmt_time(r['fastnorm'])} "
                     f"| {_fmt_time(r['fastnorm 1T'])} | {_fmt_time(r['torch'])} | {ratio} "
                     f"| {r['fastnorm'] / r['limit']:.2f}x | {tl} | {r['gbs']:.1f} "
                     f"| {_fmt_time(r['limit'])} ({r['limit_by']}) |")
    return "\n".join(lines)


OUT_OF_CACHE = 1 << 24  # bytes of x from which a case counts as out of cache


def summary(results):
    """The grid's summary lines: geometric means, cases slower than PyTorch,
    out-of-cache cases over their targets, the worst ten by fraction of limit."""
    ok = [(k, r) for k, r in results if "mismatch" not in r and r.get("torch")]
    lines = []
    for d in ("fwd", "fwd+bwd"):
        for dtype in sorted({k[3] for k, _ in ok}):
            sel = [r for k, r in ok if k[4] == d and k[3] == dtype]
            if sel:
                gm = math.exp(sum(math.log(r["torch"] / r["fastnorm"]) for r in sel) / len(sel))
                slower = sum(r["torch"] < r["fastnorm"] for r in sel)
                lines.append(f"- {d}, {dtype}: geometric mean {gm:.2f}x PyTorch over {len(sel)} cases; "
                             f"{slower} slower than PyTorch; worst {min(r['torch'] / r['fastnorm'] for r in sel):.2f}x")
    over = []
    for k, r in ok:
        x_bytes = math.prod(k[1]) * (2 if k[3] == "bfloat16" else 4)
        target = 1.25 if k[4] == "fwd" else 1.5
        frac = r["fastnorm"] / r["limit"]
        if x_bytes >= OUT_OF_CACHE and frac > target:
            over.append(f"{_label(*k[:3])} {k[3]} {k[4]} {frac:.2f}x")
    lines.append(f"- out of cache over target (fwd 1.25x, fwd+bwd 1.5x of the limit): {len(over)}"
                 + (": " + "; ".join(over) if over else ""))
    worst = sorted(ok, key=lambda kr: kr[1]["fastnorm"] / kr[1]["limit"], reverse=True)[:10]
    lines.append("- worst ten by fraction of the limit: " + "; ".join(
        f"{_label(*k[:3])} {k[3]} {k[4]} {r['fastnorm'] / r['limit']:.2f}x" for k, r in worst))
    slow = sorted(ok, key=lambda kr: kr[1]["torch"] / kr[1]["fastnorm"])[:10]
    lines.append("- worst ten against PyTorch: " + "; ".join(
        f"{_label(*k[:3])} {k[3]} {k[4]} {r['torch'] / r['fastnorm']:.2f}x" for k, r in slow))
    return "\n".join(lines)


def plot(results, path):
    """One column of panels per (dtype, direction): each case's time as a
    fraction of the limit (fastnorm beside PyTorch) and its speedup over
    PyTorch, the cases in the same order in every column."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ok = {k: r for k, r in results if "mismatch" not in r and r.get("torch")}
    if not ok:
        return
    groups = sorted({(k[3], k[4]) for k in ok})
    shapes = list(dict.fromkeys(k[:3] for k in ok))  # the run's order
    yy = np.arange(len(shapes))
    fig, axes = plt.subplots(1, 2 * len(groups), figsize=(4.2 * len(groups) * 2 / 1.6,
                                                          max(4, 0.16 * len(shapes) + 1.8)),
                             sharey=True, squeeze=False)
    for i, (dtype, d) in enumerate(groups):
        a1, a2 = axes[0][2 * i], axes[0][2 * i + 1]
        rows = [ok.get(k + (dtype, d)) for k in shapes]
        frac = [r["fastnorm"] / r["limit"] if r else np.nan for r in rows]
        tfrac = [r["torch"] / r["limit"] if r else np.nan for r in rows]
        speed = [r["torch"] / r["fastnorm"] if r else np.nan for r in rows]
        a1.barh(yy - 0.2, frac, 0.4, label="fastnorm")
        a1.barh(yy + 0.2, tfrac, 0.4, label="PyTorch")
        a1.axvline(1.0, color="k", lw=0.8)
        a1.axvline(1.25 if d == "fwd" else 1.5, color="tab:red", lw=0.8, ls="--")
        a1.set_xscale("log")
        a1.set_title(f"{dtype} {d}: time / limit", fontsize=8)
        a2.barh(yy, speed, 0.6, color=["tab:green" if v >= 1 else "tab:red" for v in speed])
        a2.axvline(1.0, color="k", lw=0.8)
        a2.set_xscale("log")
        a2.set_title(f"{dtype} {d}: speedup", fontsize=8)
        if i == 0:
            a1.legend(loc="lower right", fontsize=7)
    axes[0][0].set_yticks(yy, [_label(*k) for k in shapes], fontsize=6)
    axes[0][0].invert_yaxis()
    fig.suptitle("fastnorm shape grid: time / limit (lower is better; dashed red: the target) "
                 "and speedup over PyTorch (higher is better)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- two runs

def save_json(results, path, head):
    """The raw results of a run (seconds), for --compare."""
    rows = [{"op": k[0], "shape": list(k[1]), "channels_last": k[2], "dtype": k[3], "direction": k[4],
             **r} for k, r in results]
    with open(path, "w") as f:
        json.dump({"environment": head, "results": rows}, f, indent=1)


def load_json(path):
    with open(path) as f:
        data = json.load(f)
    return {(r["op"], tuple(r["shape"]), r["channels_last"], r["dtype"], r["direction"]): r
            for r in data["results"]}


def compare_runs(old, new, threshold=1.10):
    """(Markdown lines, flagged keys) of new vs old, case by case: the ratio
    of the time as a fraction of each run's limit, and of raw times."""
    lines = ["| case | dtype | dir | old | new | new/old (of limit) | new/old (time) | |",
             "|---|---|---|---:|---:|---:|---:|---|"]
    flagged, ratios = [], []
    for key in [k for k in new if k in old]:
        o, n = old[key], new[key]
        if "mismatch" in o or "mismatch" in n:
            lines.append(f"| {_label(*key[:3])} | {key[3]} | {key[4]} | | | | | mismatch |")
            continue
        rel = (n["fastnorm"] / n["limit"]) / (o["fastnorm"] / o["limit"])
        raw = n["fastnorm"] / o["fastnorm"]
        ratios.append(rel)
        bad = rel > threshold
        if bad:
            flagged.append(key)
        lines.append(f"| {_label(*key[:3])} | {key[3]} | {key[4]} | {_fmt_time(o['fastnorm'])} "
                     f"| {_fmt_time(n['fastnorm'])} | {rel:.2f} | {raw:.2f} | {'REGRESSION' if bad else ''} |")
    only = len(set(new) ^ set(old))
    gm = math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else float("nan")
    lines.append("")
    lines.append(f"- {len(ratios)} cases in both runs ({only} in one only); geometric mean new/old "
                 f"(of limit) {gm:.3f}; {len(flagged)} slower by more than {threshold:.2f}x")
    return lines, flagged


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--full", action="store_true", help="the full grid (default: the short one)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--directions", default="fwd,fwd+bwd")
    p.add_argument("--ops", nargs="+", help="only the ops whose names start with these")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-time", type=float, default=0.05)
    p.add_argument("--max-values", type=int, default=MAX_VALUES,
                   help="leave out cases of more values than this")
    p.add_argument("--save", metavar="FILE", help="also write the table and summary (Markdown) here")
    p.add_argument("--plot", metavar="PNG", help="write the picture here")
    p.add_argument("--json", metavar="FILE", help="write the raw results here (for --compare)")
    p.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two --json runs; no timing")
    p.add_argument("--threshold", type=float, default=1.10, help="--compare: flag cases slower than this")
    p.add_argument("--fail-on-regression", action="store_true", help="--compare: exit 1 when any is flagged")
    args = p.parse_args(argv)
    if args.compare:
        lines, flagged = compare_runs(load_json(args.compare[0]), load_json(args.compare[1]), args.threshold)
        print("\n".join(lines))
        if args.save:
            with open(args.save, "w") as f:
                f.write("\n".join(lines) + "\n")
        if flagged and args.fail_on_regression:
            raise SystemExit(1)
        return flagged
    peers.set_threads(args.threads)
    dtypes = [d for d in args.dtypes.split(",") if d in peers.DTYPES]
    dirs = args.directions.split(",")
    todo = [(op, shape, cl, dt, d) for op, shape, cl in cases(args.full)
            if math.prod(shape) <= args.max_values and (not args.ops or any(op.startswith(o) for o in args.ops))
            for dt in dtypes for d in dirs]
    results = []
    bar = tqdm(todo, unit="case", file=sys.stderr) if tqdm is not None else todo
    for key in bar:
        if tqdm is not None:
            bar.set_description(f"{_label(*key[:3])} {key[3]} {key[4]}"[:60])
        results.append((key, run_case(*key, args.threads, args.repeats, args.min_time)))
    head = compare.environment(args.threads)[:4] + [
        f"- grid: {'full' if args.full else 'short'}, {len(todo)} cases; medians of {args.repeats} rounds"]
    text = "\n".join(head) + "\n\n" + table(results) + "\n\n" + summary(results) + "\n"
    print(text)
    if args.save:
        with open(args.save, "w") as f:
            f.write(text)
    if args.plot:
        plot(results, args.plot)
    if args.json:
        save_json(results, args.json, head)
    return results


if __name__ == "__main__":
    main()
