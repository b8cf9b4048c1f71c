/* matmul.c -- the dense layer (GPT-2's Conv1D: weight stored (in, out)) and a general GEMM.
 *
 * forward:  out = inp @ weight + bias (+ residual: the residual add of a GPT block, fused)
 * backward: dinp += dout @ weight^T;  dweight += inp^T @ dout;  dbias += sum_N dout
 * All three products go through one packed GEMM with the BLIS / GotoBLAS loop structure:
 *
 *   for each NC-wide block of columns                       (packed B block: L3)
 *     for each KC-deep slice of K, in order                 (the K-sum runs in this order)
 *       pack the B block slice into NR-wide micro-panels
 *       for each MC-tall block of rows:
 *         pack the A block slice into MR-tall micro-panels  (L2)
 *         for each B micro-panel (L1), each A micro-panel:
 *           micro-kernel: an MR x NR tile of c += kc rank-1 updates held in registers
 *
 * The threads share the packing of each B block and then take row blocks; when there are too
 * few row blocks (M small) and enough columns, each thread owns a range of columns instead and
 * packs its own B panels (and a single A block together).
 * Packing reads both transposes, so one micro-kernel serves every case; partial panels are
 * zero-padded and edge tiles are written through a small buffer. Each output element is summed
 * by one thread, the same way whatever the thread count and whatever the other rows: a chain of
 * multiply-adds in k order per KC slice (fixed by K alone), the slices added to c in order --
 * except that a product with a small result and a long K (a weight gradient) sums the two
 * halves of its slices apart and then adds them (plan_k: fixed by the shape), so two threads can
 * take a half each without waiting for each other at every slice.
 * The 6x16 micro-kernel is written with GCC/Clang vector extensions for AVX2+FMA and chosen at run
 * time, with packing routines that move 8 x 8 blocks through register transposes; other machines
 * and compilers run a plain C micro-kernel and scalar packing on the same packed layout.
 * A product with at most SMALL_M rows (decoding) skips the packing and streams b once.
 * The fused residual is added to each block of c right after its last K slice, while the block is
 * still in cache: c = (sum + bias) + residual, the same bits as a separate residual_forward.
 * The bias gradient (column sums of dout) is formed by the weight gradient's GEMM from its packed
 * panels of dout, slice by slice, instead of another pass over dout.
 */
#include "internal.h"
#include <stdlib.h>
#include <string.h>

#define MR 6     /* micro-tile rows: 6 x 2 ymm accumulators + 2 B vectors + 1 broadcast = 15 */
#define NR 16    /* micro-tile columns: two 8-float vectors */
#define KC 384   /* K slice: a B micro-panel (KC x NR x 4 = 24 KiB) stays in the 32 KiB L1d */
#define KC_ONE 512 /* ... but a K up to this is one slice: one pass over c instead of two beats the
                      L1 fit (~1% of a training step of config (a), with its K = 512 products) */
#define MC 144   /* rows per A block: MC x KC x 4 = 216 KiB, inside the 512 KiB L2 */
#define NC 4080  /* columns per B block: KC x NC x 4 ~ 6 MiB, shared by the threads in L3 */

#ifdef _OPENMP
/* a parallel region / loop over the local variable nt threads (none when nt == 1) */
#define OMP_PARALLEL_NT _Pragma("omp parallel num_threads(nt) if(nt > 1)")
#define OMP_PARALLEL_FOR_NT _Pragma("omp parallel for num_threads(nt) if(nt > 1) schedule(static)")
#define OMP_FOR_DYNAMIC _Pragma("omp for schedule(dynamic, 1)")
#define OMP_BARRIER _Pragma("omp barrier")
#define THREAD_ID() omp_get_thread_num()
#else
#define OMP_PARALLEL_NT
#define OMP_PARALLEL_FOR_NT
#define OMP_FOR_DYNAMIC
#define OMP_BARRIER
#define THREAD_ID() 0
#endif

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(p) __builtin_prefetch(p)
#else
#define PREFETCH(p) ((void)0)
#endif

static int imin(int x, int y) { return x < y ? x : y; }
static int cdiv(int x, int y) { return x / y + (x % y != 0); } /* x >= 0, y > 0 */
/* the depth of the K slices of a product (K > 0): even, at most KC, or all of K up to KC_ONE */
#define K_SLICE(K) ((K) <= KC_ONE ? (K) : cdiv((K), cdiv((K), KC)))

/* ---------------------------------------------------------------------------------------------
 * Micro-kernels. Both compute the MR x NR tile acc = pa (MR x kc, packed k-major) @ pb (kc x NR,
 * packed k-major) and write it to c: c = acc (+ bias) when first, else c += acc. Only the top-left
 * mr x nr part of the tile is written.
 * ------------------------------------------------------------------------------------------- */
typedef void (*ukernel_fn)(int kc, const float *pa, const float *pb, float *c, size_t ldc,
                           int mr, int nr, int first, const float *bias);

/* write the valid part of a finished tile (also the whole store of the portable kernel) */
static void store_tile(const float *tile, float *c, size_t ldc, int mr, int nr, int first,
                       const float *bias) {
    for (int i = 0; i < mr; i++) {
        const float *t = tile + i * NR;
        float *ci = c + (size_t)i * ldc;
        if (!first)
            for (int j = 0; j < nr; j++) ci[j] += t[j];
        else if (bias)
            for (int j = 0; j < nr; j++) ci[j] = t[j] + bias[j];
        else
            for (int j = 0; j < nr; j++) ci[j] = t[j];
    }
}

static void ukernel_c(int kc, const float *pa, const float *pb, float *c, size_t ldc,
                      int mr, int nr, int first, const float *bias) {
    float acc[MR * NR];
    for (int i = 0; i < MR; i += 2) { /* two rows of the tile at a time: compilers keep them in
                                         registers and vectorise along j (B panel stays in L1) */
        float r0[NR], r1[NR];
        const float *ak = pa + i, *bk = pb;
        for (int j = 0; j < NR; j++) r0[j] = r1[j] = 0.0f;
        for (int k = 0; k < kc; k++, ak += MR, bk += NR) {
            float a0 = ak[0], a1 = ak[1];
            for (int j = 0; j < NR; j++) {
                r0[j] += a0 * bk[j];
                r1[j] += a1 * bk[j];
            }
        }
        for (int j = 0; j < NR; j++) {
            acc[i * NR + j] = r0[j];
            acc[(i + 1) * NR + j] = r1[j];
        }
    }
    store_tile(acc, c, ldc, mr, nr, first, bias);
}

