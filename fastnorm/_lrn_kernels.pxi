# Local Response Normalization (torch.nn.functional.local_response_norm):
# included by _kernels.pxi.
#
# scale_c = k + alpha / size * sum of x_j^2 over the zero-padded window
# j in [c - size//2, c + (size-1)//2]; y_c = x_c * scale_c^-beta.  The window
# sums slide along the channels with one add and one subtract per element
# (O(1), not O(size)), in float64 planes so that the running sum does not drift.
# Subtracting the value that leaves a window fails when it is not finite
# (inf - inf is NaN), when the sum overflowed, and when the sum has shrunk far
# below the largest magnitude it held (rounding left by that magnitude
# dominates what remains).  So each position keeps the sum of the magnitudes
# added since its last exact computation (a bound on every partial sum, so on
# the rounding); where the sum is not finite or falls below 1/1024 of that
# bound, it is recomputed over its window.  A non-finite value then affects exactly the windows that
# hold it, and a sum carries at most ~1024 * (channels) ulps of error.
# Work is split into units: channels-first, (sample, chunk of positions);
# channels-last, LRN_CL_ROWS positions, transposed into a channels-first tile
# in cache, run by the same code, and transposed back (no whole-array copy).
# float16 / bfloat16 storage always takes tiles, widened on the way in and
# narrowed on the way out (the float32 code in between).

from libc.math cimport exp, log, sqrtf, fabs, INFINITY

cdef enum:
    LRN_CHUNK = 512     # positions per unit (channels-first)
    LRN_CL_ROWS = 32    # rows per unit (channels-last), transposed into a tile


# a float32 scale s outside (2^-100, 2^100) takes its power s^-beta and the
# product x * s^-beta in double: in float32 the power would fall into the
# subnormals (or overflow) for |beta| up to 1.26, and s itself may be inf
# where the window's sum of squares is beyond float32's range (|x| > 2^64)
# (FLOAT_FACTOR_LO / HI, in _kernels.pxi)


cdef inline bint _window_lost(double remaining, double peak) noexcept nogil:
    """Whether a sliding sum of magnitude `remaining` must be recomputed: it
    is not finite, or it is under 1/1024 of `peak`, the magnitudes added to it
    since its last exact computation."""
    return not ((remaining * 1024.0 >= peak) & (remaining < INFINITY))


cdef inline double _neg_pow(double s, double beta) noexcept nogil:
    """s ** -beta, with the common exponents without pow (s^-0.75 as r * sqrt(r),
    r = s^-0.5: s^1.5 would overflow for s beyond 1e205)."""
    cdef double r
    if beta == 0.75:
        r = 1.0 / sqrt(s)
        return r * sqrt(r)
    if beta == 0.5:
        return 1.0 / sqrt(s)
    if beta == 1.0:
        return 1.0 / s
    return exp(-beta * log(s))


cdef void _neg_pow_plane(floating* v, Py_ssize_t n, double beta) noexcept nogil:
    """v[i] = v[i] ** -beta over a plane, in v's own precision: one loop per
    common exponent (square roots and divisions, vectorized), else exp/log.
    v^-0.75 is taken as r * sqrt(r), r = v^-0.5, never forming v^1.5 (which
    leaves float32's range for v beyond 5e25 or below 1e-26)."""
    cdef Py_ssize_t i
    cdef float one = 1, r
    if floating is float:
        if beta == 0.75:
            for i in range(n):
                r = one / sqrtf(v[i])
                v[i] = r * sqrtf(r)
            return
        if beta == 0.5:
            for i in range(n):
                v[i] = one / sqrtf(v[i])
            return
    for i in range(n):
        v[i] = <floating>_neg_pow(v[i], beta)


