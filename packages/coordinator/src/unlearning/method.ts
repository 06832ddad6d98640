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
  /**
   * `federaser` and `replay`: start from the initial model and replay every stored round, instead of starting from the
   * model before t0 (the first round a forgotten client took part in) and replaying the stored rounds from t0 on.
   * Only for comparisons (the simulation's full-history rows): the rounds before t0 never saw the forgotten clients,
   * so replaying them is work that cannot remove anything. Default false.
   */
  fullHistory?: boolean;
}

/** MethodParams with every default filled in: what a job actually applies (its report shows these). */
export type ResolvedParams = Required<Pick<MethodParams, 'tuneRounds'>> & MethodParams;

/** The parameters `method` applies given `params`: defaults filled in, those it does not read left out. */
export function resolveParams(method: MethodName, params: MethodParams): ResolvedParams {
  const out: ResolvedParams = { tuneRounds: params.tuneRounds ?? 0 };
  if (method === 'federaser') {
    out.calibrationRatio = params.calibrationRatio ?? DEFAULT_CALIBRATION_RATIO;
    out.reuseFirstRound = params.reuseFirstRound ?? false;
  }
  if (method === 'federaser' || method === 'replay') out.fullHistory = params.fullHistory ?? false;
  return out;
}

/** FedEraser's r (Liu et al. 2021, section 4.2: calibration training runs r * E local epochs; the paper uses 0.5). */
export const DEFAULT_CALIBRATION_RATIO = 0.5;

/** One step of the new history that a method applied; becomes a round of the new lineage. */
export interface ReplayedRound {
  /** The round of the old lineage this step replays (0 for tuning rounds). */
  sourceRound: number;
  roundId: string;
  participants: ParticipantInput[];
  /** Clients of the source round that were expected but whose work is not in this step. */
  missing: Missing[];
  /** Participants whose update was used as stored, without fresh client work (FedAccum-style): every participant of
   *  a server-side replay, and under the offline policy 'server-side' the clients a calibration step completed from
   *  their stored updates because they stayed offline. */
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
  /** Index in `rounds` of t0, the first round any forgotten client took part in. Every model before it never saw them:
   *  rounds[0..firstContribution) are exact and may be kept as they are (MethodResult.kept). The engine runs a method
   *  only when such a round exists (otherwise there is no contribution to remove). */
  firstContribution: number;
  layout: WeightLayout;
  topologyJson: string;
  hyper: HyperParameters;
  seed: number;
  readModel(version: string): Promise<Float32Array>;
  readUpdate(roundId: string, clientId: string): Promise<Float32Array | null>;
  /** A federated step over the live fleet (TRAIN or CALIBRATE); accepted updates are staged under a fresh round id. */
  step(
    args: Pick<StepArgs, 'clientIds' | 'model' | 'round' | 'kind' | 'transform' | 'calibrateTo'> & {
      hyper?: HyperParameters;
      seed: number;
      /** The stored round this step recomputes: under the offline policy 'server-side', a calibration step completes
       *  the clients that stayed offline from their updates stored in it. */
      source?: RoundRecord;
    },
  ): Promise<StepResult & { roundId: string; serverSide: string[] }>;
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
  /** Leading rounds of MethodContext.rounds carried over into the new lineage as they are (the exact prefix before
   *  t0, whose models and updates are referenced, not recomputed); `rounds` follow them. */
  kept: number;
  /** The model the first of `rounds` started from (an existing version). */
  startedFrom: string;
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
