import { QuorumError } from './rounds/round-engine.js';

/**
 * Why a training round attempt failed, as the `reason` label of fedunlearn_rounds_failed_total and /healthz say it:
 * - `quorum`: too few clients answered (dropouts; the round loop pauses and retries, the service is not degraded);
 * - `disk_full`: a blob or the database could not be written for lack of space (ENOSPC, EDQUOT, SQLITE_FULL);
 * - `store`: any other error of the history store or the file system;
 * - `invalid_model`: the aggregate could not be stored as a model (a non-finite value);
 * - `internal`: anything else.
 */
export type RoundFailureReason = 'quorum' | 'disk_full' | 'store' | 'invalid_model' | 'internal';

export const ROUND_FAILURE_REASONS: readonly RoundFailureReason[] = ['quorum', 'disk_full', 'store', 'invalid_model', 'internal'];

export function roundFailureReason(e: unknown): RoundFailureReason {
  if (e instanceof QuorumError) return 'quorum';
  // The cause chain too: a store may wrap the file system's error.
  const chain: unknown[] = [];
  for (let x: unknown = e; x instanceof Error && chain.length < 8; x = (x as Error & { cause?: unknown }).cause) chain.push(x);
  const codes = chain.map((x) => (x as { code?: unknown }).code).filter((c): c is string => typeof c === 'string');
  const messages = chain.map((x) => (x as Error).message).join(' | ');
  if (codes.some((c) => c === 'ENOSPC' || c === 'EDQUOT' || c === 'SQLITE_FULL') || /ENOSPC|database or disk is full/.test(messages)) return 'disk_full';
  if (chain.some((x) => (x as Error).name === 'HistoryError' || (x as Error).name === 'SqliteError') || codes.some((c) => /^E[A-Z]+$/.test(c) || c.startsWith('SQLITE_'))) return 'store';
  if (chain.some((x) => x instanceof RangeError) && /non-finite/.test(messages)) return 'invalid_model';
  return 'internal';
}

/** Back-off before the next attempt after `consecutive` failed ones (1, 2, ...): base, 2 base, 4 base ... up to max. */
export function roundRetryDelayMs(consecutive: number, baseMs: number, maxMs: number): number {
  return Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(consecutive - 1, 0), 30));
}
