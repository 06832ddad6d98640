import cliProgress from 'cli-progress';

/**
 * Progress for long work: a live bar on a terminal, one line per step elsewhere (CI logs), nothing when quiet.
 */
export class Progress {
  private bar: cliProgress.SingleBar | null = null;
  private label = '';
  private total = 0;
  private value = 0;
  private readonly tty = Boolean(process.stderr.isTTY);

  constructor(private readonly quiet: boolean) {}

  log(line: string): void {
    if (this.quiet) return;
    if (this.bar) this.bar.stop();
    this.bar = null;
    process.stderr.write(`${line}\n`);
  }

  start(label: string, total: number, unit: string): void {
    this.stop();
    this.label = label;
    this.total = total;
    this.value = 0;
    if (this.quiet) return;
    if (this.tty) {
      this.bar = new cliProgress.SingleBar(
        { format: `${label.padEnd(22)} [{bar}] {value}/{total} ${unit}s {extra} | {duration_formatted}`, hideCursor: true, stream: process.stderr },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(total, 0, { extra: '' });
    } else {
      process.stderr.write(`${label}: ${total} ${unit}s\n`);
    }
  }

  tick(extra: Record<string, number> = {}): void {
    this.update(this.value + 1, this.total, extra);
  }

  update(value: number, total: number, extra: Record<string, number> = {}): void {
    this.value = value;
    this.total = Math.max(total, 1);
    if (this.quiet) return;
    const text = Object.entries(extra).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(' ');
    if (this.bar) {
      this.bar.setTotal(this.total);
      this.bar.update(value, { extra: text });
    } else {
      process.stderr.write(`  ${this.label} ${value}/${this.total} ${text}\n`);
    }
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}
