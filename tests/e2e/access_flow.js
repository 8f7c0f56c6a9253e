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
const { walk } = require('./browser');

const [hub, owner, password, project, target, shots] = process.argv.slice(2);

walk({ shots, viewport: { width: 1200, height: 900 }, facts: { problems: [] } },
  async ({ page, login, shot, facts }) => {
    const members = async () => page.$$eval(`#members-${project} tbody tr`,
      rows => rows.map(r => Array.from(r.querySelectorAll('td')).slice(0, 3).map(td => td.textContent.trim())));
    await login(hub, owner, password);
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
  });
