/* internal.h -- helpers shared by the kernel files; not part of the ABI. */
#ifndef PYLLM_INTERNAL_H
#define PYLLM_INTERNAL_H
#include "pyllm.h"
#include <math.h>

#define PYLLM_PRAGMA(x) _Pragma(#x)

#ifdef _OPENMP
#include <omp.h>
/* Split a loop over independent outputs across pyllm's thread count. */
#define PYLLM_PARALLEL_FOR _Pragma("omp parallel for num_threads(pyllm_nthreads()) schedule(static)")
/* The same, only when cond holds: a loop of one task (or too little work to pay for waking the
   other threads, as in the one-token decode step) runs on the calling thread alone. */
#define PYLLM_PARALLEL_FOR_IF(cond) \
    PYLLM_PRAGMA(omp parallel for num_threads(pyllm_nthreads()) if(cond) schedule(static))
#define PYLLM_PARALLEL_FOR_DYNAMIC \
    _Pragma("omp parallel for num_threads(pyllm_nthreads()) schedule(dynamic, 1)")
#else
#define PYLLM_PARALLEL_FOR
#define PYLLM_PARALLEL_FOR_IF(cond)
#define PYLLM_PARALLEL_FOR_DYNAMIC
#endif

/* Flat loops over n elements are cut into blocks of this many so that the OpenMP loop index is
   a plain int (MSVC's OpenMP 2.0) while offsets stay size_t. */
#define PYLLM_FLAT_BLOCK 16384

static inline int pyllm_nblocks(int64_t n) {
    return (int)((n + PYLLM_FLAT_BLOCK - 1) / PYLLM_FLAT_BLOCK);
}

/* a . b over n floats with 8 partial sums acc[0..7] (acc[u] takes the products d = u mod 8),
   combined as ((acc0 + acc1) + (acc2 + acc3)) + ((acc4 + acc5) + (acc6 + acc7)), then the tail:
   one fixed order, so the same bits on every call, thread count and machine. With SSE2 (every
   x86-64) the partial sums live in two 4-lane registers, the same arithmetic in the same order. */
#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#include <emmintrin.h>
static inline float pyllm_dot(const float *a, const float *b, int n) {
    __m128 lo = _mm_setzero_ps(), hi = _mm_setzero_ps();
    int d = 0;
    for (; d + 8 <= n; d += 8) {
        lo = _mm_add_ps(lo, _mm_mul_ps(_mm_loadu_ps(a + d), _mm_loadu_ps(b + d)));
        hi = _mm_add_ps(hi, _mm_mul_ps(_mm_loadu_ps(a + d + 4), _mm_loadu_ps(b + d + 4)));
    }
    lo = _mm_add_ps(lo, _mm_shuffle_ps(lo, lo, _MM_SHUFFLE(2, 3, 0, 1))); /* acc0+acc1, acc2+acc3 */
    hi = _mm_add_ps(hi, _mm_shuffle_ps(hi, hi, _MM_SHUFFLE(2, 3, 0, 1)));
    lo = _mm_add_ss(lo, _mm_movehl_ps(lo, lo));
    hi = _mm_add_ss(hi, _mm_movehl_ps(hi, hi));
    float s = _mm_cvtss_f32(_mm_add_ss(lo, hi));
    for (; d < n; d++) s += a[d] * b[d];
    return s;
}
#else
static inline float pyllm_dot(const float *a, const float *b, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int d = 0;
    for (; d + 8 <= n; d += 8)
        for (int u = 0; u < 8; u++) acc[u] += a[d + u] * b[d + u];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; d < n; d++) s += a[d] * b[d];
    return s;
}
#endif

/* x86-64 with GCC >= 6 or Clang: AVX2 + FMA functions can be compiled (target attributes) and are
   chosen at run time when pyllm_simd_level() is 1 */
#if defined(__x86_64__) && (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 6))
#define PYLLM_X86_AVX2 1
#include <immintrin.h>

/* in-register 8 x 8 transpose: r[i] holds row i on entry, column i on return */
__attribute__((target("avx2,fma"))) static inline void pyllm_transpose8(__m256 r[8]) {
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(s0, s4, 0x20);
    r[1] = _mm256_permute2f128_ps(s1, s5, 0x20);
    r[2] = _mm256_permute2f128_ps(s2, s6, 0x20);
    r[3] = _mm256_permute2f128_ps(s3, s7, 0x20);
    r[4] = _mm256_permute2f128_ps(s0, s4, 0x31);
    r[5] = _mm256_permute2f128_ps(s1, s5, 0x31);
    r[6] = _mm256_permute2f128_ps(s2, s6, 0x31);
    r[7] = _mm256_permute2f128_ps(s3, s7, 0x31);
}
#endif

#endif