cdef void _lrn_unit(const floating* x, floating* y, floating* scale_out, Py_ssize_t C, Py_ssize_t S,
                    Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t size, double alpha, double beta,
                    double k, double* acc, floating* plane) noexcept nogil:
    """One sample (x: C planes of S), positions s0..s1; acc: 2 * LRN_CHUNK
    doubles (window sums, then their magnitude bounds), plane: s1 - s0 scratch values;
    scale_out may be NULL (not wanted)."""
    cdef Py_ssize_t lo = size // 2, hi = (size - 1) // 2, c, j, s, L = s1 - s0
    cdef const floating* p
    cdef floating* q
    cdef double a = alpha / size, v
    cdef double* peak = acc + LRN_CHUNK
    cdef Py_ssize_t bad
    for s in range(L):
        acc[s] = 0
    for j in range(0, hi + 1 if hi + 1 < C else C):   # window of channel 0: [-lo, hi]
        p = x + j * S + s0
        for s in range(L):
            acc[s] += <double>p[s] * p[s]
    for s in range(L):
        peak[s] = acc[s]
    for c in range(C):
        p = x + c * S + s0
        q = y + c * S + s0
        bad = 0
        for s in range(L):
            v = k + a * acc[s]
            plane[s] = <floating>v
            if floating is float:
                bad += not ((v > FLOAT_FACTOR_LO) & (v < FLOAT_FACTOR_HI))
        if scale_out != NULL:
            memcpy(scale_out + c * S + s0, plane, L * sizeof(floating))
        if bad:  # a scale beyond float32's safe range: this plane's powers in double
            for s in range(L):
                q[s] = <floating>(<double>p[s] * _neg_pow(k + a * acc[s], beta))
        else:
            _neg_pow_plane(plane, L, beta)
            for s in range(L):
                q[s] = p[s] * plane[s]
        if c + 1 + hi < C:          # slide: the window of c + 1 gains c + 1 + hi ...
            p = x + (c + 1 + hi) * S + s0
            for s in range(L):
                v = <double>p[s] * p[s]
                acc[s] += v
                peak[s] += v
        if c - lo >= 0:             # ... and loses c - lo
            p = x + (c - lo) * S + s0
            bad = 0
            for s in range(L):
                v = <double>p[s] * p[s]
                acc[s] -= v
                bad += _window_lost(acc[s], peak[s])
            if bad:  # recompute those positions over the window of c + 1
                for s in range(L):
                    if _window_lost(acc[s], peak[s]):
                        acc[s] = 0
                        for j in range(c + 1 - lo, (c + 2 + hi) if c + 2 + hi < C else C):
                            acc[s] += <double>x[j * S + s0 + s] * x[j * S + s0 + s]
                        peak[s] = acc[s]


cdef void _lrn_add_channel(const floating* g, const floating* x, const floating* scale,
                           Py_ssize_t q0, Py_ssize_t L, double beta, floating* r, double* t,
                           double* acc) noexcept nogil:
    """r = scale^-beta and t = g x scale^(-beta-1) of one channel's positions
    q0..q0+L into ring planes; t is added to the sliding sum acc, whose magnitude bounds
    (acc + LRN_CHUNK) add |t|."""
    cdef Py_ssize_t s
    cdef double* peak = acc + LRN_CHUNK
    memcpy(r, scale + q0, L * sizeof(floating))
    _neg_pow_plane(r, L, beta)
    for s in range(L):
        t[s] = <double>g[q0 + s] * x[q0 + s] * (<double>r[s] / scale[q0 + s])  # s^(-beta-1), in double
        acc[s] += t[s]
        peak[s] += fabs(t[s])


cdef inline Py_ssize_t _ring_planes(Py_ssize_t size, Py_ssize_t C) noexcept nogil:
    """Planes of the backward's rings: a ring holds the channels of a window
    clipped to [0, C), at most min(size, C) of them, and channel c sits in
    plane c % size (< min(size, C)): a huge `size` needs no more memory."""
    return size if size < C else (C if C > 0 else 1)


