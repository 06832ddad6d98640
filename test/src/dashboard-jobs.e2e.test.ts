/// <reference lib="dom" />
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { FederatedClient, type LocalDataset } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory, type JobReport } from '@fedunlearn/coordinator';
import { connectClients, federation, mnistScenario, tempDir, waitUntil } from './support.js';
import { launchChromium } from './chromium.js';

const scenario = mnistScenario(3, 30);
const cleanups: (() => unknown)[] = [];

/** The same device as connectClients(…, 'wait') made it, back under its enrolled identity. */
async function connectAs(clientId: string, data: LocalDataset): Promise<FederatedClient> {
  const c = new FederatedClient({ url: baseUrl, clientId, secret: `secret-of-${clientId}`, data });
  await c.connect();
  return c;
}
let baseUrl = '';
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

test("the dashboard's job panel shows a job waiting for offline clients (who, how many connected, until when), then its report with t0 and the rounds kept exact", { timeout: 90_000 }, async () => {
  const tmp = tempDir('dashboard-jobs');
  cleanups.push(() => tmp.cleanup());
  const coordinator = await Coordinator.create({
    enrolment: 'open',
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: scenario.def,
    federation: federation({ clientsPerRound: 3 }),
    historyInterval: 1,
    jobs: { waitMs: 120_000, policy: 'fail' },
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  baseUrl = url;
  cleanups.push(() => coordinator.stop());
  const first = await connectClients(url, scenario.parts, 'wait');
  await coordinator.runRounds(2);
  for (const c of first) await c.close();
  await waitUntil(() => coordinator.registry.size === 0, 10_000, 'every client gone');

  const browser = await launchChromium(cleanups);
  cleanups.push(() => browser.close());
  const page = browser.pages()[0] ?? (await browser.newPage());
  const pageErrors: string[] = [];
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`${url}/dashboard/`);
  // The API is closed by default: the page asks for the operator token once per tab.
  await page.locator('#token-form').waitFor({ state: 'visible' });
  await page.fill('#token', coordinator.operatorToken!);
  await page.click('#token-form button[type=submit]');
  await page.locator('#live[data-state="live"]').waitFor();

  const job = await coordinator.forget({ clientIds: ['wait-0'], method: 'federaser', requestedBy: 'operator:test' });
  const running = coordinator.runPendingJobs();
  const row = page.locator(`#jobs tr[data-job-id="${job.jobId}"][data-waiting="0/2"]`);
  // The panel re-renders its rows as events arrive: each check waits for a row that says it, rather than reading a
  // row that may have been replaced in between.
  await row.locator('.state', { hasText: /^waiting$/ }).waitFor();
  await row
    .locator('td.waiting', { hasText: /waiting for clients: 0 of 2 connected, 2 needed; offline: (wait-1, wait-2|wait-2, wait-1); until .+, then the job fails with nothing changed/ })
    .waitFor();

  // One of them comes back (a stranger does not count): the page follows the count live.
  const stranger = await connectClients(url, [scenario.parts[1]!], 'stranger');
  const one = await connectAs('wait-1', scenario.parts[1]!);
  cleanups.push(() => Promise.all([...stranger, one].map((c) => c.close())));
  await page.locator(`#jobs tr[data-job-id="${job.jobId}"][data-waiting="1/2"]`).waitFor();
  // Both back: the job goes on and finishes.
  const two = await connectAs('wait-2', scenario.parts[2]!);
  cleanups.push(() => two.close());
  const [done] = await running;
  assert.equal(done!.state, 'done', done!.error ?? '');
  const report = done!.report as JobReport;
  await page.locator(`#jobs tr[data-job-id="${job.jobId}"][data-state="done"]:not([data-waiting])`).waitFor();
  const box = page.locator(`#report [data-report-for="${job.jobId}"]`);
  await box.waitFor();
  assert.equal(await box.locator('tr[data-key="t0"] td:last-child').textContent(), `round ${report.t0}`);
  assert.match((await box.locator('tr[data-key="offline clients"] td:last-child').textContent()) ?? '', /^policy fail; waited /);
  assert.deepEqual(pageErrors, []);
});
