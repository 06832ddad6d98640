/// <reference lib="dom" />
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Coordinator, createLogger, openSqliteHistory, type JobReport } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { connectClients, federation, mnistScenario, tempDir, waitUntil } from './support.js';
import { launchChromium } from './chromium.js';

/**
 * An edge developer's story in a browser: the SDK's browser bundle, served by the coordinator at /examples/client/,
 * joins with the page's own digits and an operator-issued credential, trains in rounds beside Node SDK clients,
 * answers a FedEraser calibration when another client is forgotten, then asks to be forgotten itself and shows the
 * finished job, all under the page's Content-Security-Policy.
 */

const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts');

const scenario = mnistScenario(3, 20);
const cleanups: (() => unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});


test('the example page trains in rounds in Chromium, answers a FedEraser calibration, asks to be forgotten and shows the finished job', { timeout: 120_000 }, async () => {
  const tmp = tempDir('browser-client');
  cleanups.push(() => tmp.cleanup());
  const coordinator = await Coordinator.create({
    // The Node clients enrol on first use; the page holds an issued credential, as a real device would.
    enrolment: 'open',
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: scenario.def,
    // Everyone connected is asked in every round, the page included (a round waits for all it asked, up to the
    // deadline); the quorum stays reachable once two clients are forgotten, so that no job waits for absent clients.
    federation: federation({ clientsPerRound: 4, minClients: 2 }),
    historyInterval: 1,
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  cleanups.push(() => coordinator.stop());
  const nodeClients = await connectClients(url, scenario.parts, 'node');
  cleanups.push(() => Promise.all(nodeClients.map((c) => c.close())));
  const credential = await coordinator.issueClient('browser-1');

  const browser = await launchChromium(cleanups);
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
  const other = await coordinator.forget({ clientIds: ['node-0'], method: 'federaser', requestedBy: 'operator' });
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
  const queued = await coordinator.store.getJob(jobId!);
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
  assert.ok(await coordinator.isForgotten(credential.clientId));

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.locator('#job-report-box summary').click();
  await page.screenshot({ path: join(ARTIFACTS, 'browser-client.png'), fullPage: true });

  // Nothing broke the CSP, failed to load or logged an error along the way.
  assert.deepEqual(await page.evaluate(() => (window as unknown as { __csp: string[] }).__csp), []);
  assert.deepEqual(problems, []);
});

test('the browser bundle starts wasm from its own folder (with the Conv2D filter-gradient kernel) and cpu, and trains a CNN on each', { timeout: 60_000 }, async () => {
  const tmp = tempDir('browser-backends');
  cleanups.push(() => tmp.cleanup());
  const coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: scenario.def,
    federation: federation(),
    historyInterval: 1,
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  cleanups.push(() => coordinator.stop());
  const cnn = builtInDefinition('cnn', { inputShape: [8, 8, 1], numClasses: 3, seed: 1 });
  const browser = await launchChromium(cleanups);
  cleanups.push(() => browser.close());
  for (const name of ['wasm', 'cpu'] as const) {
    // A fresh page each: tfjs's backend is chosen once per page.
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    page.on('response', (r) => {
      if (r.status() >= 400) errors.push(`HTTP ${r.status()} ${r.url()}`);
    });
    await page.goto(`${url}/examples/client/`);
    const out = await page.evaluate(
      async ({ name, topologyJson, weights }) => {
        const sdk = await import('/examples/client/sdk/fedunlearn-client.js' as string);
        const choice = await sdk.initBackend([name]);
        const count = 12;
        const data = { x: new Float32Array(count * 64).map((_, i) => (i % 7) / 7), y: Int32Array.from({ length: count }, (_, i) => i % 3), inputShape: [8, 8, 1], numClasses: 3, count };
        const trainer = new sdk.Trainer({ tf: choice.tf });
        const r = await trainer.train(topologyJson, Float32Array.from(weights), data, { learningRate: 0.1, batchSize: 4, epochs: 1, seed: 1 });
        const delta = Array.from(r.delta as Float32Array);
        return {
          name: choice.name,
          active: choice.tf.getBackend(),
          filterGradKernel: choice.tf.getKernel('Conv2DBackpropFilter', 'wasm') !== undefined,
          steps: r.metrics.steps,
          finite: delta.every(Number.isFinite),
          changed: delta.filter((v) => v !== 0).length,
        };
      },
      { name, topologyJson: cnn.topologyJson, weights: Array.from(cnn.initial.values) },
    );
    assert.equal(out.name, name);
    assert.equal(out.active, name);
    if (name === 'wasm') assert.ok(out.filterGradKernel, 'the SDK registered its Conv2DBackpropFilter kernel for wasm');
    assert.equal(out.steps, 3);
    assert.ok(out.finite);
    assert.ok(out.changed > cnn.initial.values.length / 2, `${out.changed} of ${cnn.initial.values.length} weights changed`);
    assert.deepEqual(errors, []);
    await page.close();
  }
});