cdef void _lrn_backward_unit(const floating* g, const floating* x, const floating* scale,
                             floating* dx, Py_ssize_t C, Py_ssize_t S, Py_ssize_t s0, Py_ssize_t s1,
                             Py_ssize_t size, double alpha, double beta, double* acc,
                             double* ring, floating* rring) noexcept nogil:
    """dx_i = g_i s_i^-beta - 2 alpha beta / size * x_i * sum over the channels c
    whose window holds i (c in [i - hi, i + lo]) of t_c = g_c x_c s_c^(-beta-1).
    t and s^-beta are computed once per element into rings of `size` planes
    (ring: double t, which the sliding sum adds and later subtracts; rring:
    s^-beta, used again for dx).  At step i the rings hold channels i - hi ..
    i + lo, so channel i's planes are there."""
    cdef Py_ssize_t lo = size // 2, hi = (size - 1) // 2, c, i, s, L = s1 - s0, q0, bad
    cdef double coef = 2.0 * alpha * beta / size, m
    cdef double* plane
    cdef double* peak = acc + LRN_CHUNK
    cdef const floating* r
    for s in range(L):
        acc[s] = 0
        peak[s] = 0
    for c in range(0, lo + 1 if lo + 1 < C else C):   # channels whose window holds i = 0: [-hi, lo]
        _lrn_add_channel(g, x, scale, c * S + s0, L, beta, rring + (c % size) * LRN_CHUNK,
                         ring + (c % size) * LRN_CHUNK, acc)
    for i in range(C):
        q0 = i * S + s0
        r = rring + (i % size) * LRN_CHUNK
        for s in range(L):
            dx[q0 + s] = <floating>(<double>g[q0 + s] * r[s] - coef * x[q0 + s] * acc[s])
        if i - hi >= 0:        # drop t of channel i - hi
            plane = ring + ((i - hi) % size) * LRN_CHUNK
            bad = 0
            for s in range(L):
                acc[s] -= plane[s]
                bad += _window_lost(fabs(acc[s]), peak[s])
            if bad:  # recompute from the ring's other planes, i - hi + 1 .. i + lo
                for s in range(L):
                    if _window_lost(fabs(acc[s]), peak[s]):
                        acc[s] = 0
                        peak[s] = 0
                        for c in range(i - hi + 1, (i + lo + 1) if i + lo + 1 < C else C):
                            m = ring[(c % size) * LRN_CHUNK + s]
                            acc[s] += m
                            peak[s] += fabs(m)
        if i + 1 + lo < C:     # add channel i + 1 + lo (into the planes just dropped)
            c = i + 1 + lo
            _lrn_add_channel(g, x, scale, c * S + s0, L, beta, rring + (c % size) * LRN_CHUNK,
                             ring + (c % size) * LRN_CHUNK, acc)


cdef inline void _transpose(const floating* src, floating* dst, Py_ssize_t rows,
                            Py_ssize_t cols) noexcept nogil:
    """dst (cols, rows) = src (rows, cols)^T, both contiguous (an in-cache tile)."""
    cdef Py_ssize_t i, c
    for i in range(rows):
        for c in range(cols):
            dst[c * rows + i] = src[i * cols + c]


cdef void _lrn_forward_part(const floating* x, floating* y, floating* sc, bint cl, Py_ssize_t N,
                            Py_ssize_t C, Py_ssize_t S, Py_ssize_t u0, Py_ssize_t u1, Py_ssize_t size,
                            double alpha, double beta, double k, double* scratch) noexcept nogil:
    """Units u0..u1 of the forward.  Channels-first: a unit is (sample, chunk
    of LRN_CHUNK positions).  Channels-last: a unit is LRN_CL_ROWS rows (positions)
    of C channels, transposed into a channels-first tile in cache, run as
    one chunk, and transposed back.  scratch: _lrn_scratch doubles."""
    cdef Py_ssize_t chunks = (S + LRN_CHUNK - 1) // LRN_CHUNK, u, n, s0, s1, L, P = N * S
    cdef double* acc = scratch  # window sums and their magnitude bounds: 2 * LRN_CHUNK
    cdef floating* plane = <floating*>(scratch + 2 * LRN_CHUNK)
    cdef floating* xt = <floating*>(scratch + 3 * LRN_CHUNK)
    cdef floating* yt = xt + C * LRN_CL_ROWS
    cdef floating* st = yt + C * LRN_CL_ROWS
    for u in range(u0, u1):
        if not cl:
            n = u // chunks
            s0 = (u % chunks) * LRN_CHUNK
            s1 = s0 + LRN_CHUNK if s0 + LRN_CHUNK < S else S
            _lrn_unit(x + n * C * S, y + n * C * S, sc + n * C * S if sc != NULL else NULL,
                      C, S, s0, s1, size, alpha, beta, k, acc, plane)
            continue
        s0 = u * LRN_CL_ROWS
        L = LRN_CL_ROWS if s0 + LRN_CL_ROWS <= P else P - s0
        _transpose(x + s0 * C, xt, L, C)
        _lrn_unit(xt, yt, st if sc != NULL else NULL, C, L, 0, L, size, alpha, beta, k, acc, plane)
        _transpose(yt, y + s0 * C, C, L)
        if sc != NULL:
            _transpose(st, sc + s0 * C, C, L)