/* Few rows (decoding a token at a time): b is streamed once, unpacked. Each element is summed
   exactly as by the micro-kernels (a multiply-add chain in k order per slice of kcb, the slices
   added in order), so a row's result does not depend on the rows computed with it. One call does
   columns j0..j0+nj-1 (nj <= SCOLS) of all M rows. */
#define SMALL_M 4
#define SCOLS 256
typedef void (*smallm_fn)(int M, int j0, int nj, int K, int kcb, const float *a, size_t lda,
                          int trans_a, const float *b, size_t ldb, int trans_b, float *c,
                          size_t ldc, int accumulate, const float *bias);

#define A_(i, k) (trans_a ? a[(size_t)(k) * lda + (i)] : a[(size_t)(i) * lda + (k)])

static void smallm_c(int M, int j0, int nj, int K, int kcb, const float *a, size_t lda,
                     int trans_a, const float *b, size_t ldb, int trans_b, float *c, size_t ldc,
                     int accumulate, const float *bias) {
    float acc[SCOLS];
    for (int i = 0; i < M; i++) {
        for (int k0 = 0; k0 < K; k0 += kcb) {
            int kc = imin(kcb, K - k0), j = 0;
            if (!trans_b) {
                for (j = 0; j < nj; j++) acc[j] = 0.0f;
                for (int k = k0; k < k0 + kc; k++) {
                    float aik = A_(i, k);
                    const float *bk = b + (size_t)k * ldb + j0;
                    for (j = 0; j < nj; j++) acc[j] += aik * bk[j];
                }
            } else {
                for (j = 0; j < nj; j++) { /* 8 columns side by side: 8 independent chains */
                    const float *bj = b + (size_t)(j0 + j) * ldb;
                    float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
                    int w = imin(8, nj - j);
                    for (int k = k0; k < k0 + kc; k++) {
                        float aik = A_(i, k);
                        for (int l = 0; l < w; l++) s[l] += aik * bj[(size_t)l * ldb + k];
                    }
                    for (int l = 0; l < w; l++) acc[j + l] = s[l];
                    j += w - 1;
                }
            }
            store_tile(acc, c + (size_t)i * ldc + j0, ldc, 1, nj, k0 == 0 && !accumulate,
                       bias ? bias + j0 : NULL);
        }
    }
}

#ifdef PYLLM_X86_AVX2

typedef float v8f __attribute__((vector_size(32)));
/* the same vector for loads and stores at any float address, allowed to alias float */
typedef float v8f_u __attribute__((vector_size(32), aligned(4), may_alias));

#define LOADU(p) (*(const v8f_u *)(p))
#define STOREU(p, v) (*(v8f_u *)(p) = (v))
#define BCAST(x) ((v8f){(x), (x), (x), (x), (x), (x), (x), (x)})
#define FMA(x, y, z) _mm256_fmadd_ps((x), (y), (z)) /* x * y + z, rounded once */

__attribute__((target("avx2,fma")))
static void ukernel_avx2(int kc, const float *pa, const float *pb, float *c, size_t ldc,
                         int mr, int nr, int first, const float *bias) {
    v8f c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0}, c20 = {0}, c21 = {0};
    v8f c30 = {0}, c31 = {0}, c40 = {0}, c41 = {0}, c50 = {0}, c51 = {0};
    v8f a, b0, b1;
    for (int i = 0; i < mr; i++) { /* the tile of c is needed only at the end: fetch it now */
        PREFETCH(c + (size_t)i * ldc);
        PREFETCH(c + (size_t)i * ldc + NR - 1);
    }
/* one rank-1 update with the u-th k of the panels */
#define STEP(u) do {                                                                          \
        b0 = LOADU(pb + NR * (u)); b1 = LOADU(pb + NR * (u) + 8);                             \
        a = BCAST(pa[MR * (u) + 0]); c00 = FMA(a, b0, c00); c01 = FMA(a, b1, c01);            \
        a = BCAST(pa[MR * (u) + 1]); c10 = FMA(a, b0, c10); c11 = FMA(a, b1, c11);            \
        a = BCAST(pa[MR * (u) + 2]); c20 = FMA(a, b0, c20); c21 = FMA(a, b1, c21);            \
        a = BCAST(pa[MR * (u) + 3]); c30 = FMA(a, b0, c30); c31 = FMA(a, b1, c31);            \
        a = BCAST(pa[MR * (u) + 4]); c40 = FMA(a, b0, c40); c41 = FMA(a, b1, c41);            \
        a = BCAST(pa[MR * (u) + 5]); c50 = FMA(a, b0, c50); c51 = FMA(a, b1, c51);            \
    } while (0)
    int k = 0;
    for (; k + 4 <= kc; k += 4) { /* unrolled by hand: #pragma unroll is not portable */
        STEP(0); STEP(1); STEP(2); STEP(3);
        pa += 4 * MR;
        pb += 4 * NR;
    }
    for (; k < kc; k++) {
        STEP(0);
        pa += MR;
        pb += NR;
    }
#undef STEP
    if (mr == MR && nr == NR) {
        v8f r0[MR] = {c00, c10, c20, c30, c40, c50}, r1[MR] = {c01, c11, c21, c31, c41, c51};
        for (int i = 0; i < MR; i++) {
            float *ci = c + (size_t)i * ldc;
            if (!first) {
                STOREU(ci, LOADU(ci) + r0[i]);
                STOREU(ci + 8, LOADU(ci + 8) + r1[i]);
            } else if (bias) {
                STOREU(ci, r0[i] + LOADU(bias));
                STOREU(ci + 8, r1[i] + LOADU(bias + 8));
            } else {
                STOREU(ci, r0[i]);
                STOREU(ci + 8, r1[i]);
            }
        }
    } else {
        float tile[MR * NR];
        STOREU(tile + 0 * NR, c00); STOREU(tile + 0 * NR + 8, c01);
        STOREU(tile + 1 * NR, c10); STOREU(tile + 1 * NR + 8, c11);
        STOREU(tile + 2 * NR, c20); STOREU(tile + 2 * NR + 8, c21);
        STOREU(tile + 3 * NR, c30); STOREU(tile + 3 * NR + 8, c31);
        STOREU(tile + 4 * NR, c40); STOREU(tile + 4 * NR + 8, c41);
        STOREU(tile + 5 * NR, c50); STOREU(tile + 5 * NR + 8, c51);
        store_tile(tile, c, ldc, mr, nr, first, bias);
    }
}

