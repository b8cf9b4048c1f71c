/* softmax.c -- softmax over the last axis, and cross-entropy fused with it.
 *
 * softmax forward:   out = exp(x - max x) / sum exp(x - max x)          (numerically stable)
 * softmax backward:  dinp += out * (dout - sum(dout * out))
 * cross-entropy:     loss = logsumexp(logits) - logits[target]
 * its backward:      dlogits = (softmax(logits) - onehot(target)) * scale    (overwrites)
 */
#include "internal.h"

/* out, inp (N,V) */
int softmax_forward(float *out, const float *inp, int N, int V) {
    if (!out || !inp) return PYLLM_ERR_NULL;
    if (N < 0 || V < 1) return PYLLM_ERR_SIZE;
    PYLLM_PARALLEL_FOR
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * V;
        float *o = out + (size_t)i * V;
        float mx = x[0];
        for (int j = 1; j < V; j++) mx = x[j] > mx ? x[j] : mx;
        double s = 0.0; /* double: V can be 50257 terms */
        for (int j = 0; j < V; j++) {
            o[j] = expf(x[j] - mx);
            s += o[j];
        }
        float inv = (float)(1.0 / s);
        for (int j = 0; j < V; j++) o[j] *= inv;
    }
    return PYLLM_OK;
}

/* dinp, dout, out (N,V) */
int softmax_backward(float *dinp, const float *dout, const float *out, int N, int V) {
    if (!dinp || !dout || !out) return PYLLM_ERR_NULL;
    if (N < 0 || V < 1) return PYLLM_ERR_SIZE;
    PYLLM_PARALLEL_FOR
    for (int i = 0; i < N; i++) {
        const float *g = dout + (size_t)i * V, *p = out + (size_t)i * V;
        float *d = dinp + (size_t)i * V;
        double dot = 0.0;
        for (int j = 0; j < V; j++) dot += g[j] * p[j];
        float fdot = (float)dot;
        for (int j = 0; j < V; j++) d[j] += p[j] * (g[j] - fdot);
    }
    return PYLLM_OK;
}

static int targets_ok(const int32_t *targets, int N, int V) {
    int bad = 0;
    for (int i = 0; i < N; i++) bad |= (targets[i] < 0 || targets[i] >= V);
    return !bad;
}

/* losses (N); logits (N,V); targets (N) */
int crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V) {
    if (!losses || !logits || !targets) return PYLLM_ERR_NULL;
    if (N < 0 || V < 1) return PYLLM_ERR_SIZE;
    if (!targets_ok(targets, N, V)) return PYLLM_ERR_INDEX;
    PYLLM_PARALLEL_FOR
    for (int i = 0; i < N; i++) {
        const float *x = logits + (size_t)i * V;
        float mx = x[0];
        for (int j = 1; j < V; j++) mx = x[j] > mx ? x[j] : mx;
        double s = 0.0;
        for (int j = 0; j < V; j++) s += expf(x[j] - mx);
        losses[i] = (float)log(s) + mx - x[targets[i]];
    }
    return PYLLM_OK;
}

/* dlogits, logits (N,V) (may be the same buffer); targets (N) */
int crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets,
                          float scale, int N, int V) {
    if (!dlogits || !logits || !targets) return PYLLM_ERR_NULL;
    if (N < 0 || V < 1) return PYLLM_ERR_SIZE;
    if (!targets_ok(targets, N, V)) return PYLLM_ERR_INDEX;
    PYLLM_PARALLEL_FOR
    for (int i = 0; i < N; i++) {
        const float *x = logits + (size_t)i * V;
        float *d = dlogits + (size_t)i * V;
        float mx = x[0];
        for (int j = 1; j < V; j++) mx = x[j] > mx ? x[j] : mx;
        double s = 0.0;
        for (int j = 0; j < V; j++) s += expf(x[j] - mx);
        float inv = (float)(scale / s);
        for (int j = 0; j < V; j++) d[j] = expf(x[j] - mx) * inv;
        d[targets[i]] -= scale;
    }
    return PYLLM_OK;
}
