/*
 * An owner grants and revokes access on the hub's access page in a real browser (Debian's
 * chromium driven by playwright-core; never a downloaded browser), with no JavaScript of
 * the page's own: log in, open /hub/xnat-hpc/owner/access?project=P, grant TARGET the
 * Members role with the form, then revoke it with the row's button.
 *
 *   node tests/e2e/access_flow.js HUB_URL OWNER PASSWORD PROJECT TARGET SHOTS_DIR
 *
 * Prints one JSON object of facts on the last line; exits non-zero on failure.
 * Run by tests/integration/test_owner_access.py (NODE_PATH points at labextension/node_modules).
 */
const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');

const [hub, owner, password, project, target, shots] = process.argv.slice(2);

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run']
  });
  const context = await browser.newContext({ javaScriptEnabled: false, viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  const facts = { problems: [] };
  const shot = async name => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
  const members = async () => page.$$eval(`#members-${project} tbody tr`,
    rows => rows.map(r => Array.from(r.querySelectorAll('td')).slice(0, 3).map(td => td.textContent.trim())));
  try {
    await page.goto(`${hub}/hub/login`);
    await page.fill('input[name="username"]', owner);
    await page.fill('input[name="password"]', password);
    await Promise.all([page.waitForNavigation(), page.click('input[type="submit"], button[type="submit"]')]);
    await page.goto(`${hub}/hub/xnat-hpc/owner/access?project=${project}`);
    facts.owned = (await page.textContent('#owned')).trim();
    facts.before = await members();
    await shot('01-access-page');
    // grant with the form: a label for every field, keyboard-reachable, no script needed
    await page.getByLabel('XNAT user').fill(target);
    await page.getByLabel('role').selectOption('Members');
    await Promise.all([page.waitForNavigation(), page.click(`#grant-${project} button[type="submit"]`)]);
    facts.grantStatus = (await page.getAttribute('#result', 'role'));
    facts.grantResult = (await page.textContent('#result')).trim();
    facts.afterGrant = await members();
    await shot('02-granted');
    // revoke with the row's button (named for screen readers)
    await Promise.all([page.waitForNavigation(),
      page.getByRole('button', { name: `Revoke access of ${target} to ${project}` }).click()]);
    facts.revokeStatus = (await page.getAttribute('#result', 'role'));
    facts.revokeResult = (await page.textContent('#result')).trim();
    facts.afterRevoke = await members();
    await shot('03-revoked');
  } catch (e) {
    facts.error = String(e && e.stack || e);
    await shot('99-error').catch(() => {});
  }
  await browser.close();
  console.log(JSON.stringify(facts));
  process.exit(facts.error ? 1 : 0);
}

main();
