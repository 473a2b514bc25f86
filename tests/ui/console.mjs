// The web console, told as one story in a real browser: sign in, see the
// fleet, watch a node become unreachable without reloading, and find that
// the console cannot change anything.
//
// A Rust test starts a coordinator with a cluster of three nodes and runs
// this script with:
//   MUSTER_UI_URL        the coordinator's origin, e.g. https://127.0.0.1:7443
//   MUSTER_VIEWER_TOKEN  a viewer token
//   MUSTER_ADMIN_TOKEN   the admin token: a session it opens only reads too
//   MUSTER_CLUSTER       the cluster
//   MUSTER_NODES         its three nodes, comma-separated
//   MUSTER_STOP_NODE     the node whose agent the test stops when asked
//   MUSTER_SCREENSHOTS   where to save a PNG of each page
//   MUSTER_CHROMIUM      the browser (default /usr/bin/chromium)
//
// Lines on stdout: `# ...` is progress; `stop-agent` asks the test to stop
// MUSTER_STOP_NODE's agent, and the test answers `stopped` on stdin; `ok`
// is the last line of a story that passed. A failure is told on stderr and
// exits 1.

import fs from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';
import { chromium, request } from 'playwright-core';

const TIMEOUT_MS = 150_000;
const UNREACHABLE_WITHIN_MS = 90_000;
const SESSION_COOKIE = 'muster_session';

// ---- Small helpers ----

class Failed extends Error {}

function expect(cond, msg) {
  if (!cond) throw new Failed(msg);
}

function step(name) {
  console.log(`# ${name}`);
}

function env(name) {
  const value = process.env[name];
  if (!value) throw new Failed(`${name} is not set`);
  return value;
}

// Waits for `locator` to be attached, failing with `msg` after `ms`.
async function waitFor(locator, msg, ms = 15_000) {
  try {
    await locator.first().waitFor({ state: 'attached', timeout: ms });
  } catch (e) {
    throw new Failed(`${msg} (waited ${Math.round(ms / 1000)} s)`);
  }
}

// Waits until `fn` (run in the page) returns true, failing with `msg`.
async function waitUntil(page, fn, arg, msg, ms = 15_000) {
  try {
    await page.waitForFunction(fn, arg, { timeout: ms, polling: 200 });
  } catch (e) {
    throw new Failed(`${msg} (waited ${Math.round(ms / 1000)} s)`);
  }
}

// The lines the test writes on stdin, one at a time.
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

async function waitLine(expected) {
  const { value, done } = await lines.next();
  expect(!done, `stdin closed while waiting for "${expected}"`);
  expect(value.trim() === expected, `expected "${expected}" on stdin, got "${value}"`);
}

// ---- The story ----

