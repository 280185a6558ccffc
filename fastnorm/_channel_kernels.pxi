# Channel normalizations (BatchNorm, GroupNorm, InstanceNorm): included by
# _kernels.pxi, so compiled into every instruction-set build.
#
# One engine serves the three ops.  x is seen as N samples x C channels x S
# positions, in one of two memory layouts:
#   channels-first (CF): contiguous (N, C, S); block (n, c) is S contiguous values;
#   channels-last  (CL): contiguous (N, S, C); each position is a row of C values.
# A statistic ("stat") pools the values of several (n, c) blocks:
#   BatchNorm:    stat = c                      (per_sample=0, cpg=1)
#   GroupNorm:    stat = n * G + c // cpg       (per_sample=1, cpg=C/G)
#   InstanceNorm: stat = n * C + c              (per_sample=1, cpg=1)
# The reductions are split into "units" (CF: one (n, c) block; CL: a chunk of
# rows, one per thread for BatchNorm or one sample for Group/InstanceNorm),
# each producing per-channel moments about a shift (the unit's first values);
# units are merged into stats in a fixed order with Chan's formula, so
# results are deterministic for a given thread count.  The elementwise passes
# use, per (n, c), y = ((x - hi) - lo) * a + b, where hi + lo is the mean
# split in two floats (exact centering for large offsets in float32).

from libc.string cimport memcpy
from libc.math cimport INFINITY, isfinite

cdef enum:
    CL_FLUSH_ROWS = 16       # tiles accumulated in `floating` before a flush to double
    TILE_ELEMS = 1024        # values per channels-last tile (see _tile_rows)
    PANEL_ROW_BYTES = 1024   # longest rows for the register panels (see _panels)


cdef inline bint _panels(Py_ssize_t C, size_t itemsize) noexcept nogil:
    """Whether rows of C values take the register-panel kernels of _panels.h
    (rows of up to PANEL_ROW_BYTES) rather than the flat tiles below."""
    return C * itemsize <= PANEL_ROW_BYTES


