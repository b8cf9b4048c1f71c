/* matmul.c -- the dense layer (GPT-2's Conv1D: weight stored (in, out)) and a general GEMM.
 *
 * forward:  out = inp @ weight + bias
 * backward: dinp += dout @ weight^T;  dweight += inp^T @ dout;  dbias += sum_N dout
 * All three products go through pyllm_sgemm, which splits the work over blocks of the output
 * and keeps each output's K-sum inside one thread, in a fixed order.
 */
#include "internal.h"

int pyllm_simd_level(void) { return 0; }
int pyllm_set_simd_level(int level) { (void)level; return 0; }

#define A_(i, k) (trans_a ? a[(size_t)(k) * lda + (i)] : a[(size_t)(i) * lda + (k)])

/* c (M,N) [+]= op(a) (M,K) @ op(b) (K,N); lda, ldb, ldc are the stored row lengths */
void pyllm_sgemm(int M, int N, int K, const float *a, int lda, int trans_a,
                 const float *b, int ldb, int trans_b, float *c, int ldc, int accumulate) {
    const int MB = 8;
    int nblocks = (M + MB - 1) / MB;
    PYLLM_PARALLEL_FOR
    for (int blk = 0; blk < nblocks; blk++) {
        int i0 = blk * MB, i1 = i0 + MB < M ? i0 + MB : M;
        for (int i = i0; i < i1; i++) {
            float *ci = c + (size_t)i * ldc;
            if (!accumulate)
                for (int j = 0; j < N; j++) ci[j] = 0.0f;
            if (!trans_b) {
                for (int k = 0; k < K; k++) {
                    float aik = A_(i, k);
                    const float *bk = b + (size_t)k * ldb;
                    for (int j = 0; j < N; j++) ci[j] += aik * bk[j];
                }
            } else {
                for (int j = 0; j < N; j++) {
                    const float *bj = b + (size_t)j * ldb;
                    float s = 0.0f;
                    for (int k = 0; k < K; k++) s += A_(i, k) * bj[k];
                    ci[j] += s;
                }
            }
        }
    }
}

int gemm(float *c, const float *a, const float *b, int M, int N, int K,
         int trans_a, int trans_b, int accumulate) {
    if (!c || !a || !b) return PYLLM_ERR_NULL;
    if (M < 0 || N < 0 || K < 0) return PYLLM_ERR_SIZE;
    pyllm_sgemm(M, N, K, a, trans_a ? M : K, trans_a, b, trans_b ? K : N, trans_b, c, N,
                accumulate);
    return PYLLM_OK;
}

/* out (N,OC); inp (N,C); weight (C,OC); bias (OC) or NULL */
int matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                   int N, int C, int OC) {
    if (!out || !inp || !weight) return PYLLM_ERR_NULL;
    if (N < 0 || C < 0 || OC < 0) return PYLLM_ERR_SIZE;
    if (bias) {
        PYLLM_PARALLEL_FOR
        for (int i = 0; i < N; i++)
            for (int j = 0; j < OC; j++) out[(size_t)i * OC + j] = bias[j];
    }
    pyllm_sgemm(N, OC, C, inp, C, 0, weight, OC, 0, out, OC, bias != NULL);
    return PYLLM_OK;
}

/* dinp, inp (N,C); dweight, weight (C,OC); dbias (OC); dout (N,OC) */
int matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                    const float *inp, const float *weight, int N, int C, int OC) {
    if (!dout || !inp || !weight) return PYLLM_ERR_NULL;
    if (N < 0 || C < 0 || OC < 0) return PYLLM_ERR_SIZE;
    if (dinp) pyllm_sgemm(N, C, OC, dout, OC, 0, weight, OC, 1, dinp, C, 1);
    if (dweight) pyllm_sgemm(C, OC, N, inp, C, 1, dout, OC, 0, dweight, OC, 1);
    if (dbias) {
        const int CB = 64;
        int nslices = (OC + CB - 1) / CB;
        PYLLM_PARALLEL_FOR
        for (int s = 0; s < nslices; s++) {
            int c0 = s * CB, c1 = c0 + CB < OC ? c0 + CB : OC;
            float acc[64];
            for (int j = 0; j < CB; j++) acc[j] = 0.0f;
            for (int i = 0; i < N; i++) {
                const float *g = dout + (size_t)i * OC;
                for (int j = c0; j < c1; j++) acc[j - c0] += g[j];
            }
            for (int j = c0; j < c1; j++) dbias[j] += acc[j - c0];
        }
    }
    return PYLLM_OK;
}
