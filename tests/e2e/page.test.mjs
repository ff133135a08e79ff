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
import { createServer } from 'node:http';
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
const PHOTOS = ['coffee.png', 'chelsea.png', 'astronaut.png', 'rocket.jpg', 'grace_hopper.jpg'];
const AXE = readFileSync(join(ROOT, 'tests', 'e2e', 'node_modules', 'axe-core', 'axe.min.js'), 'utf8');
const NOT_AN_IMAGE = { name: 'notes.png', mimeType: 'image/png', buffer: Buffer.from('these are notes, not pixels\n') };
const CAT_LABELS = ['tiger cat', 'Egyptian cat', 'tabby'];
const SLOW = 90_000;

/** A fixture as a file for setInputFiles (which cannot mix paths and buffers). */
function photo(path, name = basename(path)) {
  const mimeType = path.endsWith('.jpg') ? 'image/jpeg' : 'image/png';
  return { name, mimeType, buffer: readFileSync(path) };
}

/** Parses RFC 4180 CSV (quoted fields, doubled quotes, CRLF rows). */
function parseCsv(text) {
  const rows = [];
  let row = [];
  let field = '';
  let quoted = false;
  for (let i = 0; i < text.length; i += 1) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i += 1;
      } else if (c === '"') quoted = false;
      else field += c;
    } else if (c === '"') quoted = true;
    else if (c === ',') {
      row.push(field);
      field = '';
    } else if (c === '\n') {
      row.push(field);
      rows.push(row);
      row = [];
      field = '';
    } else if (c !== '\r') field += c;
  }
  return rows;
}

/** Runs axe-core inside the page (its source injected by the test) with the WCAG 2.1 A and AA
 *  rules and the best practices; fails on any serious or critical violation. */
async function audit(page, what) {
  // Colours are judged once they have settled: a transition still running (the drop zone's
  // background after a switch of colour scheme) would show axe a mix of the two schemes.
  await page.waitForFunction(() => document.getAnimations()
    .every((a) => !(a instanceof CSSTransition) || a.playState !== 'running'));
  if (!(await page.evaluate(() => Boolean(window.axe)))) await page.evaluate(AXE);
  const { violations, passes, incomplete } = await page.evaluate(async () => {
    const result = await window.axe.run(document, {
      runOnly: { type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'best-practice'] },
    });
    return {
      passes: result.passes.length,
      incomplete: result.incomplete.map((v) => v.id),
      violations: result.violations.map((v) => ({
        id: v.id,
        impact: v.impact,
        help: v.help,
        nodes: v.nodes.slice(0, 5).map((n) => n.target.join(' ')),
      })),
    };
  });
  assert.ok(passes > 10, `axe ran its rules (${passes} passed)`);
  const serious = violations.filter((v) => v.impact === 'serious' || v.impact === 'critical');
  console.log(`axe (${what}): ${passes} rules passed, ${violations.length} violated, ${serious.length} of them serious or critical; needs review: ${incomplete.join(', ') || 'none'}${violations.length ? `; ${JSON.stringify(violations)}` : ''}`);
  assert.deepEqual(serious, [], `axe (${what})`);
  return violations;
}

/** The page's overview counts (the status tabs), by status. */
async function tabCounts(page) {
  return page.evaluate(() => Object.fromEntries([...document.querySelectorAll('#tabs .count')]
    .map((el) => [el.dataset.count, el.textContent === '' ? null : Number(el.textContent)])));
}

async function apiJson(url, path) {
  return (await fetch(`${url}${path}`)).json();
}

