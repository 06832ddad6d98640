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
 * - the model the head lineage's first round started from: retrain restarts from it, and so do FedEraser and replay
 *   with `fullHistory`;
 * - M^{t0} of every client of the head lineage: the model its first round started from. A forget job for that client
 *   starts there (FedEraser and replay from t0, rollback: unlearning/replay.ts `replayStart`, retrain.ts), so it is
 *   never pruned; there is one such model per round in which a client first took part, so few in a federation
 *   whose clients mostly join early;
 * - the versions named by finished jobs' reports (before/after);
 * - the model before each SIFU segment of the head lineage (the rounds from a sifu job's t0 to its perturbation),
 *   where a later job that would start inside the segment starts instead.
 */
export function modelsToPrune(models: readonly ModelVersion[], ctx: RetentionContext, policy: ModelRetentionPolicy): string[] {
  if (policy.keepLast <= 0) return [];
  const keep = new Set<string>([ctx.head, ...ctx.reported]);
  const first = ctx.headRounds[0];
  if (first?.modelBefore) keep.add(first.modelBefore);
  const seen = new Set<string>();
  for (const r of ctx.headRounds) {
    for (const p of r.participants) {
      if (seen.has(p.clientId)) continue;
      seen.add(p.clientId);
      if (r.modelBefore) keep.add(r.modelBefore);
    }
  }
  // A SIFU perturbation (a round without participants that names its segment's t0): a later job that would start
  // inside the segment starts before it instead (unlearning/sifu.ts startOutsideSegments), from this model.
  for (const r of ctx.headRounds) {
    const start = r.metrics['sifuSegmentStart'];
    if (r.participants.length > 0 || start === undefined) continue;
    const before = ctx.headRounds.find((q) => q.round >= start)?.modelBefore;
    if (before) keep.add(before);
  }
  for (const m of models.slice(-policy.keepLast)) keep.add(m.version);
  const out: string[] = [];
  for (const m of models) {
    if (m.erasedAt !== null || m.prunedAt !== null || keep.has(m.version) || m.cause === 'init') continue;
    if (policy.keepEvery > 0 && m.cause === 'round' && m.round % policy.keepEvery === 0) continue;
    out.push(m.version);
  }
  return out;
}
