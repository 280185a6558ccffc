/* Rows standardized by their unbiased standard deviation, eps added to the
 * std (not inside a square root): AdaNorm (Xu et al. 2019) and Weight
 * Standardization (Qiao et al.), as their reference implementations compute
 * them.  Included by _stdnorm_kernels.pxi.
 *
 * Per row of n values: mean, s = sqrt(sum (x - mean)^2 / (n - 1)),
 * inv = 1 / (s + eps), z = (x - mean) * inv,
 *   y = scale * z * (1 - k z)          (k = 0: y = scale * z).
 * The factor (1 - k z) is held constant in the backward (AdaNorm detaches
 * it): with u = g * scale * (1 - k z),
 *   dx = inv * (u - mean(u)) - (x - mean) * inv^2 * sum(u (x - mean)) / ((n - 1) s).
 *
 * Statistics are two-pass (the second on centered values); float32 sums run
 * in float over tiles of FN_SN_TILE values, added to double once per tile.
 */
#ifndef FASTNORM_STDNORM_H
#define FASTNORM_STDNORM_H
#include <math.h>
#include <stddef.h>
#include "simd.h"

#define FN_SN_TILE 512

static void fn_sn_moments_f(const float* x, ptrdiff_t n, double* mean, double* m2) {
    double s = 0.0;
    for (ptrdiff_t i = 0; i < n; i += FN_SN_TILE) {
        ptrdiff_t m = n - i < FN_SN_TILE ? n - i : FN_SN_TILE;
        const float* xi = x + i;
        float t = 0.0f;
#pragma omp simd reduction(+:t)
        for (ptrdiff_t k = 0; k < m; k++) t += xi[k];
        s += t;
    }
    double mu = s / (double)n;
    float hi = (float)mu, lo = (float)(mu - (double)hi);
    double q = 0.0;
    for (ptrdiff_t i = 0; i < n; i += FN_SN_TILE) {
        ptrdiff_t m = n - i < FN_SN_TILE ? n - i : FN_SN_TILE;
        const float* xi = x + i;
        float t = 0.0f;
#pragma omp simd reduction(+:t)
        for (ptrdiff_t k = 0; k < m; k++) {
            float d = (xi[k] - hi) - lo;
            t += d * d;
        }
        q += t;
    }
    *mean = mu;
    *m2 = q;
}

static void fn_sn_moments_d(const double* x, ptrdiff_t n, double* mean, double* m2) {
    double s = 0.0;
#pragma omp simd reduction(+:s)
    for (ptrdiff_t k = 0; k < n; k++) s += x[k];
    double mu = s / (double)n, q = 0.0;
#pragma omp simd reduction(+:q)
    for (ptrdiff_t k = 0; k < n; k++) q += (x[k] - mu) * (x[k] - mu);
    *mean = mu;
    *m2 = q;
}

/* stream: the row is computed into an aligned tile, then stored with
 * whole streaming vectors where y is aligned (a large output written
 * without reading its lines first: 2 memory transfers per value, not 3) */
