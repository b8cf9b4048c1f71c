"""An independent GPT-2 forward in float64 (picoGPT style, nothing from pyllm's kernels), with the
attention maps and head ablation the explorer tests need."""
import numpy as np


def ln(x, g, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def ref_forward(sd, cfg, idx, ablate=None, maps=None):
    """Logits (B,T,V) of token ids idx (B,T) under state dict sd.

    ``ablate``: {(layer, head): value} replaces that head's output (B,T,hd) before c_proj by
    ``value`` (0.0, or an (hd,) vector). ``maps``: a list that receives each layer's attention
    probabilities (B,NH,T,T). ``ablate`` may also be the string "record", in which case
    ``maps`` receives each layer's per-head outputs (B,T,NH,hd) instead.
    """
    W = {k: v.astype(np.float64) for k, v in sd.items()}
    B, T = idx.shape
    C, H = cfg.n_embd, cfg.n_head
    hd = C // H
    x = W["wte.weight"][idx] + W["wpe.weight"][:T]                       # (B,T,C)
    mask = np.triu(np.full((T, T), -np.inf), 1)
    for i in range(cfg.n_layer):
        p = "h.%d." % i
        h = ln(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"])
        qkv = h @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]   # (B,T,3C)
        q, k, v = np.split(qkv, 3, axis=-1)
        heads, probs = [], []
        for j in range(H):
            s = slice(j * hd, (j + 1) * hd)
            att = q[..., s] @ k[..., s].transpose(0, 2, 1) / np.sqrt(hd) + mask
            att = np.exp(att - att.max(-1, keepdims=True))
            att = att / att.sum(-1, keepdims=True)                      # (B,T,T)
            probs.append(att)
            y = att @ v[..., s]                                          # (B,T,hd)
            if isinstance(ablate, dict) and (i, j) in ablate:
                y = np.broadcast_to(np.asarray(ablate[(i, j)], np.float64), y.shape)
            heads.append(y)
        if maps is not None:
            maps.append(np.stack(heads, 2) if ablate == "record" else np.stack(probs, 1))
        x = x + np.concatenate(heads, -1) @ W[p + "attn.c_proj.weight"] + W[p + "attn.c_proj.bias"]
        h = ln(x, W[p + "ln_2.weight"], W[p + "ln_2.bias"])
        x = x + gelu(h @ W[p + "mlp.c_fc.weight"] + W[p + "mlp.c_fc.bias"]) \
            @ W[p + "mlp.c_proj.weight"] + W[p + "mlp.c_proj.bias"]
    return ln(x, W["ln_f.weight"], W["ln_f.bias"]) @ W["wte.weight"].T  # (B,T,V)


def ref_loss(logits, targets):
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, targets[..., None], -1).mean()
