// End-to-end tests of the imgclass web page: a real `imgclass serve` process, a real headless
// Chromium, real photos classified by the built-in model.
//
// Run with `tests/e2e/run.sh`, or `node --test tests/e2e/` from the repository root once the
// binary is built (`cargo build -p imgclass`) and /usr/bin/chromium is installed.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = resolve(ROOT, process.env.IMGCLASS_BIN || 'target/debug/imgclass');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const FIXTURES = join(ROOT, 'tests', 'fixtures');
const SHOTS = join(ROOT, 'target', 'e2e');
const COFFEE = join(FIXTURES, 'coffee.png');
const CHELSEA = join(FIXTURES, 'chelsea.png');
const NOT_AN_IMAGE = { name: 'notes.png', mimeType: 'image/png', buffer: Buffer.from('these are notes, not pixels\n') };
const CAT_LABELS = ['tiger cat', 'Egyptian cat', 'tabby'];
const SLOW = 90_000;

/** A fixture as a file for setInputFiles (which cannot mix paths and buffers). */
function photo(path) {
  return { name: basename(path), mimeType: 'image/png', buffer: readFileSync(path) };
}

const ANSI = /\u001b\[[0-9;?]*[ -/]*[@-~]/g;

/** Starts `imgclass serve` (by default on a free port with a fresh database); resolves once it
 *  listens. `stop()` ends it and removes its database unless told to keep it. */
function startServer(extraArgs = [], { dir = mkdtempSync(join(tmpdir(), 'imgclass-e2e-')), listen = '127.0.0.1:0' } = {}) {
  const args = [
    'serve',
    '--listen', listen,
    '--database', `sqlite://${dir}/t.db`,
    '--workers', '1',
    ...extraArgs,
  ];
  const child = spawn(BIN, args, {
    cwd: ROOT,
    // The address is read from the info line that says where it listens.
    env: { ...process.env, NO_COLOR: '1', RUST_LOG: 'info,tower_http=warn,sqlx=warn,ort=warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const log = [];
  const remember = (line) => {
    log.push(line);
    if (log.length > 200) log.shift();
  };
  createInterface({ input: child.stderr }).on('line', (l) => remember(l.replace(ANSI, '')));
  const lines = createInterface({ input: child.stdout });
  const ready = new Promise((resolveReady, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`imgclass did not start listening in time:\n${log.join('\n')}`));
    }, 60_000);
    lines.on('line', (raw) => {
      const line = raw.replace(ANSI, '');
      remember(line);
      const m = /listening on (http:\/\/[^\s"]+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolveReady(m[1].replace(/\/$/, ''));
      }
    });
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot start ${BIN}: ${e.message}`));
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`imgclass exited (${code ?? signal}) before listening:\n${log.join('\n')}`));
    });
  });
  const stop = async ({ keepDatabase = false } = {}) => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await exited;
      clearTimeout(timer);
    }
    if (!keepDatabase) rmSync(dir, { recursive: true, force: true });
  };
  return ready.then(
    (url) => ({ url, stop, log, dir }),
    async (e) => {
      await stop();
      throw e;
    },
  );
}

/** Whether the binary knows a `serve` flag (another change may not have landed yet). */
function serveHasFlag(flag) {
  const out = spawnSync(BIN, ['serve', '--help'], { encoding: 'utf8' });
  return out.status === 0 && out.stdout.includes(flag);
}

/** Records every status a card shows, in the page, from before the page's own script runs. */
function recordStatuses() {
  window.__statusLog = [];
  window.__cspViolations = [];
  document.addEventListener('securitypolicyviolation', (e) => {
    window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
  });
  const entry = (el, status) => ({
    id: el.dataset.jobId || null,
    name: (el.querySelector('.card-name') || {}).textContent || null,
    status,
    finishedAt: el.dataset.finishedAt || null,
    t: Date.now(),
  });
  const observer = new MutationObserver((records) => {
    const now = new Map(); // target -> value after the batch, to find each record's new value
    for (let i = records.length - 1; i >= 0; i -= 1) {
      const r = records[i];
      if (r.type !== 'attributes') continue;
      const newer = now.has(r.target) ? now.get(r.target) : r.target.dataset.status;
      r.newValue = newer;
      now.set(r.target, r.oldValue);
    }
    for (const r of records) {
      if (r.type === 'attributes') {
        if (r.target.classList.contains('card') && r.newValue !== r.oldValue) {
          window.__statusLog.push(entry(r.target, r.newValue));
        }
      } else {
        for (const n of r.addedNodes) {
          if (n.nodeType === 1 && n.classList.contains('card')) {
            window.__statusLog.push(entry(n, n.dataset.status));
          }
        }
      }
    }
  });
  observer.observe(document, {
    subtree: true,
    childList: true,
    attributes: true,
    attributeOldValue: true,
    attributeFilter: ['data-status'],
  });
}

function cardNamed(page, name, status) {
  const sel = status ? `.card[data-status="${status}"]` : '.card';
  return page.locator(sel, {
    has: page.locator('.card-name', { hasText: new RegExp(`^${name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}$`) }),
  });
}

async function topLabels(card) {
  return card.locator('.bar-row .bar-label').allTextContents();
}

async function openPage(browser, url, viewport = { width: 1280, height: 800 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(m.text())) {
      problems.push(`console: ${m.text()}`);
    }
  });
  await page.addInitScript(recordStatuses);
  const resp = await page.goto(url);
  assert.equal(resp.status(), 200);
  const headers = resp.headers();
  assert.match(headers['content-type'], /^text\/html/);
  assert.match(headers['content-security-policy'], /default-src 'self'/);
  assert.equal(headers['x-frame-options'], 'DENY');
  await page.locator('#connection[data-state="live"]').waitFor();
  return { context, page, problems };
}

async function noProblems(page, problems) {
  const violations = await page.evaluate(() => window.__cspViolations);
  assert.deepEqual([...problems, ...violations], []);
}

/** Sends files straight to the API, as another client would. */
async function apiUpload(url, files) {
  const form = new FormData();
  for (const f of files) form.append('file', new Blob([f.bytes]), f.name);
  const resp = await fetch(`${url}/api/jobs`, { method: 'POST', body: form });
  return { status: resp.status, body: await resp.json() };
}

/** Whether a job finished again after an earlier view of it. */
function ranAgain(earlier, later) {
  return later.finished_at !== earlier.finished_at
    && Date.parse(later.finished_at) >= Date.parse(earlier.finished_at);
}

let browser;

before(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
  mkdirSync(SHOTS, { recursive: true });
});

after(async () => {
  await browser?.close();
});

describe('a server that classifies', () => {
  let server;
  let session;

  before(async () => {
    // The same photos are sent several times, to be classified (and canceled) each time.
    server = await startServer(['--no-result-cache']);
    session = await openPage(browser, server.url);
  });

  after(async () => {
    await session?.context.close();
    await server?.stop();
  });

  test('uploads photos and a non-image; shows results and the refusal', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    await page.locator('#file-input').setInputFiles([photo(COFFEE), photo(CHELSEA), NOT_AN_IMAGE]);

    // Every file has a card at once, with a local thumbnail.
    assert.equal(await page.locator('#cards .card').count(), 3);
    for (const name of ['coffee.png', 'chelsea.png']) {
      const src = await cardNamed(page, name).locator('img.thumb').getAttribute('src');
      assert.match(src, /^blob:/, `${name} has a local thumbnail`);
    }

    const coffee = cardNamed(page, 'coffee.png', 'succeeded');
    const chelsea = cardNamed(page, 'chelsea.png', 'succeeded');
    await coffee.waitFor({ timeout: 60_000 });
    await chelsea.waitFor({ timeout: 60_000 });

    const coffeeLabels = await topLabels(coffee);
    assert.ok(coffeeLabels.length >= 1, 'coffee has a chart');
    assert.match(coffeeLabels[0], /espresso/);
    const chelseaLabels = await topLabels(chelsea);
    assert.ok(
      CAT_LABELS.some((l) => chelseaLabels[0].includes(l)),
      `chelsea's top label ${chelseaLabels[0]} is a cat`,
    );

    // Each row has its percentage as text, and a bar as wide as the probability.
    const rows = await coffee.locator('.bar-row').evaluateAll((els) => els.map((row) => ({
      value: row.querySelector('.bar-value').textContent,
      width: row.querySelector('.bar-fill').getBoundingClientRect().width,
      track: row.querySelector('.bar-track').getBoundingClientRect().width,
    })));
    for (const r of rows) {
      assert.match(r.value, /^(<0\.1|\d{1,3}\.\d)%$/);
      if (!r.value.startsWith('<')) {
        const expected = (parseFloat(r.value) / 100) * r.track;
        assert.ok(Math.abs(r.width - expected) <= 3, `bar ${r.width}px for ${r.value} of ${r.track}px`);
      }
    }
    const timings = await coffee.locator('.timings').textContent();
    assert.match(timings, /queue wait/);
    assert.match(timings, /inference/);
    // Which provider and model answered.
    assert.match((await coffee.locator('.model').textContent()).trim(), /^builtin · efficientnet-lite0 [0-9a-f]+$/);

    // The non-image shows the server's own message.
    const notes = cardNamed(page, 'notes.png', 'rejected');
    await notes.waitFor();
    const shown = (await notes.locator('.card-error').textContent()).trim();
    const direct = await apiUpload(server.url, [{ name: 'notes.png', bytes: NOT_AN_IMAGE.buffer }]);
    assert.ok(direct.status >= 400 && direct.status < 500, `API status ${direct.status}`);
    assert.equal(shown, direct.body.error.message);

    // How long from a job's completion (its finished_at) to the page showing it.
    const log = await page.evaluate(() => window.__statusLog);
    const done = log.filter((e) => e.status === 'succeeded' && e.finishedAt);
    assert.equal(done.length, 2);
    for (const e of done) {
      const ms = e.t - Date.parse(e.finishedAt);
      console.log(`completion-to-page ms: ${ms} (${e.name})`);
      assert.ok(ms < 5000, `${e.name} took ${ms} ms to show`);
    }
    // The photos went through the states in order.
    for (const name of ['coffee.png', 'chelsea.png']) {
      const states = log.filter((e) => e.name === name).map((e) => e.status);
      assert.equal(states[0], 'uploading', `${name}: ${states}`);
      assert.equal(states.at(-1), 'succeeded', `${name}: ${states}`);
    }

    await noProblems(page, problems);
  });

  test('names are shown as text, never as markup', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    const name = '<img src=x onerror=window.__owned=1>.png';
    await page.locator('#file-input').setInputFiles([
      { name, mimeType: 'image/png', buffer: readFileSync(COFFEE) },
    ]);
    const card = cardNamed(page, name, 'succeeded');
    await card.waitFor({ timeout: 60_000 });
    assert.equal(await card.locator('.card-name img').count(), 0);
    assert.equal(await page.evaluate(() => window.__owned), undefined);
    await noProblems(page, problems);
  });

  test('has no horizontal overflow at 360 px; screenshots', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    await page.setViewportSize({ width: 1280, height: 800 });
    await page.screenshot({ path: join(SHOTS, 'page-desktop.png'), fullPage: true });
    const desktopColumns = await page.evaluate(
      () => getComputedStyle(document.getElementById('cards')).gridTemplateColumns.split(' ').length,
    );
    assert.ok(desktopColumns >= 3, `a grid on a desktop (${desktopColumns} columns)`);

    await page.setViewportSize({ width: 360, height: 740 });
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 360, `the page is ${width}px wide at 360px`);
    const columns = await page.evaluate(
      () => getComputedStyle(document.getElementById('cards')).gridTemplateColumns.split(' ').length,
    );
    assert.equal(columns, 1, 'cards stack in one column');
    await page.screenshot({ path: join(SHOTS, 'page-mobile.png'), fullPage: true });
    await page.setViewportSize({ width: 1280, height: 800 });
    await noProblems(page, problems);
  });

  test('a reload lists the earlier jobs with their statuses; the filter narrows it', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    const before = await page.locator('#cards .card[data-job-id]').evaluateAll((els) =>
      els.map((e) => `${e.dataset.jobId} ${e.dataset.status}`).sort(),
    );
    assert.equal(before.length, 3);
    await page.reload();
    await page.locator('#cards .card[data-job-id]').nth(2).waitFor();
    const afterReload = await page.locator('#cards .card[data-job-id]').evaluateAll((els) =>
      els.map((e) => `${e.dataset.jobId} ${e.dataset.status}`).sort(),
    );
    assert.deepEqual(afterReload, before);
    assert.match((await topLabels(cardNamed(page, 'coffee.png', 'succeeded')))[0], /espresso/);
    // The refused file never became a job.
    assert.equal(await cardNamed(page, 'notes.png').count(), 0);
    // History thumbnails come from the server.
    const src = await cardNamed(page, 'coffee.png').locator('img.thumb').getAttribute('src');
    assert.match(src, /^\/api\/jobs\/[0-9a-f-]+\/image$/);

    await page.locator('#status-filter').selectOption('failed');
    await page.locator('#empty').waitFor();
    assert.equal(await page.locator('#cards .card').count(), 0);
    await page.locator('#status-filter').selectOption('succeeded');
    await page.locator('#cards .card').nth(2).waitFor();
    assert.equal(await page.locator('#cards .card:not([data-status="succeeded"])').count(), 0);
    await page.locator('#status-filter').selectOption('');
    await page.locator('#cards .card').nth(2).waitFor();
    await noProblems(page, problems);
  });

  test('jobs from another client appear; Cancel and Delete work', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    // A batch sent straight to the API: with one worker, the last job waits behind the others.
    const bytes = readFileSync(COFFEE);
    const files = Array.from({ length: 20 }, (_, i) => ({ name: `batch-${i}.png`, bytes }));
    const created = await apiUpload(server.url, files);
    assert.equal(created.status, 202);
    const id = created.body.jobs.at(-1).id;
    const card = page.locator(`.card[data-job-id="${id}"]`);
    await card.waitFor();
    await card.getByRole('button', { name: 'Cancel' }).click();
    await page.locator(`.card[data-job-id="${id}"][data-status="canceled"]`).waitFor();
    assert.equal(await card.locator('.card-error').count(), 0);

    await card.getByRole('button', { name: 'Delete' }).click();
    await card.waitFor({ state: 'detached' });
    assert.equal((await fetch(`${server.url}/api/jobs/${id}`)).status, 404);

    // The others all finish.
    const others = created.body.jobs.slice(0, -1).map((j) => j.id);
    await page.waitForFunction(
      (ids) => ids.every((id) => document.querySelector(`.card[data-job-id="${id}"][data-status="succeeded"]`)),
      others,
      { timeout: 60_000 },
    );
    await noProblems(page, problems);
  });

  test('after a server restart the page reconnects and catches up', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    const port = new URL(server.url).port;
    await server.stop({ keepDatabase: true });
    await page.locator('#connection[data-state="reconnecting"], #connection[data-state="offline"]').waitFor();
    server = await startServer(['--no-result-cache'], { dir: server.dir, listen: `127.0.0.1:${port}` });
    // A job created and finished while the page is still disconnected (EventSource waits a few
    // seconds between tries).
    const created = await apiUpload(server.url, [{ name: 'while-away.png', bytes: readFileSync(CHELSEA) }]);
    assert.equal(created.status, 202);
    await page.locator('#connection[data-state="live"]').waitFor({ timeout: 30_000 });
    await cardNamed(page, 'while-away.png', 'succeeded').waitFor({ timeout: 60_000 });
    assert.equal(await cardNamed(page, 'while-away.png').count(), 1);
    await noProblems(page, problems);
  });
});

