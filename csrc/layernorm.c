/* layernorm.c -- LayerNorm over the last axis, eps 1e-5 (as GPT-2).
 *
 * forward:  mean = sum(x)/C;  rstd = 1/sqrt(sum((x-mean)^2)/C + eps);  xhat = (x-mean)*rstd
 *           out = xhat * weight + bias
 * backward: dxhat = dout * weight;  dbias += sum_N dout;  dweight += sum_N dout * xhat
 *           dinp += rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
 *
 * Row sums use VM_LANES float lanes combined in a fixed order (vecmath.h), so they vectorise.
 * Blocks of rows are split over threads. The parameter gradients are sums over rows, in a fixed
 * order whatever the thread count: float partial sums over blocks of LN_RB rows (row by row),
 * formed in the same pass as dinp (each task of LN_RB rows keeps its block's sums in a scratch
 * buffer), then the blocks added in order in double, column by column.
 */
#include "vecmath.h"
#include <stdlib.h>

#define LN_EPS 1e-5f
#define LN_RB 64 /* rows per task of the backward, and per float partial sum of dweight, dbias */

/* sum of a[c] (sq == 0) or of (a[c] - m)^2 (sq == 1), in lanes (see vecmath.h) */
VM_INLINE float lane_sum(const float *a, float m, int sq, int C) {
    float tail = 0.0f;
    int c = 0;
    if (C >= VM_LANES) {
        float acc[VM_LANES];
        int ng = C / VM_LANES;
        for (int k = 0; k < VM_LANES; k++) acc[k] = sq ? (a[k] - m) * (a[k] - m) : a[k];
        for (int gi = 1; gi < ng; gi++) {
            const float *ag = a + (size_t)gi * VM_LANES;
            for (int k = 0; k < VM_LANES; k++) acc[k] += sq ? (ag[k] - m) * (ag[k] - m) : ag[k];
        }
        for (c = ng * VM_LANES; c < C; c++) tail += sq ? (a[c] - m) * (a[c] - m) : a[c];
        return vm_sum_lanes(acc) + tail;
    }
    for (; c < C; c++) tail += sq ? (a[c] - m) * (a[c] - m) : a[c];
    return tail;
}

VM_INLINE void layernorm_row(float *o, float *mean, float *rstd, const float *x,
                             const float *weight, const float *bias, int C) {
    float m = lane_sum(x, 0.0f, 0, C) / C;
    float v = lane_sum(x, m, 1, C) / C;
    float r = 1.0f / sqrtf(v + LN_EPS);
    for (int c = 0; c < C; c++) o[c] = (x[c] - m) * r * weight[c] + bias[c];
    *mean = m;
    *rstd = r;
}

/* dx += r * (g*w - mean(g*w) - xhat * mean(g*w*xhat)) for one row */
VM_INLINE void layernorm_backward_row(float *dx, const float *g, const float *x,
                                      const float *weight, float m, float r, int C) {
    float sum_d = 0.0f, sum_dx = 0.0f; /* the tails, then the totals */
    int c = 0;
    if (C >= VM_LANES) {
        float ad[VM_LANES], adx[VM_LANES];
        int ng = C / VM_LANES;
        for (int k = 0; k < VM_LANES; k++) {
            ad[k] = g[k] * weight[k];
            adx[k] = ad[k] * ((x[k] - m) * r);
        }
        for (int gi = 1; gi < ng; gi++) {
            size_t o = (size_t)gi * VM_LANES;
            const float *gg = g + o, *wg = weight + o, *xg = x + o;
            for (int k = 0; k < VM_LANES; k++) {
                float dxhat = gg[k] * wg[k];
                ad[k] += dxhat;
                adx[k] += dxhat * ((xg[k] - m) * r);
            }
        }
        for (c = ng * VM_LANES; c < C; c++) {
            float dxhat = g[c] * weight[c];
            sum_d += dxhat;
            sum_dx += dxhat * ((x[c] - m) * r);
        }
        sum_d += vm_sum_lanes(ad);
        sum_dx += vm_sum_lanes(adx);
    } else {
        for (; c < C; c++) {
            float dxhat = g[c] * weight[c];
            sum_d += dxhat;
            sum_dx += dxhat * ((x[c] - m) * r);
        }
    }
    sum_d /= C;
    sum_dx /= C;
    for (c = 0; c < C; c++) {
        float xhat = (x[c] - m) * r;
        dx[c] += r * (g[c] * weight[c] - sum_d - xhat * sum_dx);
    }
}

/* rows i0..i1-1; mean, rstd may be NULL */
VM_INLINE void layernorm_rows(float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, int i0, int i1, int C) {
    for (int i = i0; i < i1; i++) {
        float m, r;
        layernorm_row(out + (size_t)i * C, &m, &r, inp + (size_t)i * C, weight, bias, C);
        if (mean) mean[i] = m;
        if (rstd) rstd[i] = r;
    }
}

/* rows i0..i1-1 of dinp (if not NULL); with pw, pb (C each, zeroed) also the float sums over
   these rows of g * xhat and g, row by row (one block of dweight's and dbias's sums) */