/** Waits until `check` (run here, in the test) answers something truthy. */
async function until(check, what, { timeout = 30_000, interval = 200 } = {}) {
  const end = Date.now() + timeout;
  for (;;) {
    const v = await check();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
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
  window.__progressLog = [];
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
      if (r.type !== 'attributes' || r.attributeName !== 'data-status') continue;
      const newer = now.has(r.target) ? now.get(r.target) : r.target.dataset.status;
      r.newValue = newer;
      now.set(r.target, r.oldValue);
    }
    for (const r of records) {
      if (r.type === 'attributes' && r.attributeName === 'data-progress') {
        window.__progressLog.push({ name: (r.target.querySelector('.card-name') || {}).textContent, progress: Number(r.target.dataset.progress) });
      } else if (r.type === 'attributes') {
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
    attributeFilter: ['data-status', 'data-progress'],
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
      assert.ok(['waiting', 'uploading'].includes(states[0]), `${name}: ${states}`);
      assert.ok(states.includes('uploading'), `${name}: ${states}`);
      assert.equal(states.at(-1), 'succeeded', `${name}: ${states}`);
    }

    // A refused upload never became a job: no status filter shows it, the unfiltered list does.
    await page.locator('#tabs .tab[data-status="succeeded"]').click();
    await cardNamed(page, 'coffee.png', 'succeeded').waitFor();
    assert.equal(await notes.isVisible(), false);
    await page.locator('#tabs .tab[data-status=""]').click();
    await notes.waitFor();
    await coffee.waitFor();
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

    await page.locator('#tabs .tab[data-status="failed"]').click();
    await page.locator('#empty').waitFor();
    assert.equal(await page.locator('#cards .card').count(), 0);
    await page.locator('#tabs .tab[data-status="succeeded"]').click();
    await page.locator('#cards .card').nth(2).waitFor();
    assert.equal(await page.locator('#cards .card:not([data-status="succeeded"])').count(), 0);
    assert.equal(await page.locator('#tabs .tab[data-status="succeeded"]').getAttribute('aria-pressed'), 'true');
    await page.locator('#tabs .tab[data-status=""]').click();
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
    // The card shows every attempt, not only the last one.
    const earlier = card.locator('details.earlier');
    await earlier.waitFor();
    assert.equal((await earlier.locator('summary').textContent()).trim(), '2 failed attempts in all');
    await earlier.locator('summary').click();
    assert.equal(await earlier.locator('.attempts li').count(), 2);

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
    // The count is the server's (from /api/stats), and the button works under any filter.
    await page.waitForFunction(() => document.getElementById('retry-all').textContent === 'Retry all failed (2)');
    await page.locator('#tabs .tab[data-status="succeeded"]').click();
    await page.locator('#empty').waitFor();
    assert.equal(await retryAll.isEnabled(), true);
    assert.equal(await retryAll.textContent(), 'Retry all failed (2)');
    await page.locator('#tabs .tab[data-status=""]').click();
    await page.locator('#cards .card[data-status="failed"]').nth(1).waitFor();
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

describe('the dashboard', () => {
  let server;
  let session;

  before(async () => {
    // The same photos are sent several times, to be classified each time.
    server = await startServer(['--no-result-cache']);
    session = await openPage(browser, server.url);
  });

  after(async () => {
    await session?.context.close();
    await server?.stop();
  });

  test('thirty files: per-file upload percentages and one progress bar to completion', { timeout: 180_000 }, async () => {
    const { page, problems } = session;
    // A slow uplink, so that uploads take long enough to show their progress.
    const cdp = await page.context().newCDPSession(page);
    await cdp.send('Network.enable');
    await cdp.send('Network.emulateNetworkConditions', {
      offline: false, latency: 5, downloadThroughput: -1, uploadThroughput: 3 * 1024 * 1024,
    });
    const files = Array.from({ length: 30 }, (_, i) => {
      const file = PHOTOS[i % PHOTOS.length];
      return photo(join(FIXTURES, file), `batch-${String(i).padStart(2, '0')}-${file}`);
    });
    await page.locator('#file-input').setInputFiles(files);
    // Uploads in flight are limited, visibly; the others wait.
    await page.locator('#batch').waitFor();
    const note = await page.locator('#batch-note').textContent();
    assert.match(note, /uploading \(at most 4 at a time\)/);
    assert.match(note, /waiting to upload/);
    assert.ok(await page.locator('#cards .card[data-status="waiting"]').count() >= 20);
    await page.locator('#batch[data-done="true"]').waitFor({ timeout: 150_000 });
    await cdp.send('Network.emulateNetworkConditions', {
      offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1,
    });
    assert.equal(await page.locator('#batch-text').textContent(), '30 of 30 classified');
    assert.equal(await page.locator('#batch-progress').evaluate((el) => [el.value, el.max].join('/')), '30/30');
    // Each card went from waiting (all but the first four) to uploading (with real
    // percentages) to its result.
    const log = await page.evaluate(() => window.__statusLog);
    let waited = 0;
    for (const f of files) {
      const states = log.filter((e) => e.name === f.name).map((e) => e.status);
      if (states[0] === 'waiting') waited += 1;
      assert.ok(states.includes('uploading'), `${f.name}: ${states}`);
      assert.equal(states.at(-1), 'succeeded', `${f.name}: ${states}`);
    }
    assert.ok(waited >= 26, `${waited} uploads waited for their turn`);
    const progress = await page.evaluate(() => window.__progressLog);
    const between = progress.filter((p) => p.progress > 0 && p.progress < 100);
    console.log(`upload progress: ${progress.length} updates, ${between.length} between 0 and 100 %`);
    assert.ok(between.length > 0, 'some upload showed a percentage between 0 and 100');
    await noProblems(page, problems);
  });

  test('search by label and by name; the export of the filtered list parses back', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    await page.locator('#label').fill('espresso');
    await page.getByRole('button', { name: 'Search' }).click();
    const expected = await apiJson(server.url, '/api/jobs?label=espresso&limit=200');
    assert.equal(expected.total, 6);
    await page.waitForFunction((n) => document.querySelectorAll('#cards .card').length === n, expected.total);
    assert.equal(await page.locator('#match-count').textContent(), `${expected.total} matching jobs`);
    const shown = await page.locator('#cards .card').evaluateAll((els) => els.map((e) => e.dataset.jobId));
    assert.deepEqual(shown, expected.jobs.map((j) => j.id));
    for (const label of await page.locator('#cards .card .bar-row.top .bar-label').allTextContents()) {
      assert.match(label, /espresso/);
    }

    // The export buttons download the filtered list.
    const [csvDownload] = await Promise.all([page.waitForEvent('download'), page.locator('#export-csv').click()]);
    assert.match(csvDownload.suggestedFilename(), /^imgclass-jobs-\d{8}T\d{6}Z\.csv$/);
    const rows = parseCsv(readFileSync(await csvDownload.path(), 'utf8'));
    assert.equal(rows[0][0], 'id');
    assert.deepEqual(rows.slice(1).map((r) => r[0]), expected.jobs.map((j) => j.id));
    for (const r of rows.slice(1)) {
      assert.equal(r[2], 'succeeded');
      assert.equal(r[3], 'espresso');
      assert.match(r[5], /^espresso: 0\.\d{4}; /);
    }
    const [jsonDownload] = await Promise.all([page.waitForEvent('download'), page.locator('#export-json').click()]);
    const exported = JSON.parse(readFileSync(await jsonDownload.path(), 'utf8'));
    assert.deepEqual(exported.map((j) => j.id), expected.jobs.map((j) => j.id));
    assert.deepEqual(exported[0].result, expected.jobs[0].result);

    // By name, on top of a status.
    await page.locator('#search-reset').click();
    await page.locator('#q').fill('CHELSEA');
    await page.getByRole('button', { name: 'Search' }).click();
    const chelsea = await apiJson(server.url, '/api/jobs?q=chelsea&limit=200');
    await page.waitForFunction((n) => document.querySelectorAll('#cards .card').length === n, chelsea.total);
    for (const name of await page.locator('#cards .card .card-name').allTextContents()) {
      assert.match(name, /chelsea/);
    }
    await page.locator('#search-reset').click();
    await page.waitForFunction(() => document.querySelectorAll('#cards .card').length === 24);
    await noProblems(page, problems);
  });

  test('a job\'s detail view has its own URL and survives a reload', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    const coffee = (await apiJson(server.url, '/api/jobs?q=batch-25-coffee')).jobs[0];
    const card = page.locator(`.card[data-job-id="${coffee.id}"]`);
    await card.locator('.card-link').click();
    await page.waitForURL(`**/#/jobs/${coffee.id}`);
    const detail = page.locator(`#detail[data-job-id="${coffee.id}"]`);
    const check = async () => {
      await detail.waitFor();
      assert.equal(await page.locator('#jobs').isVisible(), false);
      assert.equal((await detail.locator('#detail-title').textContent()), 'batch-25-coffee.png');
      await page.waitForFunction(() => {
        const img = document.querySelector('#detail .detail-image');
        return img && img.complete && img.naturalWidth > 0;
      });
      assert.deepEqual(
        await detail.locator('.bar-row .bar-label').allTextContents(),
        coffee.result.predictions.map((p) => p.label),
      );
      const facts = await detail.locator('.facts').textContent();
      for (const term of ['Created', 'Started', 'Finished', 'Attempts', 'Worker']) assert.match(facts, new RegExp(term));
      assert.match(facts, new RegExp(coffee.result.worker));
      const raw = JSON.parse(await detail.locator('.raw-json').textContent());
      assert.deepEqual(raw, coffee);
      // The actions valid in its state: Delete, not Retry or Cancel.
      assert.deepEqual(await detail.locator('.detail-actions button').allTextContents(), ['Delete']);
    };
    await check();
    assert.equal(await page.evaluate(() => document.activeElement.id), 'detail-title');
    assert.deepEqual(await page.evaluate(() => [...document.getElementById('detail-body').childNodes]
      .filter((n) => n.nodeType === 3).map((n) => n.textContent)), [], 'no stray text');
    await audit(page, 'detail view');
    await page.screenshot({ path: join(SHOTS, 'detail-desktop.png'), fullPage: true });
    await page.reload();
    await check();
    await page.locator('#detail-back').click();
    await page.locator('#jobs').waitFor();
    assert.equal(await page.locator('#detail').isVisible(), false);
    await noProblems(page, problems);
  });

  test('accessible: keyboard, no serious axe violations in light and dark; screenshots at 1280 and 360 px', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    await page.setViewportSize({ width: 1280, height: 900 });
    await page.locator('#cards .card').nth(5).waitFor();
    // Keyboard: the tabs and a card's link are reachable and show their focus.
    await page.locator('#tabs .tab[data-status="succeeded"]').focus();
    await page.keyboard.press('Enter');
    assert.equal(await page.locator('#tabs .tab[data-status="succeeded"]').getAttribute('aria-pressed'), 'true');
    const outline = await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle);
    assert.notEqual(outline, 'none', 'focus is visible');
    await page.locator('#tabs .tab[data-status=""]').click();
    await page.locator('#cards .card').nth(5).waitFor();
    // The chart's values are text for a screen reader.
    const minutes = await page.locator('#minutes li .visually-hidden').allTextContents();
    assert.equal(minutes.length, 10);
    assert.match(minutes.at(-1), /^Last minute: \d+ succeeded, \d+ failed, \d+ canceled$/);

    const light = await audit(page, 'dashboard, light');
    await page.screenshot({ path: join(SHOTS, 'dashboard-1280.png'), fullPage: false });
    await page.emulateMedia({ colorScheme: 'dark' });
    const dark = await audit(page, 'dashboard, dark');
    await page.screenshot({ path: join(SHOTS, 'dashboard-1280-dark.png'), fullPage: false });
    await page.emulateMedia({ colorScheme: 'light' });
    console.log(`axe: ${light.length} minor/moderate violations in light, ${dark.length} in dark`);

    await page.setViewportSize({ width: 360, height: 740 });
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 360, `the page is ${width}px wide at 360px`);
    // "or" stays on the line of its button.
    const [or, pick] = await Promise.all([
      page.locator('.or-pick').boundingBox(),
      page.locator('#pick').boundingBox(),
    ]);
    assert.ok(or.height <= pick.height + 2, `"or" and the button share a line (${or.height} vs ${pick.height})`);
    await audit(page, 'dashboard, 360 px');
    await page.screenshot({ path: join(SHOTS, 'dashboard-360.png') });
    await page.screenshot({ path: join(SHOTS, 'dashboard-360-full.png'), fullPage: true });
    await page.locator('#jobs-title').evaluate((el) => el.scrollIntoView());
    await page.screenshot({ path: join(SHOTS, 'dashboard-360-jobs.png') });
    await page.setViewportSize({ width: 1280, height: 800 });
    await noProblems(page, problems);
  });

  test('Delete finished asks, naming how many, and deletes them in one request', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    const stats = await apiJson(server.url, '/api/stats');
    const finished = stats.counts.succeeded + stats.counts.failed + stats.counts.canceled;
    assert.equal(finished, 30);
    const button = page.locator('#delete-finished');
    await page.waitForFunction((n) => document.getElementById('delete-finished').textContent === `Delete finished (${n})`, finished);
    const posts = [];
    const onRequest = (r) => {
      if (r.url().includes('/api/jobs')) posts.push(`${r.method()} ${new URL(r.url()).pathname}`);
    };
    page.on('request', onRequest);
    // Declined first: nothing happens.
    page.once('dialog', (d) => d.dismiss());
    await button.click();
    assert.equal(posts.filter((p) => p.startsWith('POST')).length, 0);
    let message = '';
    page.once('dialog', (d) => {
      message = d.message();
      d.accept();
    });
    await button.click();
    await page.locator('#empty').waitFor({ timeout: 30_000 });
    page.off('request', onRequest);
    assert.match(message, new RegExp(`^Delete ${finished} finished jobs \\(30 succeeded, 0 failed, 0 canceled\\)`));
    assert.deepEqual(posts.filter((p) => !p.startsWith('GET')), ['POST /api/jobs/delete-finished']);
    assert.equal((await apiJson(server.url, '/api/jobs')).total, 0);
    await noProblems(page, problems);
  });
});

