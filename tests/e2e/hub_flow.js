/*
 * The researcher's whole flow in a real browser (Debian's chromium driven by
 * playwright-core; never a downloaded browser), against the `xnat-hpc-hub demo` stack:
 * log in through the hub, spawn a server for NEURO_MRI, open the XNAT panel, browse,
 * create a dataset, submit the bundled example training script with "Train on secure
 * HPC…" (double click: one job), follow the job to done and open its results.
 *
 *   node tests/e2e/hub_flow.js HUB_URL USER PASSWORD SHOTS_DIR DATASET_NAME [BIG_DATASET_NAME]
 *
 * With BIG_DATASET_NAME (a long name): a dataset of the whole project under that name, a job on
 * it whose staging progress shows in its row and tab (then cancelled), the long name whole in a
 * title; and no "Jupyter news" prompt at any point.
 *
 * Prints one JSON object of facts on the last line; exits non-zero on failure.
 * Run by tests/e2e/test_lab_e2e.py (NODE_PATH points at labextension/node_modules).
 */
const { chromium } = require('playwright-core');
const fs = require('fs');
const path = require('path');

const [hub, user, password, shots, dataset, bigDataset] = process.argv.slice(2);

/** Whether the page shows JupyterLab's "get notified about Jupyter news?" prompt. */
async function newsPrompt(page) {
  return page.evaluate(() => /Jupyter news/i.test(document.body.innerText));
}

