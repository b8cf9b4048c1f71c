/* linear_attention.c -- attention as kernel smoothing with feature maps and causal prefix sums.
 *
 * Arrays are per head: N = B * NH rows of T positions; d the input size, m the number of
 * features, hd the value size. The NumPy twins (backend/numpy.py) are the specification.
 *
 * favor_features:  u = x d^-1/4;  a_i = u . w_i - |u|^2 / 2;  out_i = m^-1/2 exp(a_i - c)
 *                  c = max_i a_i per (n, t), written to c (N,T) when it is not NULL
 *   backward:      dx += d^-1/4 (g @ w - u sum_i g_i),  g = dout * out   (c held constant)
 * elu_features:    out = x + 1 (x > 0), exp(x) (x <= 0);  dx += dout * (1 or exp(x))
 * linear_attention (causal), the keys' features being kf_s exp(kc_s) (kc NULL: kc = 0):
 *   M_t = max_{s<=t} kc_s;  S_t = sum_{s<=t} exp(kc_s - M_t) kf_s v_s^T (m, hd), z_t likewise (m)
 *   (kept on the scale exp(M_t): rescaled by exp(M_{t-1} - M_t) <= 1 when M grows)
 *   den_t = max(qf_t . z_t, LINATT_DEN_MIN),  out_t = qf_t^T S_t / den_t
 *   backward, g_t = dout_t / den_t, e_t = -(dout_t . out_t) / den_t (0 where the guard held),
 *   w_s = exp(kc_s - M_s):
 *   dqf_t += S_t g_t + e_t z_t                (S, z rebuilt running forwards)
 *   dkf_s += w_s (R_s v_s + r_s), dv_s += R_s^T (w_s kf_s),
 *   R_s = sum_{t>=s} exp(M_s - M_t) qf_t g_t^T, r_s likewise with e_t qf_t   (running backwards)
 * Only the running state (m hd + m floats per row) is kept, never a (T, m, hd) tensor. Rows are
 * independent and split over threads, each computed in one fixed order: the same bits for any
 * thread count.
 */
#include "internal.h"
#include <stdlib.h>

#define LINATT_DEN_MIN 1e-30f

int favor_features_forward(float *out, float *c, const float *x, const float *w, int N, int T,
                           int d, int m) {
    if (N < 0 || T < 0 || d < 1 || m < 1) return PYLLM_ERR_SIZE;
    if (!out || !x || !w) return PYLLM_ERR_NULL;
    const float s = powf((float)d, -0.25f), norm = 1.0f / sqrtf((float)m);
    PYLLM_PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        for (int t = 0; t < T; t++) {
            const size_t r = (size_t)n * T + t;
            const float *xr = x + r * d;
            float *o = out + r * m;
            const float h = 0.5f * s * s * pyllm_dot(xr, xr, d); /* |u|^2 / 2 */
            float rmax = -INFINITY;
            for (int i = 0; i < m; i++) {
                const float a = pyllm_dot(xr, w + (size_t)i * d, d) * s - h;
                o[i] = a;
                if (a > rmax || a != a) rmax = a; /* a NaN stays the maximum, as in NumPy */
            }
            for (int i = 0; i < m; i++) o[i] = expf(o[i] - rmax) * norm;
            if (c) c[r] = rmax;
        }
    }
    return PYLLM_OK;
}

int favor_features_backward(float *dx, const float *dout, const float *out, const float *x,
                            const float *w, int N, int T, int d, int m) {
    if (N < 0 || T < 0 || d < 1 || m < 1) return PYLLM_ERR_SIZE;
    if (!dx || !dout || !out || !x || !w) return PYLLM_ERR_NULL;
    const float s = powf((float)d, -0.25f);
    PYLLM_PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        for (int t = 0; t < T; t++) {
            size_t r = (size_t)n * T + t;
            const float *go = dout + r * m, *o = out + r * m, *xr = x + r * d;
            float *dxr = dx + r * d;
            float gsum = 0.0f;
            for (int i = 0; i < m; i++) {
                const float gi = go[i] * o[i], *wi = w + (size_t)i * d;
                gsum += gi;
                for (int j = 0; j < d; j++) dxr[j] += s * gi * wi[j];
            }
            for (int j = 0; j < d; j++) dxr[j] -= s * s * xr[j] * gsum;
        }
    }
    return PYLLM_OK;
}

