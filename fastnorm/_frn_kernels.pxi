# Filter Response Normalization + TLU (Singh & Krishnan 2019), channels-first
# blocks: included by _kernels.pxi.  Per (sample, channel) block of S values:
# nu2 = mean(x^2), rstd = 1/sqrt(nu2 + eps), z = w * x * rstd + b,
# y = max(z, tau) (y = z without tau), NaN when either is NaN, as
# torch.maximum.  The functional layer brings channels-last input to this
# layout.


cdef inline floating _tlu(floating z, floating tau) noexcept nogil:
    """max(z, tau), NaN when either is NaN (as torch.maximum)."""
    return z if (z > tau or z != z) else tau


cdef inline floating _tlu_grad_z(floating z, floating tau, floating g) noexcept nogil:
    """The share of g that goes to z in max(z, tau), as torch.maximum's
    backward: all of it above tau, half at a tie, none below; all of it when
    either is NaN (neither comparison holds)."""
    return g * <floating>0.5 if z == tau else (0 if z < tau else g)


cdef inline floating _tlu_grad_tau(floating z, floating tau, floating g) noexcept nogil:
    """The share of g that goes to tau (the mirror of _tlu_grad_z)."""
    return g * <floating>0.5 if z == tau else (0 if z > tau else g)


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
    _tlu_grad_tau); dx = w*rstd*gz - x * w * rstd^3 * sum(gz * x) / S."""
    cdef Py_ssize_t k
    cdef floating a = w * rstd, z, gz
    cdef double sa = 0.0, sx = 0.0, st = 0.0
    for k in range(S):
        if has_tau:
            z = x[k] * a + b
            gz = _tlu_grad_z(z, tau, g[k])
            st += _tlu_grad_tau(z, tau, g[k])
        else:
            gz = g[k]
        sa += gz
        sx += gz * x[k]
    cdef floating coef = <floating>(<double>w * rstd * rstd * rstd * sx / S)
    if has_tau:
        for k in range(S):
            dx[k] = a * _tlu_grad_z(x[k] * a + b, tau, g[k]) - coef * x[k]
    else:
        for k in range(S):
            dx[k] = a * g[k] - coef * x[k]
    sum_gz[0] = sa
    sum_gz_xhat[0] = sx * rstd
    sum_gtau[0] = st


def frn_forward(cnp.ndarray x, cnp.ndarray y, Py_ssize_t N, Py_ssize_t C, Py_ssize_t S,
                cnp.ndarray weight, cnp.ndarray bias, object tau, double eps, cnp.ndarray rstd,
                object n_threads):
    """x, y: C-contiguous (N, C, S); weight, bias, tau: contiguous (C,) of x's
    dtype (tau may be None); rstd: (N*C,) output of x's dtype."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    _check_flat(x, typenum, N * C * S, "x")
    _check_flat(y, typenum, N * C * S, "y")
    _check_flat(weight, typenum, C, "weight")
    _check_flat(bias, typenum, C, "bias")
    _check_flat(rstd, typenum, N * C, "rstd")
    cdef bint has_tau = tau is not None
    if has_tau:
        _check_flat(<cnp.ndarray>tau, typenum, C, "tau")
    cdef int nth = resolve_threads(n_threads, N * C * S)
    cdef void* xp = cnp.PyArray_DATA(x)
    cdef void* yp = cnp.PyArray_DATA(y)
    cdef void* wp = cnp.PyArray_DATA(weight)
    cdef void* bp = cnp.PyArray_DATA(bias)
    cdef void* tp = _ptr_or_null(tau)
    cdef void* rp = cnp.PyArray_DATA(rstd)
    cdef Py_ssize_t bl, c
    if N * C * S == 0:
        return
    if typenum == cnp.NPY_FLOAT32:
        with nogil:
            for bl in prange(N * C, schedule='static', num_threads=nth):
                c = bl % C
                _frn_block_forward[float](<const float*>xp + bl * S, <float*>yp + bl * S, S, eps,
                                          (<const float*>wp)[c], (<const float*>bp)[c],
                                          (<const float*>tp)[c] if has_tau else 0, has_tau,
                                          <float*>rp + bl)
    else:
        with nogil:
            for bl in prange(N * C, schedule='static', num_threads=nth):
                c = bl % C
                _frn_block_forward[double](<const double*>xp + bl * S, <double*>yp + bl * S, S, eps,
                                           (<const double*>wp)[c], (<const double*>bp)[c],
                                           (<const double*>tp)[c] if has_tau else 0, has_tau,
                                           <double*>rp + bl)


def frn_backward(cnp.ndarray g, cnp.ndarray x, cnp.ndarray dx, Py_ssize_t N, Py_ssize_t C,
                 Py_ssize_t S, cnp.ndarray weight, cnp.ndarray bias, object tau,
                 cnp.ndarray rstd, cnp.ndarray grad_w, cnp.ndarray grad_b, cnp.ndarray grad_tau,
                 object n_threads):
    """grad_w, grad_b, grad_tau: float64 (C,) outputs (per-block sums added in a fixed order)."""
    cdef int typenum = cnp.PyArray_TYPE(x)
    _check_flat(x, typenum, N * C * S, "x")
    _check_flat(g, typenum, N * C * S, "grad_out")
    _check_flat(dx, typenum, N * C * S, "grad_x")
    _check_flat(rstd, typenum, N * C, "rstd")
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
    cdef double* sums = <double*>malloc(3 * N * C * sizeof(double) + 8)
    cdef Py_ssize_t bl, c
    if sums == NULL:
        raise MemoryError()
    if N * C * S > 0:
        if typenum == cnp.NPY_FLOAT32:
            with nogil:
                for bl in prange(N * C, schedule='static', num_threads=nth):
                    c = bl % C
                    _frn_block_backward[float](<const float*>gp + bl * S, <const float*>xp + bl * S,
                                               <float*>dp + bl * S, S, (<const float*>wp)[c],
                                               (<const float*>bp)[c],
                                               (<const float*>tp)[c] if has_tau else 0, has_tau,
                                               (<const float*>rp)[bl], &sums[3 * bl], &sums[3 * bl + 1],
                                               &sums[3 * bl + 2])
        else:
            with nogil:
                for bl in prange(N * C, schedule='static', num_threads=nth):
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
    free(sums)