describe('a server whose classifications all fail', () => {
  let server;
  let session;

  before(async () => {
    if (!serveHasFlag('--inject-failure-rate')) {
      throw new Error(`${BIN} serve has no --inject-failure-rate flag yet; rebuild it`);
    }
    server = await startServer(['--inject-failure-rate', '1.0', '--max-attempts', '1']);
    session = await openPage(browser, server.url);
  });

  after(async () => {
    await session?.context.close();
    await server?.stop();
  });

  test('a failed job shows its error; Retry sends one request and runs it again', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    const retryPosts = [];
    page.on('request', (r) => {
      if (r.method() === 'POST' && /\/api\/jobs\/[^/]+\/retry$/.test(r.url())) retryPosts.push(r.url());
    });

    await page.locator('#file-input').setInputFiles([COFFEE]);
    const failed = cardNamed(page, 'coffee.png', 'failed');
    await failed.waitFor({ timeout: 60_000 });
    const message = (await failed.locator('.card-error').textContent()).trim();
    assert.ok(message.length > 0, 'the card shows the error message');
    assert.match(message, /injected_failure/);
    const id = await failed.getAttribute('data-job-id');
    const job = await (await fetch(`${server.url}/api/jobs/${id}`)).json();
    assert.equal(job.error.code, 'injected_failure');
    assert.ok(message.startsWith(job.error.message), `${message} shows ${job.error.message}`);

    const card = page.locator(`.card[data-job-id="${id}"]`);
    const retry = card.getByRole('button', { name: 'Retry' });
    await retry.waitFor();
    const logStart = await page.evaluate(() => window.__statusLog.length);

    // Two clicks in the same moment: the first disables the button, the second does nothing.
    const disabledInFlight = await card.evaluate((el) => {
      const button = [...el.querySelectorAll('button')].find((b) => b.textContent === 'Retry');
      button.click();
      const disabled = button.disabled;
      button.click();
      return disabled;
    });
    assert.equal(disabledInFlight, true, 'Retry is disabled while its request is in flight');

    // Back through the queue, then failed again.
    await page.waitForFunction(
      ({ id, start }) => {
        const states = window.__statusLog.slice(start).filter((e) => e.id === id).map((e) => e.status);
        const again = states.findIndex((s) => s === 'queued' || s === 'running');
        return again >= 0 && states.slice(again).includes('failed');
      },
      { id, start: logStart },
      { timeout: 30_000 },
    );
    const states = await page.evaluate(
      ({ id, start }) => window.__statusLog.slice(start).filter((e) => e.id === id).map((e) => e.status),
      { id, start: logStart },
    );
    console.log(`retry: statuses after the click: ${states.join(' -> ')}`);
    await card.getByRole('button', { name: 'Retry' }).and(page.locator(':enabled')).waitFor();
    assert.equal(retryPosts.length, 1, 'one retry request');
    const after = await (await fetch(`${server.url}/api/jobs/${id}`)).json();
    assert.equal(after.status, 'failed');
    assert.ok(ranAgain(job, after), 'the job ran again');

    // A refused request shows the server's message instead of pretending success.
    await page.route('**/api/jobs/*/retry', (route) =>
      route.fulfill({
        status: 409,
        contentType: 'application/json',
        body: JSON.stringify({ error: { code: 'invalid_state', message: 'only failed jobs can be retried; this job is queued' } }),
      }),
    );
    await card.getByRole('button', { name: 'Retry' }).click();
    await card.locator('.card-error.action-error').waitFor();
    assert.match(
      await card.locator('.card-error.action-error').textContent(),
      /only failed jobs can be retried; this job is queued/,
    );
    assert.equal(await card.getAttribute('data-status'), 'failed');
    await page.unroute('**/api/jobs/*/retry');
    await page.screenshot({ path: join(SHOTS, 'page-failed.png'), fullPage: true });
    await noProblems(page, problems);
  });

  test('Retry all failed retries every failed job shown', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    await page.locator('#file-input').setInputFiles([CHELSEA]);
    await cardNamed(page, 'chelsea.png', 'failed').waitFor({ timeout: 60_000 });
    const ids = await page.locator('#cards .card[data-status="failed"]').evaluateAll((els) =>
      els.map((e) => e.dataset.jobId),
    );
    assert.equal(ids.length, 2);
    const jobs = () => Promise.all(ids.map(async (id) =>
      (await fetch(`${server.url}/api/jobs/${id}`)).json()));
    const before = await jobs();
    const logStart = await page.evaluate(() => window.__statusLog.length);
    const retryAll = page.getByRole('button', { name: /^Retry all failed/ });
    assert.equal(await retryAll.textContent(), 'Retry all failed (2)');
    await retryAll.click();
    // Each card goes back to the queue and fails again.
    await page.waitForFunction(({ ids, start }) => ids.every((id) => {
      const states = window.__statusLog.slice(start).filter((e) => e.id === id).map((e) => e.status);
      const again = states.findIndex((s) => s === 'queued' || s === 'running');
      return again >= 0 && states.slice(again).includes('failed');
    }), { ids, start: logStart }, { timeout: 30_000 });
    const afterRetry = await jobs();
    afterRetry.forEach((job, i) => {
      assert.equal(job.status, 'failed');
      assert.ok(ranAgain(before[i], job), `job ${ids[i]} ran again`);
    });

    // Without the bulk endpoint the page retries each failed job it shows, one request each.
    const retryPosts = [];
    const onRequest = (r) => {
      if (r.method() === 'POST' && /\/api\/jobs\/[^/]+\/retry$/.test(r.url())) retryPosts.push(r.url());
    };
    page.on('request', onRequest);
    await page.route('**/api/jobs/retry-failed', (route) => route.fulfill({ status: 405, body: '' }));
    await retryAll.and(page.locator(':enabled')).waitFor();
    const start = await page.evaluate(() => window.__statusLog.length);
    await retryAll.click();
    await page.waitForFunction(({ ids, start }) => ids.every((id) => {
      const states = window.__statusLog.slice(start).filter((e) => e.id === id).map((e) => e.status);
      const again = states.findIndex((s) => s === 'queued' || s === 'running');
      return again >= 0 && states.slice(again).includes('failed');
    }), { ids, start }, { timeout: 30_000 });
    await page.unroute('**/api/jobs/retry-failed');
    page.off('request', onRequest);
    assert.equal(retryPosts.length, 2);
    await noProblems(page, problems);
  });

  test('history pages with Load more', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    const bytes = readFileSync(COFFEE);
    const files = Array.from({ length: 30 }, (_, i) => ({ name: `copy-${i}.png`, bytes }));
    const created = await apiUpload(server.url, files);
    assert.equal(created.status, 202);
    await page.reload();
    const cards = page.locator('#cards .card');
    await cards.nth(23).waitFor();
    assert.equal(await cards.count(), 24);
    await page.getByRole('button', { name: 'Load more' }).click();
    await cards.nth(31).waitFor();
    assert.equal(await cards.count(), 32);
    assert.equal(await page.getByRole('button', { name: 'Load more' }).isVisible(), false);
    // In the API's order (newest first), each job once.
    const ids = await cards.evaluateAll((els) => els.map((e) => e.dataset.jobId));
    const listed = await (await fetch(`${server.url}/api/jobs?limit=200`)).json();
    assert.deepEqual(ids, listed.jobs.map((j) => j.id));
    await noProblems(page, problems);
  });
});

