"""fastnorm.sklearn against scikit-learn and dask-ml: a standalone benchmark.

    python benchmarks/scalers.py                      # full run (about 10 min on 2 cores)
    python benchmarks/scalers.py --quick              # smoke run (about 1-2 min)
    python benchmarks/scalers.py --save results.md    # also write the tables to a file

It prints Markdown tables (stdout; --save writes the same text to a file).

1. In memory.  ``fastnorm.sklearn.{StandardScaler, MinMaxScaler, Normalizer}``
   against ``sklearn.preprocessing``'s, for ``fit``, ``transform`` and
   ``fit_transform`` on large float32 and float64 matrices.  Both sides run
   under ``threadpoolctl.threadpool_limits(--threads)`` (default 2) and
   fastnorm's estimators keep their default ``n_threads=None`` (all cores,
   which is 2 here; an explicit ``n_threads`` when --threads differs), both
   with their default ``copy=True``: every transform returns a new array and
   leaves X alone.  (scikit-learn's scalers are NumPy code and mostly run on
   one thread whatever the limit.)  Before a case is timed, fastnorm's
   fitted attributes and output are checked against scikit-learn's (the
   "check" column: the largest difference of the outputs; MISMATCH makes the
   script exit with status 1).

   Timing: one untimed round, then ``--rounds`` rounds; in each, every
   variant is called once (order reversed every other round, so that
   neither side always runs first); the table shows each variant's median and sklearn / fastnorm
   (above 1: fastnorm is faster).  Only the call is timed: freeing its
   result is not, for either side.  "spread" is the largest (max - min) /
   median over the variants of the row; rows above 25% are marked noisy.
   Most of the spread comes from fresh memory: scikit-learn's fit allocates
   float64 temporaries of X's size and every transform a new output, and
   the time to fault in fresh pages varies a lot from call to call on a
   virtual machine (a 2-3x outlier in one round is common); the medians
   are steadier than the spread suggests.

   fastnorm hands large outputs out of a small cache of buffers
   (``fastnorm.set_output_cache``; on by default), so in a loop its
   transforms skip the page faults of fresh memory that scikit-learn's pay.
   The table shows both: "fastnorm" is the default (the cache warmed by an
   untimed call before each timed one), "cache off" is fastnorm with
   ``set_output_cache(0)``, so that its output is fresh NumPy memory like
   scikit-learn's -- the like-for-like number for a transform called once.
   ``fit`` allocates no output, so it has no "cache off" column.

2. Dask.  ``fit(X)`` then ``transform(X)`` of a multi-GiB float32 array on one
   ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)``
   whose per-worker ``memory_limit`` is several times smaller than the array:
   ``fastnorm.sklearn`` StandardScaler / MinMaxScaler against
   ``dask_ml.preprocessing``'s.  X is a lazy ``map_blocks`` of a generator
   seeded per block (uniform values, a different offset and range per
   feature), so it never exists in full and every pass regenerates it; the
   "generate only" row times one such pass (``X.sum(axis=0)``), the floor of
   each of fit and transform.  The transform's result is reduced to its
   column sums in float64 (``--sink sum``, default) or written to a zarr
   store under a temporary directory (``--sink zarr``), the same for both
   libraries, so it is computed without being held.  Each library runs
   ``--dask-repeats`` times, alternating; the table shows the median times
   and the largest peak.

   Memory: every worker resets its peak-RSS mark (Linux ``VmHWM``, through
   ``/proc/self/clear_refs``) before each run and reports it after; where
   that is not available, a thread in each worker samples its RSS every
   0.05 s.  "peak" is the largest worker's peak RSS, "above start" that
   minus its RSS before the run (the workers have already run both
   libraries once on a 4-chunk array, so imports and first touches of
   chunk-sized memory are not counted).  Restarts (a worker's PID changed,
   all runs), "Pausing worker" events (a worker crossed its memory pause
   fraction) and bytes spilled to disk (the largest over the runs) are
   reported too.  fastnorm's kernels use one thread per task there (its
   default ``n_threads=None`` follows the OMP_NUM_THREADS=1 distributed sets
   in its workers; the header shows what the workers resolved).

The machine may be shared: the header and footer show the load average,
each section says how many cores other processes used meanwhile (system busy
time minus this process tree's, and the hypervisor's steal time), and noisy
rows are marked.
"""
import argparse
import datetime
import gc
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

