/* decode.c -- one new token per sequence through the whole GPT, with a KV cache.
 *
 * Sampling makes one forward pass per new token over a single position (M = B rows). Each layer's
 * work is then a handful of matrix-vector products and tiny vector ops, so calling the kernels one
 * by one from Python costs more than the arithmetic. gpt_decode_step runs the whole stack in one
 * call, through the same kernels the training forward uses, so it gives the same numbers:
 *
 *   x = wte[tok] + wpe[pos]                                          (B,C)
 *   for each layer l:
 *     qkv = ln_1(x) @ c_attn.w + c_attn.b                             (B,3C)
 *     cache[l] gets k, v at pos; y = causal attention of q over 0..pos  (B,C)
 *     x += y @ attn.c_proj.w + attn.c_proj.b
 *     x += gelu(ln_2(x) @ c_fc.w + c_fc.b) @ mlp.c_proj.w + mlp.c_proj.b
 *   logits = ln_f(x) @ wte^T                                          (B,V)
 *
 * weights holds 4 + 12 L pointers in GPT-2's order (see pyllm.h); cache is (L,2,B,NH,maxT,hd);
 * scratch holds 15 B C floats.
 */
#include "internal.h"

int gpt_decode_step(float *logits, float *cache, float *scratch, const int32_t *tok,
                    const float *const *weights, int B, int pos, int maxT, int V, int C, int NH,
                    int L) {
    if (!logits || !cache || !scratch || !tok || !weights) return PYLLM_ERR_NULL;
    if (B < 1 || V < 1 || L < 1 || NH < 1 || C < NH || C % NH != 0 || maxT < 1)
        return PYLLM_ERR_SIZE;
    if (pos < 0 || pos >= maxT) return PYLLM_ERR_INDEX;
    for (int i = 0; i < 4 + 12 * L; i++)
        if (!weights[i]) return PYLLM_ERR_NULL;
    const float *wte = weights[0], *wpe = weights[1];
    const float *lnf_w = weights[2 + 12 * L], *lnf_b = weights[3 + 12 * L];
    size_t BC = (size_t)B * C, layer_cache = (size_t)2 * B * maxT * C;  /* (2,B,NH,maxT,hd) */
    /* x2 is the residual stream between the two halves of a layer (the fused residual add
       needs an output apart from its input) */
    float *x = scratch, *x2 = x + BC, *h = x2 + BC, *qkv = h + BC, *att = qkv + 3 * BC;
    float *fc = att + BC, *fcg = fc + 4 * BC;
    int st = encoder_forward(x, tok, wte, wpe, B, 1, C, V, maxT, pos);
    for (int l = 0; st == PYLLM_OK && l < L; l++) {
        const float *const *w = weights + 2 + 12 * l;
        float *kc = cache + (size_t)l * layer_cache, *vc = kc + layer_cache / 2;
        if ((st = layernorm_forward(h, NULL, NULL, x, w[0], w[1], B, C)) ||
            (st = matmul_forward(qkv, h, w[2], w[3], NULL, B, C, 3 * C)) ||
            (st = attention_decode(att, kc, vc, qkv, B, pos, maxT, C, NH)) ||
            (st = matmul_forward(x2, att, w[4], w[5], x, B, C, C)) ||
            (st = layernorm_forward(h, NULL, NULL, x2, w[6], w[7], B, C)) ||
            (st = matmul_forward(fc, h, w[8], w[9], NULL, B, C, 4 * C)) ||
            (st = gelu_forward(fcg, fc, 4 * (int64_t)BC)) ||
            (st = matmul_forward(x, fcg, w[10], w[11], x2, B, 4 * C, C)))
            break;
    }
    if (st == PYLLM_OK) st = layernorm_forward(h, NULL, NULL, x, lnf_w, lnf_b, B, C);
    if (st == PYLLM_OK) st = gemm(logits, h, wte, B, V, C, 0, 1, 0);
    return st;
}