int elu_features_forward(float *out, const float *x, int64_t n) {
    if (n < 0) return PYLLM_ERR_SIZE;
    if (n > 0 && (!out || !x)) return PYLLM_ERR_NULL;
    for (int64_t i = 0; i < n; i++) out[i] = x[i] > 0.0f ? x[i] + 1.0f : expf(x[i]);
    return PYLLM_OK;
}

int elu_features_backward(float *dx, const float *dout, const float *x, int64_t n) {
    if (n < 0) return PYLLM_ERR_SIZE;
    if (n > 0 && (!dx || !dout || !x)) return PYLLM_ERR_NULL;
    for (int64_t i = 0; i < n; i++) dx[i] += dout[i] * (x[i] > 0.0f ? 1.0f : expf(x[i]));
    return PYLLM_OK;
}

/* S (rows x cols floats) and z (rows) times f, when f is not 1 */
static void rescale(float *S, float *z, int rows, int cols, float f) {
    if (f == 1.0f) return;
    for (size_t i = 0; i < (size_t)rows * cols; i++) S[i] *= f;
    for (int i = 0; i < rows; i++) z[i] *= f;
}

/* The key weight of position t of one row: exp(kc_t - M_t), updating the running maximum *M
   and rescaling S (m, hd) and z (m) by exp(M_old - M_new) when it grows (NULL kc: 1) */
static float key_weight(const float *kc, int t, float *M, float *S, float *z, int m, int hd) {
    if (!kc) return 1.0f;
    const float c = kc[t];
    if (c > *M || c != c) { /* a NaN stays the maximum, as numpy.maximum.accumulate keeps it */
        rescale(S, z, m, hd, t > 0 ? expf(*M - c) : 1.0f);
        *M = c;
    }
    return expf(c - *M);
}

/* S += (w k) v^T, z += w k for one position: k (m), v (hd) */
static void add_key(float *S, float *z, const float *k, const float *vr, float w, int m, int hd) {
    for (int i = 0; i < m; i++) {
        const float kw = k[i] * w;
        z[i] += kw;
        float *Si = S + (size_t)i * hd;
        for (int j = 0; j < hd; j++) Si[j] += kw * vr[j];
    }
}

int linear_attention_forward(float *out, float *den, const float *qf, const float *kf,
                             const float *v, const float *kc, int N, int T, int m, int hd) {
    if (N < 0 || T < 0 || m < 1 || hd < 1) return PYLLM_ERR_SIZE;
    if (!out || !den || !qf || !kf || !v) return PYLLM_ERR_NULL;
    const size_t per = (size_t)m * hd + m; /* S (m, hd) and z (m) of one row */
    float *scratch = (float *)calloc((size_t)N * per + 1, sizeof(float));
    if (!scratch) return PYLLM_ERR_NOMEM;
    PYLLM_PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        float *S = scratch + (size_t)n * per, *z = S + (size_t)m * hd;
        float M = -INFINITY;
        for (int t = 0; t < T; t++) {
            size_t r = (size_t)n * T + t;
            const float *q = qf + r * m;
            float *o = out + r * hd;
            const float w = key_weight(kc ? kc + (size_t)n * T : NULL, t, &M, S, z, m, hd);
            add_key(S, z, kf + r * m, v + r * hd, w, m, hd);
            float dn = pyllm_dot(q, z, m);
            if (dn < LINATT_DEN_MIN) dn = LINATT_DEN_MIN; /* a NaN stays NaN, as in NumPy */
            den[r] = dn;
            for (int j = 0; j < hd; j++) o[j] = 0.0f;
            for (int i = 0; i < m; i++) {
                const float *Si = S + (size_t)i * hd;
                for (int j = 0; j < hd; j++) o[j] += q[i] * Si[j];
            }
            for (int j = 0; j < hd; j++) o[j] /= dn;
        }
    }
    free(scratch);
    return PYLLM_OK;
}

