import cliProgress from 'cli-progress';

/** Where progress goes: process.stderr, or anything with its write and isTTY (tests). */
export interface ProgressStream {
  write(s: string): unknown;
  isTTY?: boolean;
}

/**
 * Progress for long work: a live bar on a terminal, one line per change elsewhere (CI logs), nothing when quiet.
 * Every line has one form, `label value/total units[ extra][ — message]`: a task whose total is not known yet (a
 * forget job before its plan) prints nothing until it is, a line identical to the previous one is not repeated, and
 * stop() ends a task with `label done in S s`.
 */
export class Progress {
  private bar: cliProgress.SingleBar | null = null;
  private label = '';
  private unit = '';
  private total = 0;
  private value = 0;
  private started = 0;
  private active = false;
  private last = '';
  private readonly tty: boolean;

  constructor(
    private readonly quiet: boolean,
    private readonly out: ProgressStream = process.stderr,
  ) {
    this.tty = Boolean(out.isTTY);
  }

  log(line: string): void {
    if (this.quiet) return;
    this.stopBar();
    this.out.write(`${line}\n`);
  }

  /** Begins a task of `total` units (0: not known yet; update sets it). */
  start(label: string, total: number, unit: string): void {
    this.stop();
    this.label = label;
    this.unit = unit;
    this.total = total;
    this.value = 0;
    this.started = performance.now();
    this.active = true;
    this.last = '';
    if (this.quiet) return;
    if (this.tty) {
      this.bar = new cliProgress.SingleBar(
        { format: `${label.padEnd(22)} [{bar}] {value}/{total} ${unit}s {extra} | {duration_formatted}`, hideCursor: true, stream: process.stderr },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(Math.max(total, 1), 0, { extra: '' });
    } else if (total > 0) {
      this.line(0, total, '');
    }
  }

  tick(extra: Record<string, number> = {}): void {
    this.update(this.value + 1, this.total, extra);
  }

  /** `message` says what the current unit is (e.g. a job's step), shown after the count. */
  update(value: number, total: number, extra: Record<string, number> = {}, message = ''): void {
    this.value = value;
    this.total = total;
    if (this.quiet || total <= 0) return;
    const text = Object.entries(extra).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(' ');
    if (this.bar) {
      this.bar.setTotal(total);
      this.bar.update(value, { extra: [text, message].filter(Boolean).join(' ') });
    } else {
      this.line(value, total, [text, message ? `— ${message}` : ''].filter(Boolean).join(' '));
    }
  }

  /** Ends the current task (once: a second stop prints nothing). */
  stop(): void {
    const wasActive = this.active;
    this.active = false;
    this.stopBar();
    if (!wasActive || this.quiet || this.tty) return;
    const s = ((performance.now() - this.started) / 1000).toFixed(1);
    this.out.write(`${this.label} done in ${s} s\n`);
  }

  private stopBar(): void {
    this.bar?.stop();
    this.bar = null;
  }

  private line(value: number, total: number, rest: string): void {
    const l = `${this.label} ${value}/${total} ${this.unit}s${rest ? ` ${rest}` : ''}`;
    if (l === this.last) return;
    this.last = l;
    this.out.write(`${l}\n`);
  }
}
