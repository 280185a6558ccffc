# fastnorm kernels: the source of every compiled _core* module.
#
# setup.py compiles this file once per instruction set (_core = baseline,
# _core_avx2, _core_avx512); fastnorm._config picks the best one at import.
#
# Three layers, top to bottom:
#   1. row kernels: `cdef inline ... noexcept nogil` functions over one
#      contiguous row (or a segment of one), written as fixed-width lane loops
#      that gcc vectorizes without -ffast-math;
#   2. drivers: split the rows into one chunk per thread (prange, static
#      schedule) or, for a few very wide rows, split each row into segments;
#      per-chunk partial results are combined in chunk order, so results are
#      deterministic for a given thread count;
#   3. `def` entry points called by fastnorm.functional, which has already
#      validated and canonicalized every argument: x is (M, D) with
#      contiguous rows (any row stride, even negative), parameters are
#      contiguous vectors of length D, stats are contiguous vectors of length M.
#
# Numerics (float32 data):
#   * sums run in `floating` lanes over blocks of BLOCK elements and each block's
#     lanes are flushed into double lanes, summed once per row: error
#     O(BLOCK/LANES * eps) per block, not O(n * eps);
#   * LayerNorm statistics are two-pass on the cached row and shifted by the
#     row's first element, so a row of 1e5 + 0.1*N(0,1) loses nothing to
#     cancellation; the output subtracts the mean in two pieces (hi + lo) so
#     the centered value is exact to a float32 rounding of the *spread*.

cimport cython
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt, fabs, NAN, INFINITY
from libc.string cimport memset
from libc.stdint cimport uint16_t

from fastnorm._buffers cimport empty_array, scratch_alloc, scratch_free
from fastnorm._openmp cimport (omp_get_max_threads, omp_get_num_threads, omp_get_thread_num,
                              FASTNORM_HAVE_OPENMP, FASTNORM_SERIAL_FASTPATH,
                              fastnorm_parallel_runtime_found)

cnp.import_array()

if not fastnorm_parallel_runtime_found():
    raise ImportError("fastnorm: this kernel module was built against libgomp, but libgomp's "
                      "GOMP_parallel could not be found at run time (see fastnorm/parallel.h)")


cdef extern from "simd.h" nogil:
    void fastnorm_stream_fence()
    void fn_copy_bytes(const char* src, char* dst, size_t n, int stream)
    bint fn_sums_in_range(double sq, Py_ssize_t n)
    double fn_lanes_total32(const double* lanes)
    float fn_ld1(int st, const void* p, Py_ssize_t k)
    void fn_st1(int st, void* p, Py_ssize_t k, float v)
    void fn_exact_moments(int st, const void* x, Py_ssize_t n, Py_ssize_t stride, double* mean, double* m2)
    double fn_exact_sum_squares(int st, const void* x, Py_ssize_t n, Py_ssize_t stride)
    void fn_guard_shifted_sums(int st, const void* x, Py_ssize_t n, Py_ssize_t stride,
                               double shift, double* sd, double* sq)
    void fn_widen(int storage, const void* src, float* dst, Py_ssize_t n)
    void fn_narrow(int storage, const float* src, void* dst, Py_ssize_t n)
    void fn_blend_f(float* buf, const double* v, Py_ssize_t n, double m, double factor)
    void fn_blend_d(double* buf, const double* v, Py_ssize_t n, double m, double factor)
    void fn_mean_rows(const double* v, Py_ssize_t N, Py_ssize_t C, double factor, double* out)

    void fastnorm_affine_stream_s(const float* x, float* y, Py_ssize_t n, float hi,
                                  float a, float b)
    void fastnorm_affine_stream_v(const float* x, float* y, Py_ssize_t n, const float* hi,
                                  const float* a, const float* b)
    void fastnorm_scale_shift_stream_v(const float* x, float* y, Py_ssize_t n, const float* a,
                                       const float* b)
    void fastnorm_mul_stream_v(const float* g, float* dx, Py_ssize_t n, const float* al)
    void fastnorm_ln_stream(const float* x, float* y, Py_ssize_t n, const float* w, const float* b,
                            float hi, float rstd, float off)
    void fastnorm_rms_stream(const float* x, float* y, Py_ssize_t n, const float* w, float rstd)
    void fastnorm_backward_stream_s(const float* g, const float* x, float* dx, Py_ssize_t n,
                                    float hi, float al, float be, float ga)
    void fastnorm_backward_stream_v(const float* g, const float* x, float* dx, Py_ssize_t n,
                                    const float* hi, const float* al,
                                    const float* be, const float* ga)

# LayerNorm / RMSNorm forward rows over float16 / bfloat16, widened in registers
cdef extern from "rows16.h" nogil:
    void fn_ln_rows16(int storage, const char* xb, Py_ssize_t xs, char* yb, Py_ssize_t ys,
                      Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n, const float* w, const float* b,
                      double eps, float* mean, float* rstd, int stream)
    void fn_ln_row16(int storage, const void* x, void* y, Py_ssize_t n, const float* w,
                     const float* b, double eps, double* mean, double* rstd, bint stream)
    void fn_block_moments16(int storage, const void* x, Py_ssize_t n, double* mean, double* m2)
    void fn_block_affine16(int storage, const void* x, void* y, Py_ssize_t n, float hi, float a,
                           float b, bint stream)
    void fn_block_backward_sums16(int storage, const void* g, const void* x, Py_ssize_t n, float hi,
                                  float lo, double* sg, double* sgt, double* st)
    void fn_block_backward16(int storage, const void* g, const void* x, void* dx, Py_ssize_t n,
                             float hi, float alpha, float beta, float gamma, bint stream)
    float fn_load1_16(int storage, const void* p, Py_ssize_t i)
    void fn_moments_f32(const float* x, Py_ssize_t n, float shift, float center, double* sum_sq,
                        double* sum_dev)
    double fn_sum_squares_f32(const float* x, Py_ssize_t n)
    void fn_block_backward_sums_f32(const float* g, const float* x, Py_ssize_t n, float hi,
                                    float lo, double* sg, double* sgt, double* st)
    void fn_moments16(int storage, const void* x, Py_ssize_t n, float shift, double* sum_sq,
                      double* sum_dev)
    void fn_ln_normalize16(int storage, const void* x, void* y, Py_ssize_t n, const float* w,
                           const float* b, float hi, float r, float off)
    void fn_rms_normalize16(int storage, const void* x, void* y, Py_ssize_t n, const float* w, float r,
                            int stream)
    double fn_sum_squares16(int storage, const void* x, Py_ssize_t n)

# Register-panel and four-row loops written in C with GCC vector extensions
cdef extern from "_panels.h" nogil:
    void fastnorm_cl_moments16(int st, const void* x, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                               const float* shift, double* sd, double* sq)
    void fastnorm_cl_backward_sums16(int st, const void* g, const void* x, Py_ssize_t r0, Py_ssize_t r1,
                                     Py_ssize_t C, const float* hi, double* sums)
    void fastnorm_cl_minmax16(int st, const void* x, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                              float* mn, float* mx)
    void fastnorm_cl_affine16(int st, const void* x, void* y, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                              const float* hi, const float* a, const float* b, bint stream)
    void fastnorm_cl_backward16(int st, const void* g, const void* x, void* dx, Py_ssize_t r0,
                                Py_ssize_t r1, Py_ssize_t C, const float* hi, const float* al,
                                const float* be, const float* ga, bint centred, bint stream)
    void fastnorm_cl_moments_f(const float* x, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                               const float* shift, double* sd, double* sq)
    void fastnorm_cl_moments_d(const double* x, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                               const double* shift, double* sd, double* sq)
    void fastnorm_cl_backward_sums_f(const float* g, const float* x, Py_ssize_t r0, Py_ssize_t r1,
                                     Py_ssize_t C, const float* hi, double* sums)
    void fastnorm_cl_backward_sums_d(const double* g, const double* x, Py_ssize_t r0, Py_ssize_t r1,
                                     Py_ssize_t C, const double* hi, double* sums)
    bint fastnorm_cl_stream_ok(const void* y, Py_ssize_t C, size_t itemsize)
    void fastnorm_cl_minmax_f(const float* x, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                              float* mn, float* mx)
    void fastnorm_cl_minmax_d(const double* x, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                              double* mn, double* mx)
    void fastnorm_cl_affine_f(const float* x, float* y, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                              const float* hi, const float* a, const float* b, bint stream)
    void fastnorm_cl_affine_d(const double* x, double* y, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                              const double* hi, const double* a, const double* b, bint stream)
    void fastnorm_cl_backward_f(const float* g, const float* x, float* dx, Py_ssize_t r0,
                                Py_ssize_t r1, Py_ssize_t C, const float* hi, const float* al,
                                const float* be, const float* ga, bint centred, bint stream)
    void fastnorm_cl_backward_d(const double* g, const double* x, double* dx, Py_ssize_t r0,
                                Py_ssize_t r1, Py_ssize_t C, const double* hi, const double* al,
                                const double* be, const double* ga, bint centred, bint stream)
    void fastnorm_ln_backward4_f(const float* const* g, const float* const* x, float* const* dx,
                                 const float* w, Py_ssize_t n, const float* mean, const float* rstd,
                                 const float* shift, const float* mg, const float* mgx,
                                 float* gw, float* gb)
    void fastnorm_ln_backward4_d(const double* const* g, const double* const* x, double* const* dx,
                                 const double* w, Py_ssize_t n, const double* mean, const double* rstd,
                                 const double* shift, const double* mg, const double* mgx,
                                 double* gw, double* gb)
    void fastnorm_rms_backward4_f(const float* const* g, const float* const* x, float* const* dx,
                                  const float* w, Py_ssize_t n, const float* rstd, const float* coef,
                                  float* gw)
    void fastnorm_rms_backward4_d(const double* const* g, const double* const* x, double* const* dx,
                                  const double* w, Py_ssize_t n, const double* rstd, const double* coef,
                                  double* gw)


cdef enum:
    LANES = 32              # independent accumulators: 2 zmm / 4 ymm / 8 xmm of float32
    BLOCK = 256             # elements summed in `floating` before a flush to double
    FLUSH_ROWS = 32         # rows accumulated in `floating` grad_weight partials
    MIN_PARALLEL_WORK = 32768   # below this many elements a call stays serial
    MIN_THREAD_WORK = 16384     # elements per thread, at least
    STAGE_CHUNK = 4096      # 16-bit values widened at a time into float32 staging
    MIN_WIDE_ROW = 65536        # rows at least this wide may be split across threads
    NARROW_ROW = 64         # rows narrower than this take their rstd ROW_GROUP rows at a time
    GATHER_ROW = 8          # ... and rows up to this wide go in the lanes of vectors (RMSNorm)
    ROW_GROUP = 16
    WIDE_ROWS_PER_THREAD = 32   # ... while there are fewer than this many rows per thread (bwd)
    CANCELLATION_LIMIT = 16     # see _one_pass_ok
    STREAM_MIN_BYTES = 16 << 20 # outputs at least this large bypass the caches


# --------------------------------------------------------------------------
# storage dtypes: what the data is stored in vs what the kernels compute in
# --------------------------------------------------------------------------
# float32 and float64 arrays are computed in their own type (ST_NATIVE).
# float16 and bfloat16 arrays are storage types computed in float32: a row
# kernel widens each row it reads into this thread's float32 scratch (a few
# rows, in L1/L2) and narrows each row it writes from there (simd.h, round
# to nearest even), so the kernels are the float32 ones and no array is
# ever cast as a whole.  Statistics and parameters are float32.

cdef enum Storage:
    ST_NATIVE = 0   # = FN_ST_NATIVE in simd.h
    ST_F16 = 1
    ST_BF16 = 2

cdef int bf16_typenum = -1   # ml_dtypes.bfloat16's type number, once fastnorm._dtypes registers it


def set_bfloat16_typenum(int typenum):
    """The type number of ml_dtypes.bfloat16 (fastnorm._dtypes registers it
    lazily: importing ml_dtypes is slow)."""
    global bf16_typenum
    bf16_typenum = typenum


cdef inline int storage_of(int typenum, bint* is_double) except -1:
    """The storage code of a kernel's data typenum; is_double: computed in double."""
    is_double[0] = typenum == cnp.NPY_FLOAT64
    if typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64:
        return ST_NATIVE
    if typenum == cnp.NPY_FLOAT16:
        return ST_F16
    if typenum == bf16_typenum and bf16_typenum >= 0:
        return ST_BF16
    raise TypeError(f"internal: no kernel for dtype number {typenum}")


cdef inline const floating* _row_in(int storage, floating* scratch, int slot, Py_ssize_t n,
                                    const char* p) noexcept nogil:
    """Row `p` (n values of the storage dtype) as `floating`: p itself, or
    widened into scratch slot `slot` (staged data is computed in float)."""
    if storage == ST_NATIVE:
        return <const floating*>p
    fn_widen(storage, p, <float*>(scratch + slot * n), n)
    return scratch + slot * n


cdef inline floating* _row_out(int storage, floating* scratch, int slot, Py_ssize_t n,
                               char* p) noexcept nogil:
    """Where a kernel writes output row `p`: p itself, or scratch slot `slot`
    (then _row_done narrows it into p)."""
    if storage == ST_NATIVE:
        return <floating*>p
    return scratch + slot * n


cdef inline void _row_done(int storage, floating* scratch, int slot, Py_ssize_t n,
                           char* p) noexcept nogil:
    if storage != ST_NATIVE:
        fn_narrow(storage, <const float*>(scratch + slot * n), p, n)


cdef inline float* _stage_scratch(int storage, int nth, int slots, Py_ssize_t n) noexcept nogil:
    """Scratch of `slots` rows of n floats per thread (NULL for native data:
    nothing to stage).  The caller frees it with scratch_free; a NULL for staged data is out
    of memory."""
    if storage == ST_NATIVE:
        return NULL
    return <float*>scratch_alloc(<size_t>nth * slots * n * sizeof(float) + 64)


def widen_narrow(cnp.ndarray src, cnp.ndarray dst, object n_threads=None):
    """Copy a contiguous float16 / bfloat16 array into a contiguous float32
    one (widen) or back (narrow), rounding to nearest even; in parallel."""
    cdef bint dbl
    cdef int st_src = storage_of(cnp.PyArray_TYPE(src), &dbl)
    cdef int st_dst = storage_of(cnp.PyArray_TYPE(dst), &dbl)
    cdef Py_ssize_t n = cnp.PyArray_SIZE(src)
    if (cnp.PyArray_SIZE(dst) != n or not cnp.PyArray_IS_C_CONTIGUOUS(src)
            or not cnp.PyArray_IS_C_CONTIGUOUS(dst)
            or (st_src == ST_NATIVE) == (st_dst == ST_NATIVE)
            or cnp.PyArray_TYPE(src if st_src == ST_NATIVE else dst) != cnp.NPY_FLOAT32):
        raise ValueError("internal: widen_narrow takes contiguous 16-bit and float32 arrays of one size")
    cdef int nth = resolve_threads(n_threads, n)
    cdef char* sp = <char*>cnp.PyArray_DATA(src)
    cdef char* dp = <char*>cnp.PyArray_DATA(dst)
    cdef int c
    cdef Py_ssize_t lo, hi
    with nogil:
        for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            lo = _part_start(n, nth, c)
            hi = _part_start(n, nth, c + 1)
            if st_src != ST_NATIVE:
                fn_widen(st_src, sp + 2 * lo, <float*>dp + lo, hi - lo)
            else:
                fn_narrow(st_dst, <float*>sp + lo, dp + 2 * lo, hi - lo)
    return dst


