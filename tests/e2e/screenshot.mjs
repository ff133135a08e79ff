// Renders docs/screenshot.png, the README's picture of the page: a real `imgclass serve` with the
// built-in model and a rate limit (and no result cache, so that each photo is classified again),
// the photos of tests/fixtures uploaded through the page, taken while the first ones have their
// labels and the others wait for the rate limit.
//
// Usage (from the repository root, once `cargo build -p imgclass` has run):
//   node tests/e2e/screenshot.mjs [output.png]

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const BIN = resolve(ROOT, process.env.IMGCLASS_BIN || 'target/debug/imgclass');
const OUT = resolve(process.argv[2] || join(ROOT, 'docs', 'screenshot.png'));
const FIXTURES = join(ROOT, 'tests', 'fixtures');
const PHOTOS = ['coffee.png', 'chelsea.png', 'astronaut.png', 'rocket.jpg', 'grace_hopper.jpg'];

const dir = mkdtempSync(join(tmpdir(), 'imgclass-shot-'));
const child = spawn(BIN, [
  'serve', '--listen', '127.0.0.1:0', '--database', `sqlite://${dir}/t.db`, '--workers', '1',
  '--rate-limit', '6/20s', '--no-result-cache',
], { cwd: ROOT, env: { ...process.env, NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'inherit'] });
const url = await new Promise((resolveUrl, reject) => {
  createInterface({ input: child.stdout }).on('line', (line) => {
    const m = /listening on (http:\/\/[^\s"]+)/.exec(line);
    if (m) resolveUrl(m[1].replace(/\/$/, ''));
  });
  child.once('exit', (code) => reject(new Error(`imgclass exited (${code})`)));
});

const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--headless', '--no-sandbox'] });
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  await page.goto(url);
  await page.locator('#connection[data-state="live"]').waitFor();
  const file = (name) => ({
    name,
    mimeType: name.endsWith('.jpg') ? 'image/jpeg' : 'image/png',
    buffer: readFileSync(join(FIXTURES, name)),
  });
  // Five photos classified, then five more of which the rate limit lets one start.
  await page.locator('#file-input').setInputFiles(PHOTOS.map(file));
  await page.waitForFunction(() => document.querySelectorAll('#cards .card[data-status="succeeded"]').length === 5, null, { timeout: 60_000 });
  await page.locator('#file-input').setInputFiles(['chelsea.png', 'coffee.png', 'rocket.jpg', 'astronaut.png'].map(file));
  await page.waitForFunction(() => /next start in/.test(document.getElementById('rate-note').textContent)
    && document.querySelectorAll('#cards .card[data-status="queued"]').length === 3, null, { timeout: 60_000 });
  await page.waitForTimeout(500);
  await page.screenshot({ path: OUT });
  console.log(`wrote ${OUT}`);
} finally {
  await browser.close();
  child.kill('SIGTERM');
  await new Promise((r) => child.once('exit', r));
  rmSync(dir, { recursive: true, force: true });
}
