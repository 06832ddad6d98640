/// <reference lib="dom" />
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { chromium, type BrowserContext } from 'playwright-core';
import { Coordinator, createLogger, openSqliteHistory, type JobReport } from '@fedunlearn/coordinator';
import { connectClients, federation, mnistScenario, tempDir, waitUntil } from './support.js';

/**
 * An edge developer's story in a browser: the SDK's browser bundle, served by the coordinator at /examples/client/,
 * joins with the page's own digits and an operator-issued credential, trains in rounds beside Node SDK clients,
 * answers a FedEraser calibration when another client is forgotten, then asks to be forgotten itself and shows the
 * finished job, all under the page's Content-Security-Policy.
 */

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts');

const scenario = mnistScenario(3, 20);
const cleanups: (() => unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

async function launch(): Promise<BrowserContext> {
  assert.ok(existsSync(CHROMIUM), `chromium not found at ${CHROMIUM}: install Debian's chromium (apt-get install chromium) or set CHROMIUM_PATH`);
  const profile = mkdtempSync(join(tmpdir(), 'fedunlearn-chromium-'));
  cleanups.push(() => rmSync(profile, { recursive: true, force: true }));
  return chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1280, height: 1000 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
}

test('the example page trains in rounds in Chromium, answers a FedEraser calibration, asks to be forgotten and shows the finished job', { timeout: 120_000 }, async () => {
  const tmp = tempDir('browser-client');
  cleanups.push(() => tmp.cleanup());
  const coordinator = await Coordinator.create({
    // The Node clients enrol on first use; the page holds an issued credential, as a real device would.
    enrolment: 'open',
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: scenario.def,
    // Everyone connected takes part in every round, the page included.
    federation: federation({ clientsPerRound: 4, minClients: 4 }),
    historyInterval: 1,
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  cleanups.push(() => coordinator.stop());
  const nodeClients = await connectClients(url, scenario.parts, 'node');
  cleanups.push(() => Promise.all(nodeClients.map((c) => c.close())));
  const credential = coordinator.issueClient('browser-1');

  const browser = await launch();
  cleanups.push(() => browser.close());
  const page = browser.pages()[0] ?? (await browser.newPage());
  const problems: string[] = [];
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('console', (m) => {
    // A failed load is reported below with its URL.
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(`console error: ${m.text()}`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} ${r.url()}`);
  });
  const response = await page.goto(`${url}/examples/client/`);
  assert.equal(response?.status(), 200);
  const csp = response!.headers()['content-security-policy'] ?? '';
  assert.match(csp, /script-src 'self' 'wasm-unsafe-eval'/, 'the page is served under a CSP without inline scripts');
  assert.doesNotMatch(csp, /unsafe-inline|'unsafe-eval'/);
  await page.evaluate(() => {
    const seen: string[] = [];
    (window as unknown as { __csp: string[] }).__csp = seen;
    document.addEventListener('securitypolicyviolation', (e) => seen.push(`${e.violatedDirective} ${e.blockedURI}`));
  });
  await page.locator('#dataset', { hasText: '300 handwritten digits' }).waitFor();

  // A wrong secret is refused, and the page says why.
  await page.fill('#client-id', credential.clientId);
  await page.fill('#secret', 'not-the-secret');
  await page.click('#join-button');
  await page.locator('#join-error', { hasText: 'UNAUTHENTICATED' }).waitFor();
  assert.equal(coordinator.registry.get(credential.clientId), undefined);

  // The issued credential joins: the best backend this browser could start, reported to the coordinator too.
  await page.fill('#secret', credential.secret);
  await page.click('#join-button');
  await page.locator('#status[data-state="connected"]').waitFor();
  const backend = await page.locator('#backend').getAttribute('data-backend');
  assert.ok(backend === 'webgl' || backend === 'wasm' || backend === 'cpu', `backend ${backend}`);
  await waitUntil(() => coordinator.registry.get(credential.clientId) !== undefined, 10_000, 'the page in the registry');
  assert.equal(coordinator.registry.get(credential.clientId)!.backend, backend);
  assert.equal(coordinator.registry.get(credential.clientId)!.numExamples, 300);
  await page.locator('#model', { hasText: 'takes [784], 10 classes' }).waitFor();

  // Two rounds: the page trains in each, its update is among those the round accepted.
  const rounds = await coordinator.runRounds(2);
  for (const r of rounds) assert.ok(r.participants.includes(credential.clientId), `round ${r.round}: ${r.participants.join(', ')}`);
  await page.locator('#tasks tr[data-kind="train"][data-round="2"]').waitFor();
  assert.equal(await page.locator('#rounds-trained').textContent(), '2');

  // The operator forgets a Node client with FedEraser: the page is asked to calibrate the rounds it took part in.
  const other = coordinator.forget({ clientIds: ['node-0'], method: 'federaser', requestedBy: 'operator' });
  const [first] = await coordinator.runPendingJobs();
  assert.equal(first!.jobId, other.jobId);
  assert.equal(first!.state, 'done', first!.error ?? '');
  await page.locator(`#tasks tr[data-kind="calibrate"][data-job="${other.jobId}"]`).first().waitFor();
  const calibrations = await page.locator('#tasks tr[data-kind="calibrate"]').count();
  assert.ok(calibrations >= 1);
  assert.equal(await page.locator('#calibrations').textContent(), String(calibrations));

  // The person presses the button: a receipt at once, the job at the next round boundary, its report on the page.
  await page.fill('#reason', 'leaving the study');
  await page.click('#forget');
  await page.locator('#job[data-state="queued"]').waitFor();
  const jobId = await page.locator('#job').getAttribute('data-job-id');
  assert.ok(jobId);
  const queued = coordinator.store.getJob(jobId!);
  assert.deepEqual(queued?.clientIds, [credential.clientId]);
  assert.equal(queued?.requestedBy, `client:${credential.clientId}`);
  const [mine] = await coordinator.runPendingJobs();
  assert.equal(mine!.state, 'done', mine!.error ?? '');
  const report = mine!.report as JobReport;
  await page.locator('#job[data-state="done"]').waitFor();
  assert.equal(await page.locator('#job-after').textContent(), `${report.modelAfter.version} · sha256 ${report.modelAfter.sha256}`);
  assert.equal(await page.locator('#job-before').textContent(), `${report.modelBefore.version} · sha256 ${report.modelBefore.sha256}`);
  assert.equal(await page.locator('#job-replayed').textContent(), String(report.roundsReplayed.length));
  assert.deepEqual(JSON.parse((await page.locator('#job-report').textContent())!).clientsForgotten, [credential.clientId]);
  assert.ok(coordinator.isForgotten(credential.clientId));

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.locator('#job-report-box summary').click();
  await page.screenshot({ path: join(ARTIFACTS, 'browser-client.png'), fullPage: true });

  // Nothing broke the CSP, failed to load or logged an error along the way.
  assert.deepEqual(await page.evaluate(() => (window as unknown as { __csp: string[] }).__csp), []);
  assert.deepEqual(problems, []);
});
