/* LayerNorm / RMSNorm forward rows over 16-bit storage (float16, bfloat16),
 * widened to float32 in registers on load and narrowed on store.
 *
 * The same algorithm as the float32 row kernels of _kernels.pxi, written
 * once here as a macro over the storage type's vector load / store:
 *   - moments of d = x - shift (shift = the row's first value) in float32
 *     vector accumulators over blocks of FN_BLOCK values, each block's lanes
 *     flushed into FN_LANES double lanes, summed once per row; a second pass
 *     about the mean when the first element lies far out (FN_CANCELLATION);
 *   - y = ((x - hi) * rstd + off) * w + b with the mean split as hi + off.
 * A row is read twice (moments, normalize) and written once, like the
 * float32 kernels, but in half the bytes: no scratch copy of the row.
 *
 * Included by _kernels.pxi after simd.h.
 */
#ifndef FASTNORM_ROWS16_H
#define FASTNORM_ROWS16_H

#include <math.h>
#include "simd.h"

#define FN_W ((Py_ssize_t)(FN_VBYTES / 4))   /* floats per vector */
#define FN_LANES 32                            /* = LANES in _kernels.pxi */
#define FN_NV (FN_LANES / FN_W)                /* accumulator vectors */
#define FN_BLOCK 256                           /* = BLOCK */
#define FN_CANCELLATION 16                     /* = CANCELLATION_LIMIT */

typedef uint16_t fn_vh __attribute__((vector_size(FN_VBYTES / 2), aligned(2), may_alias));
typedef uint32_t fn_vu __attribute__((vector_size(FN_VBYTES)));
typedef int32_t fn_vi __attribute__((vector_size(FN_VBYTES)));

/* ---- vector loads of FN_W values, and packing FN_W floats to 16 bits ---- */

static inline fn_vf fn_vload_bf16(const uint16_t* p) {
#if defined(__AVX512F__)
    return (fn_vf)_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i*)p)), 16);
#else
    fn_vu u = __builtin_convertvector(*(const fn_vh*)p, fn_vu) << 16;
    return (fn_vf)u;
#endif
}

static inline fn_vh fn_pack_bf16(fn_vf v) {
#if defined(__AVX512F__)
    const __m512i x = _mm512_castps_si512((__m512)v);
    const __m512i hi = _mm512_srli_epi32(x, 16);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, _mm512_set1_epi32(0x7fff)),
                                                   _mm512_and_si512(hi, _mm512_set1_epi32(1))), 16);
    const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(x, _mm512_set1_epi32(0x7fffffff)),
                                                  _mm512_set1_epi32(0x7f800000));
    r = _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    return (fn_vh)_mm512_cvtepi32_epi16(r);
#else
    fn_vu x = (fn_vu)v;
    fn_vu rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    fn_vu nan = (x >> 16) | 0x40u;
    fn_vu is_nan = (fn_vu)((x & 0x7fffffffu) > 0x7f800000u);   /* all ones where NaN */
    fn_vu r = (nan & is_nan) | (rounded & ~is_nan);
#if defined(__AVX2__)
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32((__m256i)r, (__m256i)r), 0xD8);
    return (fn_vh)_mm256_castsi256_si128(packed);
#else
    return __builtin_convertvector(r, fn_vh);
#endif
#endif
}

static inline fn_vf fn_vload_f16(const uint16_t* p) {
#if defined(__AVX512F__)
    return (fn_vf)_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)p));
#elif defined(__F16C__)
    return (fn_vf)_mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)p));
#else
    float t[FN_VBYTES / 4];
    for (int j = 0; j < FN_W; j++) t[j] = fn_half_to_float(p[j]);
    return FN_LOAD(fn_vfu, t);
#endif
}