import fastnorm
import fastnorm.sklearn as fsk

# ---------------------------------------------------------------- configuration

MiB = 1 << 20
GiB = 1 << 30

FULL = {
    "shapes": [((2_000_000, 64), np.float32), ((1_000_000, 64), np.float64), ((20_000, 4096), np.float32)],
    "rounds": 7,
    "dask_rows": 16_777_216,      # x 64 float32 = 4 GiB
    "dask_features": 64,
    "dask_chunk_rows": 262_144,   # 64 MiB chunks, 64 of them
    "worker_memory": 1 * GiB,
    "dask_repeats": 2,
}
QUICK = {
    "shapes": [((200_000, 64), np.float32), ((100_000, 64), np.float64), ((2_000, 4096), np.float32)],
    "rounds": 3,
    "dask_rows": 2_097_152,       # x 64 float32 = 512 MiB
    "dask_features": 64,
    "dask_chunk_rows": 65_536,    # 16 MiB chunks, 32 of them
    "worker_memory": 1 * GiB,
    "dask_repeats": 1,
}

ESTIMATORS = ("StandardScaler", "MinMaxScaler", "Normalizer")
OPS = ("fit", "transform", "fit_transform")
# fitted attributes compared between the two implementations
ATTRIBUTES = {
    "StandardScaler": ("mean_", "var_", "scale_"),
    "MinMaxScaler": ("data_min_", "data_max_", "scale_", "min_"),
    "Normalizer": (),
}
NOISY = 0.25


# ---------------------------------------------------------------- output

class Report:
    """Lines printed as they come and kept for --save."""

    def __init__(self):
        self.lines = []

    def __call__(self, line=""):
        print(line, flush=True)
        self.lines.append(line)

    def table(self, headers, rows):
        self("| " + " | ".join(headers) + " |")
        self("|" + "|".join("---" for _ in headers) + "|")
        for row in rows:
            self("| " + " | ".join(str(c) for c in row) + " |")
        self()

    def save(self, path):
        with open(path, "w") as f:
            f.write("\n".join(self.lines) + "\n")


def fmt_s(t):
    if t is None:
        return "–"
    return f"{t * 1e3:.1f} ms" if t < 1 else f"{t:.2f} s"


def fmt_x(r):
    return "–" if r is None else f"{r:.2f}x"


def fmt_mib(b):
    return "–" if b is None else f"{b / MiB:,.0f}"


def spread(ts):
    return (max(ts) - min(ts)) / statistics.median(ts) if len(ts) > 1 else 0.0


def load_avg():
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:  # pragma: no cover - not on every OS
        return "n/a"


class CpuMonitor:
    """CPU time the rest of the machine used while a section ran: the
    system's busy time minus this process's and its children's (the Dask
    workers), and the hypervisor's steal time, both in cores on average."""

    def __init__(self):
        self.t0, self.busy0, self.own0, self.steal0 = time.monotonic(), *self._read()

    @staticmethod
    def _read():
        import psutil
        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)
        me = psutil.Process()
        c = me.cpu_times()
        own = c.user + c.system + c.children_user + c.children_system
        for child in me.children(recursive=True):
            try:
                ct = child.cpu_times()
                own += ct.user + ct.system
            except psutil.Error:
                pass
        return busy, own, getattr(t, "steal", 0.0)

    def summary(self):
        busy, own, steal = self._read()
        dt = max(time.monotonic() - self.t0, 1e-9)
        others = max((busy - self.busy0) - (own - self.own0), 0.0) / dt
        stolen = (steal - self.steal0) / dt
        flag = " -- **other load present: timings may be disturbed**" if others > 0.2 or stolen > 0.2 else ""
        return (f"Other processes used {others:.2f} cores on average during this section "
                f"(steal {stolen:.2f}){flag}.")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ---------------------------------------------------------------- part 1: in memory

