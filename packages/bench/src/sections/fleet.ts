import type { SectionOptions, SectionResult } from '../section.js';

/** Placeholder: helper BENCHSIM provides the real fleet section; this file is replaced at merge. */
export async function run(_opts: SectionOptions): Promise<SectionResult> {
  throw new Error('not yet');
}
