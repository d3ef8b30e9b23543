// Build every slides/deck.<lang>.md to slides/dist/deck.<lang>.html and .pdf with marp-cli, offline.
//
// Before Marp sees a deck, three things happen to its source:
//  1. Numbers: `{{figure.path|format}}` is replaced by a result that `make figures` wrote to
//     img/manifest.json (e.g. `{{repeated_seq.mean_loss_second_half|.2f}}`), formatted for the
//     deck's language. A missing figure or key stops the build, naming the deck and line.
//  2. Figures: `../img/es/x.png` becomes `img/es/x.png` and the figure is copied to slides/dist/img/,
//     so slides/dist works on its own (the HTML links to it, the PDF embeds it). Each deck shows
//     the figures drawn in its language (img/<lang>/, see mechdemo.figures.i18n): a deck that
//     shows another language's figure stops the build.
//  3. Interactive figures (HTML build only): a figure whose manifest entry also lists an .html
//     page (CircuitsVis) is shown as that page in an <iframe>; the PDF keeps the static PNG. An
//     image may also name its page as its title, `![](../img/es/x.png "../img/site/es/page.html#f=3")`
//     (a page of a site figure, e.g. the SAE feature browser): the HTML build shows that page, the
//     PDF the PNG. A file of a site figure (img/<name>/...) brings the whole site into dist/
//     (its data, script and the deck language's pages), so links into it work there too.
// Chromium comes from the system (CHROME_PATH); marp-cli adds --no-sandbox itself as root.
//
// Model-neutral text: `{{model.display_name}}` (and the rest of the manifest's `model` block: name,
// family, positions, gqa, gated_mlp, published) names the model the deck is built for, and
// `{{#if EXPR}}…{{else}}…{{/if}}` keeps text that holds for one model or one kind of result only.
// EXPR is a manifest path, true when it exists and is not null, false, 0 or empty, or
// `path=value` / `path!=value` (compared as text), e.g. `{{#if model.name=gpt2}}`, or several of
// these joined by ` and `; `!path` negates a path's truth. Conditionals
// nest and may span lines; they are resolved before the numbers, so a number inside a dropped
// block is never looked up.
//
// `node slides/build.mjs --resolve-only [lang ...]` stops after step 1 and writes each resolved
// source to slides/dist/deck.<lang>.md: no marp-cli, no Chromium (what `make test` checks).
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const slides = path.dirname(fileURLToPath(import.meta.url))
const root = path.dirname(slides)
const theme = path.join(slides, 'theme.css')

// The model the deck is built for: MECHDEMO_MODEL (`make slides MODEL=gpt2`). Its figures are where
// `mechdemo figures --model <name>` writes them: img/ for the default model, img/<name>/ for any
// other (the part after the last "/", e.g. img/Llama-3.2-1B/); the deck goes to slides/dist/ or
// slides/dist/<name>/. SLIDES_DIST overrides the output folder.
// MECHDEMO_IMG names the figures folder itself (the tests build decks from a temporary one).
const model = process.env.MECHDEMO_MODEL || ''
const short = model.split('/').at(-1)
const rootManifest = path.join(root, 'img', 'manifest.json')
const modelsOf = (file) => {
  const m = JSON.parse(fs.readFileSync(file, 'utf8'))
  return [...new Set([m.model?.name, ...Object.values(m.figures ?? {}).map((e) => e.model)].filter((x) => x))]
}
let imgDir = path.join(root, 'img')
let distDir = path.join(slides, 'dist')
if (process.env.MECHDEMO_IMG) {
  imgDir = path.resolve(process.env.MECHDEMO_IMG)
  if (model) distDir = path.join(slides, 'dist', short)
} else if (model && fs.existsSync(path.join(root, 'img', short, 'manifest.json'))) {
  imgDir = path.join(root, 'img', short)
  distDir = path.join(slides, 'dist', short)
} else if (model && !(fs.existsSync(rootManifest) && modelsOf(rootManifest).includes(model))) {
  throw new Error(`no figures computed for model "${model}" (img/${short}/manifest.json): run \`make figures MODEL=${model}\``)
}
const dist = process.env.SLIDES_DIST ? path.resolve(process.env.SLIDES_DIST) : distDir
const manifestPath = path.join(imgDir, 'manifest.json')
const where = path.relative(root, imgDir)

