/* adamw.c -- the AdamW update, the squared gradient norm and in-place scaling.
 *
 * AdamW (Loshchilov & Hutter; as torch.optim.AdamW), step t >= 1:
 *   m = b1 m + (1-b1) g;   v = b2 v + (1-b2) g^2
 *   p = p - lr * ( (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * p )
 */
#include "internal.h"

/* params, grads, m, v (n) */
int adamw_update(float *params, const float *grads, float *m, float *v, int64_t n, float lr,
                 float beta1, float beta2, float eps, float weight_decay, int step) {
    if (!params || !grads || !m || !v) return PYLLM_ERR_NULL;
    if (n < 0 || step < 1) return PYLLM_ERR_SIZE;
    float bc1 = 1.0f - powf(beta1, (float)step);
    float bc2 = 1.0f - powf(beta2, (float)step);
    int nb = pyllm_nblocks(n);
    PYLLM_PARALLEL_FOR
    for (int blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * PYLLM_FLAT_BLOCK;
        size_t i1 = i0 + PYLLM_FLAT_BLOCK < (size_t)n ? i0 + PYLLM_FLAT_BLOCK : (size_t)n;
        for (size_t i = i0; i < i1; i++) {
            float g = grads[i];
            float mi = beta1 * m[i] + (1.0f - beta1) * g;
            float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
            m[i] = mi;
            v[i] = vi;
            float mhat = mi / bc1, vhat = vi / bc2;
            params[i] -= lr * (mhat / (sqrtf(vhat) + eps) + weight_decay * params[i]);
        }
    }
    return PYLLM_OK;
}

/* x (n). The array is cut into fixed blocks (independent of the thread count); each block is
   summed in double in order, then the block sums are added in order: same bits for any threads. */
int norm_squared(double *out, const float *x, int64_t n) {
    if (!out || !x) return PYLLM_ERR_NULL;
    if (n < 0) return PYLLM_ERR_SIZE;
    enum { NPART = 256 };
    double part[NPART];
    size_t chunk = ((size_t)n + NPART - 1) / NPART;
    PYLLM_PARALLEL_FOR
    for (int p = 0; p < NPART; p++) {
        size_t i0 = (size_t)p * chunk, i1 = i0 + chunk;
        if (i0 > (size_t)n) i0 = (size_t)n;
        if (i1 > (size_t)n) i1 = (size_t)n;
        double s = 0.0;
        for (size_t i = i0; i < i1; i++) s += (double)x[i] * (double)x[i];
        part[p] = s;
    }
    double total = 0.0;
    for (int p = 0; p < NPART; p++) total += part[p];
    *out = total;
    return PYLLM_OK;
}

/* x (n) */
int scale_inplace(float *x, float s, int64_t n) {
    if (!x) return PYLLM_ERR_NULL;
    if (n < 0) return PYLLM_ERR_SIZE;
    int nb = pyllm_nblocks(n);
    PYLLM_PARALLEL_FOR
    for (int blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * PYLLM_FLAT_BLOCK;
        size_t i1 = i0 + PYLLM_FLAT_BLOCK < (size_t)n ? i0 + PYLLM_FLAT_BLOCK : (size_t)n;
        for (size_t i = i0; i < i1; i++) x[i] *= s;
    }
    return PYLLM_OK;
}
