/* vecmath.h -- vectorisable expf / tanhf, and the AVX2+FMA dispatch used by the element-wise
 * kernels (softmax.c, gelu.c, layernorm.c, adamw.c, residual.c, embedding.c). Internal header.
 *
 * The libm calls expf() and tanhf() are opaque to the vectoriser, so a loop calling them runs one
 * element at a time. vm_expf and vm_tanhf below are branch-free (range reduction + polynomial,
 * selects instead of branches, integer bit tricks for the exponent), so a plain C loop that calls
 * them is vectorised by GCC/Clang -O3: 4 lanes with the baseline SSE2 of x86-64, 8 lanes in a
 * function compiled for AVX2 (see VM_TARGET_AVX2).
 *
 *   vm_expf:  Cephes' degree-7 polynomial for 2 exp(r), r = x - n ln2, |r| <= ln2/2, scaled by
 *             2^(n-1) through the exponent bits. Within about 1 ulp of exp; exp(x > ln(FLT_MAX))
 *             = +inf; results below 2^-125 (x < -86.64, -inf included) are flushed to +0
 *             (absolute error < 2.4e-38); NaN propagates. vm_expf_nonpos skips the overflow
 *             check, for arguments that cannot exceed ln(FLT_MAX) (x - max, -2|u|).
 *   vm_tanhf: odd polynomial for |x| < 0.625 (Cephes), 1 - 2 / (exp(2|x|) + 1) with the sign of x
 *             above; within ~1.5 ulp; tanh(+-inf) = +-1; tanh(-0) = -0; NaN propagates.
 *
 * Multi-versioning: a kernel's work is written once as a VM_INLINE (always inlined) function of
 * plain C loops and wrapped twice: a portable wrapper and one marked VM_TARGET_AVX2, so the same
 * loops are vectorised for 8 lanes (and use FMA where the compiler contracts). The kernel picks
 * the wrapper with vm_use_avx2() -- pyllm_simd_level() of the ABI, which is 1 only on x86-64 CPUs
 * that report AVX2 and FMA, and which pyllm_set_simd_level(0) forces back to the portable path.
 * The wrappers are called inside the OpenMP loop (a target attribute on the function that holds
 * the pragma would not reach the outlined region). Thread count never changes which wrapper runs,
 * so results stay bit-identical for any number of threads. Both paths sum in the same order (the
 * lanes below); they may differ in the last bit where the AVX2 build contracts a*b+c to an FMA.
 */
#ifndef PYLLM_VECMATH_H
#define PYLLM_VECMATH_H
#include "internal.h"
#include <stdint.h>

#if defined(__GNUC__) || defined(__clang__)
#define VM_INLINE static inline __attribute__((always_inline))
#else
#define VM_INLINE static inline
#endif

/* internal.h's condition for compiling AVX2 functions, under which pyllm_simd_level() can be 1 */
#ifdef PYLLM_X86_AVX2
#define VM_HAVE_AVX2 1
#define VM_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define VM_HAVE_AVX2 0
#endif

#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#define VM_HAVE_SSE_SQRT 1
#include <emmintrin.h>
#else
#define VM_HAVE_SSE_SQRT 0
#endif

/* 1 when the AVX2 wrappers may run (decided once per call, outside any parallel region): the
   ABI's SIMD level (pyllm_set_simd_level(0) forces the portable path) and the CPU's own flags */
