# Lp normalization (torch.nn.functional.normalize) over contiguous rows:
# included by _kernels.pxi, so compiled into every instruction-set build.
#
# y = x / max(||x||_p, eps) per row.  p = 2 runs the blocked sum of squares
# and a multiply by the reciprocal (memory speed); p = 1 the same blocked sum
# of |x| (_lane_sum, as every row sum); p = inf
# takes max |x|; any other finite p > 0 sums |x|^p with pow (correct,
# compute-bound).  As torch: a NaN norm is not clamped (the row comes out
# NaN), an infinite element gives an infinite norm.

from libc.math cimport pow as c_pow, INFINITY, isinf


cdef inline double _row_maxabs(const floating* x, Py_ssize_t n) noexcept nogil:
    """max |x| over a row, NaN when the row holds a NaN."""
    cdef Py_ssize_t k
    cdef floating m = 0, v
    cdef Py_ssize_t nans = 0
    for k in range(n):
        v = fabs(x[k])
        m = v if v > m else m
        nans += x[k] != x[k]
    return NAN if nans else <double>m


cdef inline double _row_pnorm(const floating* x, Py_ssize_t n, double p) noexcept nogil:
    cdef Py_ssize_t k
    cdef double s = 0.0, c = 0.0, plain = 0.0, t, yk
    if p == 2.0:
        return sqrt(_sum_squares(x, n))
    if p == 1.0:
        return _sum_abs(x, n)
    if isinf(p):
        return _row_maxabs(x, n)
    # Kahan-compensated: a row of 10^6 |x|^p stays exact to ~eps.  The plain sum
    # runs alongside for inf / NaN, where the compensation itself turns NaN.
    for k in range(n):
        yk = c_pow(fabs(<double>x[k]), p)
        plain += yk
        yk = yk - c
        t = s + yk
        c = (t - s) - yk
        s = t
    if not plain < INFINITY:  # inf or NaN
        return plain
    return c_pow(s, 1.0 / p)


cdef inline double _clamped(double nrm, double eps) noexcept nogil:
    """max(nrm, eps) as torch's clamp_min: a NaN norm stays NaN."""
    return eps if nrm < eps else nrm


cdef void _normalize_rows(const char* xb, Py_ssize_t xs, char* yb, Py_ssize_t ys,
                          Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n, double p, double eps,
                          floating* norms, int storage, floating* scratch) noexcept nogil:
    cdef Py_ssize_t r, k
    cdef const floating* x
    cdef floating* y
    cdef double nrm
    cdef floating inv
    for r in range(r0, r1):
        x = _row_in(storage, scratch, 0, n, xb + r * xs)
        y = _row_out(storage, scratch, 1, n, yb + r * ys)
        nrm = _row_pnorm(x, n, p)
        inv = <floating>(1.0 / _clamped(nrm, eps))
        for k in range(n):
            y[k] = x[k] * inv
        _row_done(storage, scratch, 1, n, yb + r * ys)
        if norms != NULL:
            norms[r] = <floating>nrm


cdef void _normalize_backward_rows(const char* gb_, Py_ssize_t gs, const char* xb, Py_ssize_t xs,
                                   char* db, Py_ssize_t ds, Py_ssize_t r0, Py_ssize_t r1,
                                   Py_ssize_t n, double p, double eps,
                                   const floating* norms, int storage, floating* scratch) noexcept nogil:
    """grad_x = g / N - (sum g*x) / N^(p+1) * sign(x) |x|^(p-1) when N = ||x||_p >= eps
    (the norm's derivative taken as 0 where x = 0), else g / eps (the clamp is constant).  p = inf: the norm's gradient is
    sign(x) on the elements where |x| = N, split evenly between them (as torch),
    grad_x = g / N - (sum g*x) / (N^2 * ties) * sign(x) [|x| = N]."""
    cdef Py_ssize_t r
    cdef const floating* g
    cdef const floating* x
    cdef floating* dx
    for r in range(r0, r1):
        g = _row_in(storage, scratch, 0, n, gb_ + r * gs)
        x = _row_in(storage, scratch, 1, n, xb + r * xs)
        dx = _row_out(storage, scratch, 2, n, db + r * ds)
        _normalize_backward_row(g, x, dx, n, norms[r], p, eps)
        _row_done(storage, scratch, 2, n, db + r * ds)