# --------------------------------------------------------------------------
# thread-count resolver (the only one in fastnorm)
# --------------------------------------------------------------------------

cdef int resolve_threads(object n_threads, Py_ssize_t work) except -1:
    """Threads for a call over `work` elements.

    None means the OpenMP default (omp_get_max_threads(), which follows
    OMP_NUM_THREADS and threadpoolctl).  Small workloads run serially: waking
    a thread costs more than the work.
    """
    cdef long requested
    if n_threads is None:
        requested = omp_get_max_threads()
    else:
        if isinstance(n_threads, bool) or not isinstance(n_threads, int):
            raise TypeError(f"n_threads must be a positive int or None, got {n_threads!r}")
        if n_threads < 1:
            raise ValueError(f"n_threads must be a positive int or None, got {n_threads!r}")
        requested = n_threads if n_threads <= 1024 else 1024   # compared as Python ints: no overflow
    if not FASTNORM_HAVE_OPENMP or work < MIN_PARALLEL_WORK:
        return 1
    if requested > 1024:
        requested = 1024
    # at most one thread per MIN_THREAD_WORK values: a call of 40K values on
    # a 64-core machine wakes 2 threads, not 64 (on 2 cores every call from
    # MIN_PARALLEL_WORK up keeps both)
    if requested > work // MIN_THREAD_WORK:
        requested = work // MIN_THREAD_WORK
    return <int>requested


# A row costs a fixed amount besides its values (its moments' lane set-up,
# flush and tree, the row's statistics): measured on a Zen 3 (AVX2 build, one
# thread) LayerNorm forward ~20 ns a row at width 1 against ~0.3 ns a value,
# backward ~90 ns a row against ~0.6 ns a value.  The thread decision of the
# row ops counts that cost (in values), so that many narrow rows (16384 rows
# of width 1: 1.5 ms of backward) are split over the threads like one large
# row, not left serial for having few values.
cdef enum:
    ROW_COST_FWD = 64
    ROW_COST_BWD = 160


cdef inline Py_ssize_t _row_work(Py_ssize_t M, Py_ssize_t n, bint backward) noexcept nogil:
    """The work of M rows of n values for resolve_threads, in values."""
    return M * (n + (ROW_COST_BWD if backward else ROW_COST_FWD))


def threads_for(object n_threads, Py_ssize_t work):
    """The threads a call of `work` elements takes for `n_threads` (see
    resolve_threads); for tests and the benchmarks."""
    return resolve_threads(n_threads, work)


def max_threads():
    """Threads a call with n_threads=None would use on a large input."""
    return omp_get_max_threads() if FASTNORM_HAVE_OPENMP else 1


def have_openmp():
    """True when this module was compiled with OpenMP."""
    return bool(FASTNORM_HAVE_OPENMP)


def serial_fastpath():
    """True when one-thread parallel regions bypass libgomp's team set-up
    (fastnorm/parallel.h)."""
    return bool(FASTNORM_SERIAL_FASTPATH)