VM_INLINE void layernorm_backward_rows(float *dinp, const float *dout, const float *inp,
                                       const float *weight, const float *mean, const float *rstd,
                                       int i0, int i1, int C, float *pw, float *pb) {
    for (int i = i0; i < i1; i++) {
        const float *g = dout + (size_t)i * C, *x = inp + (size_t)i * C;
        float m = mean[i], r = rstd[i];
        if (dinp) layernorm_backward_row(dinp + (size_t)i * C, g, x, weight, m, r, C);
        if (pw)
            for (int k = 0; k < C; k++) {
                pw[k] += g[k] * ((x[k] - m) * r);
                pb[k] += g[k];
            }
    }
}

/* the same code compiled twice: portable, and for AVX2+FMA (see vecmath.h) */
static void layernorm_rows_c(float *out, float *mean, float *rstd, const float *inp,
                             const float *weight, const float *bias, int i0, int i1, int C) {
    layernorm_rows(out, mean, rstd, inp, weight, bias, i0, i1, C);
}
static void layernorm_backward_rows_c(float *dinp, const float *dout, const float *inp,
                                      const float *weight, const float *mean, const float *rstd,
                                      int i0, int i1, int C, float *pw, float *pb) {
    layernorm_backward_rows(dinp, dout, inp, weight, mean, rstd, i0, i1, C, pw, pb);
}
#if VM_HAVE_AVX2
VM_TARGET_AVX2 static void layernorm_rows_avx2(float *out, float *mean, float *rstd,
                                               const float *inp, const float *weight,
                                               const float *bias, int i0, int i1, int C) {
    layernorm_rows(out, mean, rstd, inp, weight, bias, i0, i1, C);
}
VM_TARGET_AVX2 static void layernorm_backward_rows_avx2(float *dinp, const float *dout,
                                                        const float *inp, const float *weight,
                                                        const float *mean, const float *rstd,
                                                        int i0, int i1, int C, float *pw,
                                                        float *pb) {
    layernorm_backward_rows(dinp, dout, inp, weight, mean, rstd, i0, i1, C, pw, pb);
}
#define PICK(name) (vm_use_avx2() ? name##_avx2 : name##_c)
#else
#define PICK(name) (name##_c)
#endif

/* out, inp (N,C); weight, bias (C); mean, rstd (N) or NULL */
int layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                      const float *weight, const float *bias, int N, int C) {
    if (!out || !inp || !weight || !bias) return PYLLM_ERR_NULL;
    if (N < 0 || C < 1) return PYLLM_ERR_SIZE;
    void (*rows)(float *, float *, float *, const float *, const float *, const float *, int, int,
                 int) = PICK(layernorm_rows);
    int rb = vm_rows_per_task(C), nb = (N + rb - 1) / rb; /* tasks of rb rows */
    PYLLM_PARALLEL_FOR_IF(nb > 1)
    for (int b = 0; b < nb; b++) {
        int i0 = b * rb, i1 = N - i0 > rb ? i0 + rb : N;
        rows(out, mean, rstd, inp, weight, bias, i0, i1, C);
    }
    return PYLLM_OK;
}

/* dinp, dout, inp (N,C); dweight, dbias, weight (C); mean, rstd (N) */
int layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                       const float *inp, const float *weight, const float *mean,
                       const float *rstd, int N, int C) {
    if (!dout || !inp || !weight || !mean || !rstd) return PYLLM_ERR_NULL;
    if (N < 0 || C < 1) return PYLLM_ERR_SIZE;
    void (*rows)(float *, const float *, const float *, const float *, const float *,
                 const float *, int, int, int, float *, float *) = PICK(layernorm_backward_rows);
    int nblk = (N + LN_RB - 1) / LN_RB;
    float *part = NULL; /* (nblk, 2, C): each block's float sums for dweight and dbias */
    if (dweight || dbias) {
        part = (float *)calloc((size_t)nblk * 2 * C, sizeof(float));
        if (!part && nblk > 0) return PYLLM_ERR_NOMEM;
    }
    PYLLM_PARALLEL_FOR_IF(nblk > 1)
    for (int bi = 0; bi < nblk; bi++) {
        int i0 = bi * LN_RB, i1 = N - i0 > LN_RB ? i0 + LN_RB : N;
        float *pw = part ? part + (size_t)bi * 2 * C : NULL;
        rows(dinp, dout, inp, weight, mean, rstd, i0, i1, C, pw, pw ? pw + C : NULL);
    }
    if (part) { /* the block sums, added in block order in double */
        PYLLM_PARALLEL_FOR_IF(C >= 256)
        for (int c = 0; c < C; c++) {
            double tw = 0.0, tb = 0.0;
            for (int bi = 0; bi < nblk; bi++) {
                tw += part[(size_t)bi * 2 * C + c];
                tb += part[(size_t)bi * 2 * C + C + c];
            }
            if (dweight) dweight[c] += (float)tw;
            if (dbias) dbias[c] += (float)tb;
        }
        free(part);
    }
    return PYLLM_OK;
}
