import assert from 'node:assert/strict';
import { test } from 'node:test';
import { run, type JobSize } from './jobs.js';

/** The jobs section in --quick mode: a real serve over histories written through the store, a real FedEraser job each. */
test('jobs section: a FedEraser job over each history size yields its time per replayed round and the API latency during it', { timeout: 180_000 }, async () => {
  const out = (await run({ quick: true, log: () => undefined })) as Record<string, unknown>;
  const rows = Object.entries(out).filter(([k]) => k.startsWith('rounds')).map(([, v]) => v as JobSize);
  assert.deepEqual(rows.map((r) => r.historyRounds), [25, 50, 100]);
  for (const r of rows) {
    // Every stored round is replayed (one more if the service trained a round before the job's clients were all in).
    assert.ok(r.replayedRounds >= r.historyRounds && r.replayedRounds <= r.historyRounds + 1, `${r.historyRounds}: replayed ${r.replayedRounds}`);
    for (const [k, v] of Object.entries(r)) assert.ok(typeof v === 'number' && Number.isFinite(v) && (v >= 0 || k === 'apiMaxAtMsFromJobEnd'), `${r.historyRounds}.${k} = ${String(v)}`);
    assert.ok(r.apiProbes > 0 && r.apiMaxMs >= r.apiP99Ms && r.apiP99Ms >= r.apiP50Ms);
  }
  for (const k of ['perRoundRatioLargestToSmallest', 'apiP99MsLargest', 'apiMaxMsLargest']) assert.ok(Number.isFinite(out[k]), k);
});