static void fn_sn_forward_f(const float* x, float* y, ptrdiff_t n, double mean, double inv,
                            float scale, float kf, int stream) {
    float hi = (float)mean, lo = (float)(mean - (double)hi), r = (float)inv;
    if (!stream) {
#pragma omp simd
        for (ptrdiff_t k = 0; k < n; k++) {
            float z = ((x[k] - hi) - lo) * r;
            y[k] = scale * z * (1.0f - kf * z);
        }
        return;
    }
    /* the head up to y's first aligned vector is stored one value at a time;
     * then tiles start at aligned addresses of y, so that only the row's
     * first and last cache lines are written with ordinary stores (tiles
     * aligned to the row instead split a line at every tile boundary when y
     * is not 64-byte aligned: 1.35x the time of the aligned case, measured
     * on (8192, 4096) with out= 16 bytes off a page) */
    float tile[FN_SN_TILE] __attribute__((aligned(64)));
    const ptrdiff_t L = FN_VBYTES / 4;
    ptrdiff_t head = (ptrdiff_t)(((FN_VBYTES - (uintptr_t)y % FN_VBYTES) % FN_VBYTES) / 4);
    if ((uintptr_t)y % 4) head = n;   /* not even float-aligned: no streaming */
    if (head > n) head = n;
    for (ptrdiff_t k = 0; k < head; k++) {
        float z = ((x[k] - hi) - lo) * r;
        y[k] = scale * z * (1.0f - kf * z);
    }
    for (ptrdiff_t i = head; i < n; i += FN_SN_TILE) {
        ptrdiff_t m = n - i < FN_SN_TILE ? n - i : FN_SN_TILE;
        const float* xi = x + i;
#pragma omp simd
        for (ptrdiff_t k = 0; k < m; k++) {
            float z = ((xi[k] - hi) - lo) * r;
            tile[k] = scale * z * (1.0f - kf * z);
        }
        float* yi = y + i;
        ptrdiff_t k = 0;
        for (; k + L <= m; k += L) FN_STREAM_float(yi + k, FN_LOAD(fn_vf, tile + k));
        for (; k < m; k++) yi[k] = tile[k];
    }
}

static void fn_sn_forward_d(const double* x, double* y, ptrdiff_t n, double mean, double inv,
                            double scale, double kf) {
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; k++) {
        double z = (x[k] - mean) * inv;
        y[k] = scale * z * (1.0 - kf * z);
    }
}

/* coef = inv^2 / ((n - 1) s); 0 where s is 0 (a constant row: x - mean is 0
 * there, the term's limit) */
static inline double fn_sn_coef(double s, double inv, ptrdiff_t n) {
    return s > 0 ? inv * inv / ((double)(n - 1) * s) : 0.0;
}

static void fn_sn_backward_f(const float* g, const float* x, float* dx, ptrdiff_t n, double mean,
                             double s, double inv, float scale, float kf) {
    float hi = (float)mean, lo = (float)(mean - (double)hi), r = (float)inv;
    double su = 0.0, sux = 0.0;
    for (ptrdiff_t i = 0; i < n; i += FN_SN_TILE) {
        ptrdiff_t m = n - i < FN_SN_TILE ? n - i : FN_SN_TILE;
        const float* gi = g + i;
        const float* xi = x + i;
        float tu = 0.0f, tux = 0.0f;
#pragma omp simd reduction(+:tu, tux)
        for (ptrdiff_t k = 0; k < m; k++) {
            float d = (xi[k] - hi) - lo;
            float u = gi[k] * scale * (1.0f - kf * (d * r));
            tu += u;
            tux += u * d;
        }
        su += tu;
        sux += tux;
    }
    float mu = (float)(su / (double)n);
    float c = (float)(fn_sn_coef(s, inv, n) * sux);
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; k++) {
        float d = (x[k] - hi) - lo;
        float u = g[k] * scale * (1.0f - kf * (d * r));
        dx[k] = r * (u - mu) - d * c;
    }
}

static void fn_sn_backward_d(const double* g, const double* x, double* dx, ptrdiff_t n,
                             double mean, double s, double inv, double scale, double kf) {
    double su = 0.0, sux = 0.0;
#pragma omp simd reduction(+:su, sux)
    for (ptrdiff_t k = 0; k < n; k++) {
        double d = x[k] - mean;
        double u = g[k] * scale * (1.0 - kf * (d * inv));
        su += u;
        sux += u * d;
    }
    double mu = su / (double)n, c = fn_sn_coef(s, inv, n) * sux;
#pragma omp simd
    for (ptrdiff_t k = 0; k < n; k++) {
        double d = x[k] - mean;
        double u = g[k] * scale * (1.0 - kf * (d * inv));
        dx[k] = inv * (u - mu) - d * c;
    }
}

#endif
