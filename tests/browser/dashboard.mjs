// Drives Debian's Chromium (headless, through playwright-core) against a running gateway's
// dashboard. Called by tests/dashboard.rs, which owns the gateway and the upstream; the two
// talk over stdio: this script prints `STOP_UPSTREAM` and waits for a line `stopped`.
// Any failed check throws: the process exits non-zero and the Rust test fails with its message.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';

const env = (k) => {
  const v = process.env[k];
  if (v === undefined) throw new Error(`missing environment variable ${k}`);
  return v;
};
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
if (!existsSync(CHROMIUM)) {
  throw new Error(`${CHROMIUM} is missing: install Debian's chromium package (scripts/test does)`);
}
const mode = env('MODE');
const admin = env('ADMIN_URL');
const shots = env('SHOT_DIR');
mkdirSync(shots, { recursive: true });

const stdin = createInterface({ input: process.stdin });
const lines = stdin[Symbol.asyncIterator]();
async function ask(step) {
  console.log(step);
  const { value, done } = await lines.next();
  if (done || value.trim() !== 'done') throw new Error(`no acknowledgement for ${step}: ${value}`);
}

function check(ok, message) {
  if (!ok) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
let failed = false;
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  const consoleErrors = [];
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  page.on('response', (r) => { if (r.status() >= 400) consoleErrors.push(`HTTP ${r.status()} ${r.url()}`); });
  const requests = [];
  page.on('request', (r) => requests.push({ url: r.url(), auth: r.headers()['authorization'] }));

  const response = await page.goto(admin + '/dashboard');
  check(response.status() === 200, `GET /dashboard: ${response.status()}`);
  const csp = response.headers()['content-security-policy'] || '';
  check(csp.includes("script-src 'self'") && !csp.includes('unsafe-inline'), `CSP: ${csp}`);

  if (mode === 'open') {
    await runOpen(page);
  } else if (mode === 'store') {
    await runStore(page);
  } else if (mode === 'token') {
    await runToken(page, requests);
  } else {
    throw new Error(`unknown MODE ${mode}`);
  }
  // A CSP violation or a script error shows up as a console error.
  // 401s are expected before the token is given (the browser logs them too).
  check(consoleErrors.filter((e) => !e.includes('401')).length === 0,
    `console errors: ${JSON.stringify(consoleErrors)}`);
  console.log('DONE');
} catch (e) {
  failed = true;
  console.error(e && e.stack ? e.stack : String(e));
} finally {
  await browser.close();
  stdin.close();
}
process.exit(failed ? 1 : 0);

async function text(page, selector) {
  return (await page.locator(selector).first().textContent())?.trim();
}