static inline fn_vh fn_pack_f16(fn_vf v) {
#if defined(__AVX512F__)
    return (fn_vh)_mm512_cvtps_ph((__m512)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#elif defined(__F16C__)
    return (fn_vh)_mm256_cvtps_ph((__m256)v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
#else
    float t[FN_VBYTES / 4];
    uint16_t h[FN_VBYTES / 4];
    *(fn_vfu*)t = v;
    for (int j = 0; j < FN_W; j++) h[j] = fn_float_to_half(t[j]);
    return *(fn_vh*)h;
#endif
}

/* store FN_W 16-bit values; stream: a non-temporal store (p aligned to
   FN_VBYTES / 2), which spares a large output's read-for-ownership */
static inline void fn_put_h(uint16_t* p, fn_vh h, int stream) {
#if defined(__AVX512F__)
    if (stream) { _mm256_stream_si256((__m256i*)p, (__m256i)h); return; }
#elif defined(__AVX__)
    if (stream) { _mm_stream_si128((__m128i*)p, (__m128i)h); return; }
#elif defined(__SSE2__) && defined(__x86_64__)
    if (stream) { long long q; __builtin_memcpy(&q, &h, 8); _mm_stream_si64((long long*)p, q); return; }
#endif
    *(fn_vh*)p = h;
}

/* values stored one at a time before y + head is aligned for streaming stores */
static inline Py_ssize_t fn_stream_head(const uint16_t* y, Py_ssize_t n, int stream) {
    if (!stream) return 0;
    Py_ssize_t head = (Py_ssize_t)((((uintptr_t)y + FN_VBYTES / 2 - 1) & ~(uintptr_t)(FN_VBYTES / 2 - 1))
                                   - (uintptr_t)y) / 2;
    return head < n ? head : n;
}

static inline fn_vf fn_vsplat(float a) { return (fn_vf){0} + a; }

static inline double fn_lanes_total(double* lanes) {
    for (int width = FN_LANES / 2; width > 0; width /= 2)
        for (int j = 0; j < width; j++)
            lanes[j] += lanes[j + width];
    return lanes[0];
}

/* ---- the row kernels, once per storage type ---- */
#define FN_DEFINE_ROWS16(S, LOAD1, STORE1, VLOAD, PACK)                                     \
/* sums of d^2 and d, d = x - shift */                                                         \
static void fn_moments_##S(const uint16_t* x, Py_ssize_t n, float shift,                      \
                           double* sum_sq, double* sum_dev) {                                  \
    double lq[FN_LANES] = {0}, ls[FN_LANES] = {0};                                            \
    double tq = 0, ts = 0;                                                                     \
    const fn_vf vs = fn_vsplat(shift);                                                         \
    for (Py_ssize_t i = 0; i < n; i += FN_BLOCK) {                                             \
        Py_ssize_t end = i + FN_BLOCK < n ? i + FN_BLOCK : n;                                  \
        Py_ssize_t vend = i + ((end - i) / FN_LANES) * FN_LANES, k;                            \
        fn_vf aq[FN_NV], as[FN_NV];                                                            \
        for (int v = 0; v < FN_NV; v++) { aq[v] = fn_vsplat(0); as[v] = fn_vsplat(0); }        \
        for (k = i; k < vend; k += FN_LANES)                                                   \
            for (int v = 0; v < FN_NV; v++) {                                                  \
                fn_vf d = VLOAD(x + k + v * FN_W) - vs;                                        \
                aq[v] += d * d;                                                                \
                as[v] += d;                                                                    \
            }                                                                                  \
        float rq = 0, rs = 0;                                                                  \
        for (k = vend; k < end; k++) { float d = LOAD1(x[k]) - shift; rq += d * d; rs += d; }  \
        for (int v = 0; v < FN_NV; v++)                                                        \
            for (int j = 0; j < FN_W; j++) {                                                   \
                lq[v * FN_W + j] += aq[v][j];                                                  \
                ls[v * FN_W + j] += as[v][j];                                                  \
            }                                                                                  \
        tq += rq;                                                                              \
        ts += rs;                                                                              \
    }                                                                                          \
    *sum_sq = tq + fn_lanes_total(lq);                                                         \
    *sum_dev = ts + fn_lanes_total(ls);                                                        \
}                                                                                              \
                                                                                               \
static double fn_sum_squares_##S(const uint16_t* x, Py_ssize_t n) {                           \
    double sq, sd;                                                                             \
    fn_moments_##S(x, n, 0.0f, &sq, &sd);                                                      \
    return sq;                                                                                 \
}                                                                                              \
                                                                                               \
