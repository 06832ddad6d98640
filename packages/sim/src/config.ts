import { METHOD_NAMES, type MethodName } from '@fedunlearn/coordinator';
import { DATASET_NAMES, type DatasetName } from './data/datasets.js';
import { parsePartitionSpec } from './data/partition.js';

/** Everything a simulation run depends on; report.json records it, so that a run is reproducible from it. */
export interface SimConfig {
  dataset: DatasetName;
  model: 'mlp' | 'cnn';
  clients: number;
  clientsPerRound: number;
  rounds: number;
  localEpochs: number;
  batchSize: number;
  lr: number;
  partition: string;
  seed: number;
  historyInterval: number;
  retention: 'fp32' | 'fp16' | 'int8' | 'norms';
  out: string;
  /** Indices of the clients to forget (empty: train only). */
  forget: number[];
  /**
   * The forgotten clients join at this round: they are not connected, hence not selected, before it (1: from the
   * start). Above 1 the report adds, for federaser and replay, a full-history row (replay from the initial model) beside
   * the default one that starts at t0, so that the saving is measured in the same run.
   */
  forgetJoinRound: number;
  methods: MethodName[];
  /** One row per value for each approximate method. */
  tuneRounds: number[];
  calibrationRatio: number;
  reuseFirstRound: boolean;
  /** SIFU's noise (params.sigma); its other constants are the job defaults (method.ts SIFU_DEFAULT_PARAMS). */
  sifuSigma: number;
  /** FedRecover's exact-update schedule (T_w, T_c, T_f; unlearning/fedrecover.ts): the paper's 20, 10, 5 make every
   *  round of a short history exact, so runs usually pass smaller values. */
  fedrecover: { warmupRounds: number; correctionPeriod: number; finalTuningRounds: number };
  backdoor: boolean;
  noiseFloor: boolean;
  /** Use at most this many examples of each class (quick runs and tests). */
  limitPerClass?: number;
  /** Share of each class held out (test set, non-members and the witness's population); the data set's default otherwise. */
  testFraction?: number;
  /** Worker threads for the fleet. */
  threads?: number;
  roundDeadlineMs: number;
  /** No progress bars (non-interactive runs still print the final tables). */
  quiet: boolean;
  /** Keep the working data directory (OUT/data: every coordinator's history) after the run; deleted by default. */
  keepData: boolean;
}

export const DEFAULT_CONFIG: SimConfig = {
  dataset: 'mnist',
  model: 'mlp',
  clients: 20,
  clientsPerRound: 20,
  rounds: 10,
  localEpochs: 1,
  batchSize: 32,
  lr: 0.2,
  partition: 'iid',
  seed: 1,
  historyInterval: 2,
  retention: 'fp32',
  out: 'out/sim',
  forget: [],
  forgetJoinRound: 1,
  methods: ['federaser', 'replay', 'retrain', 'rollback'],
  tuneRounds: [0],
  calibrationRatio: 0.5,
  reuseFirstRound: false,
  sifuSigma: 0.05,
  fedrecover: { warmupRounds: 20, correctionPeriod: 10, finalTuningRounds: 5 },
  backdoor: false,
  noiseFloor: false,
  // Virtual clients never vanish, so the deadline only guards against a stuck run: generous enough for a CNN epoch
  // over thousands of images per client on a small machine.
  roundDeadlineMs: 3_600_000,
  quiet: false,
  keepData: false,
};

/**
 * Named presets (`--scenario NAME`); flags given explicitly override them.
 *
 * `memorise`: a run where there is something for a membership witness to find. Each of 10 clients holds about 200
 * examples (1,000 per class, 80 % held out: 2,000 training and 8,000 held-out examples for MNIST and Fashion-MNIST
 * alike) and trains 5 local epochs per round for 20 rounds, so the MLP fits its training data, the forgotten client's
 * included, far better than held-out data; the 8,000 held-out examples give the witness 4,000 non-members (TPR at
 * 0.1 % FPR is resolvable) and a 4,000-example population.
 */
export const SCENARIOS: Record<string, Partial<SimConfig>> = {
  memorise: { clients: 10, clientsPerRound: 10, rounds: 20, localEpochs: 5, limitPerClass: 1000, testFraction: 0.8, historyInterval: 1, forget: [0] },
};