static inline int vm_use_avx2(void) {
#if VM_HAVE_AVX2
    return pyllm_simd_level() >= 1 && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

/* Row-wise kernels hand each task a block of rows of about VM_TASK_ELEMS elements (1 to 64
   rows), to spread the per-call cost. Rows are independent, so results never depend on it. */
#define VM_TASK_ELEMS 8192
static inline int vm_rows_per_task(int rowlen) {
    int rb = VM_TASK_ELEMS / (rowlen > 1 ? rowlen : 1);
    return rb < 1 ? 1 : rb > 64 ? 64 : rb;
}

/* bit casts (union punning is defined in C99 TC3 and vectorises) */
VM_INLINE uint32_t vm_f2u(float f) {
    union { float f; uint32_t u; } c;
    c.f = f;
    return c.u;
}
VM_INLINE float vm_u2f(uint32_t u) {
    union { float f; uint32_t u; } c;
    c.u = u;
    return c.f;
}

/* c ? a : b, as bit masks: with the default -ftrapping-math GCC will not if-convert a ?: whose
   arm computes floating-point values (it would have to speculate them), so the loop would stay
   scalar; the integer form vectorises to a compare and and/andnot/or */
VM_INLINE float vm_select(int c, float a, float b) {
    uint32_t m = 0u - (uint32_t)c;
    return vm_u2f((vm_f2u(a) & m) | (vm_f2u(b) & ~m));
}

#define VM_EXP_HI 88.72283935546875f   /* ln(FLT_MAX) rounded down: above, exp overflows */
#define VM_EXP_LO (-86.64339447021484f) /* ln(2^-125): below, results are flushed to 0 */

/* exp(x) for x <= VM_EXP_HI, which is all that softmax (x - max <= 0) and GELU (-2|u|) need: no
   overflow handling. Below VM_EXP_LO the result is +0 (-inf included); NaN propagates. */
VM_INLINE float vm_expf_nonpos(float x) {
    /* clamping keeps every intermediate normal (denormal arithmetic is very slow) */
    int lo = x < VM_EXP_LO;
    float xc = vm_select(lo, VM_EXP_LO, x);
    /* n = round(x / ln2): adding 1.5 * 2^23 rounds to an integer and leaves it in the low bits */
    float t = xc * 1.44269504088896341f + 12582912.0f;
    float n = t - 12582912.0f;                    /* n in [-125, 128] */
    float r = xc - n * 0.693359375f;              /* ln2 split in two: n * hi is exact */
    r = r - n * -2.12194440e-4f;
    /* p = 2 exp(r) = 2 + 2r + r^2 P(r), |r| <= ln2/2: Cephes' expf polynomial with every
       coefficient doubled (exact), P evaluated by Estrin's scheme (shorter dependency chain) */
    float r2 = r * r;
    float q01 = 3.333333135e-1f * r + 1.0f;
    float q23 = 1.666690409e-2f * r + 8.333159238e-2f;
    float q45 = 3.975138243e-4f * r + 2.796399873e-3f;
    float p = ((q45 * r2 + q23) * r2 + q01) * r2 + 2.0f * r + 2.0f;
    /* exp(x) = p * 2^(n-1): biased exponent n + 126 in [1, 254] (a NaN's bits are harmless in
       unsigned arithmetic: the NaN itself propagates through p) */
    float y = p * vm_u2f((vm_f2u(t) - (0x4B400000u - 126u)) << 23);
    return vm_select(lo, 0.0f, y);
}

/* exp(x) for any float x; see the header comment for accuracy and special values. */
VM_INLINE float vm_expf(float x) {
    int hi = x > VM_EXP_HI;
    float y = vm_expf_nonpos(vm_select(hi, VM_EXP_HI, x));
    return vm_select(hi, vm_u2f(0x7F800000u), y); /* +inf */
}

/* tanh(x) for float x; see the header comment. Both branches work on |x|; the sign of x is
   put back at the end (so tanh(-0) = -0). */
VM_INLINE float vm_tanhf(float x) {
    uint32_t sign = vm_f2u(x) & 0x80000000u;
    float ax = vm_u2f(vm_f2u(x) ^ sign);
    /* |x| >= 0.625: 1 - 2 / (exp(2|x|) + 1); exp overflowing to inf gives exactly 1 */
    float big = 1.0f - 2.0f / (vm_expf(2.0f * ax) + 1.0f);
    /* |x| < 0.625: |x| + |x|^3 P(x^2) */
    float z = ax * ax;
    float s = -5.70498872745e-3f;
    s = s * z + 2.06390887954e-2f;
    s = s * z - 5.37397155531e-2f;
    s = s * z + 1.33314422036e-1f;
    s = s * z - 3.33332819422e-1f;
    s = s * z * ax + ax;
    float y = vm_select(ax < 0.625f, s, big); /* NaN: big, which is NaN */
    return vm_u2f(vm_f2u(y) | sign);
}

/* Reductions keep VM_LANES partial results (a few vector registers), so that they vectorise;
   the lanes are then combined by this fixed tree, the same in every path. The pattern used by
   the kernels: lanes start from the first VM_LANES elements (no zeroing), whole groups of
   VM_LANES are added lane-wise, the last n % VM_LANES elements go to one scalar, and
   result = vm_sum_lanes(lanes) + scalar; rows shorter than VM_LANES are summed in order. The
   lane loop is longer than GCC fully unrolls, so it stays an inner loop that vectorises without
   shuffles. */
#define VM_LANES 32

VM_INLINE float vm_sum_lanes(const float *a) {
    float b[16];
    for (int k = 0; k < 16; k++) b[k] = a[k] + a[k + 16];
    for (int k = 0; k < 8; k++) b[k] += b[k + 8];
    for (int k = 0; k < 4; k++) b[k] += b[k + 4];
    return (b[0] + b[2]) + (b[1] + b[3]);
}

VM_INLINE float vm_max_lanes(const float *a) {
    float m = a[0];
    for (int k = 1; k < VM_LANES; k++) m = a[k] > m ? a[k] : m;
    return m;
}

/* a[k] = sqrtf(a[k]) for k < n. A loop of sqrtf() calls does not vectorise (sqrtf may set errno,
   so the compiler keeps a scalar call for negative inputs); on x86 the SSE instruction does it
   4 at a time (SSE2 is baseline on x86-64; VEX-encoded inside the AVX2 wrappers). */
VM_INLINE void vm_sqrt_inplace(float *a, int n) {
    int k = 0;
#if VM_HAVE_SSE_SQRT
    for (; k + 4 <= n; k += 4) _mm_storeu_ps(a + k, _mm_sqrt_ps(_mm_loadu_ps(a + k)));
#endif
    for (; k < n; k++) a[k] = sqrtf(a[k]);
}

#endif /* PYLLM_VECMATH_H */