async function main() {
  fs.mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run']
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const facts = { problems: [] };
  page.on('pageerror', e => facts.problems.push(`pageerror: ${e.message}`));
  const shot = async name => page.screenshot({ path: path.join(shots, `${name}.png`) });
  try {
    // 1. log in through the hub with XNAT credentials
    await page.goto(`${hub}/hub/login`);
    await page.fill('input[name="username"]', user);
    await page.fill('input[name="password"]', password);
    await shot('01-login');
    await page.click('input[type="submit"], button[type="submit"]');
    // 2. the spawn form lists the user's projects; choose the local profile and NEURO_MRI
    await page.waitForSelector('#xnat-hpc-projects', { timeout: 60000 });
    facts.formProjects = await page.$$eval('input[name="project"]', els => els.map(e => e.value));
    facts.formProfiles = await page.$$eval('input[name="profile"]', els => els.map(e => e.value));
    await page.check('#profile-local-small');
    await page.check('#project-NEURO_MRI');
    await shot('02-spawn-form');
    let t0 = Date.now();
    await page.click('form input[type="submit"], form button[type="submit"]');
    // 3. JupyterLab
    await page.waitForSelector('.jp-LabShell', { timeout: 180000 });
    facts.spawnToLabMs = Date.now() - t0;
    // a fresh workspace: JupyterLab would otherwise restore tabs of earlier sessions
    await page.goto(`${hub}/user/${user}/lab?reset`);
    await page.waitForSelector('.jp-LabShell', { timeout: 60000 });
    await page.waitForSelector('#jupyterlab-splash', { state: 'detached', timeout: 120000 });
    // 4. the XNAT panel: scope = NEURO_MRI only
    const tab = page.locator('.jp-SideBar.jp-mod-left [data-id="xnat-hpc-panel"]');
    await tab.waitFor({ timeout: 30000 });
    t0 = Date.now();
    await tab.click();
    await page.waitForSelector('[data-testid="xnat-hpc-tree"] [role="treeitem"]', { timeout: 30000 });
    facts.panelFirstRenderMs = Date.now() - t0;
    facts.panelProjects = await page.$$eval('[role="treeitem"][aria-level="1"]', els => els.length);
    await page.click('button[aria-label="Expand project NEURO_MRI"]');
    await page.waitForSelector('[role="treeitem"][aria-level="2"]');
    const subject = page.locator('[role="treeitem"][aria-level="2"]').first();
    await subject.locator('button.xnat-hpc-twisty').click();
    await page.waitForSelector('[role="treeitem"][aria-level="3"]');
    await shot('03-panel-tree');
    // 5. create a dataset from the first subject
    await subject.locator('input[type="checkbox"]').check();
    await page.click('[data-testid="xnat-hpc-create-dataset"]');
    await page.fill('.jp-Dialog input', dataset);
    await page.click('.jp-Dialog .jp-mod-accept');
    await page.waitForSelector(`[data-testid="xnat-hpc-dataset-list"] [data-name="${dataset}"]`, { timeout: 90000 });
    await shot('04-dataset');
    // 6. Train on secure HPC: the bundled example script, 1 CPU; a double click makes one job
    await page.click(`button[aria-label="Train on dataset ${dataset}"]`);
    await page.waitForSelector('[data-testid="xnat-hpc-submit"]');
    await page.selectOption('#xnat-hpc-train-script', 'examples/train_example.py');
    await page.fill('#xnat-hpc-train-cpus', '1');
    await shot('05-train-dialog');
    const jobRows = '[data-testid="xnat-hpc-jobs"] [data-testid="xnat-hpc-job-state"]';
    facts.jobsBefore = await page.$$eval(jobRows, els => els.length);
    t0 = Date.now();
    await page.dblclick('[data-testid="xnat-hpc-submit"]');
    await page.waitForSelector('[data-testid="xnat-hpc-submit"]', { state: 'detached', timeout: 60000 });
    facts.submitToDialogClosedMs = Date.now() - t0;
    await page.waitForFunction(([sel, n]) => document.querySelectorAll(sel).length > n,
      [jobRows, facts.jobsBefore], { timeout: 30000 });
    await page.waitForTimeout(3000); // a second job, if a double click made one, shows up by now
    facts.jobsListed = await page.$$eval(jobRows, els => els.length);
    const state = page.locator('[data-testid="xnat-hpc-job-details"] [data-testid="xnat-hpc-job-state"]');
    await state.waitFor({ timeout: 30000 });
    const seen = [];
    const deadline = Date.now() + 300000;
    for (;;) {
      const s = (await state.innerText()).trim();
      if (!seen.includes(s)) {
        seen.push(s);
        if ((s === 'queued' || s === 'running') && !facts.submitToQueuedMs) {
          facts.submitToQueuedMs = Date.now() - t0;
        }
        await shot(`06-job-${s}`);
      }
      if (['done', 'failed', 'cancelled', 'lost'].includes(s) || Date.now() > deadline) break;
      await page.waitForTimeout(250);
    }
    facts.jobStates = seen;
    facts.log = (await page.locator('[data-testid="xnat-hpc-log"]').innerText().catch(() => '')).slice(-2000);
    if (seen[seen.length - 1] === 'done') {
      await page.click('[data-testid="xnat-hpc-open-results"]');
      await page.waitForTimeout(1500);
      facts.fileBrowserPath = await page.locator('.jp-FileBrowser .jp-BreadCrumbs').innerText().catch(() => '');
      facts.resultListing = await page.$$eval('.jp-DirListing-itemText', els => els.map(e => e.textContent));
      await shot('07-results');
      // 8. "Publish to XNAT…", confirmed: the results and the hub's signed RO-Crate go to XNAT
      await page.click('[data-testid="xnat-hpc-publish"]');
      await page.click('.jp-Dialog .jp-mod-accept');
      const published = page.locator('[data-testid="xnat-hpc-published"]');
      try {
        await published.waitFor({ timeout: 120000 });
        facts.published = await published.innerText();
        facts.publishedHref = await published.locator('a').getAttribute('href');
      } catch (e) {
        facts.published = `not shown: ${await page.locator('.jp-Dialog').innerText().catch(() => String(e))}`;
      }
      await shot('08-published');
    } else {
      facts.jobMessage = await page.locator('.xnat-hpc-job-facts').innerText().catch(() => '');
    }
    facts.newsPromptSeen = facts.newsPromptSeen || (await newsPrompt(page));
    if (bigDataset) {
      await stagingProgress(page, facts, shot, tab);
    }
    // 9. no "Jupyter news" prompt, and the lab's settings say why: the package's overrides
    facts.newsPromptSeen = facts.newsPromptSeen || (await newsPrompt(page));
    facts.notificationSettings = await page.evaluate(async base => {
      // as JupyterLab's own ServerConnection does: the _xsrf cookie as X-XSRFToken
      const xsrf = (document.cookie.match(/(?:^|;\s*)_xsrf=([^;]*)/) || [])[1];
      const r = await fetch(`${base}/lab/api/settings/@jupyterlab/apputils-extension:notification`,
        { headers: xsrf ? { 'X-XSRFToken': decodeURIComponent(xsrf) } : {}, credentials: 'same-origin' });
      const text = await r.text();
      try {
        const p = JSON.parse(text).schema.properties;
        return { fetchNews: p.fetchNews.default, checkForUpdates: p.checkForUpdates.default };
      } catch (e) {
        return { status: r.status, body: text.slice(0, 300) };
      }
    }, `${hub}/user/${user}`);
  } catch (err) {
    await shot('99-failure').catch(() => {});
    facts.error = String(err && err.stack || err);
  }
  await browser.close();
  console.log(JSON.stringify(facts));
  process.exit(facts.error ? 1 : 0);
}

/**
 * 8. A dataset of the whole project under a long name; a job on it shows its staging progress
 * (bar + "Staging … · n/m files · rate · time left") in its row and in its tab; then it is cancelled.
 */
