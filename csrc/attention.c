/* attention.c -- causal multi-head self-attention, FlashAttention style (online softmax).
 *
 * For each batch b, head h and query t (q, k, v are hd-wide slices of qkv, scale = 1/sqrt(hd)):
 *   s_j = scale * q_t . k_j  for j <= t;   p_j = exp(s_j - lse_t);   out_t = sum_j p_j v_j
 *   lse_t = log sum_j exp(s_j)
 * The backward pass recomputes p_j from lse:
 *   D_t = dout_t . out_t;  dp_j = dout_t . v_j;  ds_j = p_j (dp_j - D_t)
 *   dv_j += p_j dout_t;    dq_t += scale ds_j k_j;   dk_j += scale ds_j q_t
 *
 * Tiling. Queries and keys are cut into blocks of blk rows: 64 for head sizes up to 64, 32 up to
 * 128, 16 up to 256 (blk x hdp <= TILE floats, hdp = hd rounded up to 16). A block's operands are
 * copied into zero-padded stack tiles (contiguous rows, or transposed), so every product is a
 * small GEMM done by one register-blocked micro-kernel: a 4 x 16 tile of
 * c = sum_k a[i][k] b[k][0..15], a read by broadcasts through a row and a k stride (so a
 * transposed operand needs no copy), b a row-major tile. No T x T matrix exists; per thread the
 * stack holds at most ~160 KiB. Scores are kept in the log2 domain (times scale * log2 e), so
 * probabilities are exp2 of differences.
 *   forward, one task per (b, h, query block), head by head, largest blocks first (dynamic):
 *     for each key block up to the diagonal: S^T = K Q^T (keys x queries, so the softmax runs
 *     along keys with 8 queries per vector), online softmax (running max m and sum l per query;
 *     O rescaled by corr = exp2(m_old - m_new)), O = O corr + P V. Masked keys (j > query) get
 *     p = 0; fully masked 4 x 16 tiles of the diagonal block are skipped. At the end
 *     out = O / l and lse = (m + log2 l) ln 2.
 *   backward, one task per (b, h) (FlashAttention-2 order): D of every query first (kept on the
 *     stack when T <= DMAX, else per block); for each key block (outer) and each query block at
 *     or after it (inner): recompute S = Q K^T and P = exp2(S - lse log2 e), dP = dO V^T,
 *     dS = P (dP - D) scale, then dV += P^T dO and dK += dS^T Q in the key block's local tiles,
 *     and dQ += dS K straight into dqkv (rows owned by the task). dK, dV are added into dqkv
 *     after the inner loop.
 * Every sum runs in a fixed order inside one task and tasks write disjoint outputs, so results
 * are bit-identical for any thread count. Each kernel has two implementations: AVX2+FMA (vector
 * intrinsics in functions marked target("avx2,fma"), with a polynomial exp2) used when
 * pyllm_simd_level() is 1 (x86-64 CPUs with AVX2 and FMA, chosen at run time; tile copies move
 * 8 floats at a time, transposes go through 8 x 8 register blocks), and portable C
 * (libm exp2f) everywhere else; both use the same tiling. Head sizes above 256 take a plain
 * per-query path; the decode step streams the cache in blocks of DB keys.
 */
#include "vecmath.h" /* VM_INLINE, VM_TARGET_AVX2: one body compiled twice */

#define TILE 4096  /* floats in one stack tile: BLK x hdp (and BLK x BLK scores) */
#define MR 4       /* micro-tile rows */
#define NR 16      /* micro-tile columns */
#define HDP_MAX 256 /* largest padded head size of the tiled path */
#define DB 64      /* keys per block of the decode step */
#ifndef DMAX
#define DMAX 2048  /* the backward keeps D of a whole head on the stack up to this T */
#endif

#define LOG2E 1.44269504088896341f
#define LN2 0.693147180559945309f

static int imin(int a, int b) { return a < b ? a : b; }

/* ---------------------------------------------------------------------------------------------
 * Micro-kernels: acc (MR x NR) = sum_{k < kc} a[i*ars + k*aks] * b[k*ldb + j], then the top-left
 * m x n part goes to c (row stride ldc) by mode:
 *   MK_SET: c = alpha * acc;  MK_RESCALE: c = c * rs[i] + acc;  MK_ADD: c += acc.
 * All MR rows of a and NR columns of b are read (callers pad their tiles).
 * ------------------------------------------------------------------------------------------- */
enum { MK_SET, MK_RESCALE, MK_ADD };

static void mk_store(const float *acc, int m, int n, float *c, size_t ldc, int mode, float alpha,
                     const float *rs) {
    for (int i = 0; i < m; i++) {
        const float *t = acc + i * NR;
        float *ci = c + (size_t)i * ldc;
        if (mode == MK_SET)
            for (int j = 0; j < n; j++) ci[j] = alpha * t[j];
        else if (mode == MK_RESCALE)
            for (int j = 0; j < n; j++) ci[j] = ci[j] * rs[i] + t[j];
        else
            for (int j = 0; j < n; j++) ci[j] += t[j];
    }
}

/* portable: two passes of 4 x 8 columns (8 accumulators of 4 lanes fit 16 SSE registers). With
   GCC/Clang the lanes are written with 16-byte vector extensions (SSE2 on x86-64, NEON on arm64;
   left to itself the vectoriser picks the k loop and shuffles), else as plain loops. */
#if defined(__GNUC__) || defined(__clang__)
typedef float v4f __attribute__((vector_size(16)));
typedef float v4f_u __attribute__((vector_size(16), aligned(4), may_alias));
#define V4LOAD(p) (*(const v4f_u *)(p))
#define V4STORE(p, v) (*(v4f_u *)(p) = (v))
#define V4BCAST(x) ((v4f){(x), (x), (x), (x)})