cdef inline void _normalize_backward_row(const floating* g, const floating* x, floating* dx,
                                         Py_ssize_t n, double nrm, double p, double eps) noexcept nogil:
    cdef Py_ssize_t k, ties
    cdef double dot
    cdef floating inv, coef, top
    if nrm < eps:
        inv = <floating>(1.0 / eps)
        for k in range(n):
            dx[k] = g[k] * inv
        return
    dot = _dot(g, x, n)
    # dx = inv * (g - c * h(x)), c = dot / nrm, h = the norm's derivative
    # times nrm (x / nrm for p = 2): every factor but inv is O(1), no power
    # of the norm beyond the first is formed (dot / nrm^3 leaves float32's
    # range for rows beyond 2^42 or under 2^-42)
    inv = <floating>(1.0 / nrm)
    coef = <floating>(dot / nrm)
    if isinf(p):
        top = <floating>nrm
        ties = 0
        for k in range(n):
            ties += fabs(x[k]) == top
        coef = <floating>(dot / (nrm * (ties if ties > 0 else 1)))
        for k in range(n):
            dx[k] = inv * (g[k] - coef * ((fabs(x[k]) == top) * ((x[k] > 0) - (x[k] < 0))))
        return
    if p == 2.0:
        for k in range(n):
            dx[k] = inv * (g[k] - coef * (x[k] * inv))
    elif p == 1.0:
        for k in range(n):
            dx[k] = inv * (g[k] - coef * ((x[k] > 0) - (x[k] < 0)))
    else:  # |x|^(p-1) is infinite at x = 0 for p < 1: the norm's derivative there is 0 (as torch)
        for k in range(n):
            dx[k] = inv * (g[k] - coef * (<floating>(
                ((x[k] > 0) - (x[k] < 0)) * c_pow(fabs(<double>x[k]) / nrm, p - 1.0)) if x[k] != 0 else 0))