/**
 * `base` with scenario `name`'s values, except the fields in `explicit` (flags the user gave, which win).
 * @throws RangeError for an unknown scenario.
 */
export function applyScenario(base: SimConfig, name: string, explicit: ReadonlySet<string>): SimConfig {
  const preset = SCENARIOS[name];
  if (!preset) throw new RangeError(`--scenario: '${name}' is not one of ${Object.keys(SCENARIOS).join(', ')}`);
  const out: SimConfig = { ...base };
  for (const [k, v] of Object.entries(preset)) if (!explicit.has(k)) (out as unknown as Record<string, unknown>)[k] = v;
  return out;
}

/** Checks a config and says which field is wrong and what is allowed. */
export function validateConfig(c: SimConfig): SimConfig {
  const fail = (field: string, msg: string): never => {
    throw new RangeError(`--${field}: ${msg}`);
  };
  if (!DATASET_NAMES.includes(c.dataset)) fail('dataset', `'${c.dataset}' is not one of ${DATASET_NAMES.join(', ')}`);
  if (c.model !== 'mlp' && c.model !== 'cnn') fail('model', `'${c.model}' is not one of mlp, cnn`);
  const posInt = (field: string, v: number) => (Number.isInteger(v) && v > 0 ? v : fail(field, `must be a positive integer, got ${v}`));
  posInt('clients', c.clients);
  posInt('clients-per-round', c.clientsPerRound);
  posInt('rounds', c.rounds);
  posInt('batch-size', c.batchSize);
  posInt('history-interval', c.historyInterval);
  if (c.clientsPerRound > c.clients) fail('clients-per-round', `${c.clientsPerRound} is more than --clients ${c.clients}`);
  if (!(c.localEpochs > 0)) fail('local-epochs', `must be positive, got ${c.localEpochs}`);
  if (!(c.lr > 0)) fail('lr', `must be positive, got ${c.lr}`);
  if (!(c.sifuSigma > 0)) fail('sifu-sigma', `must be positive, got ${c.sifuSigma}`);
  if (!(c.calibrationRatio > 0)) fail('calibration-ratio', `must be positive, got ${c.calibrationRatio}`);
  try {
    parsePartitionSpec(c.partition);
  } catch (e) {
    fail('partition', (e as Error).message);
  }
  if (c.testFraction !== undefined && !(c.testFraction > 0 && c.testFraction < 1)) fail('test-fraction', `must be in (0, 1), got ${c.testFraction}`);
  for (const i of c.forget) if (!Number.isInteger(i) || i < 0 || i >= c.clients) fail('forget', `client index ${i} is outside 0..${c.clients - 1}`);
  if (c.forget.length >= c.clients) fail('forget', 'at least one client must remain');
  if (!Number.isInteger(c.forgetJoinRound) || c.forgetJoinRound < 1 || c.forgetJoinRound > c.rounds) fail('forget-join-round', `must be an integer in 1..${c.rounds} (--rounds), got ${c.forgetJoinRound}`);
  if (c.forgetJoinRound > 1 && c.forget.length === 0) fail('forget-join-round', 'needs --forget: it says when the forgotten clients join');
  for (const m of c.methods) if (!METHOD_NAMES.includes(m)) fail('methods', `'${m}' is not one of ${METHOD_NAMES.join(', ')}`);
  if (c.methods.includes('fedrecover')) {
    // FedRecover estimates every replayed round's updates from the stored ones: the history must keep them all.
    if (c.historyInterval !== 1) fail('history-interval', `method fedrecover needs the full updates of every round: pass --history-interval 1 (got ${c.historyInterval})`);
    if (c.retention === 'norms') fail('retention', "method fedrecover needs stored updates; retention 'norms' keeps none");
    const f = c.fedrecover;
    if (![f.warmupRounds, f.correctionPeriod - 1, f.finalTuningRounds].every((v) => Number.isInteger(v) && v >= 0)) fail('fedrecover', `T_w, T_c, T_f must be integers, T_c at least 1, got ${f.warmupRounds},${f.correctionPeriod},${f.finalTuningRounds}`);
  }
  for (const t of c.tuneRounds) if (!Number.isInteger(t) || t < 0) fail('tune-rounds', `must be non-negative integers, got ${t}`);
  return c;
}

export function clientId(i: number): string {
  return `client-${String(i).padStart(3, '0')}`;
}
