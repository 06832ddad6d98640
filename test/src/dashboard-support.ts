import { Coordinator, createLogger, openSqliteHistory } from '@fedunlearn/coordinator';
import type { Page } from 'playwright-core';
import { launchChromium } from './chromium.js';
import { connectClients, federation, mnistScenario, tempDir } from './support.js';

/**
 * A federation of 3 MNIST clients (ids `<prefix>-0..2`, every round's updates kept) trained `rounds` rounds, and the
 * operator dashboard open on it in headless Chromium, signed in and live: what the job-report panel tests start from.
 * Everything it opens is registered in `cleanups` (run them in reverse).
 */
export async function trainedFederationOnDashboard(opts: { name: string; prefix: string; rounds: number; cleanups: (() => unknown)[] }): Promise<{ coordinator: Coordinator; page: Page; pageErrors: string[] }> {
  const { cleanups } = opts;
  const scenario = mnistScenario(3, 30);
  const tmp = tempDir(opts.name);
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
  const clients = await connectClients(url, scenario.parts, opts.prefix);
  cleanups.push(() => Promise.all(clients.map((c) => c.close())));
  await coordinator.runRounds(opts.rounds);

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
  return { coordinator, page, pageErrors };
}
