/** The live progress line: redrawn in place on a TTY, silent otherwise (the table follows). */
export class ProgressLine {
  private readonly tty = process.stderr.isTTY === true;
  private shown = false;

  show(text: string): void {
    if (!this.tty) return;
    const width = process.stderr.columns ?? 100;
    process.stderr.write(`\r\x1b[K${text.slice(0, width - 1)}`);
    this.shown = true;
  }

  /** A line that stays (a system starting, skipped, failed). */
  log(text: string): void {
    this.clear();
    process.stderr.write(`${text}\n`);
  }

  clear(): void {
    if (this.shown) process.stderr.write('\r\x1b[K');
    this.shown = false;
  }
}
