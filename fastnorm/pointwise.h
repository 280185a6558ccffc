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

/* tanh(v) = v * P(v^2) / Q(v^2) on |v| <= 9.1, clamped to [-1, 1].
 * Coefficients fitted here by least squares on the relative error over
 * [0, 9] (scipy, 6000 points): measured over 4e6 float32 points in
 * [-12, 12] and 2e4 log-spaced down to 1e-40 against float64 tanh, the
 * error is at most 3.3e-7 relative (about 5 units of float32 rounding);
 * from the clamp on it gives +-1, as float32 rounding of tanh does from 9.02.
 * NaN stays NaN, +-inf gives +-1, +-0 gives +-0.
 *
 * The clamps are x86 min / max with the constant first (minps(a, b) is
 * a < b ? a : b, so a NaN in the second operand comes through): gcc
 * if-converts the scalar ternaries into masked code with two divisions,
 * so the vector form is written out (fn_tanh_v); fn_tanh_f is the same
 * arithmetic, lane by lane, for the tails. */
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
#define FN_TANH_CLAMP 9.1f

static inline float fn_tanh_f(float v) {
    const float a = fabsf(v);
    const float z = FN_TANH_CLAMP < a ? FN_TANH_CLAMP : a;
    float t = z * z;
    float p = ((((((FN_TANH_P6 * t + FN_TANH_P5) * t + FN_TANH_P4) * t + FN_TANH_P3) * t
                 + FN_TANH_P2) * t + FN_TANH_P1) * t + FN_TANH_P0);
    float q = ((FN_TANH_Q3 * t + FN_TANH_Q2) * t + FN_TANH_Q1) * t + 1.0f;
    float r = z * p / q;
    r = 1.0f < r ? 1.0f : r;
    r = a >= FN_TANH_CLAMP ? 1.0f : r;
    return copysignf(r, v);
}

#if defined(__AVX512F__)
#define FN_VMIN(a, b) ((fn_vf)_mm512_min_ps((__m512)(a), (__m512)(b)))
#define FN_VMAX(a, b) ((fn_vf)_mm512_max_ps((__m512)(a), (__m512)(b)))
#elif defined(__AVX__)
#define FN_VMIN(a, b) ((fn_vf)_mm256_min_ps((__m256)(a), (__m256)(b)))
#define FN_VMAX(a, b) ((fn_vf)_mm256_max_ps((__m256)(a), (__m256)(b)))
#elif defined(__SSE2__)
#define FN_VMIN(a, b) ((fn_vf)_mm_min_ps((__m128)(a), (__m128)(b)))
#define FN_VMAX(a, b) ((fn_vf)_mm_max_ps((__m128)(a), (__m128)(b)))
#endif

#ifdef FN_VMIN
#define FN_TANH_VECTOR 1
#define FN_VL ((ptrdiff_t)(FN_VBYTES / 4))

static inline fn_vf fn_tanh_v(fn_vf v) {
    /* on |v|, its sign put back at the end (tanh is odd, and so is the
       rational in IEEE arithmetic: the bits are those of evaluating it on
       v): one clamp on each side and one saturation select instead of two */
    const fn_vi mag = (fn_vi){0} + 0x7fffffff;   /* (fn_splat(-0.0f) is +0: 0 + -0) */
    const fn_vf a = (fn_vf)((fn_vi)v & mag);
    fn_vf z = FN_VMIN(fn_splat(FN_TANH_CLAMP), a);
    fn_vf t = z * z;
    fn_vf p = ((((((FN_TANH_P6 * t + FN_TANH_P5) * t + FN_TANH_P4) * t + FN_TANH_P3) * t
                 + FN_TANH_P2) * t + FN_TANH_P1) * t + FN_TANH_P0);
    fn_vf q = ((FN_TANH_Q3 * t + FN_TANH_Q2) * t + FN_TANH_Q1) * t + 1.0f;
    fn_vf r = FN_VMIN(fn_splat(1.0f), z * p / q);  /* a 14-bit reciprocal and a Newton step measured no faster */
    /* 1 from the clamp on (the rational's value there is an ulp short of it) */
    fn_vi sat = (fn_vi)(a >= FN_TANH_CLAMP);
    fn_vi bits = ((fn_vi)r & ~sat) | ((fn_vi)fn_splat(1.0f) & sat);
    return (fn_vf)(bits | ((fn_vi)v & ~mag));
}
#endif

