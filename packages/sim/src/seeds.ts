import { mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { SimConfig } from './config.js';
import { Progress } from './progress.js';
import { aggregateSeeds, writeSeedsReport, type SeedsReport } from './report/seeds.js';
import { runSimulation, type SimReport } from './run.js';

/**
 * The same scenario once per seed (OUT/seed-S holds each run's own report), then every row's mean and spread over the
 * seeds in OUT/seeds.json, seeds.md and seeds.svg. Seeds run one after another: each run already uses every core.
 * @throws RangeError on an empty or repeated seed list; a run's error stops the series.
 */
export async function runSeeds(cfg: SimConfig, seeds: number[]): Promise<{ reports: SimReport[]; aggregate: SeedsReport }> {
  if (seeds.length === 0) throw new RangeError('--seeds: no seed given');
  if (new Set(seeds).size !== seeds.length) throw new RangeError(`--seeds: ${seeds.join(',')} repeats a seed`);
  for (const s of seeds) if (!Number.isInteger(s)) throw new RangeError(`--seeds: ${s} is not an integer`);
  const out = resolve(cfg.out);
  mkdirSync(out, { recursive: true });
  const progress = new Progress(cfg.quiet);
  const reports: SimReport[] = [];
  for (const [i, seed] of seeds.entries()) {
    progress.log(`seed ${seed} (${i + 1} of ${seeds.length})`);
    const t = Date.now();
    reports.push(await runSimulation({ ...cfg, seed, out: join(out, `seed-${seed}`) }));
    progress.log(`seed ${seed} done in ${((Date.now() - t) / 1000).toFixed(0)} s`);
  }
  const aggregate = aggregateSeeds(reports);
  await writeSeedsReport(out, aggregate, progress);
  return { reports, aggregate };
}
