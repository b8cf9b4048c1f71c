// pyllm attention viewer: plain ES2017, no libraries, nothing fetched.
//
// Reads the JSON in the #pyllm-data element, draws a layer x head grid of small heatmaps and an
// enlarged, token-labelled heatmap of the selected head, with a text view and SVG export.
//
// Data encoding ("uint16le-tril-base64"): data.maps is base64 of unsigned 16-bit little-endian
// integers q = round(p * 65535), for each layer l, head h, destination dst and source src <= dst,
// in that order (the causal lower triangle only, T * (T + 1) / 2 values per head). The bytes are
// combined by hand (lo | hi << 8), so the machine's byte order does not matter; p = q / 65535 is
// within 7.7e-6 of the weight written.
//
// For scripts and tests: window.pyllmViewer = {ready, drawMs, errors, nLayer, nHead, T, tokens,
// selected, value(l, h, dst, src), select(l, h), hoverInfo(dst, src), hoverToken(dst), label(i),
// exportSvg([l, h]), cellCenter(dst, src)}.
(function () {
  'use strict';
  const t0 = performance.now();
  const api = window.pyllmViewer = {ready: false, drawMs: NaN, errors: []};
  window.addEventListener('error', (e) => api.errors.push(String(e.message || e.error || e)));
  window.addEventListener('unhandledrejection', (e) => api.errors.push(String(e.reason)));

  const SVG_NS = 'http://www.w3.org/2000/svg'; // a namespace name, never fetched
  const THUMB_MAX = 256;   // thumbnails hold at most 256 x 256 pixels (max over blocks above that)
  const BIG_MAX = 8192;    // the enlarged heatmap is at most this many CSS pixels a side
  const HIGHLIGHT = [230, 97, 0];   // text-view shading (orange, apart from viridis)

  // viridis (van der Walt & Smith, matplotlib's default colour map; perceptually uniform and
  // colour-blind safe) at 9 evenly spaced points; linear interpolation in sRGB fills 256 entries.
  const VIRIDIS_STOPS = ['440154', '472d7b', '3b528b', '2c728e', '21908c', '27ad81', '5dc863',
                         'aadc32', 'fde725'];

  function makeLut(stops) {
    const rgb = stops.map((s) => [0, 2, 4].map((i) => parseInt(s.substr(i, 2), 16)));
    const lut = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const x = i / 255 * (rgb.length - 1);
      const k = Math.min(Math.floor(x), rgb.length - 2);
      const f = x - k;
      for (let c = 0; c < 3; c++) lut[3 * i + c] = Math.round(rgb[k][c] * (1 - f) + rgb[k + 1][c] * f);
    }
    return lut;
  }
  const LUT = makeLut(VIRIDIS_STOPS);

  const HEX = [];                    // the table as '#rrggbb' strings, for SVG
  for (let i = 0; i < 256; i++) {
    HEX.push('#' + [LUT[3 * i], LUT[3 * i + 1], LUT[3 * i + 2]]
      .map((v) => v.toString(16).padStart(2, '0')).join(''));
  }

  function decodeMaps(b64, count) {
    const bin = atob(b64);
    if (bin.length !== 2 * count) {
      throw new Error('maps data holds ' + bin.length + ' bytes, expected ' + 2 * count);
    }
    const q = new Uint16Array(count);
    for (let i = 0, j = 0; i < count; i++, j += 2) {
      q[i] = bin.charCodeAt(j) | (bin.charCodeAt(j + 1) << 8);   // little-endian
    }
    return q;
  }

  // ---- token text: what a token looks like on screen -------------------------------------------
  const CONTROL_MARKS = {'\n': '\u21b5', '\t': '\u2192', '\r': '\u240d'};

  function wellFormed(s) {          // lone UTF-16 surrogates (not valid XML) become U+FFFD
    let out = '';
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
        const d = s.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) { out += s[i] + s[i + 1]; i++; continue; }
      }
      out += (c >= 0xd800 && c <= 0xdfff) ? '\ufffd' : s[i];
    }
    return out;
  }

  // control characters made visible (newline as a return arrow, others as \xNN); spaces kept
  function shown(tok) {
    return wellFormed(tok).replace(/[\u0000-\u001f\u007f-\u009f]/g, (ch) => CONTROL_MARKS[ch] ||
      '\\x' + ch.charCodeAt(0).toString(16).padStart(2, '0'));
  }

  // axis labels: as shown(), with spaces as middle dots and the empty token as an empty-set sign
  function labelOf(tok) {
    return tok === '' ? '\u2205' : shown(tok).replace(/ /g, '\u00b7');
  }

  // text for XML: markup characters escaped; shown() has already removed what XML cannot carry
  function xmlText(s) {
    return shown(s).replace(/[\ufffe\uffff]/g, '\ufffd').replace(/&/g, '&amp;')
      .replace(/[<]/g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
  }

  function clip(s, n) { return s.length > n ? s.slice(0, n - 1) + '\u2026' : s; }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---- data --------------------------------------------------------------------------------------
  const data = JSON.parse(document.getElementById('pyllm-data').textContent);
  const L = data.nLayer, NH = data.nHead, T = data.T, tokens = data.tokens;
  if (data.encoding !== 'uint16le-tril-base64' || tokens.length !== T) {
    throw new Error('unexpected data: encoding ' + data.encoding + ', ' + tokens.length + ' tokens');
  }
  const TRI = T * (T + 1) / 2;
  const Q = decodeMaps(data.maps, L * NH * TRI);
  const labels = tokens.map(labelOf);

  function base(l, h) { return (l * NH + h) * TRI; }

  function checkIndex(name, v, n) {
    if (!Number.isInteger(v) || v < 0 || v >= n) {
      throw new RangeError(name + ' must be an integer in [0, ' + n + '), got ' + v);
    }
  }

  function value(l, h, dst, src) {
    checkIndex('layer', l, L); checkIndex('head', h, NH);
    checkIndex('dst', dst, T); checkIndex('src', src, T);
    return src > dst ? 0 : Q[base(l, h) + dst * (dst + 1) / 2 + src] / 65535;
  }

  // ---- grid of heads -----------------------------------------------------------------------------
  const BIN = Math.ceil(T / THUMB_MAX), S = Math.ceil(T / BIN);

  // one pixel per (dst, src) cell, or the largest weight of a BIN x BIN block; above the diagonal
  // stays transparent (the page background shows)
  function paintHead(img, l, h, bin) {
    const px = img.data, w = img.width;
    let k = base(l, h);
    if (bin === 1) {
      for (let d = 0; d < T; d++) {
        for (let s = 0, p = 4 * d * w; s <= d; s++, k++, p += 4) {
          const c = 3 * (Q[k] >> 8);
          px[p] = LUT[c]; px[p + 1] = LUT[c + 1]; px[p + 2] = LUT[c + 2]; px[p + 3] = 255;
        }
      }
      return;
    }
    const m = new Int32Array(w * w).fill(-1);
    for (let d = 0; d < T; d++) {
      const row = ((d / bin) | 0) * w;
      for (let s = 0; s <= d; s++, k++) {
        const i = row + ((s / bin) | 0);
        if (Q[k] > m[i]) m[i] = Q[k];
      }
    }
    for (let i = 0, p = 0; i < m.length; i++, p += 4) {
      if (m[i] < 0) continue;
      const c = 3 * (m[i] >> 8);
      px[p] = LUT[c]; px[p + 1] = LUT[c + 1]; px[p + 2] = LUT[c + 2]; px[p + 3] = 255;
    }
  }

  const thumbs = [];   // thumbs[l][h] = button
  function buildGrid() {
    const grid = document.getElementById('grid');
    grid.style.gridTemplateColumns = 'auto repeat(' + NH + ', var(--thumb))';
    const best = data.scores.map(([, arr]) => {
      let bl = 0, bh = 0;
      arr.forEach((row, l) => row.forEach((v, h) => { if (v > arr[bl][bh]) { bl = l; bh = h; } }));
      return [bl, bh];
    });
    for (let l = 0; l < L; l++) {
      grid.appendChild(el('div', 'layer-label', 'L' + l));
      thumbs.push([]);
      for (let h = 0; h < NH; h++) {
        const b = el('button', 'head');
        b.type = 'button';
        b.dataset.layer = l; b.dataset.head = h;
        b.setAttribute('aria-label', 'layer ' + l + ' head ' + h);
        const cv = el('canvas');
        cv.width = S; cv.height = S;
        const ctx = cv.getContext('2d');
        const img = ctx.createImageData(S, S);
        paintHead(img, l, h, BIN);
        ctx.putImageData(img, 0, 0);
        b.appendChild(cv);
        b.appendChild(el('span', 'name', 'L' + l + ' H' + h));
        if (data.scores.length) {
          const sc = el('span', 'scores');
          data.scores.forEach(([name, arr], i) => {
            const isBest = best[i][0] === l && best[i][1] === h;
            const line = el('span', isBest ? 'best' : '',
                            name + ' ' + arr[l][h].toFixed(2) + (isBest ? ' \u2605' : ''));
            if (isBest) line.title = 'strongest ' + name + ' head';
            sc.appendChild(line);
            sc.appendChild(document.createElement('br'));
          });
          b.appendChild(sc);
        }
        b.addEventListener('click', () => select(l, h));
        grid.appendChild(b);
        thumbs[l].push(b);
      }
    }
    const legend = document.getElementById('legend');
    const lc = el('canvas');
    lc.width = 256; lc.height = 1;
    const lctx = lc.getContext('2d'), limg = lctx.createImageData(256, 1);
    for (let i = 0; i < 256; i++) {
      limg.data.set([LUT[3 * i], LUT[3 * i + 1], LUT[3 * i + 2], 255], 4 * i);
    }
    lctx.putImageData(limg, 0, 0);
    legend.append(el('span', '', 'weight 0'), lc, el('span', '', '1'));
  }

  function buildInfo() {
    const dl = document.getElementById('info');
    // the sizes first, unless the caller's info already gives them
    const keys = new Set(data.info.map(([k]) => k.toLowerCase()));
    const rows = [];
    if (!keys.has('tokens')) rows.push(['tokens', String(T)]);
    if (!keys.has('layers') && !keys.has('heads')) rows.push(['layers \u00d7 heads', L + ' \u00d7 ' + NH]);
    rows.push(...data.info);
    for (const [k, v] of rows) {
      const d = el('div');
      d.append(el('dt', '', k), el('dd', '', v));
      dl.appendChild(d);
    }
  }

  // ---- the selected head, enlarged ---------------------------------------------------------------
  const state = {l: 0, h: 0, cell: 1, ml: 0, mt: 0, hoverDst: -1};
  const big = document.getElementById('big'), overlay = document.getElementById('big-overlay');
  const wrap = document.getElementById('big-wrap'), zoom = document.getElementById('zoom');
  const readout = document.getElementById('readout');
  const LABEL_FONT = '11px ui-monospace, Menlo, Consolas, monospace';

  const measureCtx = document.createElement('canvas').getContext('2d');
  function labelWidth(font, maxChars) {
    measureCtx.font = font;
    let w = 0;
    for (const s of labels) w = Math.max(w, measureCtx.measureText(clip(s, maxChars)).width);
    return Math.ceil(w);
  }
  const bigLabelW = labelWidth(LABEL_FONT, 16);

  function drawBig() {
    const cell = state.cell, n = T * cell;
    const margin = bigLabelW + 10;
    state.ml = margin; state.mt = margin;
    const W = margin + n + 2, H = margin + n + 2;
    const dpr = window.devicePixelRatio || 1;
    for (const c of [big, overlay]) {
      c.width = Math.round(W * dpr); c.height = Math.round(H * dpr);
      c.style.width = W + 'px'; c.style.height = H + 'px';
    }
    const ctx = big.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.fillStyle = '#fff';
    ctx.fillRect(0, 0, W, H);
    // the heatmap: one pixel per cell on a scratch canvas, scaled up without smoothing
    const off = document.createElement('canvas');
    off.width = T; off.height = T;
    const octx = off.getContext('2d'), img = octx.createImageData(T, T);
    paintHead(img, state.l, state.h, 1);
    octx.putImageData(img, 0, 0);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(off, margin, margin, n, n);
    ctx.strokeStyle = '#d9d9de';
    ctx.strokeRect(margin - 0.5, margin - 0.5, n + 1, n + 1);
    // token labels: every one when cells are tall enough, else every stride-th
    const stride = Math.max(1, Math.ceil(12 / cell));
    ctx.font = LABEL_FONT;
    ctx.fillStyle = '#1d1d1f';
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'right';
    for (let d = 0; d < T; d += stride) {
      ctx.fillText(clip(labels[d], 16), margin - 4, margin + (d + 0.5) * cell);
    }
    ctx.textAlign = 'left';
    for (let s = 0; s < T; s += stride) {
      ctx.save();
      ctx.translate(margin + (s + 0.5) * cell, margin - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.fillText(clip(labels[s], 16), 0, 0);
      ctx.restore();
    }
    drawOverlay(-1, -1);
  }

  function drawOverlay(dst, src) {
    const ctx = overlay.getContext('2d'), dpr = window.devicePixelRatio || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, overlay.width, overlay.height);
    const c = state.cell, x0 = state.ml, y0 = state.mt;
    ctx.lineWidth = 1.5;
    if (state.hoverDst >= 0) {           // the destination row chosen in the text view
      ctx.strokeStyle = 'rgba(230, 97, 0, 0.9)';
      ctx.strokeRect(x0 - 0.5, y0 + state.hoverDst * c - 0.5, (state.hoverDst + 1) * c + 1, c + 1);
    }
    if (dst >= 0) {
      ctx.strokeStyle = '#d6336c';
      ctx.strokeRect(x0 + src * c - 1, y0 + dst * c - 1, c + 2, c + 2);
    }
  }

  function hoverInfo(dst, src) {
    const v = value(state.l, state.h, dst, src);
    const text = 'dst ' + dst + " '" + shown(tokens[dst]) + "' \u2190 src " + src + " '" +
      shown(tokens[src]) + "': " + v.toFixed(4);
    return src > dst ? text + ' (masked: the source comes later)' : text;
  }

  function cellAt(clientX, clientY) {
    const r = big.getBoundingClientRect();
    const x = clientX - r.left - state.ml, y = clientY - r.top - state.mt;
    const src = Math.floor(x / state.cell), dst = Math.floor(y / state.cell);
    return (x < 0 || y < 0 || src >= T || dst >= T) ? null : [dst, src];
  }

  big.addEventListener('mousemove', (e) => {
    const at = cellAt(e.clientX, e.clientY);
    if (!at) { drawOverlay(-1, -1); return; }
    readout.textContent = hoverInfo(at[0], at[1]);
    if (at[0] !== state.hoverDst) shadeText(at[0]);
    drawOverlay(at[0], at[1]);
  });
  big.addEventListener('mouseleave', () => drawOverlay(-1, -1));

  // client coordinates of a cell's centre, scrolled into view first (for tests and scripts)
  function cellCenter(dst, src) {
    checkIndex('dst', dst, T); checkIndex('src', src, T);
    const px = state.ml + (src + 0.5) * state.cell, py = state.mt + (dst + 0.5) * state.cell;
    wrap.scrollLeft = Math.max(0, px - wrap.clientWidth / 2);
    wrap.scrollTop = Math.max(0, py - wrap.clientHeight / 2);
    let r = big.getBoundingClientRect();
    const y = r.top + py;
    if (y < 0 || y > window.innerHeight) window.scrollBy(0, y - window.innerHeight / 2);
    r = big.getBoundingClientRect();
    return {x: r.left + px, y: r.top + py};
  }

  function select(l, h) {
    checkIndex('layer', l, L); checkIndex('head', h, NH);
    thumbs[state.l][state.h].classList.remove('selected');
    thumbs[state.l][state.h].setAttribute('aria-pressed', 'false');
    state.l = l; state.h = h;
    thumbs[l][h].classList.add('selected');
    thumbs[l][h].setAttribute('aria-pressed', 'true');
    api.selected = [l, h];
    document.getElementById('detail-title').textContent = 'L' + l + ' H' + h;
    drawBig();
    if (state.hoverDst >= 0) shadeText(state.hoverDst);
  }

  // ---- text view ---------------------------------------------------------------------------------
  const spans = [];
  function buildText() {
    const box = document.getElementById('text');
    const frag = document.createDocumentFragment();
    tokens.forEach((tok, i) => {
      const s = el('span', tok === '' ? 'tok empty' : 'tok');
      s.dataset.i = i;
      if (tok === '') {
        s.textContent = '\u2205';
      } else {
        // newlines stay line breaks (after a visible mark); other control characters are marked
        const parts = wellFormed(tok).split(/([\u0000-\u0008\u000b-\u001f\u007f-\u009f\n])/);
        for (const p of parts) {
          if (p === '') continue;
          if (p.length === 1 && /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\n]/.test(p)) {
            s.appendChild(el('span', 'ctl', shown(p)));
            if (p === '\n') s.appendChild(document.createTextNode('\n'));
          } else {
            s.appendChild(document.createTextNode(p));
          }
        }
      }
      spans.push(s);
      frag.appendChild(s);
    });
    box.appendChild(frag);
    box.addEventListener('mouseover', (e) => {
      const t = e.target.closest ? e.target.closest('.tok') : null;
      if (t) hoverToken(Number(t.dataset.i));
    });
  }

  // shade the sources of destination dst by weight (opacity = weight / the row's largest weight)
  function shadeText(dst) {
    if (state.hoverDst >= 0) spans[state.hoverDst].classList.remove('dst');
    state.hoverDst = dst;
    spans[dst].classList.add('dst');
    let max = 0;
    for (let s = 0; s <= dst; s++) max = Math.max(max, value(state.l, state.h, dst, s));
    for (let s = 0; s < T; s++) {
      const sp = spans[s];
      if (s > dst) { sp.style.backgroundColor = ''; sp.title = ''; continue; }
      const w = value(state.l, state.h, dst, s), a = max > 0 ? w / max : 0;
      sp.style.backgroundColor = 'rgba(' + HIGHLIGHT.join(', ') + ', ' + a.toFixed(3) + ')';
      sp.title = 'weight ' + w.toFixed(4);
    }
  }

  function hoverToken(dst) {
    checkIndex('dst', dst, T);
    shadeText(dst);
    const top = [];
    for (let s = 0; s <= dst; s++) top.push([value(state.l, state.h, dst, s), s]);
    top.sort((a, b) => b[0] - a[0]);
    readout.textContent = 'dst ' + dst + " '" + shown(tokens[dst]) + "' attends to " +
      top.slice(0, 3).map(([v, s]) => 'src ' + s + " '" + shown(tokens[s]) + "' " + v.toFixed(4))
        .join(', ');
    drawOverlay(-1, -1);
    return readout.textContent;
  }

  // ---- SVG export --------------------------------------------------------------------------------
  function exportSvg(l, h) {
    if (l === undefined) { l = state.l; h = state.h; }
    checkIndex('layer', l, L); checkIndex('head', h, NH);
    const cell = 12, font = '10px monospace';
    const band = 18;   // the caption's strip above the labels
    const margin = labelWidth(font, 1e9) + 10, n = T * cell;
    const caption = shown(data.title) + ': L' + l + ' H' + h +
      ' (rows: destination tokens, columns: source tokens)';
    measureCtx.font = font;
    const W = Math.max(margin + n + 4, Math.ceil(measureCtx.measureText(caption).width) + 8);
    const H = band + margin + n + 4, x0 = margin, y0 = band + margin;
    // built as text (a DOM of T * (T + 1) / 2 elements is 10x slower); '<\/' keeps the script
    // element's closing tag out of this file
    const out = ['<?xml version="1.0" encoding="UTF-8"?>\n',
                 '<svg xmlns="' + SVG_NS + '" width="' + W + '" height="' + H + '" viewBox="0 0 ' +
                 W + ' ' + H + '" font-family="monospace" font-size="10">\n',
                 '<title>' + xmlText(data.title + ': layer ' + l + ' head ' + h) + '<\/title>\n',
                 '<rect class="background" width="' + W + '" height="' + H + '" fill="#ffffff"/>\n',
                 '<text class="caption" x="4" y="13" fill="#6b6b70">' + xmlText(caption) +
                 '<\/text>\n<g class="cells">\n'];
    let k = base(l, h);
    for (let d = 0; d < T; d++) {
      const y = y0 + d * cell;
      for (let s = 0; s <= d; s++, k++) {
        out.push('<rect class="cell" x="' + (x0 + s * cell) + '" y="' + y + '" width="' + cell +
                 '" height="' + cell + '" fill="' + HEX[Q[k] >> 8] + '" data-w="' +
                 (Q[k] / 65535).toFixed(4) + '"/>\n');
      }
    }
    out.push('<\/g>\n<g class="dst-labels" text-anchor="end" fill="#1d1d1f">\n');
    for (let i = 0; i < T; i++) {
      out.push('<text class="dst-label" x="' + (x0 - 4) + '" y="' + (y0 + (i + 0.5) * cell + 3.5) +
               '">' + xmlText(labels[i]) + '<\/text>\n');
    }
    out.push('<\/g>\n<g class="src-labels" fill="#1d1d1f">\n');
    for (let i = 0; i < T; i++) {
      out.push('<text class="src-label" transform="translate(' + (x0 + (i + 0.5) * cell + 3.5) +
               ' ' + (y0 - 4) + ') rotate(-90)">' + xmlText(labels[i]) + '<\/text>\n');
    }
    out.push('<\/g>\n<\/svg>\n');
    return out.join('');
  }

  function downloadSvg() {
    const blob = new Blob([exportSvg()], {type: 'image/svg+xml'});
    const url = URL.createObjectURL(blob);
    const a = document.createElement('a');
    a.href = url;
    a.download = 'attention-L' + state.l + '-H' + state.h + '.svg';
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // ---- start -------------------------------------------------------------------------------------
  Object.assign(api, {nLayer: L, nHead: NH, T: T, tokens: tokens, selected: [0, 0], value: value,
                      select: select, hoverInfo: hoverInfo, hoverToken: hoverToken,
                      label: (i) => { checkIndex('token', i, T); return labels[i]; },
                      exportSvg: exportSvg, cellCenter: cellCenter});
  try {
    buildInfo();
    buildGrid();
    api.drawMs = performance.now() - t0;
    const maxCell = Math.max(1, Math.min(24, Math.floor(BIG_MAX / T)));
    zoom.max = maxCell;
    state.cell = Math.max(1, Math.min(maxCell, Math.floor(640 / T)));
    zoom.value = state.cell;
    zoom.addEventListener('input', () => { state.cell = Number(zoom.value); drawBig(); });
    document.getElementById('export').addEventListener('click', downloadSvg);
    buildText();
    select(0, 0);
    api.ready = true;
  } catch (err) {
    api.errors.push(String(err && err.stack || err));
    document.getElementById('readout').textContent = 'error: ' + err;
    throw err;
  }
})();