static void mk_c(int m, int n, int kc, const float *a, size_t ars, size_t aks, const float *b,
                 size_t ldb, float *c, size_t ldc, int mode, float alpha, const float *rs) {
    float acc[MR * NR];
    for (int h = 0; h < NR; h += 8) {
        v4f c00 = {0, 0, 0, 0}, c01 = c00, c10 = c00, c11 = c00;
        v4f c20 = c00, c21 = c00, c30 = c00, c31 = c00;
        const float *ak = a, *bk = b + h;
        for (int k = 0; k < kc; k++) {
            v4f b0 = V4LOAD(bk), b1 = V4LOAD(bk + 4), x;
            x = V4BCAST(ak[0]);
            c00 += x * b0;
            c01 += x * b1;
            x = V4BCAST(ak[ars]);
            c10 += x * b0;
            c11 += x * b1;
            x = V4BCAST(ak[2 * ars]);
            c20 += x * b0;
            c21 += x * b1;
            x = V4BCAST(ak[3 * ars]);
            c30 += x * b0;
            c31 += x * b1;
            ak += aks;
            bk += ldb;
        }
        V4STORE(acc + 0 * NR + h, c00);
        V4STORE(acc + 0 * NR + h + 4, c01);
        V4STORE(acc + 1 * NR + h, c10);
        V4STORE(acc + 1 * NR + h + 4, c11);
        V4STORE(acc + 2 * NR + h, c20);
        V4STORE(acc + 2 * NR + h + 4, c21);
        V4STORE(acc + 3 * NR + h, c30);
        V4STORE(acc + 3 * NR + h + 4, c31);
    }
    mk_store(acc, m, n, c, ldc, mode, alpha, rs);
}
#else
static void mk_c(int m, int n, int kc, const float *a, size_t ars, size_t aks, const float *b,
                 size_t ldb, float *c, size_t ldc, int mode, float alpha, const float *rs) {
    float acc[MR * NR];
    for (int t = 0; t < MR * NR; t++) acc[t] = 0.0f;
    for (int k = 0; k < kc; k++) {
        const float *bk = b + (size_t)k * ldb;
        for (int i = 0; i < MR; i++) {
            float ai = a[(size_t)i * ars + (size_t)k * aks];
            for (int j = 0; j < NR; j++) acc[i * NR + j] += ai * bk[j];
        }
    }
    mk_store(acc, m, n, c, ldc, mode, alpha, rs);
}
#endif

/* ---------------------------------------------------------------------------------------------
 * Softmax passes over one block of scores s (rows of stride ld, log2 domain).
 * Row r has lim(r) valid keys: min(r + 1, nk) on the diagonal block, else nk; 0 for padding rows
 * r >= nq. Entries from lim(r) to ld are set to 0.
 * ------------------------------------------------------------------------------------------- */
static int row_lim(int r, int nq, int nk, int diag) {
    if (r >= nq) return 0;
    return diag ? imin(r + 1, nk) : nk;
}

/* forward, on transposed scores st (keys x queries, row stride ld): key j is visible to query r
   when j <= r + off. Lanes of 8 queries r0..r0+7 (r0 < nq) are processed together (padding
   queries included; their scores are finite), over the keys j < min(nk, r0 + off + 8).
   st -> p = exp2(st - m_new) (0 where masked); m, l updated; corr = exp2(m_old - m_new), which
   is exactly 1 for a query that sees no key of this block (every query sees key 0, in the first
   block, so m is finite by then). */
static void softmax_fwd_c(float *st, int ld, int nq, int nk, int off, float *m, float *l,
                          float *corr) {
    for (int r = 0; r < (nq + 7) / 8 * 8; r++) {
        int lim = imin(nk, (r & ~7) + off + 8), val = imin(lim, r + off + 1);
        float mb = -INFINITY, sum = 0.0f;
        for (int j = 0; j < val; j++) {
            float x = st[(size_t)j * ld + r];
            mb = x > mb ? x : mb;
        }
        float mnew = mb > m[r] ? mb : m[r];
        float cr = exp2f(m[r] - mnew);
        for (int j = 0; j < lim; j++) {
            float *x = st + (size_t)j * ld + r;
            *x = j < val ? exp2f(*x - mnew) : 0.0f;
            sum += *x;
        }
        l[r] = l[r] * cr + sum;
        m[r] = mnew;
        corr[r] = cr;
    }
}

/* backward: s -> p = exp2(s - lse2[r]); dp -> ds = p (dp - D[r]) scale (rows 0..nrows-1) */
static void softmax_bwd_c(float *s, float *dp, int ld, int nrows, int nq, int nk, int diag,
                          const float *lse2, const float *D, float scale) {
    for (int r = 0; r < nrows; r++) {
        float *sr = s + (size_t)r * ld, *dr = dp + (size_t)r * ld;
        int lim = row_lim(r, nq, nk, diag), j;
        for (j = 0; j < lim; j++) {
            float p = exp2f(sr[j] - lse2[r]);
            sr[j] = p;
            dr[j] = p * (dr[j] - D[r]) * scale;
        }
        for (; j < ld; j++) sr[j] = dr[j] = 0.0f;
    }
}

/* x[j] = exp2(x[j] - m) for j < n; returns the sum (decode) */
static float exp_row_c(float *x, int n, float m) {
    float sum = 0.0f;
    for (int j = 0; j < n; j++) {
        x[j] = exp2f(x[j] - m);
        sum += x[j];
    }
    return sum;
}

