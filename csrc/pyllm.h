/*
 * pyllm.h -- the whole C ABI of pyllm's kernels.
 *
 * Everything between CDEF-BEGIN and CDEF-END is read verbatim by cffi (pyllm/_build.py), so it holds
 * only plain declarations and integer #defines.
 *
 * Conventions (see also ../shared-style notes in DESIGN.md):
 *   - float32, row-major (C order) everywhere; token ids are int32.
 *   - Dimension legend: B batch, T time, C channels, NH heads, hd = C/NH head size, V vocabulary,
 *     OC output channels, N = B*T flattened rows, n a flat element count.
 *   - Argument order: outputs first, then inputs, then sizes (as llm.c).
 *   - *_backward kernels ADD into every gradient they write (callers zero them first), except
 *     crossentropy_backward, which starts the backward pass and overwrites dlogits.
 *   - A gradient pointer may be NULL to skip computing that gradient.
 *   - Every kernel returns PYLLM_OK (0) or a negative status; none prints, exits or allocates
 *     Python objects. The Python layer checks every argument before calling, so a non-zero status
 *     means a bug in that layer; it is turned into an exception all the same.
 *   - Results are bit-identical for any thread count: work is split over independent outputs and
 *     every reduction runs in a fixed order inside one thread.
 */
#ifndef PYLLM_H
#define PYLLM_H
#include <stddef.h>
#include <stdint.h>

/* CDEF-BEGIN */
#define PYLLM_ABI_VERSION 8
#define PYLLM_OK 0
#define PYLLM_ERR_SIZE -1   /* a size argument is out of range (negative, or inconsistent) */
#define PYLLM_ERR_INDEX -2  /* a token id, target or position is out of range */
#define PYLLM_ERR_NULL -3   /* a required pointer is NULL */
#define PYLLM_ERR_NOMEM -4  /* out of memory for a kernel's scratch buffers (GEMM packing) */

/* runtime.c */
int pyllm_abi_version(void);
int pyllm_has_openmp(void);
int pyllm_get_num_threads(void);
int pyllm_set_num_threads(int n);
int pyllm_simd_level(void);             /* 0: portable C, 1: AVX2+FMA micro-kernels in use */
int pyllm_set_simd_level(int level);    /* force portable (0) or best available (1); returns level */

/* embedding.c: out (B,T,C) = wte[idx] + wpe[pos0 + t]; idx (B,T); wte (V,C); wpe (maxT,C) */
int encoder_forward(float *out, const int32_t *idx, const float *wte, const float *wpe,
                    int B, int T, int C, int V, int maxT, int pos0);
/* dwte (V,C) += scatter of dout (B,T,C) by idx; dwpe (maxT,C) rows 0..T-1 += sum over B */
int encoder_backward(float *dwte, float *dwpe, const float *dout, const int32_t *idx,
                     int B, int T, int C, int V, int maxT);

/* layernorm.c: inp, out (N,C); weight, bias (C); mean, rstd (N) may be NULL in forward */
int layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                      const float *weight, const float *bias, int N, int C);
int layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                       const float *inp, const float *weight, const float *mean,
                       const float *rstd, int N, int C);

/* matmul.c: out (N,OC) = inp (N,C) @ weight (C,OC) + bias (OC) + residual (N,OC); bias and
   residual may be NULL; residual must not overlap out (fused residual add of a GPT block) */
int matmul_forward(float *out, const float *inp, const float *weight, const float *bias,
                   const float *residual, int N, int C, int OC);
/* dinp (N,C) += dout @ weight^T; dweight (C,OC) += inp^T @ dout; dbias (OC) += sum_N dout */
int matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                    const float *inp, const float *weight, int N, int C, int OC);
/* c (M,N) = op(a) (M,K) @ op(b) (K,N) (+ c when accumulate); a is stored (K,M) when trans_a,
   b is stored (N,K) when trans_b */
int gemm(float *c, const float *a, const float *b, int M, int N, int K,
         int trans_a, int trans_b, int accumulate);

/* gelu.c (tanh approximation): out, inp (n) */
int gelu_forward(float *out, const float *inp, int64_t n);
/* dinp (n) = dout * gelu'(inp), added to dinp when accumulate (else dinp is only written) */
int gelu_backward(float *dinp, const float *inp, const float *dout, int64_t n, int accumulate);

/* residual.c: out = inp1 + inp2; backward dinp1 += dout, dinp2 += dout (n) */
int residual_forward(float *out, const float *inp1, const float *inp2, int64_t n);
int residual_backward(float *dinp1, float *dinp2, const float *dout, int64_t n);

/* softmax.c: softmax over the last axis of (N,V) */
int softmax_forward(float *out, const float *inp, int N, int V);
int softmax_backward(float *dinp, const float *dout, const float *out, int N, int V);
/* losses (N) = logsumexp(logits) - logits[target]; logits (N,V); targets (N), each in [0, V) or
   -1: an ignored position (loss 0, gradient row 0) */
int crossentropy_forward(float *losses, const float *logits, const int32_t *targets, int N, int V);
/* dlogits (N,V) = (softmax(logits) - onehot(target)) * scale; dlogits may alias logits */
int crossentropy_backward(float *dlogits, const float *logits, const int32_t *targets,
                          float scale, int N, int V);

