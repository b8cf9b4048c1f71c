"use strict";
// pyllm in one web page: a GPT-2 forward pass with a KV cache, in plain JavaScript.
//
// The functions below are named and ordered as in pyllm's NumPy backend (pyllm/backend/numpy.py,
// the readable specification): encoder_forward, layernorm_forward, matmul_forward,
// attention_decode, gelu_forward, the tied head (gemm with wte^T), then the Decoder that runs
// one token through every layer, and sample_token (pyllm.model.sample_token) with pyllm's PCG32.
// No framework, no network: the weights are in the page's JSON data element.
//
// Dimension legend: C channels, NH heads, hd = C / NH, V vocabulary, maxT = block_size,
// L layers. Matrices are stored (OC, C) row-major -- each output's C inputs consecutive (GPT-2
// keeps them (C, OC); the exporter transposes them) -- so a matmul is one dot product per output.
// Arithmetic is in float64 (JS numbers), every stored activation rounded to float32.
(function () {
  const DATA = JSON.parse(document.getElementById("pyllm-data").textContent);
  const CFG = DATA.config;
  const C = CFG.n_embd, NH = CFG.n_head, HD = C / NH, V = CFG.vocab_size, MAXT = CFG.block_size;
  const L = CFG.n_layer, LN_EPS = 1e-5, GELU_K = Math.sqrt(2 / Math.PI);

  // ---- weights: base64 -> typed arrays (Q8_0 dequantized here) ------------------------------
  function b64bytes(s) {
    const bin = atob(s), n = bin.length, u = new Uint8Array(n);
    for (let i = 0; i < n; i++) u[i] = bin.charCodeAt(i);
    return u;
  }

  function loadTensor(t) {
    if (t.dtype === "f32") return new Float32Array(b64bytes(t.data).buffer);
    // Q8_0: W[o, i] = scales[o, i / 32] * q[o, i]  (q int8 (OC, C), scales (OC, nb))
    const q = new Int8Array(b64bytes(t.q).buffer), s = new Float32Array(b64bytes(t.scales).buffer);
    const OC = t.shape[0], IC = t.shape[1], nb = Math.ceil(IC / 32), w = new Float32Array(OC * IC);
    for (let o = 0; o < OC; o++)
      for (let i = 0; i < IC; i++) w[o * IC + i] = s[o * nb + (i >> 5)] * q[o * IC + i];
    return w;
  }

  const W = {};
  for (const name in DATA.tensors) W[name] = loadTensor(DATA.tensors[name]);

  // ---- embedding --------------------------------------------------------------------------
  // out (C) = wte[tok] (C) + wpe[pos] (C)
  function encoder_forward(out, tok, wte, wpe, pos) {
    const a = tok * C, b = pos * C;
    for (let i = 0; i < C; i++) out[i] = wte[a + i] + wpe[b + i];
  }

  // ---- layernorm --------------------------------------------------------------------------
  // out (C) = (inp - mean) * rstd * weight + bias, biased variance, eps 1e-5
  function layernorm_forward(out, inp, weight, bias) {
    let m = 0;
    for (let i = 0; i < C; i++) m += inp[i];
    m /= C;
    let v = 0;
    for (let i = 0; i < C; i++) { const d = inp[i] - m; v += d * d; }
    const rs = 1 / Math.sqrt(v / C + LN_EPS);
    for (let i = 0; i < C; i++) out[i] = (inp[i] - m) * rs * weight[i] + bias[i];
  }

  // ---- matmul -----------------------------------------------------------------------------
  // out (OC) = inp (IC) @ W^T + bias (OC) + residual (OC); weight (OC, IC) row-major
  function matmul_forward(out, inp, weight, bias, residual, IC, OC) {
    for (let o = 0; o < OC; o++) {
      let acc = 0;
      const r = o * IC;
      for (let i = 0; i < IC; i++) acc += inp[i] * weight[r + i];
      acc += bias[o];
      out[o] = residual ? residual[o] + acc : acc;
    }
  }

  // The same for T rows at once: out (T, OC) = inp (T, IC) @ W^T + bias + residual (T, OC).
  // Each output's sum runs over i in the same order as matmul_forward, so every row equals what
  // matmul_forward gives it; four rows share each weight read (the prefill's speed).
  function matmul_forward_rows(out, inp, weight, bias, residual, T, IC, OC) {
    let t = 0;
    for (; t + 4 <= T; t += 4) {
      const i0 = t * IC, i1 = i0 + IC, i2 = i1 + IC, i3 = i2 + IC;
      for (let o = 0; o < OC; o++) {
        let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        const r = o * IC;
        for (let i = 0; i < IC; i++) {
          const w = weight[r + i];
          a0 += inp[i0 + i] * w; a1 += inp[i1 + i] * w; a2 += inp[i2 + i] * w; a3 += inp[i3 + i] * w;
        }
        const b = bias[o], k = t * OC + o;
        out[k] = residual ? residual[k] + (a0 + b) : a0 + b;
        out[k + OC] = residual ? residual[k + OC] + (a1 + b) : a1 + b;
        out[k + 2 * OC] = residual ? residual[k + 2 * OC] + (a2 + b) : a2 + b;
        out[k + 3 * OC] = residual ? residual[k + 3 * OC] + (a3 + b) : a3 + b;
      }
    }
    for (; t < T; t++)
      matmul_forward(out.subarray(t * OC, (t + 1) * OC), inp.subarray(t * IC, (t + 1) * IC), weight,
                     bias, residual ? residual.subarray(t * OC, (t + 1) * OC) : null, IC, OC);
  }

  // ---- gelu -------------------------------------------------------------------------------
  // out = 0.5 inp (1 + tanh(sqrt(2/pi) (inp + 0.044715 inp^3)))
  function gelu_forward(out, inp, n) {
    for (let i = 0; i < n; i++) {
      const x = inp[i];
      out[i] = 0.5 * x * (1 + Math.tanh(GELU_K * (x + 0.044715 * x * x * x)));
    }
  }

  // ---- attention with its KV cache --------------------------------------------------------
  // One decode step: store the token's k, v (from qkv (3C) = [q | k | v]) at pos in the caches
  // kcache, vcache (NH, maxT, hd), write out (C), its attention over positions 0..pos.
  // probs (NH, pos+1), when given, receives the attention weights (the attention view).
  const scores = new Float64Array(MAXT);
  function attention_decode(out, kcache, vcache, qkv, pos, probs) {
    const scale = 1 / Math.sqrt(HD);
    for (let h = 0; h < NH; h++) {
      const base = h * MAXT * HD;
      for (let d = 0; d < HD; d++) {
        kcache[base + pos * HD + d] = qkv[C + h * HD + d];
        vcache[base + pos * HD + d] = qkv[2 * C + h * HD + d];
      }
      let mx = -Infinity;
      for (let s = 0; s <= pos; s++) {                       // (pos+1) scores q . k_s / sqrt(hd)
        let dot = 0;
        const ks = base + s * HD;
        for (let d = 0; d < HD; d++) dot += qkv[h * HD + d] * kcache[ks + d];
        scores[s] = dot * scale;
        if (scores[s] > mx) mx = scores[s];
      }
      let sum = 0;
      for (let s = 0; s <= pos; s++) { scores[s] = Math.exp(scores[s] - mx); sum += scores[s]; }
      for (let d = 0; d < HD; d++) out[h * HD + d] = 0;
      const acc = new Float64Array(HD);
      for (let s = 0; s <= pos; s++) {                       // softmax-weighted sum of v_s
        const p = scores[s] / sum, vs = base + s * HD;
        if (probs) probs[h][s] = p;
        for (let d = 0; d < HD; d++) acc[d] += p * vcache[vs + d];
      }
      for (let d = 0; d < HD; d++) out[h * HD + d] = acc[d];
    }
  }

  // ---- tied head --------------------------------------------------------------------------
  // logits (V) = h (C) @ wte^T  (gemm(logits, h, wte, trans_b=True) in the NumPy backend)
  function gemm_head(logits, h, wte) {
    matmul_forward(logits, h, wte, ZERO_V, null, C, V);
  }
  const ZERO_V = new Float32Array(V);

  // ---- softmax ----------------------------------------------------------------------------
  // out (V) = exp(inp - max) / sum(exp(inp - max))
  function softmax_forward(out, inp) {
    let mx = -Infinity;
    for (let i = 0; i < inp.length; i++) if (inp[i] > mx) mx = inp[i];
    let sum = 0;
    for (let i = 0; i < inp.length; i++) { out[i] = Math.exp(inp[i] - mx); sum += out[i]; }
    for (let i = 0; i < inp.length; i++) out[i] /= sum;
  }

  // ---- the decoder: one token through every layer (pyllm.backend.numpy.Decoder) -------------
  function Decoder() {
    const f = (n) => new Float32Array(n);
    this.h = f(C); this.logits = f(V);
    this.rows = { x: f(MAXT * C), x2: f(MAXT * C), h: f(MAXT * C), att: f(MAXT * C),   // (T, .)
                  qkv: f(MAXT * 3 * C), fc: f(MAXT * 4 * C), fcg: f(MAXT * 4 * C) };
    this.kcache = []; this.vcache = [];                      // L x (NH, maxT, hd)
    for (let i = 0; i < L; i++) { this.kcache.push(f(NH * MAXT * HD)); this.vcache.push(f(NH * MAXT * HD)); }
    this.record = null;                                      // attention(ids): [L][NH][T][T]
  }

  // Run ids at positions pos0..pos0+T-1 (pos0 + T <= maxT) through every layer, a layer at a
  // time over all T rows (four rows share each weight read), then the head for the last row.
  // The cache must hold positions 0..pos0-1; it gains the T new ones. Returns the logits (V), in
  // a buffer the next call overwrites. Every row's values are the same whatever T is.
  Decoder.prototype.forward = function (ids, pos0) {
    const T = ids.length, R = this.rows, row = (a, t, n) => a.subarray(t * n, (t + 1) * n);
    const layernorm_rows = (out, inp, w, b) => {
      for (let t = 0; t < T; t++) layernorm_forward(row(out, t, C), row(inp, t, C), w, b);
    };
    for (let t = 0; t < T; t++) encoder_forward(row(R.x, t, C), ids[t], W["wte.weight"], W["wpe.weight"], pos0 + t);
    for (let i = 0; i < L; i++) {
      const p = "h." + i + ".";
      layernorm_rows(R.h, R.x, W[p + "ln_1.weight"], W[p + "ln_1.bias"]);
      matmul_forward_rows(R.qkv, R.h, W[p + "attn.c_attn.weight"], W[p + "attn.c_attn.bias"], null, T, C, 3 * C);
      for (let t = 0; t < T; t++) {                          // position pos0+t sees the cache 0..pos0+t
        const pos = pos0 + t;
        attention_decode(row(R.att, t, C), this.kcache[i], this.vcache[i], row(R.qkv, t, 3 * C), pos,
                         this.record ? this.record[i].map((head) => head[pos]) : null);
      }
      matmul_forward_rows(R.x2, R.att, W[p + "attn.c_proj.weight"], W[p + "attn.c_proj.bias"], R.x, T, C, C);
      layernorm_rows(R.h, R.x2, W[p + "ln_2.weight"], W[p + "ln_2.bias"]);
      matmul_forward_rows(R.fc, R.h, W[p + "mlp.c_fc.weight"], W[p + "mlp.c_fc.bias"], null, T, C, 4 * C);
      gelu_forward(R.fcg, R.fc, T * 4 * C);
      matmul_forward_rows(R.x, R.fcg, W[p + "mlp.c_proj.weight"], W[p + "mlp.c_proj.bias"], R.x2, T, 4 * C, C);
    }
    layernorm_forward(this.h, row(R.x, T - 1, C), W["ln_f.weight"], W["ln_f.bias"]);
    gemm_head(this.logits, this.h, W["wte.weight"]);
    return this.logits;
  };

  // One decode step: token tok at position pos, with the cache holding positions 0..pos-1.
  Decoder.prototype.step = function (tok, pos) { return this.forward([tok], pos); };

  // Logits after ids from an empty cache (T <= maxT).
  Decoder.prototype.prefill = function (ids) { return this.forward(ids, 0); };

  // ---- sampling: pyllm.rng.RNG (PCG32) and pyllm.model.sample_token --------------------------
  const MASK64 = (1n << 64n) - 1n, MULT = 6364136223846793005n;
  function RNG(seed, stream) {
    this.inc = ((BigInt(stream === undefined ? 54 : stream) << 1n) | 1n) & MASK64;
    this.state = 0n;
    this.next_u32();
    this.state = (this.state + (BigInt(seed) & MASK64)) & MASK64;
    this.next_u32();
  }
  RNG.prototype.next_u32 = function () {
    const old = this.state;
    this.state = (old * MULT + this.inc) & MASK64;
    const xs = Number((((old >> 18n) ^ old) >> 27n) & 0xFFFFFFFFn), rot = Number(old >> 59n);
    return ((xs >>> rot) | (xs << ((32 - rot) & 31))) >>> 0;
  };
  RNG.prototype.random = function () {                       // [0, 1), 53 random bits
    const hi = this.next_u32() >>> 5, lo = this.next_u32() >>> 6;
    return (hi * 67108864.0 + lo) / 9007199254740992.0;
  };

  function argmax(z) {                                       // the first largest (np.argmax)
    let best = 0;
    for (let i = 1; i < z.length; i++) if (z[i] > z[best]) best = i;
    return best;
  }

  // Greedy when temperature is 0. Otherwise: divide by temperature, keep the top_k largest,
  // softmax, keep the smallest prefix (by descending probability) whose mass reaches top_p,
  // renormalise, and invert the CDF at one uniform draw. Ties sort by token id.
  function sample_token(logits, temperature, topK, topP, rng) {
    for (let i = 0; i < logits.length; i++)
      if (!isFinite(logits[i])) throw new Error("the model produced non-finite logits");
    if (temperature === 0) return argmax(logits);
    let order = Array.from(logits.keys()).sort((a, b) => (logits[b] - logits[a]) || (a - b));
    if (topK) order = order.slice(0, topK);
    const z0 = logits[order[0]] / temperature;
    let p = order.map((i) => Math.exp(logits[i] / temperature - z0));
    let sum = p.reduce((a, b) => a + b, 0);
    p = p.map((x) => x / sum);
    if (topP !== null && topP !== undefined && topP < 1) {
      let c = 0, keep = p.length;
      for (let i = 0; i < p.length; i++) { c += p[i]; if (c >= topP) { keep = i + 1; break; } }
      order = order.slice(0, keep); p = p.slice(0, keep);
      sum = p.reduce((a, b) => a + b, 0);
      p = p.map((x) => x / sum);
    }
    const u = rng.random();
    let c = 0;
    for (let i = 0; i < p.length; i++) { c += p[i]; if (c > u) return order[i]; }
    return order[order.length - 1];
  }

  // ---- tokenizer: char (one id per character) or byte-level BPE (pyllm.BPETokenizer) ---------
  const TOK = DATA.tokenizer;
  const STOI = new Map();
  if (TOK.kind === "char") TOK.chars.forEach((ch, i) => STOI.set(ch, i));

  // BPE: the bytes of every id (bytes, then merges in rank order), each pair's merge rank.
  const BPE = TOK.kind === "bpe" ? (function () {
    const vocab = new Array(TOK.vocab_size), ranks = new Map(), m = TOK.merges, nm = m.length / 3;
    TOK.byte_ids.forEach((id, b) => { vocab[id] = [b]; });
    for (let r = 0; r < nm; r++) {
      const a = m[3 * r], b = m[3 * r + 1], n = m[3 * r + 2];
      vocab[n] = vocab[a].concat(vocab[b]);
      ranks.set(a * 1048576 + b, r);
    }
    vocab[TOK.eot_id] = Array.from(new TextEncoder().encode(TOK.special));
    return { vocab: vocab, ranks: ranks, cache: new Map() };
  })() : null;

  // GPT-2's pre-tokenizer (pyllm.tokenizer.gpt2_split): \s as Python's str.isspace() without
  // U+001C..U+001F, letters \p{L}, numbers \p{N}, leftmost-first alternation.
  const WS = "\\t\\n\\v\\f\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
  const SPLIT = new RegExp("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" + WS + "\\p{L}\\p{N}]+|["
                           + WS + "]+(?![^" + WS + "])|[" + WS + "]+", "gu");

  // One chunk's ids: its UTF-8 bytes, then the lowest-rank adjacent pair merged everywhere
  // (left to right, non-overlapping), repeated while some pair has a merge.
  function bpe(chunk) {
    let ids = Array.from(new TextEncoder().encode(chunk), (b) => TOK.byte_ids[b]);
    const m = TOK.merges;
    while (ids.length >= 2) {
      let best = -1;
      for (let i = 0; i + 1 < ids.length; i++) {
        const r = BPE.ranks.get(ids[i] * 1048576 + ids[i + 1]);
        if (r !== undefined && (best < 0 || r < best)) best = r;
      }
      if (best < 0) break;
      const a = m[3 * best], b = m[3 * best + 1], n = m[3 * best + 2], out = [];
      for (let i = 0; i < ids.length; i++) {
        if (i + 1 < ids.length && ids[i] === a && ids[i + 1] === b) { out.push(n); i++; } else out.push(ids[i]);
      }
      ids = out;
    }
    return ids;
  }

  function bpeEncode(text) {
    const out = [];
    String(text).split(TOK.special).forEach((piece, k) => {
      if (k) out.push(TOK.eot_id);
      for (const mt of piece.matchAll(SPLIT)) {
        let ids = BPE.cache.get(mt[0]);
        if (ids === undefined) { ids = bpe(mt[0]); if (BPE.cache.size < 65536) BPE.cache.set(mt[0], ids); }
        for (const id of ids) out.push(id);
      }
    });
    return out;
  }

  // {ids, dropped}: dropped lists the characters the vocabulary does not have (left out).
  function encodeChecked(text) {
    if (BPE) return { ids: bpeEncode(text), dropped: [] };
    const ids = [], dropped = [];
    for (const ch of String(text)) {
      const id = STOI.get(ch);
      if (id === undefined) dropped.push(ch); else ids.push(id);
    }
    return { ids: ids, dropped: dropped };
  }
  function encode(text) { return encodeChecked(text).ids; }
  function decode(ids) {
    if (BPE) {                                               // UTF-8, errors replaced by U+FFFD
      const bytes = [];
      for (const id of ids) for (const b of (BPE.vocab[id] || [])) bytes.push(b);
      return new TextDecoder("utf-8").decode(new Uint8Array(bytes));
    }
    let s = "";
    for (const id of ids) s += id < TOK.chars.length ? TOK.chars[id] : "\ufffd";
    return s;
  }

  // ---- the model API --------------------------------------------------------------------------
  const dec = new Decoder();

  function checkIds(ids) {
    ids = Array.from(ids, Number);
    if (ids.length === 0) throw new Error("the prompt has no tokens");
    for (const t of ids) if (!Number.isInteger(t) || t < 0 || t >= V) throw new Error("token id " + t + " is outside 0.." + (V - 1));
    return ids;
  }

  // Last-position logits (V) of ids: a window of the last block_size tokens, as GPT.generate.
  function forward(ids) {
    ids = checkIds(ids);
    return Float32Array.from(dec.prefill(ids.slice(-MAXT)));
  }

  // Attention weights of ids (their first block_size): maps[l][h][t] a Float32Array(T), row t
  // over sources 0..t (zeros above the diagonal).
  function attention(ids) {
    ids = checkIds(ids).slice(0, MAXT);
    const T = ids.length, maps = [];
    for (let l = 0; l < L; l++) {
      const heads = [];
      for (let h = 0; h < NH; h++) { const rows = []; for (let t = 0; t < T; t++) rows.push(new Float32Array(T)); heads.push(rows); }
      maps.push(heads);
    }
    dec.record = maps;
    try { dec.prefill(ids); } finally { dec.record = null; }
    return { tokens: ids.map((i) => decode([i])), maps: maps };
  }

  const nextTick = () => new Promise((r) => setTimeout(r, 0));

  // generate(prompt, n, {temperature, topK, topP, seed, onToken}) -> Promise of the continuation.
  // The same loop as GPT.stream: the cache grows while the text fits block_size; after that each
  // token is predicted from the last block_size tokens, recomputed (positions shift). Work is cut
  // into slices of about 15 ms, so the page keeps answering.
  async function generate(prompt, n, opts) {
    opts = opts || {};
    const temperature = opts.temperature === undefined ? 1 : Number(opts.temperature);
    const topK = opts.topK ? Number(opts.topK) : null;
    const topP = opts.topP === undefined || opts.topP === null || opts.topP === "" ? null : Number(opts.topP);
    const rng = new RNG(Math.trunc(Number(opts.seed || 0)));
    if (!(temperature >= 0)) throw new Error("temperature must be >= 0");
    const seq = checkIds(typeof prompt === "string" ? encode(prompt) : prompt);
    const out = [];
    let logits = null, sliceStart = performance.now();
    const t0 = performance.now();
    for (let step = 0; step < n; step++) {
      const T = seq.length;
      if (logits !== null && T <= MAXT) logits = dec.step(seq[T - 1], T - 1);
      else logits = dec.prefill(seq.slice(-MAXT));
      const nxt = sample_token(logits, temperature, topK, topP, rng);
      seq.push(nxt); out.push(nxt);
      api.tokensPerSecond = out.length / Math.max(1e-3, (performance.now() - t0) / 1000);
      if (opts.onToken) opts.onToken(decode(out), nxt);        // the continuation so far
      if (opts.signal && opts.signal.stopped) break;
      if (performance.now() - sliceStart > 15) { await nextTick(); sliceStart = performance.now(); }
    }
    return decode(out);
  }

  const api = {
    config: CFG, tokenizer: TOK.kind, quantization: DATA.quantization,
    encode: encode, decode: decode, encodeChecked: encodeChecked,
    forward: forward, generate: generate, attention: attention,
    sample_token: sample_token, RNG: RNG, tokensPerSecond: 0, ready: false,
  };
  window.pyllm = api;

  // ---- the page ---------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  function notice(text) { $("notice").textContent = text; $("notice").hidden = !text; }
  function droppedNotice(dropped) {
    if (!dropped.length) return "";
    const uniq = Array.from(new Set(dropped)).map((c) => JSON.stringify(c)).join(", ");
    return "Left out " + dropped.length + " character(s) the model's vocabulary does not have: " + uniq;
  }

  function info() {
    const rows = [["layers", L], ["heads", NH], ["embedding", C], ["context", MAXT],
                  ["vocabulary", V + " (" + TOK.kind + ")"], ["weights", DATA.quantization],
                  ["parameters", DATA.num_params.toLocaleString("en")]];
    $("info").textContent = rows.map((r) => r[0] + " " + r[1]).join(" \u00b7 ");
  }


  // ---- the attention panel ------------------------------------------------------------------
  // Viridis (colour-blind safe), linear between ten anchors; t in [0, 1] -> [r, g, b].
  const VIRIDIS = [[68, 1, 84], [72, 40, 120], [62, 74, 137], [49, 104, 142], [38, 130, 142],
                   [31, 158, 137], [53, 183, 121], [109, 205, 89], [180, 222, 44], [253, 231, 37]];
  function viridis(t) {
    t = Math.min(1, Math.max(0, t || 0)) * (VIRIDIS.length - 1);
    const i = Math.min(VIRIDIS.length - 2, Math.floor(t)), f = t - i, a = VIRIDIS[i], b = VIRIDIS[i + 1];
    return [0, 1, 2].map((k) => Math.round(a[k] + f * (b[k] - a[k])));
  }
  function shownToken(s) {
    return s.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5").replace(/ /g, "\u2423") || "\u2205";
  }
  function rowMax(row) { let m = 0; for (let i = 0; i < row.length; i++) if (row[i] > m) m = row[i]; return m || 1; }

  let panel = null;                                          // {ids, tokens, maps} of the text shown
  function fillSelect(sel, n, value) {
    if (sel.options.length !== n) {
      sel.textContent = "";
      for (let i = 0; i < n; i++) { const o = document.createElement("option"); o.value = o.textContent = String(i); sel.appendChild(o); }
    }
    sel.value = String(value);
  }

  // The chosen head's last row as a strip of token cells (colour, title = weight) and the grid's
  // highlight; records what it drew in api.lastPanel.
  function drawSelected() {
    if (!panel) return null;
    const layer = Number($("attn-layer").value) || 0, head = Number($("attn-head").value) || 0;
    const T = panel.ids.length, row = panel.maps[layer][head][T - 1], m = rowMax(row);
    const strip = $("attn-row");
    strip.textContent = "";
    for (let j = 0; j < T; j++) {
      const c = viridis(row[j] / m), cell = document.createElement("span");
      cell.textContent = shownToken(panel.tokens[j]);
      cell.style.background = "rgb(" + c.join(",") + ")";
      cell.style.color = row[j] / m > 0.55 ? "#000" : "#fff";
      cell.title = JSON.stringify(panel.tokens[j]) + " #" + j + ": " + row[j].toFixed(4);
      strip.appendChild(cell);
    }
    const cells = $("attn-grid").children;
    for (let k = 0; k < cells.length; k++) cells[k].classList.toggle("sel", k === layer * NH + head);
    api.lastPanel = { layer: layer, head: head, ids: panel.ids.slice(), tokens: panel.tokens.slice(),
                      weights: Array.from(row) };
    return api.lastPanel;
  }

  // One canvas per (layer, head), T x T pixels: row t over sources 0..t, blank above the diagonal.
  function drawGrid() {
    const grid = $("attn-grid"), T = panel.ids.length;
    grid.textContent = "";
    grid.style.gridTemplateColumns = "repeat(" + NH + ", minmax(0, 1fr))";
    for (let l = 0; l < L; l++) for (let h = 0; h < NH; h++) {
      const cv = document.createElement("canvas");
      cv.width = cv.height = T;
      cv.title = "layer " + l + ", head " + h;
      cv.dataset.layer = l; cv.dataset.head = h;
      const ctx = cv.getContext("2d"), img = ctx.createImageData(T, T), map = panel.maps[l][h];
      for (let t = 0; t < T; t++) {
        const row = map[t], m = rowMax(row);
        for (let s = 0; s <= t; s++) {
          const c = viridis(row[s] / m), o = 4 * (t * T + s);
          img.data[o] = c[0]; img.data[o + 1] = c[1]; img.data[o + 2] = c[2]; img.data[o + 3] = 255;
        }
      }
      ctx.putImageData(img, 0, 0);
      cv.addEventListener("click", () => { fillSelect($("attn-layer"), L, l); fillSelect($("attn-head"), NH, h); drawSelected(); });
      grid.appendChild(cv);
    }
  }

  // showAttention(text or ids[, layer, head]): the panel for the last block_size tokens.
  function showAttention(text, layer, head) {
    const ids = checkIds(typeof text === "string" ? encode(text) : text).slice(-MAXT);
    const att = attention(ids);
    panel = { ids: ids, tokens: att.tokens, maps: att.maps };
    const cl = (v, n, d) => (v === undefined || v === null ? d : Math.min(n - 1, Math.max(0, Math.trunc(Number(v)) || 0)));
    fillSelect($("attn-layer"), L, cl(layer, L, Number($("attn-layer").value) || 0));
    fillSelect($("attn-head"), NH, cl(head, NH, Number($("attn-head").value) || 0));
    drawGrid();
    $("attn").hidden = false;
    return drawSelected();
  }
  function refreshPanel(ids) {
    try { if (ids.length) showAttention(ids); } catch (e) { notice(String(e.message || e)); }
  }
  api.showAttention = showAttention;
  api.lastPanel = null;

  let running = null;
  async function onGenerate() {
    if (running) { running.stopped = true; return; }
    const { ids, dropped } = encodeChecked($("prompt").value);
    notice(droppedNotice(dropped));
    if (!ids.length) { notice((droppedNotice(dropped) + " The prompt has no tokens the model knows.").trim()); return; }
    const signal = running = { stopped: false };
    $("generate").textContent = "Stop";
    $("output").textContent = "";
    const span = document.createElement("span");
    span.className = "prompt";
    span.textContent = decode(ids);
    $("output").appendChild(span);
    const gen = document.createTextNode("");
    $("output").appendChild(gen);
    const all = ids.slice();                                 // the text so far, as ids
    try {
      await generate(ids, Number($("length").value), {
        temperature: Number($("temperature").value), topK: Number($("topk").value) || null,
        topP: $("topp").value === "" ? null : Number($("topp").value), seed: Number($("seed").value),
        signal: signal,
        onToken: (text, nxt) => { all.push(nxt); gen.data = text; $("speed").textContent = api.tokensPerSecond.toFixed(1) + " tokens/s"; },
      });
    } catch (e) {
      notice(String(e.message || e));
    } finally {
      running = null;
      $("generate").textContent = "Generate";
    }
    refreshPanel(all);
  }

  // ?prompt=...&n=50&temperature=0 writes the continuation into #output;
  // ?prompt=...&logits=1 writes the last-position logits as JSON into #output.
  async function queryMode(q) {
    const { ids, dropped } = encodeChecked(q.get("prompt"));
    notice(droppedNotice(dropped));
    $("prompt").value = q.get("prompt");
    const out = $("output");
    try {
      if (q.get("logits") === "1") {
        out.textContent = JSON.stringify(Array.from(forward(ids)));
      } else {
        const num = (k, d) => (q.has(k) && q.get(k) !== "" ? Number(q.get(k)) : d);
        const all = ids.slice();
        out.textContent = await generate(ids, num("n", 50), {
          temperature: num("temperature", 0), topK: num("top_k", null) || num("topK", null),
          topP: num("top_p", num("topP", null)), seed: num("seed", 0),
          onToken: (text, nxt) => all.push(nxt),
        });
        $("speed").textContent = api.tokensPerSecond.toFixed(1) + " tokens/s";
        refreshPanel(all);
      }
    } catch (e) {
      notice(String(e.message || e));
      out.textContent = "";
    }
    document.body.dataset.done = "1";
    api.done = true;
  }

  function init() {
    info();
    $("generate").addEventListener("click", onGenerate);
    $("attn-layer").addEventListener("change", drawSelected);
    $("attn-head").addEventListener("change", drawSelected);
    api.ready = true;
    const q = new URLSearchParams(location.search);
    if (q.has("prompt")) queryMode(q); else document.body.dataset.done = "1";
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
