# Feature scaling (standardize, min_max_scale) and their backwards: included
# by _kernels.pxi, so compiled into every instruction-set build.
#
# A data matrix is (N samples, F features), C-contiguous, in its storage dtype:
# the channel engine's channels-last layout with S = 1, a feature being a
# channel.  Its column moments, column sums and elementwise passes are that
# engine's (_channel_kernels.pxi); this file adds the column min / max and
# their first positions.  Every pass reads the storage dtype and widens in
# registers (no float32 copy of a 16-bit matrix).
#
# Two ways in, one core each:
#   * the def entries (feature_moments, feature_affine, feature_minmax,
#     standardize_grad, min_max_scale_grad) take the matrix the general path
#     (fastnorm.functional.features) has canonicalized and validated;
#   * the *_fast entries take the common calls (a 2-D C-contiguous x scaled
#     along axis 0, float64 statistics) straight to the same cores, and
#     return NotImplemented for anything else: the general path then
#     validates and owns every error message.


from libc.float cimport DBL_MAX


# ---------------------------------------------------------------- cores

cdef int _moments_core(const char* x, int st, bint dbl, Py_ssize_t N, Py_ssize_t F,
                       double* mean, double* var, int nth) noexcept nogil:
    """Per-feature mean and biased variance (NaN when N is 0).  -1: no memory."""
    cdef Py_ssize_t f
    cdef int status
    cdef double* count
    if N * F == 0:
        for f in range(F):
            mean[f] = NAN
            var[f] = NAN
        return 0
    count = <double*>scratch_alloc(2 * F * sizeof(double) + 8)
    if count == NULL:
        return -1
    if not dbl:
        status = _channel_stats[float](x, st, True, N, F, 1, 1, False, mean, count + F, count, nth,
                                       <float>0)
    else:
        status = _channel_stats[double](x, st, True, N, F, 1, 1, False, mean, count + F, count, nth,
                                        <double>0)
    for f in range(F):
        var[f] = count[F + f] / count[f] if count[f] > 0 else NAN
    scratch_free(count)
    return status


cdef int _affine_given(const char* x, char* y, int st, Py_ssize_t N, Py_ssize_t F,
                       const double* centre, const double* scale, const double* shift,
                       int nth, floating tag) noexcept nogil:
    """y = (x - centre_f) * scale_f + shift_f, with x - centre exact for x
    near the centre (the centre split in two floats).  -1: no memory."""
    cdef floating* coef = <floating*>scratch_alloc(3 * F * sizeof(floating) + 8)
    cdef Py_ssize_t f
    if coef == NULL:
        return -1
    for f in range(F):
        coef[f] = <floating>centre[f]
        coef[F + f] = <floating>scale[f]
        coef[2 * F + f] = <floating>(shift[f] - (centre[f] - <double>coef[f]) * scale[f])
    _channel_apply(x, y, st, True, N, F, 1, False, coef, coef + F, coef + 2 * F, nth)
    scratch_free(coef)
    return 0


cdef int _affine_core(const char* x, char* y, int st, bint dbl, Py_ssize_t N, Py_ssize_t F,
                      const double* centre, const double* scale, const double* shift,
                      int nth) noexcept nogil:
    if N * F == 0:
        return 0
    if not dbl:
        return _affine_given[float](x, y, st, N, F, centre, scale, shift, nth, 0)
    return _affine_given[double](x, y, st, N, F, centre, scale, shift, nth, 0)


cdef void _rows_minmax(const char* xb, int st, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C,
                       floating* mn, floating* mx) noexcept nogil:
    """Per-column min and max over rows r0..r1, NaN ignored (a column of NaN
    only keeps +inf / -inf, replaced by NaN by the caller)."""
    cdef Py_ssize_t r, c
    cdef const floating* row
    cdef floating v
    cdef const floating* x = <const floating*>xb
    for c in range(C):
        mn[c] = INFINITY
        mx[c] = -INFINITY
    if st != ST_NATIVE:
        fastnorm_cl_minmax16(st, xb, r0, r1, C, <float*>mn, <float*>mx)
        return
    if _panels(C, sizeof(floating)):
        if floating is float:
            fastnorm_cl_minmax_f(x, r0, r1, C, mn, mx)
        else:
            fastnorm_cl_minmax_d(x, r0, r1, C, mn, mx)
        return
    for r in range(r0, r1):
        row = x + r * C
        for c in range(C):
            v = row[c]
            mn[c] = v if v < mn[c] else mn[c]
            mx[c] = v if v > mx[c] else mx[c]