def normalize_forward(cnp.ndarray x, cnp.ndarray y, double p, double eps, object norms,
                      object n_threads):
    """x, y: (M, n) with contiguous rows; norms: contiguous (M,) output or None."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef Py_ssize_t M = x.shape[0], n = x.shape[1]
    _check_rows(x, typenum, M, n, "x")
    _check_rows(y, typenum, M, n, "y")
    cdef int nth = resolve_threads(n_threads, M * n)
    cdef const char* xb = <const char*>cnp.PyArray_DATA(x)
    cdef char* yb = <char*>cnp.PyArray_DATA(y)
    cdef Py_ssize_t xs = x.strides[0], ys = y.strides[0]
    cdef void* np_ = _ptr_or_null(norms)
    cdef int c
    cdef Py_ssize_t r0, r1
    cdef bint dbl
    cdef int storage = storage_of(typenum, &dbl)
    cdef float* scratch = NULL
    if M == 0:
        return
    if nth > M:
        nth = <int>M
    scratch = _stage_scratch(storage, nth, 2, n)
    if storage != ST_NATIVE and scratch == NULL:
        raise MemoryError("fastnorm: could not allocate the staging rows")
    if not dbl:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                r0 = _part_start(M, nth, c)
                r1 = _part_start(M, nth, c + 1)
                _normalize_rows[float](xb, xs, yb, ys, r0, r1, n, p, eps, <float*>np_, storage,
                                       scratch + c * 2 * n if scratch != NULL else NULL)
    else:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                r0 = _part_start(M, nth, c)
                r1 = _part_start(M, nth, c + 1)
                _normalize_rows[double](xb, xs, yb, ys, r0, r1, n, p, eps, <double*>np_, storage, NULL)
    scratch_free(scratch)


def normalize_fast(object x, object p, object dim, object eps, object out, object n_threads,
                   bint return_stats):
    """Fast path of normalize along the last dim of a C-contiguous array
    (see layer_norm_fast); anything else returns NotImplemented."""
    cdef cnp.ndarray xa
    cdef double e = 0.0, pv
    cdef bint dbl
    if not cnp.PyArray_CheckExact(x):
        return NotImplemented
    xa = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(xa)
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef int ctype = _kernel_typenum(typenum)
    if (ctype < 0 or nd < 1 or not _fast_array(x, typenum) or type(dim) is not int
            or not (dim == -1 or dim == nd - 1) or not _fast_eps(eps, &e)):
        return NotImplemented
    if not _fast_real(p, &pv) or not pv > 0:
        return NotImplemented
    cdef Py_ssize_t n = cnp.PyArray_DIMS(xa)[nd - 1]
    if n < 1:
        return NotImplemented
    cdef object y = _fast_output(xa, out)
    if y is None:
        return NotImplemented
    cdef Py_ssize_t M = cnp.PyArray_SIZE(xa) // n
    cdef object norms = _stats_like_lead(xa, 1, ctype) if return_stats else None
    cdef int nth = resolve_threads(n_threads, M * n)
    cdef int storage = storage_of(typenum, &dbl)
    cdef Py_ssize_t row = n * cnp.PyArray_ITEMSIZE(xa)
    cdef const char* xb = <const char*>cnp.PyArray_DATA(xa)
    cdef char* yb = <char*>cnp.PyArray_DATA(<cnp.ndarray>y)
    cdef void* np_ = _ptr_or_null(norms)
    cdef int c
    cdef Py_ssize_t r0, r1
    cdef float* scratch = NULL
    if M > 0:
        if nth > M:
            nth = <int>M
        scratch = _stage_scratch(storage, nth, 2, n)
        if storage != ST_NATIVE and scratch == NULL:
            raise MemoryError("fastnorm: could not allocate the staging rows")
        if not dbl:
            with nogil:
                for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                    r0 = _part_start(M, nth, c)
                    r1 = _part_start(M, nth, c + 1)
                    _normalize_rows[float](xb, row, yb, row, r0, r1, n, pv, e, <float*>np_, storage,
                                           scratch + c * 2 * n if scratch != NULL else NULL)
        else:
            with nogil:
                for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                    r0 = _part_start(M, nth, c)
                    r1 = _part_start(M, nth, c + 1)
                    _normalize_rows[double](xb, row, yb, row, r0, r1, n, pv, e, <double*>np_, storage, NULL)
        scratch_free(scratch)
    if return_stats:
        return y, norms
    return y


def normalize_backward(cnp.ndarray grad_out, cnp.ndarray x, cnp.ndarray norms, cnp.ndarray grad_x,
                       double p, double eps, object n_threads):
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef Py_ssize_t M = x.shape[0], n = x.shape[1]
    _check_rows(x, typenum, M, n, "x")
    _check_rows(grad_out, typenum, M, n, "grad_out")
    _check_rows(grad_x, typenum, M, n, "grad_x")
    cdef int nth = resolve_threads(n_threads, M * n)
    cdef const char* gb_ = <const char*>cnp.PyArray_DATA(grad_out)
    cdef const char* xb = <const char*>cnp.PyArray_DATA(x)
    cdef char* db = <char*>cnp.PyArray_DATA(grad_x)
    cdef Py_ssize_t gs = grad_out.strides[0], xs = x.strides[0], ds = grad_x.strides[0]
    cdef void* np_ = cnp.PyArray_DATA(norms)
    cdef int c
    cdef Py_ssize_t r0, r1
    cdef bint dbl
    cdef int storage = storage_of(typenum, &dbl)
    cdef float* scratch = NULL
    if M == 0:
        return
    if nth > M:
        nth = <int>M
    scratch = _stage_scratch(storage, nth, 3, n)
    if storage != ST_NATIVE and scratch == NULL:
        raise MemoryError("fastnorm: could not allocate the staging rows")
    if not dbl:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                r0 = _part_start(M, nth, c)
                r1 = _part_start(M, nth, c + 1)
                _normalize_backward_rows[float](gb_, gs, xb, xs, db, ds, r0, r1, n, p, eps,
                                                <const float*>np_, storage,
                                                scratch + c * 3 * n if scratch != NULL else NULL)
    else:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                r0 = _part_start(M, nth, c)
                r1 = _part_start(M, nth, c + 1)
                _normalize_backward_rows[double](gb_, gs, xb, xs, db, ds, r0, r1, n, p, eps,
                                                 <const double*>np_, storage, NULL)
    scratch_free(scratch)


# ---------------------------------------------------------------- weight normalization
#
# w = g * v / ||v|| per row of v (the rows are v's slices along `dim`, moved
# first by the caller); centered: v is replaced by v - mean(v) of its row.

cdef void _weight_norm_rows(const char* vb, Py_ssize_t vs, char* wb, Py_ssize_t ws,
                            Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n, const floating* g,
                            bint centered, double* norms, double* means, int storage,
                            floating* scratch) noexcept nogil:
    cdef Py_ssize_t r, k
    cdef const floating* v
    cdef floating* w
    cdef double mean, m2, nrm, sd
    cdef floating scale, hi
    for r in range(r0, r1):
        v = _row_in(storage, scratch, 0, n, vb + r * vs)
        w = _row_out(storage, scratch, 1, n, wb + r * ws)
        if centered:
            _block_moments(v, n, &mean, &m2)
            nrm = sqrt(m2)
        else:
            mean = 0.0
            nrm = sqrt(_sum_squares(v, n))
        norms[r] = nrm
        means[r] = mean
        sd = g[r] / nrm
        if floating is float and not _in_float_range(sd):
            # g / ||v|| beyond float32 (a denormal or huge row): the products in double
            for k in range(n):
                w[k] = <floating>((<double>v[k] - mean) * sd)
            _row_done(storage, scratch, 1, n, wb + r * ws)
            continue
        scale = <floating>sd
        hi = <floating>mean
        if centered:
            for k in range(n):
                w[k] = (v[k] - hi) * scale
        else:
            for k in range(n):
                w[k] = v[k] * scale
        _row_done(storage, scratch, 1, n, wb + r * ws)


cdef void _weight_norm_backward_rows(const char* gwb, Py_ssize_t gws, const char* vb, Py_ssize_t vs,
                                     char* gvb, Py_ssize_t gvs, Py_ssize_t r0, Py_ssize_t r1,
                                     Py_ssize_t n, const floating* g, bint centered,
                                     const floating* norms, floating* grad_g, int storage,
                                     floating* scratch) noexcept nogil:
    """With u = v (- mean), N = ||u||, d = sum(gw * u):
    grad_g = d / N, grad_v = g / N * (gw - u * d / N^2) (minus its row mean when centered)."""
    cdef Py_ssize_t r, k
    cdef const floating* gw
    cdef const floating* v
    cdef floating* gv
    cdef double nrm, dot, sum_gw, sum_t, mean, m2, ad, invd, cd, offd, md
    cdef floating a, c, hi, off, inv
    for r in range(r0, r1):
        gw = _row_in(storage, scratch, 0, n, gwb + r * gws)
        v = _row_in(storage, scratch, 1, n, vb + r * vs)
        gv = _row_out(storage, scratch, 2, n, gvb + r * gvs)
        nrm = norms[r]
        if centered:
            # the row mean again (one pass over the cached row), then
            # d = sum(gw * (v - mean)) without cancellation
            _block_moments(v, n, &mean, &m2)
            hi = <floating>mean
            _block_backward_sums(gw, v, n, hi, <floating>(mean - <double>hi), &sum_gw, &dot, &sum_t)
        else:
            hi = 0
            dot = _dot(gw, v, n)
        grad_g[r] = <floating>(dot / nrm)
        # gv = a * (gw - u / N * d / N): no N^3 (outside float32's range
        # for rows beyond 2^42 or under 2^-42); each factor but a is O(1)
        if floating is float and not (_in_float_range(g[r] / nrm) and _in_float_range(1.0 / nrm)):
            # a denormal or huge row: 1 / N or g / N beyond float32, the row in double
            ad, invd, cd = g[r] / nrm, 1.0 / nrm, dot / nrm
            offd = sum_gw / n if centered else 0.0
            md = mean if centered else 0.0
            for k in range(n):
                gv[k] = <floating>(ad * ((gw[k] - offd) - cd * ((<double>v[k] - md) * invd)))
            _row_done(storage, scratch, 2, n, gvb + r * gvs)
            continue
        a = <floating>(g[r] / nrm)
        inv = <floating>(1.0 / nrm)
        c = <floating>(dot / nrm)
        if centered:
            off = <floating>(sum_gw / n)
            for k in range(n):
                gv[k] = a * ((gw[k] - off) - c * ((v[k] - hi) * inv))
        else:
            for k in range(n):
                gv[k] = a * (gw[k] - c * (v[k] * inv))
        _row_done(storage, scratch, 2, n, gvb + r * gvs)


def weight_norm_forward(cnp.ndarray v, cnp.ndarray w, cnp.ndarray g, bint centered,
                        cnp.ndarray norms, cnp.ndarray means, object n_threads):
    """v, w: (M, n) rows; g: contiguous (M,) of the compute dtype; norms, means: float64 (M,) outputs."""
    cdef int typenum = cnp.PyArray_TYPE(v)
    cdef Py_ssize_t M = v.shape[0], n = v.shape[1]
    _check_rows(v, typenum, M, n, "v")
    _check_rows(w, typenum, M, n, "w")
    _check_flat(g, _kernel_typenum(typenum), M, "g")
    _check_flat(norms, cnp.NPY_FLOAT64, M, "norms")
    _check_flat(means, cnp.NPY_FLOAT64, M, "means")
    cdef int nth = resolve_threads(n_threads, M * n)
    cdef const char* vb = <const char*>cnp.PyArray_DATA(v)
    cdef char* wb = <char*>cnp.PyArray_DATA(w)
    cdef Py_ssize_t vs = v.strides[0], ws = w.strides[0]
    cdef void* gp = cnp.PyArray_DATA(g)
    cdef double* np_ = <double*>cnp.PyArray_DATA(norms)
    cdef double* mp = <double*>cnp.PyArray_DATA(means)
    cdef int c
    cdef bint dbl
    cdef int storage = storage_of(typenum, &dbl)
    cdef float* scratch = NULL
    if M == 0:
        return
    if nth > M:
        nth = <int>M
    scratch = _stage_scratch(storage, nth, 2, n)
    if storage != ST_NATIVE and scratch == NULL:
        raise MemoryError("fastnorm: could not allocate the staging rows")
    if not dbl:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                _weight_norm_rows[float](vb, vs, wb, ws, _part_start(M, nth, c), _part_start(M, nth, c + 1),
                                         n, <const float*>gp, centered, np_, mp, storage,
                                         scratch + c * 2 * n if scratch != NULL else NULL)
    else:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                _weight_norm_rows[double](vb, vs, wb, ws, _part_start(M, nth, c), _part_start(M, nth, c + 1),
                                          n, <const double*>gp, centered, np_, mp, storage, NULL)
    scratch_free(scratch)


def weight_norm_backward(cnp.ndarray grad_w, cnp.ndarray v, cnp.ndarray grad_v, cnp.ndarray g,
                         bint centered, cnp.ndarray norms, cnp.ndarray grad_g, object n_threads):
    """norms: contiguous (M,) of v's dtype (what the forward returned)."""
    cdef int typenum = cnp.PyArray_TYPE(v)
    cdef Py_ssize_t M = v.shape[0], n = v.shape[1]
    _check_rows(v, typenum, M, n, "v")
    _check_rows(grad_w, typenum, M, n, "grad_w")
    _check_rows(grad_v, typenum, M, n, "grad_v")
    cdef int ctype = _kernel_typenum(typenum)
    _check_flat(g, ctype, M, "g")
    _check_flat(grad_g, ctype, M, "grad_g")
    _check_flat(norms, ctype, M, "norms")
    cdef int nth = resolve_threads(n_threads, M * n)
    cdef const char* gwb = <const char*>cnp.PyArray_DATA(grad_w)
    cdef const char* vb = <const char*>cnp.PyArray_DATA(v)
    cdef char* gvb = <char*>cnp.PyArray_DATA(grad_v)
    cdef Py_ssize_t gws = grad_w.strides[0], vs = v.strides[0], gvs = grad_v.strides[0]
    cdef void* gp = cnp.PyArray_DATA(g)
    cdef void* ggp = cnp.PyArray_DATA(grad_g)
    cdef void* np_ = cnp.PyArray_DATA(norms)
    cdef int c
    cdef bint dbl
    cdef int storage = storage_of(typenum, &dbl)
    cdef float* scratch = NULL
    if M == 0:
        return
    if nth > M:
        nth = <int>M
    scratch = _stage_scratch(storage, nth, 3, n)
    if storage != ST_NATIVE and scratch == NULL:
        raise MemoryError("fastnorm: could not allocate the staging rows")
    if not dbl:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                _weight_norm_backward_rows[float](gwb, gws, vb, vs, gvb, gvs, _part_start(M, nth, c),
                                                  _part_start(M, nth, c + 1), n, <const float*>gp,
                                                  centered, <const float*>np_, <float*>ggp, storage,
                                                  scratch + c * 3 * n if scratch != NULL else NULL)
    else:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                _weight_norm_backward_rows[double](gwb, gws, vb, vs, gvb, gvs, _part_start(M, nth, c),
                                                   _part_start(M, nth, c + 1), n, <const double*>gp,
                                                   centered, <const double*>np_, <double*>ggp, storage, NULL)
    scratch_free(scratch)