#ifdef PYLLM_X86_AVX2
/* ---------------------------------------------------------------------------------------------
 * AVX2 + FMA versions.
 * exp2 (Cephes exp2f): x = n + f, n = round(x), |f| <= 1/2, 2^f = 1 + f P(f) with a degree-5 P,
 * times 2^n built in the exponent bits; relative error ~2e-7. x < -126 (including -inf from
 * masking) gives +0, x is clamped to 127 above, NaN propagates.
 * ------------------------------------------------------------------------------------------- */
__attribute__((target("avx2,fma"))) static inline __m256 exp2_avx2(__m256 x) {
    __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(-126.0f), _CMP_NLT_UQ);
    x = _mm256_min_ps(_mm256_set1_ps(127.0f), x); /* second operand returned for NaN */
    x = _mm256_max_ps(_mm256_set1_ps(-126.0f), x);
    __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
                                  23);
    return _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(e)), keep);
}

/* lanes i < cnt of a mask */
__attribute__((target("avx2,fma"))) static inline __m256 lane_mask(int cnt) {
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(cnt),
                                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

/* horizontal reductions, in a fixed order */
__attribute__((target("avx2,fma"))) static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* a . b over n floats: two 8-lane FMA accumulators, then a fixed-order reduction */
__attribute__((target("avx2,fma"))) static float dot_avx2(const float *a, const float *b, int n) {
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int d = 0;
    for (; d + 16 <= n; d += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d + 8), _mm256_loadu_ps(b + d + 8), s1);
    }
    if (d + 8 <= n) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + d), _mm256_loadu_ps(b + d), s0);
        d += 8;
    }
    float s = hsum8(_mm256_add_ps(s0, s1));
    for (; d < n; d++) s += a[d] * b[d];
    return s;
}

/* x[j] = exp2(x[j] - m) for j < n, x[j] = 0 for n <= j < n rounded up to 8; returns the sum */
__attribute__((target("avx2,fma"))) static float exp_row_avx2(float *x, int n, float m) {
    __m256 vm = _mm256_set1_ps(m), ninf = _mm256_set1_ps(-INFINITY);
    __m256 acc = _mm256_setzero_ps();
    int j = 0;
    for (; j + 8 <= n; j += 8) {
        __m256 p = exp2_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
        _mm256_storeu_ps(x + j, p);
        acc = _mm256_add_ps(acc, p);
    }
    if (j < n) {
        __m256 v = _mm256_blendv_ps(ninf, _mm256_loadu_ps(x + j), lane_mask(n - j));
        __m256 p = exp2_avx2(_mm256_sub_ps(v, vm));
        _mm256_storeu_ps(x + j, p);
        acc = _mm256_add_ps(acc, p);
    }
    return hsum8(acc);
}

__attribute__((target("avx2,fma")))
static void softmax_fwd_avx2(float *st, int ld, int nq, int nk, int off, float *m, float *l,
                             float *corr) {
    __m256 ninf = _mm256_set1_ps(-INFINITY);
    for (int r0 = 0; r0 < nq; r0 += 8) {
        int lim = imin(nk, r0 + off + 8);
        __m256i rows = _mm256_add_epi32(_mm256_set1_epi32(r0),
                                        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256 vmax = ninf, acc = _mm256_setzero_ps();
        for (int j = 0; j < lim; j++) {
            __m256 x = _mm256_loadu_ps(st + (size_t)j * ld + r0);
            if (j > r0 + off) /* key j is masked for the queries r < j - off */
                x = _mm256_blendv_ps(x, ninf, _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                                                  _mm256_set1_epi32(j - off), rows)));
            vmax = _mm256_max_ps(vmax, x);
        }
        __m256 mo = _mm256_loadu_ps(m + r0), mn = _mm256_max_ps(mo, vmax);
        __m256 cr = exp2_avx2(_mm256_sub_ps(mo, mn));
        for (int j = 0; j < lim; j++) {
            float *sj = st + (size_t)j * ld + r0;
            __m256 x = _mm256_loadu_ps(sj);
            if (j > r0 + off)
                x = _mm256_blendv_ps(x, ninf, _mm256_castsi256_ps(_mm256_cmpgt_epi32(
                                                  _mm256_set1_epi32(j - off), rows)));
            __m256 p = exp2_avx2(_mm256_sub_ps(x, mn));
            _mm256_storeu_ps(sj, p);
            acc = _mm256_add_ps(acc, p);
        }
        _mm256_storeu_ps(l + r0, _mm256_fmadd_ps(_mm256_loadu_ps(l + r0), cr, acc));
        _mm256_storeu_ps(m + r0, mn);
        _mm256_storeu_ps(corr + r0, cr);
    }
}

__attribute__((target("avx2,fma")))
static void softmax_bwd_avx2(float *s, float *dp, int ld, int nrows, int nq, int nk, int diag,
                             const float *lse2, const float *D, float scale) {
    __m256 ninf = _mm256_set1_ps(-INFINITY), vsc = _mm256_set1_ps(scale);
    for (int r = 0; r < nrows; r++) {
        float *sr = s + (size_t)r * ld, *dr = dp + (size_t)r * ld;
        int lim = row_lim(r, nq, nk, diag), j = 0;
        if (lim > 0) {
            __m256 vl = _mm256_set1_ps(lse2[r]), vd = _mm256_set1_ps(D[r]);
            for (; j < lim; j += 8) {
                __m256 x = _mm256_loadu_ps(sr + j);
                if (j + 8 > lim) x = _mm256_blendv_ps(ninf, x, lane_mask(lim - j));
                __m256 p = exp2_avx2(_mm256_sub_ps(x, vl));
                __m256 g = _mm256_sub_ps(_mm256_loadu_ps(dr + j), vd);
                _mm256_storeu_ps(sr + j, p);
                /* p = 0 on masked lanes; dp there may be unset, so select rather than multiply */
                __m256 ds = _mm256_mul_ps(_mm256_mul_ps(p, g), vsc);
                if (j + 8 > lim) ds = _mm256_and_ps(ds, lane_mask(lim - j));
                _mm256_storeu_ps(dr + j, ds);
            }
        }
        for (; j < ld; j++) sr[j] = dr[j] = 0.0f;
    }
}

