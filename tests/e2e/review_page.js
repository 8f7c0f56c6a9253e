/*
 * The results review page in a real browser with JavaScript OFF (Debian's chromium driven by
 * playwright-core): the owner logs in, finds the held job with its provenance and escaped
 * previews, and rejects it with a reason through the plain form; the page then shows it decided.
 *
 *   node tests/e2e/review_page.js HUB_URL USER PASSWORD JOB_ID SHOTS_DIR
 *
 * Prints one JSON object of facts on the last line; exits non-zero on failure.
 * Run by tests/integration/test_results_review.py (NODE_PATH points at labextension/node_modules).
 */
const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');

const [hub, user, password, jobId, shots] = process.argv.slice(2);

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run']
  });
  const context = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 1400, height: 900 } });
  const page = await context.newPage();
  const facts = {};
  let alerted = false;
  page.on('dialog', async d => { alerted = true; await d.dismiss(); });
  try {
    await page.goto(`${hub}/hub/login`);
    await page.fill('input[name="username"]', user);
    await page.fill('input[name="password"]', password);
    await Promise.all([page.waitForNavigation(), page.click('input[type="submit"], button[type="submit"]')]);
    const t0 = Date.now();
    await page.goto(`${hub}/hub/xnat-hpc/review`);
    facts.loadMs = Date.now() - t0;
    facts.h1 = (await page.textContent('h1')).trim();
    facts.captions = await page.$$eval('table caption', els => els.map(e => e.textContent.trim()));
    const section = `section[id$="-${jobId}"]`;
    facts.jobHeading = (await page.textContent(`${section} h3`)).trim();
    facts.previewText = await page.$$eval(`${section} .previews pre`, els => els.map(e => e.textContent));
    facts.previewCells = await page.$$eval(`${section} .previews td`, els => els.map(e => e.textContent));
    facts.injected = await page.$$eval(`${section} .previews b, ${section} .previews script`, els => els.length);
    facts.reasonLabel = await page.$eval(`${section} textarea`, t => {
      const l = document.querySelector(`label[for="${t.id}"]`);
      return l ? l.textContent.trim() : '';
    });
    await page.screenshot({ path: path.join(shots, 'review-page.png'), fullPage: true });
    await page.fill(`${section} textarea[name="reason"]`, 'summary.csv names single patients');
    await Promise.all([page.waitForNavigation(), page.click(`${section} form:has(textarea) button[type="submit"]`)]);
    facts.afterUrl = page.url();
    facts.notice = (await page.textContent('#notice')).trim();
    facts.afterState = (await page.textContent(`${section} .state`)).trim();
    facts.alerted = alerted;
    await page.screenshot({ path: path.join(shots, 'review-page-rejected.png'), fullPage: true });
    console.log(JSON.stringify(facts));
  } catch (e) {
    facts.error = String(e && e.stack || e);
    console.log(JSON.stringify(facts));
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

main();
