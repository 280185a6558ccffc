/* Elementwise kernels: Dynamic Tanh (DyT, Zhu et al. 2025),
 * y = w * tanh(alpha * x) + b, and its backward.  Included by
 * _pointwise_kernels.pxi.  Plain C over one piece of contiguous values whose
 * parameters are either one scalar each (channels-first blocks: `vec` = 0)
 * or one per value (a piece of a channels-last row: `vec` = 1).
 *
 * float32 tanh is a rational approximation (below) that gcc vectorizes as
 * plain arithmetic: libm's tanhf does not vectorize without -ffast-math.
 * float64 uses libm's tanh.
 */
#ifndef FASTNORM_POINTWISE_H
#define FASTNORM_POINTWISE_H
#include <math.h>
#include <stddef.h>
#include "simd.h"

/* tanh(v) = v * P(v^2) / Q(v^2) on |v| <= 9 (|tanh| rounds to 1 beyond),
 * clamped to [-1, 1] (and exactly +-1 beyond |v| = 9.02).  Coefficients fitted here by least squares on the
 * relative error over [0, 9] (scipy, 6000 points): measured over 4e6 float32
 * points in [-12, 12] and 2e4 log-spaced down to 1e-40 against float64
 * tanh, the error is at most 3.3e-7 relative (about 5 units of float32
 * rounding).  NaN stays NaN (the clamps compare false), +-inf gives +-1, 0
 * gives 0 with its sign. */
#define FN_TANH_P0 9.99999994e-01f
#define FN_TANH_P1 1.30898430e-01f
#define FN_TANH_P2 3.11048399e-03f
#define FN_TANH_P3 1.12230112e-05f
#define FN_TANH_P4 (-2.05069147e-08f)
#define FN_TANH_P5 5.41534972e-11f
#define FN_TANH_P6 (-8.84623670e-14f)
#define FN_TANH_Q1 4.64231710e-01f
#define FN_TANH_Q2 2.45211386e-02f
#define FN_TANH_Q3 2.55567473e-04f

static inline float fn_tanh_f(float v) {
    float z = v > 9.0f ? 9.0f : v;
    z = z < -9.0f ? -9.0f : z;
    float t = z * z;
    float p = ((((((FN_TANH_P6 * t + FN_TANH_P5) * t + FN_TANH_P4) * t + FN_TANH_P3) * t
                 + FN_TANH_P2) * t + FN_TANH_P1) * t + FN_TANH_P0);
    float q = ((FN_TANH_Q3 * t + FN_TANH_Q2) * t + FN_TANH_Q1) * t + 1.0f;
    float r = z * p / q;
    /* beyond 9.02, tanh rounds to +-1 in float32 (1 - tanh < 2.98e-8) */
    r = (r > 1.0f || v > 9.02f) ? 1.0f : r;
    return (r < -1.0f || v < -9.02f) ? -1.0f : r;
}

/* The pieces are computed into an aligned stack tile and then stored: with
 * `stream`, by whole streaming vectors where the destination is aligned
 * (memory-bound outputs written without reading their lines first). */
#define FN_TILE 512

static inline void fn_tile_store_f(float* dst, const float* tile, ptrdiff_t n, int stream) {
    ptrdiff_t k = 0;
    if (stream) {
        const ptrdiff_t L = FN_VBYTES / 4;
        while (k < n && ((size_t)(dst + k) % FN_VBYTES) != 0) { dst[k] = tile[k]; k++; }
        for (; k + L <= n; k += L) {
            fn_vf v = FN_LOAD(fn_vfu, tile + k);
            FN_STREAM_float(dst + k, v);
        }
    }
    for (; k < n; k++) dst[k] = tile[k];
}