describe('a rate-limited server whose jobs sometimes fail', () => {
  let server;
  let session;

  before(async () => {
    server = await startServer([
      '--no-result-cache', '--rate-limit', '1/3s', '--inject-failure-rate', '0.5', '--inject-failure-seed', '11', '--max-attempts', '1',
    ]);
    session = await openPage(browser, server.url);
  });

  after(async () => {
    await session?.context.close();
    await server?.stop();
  });

  test('the rate limit and why jobs wait; a stale-free status tab; Cancel all queued; counts match the API', { timeout: 120_000 }, async () => {
    const { page, problems } = session;
    const bytes = readFileSync(COFFEE);
    const created = await apiUpload(server.url, Array.from({ length: 6 }, (_, i) => ({ name: `limited-${i}.png`, bytes })));
    assert.equal(created.status, 202);
    await page.waitForFunction(() => /^rate limit 1\/3 s: next start in \d+ s$/.test(document.getElementById('rate-note').textContent));
    assert.equal(await page.locator('#rate-limit').textContent(), '1 per 3 s');
    const reason = page.locator('#cards .card[data-status="queued"] .wait-reason').first();
    await page.waitForFunction(() => [...document.querySelectorAll('.wait-reason')].some((el) => /rate limit/.test(el.textContent)));
    assert.match(await reason.textContent(), /Waiting for the rate limit \(1 per 3 s\): next start in \d+ s · #\d+ in line/);

    // The Queued tab shows only queued jobs as they start and end.
    await page.locator('#tabs .tab[data-status="queued"]').click();
    await until(async () => {
      const s = await apiJson(server.url, '/api/stats');
      return (s.counts.succeeded >= 1 && s.counts.failed >= 1) || s.counts.queued === 0;
    }, 'a success and a failure');
    await page.waitForTimeout(300);
    assert.equal(await page.locator('#cards .card:not([data-status="queued"])').count(), 0);

    // Cancel all queued: one request, a confirmation naming how many.
    const label = await page.locator('#cancel-all').textContent();
    const n = Number(/\((\d+)\)/.exec(label)[1]);
    let message = '';
    page.once('dialog', (d) => {
      message = d.message();
      d.accept();
    });
    await page.locator('#cancel-all').click();
    await page.locator('#empty').waitFor({ timeout: 10_000 });
    assert.match(message, new RegExp(`^Cancel all ${n} queued job`));
    await page.locator('#tabs .tab[data-status="canceled"]').click();
    await page.locator('#cards .card[data-status="canceled"]').first().waitFor();
    assert.equal(await page.locator('#cards .card[data-status="canceled"] .card-note').first().textContent(), 'Canceled before it ran.');

    // Once nothing runs, the overview agrees with the API.
    await until(async () => {
      const s = await apiJson(server.url, '/api/stats');
      return s.counts.running === 0 && s.counts.queued === 0;
    }, 'the end of the run');
    const stats = await apiJson(server.url, '/api/stats');
    console.log(`mixed run: ${JSON.stringify(stats.counts)}`);
    assert.ok(stats.counts.succeeded >= 1 && stats.counts.failed >= 1 && stats.counts.canceled >= 1, JSON.stringify(stats.counts));
    const expected = { all: 6, ...stats.counts };
    await page.waitForFunction((want) => {
      const got = Object.fromEntries([...document.querySelectorAll('#tabs .count')].map((el) => [el.dataset.count, Number(el.textContent)]));
      return Object.entries(want).every(([k, v]) => got[k] === v);
    }, expected, { timeout: 10_000 });
    assert.deepEqual(await tabCounts(page), expected);
    const by = stats.finished_last_minute_by;
    await page.waitForFunction((text) => {
      const items = document.querySelectorAll('#minutes li .visually-hidden');
      return items.length && items[items.length - 1].textContent === text;
    }, `Last minute: ${by.succeeded} succeeded, ${by.failed} failed, ${by.canceled} canceled`);
    await noProblems(page, problems);
  });
});

describe('a server that retries after a backoff', () => {
  let server;
  let session;

  before(async () => {
    server = await startServer([
      '--no-result-cache', '--inject-failure-rate', '1.0', '--max-attempts', '2', '--backoff-base', '20s', '--backoff-max', '20s',
    ]);
    session = await openPage(browser, server.url);
  });

  after(async () => {
    await session?.context.close();
    await server?.stop();
  });

  test('a queued card waiting for its retry says until when, and shows the failed attempt', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    await page.locator('#file-input').setInputFiles([photo(COFFEE)]);
    const card = cardNamed(page, 'coffee.png', 'queued').filter({ has: page.locator('.attempts li') });
    await card.waitFor({ timeout: 30_000 });
    const id = await card.getAttribute('data-job-id');
    const job = await apiJson(server.url, `/api/jobs/${id}`);
    assert.equal(job.attempts, 1);
    const at = new Date(job.run_at).toLocaleTimeString('en-US', { hour12: false });
    const reason = await card.locator('.wait-reason').textContent();
    assert.match(reason, /^Retry backoff after attempt 1 failed: runs again at \d\d:\d\d:\d\d$/);
    assert.ok(reason.endsWith(await page.evaluate((t) => new Date(t).toLocaleTimeString([], { hour12: false }), job.run_at)), `${reason} names ${at}`);
    assert.match(await card.locator('.attempts li').first().textContent(), /^Attempt 1 .*\(injected_failure\)/);
    await noProblems(page, problems);
  });
});

