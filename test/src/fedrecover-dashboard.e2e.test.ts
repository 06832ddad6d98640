/// <reference lib="dom" />
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Coordinator, createLogger, openSqliteHistory, type JobReport } from '@fedunlearn/coordinator';
import { connectClients, federation, mnistScenario, tempDir } from './support.js';
import { launchChromium } from './chromium.js';

const scenario = mnistScenario(3, 30);
const cleanups: (() => unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

test("the dashboard's report of a fedrecover job shows how many client updates were exact and how many estimated, per job and per step", { timeout: 90_000 }, async () => {
  const tmp = tempDir('fedrecover-dashboard');
  cleanups.push(() => tmp.cleanup());
  const coordinator = await Coordinator.create({
    enrolment: 'open',
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: scenario.def,
    federation: federation({ clientsPerRound: 3 }),
    historyInterval: 1,
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  cleanups.push(() => coordinator.stop());
  const clients = await connectClients(url, scenario.parts, 'dash');
  cleanups.push(() => Promise.all(clients.map((c) => c.close())));
  await coordinator.runRounds(4);

  const browser = await launchChromium(cleanups);
  cleanups.push(() => browser.close());
  const page = browser.pages()[0] ?? (await browser.newPage());
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`${url}/dashboard/`);
  await page.locator('#token-form').waitFor({ state: 'visible' });
  await page.fill('#token', coordinator.operatorToken!);
  await page.click('#token-form button[type=submit]');
  await page.locator('#live[data-state="live"]').waitFor();

  // Rounds: 1-2 warm-up (exact), 3 estimated, 4 final tuning (exact).
  const job = await coordinator.forget({ clientIds: ['dash-0'], method: 'fedrecover', params: { warmupRounds: 2, correctionPeriod: 10, finalTuningRounds: 1 }, requestedBy: 'operator:test' });
  const [done] = await coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  const report = done!.report as JobReport;
  assert.deepEqual(report.updates, { exact: 6, estimated: 2, stored: 0 });
  await page.locator(`#jobs tr[data-job-id="${job.jobId}"][data-state="done"]`).waitFor();
  await page.locator(`#jobs tr[data-job-id="${job.jobId}"]`).click();
  const box = page.locator(`#report [data-report-for="${job.jobId}"]`);
  await box.waitFor();
  assert.equal(await box.locator('tr[data-key="client updates"] td:last-child').textContent(), '6 exact, 2 estimated, 0 stored');
  // The steps table: calibrated (exact), uncalibrated, estimated per replayed round.
  const steps = await box.locator('table.steps tbody tr').evaluateAll((rows) => rows.map((r) => Array.from(r.querySelectorAll('td'), (td) => td.textContent).slice(2, 5)));
  assert.deepEqual(steps, [
    ['2', '0', '0'],
    ['2', '0', '0'],
    ['0', '0', '2'],
    ['2', '0', '0'],
  ]);
  assert.deepEqual(pageErrors, []);
});