#define BC(p) _mm256_broadcast_ss(p)
#define FMA(a, b, c) _mm256_fmadd_ps(a, b, c)

__attribute__((target("avx2,fma")))
static void mk_avx2(int m, int n, int kc, const float *a, size_t ars, size_t aks, const float *b,
                    size_t ldb, float *c, size_t ldc, int mode, float alpha, const float *rs) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00;
    __m256 c20 = c00, c21 = c00, c30 = c00, c31 = c00;
    const float *a0 = a, *a1 = a + ars, *a2 = a + 2 * ars, *a3 = a + 3 * ars;
    for (int k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8), x;
        x = BC(a0); c00 = FMA(x, b0, c00); c01 = FMA(x, b1, c01);
        x = BC(a1); c10 = FMA(x, b0, c10); c11 = FMA(x, b1, c11);
        x = BC(a2); c20 = FMA(x, b0, c20); c21 = FMA(x, b1, c21);
        x = BC(a3); c30 = FMA(x, b0, c30); c31 = FMA(x, b1, c31);
        a0 += aks; a1 += aks; a2 += aks; a3 += aks;
        b += ldb;
    }
    __m256 r0[MR] = {c00, c10, c20, c30}, r1[MR] = {c01, c11, c21, c31};
    if (m == MR && n == NR) {
        if (mode == MK_SET) {
            __m256 va = _mm256_set1_ps(alpha);
            for (int i = 0; i < MR; i++) {
                float *ci = c + (size_t)i * ldc;
                _mm256_storeu_ps(ci, _mm256_mul_ps(va, r0[i]));
                _mm256_storeu_ps(ci + 8, _mm256_mul_ps(va, r1[i]));
            }
        } else if (mode == MK_RESCALE) {
            for (int i = 0; i < MR; i++) {
                float *ci = c + (size_t)i * ldc;
                __m256 s = _mm256_set1_ps(rs[i]);
                _mm256_storeu_ps(ci, FMA(_mm256_loadu_ps(ci), s, r0[i]));
                _mm256_storeu_ps(ci + 8, FMA(_mm256_loadu_ps(ci + 8), s, r1[i]));
            }
        } else {
            for (int i = 0; i < MR; i++) {
                float *ci = c + (size_t)i * ldc;
                _mm256_storeu_ps(ci, _mm256_add_ps(_mm256_loadu_ps(ci), r0[i]));
                _mm256_storeu_ps(ci + 8, _mm256_add_ps(_mm256_loadu_ps(ci + 8), r1[i]));
            }
        }
    } else {
        float acc[MR * NR];
        for (int i = 0; i < MR; i++) {
            _mm256_storeu_ps(acc + i * NR, r0[i]);
            _mm256_storeu_ps(acc + i * NR + 8, r1[i]);
        }
        mk_store(acc, m, n, c, ldc, mode, alpha, rs);
    }
}
#undef BC
#undef FMA
#endif /* PYLLM_X86_AVX2 */

/* ---------------------------------------------------------------------------------------------
 * Tile copies.
 * ------------------------------------------------------------------------------------------- */
/* dst (rows x ld): row r < nr, column d < hd from src[r*ss + d]; zero elsewhere (cols < ld) */
VM_INLINE void copy_rows(float *dst, int ld, int rows, const float *src, size_t ss, int nr,
                         int hd) {
    for (int r = 0; r < rows; r++) {
        float *dr = dst + (size_t)r * ld;
        int d = 0;
        if (r < nr) {
            const float *sr = src + (size_t)r * ss;
            for (; d < hd; d++) dr[d] = sr[d];
        }
        for (; d < ld; d++) dr[d] = 0.0f;
    }
}

/* dst[j*ds + d] (+)= src[j*ss + d] for j < n, d < hd (a block's dK or dV into dqkv) */
VM_INLINE void put_rows(float *dst, size_t ds, const float *src, size_t ss, int n, int hd,
                        int accumulate) {
    for (int j = 0; j < n; j++) {
        float *dj = dst + (size_t)j * ds;
        const float *sj = src + (size_t)j * ss;
        if (accumulate)
            for (int d = 0; d < hd; d++) dj[d] += sj[d];
        else
            for (int d = 0; d < hd; d++) dj[d] = sj[d];
    }
}

/* the row copies compiled twice (see vecmath.h): portable, and for AVX2 */
static void pack_rows_c(float *dst, int ld, int rows, const float *src, size_t ss, int nr, int hd) {
    copy_rows(dst, ld, rows, src, ss, nr, hd);
}
static void add_rows_c(float *dst, size_t ds, const float *src, size_t ss, int n, int hd,
                       int accumulate) {
    put_rows(dst, ds, src, ss, n, hd, accumulate);
}
#if VM_HAVE_AVX2
VM_TARGET_AVX2 static void pack_rows_avx2(float *dst, int ld, int rows, const float *src,
                                          size_t ss, int nr, int hd) {
    copy_rows(dst, ld, rows, src, ss, nr, hd);
}
VM_TARGET_AVX2 static void add_rows_avx2(float *dst, size_t ds, const float *src, size_t ss,
                                         int n, int hd, int accumulate) {
    put_rows(dst, ds, src, ss, n, hd, accumulate);
}
#endif

