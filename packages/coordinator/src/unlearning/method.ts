import type { WeightLayout } from '@fedunlearn/protocol';
import type { ParticipantInput, RoundRecord } from '../history/store.js';
import type { HyperParameters, Missing } from '../rounds/dispatcher.js';
import type { StepArgs, StepResult, WorkCost } from '../rounds/federated-step.js';

export type MethodName = 'federaser' | 'replay' | 'retrain' | 'rollback' | 'sifu' | 'fedrecover';
export const METHOD_NAMES: readonly MethodName[] = ['federaser', 'replay', 'retrain', 'rollback', 'sifu', 'fedrecover'];

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
  /** SIFU: the unlearning budget epsilon, in (0, 1) (the Gaussian mechanism's range). Default 0.5. */
  epsilon?: number;
  /** SIFU: the budget's delta, in (0, 1). Default 1e-5. */
  delta?: number;
  /** SIFU: the standard deviation of the Gaussian noise added to the rolled-back model, per weight (weight units).
   *  The budget on the accumulated bound is epsilon * sigma / sqrt(2 ln(1.25/delta)). Default 0.05 (the paper's). */
  sigma?: number;
  /** SIFU: B, the Lipschitz constant assumed for the map one round applies to the global model (local training and
   *  the weighted mean). Default 1 (non-expansive; the paper's experiments with regularisation 0). */
  lipschitz?: number;
  /** SIFU: L, the smoothness of the clients' losses; when given, B = (1 + learningRate * L)^K per round, K the most
   *  local steps a participant took (the non-convex bound; grows fast). */
  smoothness?: number;
  /** FedRecover (Cao et al. 2023, section 4): T_w, the first replayed rounds in which every client computes its exact
   *  update (warm-up: they fill the L-BFGS memories). */
  warmupRounds?: number;
  /** FedRecover: T_c, after the warm-up every T_c-th round is a periodic correction (exact updates). */
  correctionPeriod?: number;
  /** FedRecover: T_f, the last replayed rounds in which every client computes its exact update (final tuning). */
  finalTuningRounds?: number;
  /** FedRecover: τ, an estimated update with a coordinate above this in absolute value (our update scale: a weight
   *  change in one round) is abnormal, and that client is asked for its exact update. */
  abnormalityThreshold?: number;
  /** FedRecover: s, the L-BFGS pairs kept per client (the paper's buffer size). */
  lbfgsMemory?: number;
}

/** What a SIFU job certifies (unlearning/sifu.ts): the job report's `certificate`. */
export interface SifuCertificate {
  epsilon: number;
  delta: number;
  /** The noise added (0 when the rollback needed none: the model predates every forgotten client). */
  sigma: number;
  /** sqrt(2 ln(1.25/delta)) / epsilon: sigma per unit of bound. */
  noiseMultiplier: number;
  /** Psi*: the largest bound sigma covers. */
  budget: number;
  /** The round whose model the job rolled back to (0: the initial model). */
  rollbackRound: number;
  rollbackModel: string;
  /** max over the forgotten clients of Psi(rollbackRound, c): the L2 distance bound to the model without them. */
  bound: number;
  boundByClient: Record<string, number>;
  /** The bound at the head before the job (Infinity when a round without a kept sensitivity stands in the way). */
  headBound: number;
  /** The sigma that would have kept the head itself (null when its bound is infinite). */
  sigmaToKeepHead: number | null;
  /** The constants the bound used. */
  constants: { lipschitz?: number; smoothness?: number; learningRate?: number };
  /** What the certificate rests on, in plain words, including where our models do not meet it. */
  assumptions: string[];
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
  if (method === 'sifu') {
    out.epsilon = params.epsilon ?? SIFU_DEFAULT_PARAMS.epsilon;
    out.delta = params.delta ?? SIFU_DEFAULT_PARAMS.delta;
    out.sigma = params.sigma ?? SIFU_DEFAULT_PARAMS.sigma;
    out.lipschitz = params.lipschitz ?? SIFU_DEFAULT_PARAMS.lipschitz;
    if (params.smoothness !== undefined) out.smoothness = params.smoothness;
  }
  if (method === 'fedrecover') {
    out.warmupRounds = params.warmupRounds ?? FEDRECOVER_DEFAULTS.warmupRounds;
    out.correctionPeriod = params.correctionPeriod ?? FEDRECOVER_DEFAULTS.correctionPeriod;
    out.finalTuningRounds = params.finalTuningRounds ?? FEDRECOVER_DEFAULTS.finalTuningRounds;
    out.abnormalityThreshold = params.abnormalityThreshold ?? FEDRECOVER_DEFAULTS.abnormalityThreshold;
    out.lbfgsMemory = params.lbfgsMemory ?? FEDRECOVER_DEFAULTS.lbfgsMemory;
  }
  return out;
}

/** SIFU's defaults: epsilon 0.5, delta 1e-5, sigma 0.05 (the reference experiments' noise), lipschitz 1. */
export const SIFU_DEFAULT_PARAMS = { epsilon: 0.5, delta: 1e-5, sigma: 0.05, lipschitz: 1 } as const;

/**
 * FedRecover's defaults. T_w = 20, T_c = 10, T_f = 5 and s = 2 are the paper's settings (Cao et al., IEEE S&P 2023,
 * section 6.1, as we read it; the text was not at hand offline to re-check). τ is ours: the paper thresholds its
 * gradient scale, ours applies to a round's update (a weight change), where |coordinate| is typically 1e-3 to 1e-1 for
 * the built-in models, so 1 flags only estimates that went astray. A history shorter than T_w + T_f rounds is then
 * replayed with exact updates only: pass smaller values for short histories.
 */
export const FEDRECOVER_DEFAULTS = { warmupRounds: 20, correctionPeriod: 10, finalTuningRounds: 5, abnormalityThreshold: 1, lbfgsMemory: 2 } as const;

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
  /** FedRecover: participants whose update the server estimated (stored update + L-BFGS Hessian-vector product),
   *  without client work. Absent for the other methods. */
  estimated?: string[];
  /** FedRecover: of `estimated`, those whose exact update this step asked for (warm-up, correction, abnormal, final
   *  tuning) but who were offline or did not answer: their estimate was applied instead. */
  keptEstimate?: string[];
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
  /** The clients of `clientIds` connected now (a method that can do without some clients asks only those). */
  connected(clientIds: readonly string[]): string[];
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
  /** SIFU: what the job certifies (the report's `certificate`). */
  certificate?: SifuCertificate;
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