cdef int _minmax_parts(const char* x, int st, Py_ssize_t N, Py_ssize_t F, double* mn,
                       double* mx, int nth, floating tag) noexcept nogil:
    """Per-column min / max, NaN ignored; NaN for a column of NaN only."""
    cdef floating* part
    cdef int p
    cdef Py_ssize_t f
    if nth > N:
        nth = <int>N if N > 0 else 1
    part = <floating*>scratch_alloc(2 * nth * F * sizeof(floating) + 8)
    if part == NULL:
        return -1
    for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        _rows_minmax(x, st, _part_start(N, nth, p), _part_start(N, nth, p + 1), F,
                     part + 2 * p * F, part + 2 * p * F + F)
    for f in range(F):
        mn[f] = INFINITY
        mx[f] = -INFINITY
        for p in range(nth):
            mn[f] = min(mn[f], <double>part[2 * p * F + f])
            mx[f] = max(mx[f], <double>part[2 * p * F + F + f])
        if mn[f] > mx[f]:  # only NaN in the column
            mn[f] = NAN
            mx[f] = NAN
    scratch_free(part)
    return 0


cdef int _minmax_core(const char* x, int st, bint dbl, Py_ssize_t N, Py_ssize_t F, double* mn,
                      double* mx, int nth) noexcept nogil:
    if not dbl:
        return _minmax_parts[float](x, st, N, F, mn, mx, nth, 0)
    return _minmax_parts[double](x, st, N, F, mn, mx, nth, 0)


cdef void _rows_arg_extremes(const char* x, int st, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t F,
                             floating* vmin, floating* vmax, Py_ssize_t* amin,
                             Py_ssize_t* amax) noexcept nogil:
    """Per column over rows r0..r1: the first row holding its minimum and its
    maximum, NaN ignored (as NumPy's argmin / argmax of the column with NaN
    replaced by +inf / -inf: row r0 for a column of NaN)."""
    cdef Py_ssize_t r, f
    cdef floating v
    for f in range(F):
        vmin[f] = INFINITY
        vmax[f] = -INFINITY
        amin[f] = r0
        amax[f] = r0
    for r in range(r0, r1):
        for f in range(F):
            v = _load1(st, x, r * F + f, <floating>0)
            if v < vmin[f]:
                vmin[f] = v
                amin[f] = r
            if v > vmax[f]:
                vmax[f] = v
                amax[f] = r


cdef int _arg_extremes(const char* x, int st, Py_ssize_t N, Py_ssize_t F, Py_ssize_t* amin,
                       Py_ssize_t* amax, int nth, floating tag) noexcept nogil:
    """_rows_arg_extremes over every row, split across threads and merged in
    row order (a later part wins only with a strictly smaller / larger value)."""
    cdef int p
    cdef Py_ssize_t f
    if nth > N:
        nth = <int>N if N > 0 else 1
    cdef floating* val = <floating*>scratch_alloc(2 * nth * F * sizeof(floating) + 8)
    cdef Py_ssize_t* idx = <Py_ssize_t*>scratch_alloc(2 * nth * F * sizeof(Py_ssize_t) + 8)
    if val == NULL or idx == NULL:
        scratch_free(val)
        scratch_free(idx)
        return -1
    for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        _rows_arg_extremes(x, st, _part_start(N, nth, p), _part_start(N, nth, p + 1), F,
                           val + 2 * p * F, val + 2 * p * F + F, idx + 2 * p * F,
                           idx + 2 * p * F + F)
    for f in range(F):
        amin[f] = idx[f]
        amax[f] = idx[F + f]
        for p in range(1, nth):
            if val[2 * p * F + f] < val[f]:
                val[f] = val[2 * p * F + f]
                amin[f] = idx[2 * p * F + f]
            if val[2 * p * F + F + f] > val[F + f]:
                val[F + f] = val[2 * p * F + F + f]
                amax[f] = idx[2 * p * F + F + f]
    scratch_free(val)
    scratch_free(idx)
    return 0


cdef int _column_sums(const char* g, const char* x, int st, Py_ssize_t N, Py_ssize_t F,
                      const double* centre, double* sum_gt, double* sum_g, int nth,
                      floating tag) noexcept nogil:
    """Per column: sum g * (x - centre) and sum g (the channel engine's
    backward sums, without its elementwise pass)."""
    cdef double* ones = <double*>scratch_alloc(F * sizeof(double) + 8)
    cdef Py_ssize_t f
    cdef int status
    if ones == NULL:
        return -1
    for f in range(F):
        ones[f] = 1.0
    status = _channel_backward(g, x, NULL, st, True, N, F, 1, 1, False, <const floating*>NULL,
                               centre, ones, False, sum_gt, sum_g, nth)
    scratch_free(ones)
    return status


