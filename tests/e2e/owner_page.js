/*
 * The project owners' audit page in a real browser with JavaScript OFF (Debian's chromium
 * driven by playwright-core): log in, the page renders with its landmarks, the filter form
 * (a plain GET form) narrows the events, the CSV export downloads.
 *
 *   node tests/e2e/owner_page.js HUB_URL USER PASSWORD SHOTS_DIR
 *
 * Prints one JSON object of facts on the last line; exits non-zero on failure.
 * Run by tests/integration/test_hub_audit.py (NODE_PATH points at labextension/node_modules).
 */
const fs = require('fs');
const path = require('path');
const { walk } = require('./browser');

const [hub, user, password, shots] = process.argv.slice(2);

walk({ shots, downloads: true }, async ({ page, login, shot, facts }) => {
  await login(hub, user, password);
  const t0 = Date.now();
  await page.goto(`${hub}/hub/xnat-hpc/owner`);
  facts.loadMs = Date.now() - t0;
  facts.h1 = (await page.textContent('h1')).trim();
  facts.skipLink = await page.$eval('a[href="#events-section"]', a => a.textContent.trim());
  facts.captions = await page.$$eval('table caption', els => els.map(e => e.textContent.trim()));
  facts.thScoped = await page.$$eval('th', els => els.every(e => e.getAttribute('scope') === 'col'));
  facts.labels = await page.$$eval('#filters label', els => els.map(e => e.getAttribute('for')));
  await shot('owner-page');
  // filter: action = submit, through the plain GET form
  await page.selectOption('#f-action', 'submit');
  await Promise.all([page.waitForNavigation(), page.click('#filters button[type="submit"]')]);
  facts.filteredUrl = page.url();
  facts.filteredActions = await page.$$eval('#events tbody tr', rows =>
    rows.filter(r => r.children.length > 4).map(r => r.children[4].textContent.trim()));
  await shot('owner-page-filtered');
  // CSV export of the filtered events
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#export-csv')]);
  const file = path.join(shots, download.suggestedFilename());
  await download.saveAs(file);
  const text = fs.readFileSync(file, 'utf8').trim().split(/\r?\n/);
  facts.csvName = download.suggestedFilename();
  facts.csvHeader = text[0];
  facts.csvRows = text.length - 1;
});