cdef inline Py_ssize_t _stat_of(Py_ssize_t n, Py_ssize_t c, bint per_sample,
                                Py_ssize_t C, Py_ssize_t cpg) noexcept nogil:
    return (n * (C // cpg) if per_sample else 0) + c // cpg


cdef inline void _merge_moments(double* count, double* mean, double* m2,
                                double n_b, double mean_b, double m2_b) noexcept nogil:
    """Chan et al.'s pairwise update: (count, mean, m2) absorbs a part."""
    cdef double n, delta
    if n_b == 0:
        return
    n = count[0] + n_b
    delta = mean_b - mean[0]
    mean[0] = mean[0] + delta * (n_b / n)
    m2[0] = m2[0] + m2_b + delta * delta * (count[0] * n_b / n)
    count[0] = n


cdef inline void _block_backward_sums(const floating* g, const floating* x, Py_ssize_t n,
                                      floating hi, floating lo,
                                      double* sum_g, double* sum_gt, double* sum_t) noexcept nogil:
    """Sums of g, g*t and t over a block, t = (x - hi) - lo (float32:
    rows16.h's fn_block_backward_sums_f32, the 16-bit kernels' own code)."""
    cdef floating acc_a[LANES]
    cdef floating acc_b[LANES]
    cdef floating acc_c[LANES]
    cdef double lanes_a[LANES]
    cdef double lanes_b[LANES]
    cdef double lanes_c[LANES]
    cdef floating t, gk, ra, rb, rc
    cdef Py_ssize_t i = 0, k, end, vend
    cdef int j, cut
    if floating is float:
        fn_block_backward_sums_f32(g, x, n, hi, lo, sum_g, sum_gt, sum_t)
        return
    if n < LANES:  # the tail loop alone
        ra = 0
        rb = 0
        rc = 0
        for k in range(n):
            t = (x[k] - hi) - lo
            ra += g[k]
            rb += g[k] * t
            rc += t
        sum_g[0] = <double>ra
        sum_gt[0] = <double>rb
        sum_t[0] = <double>rc
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
        while k < vend:
            for j in range(LANES):
                t = (x[k + j] - hi) - lo
                acc_a[j] += g[k + j]
                acc_b[j] += g[k + j] * t
                acc_c[j] += t
            k += LANES
        if vend < end:  # the partial last lane block, as a whole one (_tail_start)
            k = end - LANES
            cut = _tail_start(vend, end)
            for j in range(LANES):
                t = (x[k + j] - hi) - lo
                gk = g[k + j]
                t = t if j >= cut else 0
                gk = gk if j >= cut else 0
                acc_a[j] += gk
                acc_b[j] += gk * t
                acc_c[j] += t
        _lanes_flush(acc_a, lanes_a)
        _lanes_flush(acc_b, lanes_b)
        _lanes_flush(acc_c, lanes_c)
        i = end
    sum_g[0] = _lanes_total(lanes_a)
    sum_gt[0] = _lanes_total(lanes_b)
    sum_t[0] = _lanes_total(lanes_c)


cdef inline void _block_affine(const floating* x, floating* y, Py_ssize_t n,
                               floating hi, floating a, floating b) noexcept nogil:
    """y = (x - hi) * a + b (the low part of the mean is folded into b)."""
    cdef Py_ssize_t k
    if hi == 0:
        for k in range(n):
            y[k] = x[k] * a + b
    else:
        for k in range(n):
            y[k] = (x[k] - hi) * a + b


cdef inline void _block_backward(const floating* g, const floating* x, floating* dx, Py_ssize_t n,
                                 floating hi, floating alpha, floating beta,
                                 floating gamma) noexcept nogil:
    """dx = alpha * g + beta * (x - hi) + gamma (the mean's low part folded into gamma)."""
    cdef Py_ssize_t k
    if beta == 0 and gamma == 0:
        for k in range(n):
            dx[k] = alpha * g[k]
    else:
        for k in range(n):
            dx[k] = alpha * g[k] + (beta * (x[k] - hi) + gamma)


cdef inline Py_ssize_t _tile_rows(Py_ssize_t C) noexcept nogil:
    """Rows per tile: a tile is TILE_ELEMS values (whole rows) handled as one
    flat, long, vectorizable loop against coefficient vectors repeated
    row after row; rows of many channels are their own tile."""
    return TILE_ELEMS // C if C < TILE_ELEMS else 1


cdef inline Py_ssize_t _tile_stride(Py_ssize_t C) noexcept nogil:
    """Distance between the tile arrays of one scratch buffer: whole cache
    lines (the buffers are 64-byte aligned, see _aligned) and three more, so
    that the arrays do not sit a multiple of 4 KiB apart (loads of one and
    stores to another would falsely alias in the L1 cache)."""
    cdef Py_ssize_t n = _tile_rows(C) * C
    return ((n + 15) // 16) * 16 + 48  # whole cache lines, plus three


cdef inline void* _aligned(void* p) noexcept nogil:
    """p rounded up to a 64-byte boundary (allocate 64 bytes more)."""
    return <void*>((<size_t>p + 63) & ~(<size_t>63))


cdef inline void _tile(floating* dst, const floating* src, Py_ssize_t C, Py_ssize_t m) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(m):
        memcpy(dst + i * C, src, C * sizeof(floating))


cdef void _rows_moments(const char* xb, int st, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                        const floating* shift, floating* work,
                        double* sum_dev, double* sum_sq) noexcept nogil:
    """Per channel over rows r0..r1 of a (rows, C) array: sums of d and d^2,
    d = x - shift[c] (_rows_moments_lanes), each channel's summed again in
    double where float32 lanes left their range (simd.h's fn_sums_in_range)."""
    cdef Py_ssize_t c, item = 2 if st != ST_NATIVE else sizeof(floating)
    _rows_moments_lanes(xb, st, r0, r1, C, shift, work, sum_dev, sum_sq)
    if floating is float:
        for c in range(C):
            fn_guard_shifted_sums(st, xb + (r0 * C + c) * item, r1 - r0, C, shift[c],
                                  &sum_dev[c], &sum_sq[c])


cdef void _rows_moments_lanes(const char* xb, int st, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                              const floating* shift, floating* work,
                              double* sum_dev, double* sum_sq) noexcept nogil:
    """Per channel over rows r0..r1 of a (rows, C) array: sums of d and d^2,
    d = x - shift[c].  Tiles of m rows are accumulated in `floating` (one
    accumulator per tile element), flushed to double every CL_FLUSH_ROWS tiles.
    work: 3 * m * C scratch (m = _tile_rows(C))."""
    cdef Py_ssize_t ts = _tile_stride(C)
    cdef Py_ssize_t m = _tile_rows(C), L, r, k, c, i
    cdef floating* sh = work
    cdef floating* acc_d = work + ts
    cdef floating* acc_q = work + 2 * ts
    cdef const floating* p
    cdef floating d
    cdef int pending = 0
    cdef const floating* x = <const floating*>xb
    if st != ST_NATIVE:  # 16-bit rows always take the panels (widened in registers)
        fastnorm_cl_moments16(st, xb, r0, r1, C, <const float*>shift, sum_dev, sum_sq)
        return
    if _panels(C, sizeof(floating)):
        if floating is float:
            fastnorm_cl_moments_f(x, r0, r1, C, shift, sum_dev, sum_sq)
        else:
            fastnorm_cl_moments_d(x, r0, r1, C, shift, sum_dev, sum_sq)
        return
    L = m * C
    _tile(sh, shift, C, m)
    for c in range(C):
        sum_dev[c] = 0
        sum_sq[c] = 0
    for k in range(L):
        acc_d[k] = 0
        acc_q[k] = 0
    r = r0
    while r < r1:
        if r + m <= r1:
            p = x + r * C
            for k in range(L):
                d = p[k] - sh[k]
                acc_d[k] += d
                acc_q[k] += d * d
            r += m
        else:  # the last rows: one at a time (the first C tile slots)
            p = x + r * C
            for c in range(C):
                d = p[c] - sh[c]
                acc_d[c] += d
                acc_q[c] += d * d
            r += 1
        pending += 1
        if pending == CL_FLUSH_ROWS or r >= r1:
            for i in range(m):
                for c in range(C):
                    sum_dev[c] += acc_d[i * C + c]
                    sum_sq[c] += acc_q[i * C + c]
            for k in range(L):
                acc_d[k] = 0
                acc_q[k] = 0
            pending = 0


cdef void _rows_backward_sums(const char* gb_, const char* xb, int st, Py_ssize_t r0, Py_ssize_t r1,
                              Py_ssize_t C, const floating* hi,
                              floating* work, double* sums) noexcept nogil:
    """Per channel over rows r0..r1: sums of g, g*t and t, t = x - hi[c].
    work: 5 * m * C scratch; sums: 3*C output (g, g*t, t)."""
    cdef Py_ssize_t ts = _tile_stride(C)
    cdef Py_ssize_t m = _tile_rows(C), L, r, k, c, i, n_k
    cdef floating* thi = work
    cdef floating* acc_a = work + 2 * ts
    cdef floating* acc_b = work + 3 * ts
    cdef floating* acc_c = work + 4 * ts
    cdef const floating* gp
    cdef const floating* xp
    cdef floating t
    cdef int pending = 0
    cdef const floating* g = <const floating*>gb_
    cdef const floating* x = <const floating*>xb
    if st != ST_NATIVE:
        fastnorm_cl_backward_sums16(st, gb_, xb, r0, r1, C, <const float*>hi, sums)
        return
    if _panels(C, sizeof(floating)):
        if floating is float:
            fastnorm_cl_backward_sums_f(g, x, r0, r1, C, hi, sums)
        else:
            fastnorm_cl_backward_sums_d(g, x, r0, r1, C, hi, sums)
        return
    L = m * C
    _tile(thi, hi, C, m)
    for c in range(3 * C):
        sums[c] = 0
    for k in range(L):
        acc_a[k] = 0
        acc_b[k] = 0
        acc_c[k] = 0
    r = r0
    while r < r1:
        n_k = L if r + m <= r1 else C
        gp = g + r * C
        xp = x + r * C
        for k in range(n_k):
            t = xp[k] - thi[k]
            acc_a[k] += gp[k]
            acc_b[k] += gp[k] * t
            acc_c[k] += t
        r += m if n_k == L else 1
        pending += 1
        if pending == CL_FLUSH_ROWS or r >= r1:
            for i in range(m):
                for c in range(C):
                    sums[c] += acc_a[i * C + c]
                    sums[C + c] += acc_b[i * C + c]
                    sums[2 * C + c] += acc_c[i * C + c]
            for k in range(L):
                acc_a[k] = 0
                acc_b[k] = 0
                acc_c[k] = 0
            pending = 0


cdef void _rows_affine(const char* xb, char* yb, int st, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                       const floating* hi, const floating* a,
                       const floating* b, floating* work, bint stream) noexcept nogil:
    """y[r, c] = (x[r, c] - hi[c]) * a[c] + b[c] for rows r0..r1
    (work: 4 * m * C scratch)."""
    cdef Py_ssize_t ts = _tile_stride(C)
    cdef Py_ssize_t m = _tile_rows(C), L, r, k, n_k
    cdef floating* thi = work
    cdef floating* ta = work + 2 * ts
    cdef floating* tb = work + 3 * ts
    cdef const floating* xp
    cdef floating* yp
    cdef const floating* x = <const floating*>xb
    cdef floating* y = <floating*>yb
    if st != ST_NATIVE:
        stream = stream and fastnorm_cl_stream_ok(yb + 2 * r0 * C, C, 2)
        fastnorm_cl_affine16(st, xb, yb, r0, r1, C, <const float*>hi, <const float*>a,
                             <const float*>b, stream)
        return
    if _panels(C, sizeof(floating)) and (not stream or fastnorm_cl_stream_ok(y + r0 * C, C, sizeof(floating))):
        if floating is float:
            fastnorm_cl_affine_f(x, y, r0, r1, C, hi, a, b, stream)
        else:
            fastnorm_cl_affine_d(x, y, r0, r1, C, hi, a, b, stream)
        return
    L = m * C
    _tile(thi, hi, C, m)
    _tile(ta, a, C, m)
    _tile(tb, b, C, m)
    cdef bint centred = False
    for k in range(C):
        if hi[k] != 0:
            centred = True
    r = r0
    while r < r1:
        n_k = L if r + m <= r1 else C
        xp = x + r * C
        yp = y + r * C
        if stream and floating is float and centred:
            fastnorm_affine_stream_v(<const float*>xp, <float*>yp, n_k, <const float*>thi,
                                     <const float*>ta, <const float*>tb)
        elif stream and floating is float:
            fastnorm_scale_shift_stream_v(<const float*>xp, <float*>yp, n_k, <const float*>ta,
                                          <const float*>tb)
        elif centred:
            for k in range(n_k):
                yp[k] = (xp[k] - thi[k]) * ta[k] + tb[k]
        else:  # folded running statistics: one scale-and-shift
            for k in range(n_k):
                yp[k] = xp[k] * ta[k] + tb[k]
        r += m if n_k == L else 1


cdef void _rows_backward(const char* gb_, const char* xb, char* db, int st, Py_ssize_t r0,
                         Py_ssize_t r1, Py_ssize_t C, const floating* hi,
                         const floating* alpha, const floating* beta, const floating* gamma,
                         floating* work, bint stream) noexcept nogil:
    """dx = alpha*g + beta*(x - hi) + gamma per channel (work: 5 * m * C)."""
    cdef Py_ssize_t ts = _tile_stride(C)
    cdef Py_ssize_t m = _tile_rows(C), L, r, k, n_k
    cdef floating* thi = work
    cdef floating* tal = work + 2 * ts
    cdef floating* tbe = work + 3 * ts
    cdef floating* tga = work + 4 * ts
    cdef const floating* gp
    cdef const floating* xp
    cdef floating* dp
    cdef bint centred = False
    cdef const floating* g = <const floating*>gb_
    cdef const floating* x = <const floating*>xb
    cdef floating* dx = <floating*>db
    for k in range(C):
        if beta[k] != 0 or gamma[k] != 0:
            centred = True
    if st != ST_NATIVE:
        stream = stream and fastnorm_cl_stream_ok(db + 2 * r0 * C, C, 2)
        fastnorm_cl_backward16(st, gb_, xb, db, r0, r1, C, <const float*>hi, <const float*>alpha,
                               <const float*>beta, <const float*>gamma, centred, stream)
        return
    if _panels(C, sizeof(floating)) and (not stream or fastnorm_cl_stream_ok(dx + r0 * C, C, sizeof(floating))):
        if floating is float:
            fastnorm_cl_backward_f(g, x, dx, r0, r1, C, hi, alpha, beta, gamma, centred, stream)
        else:
            fastnorm_cl_backward_d(g, x, dx, r0, r1, C, hi, alpha, beta, gamma, centred, stream)
        return
    L = m * C
    _tile(thi, hi, C, m)
    _tile(tal, alpha, C, m)
    _tile(tbe, beta, C, m)
    _tile(tga, gamma, C, m)
    r = r0
    while r < r1:
        n_k = L if r + m <= r1 else C
        gp = g + r * C
        xp = x + r * C
        dp = dx + r * C
        if stream and floating is float and not centred:
            fastnorm_mul_stream_v(<const float*>gp, <float*>dp, n_k, <const float*>tal)
        elif stream and floating is float:
            fastnorm_backward_stream_v(<const float*>gp, <const float*>xp, <float*>dp, n_k,
                                       <const float*>thi, <const float*>tal,
                                       <const float*>tbe, <const float*>tga)
        elif not centred:  # running statistics: dx = alpha * g (x must not enter: inf * 0)
            for k in range(n_k):
                dp[k] = tal[k] * gp[k]
        else:
            for k in range(n_k):
                dp[k] = tal[k] * gp[k] + (tbe[k] * (xp[k] - thi[k]) + tga[k])
        r += m if n_k == L else 1


# ---------------------------------------------------------------- storage dispatch
# The drivers below address data as bytes (`const char*`, `isz` bytes per
# value: sizeof(floating), or 2 for float16 / bfloat16 storage, which is
# computed in float); these send a block to the kernel of its storage.

cdef inline Py_ssize_t _itemsize(int st, Py_ssize_t native) noexcept nogil:
    return native if st == ST_NATIVE else 2


# A statistic whose rstd lies outside [2^-50, 2^50] (values beyond ~2^50 or
# under ~2^-50) has a backward coefficient beta ~ rstd^2 outside float32's
# range: its elementwise pass runs again in double (_affine_exact) after the
# vector pass, with the coefficients in double.
cdef double RSTD_FLOAT_LO = 8.881784197001252e-16   # 2^-50
cdef double RSTD_FLOAT_HI = 1.125899906842624e15    # 2^50


cdef inline bint _rstd_out_of_float(double rstd) noexcept nogil:
    return not ((rstd >= RSTD_FLOAT_LO) & (rstd <= RSTD_FLOAT_HI))


cdef void _affine_exact(int st, const char* g, const char* x, char* dx, Py_ssize_t n,
                        Py_ssize_t stride, double hi, double a, double b, double c) noexcept nogil:
    """dx = a * g + b * (x - hi) + c over n float32 / 16-bit values `stride`
    apart, in double (rounded once when stored)."""
    cdef Py_ssize_t k
    for k in range(n):
        fn_st1(st, dx, k * stride, <float>(a * fn_ld1(st, g, k * stride)
                                           + b * (<double>fn_ld1(st, x, k * stride) - hi) + c))


cdef inline void _blk_moments(int st, const char* x, Py_ssize_t n, double* mean, double* m2,
                              floating tag) noexcept nogil:
    """_block_moments of n values (`tag` selects the compute type)."""
    if st == ST_NATIVE:
        _block_moments(<const floating*>x, n, mean, m2)
    else:
        fn_block_moments16(st, x, n, mean, m2)


cdef inline void _blk_affine(int st, const char* x, char* y, Py_ssize_t n, floating hi, floating a,
                             floating b, bint stream) noexcept nogil:
    if st != ST_NATIVE:
        fn_block_affine16(st, x, y, n, hi, a, b, stream)
    elif stream and floating is float:
        fastnorm_affine_stream_s(<const float*>x, <float*>y, n, hi, a, b)
    else:
        _block_affine(<const floating*>x, <floating*>y, n, hi, a, b)


cdef inline void _blk_backward_sums(int st, const char* g, const char* x, Py_ssize_t n, floating hi,
                                    floating lo, double* sum_g, double* sum_gt,
                                    double* sum_t) noexcept nogil:
    if st == ST_NATIVE:
        _block_backward_sums(<const floating*>g, <const floating*>x, n, hi, lo, sum_g, sum_gt, sum_t)
    else:
        fn_block_backward_sums16(st, g, x, n, hi, lo, sum_g, sum_gt, sum_t)


cdef inline void _blk_backward(int st, const char* g, const char* x, char* dx, Py_ssize_t n,
                               floating hi, floating alpha, floating beta, floating gamma,
                               bint stream) noexcept nogil:
    if st != ST_NATIVE:
        fn_block_backward16(st, g, x, dx, n, hi, alpha, beta, gamma, stream)
    elif stream and floating is float:
        fastnorm_backward_stream_s(<const float*>g, <const float*>x, <float*>dx, n, hi, alpha, beta,
                                   gamma)
    else:
        _block_backward(<const floating*>g, <const floating*>x, <floating*>dx, n, hi, alpha, beta,
                        gamma)


cdef inline floating _load1(int st, const char* x, Py_ssize_t i, floating tag) noexcept nogil:
    if st == ST_NATIVE:
        return (<const floating*>x)[i]
    return <floating>fn_load1_16(st, x, i)


# ---------------------------------------------------------------- drivers

cdef inline bint _stat_layout(bint cl, bint per_sample, Py_ssize_t S) noexcept nogil:
    """The layout the kernels treat x in: with one value per (sample,
    channel) the (N, 1, C) rows are the (N, C, 1) blocks and a per-sample
    stat's values are contiguous, so such an input takes the grouped
    channels-first kernels, not a per-channel merge over rows of C (GroupNorm
    (64, 1024, 1, 1) took 0.13x PyTorch's time that way: 65536 merges)."""
    if per_sample and S == 1:
        return False
    return cl


cdef enum:
    MERGE_PARALLEL_MIN = 512    # (unit, channel) merges (~20 ns each) from which the threads share them


cdef int _merge_stat(Py_ssize_t s, Py_ssize_t n_units, bint per_sample, Py_ssize_t P, Py_ssize_t S,
                     Py_ssize_t C, Py_ssize_t cpg, const floating* shift, const double* sd,
                     const double* sq, double* count, double* mean, double* m2) noexcept nogil:
    """Stat s of the channels-last pass from its units' per-channel sums about
    the shifts (units in order, channels in order); returns 1 when a
    channel's deviations cancelled (the pass is redone about the means)."""
    cdef Py_ssize_t groups = C // cpg, u, u0, u1, c, c0
    cdef double rows_u, m2_c, mean_c
    cdef int bad = 0
    count[0] = 0
    mean[0] = 0
    m2[0] = 0
    if per_sample:
        u0 = s // groups
        u1 = u0 + 1
        c0 = (s % groups) * cpg
    else:
        u0 = 0
        u1 = n_units
        c0 = s * cpg
    for u in range(u0, u1):
        rows_u = S if per_sample else <double>(_part_start(P, <int>n_units, <int>u + 1)
                                               - _part_start(P, <int>n_units, <int>u))
        if rows_u == 0:
            continue
        for c in range(c0, c0 + cpg):
            # moments of this unit's channel about its shift, then merged
            m2_c = sq[u * C + c] - sd[u * C + c] * sd[u * C + c] / rows_u
            if not m2_c * CANCELLATION_LIMIT >= sq[u * C + c]:
                bad = 1
            if m2_c < 0:
                m2_c = 0
            mean_c = <double>shift[(u if per_sample else 0) * C + c] + sd[u * C + c] / rows_u
            _merge_moments(count, mean, m2, rows_u, mean_c, m2_c)
    return bad


cdef int _merge_chunks(Py_ssize_t n_units, Py_ssize_t P, Py_ssize_t C, Py_ssize_t cpg,
                       const floating* shift, double* sd, double* sq, double* count, double* mean,
                       double* m2) noexcept nogil:
    """BatchNorm's channels-last statistics from its row chunks' sums.  Every
    chunk sums about the same shifts (the batch's first row), so a
    channel's totals are the chunks' sums added in chunk order, and its
    moments follow from them in one vector loop over the channels; sd and
    sq (chunk 0's part) are overwritten with the totals.  (A pairwise merge
    of every chunk's moments costs four divisions per chunk and channel:
    BatchNorm (64, 1024, 1, 1) was slower on 2 threads than on 1, 0.73x
    PyTorch's time.)  Returns 1 when a channel's deviations cancelled."""
    cdef Py_ssize_t u, c, s
    cdef double m2_c
    cdef int bad = 0
    for u in range(1, n_units):
        for c in range(C):
            sd[c] += sd[u * C + c]
            sq[c] += sq[u * C + c]
    for c in range(C):
        m2_c = sq[c] - sd[c] * sd[c] / P
        bad |= not (m2_c * CANCELLATION_LIMIT >= sq[c])
        sq[c] = 0.0 if m2_c < 0 else m2_c      # now each channel's m2 (NaN kept) ...
        sd[c] = <double>shift[c] + sd[c] / P   # ... and mean
    if cpg == 1:
        for c in range(C):
            count[c] = P
            mean[c] = sd[c]
            m2[c] = sq[c]
        return bad
    for s in range(C // cpg):  # a stat of several channels absorbs them in channel order
        count[s] = 0
        mean[s] = 0
        m2[s] = 0
        for c in range(s * cpg, (s + 1) * cpg):
            _merge_moments(&count[s], &mean[s], &m2[s], <double>P, sd[c], sq[c])
    return bad


cdef int _channel_stats(const char* x, int st, bint cl, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                        Py_ssize_t cpg, bint per_sample, double* st_mean, double* st_m2,
                        double* st_count, int nth, floating tag) noexcept nogil:
    """Mean, sum of squared deviations and count of every stat.  -1: no memory."""
    cdef Py_ssize_t n_stats = (N if per_sample else 1) * (C // cpg)
    cdef Py_ssize_t b, u, c, s, r0, r1, n_units, P = N * S
    cdef double* um = NULL
    cdef double* um2 = NULL
    cdef floating* shift = NULL
    cdef floating* scratch = NULL
    cdef double* sd = NULL
    cdef double* sq = NULL
    cdef double mean_c, m2_c, rows_u
    cdef int t, bad = 0
    cdef Py_ssize_t isz = _itemsize(st, sizeof(floating))
    cl = _stat_layout(cl, per_sample, S)
    for s in range(n_stats):
        st_mean[s] = 0
        st_m2[s] = 0
        st_count[s] = 0
    if not cl and per_sample:
        # Group/InstanceNorm: a stat's cpg blocks are contiguous, one block of cpg * S
        for s in prange(n_stats, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            _blk_moments(st, x + s * cpg * S * isz, cpg * S, &st_mean[s], &st_m2[s], tag)
            st_count[s] = cpg * S
        return 0
    if not cl:
        um = <double*>scratch_alloc(2 * N * C * sizeof(double) + 8)
        if um == NULL:
            return -1
        um2 = um + N * C
        for b in prange(N * C, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            _blk_moments(st, x + b * S * isz, S, &um[b], &um2[b], tag)
        for b in range(N * C):
            s = _stat_of(b // C, b % C, per_sample, C, cpg)
            _merge_moments(&st_count[s], &st_mean[s], &st_m2[s], <double>S, um[b], um2[b])
        scratch_free(um)
        return 0
    # channels-last: units are row chunks (BatchNorm) or samples (Group/InstanceNorm)
    n_units = N if per_sample else (nth if P >= nth else 1)
    cdef Py_ssize_t work_len = 3 * _tile_stride(C)
    shift = <floating*>scratch_alloc((n_units * C + n_units * work_len) * sizeof(floating) + 128)
    sd = <double*>scratch_alloc(2 * n_units * C * sizeof(double) + 8)
    if shift == NULL or sd == NULL:
        scratch_free(shift)
        scratch_free(sd)
        return -1
    scratch = <floating*>_aligned(shift + n_units * C)
    sq = sd + n_units * C
    for u in range(N if per_sample else 1):  # shift: each sample's (or the batch's) first row
        for c in range(C):
            shift[u * C + c] = _load1(st, x, (u * S) * C + c, tag)
    for t in range(2):  # attempt 2 re-centres on the means when attempt 1 cancelled
        for u in prange(n_units, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            if per_sample:
                r0 = u * S
                r1 = r0 + S
            else:
                r0 = _part_start(P, <int>n_units, <int>u)
                r1 = _part_start(P, <int>n_units, <int>u + 1)
            _rows_moments(x, st, r0, r1, C, shift + (u * C if per_sample else 0),
                          scratch + u * work_len, sd + u * C, sq + u * C)
        bad = 0
        if not per_sample:
            bad = _merge_chunks(n_units, P, C, cpg, shift, sd, sq, st_count, st_mean, st_m2)
        else:
            # every stat absorbs its sample's channels in channel order; the
            # threads take whole stats (a merge is ~20 ns a channel)
            for s in prange(n_stats, schedule='static', num_threads=nth,
                            use_threads_if=nth > 1 and n_units * C >= MERGE_PARALLEL_MIN):
                bad += _merge_stat(s, n_units, per_sample, P, S, C, cpg, shift, sd, sq,
                                   &st_count[s], &st_mean[s], &st_m2[s])
        if not bad or t == 1:
            break
        # re-centre every channel's shift on its own (per-sample) mean, redo the pass
        if per_sample:
            for u in range(n_units):
                for c in range(C):
                    shift[u * C + c] = <floating>(<double>shift[u * C + c] + sd[u * C + c] / S)
        else:
            for c in range(C):
                shift[c] = <floating>st_mean[c]
    scratch_free(shift)
    scratch_free(sd)
    return 0


cdef void _rows_apply(const char* g, const char* x, char* y, int st, Py_ssize_t r0, Py_ssize_t r1,
                      Py_ssize_t C, Py_ssize_t S, bint per_sample, const floating* hi,
                      const floating* c1, const floating* c2,
                      const floating* c3, bint stream) noexcept nogil:
    """Rows r0..r1 of a CL array, coefficients per (sample, channel) when
    per_sample: forward (g NULL) y = (x-hi)*c1 + c2; backward
    y = c1*g + c2*(x-hi) + c3."""
    cdef Py_ssize_t r = r0, seg_end, off
    cdef void* block = scratch_alloc(5 * _tile_stride(C) * sizeof(floating) + 64)
    if block == NULL:
        return
    cdef floating* work = <floating*>_aligned(block)
    while r < r1:
        off = (r // S) * C if per_sample else 0
        seg_end = ((r // S) + 1) * S if per_sample else r1
        if seg_end > r1:
            seg_end = r1
        if g == NULL:
            _rows_affine(x, y, st, r, seg_end, C, hi + off, c1 + off, c2 + off, work, stream)
        else:
            _rows_backward(g, x, y, st, r, seg_end, C, hi + off, c1 + off, c2 + off, c3 + off,
                           work, stream)
        r = seg_end
    if stream:
        fastnorm_stream_fence()
    scratch_free(block)


cdef int _channel_forward(const char* x, char* y, int st, bint cl, Py_ssize_t N, Py_ssize_t C,
                          Py_ssize_t S, Py_ssize_t cpg, bint per_sample, const floating* w,
                          const floating* b, double eps, bint batch_stats, double* st_mean,
                          double* st_var, int nth) noexcept nogil:
    cdef Py_ssize_t n_stats = (N if per_sample else 1) * (C // cpg)
    cdef Py_ssize_t n_coef = (N if per_sample else 1) * C
    cdef Py_ssize_t i, n, c, s, bl, r0, r1, P = N * S
    cdef double rstd, mean, a
    cdef int p
    cdef double* count = NULL
    cdef double* m2 = NULL
    cl = _stat_layout(cl, per_sample, S)
    if not cl and per_sample and batch_stats:
        return _grouped_forward(x, y, st, N, C, S, cpg, w, b, eps, st_mean, st_var, nth)
    cdef floating* coef = <floating*>scratch_alloc(3 * n_coef * sizeof(floating) + 8)
    if coef == NULL:
        return -1
    cdef floating* hi = coef
    cdef floating* ca = coef + n_coef
    cdef floating* cb = coef + 2 * n_coef
    cdef double lo
    if batch_stats:
        count = <double*>scratch_alloc(2 * n_stats * sizeof(double) + 8)
        if count == NULL or _channel_stats(x, st, cl, N, C, S, cpg, per_sample, st_mean,
                                           count + n_stats, count, nth, <floating>0) != 0:
            scratch_free(count)
            scratch_free(coef)
            return -1
        for s in range(n_stats):
            st_var[s] = count[n_stats + s] / count[s] if count[s] > 0 else NAN
        scratch_free(count)
    for i in range(n_coef):
        n = i // C
        c = i % C
        s = _stat_of(n, c, per_sample, C, cpg)
        mean = st_mean[s]
        rstd = 1.0 / sqrt(st_var[s] + eps)
        a = rstd * (w[c] if w != NULL else 1.0)
        ca[i] = <floating>a
        if batch_stats:
            # y = ((x - hi) - lo) * a + b with the mean split as hi + lo: x - hi
            # is exact for x near the mean (large offsets in float32), and the
            # low part is folded into the shift, b - lo * a
            hi[i] = <floating>mean
            lo = mean - <double>hi[i]
            cb[i] = <floating>((b[c] if b != NULL else 0.0) - lo * a)
        else:  # running statistics: fold into one scale-and-shift, y = x * a + b'
            hi[i] = 0
            cb[i] = <floating>((b[c] if b != NULL else 0.0) - mean * a)
    _channel_apply(x, y, st, cl, N, C, S, per_sample, hi, ca, cb, nth)
    scratch_free(coef)
    return 0


cdef void _channel_apply(const char* x, char* y, int st, bint cl, Py_ssize_t N, Py_ssize_t C,
                         Py_ssize_t S, bint per_sample, const floating* hi, const floating* ca,
                         const floating* cb, int nth) noexcept nogil:
    """The elementwise pass: y = (x - hi) * ca + cb per (sample, channel) when
    per_sample, else per channel."""
    cdef Py_ssize_t i, bl, r0, r1, P = N * S
    cdef Py_ssize_t isz = _itemsize(st, sizeof(floating))
    cdef int p
    cdef bint stream = (floating is float or st != ST_NATIVE) and _use_streaming(N * C, S, isz)
    if not cl and stream:
        for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            for bl in range(_part_start(N * C, nth, p), _part_start(N * C, nth, p + 1)):
                i = (bl if per_sample else bl % C)
                _blk_affine(st, x + bl * S * isz, y + bl * S * isz, S, hi[i], ca[i], cb[i], True)
            fastnorm_stream_fence()
    elif not cl:
        for bl in prange(N * C, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            i = (bl if per_sample else bl % C)
            _blk_affine(st, x + bl * S * isz, y + bl * S * isz, S, hi[i], ca[i], cb[i], False)
    else:
        for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            r0 = _part_start(P, nth, p)
            r1 = _part_start(P, nth, p + 1)
            _rows_apply(NULL, x, y, st, r0, r1, C, S, per_sample, hi, ca, cb, NULL, stream)


cdef void _chunk_grads(Py_ssize_t n_units, Py_ssize_t P, Py_ssize_t C, const double* sums,
                       const floating* lo, const floating* w, const double* rstd, bint batch_stats,
                       double* st, double* grad_w, double* grad_b) noexcept nogil:
    """_channel_backward's per-stat sums and parameter gradients for
    BatchNorm over channels-last row chunks (one stat per channel): the
    generic loops' arithmetic, in their order (chunk by chunk, channel by
    channel), as loops over the channels that vectorize.  (The generic
    loops, a stat lookup and branches per chunk and channel, were most of a
    (64, 1024, 1, 1) backward: serial, the second thread waited on them.)"""
    cdef Py_ssize_t u, c, q
    cdef double a, b, d, delta, m
    for c in range(4 * C):
        st[c] = 0
    for u in range(n_units):
        m = <double>(_part_start(P, <int>n_units, <int>u + 1) - _part_start(P, <int>n_units, <int>u))
        q = 3 * u * C
        for c in range(C):
            a = sums[q + c]
            b = sums[q + C + c]
            d = sums[q + 2 * C + c]
            # the kernels centred on hi alone; the mean's low part lo comes in here
            b = b - lo[c] * a if lo[c] != 0 else b
            d = d - m * lo[c] if lo[c] != 0 else d
            st[4 * c] += (w[c] if w != NULL else 1.0) * a
            st[4 * c + 1] += (w[c] if w != NULL else 1.0) * b
            st[4 * c + 2] += d
            st[4 * c + 3] += m
    if grad_w != NULL:
        for c in range(C):
            grad_w[c] = 0
    if grad_b != NULL:
        for c in range(C):
            grad_b[c] = 0
    for u in range(n_units):
        q = 3 * u * C
        for c in range(C):
            a = sums[q + c]
            b = sums[q + C + c]
            b = b - lo[c] * a if lo[c] != 0 else b
            delta = st[4 * c + 2] / st[4 * c + 3] if batch_stats and st[4 * c + 3] > 0 else 0.0
            if grad_w != NULL:
                grad_w[c] += rstd[c] * (b - delta * a)
            if grad_b != NULL:
                grad_b[c] += a


cdef inline void _backward_coef(double rstd, double wc, const double* st4, double mean,
                                floating hi, bint batch_stats, floating* alpha, floating* beta,
                                floating* gamma) noexcept nogil:
    """One (sample, channel)'s elementwise backward coefficients from its
    stat's rstd, mean and sums st4 = (SA, SB, SD, count):
    dx = alpha * g + beta * (x - hi) + gamma."""
    cdef double m = st4[3], delta, k1, k2
    alpha[0] = <floating>(rstd * wc)
    if batch_stats and m > 0:
        delta = st4[2] / m
        k1 = st4[0] / m
        k2 = rstd * (st4[1] - delta * st4[0]) / m
        beta[0] = <floating>(-rstd * rstd * k2)
        # the elementwise pass takes x - hi; the mean's low part goes here
        gamma[0] = <floating>(rstd * (delta * rstd * k2 - k1) + rstd * rstd * k2 * (mean - <double>hi))
    else:
        beta[0] = 0
        gamma[0] = 0


cdef void _chunk_coefs(Py_ssize_t C, const double* st, const double* mean, const double* rstd,
                       const floating* hi, const floating* w, bint batch_stats, floating* alpha,
                       floating* beta, floating* gamma) noexcept nogil:
    """_backward_coef of every channel, one stat per channel (_chunk_grads'
    case): a loop over the channels with no stat lookup."""
    cdef Py_ssize_t c
    for c in range(C):
        _backward_coef(rstd[c], w[c] if w != NULL else 1.0, st + 4 * c, mean[c], hi[c], batch_stats,
                       &alpha[c], &beta[c], &gamma[c])


cdef int _channel_backward(const char* g, const char* x, char* dx, int storage, bint cl,
                           Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t cpg,
                           bint per_sample, const floating* w, const double* st_mean,
                           const double* st_rstd, bint batch_stats, double* grad_w,
                           double* grad_b, int nth) noexcept nogil:
    """Gradients of _channel_forward; grad_w / grad_b (length C) may be NULL,
    and so may dx (CL only: the parameter gradients alone, which feature
    scaling's backward takes as its column sums)."""
    cdef Py_ssize_t n_stats = (N if per_sample else 1) * (C // cpg)
    cdef Py_ssize_t n_coef = (N if per_sample else 1) * C
    cdef Py_ssize_t i, n, c, s, bl, u, r0, r1, n_units, q, P = N * S
    cdef double wc, delta, m
    cdef int p
    cdef Py_ssize_t isz = _itemsize(storage, sizeof(floating))
    if dx != NULL:
        cl = _stat_layout(cl, per_sample, S)
    if not cl and per_sample:
        return _grouped_backward(g, x, dx, storage, N, C, S, cpg, w, st_mean, st_rstd, batch_stats,
                                 grad_w, grad_b, nth)
    n_units = (N * C) if not cl else (N if per_sample else (nth if P >= nth else 1))
    cdef double* sums = <double*>scratch_alloc((3 * n_units * (1 if not cl else C) + 4 * n_stats) * sizeof(double) + 8)
    cdef floating* coef = <floating*>scratch_alloc(5 * n_coef * sizeof(floating) + 8)
    cdef floating* scratch = NULL
    cdef void* scratch_block = NULL
    if cl:
        scratch_block = scratch_alloc(5 * _tile_stride(C) * n_units * sizeof(floating) + 64)
        scratch = <floating*>_aligned(scratch_block) if scratch_block != NULL else NULL
    if sums == NULL or coef == NULL or (cl and scratch == NULL):
        scratch_free(sums)
        scratch_free(coef)
        scratch_free(scratch_block)
        return -1
    cdef double* st = sums + 3 * n_units * (1 if not cl else C)  # per stat: SA, SB, SD, count
    cdef floating* hi = coef
    cdef floating* lo = coef + n_coef
    cdef floating* alpha = coef + 2 * n_coef
    cdef floating* beta = coef + 3 * n_coef
    cdef floating* gamma = coef + 4 * n_coef
    cdef double ua, ub, ud
    for i in range(n_coef):
        s = _stat_of(i // C, i % C, per_sample, C, cpg)
        hi[i] = <floating>st_mean[s]
        lo[i] = <floating>(st_mean[s] - <double>hi[i])
    # 1. per-unit sums of g, g*t, t
    if not cl:
        for bl in prange(N * C, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            i = (bl if per_sample else bl % C)
            _blk_backward_sums(storage, g + bl * S * isz, x + bl * S * isz, S, hi[i], 0,
                               &sums[3 * bl], &sums[3 * bl + 1], &sums[3 * bl + 2])
    else:
        for u in prange(n_units, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            if per_sample:
                r0 = u * S
                r1 = r0 + S
            else:
                r0 = _part_start(P, <int>n_units, <int>u)
                r1 = _part_start(P, <int>n_units, <int>u + 1)
            _rows_backward_sums(g, x, storage, r0, r1, C, hi + (u * C if per_sample else 0),
                                scratch + 5 * _tile_stride(C) * u, sums + 3 * u * C)
    cdef bint chunks = cl and not per_sample and cpg == 1   # BatchNorm, channels-last
    if chunks:
        _chunk_grads(n_units, P, C, sums, lo, w, st_rstd, batch_stats, st, grad_w, grad_b)
    else:
        # the kernels centred on hi alone; the mean's low part lo comes in here:
        # sum g*(t - lo) = sum g*t - lo * sum g, sum (t - lo) = sum t - count * lo
        for u in range(n_units):
            for c in range(1 if not cl else C):
                if not cl:
                    i = u if per_sample else u % C
                    q = 3 * u
                    m = S
                else:
                    i = (u * C if per_sample else 0) + c
                    q = 3 * u * C + c
                    m = S if per_sample else (_part_start(P, <int>n_units, <int>u + 1)
                                              - _part_start(P, <int>n_units, <int>u))
                if lo[i] != 0:
                    if not cl:
                        sums[q + 1] -= lo[i] * sums[q]
                        sums[q + 2] -= m * lo[i]
                    else:
                        sums[q + C] -= lo[i] * sums[q]
                        sums[q + 2 * C] -= m * lo[i]
        # 2. per-stat sums (fixed order), parameter gradients
        for s in range(4 * n_stats):
            st[s] = 0
        if grad_w != NULL:
            for c in range(C):
                grad_w[c] = 0
        if grad_b != NULL:
            for c in range(C):
                grad_b[c] = 0
        for u in range(n_units):
            for c in range(1 if not cl else C):
                if not cl:
                    n = u // C
                    i = u % C
                    ua = sums[3 * u]
                    ub = sums[3 * u + 1]
                    ud = sums[3 * u + 2]
                else:
                    n = u if per_sample else 0
                    i = c
                    ua = sums[3 * u * C + c]
                    ub = sums[3 * u * C + C + c]
                    ud = sums[3 * u * C + 2 * C + c]
                s = _stat_of(n, i, per_sample, C, cpg)
                wc = w[i] if w != NULL else 1.0
                st[4 * s] += wc * ua
                st[4 * s + 1] += wc * ub
                st[4 * s + 2] += ud
                st[4 * s + 3] += S if (not cl or per_sample) else (
                    _part_start(P, <int>n_units, <int>u + 1) - _part_start(P, <int>n_units, <int>u))
        # the parameter gradients need each stat's centring correction delta
        for u in range(n_units):
            for c in range(1 if not cl else C):
                if not cl:
                    n = u // C
                    i = u % C
                    ua = sums[3 * u]
                    ub = sums[3 * u + 1]
                else:
                    n = u if per_sample else 0
                    i = c
                    ua = sums[3 * u * C + c]
                    ub = sums[3 * u * C + C + c]
                s = _stat_of(n, i, per_sample, C, cpg)
                delta = st[4 * s + 2] / st[4 * s + 3] if batch_stats and st[4 * s + 3] > 0 else 0.0
                if grad_w != NULL:
                    grad_w[i] += st_rstd[s] * (ub - delta * ua)
                if grad_b != NULL:
                    grad_b[i] += ua
    if dx == NULL:
        scratch_free(sums)
        scratch_free(coef)
        scratch_free(scratch_block)
        return 0
    # 3. coefficients and the elementwise pass
    if chunks:
        _chunk_coefs(C, st, st_mean, st_rstd, hi, w, batch_stats, alpha, beta, gamma)
    else:
        for i in range(n_coef):
            c = i % C
            s = _stat_of(i // C, c, per_sample, C, cpg)
            _backward_coef(st_rstd[s], w[c] if w != NULL else 1.0, st + 4 * s, st_mean[s], hi[i],
                           batch_stats, &alpha[i], &beta[i], &gamma[i])
    cdef bint stream = (floating is float or storage != ST_NATIVE) and _use_streaming_grad(N * C, S, isz)
    if not cl and stream:
        for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            for bl in range(_part_start(N * C, nth, p), _part_start(N * C, nth, p + 1)):
                i = (bl if per_sample else bl % C)
                _blk_backward(storage, g + bl * S * isz, x + bl * S * isz, dx + bl * S * isz, S, hi[i],
                              alpha[i], beta[i], gamma[i], True)
            fastnorm_stream_fence()
    elif not cl:
        for bl in prange(N * C, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            i = (bl if per_sample else bl % C)
            _blk_backward(storage, g + bl * S * isz, x + bl * S * isz, dx + bl * S * isz, S, hi[i],
                          alpha[i], beta[i], gamma[i], False)
    else:
        for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            r0 = _part_start(P, nth, p)
            r1 = _part_start(P, nth, p + 1)
            _rows_apply(g, x, dx, storage, r0, r1, C, S, per_sample, hi, alpha, beta, gamma, stream)
    if floating is float:
        _channel_backward_exact(g, x, dx, storage, cl, N, C, S, cpg, per_sample, batch_stats, w,
                                st, st_mean, st_rstd, hi)
    scratch_free(sums)
    scratch_free(coef)
    scratch_free(scratch_block)
    return 0


cdef void _channel_backward_exact(const char* g, const char* x, char* dx, int st, bint cl,
                                  Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t cpg,
                                  bint per_sample, bint batch_stats, const float* w,
                                  const double* sums, const double* st_mean, const double* st_rstd,
                                  const float* hi) noexcept nogil:
    """The elementwise backward again, in double, for the (sample, channel)
    coefficients whose statistic's rstd leaves float32's safe range
    (_rstd_out_of_float): the coefficients of _channel_backward, unrounded."""
    cdef Py_ssize_t n_coef = (N if per_sample else 1) * C, i, n, c, s, m_i
    cdef double rstd, wc, m, delta, k1, k2, a, b, gm
    cdef Py_ssize_t isz = 2 if st != ST_NATIVE else 4
    for i in range(n_coef):
        n = i // C
        c = i % C
        s = _stat_of(n, c, per_sample, C, cpg)
        rstd = st_rstd[s]
        if not _rstd_out_of_float(rstd):
            continue
        wc = w[c] if w != NULL else 1.0
        a = rstd * wc
        b = 0.0
        gm = 0.0
        m = sums[4 * s + 3]
        if batch_stats and m > 0:
            delta = sums[4 * s + 2] / m
            k1 = sums[4 * s] / m
            k2 = rstd * (sums[4 * s + 1] - delta * sums[4 * s]) / m
            b = -rstd * rstd * k2
            gm = rstd * (delta * rstd * k2 - k1) + rstd * rstd * k2 * (st_mean[s] - <double>hi[i])
        for m_i in range(n if per_sample else 0, n + 1 if per_sample else N):
            if cl:
                _affine_exact(st, g + (m_i * S * C + c) * isz, x + (m_i * S * C + c) * isz,
                              dx + (m_i * S * C + c) * isz, S, C, <double>hi[i], a, b, gm)
            else:
                _affine_exact(st, g + (m_i * C + c) * S * isz, x + (m_i * C + c) * S * isz,
                              dx + (m_i * C + c) * S * isz, S, 1, <double>hi[i], a, b, gm)


# ---------------------------------------------------------------- entry points

cdef inline int _check_flat(cnp.ndarray a, int typenum, Py_ssize_t size, str name) except -1:
    if (cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_SIZE(a) != size
            or not _c_aligned(a)):
        raise ValueError(f"internal: {name} must be a C-contiguous array of {size} elements of one dtype")
    return 0


def channel_moments(cnp.ndarray x, bint cl, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                    cnp.ndarray mean, cnp.ndarray m2, cnp.ndarray count, object n_threads):
    """BatchNorm's per-channel statistics of one C-contiguous (N, C, S) (or,
    with cl, (N, S, C)) array, without the normalization: mean, sum of
    squared deviations and count (float64 (C,) outputs), for merging with
    other parts' (fastnorm.dask)."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    _check_flat(x, typenum, N * C * S, "x")
    for a, name in ((mean, "mean"), (m2, "m2"), (count, "count")):
        _check_flat(a, cnp.NPY_FLOAT64, C, name)
    cdef bint dbl
    cdef int st = storage_of(typenum, &dbl)
    cdef int nth = resolve_threads(n_threads, N * C * S)
    cdef int status = 0
    cdef const char* xp = <const char*>cnp.PyArray_DATA(x)
    cdef double* a1 = <double*>cnp.PyArray_DATA(mean)
    cdef double* a2 = <double*>cnp.PyArray_DATA(m2)
    cdef double* a3 = <double*>cnp.PyArray_DATA(count)
    if N * C * S == 0:
        mean.fill(NAN)
        m2.fill(NAN)
        count.fill(0)
        return
    with nogil:
        if dbl:
            status = _channel_stats[double](xp, st, cl, N, C, S, 1, False, a1, a2, a3, nth, 0)
        else:
            status = _channel_stats[float](xp, st, cl, N, C, S, 1, False, a1, a2, a3, nth, 0)
    if status != 0:
        raise MemoryError("fastnorm: out of memory in channel_moments")


def channel_forward(cnp.ndarray x, cnp.ndarray y, bint cl, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                    Py_ssize_t cpg, bint per_sample, object weight, object bias, double eps,
                    bint batch_stats, cnp.ndarray st_mean, cnp.ndarray st_var, object n_threads):
    """BatchNorm / GroupNorm / InstanceNorm forward (see the top of this file).

    x, y: C-contiguous, N*C*S elements, (N, C, S) or, with cl, (N, S, C).
    st_mean, st_var: float64 per stat, outputs with batch_stats, else the
    running statistics (length C) to normalize with."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    _check_flat(x, typenum, N * C * S, "x")
    _check_flat(y, typenum, N * C * S, "y")
    if C == 0:  # no channels (GroupNorm's groups are then empty): nothing to compute
        if batch_stats:
            st_mean.fill(NAN)
            st_var.fill(NAN)
        return
    cdef Py_ssize_t n_stats = (N if per_sample else 1) * (C // cpg)
    _check_flat(st_mean, cnp.NPY_FLOAT64, n_stats, "st_mean")
    _check_flat(st_var, cnp.NPY_FLOAT64, n_stats, "st_var")
    cdef int nth = resolve_threads(n_threads, N * C * S)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef void* w = _ptr_or_null(weight)
    cdef void* b = _ptr_or_null(bias)
    cdef double* sm = <double*>cnp.PyArray_DATA(st_mean)
    cdef double* sv = <double*>cnp.PyArray_DATA(st_var)
    cdef int status = 0
    cdef bint dbl
    cdef int st = storage_of(typenum, &dbl)
    if N * C * S == 0:
        return
    if not dbl:
        with nogil:
            status = _channel_forward[float](<const char*>xp, <char*>yp, st, cl, N, C, S, cpg,
                                             per_sample, <const float*>w, <const float*>b, eps,
                                             batch_stats, sm, sv, nth)
    else:
        with nogil:
            status = _channel_forward[double](<const char*>xp, <char*>yp, st, cl, N, C, S, cpg,
                                              per_sample, <const double*>w, <const double*>b, eps,
                                              batch_stats, sm, sv, nth)
    if status != 0:
        raise MemoryError("fastnorm: out of memory in a channel normalization")


def channel_backward(cnp.ndarray g, cnp.ndarray x, cnp.ndarray dx, bint cl, Py_ssize_t N,
                     Py_ssize_t C, Py_ssize_t S, Py_ssize_t cpg, bint per_sample, object weight,
                     cnp.ndarray st_mean, cnp.ndarray st_rstd, bint batch_stats,
                     object grad_w, object grad_b, object n_threads):
    """Backward of channel_forward; grad_w / grad_b: float64 (C,) outputs or None."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    _check_flat(x, typenum, N * C * S, "x")
    _check_flat(g, typenum, N * C * S, "grad_out")
    _check_flat(dx, typenum, N * C * S, "grad_x")
    if C == 0:  # no channels: no gradients
        return
    cdef Py_ssize_t n_stats = (N if per_sample else 1) * (C // cpg)
    _check_flat(st_mean, cnp.NPY_FLOAT64, n_stats, "st_mean")
    _check_flat(st_rstd, cnp.NPY_FLOAT64, n_stats, "st_rstd")
    cdef int nth = resolve_threads(n_threads, N * C * S)
    cdef void* gp = cnp.PyArray_DATA(g)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* dp = cnp.PyArray_DATA(dx)
    cdef void* w = _ptr_or_null(weight)
    cdef double* gw = <double*>_ptr_or_null(grad_w)
    cdef double* gb = <double*>_ptr_or_null(grad_b)
    cdef const double* sm = <const double*>cnp.PyArray_DATA(st_mean)
    cdef const double* sr = <const double*>cnp.PyArray_DATA(st_rstd)
    cdef int status = 0
    if N * C * S == 0:
        if gw != NULL:
            for i in range(C):
                gw[i] = 0
        if gb != NULL:
            for i in range(C):
                gb[i] = 0
        return
    cdef bint dbl
    cdef int st = storage_of(typenum, &dbl)
    if not dbl:
        with nogil:
            status = _channel_backward[float](<const char*>gp, <const char*>xp, <char*>dp, st, cl,
                                              N, C, S, cpg, per_sample, <const float*>w, sm, sr,
                                              batch_stats, gw, gb, nth)
    else:
        with nogil:
            status = _channel_backward[double](<const char*>gp, <const char*>xp, <char*>dp, st, cl,
                                               N, C, S, cpg, per_sample, <const double*>w, sm, sr,
                                               batch_stats, gw, gb, nth)
    if status != 0:
        raise MemoryError("fastnorm: out of memory in a channel normalization backward")


# ---------------------------------------------------------------- grouped (per-sample) fast paths
#
# Group/InstanceNorm in channels-first layout: the values of one stat, its
# cpg channels of one sample, are contiguous (cpg * S values).  Each stat is
# then reduced and normalized (or back-propagated) while its values are still
# in cache: one read of x (and g) from memory instead of two.

# One value per channel (S == 1, e.g. GroupNorm over (N, C) features or after
# global pooling): a group is cpg contiguous values with a coefficient per
# value, so each pass is one flat loop over the group against per-channel
# coefficient vectors, not cpg calls of one value each (GroupNorm
# (64, 1024, 1, 1): 65536 block calls per pass).  The coefficients and every
# rounding are the per-channel path's; 16-bit groups are widened into `buf`.

cdef void _group1_forward(int st, const char* x, char* y, Py_ssize_t cpg, const floating* w,
                          const floating* b, double rstd, floating hi, double lo,
                          floating* ca, floating* cb, float* buf) noexcept nogil:
    """y_j = (x_j - hi) * a_j + c_j over one group: a_j = rstd * w_j, c_j =
    b_j - lo * a_j (in double, rounded once); ca, cb: cpg each; buf: cpg."""
    cdef Py_ssize_t j
    cdef const floating* xs = <const floating*>x
    cdef floating* ys = <floating*>y
    for j in range(cpg):
        ca[j] = <floating>(rstd * w[j]) if w != NULL else <floating>rstd
    if b != NULL:
        for j in range(cpg):
            cb[j] = <floating>(b[j] - lo * (rstd * w[j] if w != NULL else rstd))
    else:
        for j in range(cpg):
            cb[j] = <floating>(-lo * (rstd * w[j] if w != NULL else rstd))
    if st == ST_NATIVE:
        for j in range(cpg):
            ys[j] = (xs[j] - hi) * ca[j] + cb[j]
    else:
        fn_widen(st, x, buf, cpg)
        for j in range(cpg):
            buf[j] = (buf[j] - hi) * <float>ca[j] + <float>cb[j]
        fn_narrow(st, buf, y, cpg)


cdef void _group1_backward(int st, const char* g, const char* x, char* dx, Py_ssize_t cpg,
                           const floating* w, double rstd, floating hi, double lo,
                           bint batch_stats, double* sums, double* delta_out,
                           floating* ca, float* buf) noexcept nogil:
    """The backward of one group of one value per channel: the per-channel
    sums (g, g * t, t with t = (x - hi) - lo) into sums[3 j ..], then dx_j =
    alpha_j g_j + (beta (x_j - hi) + gamma), alpha_j = rstd * w_j; the
    group's delta (mean of t) into delta_out.  ca: cpg; buf: 3 * cpg."""
    cdef Py_ssize_t j
    cdef const floating* gs
    cdef const floating* xs
    cdef floating* ds
    cdef floating t, flo = <floating>lo
    cdef double sa = 0.0, sb = 0.0, sd = 0.0, m = cpg, wc, delta, k1, k2, beta, gamma
    if st == ST_NATIVE:
        gs = <const floating*>g
        xs = <const floating*>x
        ds = <floating*>dx
    else:
        fn_widen(st, g, buf, cpg)
        fn_widen(st, x, buf + cpg, cpg)
        gs = <const floating*>buf
        xs = <const floating*>(buf + cpg)
        ds = <floating*>(buf + 2 * cpg)
    for j in range(cpg):
        t = (xs[j] - hi) - flo
        sums[3 * j] = gs[j]
        sums[3 * j + 1] = <floating>(gs[j] * t)
        sums[3 * j + 2] = t
    for j in range(cpg):
        wc = w[j] if w != NULL else 1.0
        sa = sa + wc * sums[3 * j]
        sb = sb + wc * sums[3 * j + 1]
        sd = sd + sums[3 * j + 2]
    if batch_stats:
        delta = sd / m
        k1 = sa / m
        k2 = rstd * (sb - delta * sa) / m
        beta = -rstd * rstd * k2
        gamma = rstd * (delta * rstd * k2 - k1) + rstd * rstd * k2 * lo
    else:
        delta = 0
        beta = 0
        gamma = 0
    delta_out[0] = delta
    for j in range(cpg):
        ca[j] = <floating>(rstd * w[j]) if w != NULL else <floating>rstd
    if <floating>beta == 0 and <floating>gamma == 0:
        for j in range(cpg):
            ds[j] = ca[j] * gs[j]
    else:
        for j in range(cpg):
            ds[j] = ca[j] * gs[j] + (<floating>beta * (xs[j] - hi) + <floating>gamma)
    if st != ST_NATIVE:
        fn_narrow(st, buf + 2 * cpg, dx, cpg)


cdef int _grouped_forward(const char* x, char* y, int st, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                          Py_ssize_t cpg, const floating* w, const floating* b, double eps,
                          double* st_mean, double* st_var, int nth) noexcept nogil:
    cdef Py_ssize_t groups = C // cpg, n_stats = N * groups, len_s = cpg * S
    cdef Py_ssize_t s, j, c, base
    cdef double m2, rstd, lo, a
    cdef floating hi
    cdef int p
    cdef Py_ssize_t isz = _itemsize(st, sizeof(floating))
    cdef bint stream = (floating is float or st != ST_NATIVE) and _use_streaming(N * C, S, isz)
    cdef Py_ssize_t per = (2 * cpg * sizeof(floating) + cpg * sizeof(float) + 63) & ~63
    cdef char* work = NULL
    if S == 1:
        work = <char*>scratch_alloc(nth * per)
        if work == NULL:
            return -1
    for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        for s in range(_part_start(n_stats, nth, p), _part_start(n_stats, nth, p + 1)):
            base = s * len_s
            # assigned in the body, so that Cython makes m2 thread-private: written only
            # through &m2 it was shared by the threads (a data race the sanitizer run hit)
            m2 = 0.0
            _blk_moments(st, x + base * isz, len_s, &st_mean[s], &m2, <floating>0)
            st_var[s] = m2 / len_s
            rstd = 1.0 / sqrt(st_var[s] + eps)
            hi = <floating>st_mean[s]
            lo = st_mean[s] - <double>hi
            if S == 1:
                c = (s % groups) * cpg
                _group1_forward(st, x + base * isz, y + base * isz, cpg,
                                w + c if w != NULL else NULL, b + c if b != NULL else NULL,
                                rstd, hi, lo, <floating*>(work + p * per),
                                <floating*>(work + p * per) + cpg,
                                <float*>(work + p * per + 2 * cpg * sizeof(floating)))
                continue
            for j in range(cpg):
                c = (s % groups) * cpg + j
                a = rstd * (w[c] if w != NULL else 1.0)
                _blk_affine(st, x + (base + j * S) * isz, y + (base + j * S) * isz, S, hi,
                            <floating>a, <floating>((b[c] if b != NULL else 0.0) - lo * a), stream)
        if stream:
            fastnorm_stream_fence()
    scratch_free(work)
    return 0


cdef int _grouped_backward(const char* g, const char* x, char* dx, int st, Py_ssize_t N,
                           Py_ssize_t C, Py_ssize_t S, Py_ssize_t cpg, const floating* w,
                           const double* st_mean, const double* st_rstd, bint batch_stats,
                           double* grad_w, double* grad_b, int nth) noexcept nogil:
    cdef Py_ssize_t groups = C // cpg, n_stats = N * groups, len_s = cpg * S
    cdef Py_ssize_t s, j, c, n, bl, base, gi
    cdef double sa, sb, sd, m, rstd, lo, delta, k1, k2, beta, gamma, wc
    cdef floating hi
    cdef int p
    cdef Py_ssize_t isz = _itemsize(st, sizeof(floating))
    cdef bint stream = (floating is float or st != ST_NATIVE) and _use_streaming_grad(N * C, S, isz)
    cdef double* sums = <double*>scratch_alloc((3 * N * C + n_stats) * sizeof(double) + 8)
    if sums == NULL:
        return -1
    cdef double* deltas = sums + 3 * N * C
    cdef Py_ssize_t per = (cpg * sizeof(floating) + 3 * cpg * sizeof(float) + 63) & ~63
    cdef char* work = NULL
    if S == 1:
        work = <char*>scratch_alloc(nth * per)
        if work == NULL:
            scratch_free(sums)
            return -1
    for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        for s in range(_part_start(n_stats, nth, p), _part_start(n_stats, nth, p + 1)):
            base = s * len_s
            n = s // groups
            hi = <floating>st_mean[s]
            lo = st_mean[s] - <double>hi
            if S == 1 and not (floating is float and _rstd_out_of_float(st_rstd[s])):
                c = (s % groups) * cpg
                _group1_backward(st, g + base * isz, x + base * isz, dx + base * isz, cpg,
                                 w + c if w != NULL else NULL, st_rstd[s], hi, lo, batch_stats,
                                 &sums[3 * (n * C + c)], &deltas[s], <floating*>(work + p * per),
                                 <float*>(work + p * per + cpg * sizeof(floating)))
                continue
            sa = 0
            sb = 0
            sd = 0
            for j in range(cpg):
                c = (s % groups) * cpg + j
                bl = n * C + c
                _blk_backward_sums(st, g + (base + j * S) * isz, x + (base + j * S) * isz, S, hi,
                                   <floating>lo, &sums[3 * bl], &sums[3 * bl + 1], &sums[3 * bl + 2])
                wc = w[c] if w != NULL else 1.0
                sa = sa + wc * sums[3 * bl]
                sb = sb + wc * sums[3 * bl + 1]
                sd = sd + sums[3 * bl + 2]
            rstd = st_rstd[s]
            m = len_s
            if batch_stats:
                delta = sd / m
                k1 = sa / m
                k2 = rstd * (sb - delta * sa) / m
                beta = -rstd * rstd * k2
                gamma = rstd * (delta * rstd * k2 - k1) + rstd * rstd * k2 * lo
            else:
                delta = 0
                beta = 0
                gamma = 0
            deltas[s] = delta
            for j in range(cpg):
                c = (s % groups) * cpg + j
                wc = w[c] if w != NULL else 1.0
                if floating is float and _rstd_out_of_float(rstd):
                    _affine_exact(st, g + (base + j * S) * isz, x + (base + j * S) * isz,
                                  dx + (base + j * S) * isz, S, 1, <double>hi, rstd * wc, beta, gamma)
                else:
                    _blk_backward(st, g + (base + j * S) * isz, x + (base + j * S) * isz,
                                  dx + (base + j * S) * isz, S, hi, <floating>(rstd * wc),
                                  <floating>beta, <floating>gamma, stream)
        if stream:
            fastnorm_stream_fence()
    # parameter gradients: each channel's per-sample sums added in sample
    # order; the threads take whole groups of channels
    if grad_w != NULL or grad_b != NULL:
        for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
            for gi in range(_part_start(groups, nth, p), _part_start(groups, nth, p + 1)):
                for j in range(cpg):
                    c = gi * cpg + j
                    sa = 0
                    sb = 0
                    for n in range(N):
                        s = n * groups + gi
                        bl = n * C + c
                        sa = sa + st_rstd[s] * (sums[3 * bl + 1] - deltas[s] * sums[3 * bl])
                        sb = sb + sums[3 * bl]
                    if grad_w != NULL:
                        grad_w[c] = sa
                    if grad_b != NULL:
                        grad_b[c] = sb
    scratch_free(work)
    scratch_free(sums)
    return 0


# ---------------------------------------------------------------- data standardization
#
# Column statistics of a (rows, features) matrix are the channels-last BatchNorm
# statistics (S = 1); the transforms are the elementwise pass with given
# centre / scale / shift per feature.

# ---------------------------------------------------------------- fast entries
#
# BatchNorm / GroupNorm / InstanceNorm called the common way (a C-contiguous
# native ndarray of a kernel dtype, channel_axis 1 or -1, parameters None or
# contiguous (C,) arrays, float eps / momentum, running statistics None or
# writeable contiguous float arrays, out None / x / a separate contiguous
# array) are checked and run here without Python-level overhead.  Anything
# else, every invalid input included, returns NotImplemented: the general
# path in fastnorm.functional validates it and owns the error messages.

cdef enum ChannelOp:
    OP_BATCH = 0
    OP_GROUP = 1
    OP_INSTANCE = 2


cdef bint _fast_channel_layout(cnp.ndarray x, object channel_axis, Py_ssize_t* N, Py_ssize_t* C,
                               Py_ssize_t* S, bint* cl):
    """N, C, S and the kernel layout of a C-contiguous x (its own memory)."""
    cdef int nd = cnp.PyArray_NDIM(x), axis, k
    if nd < 2 or type(channel_axis) is not int:
        return False
    if channel_axis == 1:
        axis = 1
    elif channel_axis == -1 or channel_axis == nd - 1:
        axis = nd - 1
    else:
        return False
    N[0] = cnp.PyArray_DIMS(x)[0]
    C[0] = cnp.PyArray_DIMS(x)[axis]
    S[0] = 1
    for k in range(1, nd):
        if k != axis:
            S[0] *= cnp.PyArray_DIMS(x)[k]
    cl[0] = axis != 1 or S[0] == 1
    return True


cdef object _fast_vec(object p, Py_ssize_t n, int typenum, int ctype):
    """A (C,) parameter for the kernels: None, or as _in_compute_dtype
    returns it."""
    cdef cnp.ndarray a
    if p is None:
        return None
    if not cnp.PyArray_CheckExact(p):
        return NotImplemented
    a = <cnp.ndarray>p
    if (cnp.PyArray_NDIM(a) != 1 or cnp.PyArray_DIMS(a)[0] != n or not _c_aligned(a)
            or not cnp.PyArray_ISNOTSWAPPED(a)):
        return NotImplemented
    return _in_compute_dtype(a, typenum, ctype)


cdef inline bint _fast_running(object a, Py_ssize_t C):
    """None, or a writeable contiguous native float32 / float64 (C,) ndarray."""
    cdef cnp.ndarray b
    if a is None:
        return True
    if not cnp.PyArray_CheckExact(a):
        return False
    b = <cnp.ndarray>a
    return (cnp.PyArray_NDIM(b) == 1 and cnp.PyArray_DIMS(b)[0] == C
            and (cnp.PyArray_TYPE(b) == cnp.NPY_FLOAT32 or cnp.PyArray_TYPE(b) == cnp.NPY_FLOAT64)
            and _c_aligned(b) and cnp.PyArray_ISWRITEABLE(b)
            and cnp.PyArray_ISNOTSWAPPED(b))


cdef void _blend(object buf, const double* value, Py_ssize_t C, double momentum, double factor):
    """buf = (1 - momentum) * buf + momentum * value * factor, rounded as the
    general path's NumPy expression (buf *= 1 - m; buf += (m * v).astype(buf.dtype))."""
    cdef cnp.ndarray b = <cnp.ndarray>buf
    if cnp.PyArray_TYPE(b) == cnp.NPY_FLOAT32:
        fn_blend_f(<float*>cnp.PyArray_DATA(b), value, C, momentum, factor)
    else:
        fn_blend_d(<double*>cnp.PyArray_DATA(b), value, C, momentum, factor)


cdef object _stats_out(const double* v, Py_ssize_t n, int ctype, double eps, bint inverse_std,
                       int nd, cnp.npy_intp* dims):
    """v (or 1 / sqrt(v + eps)) as a new array of the compute dtype, shape dims."""
    cdef object a = cnp.PyArray_EMPTY(nd, dims, ctype, 0)
    cdef Py_ssize_t i
    cdef float* f = <float*>cnp.PyArray_DATA(<cnp.ndarray>a)
    cdef double* d = <double*>cnp.PyArray_DATA(<cnp.ndarray>a)
    for i in range(n):
        if ctype == cnp.NPY_FLOAT32:
            f[i] = <float>(1.0 / sqrt(v[i] + eps) if inverse_std else v[i])
        else:
            d[i] = 1.0 / sqrt(v[i] + eps) if inverse_std else v[i]
    return a


def channel_norm_fast(int op, object x, object running_mean, object running_var, object weight,
                      object bias, object training, object momentum, object eps, object num_groups,
                      object channel_axis, object out, object n_threads, bint return_stats):
    """The fast path of batch_norm (op 0), group_norm (1) and instance_norm (2)."""
    cdef cnp.ndarray xa
    cdef Py_ssize_t N, C, S, cpg = 1, G, n_stats, c
    cdef bint cl, dbl, batch_stats, per_sample
    cdef double e = 0.0, m = 0.0
    if not cnp.PyArray_CheckExact(x):
        return NotImplemented
    xa = <cnp.ndarray>x
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef int ctype = _kernel_typenum(typenum)
    if ctype < 0 or not _fast_array(x, typenum) or not _fast_eps(eps, &e):
        return NotImplemented
    if not _fast_channel_layout(xa, channel_axis, &N, &C, &S, &cl) or N * C * S == 0:
        return NotImplemented
    if op == OP_GROUP:
        if type(num_groups) is not int or num_groups < 1 or C % num_groups:
            return NotImplemented
        G = num_groups
        cpg = C // G
        per_sample, batch_stats = True, True
        n_stats = N * G
    elif op == OP_INSTANCE:  # `training` is use_input_stats
        if (cnp.PyArray_NDIM(xa) < 3 or type(training) is not bool
                or not _fast_real(momentum, &m)
                or not _fast_running(running_mean, C) or not _fast_running(running_var, C)):
            return NotImplemented
        if running_mean is not None and running_var is not None and _bytes_overlap(running_mean, running_var):
            return NotImplemented
        batch_stats = training
        if batch_stats:
            if S <= 1:
                return NotImplemented
            per_sample = True
            n_stats = N * C
        else:  # the running statistics, one per channel
            if running_mean is None or running_var is None:
                return NotImplemented
            per_sample = False
            n_stats = C
    else:
        if type(training) is not bool or not _fast_real(momentum, &m):
            return NotImplemented
        if not _fast_running(running_mean, C) or not _fast_running(running_var, C):
            return NotImplemented
        if running_mean is not None and running_var is not None and _bytes_overlap(running_mean, running_var):
            return NotImplemented
        batch_stats = training
        per_sample = False
        n_stats = C
        if batch_stats and N * S <= 1:
            return NotImplemented
        if not batch_stats and (running_mean is None or running_var is None):
            return NotImplemented
    cdef object wa = _fast_vec(weight, C, typenum, ctype)
    cdef object ba = _fast_vec(bias, C, typenum, ctype)
    if wa is NotImplemented or ba is NotImplemented:
        return NotImplemented
    cdef object y = _fast_output(xa, out)
    if y is None or not _out_clear(out, wa, ba, running_mean, running_var):
        return NotImplemented
    cdef double* sm = <double*>scratch_alloc(2 * n_stats * sizeof(double) + 8)
    if sm == NULL:
        raise MemoryError()
    try:
        return _channel_norm_run(op, xa, y, running_mean, running_var, wa, ba, batch_stats, per_sample,
                                 m, e, N, C, S, cpg, cl, n_stats, ctype, typenum, n_threads,
                                 return_stats, sm, sm + n_stats)
    finally:
        scratch_free(sm)


cdef object _channel_norm_run(int op, cnp.ndarray xa, object y, object running_mean,
                              object running_var, object wa, object ba, bint batch_stats,
                              bint per_sample, double m, double e, Py_ssize_t N, Py_ssize_t C,
                              Py_ssize_t S, Py_ssize_t cpg, bint cl, Py_ssize_t n_stats, int ctype,
                              int typenum, object n_threads, bint return_stats, double* sm,
                              double* sv):
    """channel_norm_fast once its arguments are checked; sm, sv: n_stats
    doubles of scratch for the statistics."""
    cdef Py_ssize_t c
    cdef bint dbl
    cdef cnp.ndarray rm, rv
    if not batch_stats:
        rm, rv = <cnp.ndarray>running_mean, <cnp.ndarray>running_var
        for c in range(C):
            sm[c] = ((<float*>cnp.PyArray_DATA(rm))[c] if cnp.PyArray_TYPE(rm) == cnp.NPY_FLOAT32
                     else (<double*>cnp.PyArray_DATA(rm))[c])
            sv[c] = ((<float*>cnp.PyArray_DATA(rv))[c] if cnp.PyArray_TYPE(rv) == cnp.NPY_FLOAT32
                     else (<double*>cnp.PyArray_DATA(rv))[c])
    cdef int st = storage_of(typenum, &dbl)
    cdef int nth = resolve_threads(n_threads, N * C * S)
    cdef const char* xp = <const char*>cnp.PyArray_DATA(xa)
    cdef char* yp = <char*>cnp.PyArray_DATA(<cnp.ndarray>y)
    cdef void* w = _ptr_or_null(wa)
    cdef void* b = _ptr_or_null(ba)
    cdef int status
    if not dbl:
        with nogil:
            status = _channel_forward[float](xp, yp, st, cl, N, C, S, cpg, per_sample,
                                             <const float*>w, <const float*>b, e, batch_stats,
                                             sm, sv, nth)
    else:
        with nogil:
            status = _channel_forward[double](xp, yp, st, cl, N, C, S, cpg, per_sample,
                                              <const double*>w, <const double*>b, e, batch_stats,
                                              sm, sv, nth)
    if status != 0:
        raise MemoryError("fastnorm: out of memory in a channel normalization")
    if op == OP_BATCH and batch_stats:
        if running_mean is not None:
            _blend(running_mean, sm, C, m, 1.0)
        if running_var is not None:
            _blend(running_var, sv, C, m, <double>(N * S) / (N * S - 1))
    if op == OP_INSTANCE and batch_stats and (running_mean is not None or running_var is not None):
        _blend_instance(running_mean, running_var, sm, sv, N, C, S, m)
    if not return_stats:
        return y
    cdef cnp.npy_intp[2] dims
    cdef int nd = 1 if op == OP_BATCH else 2
    dims[0] = C if op == OP_BATCH else N
    dims[1] = C if op != OP_GROUP else n_stats // N
    if op == OP_INSTANCE and not batch_stats:  # the running statistics, for every sample
        return (y, _stats_out_tiled(sm, N, C, ctype, e, False), _stats_out_tiled(sv, N, C, ctype, e, True))
    return (y, _stats_out(sm, n_stats, ctype, e, False, nd, dims),
            _stats_out(sv, n_stats, ctype, e, True, nd, dims))


cdef void _blend_instance(object running_mean, object running_var, const double* sm, const double* sv,
                          Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, double m):
    """InstanceNorm's running statistics absorb the batch mean of the
    per-instance mean and unbiased variance, summed over the samples in order
    and divided by N (the general path's NumPy mean over axis 0)."""
    cdef double* avg = <double*>scratch_alloc(2 * C * sizeof(double) + 8)
    cdef double unbias = <double>S / <double>(S - 1)
    if avg == NULL:
        raise MemoryError()
    fn_mean_rows(sm, N, C, 1.0, avg)
    fn_mean_rows(sv, N, C, unbias, avg + C)
    if running_mean is not None:
        _blend(running_mean, avg, C, m, 1.0)
    if running_var is not None:
        _blend(running_var, avg + C, C, m, 1.0)
    scratch_free(avg)


cdef object _stats_out_tiled(const double* v, Py_ssize_t N, Py_ssize_t C, int ctype, double eps,
                             bint inverse_std):
    """(N, C) statistics of the compute dtype: the C values v for every sample."""
    cdef cnp.npy_intp[2] dims
    dims[0] = N
    dims[1] = C
    cdef object a = cnp.PyArray_EMPTY(2, dims, ctype, 0)
    cdef Py_ssize_t i
    cdef double t
    for i in range(N * C):
        t = 1.0 / sqrt(v[i % C] + eps) if inverse_std else v[i % C]
        if ctype == cnp.NPY_FLOAT32:
            (<float*>cnp.PyArray_DATA(<cnp.ndarray>a))[i] = <float>t
        else:
            (<double*>cnp.PyArray_DATA(<cnp.ndarray>a))[i] = t
    return a


cdef bint _fast_stats(object a, int nd, Py_ssize_t d0, Py_ssize_t d1, double* dst):
    """Saved statistics (a contiguous native float32 / float64 array of shape
    (d0,) or (d0, d1)) copied into dst as doubles; False when not that."""
    cdef cnp.ndarray b
    cdef Py_ssize_t i, n = d0 * (d1 if nd == 2 else 1)
    if not cnp.PyArray_CheckExact(a):
        return False
    b = <cnp.ndarray>a
    if (cnp.PyArray_NDIM(b) != nd or cnp.PyArray_DIMS(b)[0] != d0
            or (nd == 2 and cnp.PyArray_DIMS(b)[1] != d1)
            or not _c_aligned(b) or not cnp.PyArray_ISNOTSWAPPED(b)):
        return False
    if cnp.PyArray_TYPE(b) == cnp.NPY_FLOAT32:
        for i in range(n):
            dst[i] = (<float*>cnp.PyArray_DATA(b))[i]
    elif cnp.PyArray_TYPE(b) == cnp.NPY_FLOAT64:
        for i in range(n):
            dst[i] = (<double*>cnp.PyArray_DATA(b))[i]
    else:
        return False
    return True


cdef object _grad_as(object p, double* values, Py_ssize_t C):
    """A parameter's gradient (C doubles) as a new array of p's dtype."""
    cdef cnp.ndarray pa = <cnp.ndarray>p
    cdef int t = cnp.PyArray_TYPE(pa)
    cdef cnp.ndarray out = cnp.PyArray_EMPTY(1, cnp.PyArray_DIMS(pa), t, 0)
    cdef Py_ssize_t c
    cdef bint dbl
    cdef float* tmp
    if t == cnp.NPY_FLOAT64:
        for c in range(C):
            (<double*>cnp.PyArray_DATA(out))[c] = values[c]
    elif t == cnp.NPY_FLOAT32:
        for c in range(C):
            (<float*>cnp.PyArray_DATA(out))[c] = <float>values[c]
    else:  # 16-bit: round once from float
        tmp = <float*>scratch_alloc(C * sizeof(float) + 4)
        if tmp == NULL:
            raise MemoryError()
        for c in range(C):
            tmp[c] = <float>values[c]
        fn_narrow(storage_of(t, &dbl), tmp, cnp.PyArray_DATA(out), C)
        scratch_free(tmp)
    return out


def channel_backward_fast(int op, object grad_out, object x, object mean, object rstd,
                          object weight, object bias, object batch_stats, object num_groups,
                          object channel_axis, object n_threads):
    """The fast path of batch_norm_backward (op 0), group_norm_backward (1)
    and instance_norm_backward (2); NotImplemented for anything else."""
    cdef cnp.ndarray xa
    cdef Py_ssize_t N, C, S, cpg = 1, d0, d1 = 1
    cdef bint cl, dbl, per_sample
    cdef int nd
    if not cnp.PyArray_CheckExact(x) or type(batch_stats) is not bool:
        return NotImplemented
    xa = <cnp.ndarray>x
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef int ctype = _kernel_typenum(typenum)
    if (ctype < 0 or not _fast_array(x, typenum) or not _fast_array(grad_out, typenum)
            or not _same_dims(<cnp.ndarray>grad_out, xa, 0)):
        return NotImplemented
    if not _fast_channel_layout(xa, channel_axis, &N, &C, &S, &cl) or N * C * S == 0:
        return NotImplemented
    if op == OP_GROUP:
        if type(num_groups) is not int or num_groups < 1 or C % num_groups:
            return NotImplemented
        cpg = C // num_groups
        nd, d0, d1 = 2, N, num_groups
    elif op == OP_INSTANCE:
        if cnp.PyArray_NDIM(xa) < 3:
            return NotImplemented
        nd, d0, d1 = 2, N, C
    else:
        nd, d0 = 1, C
    per_sample = op != OP_BATCH
    cdef object wa = _fast_vec(weight, C, typenum, ctype)
    cdef object ba = _fast_vec(bias, C, typenum, ctype)
    if wa is NotImplemented or ba is NotImplemented:
        return NotImplemented
    cdef Py_ssize_t n_stats = d0 * d1
    cdef double* buf = <double*>scratch_alloc((2 * n_stats + 2 * C) * sizeof(double) + 8)
    if buf == NULL:
        raise MemoryError()
    cdef double* sm = buf
    cdef double* sr = buf + n_stats
    cdef double* gw = buf + 2 * n_stats
    cdef double* gb = gw + C
    if not _fast_stats(mean, nd, d0, d1, sm) or not _fast_stats(rstd, nd, d0, d1, sr):
        scratch_free(buf)
        return NotImplemented
    cdef object dx = empty_array(cnp.PyArray_NDIM(xa), cnp.PyArray_DIMS(xa), typenum)
    cdef int st = storage_of(typenum, &dbl)
    cdef int nth = resolve_threads(n_threads, N * C * S)
    cdef const char* gp = <const char*>cnp.PyArray_DATA(<cnp.ndarray>grad_out)
    cdef const char* xp = <const char*>cnp.PyArray_DATA(xa)
    cdef char* dp = <char*>cnp.PyArray_DATA(<cnp.ndarray>dx)
    cdef void* w = _ptr_or_null(wa)
    cdef double* gwp = gw if weight is not None else NULL
    cdef double* gbp = gb if bias is not None else NULL
    cdef bint bs = batch_stats
    cdef int status
    if not dbl:
        with nogil:
            status = _channel_backward[float](gp, xp, dp, st, cl, N, C, S, cpg, per_sample,
                                              <const float*>w, sm, sr, bs, gwp, gbp, nth)
    else:
        with nogil:
            status = _channel_backward[double](gp, xp, dp, st, cl, N, C, S, cpg, per_sample,
                                               <const double*>w, sm, sr, bs, gwp, gbp, nth)
    if status != 0:
        scratch_free(buf)
        raise MemoryError("fastnorm: out of memory in a channel normalization backward")
    cdef object grad_w = _grad_as(weight, gw, C) if weight is not None else None
    cdef object grad_b = _grad_as(bias, gb, C) if bias is not None else None
    scratch_free(buf)
    return dx, grad_w, grad_b
