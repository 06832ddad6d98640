import { isDeepStrictEqual } from 'node:util';
import { sameLayout, type WeightLayout } from '@fedunlearn/protocol';
import {
  HistoryError,
  type CommitUnlearningInput,
  type FederationMeta,
  type HistoryConfig,
  type MissingClient,
  type ModelVersion,
  type ParticipantInput,
} from './store.js';

/**
 * The rules every HistoryStore enforces, whatever keeps its rows: input validation (config, participants, missing
 * lists, round numbers and ids, job steps), resuming a federation (topology, layout and config must match), round
 * order against the head, and the lineage resolution of an unlearning commit. A store calls these and keeps only its
 * storage (SQL and bytes); every store therefore refuses the same requests with the same HistoryError messages, which
 * the contract suite (store-contract.ts) checks.
 */

const RETENTIONS: ReadonlySet<string> = new Set(['fp32', 'fp16', 'int8', 'norms']);
const MISSING_REASONS: ReadonlySet<string> = new Set(['offline', 'disconnected', 'deadline', 'rejected', 'failed']);

/** A participant as validated: norms as float64 (stored exactly). */
export interface CheckedParticipant {
  clientId: string;
  numExamples: number;
  norms: Float64Array;
  metrics?: Record<string, number>;
}

/** Throws HistoryError unless historyInterval is a positive integer and retention a known one. */
export function checkConfig(c: HistoryConfig): void {
  if (!Number.isInteger(c.historyInterval) || c.historyInterval < 1) throw new HistoryError(`historyInterval must be a positive integer, got ${c.historyInterval}`);
  if (!RETENTIONS.has(c.retention)) throw new HistoryError(`unknown retention ${String(c.retention)}`);
}

/** The topology as a value (compared structurally, so whitespace does not matter); HistoryError if not JSON. */
export function parseTopology(json: string): unknown {
  try {
    return JSON.parse(json) as unknown;
  } catch {
    throw new HistoryError('topologyJson is not valid JSON');
  }
}

function describeLayout(l: WeightLayout): string {
  return `${l.specs.length} layers, ${l.totalSize} values`;
}

/** On resume: the stored federation must have the topology, layout and config `open` was given (HistoryError). */
export function checkResume(stored: FederationMeta, init: { topologyJson: string; layout: WeightLayout; config: HistoryConfig }): void {
  if (!isDeepStrictEqual(parseTopology(stored.topologyJson), parseTopology(init.topologyJson))) {
    throw new HistoryError('this data directory holds a federation with a different topology; use another data directory');
  }
  if (!sameLayout(stored.layout, init.layout)) {
    throw new HistoryError(`this data directory holds a federation whose model layout differs (${describeLayout(stored.layout)} stored, ${describeLayout(init.layout)} given)`);
  }
  if (stored.config.historyInterval !== init.config.historyInterval || stored.config.retention !== init.config.retention) {
    throw new HistoryError(
      `this federation keeps history with historyInterval ${stored.config.historyInterval} / retention ${stored.config.retention}; ` +
        `${init.config.historyInterval} / ${init.config.retention} was given (the schedule cannot change mid-history)`,
    );
  }
}

/** A training round commits on the head: its number is head.round + 1 and it started from the head (HistoryError). */
export function checkRoundOrder(head: ModelVersion, input: { round: number; modelBefore: string }): void {
  if (input.round !== head.round + 1) {
    throw new HistoryError(`round ${input.round} is out of order: lineage ${head.lineage} has completed ${head.round} rounds, the next is ${head.round + 1}`);
  }
  if (input.modelBefore !== head.version) {
    throw new HistoryError(`round ${input.round} started from model ${input.modelBefore}, but the head is ${head.version}`);
  }
}

/** A new round id: non-empty and not committed yet (`committed` is the store's lookup). */
export function checkNewRoundId(roundId: string, committed: boolean): void {
  if (typeof roundId !== 'string' || roundId === '') throw new HistoryError('a round needs a non-empty roundId');
  if (committed) throw new HistoryError(`round id ${roundId} is already committed`);
}

