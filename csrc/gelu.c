/* gelu.c -- GELU, tanh approximation (as GPT-2).
 *
 * forward:  y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 * backward: dy/dx = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
 */
#include "internal.h"

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

/* out, inp (n) */
int gelu_forward(float *out, const float *inp, int64_t n) {
    if (!out || !inp) return PYLLM_ERR_NULL;
    if (n < 0) return PYLLM_ERR_SIZE;
    int nb = pyllm_nblocks(n);
    PYLLM_PARALLEL_FOR
    for (int blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * PYLLM_FLAT_BLOCK;
        size_t i1 = i0 + PYLLM_FLAT_BLOCK < (size_t)n ? i0 + PYLLM_FLAT_BLOCK : (size_t)n;
        for (size_t i = i0; i < i1; i++) {
            float x = inp[i];
            float u = GELU_K * (x + GELU_A * x * x * x);
            out[i] = 0.5f * x * (1.0f + tanhf(u));
        }
    }
    return PYLLM_OK;
}

/* dinp, inp, dout (n); dinp += dout * gelu'(inp) */
int gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n) {
    if (!dinp || !inp || !dout) return PYLLM_ERR_NULL;
    if (n < 0) return PYLLM_ERR_SIZE;
    int nb = pyllm_nblocks(n);
    PYLLM_PARALLEL_FOR
    for (int blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * PYLLM_FLAT_BLOCK;
        size_t i1 = i0 + PYLLM_FLAT_BLOCK < (size_t)n ? i0 + PYLLM_FLAT_BLOCK : (size_t)n;
        for (size_t i = i0; i < i1; i++) {
            float x = inp[i];
            float u = GELU_K * (x + GELU_A * x * x * x);
            float th = tanhf(u);
            float du = GELU_K * (1.0f + 3.0f * GELU_A * x * x);
            float grad = 0.5f * (1.0f + th) + 0.5f * x * (1.0f - th * th) * du;
            dinp[i] += grad * dout[i];
        }
    }
    return PYLLM_OK;
}