/* g = dout_t / den_t into g (hd); returns e_t = -(dout_t . out_t) / den_t, 0 where the guard held */
static float out_grads(float *g, const float *go, const float *o, float dn, int hd) {
    for (int j = 0; j < hd; j++) g[j] = go[j] / dn;
    const float e = pyllm_dot(go, o, hd);
    return dn > LINATT_DEN_MIN ? -e / dn : 0.0f;
}

int linear_attention_backward(float *dqf, float *dkf, float *dv, const float *dout,
                              const float *qf, const float *kf, const float *v, const float *out,
                              const float *den, const float *kc, int N, int T, int m, int hd) {
    if (N < 0 || T < 0 || m < 1 || hd < 1) return PYLLM_ERR_SIZE;
    if (!dout || !qf || !kf || !v || !out || !den) return PYLLM_ERR_NULL;
    /* S or R (m, hd), z or r (m), g (hd), k w (m), the running maxima M (T) */
    const size_t per = (size_t)m * hd + 2 * (size_t)m + hd + (size_t)T;
    float *scratch = (float *)calloc((size_t)N * per + 1, sizeof(float));
    if (!scratch) return PYLLM_ERR_NOMEM;
    PYLLM_PARALLEL_FOR
    for (int n = 0; n < N; n++) {
        float *S = scratch + (size_t)n * per, *z = S + (size_t)m * hd, *g = z + m, *kw = g + hd;
        float *Ms = kw + m;
        const float *kcr = kc ? kc + (size_t)n * T : NULL;
        float M = -INFINITY;
        for (int t = 0; t < T; t++) { /* forwards: the running maxima; S, z for dqf */
            size_t r = (size_t)n * T + t;
            const float w = key_weight(kcr, t, &M, S, z, m, hd);
            Ms[t] = M;
            if (!dqf) continue;
            add_key(S, z, kf + r * m, v + r * hd, w, m, hd);
            const float e = out_grads(g, dout + r * hd, out + r * hd, den[r], hd);
            float *dq = dqf + r * m;
            for (int i = 0; i < m; i++) dq[i] += pyllm_dot(S + (size_t)i * hd, g, hd) + e * z[i];
        }
        if (dkf || dv) {
            float *R = S, *rr = z; /* reuse the scratch, zeroed again */
            for (size_t i = 0; i < (size_t)m * hd + m; i++) S[i] = 0.0f;
            for (int t = T - 1; t >= 0; t--) {
                size_t r = (size_t)n * T + t;
                const float *q = qf + r * m, *k = kf + r * m, *vr = v + r * hd;
                if (kcr && t + 1 < T) rescale(R, rr, m, hd, expf(Ms[t] - Ms[t + 1]));
                const float e = out_grads(g, dout + r * hd, out + r * hd, den[r], hd);
                for (int i = 0; i < m; i++) {
                    float *Ri = R + (size_t)i * hd;
                    for (int j = 0; j < hd; j++) Ri[j] += q[i] * g[j];
                    rr[i] += e * q[i];
                }
                const float w = kcr ? expf(kcr[t] - Ms[t]) : 1.0f;
                if (dkf) {
                    float *dk = dkf + r * m;
                    for (int i = 0; i < m; i++)
                        dk[i] += w * (pyllm_dot(R + (size_t)i * hd, vr, hd) + rr[i]);
                }
                if (dv) {
                    float *dvr = dv + r * hd;
                    for (int i = 0; i < m; i++) kw[i] = k[i] * w;
                    for (int i = 0; i < m; i++) {
                        const float *Ri = R + (size_t)i * hd;
                        for (int j = 0; j < hd; j++) dvr[j] += Ri[j] * kw[i];
                    }
                }
            }
        }
    }
    free(scratch);
    return PYLLM_OK;
}
