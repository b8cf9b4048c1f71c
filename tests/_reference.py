"""An independent GPT-2 forward in float64 (picoGPT style, nothing from pyllm's kernels), with the
attention maps and head ablation the explorer tests need."""
import numpy as np


def ln(x, g, b):
    m = x.mean(-1, keepdims=True)
    v = ((x - m) ** 2).mean(-1, keepdims=True)
    return (x - m) / np.sqrt(v + 1e-5) * g + b


def gelu(x):
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


def kernel_weights(q, k, kind, w=None):
    """Unnormalised causal attention weights (B,T,T) of one head, float64, straight from the
    definitions: exp(q.k/sqrt(d)) (softmax), phi(q).phi(k) with the FAVOR+ features
    m^-1/2 exp(u.w_i - |u|^2/2), u = x d^-1/4, unstabilised (favor), or elu(x) + 1 (linear)."""
    d, T = q.shape[-1], q.shape[-2]
    if kind == "softmax":
        s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
        s = s - np.where(np.tril(np.ones((T, T), bool)), s, -np.inf).max(-1, keepdims=True)
        a = np.exp(s)
    else:
        if kind == "favor":
            def phi(x):
                u = x * d ** -0.25
                return np.exp(u @ w.T - 0.5 * (u * u).sum(-1, keepdims=True)) / np.sqrt(len(w))
        else:
            def phi(x):
                return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))
        a = phi(q) @ phi(k).transpose(0, 2, 1)
    return a * np.tril(np.ones((T, T)))


def ref_forward(sd, cfg, idx, ablate=None, maps=None, features=None):
    """Logits (B,T,V) of token ids idx (B,T) under state dict sd.

    The attention kernel is ``cfg.attention`` (softmax when the config has none); a favor model
    needs ``features``, its ``{name: (m, hd)}`` random features (``model.buffers()``).

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
    kind = getattr(cfg, "attention", "softmax")
    for i in range(cfg.n_layer):
        p = "h.%d." % i
        h = ln(x, W[p + "ln_1.weight"], W[p + "ln_1.bias"])
        qkv = h @ W[p + "attn.c_attn.weight"] + W[p + "attn.c_attn.bias"]   # (B,T,3C)
        q, k, v = np.split(qkv, 3, axis=-1)
        heads, probs = [], []
        for j in range(H):
            s = slice(j * hd, (j + 1) * hd)
            w = None if kind != "favor" else features[p + "attn.features"].astype(np.float64)
            att = kernel_weights(q[..., s], k[..., s], kind, w)
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