/** A stand-in for the Imagga API on loopback whose uploads answer only when released. */
function slowImagga() {
  let release;
  const released = new Promise((r) => { release = r; });
  const server = createServer(async (req, res) => {
    const send = (body) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ ...body, status: { text: '', type: 'success' } }));
    };
    req.resume();
    if (req.method === 'POST' && req.url.startsWith('/v2/uploads')) {
      await released;
      send({ result: { upload_id: 'i1' } });
    } else if (req.method === 'GET' && req.url.startsWith('/v2/tags')) {
      send({ result: { tags: [{ confidence: 90, tag: { en: 'cat' } }] } });
    } else if (req.method === 'DELETE') {
      send({});
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  return new Promise((r) => server.listen(0, '127.0.0.1', () => r({
    url: `http://127.0.0.1:${server.address().port}`,
    release,
    close: () => new Promise((c) => { server.closeAllConnections(); server.close(c); }),
  })));
}

describe('a server whose provider is slow', () => {
  let server;
  let session;
  let imagga;

  before(async () => {
    imagga = await slowImagga();
    server = await startServer([
      '--provider', 'imagga', '--imagga-key', 'k', '--imagga-secret', 's', '--imagga-url', imagga.url,
    ]);
    session = await openPage(browser, server.url);
  });

  after(async () => {
    imagga?.release();
    await session?.context.close();
    await server?.stop();
    await imagga?.close();
  });

  test('a job canceled while it runs says so', { timeout: SLOW }, async () => {
    const { page, problems } = session;
    await page.locator('#file-input').setInputFiles([photo(CHELSEA)]);
    const running = cardNamed(page, 'chelsea.png', 'running');
    await running.waitFor({ timeout: 30_000 });
    await running.getByRole('button', { name: 'Cancel' }).click();
    const canceled = cardNamed(page, 'chelsea.png', 'canceled');
    await canceled.waitFor();
    assert.match(await canceled.locator('.card-note').textContent(), /^Canceled while it ran \(attempt 1\)/);
    imagga.release();
    await noProblems(page, problems);
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
