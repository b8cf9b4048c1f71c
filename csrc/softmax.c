/* softmax.c -- softmax over the last axis, and cross-entropy fused with it.
 *
 * softmax forward:   out = exp(x - max x) / sum exp(x - max x)          (numerically stable)
 * softmax backward:  dinp += out * (dout - sum(dout * out))
 * cross-entropy:     loss = logsumexp(logits) - logits[target]
 * its backward:      dlogits = (softmax(logits) - onehot(target)) * scale    (overwrites)
 *
 * Each row is done by one thread (blocks of rows are split over threads) in a fixed order, so
 * results do not depend on the thread count. A row is read from memory once; the later passes
 * over it hit L1/L2 (a 50257-wide row is 196 KiB):
 *   pass 1: max, VM_LANES lanes (vecmath.h);
 *   pass 2: e = vm_expf_nonpos(x - max), a vectorised exp, stored in the output;
 *   pass 3: sum of e: VM_LANES float lanes over blocks of SM_BLOCK elements, each block's sum
 *           added to a double total (accurate for V = 50257);
 *   pass 4: scale by 1 / sum.
 * Cross-entropy forward sums the exps through a small buffer instead of storing them; its
 * backward computes one exp per element, in place when dlogits is logits.
 */
#include "vecmath.h"

/* a target of CE_IGNORE (-1) marks a position whose loss is 0 and whose gradient row is 0 */
#define CE_IGNORE (-1)

#define SM_BLOCK 512 /* elements per float partial sum (16 per lane) */

/* max of x[0..V), V >= 1 (lanes as described in vecmath.h) */
VM_INLINE float row_max(const float *x, int V) {
    float mx = x[0];
    int j = 0;
    if (V >= VM_LANES) {
        float m[VM_LANES];
        int ng = V / VM_LANES;
        for (int k = 0; k < VM_LANES; k++) m[k] = x[k];
        for (int gi = 1; gi < ng; gi++) {
            const float *xg = x + (size_t)gi * VM_LANES;
            for (int k = 0; k < VM_LANES; k++) m[k] = xg[k] > m[k] ? xg[k] : m[k];
        }
        mx = vm_max_lanes(m);
        j = ng * VM_LANES;
    }
    for (; j < V; j++) mx = x[j] > mx ? x[j] : mx;
    return mx;
}

/* the sum of a[0..n), n <= SM_BLOCK, in float lanes (see vecmath.h) */
VM_INLINE float block_sum(const float *a, int n) {
    float tail = 0.0f;
    int j = 0;
    if (n >= VM_LANES) {
        float acc[VM_LANES];
        int ng = n / VM_LANES;
        for (int k = 0; k < VM_LANES; k++) acc[k] = a[k];
        for (int gi = 1; gi < ng; gi++) {
            const float *ag = a + (size_t)gi * VM_LANES;
            for (int k = 0; k < VM_LANES; k++) acc[k] += ag[k];
        }
        for (j = ng * VM_LANES; j < n; j++) tail += a[j];
        return vm_sum_lanes(acc) + tail;
    }
    for (; j < n; j++) tail += a[j];
    return tail;
}

/* the sum of x[0..V): float block sums (SM_BLOCK elements) added in double */
VM_INLINE double row_sum(const float *x, int V) {
    double total = 0.0;
    for (int j0 = 0; j0 < V; j0 += SM_BLOCK)
        total += (double)block_sum(x + j0, V - j0 > SM_BLOCK ? SM_BLOCK : V - j0);
    return total;
}

/* o[j] = exp(x[j] - mx) and their sum (o may be x: the same index is read, then written) */
VM_INLINE double exp_store_sum(float *o, const float *x, float mx, int V) {
    for (int j = 0; j < V; j++) o[j] = vm_expf_nonpos(x[j] - mx);
    return row_sum(o, V);
}

/* the sum of exp(x[j] - mx), through a block-sized buffer (the row is not written) */
VM_INLINE double exp_sum(const float *x, float mx, int V) {
    float e[SM_BLOCK];
    double total = 0.0;
    for (int j0 = 0; j0 < V; j0 += SM_BLOCK) {
        int n = V - j0 > SM_BLOCK ? SM_BLOCK : V - j0;
        const float *xb = x + j0;
        for (int j = 0; j < n; j++) e[j] = vm_expf_nonpos(xb[j] - mx);
        total += (double)block_sum(e, n);
    }
    return total;
}

