import seedrandom from 'seedrandom';

/**
 * Seeded choice of `k` of the candidates (a Fisher-Yates shuffle of the sorted ids, keyed by `${seed}/${key}`): the
 * same seed and key always pick the same clients from the same candidates, whatever order they connected in.
 */
export function selectClients(candidates: readonly string[], k: number, seed: number, key: string): string[] {
  const ids = [...candidates].sort();
  const rng = seedrandom(`${seed}/${key}`);
  for (let i = ids.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [ids[i], ids[j]] = [ids[j]!, ids[i]!];
  }
  return ids.slice(0, Math.max(0, Math.min(k, ids.length)));
}

/**
 * The selection key of one attempt of a training round: the lineage's position (HistoryStore.lineagePosition, 0 for
 * the first lineage), the round within it (1-based) and the attempt (1-based). Nothing random or time-dependent
 * enters it (not the lineage id, not a job id), so the same seed and schedule select the same clients in every run;
 * the tuning rounds of a forget job are rounds of the lineage the job creates and use the same key.
 */
export function roundSelectionKey(lineagePosition: number, round: number, attempt: number): string {
  for (const [name, v, min] of [['lineagePosition', lineagePosition, 0], ['round', round, 1], ['attempt', attempt, 1]] as const) {
    if (!Number.isInteger(v) || v < min) throw new RangeError(`${name} must be an integer >= ${min}, got ${v}`);
  }
  return `lineage#${lineagePosition}/${round}/${attempt}`;
}
