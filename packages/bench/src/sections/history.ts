import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openSqliteHistory, type Retention } from '@fedunlearn/coordinator';
import { builtInDefinition } from '@fedunlearn/models';
import { layerNorms } from '@fedunlearn/protocol';
import { filled, round } from '../fixtures.js';
import type { SectionOptions, SectionResult } from '../section.js';

const RETENTIONS: Retention[] = ['fp32', 'fp16', 'int8', 'norms'];

/**
 * The real SQLite HistoryStore under each retention, for the MNIST CNN: rounds of K staged updates (concurrently, as
 * they arrive in a round) then a commit. Bytes per client-round are what the store reports holding (update blobs)
 * plus the per-layer norms every participant row carries; write MB/s is encoded update bytes made durable per second
 * of staging.
 */
export async function run(opts: SectionOptions): Promise<SectionResult> {
  const def = builtInDefinition('cnn', { inputShape: [28, 28, 1], numClasses: 10, seed: 1 });
  const layout = def.initial.layout;
  const k = opts.quick ? 5 : 10;
  const rounds = opts.quick ? 2 : 4;
  opts.log(`history: MNIST CNN (${layout.totalSize} values), ${rounds} rounds of ${k} clients per retention`);
  const updates = Array.from({ length: k }, (_, i) => filled(layout.totalSize, 100 + i, 0.01));
  const norms = updates.map((u) => layerNorms(layout, u));
  const bytesPerClientRound: Record<string, number> = {};
  const writeMBpsBy: Record<string, number> = {};
  const commitMs: Record<string, number> = {};
  for (const retention of RETENTIONS) {
    const dir = mkdtempSync(join(tmpdir(), `fedunlearn-bench-history-${retention}-`));
    const store = openSqliteHistory(dir);
    try {
      let head = (await store.open({ topologyJson: def.topologyJson, layout, initialWeights: def.initial.values, config: { historyInterval: 1, retention } })).head;
      let stagingMs = 0;
      let committing = 0;
      for (let r = 1; r <= rounds; r++) {
        const roundId = `bench-${retention}-${r}`;
        const t0 = performance.now();
        await Promise.all(updates.map((u, i) => store.stageUpdate(roundId, `client-${i}`, u)));
        stagingMs += performance.now() - t0;
        const t1 = performance.now();
        head = await store.commitRound({
          round: r,
          roundId,
          modelBefore: head.version,
          weights: filled(layout.totalSize, 1000 + r, 0.1),
          participants: updates.map((_, i) => ({ clientId: `client-${i}`, numExamples: 600, norms: norms[i]! })),
          metrics: {},
          startedAt: Date.now(),
        });
        committing += performance.now() - t1;
      }
      const stats = await store.stats();
      let normBytes = 0;
      let participants = 0;
      for (const rec of await store.listRounds()) {
        for (const p of rec.participants) {
          normBytes += p.norms.length * 8;
          participants++;
        }
      }
      if (participants !== k * rounds) throw new Error(`${retention}: ${participants} participant rows for ${k * rounds} client-rounds`);
      bytesPerClientRound[retention] = Math.round((stats.updateBytes + normBytes) / participants);
      if (retention !== 'norms') writeMBpsBy[retention] = round(stats.updateBytes / (stagingMs / 1000) / 1e6, 1);
      commitMs[retention] = round(committing / rounds, 2);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  }
  return {
    bytesPerClientRound,
    writeMBps: writeMBpsBy.fp32,
    writeMBpsByRetention: writeMBpsBy,
    commitMsPerRound: commitMs,
    params: layout.totalSize,
    clientsPerRound: k,
    rounds,
  };
}