#ifdef FN_TANH_VECTOR
static inline fn_vf fn_dyt_value(fn_vf xv, float a, fn_vf wv, fn_vf bv) {
    return wv * fn_tanh_v(xv * a) + bv;
}

/* the m < FN_VL values from k */
static inline void fn_dyt_forward_n(int st, const void* x, void* y, ptrdiff_t k, ptrdiff_t m, float a,
                                    const float* w, const float* b, int vec) {
    fn_vf wv = vec ? fn_ldn(FN_ST_NATIVE, w, k, m) : fn_splat(w[0]);
    fn_vf bv = vec ? fn_ldn(FN_ST_NATIVE, b, k, m) : fn_splat(b[0]);
    fn_stn(st, y, k, m, fn_dyt_value(fn_ldn(st, x, k, m), a, wv, bv));
}
#endif

/* y = w * tanh(a x) + b over n values of storage `st`, computed in float */
static inline __attribute__((always_inline)) void fn_dyt_forward_v(
        int st, const void* x, void* y, ptrdiff_t n, float a, const float* w, const float* b, int vec,
        int stream) {
#ifdef FN_TANH_VECTOR
    ptrdiff_t k = fn_store_head(st, y, n, &stream);
    if (k) fn_dyt_forward_n(st, x, y, 0, k, a, w, b, vec);
    if (vec) {
        for (; k + FN_VL <= n; k += FN_VL)
            fn_stv(st, y, k, fn_dyt_value(fn_ldv(st, x, k), a, FN_LOAD(fn_vfu, w + k),
                                            FN_LOAD(fn_vfu, b + k)), stream);
    } else {
        const fn_vf wv = fn_splat(w[0]), bv = fn_splat(b[0]);
        for (; k + FN_VL <= n; k += FN_VL)
            fn_stv(st, y, k, fn_dyt_value(fn_ldv(st, x, k), a, wv, bv), stream);
    }
    if (k < n) fn_dyt_forward_n(st, x, y, k, n - k, a, w, b, vec);
#else
    for (ptrdiff_t k = 0; k < n; k++)
        fn_st1(st, y, k, w[vec ? k : 0] * fn_tanh_f(a * fn_ld1(st, x, k)) + b[vec ? k : 0]);
#endif
}

/* Backward over n values, t = tanh(a x), s = 1 - t^2 (pieces of at most
 * PW_PIECE values: the float sums stay short):
 *   dx = g * w * a * s;   *s_alpha += sum g * w * x * s;
 *   vec: gw[k] += g t, gb[k] += g (per value, in double); else gw[0] +=
 *   sum g t, gb[0] += sum g.
 * The float sums run in vector lanes over tiles of FN_TILE values and are
 * added to double once per tile. */
#define FN_TILE 512

#ifndef FN_TANH_VECTOR
static void fn_dyt_backward_v(int st, const void* g, const void* x, void* dx, ptrdiff_t n, float a,
                              const float* w, int vec, double* s_alpha, double* gw, double* gb,
                              int stream) {
    double sa = 0.0, sw = 0.0, sb = 0.0;
    (void)stream;
    for (ptrdiff_t k = 0; k < n; k++) {
        float gk = fn_ld1(st, g, k), xk = fn_ld1(st, x, k);
        float t = fn_tanh_f(a * xk);
        float gs = gk * w[vec ? k : 0] * (1.0f - t * t);
        fn_st1(st, dx, k, gs * a);
        sa += (double)(gs * xk);
        if (vec) {
            gw[k] += (double)(gk * t);
            gb[k] += (double)gk;
        } else {
            sw += (double)(gk * t);
            sb += (double)gk;
        }
    }
    *s_alpha += sa;
    if (!vec) {
        gw[0] += sw;
        gb[0] += sb;
    }
}
#else
/* one vector of the backward: dx's values returned, the sums accumulated */
static inline fn_vf fn_dyt_grad(fn_vf gv, fn_vf xv, float a, fn_vf wv, fn_vf* va, fn_vf* gt) {
    fn_vf t = fn_tanh_v(xv * a);
    fn_vf gs = gv * wv * (1.0f - t * t);
    *va += gs * xv;
    *gt = gv * t;
    return gs * a;
}

