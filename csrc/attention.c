/* attention.c -- causal multi-head self-attention, FlashAttention style (online softmax).
 *
 * For each batch b, head h and query t (q, k, v are hd-wide slices of qkv, scale = 1/sqrt(hd)):
 *   s_j = scale * q_t . k_j  for j <= t;   p_j = exp(s_j - lse_t);   out_t = sum_j p_j v_j
 *   lse_t = log sum_j exp(s_j)
 * The forward pass streams keys in blocks of KB with a running max and sum, so no T x T matrix
 * exists; it saves lse (B,NH,T). The backward pass recomputes p_j from lse:
 *   D_t = dout_t . out_t;  dp_j = dout_t . v_j;  ds_j = p_j (dp_j - D_t)
 *   dv_j += p_j dout_t;    dq_t += scale ds_j k_j;   dk_j += scale ds_j q_t
 * Work is split over (b, h) pairs; each pair's gradients are owned by one thread.
 */
#include "internal.h"

#define KB 128 /* keys per streamed block */

static float dot(const float *a, const float *b, int n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int d = 0;
    for (; d + 8 <= n; d += 8)
        for (int u = 0; u < 8; u++) acc[u] += a[d + u] * b[d + u];
    float s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (; d < n; d++) s += a[d] * b[d];
    return s;
}

/* o (hd) = softmax(scale * q . k_j) weighted sum of v_j over j < nkeys; returns the lse.
   k_j = k + j * kstride, v_j = v + j * vstride. */
static float attend_row(float *o, const float *q, const float *k, const float *v, size_t kstride,
                        size_t vstride, int nkeys, int hd, float scale) {
    float s[KB];
    float m = -INFINITY, l = 0.0f;
    for (int d = 0; d < hd; d++) o[d] = 0.0f;
    for (int j0 = 0; j0 < nkeys; j0 += KB) {
        int j1 = j0 + KB < nkeys ? j0 + KB : nkeys;
        float mb = -INFINITY;
        for (int j = j0; j < j1; j++) {
            float sj = scale * dot(q, k + (size_t)j * kstride, hd);
            s[j - j0] = sj;
            mb = sj > mb ? sj : mb;
        }
        float mnew = mb > m ? mb : m;
        float corr = expf(m - mnew); /* 0 on the first block (m = -inf) */
        l *= corr;
        for (int d = 0; d < hd; d++) o[d] *= corr;
        for (int j = j0; j < j1; j++) {
            float p = expf(s[j - j0] - mnew);
            l += p;
            const float *vj = v + (size_t)j * vstride;
            for (int d = 0; d < hd; d++) o[d] += p * vj[d];
        }
        m = mnew;
    }
    float inv = 1.0f / l;
    for (int d = 0; d < hd; d++) o[d] *= inv;
    return m + logf(l);
}

/* out (B,T,C); lse (B,NH,T); qkv (B,T,3C) */
int attention_forward(float *out, float *lse, const float *qkv, int B, int T, int C, int NH) {
    if (!out || !lse || !qkv) return PYLLM_ERR_NULL;
    if (B < 0 || T < 0 || NH < 1 || C < NH || C % NH != 0) return PYLLM_ERR_SIZE;
    int hd = C / NH, BH = B * NH;
    float scale = 1.0f / sqrtf((float)hd);
    size_t C3 = (size_t)3 * C;
    PYLLM_PARALLEL_FOR
    for (int bh = 0; bh < BH; bh++) {
        int b = bh / NH, h = bh % NH;
        const float *base = qkv + (size_t)b * T * C3 + (size_t)h * hd;
        for (int t = 0; t < T; t++) {
            const float *q = base + (size_t)t * C3;
            float *o = out + ((size_t)b * T + t) * C + (size_t)h * hd;
            lse[(size_t)bh * T + t] = attend_row(o, q, base + C, base + 2 * (size_t)C, C3, C3,
                                                 t + 1, hd, scale);
        }
    }
    return PYLLM_OK;
}

/* dqkv (B,T,3C); dout, out (B,T,C); qkv (B,T,3C); lse (B,NH,T) */
int attention_backward(float *dqkv, const float *dout, const float *qkv, const float *out,
                       const float *lse, int B, int T, int C, int NH) {
    if (!dqkv || !dout || !qkv || !out || !lse) return PYLLM_ERR_NULL;
    if (B < 0 || T < 0 || NH < 1 || C < NH || C % NH != 0) return PYLLM_ERR_SIZE;
    int hd = C / NH, BH = B * NH;
    float scale = 1.0f / sqrtf((float)hd);
    size_t C3 = (size_t)3 * C;
    PYLLM_PARALLEL_FOR
    for (int bh = 0; bh < BH; bh++) {
        int b = bh / NH, h = bh % NH;
        size_t off = (size_t)b * T * C3 + (size_t)h * hd;
        const float *qb = qkv + off, *kb = qkv + off + C, *vb = qkv + off + 2 * (size_t)C;
        float *dqb = dqkv + off, *dkb = dqkv + off + C, *dvb = dqkv + off + 2 * (size_t)C;
        for (int t = 0; t < T; t++) {
            size_t ro = ((size_t)b * T + t) * C + (size_t)h * hd;
            const float *g = dout + ro, *q = qb + (size_t)t * C3;
            float *dq = dqb + (size_t)t * C3;
            float D = dot(g, out + ro, hd);
            float L = lse[(size_t)bh * T + t];
            for (int j = 0; j <= t; j++) {
                const float *kj = kb + (size_t)j * C3, *vj = vb + (size_t)j * C3;
                float p = expf(scale * dot(q, kj, hd) - L);
                float ds = p * (dot(g, vj, hd) - D) * scale;
                float *dkj = dkb + (size_t)j * C3, *dvj = dvb + (size_t)j * C3;
                for (int d = 0; d < hd; d++) {
                    dvj[d] += p * g[d];
                    dq[d] += ds * kj[d];
                    dkj[d] += ds * q[d];
                }
            }
        }
    }
    return PYLLM_OK;
}

/* out (B,C); kcache, vcache (B,NH,maxT,hd); qkv (B,3C) */
int attention_decode(float *out, float *kcache, float *vcache, const float *qkv,
                     int B, int pos, int maxT, int C, int NH) {
    if (!out || !kcache || !vcache || !qkv) return PYLLM_ERR_NULL;
    if (B < 0 || NH < 1 || C < NH || C % NH != 0) return PYLLM_ERR_SIZE;
    if (pos < 0 || pos >= maxT) return PYLLM_ERR_INDEX;
    int hd = C / NH, BH = B * NH;
    float scale = 1.0f / sqrtf((float)hd);
    PYLLM_PARALLEL_FOR
    for (int bh = 0; bh < BH; bh++) {
        int b = bh / NH, h = bh % NH;
        const float *q = qkv + (size_t)b * 3 * C + (size_t)h * hd;
        float *kc = kcache + (size_t)bh * maxT * hd, *vc = vcache + (size_t)bh * maxT * hd;
        for (int d = 0; d < hd; d++) {
            kc[(size_t)pos * hd + d] = q[C + d];
            vc[(size_t)pos * hd + d] = q[2 * (size_t)C + d];
        }
        attend_row(out + (size_t)b * C + (size_t)h * hd, q, kc, vc, hd, hd, pos + 1, hd, scale);
    }
    return PYLLM_OK;
}
