/// <reference lib="dom" />
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { JobReport } from '@fedunlearn/coordinator';
import { trainedFederationOnDashboard } from './dashboard-support.js';

const cleanups: (() => unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

test("the dashboard's report of a fedrecover job shows how many client updates were exact and how many estimated, per job and per step", { timeout: 90_000 }, async () => {
  const { coordinator, page, pageErrors } = await trainedFederationOnDashboard({ name: 'fedrecover-dashboard', prefix: 'dash', rounds: 4, cleanups });

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