def make_matrix(shape, dtype, seed=0):
    """Standard normal values with a per-feature offset and scale (so that
    centring and scaling both matter)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal(shape, dtype=np.float32 if dtype == np.float32 else np.float64)
    X *= rng.uniform(0.5, 4.0, shape[1]).astype(X.dtype)
    X += rng.uniform(-10.0, 10.0, shape[1]).astype(X.dtype)
    return X


def estimator_pair(name, threads):
    """(fastnorm's, scikit-learn's) estimator `name`, default arguments."""
    import sklearn.preprocessing as skp
    n_threads = None if threads == fastnorm.max_threads() else threads
    return getattr(fsk, name)(n_threads=n_threads), getattr(skp, name)()


def max_abs_diff(a, b, block=1 << 16):
    """max |a - b| over two equal-shape arrays, a block of rows at a time
    (no full-size temporaries)."""
    worst = 0.0
    for i in range(0, a.shape[0], block):
        d = np.abs(a[i:i + block].astype(np.float64) - b[i:i + block])
        worst = max(worst, float(d.max(initial=0.0)))
    return worst


def check_case(name, X, threads):
    """Fit both estimators on X and compare fitted attributes and outputs.
    Returns (ok, text for the check column)."""
    ours, theirs = estimator_pair(name, threads)
    y_ours = ours.fit_transform(X)
    y_theirs = theirs.fit_transform(X)
    problems = []
    if y_ours.dtype != y_theirs.dtype or y_ours.shape != y_theirs.shape:
        problems.append(f"output {y_ours.dtype}{y_ours.shape} vs {y_theirs.dtype}{y_theirs.shape}")
    if np.shares_memory(y_ours, X) or np.shares_memory(y_theirs, X):
        problems.append("an output shares X's memory")
    for attr in ATTRIBUTES[name]:
        a, b = np.asarray(getattr(ours, attr), np.float64), np.asarray(getattr(theirs, attr), np.float64)
        if not np.allclose(a, b, rtol=1e-5 if X.dtype == np.float32 else 1e-10, atol=0):
            problems.append(f"{attr} differs by up to {np.max(np.abs(a - b) / np.abs(b)):.2g} (relative)")
    diff = max_abs_diff(y_ours, y_theirs)
    tol = 1e-4 if X.dtype == np.float32 else 1e-10   # outputs are O(1)
    if diff > tol:
        problems.append(f"outputs differ by {diff:.2g} > {tol:g}")
    del y_ours, y_theirs
    if problems:
        return False, "MISMATCH: " + "; ".join(problems)
    return True, f"{diff:.1e}"


class Variant:
    """One timed callable of a row, with an untimed `prepare` before each call."""

    def __init__(self, label, fn, prepare=None):
        self.label, self.fn, self.prepare, self.times = label, fn, prepare, []

    def run_once(self):
        if self.prepare is not None:
            self.prepare()
        t0 = time.perf_counter()
        out = self.fn()
        dt = time.perf_counter() - t0
        del out                      # freed outside the timed region, for every variant
        self.times.append(dt)


def interleave(variants, rounds, warmup=1):
    """Call every variant once per round, the order reversed every other
    round, after `warmup` untimed rounds (first touches of fresh memory)."""
    for r in range(warmup + rounds):
        if r == warmup:
            for v in variants:
                v.times.clear()
        for v in (variants if r % 2 == 0 else variants[::-1]):
            v.run_once()


def case_variants(name, op, X, threads, cache_limit):
    """The variants of one (estimator, op) row: fastnorm with its output cache
    warm, fastnorm with the cache off (ops with an output), scikit-learn."""
    ours, theirs = estimator_pair(name, threads)
    if op == "transform":
        ours.fit(X)
        theirs.fit(X)

    def call(est):
        method = getattr(est, op)
        return lambda: method(X)

    def cache_warm():
        fastnorm.set_output_cache(0)          # drop buffers of other sizes
        fastnorm.set_output_cache(cache_limit)
        call(ours)()                          # leaves this op's output buffer in the cache

    def cache_off():
        fastnorm.set_output_cache(0)

    if op == "fit":
        return [Variant("fastnorm", call(ours)), Variant("sklearn", call(theirs))]
    return [Variant("fastnorm", call(ours), cache_warm),
            Variant("sklearn", call(theirs)),
            Variant("cache off", call(ours), cache_off)]


def bench_in_memory(cfg, threads, report):
    """Part 1: returns False when an output check failed."""
    from threadpoolctl import threadpool_limits

    cache_limit = fastnorm.output_cache_info()[1]
    rows, all_ok = [], True
    monitor = CpuMonitor()
    with threadpool_limits(limits=threads):
        for shape, dtype in cfg["shapes"]:
            t0 = time.perf_counter()
            X = make_matrix(shape, dtype)
            print(f"  [{shape} {np.dtype(dtype).name}: {X.nbytes / MiB:,.0f} MiB, "
                  f"generated in {time.perf_counter() - t0:.1f} s]", file=sys.stderr, flush=True)
            for name in ESTIMATORS:
                ok, check = check_case(name, X, threads)
                all_ok &= ok
                for op in OPS:
                    if not ok:
                        rows.append([name, op, f"{shape[0]:,}x{shape[1]:,}", np.dtype(dtype).name]
                                    + ["–"] * 6 + [check])
                        continue
                    variants = case_variants(name, op, X, threads, cache_limit)
                    gc.collect()
                    gc.disable()
                    try:
                        interleave(variants, cfg["rounds"])
                    finally:
                        gc.enable()
                        fastnorm.set_output_cache(cache_limit)
                    med = {v.label: statistics.median(v.times) for v in variants}
                    off = med.get("cache off")
                    sp = max(spread(v.times) for v in variants)
                    rows.append([
                        name, op, f"{shape[0]:,}x{shape[1]:,}", np.dtype(dtype).name,
                        fmt_s(med["fastnorm"]), fmt_s(off), fmt_s(med["sklearn"]),
                        fmt_x(med["sklearn"] / med["fastnorm"]),
                        fmt_x(None if off is None else med["sklearn"] / off),
                        f"{sp:.0%}" + (" noisy" if sp > NOISY else ""),
                        check,
                    ])
                    print(f"  {name}.{op} {shape}: " + ", ".join(f"{k} {fmt_s(t)}" for k, t in med.items()),
                          file=sys.stderr, flush=True)
            del X
            gc.collect()
    report(f"### In memory: fastnorm.sklearn vs sklearn.preprocessing ({threads} threads, "
           f"median of {cfg['rounds']} interleaved rounds)")
    report()
    report.table(["estimator", "op", "shape", "dtype", "fastnorm", "cache off", "sklearn",
                  "sklearn / fastnorm", "sklearn / cache off", "spread", "check (max abs diff)"], rows)
    report(monitor.summary())
    report()
    return all_ok


# ---------------------------------------------------------------- part 2: Dask

def _uniform_block(block_info=None, seed=0):
    """One chunk of the synthetic array: uniform float32 values, feature j in
    [-j, 2 j + 1), from a generator seeded by (seed, chunk row index)."""
    info = block_info[None]
    i = info["chunk-location"][0]
    lo, hi = info["array-location"][1]
    b = np.random.default_rng([seed, i]).random(info["chunk-shape"], dtype=np.float32)
    j = np.arange(lo, hi, dtype=np.float32)
    b *= 3 * j + 1
    b -= j
    return b


def make_dask_array(n_rows, n_features, chunk_rows, seed=0):
    import dask.array as da
    n_full, rest = divmod(n_rows, chunk_rows)
    rows = (chunk_rows,) * n_full + ((rest,) if rest else ())
    return da.map_blocks(_uniform_block, seed=seed, chunks=(rows, (n_features,)), dtype=np.float32,
                         meta=np.empty((0, 0), np.float32), name=f"uniform-{seed}-{n_rows}x{n_features}")


# These run inside the workers (client.run; cloudpickle sends them by value).

def _peak_start(interval=0.05, dask_worker=None):
    """Start a peak-RSS window in this worker: reset Linux's VmHWM and start a
    sampler thread (the fallback).  Returns (pid, RSS now, disk bytes written so far)."""
    import psutil
    proc = psutil.Process()
    old = getattr(dask_worker, "_bench_peak", None)
    if old is not None:
        old["stop"].set()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm = True
    except OSError:
        hwm = False
    rss = proc.memory_info().rss
    state = {"stop": threading.Event(), "peak": rss, "hwm": hwm}

    def sample():
        while not state["stop"].wait(interval):
            state["peak"] = max(state["peak"], proc.memory_info().rss)

    threading.Thread(target=sample, daemon=True, name="bench-rss").start()
    dask_worker._bench_peak = state
    return os.getpid(), rss, _disk_written(dask_worker)


def _peak_read(dask_worker=None):
    """End the window: (pid, peak RSS, how it was measured, disk bytes written so far)."""
    import psutil
    state = getattr(dask_worker, "_bench_peak", None)
    if state is None:                          # a new process: the worker was restarted
        return os.getpid(), None, "restarted", _disk_written(dask_worker)
    state["stop"].set()
    peak, how = max(state["peak"], psutil.Process().memory_info().rss), "sampled"
    if state["hwm"]:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak, how = max(peak, int(line.split()[1]) * 1024), "VmHWM"
    return os.getpid(), peak, how, _disk_written(dask_worker)


def _disk_written(dask_worker):
    """Bytes this worker has spilled to disk (its metrics' disk-write bytes)."""
    total = 0
    for key, value in getattr(dask_worker, "digests_total", {}).items():
        if isinstance(key, tuple) and "disk-write" in key and key[-1] == "bytes":
            total += value
    return total


def _worker_setup():
    """Import what both libraries' tasks use, and say how many threads
    fastnorm's kernels take here by default."""
    import dask_ml.preprocessing  # noqa: F401
    import fastnorm
    import fastnorm.dask  # noqa: F401
    import fastnorm.sklearn  # noqa: F401
    return fastnorm.max_threads()


def _trim():
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def warm_up(client, F, chunk_rows):
    """Both libraries once on a 4-chunk array with the measured chunk size
    (imports, first-call costs, the workers' first touch of chunk-sized
    memory).  Returns the errors, as notes for the report."""
    small = make_dask_array(4 * chunk_rows, F, chunk_rows, seed=1)
    notes = []
    for name in ("StandardScaler", "MinMaxScaler"):
        for lib, est in dask_scalers(name).items():
            try:
                est.fit(small)
                est.transform(small).sum(axis=0).compute()
            except Exception as exc:   # reported; the measured run will fail the same way
                notes.append(f"warm-up of {lib} {name} failed: {type(exc).__name__}: {exc}"[:300])
    return notes


def dask_scalers(name):
    import dask_ml.preprocessing as dmp
    return {"fastnorm": getattr(fsk, name)(), "dask-ml": getattr(dmp, name)()}


def pause_events(client):
    logs = client.get_worker_logs()
    return sum(msg.count("Pausing worker") for records in logs.values() for _, msg in records)


def consume(Y, sink, path):
    """Compute Y without holding it: its float64 column sums (returned), or
    a zarr store at `path` (returns None)."""
    import dask.array as da
    if sink == "sum":
        return Y.sum(axis=0, dtype=np.float64).compute()
    da.to_zarr(Y, path, overwrite=True)
    return None


def zarr_column_sums(path, chunk_rows):
    """The float64 column sums of the zarr store at `path` (read back in this
    process, after the timed region), then the store is deleted."""
    import zarr
    z = zarr.open_array(path, mode="r")
    sums = np.zeros(z.shape[1])
    for i in range(0, z.shape[0], chunk_rows):
        sums += z[i:i + chunk_rows].sum(axis=0, dtype=np.float64)
    shutil.rmtree(path, ignore_errors=True)
    return sums


def run_dask_case(client, scaler_name, lib, X, sink, tmpdir):
    """One measured fit + transform; a dict of times, memory and results."""
    est = None if lib is None else dask_scalers(scaler_name)[lib]
    client.run(_trim)
    start = client.run(_peak_start)
    pauses0 = pause_events(client)
    res = {"error": None}
    t0 = time.perf_counter()
    try:
        if est is None:      # "generate only": one pass over X
            res["sums"] = X.sum(axis=0, dtype=np.float64).compute()
            t1 = t0
        else:
            est.fit(X)
            t1 = time.perf_counter()
            path = os.path.join(tmpdir, f"{scaler_name}-{lib}.zarr")
            res["sums"] = consume(est.transform(X), sink, path)
        t2 = time.perf_counter()
        if res["sums"] is None:
            res["sums"] = zarr_column_sums(path, X.chunksize[0])
        res.update(fit=t1 - t0 if est is not None else None, transform=t2 - t1, total=t2 - t0, est=est)
    except Exception as exc:   # a killed worker, a memory error: report it, go on
        res["error"] = f"{type(exc).__name__}: {exc}"[:120]
    end = client.run(_peak_read)
    restarted = [a for a in start if a not in end or end[a][0] != start[a][0] or end[a][2] == "restarted"]
    peaks = {a: end[a][1] for a in end if end[a][1] is not None}
    worst = max(peaks, key=peaks.get) if peaks else None
    res.update(
        peak=peaks[worst] if worst else None,
        above=(peaks[worst] - start[worst][1]) if worst in start else None,
        how=sorted({e[2] for e in end.values()}),
        restarted=len(restarted),
        pauses=pause_events(client) - pauses0,
        spilled=sum(end[a][3] - start[a][2] for a in end if a in start),
    )
    return res


def fitted(est, name):
    attrs = ("mean_", "scale_") if name == "StandardScaler" else ("data_min_", "data_max_")
    return {a: np.asarray(getattr(est, a), np.float64) for a in attrs}


def rel_diff(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))