__attribute__((target("avx2,fma")))
static void smallm_avx2(int M, int j0, int nj, int K, int kcb, const float *a, size_t lda,
                        int trans_a, const float *b, size_t ldb, int trans_b, float *c,
                        size_t ldc, int accumulate, const float *bias) {
    float tile[SMALL_M * NR];
    const float *ar[SMALL_M]; /* row i of op(a) is ar[i][k * as]; missing rows repeat row 0 */
    size_t as = trans_a ? lda : 1;
    for (int i = 0; i < SMALL_M; i++) {
        int r = i < M ? i : 0;
        ar[i] = trans_a ? a + r : a + (size_t)r * lda;
    }
    for (int k0 = 0; k0 < K; k0 += kcb) {
        int kc = imin(kcb, K - k0), first = k0 == 0 && !accumulate, j = 0;
        const float *bias0 = bias ? bias + j0 : NULL;
        if (!trans_b) { /* SMALL_M x 16 tiles in registers, b read once */
            /* one row (decoding): 64-column tiles, so each row of b is read 256 bytes at a
               time; every sum is the same FMA chain over k as in the 16-column tiles below */
            for (; M == 1 && j + 64 <= nj; j += 64) {
                v8f s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, s4 = {0}, s5 = {0}, s6 = {0};
                v8f s7 = {0};
                const float *bk = b + (size_t)k0 * ldb + j0 + j;
                for (int k = k0; k < k0 + kc; k++, bk += ldb) {
                    v8f x = BCAST(ar[0][k * as]);
                    s0 = FMA(x, LOADU(bk), s0); s1 = FMA(x, LOADU(bk + 8), s1);
                    s2 = FMA(x, LOADU(bk + 16), s2); s3 = FMA(x, LOADU(bk + 24), s3);
                    s4 = FMA(x, LOADU(bk + 32), s4); s5 = FMA(x, LOADU(bk + 40), s5);
                    s6 = FMA(x, LOADU(bk + 48), s6); s7 = FMA(x, LOADU(bk + 56), s7);
                }
                float row[64];
                STOREU(row, s0); STOREU(row + 8, s1); STOREU(row + 16, s2);
                STOREU(row + 24, s3); STOREU(row + 32, s4); STOREU(row + 40, s5);
                STOREU(row + 48, s6); STOREU(row + 56, s7);
                store_tile(row, c + j0 + j, ldc, 1, 64, first, bias0 ? bias0 + j : NULL);
            }
            for (; j + NR <= nj; j += NR) {
                v8f c00 = {0}, c01 = {0}, c10 = {0}, c11 = {0};
                v8f c20 = {0}, c21 = {0}, c30 = {0}, c31 = {0};
                const float *bk = b + (size_t)k0 * ldb + j0 + j;
                for (int k = k0; k < k0 + kc; k++, bk += ldb) {
                    v8f b0 = LOADU(bk), b1 = LOADU(bk + 8), x;
                    x = BCAST(ar[0][k * as]); c00 = FMA(x, b0, c00); c01 = FMA(x, b1, c01);
                    x = BCAST(ar[1][k * as]); c10 = FMA(x, b0, c10); c11 = FMA(x, b1, c11);
                    x = BCAST(ar[2][k * as]); c20 = FMA(x, b0, c20); c21 = FMA(x, b1, c21);
                    x = BCAST(ar[3][k * as]); c30 = FMA(x, b0, c30); c31 = FMA(x, b1, c31);
                }
                STOREU(tile, c00); STOREU(tile + 8, c01);
                STOREU(tile + NR, c10); STOREU(tile + NR + 8, c11);
                STOREU(tile + 2 * NR, c20); STOREU(tile + 2 * NR + 8, c21);
                STOREU(tile + 3 * NR, c30); STOREU(tile + 3 * NR + 8, c31);
                store_tile(tile, c + j0 + j, ldc, M, NR, first, bias0 ? bias0 + j : NULL);
            }
        } else { /* 8 rows of b give the 8 lanes */
            for (; j + 8 <= nj; j += 8) {
                const float *b0 = b + (size_t)(j0 + j) * ldb, *b1 = b0 + ldb, *b2 = b1 + ldb;
                const float *b3 = b2 + ldb, *b4 = b3 + ldb, *b5 = b4 + ldb, *b6 = b5 + ldb;
                const float *b7 = b6 + ldb;
                for (int i = 0; i < M; i++) {
                    v8f s = {0};
                    for (int k = k0; k < k0 + kc; k++) {
                        v8f bv = {b0[k], b1[k], b2[k], b3[k], b4[k], b5[k], b6[k], b7[k]};
                        s = FMA(BCAST(ar[i][k * as]), bv, s);
                    }
                    STOREU(tile + i * NR, s);
                }
                store_tile(tile, c + j0 + j, ldc, M, 8, first, bias0 ? bias0 + j : NULL);
            }
        }
        for (; j < nj; j++) { /* the last columns, one chain each */
            for (int i = 0; i < M; i++) {
                float s = 0.0f;
                for (int k = k0; k < k0 + kc; k++)
                    s = __builtin_fmaf(ar[i][k * as],
                                       trans_b ? b[(size_t)(j0 + j) * ldb + k]
                                               : b[(size_t)k * ldb + j0 + j], s);
                tile[i * NR] = s;
            }
            store_tile(tile, c + j0 + j, ldc, M, 1, first, bias0 ? bias0 + j : NULL);
        }
    }
}

