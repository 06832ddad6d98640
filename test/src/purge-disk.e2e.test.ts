import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { FederatedClient, type LocalDataset } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { encodeTensor, fedunlearn, layerNorms, layerView, type WeightLayout } from '@fedunlearn/protocol';
import seedrandom from 'seedrandom';
import { RawPeer } from './raw-peer.js';
import { tempDir } from './support.js';

/**
 * Issue 11, section 4: with another process holding a read transaction on history.db while a forget job runs (as
 * backup and monitoring tools do), the job's report says `purge incomplete` (and /metrics counts it) until the WAL
 * checkpoint can complete; a background retry completes it once the reader ends; then no byte of the forgotten
 * client's updates or norms is in any file of the data directory, and the WAL is truncated.
 *
 * The forgotten client is a raw peer whose every update is zero but for two marker float32 values in the output bias,
 * so both its stored updates (the markers side by side) and its per-layer norms (that layer's norm, float64) are
 * byte patterns nothing else holds.
 */

const MARK_A = 7777.125;
const MARK_B = -3141.5;
const WAIT_MS = 30_000;

function dataset(seed: number, count = 40): LocalDataset {
  const r = seedrandom(`purge-${seed}`);
  const x = Float32Array.from({ length: count * 16 }, () => r());
  return { x, y: Int32Array.from({ length: count }, (_, i) => i % 4), inputShape: [16], numClasses: 4, count };
}

function markedUpdate(layout: WeightLayout): Float32Array {
  const u = new Float32Array(layout.totalSize);
  const bias = layerView(layout, u, layout.specs.length - 1);
  bias[0] = MARK_A;
  bias[1] = MARK_B;
  return u;
}

function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name));
}

/** Every file of the data directory holding `needle`, with how many times. */
function holding(dir: string, needle: Buffer): string[] {
  const out: string[] = [];
  for (const f of filesUnder(dir)) {
    const bytes = readFileSync(f);
    let n = 0;
    for (let i = bytes.indexOf(needle); i >= 0; i = bytes.indexOf(needle, i + 1)) n++;
    if (n > 0) out.push(`${f.slice(dir.length + 1)} (${n})`);
  }
  return out;
}