cdef int _grad_apply(const char* g, const char* x, char* dx, int st, Py_ssize_t N, Py_ssize_t F,
                     const double* hi, const double* alpha, const double* beta,
                     const double* gamma, int nth, floating tag) noexcept nogil:
    """dx = alpha_f * g + beta_f * (x - hi_f) + gamma_f (the channel engine's
    backward pass), with x - hi exact for x near hi (hi split in two floats)."""
    cdef floating* coef = <floating*>scratch_alloc(4 * F * sizeof(floating) + 8)
    cdef Py_ssize_t f
    cdef int p
    cdef Py_ssize_t isz = _itemsize(st, sizeof(floating))
    if coef == NULL:
        return -1
    for f in range(F):
        coef[f] = <floating>hi[f]
        coef[F + f] = <floating>alpha[f]
        coef[2 * F + f] = <floating>beta[f]
        coef[3 * F + f] = <floating>(gamma[f] - beta[f] * (hi[f] - <double>coef[f]))
    cdef bint stream = (floating is float or st != ST_NATIVE) and _use_streaming_grad(N * F, 1, isz)
    for p in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
        _rows_apply(g, x, dx, st, _part_start(N, nth, p), _part_start(N, nth, p + 1), F, 1, False,
                    coef, coef + F, coef + 2 * F, coef + 3 * F, stream)
    scratch_free(coef)
    return 0


cdef int _standardize_grad(const char* g, const char* x, char* dx, int st, Py_ssize_t N,
                           Py_ssize_t F, const double* mean, const double* std, Py_ssize_t ddof,
                           bint with_mean, bint with_std, bint fitted, int nth,
                           floating tag) noexcept nogil:
    """The gradient of standardize (see standardize_backward), as at most one
    pass of column sums and one elementwise pass.  -1: no memory."""
    cdef double* buf = <double*>scratch_alloc(7 * F * sizeof(double) + 8)
    cdef floating* w = NULL
    cdef double* scale = buf
    cdef double* hi = buf + F
    cdef double* alpha = buf + 2 * F
    cdef double* beta = buf + 3 * F
    cdef double* gamma = buf + 4 * F
    cdef double* s_gt = buf + 5 * F
    cdef double* s_g = buf + 6 * F
    cdef double c, denom
    cdef Py_ssize_t f
    cdef int status = 0
    if buf == NULL:
        return -1
    for f in range(F):
        scale[f] = (1.0 / (1.0 if std[f] == 0 else std[f])) if with_std else 1.0
        hi[f] = 0
        alpha[f] = scale[f]
        beta[f] = 0
        gamma[f] = 0
    if fitted and with_std and with_mean:
        # BatchNorm's backward with rstd' = c / std and weight 1 / c, c = sqrt(N / (N - ddof)),
        # is exactly this gradient (and g - mean(g) for std 0, where rstd' = c)
        c = sqrt(<double>N / <double>(N - ddof))
        w = <floating*>scratch_alloc(F * sizeof(floating) + 8)
        if w == NULL:
            scratch_free(buf)
            return -1
        for f in range(F):
            w[f] = <floating>(1.0 / c)
            scale[f] = c * scale[f]
        status = _channel_backward(g, x, dx, st, True, N, F, 1, 1, False, <const floating*>w, mean,
                                   scale, True, NULL, NULL, nth)
        scratch_free(w)
        scratch_free(buf)
        return status
    if fitted and not with_std and with_mean:  # z = x - mean: g - mean(g)
        status = _column_sums(g, x, st, N, F, hi, s_gt, s_g, nth, <floating>0)
        for f in range(F):
            alpha[f] = 1.0
            gamma[f] = -s_g[f] / N
    elif fitted and with_std and not with_mean:  # z = x / std, std still about the mean
        status = _column_sums(g, x, st, N, F, hi, s_gt, s_g, nth, <floating>0)  # s_gt: sum g * x
        denom = <double>(N - ddof if N - ddof > 1 else 1)
        for f in range(F):
            if std[f] == 0:
                alpha[f] = 1.0
            else:
                hi[f] = mean[f]
                beta[f] = -s_gt[f] * scale[f] * scale[f] * scale[f] / denom
    elif fitted:  # neither: z = x
        for f in range(F):
            alpha[f] = 1.0
    if status == 0:
        status = _grad_apply(g, x, dx, st, N, F, hi, alpha, beta, gamma, nth, <floating>0)
    scratch_free(buf)
    return status