/** `imgclass token create` on a server's database; returns the token it prints once. */
function createToken(dir, name, scope = 'submit,read,manage') {
  const out = spawnSync(BIN, ['token', '--database', `sqlite://${dir}/t.db`, 'create', '--name', name, '--scope', scope], {
    encoding: 'utf8',
    env: { ...process.env, NO_COLOR: '1' },
  });
  assert.equal(out.status, 0, out.stderr);
  const token = out.stdout.trim();
  assert.match(token, /^imgc_/);
  return token;
}

/** Sends files straight to the API with a token. */
async function apiUploadAs(url, token, files) {
  const form = new FormData();
  for (const f of files) form.append('file', new Blob([f.bytes]), f.name);
  const resp = await fetch(`${url}/api/jobs`, {
    method: 'POST',
    body: form,
    headers: { authorization: `Bearer ${token}` },
  });
  return { status: resp.status, body: await resp.json() };
}

describe('a server with API tokens', () => {
  let server;
  let alice;
  let bob;
  let context;

  before(async () => {
    if (!serveHasFlag('--cors-origin')) {
      throw new Error(`${BIN} has no API tokens yet; rebuild it`);
    }
    const dir = mkdtempSync(join(tmpdir(), 'imgclass-e2e-'));
    alice = createToken(dir, 'alice');
    bob = createToken(dir, 'bob');
    server = await startServer([], { dir });
    context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  });

  after(async () => {
    await context?.close();
    await server?.stop();
  });

  test('the page asks for a token, signs in, and shows only that token\'s jobs', { timeout: SLOW }, async () => {
    const page = await context.newPage();
    const problems = [];
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    await page.addInitScript(recordStatuses);
    await page.goto(server.url);

    // Asked for a token; the jobs are not shown.
    await page.locator('#login').waitFor();
    assert.equal(await page.locator('#app').isVisible(), false);
    const bobsJob = (await apiUploadAs(server.url, bob, [{ name: 'bobs.png', bytes: readFileSync(CHELSEA) }])).body.jobs[0].id;

    // A wrong token is refused with the server's message.
    await page.locator('#token-input').fill(`${alice.slice(0, -4)}0000`);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#login-error').waitFor();
    assert.match(await page.locator('#login-error').textContent(), /not valid/);

    // Alice's token: her jobs, live.
    await page.locator('#token-input').fill(alice);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#connection[data-state="live"]').waitFor();
    assert.equal(await page.locator('#login').isVisible(), false);
    await page.locator('#file-input').setInputFiles([photo(COFFEE)]);
    const coffee = cardNamed(page, 'coffee.png', 'succeeded');
    await coffee.waitFor({ timeout: 60_000 });
    assert.match((await topLabels(coffee))[0], /espresso/);
    const created = await apiUploadAs(server.url, alice, [{ name: 'from-api.png', bytes: readFileSync(COFFEE) }]);
    assert.equal(created.status, 202);
    await cardNamed(page, 'from-api.png', 'succeeded').waitFor({ timeout: 60_000 });
    // Bob's jobs, old and new, never appear.
    const bobsNew = (await apiUploadAs(server.url, bob, [{ name: 'bobs-new.png', bytes: readFileSync(CHELSEA) }])).body.jobs[0].id;
    await page.waitForFunction(async ([url, token, id]) => {
      const r = await fetch(`${url}/api/jobs/${id}`, { headers: { authorization: `Bearer ${token}` } });
      return (await r.json()).status === 'succeeded';
    }, [server.url, bob, bobsNew], { timeout: 60_000, polling: 200 });
    await page.reload();
    await cardNamed(page, 'from-api.png', 'succeeded').waitFor();
    assert.equal(await page.locator('#login').isVisible(), false, 'the token lasts for the tab');
    for (const id of [bobsJob, bobsNew]) {
      assert.equal(await page.locator(`.card[data-job-id="${id}"]`).count(), 0);
    }
    assert.equal(await page.locator('#cards .card').count(), 2);
    // The thumbnail from the server loads with the token.
    const loaded = await cardNamed(page, 'coffee.png').locator('img.thumb').evaluate(
      (img) => img.complete && img.naturalWidth > 0,
    );
    assert.ok(loaded, 'the stored image is shown');
    await page.screenshot({ path: join(SHOTS, 'page-signed-in.png'), fullPage: true });

    // Signing out forgets the token and hides the jobs.
    await page.getByRole('button', { name: 'Sign out' }).click();
    await page.locator('#login').waitFor();
    assert.equal(await page.locator('#cards .card').count(), 0);
    assert.equal(await page.evaluate(() => sessionStorage.getItem('imgclass-token')), null);
    assert.deepEqual(problems, []);
  });
});

describe('a server with the result cache', () => {
  let server;
  let session;

  before(async () => {
    server = await startServer();
    session = await openPage(browser, server.url);
  });

  after(async () => {
    await session?.context.close();
    await server?.stop();
  });

  test('a photo classified before is answered at once and marked cached', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    await page.locator('#file-input').setInputFiles([photo(COFFEE)]);
    const first = cardNamed(page, 'coffee.png', 'succeeded');
    await first.waitFor({ timeout: 60_000 });
    assert.equal(await first.locator('.cached-mark').count(), 0, 'a classified photo is not marked');
    const again = await apiUpload(server.url, [{ name: 'coffee-again.png', bytes: readFileSync(COFFEE) }]);
    assert.equal(again.status, 202);
    assert.equal(again.body.jobs[0].cached, true);
    const cached = cardNamed(page, 'coffee-again.png', 'succeeded');
    await cached.waitFor({ timeout: 10_000 });
    await cached.locator('.cached-mark').waitFor();
    assert.equal((await cached.locator('.cached-mark').textContent()).trim(), 'cached');
    assert.match((await topLabels(cached))[0], /espresso/);
    assert.deepEqual(problems, []);
  });
});