async function runOpen(page) {
  const version = env('EXPECT_VERSION');
  const routes = env('EXPECT_ROUTES').split(',');
  const route = env('TRAFFIC_ROUTE');
  const target = env('TARGET');
  const gateway = env('GATEWAY_URL');

  await page.waitForFunction((v) => document.getElementById('config-version')?.textContent === v,
    version, { timeout: 5000 });
  await page.waitForSelector('#routes tbody tr', { timeout: 5000 });
  const reload = await text(page, '#last-reload');
  check(reload.startsWith('failed at '), `last reload: ${reload}`);
  const errors = await page.$$eval('#reload-errors li', (li) => li.map((e) => e.textContent));
  check(errors.includes(env('EXPECT_RELOAD_ERROR')), `reload errors shown: ${JSON.stringify(errors)}`);
  check(await page.locator('#login').isHidden(), 'the token prompt is shown on a gateway without a token');
  const shown = await page.$$eval('#routes tbody tr', (rows) => rows.map((r) => r.dataset.route));
  check(JSON.stringify(shown) === JSON.stringify(routes), `route table ${shown} != ${routes}`);
  const match = await text(page, `#routes tr[data-route="${route}"] td.match`);
  check(match.includes('prefix /api'), `match cell: ${match}`);
  const up = await text(page, `#routes tr[data-route="${route}"] td.upstream`);
  check(up === 'backend', `upstream cell: ${up}`);

  // Traffic: about 40 requests a second for 4 s; the page's rate must rise above 10/s.
  const before = Number(await page.$eval(`#routes tr[data-route="${route}"]`, (r) => r.dataset.rps || '0'));
  check(before < 1, `rate before traffic: ${before}`);
  const until = Date.now() + 4000;
  let sent = 0;
  while (Date.now() < until) {
    const r = await fetch(gateway + '/api/items');
    check(r.status === 200, `traffic answered ${r.status}`);
    await r.arrayBuffer();
    sent++;
    await new Promise((res) => setTimeout(res, 25));
  }
  await page.waitForFunction((name) => {
    const tr = document.querySelector(`#routes tr[data-route="${name}"]`);
    return tr && Number(tr.dataset.rps || 0) > 10;
  }, route, { timeout: 5000 });
  const rpsText = await text(page, `#routes tr[data-route="${route}"] td.rps .value`);
  console.log(`RATE sent=${sent} shown=${rpsText}`);

  const healthy = await text(page, `#upstreams tr[data-target="${target}"] td.health`);
  check(healthy === 'healthy', `target before the stop: ${healthy}`);
  check(!(await page.$eval(`#upstreams tr[data-target="${target}"]`, (r) => r.classList.contains('bad'))),
    'target marked bad before the stop');

  await ask('STOP_UPSTREAM');
  const stoppedAt = Date.now();
  await page.waitForFunction((t) => {
    const tr = document.querySelector(`#upstreams tr[data-target="${t}"]`);
    return tr && tr.classList.contains('bad') && tr.querySelector('td.health').textContent.includes('UNHEALTHY');
  }, target, { timeout: 3000 });
  console.log(`SEEN_DOWN_MS ${Date.now() - stoppedAt}`);
  // A state is never told by colour alone: the words are on the page.
  const health = await text(page, `#upstreams tr[data-target="${target}"] td.health`);
  check(health.includes('UNHEALTHY'), `health text: ${health}`);

  // Narrow windows still show every panel (tables scroll inside their region).
  await page.screenshot({ path: path.join(shots, 'dashboard.png'), fullPage: true });
  await page.setViewportSize({ width: 420, height: 900 });
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  check(overflow <= 1, `page wider than a 420 px window by ${overflow} px`);
  await page.screenshot({ path: path.join(shots, 'dashboard-narrow.png'), fullPage: true });
}

async function runToken(page, requests) {
  const token = env('TOKEN');
  const version = env('EXPECT_VERSION');
  const checksum = env('EXPECT_CHECKSUM');

  await page.waitForSelector('#login', { state: 'visible', timeout: 5000 });
  await page.waitForTimeout(300);
  check(await page.locator('#panels').isHidden(), 'panels shown without a token');
  check(await page.locator('#login').isVisible(), 'no token prompt');
  const body = await page.evaluate(() => document.body.innerText);
  check(!body.includes(checksum) && !body.includes('backend'), 'data shown without a token');
  check(await page.locator('#routes tbody tr').count() === 0, 'routes rendered without a token');
  await page.screenshot({ path: path.join(shots, 'dashboard-token-prompt.png') });

  await page.fill('#token', 'not-the-token-at-all');
  await page.press('#token', 'Enter');
  await page.waitForFunction(() => document.getElementById('login-error').textContent.includes('refused'),
    null, { timeout: 5000 });
  check(await page.locator('#panels').isHidden(), 'panels shown after a wrong token');

  await page.fill('#token', token);
  await page.click('#login button[type=submit]');
  await page.waitForFunction((v) => document.getElementById('config-version')?.textContent === v,
    version, { timeout: 5000 });
  await page.waitForSelector('#routes tbody tr[data-route="api"]', { timeout: 5000 });
  check(await page.locator('#login').isHidden(), 'the token prompt stays after the token was accepted');
  const api = requests.filter((r) => r.url.includes('/admin/'));
  check(api.length > 0, 'no admin API request seen');
  check(requests.every((r) => !r.url.includes(token)), 'the token appeared in a URL');
  check(api.some((r) => r.auth === `Bearer ${token}`), 'no request carried the bearer token');
}

async function runStore(page) {
  const first = env('EXPECT_STORE_VERSION');
  const next = env('EXPECT_NEXT_STORE_VERSION');
  const sourceIs = (v) => page.waitForFunction((want) => [...document.querySelectorAll('#config dd')]
    .some((dd) => dd.textContent === want), 'store, version ' + v, { timeout: 5000 });
  await sourceIs(first);
  const body = await page.evaluate(() => document.getElementById('config').innerText);
  check(body.includes('reachable') && !body.includes('unreachable'), `store state: ${body}`);
  await page.waitForSelector('#routes tbody tr[data-route="all"]', { timeout: 5000 });
  await ask('ACTIVATE_NEXT');
  // The newly activated store version reaches the page without a reload.
  await sourceIs(next);
  await page.screenshot({ path: path.join(shots, 'dashboard-store.png'), fullPage: true });
}
