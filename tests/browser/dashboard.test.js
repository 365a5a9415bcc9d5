// The dashboard in a real browser against the real binary: Debian's
// Chromium driven by playwright-core. Run with `node --test` here, or
// `bash .ci/run browser` from the repository root.
//
// Environment: SPOOL_BIN (default ../../target/debug/spool), CHROMIUM
// (default /usr/bin/chromium), SCREENSHOT_DIR (default ../../target/screenshots;
// the servers' logs go beside it, in browser-logs/).
// UPDATE_SCREENSHOT=1 also writes the jobs screen to docs/dashboard.png,
// the picture the README shows.

import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const SPOOL_BIN = process.env.SPOOL_BIN || join(ROOT, 'target/debug/spool');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOTS = process.env.SCREENSHOT_DIR || join(ROOT, 'target/screenshots');
const LOGS = join(SCREENSHOTS, '..', 'browser-logs');

const ADMIN_KEY = 'browser-admin-secret-0123456789';
const READ_KEY = 'browser-read-secret-0123456789';

/** A port nobody listens on right now. */
function freePort() {
  return new Promise((ok, fail) => {
    const server = createServer();
    server.unref();
    server.on('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => ok(port));
    });
  });
}

const pause = (ms) => new Promise((ok) => setTimeout(ok, ms));

/** Polls `check` until it returns a truthy value, or fails after `ms`. */
async function eventually(what, check, ms = 15_000) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) assert.fail(`${what} did not happen within ${ms} ms (last: ${last})`);
    await pause(100);
  }
}

// Every spool started here, so none outlives the tests, whatever happens.
const started = [];
process.on('exit', () => {
  for (const server of started) {
    if (server.child.exitCode === null && server.child.signalCode === null) server.child.kill('SIGKILL');
  }
});

/** The real binary on a free port and a fresh SQLite file, once /readyz answers. */
async function startSpool(env) {
  const dir = mkdtempSync(join(tmpdir(), 'spool-browser-'));
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  // Kept after the run (the database directory is not), to read when a test fails.
  mkdirSync(LOGS, { recursive: true });
  const logPath = join(LOGS, `spool-${started.length + 1}.log`);
  const log = openSync(logPath, 'w');
  // None of the caller's SPOOL_* settings: each instance is configured here only.
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('SPOOL_')));
  const child = spawn(SPOOL_BIN, [], {
    env: {
      ...inherited,
      SPOOL_BIND: `127.0.0.1:${port}`,
      SPOOL_DATABASE_URL: `sqlite://${join(dir, 'spool.db')}`,
      SPOOL_SHUTDOWN_GRACE: '2s',
      SPOOL_CANCEL_GRACE: '1s',
      ...env,
    },
    stdio: ['ignore', log, log],
  });
  const server = { child, dir, url };
  started.push(server);
  const exited = new Promise((ok) => child.once('exit', (code, signal) => ok({ code, signal })));
  const deadline = Date.now() + 30_000;
  for (;;) {
    const gone = await Promise.race([exited, pause(200).then(() => null)]);
    if (gone) {
      assert.fail(`spool exited (${JSON.stringify(gone)}) before /readyz answered:\n${readFileSync(logPath, 'utf8')}`);
    }
    try {
      if ((await fetch(`${url}/readyz`)).ok) return server;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) assert.fail(`spool at ${url} was not ready within 30 s`);
  }
}

async function stopSpool(server) {
  if (!server) return;
  const { child } = server;
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((ok) => child.once('exit', ok));
    child.kill('SIGTERM');
    if (!(await Promise.race([exited.then(() => true), pause(5000).then(() => false)]))) {
      child.kill('SIGKILL');
      await exited;
    }
  }
  rmSync(server.dir, { recursive: true, force: true });
}

let spool; // the instance with keys, which most tests use
let base; // its URL
let browser;