cdef void _count_iterations(int* slot, int n, int nth) noexcept nogil:
    """A one-thread region the way every driver opens one (use_threads_if)."""
    cdef int i
    for i in prange(n, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        slot[0] += 1


def parallel_self_check(int outer_threads=2, int n=8):
    """Iterations a one-thread region sees, run from each thread of an
    enclosing team and then from no team: n each when parallel.h's
    direct call is taken only outside every OpenMP region."""
    cdef int counts[65]
    cdef int t
    if outer_threads < 1 or outer_threads > 64:
        raise ValueError("outer_threads must be in 1..64")
    for t in range(outer_threads + 1):
        counts[t] = 0
    for t in prange(outer_threads, schedule='static', num_threads=outer_threads, nogil=True):
        _count_iterations(&counts[t], n, 1)
    _count_iterations(&counts[outer_threads], n, 1)
    return [counts[t] for t in range(outer_threads + 1)]


def openmp_team_size(int n_threads):
    """Size of the team a parallel region with n_threads actually gets
    (used by the build test that catches a silently lost OpenMP)."""
    cdef int i
    cdef int[1] seen
    seen[0] = 1
    with nogil:
        for i in prange(n_threads, schedule='static', num_threads=n_threads):
            seen[0] = omp_get_num_threads()
    return seen[0]


# --------------------------------------------------------------------------
# 1. row kernels
# --------------------------------------------------------------------------

cdef inline int _tail_start(Py_ssize_t vend, Py_ssize_t end) noexcept nogil:
    """The last lane block of a row (or segment) of at least LANES values
    that ends short of a whole one, at `end`, is summed as the whole block of
    the LANES values ending there, lanes below the returned index masked to
    0 (they were summed by the block before): vector code, where a scalar
    tail was a dependency chain of up to LANES - 1 adds (a 127-wide row
    spent more time in its last 31 values than in the 96 before them).
    rows16.h's FN_TAIL_START is the same rule."""
    return <int>(LANES - (end - vend))


cdef inline void _lanes_flush(floating* acc, double* lanes) noexcept nogil:
    """lanes[j] += acc[j], acc[j] = 0: the `floating` lanes of a block widen
    into double lanes (a few vector instructions; the lanes are reduced to one
    sum only once, at the end of the row, by _lanes_total)."""
    cdef int j
    for j in range(LANES):
        lanes[j] += acc[j]
        acc[j] = 0


cdef inline double _lanes_total(double* lanes) noexcept nogil:
    """Sum of the LANES double lanes, as a fixed pairwise tree (simd.h)."""
    return fn_lanes_total32(lanes)


cdef inline void _centered_moments(const floating* x, Py_ssize_t n, floating shift,
                                   floating center, double* sum_sq, double* sum_dev) noexcept nogil:
    """Sum of d^2 and of d, where d = (x[i] - shift) - center (float32:
    rows16.h's fn_moments_f32, the 16-bit kernels' own code)."""
    cdef floating acc_q[LANES]
    cdef floating acc_s[LANES]
    cdef double lanes_q[LANES]
    cdef double lanes_s[LANES]
    cdef floating d, rest_q, rest_s
    cdef Py_ssize_t i = 0, k, end, vend
    cdef int j, cut
    if floating is float:
        fn_moments_f32(x, n, shift, center, sum_sq, sum_dev)
        return
    if n < LANES:  # no whole lane block: the tail loop alone (same sums, no lane set-up)
        rest_q = 0
        rest_s = 0
        for k in range(n):
            d = (x[k] - shift) - center
            rest_q += d * d
            rest_s += d
        sum_sq[0] = <double>rest_q
        sum_dev[0] = <double>rest_s
        return
    for j in range(LANES):
        lanes_q[j] = 0
        lanes_s[j] = 0
    while i < n:
        end = i + BLOCK if i + BLOCK < n else n
        vend = i + ((end - i) // LANES) * LANES
        for j in range(LANES):
            acc_q[j] = 0
            acc_s[j] = 0
        k = i
        if center == 0:  # the one-pass case: spare a subtraction
            while k < vend:
                for j in range(LANES):
                    d = x[k + j] - shift
                    acc_q[j] += d * d
                    acc_s[j] += d
                k += LANES
        else:
            while k < vend:
                for j in range(LANES):
                    d = (x[k + j] - shift) - center
                    acc_q[j] += d * d
                    acc_s[j] += d
                k += LANES
        if vend < end:  # the partial last lane block, as a whole one (_tail_start)
            k = end - LANES
            cut = _tail_start(vend, end)
            for j in range(LANES):
                d = (x[k + j] - shift) - center
                d = d if j >= cut else 0
                acc_q[j] += d * d
                acc_s[j] += d
        _lanes_flush(acc_q, lanes_q)
        _lanes_flush(acc_s, lanes_s)
        i = end
    sum_sq[0] = _lanes_total(lanes_q)
    sum_dev[0] = _lanes_total(lanes_s)


cdef enum LaneTerm:
    TERM_SQUARE = 0     # a[i] * a[i]
    TERM_ABS = 1        # |a[i]|
    TERM_PRODUCT = 2    # a[i] * b[i]
    TERM_PRODUCT3 = 3   # a[i] * b[i] * c[i]


cdef inline floating _lane_term(const floating* a, const floating* b, const floating* c,
                                Py_ssize_t i, int term) noexcept nogil:
    if term == TERM_SQUARE:
        return a[i] * a[i]
    if term == TERM_ABS:
        return fabs(a[i])
    if term == TERM_PRODUCT:
        return a[i] * b[i]
    return a[i] * b[i] * c[i]


cdef inline double _lane_sum(const floating* a, const floating* b, const floating* c,
                             Py_ssize_t n, int term) noexcept nogil:
    """The blocked-lane sum of one term over a row: LANES `floating`
    accumulators over blocks of BLOCK elements, each block flushed into double
    lanes, the lanes reduced once at the end.  `term` is a constant at every
    call site, so each inlined copy is the loop of that one term."""
    cdef floating acc[LANES]
    cdef double lanes[LANES]
    cdef floating rest, t
    cdef Py_ssize_t i = 0, k, end, vend
    cdef int j, cut
    if n < LANES:  # the tail loop alone (the same sum, no lane set-up)
        rest = 0
        for k in range(n):
            rest += _lane_term(a, b, c, k, term)
        return _lane_sum_checked(a, b, c, n, term, <double>rest)
    for j in range(LANES):
        lanes[j] = 0
    while i < n:
        end = i + BLOCK if i + BLOCK < n else n
        vend = i + ((end - i) // LANES) * LANES
        for j in range(LANES):
            acc[j] = 0
        k = i
        while k < vend:
            for j in range(LANES):
                acc[j] += _lane_term(a, b, c, k + j, term)
            k += LANES
        if vend < end:  # the partial last lane block, as a whole one (_tail_start)
            k = end - LANES
            cut = _tail_start(vend, end)
            for j in range(LANES):
                t = _lane_term(a, b, c, k + j, term)
                acc[j] += t if j >= cut else 0
        _lanes_flush(acc, lanes)
        i = end
    return _lane_sum_checked(a, b, c, n, term, _lanes_total(lanes))


cdef inline double _lane_sum_checked(const floating* a, const floating* b, const floating* c,
                                     Py_ssize_t n, int term, double total) noexcept nogil:
    """total, or the sum again in double where float32 lanes may have left
    their range (simd.h's fn_sums_in_range: an overflowed or NaN sum; for
    squares also one small enough to hold underflowed terms)."""
    cdef Py_ssize_t k
    if floating is float:
        if not (total < INFINITY and (term != TERM_SQUARE or fn_sums_in_range(total, n))):
            total = 0.0
            for k in range(n):
                if term == TERM_SQUARE:
                    total += <double>a[k] * <double>a[k]
                elif term == TERM_ABS:
                    total += fabs(<double>a[k])
                elif term == TERM_PRODUCT:
                    total += <double>a[k] * <double>b[k]
                else:
                    total += <double>a[k] * <double>b[k] * <double>c[k]
    return total


cdef inline double _sum_squares(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum of x[i]^2 (float32: rows16.h's, as the 16-bit kernels')."""
    if floating is float:
        return fn_sum_squares_f32(x, n)
    return _lane_sum(x, x, x, n, TERM_SQUARE)


cdef inline double _sum_abs(const floating* x, Py_ssize_t n) noexcept nogil:
    """Sum of |x[i]|."""
    return _lane_sum(x, x, x, n, TERM_ABS)


cdef inline double _dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    """Sum of a[i] * b[i]."""
    return _lane_sum(a, b, b, n, TERM_PRODUCT)


cdef inline void _ln_normalize_segment(const floating* x, floating* y, Py_ssize_t n,
                                       const floating* w, const floating* b, floating hi,
                                       floating rstd, floating offset, bint stream) noexcept nogil:
    """y = ((x - hi) * rstd + offset) * w + b, where hi is the mean rounded to
    `floating` (x - hi is exact for x near the mean, whatever its offset) and
    offset = -(mean - hi) * rstd carries the rest of the mean.  w and b point
    at the segment's parameters, or are NULL; stream: streaming stores (float)."""
    cdef Py_ssize_t k
    cdef floating t
    if stream and floating is float:
        fastnorm_ln_stream(<const float*>x, <float*>y, n, <const float*>w, <const float*>b,
                           hi, rstd, offset)
    elif w != NULL and b != NULL:
        for k in range(n):
            t = (x[k] - hi) * rstd + offset
            y[k] = t * w[k] + b[k]
    elif w != NULL:
        for k in range(n):
            t = (x[k] - hi) * rstd + offset
            y[k] = t * w[k]
    elif b != NULL:
        for k in range(n):
            y[k] = ((x[k] - hi) * rstd + offset) + b[k]
    else:
        for k in range(n):
            y[k] = (x[k] - hi) * rstd + offset


cdef inline void _rms_normalize_segment(const floating* x, floating* y, Py_ssize_t n,
                                        const floating* w, floating rstd, bint stream) noexcept nogil:
    """y = x * rstd * w (w may be NULL); stream: streaming stores (float)."""
    cdef Py_ssize_t k
    if stream and floating is float:
        fastnorm_rms_stream(<const float*>x, <float*>y, n, <const float*>w, rstd)
    elif w != NULL:
        for k in range(n):
            y[k] = x[k] * rstd * w[k]
    else:
        for k in range(n):
            y[k] = x[k] * rstd


cdef inline bint _one_pass_ok(double sum_sq, double var, Py_ssize_t n) noexcept nogil:
    """Moments about the row's first element are trusted unless that element
    lies far out (> ~4 std from the mean), where E[d^2] - E[d]^2 would cancel
    more than CANCELLATION_LIMIT-fold; NaN rows also take the second pass."""
    return var * CANCELLATION_LIMIT >= sum_sq / n


cdef inline void _block_moments(const floating* x, Py_ssize_t n, double* mean, double* m2) noexcept nogil:
    """Mean and sum of squared deviations of n contiguous values (the one
    moments helper of the row and channel kernels): moments of d = x - x[0]
    in one pass (shifted data: an offset is gone before anything is summed),
    and a second pass about the mean when x[0] lies far out (_one_pass_ok)."""
    cdef floating shift = x[0]
    cdef double sq, sd
    _centered_moments(x, n, shift, 0, &sq, &sd)
    if not _one_pass_ok(sq, sq / n - (sd / n) * (sd / n), n):
        shift = <floating>(<double>shift + sd / n)
        _centered_moments(x, n, shift, 0, &sq, &sd)
    mean[0] = <double>shift + sd / n
    m2[0] = sq - sd * sd / n
    if m2[0] < 0:
        m2[0] = 0
    if floating is float:
        if not fn_sums_in_range(sq, n):  # out of float32's range: again in double
            fn_exact_moments(ST_NATIVE, x, n, 1, mean, m2)


cdef inline void _ln_forward_row(const floating* x, floating* y, Py_ssize_t n,
                                 const floating* w, const floating* b, double eps,
                                 double* mean_out, double* rstd_out, bint stream) noexcept nogil:
    cdef double mean, m2, rstd
    cdef floating hi
    _block_moments(x, n, &mean, &m2)
    rstd = 1.0 / sqrt(m2 / n + eps)
    hi = <floating>mean
    _ln_normalize_segment(x, y, n, w, b, hi, <floating>rstd,
                          <floating>(-(mean - <double>hi) * rstd), stream)
    mean_out[0] = mean
    rstd_out[0] = rstd


cdef inline void _ln_backward_sums(const floating* g, const floating* x, const floating* w,
                                   Py_ssize_t n, floating mean, floating rstd,
                                   double* sum_gw, double* sum_gw_xhat, double* sum_xhat) noexcept nogil:
    """Row sums of g*w, g*w*xhat and xhat, xhat = (x - mean) * rstd."""
    cdef floating acc_a[LANES]
    cdef floating acc_b[LANES]
    cdef floating acc_c[LANES]
    cdef double lanes_a[LANES]
    cdef double lanes_b[LANES]
    cdef double lanes_c[LANES]
    cdef floating xh, gw, ra, rb, rc
    cdef Py_ssize_t i = 0, k, end, vend
    cdef int j, cut
    if n < LANES:  # the tail loop alone: the same sums (0.0 + rest), no lane set-up
        ra = 0
        rb = 0
        rc = 0
        for k in range(n):
            xh = (x[k] - mean) * rstd
            gw = g[k] * w[k] if w != NULL else g[k]
            ra += gw
            rb += gw * xh
            rc += xh
        sum_gw[0] = 0.0 + <double>ra
        sum_gw_xhat[0] = 0.0 + <double>rb
        sum_xhat[0] = 0.0 + <double>rc
        return
    for j in range(LANES):
        lanes_a[j] = 0
        lanes_b[j] = 0
        lanes_c[j] = 0
    while i < n:
        end = i + BLOCK if i + BLOCK < n else n
        vend = i + ((end - i) // LANES) * LANES
        for j in range(LANES):
            acc_a[j] = 0
            acc_b[j] = 0
            acc_c[j] = 0
        k = i
        if w != NULL:
            while k < vend:
                for j in range(LANES):
                    xh = (x[k + j] - mean) * rstd
                    gw = g[k + j] * w[k + j]
                    acc_a[j] += gw
                    acc_b[j] += gw * xh
                    acc_c[j] += xh
                k += LANES
        else:
            while k < vend:
                for j in range(LANES):
                    xh = (x[k + j] - mean) * rstd
                    acc_a[j] += g[k + j]
                    acc_b[j] += g[k + j] * xh
                    acc_c[j] += xh
                k += LANES
        if vend < end:  # the partial last lane block, as a whole one (_tail_start)
            k = end - LANES
            cut = _tail_start(vend, end)
            for j in range(LANES):
                xh = (x[k + j] - mean) * rstd
                gw = g[k + j] * w[k + j] if w != NULL else g[k + j]
                xh = xh if j >= cut else 0
                gw = gw if j >= cut else 0
                acc_a[j] += gw
                acc_b[j] += gw * xh
                acc_c[j] += xh
        _lanes_flush(acc_a, lanes_a)
        _lanes_flush(acc_b, lanes_b)
        _lanes_flush(acc_c, lanes_c)
        i = end
    sum_gw[0] = _lanes_total(lanes_a)
    sum_gw_xhat[0] = _lanes_total(lanes_b)
    sum_xhat[0] = _lanes_total(lanes_c)


cdef inline void _ln_backward_segment(const floating* g, const floating* x, const floating* w,
                                      floating* dx, Py_ssize_t n, floating mean, floating rstd,
                                      floating xhat_shift, floating mean_gw, floating mean_gw_xhat,
                                      floating* gw_acc, floating* gb_acc) noexcept nogil:
    """dx = rstd * (g*w - mean_gw - xhat * mean_gw_xhat), xhat = (x - mean)*rstd - xhat_shift;
    gw_acc += g * xhat and gb_acc += g when given (non-NULL)."""
    cdef Py_ssize_t k
    cdef floating xh
    if w != NULL and gw_acc != NULL and gb_acc != NULL:  # the layer's case, one fused loop
        for k in range(n):
            xh = (x[k] - mean) * rstd - xhat_shift
            dx[k] = rstd * ((g[k] * w[k] - mean_gw) - xh * mean_gw_xhat)
            gw_acc[k] += g[k] * xh
            gb_acc[k] += g[k]
        return
    if w != NULL and gw_acc != NULL:
        for k in range(n):
            xh = (x[k] - mean) * rstd - xhat_shift
            dx[k] = rstd * ((g[k] * w[k] - mean_gw) - xh * mean_gw_xhat)
            gw_acc[k] += g[k] * xh
    elif w != NULL:
        for k in range(n):
            xh = (x[k] - mean) * rstd - xhat_shift
            dx[k] = rstd * ((g[k] * w[k] - mean_gw) - xh * mean_gw_xhat)
    else:
        for k in range(n):
            xh = (x[k] - mean) * rstd - xhat_shift
            dx[k] = rstd * ((g[k] - mean_gw) - xh * mean_gw_xhat)
    if gb_acc != NULL:
        for k in range(n):
            gb_acc[k] += g[k]


cdef inline double _rms_backward_sum(const floating* g, const floating* x, const floating* w,
                                     Py_ssize_t n) noexcept nogil:
    """Row sum of g*w*x (g*x without w)."""
    if w != NULL:
        return _lane_sum(g, w, x, n, TERM_PRODUCT3)
    return _lane_sum(g, x, x, n, TERM_PRODUCT)


cdef inline void _rms_backward_segment(const floating* g, const floating* x, const floating* w,
                                       floating* dx, Py_ssize_t n, floating rstd, floating coef,
                                       floating* gw_acc) noexcept nogil:
    """dx = rstd * (g*w - xhat * coef), xhat = x * rstd, coef = mean(g*w*xhat)
    = rstd * mean(g*w*x); gw_acc += g * xhat.  Every factor is O(1) but the
    last rstd: no rstd^3 (which leaves float32's range for rows beyond 2^42
    or under 2^-42) is ever formed."""
    cdef Py_ssize_t k
    cdef floating xh
    if w != NULL and gw_acc != NULL:  # the layer's case, one fused loop
        for k in range(n):
            xh = x[k] * rstd
            dx[k] = rstd * (g[k] * w[k] - xh * coef)
            gw_acc[k] += g[k] * xh
        return
    if w != NULL:
        for k in range(n):
            dx[k] = rstd * (g[k] * w[k] - (x[k] * rstd) * coef)
    else:
        for k in range(n):
            dx[k] = rstd * (g[k] - (x[k] * rstd) * coef)
    if gw_acc != NULL:
        for k in range(n):
            gw_acc[k] += g[k] * (x[k] * rstd)


# --------------------------------------------------------------------------
# 2. drivers
# --------------------------------------------------------------------------

cdef inline Py_ssize_t _part_start(Py_ssize_t n, int parts, int part) noexcept nogil:
    """Start of part `part` of [0, n) cut into `parts` near-equal pieces.
    (Assigned, not written through pointers, inside prange bodies so that
    Cython makes the bounds thread-private.)"""
    return (n * part) // parts


cdef void _ln_forward_rows(const char* xb, Py_ssize_t xs, char* yb, Py_ssize_t ys,
                           Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                           const floating* w, const floating* b, double eps,
                           floating* mean, floating* rstd, bint stream,
                           int storage) noexcept nogil:
    """Rows r0..r1; 16-bit rows go through rows16.h (widened in registers).
    Narrow rows go ROW_GROUP at a time, their rstd in one vector loop (as
    _rms_forward_rows; the same bits as _ln_forward_row)."""
    cdef Py_ssize_t r = r0
    cdef double m, s
    cdef double gm[ROW_GROUP]
    cdef double gs[ROW_GROUP]
    cdef int i
    cdef floating hi
    if storage != ST_NATIVE:
        fn_ln_rows16(storage, xb, xs, yb, ys, r0, r1, n, <const float*>w, <const float*>b, eps,
                     <float*>mean, <float*>rstd, stream)
    else:
        while n < NARROW_ROW and r + ROW_GROUP <= r1:
            for i in range(ROW_GROUP):
                _block_moments(<const floating*>(xb + (r + i) * xs), n, &gm[i], &gs[i])
            for i in range(ROW_GROUP):
                gs[i] = 1.0 / sqrt(gs[i] / n + eps)
            for i in range(ROW_GROUP):
                hi = <floating>gm[i]
                _ln_normalize_segment(<const floating*>(xb + (r + i) * xs), <floating*>(yb + (r + i) * ys),
                                      n, w, b, hi, <floating>gs[i],
                                      <floating>(-(gm[i] - <double>hi) * gs[i]), stream)
                if mean != NULL:
                    mean[r + i] = <floating>gm[i]
                if rstd != NULL:
                    rstd[r + i] = <floating>gs[i]
            r += ROW_GROUP
        for r in range(r, r1):
            _ln_forward_row(<const floating*>(xb + r * xs), <floating*>(yb + r * ys), n, w, b, eps,
                            &m, &s, stream)
            if mean != NULL:
                mean[r] = <floating>m
            if rstd != NULL:
                rstd[r] = <floating>s
    if stream:
        fastnorm_stream_fence()


cdef void _ln_forward_wide_row(const floating* x, floating* y, Py_ssize_t n,
                               const floating* w, const floating* b, double eps,
                               double* partial, int nth, double* mean_out, double* rstd_out) noexcept nogil:
    """One very wide row, each pass split into nth segments (partial: 2*nth
    doubles), partial sums combined in segment order; same numerics as
    _ln_forward_row."""
    cdef int p, attempt
    cdef Py_ssize_t lo, hi
    cdef floating shift = x[0]
    cdef floating center_hi = 0, mean_hi
    cdef double mean
    cdef double dev_mean = 0.0, sum_sq, sum_dev, var, rstd
    for attempt in range(2):
        for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            lo = _part_start(n, nth, p)
            hi = _part_start(n, nth, p + 1)
            _centered_moments(x + lo, hi - lo, shift, center_hi, &partial[2 * p], &partial[2 * p + 1])
        sum_sq = 0.0
        sum_dev = 0.0
        for p in range(nth):
            sum_sq += partial[2 * p]
            sum_dev += partial[2 * p + 1]
        dev_mean = <double>center_hi + sum_dev / n
        var = sum_sq / n - (sum_dev / n) * (sum_dev / n)
        if attempt == 1 or _one_pass_ok(sum_sq, var, n):
            break
        center_hi = <floating>dev_mean
    if var < 0.0:
        var = 0.0
    mean = <double>shift + dev_mean
    if floating is float:
        if not fn_sums_in_range(sum_sq, n):  # out of float32's range
            fn_exact_moments(ST_NATIVE, x, n, 1, &mean, &var)
            var = var / n
    rstd = 1.0 / sqrt(var + eps)
    mean_hi = <floating>mean
    for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        lo = _part_start(n, nth, p)
        hi = _part_start(n, nth, p + 1)
        _ln_normalize_segment(x + lo, y + lo, hi - lo,
                              w + lo if w != NULL else NULL, b + lo if b != NULL else NULL,
                              mean_hi, <floating>rstd, <floating>(-(mean - <double>mean_hi) * rstd),
                              False)
    mean_out[0] = mean
    rstd_out[0] = rstd


cdef void _ln_forward_wide_row16(int storage, const char* x, char* y, Py_ssize_t n, const float* w,
                                 const float* b, double eps, double* partial, int nth,
                                 double* mean_out, double* rstd_out) noexcept nogil:
    """One very wide 16-bit row, each pass split into nth segments (partial:
    2*nth doubles) combined in segment order: the moments about the row's
    first value, again about the mean when that one lies far out."""
    cdef int p, attempt
    cdef Py_ssize_t lo, hi
    cdef float shift = fn_load1_16(storage, x, 0), mean_hi
    cdef double sum_sq = 0.0, sum_dev = 0.0, mean, m2, rstd
    for attempt in range(2):
        for p in prange(nth, schedule='static', num_threads=nth):
            lo = _part_start(n, nth, p)
            hi = _part_start(n, nth, p + 1)
            fn_moments16(storage, x + 2 * lo, hi - lo, shift, &partial[2 * p], &partial[2 * p + 1])
        sum_sq = 0.0
        sum_dev = 0.0
        for p in range(nth):
            sum_sq += partial[2 * p]
            sum_dev += partial[2 * p + 1]
        if attempt == 1 or _one_pass_ok(sum_sq, sum_sq / n - (sum_dev / n) * (sum_dev / n), n):
            break
        shift = <float>(<double>shift + sum_dev / n)
    mean = <double>shift + sum_dev / n
    m2 = sum_sq - sum_dev * sum_dev / n
    if m2 < 0:
        m2 = 0
    if not fn_sums_in_range(sum_sq, n):  # out of float32's range
        fn_exact_moments(storage, x, n, 1, &mean, &m2)
    rstd = 1.0 / sqrt(m2 / n + eps)
    mean_hi = <float>mean
    for p in prange(nth, schedule='static', num_threads=nth):
        lo = _part_start(n, nth, p)
        hi = _part_start(n, nth, p + 1)
        fn_ln_normalize16(storage, x + 2 * lo, y + 2 * lo, hi - lo, w + lo if w != NULL else NULL,
                          b + lo if b != NULL else NULL, mean_hi, <float>rstd,
                          <float>(-(mean - <double>mean_hi) * rstd))
    mean_out[0] = mean
    rstd_out[0] = rstd


cdef double _rms_forward_wide_row16(int storage, const char* x, char* y, Py_ssize_t n, const float* w,
                                    double eps, double* partial, int nth) noexcept nogil:
    """One very wide 16-bit RMSNorm row split into nth segments; returns rstd."""
    cdef int p
    cdef Py_ssize_t lo, hi
    cdef double sum_sq = 0.0, rstd
    for p in prange(nth, schedule='static', num_threads=nth):
        lo = _part_start(n, nth, p)
        hi = _part_start(n, nth, p + 1)
        fn_moments16(storage, x + 2 * lo, hi - lo, 0.0, &partial[2 * p], &partial[2 * p + 1])
    for p in range(nth):
        sum_sq += partial[2 * p]
    if not fn_sums_in_range(sum_sq, n):  # out of float32's range
        sum_sq = fn_exact_sum_squares(storage, x, n, 1)
    rstd = 1.0 / sqrt(sum_sq / n + eps)
    for p in prange(nth, schedule='static', num_threads=nth):
        lo = _part_start(n, nth, p)
        hi = _part_start(n, nth, p + 1)
        fn_rms_normalize16(storage, x + 2 * lo, y + 2 * lo, hi - lo, w + lo if w != NULL else NULL,
                           <float>rstd, 0)
    return rstd


cdef Py_ssize_t stream_min_bytes = STREAM_MIN_BYTES


def set_stream_threshold(Py_ssize_t nbytes):
    """Outputs of at least nbytes are written with streaming stores (default
    16 MiB); returns the previous threshold.  For tests and tuning."""
    global stream_min_bytes
    previous = stream_min_bytes
    stream_min_bytes = nbytes
    return previous


def parallel_copy(cnp.ndarray src, cnp.ndarray dst, object n_threads=None, object stream=None):
    """dst[...] = src for C-contiguous arrays of one dtype and shape, split
    over the threads in cache-line-aligned parts, with streaming stores from
    the streaming threshold (stream=None) or as forced: the benchmarks'
    all-threads limit, a copy at the kernels' own thread count and store
    path.  Returns dst."""
    if not (cnp.PyArray_IS_C_CONTIGUOUS(src) and cnp.PyArray_IS_C_CONTIGUOUS(dst)):
        raise ValueError("parallel_copy needs C-contiguous arrays")
    cdef object s_shape = (<object>src).shape, d_shape = (<object>dst).shape
    if src.dtype != dst.dtype or s_shape != d_shape:
        raise ValueError(f"parallel_copy needs one dtype and shape, got {src.dtype}{s_shape} and "
                         f"{dst.dtype}{d_shape}")
    if not cnp.PyArray_ISWRITEABLE(dst):
        raise ValueError("parallel_copy: dst is read-only")
    cdef Py_ssize_t nbytes = cnp.PyArray_NBYTES(src)
    cdef const char* s = <const char*>cnp.PyArray_DATA(src)
    cdef char* d = <char*>cnp.PyArray_DATA(dst)
    if nbytes == 0 or s == <const char*>d:
        return dst
    if (s < <const char*>d + nbytes) and (<const char*>d < s + nbytes):
        raise ValueError("parallel_copy: src and dst overlap")
    cdef int st = (nbytes >= stream_min_bytes) if stream is None else bool(stream)
    cdef int nth = resolve_threads(n_threads, nbytes // 4)
    cdef Py_ssize_t lines = (nbytes + 63) // 64, lo, hi
    cdef int p
    with nogil:
        for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            lo = _part_start(lines, nth, p) * 64
            hi = _part_start(lines, nth, p + 1) * 64
            if hi > nbytes:
                hi = nbytes
            if hi > lo:
                fn_copy_bytes(s + lo, d + lo, <size_t>(hi - lo), st)
                if st:
                    fastnorm_stream_fence()
    return dst


cdef inline bint _use_streaming(Py_ssize_t M, Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    return M * n * itemsize >= stream_min_bytes


cdef inline bint _use_streaming_grad(Py_ssize_t M, Py_ssize_t n, Py_ssize_t itemsize) noexcept nogil:
    """Gradients stream from a quarter of the forward threshold (4 MiB): the
    backward's own reads (grad_out and x) already fill the cache, and a
    grad_x kept in it only pushes them out (measured on GroupNorm
    (8, 256, 32, 32): backward 716 us -> 464 us)."""
    return M * n * itemsize * 4 >= stream_min_bytes


cdef int _ln_forward(const char* xb, Py_ssize_t xs, char* yb, Py_ssize_t ys,
                     Py_ssize_t M, Py_ssize_t n, const floating* w, const floating* b,
                     double eps, floating* mean, floating* rstd, int nth,
                     int storage) noexcept nogil:
    """LayerNorm forward over M rows of n; -1 when out of memory."""
    cdef int c
    cdef Py_ssize_t r, r0, r1
    cdef double m, s
    cdef double* partial = NULL
    cdef bint stream = _use_streaming(M, n, sizeof(floating) if storage == ST_NATIVE else 2)
    if nth > 1 and M < nth and n >= MIN_WIDE_ROW:
        partial = <double*>scratch_alloc(2 * nth * sizeof(double))
    if partial != NULL:
        for r in range(M):
            if storage == ST_NATIVE:
                _ln_forward_wide_row(<const floating*>(xb + r * xs), <floating*>(yb + r * ys), n,
                                     w, b, eps, partial, nth, &m, &s)
            else:
                _ln_forward_wide_row16(storage, xb + r * xs, yb + r * ys, n, <const float*>w,
                                       <const float*>b, eps, partial, nth, &m, &s)
            if mean != NULL:
                mean[r] = <floating>m
            if rstd != NULL:
                rstd[r] = <floating>s
        scratch_free(partial)
        return 0
    if nth > M:
        nth = <int>M
    if nth > 1:
        for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            r0 = _part_start(M, nth, c)
            r1 = _part_start(M, nth, c + 1)
            _ln_forward_rows(xb, xs, yb, ys, r0, r1, n, w, b, eps, mean, rstd, stream, storage)
    else:
        _ln_forward_rows(xb, xs, yb, ys, 0, M, n, w, b, eps, mean, rstd, stream, storage)
    return 0


cdef inline double _row_sum_squares(int storage, const char* x, Py_ssize_t n,
                                    const floating* tag) noexcept nogil:
    """Sum of squares of one row of n values in its storage dtype."""
    if storage == ST_NATIVE:
        return _sum_squares(<const floating*>x, n)
    return fn_sum_squares16(storage, x, n)


cdef inline void _rms_narrow_group(int st, const char* xb, Py_ssize_t xe, char* yb, Py_ssize_t ye,
                                   Py_ssize_t n, const floating* w, double eps,
                                   floating* rstd) noexcept nogil:
    """RMSNorm of ROW_GROUP rows of n <= GATHER_ROW values of storage st
    (rows xe and ye elements apart) with the rows in the vector lanes: each
    row's sum of squares in its own lane, in the order a row at a time sums
    them (the same bits), then the rstd and the outputs of the whole group
    at once.  A row at a time, a row of one value cost ~20 cycles of scalar
    work: (16384, 1) took 1.7x PyTorch's time in float32, 2.8x in bfloat16.
    st is a constant at each call (_rms_narrow_rows), so the loads inline."""
    cdef floating acc[ROW_GROUP]
    cdef floating rs[ROW_GROUP]
    cdef double s[ROW_GROUP]
    cdef floating v
    cdef Py_ssize_t k
    cdef int i
    for i in range(ROW_GROUP):
        acc[i] = 0
    for k in range(n):
        for i in range(ROW_GROUP):
            v = _ld(st, xb, i * xe + k, <floating>0)
            acc[i] += v * v
    for i in range(ROW_GROUP):
        s[i] = acc[i]
        if floating is float:
            if not fn_sums_in_range(s[i], n):  # out of float32's range: again in double
                s[i] = fn_exact_sum_squares(st, xb + i * xe * _isz(st, sizeof(floating)), n, 1)
    for i in range(ROW_GROUP):
        s[i] = 1.0 / sqrt(s[i] / n + eps)
        rs[i] = <floating>s[i]
    for k in range(n):
        for i in range(ROW_GROUP):
            v = _ld(st, xb, i * xe + k, <floating>0) * rs[i]
            _st(st, yb, i * ye + k, v * w[k] if w != NULL else v)
    if rstd != NULL:
        for i in range(ROW_GROUP):
            rstd[i] = rs[i]


cdef inline floating _ld(int st, const char* p, Py_ssize_t k, floating tag) noexcept nogil:
    """Element k of storage st (floating itself when native), widened."""
    if st == ST_NATIVE:
        return (<const floating*>p)[k]
    return <floating>fn_ld1(st, p, k)


cdef inline void _st(int st, char* p, Py_ssize_t k, floating v) noexcept nogil:
    """Store v as element k of storage st (rounded once when 16-bit)."""
    if st == ST_NATIVE:
        (<floating*>p)[k] = v
    else:
        fn_st1(st, p, k, <float>v)


cdef inline Py_ssize_t _isz(int st, size_t native) noexcept nogil:
    return <Py_ssize_t>native if st == ST_NATIVE else 2


cdef void _rms_narrow_rows(int st, const char* xb, Py_ssize_t xs, char* yb, Py_ssize_t ys,
                           Py_ssize_t r, Py_ssize_t r1, Py_ssize_t n, const floating* w,
                           double eps, floating* rstd) noexcept nogil:
    """Whole ROW_GROUPs of rows r..r1 through _rms_narrow_group, one
    specialization per storage code (x and y rows: whole elements apart)."""
    cdef Py_ssize_t isz = _isz(st, sizeof(floating))
    cdef Py_ssize_t xe = xs // isz, ye = ys // isz
    while r + ROW_GROUP <= r1:
        if st == ST_NATIVE:
            _rms_narrow_group(ST_NATIVE, xb + r * xs, xe, yb + r * ys, ye, n, w, eps,
                              rstd + r if rstd != NULL else NULL)
        elif st == ST_BF16:
            _rms_narrow_group(ST_BF16, xb + r * xs, xe, yb + r * ys, ye, n, w, eps,
                              rstd + r if rstd != NULL else NULL)
        else:
            _rms_narrow_group(ST_F16, xb + r * xs, xe, yb + r * ys, ye, n, w, eps,
                              rstd + r if rstd != NULL else NULL)
        r += ROW_GROUP


cdef void _rms_forward_rows(const char* xb, Py_ssize_t xs, char* yb, Py_ssize_t ys,
                            Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                            const floating* w, double eps, floating* rstd, bint stream,
                            int storage) noexcept nogil:
    """RMSNorm of rows r0..r1.  Narrow rows go ROW_GROUP at a time: every
    row's sum of squares, then the group's rstd in one vector loop (double
    division and square root, correctly rounded: the same bits as one row at
    a time), then the rows' normalize passes.  One row at a time, a row of
    width 1 waited on its own division and square root (~40 cycles of
    latency for one value): (16384, 1) took 0.6-0.8x PyTorch's time."""
    cdef Py_ssize_t r = r0
    cdef int i
    cdef double ss[ROW_GROUP]
    cdef Py_ssize_t isz = _isz(storage, sizeof(floating))
    if n <= GATHER_ROW and xs % isz == 0 and ys % isz == 0:
        _rms_narrow_rows(storage, xb, xs, yb, ys, r, r1, n, w, eps, rstd)
        r += ((r1 - r) // ROW_GROUP) * ROW_GROUP
    elif n < NARROW_ROW:
        while r + ROW_GROUP <= r1:
            for i in range(ROW_GROUP):
                ss[i] = _row_sum_squares(storage, xb + (r + i) * xs, n, w)
            for i in range(ROW_GROUP):
                ss[i] = 1.0 / sqrt(ss[i] / n + eps)
            for i in range(ROW_GROUP):
                _rms_normalize_row(storage, xb + (r + i) * xs, yb + (r + i) * ys, n, w,
                                   ss[i], stream)
                if rstd != NULL:
                    rstd[r + i] = <floating>ss[i]
            r += ROW_GROUP
    while r < r1:
        ss[0] = 1.0 / sqrt(_row_sum_squares(storage, xb + r * xs, n, w) / n + eps)
        _rms_normalize_row(storage, xb + r * xs, yb + r * ys, n, w, ss[0], stream)
        if rstd != NULL:
            rstd[r] = <floating>ss[0]
        r += 1
    if stream:
        fastnorm_stream_fence()


cdef inline void _rms_normalize_row(int storage, const char* x, char* y, Py_ssize_t n,
                                    const floating* w, double rstd, bint stream) noexcept nogil:
    if storage == ST_NATIVE:
        _rms_normalize_segment(<const floating*>x, <floating*>y, n, w, <floating>rstd, stream)
    else:
        fn_rms_normalize16(storage, x, y, n, <const float*>w, <float>rstd, stream)


cdef int _rms_forward(const char* xb, Py_ssize_t xs, char* yb, Py_ssize_t ys,
                      Py_ssize_t M, Py_ssize_t n, const floating* w, double eps,
                      floating* rstd, int nth, int storage) noexcept nogil:
    """RMSNorm forward over M rows of n; -1 when out of memory."""
    cdef int c, p
    cdef Py_ssize_t r, r0, r1, lo, hi
    cdef double s
    cdef double* partial = NULL
    cdef const floating* x
    cdef floating* y
    cdef bint stream = _use_streaming(M, n, sizeof(floating) if storage == ST_NATIVE else 2)
    if nth > 1 and M < nth and n >= MIN_WIDE_ROW:
        partial = <double*>scratch_alloc(2 * nth * sizeof(double))
    if partial != NULL and storage != ST_NATIVE:
        for r in range(M):
            s = _rms_forward_wide_row16(storage, xb + r * xs, yb + r * ys, n, <const float*>w, eps,
                                        partial, nth)
            if rstd != NULL:
                rstd[r] = <floating>s
        scratch_free(partial)
        return 0
    if partial != NULL:
        for r in range(M):
            x = <const floating*>(xb + r * xs)
            y = <floating*>(yb + r * ys)
            for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                lo = _part_start(n, nth, p)
                hi = _part_start(n, nth, p + 1)
                partial[p] = _sum_squares(x + lo, hi - lo)
            s = 0.0
            for p in range(nth):
                s += partial[p]
            s = 1.0 / sqrt(s / n + eps)
            for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                lo = _part_start(n, nth, p)
                hi = _part_start(n, nth, p + 1)
                _rms_normalize_segment(x + lo, y + lo, hi - lo, w + lo if w != NULL else NULL,
                                       <floating>s, False)
            if rstd != NULL:
                rstd[r] = <floating>s
        scratch_free(partial)
        return 0
    if nth > M:
        nth = <int>M
    if nth > 1:
        for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            r0 = _part_start(M, nth, c)
            r1 = _part_start(M, nth, c + 1)
            _rms_forward_rows(xb, xs, yb, ys, r0, r1, n, w, eps, rstd, stream, storage)
    else:
        _rms_forward_rows(xb, xs, yb, ys, 0, M, n, w, eps, rstd, stream, storage)
    return 0


cdef inline void _flush_partials(floating* acc, double* total, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        total[k] += acc[k]
        acc[k] = 0


cdef inline Py_ssize_t _stage_len(int storage, Py_ssize_t n) noexcept nogil:
    """Values staged at a time: the whole row for native data (no copy), else
    STAGE_CHUNK (a chunk of every staged row stays in L2)."""
    if storage == ST_NATIVE or n < STAGE_CHUNK:
        return n
    return STAGE_CHUNK


cdef inline void _ln_row_sums(int storage, floating* scratch, int j, const char* g, const char* x,
                              const floating* w, Py_ssize_t n, floating mean, floating rstd,
                              double* sum_gw, double* sum_gw_xhat, double* sum_xhat) noexcept nogil:
    """_ln_backward_sums over one row of the storage dtype: 16-bit rows are
    widened _stage_len values at a time into scratch slots j and 4 + j (a
    row of one chunk stays there for _backward_apply) and the chunks'
    sums added in double."""
    cdef Py_ssize_t k0 = 0, L, ch = _stage_len(storage, n)
    cdef double pa, pb, pc
    if storage == ST_NATIVE:
        _ln_backward_sums(<const floating*>g, <const floating*>x, w, n, mean, rstd,
                          sum_gw, sum_gw_xhat, sum_xhat)
        return
    sum_gw[0] = 0.0
    sum_gw_xhat[0] = 0.0
    sum_xhat[0] = 0.0
    while k0 < n:
        L = ch if n - k0 > ch else n - k0
        _ln_backward_sums(_row_in(storage, scratch, j, L, g + 2 * k0),
                          _row_in(storage, scratch, 4 + j, L, x + 2 * k0),
                          w + k0 if w != NULL else NULL, L, mean, rstd, &pa, &pb, &pc)
        sum_gw[0] += pa
        sum_gw_xhat[0] += pb
        sum_xhat[0] += pc
        k0 += L


cdef inline double _rms_row_sum(int storage, floating* scratch, int j, const char* g,
                                const char* x, const floating* w, Py_ssize_t n) noexcept nogil:
    """_rms_backward_sum over one row of the storage dtype (as _ln_row_sums)."""
    cdef Py_ssize_t k0 = 0, L, ch = _stage_len(storage, n)
    cdef double s = 0.0
    if storage == ST_NATIVE:
        return _rms_backward_sum(<const floating*>g, <const floating*>x, w, n)
    while k0 < n:
        L = ch if n - k0 > ch else n - k0
        s += _rms_backward_sum(_row_in(storage, scratch, j, L, g + 2 * k0),
                               _row_in(storage, scratch, 4 + j, L, x + 2 * k0),
                               w + k0 if w != NULL else NULL, L)
        k0 += L
    return s


cdef void _backward_apply(bint rms, int storage, floating* scratch, int m, const char** g,
                          const char** x, char** d, const floating* w, Py_ssize_t n,
                          const floating* m4, const floating* s4, const floating* sh4,
                          const floating* mg4, const floating* mgx4,
                          floating* gw_acc, floating* gb_acc) noexcept nogil:
    """dx of m = 1 or 4 rows (row j: g[j], x[j] -> d[j]) of LayerNorm (its
    scalars in m4..mgx4) or RMSNorm (rstd in s4, coefficient in mg4),
    partials added to gw_acc / gb_acc; four rows go through the four-row
    kernels (partials kept in registers across the four).  16-bit rows are
    staged _stage_len values at a time (scratch slots j, 4 + j, 8 + j); a
    row of one chunk is the one the row sums left there."""
    cdef Py_ssize_t k0 = 0, L, ch = _stage_len(storage, n)
    cdef Py_ssize_t isz = sizeof(floating) if storage == ST_NATIVE else 2
    cdef int j
    cdef const floating* gp[4]
    cdef const floating* xp[4]
    cdef floating* dp[4]
    while k0 < n:
        L = ch if n - k0 > ch else n - k0
        for j in range(m):
            if storage != ST_NATIVE and L == n:  # widened by the row sums, still there
                gp[j] = scratch + j * n
                xp[j] = scratch + (4 + j) * n
            else:
                gp[j] = _row_in(storage, scratch, j, L, g[j] + k0 * isz)
                xp[j] = _row_in(storage, scratch, 4 + j, L, x[j] + k0 * isz)
            dp[j] = _row_out(storage, scratch, 8 + j, L, d[j] + k0 * isz)
        if rms and m == 4:
            if floating is float:
                fastnorm_rms_backward4_f(gp, xp, dp, w + k0, L, s4, mg4, gw_acc + k0)
            else:
                fastnorm_rms_backward4_d(gp, xp, dp, w + k0, L, s4, mg4, gw_acc + k0)
        elif rms:
            _rms_backward_segment(gp[0], xp[0], w + k0 if w != NULL else NULL, dp[0], L,
                                  s4[0], mg4[0], gw_acc + k0 if gw_acc != NULL else NULL)
        elif m == 4:
            if floating is float:
                fastnorm_ln_backward4_f(gp, xp, dp, w + k0, L, m4, s4, sh4, mg4, mgx4,
                                        gw_acc + k0, gb_acc + k0)
            else:
                fastnorm_ln_backward4_d(gp, xp, dp, w + k0, L, m4, s4, sh4, mg4, mgx4,
                                        gw_acc + k0, gb_acc + k0)
        else:
            _ln_backward_segment(gp[0], xp[0], w + k0 if w != NULL else NULL, dp[0], L,
                                 m4[0], s4[0], sh4[0], mg4[0], mgx4[0],
                                 gw_acc + k0 if gw_acc != NULL else NULL,
                                 gb_acc + k0 if gb_acc != NULL else NULL)
        for j in range(m):
            _row_done(storage, scratch, 8 + j, L, d[j] + k0 * isz)
        k0 += L


cdef void _ln_backward_rows(const char* gb_, Py_ssize_t gs, const char* xb, Py_ssize_t xs,
                            char* db, Py_ssize_t ds, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                            const floating* mean, const floating* rstd, const floating* w,
                            floating* gw_acc, floating* gb_acc,
                            double* gw_total, double* gb_total,
                            int storage, floating* scratch) noexcept nogil:
    """Backward over rows [r0, r1); parameter-gradient partials accumulate in
    `floating` and are flushed into the chunk's double totals every
    FLUSH_ROWS rows (totals NULL: at most FLUSH_ROWS rows, the partials are
    the sums).  With both partials (the layer's case) rows go four at a time.
    scratch: 12 * _stage_len floats for 16-bit rows."""
    cdef Py_ssize_t r
    cdef int j, m
    cdef const char* gp[4]
    cdef const char* xp[4]
    cdef char* dp[4]
    cdef floating m4[4]
    cdef floating s4[4]
    cdef floating sh4[4]
    cdef floating mg4[4]
    cdef floating mgx4[4]
    cdef double a, bsum, c, inv_n = 1.0 / n
    cdef int pending = 0
    cdef bint four = w != NULL and gw_acc != NULL and gb_acc != NULL
    r = r0
    while r < r1:
        m = 4 if four and r + 4 <= r1 else 1
        for j in range(m):
            gp[j] = gb_ + (r + j) * gs
            xp[j] = xb + (r + j) * xs
            dp[j] = db + (r + j) * ds
            _ln_row_sums(storage, scratch, j, gp[j], xp[j], w, n, mean[r + j], rstd[r + j],
                         &a, &bsum, &c)
            # xhat should average to zero; whatever the rounding of the stored
            # mean left over (c / n) is removed, which keeps float32 rows with a
            # large offset accurate.
            m4[j] = mean[r + j]
            s4[j] = rstd[r + j]
            sh4[j] = <floating>(c * inv_n)
            mg4[j] = <floating>(a * inv_n)
            mgx4[j] = <floating>((bsum - c * inv_n * a) * inv_n)
        _backward_apply(False, storage, scratch, m, gp, xp, dp, w, n, m4, s4, sh4, mg4, mgx4,
                        gw_acc, gb_acc)
        r += m
        pending += m
        if pending >= FLUSH_ROWS:
            if gw_total != NULL:
                _flush_partials(gw_acc, gw_total, n)
            if gb_total != NULL:
                _flush_partials(gb_acc, gb_total, n)
            pending = 0
    if gw_total != NULL:
        _flush_partials(gw_acc, gw_total, n)
    if gb_total != NULL:
        _flush_partials(gb_acc, gb_total, n)


cdef inline void _rms_backward_narrow(int st, const char* gb_, Py_ssize_t ge, const char* xb,
                                      Py_ssize_t xe, char* db, Py_ssize_t de, int m, Py_ssize_t n,
                                      const floating* rstd, const floating* w,
                                      floating* gw_acc) noexcept nogil:
    """The RMSNorm backward of m <= ROW_GROUP rows of n <= GATHER_ROW values
    of storage st (rows ge, xe, de elements apart; st a constant at each
    call) with the rows in the vector lanes: each row's sum of g*w*x in its
    own lane, in the row's order, then every row's dx at once; the
    parameter-gradient partials take the rows in order.  A row at a time,
    the widening, the staging and the calls cost ~40 cycles a row:
    (16384, 1) bfloat16 forward+backward took 2x PyTorch's time."""
    cdef floating acc[ROW_GROUP]
    cdef floating sv[ROW_GROUP]
    cdef floating cv[ROW_GROUP]
    cdef floating gv, xv, xh
    cdef double tot
    cdef Py_ssize_t k
    cdef int i
    for i in range(m):
        acc[i] = 0
    for k in range(n):
        for i in range(m):
            gv = _ld(st, gb_, i * ge + k, <floating>0)
            xv = _ld(st, xb, i * xe + k, <floating>0)
            acc[i] += (gv * w[k] if w != NULL else gv) * xv
    for i in range(m):
        tot = acc[i]
        if floating is float:
            if not (tot < INFINITY):  # overflowed or NaN in float32: again in double
                tot = 0.0
                for k in range(n):
                    tot += (<double>_ld(st, gb_, i * ge + k, <floating>0) * (w[k] if w != NULL else 1.0)
                            * <double>_ld(st, xb, i * xe + k, <floating>0))
        sv[i] = rstd[i]
        cv[i] = <floating>(<double>rstd[i] * tot / n)
    for k in range(n):
        for i in range(m):
            gv = _ld(st, gb_, i * ge + k, <floating>0)
            xh = _ld(st, xb, i * xe + k, <floating>0) * sv[i]
            _st(st, db, i * de + k, sv[i] * ((gv * w[k] if w != NULL else gv) - xh * cv[i]))
    if gw_acc != NULL:
        for k in range(n):
            for i in range(m):
                gw_acc[k] += _ld(st, gb_, i * ge + k, <floating>0) * (_ld(st, xb, i * xe + k, <floating>0) * sv[i])


cdef void _rms_backward_rows(const char* gb_, Py_ssize_t gs, const char* xb, Py_ssize_t xs,
                             char* db, Py_ssize_t ds, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                             const floating* rstd, const floating* w,
                             floating* gw_acc, double* gw_total,
                             int storage, floating* scratch) noexcept nogil:
    """As _ln_backward_rows: four rows at a time when there is a weight and
    its gradient is wanted."""
    cdef Py_ssize_t r
    cdef int j, m
    cdef const char* gp[4]
    cdef const char* xp[4]
    cdef char* dp[4]
    cdef floating s4[4]
    cdef floating c4[4]
    cdef double s
    cdef int pending = 0
    cdef bint four = w != NULL and gw_acc != NULL
    cdef Py_ssize_t isz = _isz(storage, sizeof(floating))
    r = r0
    if n <= GATHER_ROW and gs % isz == 0 and xs % isz == 0 and ds % isz == 0:
        while r < r1:  # every row in the vector lanes, ROW_GROUP at a time (FLUSH_ROWS a multiple)
            m = ROW_GROUP if r + ROW_GROUP <= r1 else <int>(r1 - r)
            if storage == ST_NATIVE:
                _rms_backward_narrow(ST_NATIVE, gb_ + r * gs, gs // isz, xb + r * xs, xs // isz,
                                     db + r * ds, ds // isz, m, n, rstd + r, w, gw_acc)
            elif storage == ST_BF16:
                _rms_backward_narrow(ST_BF16, gb_ + r * gs, gs // isz, xb + r * xs, xs // isz,
                                     db + r * ds, ds // isz, m, n, rstd + r, w, gw_acc)
            else:
                _rms_backward_narrow(ST_F16, gb_ + r * gs, gs // isz, xb + r * xs, xs // isz,
                                     db + r * ds, ds // isz, m, n, rstd + r, w, gw_acc)
            r += m
            pending += m
            if pending >= FLUSH_ROWS and gw_total != NULL:
                _flush_partials(gw_acc, gw_total, n)
                pending = 0
    while r < r1:
        m = 4 if four and r + 4 <= r1 else 1
        for j in range(m):
            gp[j] = gb_ + (r + j) * gs
            xp[j] = xb + (r + j) * xs
            dp[j] = db + (r + j) * ds
            s = rstd[r + j]
            s4[j] = <floating>s
            c4[j] = <floating>(s * _rms_row_sum(storage, scratch, j, gp[j], xp[j], w, n) / n)
        _backward_apply(True, storage, scratch, m, gp, xp, dp, w, n, NULL, s4, NULL, c4, NULL,
                        gw_acc, NULL)
        r += m
        pending += m
        if pending >= FLUSH_ROWS and gw_total != NULL:
            _flush_partials(gw_acc, gw_total, n)
            pending = 0
    if gw_total != NULL:
        _flush_partials(gw_acc, gw_total, n)


cdef bint _split_columns(Py_ssize_t M, Py_ssize_t n, int nth) noexcept nogil:
    """Whether the rows' backward splits every row's columns across the
    threads (one copy of the parameter-gradient partials, two parallel
    regions per row) rather than handing each thread whole rows (a copy of
    the partials per thread, combined at the end).  Measured (2 threads, AMD
    Zen 3): with rows of 2^16..2^20 the column split is faster up to about
    WIDE_ROWS_PER_THREAD rows per thread; beyond, whole rows win."""
    return nth > 1 and n >= wide_min_width and M < wide_rows_per_thread * nth


cdef Py_ssize_t wide_min_width = MIN_WIDE_ROW
cdef Py_ssize_t wide_rows_per_thread = WIDE_ROWS_PER_THREAD


def set_wide_rows(Py_ssize_t min_width, Py_ssize_t rows_per_thread):
    """Set when the row backward splits rows across threads (see
    _split_columns); returns the previous (min_width, rows_per_thread).  For
    tests (both strategies on small inputs) and measurements."""
    global wide_min_width, wide_rows_per_thread
    previous = (wide_min_width, wide_rows_per_thread)
    if min_width < 1 or rows_per_thread < 0:
        raise ValueError("min_width must be >= 1 and rows_per_thread >= 0")
    wide_min_width = min_width
    wide_rows_per_thread = rows_per_thread
    return previous


cdef inline void _column_rows(bint rms, int storage, floating* scratch, int m, const char* g,
                              Py_ssize_t gs, const char* x, Py_ssize_t xs, char* d, Py_ssize_t ds,
                              const floating* w, Py_ssize_t n, const floating* m4,
                              const floating* s4, const floating* sh4, const floating* mg4,
                              const floating* mgx4, floating* gw_acc,
                              floating* gb_acc) noexcept nogil:
    """One segment of m consecutive rows (row j at g + j * gs, ...) through
    the apply kernels; for RMSNorm mg4 holds the rows' coefficients."""
    cdef const char* gq[4]
    cdef const char* xq[4]
    cdef char* dq[4]
    cdef int j
    for j in range(m):
        gq[j] = g + j * gs
        xq[j] = x + j * xs
        dq[j] = d + j * ds
    _backward_apply(rms, storage, scratch, m, gq, xq, dq, w, n, m4, s4, sh4, mg4, mgx4,
                    gw_acc, gb_acc)


cdef void _norm_backward_columns(bint rms, const char* gb_, Py_ssize_t gs, const char* xb,
                                 Py_ssize_t xs, char* db, Py_ssize_t ds, Py_ssize_t M, Py_ssize_t n,
                                 const floating* mean, const floating* rstd, const floating* w,
                                 floating* grad_w, floating* grad_b, int nth, int storage,
                                 double* totals, double* partial, floating* stage) noexcept nogil:
    """The backward over M rows, each row's columns cut into nth segments.

    Thread p owns columns [lo, hi) of every row.  Rows go in groups of four
    (one when the four-row kernels do not apply): one parallel region sums
    the group's rows over each segment (partial: 12 doubles per segment,
    combined in segment order), a second computes their gradient.  A
    segment's parameter-gradient partials belong to one thread, so they
    accumulate straight into grad_w / grad_b; `totals` (n doubles per
    gradient, NULL when M <= FLUSH_ROWS) takes them every FLUSH_ROWS rows.
    16-bit rows: `stage` holds 12 * _stage_len(segment) floats per segment
    (the rows' staging, see _backward_apply)."""
    cdef int p, j, m
    cdef Py_ssize_t r, lo, hi, k, pending = 0
    cdef Py_ssize_t isz = sizeof(floating) if storage == ST_NATIVE else 2
    cdef Py_ssize_t off_b = n if grad_w != NULL else 0
    cdef Py_ssize_t chs = _stage_len(storage, (n + nth - 1) // nth)
    cdef double a, bsum, c, inv_n = 1.0 / n
    cdef floating m4[4]
    cdef floating s4[4]
    cdef floating sh4[4]
    cdef floating mg4[4]
    cdef floating mgx4[4]
    cdef floating* sp
    cdef bint flush
    cdef bint four = (w != NULL and grad_w != NULL and (rms or grad_b != NULL))
    for p in prange(nth, schedule='static', num_threads=nth):
        lo = _part_start(n, nth, p)
        hi = _part_start(n, nth, p + 1)
        if grad_w != NULL:
            memset(grad_w + lo, 0, (hi - lo) * sizeof(floating))
        if grad_b != NULL:
            memset(grad_b + lo, 0, (hi - lo) * sizeof(floating))
        if totals != NULL:
            if grad_w != NULL:
                memset(totals + lo, 0, (hi - lo) * sizeof(double))
            if grad_b != NULL:
                memset(totals + off_b + lo, 0, (hi - lo) * sizeof(double))
    r = 0
    while r < M:
        m = 4 if four and r + 4 <= M else 1
        for p in prange(nth, schedule='static', num_threads=nth):
            lo = _part_start(n, nth, p)
            hi = _part_start(n, nth, p + 1)
            sp = stage + 12 * chs * p if stage != NULL else NULL
            for j in range(m):
                if rms:
                    partial[12 * p + j] = _rms_row_sum(
                        storage, sp, j, gb_ + (r + j) * gs + lo * isz, xb + (r + j) * xs + lo * isz,
                        w + lo if w != NULL else NULL, hi - lo)
                else:
                    _ln_row_sums(storage, sp, j, gb_ + (r + j) * gs + lo * isz,
                                 xb + (r + j) * xs + lo * isz, w + lo if w != NULL else NULL,
                                 hi - lo, mean[r + j], rstd[r + j], &partial[12 * p + j],
                                 &partial[12 * p + 4 + j], &partial[12 * p + 8 + j])
        for j in range(m):
            a = 0.0
            bsum = 0.0
            c = 0.0
            for p in range(nth):
                a = a + partial[12 * p + j]
                bsum = bsum + partial[12 * p + 4 + j]
                c = c + partial[12 * p + 8 + j]
            s4[j] = rstd[r + j]
            if rms:
                mg4[j] = <floating>(<double>rstd[r + j] * a * inv_n)
            else:
                m4[j] = mean[r + j]
                sh4[j] = <floating>(c * inv_n)
                mg4[j] = <floating>(a * inv_n)
                mgx4[j] = <floating>((bsum - c * inv_n * a) * inv_n)
        pending += m
        flush = totals != NULL and (pending >= FLUSH_ROWS or r + m == M)
        for p in prange(nth, schedule='static', num_threads=nth):
            lo = _part_start(n, nth, p)
            hi = _part_start(n, nth, p + 1)
            sp = stage + 12 * chs * p if stage != NULL else NULL
            _column_rows(rms, storage, sp, m, gb_ + r * gs + lo * isz, gs,
                         xb + r * xs + lo * isz, xs, db + r * ds + lo * isz, ds,
                         w + lo if w != NULL else NULL, hi - lo, m4, s4, sh4, mg4, mgx4,
                         grad_w + lo if grad_w != NULL else NULL,
                         grad_b + lo if grad_b != NULL else NULL)
            if flush:
                if grad_w != NULL:
                    _flush_partials(grad_w + lo, totals + lo, hi - lo)
                if grad_b != NULL:
                    _flush_partials(grad_b + lo, totals + off_b + lo, hi - lo)
        if flush:
            pending = 0
        r += m
    if totals != NULL:
        for p in prange(nth, schedule='static', num_threads=nth):
            lo = _part_start(n, nth, p)
            hi = _part_start(n, nth, p + 1)
            for k in range(lo, hi):
                if grad_w != NULL:
                    grad_w[k] = <floating>totals[k]
                if grad_b != NULL:
                    grad_b[k] = <floating>totals[off_b + k]


cdef void _norm_backward_rows(bint rms, const char* gb_, Py_ssize_t gs, const char* xb,
                              Py_ssize_t xs, char* db, Py_ssize_t ds, Py_ssize_t M, Py_ssize_t n,
                              const floating* mean, const floating* rstd, const floating* w,
                              floating* grad_w, floating* grad_b, int nth, int storage,
                              double* totals, floating* acc, floating* stage) noexcept nogil:
    """The backward over M >= nth rows, thread c taking rows [r0, r1).  Its
    parameter-gradient partials accumulate in `floating`: chunk 0's in
    grad_w / grad_b themselves, chunk c's in acc + (c-1) * n_vec * n, each
    zeroed by its own thread; `totals` (n_vec * n doubles per chunk) takes
    them every FLUSH_ROWS rows, or is NULL when no chunk has more rows than
    that.  The chunks are summed in chunk order at the end.  `stage`: 12 *
    _stage_len floats per thread for 16-bit rows."""
    cdef int c
    cdef Py_ssize_t r0, r1
    cdef Py_ssize_t n_vec = (grad_w != NULL) + (grad_b != NULL)
    cdef Py_ssize_t off_b = n if grad_w != NULL else 0
    cdef Py_ssize_t ch = _stage_len(storage, n)
    cdef floating* gwa
    cdef floating* gba
    cdef double* ct
    for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        r0 = _part_start(M, nth, c)
        r1 = _part_start(M, nth, c + 1)
        if c == 0:
            gwa = grad_w
            gba = grad_b
        else:
            gwa = acc + (c - 1) * n_vec * n if grad_w != NULL else NULL
            gba = acc + (c - 1) * n_vec * n + off_b if grad_b != NULL else NULL
        ct = totals + c * n_vec * n if totals != NULL and n_vec > 0 else NULL
        if gwa != NULL:
            memset(gwa, 0, n * sizeof(floating))
        if gba != NULL:
            memset(gba, 0, n * sizeof(floating))
        if ct != NULL:
            memset(ct, 0, n_vec * n * sizeof(double))
        if rms:
            _rms_backward_rows(gb_, gs, xb, xs, db, ds, r0, r1, n, rstd, w, gwa, ct,
                               storage, stage + c * 12 * ch if stage != NULL else NULL)
        else:
            _ln_backward_rows(gb_, gs, xb, xs, db, ds, r0, r1, n, mean, rstd, w, gwa, gba,
                              ct if grad_w != NULL else NULL,
                              ct + off_b if ct != NULL and grad_b != NULL else NULL,
                              storage, stage + c * 12 * ch if stage != NULL else NULL)
    if n_vec:
        _combine_chunks(totals, acc, nth, <int>n_vec, n, grad_w, grad_b)


cdef int _norm_backward(bint rms, const char* gb_, Py_ssize_t gs, const char* xb, Py_ssize_t xs,
                        char* db, Py_ssize_t ds, Py_ssize_t M, Py_ssize_t n,
                        const floating* mean, const floating* rstd, const floating* w,
                        floating* grad_w, floating* grad_b, int nth, int storage) noexcept nogil:
    """Backward of LayerNorm (rms=False) or RMSNorm (rms=True) over M rows of n,
    by column segments (few wide rows) or by row chunks; its work memory
    comes from the buffer cache.  grad_w / grad_b: length n, or NULL when not
    wanted.  Returns -1 when out of memory."""
    cdef bint columns = _split_columns(M, n, nth)
    cdef Py_ssize_t n_vec = (grad_w != NULL) + (grad_b != NULL)
    cdef Py_ssize_t n_tot, n_acc, n_stage, tot_bytes, acc_bytes
    cdef bint keep = False
    cdef char* block
    if not columns and nth > M:
        nth = <int>M if M > 0 else 1
    if columns:
        n_tot = 12 * nth + (n_vec * n if M > FLUSH_ROWS else 0)
        n_acc = 0
        n_stage = nth * 12 * _stage_len(storage, (n + nth - 1) // nth) if storage != ST_NATIVE else 0
    else:
        keep = (M + nth - 1) // nth > FLUSH_ROWS
        n_tot = nth * n_vec * n if keep else 0
        n_acc = (nth - 1) * n_vec * n
        n_stage = nth * 12 * _stage_len(storage, n) if storage != ST_NATIVE else 0
    tot_bytes = (n_tot * sizeof(double) + 63) & ~63
    acc_bytes = (n_acc * sizeof(floating) + 63) & ~63
    block = <char*>scratch_alloc(tot_bytes + acc_bytes + n_stage * sizeof(float) + 64)
    if block == NULL:
        return -1
    if columns:
        _norm_backward_columns(rms, gb_, gs, xb, xs, db, ds, M, n, mean, rstd, w, grad_w, grad_b,
                               nth, storage,
                               <double*>block + 12 * nth if M > FLUSH_ROWS and n_vec else NULL,
                               <double*>block,
                               <floating*>(block + tot_bytes) if n_stage else NULL)
    else:
        _norm_backward_rows(rms, gb_, gs, xb, xs, db, ds, M, n, mean, rstd, w, grad_w, grad_b,
                            nth, storage, <double*>block if keep else NULL,
                            <floating*>(block + tot_bytes),
                            <floating*>(block + tot_bytes + acc_bytes) if n_stage else NULL)
    scratch_free(block)
    return 0


cdef void _combine_chunks(double* totals, const floating* acc, int n_chunks, int n_vec,
                          Py_ssize_t n, floating* grad_w, floating* grad_b) noexcept nogil:
    """grad = the sum over chunks of each chunk's partials, added in double in
    chunk order, rounded to `floating`: the chunks' totals or, without
    totals, chunk 0's partials (in grad_w / grad_b) and chunk c's at
    acc + (c-1) * n_vec * n.  The n_chunks threads take a column range each
    (the same order of additions, whatever the split)."""
    cdef Py_ssize_t stride = n_vec * n
    cdef Py_ssize_t off_b = n if grad_w != NULL else 0
    cdef int p
    if n_chunks == 1 and totals == NULL:
        return
    for p in prange(n_chunks, schedule='static', num_threads=n_chunks,
                    use_threads_if=n_chunks > 1 and n_chunks * n >= MIN_PARALLEL_WORK):
        if grad_w != NULL:
            _combine_range(totals, acc, n_chunks, stride, 0, grad_w, _part_start(n, n_chunks, p),
                           _part_start(n, n_chunks, p + 1))
        if grad_b != NULL:
            _combine_range(totals, acc, n_chunks, stride, off_b, grad_b,
                           _part_start(n, n_chunks, p), _part_start(n, n_chunks, p + 1))


cdef inline void _combine_range(const double* totals, const floating* acc, int n_chunks,
                                Py_ssize_t stride, Py_ssize_t off, floating* grad, Py_ssize_t lo,
                                Py_ssize_t hi) noexcept nogil:
    """_combine_chunks over columns [lo, hi) of one gradient (at `off` in a
    chunk's partials)."""
    cdef Py_ssize_t k
    cdef int c
    cdef double s
    for k in range(lo, hi):
        if totals != NULL:
            s = totals[off + k]
            for c in range(1, n_chunks):
                s = s + totals[c * stride + off + k]
        else:
            s = grad[k]
            for c in range(1, n_chunks):
                s = s + acc[(c - 1) * stride + off + k]
        grad[k] = <floating>s


# --------------------------------------------------------------------------
# 3. entry points (arguments validated by fastnorm.functional)
# --------------------------------------------------------------------------

cdef inline void* _ptr_or_null(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline int _check_rows(cnp.ndarray a, int typenum, Py_ssize_t M, Py_ssize_t n, str name) except -1:
    if (cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_TYPE(a) != typenum
            or a.shape[0] != M or a.shape[1] != n
            or (n > 1 and M > 0 and a.strides[1] != cnp.PyArray_ITEMSIZE(a))):
        raise ValueError(f"internal: {name} must be ({M}, {n}) rows of one dtype with unit inner stride")
    return 0


def layer_norm_forward(cnp.ndarray x, cnp.ndarray y, object weight, object bias, double eps,
                       object mean, object rstd, object n_threads):
    """x, y: (M, n) with contiguous rows; weight/bias: contiguous (n,) or None;
    mean/rstd: contiguous (M,) outputs or None."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef Py_ssize_t M = x.shape[0], n = x.shape[1]
    _check_rows(x, typenum, M, n, "x")
    _check_rows(y, typenum, M, n, "y")
    cdef int nth = resolve_threads(n_threads, _row_work(M, n, False))
    if M == 0 or n == 0:
        return
    _ln_run(typenum, <const char*>cnp.PyArray_DATA(x), x.strides[0], <char*>cnp.PyArray_DATA(y),
            y.strides[0], M, n, _ptr_or_null(weight), _ptr_or_null(bias), eps,
            _ptr_or_null(mean), _ptr_or_null(rstd), nth)


cdef int _ln_run(int typenum, const char* xb, Py_ssize_t xs, char* yb, Py_ssize_t ys,
                 Py_ssize_t M, Py_ssize_t n, void* w, void* b, double eps, void* mp, void* rp,
                 int nth) except -1:
    """The typed dispatch of the LayerNorm forward (float32 compute for
    float32 / float16 / bfloat16 storage, float64 for float64)."""
    cdef bint dbl
    cdef int storage = storage_of(typenum, &dbl)
    cdef int status
    if not dbl:
        with nogil:
            status = _ln_forward[float](xb, xs, yb, ys, M, n, <const float*>w, <const float*>b, eps,
                                        <float*>mp, <float*>rp, nth, storage)
    else:
        with nogil:
            status = _ln_forward[double](xb, xs, yb, ys, M, n, <const double*>w, <const double*>b,
                                         eps, <double*>mp, <double*>rp, nth, storage)
    if status != 0:
        raise MemoryError("fastnorm: could not allocate the staging rows")
    return 0


cdef int _rms_run(int typenum, const char* xb, Py_ssize_t xs, char* yb, Py_ssize_t ys,
                  Py_ssize_t M, Py_ssize_t n, void* w, double eps, void* rp, int nth) except -1:
    cdef bint dbl
    cdef int storage = storage_of(typenum, &dbl)
    cdef int status
    if not dbl:
        with nogil:
            status = _rms_forward[float](xb, xs, yb, ys, M, n, <const float*>w, eps, <float*>rp,
                                         nth, storage)
    else:
        with nogil:
            status = _rms_forward[double](xb, xs, yb, ys, M, n, <const double*>w, eps, <double*>rp,
                                          nth, storage)
    if status != 0:
        raise MemoryError("fastnorm: could not allocate the staging rows")
    return 0


cdef int _norm_backward_run(bint rms, int typenum, const char* gb_, Py_ssize_t gs, const char* xb,
                            Py_ssize_t xs, char* db, Py_ssize_t ds, Py_ssize_t M, Py_ssize_t n,
                            void* mp, void* rp, void* w, void* gw, void* gbias, int nth) except -1:
    cdef bint dbl
    cdef int storage = storage_of(typenum, &dbl)
    cdef int status
    if not dbl:
        with nogil:
            status = _norm_backward[float](rms, gb_, gs, xb, xs, db, ds, M, n, <const float*>mp,
                                           <const float*>rp, <const float*>w,
                                           <float*>gw, <float*>gbias, nth, storage)
    else:
        with nogil:
            status = _norm_backward[double](rms, gb_, gs, xb, xs, db, ds, M, n, <const double*>mp,
                                            <const double*>rp, <const double*>w,
                                            <double*>gw, <double*>gbias, nth, storage)
    if status != 0:
        raise MemoryError("fastnorm: could not allocate the backward's scratch")
    return 0


def rms_norm_forward(cnp.ndarray x, cnp.ndarray y, object weight, double eps,
                     object rstd, object n_threads):
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef Py_ssize_t M = x.shape[0], n = x.shape[1]
    _check_rows(x, typenum, M, n, "x")
    _check_rows(y, typenum, M, n, "y")
    cdef int nth = resolve_threads(n_threads, _row_work(M, n, False))
    if M == 0 or n == 0:
        return
    _rms_run(typenum, <const char*>cnp.PyArray_DATA(x), x.strides[0], <char*>cnp.PyArray_DATA(y),
             y.strides[0], M, n, _ptr_or_null(weight), eps, _ptr_or_null(rstd), nth)


def norm_backward(bint rms, cnp.ndarray grad_out, cnp.ndarray x, object mean, cnp.ndarray rstd,
                  object weight, cnp.ndarray grad_x, object grad_weight, object grad_bias,
                  object n_threads):
    """LayerNorm (rms=False) or RMSNorm (rms=True) backward over (M, n) rows.
    grad_weight / grad_bias: contiguous (n,) outputs or None."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef Py_ssize_t M = x.shape[0], n = x.shape[1]
    _check_rows(x, typenum, M, n, "x")
    _check_rows(grad_out, typenum, M, n, "grad_out")
    _check_rows(grad_x, typenum, M, n, "grad_x")
    cdef int nth = resolve_threads(n_threads, _row_work(M, n, True))
    cdef const char* gb_ = <const char*>cnp.PyArray_DATA(grad_out)
    cdef const char* xb = <const char*>cnp.PyArray_DATA(x)
    cdef char* db = <char*>cnp.PyArray_DATA(grad_x)
    cdef Py_ssize_t gs = grad_out.strides[0], xs = x.strides[0], ds = grad_x.strides[0]
    cdef void* mp = _ptr_or_null(mean)
    cdef void* rp = cnp.PyArray_DATA(rstd)
    cdef void* w = _ptr_or_null(weight)
    cdef void* gw = _ptr_or_null(grad_weight)
    cdef void* gbias = _ptr_or_null(grad_bias)
    if n == 0:
        return
    _norm_backward_run(rms, typenum, gb_, gs, xb, xs, db, ds, M, n, mp, rp, w, gw, gbias, nth)


# --------------------------------------------------------------------------
# fast paths: the common call (a C-contiguous native ndarray of a kernel
# dtype, normalized over trailing dims named by None, an int, or a tuple /
# list of ints -- every spelling torch users write --, parameters None or
# C-contiguous arrays of the normalized shape, eps a float or int, no out
# or a separate contiguous out or out is x) checked and run without
# Python-level overhead.  Anything else, including every invalid input,
# returns NotImplemented and takes the general path in fastnorm.functional,
# which owns validation and error messages.
# --------------------------------------------------------------------------

cdef inline int _kernel_typenum(int typenum) noexcept:
    """The typenum the kernels compute in for data of `typenum`, or -1 when
    no kernel takes it."""
    if typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64:
        return typenum
    if typenum == cnp.NPY_FLOAT16 or (typenum == bf16_typenum and bf16_typenum >= 0):
        return cnp.NPY_FLOAT32
    return -1


cdef inline bint _c_aligned(cnp.ndarray a):
    """C-contiguous and aligned to its itemsize: what the fast entries hand
    the kernels (a view of a byte buffer at an odd address is neither UB-free
    nor fast to load; the general path copies it once, fastnorm._dtypes)."""
    return cnp.PyArray_IS_C_CONTIGUOUS(a) and cnp.PyArray_ISALIGNED(a)


cdef inline bint _fast_array(object a, int typenum):
    """a is an exact, C-contiguous, native-order ndarray of `typenum`."""
    cdef cnp.ndarray b
    if not cnp.PyArray_CheckExact(a):
        return False
    b = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(b) == typenum and _c_aligned(b)
            and cnp.PyArray_ISNOTSWAPPED(b))


cdef inline bint _same_dims(cnp.ndarray a, cnp.ndarray x, int first):
    """a's dims equal x's dims from `first` on."""
    cdef int k, nd = cnp.PyArray_NDIM(a)
    if nd != cnp.PyArray_NDIM(x) - first:
        return False
    for k in range(nd):
        if cnp.PyArray_DIMS(a)[k] != cnp.PyArray_DIMS(x)[first + k]:
            return False
    return True


cdef int _fast_norm_dims(object normalized_shape, cnp.ndarray x, Py_ssize_t* n):
    """How many trailing dims of x `normalized_shape` names (None: 1) when it
    is an int or a tuple / list of ints equal to them, their product in n;
    -1 for anything else (the general path validates it)."""
    cdef int nd = cnp.PyArray_NDIM(x), k, i
    cdef Py_ssize_t prod = 1
    cdef object d
    if normalized_shape is None:
        k = 1
    elif type(normalized_shape) is int:
        if nd < 1 or normalized_shape != cnp.PyArray_DIMS(x)[nd - 1]:
            return -1
        k = 1
    elif type(normalized_shape) is tuple or type(normalized_shape) is list:
        k = len(normalized_shape)
        if k < 1 or k > nd:
            return -1
        for i in range(k):
            d = normalized_shape[i]
            if type(d) is not int or d != cnp.PyArray_DIMS(x)[nd - k + i]:
                return -1
    else:
        return -1
    if k > nd:
        return -1
    for i in range(nd - k, nd):
        prod *= cnp.PyArray_DIMS(x)[i]
    n[0] = prod
    return k


cdef object _in_compute_dtype(cnp.ndarray a, int typenum, int ctype, object n_threads=None):
    """A parameter (already checked to be a contiguous native array of the
    right shape) for the kernels: a itself when it is of the compute dtype,
    a widened to float32 when it is of x's 16-bit dtype `typenum`, else
    NotImplemented (the general path raises the TypeError).  The one
    parameter dtype rule of every fast entry."""
    cdef cnp.ndarray wide
    cdef bint dbl
    cdef Py_ssize_t n = cnp.PyArray_SIZE(a)
    cdef int p, st, nth
    cdef const char* src
    cdef float* dst
    if cnp.PyArray_TYPE(a) == ctype:
        return a
    if cnp.PyArray_TYPE(a) == typenum and ctype == cnp.NPY_FLOAT32:  # 16-bit parameters
        wide = empty_array(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), cnp.NPY_FLOAT32)
        st = storage_of(typenum, &dbl)
        src = <const char*>cnp.PyArray_DATA(a)
        dst = <float*>cnp.PyArray_DATA(wide)
        # a long parameter (a few wide rows) is widened by the threads in the
        # parts the row kernels split the columns into, so each reads what it
        # wrote (one thread writing it all and the other reading cost a
        # 65536-wide bfloat16 row 2x its time on 2 threads)
        nth = resolve_threads(n_threads, n)
        with nogil:
            if nth > 1:
                for p in prange(nth, schedule='static', num_threads=nth):
                    fn_widen(st, src + 2 * _part_start(n, nth, p), dst + _part_start(n, nth, p),
                             _part_start(n, nth, p + 1) - _part_start(n, nth, p))
            else:
                fn_widen(st, src, dst, n)
        return wide
    return NotImplemented


cdef inline bint _bytes_overlap(object a, object b):
    """Whether two arrays (b may be None) that are contiguous blocks share bytes."""
    cdef char* pa
    cdef char* pb
    if b is None:
        return False
    pa = <char*>cnp.PyArray_DATA(<cnp.ndarray>a)
    pb = <char*>cnp.PyArray_DATA(<cnp.ndarray>b)
    return pa < pb + cnp.PyArray_NBYTES(<cnp.ndarray>b) and pb < pa + cnp.PyArray_NBYTES(<cnp.ndarray>a)


cdef bint _out_clear(object out, object a0, object a1=None, object a2=None, object a3=None):
    """The fast entries' half of the aliasing rule: `out` (None, or a
    contiguous array checked by _fast_output) shares no byte with the arrays
    the kernel reads or updates besides x (None skipped).  When it does, the
    general path computes first and writes out after (or refuses aliased
    running statistics: fastnorm._validation.out_aliases)."""
    if out is None:
        return True
    return not (_bytes_overlap(out, a0) or _bytes_overlap(out, a1) or _bytes_overlap(out, a2)
                or _bytes_overlap(out, a3))


cdef object _fast_param(object p, cnp.ndarray x, int k, int ctype, object n_threads=None):
    """weight / bias for the kernels, shaped like x's last k dims: None, or
    as _in_compute_dtype returns it."""
    cdef cnp.ndarray a
    if p is None:
        return None
    if not cnp.PyArray_CheckExact(p):
        return NotImplemented
    a = <cnp.ndarray>p
    if not _c_aligned(a) or not cnp.PyArray_ISNOTSWAPPED(a):
        return NotImplemented
    if not _same_dims(a, x, cnp.PyArray_NDIM(x) - k):
        return NotImplemented
    return _in_compute_dtype(a, cnp.PyArray_TYPE(x), ctype, n_threads)


cdef object _fast_output(cnp.ndarray a, object out):
    """The output of a row op on x = a: new, x itself (in place), or a
    separate contiguous `out`; None when the general path must handle it."""
    cdef cnp.ndarray o
    cdef char* xs
    cdef char* os_
    cdef Py_ssize_t nbytes
    if out is None:
        return empty_array(cnp.PyArray_NDIM(a), cnp.PyArray_DIMS(a), cnp.PyArray_TYPE(a))
    if out is a:
        return a if cnp.PyArray_ISWRITEABLE(a) else None
    if not _fast_array(out, cnp.PyArray_TYPE(a)):
        return None
    o = <cnp.ndarray>out
    if not cnp.PyArray_ISWRITEABLE(o) or not _same_dims(o, a, 0):
        return None
    # both are contiguous blocks of the same size: they overlap unless one ends
    # before the other starts (partial overlap is left to the general path)
    xs = <char*>cnp.PyArray_DATA(a)
    os_ = <char*>cnp.PyArray_DATA(o)
    nbytes = cnp.PyArray_NBYTES(a)
    if xs == os_ or (os_ + nbytes > xs and xs + nbytes > os_):
        return None
    return out


cdef inline bint _fast_real(object v, double* out):
    """v as a double when it is a Python float, or an int a double holds
    exactly; False otherwise (then the general path converts it, and names
    the argument if it does not fit a float64)."""
    if type(v) is float:
        out[0] = <double>v
        return True
    if type(v) is int and -(1 << 53) <= v <= (1 << 53):
        out[0] = <double><long long>v
        return True
    return False


cdef inline bint _fast_eps(object eps, double* e):
    """eps as a double when it is a Python number (_fast_real) >= 0."""
    return _fast_real(eps, e) and e[0] >= 0.0


cdef object _stats_like_lead(cnp.ndarray x, int k, int ctype):
    return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(x) - k, cnp.PyArray_DIMS(x), ctype, 0)


def layer_norm_fast(object x, object normalized_shape, object weight, object bias, object eps,
                    object out, object n_threads, bint return_stats):
    cdef Py_ssize_t M, n
    cdef double e = 0.0
    cdef cnp.ndarray xa
    if not cnp.PyArray_CheckExact(x):
        return NotImplemented
    xa = <cnp.ndarray>x
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef int ctype = _kernel_typenum(typenum)
    if ctype < 0 or not _fast_array(x, typenum):
        return NotImplemented
    cdef int k = _fast_norm_dims(normalized_shape, xa, &n)
    if k < 0 or n < 1 or not _fast_eps(eps, &e):
        return NotImplemented
    cdef object wa = _fast_param(weight, xa, k, ctype, n_threads)
    cdef object ba = _fast_param(bias, xa, k, ctype, n_threads)
    if wa is NotImplemented or ba is NotImplemented:
        return NotImplemented
    cdef object y = _fast_output(xa, out)
    if y is None or not _out_clear(out, wa, ba):
        return NotImplemented
    M = cnp.PyArray_SIZE(xa) // n
    cdef int nth = resolve_threads(n_threads, _row_work(M, n, False))
    cdef object mean = _stats_like_lead(xa, k, ctype) if return_stats else None
    cdef object rstd = _stats_like_lead(xa, k, ctype) if return_stats else None
    cdef Py_ssize_t rs = n * cnp.PyArray_ITEMSIZE(xa)
    if M > 0:
        _ln_run(typenum, <const char*>cnp.PyArray_DATA(xa), rs, <char*>cnp.PyArray_DATA(<cnp.ndarray>y),
                rs, M, n, _ptr_or_null(wa), _ptr_or_null(ba), e, _ptr_or_null(mean),
                _ptr_or_null(rstd), nth)
    if return_stats:
        return y, mean, rstd
    return y


def rms_norm_fast(object x, object normalized_shape, object weight, object eps,
                  object out, object n_threads, bint return_stats):
    cdef Py_ssize_t M, n
    cdef double e = 0.0
    cdef cnp.ndarray xa
    if not cnp.PyArray_CheckExact(x):
        return NotImplemented
    xa = <cnp.ndarray>x
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef int ctype = _kernel_typenum(typenum)
    if ctype < 0 or not _fast_array(x, typenum):
        return NotImplemented
    cdef int k = _fast_norm_dims(normalized_shape, xa, &n)
    if k < 0 or n < 1:
        return NotImplemented
    if eps is None:  # torch: the machine epsilon of the compute dtype
        e = 2.220446049250313e-16 if ctype == cnp.NPY_FLOAT64 else 1.1920928955078125e-07
    elif not _fast_eps(eps, &e):
        return NotImplemented
    cdef object wa = _fast_param(weight, xa, k, ctype, n_threads)
    if wa is NotImplemented:
        return NotImplemented
    cdef object y = _fast_output(xa, out)
    if y is None or not _out_clear(out, wa):
        return NotImplemented
    M = cnp.PyArray_SIZE(xa) // n
    cdef int nth = resolve_threads(n_threads, _row_work(M, n, False))
    cdef object rstd = _stats_like_lead(xa, k, ctype) if return_stats else None
    cdef Py_ssize_t rs = n * cnp.PyArray_ITEMSIZE(xa)
    if M > 0:
        _rms_run(typenum, <const char*>cnp.PyArray_DATA(xa), rs, <char*>cnp.PyArray_DATA(<cnp.ndarray>y),
                 rs, M, n, _ptr_or_null(wa), e, _ptr_or_null(rstd), nth)
    if return_stats:
        return y, rstd
    return y


cdef object _param_grad(object g, object p):
    """A parameter's gradient (computed in the compute dtype) in p's dtype."""
    cdef cnp.ndarray pa, out
    cdef bint dbl
    if g is None:
        return None
    pa = <cnp.ndarray>p
    if cnp.PyArray_TYPE(pa) == cnp.PyArray_TYPE(<cnp.ndarray>g):
        return g.reshape(p.shape) if cnp.PyArray_NDIM(pa) != 1 else g
    out = empty_array(cnp.PyArray_NDIM(pa), cnp.PyArray_DIMS(pa), cnp.PyArray_TYPE(pa))
    fn_narrow(storage_of(cnp.PyArray_TYPE(pa), &dbl), <const float*>cnp.PyArray_DATA(<cnp.ndarray>g),
              cnp.PyArray_DATA(out), cnp.PyArray_SIZE(pa))
    return out


cdef inline bint _is_lead(object stat, cnp.ndarray x, int k):
    """stat (already checked to be a contiguous ndarray) has x's leading dims
    (all but the last k)."""
    cdef cnp.ndarray a = <cnp.ndarray>stat
    cdef int i
    if cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(x) - k:
        return False
    for i in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIMS(a)[i] != cnp.PyArray_DIMS(x)[i]:
            return False
    return True


cdef object _backward_fast(bint rms, object grad_out, object x, object mean, object rstd,
                           object weight, object bias, object n_threads):
    """Fast path of layer_norm_backward / rms_norm_backward (see the forward's).
    The normalized dims are weight's (or bias's), else those the stats lack."""
    cdef cnp.ndarray xa
    cdef int typenum, ctype, nd, k, i
    cdef Py_ssize_t n = 1, M
    if not cnp.PyArray_CheckExact(x):
        return NotImplemented
    xa = <cnp.ndarray>x
    nd = cnp.PyArray_NDIM(xa)
    typenum = cnp.PyArray_TYPE(xa)
    ctype = _kernel_typenum(typenum)
    if (ctype < 0 or not _fast_array(x, typenum) or not _fast_array(grad_out, typenum)
            or not _same_dims(<cnp.ndarray>grad_out, xa, 0) or not _fast_array(rstd, ctype)
            or (not rms and not _fast_array(mean, ctype))):
        return NotImplemented
    if weight is not None and cnp.PyArray_CheckExact(weight):
        k = cnp.PyArray_NDIM(<cnp.ndarray>weight)
    elif bias is not None and cnp.PyArray_CheckExact(bias):
        k = cnp.PyArray_NDIM(<cnp.ndarray>bias)
    elif weight is None and bias is None:
        k = nd - cnp.PyArray_NDIM(<cnp.ndarray>rstd)
    else:
        return NotImplemented
    if k < 1 or k > nd or not _is_lead(rstd, xa, k) or (not rms and not _is_lead(mean, xa, k)):
        return NotImplemented
    for i in range(nd - k, nd):
        n *= cnp.PyArray_DIMS(xa)[i]
    if n < 1:
        return NotImplemented
    cdef object wa = _fast_param(weight, xa, k, ctype, n_threads)
    cdef object ba = _fast_param(bias, xa, k, ctype, n_threads)
    if wa is NotImplemented or ba is NotImplemented:
        return NotImplemented
    M = cnp.PyArray_SIZE(xa) // n
    cdef object grad_x = empty_array(nd, cnp.PyArray_DIMS(xa), typenum)
    cdef cnp.npy_intp dn = n
    cdef object grad_w = empty_array(1, &dn, ctype) if weight is not None else None
    cdef object grad_b = empty_array(1, &dn, ctype) if bias is not None else None
    cdef int nth = resolve_threads(n_threads, _row_work(M, n, True))
    cdef Py_ssize_t rs = n * cnp.PyArray_ITEMSIZE(xa)
    _norm_backward_run(rms, typenum, <const char*>cnp.PyArray_DATA(<cnp.ndarray>grad_out), rs,
                       <const char*>cnp.PyArray_DATA(xa), rs,
                       <char*>cnp.PyArray_DATA(<cnp.ndarray>grad_x), rs, M, n,
                       NULL if rms else cnp.PyArray_DATA(<cnp.ndarray>mean),
                       cnp.PyArray_DATA(<cnp.ndarray>rstd), _ptr_or_null(wa), _ptr_or_null(grad_w),
                       _ptr_or_null(grad_b), nth)
    if rms:
        return grad_x, _param_grad(grad_w, weight)
    return grad_x, _param_grad(grad_w, weight), _param_grad(grad_b, bias)


def layer_norm_backward_fast(object grad_out, object x, object mean, object rstd,
                             object weight, object bias, object n_threads):
    return _backward_fast(False, grad_out, x, mean, rstd, weight, bias, n_threads)


def rms_norm_backward_fast(object grad_out, object x, object rstd, object weight, object n_threads):
    return _backward_fast(True, grad_out, x, None, rstd, weight, None, n_threads)
# A float32 factor outside 2^-100..2^100 (a scale from a denormal or huge
# row) takes its products in double: in float32 they would overflow or fall
# into the denormals; used by the weight_norm and LRN rows.
cdef double FLOAT_FACTOR_LO = 7.888609052210118e-31   # 2^-100
cdef double FLOAT_FACTOR_HI = 1.2676506002282294e30   # 2^100
# the same bounds for the Python-level passes (functional.mixed)
FLOAT_FACTOR_RANGE = (FLOAT_FACTOR_LO, FLOAT_FACTOR_HI)


cdef inline bint _in_float_range(double s) noexcept nogil:
    """s is 0 or |s| within FLOAT_FACTOR_LO..FLOAT_FACTOR_HI."""
    return s == 0 or (fabs(s) <= FLOAT_FACTOR_HI and fabs(s) >= FLOAT_FACTOR_LO)


include "_channel_kernels.pxi"
include "_feature_kernels.pxi"
include "_normalize_kernels.pxi"


# --------------------------------------------------------------------------
# fused residual add + norm (inference): h = x + residual, y = norm(h), one
# pass over memory: each row's h is written out and normalized from L1.
# --------------------------------------------------------------------------

cdef void _add_norm_rows(bint rms, const char* xb, Py_ssize_t xs, const char* rb, Py_ssize_t rs,
                         char* hb, Py_ssize_t hs, char* yb, Py_ssize_t ys,
                         Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n,
                         const floating* w, const floating* b, double eps,
                         floating* mean, floating* rstd, bint stream,
                         int storage, floating* scratch) noexcept nogil:
    """h = x + residual, y = norm(h) over rows [r0, r1).  With 16-bit storage
    h is normalized as stored (rounded), so y = norm(h) holds for the h the
    caller gets."""
    cdef Py_ssize_t r, k
    cdef const floating* x
    cdef const floating* res
    cdef floating* h
    cdef floating* y
    cdef double m, s
    for r in range(r0, r1):
        x = _row_in(storage, scratch, 0, n, xb + r * xs)
        res = _row_in(storage, scratch, 1, n, rb + r * rs)
        h = _row_out(storage, scratch, 2, n, hb + r * hs)
        for k in range(n):
            h[k] = x[k] + res[k]
        if storage != ST_NATIVE:
            _row_done(storage, scratch, 2, n, hb + r * hs)
            h = <floating*>_row_in(storage, scratch, 2, n, hb + r * hs)
        y = _row_out(storage, scratch, 3, n, yb + r * ys)
        if rms:
            s = 1.0 / sqrt(_sum_squares(h, n) / n + eps)
            _rms_normalize_segment(h, y, n, w, <floating>s, stream)
        else:
            _ln_forward_row(h, y, n, w, b, eps, &m, &s, stream)
            if mean != NULL:
                mean[r] = <floating>m
        _row_done(storage, scratch, 3, n, yb + r * ys)
        if rstd != NULL:
            rstd[r] = <floating>s
    if stream:
        fastnorm_stream_fence()


def add_norm_forward(bint rms, cnp.ndarray x, cnp.ndarray residual, cnp.ndarray h, cnp.ndarray y,
                     object weight, object bias, double eps, object mean, object rstd,
                     object n_threads):
    """x, residual, h, y: (M, n) with contiguous rows (h may be residual or x
    itself: each row is read before it is written)."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef bint dbl
    cdef int storage = storage_of(typenum, &dbl)
    cdef Py_ssize_t M = x.shape[0], n = x.shape[1]
    _check_rows(x, typenum, M, n, "x")
    _check_rows(residual, typenum, M, n, "residual")
    _check_rows(h, typenum, M, n, "h")
    _check_rows(y, typenum, M, n, "y")
    cdef int nth = resolve_threads(n_threads, _row_work(M, n, False))
    cdef const char* xb = <const char*>cnp.PyArray_DATA(x)
    cdef const char* rb = <const char*>cnp.PyArray_DATA(residual)
    cdef char* hb = <char*>cnp.PyArray_DATA(h)
    cdef char* yb = <char*>cnp.PyArray_DATA(y)
    cdef Py_ssize_t xs = x.strides[0], rs = residual.strides[0], hs = h.strides[0], ys = y.strides[0]
    if M == 0 or n == 0:
        return
    _add_norm_run(rms, storage, dbl, xb, xs, rb, rs, hb, hs, yb, ys, M, n, _ptr_or_null(weight),
                  _ptr_or_null(bias), eps, _ptr_or_null(mean), _ptr_or_null(rstd), nth)


cdef int _add_norm_run(bint rms, int storage, bint dbl, const char* xb, Py_ssize_t xs,
                       const char* rb, Py_ssize_t rs, char* hb, Py_ssize_t hs, char* yb,
                       Py_ssize_t ys, Py_ssize_t M, Py_ssize_t n, void* w, void* b, double eps,
                       void* mp, void* rp, int nth) except -1:
    """The typed dispatch of the fused add + norm over M >= 1 rows of n >= 1."""
    cdef bint stream = storage == ST_NATIVE and _use_streaming(M, n, 8 if dbl else 4)
    cdef int c
    cdef Py_ssize_t r0, r1
    cdef float* scratch = NULL
    if nth > M:
        nth = <int>M
    scratch = _stage_scratch(storage, nth, 4, n)
    if storage != ST_NATIVE and scratch == NULL:
        raise MemoryError("fastnorm: could not allocate the staging rows")
    if not dbl:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                r0 = _part_start(M, nth, c)
                r1 = _part_start(M, nth, c + 1)
                _add_norm_rows[float](rms, xb, xs, rb, rs, hb, hs, yb, ys, r0, r1, n,
                                      <const float*>w, <const float*>b, eps,
                                      <float*>mp, <float*>rp, stream,
                                      storage, scratch + c * 4 * n if scratch != NULL else NULL)
    else:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                r0 = _part_start(M, nth, c)
                r1 = _part_start(M, nth, c + 1)
                _add_norm_rows[double](rms, xb, xs, rb, rs, hb, hs, yb, ys, r0, r1, n,
                                       <const double*>w, <const double*>b, eps,
                                       <double*>mp, <double*>rp, stream, storage, NULL)
    scratch_free(scratch)
    return 0


cdef object _fast_add_output(object target, cnp.ndarray x, object residual, object other,
                             object weight, object bias):
    """Where the fused add + norm writes one of its outputs: a new array, x or
    residual themselves (each row is read before it is written), or a
    separate writeable contiguous array clear of every other argument; None
    when the general path must decide."""
    if target is None:
        return empty_array(cnp.PyArray_NDIM(x), cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x))
    if target is x or target is residual:
        return target if cnp.PyArray_ISWRITEABLE(<cnp.ndarray>target) else None
    if (not _fast_array(target, cnp.PyArray_TYPE(x)) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>target)
            or not _same_dims(<cnp.ndarray>target, x, 0)):
        return None
    if (_bytes_overlap(target, x) or _bytes_overlap(target, residual)
            or (other is not None and cnp.PyArray_CheckExact(other) and _bytes_overlap(target, other))
            or (weight is not None and _bytes_overlap(target, weight))
            or (bias is not None and _bytes_overlap(target, bias))):
        return None
    return target


def add_norm_fast(bint rms, object x, object residual, object normalized_shape, object weight,
                  object bias, object eps, object out, object residual_out, object n_threads,
                  bint return_stats):
    """Fast path of add_layer_norm / add_rms_norm (see layer_norm_fast)."""
    cdef Py_ssize_t M, n
    cdef double e = 0.0
    cdef cnp.ndarray xa
    cdef bint dbl
    if (out is not None and out is residual_out) or not cnp.PyArray_CheckExact(x):
        return NotImplemented
    xa = <cnp.ndarray>x
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef int ctype = _kernel_typenum(typenum)
    if (ctype < 0 or not _fast_array(x, typenum) or not _fast_array(residual, typenum)
            or not _same_dims(<cnp.ndarray>residual, xa, 0)):
        return NotImplemented
    cdef int k = _fast_norm_dims(normalized_shape, xa, &n)
    if k < 0 or n < 1:
        return NotImplemented
    if rms and eps is None:
        e = 2.220446049250313e-16 if ctype == cnp.NPY_FLOAT64 else 1.1920928955078125e-07
    elif not _fast_eps(eps, &e):
        return NotImplemented
    cdef object wa = _fast_param(weight, xa, k, ctype, n_threads)
    cdef object ba = None if rms else _fast_param(bias, xa, k, ctype, n_threads)
    if wa is NotImplemented or ba is NotImplemented:
        return NotImplemented
    M = cnp.PyArray_SIZE(xa) // n
    cdef object y = _fast_add_output(out, xa, residual, residual_out, wa, ba)
    cdef object h = _fast_add_output(residual_out, xa, residual, out, wa, ba)
    if y is None or h is None:
        return NotImplemented
    cdef object mean = _stats_like_lead(xa, k, ctype) if return_stats and not rms else None
    cdef object rstd = _stats_like_lead(xa, k, ctype) if return_stats else None
    cdef int nth = resolve_threads(n_threads, _row_work(M, n, False))
    cdef int storage = storage_of(typenum, &dbl)
    cdef Py_ssize_t row = n * cnp.PyArray_ITEMSIZE(xa)
    if M > 0:
        _add_norm_run(rms, storage, dbl, <const char*>cnp.PyArray_DATA(xa), row,
                      <const char*>cnp.PyArray_DATA(<cnp.ndarray>residual), row,
                      <char*>cnp.PyArray_DATA(<cnp.ndarray>h), row,
                      <char*>cnp.PyArray_DATA(<cnp.ndarray>y), row, M, n, _ptr_or_null(wa),
                      _ptr_or_null(ba), e, _ptr_or_null(mean), _ptr_or_null(rstd), nth)
    if not return_stats:
        return y, h
    if rms:
        return y, h, rstd
    return y, h, mean, rstd
include "_frn_kernels.pxi"
include "_lrn_kernels.pxi"
include "_pointwise_kernels.pxi"
include "_stdnorm_kernels.pxi"