/* LayerNorm of one row; w, b: float32 or NULL */                                              \
static void fn_ln_row_##S(const uint16_t* x, uint16_t* y, Py_ssize_t n, const float* w,       \
                          const float* b, double eps, double* mean_out, double* rstd_out,      \
                          int stream) {                                                        \
    float shift = LOAD1(x[0]);                                                                 \
    double sq, sd, mean, m2, rstd;                                                             \
    fn_moments_##S(x, n, shift, &sq, &sd);                                                     \
    if (!((sq / n - (sd / n) * (sd / n)) * FN_CANCELLATION >= sq / n)) {                       \
        shift = (float)((double)shift + sd / n);                                               \
        fn_moments_##S(x, n, shift, &sq, &sd);                                                 \
    }                                                                                          \
    mean = (double)shift + sd / n;                                                             \
    m2 = sq - sd * sd / n;                                                                     \
    if (m2 < 0) m2 = 0;                                                                        \
    rstd = 1.0 / sqrt(m2 / n + eps);                                                           \
    const float hi = (float)mean, r = (float)rstd, off = (float)(-(mean - (double)hi) * rstd); \
    const fn_vf vh = fn_vsplat(hi), vr = fn_vsplat(r), vo = fn_vsplat(off);                   \
    Py_ssize_t k = 0, head = fn_stream_head(y, n, stream);                                     \
    for (; k < head; k++)                                                                      \
        y[k] = STORE1(((LOAD1(x[k]) - hi) * r + off) * (w ? w[k] : 1.0f) + (b ? b[k] : 0.0f)); \
    for (; k + FN_W <= n; k += FN_W) {                                                         \
        fn_vf t = (VLOAD(x + k) - vh) * vr + vo;                                               \
        if (w) t *= FN_LOAD(fn_vfu, w + k);                                                    \
        if (b) t += FN_LOAD(fn_vfu, b + k);                                                    \
        fn_put_h(y + k, PACK(t), stream);                                                      \
    }                                                                                          \
    for (; k < n; k++)                                                                         \
        y[k] = STORE1(((LOAD1(x[k]) - hi) * r + off) * (w ? w[k] : 1.0f) + (b ? b[k] : 0.0f)); \
    *mean_out = mean;                                                                          \
    *rstd_out = rstd;                                                                          \
}                                                                                              \
                                                                                               \
/* RMSNorm of one row; w: float32 or NULL; returns rstd */                                    \
static double fn_rms_row_##S(const uint16_t* x, uint16_t* y, Py_ssize_t n, const float* w,    \
                             double eps, int stream) {                                          \
    const double rstd = 1.0 / sqrt(fn_sum_squares_##S(x, n) / n + eps);                       \
    const float r = (float)rstd;                                                               \
    const fn_vf vr = fn_vsplat(r);                                                             \
    Py_ssize_t k = 0, head = fn_stream_head(y, n, stream);                                     \
    for (; k < head; k++)                                                                      \
        y[k] = STORE1(LOAD1(x[k]) * r * (w ? w[k] : 1.0f));                                    \
    for (; k + FN_W <= n; k += FN_W) {                                                         \
        fn_vf t = VLOAD(x + k) * vr;                                                           \
        if (w) t *= FN_LOAD(fn_vfu, w + k);                                                    \
        fn_put_h(y + k, PACK(t), stream);                                                      \
    }                                                                                          \
    for (; k < n; k++)                                                                         \
        y[k] = STORE1(LOAD1(x[k]) * r * (w ? w[k] : 1.0f));                                    \
    return rstd;                                                                               \
}

FN_DEFINE_ROWS16(bf16, fn_bf16_to_float, fn_float_to_bf16, fn_vload_bf16, fn_pack_bf16)
FN_DEFINE_ROWS16(f16, fn_half_to_float, fn_float_to_half, fn_vload_f16, fn_pack_f16)

/* dispatch on the storage code (FN_ST_F16 / FN_ST_BF16) */
static inline void fn_ln_row16(int storage, const void* x, void* y, Py_ssize_t n, const float* w,
                               const float* b, double eps, double* mean, double* rstd, int stream) {
    if (storage == FN_ST_BF16) fn_ln_row_bf16((const uint16_t*)x, (uint16_t*)y, n, w, b, eps, mean, rstd, stream);
    else fn_ln_row_f16((const uint16_t*)x, (uint16_t*)y, n, w, b, eps, mean, rstd, stream);
}

static inline double fn_rms_row16(int storage, const void* x, void* y, Py_ssize_t n, const float* w,
                                  double eps, int stream) {
    if (storage == FN_ST_BF16) return fn_rms_row_bf16((const uint16_t*)x, (uint16_t*)y, n, w, eps, stream);
    return fn_rms_row_f16((const uint16_t*)x, (uint16_t*)y, n, w, eps, stream);
}

#endif /* FASTNORM_ROWS16_H */
