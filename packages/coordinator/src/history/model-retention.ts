import type { ModelVersion, RoundRecord } from './store.js';

/**
 * Which model versions keep their weights. A coordinator commits a model version every round; keeping all of them
 * fills a disk (627 rounds, 727 versions and 622 MB in six minutes of back-to-back rounds), while the unlearning
 * methods need only a few of them. Pruned versions keep their records (lineage, sha256, round), like erased ones, so
 * the history stays auditable; only their blobs go.
 */
export interface ModelRetentionPolicy {
  /** The last N versions (creation order, every lineage) keep their weights; 0 keeps every version (no pruning). */
  keepLast: number;
  /** Training-round versions whose round is a multiple of this keep their weights too (checkpoints); 0: none. */
  keepEvery: number;
}

/** What the policy must never prune, whatever N and k say. */
export interface RetentionContext {
  head: string;
  /** The head lineage's rounds, ascending: the history the next forget job replays. */
  headRounds: readonly RoundRecord[];
  /** Versions a finished job's report names as its model before and after: the receipt must stay checkable. */
  reported: ReadonlySet<string>;
}

/**
 * The versions to prune now under `policy`: every version that still has its weights and is not kept by it. Always
 * kept, because a forget job or an audit reads them:
 * - the head (the live model) and every 'init' version (the model retraining starts from);
 * - the model the head lineage's first round started from: FedEraser and replay calibrate from it
 *   (unlearning/federaser.ts, replay.ts: `rounds[0].modelBefore`), and retrain restarts from it;
 * - the versions named by finished jobs' reports (before/after).
 * Rollback (retrain from M^{t0}, the model before the forgotten client's first round) restarts from the latest kept
 * model before t0 when M^{t0} itself was pruned: still exact, only more rounds to redo (unlearning/retrain.ts).
 */
export function modelsToPrune(models: readonly ModelVersion[], ctx: RetentionContext, policy: ModelRetentionPolicy): string[] {
  if (policy.keepLast <= 0) return [];
  const keep = new Set<string>([ctx.head, ...ctx.reported]);
  const first = ctx.headRounds[0];
  if (first?.modelBefore) keep.add(first.modelBefore);
  for (const m of models.slice(-policy.keepLast)) keep.add(m.version);
  const out: string[] = [];
  for (const m of models) {
    if (m.erasedAt !== null || m.prunedAt !== null || keep.has(m.version) || m.cause === 'init') continue;
    if (policy.keepEvery > 0 && m.cause === 'round' && m.round % policy.keepEvery === 0) continue;
    out.push(m.version);
  }
  return out;
}
