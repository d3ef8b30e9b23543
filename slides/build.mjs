// Build every slides/deck.*.md to slides/dist/<name>.html and .pdf with marp-cli, offline.
// The HTML build gets its own copy of the figures it shows (slides/dist/img/), so the dist folder
// works on its own; the PDF embeds them. Chromium comes from the system (CHROME_PATH).
import { marpCli } from '@marp-team/marp-cli'
import fs from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const slides = path.dirname(fileURLToPath(import.meta.url))
const root = path.dirname(slides)
const dist = path.join(slides, 'dist')
const theme = path.join(slides, 'theme.css')
const decks = fs.readdirSync(slides).filter((f) => /^deck\..+\.md$/.test(f)).sort()
if (decks.length === 0) throw new Error('no slides/deck.*.md found')
fs.mkdirSync(path.join(dist, 'img'), { recursive: true })

for (const deck of decks) {
  const input = path.join(slides, deck)
  const name = deck.replace(/\.md$/, '')
  const common = [input, '--theme-set', theme, '--allow-local-files', '--html']
  for (const [format, extra] of [['html', []], ['pdf', ['--pdf']]]) {
    const out = path.join(dist, `${name}.${format}`)
    const code = await marpCli([...common, ...extra, '-o', out])
    if (code !== 0) process.exit(code)
  }
  // Figures: ../img/x.png in the source is img/x.png next to the built HTML.
  const htmlPath = path.join(dist, `${name}.html`)
  const html = fs.readFileSync(htmlPath, 'utf8')
  for (const [, file] of html.matchAll(/\.\.\/img\/([\w.\-/]+)/g)) {
    fs.mkdirSync(path.dirname(path.join(dist, 'img', file)), { recursive: true })
    fs.copyFileSync(path.join(root, 'img', file), path.join(dist, 'img', file))
  }
  fs.writeFileSync(htmlPath, html.replaceAll('../img/', 'img/'))
}
console.log(`built ${decks.length} deck(s) into ${path.relative(root, dist)}/`)
