# Filter Response Normalization + TLU (Singh & Krishnan 2019), channels-first
# blocks: included by _kernels.pxi.  Per (sample, channel) block of S values:
# nu2 = mean(x^2), rstd = 1/sqrt(nu2 + eps), z = w * x * rstd + b,
# y = max(z, tau) (y = z without tau), NaN when either is NaN, as
# torch.maximum.  Channels-last input has its own kernels (below).


cdef inline floating _tlu(floating z, floating tau) noexcept nogil:
    """max(z, tau), NaN when either is NaN (as torch.maximum)."""
    return z if (z > tau or z != z) else tau


cdef inline floating _tlu_grad_z(floating z, floating tau, floating g) noexcept nogil:
    """The share of g that goes to z in max(z, tau), as torch.maximum's
    backward: all of it above tau, half at a tie, none below; all of it when
    either is NaN (no comparison holds).  Selects among precomputed values,
    not 0 / 1 factors (an infinite g must give 0 where its share is none, not
    inf * 0 = NaN); half is computed unconditionally so that the selects
    vectorize as blends."""
    cdef floating half = g * <floating>0.5
    return half if z == tau else (<floating>0 if z < tau else g)


cdef inline floating _tlu_grad_tau(floating z, floating tau, floating g) noexcept nogil:
    """The share of g that goes to tau (the mirror of _tlu_grad_z)."""
    cdef floating half = g * <floating>0.5
    return half if z == tau else (<floating>0 if z > tau else g)


cdef void _frn_block_forward(const floating* x, floating* y, Py_ssize_t S, double eps,
                             floating w, floating b, floating tau, bint has_tau,
                             floating* rstd_out) noexcept nogil:
    cdef double r = 1.0 / sqrt(_sum_squares(x, S) / S + eps)
    cdef floating a = <floating>(w * r)
    cdef floating z
    cdef Py_ssize_t k
    rstd_out[0] = <floating>r
    if has_tau:
        for k in range(S):
            y[k] = _tlu(x[k] * a + b, tau)
    else:
        for k in range(S):
            y[k] = x[k] * a + b


