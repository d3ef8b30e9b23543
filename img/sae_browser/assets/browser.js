/* mechdemo SAE feature browser: hand-written vanilla JS (ES2020), no dependencies, works from file://.
 *
 * Pages (chosen by <body data-page>):
 *   index    a table of every SAE feature (density, max activation, top tokens, a 12-bar histogram of its
 *            nonzero activations, dead/dense flag); filter by token text or feature number, sort, hide dead.
 *   feature  one feature, chosen by the URL hash (#f=N or #N): histogram of its nonzero activations,
 *            top-activating contexts, samples from lower quantile bands, logit effect, nearest features.
 * Data: <script> files that assign globals (no fetch/XHR, which Chromium refuses for file://):
 *   SAE_META   data/meta.js           run info plus columnar per-feature arrays (density, max, top_tokens,
 *                                     spark, flag), each indexed by feature id
 *   SAE_TOKENS data/tokens.js         {vocab: [token text], stream: [vocab id of each held-out row]}
 *   SAE_CHUNKS data/features-CCC.js   SAE_CHUNKS[c][i] = details of feature c*chunk_size+i, loaded on demand
 *   SAE_UI     inline in the page     English UI string -> string in the page's language (see T)
 * Every visible UI string goes through T("English"); the list below is parsed by mechdemo/sites/feature_browser.py.
 */
// UI_STRINGS_BEGIN
// model
// layer
// SAE
// features
// {shown} of {total}
// held-out tokens
// dead features
// dense features
// dead
// dense
// never fires on the held-out tokens
// fires on more than {pct} of the held-out tokens
// Each row is one feature of the sparse autoencoder: how often it fires on the held-out tokens (density), its largest activation, a histogram of its nonzero activations and the tokens it fires on most. Click a number to open the feature's page.
// filter
// token text or feature number
// sort by
// feature number
// density (high first)
// max activation (high first)
// hide dead features
// features listed
// showing the first {n}
// no feature matches the filter
// feature
// density
// max activation
// top tokens
// activations
// fraction of the held-out tokens on which the feature fires
// histogram of its nonzero activations, from 0 to its maximum
// {n} times among its top contexts
// dataset
// all features
// previous
// next
// Feature {id}
// feature {id} · {title}
// loading feature {id}…
// no feature {id}: this browser has features 0 to {max}
// could not load {file}
// This feature never fired on the held-out tokens: only its logit effect and nearest features are shown.
// {n} of {total} held-out tokens
// how to read this page
// Histogram: how strongly the feature fires when it fires (its nonzero activations).
// Top activations: the texts where it fires most. The outlined token is where the value on the left was measured; each token is shaded by the feature's activation there (hover to read it).
// Lower activations: samples from weaker quantile bands of its activations. Does it mean the same when it fires weakly?
// Logit effect: the output tokens its decoder direction pushes up or down most, directly.
// Nearest features: those with the most similar decoder directions (cosine).
// activation histogram
// activation
// count
// top activations
// lower activations
// between {lo} and {hi} (quantiles {q0}–{q1})
// too few activations to sample lower bands
// no contexts
// logit effect
// promoted
// suppressed
// nearest features (decoder cosine)
// decoder cosine
// UI_STRINGS_END