def bench_dask(cfg, sink, report):
    import dask
    import dask_ml
    from dask.distributed import Client, LocalCluster

    n, F, c = cfg["dask_rows"], cfg["dask_features"], cfg["dask_chunk_rows"]
    X = make_dask_array(n, F, c)
    mem = cfg["worker_memory"]
    tmpdir = tempfile.mkdtemp(prefix="fastnorm-scalers-")
    rows, checks, notes = [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # dask-ml's deprecation chatter
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, memory_limit=mem,
                               dashboard_address=None, local_directory=tmpdir)
    client = Client(cluster)
    try:
        worker_threads = sorted(set(client.run(_worker_setup).values()))
        notes += warm_up(client, F, c)
        pids0 = client.run(os.getpid)
        monitor = CpuMonitor()

        report(f"### Dask: fit + transform of a {X.nbytes / GiB:.2f} GiB float32 array "
               f"({n:,}x{F}, {X.numblocks[0]} chunks of {c * F * 4 / MiB:.0f} MiB)"
               + (", out of core" if X.nbytes > 2 * mem else " (not out of core at this size)"))
        report()
        report(f"LocalCluster: 2 worker processes x 1 thread, memory_limit {mem / MiB:,.0f} MiB each "
               f"(the array is {X.nbytes / mem:.1f}x one worker's limit, {X.nbytes / (2 * mem):.1f}x both); "
               f"fastnorm kernel threads per task in the workers: {worker_threads}; transform consumed "
               f"as {'float64 column sums' if sink == 'sum' else 'a zarr store in ' + tempfile.gettempdir()}; "
               f"dask {dask.__version__}, dask-ml {dask_ml.__version__}; "
               f"median of {cfg['dask_repeats']} run(s) per row, largest peak.")
        report()

        plan = [("generate only", None)] + [(name, lib) for name in ("StandardScaler", "MinMaxScaler")
                                            for lib in ("fastnorm", "dask-ml")]
        results = {key: [] for key in plan}
        for r in range(cfg["dask_repeats"]):
            order = plan if r % 2 == 0 else [plan[0]] + plan[:0:-1]
            for name, lib in order:
                res = run_dask_case(client, name, lib, X, sink, tmpdir)
                results[(name, lib)].append(res)
                print(f"  {name} {lib or ''}: " + (res["error"] or f"{res['total']:.1f} s, peak "
                      f"{fmt_mib(res['peak'])} MiB"), file=sys.stderr, flush=True)

        summary = {}
        for (name, lib), runs in results.items():
            good = [x for x in runs if x["error"] is None]
            if not good:
                rows.append([name, lib or "–", "failed: " + runs[0]["error"]] + [""] * 7)
                continue
            med = {k: (statistics.median(x[k] for x in good) if good[0][k] is not None else None)
                   for k in ("fit", "transform", "total")}
            peak = max(x["peak"] for x in good if x["peak"] is not None)
            above = max(x["above"] for x in good if x["above"] is not None)
            summary[(name, lib)] = dict(med, peak=peak, above=above, runs=good)
            sp = spread([x["total"] for x in good])
            rows.append([
                name, lib or "–", fmt_s(med["fit"]), fmt_s(med["transform"]), fmt_s(med["total"]),
                fmt_mib(peak), fmt_mib(above),
                sum(x["restarted"] for x in runs), max(x["pauses"] for x in runs),
                fmt_mib(max(x["spilled"] for x in runs)),
                f"{sp:.0%}" + (" noisy" if sp > NOISY else ""),
            ])
            if len(good) < len(runs):
                notes.append(f"{name} {lib}: {len(runs) - len(good)} run(s) failed: {runs[0]['error']}")
        report.table(["scaler", "library", "fit", "transform", "fit + transform", "peak worker RSS MiB",
                      "above start MiB", "restarts", "pauses / run", "spilled MiB / run", "spread"], rows)

        for name in ("StandardScaler", "MinMaxScaler"):
            a, b = summary.get((name, "fastnorm")), summary.get((name, "dask-ml"))
            if a is None or b is None:
                continue
            fa, fb = fitted(a["runs"][0]["est"], name), fitted(b["runs"][0]["est"], name)
            diffs = {k: rel_diff(fa[k], fb[k]) for k in fa}
            agree = all(d < 1e-4 for d in diffs.values())
            sums_a, sums_b = a["runs"][0]["sums"], b["runs"][0]["sums"]
            sums_diff = float(np.max(np.abs(sums_a - sums_b))) / n
            checks.append([
                name, fmt_x(b["total"] / a["total"]), fmt_x(b["peak"] / a["peak"]),
                fmt_x(b["above"] / a["above"] if a["above"] > 0 else None),
                ("yes" if agree else "NO") + " (" + ", ".join(f"{k} {d:.1e}" for k, d in diffs.items()) + ")",
                f"{sums_diff:.1e}",
            ])
        report.table(["scaler", "wall dask-ml / fastnorm", "peak RSS dask-ml / fastnorm",
                      "above start dask-ml / fastnorm", "fits agree (max relative diff)",
                      "transform column sums: max abs diff / n_samples"], checks)

        pids1 = client.run(os.getpid)
        same = sorted(pids0.values()) == sorted(pids1.values())
        report(f"Worker PIDs before / after the measured runs: {sorted(pids0.values())} / "
               f"{sorted(pids1.values())}: {'no worker was restarted' if same else 'A WORKER WAS RESTARTED'}. "
               f"Peak RSS measured with: "
               f"{', '.join(sorted({h for runs in results.values() for x in runs for h in x['how']}))}.")
        for note in notes:
            report(f"- {note}")
        report()
        report(monitor.summary())
        report()
    finally:
        client.close()
        cluster.close()
        shutil.rmtree(tmpdir, ignore_errors=True)