cdef int _min_max_grad(const char* g, const char* x, char* dx, int st, Py_ssize_t N, Py_ssize_t F,
                       const double* mn, const double* mx, double lo, double hi, bint fitted,
                       int nth, floating tag) noexcept nogil:
    """The gradient of min_max_scale (see min_max_scale_backward): g * scale
    everywhere, plus, when fitted, each column's min / max terms at the
    first row holding its min / max.  -1: no memory."""
    cdef double* buf = <double*>scratch_alloc(7 * F * sizeof(double) + 8)
    cdef Py_ssize_t* arg = <Py_ssize_t*>scratch_alloc(2 * F * sizeof(Py_ssize_t) + 8)
    cdef double* scale = buf
    cdef double* zero = buf + F
    cdef double* centre = buf + 2 * F
    cdef double* s_gx = buf + 3 * F
    cdef double* s_g = buf + 4 * F
    cdef double* d_min = buf + 5 * F
    cdef double* d_max = buf + 6 * F
    cdef double span, ratio
    cdef Py_ssize_t f, i
    cdef int status, k
    cdef floating v
    cdef float v16
    cdef volatile float product
    cdef Py_ssize_t isz = _itemsize(st, sizeof(floating))
    if buf == NULL or arg == NULL:
        scratch_free(buf)
        scratch_free(arg)
        return -1
    for f in range(F):
        span = mx[f] - mn[f]
        scale[f] = (hi - lo) / (1.0 if span == 0 else span)
        zero[f] = 0
        # the general path's np.nan_to_num(data_min): NaN -> 0, +-inf -> +-DBL_MAX
        centre[f] = (0.0 if mn[f] != mn[f] else
                     (DBL_MAX if mn[f] == INFINITY else (-DBL_MAX if mn[f] == -INFINITY else mn[f])))
    status = _grad_apply(g, x, dx, st, N, F, zero, scale, zero, zero, nth, <floating>0)
    if status != 0 or not fitted or N == 0:
        scratch_free(buf)
        scratch_free(arg)
        return status
    status = _column_sums(g, x, st, N, F, centre, s_gx, s_g, nth, <floating>0)
    if status == 0:
        status = _arg_extremes(x, st, N, F, arg, arg + F, nth, <floating>0)
    if status != 0:
        scratch_free(buf)
        scratch_free(arg)
        return status
    for f in range(F):
        span = mx[f] - mn[f]
        if span != 0 and isfinite(span):
            ratio = scale[f] / span
            d_min[f] = s_gx[f] * ratio - scale[f] * s_g[f]   # dL/dmin
            d_max[f] = -s_gx[f] * ratio                       # dL/dmax
        else:
            d_min[f] = 0
            d_max[f] = 0
    for f in range(F):
        if not isfinite(mn[f]):
            continue
        for k in range(2):
            if k == 1 and arg[F + f] == arg[f]:
                continue  # one element holds both: added below in one rounding
            i = arg[k * F + f] * F + f
            if st == ST_NATIVE:
                v = (<floating*>dx)[i] + <floating>(d_min[f] if k == 0 else d_max[f])
                if arg[F + f] == arg[f]:
                    v = v + <floating>d_max[f]
                (<floating*>dx)[i] = v
            else:  # the float32 value g * scale of the elementwise pass, before its rounding
                product = <float>scale[f] * fn_load1_16(st, g, i)  # volatile: never fused into an fma
                v16 = product + <float>(d_min[f] if k == 0 else d_max[f])
                if arg[F + f] == arg[f]:
                    v16 = v16 + <float>d_max[f]
                fn_narrow(st, &v16, dx + i * isz, 1)
    scratch_free(buf)
    scratch_free(arg)
    return 0


# ---------------------------------------------------------------- def entries (the general path)

cdef inline int _matrix_storage(cnp.ndarray x, Py_ssize_t N, Py_ssize_t F, bint* dbl) except -1:
    _check_flat(x, cnp.PyArray_TYPE(x), N * F, "x")
    return storage_of(cnp.PyArray_TYPE(x), dbl)


cdef inline int _raise_status(int status) except -1:
    if status != 0:
        raise MemoryError("fastnorm: out of memory in a feature scaling kernel")
    return 0


def feature_moments(cnp.ndarray x, Py_ssize_t N, Py_ssize_t F, cnp.ndarray mean, cnp.ndarray var,
                    object n_threads):
    """Per-feature mean and biased variance (float64 (F,) outputs) of a
    C-contiguous (N, F) matrix."""
    cdef bint dbl
    cdef int st = _matrix_storage(x, N, F, &dbl)
    _check_flat(mean, cnp.NPY_FLOAT64, F, "mean")
    _check_flat(var, cnp.NPY_FLOAT64, F, "var")
    cdef int nth = resolve_threads(n_threads, N * F)
    cdef int status
    with nogil:
        status = _moments_core(<const char*>cnp.PyArray_DATA(x), st, dbl, N, F,
                               <double*>cnp.PyArray_DATA(mean), <double*>cnp.PyArray_DATA(var), nth)
    _raise_status(status)


def feature_affine(cnp.ndarray x, cnp.ndarray y, Py_ssize_t N, Py_ssize_t F, cnp.ndarray centre,
                   cnp.ndarray scale, cnp.ndarray shift, object n_threads):
    """y = (x - centre_f) * scale_f + shift_f over a C-contiguous (N, F)
    matrix (float64 (F,) coefficients)."""
    cdef bint dbl
    cdef int st = _matrix_storage(x, N, F, &dbl)
    _check_flat(y, cnp.PyArray_TYPE(x), N * F, "y")
    for a, name in ((centre, "centre"), (scale, "scale"), (shift, "shift")):
        _check_flat(a, cnp.NPY_FLOAT64, F, name)
    cdef int nth = resolve_threads(n_threads, N * F)
    cdef int status
    with nogil:
        status = _affine_core(<const char*>cnp.PyArray_DATA(x), <char*>cnp.PyArray_DATA(y), st, dbl,
                              N, F, <const double*>cnp.PyArray_DATA(centre),
                              <const double*>cnp.PyArray_DATA(scale),
                              <const double*>cnp.PyArray_DATA(shift), nth)
    _raise_status(status)


