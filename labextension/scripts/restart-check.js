/*
 * Manual check: the server restarting while the page is open recovers without a
 * reload storm. Starts JupyterLab itself (so it can stop and restart it on the same
 * port), opens the XNAT panel in Debian's chromium, stops the server for OUTAGE
 * seconds, counts the panel's requests meanwhile, restarts it and waits for the
 * panel to recover. Not part of `make test` (it takes minutes).
 *
 *   node scripts/restart-check.js ROOT_DIR [PORT=18577] [OUTAGE=90] [/tmp/labext-shots]
 *
 * The XNAT_* environment of this process is passed to the server.
 */
const { chromium } = require('playwright-core');
const { spawn } = require('child_process');
const path = require('path');

const [root, port = '18577', outage = '90', shots = '/tmp/labext-shots'] = process.argv.slice(2);
const base = `http://127.0.0.1:${port}/`;
const venv = process.env.VENV || '/opt/xnat-hpc-hub/venv';

function startLab() {
  const p = spawn(`${venv}/bin/jupyter`, ['lab', '--no-browser', '--ServerApp.ip=127.0.0.1', `--port=${port}`,
    '--port-retries=0', '--IdentityProvider.token=t', `--ServerApp.root_dir=${root}`, '--allow-root'],
  { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
  return new Promise((resolve, reject) => {
    let log = '';
    p.stderr.on('data', d => {
      log += d;
      if (log.includes('is running at') || log.includes(`127.0.0.1:${port}/lab`)) {
        resolve(p);
      }
    });
    p.on('exit', code => reject(new Error(`jupyter lab exited ${code}: ${log.slice(-2000)}`)));
  });
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

async function main() {
  let lab = await startLab();
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--no-first-run']
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const requests = [];
  let navigations = 0;
  page.on('request', r => {
    if (r.url().includes('/xnat-hpc/api/')) {
      requests.push({ t: Date.now(), url: r.url().replace(base, '') });
    }
  });
  page.on('load', () => navigations++); // full page loads only (not history.replaceState)
  await page.goto(`${base}lab?token=t&reset`);
  await page.waitForSelector('#jupyterlab-splash', { state: 'detached', timeout: 60000 });
  await page.click('.jp-SideBar.jp-mod-left [data-id="xnat-hpc-panel"]');
  await page.waitForSelector('[data-testid="xnat-hpc-tree"] [role="treeitem"]', { timeout: 30000 });
  await sleep(5000);

  const down = Date.now();
  lab.kill('SIGTERM');
  await new Promise(r => lab.on('exit', r));
  await sleep(Number(outage) * 1000);
  const during = requests.filter(r => r.t >= down).length;
  await page.screenshot({ path: path.join(shots, 'restart-1-server-down.png') });
  const statusDown = await page.locator('[data-testid="xnat-hpc-status"]').innerText().catch(() => '');

  const up = Date.now();
  lab = await startLab();
  // the panel's poller retries at most every 60 s (its backoff ceiling)
  let recoveredMs = null;
  for (let i = 0; i < 150; i++) {
    await sleep(500);
    const ok = requests.some(r => r.t > up && r.url.startsWith('xnat-hpc/api/jobs'));
    const status = await page.locator('[data-testid="xnat-hpc-status"]').count();
    if (ok && status === 0) {
      recoveredMs = Date.now() - up;
      break;
    }
  }
  await page.screenshot({ path: path.join(shots, 'restart-2-recovered.png') });
  console.log(JSON.stringify({
    outageSeconds: Number(outage),
    panelRequestsDuringOutage: during,
    statusLineWhileDown: statusDown,
    recoveredAfterRestartMs: recoveredMs,
    pageReloads: navigations - 1
  }, null, 2));
  await browser.close();
  lab.kill('SIGTERM');
}

main().catch(err => {
  console.error(err);
  process.exit(1);
});
