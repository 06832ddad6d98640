import { cpSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { initBackend, Trainer } from '@fedunlearn/client';
import { Coordinator, createLogger, openSqliteHistory, type HistoryStats, type JobReport, type MethodName, type RoundOutcome } from '@fedunlearn/coordinator';
import { builtInDefinition, type ModelDefinition } from '@fedunlearn/models';
import { clientId, validateConfig, type SimConfig } from './config.js';
import { makeTrigger, stamp, withBackdoor } from './data/backdoor.js';
import { loadDataset } from './data/datasets.js';
import { partition } from './data/partition.js';
import { concat, subset } from './data/types.js';
import { Evaluator, type ModelFigures } from './evaluate.js';
import { Fleet } from './fleet/fleet.js';
import type { VirtualClientSpec } from './fleet/messages.js';
import { Progress } from './progress.js';
import { writeReport } from './report/write.js';
import { displacementCosine, l2Distance, predictionDissimilarity } from './verify/metrics.js';

export interface RoundRow {
  round: number;
  testAccuracy: number;
  testLoss: number;
  participants: number;
  /** The clients whose updates the round aggregated, by id (the same seed and flags give the same lists). */
  participantIds: string[];
  /** sha256 of the global model after the round (float32 little-endian weights). */
  modelSha256: string;
  missing: number;
  durationMs: number;
  trainLoss: number | null;
}

export interface UnlearningRow extends ModelFigures {
  method: MethodName;
  tuneRounds: number;
  /** federaser and replay: replayed from the initial model over every stored round (params.fullHistory), for
   *  comparison with the default row that starts at t0. */
  fullHistory: boolean;
  /** The first round a forgotten client took part in, and how many rounds before it the job kept as they were. */
  t0: number | null;
  roundsKeptExact: number;
  /** This row's client sample-epochs and wall time divided by those of the same method's full-history row (below 1:
   *  the saving of starting at t0); null without such a row. */
  vsFullHistory: { sampleEpochs: number | null; wallTime: number } | null;
  /** How the job was requested: through the forgotten client's SDK or the operator API. */
  requestedBy: string;
  jobId: string;
  distanceToRetrain: { l2: number; cosine: number } | null;
  pDiss: number | null;
  fidelity: number | null;
  wallTimeMs: number;
  clientSampleEpochs: number;
  bytesOnWire: number;
  speedupWall: number | null;
  speedupSampleEpochs: number | null;
  modelBefore: string;
  modelAfter: string;
  roundsReplayed: number;
  clientsMissing: number;
}

/** Where the federated-training phase's wall time went (ms). */
export interface TrainingEfficiency {
  threads: number;
  /** Connecting the fleet (hellos, welcomes) before the first round. */
  connectMs: number;
  /** Rounds, from each round's start to its commit (the coordinator's durations, summed). */
  roundsMs: number;
  /** Evaluating the global model on the test set after each round, on the main thread; no round runs meanwhile. */
  evaluationMs: number;
  /** Local training per fleet thread (a thread's clients train one after another). */
  perThreadTrainingMs: number[];
  /** What the busiest thread did not spend training during the rounds: the others' share of a round is idle time
   *  while it finishes (uneven client data), plus decoding, encoding and the coordinator's work. */
  roundIdleMs: number;
}

export interface SimReport {
  config: SimConfig;
  backend: string;
  model: { name: string; parameters: number };
  data: { train: number; test: number; perClient: number[] };
  rounds: RoundRow[];
  finalTestAccuracy: number;
  wallTimeMs: number;
  trainingWallTimeMs: number;
  /**
   * Share of the federated-training phase's thread time spent in local training: the clients' training times summed
   * over the fleet's threads, over threads x the phase's wall time (1 = every thread trained all the time). What the
   * rest went to is in `efficiency`.
   */
  trainingShare: number;
  efficiency: TrainingEfficiency;
  storedBytes: number;
  /** The training history as stored (under the run's retention), and the client-rounds it covers. */
  history: HistoryStats & { clientRounds: number };
  forgotten: string[];
  original: ModelFigures | null;
  /** The trained model's distance to retraining's: what every method's distanceToRetrain is to fall below. */
  originalDistanceToRetrain: { l2: number; cosine: number } | null;
  unlearning: UnlearningRow[];
  noiseFloor: { l2BetweenRetrains: number } | null;
  jobs: JobReport[];
  notes: string[];
}

/**
 * One simulation: a coordinator and N virtual clients train on real data; then, if clients are to be forgotten,
 * every method unlearns them from a copy of the same trained state (same seed, same schedule), so that the rows of
 * the final table are measured side by side in one run.
 */
export async function runSimulation(input: SimConfig): Promise<SimReport> {
  const cfg = validateConfig(input);
  const t0 = Date.now();
  const out = resolve(cfg.out);
  mkdirSync(out, { recursive: true });
  const work = join(out, 'data');
  rmSync(work, { recursive: true, force: true });
  const progress = new Progress(cfg.quiet);
  const notes: string[] = [];

  const loaded = loadDataset(cfg.dataset, { seed: cfg.seed, layout: cfg.model === 'cnn' ? 'image' : 'flat', ...(cfg.limitPerClass ? { limitPerClass: cfg.limitPerClass } : {}) });
  const parts = partition(loaded.train, cfg.clients, cfg.partition, cfg.seed);
  const trigger = makeTrigger({});
  const forgottenIds = cfg.forget.map(clientId);
  const specs: VirtualClientSpec[] = parts.map((data, i) => ({
    clientId: clientId(i),
    secret: `sim-secret-${cfg.seed}-${i}`,
    data: cfg.backdoor && cfg.forget.includes(i) ? withBackdoor(data, trigger) : data,
  }));
  const forgottenClean = cfg.forget.length > 0 ? concat(cfg.forget.map((i) => parts[i]!)) : null;
  const nonTarget = Array.from(loaded.test.y.keys()).filter((i) => loaded.test.y[i] !== trigger.targetClass);
  const triggered = cfg.backdoor ? stamp(subset(loaded.test, nonTarget), trigger) : null;
  const nonMembers = forgottenClean ? subset(loaded.test, Array.from({ length: Math.min(forgottenClean.count, loaded.test.count) }, (_, i) => i)) : null;

  const def = builtInDefinition(cfg.model, { inputShape: loaded.train.inputShape, numClasses: loaded.train.numClasses, seed: cfg.seed });
  const backend = await initBackend();
  const trainer = new Trainer({ tf: backend.tf });
  const evaluator = new Evaluator(trainer, def.topologyJson, { test: loaded.test, forgotten: forgottenClean, triggered, nonMembers, targetClass: trigger.targetClass });

  const fleet = new Fleet(cfg.threads);
  fleet.on('failure', (m) => notes.push(`client failure: ${m}`));
  const rounds: RoundRow[] = [];
  const jobs: JobReport[] = [];
  let storedBytes = 0;
  let history: SimReport['history'] | null = null;
  let trainingWallTimeMs = 0;
  let trainingPhase = true;
  const perThreadTrainingMs: number[] = [];
  fleet.on('task', (t) => {
    if (trainingPhase) perThreadTrainingMs[t.thread] = (perThreadTrainingMs[t.thread] ?? 0) + t.trainMs;
  });
  let connectMs = 0;
  let evaluationMs = 0;
  try {
    // Training.
    const trainDir = join(work, 'train');
    const coord = await startCoordinator(cfg, def, trainDir, cfg.seed);
    progress.log(`backend: ${backend.name} (tried ${backend.tried.map((t) => t.name + (t.error ? ' ✗' : ' ✓')).join(', ')}); ${cfg.clients} clients on ${cfg.dataset}, model ${cfg.model} (${def.initial.layout.totalSize.toLocaleString()} parameters)`);
    const tTrain = Date.now();
    // Forgotten clients that join late are not connected, hence never selected, before their round.
    const lateIds = cfg.forgetJoinRound > 1 ? new Set(forgottenIds) : new Set<string>();
    await fleet.connect(
      coord.url,
      specs.filter((s) => !lateIds.has(s.clientId)),
    );
    // Round 1 starts once the whole fleet (but for late joiners) is connected: a round started earlier would select
    // from whoever happened to be welcomed first, and the run would not be reproducible from its seed.
    await wholeFleet(coord.coordinator, cfg.clients - lateIds.size);
    connectMs = Date.now() - tTrain;
    progress.start('training', cfg.rounds, 'round');
    const onRound = async (r: RoundOutcome) => {
      const tEval = performance.now();
      const m = await evaluator.test(coord.coordinator.model().weights);
      evaluationMs += performance.now() - tEval;
      rounds.push({
        round: r.round,
        testAccuracy: m.accuracy,
        testLoss: m.loss,
        participants: r.participants.length,
        participantIds: [...r.participants].sort(),
        modelSha256: r.model.sha256,
        missing: r.missing.length,
        durationMs: r.durationMs,
        trainLoss: r.metrics.loss ?? null,
      });
      progress.tick({ acc: m.accuracy });
    };
    if (lateIds.size > 0) {
      await coord.coordinator.runRounds(cfg.forgetJoinRound - 1, onRound);
      await fleet.add(
        coord.url,
        specs.filter((s) => lateIds.has(s.clientId)),
      );
      await wholeFleet(coord.coordinator, cfg.clients);
    }
    await coord.coordinator.runRounds(cfg.rounds - (lateIds.size > 0 ? cfg.forgetJoinRound - 1 : 0), onRound);
    progress.stop();
    trainingWallTimeMs = Date.now() - tTrain;
    trainingPhase = false;
    storedBytes = await statsBytes(coord.coordinator);
    history = { ...(await coord.coordinator.store.stats()), clientRounds: rounds.reduce((n, r) => n + r.participants, 0) };
    const trained = coord.coordinator.model().weights;
    await coord.coordinator.stop();

    let original: ModelFigures | null = null;
    let originalDistanceToRetrain: SimReport['originalDistanceToRetrain'] = null;
    const rows: UnlearningRow[] = [];
    let noiseFloor: SimReport['noiseFloor'] = null;
    if (forgottenIds.length > 0) {
      const orig = await evaluator.figures(trained, 'fit');
      const threshold = orig.threshold;
      original = orig.figures;

      const plan: { method: MethodName; tune: number; seed: number; noise?: boolean; fullHistory?: boolean }[] = [];
      for (const m of orderMethods(cfg.methods)) {
        const exact = m === 'retrain' || m === 'rollback';
        for (const tune of exact ? [0] : cfg.tuneRounds) {
          plan.push({ method: m, tune, seed: cfg.seed });
          // With late joiners, the approximate methods also run from the initial model, to show what t0 saves.
          if (!exact && cfg.forgetJoinRound > 1) plan.push({ method: m, tune, seed: cfg.seed, fullHistory: true });
        }
      }
      if (cfg.noiseFloor) plan.push({ method: 'retrain', tune: 0, seed: cfg.seed + 7919, noise: true });

      const results: { plan: (typeof plan)[number]; report: JobReport; weights: Float32Array }[] = [];
      let sdkUsed = false;
      for (const [i, p] of plan.entries()) {
        const dir = join(work, `${i}-${p.method}-${p.tune}${p.noise ? '-noise' : ''}${p.fullHistory ? '-full' : ''}`);
        cpSync(trainDir, dir, { recursive: true });
        const c = await startCoordinator(cfg, def, dir, p.seed);
        // Stopped on every path: a failed job must not leave its coordinator listening.
        try {
          await fleet.reconnect(c.url);
          await wholeFleet(c.coordinator, cfg.clients);
          // The job's plan (its step count) is known once it starts: 0 until then, so nothing is printed before it.
          progress.start(`${p.method}${p.tune ? ` +${p.tune}` : ''}${p.noise ? ' (noise floor)' : ''}${p.fullHistory ? ' (full history)' : ''}`, 0, 'step');
          c.coordinator.unlearning.on('progress', (job) => progress.update(job.progress.step, job.progress.total, {}, job.progress.message));
          let jobId: string;
          // The first single-client federaser job is asked for the way a device would: through its SDK.
          if (!sdkUsed && p.method === 'federaser' && p.tune === 0 && !p.fullHistory && forgottenIds.length === 1 && !cfg.reuseFirstRound && cfg.calibrationRatio === 0.5) {
            sdkUsed = true;
            const pending = fleet.forget(forgottenIds[0]!);
            const started = await waitForQueued(c.coordinator);
            await c.coordinator.runPendingJobs();
            jobId = (await pending).jobId;
            if (jobId !== started) throw new Error(`SDK job ${jobId} is not the queued job ${started}`);
          } else {
            const job = await c.coordinator.forget({
              clientIds: forgottenIds,
              method: p.method,
              params: { calibrationRatio: cfg.calibrationRatio, reuseFirstRound: cfg.reuseFirstRound, tuneRounds: p.tune, ...(p.fullHistory ? { fullHistory: true } : {}) },
              requestedBy: 'operator:sim',
            });
            jobId = job.jobId;
            await c.coordinator.runPendingJobs();
          }
          progress.stop();
          const done = (await c.coordinator.store.getJob(jobId))!;
          if (done.state !== 'done') throw new Error(`${p.method} job ${jobId} ${done.state}: ${done.error}`);
          const report = done.report as JobReport;
          jobs.push(report);
          results.push({ plan: p, report, weights: c.coordinator.model().weights });
        } finally {
          await c.coordinator.stop();
        }
      }

      const retrain = results.find((r) => r.plan.method === 'retrain' && !r.plan.noise);
      const second = results.find((r) => r.plan.noise);
      const rowResults = results.filter((x) => !x.plan.noise);
      const evaluated = new Map<(typeof results)[number], Awaited<ReturnType<Evaluator['figures']>>>();
      for (const r of rowResults) evaluated.set(r, await evaluator.figures(r.weights, { threshold }));
      const retrainProbs = retrain ? evaluated.get(retrain)!.predictions.forgottenProbs : null;
      const floor = retrain && second ? l2Distance(retrain.weights, second.weights) : null;
      if (floor !== null) noiseFloor = { l2BetweenRetrains: floor };
      if (retrain) originalDistanceToRetrain = { l2: l2Distance(trained, retrain.weights), cosine: displacementCosine(trained, retrain.weights, def.initial.values) };
      for (const r of rowResults) {
        const f = evaluated.get(r)!;
        const l2 = retrain ? l2Distance(r.weights, retrain.weights) : null;
        const full = r.plan.fullHistory ? undefined : rowResults.find((x) => x.plan.fullHistory && x.plan.method === r.plan.method && x.plan.tune === r.plan.tune);
        rows.push({
          method: r.plan.method,
          tuneRounds: r.plan.tune,
          fullHistory: r.plan.fullHistory ?? false,
          t0: r.report.t0,
          roundsKeptExact: r.report.roundsKeptExact,
          vsFullHistory: full
            ? {
                sampleEpochs: full.report.cost.clientSampleEpochs > 0 ? r.report.cost.clientSampleEpochs / full.report.cost.clientSampleEpochs : null,
                wallTime: r.report.wallTimeMs / Math.max(1, full.report.wallTimeMs),
              }
            : null,
          requestedBy: r.report.requestedBy,
          jobId: r.report.jobId,
          ...f.figures,
          distanceToRetrain: retrain && l2 !== null ? { l2, cosine: displacementCosine(r.weights, retrain.weights, def.initial.values) } : null,
          pDiss: retrainProbs && f.predictions.forgottenProbs ? predictionDissimilarity(f.predictions.forgottenProbs, retrainProbs, loaded.test.numClasses) : null,
          fidelity: floor && l2 !== null ? l2 / floor : null,
          wallTimeMs: r.report.wallTimeMs,
          clientSampleEpochs: r.report.cost.clientSampleEpochs,
          bytesOnWire: r.report.cost.bytesOnWire,
          speedupWall: retrain ? retrain.report.wallTimeMs / Math.max(1, r.report.wallTimeMs) : null,
          speedupSampleEpochs: retrain && r.report.cost.clientSampleEpochs > 0 ? retrain.report.cost.clientSampleEpochs / r.report.cost.clientSampleEpochs : null,
          modelBefore: r.report.modelBefore.sha256,
          modelAfter: r.report.modelAfter.sha256,
          roundsReplayed: r.report.roundsReplayed.length,
          clientsMissing: r.report.roundsReplayed.reduce((n, x) => n + x.missing.length, 0),
        });
      }
    }
    const report: SimReport = {
      config: cfg,
      backend: backend.name,
      model: { name: cfg.model, parameters: def.initial.layout.totalSize },
      data: { train: loaded.train.count, test: loaded.test.count, perClient: specs.map((s) => s.data.count) },
      rounds,
      finalTestAccuracy: rounds.at(-1)?.testAccuracy ?? NaN,
      wallTimeMs: Date.now() - t0,
      trainingWallTimeMs,
      ...trainingEfficiency(trainingWallTimeMs, fleet.threadCount, perThreadTrainingMs, connectMs, evaluationMs, rounds),
      storedBytes,
      history: history!,
      forgotten: forgottenIds,
      original,
      originalDistanceToRetrain,
      unlearning: rows,
      noiseFloor,
      jobs,
      notes,
    };
    await writeReport(out, report, progress);
    return report;
  } finally {
    progress.stop();
    await fleet.stop();
    trainer.dispose();
    // Every coordinator is stopped by now (each in its own finally). A demo's histories run to hundreds of MB.
    if (!cfg.keepData) rmSync(work, { recursive: true, force: true });
  }
}

function trainingEfficiency(
  wallMs: number,
  threads: number,
  perThread: number[],
  connectMs: number,
  evaluationMs: number,
  rounds: RoundRow[],
): { trainingShare: number; efficiency: TrainingEfficiency } {
  const perThreadTrainingMs = Array.from({ length: threads }, (_, i) => Math.round(perThread[i] ?? 0));
  const sum = perThreadTrainingMs.reduce((a, b) => a + b, 0);
  const roundsMs = rounds.reduce((n, r) => n + r.durationMs, 0);
  return {
    trainingShare: wallMs > 0 && threads > 0 ? Math.round((sum / (threads * wallMs)) * 1000) / 1000 : 0,
    efficiency: {
      threads,
      connectMs,
      roundsMs,
      evaluationMs: Math.round(evaluationMs),
      perThreadTrainingMs,
      roundIdleMs: Math.max(0, roundsMs - Math.max(0, ...perThreadTrainingMs)),
    },
  };
}

function orderMethods(methods: MethodName[]): MethodName[] {
  // retrain first: every other row is measured against it.
  return [...new Set(methods)].sort((a, b) => (a === 'retrain' ? -1 : b === 'retrain' ? 1 : 0));
}

async function startCoordinator(cfg: SimConfig, def: ModelDefinition, dir: string, seed: number): Promise<{ coordinator: Coordinator; url: string }> {
  const coordinator = await Coordinator.create({
    store: openSqliteHistory(dir),
    dataDir: dir,
    model: def,
    historyInterval: cfg.historyInterval,
    retention: cfg.retention,
    federation: {
      clientsPerRound: cfg.clientsPerRound,
      minClients: Math.max(1, Math.ceil(cfg.clientsPerRound / 2)),
      roundDeadlineMs: cfg.roundDeadlineMs,
      seed,
      hyper: { learningRate: cfg.lr, batchSize: cfg.batchSize, localEpochs: cfg.localEpochs },
      maxRoundAttempts: 3,
      waitForClientsMs: 60_000,
    },
    // Simulated devices enrol on first hello: there is no operator to issue credentials.
    enrolment: 'open',
    logger: createLogger({ level: process.env.FEDUNLEARN_LOG_LEVEL ?? 'silent' }),
  });
  const { url } = await coordinator.listen(0);
  return { coordinator, url };
}

/** Resolves once every virtual client is in the coordinator's registry; a fleet that cannot connect is an error. */
async function wholeFleet(c: Coordinator, n: number): Promise<void> {
  if (!(await c.registry.waitFor(n, 60_000))) throw new Error(`only ${c.registry.size} of ${n} virtual clients connected within 60 s`);
}

function waitForQueued(c: Coordinator): Promise<string> {
  return new Promise((resolve) => {
    const on = (job: { jobId: string }) => {
      c.off('job', on);
      resolve(job.jobId);
    };
    c.on('job', on);
  });
}

async function statsBytes(c: Coordinator): Promise<number> {
  const s = await c.store.stats();
  return s.modelBytes + s.updateBytes;
}

