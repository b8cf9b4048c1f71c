/* residual.c -- the residual add and its backward (where no fused kernel covers it).
 *
 * forward:  out = inp1 + inp2
 * backward: dinp1 += dout;  dinp2 += dout
 */
#include "internal.h"

/* out, inp1, inp2 (n) */
int residual_forward(float *out, const float *inp1, const float *inp2, int64_t n) {
    if (!out || !inp1 || !inp2) return PYLLM_ERR_NULL;
    if (n < 0) return PYLLM_ERR_SIZE;
    int nb = pyllm_nblocks(n);
    PYLLM_PARALLEL_FOR
    for (int blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * PYLLM_FLAT_BLOCK;
        size_t i1 = i0 + PYLLM_FLAT_BLOCK < (size_t)n ? i0 + PYLLM_FLAT_BLOCK : (size_t)n;
        for (size_t i = i0; i < i1; i++) out[i] = inp1[i] + inp2[i];
    }
    return PYLLM_OK;
}

/* dinp1, dinp2, dout (n); either gradient may be NULL */
int residual_backward(float *dinp1, float *dinp2, const float *dout, int64_t n) {
    if (!dout) return PYLLM_ERR_NULL;
    if (n < 0) return PYLLM_ERR_SIZE;
    int nb = pyllm_nblocks(n);
    PYLLM_PARALLEL_FOR
    for (int blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * PYLLM_FLAT_BLOCK;
        size_t i1 = i0 + PYLLM_FLAT_BLOCK < (size_t)n ? i0 + PYLLM_FLAT_BLOCK : (size_t)n;
        if (dinp1) for (size_t i = i0; i < i1; i++) dinp1[i] += dout[i];
        if (dinp2) for (size_t i = i0; i < i1; i++) dinp2[i] += dout[i];
    }
    return PYLLM_OK;
}
