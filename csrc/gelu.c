/* gelu.c -- GELU, tanh approximation (as GPT-2).
 *
 * forward:  y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
 * backward: dy/dx = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
 *
 * Computed through the logistic function, which needs one exp and no cancellation:
 *   0.5 (1 + tanh(u)) = s = 1 / (1 + exp(-2u)),   0.5 (1 - tanh(u)^2) = 2 s (1 - s)
 * with z = exp(-2|u|) in (0, 1] (never overflows) and q = 1 / (1 + z):
 *   s = q (u >= 0),  z q (u < 0);     s (1 - s) = z q^2 (either sign).
 * Element-wise loops over fixed blocks, vectorised (vm_expf_nonpos) and split over threads.
 */
#include "vecmath.h"

#define GELU_K 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_A 0.044715f

/* s = 0.5 (1 + tanh(u)) = 1 / (1 + exp(-2u)) for u = sqrt(2/pi) (x + 0.044715 x^3), computed
   from z = exp(-2|u|) so nothing overflows; *zq2 = z q^2 = s (1 - s), the derivative's factor */
VM_INLINE float gelu_gate(float x, float *zq2) {
    float u = GELU_K * (x + GELU_A * x * x * x);
    float au = vm_u2f(vm_f2u(u) & 0x7FFFFFFFu);
    float z = vm_expf_nonpos(-2.0f * au);
    float q = 1.0f / (1.0f + z);
    *zq2 = z * q * q;
    return vm_select(u >= 0.0f, q, z * q);
}

VM_INLINE void gelu_forward_block(float *out, const float *inp, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float zq2;
        out[i] = inp[i] * gelu_gate(inp[i], &zq2);
    }
}

VM_INLINE float gelu_grad(float x) {
    float zq2;
    float s = gelu_gate(x, &zq2);
    float du = GELU_K * (1.0f + 3.0f * GELU_A * x * x);
    return s + 2.0f * x * zq2 * du;
}

VM_INLINE void gelu_backward_block(float *dinp, const float *inp, const float *dout, size_t n,
                                   int accumulate) {
    if (accumulate)
        for (size_t i = 0; i < n; i++) dinp[i] += gelu_grad(inp[i]) * dout[i];
    else
        for (size_t i = 0; i < n; i++) dinp[i] = gelu_grad(inp[i]) * dout[i];
}

static void gelu_forward_c(float *out, const float *inp, size_t n) {
    gelu_forward_block(out, inp, n);
}
static void gelu_backward_c(float *dinp, const float *inp, const float *dout, size_t n,
                            int accumulate) {
    gelu_backward_block(dinp, inp, dout, n, accumulate);
}
#if VM_HAVE_AVX2
VM_TARGET_AVX2 static void gelu_forward_avx2(float *out, const float *inp, size_t n) {
    gelu_forward_block(out, inp, n);
}
VM_TARGET_AVX2 static void gelu_backward_avx2(float *dinp, const float *inp, const float *dout,
                                              size_t n, int accumulate) {
    gelu_backward_block(dinp, inp, dout, n, accumulate);
}
#define PICK(name) (vm_use_avx2() ? name##_avx2 : name##_c)
#else
#define PICK(name) (name##_c)
#endif

/* out, inp (n) */
int gelu_forward(float *out, const float *inp, int64_t n) {
    if (!out || !inp) return PYLLM_ERR_NULL;
    if (n < 0) return PYLLM_ERR_SIZE;
    void (*block)(float *, const float *, size_t) = PICK(gelu_forward);
    int nb = pyllm_nblocks(n);
    PYLLM_PARALLEL_FOR_IF(nb > 1)
    for (int blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * PYLLM_FLAT_BLOCK;
        size_t i1 = i0 + PYLLM_FLAT_BLOCK < (size_t)n ? i0 + PYLLM_FLAT_BLOCK : (size_t)n;
        block(out + i0, inp + i0, i1 - i0);
    }
    return PYLLM_OK;
}

/* dinp, inp, dout (n); dinp (+)= dout * gelu'(inp) */
int gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n, int accumulate) {
    if (!dinp || !inp || !dout) return PYLLM_ERR_NULL;
    if (n < 0) return PYLLM_ERR_SIZE;
    void (*block)(float *, const float *, const float *, size_t, int) = PICK(gelu_backward);
    int nb = pyllm_nblocks(n);
    PYLLM_PARALLEL_FOR_IF(nb > 1)
    for (int blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * PYLLM_FLAT_BLOCK;
        size_t i1 = i0 + PYLLM_FLAT_BLOCK < (size_t)n ? i0 + PYLLM_FLAT_BLOCK : (size_t)n;
        block(dinp + i0, inp + i0, dout + i0, i1 - i0, accumulate);
    }
    return PYLLM_OK;
}
