/* residual.c -- the residual add and its backward (where no fused kernel covers it).
 *
 * forward:  out = inp1 + inp2
 * backward: dinp1 += dout;  dinp2 += dout      (one pass over dout when both are wanted)
 *
 * Memory-bound element-wise loops over fixed blocks, vectorised by the compiler and split over
 * threads.
 */
#include "vecmath.h"

VM_INLINE void residual_forward_block(float *out, const float *inp1, const float *inp2, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = inp1[i] + inp2[i];
}

VM_INLINE void residual_backward_block(float *dinp1, float *dinp2, const float *dout, size_t n) {
    if (dinp1 && dinp2) {
        for (size_t i = 0; i < n; i++) {
            float d = dout[i];
            dinp1[i] += d;
            dinp2[i] += d;
        }
    } else if (dinp1) {
        for (size_t i = 0; i < n; i++) dinp1[i] += dout[i];
    } else if (dinp2) {
        for (size_t i = 0; i < n; i++) dinp2[i] += dout[i];
    }
}

static void residual_forward_c(float *out, const float *inp1, const float *inp2, size_t n) {
    residual_forward_block(out, inp1, inp2, n);
}
static void residual_backward_c(float *dinp1, float *dinp2, const float *dout, size_t n) {
    residual_backward_block(dinp1, dinp2, dout, n);
}
#if VM_HAVE_AVX2
VM_TARGET_AVX2 static void residual_forward_avx2(float *out, const float *inp1, const float *inp2,
                                                 size_t n) {
    residual_forward_block(out, inp1, inp2, n);
}
VM_TARGET_AVX2 static void residual_backward_avx2(float *dinp1, float *dinp2, const float *dout,
                                                  size_t n) {
    residual_backward_block(dinp1, dinp2, dout, n);
}
#define PICK(name) (vm_use_avx2() ? name##_avx2 : name##_c)
#else
#define PICK(name) (name##_c)
#endif

/* out, inp1, inp2 (n) */
int residual_forward(float *out, const float *inp1, const float *inp2, int64_t n) {
    if (!out || !inp1 || !inp2) return PYLLM_ERR_NULL;
    if (n < 0) return PYLLM_ERR_SIZE;
    void (*block)(float *, const float *, const float *, size_t) = PICK(residual_forward);
    int nb = pyllm_nblocks(n);
    PYLLM_PARALLEL_FOR_IF(nb > 1)
    for (int blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * PYLLM_FLAT_BLOCK;
        size_t i1 = i0 + PYLLM_FLAT_BLOCK < (size_t)n ? i0 + PYLLM_FLAT_BLOCK : (size_t)n;
        block(out + i0, inp1 + i0, inp2 + i0, i1 - i0);
    }
    return PYLLM_OK;
}

/* dinp1, dinp2, dout (n); either gradient may be NULL */
int residual_backward(float *dinp1, float *dinp2, const float *dout, int64_t n) {
    if (!dout) return PYLLM_ERR_NULL;
    if (n < 0) return PYLLM_ERR_SIZE;
    if (!dinp1 && !dinp2) return PYLLM_OK;
    void (*block)(float *, float *, const float *, size_t) = PICK(residual_backward);
    int nb = pyllm_nblocks(n);
    PYLLM_PARALLEL_FOR_IF(nb > 1)
    for (int blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * PYLLM_FLAT_BLOCK;
        size_t i1 = i0 + PYLLM_FLAT_BLOCK < (size_t)n ? i0 + PYLLM_FLAT_BLOCK : (size_t)n;
        block(dinp1 ? dinp1 + i0 : NULL, dinp2 ? dinp2 + i0 : NULL, dout + i0, i1 - i0);
    }
    return PYLLM_OK;
}