const resolveOnly = process.argv.includes('--resolve-only')
const only = process.argv.slice(2).filter((a) => !a.startsWith('--')) // e.g. `node slides/build.mjs es` builds deck.es.md only
const decks = fs
  .readdirSync(slides)
  .filter((f) => /^deck\.[\w-]+\.md$/.test(f))
  .filter((f) => only.length === 0 || only.includes(f.split('.')[1]))
  .sort()
if (decks.length === 0) throw new Error(`no slides/deck.*.md found${only.length ? ` for ${only}` : ''}`)
if (!fs.existsSync(manifestPath)) throw new Error(`${where}/manifest.json is missing: run \`make figures${model ? ` MODEL=${model}` : ''}\``)
const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8'))
const figures = manifest.figures
if (!manifest.model) throw new Error(`${where}/manifest.json does not say which model it was computed on: run \`make figures${model ? ` MODEL=${model}` : ''}\``)
// One model per deck: a folder whose figures were computed on several models (e.g. after copying
// files by hand) would mix them on the slides.
const computedOn = modelsOf(manifestPath)
if (computedOn.length > 1 || (model && computedOn.length === 1 && computedOn[0] !== model)) {
  const want = model || computedOn[0]
  throw new Error(`${where}/manifest.json mixes figures computed on ${computedOn.join(' and ')}${model ? ` (deck for ${model})` : ''}: ` +
    `regenerate them all with \`make figures MODEL=${want}\``)
}

// ---- 1. numbers from the manifest ------------------------------------------------------------

// `a.b[key=value].0.c[x.y]`: dotted keys, list indices, [key=value] to pick a list element,
// and [x.y] for a key that contains dots.
function lookup(expr) {
  const parts = expr.match(/[^.[\]]+|\[[^\]]*\]/g) ?? []
  const [name, ...rest] = parts
  const entry = name === 'model' ? manifest.model : figures[name]
  if (!entry) throw new Error(`no figure "${name}" in ${where}/manifest.json`)
  // Keys are looked up in the figure's results first, then in the entry itself (model, seed ...).
  let value = rest.length && rest[0] in (entry.results ?? {}) ? entry.results : entry
  for (const part of rest) {
    if (part.startsWith('[') && !part.includes('=')) {
      value = value?.[part.slice(1, -1)] // [a.b]: a key that contains dots
    } else if (part.startsWith('[')) {
      const [k, ...v] = part.slice(1, -1).split('=')
      if (!Array.isArray(value)) throw new Error(`"${expr}": [${k}=...] needs a list`)
      value = value.find((el) => el != null && String(el[k]) === v.join('='))
    } else {
      value = value?.[part]
    }
    if (value === undefined) throw new Error(`"${expr}": no "${part}" in the results of figure "${name}"`)
  }
  return value
}

// Formats: none (as is), `.Nf` (N decimals), `%N` (percent with N decimals), `int` (rounded),
// `id` (an identifier such as a feature's index: digits only, never grouped),
// `list` (a list of integers, runs of three or more as "0–3": "0–3" or "2, 5, 7"),
// `heads` (a list of heads, [layer, head] pairs or {layer, head, ...} objects, as "L9H6, L9H9").
// One number rule per language (the figures' `mechdemo.figures.i18n.num` writes the same): the
// locale's decimal mark, and its thousands separator on every number from 1000 up, 4-digit ones
// included ("2,400" / "2.400"; Intl's Spanish default would leave "2400" beside "32.491").
function format(value, spec, locale) {
  if (spec === 'id') {
    if (!Number.isInteger(value)) throw new Error(`format "id" needs an integer, got ${JSON.stringify(value)}`)
    return String(value)
  }
  if (spec === 'list') {
    if (!Array.isArray(value) || !value.every(Number.isInteger))
      throw new Error(`format "list" needs a list of integers, got ${JSON.stringify(value)}`)
    const runs = []
    for (const v of value) {
      const run = runs.at(-1)
      if (run && v === run[1] + 1) run[1] = v
      else runs.push([v, v])
    }
    return runs.flatMap(([a, b]) => (b - a >= 2 ? [`${a}–${b}`] : a === b ? [String(a)] : [String(a), String(b)])).join(', ')
  }
  if (spec === 'heads') {
    const pair = (h) => (Array.isArray(h) ? h : [h?.layer, h?.head])
    if (!Array.isArray(value) || !value.map(pair).every(([l, h]) => Number.isInteger(l) && Number.isInteger(h)))
      throw new Error(`format "heads" needs a list of heads ([layer, head] or {layer, head}), got ${JSON.stringify(value)}`)
    return value.length ? value.map(pair).map(([l, h]) => `L${l}H${h}`).join(', ') : '—'
  }
  if (value === null) throw new Error('no value (null) for this model: keep the sentence in a {{#if}} block for the results that exist')
  if (typeof value !== 'number') {
    if (spec) throw new Error(`format "${spec}" needs a number, got ${JSON.stringify(value)}`)
    return String(value)
  }
  const nf = (opts) => new Intl.NumberFormat(locale, { useGrouping: 'always', ...opts }).format
  if (!spec) return nf({ maximumFractionDigits: 6 })(value)
  let m
  if ((m = spec.match(/^\.(\d)f$/))) return nf({ minimumFractionDigits: +m[1], maximumFractionDigits: +m[1] })(value)
  if ((m = spec.match(/^%(\d)$/))) return nf({ style: 'percent', minimumFractionDigits: +m[1], maximumFractionDigits: +m[1] })(value)
  if (spec === 'int') return nf({ maximumFractionDigits: 0 })(value)
  throw new Error(`unknown format "${spec}" (use .Nf, %N, int, id, list or heads)`)
}