/* dst (hd x ld) = transpose: dst[d*ld + j] = src[j*ss + d] for j < nr; zero for nr <= j < ld */
static void pack_trans_c(float *dst, int ld, const float *src, size_t ss, int nr, int hd) {
    for (int j = 0; j < nr; j++) {
        const float *sj = src + (size_t)j * ss;
        for (int d = 0; d < hd; d++) dst[(size_t)d * ld + j] = sj[d];
    }
    if (nr < ld)
        for (int d = 0; d < hd; d++)
            for (int j = nr; j < ld; j++) dst[(size_t)d * ld + j] = 0.0f;
}

#ifdef PYLLM_X86_AVX2
/* the transpose through 8 x 8 register blocks */
__attribute__((target("avx2,fma")))
static void pack_trans_avx2(float *dst, int ld, const float *src, size_t ss, int nr, int hd) {
    if (ld % 8 != 0) {
        pack_trans_c(dst, ld, src, ss, nr, hd);
        return;
    }
    int d8 = hd / 8 * 8;
    for (int j0 = 0; j0 < ld; j0 += 8) { /* 8 rows of src (zeros from nr on) at a time */
        const float *sj = src + (size_t)j0 * ss;
        for (int d0 = 0; d0 < d8; d0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++)
                r[i] = j0 + i < nr ? _mm256_loadu_ps(sj + (size_t)i * ss + d0)
                                   : _mm256_setzero_ps();
            pyllm_transpose8(r);
            for (int u = 0; u < 8; u++) _mm256_storeu_ps(dst + (size_t)(d0 + u) * ld + j0, r[u]);
        }
        for (int d = d8; d < hd; d++)
            for (int i = 0; i < 8; i++)
                dst[(size_t)d * ld + j0 + i] = j0 + i < nr ? sj[(size_t)i * ss + d] : 0.0f;
    }
}
#endif

/* the kernels of one implementation, chosen once per call outside the parallel region */
typedef struct {
    void (*mk)(int m, int n, int kc, const float *a, size_t ars, size_t aks, const float *b,
               size_t ldb, float *c, size_t ldc, int mode, float alpha, const float *rs);
    void (*softmax_fwd)(float *st, int ld, int nq, int nk, int off, float *m, float *l,
                        float *corr);
    void (*softmax_bwd)(float *s, float *dp, int ld, int nrows, int nq, int nk, int diag,
                        const float *lse2, const float *D, float scale);
    float (*exp_row)(float *x, int n, float m);
    float (*dot)(const float *a, const float *b, int n);
    void (*pack_rows)(float *dst, int ld, int rows, const float *src, size_t ss, int nr, int hd);
    void (*pack_trans)(float *dst, int ld, const float *src, size_t ss, int nr, int hd);
    void (*add_rows)(float *dst, size_t ds, const float *src, size_t ss, int n, int hd,
                     int accumulate);
} att_ops;

static att_ops select_ops(void) {
    att_ops o;
    o.mk = mk_c;
    o.softmax_fwd = softmax_fwd_c;
    o.softmax_bwd = softmax_bwd_c;
    o.exp_row = exp_row_c;
    o.dot = pyllm_dot;
    o.pack_rows = pack_rows_c;
    o.pack_trans = pack_trans_c;
    o.add_rows = add_rows_c;
#ifdef PYLLM_X86_AVX2
    if (pyllm_simd_level() == 1) {
        o.mk = mk_avx2;
        o.softmax_fwd = softmax_fwd_avx2;
        o.softmax_bwd = softmax_bwd_avx2;
        o.exp_row = exp_row_avx2;
        o.dot = dot_avx2;
        o.pack_rows = pack_rows_avx2;
        o.pack_trans = pack_trans_avx2;
        o.add_rows = add_rows_avx2;
    }
#endif
    return o;
}