/* the m < FN_VL values from k, into the double sums */
static inline void fn_dyt_backward_n(int st, const void* g, const void* x, void* dx, ptrdiff_t k,
                                     ptrdiff_t m, float a, const float* w, int vec, double* sa,
                                     double* gw, double* gb, double* sw, double* sb) {
    fn_vf va = fn_splat(0.0f), gt;
    fn_vf gv = fn_ldn(st, g, k, m);   /* lanes past m: g = 0, nothing summed */
    fn_vf wv = vec ? fn_ldn(FN_ST_NATIVE, w, k, m) : fn_splat(w[0]);
    fn_stn(st, dx, k, m, fn_dyt_grad(gv, fn_ldn(st, x, k, m), a, wv, &va, &gt));
    *sa += fn_lane_sum(va);
    if (vec) {
        float t[FN_VBYTES / 4] __attribute__((aligned(64)));
        float gg[FN_VBYTES / 4] __attribute__((aligned(64)));
        *(fn_vf*)t = gt;
        *(fn_vf*)gg = gv;
        for (ptrdiff_t j = 0; j < m; j++) {
            gw[k + j] += (double)t[j];
            gb[k + j] += (double)gg[j];
        }
    } else {
        *sw += fn_lane_sum(gt);
        *sb += fn_lane_sum(gv);
    }
}

static inline __attribute__((always_inline)) void fn_dyt_backward_v(
        int st, const void* g, const void* x, void* dx, ptrdiff_t n, float a, const float* w, int vec,
        double* s_alpha, double* gw, double* gb, int stream) {
    double sa = 0.0, sw = 0.0, sb = 0.0;
    float gt[FN_TILE] __attribute__((aligned(64)));
    float gg[FN_TILE] __attribute__((aligned(64)));
    const fn_vf ws = fn_splat(w[0]);
    ptrdiff_t k = fn_store_head(st, dx, n, &stream);
    if (k) fn_dyt_backward_n(st, g, x, dx, 0, k, a, w, vec, &sa, gw, gb, &sw, &sb);
    while (n - k >= FN_VL) {
        ptrdiff_t m = (n - k) / FN_VL * FN_VL;
        m = m < FN_TILE ? m : FN_TILE;
        fn_vf va = fn_splat(0.0f), vw = va, vb = va, t;
        for (ptrdiff_t j = 0; j < m; j += FN_VL) {
            fn_vf gv = fn_ldv(st, g, k + j);
            fn_vf wv = vec ? (fn_vf)FN_LOAD(fn_vfu, w + k + j) : ws;
            fn_stv(st, dx, k + j, fn_dyt_grad(gv, fn_ldv(st, x, k + j), a, wv, &va, &t), stream);
            if (vec) {
                *(fn_vf*)(gt + j) = t;
                *(fn_vf*)(gg + j) = gv;
            } else {
                vw += t;
                vb += gv;
            }
        }
        if (vec) {  /* the per-channel sums, in double */
            double* gwk = gw + k;
            double* gbk = gb + k;
            for (ptrdiff_t j = 0; j < m; j++) {
                gwk[j] += (double)gt[j];
                gbk[j] += (double)gg[j];
            }
        } else {
            sw += fn_lane_sum(vw);
            sb += fn_lane_sum(vb);
        }
        sa += fn_lane_sum(va);
        k += m;
    }
    if (k < n) fn_dyt_backward_n(st, g, x, dx, k, n - k, a, w, vec, &sa, gw, gb, &sw, &sb);
    *s_alpha += sa;
    if (!vec) {
        gw[0] += sw;
        gb[0] += sb;
    }
}
#endif

/* one copy per storage code (simd.h's FN_ST_DISPATCH) */
static void fn_dyt_forward_s(int st, const void* x, void* y, ptrdiff_t n, float a, const float* w,
                             const float* b, int vec, int stream) {
    FN_ST_DISPATCH(fn_dyt_forward_v(st_, x, y, n, a, w, b, vec, stream));
}

static void fn_dyt_backward_s(int st, const void* g, const void* x, void* dx, ptrdiff_t n, float a,
                              const float* w, int vec, double* s_alpha, double* gw, double* gb,
                              int stream) {
    FN_ST_DISPATCH(fn_dyt_backward_v(st_, g, x, dx, n, a, w, vec, s_alpha, gw, gb, stream));
}