// `{{#if EXPR}}yes{{else}}no{{/if}}`: see the header.
function truthy(expr) {
  if (/\s+and\s+/.test(expr)) return expr.split(/\s+and\s+/).every(truthy)
  if (expr.startsWith('!')) return !truthy(expr.slice(1))
  const m = expr.match(/^(.+?)\s*(!?=)\s*(.*)$/)
  let value
  try {
    value = lookup(m ? m[1] : expr)
  } catch {
    value = undefined // a missing key is false, not an error: that is what the test is for
  }
  if (m) return (m[2] === '=') === (value !== undefined && String(value) === m[3])
  return !(value === undefined || value === null || value === false || value === 0 || value === '' ||
    (Array.isArray(value) && value.length === 0))
}

function resolveConditionals(source, deck) {
  const lineOf = (index) => source.slice(0, index).split('\n').length
  const tag = /\{\{(#if\s+([^}]+?)|else|\/if)\s*\}\}/g
  const stack = [] // open blocks, innermost last: {expr, at, yes, no, inElse}
  let out = ''
  const emit = (text) => {
    const top = stack.at(-1)
    if (!top) out += text
    else if (top.inElse) top.no += text
    else top.yes += text
  }
  let last = 0
  for (const m of source.matchAll(tag)) {
    emit(source.slice(last, m.index))
    last = m.index + m[0].length
    if (m[1].startsWith('#if')) {
      stack.push({ expr: m[2].trim(), at: m.index, yes: '', no: '', inElse: false })
    } else if (m[1] === 'else') {
      const top = stack.at(-1)
      if (!top || top.inElse) throw new Error(`${deck}:${lineOf(m.index)}: {{else}} without {{#if}}`)
      top.inElse = true
    } else {
      const top = stack.pop()
      if (!top) throw new Error(`${deck}:${lineOf(m.index)}: {{/if}} without {{#if}}`)
      const kept = truthy(top.expr) ? top.yes : top.no
      // the dropped lines become empty ones, so that later errors name the source's line numbers
      const dropped = source.slice(top.at, last).split('\n').length - kept.split('\n').length
      emit(kept + '\n'.repeat(dropped))
    }
  }
  if (stack.length) {
    const open = stack.at(-1)
    throw new Error(`${deck}:${lineOf(open.at)}: {{#if ${open.expr}}} is never closed with {{/if}}`)
  }
  emit(source.slice(last))
  return out
}

function resolveNumbers(source, deck, locale) {
  return source
    .split('\n')
    .map((line, i) =>
      line.replace(/\{\{\s*([^}|]+?)\s*(?:\|\s*([^}]+?)\s*)?\}\}/g, (_, expr, spec) => {
        try {
          return format(lookup(expr), spec, locale)
        } catch (err) {
          throw new Error(`${deck}:${i + 1}: ${err.message}`)
        }
      }),
    )
    .join('\n')
}

// ---- 2. and 3. figures -----------------------------------------------------------------------

const interactive = new Map() // x.png -> x.html when the same figure also wrote x.html
for (const entry of Object.values(figures)) {
  const pages = entry.files.filter((f) => f.endsWith('.html'))
  for (const png of entry.files.filter((f) => f.endsWith('.png'))) {
    const page = pages.find((p) => p.replace(/\.html$/, '') === png.replace(/\.png$/, ''))
    if (page) interactive.set(png, page)
  }
}

const siteOf = new Map() // a file of a site figure (img/<name>/...) -> every file of that site
for (const [name, entry] of Object.entries(figures)) {
  if (entry.files.every((f) => f.startsWith(`${name}/`))) for (const f of entry.files) siteOf.set(f, entry.files)
}
const LANGS = ['es', 'en']

function copyFigure(file, deck) {
  const from = path.join(imgDir, file)
  if (!fs.existsSync(from)) throw new Error(`${deck}: ${where}/${file} does not exist: run \`make figures${model ? ` MODEL=${model}` : ''}\``)
  const lang = deck.split('.')[1]
  const folder = file.split('/').at(-2)
  if (folder !== lang) throw new Error(`${deck}: img/${file} is not a figure drawn in "${lang}": use img/${lang}/${path.basename(file)}`)
  // a site's page brings the site: its shared files and this language's pages (not the other's)
  const files = (siteOf.get(file) ?? [file]).filter((f) => f === file || !LANGS.includes(f.split('/').at(-2)) || f.split('/').at(-2) === lang)
  for (const f of files) {
    fs.mkdirSync(path.dirname(path.join(dist, 'img', f)), { recursive: true })
    fs.copyFileSync(path.join(imgDir, f), path.join(dist, 'img', f))
  }
}

const PAGE_TITLE = /(!\[[^\]]*\]\(img\/[\w.\/-]+\.png) "img\/([\w.\/-]+\.html(?:#[\w=&-]*)?)"\)/g

