/* quant.c -- Q8_0 weights: int8 in blocks of 32 consecutive inputs, one float scale per block.
 *
 * q8_matmul_forward:  out (N, OC) = inp (N, C) @ W^T + bias (OC) + residual (N, OC), where
 *   W (OC, C) is q (OC, C) int8 times scales (OC, nb), nb = ceil(C / 32):
 *   W[o, i] = scales[o, i / 32] * q[o, i]   (the last block may be shorter than 32).
 *   out[n, o] = sum_k scales[o, k] * (inp[n, block k] . q[o, block k]) in float32: the weights are
 *   widened in registers (exactly: an int8 is a float), never written out as floats.
 * Sampling reads every weight once per token, so this is memory-bound: a quarter of float32's
 * bytes. Outputs o are split over threads and each is summed in one fixed order: the same bits
 * for any thread count. The AVX2 + FMA path is chosen at run time (pyllm_simd_level() == 1).
 */
#include "internal.h"

#define Q8_BLOCK 32

/* x . w over n <= 32 entries, 8 partial sums combined in a fixed order */
static float q8_block_dot(const float *x, const int8_t *w, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int u = 0; u < 8; u++) acc[u] += x[i + u] * (float)w[i + u];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; i < n; i++) s += x[i] * (float)w[i];
    return s;
}

/* one output: sum over the blocks of a row q (C) with its scales (nb) against x (C) */
static float q8_row_c(const float *x, const int8_t *q, const float *sc, int C) {
    float s = 0.0f;
    for (int k = 0, i0 = 0; i0 < C; k++, i0 += Q8_BLOCK) {
        const int n = C - i0 < Q8_BLOCK ? C - i0 : Q8_BLOCK;
        s += sc[k] * q8_block_dot(x + i0, q + i0, n);
    }
    return s;
}

#ifdef PYLLM_X86_AVX2
/* 8 int8 weights widened to floats */
__attribute__((target("avx2,fma"))) static inline __m256 q8_load8(const int8_t *w) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)w)));
}

/* the same sum with whole blocks in AVX2: each block's 32 products in one 8-lane register (four
   FMAs), scaled and added to an 8-lane total; the total's lanes, then the short last block */