def feature_minmax(cnp.ndarray x, Py_ssize_t N, Py_ssize_t F, cnp.ndarray out_min,
                   cnp.ndarray out_max, object n_threads):
    """Per-feature min / max (float64 (F,) outputs) of a C-contiguous (N, F)
    matrix, NaN ignored (NaN for a feature of NaN only)."""
    cdef bint dbl
    cdef int st = _matrix_storage(x, N, F, &dbl)
    _check_flat(out_min, cnp.NPY_FLOAT64, F, "out_min")
    _check_flat(out_max, cnp.NPY_FLOAT64, F, "out_max")
    cdef int nth = resolve_threads(n_threads, N * F)
    cdef int status
    with nogil:
        status = _minmax_core(<const char*>cnp.PyArray_DATA(x), st, dbl, N, F,
                              <double*>cnp.PyArray_DATA(out_min), <double*>cnp.PyArray_DATA(out_max),
                              nth)
    _raise_status(status)


cdef object _standardize_grad_entry(cnp.ndarray g, cnp.ndarray x, Py_ssize_t N, Py_ssize_t F,
                                    const double* mean, const double* std, Py_ssize_t ddof,
                                    bint with_mean, bint with_std, bint fitted, object n_threads):
    cdef bint dbl
    cdef int st = storage_of(cnp.PyArray_TYPE(x), &dbl)
    cdef object dx = empty_array(2, cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x))
    cdef int nth = resolve_threads(n_threads, N * F)
    cdef int status = 0
    cdef const char* gp = <const char*>cnp.PyArray_DATA(g)
    cdef const char* xp = <const char*>cnp.PyArray_DATA(x)
    cdef char* dp = <char*>cnp.PyArray_DATA(<cnp.ndarray>dx)
    if N * F == 0:
        return dx
    with nogil:
        if not dbl:
            status = _standardize_grad[float](gp, xp, dp, st, N, F, mean, std, ddof, with_mean,
                                              with_std, fitted, nth, 0)
        else:
            status = _standardize_grad[double](gp, xp, dp, st, N, F, mean, std, ddof, with_mean,
                                               with_std, fitted, nth, 0)
    _raise_status(status)
    return dx


cdef object _min_max_grad_entry(cnp.ndarray g, cnp.ndarray x, Py_ssize_t N, Py_ssize_t F,
                                const double* mn, const double* mx, double lo, double hi,
                                bint fitted, object n_threads):
    cdef bint dbl
    cdef int st = storage_of(cnp.PyArray_TYPE(x), &dbl)
    cdef object dx = empty_array(2, cnp.PyArray_DIMS(x), cnp.PyArray_TYPE(x))
    cdef int nth = resolve_threads(n_threads, N * F)
    cdef int status = 0
    cdef const char* gp = <const char*>cnp.PyArray_DATA(g)
    cdef const char* xp = <const char*>cnp.PyArray_DATA(x)
    cdef char* dp = <char*>cnp.PyArray_DATA(<cnp.ndarray>dx)
    if N * F == 0:
        return dx
    with nogil:
        if not dbl:
            status = _min_max_grad[float](gp, xp, dp, st, N, F, mn, mx, lo, hi, fitted, nth, 0)
        else:
            status = _min_max_grad[double](gp, xp, dp, st, N, F, mn, mx, lo, hi, fitted, nth, 0)
    _raise_status(status)
    return dx


def standardize_grad(cnp.ndarray g, cnp.ndarray x, cnp.ndarray mean, cnp.ndarray std,
                     Py_ssize_t ddof, bint with_mean, bint with_std, bint fitted, object n_threads):
    """standardize's gradient over a C-contiguous (N, F) matrix x and its
    gradient g (x's dtype); mean, std: float64 (F,).  Returns dx (N, F)."""
    cdef Py_ssize_t N = cnp.PyArray_DIMS(x)[0], F = cnp.PyArray_DIMS(x)[1]
    cdef bint dbl
    _matrix_storage(x, N, F, &dbl)
    _check_flat(g, cnp.PyArray_TYPE(x), N * F, "grad_out")
    _check_flat(mean, cnp.NPY_FLOAT64, F, "mean")
    _check_flat(std, cnp.NPY_FLOAT64, F, "std")
    return _standardize_grad_entry(g, x, N, F, <const double*>cnp.PyArray_DATA(mean),
                                   <const double*>cnp.PyArray_DATA(std), ddof, with_mean, with_std,
                                   fitted, n_threads)