function forHtml(source) {
  return source
    .replace(PAGE_TITLE, (_, image, page) => `<iframe class="interactive" src="img/${page}" title="${page.split('#')[0]}"></iframe>`)
    .replace(/!\[[^\]]*\]\(img\/([\w.\/-]+\.png)\)/g, (image, png) => {
      const page = interactive.get(png)
      if (!page) return image
      return `<iframe class="interactive" src="img/${page}" title="${page}"></iframe>`
    })
}

function forPdf(source) {
  return source.replace(PAGE_TITLE, (_, image) => `${image})`)
}

// ---- build -----------------------------------------------------------------------------------

fs.mkdirSync(path.join(dist, 'img'), { recursive: true })
const { marpCli } = resolveOnly ? {} : await import('@marp-team/marp-cli')
for (const deck of decks) {
  const name = deck.replace(/\.md$/, '')
  const locale = name.split('.')[1]
  const source = resolveNumbers(resolveConditionals(fs.readFileSync(path.join(slides, deck), 'utf8'), deck), deck, locale)
  const resolved = source.replaceAll('../img/', 'img/')
  if (resolveOnly) {
    fs.writeFileSync(path.join(dist, `${name}.md`), resolved)
    continue
  }
  for (const [, file] of resolved.matchAll(/img\/([\w.\/-]+\.(?:png|html))/g)) copyFigure(file, deck)
  const html = forHtml(resolved)
  for (const [, page] of html.matchAll(/src="img\/([\w.\/-]+\.html)"/g)) copyFigure(page, deck)

  // The PDF build reads the resolved source (kept in dist/ for inspection), the HTML build its
  // interactive variant; both sit in dist/ so that img/ resolves next to them.
  const pdfSource = path.join(dist, `${name}.md`)
  const htmlSource = path.join(dist, `.${name}.html.md`)
  fs.writeFileSync(pdfSource, forPdf(resolved))
  fs.writeFileSync(htmlSource, html)
  const common = ['--theme-set', theme, '--allow-local-files', '--html']
  const runs = [
    [htmlSource, ['-o', path.join(dist, `${name}.html`)]],
    [pdfSource, ['--pdf', '--pdf-notes', '-o', path.join(dist, `${name}.pdf`)]],
  ]
  try {
    for (const [input, extra] of runs) {
      const code = await marpCli([input, ...common, ...extra])
      if (code !== 0) process.exit(code)
    }
  } finally {
    fs.rmSync(htmlSource, { force: true })
  }
}
console.log(`${resolveOnly ? 'resolved' : 'built'} ${decks.length} deck(s) from ${where}/ into ${path.relative(root, dist)}/`)