static int avx2_available(void) { /* also checks that the OS saves the ymm registers */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static int avx2_available(void) { return 0; }
#endif

static int g_simd = -1; /* -1: not decided yet */

int pyllm_set_simd_level(int level) {
    g_simd = (level > 0 && avx2_available()) ? 1 : 0;
    return g_simd;
}

int pyllm_simd_level(void) {
    if (g_simd < 0) pyllm_set_simd_level(1);
    return g_simd;
}

static smallm_fn select_smallm(void) {
#ifdef PYLLM_X86_AVX2
    if (pyllm_simd_level() == 1) return smallm_avx2;
#endif
    return smallm_c;
}


/* ---------------------------------------------------------------------------------------------
 * Packing. A micro-panel holds MR rows of op(a) for kc values of k, k-major (MR floats per k);
 * a B micro-panel holds NR columns of op(b), k-major (NR floats per k). Missing rows / columns
 * past the edge of the matrix are zeros.
 * ------------------------------------------------------------------------------------------- */

/* dst[k*R + r] = src[r][k] for k < kc, r < R (zeros for r >= nv): R stored rows become one
   k-major micro-panel. Reads one 64-byte line of each row in turn, so rows that share cache sets
   (a power-of-two stride) do not evict each other, and prefetches a few lines ahead. */
static void pack_rows_c(float *dst, const float *const *src, int R, int nv, int kc) {
    for (int k0 = 0; k0 < kc; k0 += 16) {
        int kn = imin(16, kc - k0);
        for (int r = 0; r < R; r++) {
            float *d = dst + (size_t)k0 * R + r;
            if (r < nv) {
                const float *s = src[r] + k0;
                if (k0 + 96 < kc) PREFETCH(s + 96);
                for (int k = 0; k < kn; k++) d[k * R] = s[k];
            } else {
                for (int k = 0; k < kn; k++) d[k * R] = 0.0f;
            }
        }
    }
}

/* a is (K,M): rows i0..i0+mc-1 of op(a) = a^T, k0..k0+kc-1, into ceil(mc/MR) micro-panels at pa.
   Row k of a is read along i, MR floats to each panel. */
static void pack_at_c(float *pa, const float *a, size_t lda, int i0, int mc, int k0, int kc) {
    int full = mc / MR * MR;
    for (int k = 0; k < kc; k++) {
        const float *src = a + (size_t)(k0 + k) * lda + i0;
        float *dst = pa + (size_t)k * MR;
        if (k + 8 < kc) PREFETCH(src + 8 * lda);
        for (int ip = 0; ip < full; ip += MR)
            for (int i = 0; i < MR; i++) dst[(size_t)ip * kc + i] = src[ip + i];
        if (full < mc)
            for (int i = 0; i < MR; i++)
                dst[(size_t)full * kc + i] = full + i < mc ? src[full + i] : 0.0f;
    }
}

typedef void (*pack_rows_fn)(float *dst, const float *const *src, int R, int nv, int kc);
typedef void (*pack_at_fn)(float *pa, const float *a, size_t lda, int i0, int mc, int k0,
                           int kc);

#ifdef PYLLM_X86_AVX2
/* pack_rows_c with R = MR or NR: 8 rows x 8 k at a time, transposed in registers (MR rows are
   padded to 8 with zeros; of each 8-float column the first MR go to the panel) */
__attribute__((target("avx2,fma")))
static void pack_rows_avx2(float *dst, const float *const *src, int R, int nv, int kc) {
    int k0 = 0;
    if (R == MR || R == NR) {
        for (; k0 + 8 <= kc; k0 += 8) {
            for (int g = 0; g < R; g += 8) {
                __m256 r[8];
                for (int i = 0; i < 8; i++) {
                    if (g + i < nv && g + i < R) {
                        r[i] = _mm256_loadu_ps(src[g + i] + k0);
                        if ((k0 & 15) == 0 && k0 + 96 < kc) PREFETCH(src[g + i] + k0 + 96);
                    } else {
                        r[i] = _mm256_setzero_ps();
                    }
                }
                pyllm_transpose8(r);
                float *d = dst + (size_t)k0 * R + g;
                if (R - g >= 8) {
                    for (int u = 0; u < 8; u++) _mm256_storeu_ps(d + (size_t)u * R, r[u]);
                } else { /* R = MR = 6: each store spills 2 floats that the next one overwrites;
                            the last is exact */
                    for (int u = 0; u < 7; u++) _mm256_storeu_ps(d + (size_t)u * R, r[u]);
                    __m128 lo = _mm256_castps256_ps128(r[7]);
                    __m128 hi = _mm256_extractf128_ps(r[7], 1);
                    _mm_storeu_ps(d + 7 * R, lo);
                    _mm_storel_pi((__m64 *)(void *)(d + 7 * R + 4), hi);
                }
            }
        }
    }
    for (int r = 0; r < R; r++) /* the last kc % 8 values of k (or every k for another R) */
        for (int k = k0; k < kc; k++) dst[(size_t)k * R + r] = r < nv ? src[r][k] : 0.0f;
}

/* pack_at_c, moving MR = 6 floats with one 8-float load and store where that stays inside the
   block: the store spills 2 floats into slot k + 1 of the same panel, which is written next */
__attribute__((target("avx2,fma")))
static void pack_at_avx2(float *pa, const float *a, size_t lda, int i0, int mc, int k0, int kc) {
    int full = mc / MR * MR;
    for (int k = 0; k < kc; k++) {
        const float *src = a + (size_t)(k0 + k) * lda + i0;
        float *dst = pa + (size_t)k * MR;
        if (k + 8 < kc)
            for (int ip = 0; ip < mc; ip += 16) PREFETCH(src + 8 * lda + ip);
        int ip = 0;
        if (k + 1 < kc)
            for (; ip + 8 <= mc; ip += MR)
                _mm256_storeu_ps(dst + (size_t)ip * kc, _mm256_loadu_ps(src + ip));
        for (; ip < full; ip += MR) {
            float *d = dst + (size_t)ip * kc;
            _mm_storeu_ps(d, _mm_loadu_ps(src + ip));
            d[4] = src[ip + 4];
            d[5] = src[ip + 5];
        }
        if (full < mc)
            for (int i = 0; i < MR; i++)
                dst[(size_t)full * kc + i] = full + i < mc ? src[full + i] : 0.0f;
    }
}
#endif

/* the micro-kernel and packing routines of one implementation, chosen once per call */
typedef struct {
    ukernel_fn ukernel;
    pack_rows_fn pack_rows;
    pack_at_fn pack_at;
} gemm_kernels;

static gemm_kernels select_kernels(void) {
    gemm_kernels g;
    g.ukernel = ukernel_c;
    g.pack_rows = pack_rows_c;
    g.pack_at = pack_at_c;
#ifdef PYLLM_X86_AVX2
    if (pyllm_simd_level() == 1) {
        g.ukernel = ukernel_avx2;
        g.pack_rows = pack_rows_avx2;
        g.pack_at = pack_at_avx2;
    }
#endif
    return g;
}

/* rows i0..i0+mc-1 and k0..k0+kc-1 of op(a) into ceil(mc/MR) micro-panels at pa */
static void pack_a(const gemm_kernels *g, float *pa, const float *a, size_t lda, int trans_a,
                   int i0, int mc, int k0, int kc) {
    if (trans_a) {
        g->pack_at(pa, a, lda, i0, mc, k0, kc);
        return;
    }
    for (int ip = 0; ip < mc; ip += MR) { /* a is (M,K): MR rows become one panel */
        const float *src[MR];
        for (int i = 0; i < MR; i++) /* rows past the block are never read (nv) */
            src[i] = a + (size_t)(i0 + ip + imin(i, mc - ip - 1)) * lda + k0;
        g->pack_rows(pa + (size_t)ip * kc, src, MR, imin(MR, mc - ip), kc);
    }
}

/* b is (N,K): columns j0..j0+nr-1 (nr <= NR) and k0..k0+kc-1 of op(b) = b^T into one panel */
static void pack_bt_panel(const gemm_kernels *g, float *pb, const float *b, size_t ldb, int j0,
                          int nr, int k0, int kc) {
    const float *src[NR];
    for (int j = 0; j < NR; j++) src[j] = b + (size_t)(j0 + imin(j, nr - 1)) * ldb + k0;
    g->pack_rows(pb, src, NR, nr, kc);
}

/* b is (K,N): rows k0+k, k in [kbeg, kend), columns j0..j0+nc-1 into their place in every panel
   of the block at bpack (panels of kc x NR); a row is read from left to right */
static void pack_b_rows(float *bpack, const float *b, size_t ldb, int j0, int nc, int k0, int kc,
                        int kbeg, int kend) {
    for (int k = kbeg; k < kend; k++) {
        const float *src = b + (size_t)(k0 + k) * ldb + j0;
        if (k + 4 < kend) PREFETCH(src + 4 * ldb);
        for (int p = 0; p < nc; p += NR) {
            float *dst = bpack + (size_t)p * kc + (size_t)k * NR;
            int nr = imin(NR, nc - p), j = 0;
            if (nr == NR) {
                memcpy(dst, src + p, NR * sizeof(float));
            } else {
                for (; j < nr; j++) dst[j] = src[p + j];
                for (; j < NR; j++) dst[j] = 0.0f;
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Packing buffers. One buffer per call holds the B block and an A block per thread (a few MiB
 * at most); a K-split product uses three at once (its partial sum, and one per half). The last
 * NSLOTS returned are kept for the next calls in lock-free slots (a call that finds none large
 * enough allocates its own), so steady-state calls do not allocate.
 * ------------------------------------------------------------------------------------------- */
typedef struct packbuf {
    size_t cap; /* floats available at data */
    float *data; /* 64-byte aligned, inside this allocation */
} packbuf;

#define NSLOTS 4
#if defined(__GNUC__) || defined(__clang__)
static packbuf *g_cached[NSLOTS];
#define SLOT_SWAP(i, p) __atomic_exchange_n(&g_cached[i], (p), __ATOMIC_ACQ_REL)
#else
#define SLOT_SWAP(i, p) (p) /* no portable atomics in C99: allocate on every call */
#endif

/* a kept buffer of at least nfloats (the smaller ones stay kept), else a new one */
static packbuf *packbuf_get(size_t nfloats) {
    for (int i = 0; i < NSLOTS; i++) {
        packbuf *pb = SLOT_SWAP(i, (packbuf *)NULL);
        if (!pb) continue;
        if (pb->cap >= nfloats) return pb;
        free(SLOT_SWAP(i, pb)); /* back in its slot (freeing what a concurrent call put there) */
    }
    packbuf *pb = (packbuf *)malloc(sizeof(packbuf) + 64 + nfloats * sizeof(float));
    if (!pb) return NULL;
    pb->cap = nfloats;
    pb->data = (float *)(((uintptr_t)(pb + 1) + 63) & ~(uintptr_t)63);
    return pb;
}

/* keep pb in the first slot, moving the kept ones down a slot; the oldest is freed */
static void packbuf_put(packbuf *pb) {
    for (int i = 0; i < NSLOTS && pb; i++) pb = SLOT_SWAP(i, pb);
    free(pb);
}

/* ---------------------------------------------------------------------------------------------
 * The driver.
 * ------------------------------------------------------------------------------------------- */

/* c += r over an m x n block, row strides ldc and ldr (the fused residual; a K-split's part) */
static void add_block(float *c, size_t ldc, const float *r, size_t ldr, int m, int n) {
    for (int i = 0; i < m; i++) {
        float *ci = c + (size_t)i * ldc;
        const float *ri = r + (size_t)i * ldr;
        for (int j = 0; j < n; j++) ci[j] += ri[j];
    }
}

/* c (mc x ncols) [+]= the packed A block (mc x kc) @ the first cdiv(ncols, NR) panels at
   bpack; then, when resid is given (after the last K slice), c += resid (same row stride) */
static void macro_kernel(ukernel_fn ukernel, int mc, int kc, const float *pa, const float *bpack,
                         int ncols, float *c, size_t ldc, int first, const float *bias,
                         const float *resid) {
    for (int j = 0; j < ncols; j += NR) { /* one B micro-panel (L1) against every A panel (L2) */
        int nr = imin(NR, ncols - j);
        const float *pb = bpack + (size_t)j * kc;
        for (int ip = 0; ip < mc; ip += MR)
            ukernel(kc, pa + (size_t)ip * kc, pb, c + (size_t)ip * ldc + j, ldc,
                    imin(MR, mc - ip), nr, first, bias ? bias + j : NULL);
    }
    if (resid) add_block(c, ldc, resid, ldc, mc, ncols);
}

/* bsum[j] (j < nr) += the sum over k < kc of one packed B panel's column j, in order from 0 */
static void panel_colsum(float *bsum, const float *pb, int kc, int nr) {
    float s[NR];
    for (int j = 0; j < NR; j++) s[j] = 0.0f;
    for (int k = 0; k < kc; k++)
        for (int j = 0; j < NR; j++) s[j] += pb[(size_t)k * NR + j];
    for (int j = 0; j < nr; j++) bsum[j] += s[j];
}

#define SPLIT_K_SLICES 4      /* a K-split needs at least this many slices ... */
#define SPLIT_K_MAX_MN 524288 /* ... and a result of at most this many floats (2 MiB) */

/* The K slices of a product, and where it splits K (0: no split). A product with a long K and a
   small result (a weight gradient, whose K is the tokens), no bias, residual or transposed b
   (splittable), at least SPLIT_K_SLICES slices and at most SPLIT_K_MAX_MN floats of result,
   sums the two halves of its slices separately (an even number of slices: one more when odd)
   and then adds the second half to the first. The threads then share its work by halves,
   without waiting for each other at every slice, which costs such a product (little work per
   slice) 5-20%: weight gradients over 2048 rows run 4-28% faster (128 x 512, 512 x 128,
   384 x 384), and larger results gain nothing, so they are not split. The plan depends on the
   shape alone, never on the thread count. */
static int plan_k(int M, int N, int K, int splittable, int *kcb) {
    int s = K_SLICE(K), n = cdiv(K, s);
    if (!splittable || M <= SMALL_M || (double)M * N > SPLIT_K_MAX_MN || n < SPLIT_K_SLICES) {
        *kcb = s;
        return 0;
    }
    if (n % 2) {
        s = cdiv(K, n + 1);
        n = cdiv(K, s);
    }
    *kcb = s;
    return n / 2 * s;
}

/* The column sums of b (K,N), the bias gradient of matmul_backward (whose GEMM has M rows):
   bsum[j] += s_j of each slice of kcb rows in turn, s_j summed over the slice's rows in order
   from 0; with a K-split (plan_k), the slices of the second half are summed from 0 on their own
   and that sum is added last. The GEMM below forms the same sums from its packed B panels
   (panel_colsum), so the bits depend neither on the path nor on the thread count. */
static void colsum_slices(float *bsum, const float *b, size_t ldb, int K, int N, int M) {
    if (K <= 0 || N <= 0) return;
    int kcb, k1 = plan_k(M, N, K, 1, &kcb), nchunks = cdiv(N, 64); /* the GEMM's K slices */
    PYLLM_PARALLEL_FOR_IF((double)K * N >= 65536.0)
    for (int t = 0; t < nchunks; t++) { /* 64 columns (4 cache lines of a row) per task */
        int j0 = t * 64, nj = imin(64, N - j0);
        float half[64]; /* the second half's sums (k1 > 0) */
        for (int j = 0; j < nj; j++) half[j] = 0.0f;
        for (int k0 = 0; k0 < K; k0 += kcb) {
            float s[64], *dst = k1 > 0 && k0 >= k1 ? half : bsum + j0;
            for (int j = 0; j < nj; j++) s[j] = 0.0f;
            for (int k = k0; k < imin(K, k0 + kcb); k++)
                for (int j = 0; j < nj; j++) s[j] += b[(size_t)k * ldb + j0 + j];
            for (int j = 0; j < nj; j++) dst[j] += s[j];
        }
        if (k1 > 0)
            for (int j = 0; j < nj; j++) bsum[j0 + j] += half[j];
    }
}

/* The GEMM proper: c (M,N) [+]= op(a) @ op(b) in K slices of kcb (as sgemm_packed, below, whose
   checks and special cases it relies on), on up to nthreads threads */
static int gemm_run(int M, int N, int K, int kcb, const float *a, size_t lda, int trans_a,
                    const float *b, size_t ldb, int trans_b, float *c, size_t ldc, int accumulate,
                    const float *bias, const float *resid, float *bsum, int nthreads) {
    /* Block sizes: even splits of K, M and N rounded to the micro-tile. They depend on the shape
       only, except the M block of a thread-split-by-rows call, which does not change any sum. */
    int nkb = cdiv(K, kcb);
    int nnb = cdiv(N, NC), ncb = cdiv(cdiv(N, nnb), NR) * NR;
    int nmb = cdiv(M, MC), mcb = cdiv(cdiv(M, nmb), MR) * MR;
    int nt = nthreads;
    if (nt < 1 || 2.0 * M * N * K < 2.0e6) nt = 1;
    if (M <= SMALL_M) {
        /* streaming b is memory-bound: two threads pay off from a few hundred KiB of b */
        if (nthreads > 1 && (double)N * K >= 65536.0) nt = nthreads;
        smallm_fn smallm = select_smallm();
        /* column chunks of at most SCOLS, as many as a multiple of the thread count so that the
           threads get equal shares, 64 wide (the M == 1 tile) where that fits. The chunking
           changes no sum: each column is computed the same way in any chunk. */
        int nchunks = cdiv(cdiv(N, SCOLS), nt) * nt;
        int width = cdiv(cdiv(N, nchunks), 64) * 64;
        if (width > SCOLS) width = cdiv(cdiv(N, nchunks), NR) * NR;
        nchunks = cdiv(N, width);
        OMP_PARALLEL_FOR_NT
        for (int t = 0; t < nchunks; t++) {
            int j0 = t * width, nj = imin(width, N - j0);
            smallm(M, j0, nj, K, kcb, a, lda, trans_a, b, ldb, trans_b, c, ldc, accumulate, bias);
            if (resid) add_block(c + j0, ldc, resid + j0, ldc, M, nj);
        }
        return PYLLM_OK;
    }
    /* Too few row blocks to keep the threads busy: split the columns instead, if there are
       enough. With one row block the threads pack it together; with several each thread packs
       all of A for itself, which pays off only over many columns (>= 32 panels a thread: at
       1536 columns it beats the row split by ~10%, while a 512 x 128 weight gradient over 2048
       rows ran at 60% of the row split's speed). Else the threads share each packed B block and
       take row blocks (smaller ones when there are few). */
    int npanels = cdiv(ncb, NR);
    int split_cols = nt > 1 && npanels >= 4 * nt
                     && (nmb == 1 || (nmb < 4 * nt && npanels >= 32 * nt));
    if (nt > 1 && !split_cols && nmb < 4 * nt) {
        nmb = imin(cdiv(M, MR), 4 * nt);
        mcb = cdiv(cdiv(M, nmb), MR) * MR;
        nmb = cdiv(M, mcb);
    }
    size_t bsize = (size_t)(npanels + nt) * NR * kcb; /* + room to split it by thread */
    size_t ablock = ((size_t)kcb * mcb + 15) & ~(size_t)15; /* keep blocks 64-byte aligned */
    /* nt A blocks: one per thread, or the two shared ones of a split by columns */
    packbuf *buf = packbuf_get(bsize + (size_t)(nt < 2 ? 2 : nt) * ablock);
    if (!buf) return PYLLM_ERR_NOMEM;
    float *bpack = buf->data, *ashared = buf->data + bsize;
    gemm_kernels kern = select_kernels();
    ukernel_fn ukernel = kern.ukernel;

    OMP_PARALLEL_NT
    {
        float *apriv = ashared + (size_t)THREAD_ID() * ablock;
        if (split_cols) {
            /* thread t owns column chunk t of every B block: it packs those B panels itself.
               One row block is packed by the threads together, then a barrier (so every
               thread runs every iteration below); several are packed by each thread into its
               own buffer, and no thread waits for another */
#ifdef _OPENMP
            int tid = omp_get_thread_num(), nth = omp_get_num_threads();
#else
            int tid = 0, nth = 1;
#endif
            /* a region of the B buffer per thread, the same for every block */
            size_t bregion = (size_t)cdiv(npanels, nth) * NR * kcb;
            int slice = 0; /* slices done, over all B blocks */
            int npa = cdiv(M, MR);
            int q0 = (int)((long long)npa * tid / nth);
            int q1 = (int)((long long)npa * (tid + 1) / nth);
            for (int j0 = 0; j0 < N; j0 += ncb) {
                int nc = imin(ncb, N - j0), npan = cdiv(nc, NR);
                int p0 = (int)((long long)npan * tid / nth);
                int p1 = (int)((long long)npan * (tid + 1) / nth);
                int jc0 = p0 * NR, ncc = imin(nc, p1 * NR) - jc0;
                const float *bj = bias ? bias + j0 + jc0 : NULL;
                for (int kb = 0; kb < nkb; kb++) {
                    int k0 = kb * kcb, kc = imin(kcb, K - k0);
                    float *bp = bpack + bregion * tid;
                    if (trans_b)
                        for (int p = 0; p < p1 - p0; p++)
                            pack_bt_panel(&kern, bp + (size_t)p * NR * kc, b, ldb,
                                          j0 + jc0 + p * NR, imin(NR, ncc - p * NR), k0, kc);
                    else if (p0 < p1)
                        pack_b_rows(bp, b, ldb, j0 + jc0, ncc, k0, kc, 0, kc);
                    for (int p = 0; bsum && p < p1 - p0; p++)
                        panel_colsum(bsum + j0 + jc0 + p * NR, bp + (size_t)p * NR * kc, kc,
                                     imin(NR, ncc - p * NR));
                    int first = kb == 0 && !accumulate, last = kb == nkb - 1;
                    if (nmb == 1) {
                        /* two A buffers, used in turn: a thread that packs slice s + 2 has
                           passed the barrier of slice s + 1, which every thread reaches only
                           after its macro-kernel of slice s, the last reader of that buffer */
                        float *ash = ashared + (size_t)(slice++ & 1) * ablock;
                        if (q0 < q1)
                            pack_a(&kern, ash + (size_t)q0 * MR * kc, a, lda, trans_a, q0 * MR,
                                   imin(M, q1 * MR) - q0 * MR, k0, kc);
                        OMP_BARRIER /* the A block is packed */
                        if (p0 < p1)
                            macro_kernel(ukernel, M, kc, ash, bp, ncc, c + j0 + jc0, ldc,
                                         first, bj, last && resid ? resid + j0 + jc0 : NULL);
                        continue; /* no barrier: the next slice packs into the other buffer */
                    }
                    for (int i0 = 0; p0 < p1 && i0 < M; i0 += mcb) {
                        int mc = imin(mcb, M - i0);
                        float *ci = c + (size_t)i0 * ldc + j0 + jc0;
                        pack_a(&kern, apriv, a, lda, trans_a, i0, mc, k0, kc);
                        macro_kernel(ukernel, mc, kc, apriv, bp, ncc, ci, ldc, first, bj,
                                     last && resid ? resid + (ci - c) : NULL);
                    }
                }
            }
        } else {
            for (int j0 = 0; j0 < N; j0 += ncb) {
                int nc = imin(ncb, N - j0), npan = cdiv(nc, NR);
                const float *bj = bias ? bias + j0 : NULL;
                for (int kb = 0; kb < nkb; kb++) {
                    int k0 = kb * kcb, kc = imin(kcb, K - k0);
                    int first = kb == 0 && !accumulate, last = kb == nkb - 1;
                    /* the threads pack the B block together, in small tasks */
                    int ntasks = trans_b ? npan : cdiv(kc, 8);
                    OMP_FOR_DYNAMIC
                    for (int t = 0; t < ntasks; t++) {
                        if (trans_b)
                            pack_bt_panel(&kern, bpack + (size_t)t * NR * kc, b, ldb, j0 + t * NR,
                                          imin(NR, nc - t * NR), k0, kc);
                        else
                            pack_b_rows(bpack, b, ldb, j0, nc, k0, kc, t * 8,
                                        imin(kc, t * 8 + 8));
                    }
                    /* implicit barrier: B is packed. Then each row block, any thread (and
                       first, as task -1, the column sums of the block) */
                    OMP_FOR_DYNAMIC
                    for (int u = bsum ? -1 : 0; u < nmb; u++) {
                        if (u < 0) {
                            for (int p = 0; p < npan; p++)
                                panel_colsum(bsum + j0 + p * NR, bpack + (size_t)p * NR * kc, kc,
                                             imin(NR, nc - p * NR));
                            continue;
                        }
                        int i0 = u * mcb, mc = imin(mcb, M - i0);
                        float *ci = c + (size_t)i0 * ldc + j0;
                        pack_a(&kern, apriv, a, lda, trans_a, i0, mc, k0, kc);
                        macro_kernel(ukernel, mc, kc, apriv, bpack, nc, ci, ldc, first, bj,
                                     last && resid ? resid + (ci - c) : NULL);
                    }
                    /* implicit barrier: the packed B block may be overwritten */
                }
            }
        }
    }
    packbuf_put(buf);
    return PYLLM_OK;
}

/* A K-split product (plan_k): the first k1 values of k summed into c (and bsum), the rest into a
   scratch block (and scratch column sums) from 0, which is then added. Two or three threads take
   a half each (one thread each: no barrier between them until the end); one thread, or four or
   more, run the halves in turn, each with all of them. Same bits in every case. */
static int gemm_split_k(int M, int N, int K, int kcb, int k1, const float *a, size_t lda,
                        int trans_a, const float *b, size_t ldb, float *c, size_t ldc,
                        int accumulate, float *bsum, int nthreads) {
    packbuf *buf = packbuf_get((size_t)M * N + N);
    if (!buf) return PYLLM_ERR_NOMEM;
    float *part = buf->data, *psum = bsum ? part + (size_t)M * N : NULL;
    for (int j = 0; psum && j < N; j++) psum[j] = 0.0f;
    const float *a2 = trans_a ? a + (size_t)k1 * lda : a + k1, *b2 = b + (size_t)k1 * ldb;
    int nt = nthreads == 2 || nthreads == 3 ? 2 : 1, rc[2];
    OMP_PARALLEL_FOR_NT
    for (int h = 0; h < 2; h++)
        rc[h] = h == 0 ? gemm_run(M, N, k1, kcb, a, lda, trans_a, b, ldb, 0, c, ldc, accumulate,
                                  NULL, NULL, bsum, nt == 2 ? 1 : nthreads)
                       : gemm_run(M, N, K - k1, kcb, a2, lda, trans_a, b2, ldb, 0, part,
                                  (size_t)N, 0, NULL, NULL, psum, nt == 2 ? 1 : nthreads);
    if (rc[0] == PYLLM_OK && rc[1] == PYLLM_OK) {
        nt = nthreads > 1 && (double)M * N >= 65536.0 ? nthreads : 1;
        OMP_PARALLEL_FOR_NT
        for (int i = 0; i < M; i++) /* a row per task */
            add_block(c + (size_t)i * ldc, ldc, part + (size_t)i * N, (size_t)N, 1, N);
        for (int j = 0; psum && j < N; j++) bsum[j] += psum[j];
    }
    packbuf_put(buf);
    return rc[0] != PYLLM_OK ? rc[0] : rc[1];
}

/* c (M,N) = op(a) @ op(b) (+ c when accumulate; + bias (N) when bias, which needs !accumulate)
   (+ resid (M,N), row stride ldc, not overlapping c); bsum (N), when given, += the column sums
   of b (not transposed), as colsum_slices */
static int sgemm_packed(int M, int N, int K, const float *a, size_t lda, int trans_a,
                        const float *b, size_t ldb, int trans_b, float *c, size_t ldc,
                        int accumulate, const float *bias, const float *resid, float *bsum) {
    if (bsum && (M <= SMALL_M || trans_b)) { /* the paths that do not pack b by rows */
        colsum_slices(bsum, b, ldb, K, N, M);
        bsum = NULL;
    }
    if (M <= 0 || N <= 0) return PYLLM_OK;
    if (K <= 0) {
        if (!accumulate)
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) c[(size_t)i * ldc + j] = bias ? bias[j] : 0.0f;
        if (resid) add_block(c, ldc, resid, ldc, M, N);
        return PYLLM_OK;
    }
    int kcb, k1 = plan_k(M, N, K, !trans_b && !bias && !resid, &kcb);
    if (k1 > 0)
        return gemm_split_k(M, N, K, kcb, k1, a, lda, trans_a, b, ldb, c, ldc, accumulate, bsum,
                            pyllm_nthreads());
    return gemm_run(M, N, K, kcb, a, lda, trans_a, b, ldb, trans_b, c, ldc, accumulate, bias,
                    resid, bsum, pyllm_nthreads());
}

/* c (M,N) [+]= op(a) (M,K) @ op(b) (K,N); lda, ldb, ldc are the stored row lengths */
int pyllm_sgemm(int M, int N, int K, const float *a, int lda, int trans_a, const float *b,
                int ldb, int trans_b, float *c, int ldc, int accumulate) {
    return sgemm_packed(M, N, K, a, (size_t)lda, trans_a, b, (size_t)ldb, trans_b, c,
                        (size_t)ldc, accumulate, NULL, NULL, NULL);
}

int gemm(float *c, const float *a, const float *b, int M, int N, int K,
         int trans_a, int trans_b, int accumulate) {
    if (!c || !a || !b) return PYLLM_ERR_NULL;
    if (M < 0 || N < 0 || K < 0) return PYLLM_ERR_SIZE;
    return pyllm_sgemm(M, N, K, a, trans_a ? M : K, trans_a, b, trans_b ? K : N, trans_b, c, N,
                       accumulate);
}

/* out (N,OC); inp (N,C); weight (C,OC); bias (OC) or NULL; residual (N,OC) or NULL */
int matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                   const float *residual, int N, int C, int OC) {
    if (!out || !inp || !weight) return PYLLM_ERR_NULL;
    if (N < 0 || C < 0 || OC < 0) return PYLLM_ERR_SIZE;
    /* the bias is added when each tile is first stored: bias + sum, as if preloaded */
    return sgemm_packed(N, OC, C, inp, (size_t)C, 0, weight, (size_t)OC, 0, out, (size_t)OC, 0,
                        bias, residual, NULL);
}

/* dinp, inp (N,C); dweight, weight (C,OC); dbias (OC); dout (N,OC) */
int matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                    const float *inp, const float *weight, int N, int C, int OC) {
    if (!dout || !inp || !weight) return PYLLM_ERR_NULL;
    if (N < 0 || C < 0 || OC < 0) return PYLLM_ERR_SIZE;
    int rc;
    if (dinp && (rc = pyllm_sgemm(N, C, OC, dout, OC, 0, weight, OC, 1, dinp, C, 1)) != PYLLM_OK)
        return rc;
    /* dbias: the column sums of dout, formed by the weight gradient's GEMM from its packed
       panels of dout (or alone, without dweight), in slices of K rows (colsum_slices) */
    if (dweight)
        return sgemm_packed(C, OC, N, inp, (size_t)C, 1, dout, (size_t)OC, 0, dweight,
                            (size_t)OC, 1, NULL, NULL, dbias);
    if (dbias) colsum_slices(dbias, dout, (size_t)OC, N, OC, C);
    return PYLLM_OK;
}