cdef bint _torch_vec_shape(cnp.ndarray a, Py_ssize_t M, int nd_v) noexcept:
    """g's or the norm's shape as the general path accepts it: 0-d when M is
    1, (M,), or torch's (M, 1, ...) of v's ndim; nd_v is -1 for dim=None
    (one norm: 0-d or (1,))."""
    cdef int nd = cnp.PyArray_NDIM(a), k
    if nd == 0:
        return M == 1
    if cnp.PyArray_DIMS(a)[0] != M:
        return False
    if nd == 1:
        return True
    if nd != nd_v:
        return False
    for k in range(1, nd):
        if cnp.PyArray_DIMS(a)[k] != 1:
            return False
    return True


cdef object _fast_rowvec(object p, Py_ssize_t M, int nd_v, int typenum, int ctype):
    """g for weight_norm's fast path: an exact contiguous native array of M
    values in a shape the general path takes (_torch_vec_shape), in the
    compute dtype or in x's 16-bit dtype (widened, _in_compute_dtype);
    NotImplemented otherwise."""
    cdef cnp.ndarray a
    if not cnp.PyArray_CheckExact(p):
        return NotImplemented
    a = <cnp.ndarray>p
    if (not _torch_vec_shape(a, M, nd_v) or not _c_aligned(a)
            or not cnp.PyArray_ISNOTSWAPPED(a)):
        return NotImplemented
    return _in_compute_dtype(a, typenum, ctype)