cdef void _lrn_backward_part(const floating* g, const floating* x, const floating* sc, floating* dx,
                             bint cl, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t u0,
                             Py_ssize_t u1, Py_ssize_t size, double alpha, double beta,
                             double* scratch) noexcept nogil:
    """Units u0..u1 of the backward, as _lrn_forward_part."""
    cdef Py_ssize_t chunks = (S + LRN_CHUNK - 1) // LRN_CHUNK, u, n, s0, s1, L, P = N * S
    cdef Py_ssize_t planes = _ring_planes(size, C)
    cdef double* acc = scratch  # window sums and their magnitude bounds: 2 * LRN_CHUNK
    cdef double* ring = scratch + 2 * LRN_CHUNK
    cdef floating* rring = <floating*>(scratch + (planes + 2) * LRN_CHUNK)
    cdef floating* gt = <floating*>(scratch + (2 * planes + 2) * LRN_CHUNK)
    cdef floating* xt = gt + C * LRN_CL_ROWS
    cdef floating* st = xt + C * LRN_CL_ROWS
    cdef floating* dt = st + C * LRN_CL_ROWS
    for u in range(u0, u1):
        if not cl:
            n = u // chunks
            s0 = (u % chunks) * LRN_CHUNK
            s1 = s0 + LRN_CHUNK if s0 + LRN_CHUNK < S else S
            _lrn_backward_unit(g + n * C * S, x + n * C * S, sc + n * C * S, dx + n * C * S,
                               C, S, s0, s1, size, alpha, beta, acc, ring, rring)
            continue
        s0 = u * LRN_CL_ROWS
        L = LRN_CL_ROWS if s0 + LRN_CL_ROWS <= P else P - s0
        _transpose(g + s0 * C, gt, L, C)
        _transpose(x + s0 * C, xt, L, C)
        _transpose(sc + s0 * C, st, L, C)
        _lrn_backward_unit(gt, xt, st, dt, C, L, 0, L, size, alpha, beta, acc, ring, rring)
        _transpose(dt, dx + s0 * C, C, L)


# ---------------------------------------------------------------- 16-bit storage
# float16 / bfloat16 x (and grad) in either layout: a unit is LRN_CL_ROWS
# positions of one sample (channels-first) or LRN_CL_ROWS rows (channels-last),
# gathered into a channels-first float32 tile in cache (widened), run by the
# float32 unit, and scattered back (narrowed).  The scale (a saved statistic)
# is float32, in x's layout.

cdef void _tile_gather16(const char* x, int st, bint cl, Py_ssize_t C, Py_ssize_t S,
                         Py_ssize_t base, Py_ssize_t s0, Py_ssize_t L, float* t,
                         uint16_t* t16) noexcept nogil:
    """t (C, L) = the widened values at positions s0..s0+L (channels-first:
    of the sample starting at value `base`; channels-last: rows s0..)."""
    cdef Py_ssize_t c, i
    cdef const uint16_t* h = <const uint16_t*>x
    if not cl:
        for c in range(C):
            fn_widen(st, h + base + c * S + s0, t + c * L, L)
        return
    for i in range(L):
        for c in range(C):
            t16[c * L + i] = h[(s0 + i) * C + c]
    fn_widen(st, t16, t, C * L)


cdef void _tile_scatter16(const float* t, int st, bint cl, Py_ssize_t C, Py_ssize_t S,
                          Py_ssize_t base, Py_ssize_t s0, Py_ssize_t L, char* y,
                          uint16_t* t16) noexcept nogil:
    """The inverse of _tile_gather16: t narrowed into y."""
    cdef Py_ssize_t c, i
    cdef uint16_t* h = <uint16_t*>y
    if not cl:
        for c in range(C):
            fn_narrow(st, t + c * L, h + base + c * S + s0, L)
        return
    fn_narrow(st, t, t16, C * L)
    for i in range(L):
        for c in range(C):
            h[(s0 + i) * C + c] = t16[c * L + i]


cdef inline void _tile_floats(const float* src, float* dst, bint cl, bint to_tile, Py_ssize_t C,
                              Py_ssize_t S, Py_ssize_t base, Py_ssize_t s0, Py_ssize_t L) noexcept nogil:
    """The float32 scale between its array (x's layout) and a (C, L) tile."""
    cdef Py_ssize_t c
    if cl:
        if to_tile:
            _transpose(src + s0 * C, dst, L, C)
        else:
            _transpose(src, dst + s0 * C, C, L)
        return
    for c in range(C):
        if to_tile:
            memcpy(dst + c * L, src + base + c * S + s0, L * sizeof(float))
        else:
            memcpy(dst + base + c * S + s0, src + c * L, L * sizeof(float))