def min_max_scale_grad(cnp.ndarray g, cnp.ndarray x, cnp.ndarray data_min, cnp.ndarray data_max,
                       double lo, double hi, bint fitted, object n_threads):
    """min_max_scale's gradient over a C-contiguous (N, F) matrix x and its
    gradient g (x's dtype); data_min, data_max: float64 (F,).  Returns dx."""
    cdef Py_ssize_t N = cnp.PyArray_DIMS(x)[0], F = cnp.PyArray_DIMS(x)[1]
    cdef bint dbl
    _matrix_storage(x, N, F, &dbl)
    _check_flat(g, cnp.PyArray_TYPE(x), N * F, "grad_out")
    _check_flat(data_min, cnp.NPY_FLOAT64, F, "data_min")
    _check_flat(data_max, cnp.NPY_FLOAT64, F, "data_max")
    return _min_max_grad_entry(g, x, N, F, <const double*>cnp.PyArray_DATA(data_min),
                               <const double*>cnp.PyArray_DATA(data_max), lo, hi, fitted, n_threads)


def feature_column_sums(cnp.ndarray g, cnp.ndarray x, Py_ssize_t N, Py_ssize_t F,
                        cnp.ndarray centre, cnp.ndarray sum_gt, cnp.ndarray sum_g, object n_threads):
    """Per feature of a C-contiguous (N, F) matrix x and its gradient g:
    sum_gt = sum g * (x - centre), sum_g = sum g (float64 (F,) outputs): the
    backward's column sums of one part of the data (fastnorm.dask merges
    them across chunks)."""
    cdef bint dbl
    cdef int st = _matrix_storage(x, N, F, &dbl)
    _check_flat(g, cnp.PyArray_TYPE(x), N * F, "grad_out")
    for a, name in ((centre, "centre"), (sum_gt, "sum_gt"), (sum_g, "sum_g")):
        _check_flat(a, cnp.NPY_FLOAT64, F, name)
    cdef int nth = resolve_threads(n_threads, N * F)
    cdef int status = 0
    cdef const char* gp = <const char*>cnp.PyArray_DATA(g)
    cdef const char* xp = <const char*>cnp.PyArray_DATA(x)
    cdef const double* cp = <const double*>cnp.PyArray_DATA(centre)
    cdef double* a1 = <double*>cnp.PyArray_DATA(sum_gt)
    cdef double* a2 = <double*>cnp.PyArray_DATA(sum_g)
    if N * F == 0:
        sum_gt.fill(0)
        sum_g.fill(0)
        return
    with nogil:
        if dbl:
            status = _column_sums[double](gp, xp, st, N, F, cp, a1, a2, nth, 0)
        else:
            status = _column_sums[float](gp, xp, st, N, F, cp, a1, a2, nth, 0)
    _raise_status(status)


def feature_grad_apply(cnp.ndarray g, cnp.ndarray x, cnp.ndarray dx, Py_ssize_t N, Py_ssize_t F,
                       cnp.ndarray hi, cnp.ndarray alpha, cnp.ndarray beta, cnp.ndarray gamma,
                       object n_threads):
    """dx = alpha_f * g + beta_f * (x - hi_f) + gamma_f over a C-contiguous
    (N, F) matrix (float64 (F,) coefficients): the elementwise pass of the
    feature backwards, given sums computed elsewhere."""
    cdef bint dbl
    cdef int st = _matrix_storage(x, N, F, &dbl)
    _check_flat(g, cnp.PyArray_TYPE(x), N * F, "grad_out")
    _check_flat(dx, cnp.PyArray_TYPE(x), N * F, "dx")
    for a, name in ((hi, "hi"), (alpha, "alpha"), (beta, "beta"), (gamma, "gamma")):
        _check_flat(a, cnp.NPY_FLOAT64, F, name)
    cdef int nth = resolve_threads(n_threads, N * F)
    cdef int status = 0
    cdef const char* gp = <const char*>cnp.PyArray_DATA(g)
    cdef const char* xp = <const char*>cnp.PyArray_DATA(x)
    cdef char* dp = <char*>cnp.PyArray_DATA(dx)
    cdef const double* h = <const double*>cnp.PyArray_DATA(hi)
    cdef const double* a1 = <const double*>cnp.PyArray_DATA(alpha)
    cdef const double* b1 = <const double*>cnp.PyArray_DATA(beta)
    cdef const double* c1 = <const double*>cnp.PyArray_DATA(gamma)
    if N * F == 0:
        return
    with nogil:
        if dbl:
            status = _grad_apply[double](gp, xp, dp, st, N, F, h, a1, b1, c1, nth, 0)
        else:
            status = _grad_apply[float](gp, xp, dp, st, N, F, h, a1, b1, c1, nth, 0)
    _raise_status(status)


# ---------------------------------------------------------------- fast entries

cdef object _fast_feature_stat(object a, Py_ssize_t F):
    """Given statistics: an exact contiguous native float64 array of F values
    (any shape of that size is the general path's job), or None."""
    if not cnp.PyArray_CheckExact(a):
        return None
    cdef cnp.ndarray b = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(b) != cnp.NPY_FLOAT64 or cnp.PyArray_NDIM(b) != 1 or cnp.PyArray_DIMS(b)[0] != F
            or not _c_aligned(b) or not cnp.PyArray_ISNOTSWAPPED(b)):
        return None
    return b