cdef bint _weight_norm_fast_args(object v, object dim, object centered, Py_ssize_t* M,
                                 Py_ssize_t* n, int* nd_v):
    """v is an exact C-contiguous ndarray of a kernel dtype normalized along
    dim 0 (rows: v's first axis) or as a whole (dim=None: one row, nd_v -1)."""
    cdef int nd
    cdef cnp.ndarray va
    if not cnp.PyArray_CheckExact(v) or type(centered) is not bool or not (dim is None or type(dim) is int):
        return False
    va = <cnp.ndarray>v
    nd = cnp.PyArray_NDIM(va)
    if (nd < 1 or not (dim is None or dim == 0 or dim == -nd) or _kernel_typenum(cnp.PyArray_TYPE(va)) < 0
            or not _fast_array(v, cnp.PyArray_TYPE(va))):
        return False
    if dim is None:
        M[0] = 1
        n[0] = cnp.PyArray_SIZE(va)
        nd_v[0] = -1
    else:
        M[0] = cnp.PyArray_DIMS(va)[0]
        n[0] = cnp.PyArray_SIZE(va) // M[0] if M[0] > 0 else 0
        nd_v[0] = nd
    return M[0] > 0 and n[0] > 0


def weight_norm_fast(object v, object g, object dim, object centered, object out, object n_threads,
                     bint return_stats):
    """Fast path of weight_norm (dim 0 or None); NotImplemented otherwise."""
    cdef cnp.ndarray va
    cdef Py_ssize_t M, n, r
    cdef bint dbl
    cdef int nd_v
    if not _weight_norm_fast_args(v, dim, centered, &M, &n, &nd_v):
        return NotImplemented
    va = <cnp.ndarray>v
    cdef int typenum = cnp.PyArray_TYPE(va)
    cdef int ctype = _kernel_typenum(typenum)
    cdef object ga = _fast_rowvec(g, M, nd_v, typenum, ctype)
    if ga is NotImplemented:
        return NotImplemented
    # a new w, v itself (each row is read before it is written), or a separate out
    cdef object w = _fast_output(va, out)
    if w is None or (out is not None and _bytes_overlap(w, ga)):
        return NotImplemented
    cdef double* buf = <double*>scratch_alloc(2 * M * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    cdef int storage = storage_of(typenum, &dbl)
    cdef int nth = resolve_threads(n_threads, M * n)
    cdef int c
    cdef bint cen = centered
    cdef Py_ssize_t row = n * cnp.PyArray_ITEMSIZE(va)
    cdef const char* vb = <const char*>cnp.PyArray_DATA(va)
    cdef char* wb = <char*>cnp.PyArray_DATA(<cnp.ndarray>w)
    cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>ga)
    if nth > M:
        nth = <int>M
    cdef float* scratch = _stage_scratch(storage, nth, 2, n)
    if storage != ST_NATIVE and scratch == NULL:
        scratch_free(buf)
        raise MemoryError("fastnorm: could not allocate the staging rows")
    if not dbl:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                _weight_norm_rows[float](vb, row, wb, row, _part_start(M, nth, c), _part_start(M, nth, c + 1),
                                         n, <const float*>gp, cen, buf, buf + M, storage,
                                         scratch + c * 2 * n if scratch != NULL else NULL)
    else:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                _weight_norm_rows[double](vb, row, wb, row, _part_start(M, nth, c), _part_start(M, nth, c + 1),
                                          n, <const double*>gp, cen, buf, buf + M, storage, NULL)
    scratch_free(scratch)
    if not return_stats:
        scratch_free(buf)
        return w
    # the norm in torch's shape: v's size along dim 0, 1 elsewhere (0-d for dim=None)
    cdef cnp.npy_intp[32] dims
    cdef int k, nd = cnp.PyArray_NDIM(va) if nd_v >= 0 else 0
    if nd > 32:
        scratch_free(buf)
        return NotImplemented
    dims[0] = M
    for k in range(1, nd):
        dims[k] = 1
    cdef object norm = cnp.PyArray_EMPTY(nd, dims, ctype, 0)
    for r in range(M):
        if ctype == cnp.NPY_FLOAT32:
            (<float*>cnp.PyArray_DATA(<cnp.ndarray>norm))[r] = <float>buf[r]
        else:
            (<double*>cnp.PyArray_DATA(<cnp.ndarray>norm))[r] = buf[r]
    scratch_free(buf)
    return w, norm