async function story(browser) {
  const origin = new URL(env('MUSTER_UI_URL')).origin;
  const viewerToken = env('MUSTER_VIEWER_TOKEN');
  const adminToken = env('MUSTER_ADMIN_TOKEN');
  const cluster = env('MUSTER_CLUSTER');
  const nodes = env('MUSTER_NODES').split(',').map((n) => n.trim()).filter(Boolean);
  const stopNode = env('MUSTER_STOP_NODE');
  const shots = process.env.MUSTER_SCREENSHOTS || fs.mkdtempSync('/tmp/muster-ui-');
  fs.mkdirSync(shots, { recursive: true });
  expect(nodes.length === 3, `MUSTER_NODES names ${nodes.length} nodes, not 3`);
  expect(nodes.includes(stopNode), `MUSTER_STOP_NODE ${stopNode} is not among MUSTER_NODES`);

  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 800 } });
  const page = await context.newPage();
  const shot = async (name) => {
    await page.screenshot({ path: path.join(shots, name), fullPage: true });
    console.log(`# saved ${name}`);
  };
  const sessionCookie = async () => (await context.cookies(origin)).find((c) => c.name === SESSION_COOKIE);
  // Asks, from the page and with its cookie, to scale the cluster; the status.
  const scaleFromPage = () => page.evaluate(async (c) => (await fetch(`/v1/clusters/${encodeURIComponent(c)}/scale`, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ count: 5 }),
  })).status, cluster);

  step('1. every request the page makes is recorded');
  const requested = [];
  context.on('request', (r) => requested.push(r.url()));
  // The CSP refuses anything inline; a refusal or an uncaught error is a bug.
  const pageProblems = [];
  page.on('pageerror', (e) => pageProblems.push(`uncaught: ${e.message}`));
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content[- ]Security[- ]Policy/i.test(m.text())) pageProblems.push(m.text());
  });

  step('2. without a session /ui/ leads to the sign-in page, which refuses a wrong token');
  let res = await page.goto(`${origin}/ui/`);
  expect(page.url() === `${origin}/ui/login`, `/ui/ without a session ended on ${page.url()}, not /ui/login`);
  expect((res.headers()['content-security-policy'] || '').includes("default-src 'none'"),
    'the sign-in page has no strict Content-Security-Policy');
  const refusal = page.waitForResponse((r) => r.url() === `${origin}/ui/login` && r.request().method() === 'POST');
  await page.getByLabel('Admin or viewer token').fill('muster-viewer-not-a-real-token');
  await page.locator('form button[type=submit]').click();
  res = await refusal;
  expect(res.status() === 401, `a wrong token was answered ${res.status()}, not 401`);
  await waitFor(page.locator('[role=alert]'), 'a wrong token shows no error');
  expect(!(await sessionCookie()), 'a wrong token set a session cookie');
  await shot('login-refused.png');

  step('3. the viewer token signs in, with a strict cookie and CSP');
  const shell = page.waitForResponse((r) => r.url() === `${origin}/ui/` && r.request().method() === 'GET');
  await page.getByLabel('Admin or viewer token').fill(viewerToken);
  await page.locator('form button[type=submit]').click();
  res = await shell;
  await page.waitForURL(`${origin}/ui/`);
  const cookie = await sessionCookie();
  expect(cookie, `signing in set no ${SESSION_COOKIE} cookie`);
  expect(cookie.httpOnly, 'the session cookie is not HttpOnly');
  expect(cookie.secure, 'the session cookie is not Secure');
  expect(cookie.sameSite === 'Strict', `the session cookie is SameSite=${cookie.sameSite}, not Strict`);
  const csp = res.headers()['content-security-policy'] || '';
  expect(csp.includes("default-src 'none'"), `/ui/ has CSP "${csp}", without default-src 'none'`);
  await waitFor(page.locator(`[data-cluster="${cluster}"] [data-state="deployed"][data-count="3"]`),
    `the overview does not show cluster ${cluster} with 3 deployed`, 30_000);
  expect((await page.locator('#role').textContent()) === 'viewer', 'the header does not say a viewer is signed in');
  await waitFor(page.locator('#history svg.chart, #history .empty'), 'the overview draws no fleet chart');
  await shot('overview.png');

  step('4. the cluster page lists, sorts and filters its nodes');
  await page.locator(`[data-cluster="${cluster}"] a[href="#/clusters/${encodeURIComponent(cluster)}"]`).click();
  await waitUntil(page, (n) => document.querySelectorAll('tbody tr[data-node]').length === n, nodes.length,
    `the cluster page does not show ${nodes.length} rows`);
  for (const name of nodes) {
    const state = await page.locator(`tr[data-node="${name}"] td[data-state]`).getAttribute('data-state');
    expect(state === 'deployed', `node ${name} shows state ${state}, not deployed`);
  }
  const nameHeader = page.locator('th:has(button[data-sort="name"])');
  await nameHeader.locator('button').click();
  await nameHeader.locator('button').click();
  expect((await nameHeader.getAttribute('aria-sort')) === 'descending', 'two clicks on Name do not sort descending');
  const collator = new Intl.Collator(undefined, { numeric: true, sensitivity: 'base' });
  const descending = nodes.slice().sort((a, b) => collator.compare(b, a));
  const order = await page.locator('tbody tr[data-node]').evaluateAll((rows) => rows.map((r) => r.dataset.node));
  expect(order.join() === descending.join(), `sorted descending the rows read ${order}, not ${descending}`);
  // A name no other node's name contains, so the filter matches one row.
  const lone = nodes.find((n) => nodes.every((o) => o === n || !o.includes(n)));
  const filter = page.getByLabel('Filter');
  await filter.fill(lone);
  await waitUntil(page, (n) => {
    const rows = document.querySelectorAll('tbody tr[data-node]');
    return rows.length === 1 && rows[0].dataset.node === n;
  }, lone, `filtering on "${lone}" does not leave its row alone`);
  expect((await page.locator('.count').textContent()).startsWith('1 of 3'), 'the count does not say 1 of 3 nodes');
  await filter.fill('');
  await waitUntil(page, (n) => document.querySelectorAll('tbody tr[data-node]').length === n, nodes.length,
    'clearing the filter does not bring every row back');
  await shot('cluster.png');

  step('5. a stopped agent turns its row unreachable, with no reload');
  // A reload would drop this mark.
  await page.evaluate(() => { window.musterStoryMark = 1; });
  console.log('stop-agent');
  await waitLine('stopped');
  await waitFor(page.locator(`tr[data-node="${stopNode}"] td[data-state="unreachable"]`),
    `${stopNode} did not turn unreachable on the open page`, UNREACHABLE_WITHIN_MS);
  expect(await page.evaluate(() => window.musterStoryMark === 1), 'the page reloaded');
  expect((await nameHeader.getAttribute('aria-sort')) === 'descending', 'an update lost the sort');
  await shot('unreachable.png');

  step('6. the node page tells its state, the event and its names');
  await page.locator(`tr[data-node="${stopNode}"] a`).click();
  await waitUntil(page, (n) => (document.querySelector('h1') || {}).textContent?.includes(n), stopNode,
    `the node page's heading does not name ${stopNode}`);
  await waitFor(page.locator('h1 [data-state="unreachable"]'), `the node page does not show ${stopNode} unreachable`);
  await waitFor(page.locator('#events li[data-to="unreachable"]'), 'the node page shows no event to unreachable');
  const detail = await page.evaluate(async ([c, n]) => {
    const r = await fetch(`/v1/nodes/${encodeURIComponent(c)}/${encodeURIComponent(n)}`, { credentials: 'same-origin' });
    return r.json();
  }, [cluster, stopNode]);
  const dnsName = detail.node.dns_name;
  await waitFor(page.locator(`#names [data-name="${dnsName}"]`), `the names section does not list ${dnsName}`);
  await shot('node.png');

  step('7. a viewer cannot write, and signing out ends the session');
  const scale = await scaleFromPage();
  expect(scale === 403, `the session scaled the cluster: POST .../scale answered ${scale}, not 403`);
  const removal = await page.evaluate(async ([c, n, token]) => (await fetch(
    `/v1/nodes/${encodeURIComponent(c)}/${encodeURIComponent(n)}`,
    { method: 'DELETE', headers: { authorization: `Bearer ${token}` } },
  )).status, [cluster, nodes[0], viewerToken]);
  expect(removal === 403, `the viewer token removed a node: DELETE answered ${removal}, not 403`);
  const session = (await sessionCookie()).value;
  await Promise.all([page.waitForURL(`${origin}/ui/login`), page.getByRole('button', { name: 'Sign out' }).click()]);
  const after = await page.evaluate(async () => (await fetch('/v1/clusters', { credentials: 'same-origin' })).status);
  expect(after === 401, `after signing out /v1/clusters answered ${after}, not 401`);
  // The coordinator forgot the session: the old cookie, sent again, opens nothing.
  const replay = await request.newContext({ ignoreHTTPSErrors: true, extraHTTPHeaders: { cookie: `${SESSION_COOKIE}=${session}` } });
  const replayed = (await replay.get(`${origin}/v1/clusters`)).status();
  await replay.dispose();
  expect(replayed === 401, `the signed-out session's cookie still answers ${replayed}`);

  step('8. a session opened with the admin token only reads too');
  await page.getByLabel('Admin or viewer token').fill(adminToken);
  await Promise.all([page.waitForURL(`${origin}/ui/`), page.locator('form button[type=submit]').click()]);
  await waitFor(page.locator(`[data-cluster="${cluster}"]`), "the admin token's session shows no clusters");
  const adminScale = await scaleFromPage();
  expect(adminScale === 403, `the admin token's session scaled the cluster: POST .../scale answered ${adminScale}, not 403`);
  await Promise.all([page.waitForURL(`${origin}/ui/login`), page.getByRole('button', { name: 'Sign out' }).click()]);

  step('9. nothing was asked of another origin, nor refused by the CSP');
  const elsewhere = [...new Set(requested.filter((u) => new URL(u).origin !== origin))];
  expect(!elsewhere.length, `the page asked another origin: ${elsewhere.join(', ')}`);
  expect(!pageProblems.length, `the page logged: ${pageProblems.join('; ')}`);
  console.log(`# ${requested.length} requests, all to ${origin}; screenshots in ${shots}`);
  await context.close();
}

// ---- Running it ----

const deadline = setTimeout(() => {
  console.error(`the console story took more than ${TIMEOUT_MS / 1000} s`);
  process.exit(1);
}, TIMEOUT_MS);

let browser;
try {
  browser = await chromium.launch({
    executablePath: process.env.MUSTER_CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  await story(browser);
  await browser.close();
  clearTimeout(deadline);
  console.log('ok');
  process.exit(0);
} catch (e) {
  console.error(e instanceof Failed ? e.message : e.stack || String(e));
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