# ---------------------------------------------------------------- main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of a minute or two")
    parser.add_argument("--save", metavar="FILE.md", help="also write the tables to this file")
    parser.add_argument("--threads", type=int, default=2, help="threads for both sides in part 1 (default 2)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per in-memory row")
    parser.add_argument("--dask-repeats", type=int, help="runs per library in the Dask part")
    parser.add_argument("--sink", choices=("sum", "zarr"), default="sum",
                        help="what the Dask transform's result goes into (default: column sums)")
    parser.add_argument("--skip-memory", action="store_true", help="skip part 1 (in memory)")
    parser.add_argument("--skip-dask", action="store_true", help="skip part 2 (Dask)")
    args = parser.parse_args(argv)

    cfg = dict(QUICK if args.quick else FULL)
    if args.rounds:
        cfg["rounds"] = args.rounds
    if args.dask_repeats:
        cfg["dask_repeats"] = args.dask_repeats

    import sklearn
    report = Report()
    t_start = time.perf_counter()
    conf = fastnorm.get_config() if hasattr(fastnorm, "get_config") else {}
    report(f"## fastnorm scalers benchmark{' (--quick)' if args.quick else ''}")
    report()
    report(f"{datetime.datetime.now():%Y-%m-%d %H:%M}, {cpu_model()}, {os.cpu_count()} cores, "
           f"Python {platform.python_version()}, NumPy {np.__version__}, scikit-learn {sklearn.__version__}, "
           f"fastnorm {getattr(fastnorm, '__version__', '?')} (ISA {conf.get('isa', '?')}, "
           f"default threads {fastnorm.max_threads()}); load average at start {load_avg()}.")
    report()

    ok = True
    if not args.skip_memory:
        ok = bench_in_memory(cfg, args.threads, report)
    if not args.skip_dask:
        bench_dask(cfg, args.sink, report)

    report(f"Total time {time.perf_counter() - t_start:.0f} s; load average at end {load_avg()} "
           f"(1/5/15 min; this script alone keeps about {args.threads} cores busy).")
    if args.save:
        report.save(args.save)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
