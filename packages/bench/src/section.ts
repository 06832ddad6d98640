/** What every benchmark section receives from the CLI. */
export interface SectionOptions {
  /** A run of well under a minute for all sections together: smaller sizes, fewer repeats. */
  quick: boolean;
  log: (msg: string) => void;
}

/** A section's figures: plain JSON (numbers, strings, nested objects), written verbatim into results.json. */
export type SectionResult = Record<string, unknown>;

export type SectionRun = (opts: SectionOptions) => Promise<SectionResult>;