async function stagingProgress(page, facts, shot, tab) {
  if (!(await page.locator('#xnat-hpc-panel').isVisible())) {
    await tab.click();
  }
  await page.waitForSelector('[role="treeitem"][aria-level="1"]', { timeout: 30000 });
  await page.locator('[role="treeitem"][aria-level="1"]').first().locator('input[type="checkbox"]').check();
  await page.click('[data-testid="xnat-hpc-create-dataset"]');
  await page.fill('.jp-Dialog input', bigDataset);
  await page.click('.jp-Dialog .jp-mod-accept');
  const item = page.locator(`[data-testid="xnat-hpc-dataset-list"] [data-name="${bigDataset}"]`);
  await item.waitFor({ timeout: 180000 });
  // the long name: cut by CSS in the narrow panel, whole in its title
  facts.longLabel = await item.locator('.xnat-hpc-dataset-name').evaluate(el => ({
    text: el.textContent, title: el.title, truncated: el.scrollWidth > el.clientWidth
  }));
  facts.treeTitles = await page.$$eval('.xnat-hpc-tree-label', els =>
    els.map(e => ({ text: e.textContent, title: e.title, truncated: e.scrollWidth > e.clientWidth })));
  await shot('08-long-label');
  await page.click(`button[aria-label="Train on dataset ${bigDataset}"]`);
  await page.waitForSelector('[data-testid="xnat-hpc-submit"]');
  await page.selectOption('#xnat-hpc-train-script', 'examples/train_example.py');
  await page.fill('#xnat-hpc-train-cpus', '1');
  const rowsBefore = await page.$$eval('[data-testid="xnat-hpc-jobs"] li[data-job-id]', els => els.map(e => e.dataset.jobId));
  await page.click('[data-testid="xnat-hpc-submit"]');
  await page.waitForSelector('[data-testid="xnat-hpc-submit"]', { state: 'detached', timeout: 120000 });
  await page.waitForFunction(before => [...document.querySelectorAll('[data-testid="xnat-hpc-jobs"] li[data-job-id]')]
    .some(e => !before.includes(e.dataset.jobId)), rowsBefore, { timeout: 30000 });
  const jobId = await page.$$eval('[data-testid="xnat-hpc-jobs"] li[data-job-id]',
    (els, before) => els.map(e => e.dataset.jobId).find(id => !before.includes(id)), rowsBefore);
  facts.bigJob = jobId;
  if (!(await page.locator('#xnat-hpc-panel').isVisible())) {
    await tab.click();
  }
  const row = page.locator(`[data-testid="xnat-hpc-jobs"] li[data-job-id="${jobId}"]`);
  const bar = row.locator('[data-testid="xnat-hpc-staging-progress"] [role="progressbar"]');
  facts.rowProgress = [];
  facts.tabProgress = [];
  const details = page.locator(`[data-testid="xnat-hpc-job-details"][data-job-id="${jobId}"]`);
  const deadline = Date.now() + 120000;
  let shotTaken = false;
  while (Date.now() < deadline) {
    const state = (await row.locator('[data-testid="xnat-hpc-job-state"]').innerText().catch(() => '')).trim();
    if (state && state !== 'staging') {
      break;
    }
    // the row's bar and the tab's words read in one go, before any screenshot (which takes long
    // enough for a fast staging to end): whenever the row shows progress, so does the tab
    const seen = await page.evaluate(([jobId]) => {
      const row = document.querySelector(`[data-testid="xnat-hpc-jobs"] li[data-job-id="${jobId}"]`);
      const el = row && row.querySelector('[data-testid="xnat-hpc-staging-progress"] [role="progressbar"]');
      if (!el) {
        return null;
      }
      const tab = document.querySelector(
        `[data-testid="xnat-hpc-job-details"][data-job-id="${jobId}"] [data-testid="xnat-hpc-staging-progress"]`);
      return {
        bar: {now: Number(el.getAttribute('aria-valuenow')), max: Number(el.getAttribute('aria-valuemax')),
              valuetext: el.getAttribute('aria-valuetext'), text: el.parentElement.textContent},
        tab: tab ? tab.innerText : ''
      };
    }, [jobId]).catch(() => null);
    if (seen) {
      const p = seen.bar;
      facts.rowProgress.push(p);
      if (seen.tab) {
        facts.tabProgress.push(seen.tab);
      }
      if (facts.rowProgress.length === 1) {
        await row.scrollIntoViewIfNeeded().catch(() => {});
        await shot('09-staging-progress-row'); // the row and the tab while staging
      } else if (!shotTaken && p.now > 0 && p.now < 100) {
        shotTaken = true;
        await shot('09b-staging-progress-mid'); // staging may end before this one
      }
    }
    facts.newsPromptSeen = facts.newsPromptSeen || (await newsPrompt(page));
    await page.waitForTimeout(150);
  }
  // cancel the big job from its tab (nothing needs to run)
  const cancel = details.locator('[data-testid="xnat-hpc-cancel"]');
  if (await cancel.count()) {
    await cancel.click();
    await page.click('.jp-Dialog .jp-mod-warn');
  }
  await page.waitForFunction(id => {
    const el = document.querySelector(`[data-testid="xnat-hpc-jobs"] li[data-job-id="${id}"] [data-testid="xnat-hpc-job-state"]`);
    return el && ['cancelled', 'failed', 'done', 'lost'].includes(el.textContent.trim());
  }, jobId, { timeout: 120000 });
  facts.bigJobFinal = (await row.locator('[data-testid="xnat-hpc-job-state"]').innerText()).trim();
  facts.bigJobRowTitle = await row.locator('.xnat-hpc-job-what').getAttribute('title');
  await shot('10-staging-cancelled');
}

main();
