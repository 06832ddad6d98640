/** What every benchmark section is given. */
export interface SectionOptions {
  /** Small sizes for the smoke test; figures are still measured, only over less work. */
  quick: boolean;
  log: (msg: string) => void;
}
