import { newId } from '../ids.js';
import type { FlatWeights } from '@fedunlearn/protocol';
import type { AggregationStrategy } from '../aggregation/strategy.js';
import type { HistoryStore, ModelVersion } from '../history/store.js';
import type { Logger } from '../logger.js';
import type { ClientRegistry } from '../transport/client-registry.js';
import type { HyperParameters, Missing, TaskDispatcher } from './dispatcher.js';
import { federatedStep, type StepRunner, type StepTiming, type WorkCost } from './federated-step.js';
import { localClients, type FederationClients } from './federation-clients.js';
import { roundSelectionKey, selectClients } from './selection.js';

export interface FederationConfig {
  /** K: clients asked to train in each round. */
  clientsPerRound: number;
  /** The quorum: a round commits only when at least this many updates were accepted. */
  minClients: number;
  /** A round closes at this deadline with whoever answered. */
  roundDeadlineMs: number;
  /** Seeds client selection and the clients' shuffles. */
  seed: number;
  hyper: HyperParameters;
  /** Attempts of one round below quorum before runRound gives up (the next call starts again). */
  maxRoundAttempts: number;
  /** How long a round waits for enough clients to connect. */
  waitForClientsMs: number;
}

export interface RoundOutcome {
  round: number;
  roundId: string;
  model: ModelVersion;
  participants: string[];
  missing: Missing[];
  metrics: Record<string, number>;
  cost: WorkCost;
  attempts: number;
  durationMs: number;
  /** The coordinator's own time in the committed attempt; commitMs is the round's atomic history commit. */
  timing: StepTiming & { commitMs: number };
}

export class QuorumError extends Error {
  constructor(
    readonly round: number,
    readonly answered: number,
    readonly needed: number,
    /** Who was missing from the last attempt, and why. */
    readonly missing: Missing[] = [],
  ) {
    super(`round ${round}: ${answered} of the ${needed} updates needed for quorum`);
    this.name = 'QuorumError';
  }
}

/** Holds the current global model in memory, so that a round does not read it back from the store. */
export interface ModelCache {
  version: string;
  weights: FlatWeights;
}

/** The dispatch seed of a training round's attempt (each client's task seed derives from it and the client id): FedRecover
 *  (unlearning/fedrecover.ts) asks for exact updates with the seed of the round they recompute. */
export function trainingRoundSeed(seed: number, round: number, attempt: number): number {
  return seed * 1_000_003 + round * 101 + attempt;
}

/**
 * The coordinator's training round: select K connected clients (seeded), send TRAIN tasks, fold updates into a
 * streaming aggregation, stage every Δt-th round's updates durably, and commit the round with its new model version
 * atomically. A round that misses its quorum is retried with a fresh selection; nothing of it is committed.
 */
export class RoundEngine {
  constructor(
    private readonly deps: {
      store: HistoryStore;
      registry: ClientRegistry;
      dispatcher: TaskDispatcher;
      strategy: AggregationStrategy;
      config: FederationConfig;
      log: Logger;
      /** Clients that may not take part (the forgotten ones). Read once per attempt: rounds and forget jobs never
       *  overlap (the coordinator's work lock), so no tombstone appears while a round runs. */
      ineligible(): Promise<ReadonlySet<string>>;
      /** Where the candidates are connected (default: this process's registry). */
      clients?: FederationClients;
      /** How a step reaches the selected clients (default: this process's dispatcher, federatedStep). */
      step?: StepRunner;
    },
  ) {
    this.clients = deps.clients ?? localClients(deps.registry);
    this.step = deps.step ?? ((args) => federatedStep(deps.dispatcher, deps.strategy, args));
  }

  private readonly clients: FederationClients;
  private readonly step: StepRunner;

  /** Positions never change once a lineage exists: read once per lineage, not per round. */
  private readonly positions = new Map<string, number>();

  private async lineagePosition(lineage: string): Promise<number> {
    let p = this.positions.get(lineage);
    if (p === undefined) {
      p = await this.deps.store.lineagePosition(lineage);
      this.positions.set(lineage, p);
    }
    return p;
  }

