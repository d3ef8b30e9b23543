// Drive the offline SAE feature browser in headless Chromium (puppeteer-core) and print what it shows.
//
//   CHROME_PATH=/usr/bin/chromium [FILTER=" for"] node tests/browser/check_sae_browser.mjs SITE_DIR LANG FEATURE OUT_DIR
//
// Opens SITE_DIR/LANG/index.html and SITE_DIR/LANG/feature.html#f=FEATURE from file:// with the network
// cut off (a dead proxy, and every non-file:// request aborted and recorded), clicks the first nearest-
// feature link, writes OUT_DIR/index.png and OUT_DIR/feature.png (1280x720), and prints ONE JSON object:
//   featureCountText, rowCount, sparkCount, deadFlagCount, filter, filteredRowCount, filteredCountText   (index)
//   featureIdText, contextCount, firstContext {texts, acts, centerIndex, centerCount}, barCount,
//   nonzeroBarCount, neighbourHrefs                                                                      (feature)
//   neighbourTarget, neighbourFeatureIdText                                                              (after the click)
//   requests [non-file URLs], errors [page errors, console errors, failed file loads, failed steps]
// Exit 0 whatever the page shows (the Python test asserts on the JSON); 1 only if the script itself crashes.
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import puppeteer from 'puppeteer-core';

const [siteDir, lang, feature, outDir] = process.argv.slice(2);
if (!siteDir || !lang || feature === undefined || !outDir || !process.env.CHROME_PATH) {
  console.error('usage: CHROME_PATH=... node check_sae_browser.mjs SITE_DIR LANG FEATURE OUT_DIR');
  process.exit(1);
}
const TIMEOUT = 20000;
const result = { requests: [], errors: [] };
const pageUrl = (name) => pathToFileURL(path.resolve(siteDir, lang, name)).href;

let browser;
function finish(code) {
  process.stdout.write(JSON.stringify(result) + '\n');
  const done = () => process.exit(code);
  if (browser) browser.close().then(done, done); else done();
}
// a hung page must not hang the caller: report what was collected
const watchdog = setTimeout(() => { result.errors.push('watchdog: the script took more than 90 s'); finish(0); }, 90000);

/** Run one step; a failure (timeout, missing element) is recorded, not fatal. */
async function step(name, fn) {
  try { await fn(); } catch (e) { result.errors.push(`step ${name}: ${e && e.message ? e.message : e}`); }
}

try {
  fs.mkdirSync(outDir, { recursive: true });
  browser = await puppeteer.launch({
    executablePath: process.env.CHROME_PATH,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--proxy-server=http://127.0.0.1:9', '--proxy-bypass-list=<-loopback>'],
    defaultViewport: { width: 1280, height: 720 },
    protocolTimeout: 60000,
  });
  const page = await browser.newPage();
  await page.setRequestInterception(true);
  page.on('request', (req) => {
    const url = req.url();
    if (url.startsWith('file:')) return req.continue();
    result.requests.push(url);
    return req.abort();
  });
  page.on('requestfailed', (req) => {
    if (req.url().startsWith('file:')) result.errors.push(`failed to load ${req.url()}: ${req.failure()?.errorText}`);
  });
  page.on('pageerror', (e) => result.errors.push(`pageerror: ${e && e.message ? e.message : e}`));
  page.on('console', (msg) => { if (msg.type() === 'error') result.errors.push(`console: ${msg.text()}`); });

  // 1. the index
  await step('index', async () => {
    await page.goto(pageUrl('index.html'), { waitUntil: 'load', timeout: TIMEOUT });
    await page.waitForSelector('tr.feature-row', { timeout: TIMEOUT });
    Object.assign(result, await page.evaluate(() => ({
      featureCountText: document.querySelector('#feature-count')?.textContent ?? null,
      rowCount: document.querySelectorAll('tr.feature-row').length,
      sparkCount: document.querySelectorAll('tr.feature-row svg.spark').length,
      deadFlagCount: document.querySelectorAll('tr.feature-row span.flag.dead').length,
    })));
    if (process.env.FILTER) {
      result.filter = process.env.FILTER;
      await page.type('input#filter', process.env.FILTER);
      Object.assign(result, await page.evaluate(() => ({
        filteredRowCount: document.querySelectorAll('tr.feature-row').length,
        filteredCountText: document.querySelector('#feature-count')?.textContent ?? null,
      })));
    }
    await page.screenshot({ path: path.join(outDir, 'index.png') });
  });

  // 2. one feature
  await step('feature', async () => {
    await page.goto(`${pageUrl('feature.html')}#f=${feature}`, { waitUntil: 'load', timeout: TIMEOUT });
    await page.waitForSelector('body[data-ready="1"]', { timeout: TIMEOUT });
    Object.assign(result, await page.evaluate(() => {
      const first = document.querySelector('#top-contexts div.context');
      const toks = first ? [...first.querySelectorAll('span.tok')] : [];
      const bars = [...document.querySelectorAll('svg#histogram rect.bar')];
      return {
        featureIdText: document.querySelector('#feature-id')?.textContent ?? null,
        contextCount: document.querySelectorAll('#top-contexts div.context').length,
        firstContext: first && {
          texts: toks.map((t) => t.textContent),
          acts: toks.map((t) => t.dataset.act),
          centerIndex: toks.findIndex((t) => t.classList.contains('center')),
          centerCount: toks.filter((t) => t.classList.contains('center')).length,
        },
        barCount: bars.length,
        nonzeroBarCount: bars.filter((b) => parseFloat(b.getAttribute('height')) > 0).length,
        neighbourHrefs: [...document.querySelectorAll('#neighbours a.neighbour')].map((a) => a.getAttribute('href')),
      };
    }));
    await page.screenshot({ path: path.join(outDir, 'feature.png') });
  });

  // 3. follow the first nearest-feature link (re-rendered in place on hashchange)
  await step('neighbour', async () => {
    const href = await page.$eval('#neighbours a.neighbour', (a) => a.getAttribute('href'));
    const m = /#(?:f=)?(\d+)/.exec(href || '');
    if (!m) throw new Error(`first neighbour link has no feature: ${href}`);
    result.neighbourTarget = m[1];
    await page.click('#neighbours a.neighbour');
    await page.waitForFunction((t) => document.body.dataset.ready === '1' && document.body.dataset.feature === t,
      { timeout: TIMEOUT }, m[1]);
    result.neighbourFeatureIdText = await page.$eval('#feature-id', (e) => e.textContent);
  });
} catch (e) {
  clearTimeout(watchdog);
  console.error(e && e.stack ? e.stack : e);
  result.errors.push(`crash: ${e && e.message ? e.message : e}`);
  process.stdout.write(JSON.stringify(result) + '\n');
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
clearTimeout(watchdog);
finish(0);
