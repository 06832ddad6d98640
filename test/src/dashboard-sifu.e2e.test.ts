/// <reference lib="dom" />
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import type { JobReport } from '@fedunlearn/coordinator';
import { trainedFederationOnDashboard } from './dashboard-support.js';

const cleanups: (() => unknown)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

test("the dashboard shows a sifu job's certificate: epsilon, delta, the noise, the round rolled back to, the bound and the assumptions", { timeout: 90_000 }, async () => {
  const { coordinator, page, pageErrors } = await trainedFederationOnDashboard({ name: 'dashboard-sifu', prefix: 'dev', rounds: 2, cleanups });

  // sigma 0.05 (the default) cannot cover a whole round's removal here: SIFU rolls back to t0, with no noise.
  const job = await coordinator.forget({ clientIds: ['dev-0'], method: 'sifu', requestedBy: 'operator:test' });
  const [done] = await coordinator.runPendingJobs();
  assert.equal(done!.state, 'done', done!.error ?? '');
  const cert = (done!.report as JobReport).certificate!;
  const box = page.locator(`#report [data-report-for="${job.jobId}"] [data-certificate]`);
  await box.waitFor();
  assert.equal(await box.locator('h4').textContent(), `Certificate: (ε ${cert.epsilon}, δ ${cert.delta})-unlearning`);
  assert.equal(await box.locator('tr[data-key="rolled back to"] td:last-child').textContent(), `round ${cert.rollbackRound} (${cert.rollbackModel.slice(0, 8)})`);
  assert.match((await box.locator('tr[data-key="noise σ"] td:last-child').textContent()) ?? '', cert.sigma > 0 ? new RegExp(`^${cert.sigma}$`) : /^0 \(exact rollback/);
  assert.match((await box.locator('tr[data-key="bound"] td:last-child').textContent()) ?? '', /^\S+ ≤ budget \S+$/);
  assert.equal(await box.locator('li').count(), cert.assumptions.length);
  assert.deepEqual(pageErrors, []);
});
