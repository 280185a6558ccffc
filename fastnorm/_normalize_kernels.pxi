# Lp normalization (torch.nn.functional.normalize) over contiguous rows:
# included by _kernels.pxi, so compiled into every instruction-set build.
#
# y = x / max(||x||_p, eps) per row.  p = 2 runs the blocked sum of squares
# and a multiply by the reciprocal (memory speed); p = 1 sums |x|; any other
# finite p > 0 sums |x|^p with pow (correct, compute-bound).

from libc.math cimport fabs, pow as c_pow


cdef inline double _row_pnorm(const floating* x, Py_ssize_t n, double p) noexcept nogil:
    cdef Py_ssize_t k
    cdef double s = 0.0, c = 0.0, t, yk
    if p == 2.0:
        return sqrt(_sum_squares(x, n))
    if p == 1.0:
        for k in range(n):  # Kahan-compensated: a row of 10^6 |x| stays exact to ~eps
            yk = fabs(<double>x[k]) - c
            t = s + yk
            c = (t - s) - yk
            s = t
        return s
    for k in range(n):
        yk = c_pow(fabs(<double>x[k]), p) - c
        t = s + yk
        c = (t - s) - yk
        s = t
    return c_pow(s, 1.0 / p)


cdef void _normalize_rows(const char* xb, Py_ssize_t xs, char* yb, Py_ssize_t ys,
                          Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n, double p, double eps,
                          floating* norms) noexcept nogil:
    cdef Py_ssize_t r, k
    cdef const floating* x
    cdef floating* y
    cdef double nrm
    cdef floating inv
    for r in range(r0, r1):
        x = <const floating*>(xb + r * xs)
        y = <floating*>(yb + r * ys)
        nrm = _row_pnorm(x, n, p)
        inv = <floating>(1.0 / (nrm if nrm > eps else eps))
        for k in range(n):
            y[k] = x[k] * inv
        if norms != NULL:
            norms[r] = <floating>nrm


cdef void _normalize_backward_rows(const char* gb_, Py_ssize_t gs, const char* xb, Py_ssize_t xs,
                                   char* db, Py_ssize_t ds, Py_ssize_t r0, Py_ssize_t r1,
                                   Py_ssize_t n, double p, double eps,
                                   const floating* norms) noexcept nogil:
    """grad_x = g / N - (sum g*x) / N^(p+1) * sign(x) |x|^(p-1) when N = ||x||_p > eps,
    else g / eps (the clamp is constant)."""
    cdef Py_ssize_t r, k
    cdef const floating* g
    cdef const floating* x
    cdef floating* dx
    cdef double nrm, dot
    cdef floating inv, coef
    for r in range(r0, r1):
        g = <const floating*>(gb_ + r * gs)
        x = <const floating*>(xb + r * xs)
        dx = <floating*>(db + r * ds)
        nrm = norms[r]
        if not nrm > eps:
            inv = <floating>(1.0 / eps)
            for k in range(n):
                dx[k] = g[k] * inv
            continue
        dot = _dot(g, x, n)
        inv = <floating>(1.0 / nrm)
        coef = <floating>(dot / c_pow(nrm, p + 1.0))
        if p == 2.0:
            for k in range(n):
                dx[k] = g[k] * inv - coef * x[k]
        elif p == 1.0:
            for k in range(n):
                dx[k] = g[k] * inv - coef * ((x[k] > 0) - (x[k] < 0))
        else:
            for k in range(n):
                dx[k] = g[k] * inv - coef * <floating>(
                    ((x[k] > 0) - (x[k] < 0)) * c_pow(fabs(<double>x[k]), p - 1.0))


cdef inline double _dot(const floating* a, const floating* b, Py_ssize_t n) noexcept nogil:
    """sum a*b, blocked like the other row sums."""
    cdef floating acc[LANES]
    cdef floating rest
    cdef double total = 0.0
    cdef Py_ssize_t i = 0, k, end, vend
    cdef int j
    while i < n:
        end = i + BLOCK if i + BLOCK < n else n
        vend = i + ((end - i) // LANES) * LANES
        for j in range(LANES):
            acc[j] = 0
        k = i
        while k < vend:
            for j in range(LANES):
                acc[j] += a[k + j] * b[k + j]
            k += LANES
        rest = 0
        for k in range(vend, end):
            rest += a[k] * b[k]
        total += _lanes_total(acc) + rest
        i = end
    return total


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
    if M == 0:
        return
    if nth > M:
        nth = <int>M
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth):
                r0 = _part_start(M, nth, c)
                r1 = _part_start(M, nth, c + 1)
                _normalize_rows[float](xb, xs, yb, ys, r0, r1, n, p, eps, <float*>np_)
    else:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth):
                r0 = _part_start(M, nth, c)
                r1 = _part_start(M, nth, c + 1)
                _normalize_rows[double](xb, xs, yb, ys, r0, r1, n, p, eps, <double*>np_)


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
    if M == 0:
        return
    if nth > M:
        nth = <int>M
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth):
                r0 = _part_start(M, nth, c)
                r1 = _part_start(M, nth, c + 1)
                _normalize_backward_rows[float](gb_, gs, xb, xs, db, ds, r0, r1, n, p, eps,
                                                <const float*>np_)
    else:
        with nogil:
            for c in prange(nth, schedule='static', num_threads=nth):
                r0 = _part_start(M, nth, c)
                r1 = _part_start(M, nth, c + 1)
                _normalize_backward_rows[double](gb_, gs, xb, xs, db, ds, r0, r1, n, p, eps,
                                                 <const double*>np_)