def weight_norm_backward_fast(object grad_w, object v, object g, object norm, object dim,
                              object centered, object n_threads):
    """Fast path of weight_norm_backward (dim 0 or None); NotImplemented otherwise."""
    cdef cnp.ndarray va
    cdef Py_ssize_t M, n
    cdef bint dbl
    cdef int nd_v
    if not _weight_norm_fast_args(v, dim, centered, &M, &n, &nd_v):
        return NotImplemented
    va = <cnp.ndarray>v
    cdef int typenum = cnp.PyArray_TYPE(va)
    cdef int ctype = _kernel_typenum(typenum)
    if not _fast_array(grad_w, typenum) or not _same_dims(<cnp.ndarray>grad_w, va, 0):
        return NotImplemented
    cdef object ga = _fast_rowvec(g, M, nd_v, typenum, ctype)
    if (ga is NotImplemented or not _fast_array(norm, ctype)
            or not _torch_vec_shape(<cnp.ndarray>norm, M, nd_v)):
        return NotImplemented
    if (cnp.PyArray_TYPE(<cnp.ndarray>g) != ctype and cnp.PyArray_TYPE(<cnp.ndarray>g) != typenum):
        return NotImplemented
    cdef object grad_v = empty_array(cnp.PyArray_NDIM(va), cnp.PyArray_DIMS(va), typenum)
    cdef object grad_g = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(<cnp.ndarray>g), cnp.PyArray_DIMS(<cnp.ndarray>g),
                                          ctype, 0)
    cdef int storage = storage_of(typenum, &dbl)
    cdef int nth = resolve_threads(n_threads, M * n)
    cdef int c
    cdef bint cen = centered
    cdef Py_ssize_t row = n * cnp.PyArray_ITEMSIZE(va)
    cdef const char* gwb = <const char*>cnp.PyArray_DATA(<cnp.ndarray>grad_w)
    cdef const char* vb = <const char*>cnp.PyArray_DATA(va)
    cdef char* gvb = <char*>cnp.PyArray_DATA(<cnp.ndarray>grad_v)
    cdef void* gp = cnp.PyArray_DATA(<cnp.ndarray>ga)
    cdef void* np_ = cnp.PyArray_DATA(<cnp.ndarray>norm)
    cdef void* ggp = cnp.PyArray_DATA(<cnp.ndarray>grad_g)
    if nth > M:
        nth = <int>M
    cdef float* scratch = _stage_scratch(storage, nth, 3, n)
    if storage != ST_NATIVE and scratch == NULL:
        raise MemoryError("fastnorm: could not allocate the staging rows")
    if not dbl:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                _weight_norm_backward_rows[float](gwb, row, vb, row, gvb, row, _part_start(M, nth, c),
                                                  _part_start(M, nth, c + 1), n, <const float*>gp,
                                                  cen, <const float*>np_, <float*>ggp, storage,
                                                  scratch + c * 3 * n if scratch != NULL else NULL)
    else:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                _weight_norm_backward_rows[double](gwb, row, vb, row, gvb, row, _part_start(M, nth, c),
                                                   _part_start(M, nth, c + 1), n, <const double*>gp,
                                                   cen, <const double*>np_, <double*>ggp, storage, NULL)
    scratch_free(scratch)
    return grad_v, _param_grad(grad_g, g)   # a 16-bit g gets its gradient in its dtype


