/* embedding.c -- token + position embedding.
 *
 * forward:  out[b,t,:] = wte[idx[b,t],:] + wpe[pos0+t,:]
 * backward: dwte[idx[b,t],:] += dout[b,t,:];  dwpe[t,:] += sum_b dout[b,t,:]
 *
 * Blocks of rows (forward) and positions (dwpe) are split over threads. dwte is a scatter-add in
 * which a token can repeat, so threads own disjoint column slices of EMB_CB columns and add the
 * rows in (b,t) order: every sum runs in the same order whatever the thread count.
 */
#include "vecmath.h"

#define EMB_CB 32 /* columns per slice of the dwte scatter-add */

/* rows i0..i1-1 of out = wte[idx] + wpe[pos0 + t] */
VM_INLINE void add_rows(float *out, const int32_t *idx, const float *wte, const float *wpe,
                        int i0, int i1, int T, int C, int pos0) {
    for (int i = i0; i < i1; i++) {
        float *o = out + (size_t)i * C;
        const float *we = wte + (size_t)idx[i] * C, *pe = wpe + (size_t)(pos0 + i % T) * C;
        for (int c = 0; c < C; c++) o[c] = we[c] + pe[c];
    }
}

/* dwte[idx[i], c0 .. c0+nc) += dout[i, c0 .. c0+nc) for every row i in order; nc <= EMB_CB */
VM_INLINE void scatter_slice(float *dwte, const float *dout, const int32_t *idx, int N, int C,
                             int c0, int nc) {
    if (nc == EMB_CB) { /* fixed trip count: vectorised */
        for (int i = 0; i < N; i++) {
            float *d = dwte + (size_t)idx[i] * C + c0;
            const float *g = dout + (size_t)i * C + c0;
            for (int k = 0; k < EMB_CB; k++) d[k] += g[k];
        }
    } else {
        for (int i = 0; i < N; i++) {
            float *d = dwte + (size_t)idx[i] * C + c0;
            const float *g = dout + (size_t)i * C + c0;
            for (int k = 0; k < nc; k++) d[k] += g[k];
        }
    }
}

/* d[c] += sum over b of dout[b, t, c], b in order */
VM_INLINE void sum_batch(float *d, const float *dout, int B, int T, int C, int t) {
    for (int b = 0; b < B; b++) {
        const float *g = dout + ((size_t)b * T + t) * C;
        for (int c = 0; c < C; c++) d[c] += g[c];
    }
}

static void add_rows_c(float *out, const int32_t *idx, const float *wte, const float *wpe, int i0,
                       int i1, int T, int C, int pos0) {
    add_rows(out, idx, wte, wpe, i0, i1, T, C, pos0);
}
static void scatter_slice_c(float *dwte, const float *dout, const int32_t *idx, int N, int C,
                            int c0, int nc) {
    scatter_slice(dwte, dout, idx, N, C, c0, nc);
}
static void sum_batch_c(float *d, const float *dout, int B, int T, int C, int t) {
    sum_batch(d, dout, B, T, C, t);
}
#if VM_HAVE_AVX2
VM_TARGET_AVX2 static void add_rows_avx2(float *out, const int32_t *idx, const float *wte,
                                         const float *wpe, int i0, int i1, int T, int C,
                                         int pos0) {
    add_rows(out, idx, wte, wpe, i0, i1, T, C, pos0);
}
VM_TARGET_AVX2 static void scatter_slice_avx2(float *dwte, const float *dout, const int32_t *idx,
                                              int N, int C, int c0, int nc) {
    scatter_slice(dwte, dout, idx, N, C, c0, nc);
}
VM_TARGET_AVX2 static void sum_batch_avx2(float *d, const float *dout, int B, int T, int C,
                                          int t) {
    sum_batch(d, dout, B, T, C, t);
}
#define PICK(name) (vm_use_avx2() ? name##_avx2 : name##_c)
#else
#define PICK(name) (name##_c)
#endif

/* out (B,T,C); idx (B,T); wte (V,C); wpe (maxT,C) */
int encoder_forward(float *out, const int32_t *idx, const float *wte, const float *wpe,
                    int B, int T, int C, int V, int maxT, int pos0) {
    if (!out || !idx || !wte || !wpe) return PYLLM_ERR_NULL;
    if (B < 0 || T < 0 || C < 0 || V < 1 || pos0 < 0 || pos0 + T > maxT) return PYLLM_ERR_SIZE;
    int N = B * T, bad = 0;
    for (int i = 0; i < N; i++) bad |= (idx[i] < 0 || idx[i] >= V);
    if (bad) return PYLLM_ERR_INDEX;
    void (*rows)(float *, const int32_t *, const float *, const float *, int, int, int, int, int) =
        PICK(add_rows);
    int rb = vm_rows_per_task(C), nb = (N + rb - 1) / rb; /* tasks of rb rows */
    PYLLM_PARALLEL_FOR_IF(nb > 1)
    for (int b = 0; b < nb; b++) {
        int i0 = b * rb, i1 = N - i0 > rb ? i0 + rb : N;
        rows(out, idx, wte, wpe, i0, i1, T, C, pos0);
    }
    return PYLLM_OK;
}

/* dwte (V,C); dwpe (maxT,C); dout (B,T,C); idx (B,T) */
int encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *idx,
                     int B, int T, int C, int V, int maxT) {
    if (!dout || !idx) return PYLLM_ERR_NULL;
    if (B < 0 || T < 0 || C < 0 || V < 1 || T > maxT) return PYLLM_ERR_SIZE;
    int N = B * T, bad = 0;
    for (int i = 0; i < N; i++) bad |= (idx[i] < 0 || idx[i] >= V);
    if (bad) return PYLLM_ERR_INDEX;
    if (dwte) {
        void (*slice)(float *, const float *, const int32_t *, int, int, int, int) =
            PICK(scatter_slice);
        int nslices = (C + EMB_CB - 1) / EMB_CB;
        PYLLM_PARALLEL_FOR
        for (int s = 0; s < nslices; s++) {
            int c0 = s * EMB_CB;
            slice(dwte, dout, idx, N, C, c0, C - c0 < EMB_CB ? C - c0 : EMB_CB);
        }
    }
    if (dwpe) {
        void (*sum)(float *, const float *, int, int, int, int) = PICK(sum_batch);
        PYLLM_PARALLEL_FOR
        for (int t = 0; t < T; t++) sum(dwpe + (size_t)t * C, dout, B, T, C, t);
    }
    return PYLLM_OK;
}