/* the sum of g[j] * p[j] for j < n, n <= SM_BLOCK, in float lanes */
VM_INLINE float block_dot(const float *g, const float *p, int n) {
    float tail = 0.0f;
    int j = 0;
    if (n >= VM_LANES) {
        float acc[VM_LANES];
        int ng = n / VM_LANES;
        for (int k = 0; k < VM_LANES; k++) acc[k] = g[k] * p[k];
        for (int gi = 1; gi < ng; gi++) {
            const float *gg = g + (size_t)gi * VM_LANES, *pg = p + (size_t)gi * VM_LANES;
            for (int k = 0; k < VM_LANES; k++) acc[k] += gg[k] * pg[k];
        }
        for (j = ng * VM_LANES; j < n; j++) tail += g[j] * p[j];
        return vm_sum_lanes(acc) + tail;
    }
    for (; j < n; j++) tail += g[j] * p[j];
    return tail;
}

/* the sum of g[j] * p[j] for j < V, blocked as row_sum */
VM_INLINE double dot(const float *g, const float *p, int V) {
    double total = 0.0;
    for (int j0 = 0; j0 < V; j0 += SM_BLOCK)
        total += (double)block_dot(g + j0, p + j0, V - j0 > SM_BLOCK ? SM_BLOCK : V - j0);
    return total;
}

VM_INLINE void softmax_row(float *o, const float *x, int V) {
    float mx = row_max(x, V);
    float inv = (float)(1.0 / exp_store_sum(o, x, mx, V));
    for (int j = 0; j < V; j++) o[j] *= inv;
}

VM_INLINE void softmax_backward_row(float *d, const float *g, const float *p, int V) {
    float fdot = (float)dot(g, p, V);
    for (int j = 0; j < V; j++) d[j] += p[j] * (g[j] - fdot);
}

VM_INLINE float crossentropy_row(const float *x, int target, int V) {
    if (target == CE_IGNORE) return 0.0f; /* a position that does not count */
    float mx = row_max(x, V);
    return (float)(log(exp_sum(x, mx, V)) + ((double)mx - (double)x[target]));
}

VM_INLINE void crossentropy_backward_row(float *d, const float *x, int target, float scale, int V) {
    if (target == CE_IGNORE) { /* no gradient from a position that does not count */
        for (int j = 0; j < V; j++) d[j] = 0.0f;
        return;
    }
    float mx = row_max(x, V);
    float inv = (float)(scale / exp_store_sum(d, x, mx, V));
    for (int j = 0; j < V; j++) d[j] *= inv;
    d[target] -= scale;
}

/* rows i0..i1-1 */
VM_INLINE void softmax_rows(float *out, const float *inp, int i0, int i1, int V) {
    for (int i = i0; i < i1; i++) softmax_row(out + (size_t)i * V, inp + (size_t)i * V, V);
}

VM_INLINE void softmax_backward_rows(float *dinp, const float *dout, const float *out, int i0,
                                     int i1, int V) {
    for (int i = i0; i < i1; i++)
        softmax_backward_row(dinp + (size_t)i * V, dout + (size_t)i * V, out + (size_t)i * V, V);
}

VM_INLINE void crossentropy_rows(float *losses, const float *logits, const int32_t *targets,
                                 int i0, int i1, int V) {
    for (int i = i0; i < i1; i++)
        losses[i] = crossentropy_row(logits + (size_t)i * V, targets[i], V);
}

VM_INLINE void crossentropy_backward_rows(float *dlogits, const float *logits,
                                          const int32_t *targets, float scale, int i0, int i1,
                                          int V) {
    for (int i = i0; i < i1; i++)
        crossentropy_backward_row(dlogits + (size_t)i * V, logits + (size_t)i * V, targets[i],
                                  scale, V);
}

