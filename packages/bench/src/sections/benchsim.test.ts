import assert from 'node:assert/strict';
import { test } from 'node:test';
import { run as runFleet, type FleetRound, type FleetRoundFailed } from './fleet.js';
import { run as runUnlearning, type RetentionRow } from './unlearning.js';

const log = () => undefined;
const finite = (v: unknown, what: string) => assert.ok(typeof v === 'number' && Number.isFinite(v), `${what} is ${String(v)}, not a finite number`);

test('fleet section: a real round over real sockets yields its time split and the coordinator peak RSS', { timeout: 120_000 }, async () => {
  const out = (await runFleet({ quick: true, log })) as { clients: number; rounds: (FleetRound | FleetRoundFailed)[] };
  assert.equal(out.clients, 100);
  assert.deepEqual(out.rounds.map((r) => `${r.model}:${r.retention}`), ['mlp:fp32', 'mlp-1m:fp32', 'mlp-1m/norms:norms']);
  for (const r of out.rounds) {
    assert.ok(r.completed, `${r.model}: ${r.completed ? '' : r.failure}`);
    assert.ok(r.participants > 0, `${r.model}: nobody trained`);
    // Clients sharing a worker thread must keep answering heartbeats while the others train (issue 13).
    const dropped = Object.values(r.missingReasons).filter((m) => /ping timeout/.test(m.example));
    assert.deepEqual(dropped, [], `${r.model}: clients lost to ping timeouts`);
    assert.ok(r.parameters > (r.model.startsWith('mlp-1m') ? 1_000_000 : 100_000));
    const { eventLoopDelayMs, ...coordinatorMs } = r.coordinator;
    for (const [k, v] of Object.entries({ wallTimeMs: r.wallTimeMs, connectMs: r.connectMs, ...r.localTraining, ...coordinatorMs, loopMax: eventLoopDelayMs.max, loopP99: eventLoopDelayMs.p99, bytesOut: r.wire.bytesOut, bytesIn: r.wire.bytesIn, remainderMs: r.wire.remainderMs, idleMs: r.wire.coordinatorIdleMs, peak: r.coordinatorPeakRssMb })) {
      if (Array.isArray(v)) v.forEach((x, i) => finite(x, `${r.model}.${k}[${i}]`));
      else finite(v, `${r.model}.${k}`);
    }
    assert.ok(r.localTraining.sumMs > 0 && r.wire.bytesOut > r.parameters * 4 && r.coordinatorPeakRssMb > 0);
    // Peak resident set cannot be below what was resident after the round.
    assert.ok(r.coordinatorPeakRssMb >= r.coordinatorRssMb.afterRound - 1);
  }
  // The flat keys, which other tools read, come from the MNIST MLP round and the 1M-parameter ones.
  const flat = out as unknown as Record<string, number> & { model1M: Record<'fp32' | 'norms', Record<string, number>> };
  for (const k of ['wallTimeMs', 'localTrainingMs', 'wireMs', 'coordinatorMs', 'coordinatorPeakRssMb']) finite(flat[k], `fleet.${k}`);
  assert.equal(flat.wallTimeMs, out.rounds[0]!.wallTimeMs);
  assert.equal(flat.model1M.fp32.parameters, out.rounds[1]!.parameters);
  finite(flat.model1M.fp32.coordinatorPeakRssMb, 'fleet.model1M.fp32.coordinatorPeakRssMb');
  finite(flat.model1M.norms.coordinatorPeakRssMb, 'fleet.model1M.norms.coordinatorPeakRssMb');
});

test('unlearning section: federaser against retrain, and federaser under every retention', { timeout: 120_000 }, async () => {
  const out = (await runUnlearning({ quick: true, log })) as { speedupWall: number; speedupSampleEpochs: number; federaser: { testAccuracy: number; backdoorASR: number }; retrain: { testAccuracy: number; backdoorASR: number }; retention: RetentionRow[] };
  finite(out.speedupWall, 'speedupWall');
  finite(out.speedupSampleEpochs, 'speedupSampleEpochs');
  for (const m of ['federaser', 'retrain'] as const) {
    finite(out[m].testAccuracy, `${m}.testAccuracy`);
    finite(out[m].backdoorASR, `${m}.backdoorASR`);
  }
  assert.deepEqual(out.retention.map((r) => r.retention), ['fp32', 'fp16', 'int8', 'norms']);
  for (const r of out.retention) {
    finite(r.updateBytesPerClientRound, `${r.retention}.updateBytesPerClientRound`);
    // FedEraser needs only the per-layer norms, which every retention keeps: it runs under each of them.
    assert.ok(r.ran, `${r.retention}: ${r.error}`);
    finite(r.testAccuracy, `${r.retention}.testAccuracy`);
    finite(r.testAccuracyVsRetrain, `${r.retention}.testAccuracyVsRetrain`);
  }
  const bytes = Object.fromEntries(out.retention.map((r) => [r.retention, r.updateBytesPerClientRound]));
  // The encodings really shrink what is kept: fp16 about half of fp32, int8 about a quarter, norms no update blobs.
  assert.ok(bytes.fp16! < bytes.fp32! * 0.6 && bytes.int8! < bytes.fp16! * 0.6 && bytes.norms === 0, JSON.stringify(bytes));
});