__attribute__((target("avx2,fma"))) static float q8_row_avx2(const float *x, const int8_t *q,
                                                            const float *sc, int C) {
    __m256 total = _mm256_setzero_ps();
    const int full = C / Q8_BLOCK;
    for (int k = 0; k < full; k++) {
        const float *xk = x + (size_t)k * Q8_BLOCK;
        const int8_t *qk = q + (size_t)k * Q8_BLOCK;
        __m256 b = _mm256_mul_ps(q8_load8(qk), _mm256_loadu_ps(xk));
        b = _mm256_fmadd_ps(q8_load8(qk + 8), _mm256_loadu_ps(xk + 8), b);
        b = _mm256_fmadd_ps(q8_load8(qk + 16), _mm256_loadu_ps(xk + 16), b);
        b = _mm256_fmadd_ps(q8_load8(qk + 24), _mm256_loadu_ps(xk + 24), b);
        total = _mm256_fmadd_ps(_mm256_set1_ps(sc[k]), b, total);
    }
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(total), _mm256_extractf128_ps(total, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    float s = _mm_cvtss_f32(h);
    if (full * Q8_BLOCK < C) {
        const int i0 = full * Q8_BLOCK;
        s += sc[full] * q8_block_dot(x + i0, q + i0, C - i0);
    }
    return s;
}
#endif

int q8_matmul_forward(float *out, const float *inp, const int8_t *q, const float *scales,
                      const float *bias, const float *residual, int N, int C, int OC) {
    if (N < 0 || C < 1 || OC < 1) return PYLLM_ERR_SIZE;
    if (!out || !inp || !q || !scales) return PYLLM_ERR_NULL;
    const int nb = (C + Q8_BLOCK - 1) / Q8_BLOCK;
    float (*row)(const float *, const int8_t *, const float *, int) = q8_row_c;
#ifdef PYLLM_X86_AVX2
    if (pyllm_simd_level() == 1) row = q8_row_avx2;
#endif
    PYLLM_PARALLEL_FOR
    for (int o = 0; o < OC; o++) {
        const int8_t *qo = q + (size_t)o * C;
        const float *so = scales + (size_t)o * nb;
        for (int n = 0; n < N; n++) {
            float y = row(inp + (size_t)n * C, qo, so, C);
            if (bias) y += bias[o];
            if (residual) y += residual[(size_t)n * OC + o];
            out[(size_t)n * OC + o] = y;
        }
    }
    return PYLLM_OK;
}

/* w (OC, C) float32 = q * scales, rows over threads (prefill's GEMM takes the float matrix) */
int q8_dequantize(float *w, const int8_t *q, const float *scales, int OC, int C) {
    if (OC < 1 || C < 1) return PYLLM_ERR_SIZE;
    if (!w || !q || !scales) return PYLLM_ERR_NULL;
    const int nb = (C + Q8_BLOCK - 1) / Q8_BLOCK;
    PYLLM_PARALLEL_FOR
    for (int o = 0; o < OC; o++)
        for (int i = 0; i < C; i++)
            w[(size_t)o * C + i] = scales[(size_t)o * nb + i / Q8_BLOCK] * (float)q[(size_t)o * C + i];
    return PYLLM_OK;
}

/* out (C) = row r of a Q8_0 matrix (C inputs), dequantized, plus add (C) when not NULL */
static void q8_row_dequant(float *out, const int8_t *q, const float *scales, int r, int C,
                           const float *add) {
    const int nb = (C + Q8_BLOCK - 1) / Q8_BLOCK;
    const int8_t *qr = q + (size_t)r * C;
    const float *sr = scales + (size_t)r * nb;
    for (int i = 0; i < C; i++) out[i] = sr[i / Q8_BLOCK] * (float)qr[i] + (add ? add[i] : 0.0f);
}

/* q8_decode_step: gpt_decode_step (decode.c) for a Q8_0 model. weights holds 6 + 16 L pointers:
   wte.q, wte.scale, wpe.q, wpe.scale, then per layer ln_1.w, ln_1.b, c_attn.q, c_attn.scale,
   c_attn.b, attn.c_proj.q, .scale, .b, ln_2.w, ln_2.b, c_fc.q, .scale, .b, mlp.c_proj.q, .scale,
   .b, then ln_f.w, ln_f.b (int8 for the .q entries, float32 for the rest). */
int q8_decode_step(float *logits, float *cache, float *scratch, const int32_t *tok,
                   const void *const *weights, int B, int pos, int maxT, int V, int C, int NH,
                   int L) {
    if (!logits || !cache || !scratch || !tok || !weights) return PYLLM_ERR_NULL;
    if (B < 1 || V < 1 || L < 1 || NH < 1 || C < NH || C % NH != 0 || maxT < 1)
        return PYLLM_ERR_SIZE;
    if (pos < 0 || pos >= maxT) return PYLLM_ERR_INDEX;
    for (int i = 0; i < 6 + 16 * L; i++)
        if (!weights[i]) return PYLLM_ERR_NULL;
    for (int b = 0; b < B; b++)
        if (tok[b] < 0 || tok[b] >= V) return PYLLM_ERR_INDEX;
#define WQ(i) ((const int8_t *)weights[i])
#define WF(i) ((const float *)weights[i])
    size_t BC = (size_t)B * C, layer_cache = (size_t)2 * B * maxT * C;
    float *x = scratch, *x2 = x + BC, *h = x2 + BC, *qkv = h + BC, *att = qkv + 3 * BC;
    float *fc = att + BC, *fcg = fc + 4 * BC, *pe = fcg + 4 * BC;
    q8_row_dequant(pe, WQ(2), WF(3), pos, C, NULL);
    for (int b = 0; b < B; b++) q8_row_dequant(x + (size_t)b * C, WQ(0), WF(1), tok[b], C, pe);
    int st = PYLLM_OK;
    for (int l = 0; st == PYLLM_OK && l < L; l++) {
        const int w = 4 + 16 * l;
        float *kc = cache + (size_t)l * layer_cache, *vc = kc + layer_cache / 2;
        if ((st = layernorm_forward(h, NULL, NULL, x, WF(w), WF(w + 1), B, C)) ||
            (st = q8_matmul_forward(qkv, h, WQ(w + 2), WF(w + 3), WF(w + 4), NULL, B, C, 3 * C)) ||
            (st = attention_decode(att, kc, vc, qkv, B, pos, maxT, C, NH)) ||
            (st = q8_matmul_forward(x2, att, WQ(w + 5), WF(w + 6), WF(w + 7), x, B, C, C)) ||
            (st = layernorm_forward(h, NULL, NULL, x2, WF(w + 8), WF(w + 9), B, C)) ||
            (st = q8_matmul_forward(fc, h, WQ(w + 10), WF(w + 11), WF(w + 12), NULL, B, C,
                                    4 * C)) ||
            (st = gelu_forward(fcg, fc, 4 * (int64_t)BC)) ||
            (st = q8_matmul_forward(x, fcg, WQ(w + 13), WF(w + 14), WF(w + 15), x2, B, 4 * C, C)))
            break;
    }
    const int f = 4 + 16 * L;
    if (st == PYLLM_OK) st = layernorm_forward(h, NULL, NULL, x, WF(f), WF(f + 1), B, C);
    if (st == PYLLM_OK) st = q8_matmul_forward(logits, h, WQ(0), WF(1), NULL, NULL, B, C, V);
#undef WQ
#undef WF
    return st;
}