/* head-size padding and the block size for it; 0 when the tiles do not fit (hd > HDP_MAX) */
static int pad_hd(int hd) { return (hd + NR - 1) / NR * NR; }
static int block_for(int hdp) {
    if (hdp <= 64) return 64;
    if (hdp <= 128) return 32;
    if (hdp <= HDP_MAX) return 16;
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Forward: one query block of one head. Q^T is packed once; K and V once per key block.
 * ------------------------------------------------------------------------------------------- */
static void fwd_task(const att_ops *ops, float *out, float *lse, const float *qkv, int b, int h,
                     int qi, int T, int C, int NH, int hd, int hdp, int blk) {
    float QT[TILE], S[TILE], O[TILE], KP[TILE], VP[TILE];
    float m[64], l[64], corr[64];
    size_t C3 = (size_t)3 * C;
    const float *base = qkv + (size_t)b * T * C3 + (size_t)h * hd;
    float alpha = LOG2E / sqrtf((float)hd);
    int qb = blk, q0 = qi * qb, nq = imin(qb, T - q0);
    ops->pack_trans(QT, qb, base + (size_t)q0 * C3, C3, nq, hd);
    for (int t = 0; t < qb * hdp; t++) O[t] = 0.0f;
    for (int r = 0; r < qb; r++) {
        m[r] = -INFINITY;
        l[r] = 0.0f;
    }
    for (int k0 = 0; k0 < q0 + nq; k0 += blk) {
        int nk = imin(blk, T - k0), off = q0 - k0; /* key j sees query r when j <= r + off */
        ops->pack_rows(KP, hdp, blk, base + C + (size_t)k0 * C3, C3, nk, hd);
        ops->pack_rows(VP, hdp, blk, base + 2 * (size_t)C + (size_t)k0 * C3, C3, nk, hd);
        /* S^T = alpha K Q^T, on the tiles with some key j <= query r + off */
        for (int c0 = 0; c0 < nq; c0 += NR) { /* a Q^T slice stays in L1 over the key groups */
            int jn = imin(nk, c0 + NR + off);  /* key groups j0 < jn see a query of c0.. */
            for (int j0 = 0; j0 < jn; j0 += MR)
                ops->mk(MR, NR, hd, KP + (size_t)j0 * hdp, hdp, 1, QT + c0, qb,
                        S + (size_t)j0 * qb + c0, qb, MK_SET, alpha, NULL);
        }
        ops->softmax_fwd(S, qb, nq, nk, off, m, l, corr);
        /* O = O corr + P V (rows that see no key of the block have corr = 1: skipped) */
        for (int r0 = 0; r0 < nq; r0 += MR) {
            int kc = imin(nk, r0 + off + MR);
            if (kc <= 0) continue;
            for (int c0 = 0; c0 < hdp; c0 += NR)
                ops->mk(MR, NR, kc, S + r0, 1, qb, VP + c0, hdp, O + (size_t)r0 * hdp + c0, hdp,
                        MK_RESCALE, 1.0f, corr + r0);
        }
    }
    for (int r = 0; r < nq; r++) {
        float inv = 1.0f / l[r];
        float *o = out + ((size_t)b * T + q0 + r) * C + (size_t)h * hd;
        const float *Or = O + (size_t)r * hdp;
        for (int d = 0; d < hd; d++) o[d] = Or[d] * inv;
        lse[((size_t)b * NH + h) * T + q0 + r] = (m[r] + log2f(l[r])) * LN2;
    }
}

/* d[r] = g_r . o_r over hd, rows of stride ld */
static void row_dots(const att_ops *ops, float *d, const float *g, const float *o, size_t ld,
                     int n, int hd) {
    for (int r = 0; r < n; r++) d[r] = ops->dot(g + (size_t)r * ld, o + (size_t)r * ld, hd);
}

/* ---------------------------------------------------------------------------------------------
 * Backward: one head (all its key blocks and query blocks).
 * ------------------------------------------------------------------------------------------- */
static void bwd_task(const att_ops *ops, float *dqkv, const float *dout, const float *qkv,
                     const float *out, const float *lse, int b, int h, int T, int C, int NH,
                     int hd, int hdp, int blk, int accumulate) {
    float KT[TILE], VT[TILE], K[TILE], dK[TILE], dV[TILE];
    float Q[TILE], G[TILE], P[TILE], dS[TILE];
    float lse2[64], Dq[64], Dh[DMAX];
    size_t C3 = (size_t)3 * C, off = (size_t)b * T * C3 + (size_t)h * hd;
    const float *qb = qkv + off, *kb = qkv + off + C, *vb = qkv + off + 2 * (size_t)C;
    float *dqb = dqkv + off, *dkb = dqkv + off + C, *dvb = dqkv + off + 2 * (size_t)C;
    const float *lseh = lse + ((size_t)b * NH + h) * T;
    float scale = 1.0f / sqrtf((float)hd), alpha = LOG2E * scale;
    int nb = (T + blk - 1) / blk;
    const float *gb = dout + (size_t)b * T * C + (size_t)h * hd;
    if (T <= DMAX) /* D_t = dout_t . out_t of every query, once */
        row_dots(ops, Dh, gb, out + (size_t)b * T * C + (size_t)h * hd, C, T, hd);
    for (int kj = 0; kj < nb; kj++) {
        int k0 = kj * blk, nk = imin(blk, T - k0);
        ops->pack_trans(KT, blk, kb + (size_t)k0 * C3, C3, nk, hd);
        ops->pack_trans(VT, blk, vb + (size_t)k0 * C3, C3, nk, hd);
        ops->pack_rows(K, hdp, blk, kb + (size_t)k0 * C3, C3, nk, hd);
        for (int t = 0; t < blk * hdp; t++) dK[t] = dV[t] = 0.0f;
        for (int qi = kj; qi < nb; qi++) {
            int q0 = qi * blk, nq = imin(blk, T - q0), diag = qi == kj;
            const float *gq = dout + ((size_t)b * T + q0) * C + (size_t)h * hd, *D = Dh + q0;
            if (T > DMAX) {
                row_dots(ops, Dq, gq, out + ((size_t)b * T + q0) * C + (size_t)h * hd, C, nq, hd);
                D = Dq;
            }
            for (int r = 0; r < nq; r++) lse2[r] = lseh[q0 + r] * LOG2E;
            ops->pack_rows(Q, hdp, blk, qb + (size_t)q0 * C3, C3, nq, hd);
            ops->pack_rows(G, hdp, blk, gq, C, nq, hd);
            /* S = alpha Q K^T and dP = dO V^T, on the tiles with some key j <= query i */
            for (int c0 = 0; c0 < nk; c0 += NR) {
                for (int r0 = diag ? c0 / MR * MR : 0; r0 < nq; r0 += MR)
                    ops->mk(MR, NR, hd, Q + (size_t)r0 * hdp, hdp, 1, KT + c0, blk,
                            P + (size_t)r0 * blk + c0, blk, MK_SET, alpha, NULL);
                for (int r0 = diag ? c0 / MR * MR : 0; r0 < nq; r0 += MR)
                    ops->mk(MR, NR, hd, G + (size_t)r0 * hdp, hdp, 1, VT + c0, blk,
                            dS + (size_t)r0 * blk + c0, blk, MK_SET, 1.0f, NULL);
            }
            ops->softmax_bwd(P, dS, blk, blk, nq, nk, diag, lse2, D, scale);
            /* dV += P^T dO, dK += dS^T Q: key rows j, summed over the query rows i >= j */
            for (int j0 = 0; j0 < nk; j0 += MR) {
                int i0 = diag ? j0 : 0;
                if (i0 >= nq) break;
                for (int c0 = 0; c0 < hdp; c0 += NR) {
                    ops->mk(MR, NR, nq - i0, P + (size_t)i0 * blk + j0, 1, blk,
                            G + (size_t)i0 * hdp + c0, hdp, dV + (size_t)j0 * hdp + c0, hdp,
                            MK_ADD, 1.0f, NULL);
                    ops->mk(MR, NR, nq - i0, dS + (size_t)i0 * blk + j0, 1, blk,
                            Q + (size_t)i0 * hdp + c0, hdp, dK + (size_t)j0 * hdp + c0, hdp,
                            MK_ADD, 1.0f, NULL);
                }
            }
            /* dQ += dS K, straight into dqkv (the first key block sets it, unless accumulating:
               every query row sees key block 0) */
            for (int c0 = 0; c0 < hd; c0 += NR)
                for (int r0 = 0; r0 < nq; r0 += MR)
                    ops->mk(imin(MR, nq - r0), imin(NR, hd - c0), diag ? imin(nk, r0 + MR) : nk,
                            dS + (size_t)r0 * blk, blk, 1, K + c0, hdp,
                            dqb + (size_t)(q0 + r0) * C3 + c0, C3,
                            accumulate || kj > 0 ? MK_ADD : MK_SET, 1.0f, NULL);
        }
        ops->add_rows(dkb + (size_t)k0 * C3, C3, dK, hdp, nk, hd, accumulate);
        ops->add_rows(dvb + (size_t)k0 * C3, C3, dV, hdp, nk, hd, accumulate);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Plain per-query paths: head sizes above HDP_MAX, and the decode step.
 * ------------------------------------------------------------------------------------------- */
/* o (hd) = softmax(scale * q . k_j) weighted sum of v_j over j < nkeys; returns the lse.
   k_j = k + j * kstride, v_j = v + j * vstride. */
static float attend_row(const att_ops *ops, float *o, const float *q, const float *k,
                        const float *v, size_t kstride, size_t vstride, int nkeys, int hd,
                        float scale) {
    float s[DB];
    float m = -INFINITY, l = 0.0f, alpha = scale * LOG2E;
    for (int d = 0; d < hd; d++) o[d] = 0.0f;
    for (int j0 = 0; j0 < nkeys; j0 += DB) {
        int n = imin(DB, nkeys - j0);
        float mb = -INFINITY;
        for (int j = 0; j < n; j++) {
            float sj = alpha * ops->dot(q, k + (size_t)(j0 + j) * kstride, hd);
            s[j] = sj;
            mb = sj > mb ? sj : mb;
        }
        float mnew = mb > m ? mb : m;
        float corr = exp2f(m - mnew); /* 0 on the first block (m = -inf) */
        if (j0 > 0)
            for (int d = 0; d < hd; d++) o[d] *= corr;
        l = l * corr + ops->exp_row(s, n, mnew);
        for (int j = 0; j < n; j++) {
            const float *vj = v + (size_t)(j0 + j) * vstride;
            float p = s[j];
            for (int d = 0; d < hd; d++) o[d] += p * vj[d];
        }
        m = mnew;
    }
    float inv = 1.0f / l;
    for (int d = 0; d < hd; d++) o[d] *= inv;
    return (m + log2f(l)) * LN2;
}

/* the plain backward of one head */
static void bwd_plain(float *dqkv, const float *dout, const float *qkv, const float *out,
                      const float *lse, int b, int h, int T, int C, int NH, int hd,
                      int accumulate) {
    float scale = 1.0f / sqrtf((float)hd);
    size_t C3 = (size_t)3 * C, off = (size_t)b * T * C3 + (size_t)h * hd;
    const float *qb = qkv + off, *kb = qkv + off + C, *vb = qkv + off + 2 * (size_t)C;
    float *dqb = dqkv + off, *dkb = dqkv + off + C, *dvb = dqkv + off + 2 * (size_t)C;
    if (!accumulate) /* the head's dq, dk, dv columns start from 0 */
        for (int t = 0; t < T; t++) {
            size_t r = (size_t)t * C3;
            for (int d = 0; d < hd; d++) dqb[r + d] = dkb[r + d] = dvb[r + d] = 0.0f;
        }
    for (int t = 0; t < T; t++) {
        size_t ro = ((size_t)b * T + t) * C + (size_t)h * hd;
        const float *g = dout + ro, *q = qb + (size_t)t * C3;
        float *dq = dqb + (size_t)t * C3;
        float D = pyllm_dot(g, out + ro, hd);
        float L = lse[((size_t)b * NH + h) * T + t];
        for (int j = 0; j <= t; j++) {
            const float *kj = kb + (size_t)j * C3, *vj = vb + (size_t)j * C3;
            float p = expf(scale * pyllm_dot(q, kj, hd) - L);
            float ds = p * (pyllm_dot(g, vj, hd) - D) * scale;
            float *dkj = dkb + (size_t)j * C3, *dvj = dvb + (size_t)j * C3;
            for (int d = 0; d < hd; d++) {
                dvj[d] += p * g[d];
                dq[d] += ds * kj[d];
                dkj[d] += ds * q[d];
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Entry points.
 * ------------------------------------------------------------------------------------------- */
/* out (B,T,C); lse (B,NH,T); qkv (B,T,3C) */
int attention_forward(float *out, float *lse, const float *qkv, int B, int T, int C, int NH) {
    if (!out || !lse || !qkv) return PYLLM_ERR_NULL;
    if (B < 0 || T < 0 || NH < 1 || C < NH || C % NH != 0) return PYLLM_ERR_SIZE;
    int hd = C / NH, BH = B * NH, hdp = pad_hd(hd), blk = block_for(hdp);
    att_ops ops = select_ops();
    if (blk == 0) { /* large heads: one query at a time */
        float scale = 1.0f / sqrtf((float)hd);
        size_t C3 = (size_t)3 * C;
        PYLLM_PARALLEL_FOR
        for (int bh = 0; bh < BH; bh++) {
            int b = bh / NH, h = bh % NH;
            const float *base = qkv + (size_t)b * T * C3 + (size_t)h * hd;
            for (int t = 0; t < T; t++) {
                float *o = out + ((size_t)b * T + t) * C + (size_t)h * hd;
                lse[(size_t)bh * T + t] = attend_row(&ops, o, base + (size_t)t * C3, base + C,
                                                     base + 2 * (size_t)C, C3, C3, t + 1, hd,
                                                     scale);
            }
        }
        return PYLLM_OK;
    }
    int nb = (T + blk - 1) / blk, ntask = BH * nb;
    /* head by head (its K, V stay in cache), the largest query blocks first */
    PYLLM_PARALLEL_FOR_DYNAMIC
    for (int task = 0; task < ntask; task++) {
        int qi = nb - 1 - task % nb, bh = task / nb;
        fwd_task(&ops, out, lse, qkv, bh / NH, bh % NH, qi, T, C, NH, hd, hdp, blk);
    }
    return PYLLM_OK;
}

/* dqkv (B,T,3C) (+)= gradient; dout, out (B,T,C); qkv (B,T,3C); lse (B,NH,T) */
int attention_backward(float *dqkv, const float *dout, const float *qkv, const float *out,
                       const float *lse, int B, int T, int C, int NH, int accumulate) {
    if (!dqkv || !dout || !qkv || !out || !lse) return PYLLM_ERR_NULL;
    if (B < 0 || T < 0 || NH < 1 || C < NH || C % NH != 0) return PYLLM_ERR_SIZE;
    int hd = C / NH, BH = B * NH, hdp = pad_hd(hd), blk = block_for(hdp);
    att_ops ops = select_ops();
    PYLLM_PARALLEL_FOR_DYNAMIC
    for (int bh = 0; bh < BH; bh++) {
        if (blk == 0)
            bwd_plain(dqkv, dout, qkv, out, lse, bh / NH, bh % NH, T, C, NH, hd, accumulate);
        else
            bwd_task(&ops, dqkv, dout, qkv, out, lse, bh / NH, bh % NH, T, C, NH, hd, hdp, blk,
                     accumulate);
    }
    return PYLLM_OK;
}

/* out (B,C); kcache, vcache (B,NH,maxT,hd); qkv (B,3C) */
int attention_decode(float *out, float *kcache, float *vcache, const float *qkv,
                     int B, int pos, int maxT, int C, int NH) {
    if (!out || !kcache || !vcache || !qkv) return PYLLM_ERR_NULL;
    if (B < 0 || NH < 1 || C < NH || C % NH != 0) return PYLLM_ERR_SIZE;
    if (pos < 0 || pos >= maxT) return PYLLM_ERR_INDEX;
    int hd = C / NH, BH = B * NH;
    float scale = 1.0f / sqrtf((float)hd);
    att_ops ops = select_ops();
    /* threads only when there is enough to share (the keys read): early positions run alone */
    PYLLM_PARALLEL_FOR_IF((size_t)BH * (pos + 1) * hd >= 32768)
    for (int bh = 0; bh < BH; bh++) {
        int b = bh / NH, h = bh % NH;
        const float *q = qkv + (size_t)b * 3 * C + (size_t)h * hd;
        float *kc = kcache + (size_t)bh * maxT * hd, *vc = vcache + (size_t)bh * maxT * hd;
        for (int d = 0; d < hd; d++) {
            kc[(size_t)pos * hd + d] = q[C + d];
            vc[(size_t)pos * hd + d] = q[2 * (size_t)C + d];
        }
        attend_row(&ops, out + (size_t)b * C + (size_t)h * hd, q, kc, vc, hd, hd, pos + 1, hd,
                   scale);
    }
    return PYLLM_OK;
}

/* probs (B,NH,T,T); qkv (B,T,3C); lse (B,NH,T). The probabilities for an attention map (a
 * diagnostic, not the training path): p_ts = exp(scale q_t . k_s - lse_t) for s <= t with the lse
 * that attention_forward saved, so each row is the distribution that forward pass used (it sums
 * to 1 up to rounding); 0 above the diagonal. One task per (b, h, t) row. */
int attention_probs(float *probs, const float *qkv, const float *lse, int B, int T, int C,
                    int NH) {
    if (!probs || !qkv || !lse) return PYLLM_ERR_NULL;
    if (B < 0 || T < 0 || NH < 1 || C < NH || C % NH != 0) return PYLLM_ERR_SIZE;
    int hd = C / NH;
    float scale = 1.0f / sqrtf((float)hd);
    if ((int64_t)B * NH * T > 2147483647) return PYLLM_ERR_SIZE;
    int rows = B * NH * T;
    PYLLM_PARALLEL_FOR_IF((size_t)rows * T * hd >= 65536)
    for (int r = 0; r < rows; r++) {
        int t = (int)(r % T), h = (int)(r / T % NH), b = (int)(r / T / NH);
        const float *q = qkv + ((size_t)b * T + t) * 3 * C + (size_t)h * hd;
        float l = lse[r], *p = probs + (size_t)r * T;
        for (int s = 0; s <= t; s++) {
            const float *k = qkv + ((size_t)b * T + s) * 3 * C + C + (size_t)h * hd;
            p[s] = expf(scale * pyllm_dot(q, k, hd) - l);
        }
        for (int s = t + 1; s < T; s++) p[s] = 0.0f;
    }
    return PYLLM_OK;
}