window.SAEBrowser = (() => {
  'use strict';
  const META = window.SAE_META, TOK = window.SAE_TOKENS, UI = window.SAE_UI || {};
  let LANG = document.documentElement.lang || 'en';
  try { new Intl.NumberFormat(LANG); } catch (e) { LANG = 'en'; }

  // ---- text helpers ------------------------------------------------------------------------------
  /** The page-language text of an English UI string, with {name} fields filled from vars. */
  function T(s, vars) {
    const t = typeof UI[s] === 'string' && UI[s] ? UI[s] : s;
    return vars ? t.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m)) : t;
  }
  const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ESC[c]);
  /** T as HTML: the translation is escaped, the vars are HTML inserted as given. */
  const TH = (s, vars) => esc(T(s)).replace(/\{(\w+)\}/g, (m, k) => (k in vars ? vars[k] : m));
  const TE = (s, vars) => esc(T(s, vars));

  const nf = (o) => new Intl.NumberFormat(LANG, o);
  const NF = {
    int: nf({ maximumFractionDigits: 0 }), sig: nf({ maximumSignificantDigits: 3 }),
    pct: nf({ style: 'percent', maximumSignificantDigits: 3 }), q: nf({ maximumFractionDigits: 3 }),
    two: nf({ minimumFractionDigits: 2, maximumFractionDigits: 2 }),
    signed: nf({ minimumFractionDigits: 2, maximumFractionDigits: 2, signDisplay: 'exceptZero' }),
  };
  const fInt = (v) => NF.int.format(v);
  const fAct = (v) => (Math.abs(v) >= 100 ? NF.int : NF.sig).format(v);
  const fPct = (v) => NF.pct.format(v);

  /** A vocab entry as shown: newlines as ⏎ (spaces kept, CSS white-space: pre). */
  const tokText = (id) => (TOK.vocab[id] ?? '?').replace(/\n/g, '⏎');
  const chip = (id, title) => `<span class="chip"${title ? ` title="${esc(title)}"` : ''}>${esc(tokText(id))}</span>`;
  function flagHtml(flag) {
    if (flag === 'dead') return `<span class="flag dead" title="${TE('never fires on the held-out tokens')}">${TE('dead')}</span>`;
    if (flag === 'dense') {
      const tip = T('fires on more than {pct} of the held-out tokens', { pct: fPct(META.dense_threshold) });
      return `<span class="flag dense" title="${esc(tip)}">${TE('dense')}</span>`;
    }
    return '';
  }
  const nFeatures = () => META.d_sae || META.features.density.length;

  // ---- index page --------------------------------------------------------------------------------
  /** A 12-bar inline SVG of a feature's nonzero activation counts (linear heights; one path, few DOM nodes). */
  function spark(counts) {
    const m = Math.max(1, ...counts);
    const d = counts.map((c, i) => (c ? `M${i * 5} 17v-${Math.max(1, (16 * c) / m).toFixed(1)}h4V17z` : '')).join('');
    return `<svg class="spark" viewBox="0 0 60 18" width="60" height="18" aria-hidden="true"><path class="base" d="M0 17.5H60"/><path d="${d || 'M0 0'}"/></svg>`;
  }

  function startIndex(app) {
    const FT = META.features, n = nFeatures(), CAP = 2000;
    const total = META.d_sae_total && META.d_sae_total > n ? TE('{shown} of {total}', { shown: fInt(n), total: fInt(META.d_sae_total) }) : esc(fInt(n));
    const stat = (label, value) => `<div><dt>${TE(label)}</dt><dd>${value}</dd></div>`;
    const p = META.provenance || {};
    app.innerHTML = `<header class="top"><h1>${esc(META.title)}</h1><dl class="stats">
      ${stat('model', esc(META.model_display || META.model))}
      ${stat('layer', `${esc(META.layer)} <code>${esc(META.hook || '')}</code>`)}
      ${stat('SAE', esc([META.architecture, META.setting, META.d_in && `d_in=${META.d_in}`].filter(Boolean).join(', ')))}
      ${stat('features', total)}
      ${stat('held-out tokens', esc(fInt(META.heldout_tokens)))}
      ${stat('dead features', `${esc(fInt(META.n_dead))} ${flagHtml('dead')}`)}
      ${stat('dense features', `${esc(fInt(META.n_dense))} ${flagHtml('dense')}`)}</dl>
      <p class="legend">${flagHtml('dead')} ${TE('never fires on the held-out tokens')} · ${flagHtml('dense')}
      ${TE('fires on more than {pct} of the held-out tokens', { pct: fPct(META.dense_threshold) })}</p>
      <p class="howto">${TE("Each row is one feature of the sparse autoencoder: how often it fires on the held-out tokens (density), its largest activation, a histogram of its nonzero activations and the tokens it fires on most. Click a number to open the feature's page.")}</p></header>
      <div class="controls">
        <label>${TE('filter')} <input id="filter" type="search" autocomplete="off" spellcheck="false" placeholder="${TE('token text or feature number')}"></label>
        <label>${TE('sort by')} <select id="sort"><option value="id">${TE('feature number')}</option>
          <option value="density">${TE('density (high first)')}</option><option value="max">${TE('max activation (high first)')}</option></select></label>
        <label><input id="hide-dead" type="checkbox"> ${TE('hide dead features')}</label>
        <span class="count"><span id="feature-count"></span> ${TE('features listed')} <span id="feature-cap"></span></span>
      </div>
      <table class="features"><thead><tr><th>${TE('feature')}</th>
        <th class="num" title="${TE('fraction of the held-out tokens on which the feature fires')}">${TE('density')}</th>
        <th class="num">${TE('max activation')}</th>
        <th title="${TE('histogram of its nonzero activations, from 0 to its maximum')}">${TE('activations')}</th><th>${TE('top tokens')}</th></tr></thead>
        <tbody></tbody></table>
      <footer>mechdemo ${esc(p.mechdemo_version || '')} ${esc(p.date || '')}${p.sae ? ` · ${TE('SAE')}: ${esc(p.sae)}` : ''}${p.dataset ? ` · ${TE('dataset')}: ${esc(p.dataset)}` : ''}</footer>`;

    // every row's HTML and its lower-cased token texts, built once
    const rows = [], keys = [];
    for (let f = 0; f < n; f++) {
      const tt = FT.top_tokens[f] || [];
      keys.push(tt.map(([id]) => String(TOK.vocab[id] ?? '').toLowerCase()));
      const chips = tt.map(([id, c]) => chip(id, T('{n} times among its top contexts', { n: fInt(c) }))).join('');
      rows.push(`<tr class="feature-row${FT.flag[f] ? ' ' + FT.flag[f] : ''}" data-feature="${f}"><td><a href="feature.html#f=${f}">${f}</a> ${flagHtml(FT.flag[f])}</td>`
        + `<td class="num">${esc(fPct(FT.density[f]))}</td><td class="num">${esc(fAct(FT.max[f]))}</td>`
        + `<td>${spark(FT.spark[f] || [])}</td><td class="chips">${chips}</td></tr>`);
    }
    const $ = (s) => app.querySelector(s);
    const filter = $('#filter'), sort = $('#sort'), hide = $('#hide-dead'), tbody = $('tbody');

    // restore the state kept in the hash (so "back" from a feature page keeps the filter)
    const restore = () => {
      const st = new URLSearchParams(location.hash.slice(1));
      filter.value = st.get('q') || '';
      sort.value = ['density', 'max'].includes(st.get('sort')) ? st.get('sort') : 'id';
      hide.checked = st.get('hide') === '1';
    };

    /** The filter: substring of a top token's text (case-insensitive; quote it to keep edge spaces
     * visible, e.g. " for"), or a feature number. */
    function query() {
      let s = filter.value;
      const quoted = /^\s*(["'])(.*)\1\s*$/.exec(s);
      if (quoted) s = quoted[2];
      if (!s.trim() && !(quoted && s)) return null;
      const id = /^\s*#?(\d+)\s*$/.exec(s);
      return { text: s.toLowerCase(), id: id ? Number(id[1]) : -1 };
    }
    function update() {
      const q = query(), list = [];
      for (let f = 0; f < n; f++) {
        if (hide.checked && FT.flag[f] === 'dead') continue;
        if (q && f !== q.id && !keys[f].some((k) => k.includes(q.text))) continue;
        list.push(f);
      }
      const key = sort.value === 'density' ? FT.density : sort.value === 'max' ? FT.max : null;
      if (key) list.sort((a, b) => key[b] - key[a] || a - b);
      $('#feature-count').textContent = String(list.length);
      $('#feature-cap').textContent = list.length > CAP ? `(${T('showing the first {n}', { n: fInt(CAP) })})` : '';
      tbody.innerHTML = list.length ? list.slice(0, CAP).map((f) => rows[f]).join('')
        : `<tr class="empty"><td colspan="5">${TE('no feature matches the filter')}</td></tr>`;
      const h = new URLSearchParams();
      if (filter.value) h.set('q', filter.value);
      if (sort.value !== 'id') h.set('sort', sort.value);
      if (hide.checked) h.set('hide', '1');
      try { history.replaceState(null, '', h.toString() ? '#' + h : location.pathname); } catch (e) { /* ignore */ }
    }
    filter.addEventListener('input', update);
    sort.addEventListener('change', update);
    hide.addEventListener('change', update);
    window.addEventListener('hashchange', () => { restore(); update(); });
    restore();
    update();
  }

  // ---- feature page ------------------------------------------------------------------------------
  /** Histogram of nonzero activations: 30 rect.bar over (0, hi], axes labelled. */
  function histSvg(h) {
    const W = 360, H = 190, L = 46, R = 10, Tp = 10, B = 46, pw = W - L - R, ph = H - Tp - B;
    const counts = h.counts || [], nb = counts.length || 1, m = Math.max(1, ...counts), bw = pw / nb, y0 = Tp + ph;
    const bars = counts.map((c, i) => {
      const bh = c ? Math.max(1, (ph * c) / m) : 0;
      const tip = `${fAct((i * h.hi) / nb)}–${fAct(((i + 1) * h.hi) / nb)}: ${fInt(c)}`;
      return `<rect class="bar" x="${(L + i * bw + 0.5).toFixed(1)}" y="${(y0 - bh).toFixed(1)}" width="${(bw - 1).toFixed(1)}" height="${bh.toFixed(1)}"><title>${esc(tip)}</title></rect>`;
    }).join('');
    const text = (x, y, s, cls = '') => `<text x="${x}" y="${y}"${cls ? ` class="${cls}"` : ''}>${esc(s)}</text>`;
    return `<svg id="histogram" viewBox="0 0 ${W} ${H}" role="img" aria-label="${TE('activation histogram')}">${bars}
      <line class="axis" x1="${L}" y1="${y0 + 0.5}" x2="${W - R}" y2="${y0 + 0.5}"/><line class="axis" x1="${L - 0.5}" y1="${Tp}" x2="${L - 0.5}" y2="${y0}"/>
      ${text(L, y0 + 18, '0')}${text(L + pw / 2, y0 + 18, fAct(h.hi / 2), 'mid')}${text(W - R, y0 + 18, fAct(h.hi), 'end')}
      ${text(L + pw / 2, H - 4, T('activation'), 'mid title')}
      ${text(L - 6, y0, '0', 'end')}${text(L - 6, Tp + 12, fInt(m), 'end')}
      <text class="mid title" transform="translate(14 ${Tp + ph / 2}) rotate(-90)">${TE('count')}</text></svg>`;
  }

  /** One context: its value, then tokens lo..hi shaded by activation / fmax; the activating one .center. */
  function contextHtml([row, lo, hi, value], acts, fmax) {
    const tok = (r) => {
      const a = r === row ? value : acts.get(r) || 0;
      const alpha = fmax > 0 ? Math.min(1, a / fmax) : 0;
      const style = a > 0 ? ` style="background:rgba(255,128,0,${alpha.toFixed(3)})"` : '';
      return `<span class="tok${r === row ? ' center' : ''}${a > 0 ? ' on' : ''}" data-act="${a}" title="${esc(fAct(a))}"${style}>${esc(tokText(TOK.stream[r]))}</span>`;
    };
    let pre = '', post = '';
    for (let r = lo; r <= hi; r++) if (r < row) pre += tok(r); else post += tok(r);
    return `<div class="context"><span class="cval">${esc(fAct(value))}</span><span class="toks"><span class="pre">${pre}</span><span class="post">${post}</span></span></div>`;
  }

  let wanted = null;
  const loading = {};
  /** Insert the chunk's <script> once; call done() or fail(file) when it has loaded. */
  function loadChunk(c, done, fail) {
    const file = `../data/features-${String(c).padStart(3, '0')}.js`;
    let s = loading[c];
    if (!s) {
      s = loading[c] = document.createElement('script');
      s.src = file;
      s.addEventListener('error', () => { delete loading[c]; s.remove(); });
      document.head.appendChild(s);
    }
    s.addEventListener('load', done);
    s.addEventListener('error', () => fail(file));
  }

  function featureFromHash() {
    if (!location.hash || location.hash === '#') return 0;
    const m = /^#(?:f=)?(\d+)$/.exec(location.hash);
    return m ? Number(m[1]) : NaN;
  }

  function route(app) {
    const f = featureFromHash(), n = nFeatures(), body = document.body;
    delete body.dataset.ready;
    wanted = f;
    const status = (html) => { app.innerHTML = `<p class="status"><a href="index.html">← ${TE('all features')}</a></p><p class="status">${html}</p>`; };
    if (!(f >= 0 && f < n)) return status(TE('no feature {id}: this browser has features 0 to {max}', { id: location.hash.slice(1).replace(/^f=/, ''), max: n - 1 }));
    const c = Math.floor(f / META.chunk_size);
    if (window.SAE_CHUNKS?.[c] !== undefined) return renderFeature(app, f);
    if (body.dataset.feature === undefined) status(TE('loading feature {id}…', { id: f }));
    body.classList.add('loading');
    loadChunk(c, () => { if (wanted === f) renderFeature(app, f); },
      (file) => { if (wanted === f) { body.classList.remove('loading'); status(TE('could not load {file}', { file })); } });
  }

  function renderFeature(app, f) {
    const FT = META.features, n = nFeatures(), cs = META.chunk_size, body = document.body;
    const d = window.SAE_CHUNKS[Math.floor(f / cs)][f % cs];
    body.classList.remove('loading');
    if (!d) { app.innerHTML = `<p class="status">${TE('no feature {id}: this browser has features 0 to {max}', { id: f, max: n - 1 })}</p>`; return; }
    const flag = FT.flag[f], dead = flag === 'dead';
    const fmax = FT.max[f] || d.hist?.hi || (d.top?.[0]?.[3] ?? 0);
    const acts = new Map(d.acts || []);
    const link = (g, label, cls) => (g >= 0 && g < n ? `<a class="${cls}" href="feature.html#f=${g}">${label}</a>` : `<span class="${cls} off">${label}</span>`);
    const section = (id, title, inner) => `<section><h2>${TE(title)}</h2>${id ? `<div id="${id}">${inner}</div>` : inner}</section>`;
    const ctxs = (list) => (list.length ? list.map((c) => contextHtml(c, acts, fmax)).join('') : `<p class="note">${TE('no contexts')}</p>`);
    const logits = (list, id) => `<ol id="${id}">${(list || []).map(([t, v]) => `<li>${chip(t)}<span class="num">${esc(NF.signed.format(v))}</span></li>`).join('')}</ol>`;
    const nn = (d.nn || []).map(([g, cos]) => `<a class="neighbour" href="feature.html#f=${g}" title="${TE('decoder cosine')}"><span class="nid">${g}</span>`
      + `<span class="num">${esc(NF.two.format(cos))}</span>${(FT.top_tokens[g] || []).slice(0, 2).map(([t]) => chip(t)).join('')}${flagHtml(FT.flag[g])}</a>`).join('');
    const bands = (d.bands || []).map((b) => `<h3>${TE('between {lo} and {hi} (quantiles {q0}–{q1})', {
      lo: fAct(b.lo), hi: fAct(b.hi), q0: NF.q.format(b.q[0]), q1: NF.q.format(b.q[1]) })}</h3>${ctxs(b.ctx || [])}`).join('');
    const fires = Math.round(FT.density[f] * META.heldout_tokens);
    const how = ['Histogram: how strongly the feature fires when it fires (its nonzero activations).',
      "Top activations: the texts where it fires most. The outlined token is where the value on the left was measured; each token is shaded by the feature's activation there (hover to read it).",
      'Lower activations: samples from weaker quantile bands of its activations. Does it mean the same when it fires weakly?',
      'Logit effect: the output tokens its decoder direction pushes up or down most, directly.',
      'Nearest features: those with the most similar decoder directions (cosine).'];

    app.innerHTML = `<header class="fhead"><h1>${TH('Feature {id}', { id: `<span id="feature-id">${f}</span>` })} ${flagHtml(flag)}</h1>
      <nav>${link(f - 1, `‹ ${TE('previous')}`, 'prev')} ${link(f + 1, `${TE('next')} ›`, 'next')} <a class="back" href="index.html">${TE('all features')}</a></nav>
      <dl class="stats"><div><dt>${TE('density')}</dt><dd>${esc(fPct(FT.density[f]))} <span class="note">(${TE('{n} of {total} held-out tokens', { n: fInt(fires), total: fInt(META.heldout_tokens) })})</span></dd></div>
      <div><dt>${TE('max activation')}</dt><dd>${esc(fAct(FT.max[f]))}</dd></div>
      ${FT.top_tokens[f]?.length ? `<div><dt>${TE('top tokens')}</dt><dd>${FT.top_tokens[f].map(([t, c]) => chip(t, T('{n} times among its top contexts', { n: fInt(c) }))).join('')}</dd></div>` : ''}</dl></header>
      <details class="howto"><summary>${TE('how to read this page')}</summary>${how.map((s) => `<p>${TE(s)}</p>`).join('')}</details>
      ${dead ? `<p class="deadnote">${TE('This feature never fired on the held-out tokens: only its logit effect and nearest features are shown.')}</p>` : ''}
      <div class="cols"><aside>
        ${dead ? '' : section('', 'activation histogram', histSvg(d.hist || { hi: 1, counts: [] }))}
        <section><h2>${TE('logit effect')}</h2><div class="logits"><div><h3>${TE('promoted')}</h3>${logits(d.up, 'logits-up')}</div>
          <div><h3>${TE('suppressed')}</h3>${logits(d.down, 'logits-down')}</div></div></section>
        ${section('neighbours', 'nearest features (decoder cosine)', nn)}
      </aside><main>
        ${dead ? '' : section('top-contexts', 'top activations', ctxs(d.top || []))}
        ${dead ? '' : section('bands', 'lower activations', bands || `<p class="note">${TE('too few activations to sample lower bands')}</p>`)}
      </main></div>`;
    document.title = T('feature {id} · {title}', { id: f, title: META.title });
    if (body.dataset.feature !== String(f)) window.scrollTo(0, 0);
    body.dataset.feature = String(f);
    body.dataset.ready = '1';
  }

  function start() {
    const body = document.body;
    let app = document.getElementById('app');
    if (!app) { app = document.createElement('div'); app.id = 'app'; body.prepend(app); }
    if (!META || !TOK) { app.textContent = T('could not load {file}', { file: '../data/meta.js, ../data/tokens.js' }); return; }
    if (body.dataset.page === 'feature') {
      window.addEventListener('hashchange', () => route(app));
      route(app);
    } else startIndex(app);
  }

  return { start, T };
})();