cdef bint _fast_features(object x, object axis, Py_ssize_t* N, Py_ssize_t* F):
    """x is an exact C-contiguous 2-D ndarray of a kernel dtype scaled along axis 0."""
    cdef cnp.ndarray xa
    if not cnp.PyArray_CheckExact(x) or type(axis) is not int or axis != 0:
        return False
    xa = <cnp.ndarray>x
    if (cnp.PyArray_NDIM(xa) != 2 or _kernel_typenum(cnp.PyArray_TYPE(xa)) < 0
            or not _fast_array(x, cnp.PyArray_TYPE(xa))):
        return False
    N[0] = cnp.PyArray_DIMS(xa)[0]
    F[0] = cnp.PyArray_DIMS(xa)[1]
    return N[0] > 0 and F[0] > 0


cdef bint _fast_feature_grad(object grad_out, object x, object axis, Py_ssize_t* N, Py_ssize_t* F):
    """x as _fast_features, grad_out an exact C-contiguous array of x's dtype and shape."""
    if not _fast_features(x, axis, N, F):
        return False
    cdef cnp.ndarray xa = <cnp.ndarray>x
    return (_fast_array(grad_out, cnp.PyArray_TYPE(xa))
            and _same_dims(<cnp.ndarray>grad_out, xa, 0))


cdef bint _fast_range(object feature_range, double* lo, double* hi):
    """feature_range is a tuple of two Python numbers, lo < hi."""
    if type(feature_range) is not tuple or len(feature_range) != 2:
        return False
    a, b = feature_range
    return _fast_real(a, lo) and _fast_real(b, hi) and lo[0] < hi[0]


def standardize_fast(object x, object axis, object ddof, object mean, object std, object with_mean,
                     object with_std, object out, object n_threads, bint return_stats):
    """Fast path of standardize: a 2-D C-contiguous x along axis 0, fitted
    (no NaN / inf in the statistics: else the general path) or with given
    float64 (F,) statistics."""
    cdef Py_ssize_t N, F, f
    cdef bint dbl
    if (not _fast_features(x, axis, &N, &F) or type(ddof) is not int or ddof < 0
            or type(with_mean) is not bool or type(with_std) is not bool or (mean is None) != (std is None)):
        return NotImplemented
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef object y = _fast_output(xa, out)
    if y is None:
        return NotImplemented
    cdef cnp.npy_intp nf = F
    cdef object mean_v, std_v
    cdef double* mp
    cdef double* sp
    cdef int st = storage_of(cnp.PyArray_TYPE(xa), &dbl)
    cdef int nth = resolve_threads(n_threads, N * F)
    cdef int status
    cdef const char* xp = <const char*>cnp.PyArray_DATA(xa)
    if mean is None:
        if N - ddof <= 0:
            return NotImplemented
        mean_v = cnp.PyArray_EMPTY(1, &nf, cnp.NPY_FLOAT64, 0)
        std_v = cnp.PyArray_EMPTY(1, &nf, cnp.NPY_FLOAT64, 0)
        mp = <double*>cnp.PyArray_DATA(<cnp.ndarray>mean_v)
        sp = <double*>cnp.PyArray_DATA(<cnp.ndarray>std_v)
        with nogil:
            status = _moments_core(xp, st, dbl, N, F, mp, sp, nth)
        _raise_status(status)
        for f in range(F):
            if not (isfinite(mp[f]) and isfinite(sp[f])):
                return NotImplemented  # NaN as a missing value: the general path's NumPy pass
        for f in range(F):  # the general path's sqrt(var * (count / (count - ddof)))
            sp[f] = sqrt(sp[f] * (<double>N / <double>(N - ddof)))
    else:
        mean_v = _fast_feature_stat(mean, F)
        std_v = _fast_feature_stat(std, F)
        if mean_v is None or std_v is None or not _out_clear(out, mean_v, std_v):
            return NotImplemented
        mp = <double*>cnp.PyArray_DATA(<cnp.ndarray>mean_v)
        sp = <double*>cnp.PyArray_DATA(<cnp.ndarray>std_v)
    cdef double* coef = <double*>scratch_alloc(3 * F * sizeof(double) + 8)
    if coef == NULL:
        raise MemoryError()
    for f in range(F):
        coef[f] = mp[f] if with_mean else 0.0
        coef[F + f] = 1.0 / (1.0 if sp[f] == 0 else sp[f]) if with_std else 1.0
        coef[2 * F + f] = 0.0
    with nogil:
        status = _affine_core(xp, <char*>cnp.PyArray_DATA(<cnp.ndarray>y), st, dbl, N, F, coef,
                              coef + F, coef + 2 * F, nth)
    scratch_free(coef)
    _raise_status(status)
    if not return_stats:
        return y
    return y, mean_v, std_v