static void fn_dyt_forward_f(const float* x, float* y, ptrdiff_t n, float a, const float* w,
                             const float* b, int vec, int stream) {
    float tile[FN_TILE] __attribute__((aligned(64)));
    for (ptrdiff_t i = 0; i < n; i += FN_TILE) {
        ptrdiff_t m = n - i < FN_TILE ? n - i : FN_TILE;
        const float* xi = x + i;
        if (vec) {
            const float* wi = w + i;
            const float* bi = b + i;
#pragma omp simd
            for (ptrdiff_t k = 0; k < m; k++) tile[k] = wi[k] * fn_tanh_f(a * xi[k]) + bi[k];
        } else {
            const float ws = w[0], bs = b[0];
#pragma omp simd
            for (ptrdiff_t k = 0; k < m; k++) tile[k] = ws * fn_tanh_f(a * xi[k]) + bs;
        }
        fn_tile_store_f(y + i, tile, m, stream);
    }
}

static void fn_dyt_forward_d(const double* x, double* y, ptrdiff_t n, double a, const double* w,
                             const double* b, int vec) {
    if (vec) {
        for (ptrdiff_t k = 0; k < n; k++) y[k] = w[k] * tanh(a * x[k]) + b[k];
    } else {
        for (ptrdiff_t k = 0; k < n; k++) y[k] = w[0] * tanh(a * x[k]) + b[0];
    }
}

/* Backward over one piece, t = tanh(a x), s = 1 - t^2:
 *   dx = g * w * a * s;   *s_alpha += sum g * w * x * s;
 *   vec: gw[k] += g t, gb[k] += g (per value); else gw[0] += sum g t,
 *   gb[0] += sum g.
 * float32 sums run in float over tiles of FN_TILE values and are added to
 * double once per tile. */
static void fn_dyt_backward_f(const float* g, const float* x, float* dx, ptrdiff_t n, float a,
                              const float* w, int vec, double* s_alpha, double* gw, double* gb,
                              int stream) {
    float tile[FN_TILE] __attribute__((aligned(64)));
    double sa = 0.0;
    for (ptrdiff_t i = 0; i < n; i += FN_TILE) {
        ptrdiff_t m = n - i < FN_TILE ? n - i : FN_TILE;
        const float* gi = g + i;
        const float* xi = x + i;
        float ta = 0.0f;
        if (vec) {
            const float* wi = w + i;
            double* gwi = gw + i;
            double* gbi = gb + i;
#pragma omp simd reduction(+:ta)
            for (ptrdiff_t k = 0; k < m; k++) {
                float t = fn_tanh_f(a * xi[k]);
                float gs = gi[k] * wi[k] * (1.0f - t * t);
                tile[k] = gs * a;
                ta += gs * xi[k];
                gwi[k] += (double)(gi[k] * t);
                gbi[k] += (double)gi[k];
            }
        } else {
            const float ws = w[0];
            float tw = 0.0f, tb = 0.0f;
#pragma omp simd reduction(+:ta, tw, tb)
            for (ptrdiff_t k = 0; k < m; k++) {
                float t = fn_tanh_f(a * xi[k]);
                float gs = gi[k] * (1.0f - t * t);
                tile[k] = gs * (ws * a);
                ta += gs * xi[k];
                tw += gi[k] * t;
                tb += gi[k];
            }
            ta *= ws;
            gw[0] += tw;
            gb[0] += tb;
        }
        sa += ta;
        fn_tile_store_f(dx + i, tile, m, stream);
    }
    *s_alpha += sa;
}

static void fn_dyt_backward_d(const double* g, const double* x, double* dx, ptrdiff_t n, double a,
                              const double* w, int vec, double* s_alpha, double* gw, double* gb) {
    double sa = 0.0;
    for (ptrdiff_t k = 0; k < n; k++) {
        double t = tanh(a * x[k]);
        double wk = vec ? w[k] : w[0];
        double gs = g[k] * wk * (1.0 - t * t);
        dx[k] = gs * a;
        sa += gs * x[k];
        if (vec) {
            gw[k] += g[k] * t;
            gb[k] += g[k];
        } else {
            gw[0] += g[k] * t;
            gb[0] += g[k];
        }
    }
    *s_alpha += sa;
}

#endif
