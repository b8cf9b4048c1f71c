/* adamw.c -- the AdamW update, the squared gradient norm and in-place scaling.
 *
 * AdamW (Loshchilov & Hutter; as torch.optim.AdamW), step t >= 1:
 *   m = b1 m + (1-b1) g;   v = b2 v + (1-b2) g^2
 *   p = p - lr * ( (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps) + wd * p )
 *
 * One pass over the four arrays, in strips of ADAM_STRIP elements: a vectorised loop updates m
 * and v and keeps the bias-corrected moments in two small buffers, the square roots are taken 4 at
 * a time (vm_sqrt_inplace), and a second vectorised loop updates p. Fixed blocks split over
 * threads; every element is independent, so results do not depend on the thread count.
 */
#include "vecmath.h"

#define ADAM_STRIP 256

typedef struct {
    float lr, beta1, beta2, eps, wd, bc1, bc2;
} adam_hp;

VM_INLINE void adamw_block(float *params, const float *grads, float *m, float *v, size_t n,
                           const adam_hp *hp) {
    const float b1 = hp->beta1, b2 = hp->beta2, bc1 = hp->bc1, bc2 = hp->bc2;
    const float lr = hp->lr, eps = hp->eps, wd = hp->wd;
    float mhat[ADAM_STRIP], den[ADAM_STRIP];
    for (size_t s0 = 0; s0 < n; s0 += ADAM_STRIP) {
        int ns = n - s0 > ADAM_STRIP ? ADAM_STRIP : (int)(n - s0);
        float *p = params + s0, *ms = m + s0, *vs = v + s0;
        const float *g = grads + s0;
        for (int k = 0; k < ns; k++) {
            float gk = g[k];
            float mk = b1 * ms[k] + (1.0f - b1) * gk;
            float vk = b2 * vs[k] + (1.0f - b2) * gk * gk;
            ms[k] = mk;
            vs[k] = vk;
            mhat[k] = mk / bc1;
            den[k] = vk / bc2;
        }
        vm_sqrt_inplace(den, ns);
        for (int k = 0; k < ns; k++) p[k] -= lr * (mhat[k] / (den[k] + eps) + wd * p[k]);
    }
}

/* sum of x[i]^2 in double (a float squared is exact in double): VM_LANES lanes, fixed tree */
VM_INLINE double sumsq_block(const float *x, size_t n) {
    double tail = 0.0;
    size_t i = 0;
    if (n >= VM_LANES) {
        double acc[VM_LANES];
        size_t ng = n / VM_LANES;
        for (int k = 0; k < VM_LANES; k++) acc[k] = (double)x[k] * (double)x[k];
        for (size_t gi = 1; gi < ng; gi++) {
            const float *xg = x + gi * VM_LANES;
            for (int k = 0; k < VM_LANES; k++) acc[k] += (double)xg[k] * (double)xg[k];
        }
        for (int h = VM_LANES / 2; h >= 1; h /= 2)
            for (int k = 0; k < h; k++) acc[k] += acc[k + h];
        tail = acc[0];
        i = ng * VM_LANES;
    }
    for (; i < n; i++) tail += (double)x[i] * (double)x[i];
    return tail;
}

VM_INLINE void scale_block(float *x, float s, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] *= s;
}

static void adamw_block_c(float *params, const float *grads, float *m, float *v, size_t n,
                          const adam_hp *hp) {
    adamw_block(params, grads, m, v, n, hp);
}
static double sumsq_block_c(const float *x, size_t n) { return sumsq_block(x, n); }
static void scale_block_c(float *x, float s, size_t n) { scale_block(x, s, n); }
#if VM_HAVE_AVX2
VM_TARGET_AVX2 static void adamw_block_avx2(float *params, const float *grads, float *m, float *v,
                                            size_t n, const adam_hp *hp) {
    adamw_block(params, grads, m, v, n, hp);
}
VM_TARGET_AVX2 static double sumsq_block_avx2(const float *x, size_t n) {
    return sumsq_block(x, n);
}
VM_TARGET_AVX2 static void scale_block_avx2(float *x, float s, size_t n) { scale_block(x, s, n); }
#define PICK(name) (vm_use_avx2() ? name##_avx2 : name##_c)
#else
#define PICK(name) (name##_c)
#endif

/* params, grads, m, v (n) */
int adamw_update(float *params, const float *grads, float *m, float *v, int64_t n, float lr,
                 float beta1, float beta2, float eps, float weight_decay, int step) {
    if (!params || !grads || !m || !v) return PYLLM_ERR_NULL;
    if (n < 0 || step < 1) return PYLLM_ERR_SIZE;
    adam_hp hp;
    hp.lr = lr;
    hp.beta1 = beta1;
    hp.beta2 = beta2;
    hp.eps = eps;
    hp.wd = weight_decay;
    hp.bc1 = 1.0f - powf(beta1, (float)step);
    hp.bc2 = 1.0f - powf(beta2, (float)step);
    void (*block)(float *, const float *, float *, float *, size_t, const adam_hp *) =
        PICK(adamw_block);
    int nb = pyllm_nblocks(n);
    PYLLM_PARALLEL_FOR_IF(nb > 1)
    for (int blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * PYLLM_FLAT_BLOCK;
        size_t i1 = i0 + PYLLM_FLAT_BLOCK < (size_t)n ? i0 + PYLLM_FLAT_BLOCK : (size_t)n;
        block(params + i0, grads + i0, m + i0, v + i0, i1 - i0, &hp);
    }
    return PYLLM_OK;
}

/* x (n). The array is cut into fixed parts (independent of the thread count); each part is
   summed in double in a fixed order, then the part sums are added in order: same bits for any
   number of threads. */
int norm_squared(double *out, const float *x, int64_t n) {
    if (!out || !x) return PYLLM_ERR_NULL;
    if (n < 0) return PYLLM_ERR_SIZE;
    enum { NPART = 256 };
    double part[NPART];
    size_t chunk = ((size_t)n + NPART - 1) / NPART;
    double (*sumsq)(const float *, size_t) = PICK(sumsq_block);
    PYLLM_PARALLEL_FOR_IF(n >= 65536)
    for (int p = 0; p < NPART; p++) {
        size_t i0 = (size_t)p * chunk, i1 = i0 + chunk;
        if (i0 > (size_t)n) i0 = (size_t)n;
        if (i1 > (size_t)n) i1 = (size_t)n;
        part[p] = sumsq(x + i0, i1 - i0);
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
    void (*block)(float *, float, size_t) = PICK(scale_block);
    int nb = pyllm_nblocks(n);
    PYLLM_PARALLEL_FOR_IF(nb > 1)
    for (int blk = 0; blk < nb; blk++) {
        size_t i0 = (size_t)blk * PYLLM_FLAT_BLOCK;
        size_t i1 = i0 + PYLLM_FLAT_BLOCK < (size_t)n ? i0 + PYLLM_FLAT_BLOCK : (size_t)n;
        block(x + i0, s, i1 - i0);
    }
    return PYLLM_OK;
}
