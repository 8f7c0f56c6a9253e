/*
 * Manual smoke test of the extension in a real browser (Debian's chromium driven by
 * playwright-core; never a downloaded browser). Not part of `make test`: it needs a
 * running JupyterLab with the server extension configured for an XNAT.
 *
 *   node scripts/smoke.js http://127.0.0.1:8888/ TOKEN [/tmp/labext-shots] [--submit]
 *
 * Opens the XNAT panel, browses, rejects a bad dataset name, creates a dataset,
 * opens "Train on secure HPC…" (with --submit: double-clicks Submit, checks one job
 * was created and follows it to a final state), saving screenshots along the way.
 */
const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');

const [base = 'http://127.0.0.1:8888/', token = '', shots = '/tmp/labext-shots'] = process.argv.slice(2).filter(a => !a.startsWith('--'));
const submit = process.argv.includes('--submit');
const api = (p) => `${base}xnat-hpc/api/${p}`;

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run']
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const problems = [];
  page.on('pageerror', e => problems.push(`pageerror: ${e.message}`));
  page.on('console', m => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  const shot = async (name) => {
    const file = path.join(shots, `${name}.png`);
    await page.screenshot({ path: file });
    console.log(`screenshot ${file}`);
  };
  const facts = {};

  await page.goto(`${base}lab?token=${token}&reset`, { waitUntil: 'domcontentloaded' });
  await page.waitForSelector('.jp-LabShell', { timeout: 60000 });
  await page.waitForSelector('#jupyterlab-splash', { state: 'detached', timeout: 60000 });

  // open the XNAT side panel and time its first render
  const tab = page.locator('.jp-SideBar.jp-mod-left [data-id="xnat-hpc-panel"]');
  await tab.waitFor({ timeout: 30000 });
  let t0 = Date.now();
  await tab.click();
  await page.waitForSelector('[data-testid="xnat-hpc-tree"] [role="treeitem"]', { timeout: 30000 });
  facts.panelFirstRenderMs = Date.now() - t0;
  await shot('01-panel');

  // browse: project -> subjects -> experiments
  await page.click('button[aria-label="Expand project NEURO_MRI"]');
  await page.waitForSelector('[role="treeitem"][aria-level="2"]');
  const firstSubject = page.locator('[role="treeitem"][aria-level="2"]').first();
  await firstSubject.locator('button.xnat-hpc-twisty').click();
  await page.waitForSelector('[role="treeitem"][aria-level="3"]');
  const firstExp = page.locator('[role="treeitem"][aria-level="3"]').first();
  await firstExp.locator('button.xnat-hpc-twisty').click();
  await page.waitForSelector('[role="treeitem"][aria-level="4"]');
  await shot('02-tree-expanded');
  facts.treeRows = await page.locator('[role="treeitem"]').count();

  // select the first subject, try a bad name, then a good one
  await firstSubject.locator('input[type="checkbox"]').check();
  await page.click('[data-testid="xnat-hpc-create-dataset"]');
  await page.fill('.jp-Dialog input', 'bad/name');
  await page.click('.jp-Dialog .jp-mod-accept');
  await page.waitForSelector('.jp-Dialog:has-text("Dataset name not allowed")');
  facts.badNameMessage = (await page.locator('.jp-Dialog-body').innerText()).trim();
  await shot('03-bad-name');
  await page.click('.jp-Dialog-footer button'); // dismiss the error: the name prompt comes back
  await page.waitForSelector('.jp-Dialog input');
  await page.fill('.jp-Dialog input', 'smoke t1');
  await page.click('.jp-Dialog .jp-mod-accept');
  await page.waitForSelector('[data-testid="xnat-hpc-dataset-list"] [data-name="smoke t1"]', { timeout: 60000 });
  facts.datasetRow = (await page.locator('[data-name="smoke t1"]').innerText()).replace(/\s+/g, ' ');
  await shot('04-dataset-created');

  // the Train dialog from the dataset row
  await page.click('button[aria-label="Train on dataset smoke t1"]');
  await page.waitForSelector('[data-testid="xnat-hpc-submit"]');
  await page.selectOption('#xnat-hpc-train-script', 'train.py');
  facts.trainForm = await page.evaluate(() =>
    Object.fromEntries(Array.from(document.querySelectorAll('.xnat-hpc-train-form [id^="xnat-hpc-train-"]'))
      .filter(e => 'value' in e).map(e => [e.id.replace('xnat-hpc-train-', ''), e.value])));
  // a value over the limit is refused on the client, in words, and Submit is disabled
  await page.fill('#xnat-hpc-train-cpus', '99');
  await page.waitForSelector('#xnat-hpc-train-cpus-error');
  facts.overLimitMessage = await page.locator('#xnat-hpc-train-cpus-error').innerText();
  facts.submitDisabledWhenInvalid = await page.locator('[data-testid="xnat-hpc-submit"]').isDisabled();
  await shot('05-train-dialog-invalid');
  await page.fill('#xnat-hpc-train-cpus', '1');

  if (submit) {
    const before = (await (await page.request.get(api('jobs'), { headers: { Authorization: `token ${token}` } })).json()).items.length;
    t0 = Date.now();
    await page.dblclick('[data-testid="xnat-hpc-submit"]');
    await page.waitForSelector('[data-testid="xnat-hpc-submit"]', { state: 'detached', timeout: 60000 });
    facts.submitToDialogClosedMs = Date.now() - t0;
    const jobs = (await (await page.request.get(api('jobs'), { headers: { Authorization: `token ${token}` } })).json()).items;
    facts.jobsCreatedByDoubleClick = jobs.length - before;
    const details = page.locator('[data-testid="xnat-hpc-job-details"] [data-testid="xnat-hpc-job-state"]');
    await details.waitFor({ timeout: 30000 });
    const seen = [];
    const deadline = Date.now() + 180000;
    for (;;) {
      const state = (await details.innerText()).trim();
      if (!seen.includes(state)) {
        seen.push(state);
        if (state === 'queued' || state === 'running') {
          facts.submitToQueuedOrRunningMs = facts.submitToQueuedOrRunningMs || Date.now() - t0;
        }
        await shot(`06-job-${state}`);
      }
      if (['done', 'failed', 'cancelled', 'lost'].includes(state) || Date.now() > deadline) {
        break;
      }
      await page.waitForTimeout(250);
    }
    facts.jobStates = seen;
    if (seen[seen.length - 1] === 'done') {
      await page.click('[data-testid="xnat-hpc-open-results"]');
      await page.waitForTimeout(1500);
      facts.fileBrowserPath = await page.locator('.jp-FileBrowser .jp-BreadCrumbs').innerText().catch(() => '');
      await shot('07-results-opened');
    } else {
      facts.jobMessage = await page.locator('.xnat-hpc-job-facts').innerText().catch(() => '');
    }
  } else {
    await page.click('.jp-Dialog .jp-mod-reject');
  }

  // a subject with 1,000 experiments (API answers faked at the network boundary): time to the
  // first page of rows, and to all 1,000 rows after "load more"
  await page.keyboard.press('Escape');
  await page.route(/xnat-hpc\/api\/projects\/SLEEP_EEG\/(subjects|experiments)/, async route => {
    const u = new URL(route.request().url());
    const offset = Number(u.searchParams.get('offset') || 0);
    const limit = Number(u.searchParams.get('limit') || 100);
    const big = u.pathname.endsWith('/subjects')
      ? [{ id: 'BIG', label: 'big-subject', project: 'SLEEP_EEG' }]
      : Array.from({ length: 1000 }, (_, i) => ({ id: `E${i}`, label: `exp-${String(i).padStart(4, '0')}`,
        project: 'SLEEP_EEG', subject_id: 'BIG', subject_label: 'big-subject', date: '2024-01-01', modality: 'EEG' }));
    const items = big.slice(offset, offset + limit);
    await route.fulfill({ json: { items, total: big.length, offset, limit } });
  });
  if (!(await page.locator('[data-testid="xnat-hpc-tree"]').isVisible())) {
    await page.click('.jp-SideBar.jp-mod-left [data-id="xnat-hpc-panel"]'); // (a click on the active tab would close it)
  }
  await page.click('button[aria-label="Expand project SLEEP_EEG"]');
  await page.waitForSelector('button[aria-label="Expand subject big-subject"]');
  t0 = Date.now();
  await page.click('button[aria-label="Expand subject big-subject"]');
  await page.waitForSelector('[data-key$="experiment:E99"]');
  facts.bigSubjectFirstPageMs = Date.now() - t0;
  t0 = Date.now();
  for (let i = 0; i < 9; i++) {
    await page.click('button:has-text("Load more experiments")');
    await page.waitForSelector(`[data-key$="experiment:E${(i + 2) * 100 - 1}"]`);
  }
  facts.bigSubjectAll1000Ms = Date.now() - t0;
  facts.bigSubjectRows = await page.locator('[role="treeitem"][data-key*="subject:BIG/"]').count();
  await shot('09-thousand-experiments');
  await page.unroute(/xnat-hpc\/api\/projects\/SLEEP_EEG\/(subjects|experiments)/);

  // the file browser's context menu on a .py file opens the dialog with that script
  await page.keyboard.press('Escape');
  await page.click('.jp-SideBar.jp-mod-left [data-id="filebrowser"]');
  await page.click('.jp-BreadCrumbs-home');
  const item = page.locator('.jp-DirListing-item[data-file-type="python"]', { hasText: 'train.py' });
  await item.waitFor({ timeout: 10000 });
  await item.click({ button: 'right' });
  await page.click('.lm-Menu-item:has-text("Train on secure HPC")');
  await page.waitForSelector('[data-testid="xnat-hpc-submit"]');
  facts.contextMenuScript = await page.locator('#xnat-hpc-train-script').inputValue();
  await shot('08-context-menu-dialog');
  await page.click('.jp-Dialog .jp-mod-reject');

  facts.problems = problems;
  console.log(JSON.stringify(facts, null, 2));
  await browser.close();
}

main().catch(err => {
  console.error(err);
  process.exit(1);
});
