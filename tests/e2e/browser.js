/*
 * What every browser walk of the hub's own pages shares (Debian's chromium driven by
 * playwright-core; never a downloaded browser): launch it headless, log in through the
 * hub's login form, hand the page to the walk, print the facts it gathered as one JSON
 * object on the last line, and exit non-zero when the walk threw.
 *
 *   const { walk } = require('./browser');
 *   walk({ shots, javaScript: false }, async ({ page, login, shot, facts }) => { ... });
 */
const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');

const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-component-update', '--no-first-run'];

/** Log in on the hub at *hub* as *user* with *password* (the hub's own login form). */
async function login(page, hub, user, password) {
  await page.goto(`${hub}/hub/login`);
  await page.fill('input[name="username"]', user);
  await page.fill('input[name="password"]', password);
  await Promise.all([page.waitForNavigation(), page.click('input[type="submit"], button[type="submit"]')]);
}

/**
 * Run *body* in a fresh browser. Options: `shots` (screenshot directory, created),
 * `javaScript` (default false: the hub's pages must work without it), `viewport`,
 * `downloads` (accept downloads), `facts` (the initial facts object).
 */
async function walk(options, body) {
  const { shots, javaScript = false, viewport = { width: 1400, height: 900 }, downloads = false } = options;
  const facts = options.facts || {};
  fs.mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: ARGS });
  let shot = async () => {};
  try {
    const context = await browser.newContext({ javaScriptEnabled: javaScript, acceptDownloads: downloads, viewport });
    const page = await context.newPage();
    shot = async name => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
    await body({ page, context, facts, shot, login: (hub, user, password) => login(page, hub, user, password) });
  } catch (e) {
    facts.error = String((e && e.stack) || e);
    process.exitCode = 1;
    await shot('99-error').catch(() => {});
  } finally {
    console.log(JSON.stringify(facts));
    await browser.close();
  }
}

module.exports = { walk, login };
