/* embedding.c -- token + position embedding.
 *
 * forward:  out[b,t,:] = wte[idx[b,t],:] + wpe[pos0+t,:]
 * backward: dwte[idx[b,t],:] += dout[b,t,:];  dwpe[t,:] += sum_b dout[b,t,:]
 */
#include "internal.h"

/* out (B,T,C); idx (B,T); wte (V,C); wpe (maxT,C) */
int encoder_forward(float *out, const int32_t *idx, const float *wte, const float *wpe,
                    int B, int T, int C, int V, int maxT, int pos0) {
    if (!out || !idx || !wte || !wpe) return PYLLM_ERR_NULL;
    if (B < 0 || T < 0 || C < 0 || V < 1 || pos0 < 0 || pos0 + T > maxT) return PYLLM_ERR_SIZE;
    int N = B * T, bad = 0;
    for (int i = 0; i < N; i++) bad |= (idx[i] < 0 || idx[i] >= V);
    if (bad) return PYLLM_ERR_INDEX;
    PYLLM_PARALLEL_FOR
    for (int i = 0; i < N; i++) {
        int t = i % T;
        float *o = out + (size_t)i * C;
        const float *we = wte + (size_t)idx[i] * C;
        const float *pe = wpe + (size_t)(pos0 + t) * C;
        for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
    }
    return PYLLM_OK;
}

/* dwte (V,C); dwpe (maxT,C); dout (B,T,C); idx (B,T).
   Threads own disjoint column slices of dwte, so every sum runs in (b,t) order whatever the
   thread count. */
int encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *idx,
                     int B, int T, int C, int V, int maxT) {
    if (!dout || !idx) return PYLLM_ERR_NULL;
    if (B < 0 || T < 0 || C < 0 || V < 1 || T > maxT) return PYLLM_ERR_SIZE;
    int N = B * T, bad = 0;
    for (int i = 0; i < N; i++) bad |= (idx[i] < 0 || idx[i] >= V);
    if (bad) return PYLLM_ERR_INDEX;
    const int CB = 32; /* column slice per task */
    int nslices = (C + CB - 1) / CB;
    if (dwte) {
        PYLLM_PARALLEL_FOR
        for (int s = 0; s < nslices; s++) {
            int c0 = s * CB, c1 = c0 + CB < C ? c0 + CB : C;
            for (int i = 0; i < N; i++) {
                float *d = dwte + (size_t)idx[i] * C;
                const float *g = dout + (size_t)i * C;
                for (int c = c0; c < c1; c++) d[c] += g[c];
            }
        }
    }
    if (dwpe) {
        PYLLM_PARALLEL_FOR
        for (int t = 0; t < T; t++) {
            float *d = dwpe + (size_t)t * C;
            for (int b = 0; b < B; b++) {
                const float *g = dout + ((size_t)b * T + t) * C;
                for (int c = 0; c < C; c++) d[c] += g[c];
            }
        }
    }
    return PYLLM_OK;
}