/** Participants: each client once, a non-negative integer example count, one finite non-negative norm per layer. */
export function checkParticipants(ps: ParticipantInput[], layers: number, ctx: string): CheckedParticipant[] {
  const seen = new Set<string>();
  return ps.map((p) => {
    if (seen.has(p.clientId)) throw new HistoryError(`${ctx}: client ${p.clientId} is listed twice`);
    seen.add(p.clientId);
    if (!Number.isInteger(p.numExamples) || p.numExamples < 0) throw new HistoryError(`${ctx}: client ${p.clientId} has numExamples ${p.numExamples}`);
    const norms = Float64Array.from(p.norms);
    if (norms.length !== layers) throw new HistoryError(`${ctx}: client ${p.clientId} has ${norms.length} norms for ${layers} layers`);
    if (norms.some((n) => !Number.isFinite(n) || n < 0)) throw new HistoryError(`${ctx}: client ${p.clientId} has a negative or non-finite norm`);
    return p.metrics === undefined ? { clientId: p.clientId, numExamples: p.numExamples, norms } : { clientId: p.clientId, numExamples: p.numExamples, norms, metrics: p.metrics };
  });
}

/** A round's missing list: known reasons, each client once, and none of them also a participant. */
export function checkMissing(missing: MissingClient[], participants: readonly { clientId: string }[], ctx: string): MissingClient[] {
  const taken = new Set(participants.map((p) => p.clientId));
  const seen = new Set<string>();
  return missing.map((m) => {
    if (typeof m.clientId !== 'string' || m.clientId === '') throw new HistoryError(`${ctx}: a missing client has no id`);
    if (!MISSING_REASONS.has(m.reason)) throw new HistoryError(`${ctx}: missing client ${m.clientId} has unknown reason '${String(m.reason)}'`);
    if (taken.has(m.clientId)) throw new HistoryError(`${ctx}: client ${m.clientId} is both a participant and missing`);
    if (seen.has(m.clientId)) throw new HistoryError(`${ctx}: client ${m.clientId} is missing twice`);
    seen.add(m.clientId);
    return m.detail === undefined ? { clientId: m.clientId, reason: m.reason } : { clientId: m.clientId, reason: m.reason, detail: String(m.detail) };
  });
}

/** A job step number: a non-negative integer. */
export function checkJobStep(jobId: string, step: number): void {
  if (!Number.isInteger(step) || step < 0) throw new HistoryError(`job ${jobId}: step ${step} is not a non-negative integer`);
}

/** The validated rounds of an unlearning commit. */
export interface CheckedUnlearning {
  participants: CheckedParticipant[][];
  missing: MissingClient[][];
  /** Intermediate models by round number. */
  intermediates: Map<number, Float32Array>;
}

/**
 * Validates an unlearning commit's rounds: positive ascending round numbers, fresh unique round ids (`committed` is
 * the store's lookup), participants and missing lists, and intermediate models only for replayed rounds other than
 * the last (whose model is the job's result). Throws HistoryError.
 */