cdef inline void _unit16(bint cl, Py_ssize_t N, Py_ssize_t S, Py_ssize_t u, Py_ssize_t C,
                         Py_ssize_t* base, Py_ssize_t* s0, Py_ssize_t* L) noexcept nogil:
    """Where unit u of a 16-bit LRN lies (see _lrn_units16)."""
    cdef Py_ssize_t chunks = (S + LRN_CL_ROWS - 1) // LRN_CL_ROWS
    if cl:
        base[0] = 0
        s0[0] = u * LRN_CL_ROWS
        L[0] = LRN_CL_ROWS if s0[0] + LRN_CL_ROWS <= N * S else N * S - s0[0]
    else:
        base[0] = (u // chunks) * C * S
        s0[0] = (u % chunks) * LRN_CL_ROWS
        L[0] = LRN_CL_ROWS if s0[0] + LRN_CL_ROWS <= S else S - s0[0]


cdef void _lrn_forward_part16(const char* x, char* y, float* sc, int st, bint cl, Py_ssize_t N,
                              Py_ssize_t C, Py_ssize_t S, Py_ssize_t u0, Py_ssize_t u1,
                              Py_ssize_t size, double alpha, double beta, double k,
                              double* scratch) noexcept nogil:
    """Units u0..u1 of a 16-bit forward.  scratch: _lrn_scratch16 doubles."""
    cdef Py_ssize_t u, base, s0, L
    cdef double* acc = scratch
    cdef float* plane = <float*>(scratch + 2 * LRN_CHUNK)
    cdef float* xt = <float*>(scratch + 3 * LRN_CHUNK)
    cdef float* yt = xt + C * LRN_CL_ROWS
    cdef float* stile = yt + C * LRN_CL_ROWS
    cdef uint16_t* t16 = <uint16_t*>(stile + C * LRN_CL_ROWS)
    for u in range(u0, u1):
        _unit16(cl, N, S, u, C, &base, &s0, &L)
        _tile_gather16(x, st, cl, C, S, base, s0, L, xt, t16)
        _lrn_unit(<const float*>xt, yt, stile if sc != NULL else NULL, C, L, 0, L, size, alpha, beta,
                  k, acc, plane)
        _tile_scatter16(yt, st, cl, C, S, base, s0, L, y, t16)
        if sc != NULL:
            _tile_floats(stile, sc, cl, False, C, S, base, s0, L)


cdef void _lrn_backward_part16(const char* g, const char* x, const float* sc, char* dx, int st,
                               bint cl, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t u0,
                               Py_ssize_t u1, Py_ssize_t size, double alpha, double beta,
                               double* scratch) noexcept nogil:
    """Units u0..u1 of a 16-bit backward, as _lrn_forward_part16."""
    cdef Py_ssize_t u, base, s0, L
    cdef Py_ssize_t planes = _ring_planes(size, C)
    cdef double* acc = scratch
    cdef double* ring = scratch + 2 * LRN_CHUNK
    cdef float* rring = <float*>(scratch + (planes + 2) * LRN_CHUNK)
    cdef float* gt = <float*>(scratch + (2 * planes + 2) * LRN_CHUNK)
    cdef float* xt = gt + C * LRN_CL_ROWS
    cdef float* stile = xt + C * LRN_CL_ROWS
    cdef float* dt = stile + C * LRN_CL_ROWS
    cdef uint16_t* t16 = <uint16_t*>(dt + C * LRN_CL_ROWS)
    for u in range(u0, u1):
        _unit16(cl, N, S, u, C, &base, &s0, &L)
        _tile_gather16(g, st, cl, C, S, base, s0, L, gt, t16)
        _tile_gather16(x, st, cl, C, S, base, s0, L, xt, t16)
        _tile_floats(sc, stile, cl, True, C, S, base, s0, L)
        _lrn_backward_unit(<const float*>gt, <const float*>xt, <const float*>stile, dt, C, L, 0, L,
                           size, alpha, beta, acc, ring, rring)
        _tile_scatter16(dt, st, cl, C, S, base, s0, L, dx, t16)


cdef inline Py_ssize_t _lrn_units(bint cl, bint half, Py_ssize_t N, Py_ssize_t S) noexcept nogil:
    """Units of work: channels-last, LRN_CL_ROWS rows; channels-first, chunks
    of LRN_CHUNK positions of a sample (LRN_CL_ROWS for 16-bit storage)."""
    if cl:
        return (N * S + LRN_CL_ROWS - 1) // LRN_CL_ROWS
    return N * ((S + LRN_CL_ROWS - 1) // LRN_CL_ROWS if half else (S + LRN_CHUNK - 1) // LRN_CHUNK)


def lrn_forward(cnp.ndarray x, cnp.ndarray y, object scale, bint cl, Py_ssize_t N, Py_ssize_t C,
                Py_ssize_t S, Py_ssize_t size, double alpha, double beta, double k, object n_threads):
    """x, y: C-contiguous (N, C, S), or (N, S, C) when cl, of one storage
    dtype; scale: the same layout in the compute dtype, or None (not wanted)."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef bint dbl
    cdef int st = storage_of(typenum, &dbl)
    cdef int ctype = _kernel_typenum(typenum)
    _check_flat(x, typenum, N * C * S, "x")
    _check_flat(y, typenum, N * C * S, "y")
    if scale is not None:
        _check_flat(scale, ctype, N * C * S, "scale")
    cdef int nth = resolve_threads(n_threads, N * C * S * _ring_planes(size, C))
    cdef Py_ssize_t units = _lrn_units(cl, st != ST_NATIVE, N, S)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef void* sp = cnp.PyArray_DATA(scale) if scale is not None else NULL
    # per thread: LRN_CHUNK window sums and as many bounds, a plane of LRN_CHUNK
    # values, and (channels-last, 16-bit) three tiles of C x LRN_CL_ROWS values
    # (16-bit: and one of C x LRN_CL_ROWS 16-bit values)
    cdef Py_ssize_t per = 3 * LRN_CHUNK + (4 * C * LRN_CL_ROWS if cl or st != ST_NATIVE else 0)
    cdef double* scratch = <double*>scratch_alloc(nth * per * sizeof(double) + 8)
    cdef int p
    if scratch == NULL:
        raise MemoryError()
    if N * C * S > 0:
        with nogil:
            for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                if st != ST_NATIVE:
                    _lrn_forward_part16(<const char*>xp, <char*>yp, <float*>sp, st, cl, N, C, S,
                                        _part_start(units, nth, p), _part_start(units, nth, p + 1),
                                        size, alpha, beta, k, scratch + p * per)
                elif not dbl:
                    _lrn_forward_part[float](<const float*>xp, <float*>yp, <float*>sp, cl, N, C, S,
                                             _part_start(units, nth, p), _part_start(units, nth, p + 1),
                                             size, alpha, beta, k, scratch + p * per)
                else:
                    _lrn_forward_part[double](<const double*>xp, <double*>yp, <double*>sp, cl, N, C, S,
                                              _part_start(units, nth, p), _part_start(units, nth, p + 1),
                                              size, alpha, beta, k, scratch + p * per)
    scratch_free(scratch)


def lrn_backward(cnp.ndarray g, cnp.ndarray x, cnp.ndarray scale, cnp.ndarray dx, bint cl,
                 Py_ssize_t N, Py_ssize_t C, Py_ssize_t S, Py_ssize_t size, double alpha,
                 double beta, object n_threads):
    """g, x, dx in one layout and storage dtype, scale in its compute dtype,
    as lrn_forward."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef bint dbl
    cdef int st = storage_of(typenum, &dbl)
    _check_flat(x, typenum, N * C * S, "x")
    _check_flat(g, typenum, N * C * S, "grad_out")
    _check_flat(scale, _kernel_typenum(typenum), N * C * S, "scale")
    _check_flat(dx, typenum, N * C * S, "grad_x")
    cdef Py_ssize_t planes = _ring_planes(size, C)
    cdef int nth = resolve_threads(n_threads, N * C * S * planes)
    cdef Py_ssize_t units = _lrn_units(cl, st != ST_NATIVE, N, S)
    cdef void* gp = cnp.PyArray_DATA(g)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* sp = cnp.PyArray_DATA(scale)
    cdef void* dp = cnp.PyArray_DATA(dx)
    # per thread: the sliding sums and their bounds, a ring of size double planes, a
    # ring of size value planes, and (channels-last, 16-bit) four tiles of
    # C x LRN_CL_ROWS values (16-bit: and one of 16-bit values)
    cdef Py_ssize_t per = (2 * planes + 2) * LRN_CHUNK + (5 * C * LRN_CL_ROWS if cl or st != ST_NATIVE else 0)
    cdef double* scratch = <double*>scratch_alloc(nth * per * sizeof(double) + 8)
    cdef int p
    if scratch == NULL:
        raise MemoryError()
    if N * C * S > 0:
        with nogil:
            for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                if st != ST_NATIVE:
                    _lrn_backward_part16(<const char*>gp, <const char*>xp, <const float*>sp, <char*>dp,
                                         st, cl, N, C, S, _part_start(units, nth, p),
                                         _part_start(units, nth, p + 1), size, alpha, beta,
                                         scratch + p * per)
                elif not dbl:
                    _lrn_backward_part[float](<const float*>gp, <const float*>xp, <const float*>sp,
                                              <float*>dp, cl, N, C, S, _part_start(units, nth, p),
                                              _part_start(units, nth, p + 1), size, alpha, beta,
                                              scratch + p * per)
                else:
                    _lrn_backward_part[double](<const double*>gp, <const double*>xp, <const double*>sp,
                                               <double*>dp, cl, N, C, S, _part_start(units, nth, p),
                                               _part_start(units, nth, p + 1), size, alpha, beta,
                                               scratch + p * per)
    scratch_free(scratch)


# ---------------------------------------------------------------- fast entries

cdef bint _fast_lrn_scalars(object size, object alpha, object beta, object k, double* a, double* b,
                            double* kk):
    if type(size) is not int or not 1 <= size <= (1 << 20):
        return False
    return _fast_real(alpha, a) and _fast_real(beta, b) and _fast_real(k, kk)


def lrn_fast(object x, object size, object alpha, object beta, object k, object channel_axis,
             object out, object n_threads, bint return_stats):
    """Fast path of local_response_norm (a contiguous x of a kernel dtype)."""
    cdef Py_ssize_t N, C, S
    cdef bint cl
    cdef double a, b, kk
    if not cnp.PyArray_CheckExact(x):
        return NotImplemented
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef int ctype = _kernel_typenum(typenum)
    if (ctype < 0 or not _fast_array(x, typenum)
            or cnp.PyArray_NDIM(xa) < 3 or not _fast_lrn_scalars(size, alpha, beta, k, &a, &b, &kk)
            or not _fast_channel_layout(xa, channel_axis, &N, &C, &S, &cl) or N * C * S == 0):
        return NotImplemented
    if out is x:  # the sliding window reads channels it has passed: in place needs a temporary
        return NotImplemented
    cdef object y = _fast_output(xa, out)
    if y is None:
        return NotImplemented
    cdef object scale = (empty_array(cnp.PyArray_NDIM(xa), cnp.PyArray_DIMS(xa), ctype)
                         if return_stats else None)
    lrn_forward(xa, <cnp.ndarray>y, scale, cl, N, C, S, size, a, b, kk, n_threads)
    return (y, scale) if return_stats else y


def lrn_backward_fast(object grad_out, object x, object scale, object size, object alpha, object beta,
                      object k, object channel_axis, object n_threads):
    """Fast path of local_response_norm_backward (scale in the compute dtype)."""
    cdef Py_ssize_t N, C, S
    cdef bint cl
    cdef double a, b, kk
    if not cnp.PyArray_CheckExact(x):
        return NotImplemented
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef int ctype = _kernel_typenum(typenum)
    if (ctype < 0 or not _fast_array(x, typenum)
            or cnp.PyArray_NDIM(xa) < 3 or not _fast_lrn_scalars(size, alpha, beta, k, &a, &b, &kk)
            or not _fast_array(grad_out, typenum) or not _same_dims(<cnp.ndarray>grad_out, xa, 0)
            or not _fast_array(scale, ctype) or not _same_dims(<cnp.ndarray>scale, xa, 0)
            or not _fast_channel_layout(xa, channel_axis, &N, &C, &S, &cl) or N * C * S == 0):
        return NotImplemented
    cdef object dx = empty_array(cnp.PyArray_NDIM(xa), cnp.PyArray_DIMS(xa), typenum)
    lrn_backward(<cnp.ndarray>grad_out, xa, <cnp.ndarray>scale, <cnp.ndarray>dx, cl, N, C, S, size, a, b,
                 n_threads)
    return dx