/* attention.c: causal multi-head self-attention.
   qkv (B,T,3C) holds q | k | v; out (B,T,C); lse (B,NH,T) the log-sum-exp of each query's
   scaled scores, saved for the backward pass (which recomputes the probabilities). */
int attention_forward(float *out, float *lse, const float *qkv, int B, int T, int C, int NH);
/* dqkv (B,T,3C) = gradient, added to dqkv when accumulate (else only written); dout, out (B,T,C);
   lse (B,NH,T) */
int attention_backward(float *dqkv, const float *dout, const float *qkv, const float *out,
                       const float *lse, int B, int T, int C, int NH, int accumulate);
/* probs (B,NH,T,T) = the probabilities attention_forward used, from qkv (B,T,3C) and its saved
   lse (B,NH,T): row t is exp(scale q_t . k_s - lse_t) for s <= t, 0 above the diagonal */
int attention_probs(float *probs, const float *qkv, const float *lse, int B, int T, int C, int NH);
/* one decode step at position pos: qkv (B,3C) of the new token; kcache, vcache (B,NH,maxT,hd)
   get its k, v at pos; out (B,C) attends over positions 0..pos */
int attention_decode(float *out, float *kcache, float *vcache, const float *qkv,
                     int B, int pos, int maxT, int C, int NH);

/* decode.c: one new token per sequence (tok (B)) at position pos through the whole model with a
   KV cache; logits (B,V) out. weights: 4 + 12 L pointers -- wte (V,C), wpe (maxT,C), then per layer
   ln_1.w, ln_1.b (C), attn.c_attn.w (C,3C), .b (3C), attn.c_proj.w (C,C), .b (C), ln_2.w, ln_2.b (C),
   mlp.c_fc.w (C,4C), .b (4C), mlp.c_proj.w (4C,C), .b (C), then ln_f.w, ln_f.b (C).
   cache (L,2,B,NH,maxT,hd) holds k (index 0) and v (1) of positions 0..pos-1 and gets pos's;
   scratch: 15 B C floats */
int gpt_decode_step(float *logits, float *cache, float *scratch, const int32_t *tok,
                    const float *const *weights, int B, int pos, int maxT, int V, int C, int NH,
                    int L);

/* linear_attention.c: per-head rows N = B*NH of T positions; x (N,T,d), w (m,d), features (N,T,m),
   v and out (N,T,hd), den (N,T), c / kc (N,T). FAVOR+ features stabilised per position (c, if
   not NULL, receives the stabilisers: the keys' go to linear attention as kc, or NULL for none);
   elu+1 features over n floats; causal linear attention by prefix sums and its backward (dqf,
   dkf, dv may be NULL; gradients are added) */
int favor_features_forward(float *out, float *c, const float *x, const float *w, int N, int T,
                           int d, int m);
int favor_features_backward(float *dx, const float *dout, const float *out, const float *x,
                            const float *w, int N, int T, int d, int m);
int elu_features_forward(float *out, const float *x, int64_t n);
int elu_features_backward(float *dx, const float *dout, const float *x, int64_t n);
int linear_attention_forward(float *out, float *den, const float *qf, const float *kf,
                             const float *v, const float *kc, int N, int T, int m, int hd);
int linear_attention_backward(float *dqf, float *dkf, float *dv, const float *dout,
                              const float *qf, const float *kf, const float *v, const float *out,
                              const float *den, const float *kc, int N, int T, int m, int hd);

/* quant.c: out (N,OC) = inp (N,C) @ W^T + bias (OC, or NULL) + residual (N,OC, or NULL) with W
   (OC,C) in Q8_0: q (OC,C) int8 times one scale per block of 32 inputs, scales (OC, ceil(C/32)) */
int q8_matmul_forward(float *out, const float *inp, const int8_t *q, const float *scales,
                      const float *bias, const float *residual, int N, int C, int OC);
/* w (OC,C) float32 = the Q8_0 matrix (q, scales) dequantized */
int q8_dequantize(float *w, const int8_t *q, const float *scales, int OC, int C);
/* gpt_decode_step for a Q8_0 model: weights holds 6 + 16 L pointers (pyllm/quant.py,
   decoder_weights): wte.q, wte.scale, wpe.q, wpe.scale, per layer ln_1.w, ln_1.b, then q, scale,
   bias of c_attn and attn.c_proj, ln_2.w, ln_2.b, q, scale, bias of c_fc and mlp.c_proj, then
   ln_f.w, ln_f.b; scratch: 16 B C floats */
int q8_decode_step(float *logits, float *cache, float *scratch, const int32_t *tok,
                   const void *const *weights, int B, int pos, int maxT, int V, int C, int NH,
                   int L);

/* adamw.c: one AdamW step over n parameters (bias-corrected moments, decoupled weight decay) */
int adamw_update(float *params, const float *grads, float *m, float *v, int64_t n, float lr,
                 float beta1, float beta2, float eps, float weight_decay, int step);
/* *out = sum of x[i]^2, accumulated in double in a fixed order */
int norm_squared(double *out, const float *x, int64_t n);
/* x *= s */
int scale_inplace(float *x, float s, int64_t n);
/* CDEF-END */

/* internal helpers shared by the kernel files (not part of the cffi ABI) */
int pyllm_nthreads(void);
int pyllm_sgemm(int M, int N, int K, const float *a, int lda, int trans_a,
                const float *b, int ldb, int trans_b, float *c, int ldc, int accumulate);

#endif /* PYLLM_H */