static void fn_dyt_forward_d(const double* x, double* y, ptrdiff_t n, double a, const double* w,
                             const double* b, int vec) {
    if (vec) {
        for (ptrdiff_t k = 0; k < n; k++) y[k] = w[k] * tanh(a * x[k]) + b[k];
    } else {
        for (ptrdiff_t k = 0; k < n; k++) y[k] = w[0] * tanh(a * x[k]) + b[0];
    }
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

/* ------------------------------------------------------------------ */
/* Per-statistic elementwise passes, the pieces the mixed-statistic ops
 * (Switchable Normalization, ...) are built from.  Over the flat (P, C, S)
 * layout, value (p, c, s) belongs to statistic k = (p / R) * C + c: R = 1
 * for channels-first (N, C, S) data (a statistic per (sample, channel)),
 * R = the spatial size for channels-last rows (P = N * spatial, S = 1).
 * Each piece has one k (S > 1) or a run of consecutive k (S = 1).
 *
 *   fn_stat_sums:  sg[k] += sum g,  sgx[k] += sum g * (x - hi[k])
 *   fn_stat_apply: dx = alpha[k] * g + beta[k] * (x - hi[k]) + gamma[k]
 *     (alpha NULL: the affine map beta[k] * (x - hi[k]) + gamma[k], g unread)
 * (g may be x itself: an affine map of x per statistic). */

static void fn_stat_sums_s(int st, const void* g, const void* x, ptrdiff_t n, const float* hi, int vec,
                           double* sg, double* sgx) {
    ptrdiff_t k = 0;
    if (!vec) {
        const float h = hi[0];
        float tg = 0.0f, tx = 0.0f;
#ifdef FN_TANH_VECTOR
        fn_vf ag = fn_splat(0.0f), ax = ag;
        for (; k + FN_VL <= n; k += FN_VL) {
            fn_vf gv = fn_ldv(st, g, k);
            ag += gv;
            ax += gv * (fn_ldv(st, x, k) - h);
        }
        tg = fn_lane_sum(ag);
        tx = fn_lane_sum(ax);
#endif
        for (; k < n; k++) {
            float gk = fn_ld1(st, g, k);
            tg += gk;
            tx += gk * (fn_ld1(st, x, k) - h);
        }
        /* float32 sums out of range (simd.h's fn_sums_in_range; for g = x,
           a sum of squares): the piece again in double */
        if (!(fabsf(tg) < INFINITY && fabsf(tx) < INFINITY) || (g == x && !fn_sums_in_range(tx, n))) {
            double dg = 0.0, dx = 0.0;
            for (k = 0; k < n; k++) {
                double gk = fn_ld1(st, g, k);
                dg += gk;
                dx += gk * ((double)fn_ld1(st, x, k) - (double)h);
            }
            sg[0] += dg;
            sgx[0] += dx;
            return;
        }
        sg[0] += tg;
        sgx[0] += tx;
        return;
    }
    for (; k < n; k++) {
        double gk = fn_ld1(st, g, k);
        sg[k] += gk;
        sgx[k] += gk * ((double)fn_ld1(st, x, k) - (double)hi[k]);
    }
}

/* al == NULL: an affine map of x alone, dx = be[k] * (x - hi[k]) + ga[k]; g is
 * not read (a zero alpha times an infinite g would be NaN, not 0). */
#ifdef FN_TANH_VECTOR
/* `affine` is a constant wherever this inlines: with it a run-time value,
   gcc shares the product be * (x - hi) between the two forms and then does
   not contract it into a multiply-add (measured on the AVX2 build: the
   tails, not the body, rounded the product), and a value's result would
   depend on where it falls */
static inline __attribute__((always_inline)) fn_vf fn_stat_value(fn_vf gv, fn_vf xv, fn_vf av, fn_vf bv,
                                                                fn_vf hv, fn_vf cv, const int affine) {
    return affine ? bv * (xv - hv) + cv : av * gv + bv * (xv - hv) + cv;
}

/* the m < FN_VL values from k, through the vector code (simd.h's fn_ldn) */
static inline __attribute__((always_inline)) void fn_stat_apply_n(
        int st, const void* g, const void* x, void* dx, ptrdiff_t k, ptrdiff_t m, const float* hi,
        const float* al, const float* be, const float* ga, int vec, const int affine) {
#define FN_COEF(p) (vec ? fn_ldn(FN_ST_NATIVE, p, k, m) : fn_splat((p)[0]))
    const fn_vf zero = fn_splat(0.0f);
    fn_stn(st, dx, k, m, fn_stat_value(affine ? zero : fn_ldn(st, g, k, m), fn_ldn(st, x, k, m),
                                       affine ? zero : FN_COEF(al), FN_COEF(be), FN_COEF(hi), FN_COEF(ga),
                                       affine));
#undef FN_COEF
}

static inline __attribute__((always_inline)) void fn_stat_apply_a(
        int st, const void* g, const void* x, void* dx, ptrdiff_t n, const float* hi, const float* al,
        const float* be, const float* ga, int vec, int stream, const int affine) {
    const fn_vf zero = fn_splat(0.0f);
    ptrdiff_t k = fn_store_head(st, dx, n, &stream);
    if (k) fn_stat_apply_n(st, g, x, dx, 0, k, hi, al, be, ga, vec, affine);
    if (vec) {
        for (; k + FN_VL <= n; k += FN_VL)
            fn_stv(st, dx, k, fn_stat_value(affine ? zero : fn_ldv(st, g, k), fn_ldv(st, x, k),
                                            affine ? zero : (fn_vf)FN_LOAD(fn_vfu, al + k), FN_LOAD(fn_vfu, be + k),
                                            FN_LOAD(fn_vfu, hi + k), FN_LOAD(fn_vfu, ga + k), affine), stream);
    } else {
        const fn_vf a0 = affine ? zero : fn_splat(al[0]);
        const fn_vf b0 = fn_splat(be[0]), h0 = fn_splat(hi[0]), g0 = fn_splat(ga[0]);
        for (; k + FN_VL <= n; k += FN_VL)
            fn_stv(st, dx, k, fn_stat_value(affine ? zero : fn_ldv(st, g, k), fn_ldv(st, x, k), a0, b0, h0, g0,
                                            affine), stream);
    }
    if (k < n) fn_stat_apply_n(st, g, x, dx, k, n - k, hi, al, be, ga, vec, affine);
}
#endif

static inline __attribute__((always_inline)) void fn_stat_apply_v(
        int st, const void* g, const void* x, void* dx, ptrdiff_t n, const float* hi, const float* al,
        const float* be, const float* ga, int vec, int stream) {
#ifdef FN_TANH_VECTOR
    if (al == NULL) fn_stat_apply_a(st, g, x, dx, n, hi, al, be, ga, vec, stream, 1);
    else fn_stat_apply_a(st, g, x, dx, n, hi, al, be, ga, vec, stream, 0);
#else
    for (ptrdiff_t k = 0; k < n; k++) {
        ptrdiff_t c = vec ? k : 0;
        float t = be[c] * (fn_ld1(st, x, k) - hi[c]);
        fn_st1(st, dx, k, al == NULL ? t + ga[c] : al[c] * fn_ld1(st, g, k) + t + ga[c]);
    }
#endif
}

/* one copy per storage code (simd.h's FN_ST_DISPATCH) */
static void fn_stat_apply_s(int st, const void* g, const void* x, void* dx, ptrdiff_t n, const float* hi,
                            const float* al, const float* be, const float* ga, int vec, int stream) {
    FN_ST_DISPATCH(fn_stat_apply_v(st_, g, x, dx, n, hi, al, be, ga, vec, stream));
}

static void fn_stat_sums_d(const double* g, const double* x, ptrdiff_t n, const double* hi, int vec,
                           double* sg, double* sgx) {
    for (ptrdiff_t k = 0; k < n; k++) {
        ptrdiff_t c = vec ? k : 0;
        sg[c] += g[k];
        sgx[c] += g[k] * (x[k] - hi[c]);
    }
}

static void fn_stat_apply_d(const double* g, const double* x, double* dx, ptrdiff_t n, const double* hi,
                            const double* al, const double* be, const double* ga, int vec) {
    for (ptrdiff_t k = 0; k < n; k++) {
        ptrdiff_t c = vec ? k : 0;
        double t = be[c] * (x[k] - hi[c]);
        dx[k] = al ? al[c] * g[k] + t + ga[c] : t + ga[c];
    }
}


#endif
