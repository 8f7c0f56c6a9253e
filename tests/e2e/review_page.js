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
const { walk } = require('./browser');

const [hub, user, password, jobId, shots] = process.argv.slice(2);

walk({ shots }, async ({ page, login, shot, facts }) => {
  let alerted = false;
  page.on('dialog', async d => { alerted = true; await d.dismiss(); });
  await login(hub, user, password);
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
  await shot('review-page');
  await page.fill(`${section} textarea[name="reason"]`, 'summary.csv names single patients');
  await Promise.all([page.waitForNavigation(), page.click(`${section} form:has(textarea) button[type="submit"]`)]);
  facts.afterUrl = page.url();
  facts.notice = (await page.textContent('#notice')).trim();
  facts.afterState = (await page.textContent(`${section} .state`)).trim();
  facts.alerted = alerted;
  await shot('review-page-rejected');
});