  /** `startedAt` (Unix ms, default now): when the round began, as recorded; the round loop passes the start its
   *  cadence (roundIntervalMs) counts from, so that the recorded spacing is the one it kept. */
  async runRound(current: ModelCache, signal?: AbortSignal, startedAt?: number): Promise<RoundOutcome> {
    const { store, strategy, config, log } = this.deps;
    const head = await store.head();
    if (head.version !== current.version) throw new Error(`model cache ${current.version} is not the head ${head.version}`);
    const round = head.round + 1;
    const started = startedAt ?? Date.now();
    const meta = await store.meta();
    const keep = await store.keepsUpdates(round);
    let lastAnswered = 0;
    let lastMissing: Missing[] = [];
    for (let attempt = 1; attempt <= config.maxRoundAttempts; attempt++) {
      if (signal?.aborted) throw new Error('round aborted');
      // Only clients that may take part count: forgotten ones still connected must not end the wait at once.
      const ineligible = await this.deps.ineligible();
      await this.clients.waitFor(config.minClients, config.waitForClientsMs, signal, (id) => !ineligible.has(id));
      const candidates = (await this.clients.connected()).filter((id) => !ineligible.has(id));
      if (candidates.length < config.minClients) {
        log.warn({ round, connected: candidates.length, needed: config.minClients }, 'not enough clients for a round');
        lastAnswered = 0;
        lastMissing = [];
        continue;
      }
      const key = roundSelectionKey(await this.lineagePosition(head.lineage), round, attempt);
      const selected = selectClients(candidates, config.clientsPerRound, config.seed, key);
      const roundId = newId();
      log.info({ round, roundId, attempt, selected: selected.length }, 'round started');
      const step = await this.step({
        clientIds: selected,
        model: current.weights,
        modelVersion: current.version,
        topologyJson: meta.topologyJson,
        round,
        hyper: config.hyper,
        seed: trainingRoundSeed(config.seed, round, attempt),
        deadlineMs: config.roundDeadlineMs,
        ...(keep ? { stageAs: { store, roundId } } : {}),
        ...(signal ? { signal } : {}),
      });
      if (!step.weights || step.participants.length < config.minClients) {
        await store.discardStaged(roundId);
        // An uncommitted model was never published: its buffer can hold the next attempt's sum.
        if (step.weights) strategy.recycle?.(step.weights);
        lastAnswered = step.participants.length;
        lastMissing = step.missing;
        log.warn({ round, attempt, answered: step.participants.length, missing: step.missing }, 'round below quorum, retrying');
        continue;
      }
      const commitStart = performance.now();
      let model: ModelVersion;
      try {
        model = await store.commitRound({
          round,
          roundId,
          modelBefore: current.version,
          weights: step.weights,
          participants: step.participants,
          missing: step.missing,
          metrics: step.metrics,
          startedAt: started,
        });
      } catch (e) {
        // Nothing of the attempt was committed: its staged updates are garbage now, not at the next restart (a disk
        // that filled up would otherwise fill further with every retry).
        // (Only when the head did not move: a commit that landed owns them, whatever was thrown after it.)
        // (A head that cannot be read says nothing: the stagings are then left to the next open's garbage collection.)
        const now = await store.head().catch(() => null);
        if (now?.version === current.version) {
          await store.discardStaged(roundId).catch(() => undefined);
          strategy.recycle?.(step.weights);
        }
        throw e;
      }
      const commitMs = performance.now() - commitStart;
      const outcome: RoundOutcome = {
        round,
        roundId,
        model,
        participants: step.participants.map((p) => p.clientId),
        missing: step.missing,
        metrics: step.metrics,
        cost: step.cost,
        attempts: attempt,
        durationMs: Date.now() - started,
        timing: { ...step.timing, commitMs },
      };
      const replaced = current.weights.values;
      current.version = model.version;
      current.weights = { layout: current.weights.layout, values: step.weights };
      // The cache held the only reference to the replaced model (its blob was written at its commit, tasks were
      // encoded from it into their own frames, Coordinator.model() hands out copies): the next round may sum into it.
      strategy.recycle?.(replaced);
      log.info({ round, version: model.version, participants: outcome.participants.length, missing: step.missing.length, ms: outcome.durationMs }, 'round committed');
      return outcome;
    }
    throw new QuorumError(round, lastAnswered, config.minClients, lastMissing);
  }
}
