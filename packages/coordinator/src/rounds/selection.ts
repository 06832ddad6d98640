import seedrandom from 'seedrandom';

/**
 * Seeded choice of `k` of the candidates: the same seed, lineage, round and attempt always pick the same clients
 * from the same candidates, whatever order they connected in.
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
