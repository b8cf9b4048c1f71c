/* layernorm.c -- LayerNorm over the last axis, eps 1e-5 (as GPT-2).
 *
 * forward:  mean = sum(x)/C;  rstd = 1/sqrt(sum((x-mean)^2)/C + eps);  xhat = (x-mean)*rstd
 *           out = xhat * weight + bias
 * backward: dxhat = dout * weight;  dbias += sum_N dout;  dweight += sum_N dout * xhat
 *           dinp += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
 */
#include "internal.h"

#define LN_EPS 1e-5f

/* out, inp (N,C); weight, bias (C); mean, rstd (N) or NULL */
int layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                      const float *weight, const float *bias, int N, int C) {
    if (!out || !inp || !weight || !bias) return PYLLM_ERR_NULL;
    if (N < 0 || C < 1) return PYLLM_ERR_SIZE;
    PYLLM_PARALLEL_FOR
    for (int i = 0; i < N; i++) {
        const float *x = inp + (size_t)i * C;
        float *o = out + (size_t)i * C;
        float s = 0.0f;
        for (int c = 0; c < C; c++) s += x[c];
        float m = s / C;
        float v = 0.0f;
        for (int c = 0; c < C; c++) {
            float d = x[c] - m;
            v += d * d;
        }
        float r = 1.0f / sqrtf(v / C + LN_EPS);
        for (int c = 0; c < C; c++) o[c] = (x[c] - m) * r * weight[c] + bias[c];
        if (mean) mean[i] = m;
        if (rstd) rstd[i] = r;
    }
    return PYLLM_OK;
}

/* dinp, dout, inp (N,C); dweight, dbias, weight (C); mean, rstd (N) */
int layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                       const float *inp, const float *weight, const float *mean,
                       const float *rstd, int N, int C) {
    if (!dout || !inp || !weight || !mean || !rstd) return PYLLM_ERR_NULL;
    if (N < 0 || C < 1) return PYLLM_ERR_SIZE;
    if (dinp) {
        PYLLM_PARALLEL_FOR
        for (int i = 0; i < N; i++) {
            const float *x = inp + (size_t)i * C, *g = dout + (size_t)i * C;
            float *dx = dinp + (size_t)i * C;
            float m = mean[i], r = rstd[i];
            float sum_d = 0.0f, sum_dx = 0.0f;
            for (int c = 0; c < C; c++) {
                float dxhat = g[c] * weight[c];
                sum_d += dxhat;
                sum_dx += dxhat * (x[c] - m) * r;
            }
            sum_d /= C;
            sum_dx /= C;
            for (int c = 0; c < C; c++) {
                float xhat = (x[c] - m) * r;
                dx[c] += r * (g[c] * weight[c] - sum_d - xhat * sum_dx);
            }
        }
    }
    if (dweight || dbias) {
        /* parameter gradients: threads own column slices, rows summed in order */
        const int CB = 32;
        int nslices = (C + CB - 1) / CB;
        PYLLM_PARALLEL_FOR
        for (int s = 0; s < nslices; s++) {
            int c0 = s * CB, c1 = c0 + CB < C ? c0 + CB : C;
            float accw[32], accb[32];
            for (int c = 0; c < CB; c++) accw[c] = accb[c] = 0.0f;
            for (int i = 0; i < N; i++) {
                const float *x = inp + (size_t)i * C, *g = dout + (size_t)i * C;
                float m = mean[i], r = rstd[i];
                for (int c = c0; c < c1; c++) {
                    accw[c - c0] += g[c] * (x[c] - m) * r;
                    accb[c - c0] += g[c];
                }
            }
            for (int c = c0; c < c1; c++) {
                if (dweight) dweight[c] += accw[c - c0];
                if (dbias) dbias[c] += accb[c - c0];
            }
        }
    }
    return PYLLM_OK;
}
