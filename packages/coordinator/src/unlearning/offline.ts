/** Settings and progress of forget jobs whose clients are offline (kept apart so that config.ts can read them cheaply). */

/**
 * What a job does about clients it needs that are not connected when a replay step starts (JobWaiting while it
 * waits; the setting `jobOfflinePolicy`):
 * - 'fail': after the wait, a step that still lacks its quorum (min(minClients, its clients)) fails the job with
 *   nothing changed; offline clients of a step that has its quorum are left out of it.
 * - 'server-side': after the wait, a calibration step completes each offline client from its update stored in the
 *   replayed round (uncalibrated, named in the report); exact methods (retrain, rollback) never do, and fail instead.
 */
export const OFFLINE_POLICIES = ['fail', 'server-side'] as const;
export type OfflinePolicy = (typeof OFFLINE_POLICIES)[number];

/** How long, in all, a job waits for the clients of its steps to connect (ms), and what it does then. */
export interface JobOfflineSettings {
  waitMs: number;
  policy: OfflinePolicy;
}

export const DEFAULT_JOB_OFFLINE: Readonly<JobOfflineSettings> = { waitMs: 300_000, policy: 'fail' };

/** A job's progress while a step waits for its clients (JobRecord.progress.waiting). */
export interface JobWaiting {
  /** Clients of the step that are not connected (at most 50 listed; `missing` counts them all). */
  clientIds: string[];
  missing: number;
  /** Clients of the step connected now, of `of`; the step starts once `needed` are. */
  connected: number;
  of: number;
  needed: number;
  /** Unix ms: the wait began, and when the job's wait budget runs out and `policy` applies. */
  since: number;
  until: number;
  policy: OfflinePolicy;
}