def normalize_backward_fast(object grad_out, object x, object norm, object p, object dim, object eps,
                            object n_threads):
    """Fast path of normalize_backward along the last dim of C-contiguous x."""
    cdef cnp.ndarray xa
    cdef double e = 0.0, pv
    cdef bint dbl
    if not cnp.PyArray_CheckExact(x):
        return NotImplemented
    xa = <cnp.ndarray>x
    cdef int nd = cnp.PyArray_NDIM(xa)
    cdef int typenum = cnp.PyArray_TYPE(xa)
    cdef int ctype = _kernel_typenum(typenum)
    if (ctype < 0 or nd < 1 or not _fast_array(x, typenum) or not _fast_array(grad_out, typenum)
            or not _same_dims(<cnp.ndarray>grad_out, xa, 0) or type(dim) is not int
            or not (dim == -1 or dim == nd - 1) or not _fast_eps(eps, &e)
            or not _fast_array(norm, ctype) or not _is_lead(norm, xa, 1)):
        return NotImplemented
    if not _fast_real(p, &pv) or not pv > 0:
        return NotImplemented
    cdef Py_ssize_t n = cnp.PyArray_DIMS(xa)[nd - 1]
    if n < 1:
        return NotImplemented
    cdef Py_ssize_t M = cnp.PyArray_SIZE(xa) // n
    cdef object dx = empty_array(nd, cnp.PyArray_DIMS(xa), typenum)
    cdef int nth = resolve_threads(n_threads, M * n)
    cdef int storage = storage_of(typenum, &dbl)
    cdef Py_ssize_t row = n * cnp.PyArray_ITEMSIZE(xa)
    cdef const char* gb_ = <const char*>cnp.PyArray_DATA(<cnp.ndarray>grad_out)
    cdef const char* xb = <const char*>cnp.PyArray_DATA(xa)
    cdef char* db = <char*>cnp.PyArray_DATA(<cnp.ndarray>dx)
    cdef void* np_ = cnp.PyArray_DATA(<cnp.ndarray>norm)
    cdef int c
    cdef Py_ssize_t r0, r1
    cdef float* scratch = NULL
    if M > 0:
        if nth > M:
            nth = <int>M
        scratch = _stage_scratch(storage, nth, 3, n)
        if storage != ST_NATIVE and scratch == NULL:
            raise MemoryError("fastnorm: could not allocate the staging rows")
        if not dbl:
            with nogil:
                for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                    r0 = _part_start(M, nth, c)
                    r1 = _part_start(M, nth, c + 1)
                    _normalize_backward_rows[float](gb_, row, xb, row, db, row, r0, r1, n, pv, e,
                                                    <const float*>np_, storage,
                                                    scratch + c * 3 * n if scratch != NULL else NULL)
        else:
            with nogil:
                for c in prange(nth, schedule='static', num_threads=nth, use_threads_if=nth > 1):
                    r0 = _part_start(M, nth, c)
                    r1 = _part_start(M, nth, c + 1)
                    _normalize_backward_rows[double](gb_, row, xb, row, db, row, r0, r1, n, pv, e,
                                                     <const double*>np_, storage, NULL)
        scratch_free(scratch)
    return dx