/** Another process with a read transaction open on history.db until released. */
async function reader(dbFile: string): Promise<{ proc: ChildProcess; release(): Promise<void> }> {
  const sqlite = createRequire(import.meta.url).resolve('better-sqlite3');
  const script = `
    const Database = require(process.argv[1]);
    const db = new Database(process.argv[2]);
    db.prepare('BEGIN').run();
    db.prepare('SELECT COUNT(*) AS n FROM participants').get();
    process.stdout.write('reading\\n');
    process.stdin.once('data', () => { db.prepare('COMMIT').run(); db.close(); process.exit(0); });`;
  const proc = spawn(process.execPath, ['-e', script, sqlite, dbFile], { stdio: ['pipe', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    createInterface({ input: proc.stdout! }).once('line', (l) => (l === 'reading' ? resolve() : reject(new Error(l))));
    proc.once('exit', (code) => reject(new Error(`reader exited (${code})`)));
  });
  return {
    proc,
    release: () =>
      new Promise<void>((resolve) => {
        proc.once('exit', () => resolve());
        proc.stdin!.write('go\n');
      }),
  };
}

interface Report {
  purged: { complete: boolean; updatesDeleted: number; participantRowsDeleted: number };
  notes: string[];
}

test('a forget job with a reader holding history.db open: purge incomplete until the reader ends, then no byte of the client is on disk', async () => {
  const tmp = tempDir('purge-disk');
  const def = builtInDefinition('mlp', { inputShape: [16], numClasses: 4, seed: 3 });
  const coordinator = await Coordinator.create({
    store: openSqliteHistory(tmp.dir),
    dataDir: tmp.dir,
    model: def,
    federation: { clientsPerRound: 3, minClients: 2, roundDeadlineMs: 20_000, seed: 5, hyper: { learningRate: 0.1, batchSize: 10, localEpochs: 1 }, maxRoundAttempts: 3, waitForClientsMs: 10_000 },
    historyInterval: 1,
    retention: 'fp32',
    enrolment: 'open',
    purgeRetry: { waitMs: 300, everyMs: 100 },
    // The marker values are chosen to be found byte for byte on disk, not to look like training: thousands of times
    // the honest clients' update norms, which the default bound (10x the round's median norm) would refuse.
    updateBounds: { medianFactor: 1e6 },
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  const honest = [0, 1].map((i) => new FederatedClient({ url, clientId: `honest-${i}`, secret: `honest-secret-${i}`, data: dataset(i), backends: ['cpu'], reconnect: { attempts: 0 } }));
  let held: { proc: ChildProcess; release(): Promise<void> } | undefined;
  let marked: RawPeer | undefined;
  // The marked client's answer loop runs until this is false: a failed assertion must end it too.
  let answering = true;
  try {
    await Promise.all(honest.map((c) => c.connect()));
    const layout = def.initial.layout;
    marked = await RawPeer.enrolled(url, 'marked', 'marked-secret');
    const update = markedUpdate(layout);
    const needles = {
      update: Buffer.from(new Float32Array([MARK_A, MARK_B]).buffer),
      norms: Buffer.from(new Float64Array([layerNorms(layout, update)[layout.specs.length - 1]!]).buffer),
    };
    // The marked client answers every training task it gets with its marked update.
    const peer = marked;
    const answers = (async () => {
      while (answering) {
        const env = await peer.next('task', 200).catch(() => null);
        if (!env) continue;
        const task = env.task as fedunlearn.v1.Task;
        peer.send({ update: { taskId: task.taskId, delta: layout.specs.map((s, i) => encodeTensor(s.name, s.shape, layerView(layout, update, i))), numExamples: 40, metrics: { loss: 1 } } });
      }
    })();

    await coordinator.runRounds(3);
    assert.equal((await coordinator.store.listRounds()).filter((r) => r.participants.some((p) => p.clientId === 'marked')).length, 3, 'the marked client took part in every round');
    assert.ok(holding(tmp.dir, needles.update).length > 0, 'the scan finds its updates before the job');
    assert.ok(holding(tmp.dir, needles.norms).length > 0, 'the scan finds its norms before the job');

    held = await reader(join(tmp.dir, 'history.db'));
    answering = false;
    marked.close();
    await answers;
    const authorization = `Bearer ${coordinator.operatorToken}`;
    const res = await fetch(`${url}/v1/jobs`, { method: 'POST', headers: { 'content-type': 'application/json', authorization }, body: JSON.stringify({ clientIds: ['marked'], method: 'federaser' }) });
    assert.equal(res.status, 202);
    const { jobId } = (await res.json()) as { jobId: string };
    const [done] = await coordinator.runPendingJobs();
    assert.equal(done!.state, 'done', done!.error ?? '');

    const getReport = async () => (await (await fetch(`${url}/v1/jobs/${jobId}/report`, { headers: { authorization } })).json()) as Report;
    const incompleteGauge = async () => Number(/^fedunlearn_purges_incomplete (\d+)$/m.exec(await (await fetch(`${url}/metrics`)).text())?.[1]);
    const during = await getReport();
    assert.equal(during.purged.updatesDeleted, 3);
    assert.equal(during.purged.complete, false, 'the report says the purge is incomplete while the reader holds its snapshot');
    assert.ok(during.notes.some((n) => n.startsWith('purge incomplete')), JSON.stringify(during.notes));
    assert.equal(await incompleteGauge(), 1, '/metrics counts the incomplete purge');
    assert.ok(holding(tmp.dir, needles.norms).length > 0, 'incomplete indeed: pre-purge pages are still on disk');
    // Training goes on meanwhile; the WAL cannot be reset under the reader and grows.
    await coordinator.runRounds(2);

    await held.release();
    const start = Date.now();
    for (;;) {
      const r = await getReport();
      if (r.purged.complete) {
        assert.ok(!r.notes.some((n) => n.startsWith('purge incomplete')), 'the note is gone once complete');
        break;
      }
      if (Date.now() - start > WAIT_MS) assert.fail('the background retry never completed the purge after the reader ended');
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(await incompleteGauge(), 0);
    assert.deepEqual(holding(tmp.dir, needles.update), [], "no file of the data directory holds the forgotten client's updates");
    assert.deepEqual(holding(tmp.dir, needles.norms), [], "no file of the data directory holds the forgotten client's norms");
    const wal = join(tmp.dir, 'history.db-wal');
    assert.equal(existsSync(wal) ? statSync(wal).size : 0, 0, 'the WAL was truncated');
  } finally {
    answering = false;
    held?.proc.kill('SIGKILL');
    marked?.close();
    await Promise.all(honest.map((c) => c.close()));
    await coordinator.stop();
    tmp.cleanup();
  }
});
