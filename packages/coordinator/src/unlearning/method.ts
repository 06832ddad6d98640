import type { WeightLayout } from '@fedunlearn/protocol';
import type { ParticipantInput, RoundRecord } from '../history/store.js';
import type { HyperParameters, Missing } from '../rounds/dispatcher.js';
import type { StepArgs, StepResult, WorkCost } from '../rounds/federated-step.js';

export type MethodName = 'federaser' | 'replay' | 'retrain' | 'rollback';
export const METHOD_NAMES: readonly MethodName[] = ['federaser', 'replay', 'retrain', 'rollback'];

export interface MethodParams {
  /** FedEraser: calibration epochs are r * E (may be fractional). Default 0.5. */
  calibrationRatio?: number;
  /** FedEraser: apply the first stored round's updates as they are (computed from the initial model). Default false. */
  reuseFirstRound?: boolean;
  /** Ordinary rounds with the remaining clients after the method, counted in its cost. Default 0. */
  tuneRounds?: number;
}

/** One step of the new history that a method applied; becomes a round of the new lineage. */
export interface ReplayedRound {
  /** The round of the old lineage this step replays (0 for tuning rounds). */
  sourceRound: number;
  roundId: string;
  participants: ParticipantInput[];
  /** Clients of the source round that were expected but whose work is not in this step. */
  missing: Missing[];
  /** Participants whose update was used as stored, without fresh client work (FedAccum-style). */
  uncalibrated: string[];
  metrics: Record<string, number>;
  startedAt: number;
  closedAt: number;
  /** The model after this step. */
  weights: Float32Array;
}

/** Everything a method may use: the history to replay, the live fleet, and checkpoints. */
export interface MethodContext {
  forgotten: ReadonlySet<string>;
  /** The head lineage's rounds, ascending. */
  rounds: readonly RoundRecord[];
  /** Rounds of `rounds` whose full updates were kept (every Δt-th), i.e. FedEraser's t_1 < t_2 < ... */
  storedRounds: readonly RoundRecord[];
  layout: WeightLayout;
  topologyJson: string;
  hyper: HyperParameters;
  seed: number;
  readModel(version: string): Promise<Float32Array>;
  readUpdate(roundId: string, clientId: string): Promise<Float32Array | null>;
  /** A federated step over the live fleet (TRAIN or CALIBRATE); accepted updates are staged under a fresh round id. */
  step(args: Pick<StepArgs, 'clientIds' | 'model' | 'round' | 'kind' | 'transform'> & { hyper?: HyperParameters; seed: number }): Promise<StepResult & { roundId: string }>;
  /** Stages an update the method applied without client work (server-side replay), under `roundId`. */
  stage(roundId: string, clientId: string, update: Float32Array): Promise<void>;
  newRoundId(): string;
  progress(step: number, total: number, message: string): void;
  /** Steps already done before a restart, with the model they reached; null on a fresh run. */
  resume: { rounds: ReplayedRound[]; cost: WorkCost } | null;
  checkpoint(rounds: ReplayedRound[], cost: WorkCost): Promise<void>;
  signal: AbortSignal;
}

export interface MethodResult {
  weights: Float32Array;
  rounds: ReplayedRound[];
  cost: WorkCost;
  notes: string[];
}

/** A way to remove clients' contributions from the global model. */
export interface UnlearningMethod {
  readonly name: MethodName;
  /** Exact methods produce the model retraining would (up to the randomness of training). */
  readonly exact: boolean;
  run(ctx: MethodContext, params: MethodParams): Promise<MethodResult>;
}

export function remaining(participants: readonly { clientId: string }[], forgotten: ReadonlySet<string>): string[] {
  return participants.map((p) => p.clientId).filter((id) => !forgotten.has(id));
}