async function api(method, path, body, key = ADMIN_KEY) {
  const response = await fetch(base + path, {
    method,
    headers: { Authorization: `Bearer ${key}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  assert.ok(response.ok, `${method} ${path} answered ${response.status}: ${text}`);
  return text ? JSON.parse(text) : null;
}

const sleepJob = (ms, payload = {}) => ({ kind: 'sleep', payload: { ms, ...payload } });

/** A page of a fresh context (its own sessionStorage), logged in with `key`. */
async function openDashboard(key, hash = '#/jobs', viewport = { width: 1280, height: 860 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  page.on('console', (message) => {
    // The CSP refusing something shows up here: none is expected.
    if (message.type() === 'error' && /Content Security Policy/i.test(message.text())) {
      problems.push(`console: ${message.text()}`);
    }
  });
  await page.goto(`${base}/${hash}`);
  await page.waitForSelector('#key-prompt:not([hidden])');
  await page.fill('#key-input', key);
  await page.press('#key-input', 'Enter');
  await page.waitForSelector('#key-prompt', { state: 'hidden' });
  await page.waitForSelector('#live[data-state="live"]');
  page.problems = problems;
  return page;
}

async function shot(page, name, fullPage = true) {
  await page.screenshot({ path: join(SCREENSHOTS, `${name}.png`), fullPage });
}

const statusOf = (page, id) => page.getAttribute(`tr[data-job-id="${id}"]`, 'data-status', { timeout: 1000 });

describe('the dashboard', () => {
  before(async () => {
    mkdirSync(SCREENSHOTS, { recursive: true });
    spool = await startSpool({ SPOOL_API_KEYS: `ops:admin:${ADMIN_KEY},ops:read:${READ_KEY}` });
    base = spool.url;
    // A container's /dev/shm is small: Chromium's shared memory goes to /tmp.
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--disable-dev-shm-usage'] });
  });

  after(async () => {
    await browser?.close();
    await stopSpool(spool);
  });

  test('asks for a key, then shows submitted jobs moving from queued to succeeded without a reload', async () => {
    const page = await openDashboard(ADMIN_KEY, '#/jobs');
    await page.evaluate(() => { window.notReloaded = true; });
    const jobs = [];
    for (const ms of [1500, 1800, 2100]) jobs.push(await api('POST', '/v1/jobs', sleepJob(ms)));
    const firstSeen = {};
    for (const job of jobs) {
      firstSeen[job.id] = await eventually(`job ${job.id} on the page`, () => statusOf(page, job.id));
    }
    for (const job of jobs) {
      assert.ok(['queued', 'running'].includes(firstSeen[job.id]), `first seen as ${firstSeen[job.id]}`);
    }
    for (const job of jobs) {
      await page.waitForSelector(`tr[data-job-id="${job.id}"][data-status="succeeded"]`, { timeout: 20_000 });
    }
    assert.equal(await page.evaluate(() => window.notReloaded), true, 'the page was reloaded');
    await shot(page, 'jobs');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('cancels a running job with its button', async () => {
    const job = await api('POST', '/v1/jobs', sleepJob(60_000, { steps: 60 }));
    const page = await openDashboard(ADMIN_KEY, `#/jobs/${job.id}`);
    await page.waitForSelector('#job[data-status="running"]', { timeout: 15_000 });
    // Keyboard only: Tab reaches the button, with a visible focus, and Enter presses it.
    await eventually('the cancel button reached with Tab', async () => {
      await page.keyboard.press('Tab');
      return page.evaluate(() => document.activeElement?.dataset.action === 'cancel');
    });
    assert.notEqual(await page.evaluate(() => getComputedStyle(document.activeElement).outlineStyle), 'none');
    await page.keyboard.press('Enter');
    await page.waitForSelector('#job[data-status="cancelled"]', { timeout: 15_000 });
    await page.waitForSelector('#timeline li[data-event="job.cancelled"]');
    await page.waitForSelector('#timeline li[data-event="job.started"]');
    assert.equal((await api('GET', `/v1/jobs/${job.id}`)).status, 'cancelled');
    await shot(page, 'job');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('re-runs a failed batch from its page and shows each job once, with its new result', async () => {
    const failing = { kind: 'sleep', payload: { ms: 10, fail: true }, max_attempts: 1 };
    const batch = await api('POST', '/v1/batches', { jobs: [failing, failing, { kind: 'noop' }] });
    await api('GET', `/v1/batches/${batch.id}?wait=20`);
    const page = await openDashboard(ADMIN_KEY, `#/batches/${batch.id}`);
    await page.waitForSelector('#batch[data-status="failed"]');
    await eventually('three results', async () => (await page.$$('#results tbody tr')).length === 3);
    await page.click('#batch button[data-action="rerun-batch"]');
    await eventually('re-run once', async () => (await api('GET', `/v1/batches/${batch.id}`)).retries === 1);
    await page.waitForSelector('#batch[data-status="failed"]');
    await page.waitForSelector('#batch [data-retries]');
    assert.equal((await page.textContent('#batch [data-retries]')).trim(), '1');
    // Each job once: the re-run results replaced the old rows.
    await eventually('the re-run results shown', async () => {
      if (!(await api('GET', `/v1/batches/${batch.id}`)).finished_at) return false;
      for (const jobId of batch.job_ids.slice(0, 2)) {
        const job = await api('GET', `/v1/jobs/${jobId}`);
        const shown = await page.getAttribute(`#results tr[data-job-id="${jobId}"]`, 'data-finished-at');
        if (shown !== job.finished_at) return false;
      }
      return true;
    });
    assert.equal((await page.$$('#results tbody tr')).length, 3);
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test("follows a batch's progress bar to 100 %", async () => {
    const page = await openDashboard(ADMIN_KEY, '#/queues');
    const spec = { jobs: [500, 1000, 1500, 2000, 2500, 3000, 3500, 4000].map((ms) => sleepJob(ms)) };
    const batch = await api('POST', '/v1/batches', spec);
    await page.goto(`${base}/#/batches/${batch.id}`);
    const first = Number(await (await page.waitForSelector('#batch .progress-text')).getAttribute('data-percent'));
    assert.ok(first < 100, `the batch was already done when the page opened (${first} %)`);
    await page.waitForSelector('#batch .progress-text[data-percent="100"]', { timeout: 30_000 });
    await page.waitForSelector('#batch[data-status="succeeded"]');
    assert.equal(await page.getAttribute('#batch progress', 'value'), '100');
    await eventually('every result listed', async () => (await page.$$('#results tbody tr')).length === 8);
    await shot(page, 'batch');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('a filtered URL, loaded afresh, shows only matching jobs', async () => {
    await api('PUT', '/v1/queues/mail', { concurrency: 2 });
    const failing = [];
    for (let i = 0; i < 3; i += 1) {
      failing.push(await api('POST', '/v1/jobs', { kind: 'sleep', payload: { ms: 10, fail: true }, max_attempts: 1 }));
    }
    const mail = await api('POST', '/v1/jobs', { kind: 'echo', payload: { to: 'a@example.com' }, queue: 'mail' });
    const succeeded = await api('POST', '/v1/jobs', { kind: 'noop' });
    for (const job of [...failing, mail, succeeded]) await api('GET', `/v1/jobs/${job.id}?wait=10`);

    const page = await openDashboard(ADMIN_KEY, '#/jobs?status=failed');
    await page.reload();
    await page.waitForSelector('#key-prompt', { state: 'hidden' });
    for (const job of failing) await page.waitForSelector(`tr[data-job-id="${job.id}"]`);
    const statuses = await page.$$eval('#jobs tbody tr', (rows) => rows.map((row) => row.dataset.status));
    assert.ok(statuses.length >= 3);
    assert.deepEqual([...new Set(statuses)], ['failed']);
    assert.equal(await page.$(`tr[data-job-id="${succeeded.id}"]`), null);
    assert.equal(await page.inputValue('#filter-status'), 'failed');
    await shot(page, 'jobs-failed');

    await page.goto(`${base}/#/jobs?queue=mail`);
    await page.reload();
    await page.waitForSelector(`tr[data-job-id="${mail.id}"]`);
    const rows = await page.$$('#jobs tbody tr');
    assert.equal(rows.length, 1, 'only the mail job');
    assert.equal(await page.inputValue('#filter-queue'), 'mail');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('the queues screen shows live counts and throughput, and pauses and resumes a queue', async () => {
    const page = await openDashboard(ADMIN_KEY, '#/queues');
    const card = '.queue[data-queue="default"]';
    await page.waitForSelector(card);
    await api('POST', '/v1/batches', { jobs: Array.from({ length: 12 }, (_, i) => sleepJob(100 + 50 * i)) });
    await eventually('throughput counted', async () => {
      const text = await page.textContent(`${card} [data-throughput]`);
      return Number.parseFloat(text) > 0;
    });
    await page.click(`${card} button[data-action="pause"]`);
    await page.waitForSelector(`${card} button[data-action="resume"]`);
    assert.equal((await api('GET', '/v1/queues/default')).paused, true);
    await page.click(`${card} button[data-action="resume"]`);
    await page.waitForSelector(`${card} button[data-action="pause"]`);
    assert.equal((await api('GET', '/v1/queues/default')).paused, false);
    await page.click(`${card} button[data-action="edit"]`);
    await page.fill('#concurrency-default', '7');
    await page.click(`${card} button[data-action="save"]`);
    await eventually('concurrency changed', async () => (await api('GET', '/v1/queues/default')).concurrency === 7);
    // An adaptive queue shows where its limit is, and keeps its range when saved.
    await api('PUT', '/v1/queues/elastic', { concurrency: { min: 2, max: 16 } });
    const elastic = '.queue[data-queue="elastic"]';
    await page.waitForSelector(elastic);
    await eventually('adaptive concurrency shown', async () => (
      await page.textContent(`${elastic} [data-concurrency]`)).includes('adaptive, 2–16'));
    await page.click(`${elastic} button[data-action="edit"]`);
    await page.fill('#concurrency-max-elastic', '24');
    await page.click(`${elastic} button[data-action="save"]`);
    await eventually('range changed', async () => (await api('GET', '/v1/queues/elastic')).concurrency.max === 24);
    assert.deepEqual((await api('GET', '/v1/queues/elastic')).concurrency, { min: 2, max: 24 });
    await shot(page, 'queues');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('a read key sees no cancel, retry, pause or settings buttons', async () => {
    const running = await api('POST', '/v1/jobs', sleepJob(30_000));
    const failed = await api('POST', '/v1/jobs', { kind: 'sleep', payload: { ms: 1, fail: true }, max_attempts: 1 });
    await api('GET', `/v1/jobs/${failed.id}?wait=10`);
    const page = await openDashboard(READ_KEY, '#/jobs');
    await page.waitForSelector(`tr[data-job-id="${running.id}"]`);
    await page.waitForSelector(`tr[data-job-id="${failed.id}"]`);
    assert.match(await page.textContent('#who'), /read/);
    assert.equal(await page.$$eval('button[data-action="cancel"], button[data-action="retry"]', (b) => b.length), 0);
    await page.goto(`${base}/#/jobs/${running.id}`);
    await page.waitForSelector('#job[data-status]');
    assert.equal(await page.$('#job button[data-action="cancel"]'), null);
    await page.goto(`${base}/#/queues`);
    await page.waitForSelector('.queue[data-queue="default"]');
    assert.equal(await page.$$eval('.queue button', (b) => b.length), 0);
    await shot(page, 'queues-read-key');
    await api('POST', `/v1/jobs/${running.id}/cancel`);
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('fits a phone-width screen, and cuts a large payload with a way to see all', async () => {
    // noop: an echo would return it, over the result cap.
    const big = await api('POST', '/v1/jobs', { kind: 'noop', payload: { blob: 'x'.repeat(900_000), note: 'a large payload' } });
    await api('GET', `/v1/jobs/${big.id}?wait=10`);
    const page = await openDashboard(ADMIN_KEY, '#/queues', { width: 390, height: 844 });
    const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    const screens = [
      ['#/queues', '.queue[data-queue="default"]', 'phone-queues'],
      ['#/jobs', '#jobs tbody tr', 'phone-jobs'],
      ['#/batches', '#batches-title', 'phone-batches'],
      [`#/jobs/${big.id}`, '#job[data-status="succeeded"]', 'phone-job'],
    ];
    for (const [hash, ready, name] of screens) {
      await page.goto(`${base}/${hash}`);
      await page.waitForSelector(ready);
      assert.ok((await overflow()) <= 0, `${hash} is wider than the screen by ${await overflow()} px`);
      await shot(page, name);
    }
    const payload = '#job pre[aria-label="payload"]';
    assert.ok((await page.textContent(payload)).length < 5000, 'the payload is cut');
    await page.click('#job button[data-action="show-all"]');
    assert.ok((await page.textContent(payload)).length > 900_000, 'the whole payload is shown');
    assert.ok((await overflow()) <= 0, 'the whole payload widens the page');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('the jobs screen, as the README shows it', async () => {
    const page = await openDashboard(ADMIN_KEY, '#/jobs');
    await api('POST', '/v1/jobs', { kind: 'sleep', payload: { ms: 20_000, steps: 20 }, metadata: { team: 'billing' } });
    await api('POST', '/v1/jobs', { kind: 'sleep', payload: { ms: 20_000 }, delay_ms: 60_000 });
    await eventually('a running job with progress', async () => (await page.$$('#jobs progress')).length > 0, 20_000);
    // The first screenful only: the README's picture stays small.
    await shot(page, 'overview', false);
    if (process.env.UPDATE_SCREENSHOT) {
      copyFileSync(join(SCREENSHOTS, 'overview.png'), join(ROOT, 'docs/dashboard.png'));
    }
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });

  test('in open mode asks for no key and offers the buttons of an admin', async () => {
    const open = await startSpool({});
    try {
      const page = await (await browser.newContext()).newPage();
      await page.goto(`${open.url}/#/queues`);
      await page.waitForSelector('.queue[data-queue="default"] button[data-action="pause"]');
      assert.equal(await page.isHidden('#key-prompt'), true);
      assert.equal(await page.textContent('#who'), 'default · admin');
      await page.context().close();
    } finally {
      await stopSpool(open);
    }
  });

  test('10 000 queued jobs keep every screen paged and in shape, and a batch is cancelled with its button', async () => {
    await api('PUT', '/v1/queues/bulk', { paused: true, capacity: 20_000 });
    const jobs = Array.from({ length: 10_000 }, (_, i) => ({ kind: 'noop', queue: 'bulk', payload: { i } }));
    const batch = await api('POST', '/v1/batches', { jobs });
    const page = await openDashboard(ADMIN_KEY, '#/queues');
    const overflow = () => page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    const card = '.queue[data-queue="bulk"]';
    await page.waitForSelector(`${card} [data-count="queued"]:text-is("10000")`);
    // The oldest ready job's age comes with the queue, however many wait.
    await page.waitForSelector(`${card} [data-oldest]:text-matches("^[0-9]+ (s|min)$")`);
    assert.ok((await overflow()) <= 0);

    await page.goto(`${base}/#/jobs?queue=bulk`);
    await page.waitForSelector('#jobs tbody tr[data-status="queued"]');
    await page.waitForSelector('.pager a[data-action="older"]');
    assert.equal((await page.$$('#jobs tbody tr')).length, 50, 'one page, not every job');
    await page.click('.pager a[data-action="older"]');
    await eventually('the second page', async () => (await page.evaluate(() => location.hash)).includes('cursor='));
    await page.waitForSelector('#jobs tbody tr');
    assert.ok((await overflow()) <= 0);

    await page.goto(`${base}/#/batches/${batch.id}`);
    await page.waitForSelector('#batch [data-count="queued"]:text-is("10000")');
    assert.equal(await page.getAttribute('#batch .progress-text', 'data-percent'), '0');
    await shot(page, 'batch-10000');
    await page.click('#batch button[data-action="cancel-batch"]');
    await page.waitForSelector('#batch[data-status="cancelled"]', { timeout: 20_000 });
    await page.waitForSelector('#batch [data-count="cancelled"]:text-is("10000")');
    assert.ok((await overflow()) <= 0);
    assert.deepEqual(page.problems, []);
    await page.context().close();
  });
});
