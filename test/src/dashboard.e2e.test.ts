/// <reference lib="dom" />
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { after, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Coordinator, createLogger, openSqliteHistory, type JobReport } from '@fedunlearn/coordinator';
import { connectClients, federation, mnistScenario, tempDir } from './support.js';
import { launchChromium } from './chromium.js';

const TOKEN = 'operator-token-for-the-dashboard-test';
const ARTIFACTS = join(dirname(fileURLToPath(import.meta.url)), '..', 'artifacts');

const scenario = mnistScenario(3, 30);
const cleanups: (() => unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});


test('the dashboard asks for the operator token, then shows rounds, the chart, clients and a forget job live, without reloading', { timeout: 90_000 }, async () => {
  const tmp = tempDir('dashboard');
  cleanups.push(() => tmp.cleanup());
  const coordinator = await Coordinator.create({
    enrolment: 'open',
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: scenario.def,
    federation: federation({ clientsPerRound: 3 }),
    historyInterval: 1,
    operatorToken: TOKEN,
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  cleanups.push(() => coordinator.stop());

  const browser = await launchChromium(cleanups, { width: 1360, height: 1100 });
  cleanups.push(() => browser.close());
  const page = browser.pages()[0] ?? (await browser.newPage());
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  // The page runs under its Content-Security-Policy (no inline script or style): Chromium reports a violation as a
  // console error, so any would show here.
  const cspViolations: string[] = [];
  page.on('console', (m) => {
    if (/Content Security Policy/i.test(m.text())) cspViolations.push(m.text());
  });

  // The root redirects to the dashboard, which asks for the token: nothing is shown without it.
  await page.goto(`${url}/`);
  assert.equal(new URL(page.url()).pathname, '/dashboard/');
  await page.locator('#token-form').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#main').isVisible(), false);
  await page.fill('#token', 'not-the-token');
  await page.click('#token-form button[type=submit]');
  await page.locator('#token-error', { hasText: 'refused' }).waitFor();
  await page.fill('#token', TOKEN);
  await page.click('#token-form button[type=submit]');
  await page.locator('#main').waitFor({ state: 'visible' });
  await page.locator('#live[data-state="live"]').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.getItem('fedunlearn.operatorToken')), TOKEN);
  // Everything from here on must arrive without a reload: this marker would be gone after one.
  await page.evaluate(() => ((window as unknown as { __noReload: boolean }).__noReload = true));

  // Clients connecting show up live.
  const clients = await connectClients(url, scenario.parts, 'dash');
  cleanups.push(() => Promise.all(clients.map((c) => c.close())));
  await page.locator('#clients-count', { hasText: '3' }).waitFor();
  assert.deepEqual(await page.locator('#clients li').allTextContents(), ['dash-0', 'dash-1', 'dash-2']);

  // Two rounds: each appears in the table and as a point of the chart, with the figures the store holds.
  await coordinator.runRounds(2);
  await page.locator('#rounds tr[data-round="2"]').waitFor();
  const stored = await coordinator.store.listRounds();
  assert.equal(stored.length, 2);
  for (const r of stored) {
    const row = page.locator(`#rounds tr[data-round="${r.round}"]`);
    assert.equal(await row.locator('[data-metric=loss]').textContent(), r.metrics.loss!.toFixed(4));
    assert.equal(await row.locator('[data-metric=accuracy]').textContent(), `${(r.metrics.accuracy! * 100).toFixed(2)} %`);
  }
  await page.locator('#chart[data-points="2"]').waitFor();
  const chartData = await page.evaluate(() => {
    const c = (window as unknown as { Chart: { getChart(el: Element): { data: { labels: unknown[]; datasets: { label: string; data: (number | null)[] }[] } } | undefined } }).Chart.getChart(document.getElementById('chart')!)!;
    return { labels: c.data.labels, datasets: c.data.datasets.map((d) => ({ label: d.label, data: d.data })) };
  });
  assert.deepEqual(chartData.labels, [1, 2]);
  assert.deepEqual(chartData.datasets.find((d) => d.label === 'training loss')!.data, stored.map((r) => r.metrics.loss));
  assert.deepEqual(chartData.datasets.find((d) => d.label === 'training accuracy')!.data, stored.map((r) => r.metrics.accuracy));
  const head = await coordinator.store.head();
  await page.locator('#head-round', { hasText: '2' }).waitFor();
  await page.locator(`#models tr[data-version="${head.version}"].head-row`).waitFor();
  await page.locator('#history tr[data-key="rounds"] td:last-child', { hasText: '2' }).waitFor();

  // Watch the job's row from inside the page, so that every state it passes through is seen.
  await page.evaluate(() => {
    const seen: string[] = [];
    (window as unknown as { __jobStates: string[] }).__jobStates = seen;
    const note = () => {
      for (const tr of Array.from(document.querySelectorAll('#jobs tr[data-job-id]'))) {
        const s = `${tr.getAttribute('data-state')} ${tr.getAttribute('data-step')}/${tr.getAttribute('data-total')}`;
        if (seen.at(-1) !== s) seen.push(s);
      }
    };
    new MutationObserver(note).observe(document.getElementById('jobs')!, { subtree: true, childList: true, attributes: true });
  });

  // A forget job submitted through the operator API, as an operator would.
  const submitted = await fetch(`${url}/v1/jobs`, {
    method: 'POST',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' },
    body: JSON.stringify({ clientIds: ['dash-0'], method: 'federaser' }),
  });
  assert.equal(submitted.status, 202);
  const { jobId } = (await submitted.json()) as { jobId: string };
  await page.locator(`#jobs tr[data-job-id="${jobId}"][data-state="queued"]`).waitFor();
  const [done] = await coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  const report = done!.report as JobReport;

  await page.locator(`#jobs tr[data-job-id="${jobId}"][data-state="done"]`).waitFor();
  const states = await page.evaluate(() => (window as unknown as { __jobStates: string[] }).__jobStates);
  assert.ok(states.some((s) => s.startsWith('running ') && !s.endsWith(' 0/0')), `the page showed the job's progress while it ran: ${states.join(' → ')}`);
  assert.equal(states.at(-1), `done ${done!.progress.total}/${done!.progress.total}`, states.join(' → '));

  // Its report, with the before and after models.
  const box = page.locator(`#report [data-report-for="${jobId}"]`);
  await box.waitFor();
  assert.equal(await box.locator('tr[data-model=before] td').nth(1).textContent(), report.modelBefore.version);
  assert.equal(await box.locator('tr[data-model=before] td').nth(3).textContent(), report.modelBefore.sha256);
  assert.equal(await box.locator('tr[data-model=after] td').nth(1).textContent(), report.modelAfter.version);
  assert.equal(await box.locator('tr[data-model=after] td').nth(3).textContent(), report.modelAfter.sha256);
  assert.equal(await box.locator('tr[data-key="steps replayed"] td:last-child').textContent(), String(report.roundsReplayed.length));
  assert.match((await box.locator('h3').textContent()) ?? '', /forgot dash-0 · federaser/);
  // The unlearned model is the new head, in a new lineage, and the forgotten client left the fleet.
  await page.locator(`#models tr[data-version="${report.modelAfter.version}"][data-cause="unlearning"].head-row`).waitFor();
  assert.notEqual((await coordinator.store.head()).lineage, head.lineage);
  await page.locator('#head-lineage', { hasText: (await coordinator.store.head()).lineage.slice(0, 8) }).waitFor();

  // The rounds table now lists the new lineage: the replayed rounds, each naming the round it replays.
  for (const step of report.roundsReplayed) {
    await page.locator(`#rounds tr[data-round="${step.round}"] [data-origin]`, { hasText: `replays ${step.sourceRound}` }).waitFor();
  }

  // dash-0 may still be connected (the coordinator does not drop it); then the page marks it as forgotten.
  if (coordinator.registry.get('dash-0')) {
    await page.locator('#clients li[data-client-id="dash-0"][data-forgotten="true"]').waitFor();
    assert.equal(await page.locator('#clients li[data-forgotten="true"]').count(), 1);
  }

  // Training resumes on the new lineage; the page follows.
  await coordinator.runRounds(1);
  const resumed = await coordinator.store.head();
  await page.locator(`#rounds tr[data-round="${resumed.round}"]`).waitFor();
  await page.locator(`#chart[data-points="${(await coordinator.store.listRounds()).length}"]`).waitFor();
  await page.locator(`#models tr[data-version="${resumed.version}"].head-row`).waitFor();
  assert.equal(await page.locator('#models tr.head-row').count(), 1);

  assert.equal(await page.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload), true, 'the page was never reloaded');
  assert.deepEqual(pageErrors, []);
  assert.deepEqual(cspViolations, [], 'the dashboard runs under its Content-Security-Policy');

  mkdirSync(ARTIFACTS, { recursive: true });
  await page.locator(`#jobs tr[data-job-id="${jobId}"]`).click();
  await page.screenshot({ path: join(ARTIFACTS, 'dashboard.png'), fullPage: true });
});
