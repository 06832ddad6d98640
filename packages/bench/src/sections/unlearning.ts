import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEFAULT_CONFIG, runSimulation, type SimConfig, type SimReport, type UnlearningRow } from '@fedunlearn/sim';
import type { SectionOptions, SectionResult } from '../section.js';

type Retention = SimConfig['retention'];
const RETENTIONS: Retention[] = ['fp32', 'fp16', 'int8', 'norms'];

/** FedEraser's result under one history retention, against the fp32 run's retrain. */
export interface RetentionRow {
  retention: Retention;
  ran: boolean;
  /** Why federaser could not run from this history (only when ran is false; the bytes then come from a training-only run). */
  error?: string;
  testAccuracy?: number;
  backdoorASR?: number | null;
  testAccuracyVsRetrain?: number;
  backdoorASRVsRetrain?: number | null;
  /** Bytes of stored updates (blob files) divided by every client-round of training; per-layer norms live in SQLite. */
  updateBytesPerClientRound: number;
  /** The same bytes divided by the client-rounds whose updates were kept (every Δt-th round). */
  updateBytesPerStoredClientRound: number | null;
  updateBytes: number;
  modelBytes: number;
  simWallTimeMs: number;
}

function scenario(quick: boolean, retention: Retention, methods: SimConfig['methods'], out: string): SimConfig {
  // The unlearning issue's scenario: `npm run sim` defaults with client 0 forgotten and backdoored.
  const base: SimConfig = { ...DEFAULT_CONFIG, forget: [0], backdoor: true, methods, retention, out, quiet: true };
  return quick ? { ...base, clients: 4, clientsPerRound: 4, rounds: 2, limitPerClass: 30 } : base;
}

function pick(row: UnlearningRow | undefined) {
  if (!row) return null;
  return {
    testAccuracy: row.testAccuracy,
    forgottenAccuracy: row.forgottenAccuracy,
    backdoorASR: row.backdoorASR,
    wallTimeMs: row.wallTimeMs,
    clientSampleEpochs: row.clientSampleEpochs,
    bytesOnWire: row.bytesOnWire,
    distanceToRetrain: row.distanceToRetrain,
  };
}

function historyBytes(r: SimReport) {
  const kept = r.history.updates;
  return {
    updateBytes: r.history.updateBytes,
    modelBytes: r.history.modelBytes,
    updateBytesPerClientRound: r.history.updateBytes / Math.max(1, r.history.clientRounds),
    updateBytesPerStoredClientRound: kept > 0 ? r.history.updateBytes / kept : null,
  };
}

/**
 * FedEraser against retraining in the unlearning issue's MNIST scenario (speed-ups in wall time and client
 * sample-epochs, accuracy, backdoor ASR), then FedEraser's fidelity under each history retention. The simulation
 * cannot re-encode one trained history under another retention, so each retention trains again with the same seed
 * and schedule; retraining does not read the history, so the fp32 run's retrain is the reference for all.
 */
export async function run(opts: SectionOptions): Promise<SectionResult> {
  const root = mkdtempSync(join(tmpdir(), 'fedunlearn-bench-unlearning-'));
  try {
    const runs = new Map<Retention, SimReport | { error: Error; trainOnly: SimReport }>();
    for (const retention of RETENTIONS) {
      const methods: SimConfig['methods'] = retention === 'fp32' ? ['federaser', 'retrain'] : ['federaser'];
      opts.log(`unlearning: retention ${retention}, ${methods.join(' + ')}`);
      try {
        runs.set(retention, await runSimulation(scenario(opts.quick, retention, methods, join(root, retention))));
      } catch (e) {
        if (retention === 'fp32') throw e;
        // The history's size is still a figure: train once more without unlearning to measure it.
        opts.log(`unlearning: retention ${retention}: ${(e as Error).message}; training again without unlearning for the history's size`);
        const trainOnly = await runSimulation({ ...scenario(opts.quick, retention, [], join(root, `${retention}-train`)), forget: [] });
        runs.set(retention, { error: e as Error, trainOnly });
      }
    }
    const main = runs.get('fp32') as SimReport;
    const fed = main.unlearning.find((r) => r.method === 'federaser');
    const retrain = main.unlearning.find((r) => r.method === 'retrain');
    if (!fed || !retrain) throw new Error('the fp32 run has no federaser or no retrain row');

    const retention: RetentionRow[] = RETENTIONS.map((ret) => {
      const r = runs.get(ret)!;
      if ('error' in r) return { retention: ret, ran: false, error: r.error.message, ...historyBytes(r.trainOnly), simWallTimeMs: r.trainOnly.wallTimeMs };
      const row = r.unlearning.find((x) => x.method === 'federaser')!;
      return {
        retention: ret,
        ran: true,
        testAccuracy: row.testAccuracy,
        backdoorASR: row.backdoorASR,
        testAccuracyVsRetrain: row.testAccuracy - retrain.testAccuracy,
        backdoorASRVsRetrain: row.backdoorASR !== null && retrain.backdoorASR !== null ? row.backdoorASR - retrain.backdoorASR : null,
        ...historyBytes(r),
        simWallTimeMs: r.wallTimeMs,
      };
    });
    for (const x of retention) {
      opts.log(
        x.ran
          ? `unlearning: ${x.retention}: federaser acc ${(x.testAccuracy! * 100).toFixed(1)} % (${(x.testAccuracyVsRetrain! * 100).toFixed(1)} vs retrain), ASR ${((x.backdoorASR ?? NaN) * 100).toFixed(1)} %, ${x.updateBytesPerClientRound.toFixed(0)} update bytes per client-round`
          : `unlearning: ${x.retention}: federaser could not run: ${x.error}`,
      );
    }
    return {
      scenario: { dataset: main.config.dataset, model: main.config.model, parameters: main.model.parameters, clients: main.config.clients, rounds: main.config.rounds, forgotten: main.forgotten, backdoor: main.config.backdoor, historyInterval: main.config.historyInterval, calibrationRatio: main.config.calibrationRatio, limitPerClass: main.config.limitPerClass ?? null },
      backend: main.backend,
      speedupWall: fed.speedupWall,
      speedupSampleEpochs: fed.speedupSampleEpochs,
      original: main.original,
      federaser: pick(fed),
      retrain: pick(retrain),
      retention,
    };
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}