/* the same code compiled twice: portable, and for AVX2+FMA (see vecmath.h) */
static void softmax_rows_c(float *out, const float *inp, int i0, int i1, int V) {
    softmax_rows(out, inp, i0, i1, V);
}
static void softmax_backward_rows_c(float *dinp, const float *dout, const float *out, int i0,
                                    int i1, int V) {
    softmax_backward_rows(dinp, dout, out, i0, i1, V);
}
static void crossentropy_rows_c(float *losses, const float *logits, const int32_t *targets,
                                int i0, int i1, int V) {
    crossentropy_rows(losses, logits, targets, i0, i1, V);
}
static void crossentropy_backward_rows_c(float *dlogits, const float *logits,
                                         const int32_t *targets, float scale, int i0, int i1,
                                         int V) {
    crossentropy_backward_rows(dlogits, logits, targets, scale, i0, i1, V);
}
#if VM_HAVE_AVX2
VM_TARGET_AVX2 static void softmax_rows_avx2(float *out, const float *inp, int i0, int i1,
                                             int V) {
    softmax_rows(out, inp, i0, i1, V);
}
VM_TARGET_AVX2 static void softmax_backward_rows_avx2(float *dinp, const float *dout,
                                                      const float *out, int i0, int i1, int V) {
    softmax_backward_rows(dinp, dout, out, i0, i1, V);
}
VM_TARGET_AVX2 static void crossentropy_rows_avx2(float *losses, const float *logits,
                                                  const int32_t *targets, int i0, int i1,
                                                  int V) {
    crossentropy_rows(losses, logits, targets, i0, i1, V);
}
VM_TARGET_AVX2 static void crossentropy_backward_rows_avx2(float *dlogits, const float *logits,
                                                           const int32_t *targets, float scale,
                                                           int i0, int i1, int V) {
    crossentropy_backward_rows(dlogits, logits, targets, scale, i0, i1, V);
}
#define PICK(name) (vm_use_avx2() ? name##_avx2 : name##_c)
#else
#define PICK(name) (name##_c)
#endif

/* Each kernel runs blocks of rb rows as parallel tasks (rows are independent; see vecmath.h). */

/* out, inp (N,V) */
int softmax_forward(float *out, const float *inp, int N, int V) {
    if (!out || !inp) return PYLLM_ERR_NULL;
    if (N < 0 || V < 1) return PYLLM_ERR_SIZE;
    void (*rows)(float *, const float *, int, int, int) = PICK(softmax_rows);
    int rb = vm_rows_per_task(V), nb = (N + rb - 1) / rb;
    PYLLM_PARALLEL_FOR_IF(nb > 1)
    for (int b = 0; b < nb; b++) {
        int i0 = b * rb, i1 = N - i0 > rb ? i0 + rb : N;
        rows(out, inp, i0, i1, V);
    }
    return PYLLM_OK;
}

/* dinp, dout, out (N,V) */
int softmax_backward(float *dinp, const float *dout, const float *out, int N, int V) {
    if (!dinp || !dout || !out) return PYLLM_ERR_NULL;
    if (N < 0 || V < 1) return PYLLM_ERR_SIZE;
    void (*rows)(float *, const float *, const float *, int, int, int) =
        PICK(softmax_backward_rows);
    int rb = vm_rows_per_task(V), nb = (N + rb - 1) / rb;
    PYLLM_PARALLEL_FOR_IF(nb > 1)
    for (int b = 0; b < nb; b++) {
        int i0 = b * rb, i1 = N - i0 > rb ? i0 + rb : N;
        rows(dinp, dout, out, i0, i1, V);
    }
    return PYLLM_OK;
}

static int targets_ok(const int32_t *targets, int N, int V) {
    int bad = 0;
    for (int i = 0; i < N; i++) bad |= ((targets[i] < 0 && targets[i] != CE_IGNORE) || targets[i] >= V);
    return !bad;
}

/* losses (N); logits (N,V); targets (N) */
int crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V) {
    if (!losses || !logits || !targets) return PYLLM_ERR_NULL;
    if (N < 0 || V < 1) return PYLLM_ERR_SIZE;
    if (!targets_ok(targets, N, V)) return PYLLM_ERR_INDEX;
    void (*rows)(float *, const float *, const int32_t *, int, int, int) = PICK(crossentropy_rows);
    int rb = vm_rows_per_task(V), nb = (N + rb - 1) / rb;
    PYLLM_PARALLEL_FOR_IF(nb > 1)
    for (int b = 0; b < nb; b++) {
        int i0 = b * rb, i1 = N - i0 > rb ? i0 + rb : N;
        rows(losses, logits, targets, i0, i1, V);
    }
    return PYLLM_OK;
}

/* dlogits, logits (N,V) (may be the same buffer); targets (N) */
int crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets,
                          float scale, int N, int V) {
    if (!dlogits || !logits || !targets) return PYLLM_ERR_NULL;
    if (N < 0 || V < 1) return PYLLM_ERR_SIZE;
    if (!targets_ok(targets, N, V)) return PYLLM_ERR_INDEX;
    void (*rows)(float *, const float *, const int32_t *, float, int, int, int) =
        PICK(crossentropy_backward_rows);
    int rb = vm_rows_per_task(V), nb = (N + rb - 1) / rb;
    PYLLM_PARALLEL_FOR_IF(nb > 1)
    for (int b = 0; b < nb; b++) {
        int i0 = b * rb, i1 = N - i0 > rb ? i0 + rb : N;
        rows(dlogits, logits, targets, scale, i0, i1, V);
    }
    return PYLLM_OK;
}