export async function checkUnlearning(input: CommitUnlearningInput, layers: number, committed: (roundId: string) => boolean | Promise<boolean>): Promise<CheckedUnlearning> {
  const rounds = input.rounds;
  const ctx = `unlearning job ${input.jobId}`;
  const seenIds = new Set<string>();
  for (const [i, r] of rounds.entries()) {
    if (!Number.isInteger(r.round) || r.round < 1) throw new HistoryError(`${ctx}: round number ${r.round} is not a positive integer`);
    const prev = rounds[i - 1];
    if (prev && r.round <= prev.round) throw new HistoryError(`${ctx}: rounds must ascend (${prev.round} then ${r.round})`);
    if (seenIds.has(r.roundId)) throw new HistoryError(`${ctx}: round id ${r.roundId} is given twice`);
    seenIds.add(r.roundId);
    checkNewRoundId(r.roundId, typeof r.roundId === 'string' && r.roundId !== '' && (await committed(r.roundId)));
  }
  const participants = rounds.map((r) => checkParticipants(r.participants, layers, `${ctx}, round ${r.round}`));
  const missing = rounds.map((r, i) => checkMissing(r.missing ?? [], participants[i]!, `${ctx}, round ${r.round}`));
  const intermediates = new Map<number, Float32Array>();
  const last = rounds[rounds.length - 1];
  for (const m of input.intermediateModels ?? []) {
    if (!rounds.some((r) => r.round === m.round)) throw new HistoryError(`${ctx}: intermediate model for round ${m.round}, which is not replayed`);
    if (m.round === last?.round) throw new HistoryError(`${ctx}: the model after the last replayed round is the job's result, not an intermediate model`);
    if (intermediates.has(m.round)) throw new HistoryError(`${ctx}: two intermediate models for round ${m.round}`);
    intermediates.set(m.round, m.weights);
  }
  return { participants, missing, intermediates };
}

/** What the lineage resolution asks of the store. */
export interface LineageOps {
  /** Throws HistoryError when `version` is not a recorded model version. */
  requireModel(version: string, ctx: string): void | Promise<void>;
  /** Plans a new model version of the new lineage (written by the commit) and returns its version id. */
  create(weights: Float32Array, parent: string, round: number): Promise<string>;
}

/**
 * The lineage of an unlearning commit: for each replayed round, the model it started from and the one it ended at.
 * A round's modelBefore '' is the previous round's modelAfter (null for the first: unknown); a named one must exist
 * and continue the previous round. The last round's model is `input.weights` (parent: the head it replaces), an
 * intermediate round's its intermediate model (parent: the model it started from, else the head), any other round
 * names an existing modelAfter or none (null). With no rounds, the result alone is created (round 0). Returns the
 * resolved versions per round and the version of the result (the new head). Throws HistoryError.
 */
export async function resolveLineage(
  input: CommitUnlearningInput,
  intermediates: ReadonlyMap<number, Float32Array>,
  oldHead: ModelVersion,
  ops: LineageOps,
): Promise<{ resolved: { before: string | null; after: string | null }[]; result: string }> {
  const ctx = `unlearning job ${input.jobId}`;
  const rounds = input.rounds;
  const resolved: { before: string | null; after: string | null }[] = [];
  let previousAfter: string | null = null;
  for (let i = 0; i < rounds.length; i++) {
    const r = rounds[i]!;
    const isLast = i === rounds.length - 1;
    let before: string | null;
    if (r.modelBefore === '') before = previousAfter;
    else {
      await ops.requireModel(r.modelBefore, `${ctx}, round ${r.round}`);
      if (previousAfter !== null && previousAfter !== r.modelBefore) {
        throw new HistoryError(`${ctx}: round ${r.round} starts from ${r.modelBefore}, but the replayed round before it ended at ${previousAfter}`);
      }
      before = r.modelBefore;
    }
    const explicitAfter = r.modelAfter ?? '';
    let after: string | null;
    const weights = isLast ? input.weights : intermediates.get(r.round);
    if (weights) {
      if (explicitAfter !== '') throw new HistoryError(`${ctx}: round ${r.round} names modelAfter ${explicitAfter} but its model is created by this commit`);
      after = await ops.create(weights, isLast ? oldHead.version : (before ?? oldHead.version), r.round);
    } else if (explicitAfter !== '') {
      await ops.requireModel(explicitAfter, `${ctx}, round ${r.round}`);
      after = explicitAfter;
    } else after = null;
    resolved.push({ before, after });
    previousAfter = after;
  }
  const result = rounds.length > 0 ? resolved[resolved.length - 1]!.after! : await ops.create(input.weights, oldHead.version, 0);
  return { resolved, result };
}