cdef void _frn_block_backward(const floating* g, const floating* x, floating* dx, Py_ssize_t S,
                              floating w, floating b, floating tau, bint has_tau, floating rstd,
                              double* sum_gz, double* sum_gz_xhat, double* sum_gtau) noexcept nogil:
    """gz, gtau: g's shares of z and tau in max(z, tau) (_tlu_grad_z /
    _tlu_grad_tau); dx = w*rstd*gz - (x*rstd) * w * rstd^2 * sum(gz * x) / S.  The
    sums run in `floating` lanes flushed to double lanes, as the row sums."""
    cdef floating acc_a[LANES]
    cdef floating acc_x[LANES]
    cdef floating acc_t[LANES]
    cdef double lanes_a[LANES]
    cdef double lanes_x[LANES]
    cdef double lanes_t[LANES]
    cdef floating a = w * rstd, z, gz
    cdef double sa = 0.0, sx = 0.0, st = 0.0
    cdef Py_ssize_t i = 0, k, end, vend
    cdef int j
    for j in range(LANES):
        lanes_a[j] = 0
        lanes_x[j] = 0
        lanes_t[j] = 0
    while i < S:
        end = i + BLOCK if i + BLOCK < S else S
        vend = i + ((end - i) // LANES) * LANES
        for j in range(LANES):
            acc_a[j] = 0
            acc_x[j] = 0
            acc_t[j] = 0
        k = i
        if has_tau:
            while k < vend:
                for j in range(LANES):
                    z = x[k + j] * a + b
                    gz = _tlu_grad_z(z, tau, g[k + j])
                    acc_a[j] += gz
                    acc_x[j] += gz * x[k + j]
                    acc_t[j] += _tlu_grad_tau(z, tau, g[k + j])
                k += LANES
        else:
            while k < vend:
                for j in range(LANES):
                    acc_a[j] += g[k + j]
                    acc_x[j] += g[k + j] * x[k + j]
                k += LANES
        for k in range(vend, end):
            if has_tau:
                z = x[k] * a + b
                gz = _tlu_grad_z(z, tau, g[k])
                st += _tlu_grad_tau(z, tau, g[k])
            else:
                gz = g[k]
            sa += gz
            sx += gz * x[k]
        _lanes_flush(acc_a, lanes_a)
        _lanes_flush(acc_x, lanes_x)
        _lanes_flush(acc_t, lanes_t)
        i = end
    sa += _lanes_total(lanes_a)
    sx += _lanes_total(lanes_x)
    st += _lanes_total(lanes_t)
    # coef * (x * rstd) = w rstd^3 x sum(gz x) / S, formed without rstd^3
    # (outside float32's range for values beyond 2^42 or under 2^-42)
    cdef floating coef = <floating>(<double>w * rstd * (rstd * sx / S))
    if has_tau:
        for k in range(S):
            dx[k] = a * _tlu_grad_z(x[k] * a + b, tau, g[k]) - coef * (x[k] * rstd)
    else:
        for k in range(S):
            dx[k] = a * g[k] - coef * (x[k] * rstd)
    sum_gz[0] = sa
    sum_gz_xhat[0] = sx * rstd
    sum_gtau[0] = st


def frn_forward(cnp.ndarray x, cnp.ndarray y, bint cl, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                cnp.ndarray weight, cnp.ndarray bias, object tau, double eps, cnp.ndarray rstd,
                object n_threads):
    """x, y: C-contiguous (N, C, S), or (N, S, C) when cl; weight, bias, tau:
    contiguous (C,) of the compute dtype (tau may be None); rstd: (N*C,) output of
    the compute dtype.  16-bit x: blocks (channels-first) or rows
    (channels-last) staged through float32 scratch."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef int ctype = _kernel_typenum(typenum)
    cdef bint dbl
    cdef int storage = storage_of(typenum, &dbl)
    _check_flat(x, typenum, N * C * S, "x")
    _check_flat(y, typenum, N * C * S, "y")
    _check_flat(weight, ctype, C, "weight")
    _check_flat(bias, ctype, C, "bias")
    _check_flat(rstd, ctype, N * C, "rstd")
    cdef bint has_tau = tau is not None
    if has_tau:
        _check_flat(<cnp.ndarray>tau, ctype, C, "tau")
    cdef int nth = resolve_threads(n_threads, N * C * S)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef void* wp = cnp.PyArray_DATA(weight)
    cdef void* bp = cnp.PyArray_DATA(bias)
    cdef void* tp = _ptr_or_null(tau)
    cdef void* rp = cnp.PyArray_DATA(rstd)
    cdef Py_ssize_t bl, c
    cdef int status = 0
    if N * C * S == 0:
        if S == 0:  # channels without positions: their mean square is NaN (0 / 0)
            rstd.fill(NAN)
        return
    if cl:
        with nogil:
            if not dbl:  # float32, or 16-bit storage computed in float32
                status = _frn_cl_forward[float](<const char*>xp, <char*>yp, storage, N, C, S, eps,
                                                <const float*>wp, <const float*>bp,
                                                <const float*>tp, <float*>rp, nth)
            else:
                status = _frn_cl_forward[double](<const char*>xp, <char*>yp, storage, N, C, S, eps,
                                                 <const double*>wp, <const double*>bp,
                                                 <const double*>tp, <double*>rp, nth)
        if status != 0:
            raise MemoryError()
        return
    cdef float* scratch = _stage_scratch(storage, nth, 2, S)
    cdef float* sc
    if storage != ST_NATIVE and scratch == NULL:
        raise MemoryError("fastnorm: could not allocate the staging blocks")
    if storage != ST_NATIVE:
        with nogil:
            for bl in prange(N * C, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                c = bl % C
                sc = scratch + 2 * S * omp_get_thread_num()
                _frn_block_forward[float](_row_in(storage, sc, 0, S, <const char*>xp + 2 * bl * S),
                                          sc + S, S, eps,
                                          (<const float*>wp)[c], (<const float*>bp)[c],
                                          (<const float*>tp)[c] if has_tau else 0, has_tau,
                                          <float*>rp + bl)
                _row_done(storage, sc, 1, S, <char*>yp + 2 * bl * S)
        scratch_free(scratch)
    elif typenum == cnp.NPY_FLOAT32:
        with nogil:
            for bl in prange(N * C, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                c = bl % C
                _frn_block_forward[float](<const float*>xp + bl * S, <float*>yp + bl * S, S, eps,
                                          (<const float*>wp)[c], (<const float*>bp)[c],
                                          (<const float*>tp)[c] if has_tau else 0, has_tau,
                                          <float*>rp + bl)
    else:
        with nogil:
            for bl in prange(N * C, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                c = bl % C
                _frn_block_forward[double](<const double*>xp + bl * S, <double*>yp + bl * S, S, eps,
                                           (<const double*>wp)[c], (<const double*>bp)[c],
                                           (<const double*>tp)[c] if has_tau else 0, has_tau,
                                           <double*>rp + bl)


def frn_backward(cnp.ndarray g, cnp.ndarray x, cnp.ndarray dx, bint cl, Py_ssize_t N, Py_ssize_t C,
                 Py_ssize_t S, cnp.ndarray weight, cnp.ndarray bias, object tau,
                 cnp.ndarray rstd, cnp.ndarray grad_w, cnp.ndarray grad_b, cnp.ndarray grad_tau,
                 object n_threads):
    """g, x, dx in x's layout (as frn_forward); grad_w, grad_b, grad_tau:
    float64 (C,) outputs (per-block sums added in a fixed order)."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef int ctype = _kernel_typenum(typenum)
    cdef bint dbl
    cdef int storage = storage_of(typenum, &dbl)
    _check_flat(x, typenum, N * C * S, "x")
    _check_flat(g, typenum, N * C * S, "grad_out")
    _check_flat(dx, typenum, N * C * S, "grad_x")
    _check_flat(rstd, ctype, N * C, "rstd")
    cdef bint has_tau = tau is not None
    cdef int nth = resolve_threads(n_threads, N * C * S)
    cdef void* gp = cnp.PyArray_DATA(g)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* dp = cnp.PyArray_DATA(dx)
    cdef void* wp = cnp.PyArray_DATA(weight)
    cdef void* bp = cnp.PyArray_DATA(bias)
    cdef void* tp = _ptr_or_null(tau)
    cdef void* rp = cnp.PyArray_DATA(rstd)
    cdef double* gw = <double*>cnp.PyArray_DATA(grad_w)
    cdef double* gb = <double*>cnp.PyArray_DATA(grad_b)
    cdef double* gt = <double*>cnp.PyArray_DATA(grad_tau)
    cdef Py_ssize_t bl, c
    cdef int status = 0
    if cl:
        if N * C * S == 0:
            for c in range(C):
                gw[c] = 0
                gb[c] = 0
                gt[c] = 0
            return
        with nogil:
            if not dbl:  # float32, or 16-bit storage computed in float32
                status = _frn_cl_backward[float](<const char*>gp, <const char*>xp, <char*>dp, storage,
                                                 N, C, S, <const float*>wp, <const float*>bp,
                                                 <const float*>tp, <const float*>rp, gw, gb, gt, nth)
            else:
                status = _frn_cl_backward[double](<const char*>gp, <const char*>xp, <char*>dp, storage,
                                                  N, C, S, <const double*>wp, <const double*>bp,
                                                  <const double*>tp, <const double*>rp, gw, gb, gt, nth)
        if status != 0:
            raise MemoryError()
        return
    cdef double* sums = <double*>scratch_alloc(3 * N * C * sizeof(double) + 8)
    if sums == NULL:
        raise MemoryError()
    cdef float* scratch = NULL
    cdef float* sc
    if N * C * S > 0:
        if storage != ST_NATIVE:
            scratch = _stage_scratch(storage, nth, 3, S)
            if scratch == NULL:
                scratch_free(sums)
                raise MemoryError("fastnorm: could not allocate the staging blocks")
            with nogil:
                for bl in prange(N * C, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                    c = bl % C
                    sc = scratch + 3 * S * omp_get_thread_num()
                    _frn_block_backward[float](_row_in(storage, sc, 0, S, <const char*>gp + 2 * bl * S),
                                               _row_in(storage, sc, 1, S, <const char*>xp + 2 * bl * S),
                                               sc + 2 * S, S, (<const float*>wp)[c],
                                               (<const float*>bp)[c],
                                               (<const float*>tp)[c] if has_tau else 0, has_tau,
                                               (<const float*>rp)[bl], &sums[3 * bl], &sums[3 * bl + 1],
                                               &sums[3 * bl + 2])
                    _row_done(storage, sc, 2, S, <char*>dp + 2 * bl * S)
            scratch_free(scratch)
        elif typenum == cnp.NPY_FLOAT32:
            with nogil:
                for bl in prange(N * C, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                    c = bl % C
                    _frn_block_backward[float](<const float*>gp + bl * S, <const float*>xp + bl * S,
                                               <float*>dp + bl * S, S, (<const float*>wp)[c],
                                               (<const float*>bp)[c],
                                               (<const float*>tp)[c] if has_tau else 0, has_tau,
                                               (<const float*>rp)[bl], &sums[3 * bl], &sums[3 * bl + 1],
                                               &sums[3 * bl + 2])
        else:
            with nogil:
                for bl in prange(N * C, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                    c = bl % C
                    _frn_block_backward[double](<const double*>gp + bl * S, <const double*>xp + bl * S,
                                                <double*>dp + bl * S, S, (<const double*>wp)[c],
                                                (<const double*>bp)[c],
                                                (<const double*>tp)[c] if has_tau else 0, has_tau,
                                                (<const double*>rp)[bl], &sums[3 * bl],
                                                &sums[3 * bl + 1], &sums[3 * bl + 2])
    for c in range(C):
        gw[c] = 0
        gb[c] = 0
        gt[c] = 0
    for bl in range(N * C if S > 0 else 0):
        c = bl % C
        gb[c] += sums[3 * bl]
        gw[c] += sums[3 * bl + 1]
        gt[c] += sums[3 * bl + 2]
    scratch_free(sums)


# ---------------------------------------------------------------- channels-last
#
# x is N samples of S rows of C values.  The sums over each sample's rows are
# split into units (a sample, or a chunk of its rows when there are fewer
# samples than threads) with per-unit, per-channel double sums, merged per
# sample in unit order (deterministic for a thread count); the elementwise
# passes split all N * S rows across the threads.

cdef inline Py_ssize_t _frn_parts(Py_ssize_t N, Py_ssize_t S, int nth) noexcept nogil:
    """Row chunks per sample: enough units for every thread."""
    return 1 if N >= nth or S < nth else (nth + N - 1) // N


cdef void _frn_cl_sums(const floating* g, const floating* x, Py_ssize_t r0, Py_ssize_t r1,
                       Py_ssize_t C, const floating* a, const floating* b, const floating* tau,
                       floating* acc, double* sums) noexcept nogil:
    """Per channel over rows r0..r1: sums of gz, gz * x and gtau (_tlu_grad_z /
    _tlu_grad_tau; gz = g without tau), added to sums (3 * C doubles).  Rows
    are summed in `floating` per channel (acc: 3 * C scratch) over blocks of
    FRN_CL_ROWS rows from r0, then flushed into the double sums (the row loop
    over channels vectorizes)."""
    cdef Py_ssize_t r, c, rb, re
    cdef const floating* gp
    cdef const floating* xp
    cdef floating gz, z
    cdef floating* fa
    cdef floating* fx
    cdef floating* ft
    fa = acc
    fx = acc + C
    ft = acc + 2 * C
    rb = r0
    while rb < r1:
        re = rb + FRN_CL_ROWS if rb + FRN_CL_ROWS < r1 else r1
        for c in range(3 * C):
            acc[c] = 0
        for r in range(rb, re):
            gp = g + r * C
            xp = x + r * C
            if tau != NULL:
                for c in range(C):
                    z = xp[c] * a[c] + b[c]
                    gz = _tlu_grad_z(z, tau[c], gp[c])
                    fa[c] += gz
                    fx[c] += gz * xp[c]
                    ft[c] += _tlu_grad_tau(z, tau[c], gp[c])
            else:
                for c in range(C):
                    fa[c] += gp[c]
                    fx[c] += gp[c] * xp[c]
        for c in range(C):
            sums[c] += fa[c]
            sums[C + c] += fx[c]
            sums[2 * C + c] += ft[c]
        rb = re


cdef enum:
    FRN_CL_ROWS = 64    # rows per float block of the sums; 16-bit rows are staged this many at a time


cdef void _frn_cl_apply_rows(const floating* x, floating* y, Py_ssize_t r0, Py_ssize_t r1,
                             Py_ssize_t row_base, Py_ssize_t C, Py_ssize_t S, const floating* a,
                             const floating* b, const floating* tau) noexcept nogil:
    """y = tlu(x * a + b) over rows r0..r1 of x and y (row r of the array is
    row r - row_base of these pointers)."""
    cdef Py_ssize_t r, c, n
    cdef const floating* xr
    cdef floating* yr
    for r in range(r0, r1):
        n = r // S
        xr = x + (r - row_base) * C
        yr = y + (r - row_base) * C
        if tau != NULL:
            for c in range(C):
                yr[c] = _tlu(xr[c] * a[n * C + c] + b[c], tau[c])
        else:
            for c in range(C):
                yr[c] = xr[c] * a[n * C + c] + b[c]


cdef int _frn_cl_forward(const char* xb, char* yb, int st, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                         double eps, const floating* w, const floating* b, const floating* tau,
                         floating* rstd, int nth) noexcept nogil:
    """Channels-last FRN; 16-bit x (floating float) is widened in the moments'
    register panels and staged FRN_CL_ROWS rows at a time for the output."""
    cdef Py_ssize_t parts = _frn_parts(N, S, nth), units = N * parts, u, n, c, r, r0, r1, q
    cdef Py_ssize_t work_len = 3 * _tile_stride(C)
    cdef Py_ssize_t stage_len = 2 * FRN_CL_ROWS * C if st != ST_NATIVE else 0
    cdef double* sq = <double*>scratch_alloc(2 * units * C * sizeof(double) + 8)
    cdef floating* zero = <floating*>scratch_alloc((C + N * C) * sizeof(floating)
                                            + (nth * (work_len + stage_len) + 16) * sizeof(floating) + 64)
    cdef floating* a
    cdef floating* scratch
    cdef floating* stage
    cdef double s2, rs
    cdef int p
    if sq == NULL or zero == NULL:
        scratch_free(sq)
        scratch_free(zero)
        return -1
    a = zero + C
    scratch = <floating*>_aligned(a + N * C)
    for c in range(C):
        zero[c] = 0
    for u in prange(units, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        n = u // parts
        r0 = n * S + _part_start(S, <int>parts, <int>(u % parts))
        r1 = n * S + _part_start(S, <int>parts, <int>(u % parts) + 1)
        _rows_moments(xb, st, r0, r1, C, zero, scratch + omp_get_thread_num() * (work_len + stage_len),
                      sq + units * C + u * C, sq + u * C)
    for n in range(N):
        for c in range(C):
            s2 = 0
            for u in range(n * parts, (n + 1) * parts):
                s2 += sq[u * C + c]
            rs = 1.0 / sqrt(s2 / S + eps)
            rstd[n * C + c] = <floating>rs
            a[n * C + c] = <floating>(w[c] * rs)
    scratch_free(sq)
    for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        r0 = _part_start(N * S, nth, p)
        r1 = _part_start(N * S, nth, p + 1)
        if st == ST_NATIVE:
            _frn_cl_apply_rows(<const floating*>xb, <floating*>yb, r0, r1, 0, C, S, a, b, tau)
        else:
            stage = scratch + omp_get_thread_num() * (work_len + stage_len) + work_len
            r = r0
            while r < r1:
                q = r + FRN_CL_ROWS if r + FRN_CL_ROWS < r1 else r1
                fn_widen(st, xb + 2 * r * C, <float*>stage, (q - r) * C)
                _frn_cl_apply_rows(stage, stage + FRN_CL_ROWS * C, r, q, r, C, S, a, b, tau)
                fn_narrow(st, <float*>(stage + FRN_CL_ROWS * C), yb + 2 * r * C, (q - r) * C)
                r = q
    scratch_free(zero)
    return 0


cdef void _frn_cl_grad_rows(const floating* g, const floating* x, floating* dx, Py_ssize_t r0,
                            Py_ssize_t r1, Py_ssize_t row_base, Py_ssize_t C, Py_ssize_t S,
                            const floating* a, const floating* b, const floating* tau,
                            const floating* coef, const floating* rstd) noexcept nogil:
    """dx = a * gz - coef * (x * rstd) over rows r0..r1 (pointers start at row_base)."""
    cdef Py_ssize_t r, c, n, k
    cdef floating gz
    for r in range(r0, r1):
        n = r // S
        k = (r - row_base) * C
        for c in range(C):
            gz = (_tlu_grad_z(x[k + c] * a[n * C + c] + b[c], tau[c], g[k + c])
                  if tau != NULL else g[k + c])
            dx[k + c] = a[n * C + c] * gz - coef[n * C + c] * (x[k + c] * rstd[n * C + c])


cdef inline Py_ssize_t _frn_stage_rows(const char* g, const char* x, int st, Py_ssize_t r,
                                      Py_ssize_t r1, Py_ssize_t C, floating* stage) noexcept nogil:
    """Widen up to FRN_CL_ROWS 16-bit rows of g and x from row r into the
    stage (g's rows, then x's at FRN_CL_ROWS * C); returns the row after them."""
    cdef Py_ssize_t q = r + FRN_CL_ROWS if r + FRN_CL_ROWS < r1 else r1
    fn_widen(st, g + 2 * r * C, <float*>stage, (q - r) * C)
    fn_widen(st, x + 2 * r * C, <float*>(stage + FRN_CL_ROWS * C), (q - r) * C)
    return q


cdef int _frn_cl_backward(const char* gb_, const char* xb, char* db, int st, Py_ssize_t N,
                          Py_ssize_t C, Py_ssize_t S, const floating* w, const floating* b,
                          const floating* tau, const floating* rstd, double* gw, double* gb,
                          double* gt, int nth) noexcept nogil:
    """Channels-last FRN backward; 16-bit g and x (floating float) are staged
    FRN_CL_ROWS rows at a time, on the sums' own block boundaries (so the
    sums are the float32 kernel's), and dx narrowed from float32 rows."""
    cdef Py_ssize_t parts = _frn_parts(N, S, nth), units = N * parts, u, n, c, r, r0, r1, q
    cdef Py_ssize_t stage_len = 3 * FRN_CL_ROWS * C if st != ST_NATIVE else 0
    cdef double* sums = <double*>scratch_alloc(3 * units * C * sizeof(double) + 8)
    # a and coef per (sample, channel), then per thread 3 * C float sums and the staged rows
    cdef floating* a = <floating*>scratch_alloc((2 * N * C + (3 * C + stage_len) * nth) * sizeof(floating) + 8)
    cdef floating* coef
    cdef floating* acc
    cdef floating* stage
    cdef double sa, sx, sg, rs
    cdef int p
    if sums == NULL or a == NULL:
        scratch_free(sums)
        scratch_free(a)
        return -1
    coef = a + N * C
    acc = coef + N * C
    for n in range(N):
        for c in range(C):
            a[n * C + c] = w[c] * rstd[n * C + c]
    for c in range(3 * units * C):
        sums[c] = 0
    for u in prange(units, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        n = u // parts
        r0 = n * S + _part_start(S, <int>parts, <int>(u % parts))
        r1 = n * S + _part_start(S, <int>parts, <int>(u % parts) + 1)
        if st == ST_NATIVE:
            _frn_cl_sums(<const floating*>gb_, <const floating*>xb, r0, r1, C, a + n * C, b, tau,
                         acc + (3 * C + stage_len) * omp_get_thread_num(), sums + 3 * u * C)
        else:
            stage = acc + (3 * C + stage_len) * omp_get_thread_num() + 3 * C
            r = r0
            while r < r1:
                q = _frn_stage_rows(gb_, xb, st, r, r1, C, stage)
                _frn_cl_sums(stage, stage + FRN_CL_ROWS * C, 0, q - r, C, a + n * C, b, tau,
                             stage - 3 * C, sums + 3 * u * C)
                r = q
    for c in range(C):
        gw[c] = 0
        gb[c] = 0
        gt[c] = 0
    for n in range(N):
        for c in range(C):
            sa = 0
            sx = 0
            sg = 0
            for u in range(n * parts, (n + 1) * parts):
                sa += sums[3 * u * C + c]
                sx += sums[3 * u * C + C + c]
                sg += sums[3 * u * C + 2 * C + c]
            rs = rstd[n * C + c]
            coef[n * C + c] = <floating>(<double>w[c] * rs * (rs * sx / S))
            gb[c] += sa
            gw[c] += sx * rs
            gt[c] += sg
    scratch_free(sums)
    for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        r0 = _part_start(N * S, nth, p)
        r1 = _part_start(N * S, nth, p + 1)
        if st == ST_NATIVE:
            _frn_cl_grad_rows(<const floating*>gb_, <const floating*>xb, <floating*>db, r0, r1, 0, C, S,
                              a, b, tau, coef, rstd)
        else:
            stage = acc + (3 * C + stage_len) * omp_get_thread_num() + 3 * C
            r = r0
            while r < r1:
                q = _frn_stage_rows(gb_, xb, st, r, r1, C, stage)
                _frn_cl_grad_rows(stage, stage + FRN_CL_ROWS * C, stage + 2 * FRN_CL_ROWS * C, r, q, r,
                                  C, S, a, b, tau, coef, rstd)
                fn_narrow(st, <float*>(stage + 2 * FRN_CL_ROWS * C), db + 2 * r * C, (q - r) * C)
                r = q
    scratch_free(a)
    return 0


# ---------------------------------------------------------------- fast entries

cdef object _fast_frn_param(object p, Py_ssize_t C, int typenum, int ctype, bint required):
    if p is None:
        return NotImplemented if required else None
    return _fast_vec(p, C, typenum, ctype)


def frn_fast(object x, object weight, object bias, object tau, object eps, object channel_axis,
             object out, object n_threads, bint return_stats):
    """Fast path of filter_response_norm (contiguous x, (C,) parameters)."""
    cdef Py_ssize_t N, C, S
    cdef bint cl, dbl
    cdef double e = 0.0
    if not cnp.PyArray_CheckExact(x):
        return NotImplemented
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef int ctype = _kernel_typenum(typenum)
    if (ctype < 0 or not _fast_array(x, typenum) or not _fast_eps(eps, &e)
            or not _fast_channel_layout(xa, channel_axis, &N, &C, &S, &cl) or N * C * S == 0):
        return NotImplemented
    cdef object wa = _fast_frn_param(weight, C, typenum, ctype, True)
    cdef object ba = _fast_frn_param(bias, C, typenum, ctype, True)
    cdef object ta = _fast_frn_param(tau, C, typenum, ctype, False)
    if wa is NotImplemented or ba is NotImplemented or ta is NotImplemented:
        return NotImplemented
    cdef object y = _fast_output(xa, out)
    if y is None or not _out_clear(out, wa, ba, ta):
        return NotImplemented
    cdef cnp.npy_intp[2] dims
    dims[0] = N
    dims[1] = C
    cdef object rstd = cnp.PyArray_EMPTY(2, dims, ctype, 0)
    frn_forward(xa, <cnp.ndarray>y, cl, N, C, S, wa, ba, ta, e, rstd, n_threads)
    return (y, rstd) if return_stats else y


def frn_backward_fast(object grad_out, object x, object rstd, object weight, object bias, object tau,
                      object channel_axis, object n_threads):
    """Fast path of filter_response_norm_backward."""
    cdef Py_ssize_t N, C, S
    cdef bint cl
    if not cnp.PyArray_CheckExact(x):
        return NotImplemented
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef int ctype = _kernel_typenum(typenum)
    if (ctype < 0 or not _fast_array(x, typenum) or not _fast_array(grad_out, typenum)
            or not _same_dims(<cnp.ndarray>grad_out, xa, 0)
            or not _fast_channel_layout(xa, channel_axis, &N, &C, &S, &cl) or N * C * S == 0):
        return NotImplemented
    if (not _fast_array(rstd, ctype) or cnp.PyArray_NDIM(<cnp.ndarray>rstd) != 2
            or cnp.PyArray_DIMS(<cnp.ndarray>rstd)[0] != N or cnp.PyArray_DIMS(<cnp.ndarray>rstd)[1] != C):
        return NotImplemented
    cdef object wa = _fast_frn_param(weight, C, typenum, ctype, True)
    cdef object ba = _fast_frn_param(bias, C, typenum, ctype, True)
    cdef object ta = _fast_frn_param(tau, C, typenum, ctype, False)
    if wa is NotImplemented or ba is NotImplemented or ta is NotImplemented:
        return NotImplemented
    cdef object dx = empty_array(cnp.PyArray_NDIM(xa), cnp.PyArray_DIMS(xa), typenum)
    cdef cnp.npy_intp nc = C
    cdef object gw = cnp.PyArray_EMPTY(1, &nc, cnp.NPY_FLOAT64, 0)
    cdef object gb = cnp.PyArray_EMPTY(1, &nc, cnp.NPY_FLOAT64, 0)
    cdef object gt = cnp.PyArray_EMPTY(1, &nc, cnp.NPY_FLOAT64, 0)
    frn_backward(<cnp.ndarray>grad_out, xa, <cnp.ndarray>dx, cl, N, C, S, wa, ba, ta, rstd, gw, gb, gt,
                 n_threads)
    return (dx, _grad_as(weight, <double*>cnp.PyArray_DATA(<cnp.ndarray>gw), C),
            _grad_as(bias, <double*>cnp.PyArray_DATA(<cnp.ndarray>gb), C),
            None if tau is None else _grad_as(tau, <double*>cnp.PyArray_DATA(<cnp.ndarray>gt), C))
