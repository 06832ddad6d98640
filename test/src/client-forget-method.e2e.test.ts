import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Coordinator, createLogger, openSqliteHistory, type JobReport } from '@fedunlearn/coordinator';
import { connectClients, federation, mnistScenario, tempDir } from './support.js';

/**
 * A ForgetRequest names no method: the operator chooses the method of client-requested jobs for the federation
 * (`clientForgetMethod`, `serve --client-forget-method`). The SDK path then runs it like any other job.
 */
const scenario = mnistScenario(3, 40);
const dirs: { cleanup(): void }[] = [];
after(() => dirs.forEach((d) => d.cleanup()));

for (const method of ['rollback', 'sifu'] as const) {
  test(`a client asks through its SDK to be forgotten under clientForgetMethod '${method}': the job runs that method`, async () => {
    const tmp = tempDir(`client-method-${method}`);
    dirs.push(tmp);
    const coordinator = await Coordinator.create({
      store: openSqliteHistory(tmp.dir),
      dataDir: tmp.dir,
      model: scenario.def,
      federation: federation({ clientsPerRound: 3, minClients: 2 }),
      historyInterval: 1,
      enrolment: 'open',
      clientForgetMethod: method,
      logger: createLogger({ level: 'silent' }),
    });
    const { url } = await coordinator.listen(0);
    const clients = await connectClients(url, scenario.parts, 'cm');
    try {
      await coordinator.runRounds(2);
      coordinator.start();
      const jobId = await clients[0]!.forget('leaving');
      const final = await clients[0]!.waitForJob(jobId);
      assert.equal(final.state, 'done', final.message);
      const report = final.report as JobReport;
      assert.equal(report.method, method);
      assert.equal(report.requestedBy, 'client:cm-0');
      assert.deepEqual(report.clientsForgotten, ['cm-0']);
      assert.equal((await coordinator.store.getJob(jobId))!.method, method);
    } finally {
      for (const c of clients) await c.close();
      await coordinator.stop();
    }
  });
}
