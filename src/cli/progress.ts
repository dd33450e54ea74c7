/** A one-line progress bar on stderr (redrawn on a TTY, a line every few seconds otherwise). */
export class Progress {
  private readonly start = Date.now();
  private lastDraw = 0;
  private readonly tty = process.stderr.isTTY === true;

  constructor(
    private readonly label: string,
    private readonly total: number,
  ) {}

  update(done: number, force = false): void {
    const now = Date.now();
    if (!force && now - this.lastDraw < (this.tty ? 100 : 5000)) return;
    this.lastDraw = now;
    const frac = this.total > 0 ? done / this.total : 1;
    const secs = Math.max(0.001, (now - this.start) / 1000);
    const rate = done / secs / (1024 * 1024);
    const width = 30;
    const filled = Math.round(frac * width);
    const bar = `[${'#'.repeat(filled)}${'.'.repeat(width - filled)}]`;
    const line = `${this.label} ${bar} ${(frac * 100).toFixed(1).padStart(5)}% ${mib(done)}/${mib(this.total)} MiB ${rate.toFixed(1)} MiB/s`;
    process.stderr.write(this.tty ? `\r${line}` : `${line}\n`);
  }

  finish(done: number): void {
    this.update(done, true);
    if (this.tty) process.stderr.write('\n');
  }
}

function mib(n: number): string {
  return (n / (1024 * 1024)).toFixed(1);
}