def standardize_backward_fast(object grad_out, object x, object mean, object std, object axis,
                              object ddof, object with_mean, object with_std, object fitted,
                              object n_threads):
    """Fast path of standardize_backward: x and grad_out 2-D C-contiguous of
    one dtype along axis 0, float64 (F,) statistics."""
    cdef Py_ssize_t N, F
    if (not _fast_feature_grad(grad_out, x, axis, &N, &F) or type(ddof) is not int or ddof < 0
            or type(with_mean) is not bool or type(with_std) is not bool or type(fitted) is not bool):
        return NotImplemented
    if fitted and with_mean and with_std and N - ddof <= 0:
        return NotImplemented  # the general path's error
    cdef object m = _fast_feature_stat(mean, F)
    cdef object s = _fast_feature_stat(std, F)
    if m is None or s is None:
        return NotImplemented
    return _standardize_grad_entry(<cnp.ndarray>grad_out, <cnp.ndarray>x, N, F,
                                   <const double*>cnp.PyArray_DATA(<cnp.ndarray>m),
                                   <const double*>cnp.PyArray_DATA(<cnp.ndarray>s), ddof,
                                   with_mean, with_std, fitted, n_threads)


def min_max_scale_fast(object x, object axis, object feature_range, object data_min, object data_max,
                       object out, object n_threads, bint return_stats):
    """Fast path of min_max_scale: a 2-D C-contiguous x along axis 0, a tuple
    feature_range of two numbers, fitted or given float64 (F,) min and max."""
    cdef Py_ssize_t N, F, f
    cdef double lo, hi, span
    cdef bint dbl
    if (not _fast_features(x, axis, &N, &F) or not _fast_range(feature_range, &lo, &hi)
            or (data_min is None) != (data_max is None)):
        return NotImplemented
    cdef cnp.ndarray xa = <cnp.ndarray>x
    cdef object y = _fast_output(xa, out)
    if y is None:
        return NotImplemented
    cdef cnp.npy_intp nf = F
    cdef object mn, mx
    cdef double* a
    cdef double* b
    cdef int st = storage_of(cnp.PyArray_TYPE(xa), &dbl)
    cdef int nth = resolve_threads(n_threads, N * F)
    cdef int status
    cdef const char* xp = <const char*>cnp.PyArray_DATA(xa)
    if data_min is None:
        mn = cnp.PyArray_EMPTY(1, &nf, cnp.NPY_FLOAT64, 0)
        mx = cnp.PyArray_EMPTY(1, &nf, cnp.NPY_FLOAT64, 0)
        a = <double*>cnp.PyArray_DATA(<cnp.ndarray>mn)
        b = <double*>cnp.PyArray_DATA(<cnp.ndarray>mx)
        with nogil:
            status = _minmax_core(xp, st, dbl, N, F, a, b, nth)
        _raise_status(status)
    else:
        mn = _fast_feature_stat(data_min, F)
        mx = _fast_feature_stat(data_max, F)
        if mn is None or mx is None or not _out_clear(out, mn, mx):
            return NotImplemented
        a = <double*>cnp.PyArray_DATA(<cnp.ndarray>mn)
        b = <double*>cnp.PyArray_DATA(<cnp.ndarray>mx)
    cdef double* coef = <double*>scratch_alloc(2 * F * sizeof(double) + 8)
    if coef == NULL:
        raise MemoryError()
    for f in range(F):
        span = b[f] - a[f]
        coef[f] = (hi - lo) / (1.0 if span == 0 else span)
        coef[F + f] = lo
    with nogil:
        status = _affine_core(xp, <char*>cnp.PyArray_DATA(<cnp.ndarray>y), st, dbl, N, F, a, coef,
                              coef + F, nth)
    scratch_free(coef)
    _raise_status(status)
    if not return_stats:
        return y
    return y, mn, mx


def min_max_scale_backward_fast(object grad_out, object x, object data_min, object data_max,
                                object axis, object feature_range, object fitted, object n_threads):
    """Fast path of min_max_scale_backward (as min_max_scale_fast)."""
    cdef Py_ssize_t N, F
    cdef double lo, hi
    if (not _fast_feature_grad(grad_out, x, axis, &N, &F) or not _fast_range(feature_range, &lo, &hi)
            or type(fitted) is not bool):
        return NotImplemented
    cdef object mn = _fast_feature_stat(data_min, F)
    cdef object mx = _fast_feature_stat(data_max, F)
    if mn is None or mx is None:
        return NotImplemented
    return _min_max_grad_entry(<cnp.ndarray>grad_out, <cnp.ndarray>x, N, F,
                               <const double*>cnp.PyArray_DATA(<cnp.ndarray>mn),
                               <const double*>cnp.PyArray_DATA(<cnp.ndarray>mx), lo, hi, fitted,
                               n_threads)
