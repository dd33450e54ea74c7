import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FileBlockExport, VofTarget, createLogger, type AllowSpec, type FileBlockOptions, type TargetOptions } from '../../src/index.js';

export interface LogLine {
  level: string;
  msg: string;
}

/** A target on an ephemeral port exporting scratch disks; captures its log lines. */
export class TargetFixture {
  readonly logs: LogLine[] = [];
  readonly target: VofTarget;
  readonly dir = mkdtempSync(join(tmpdir(), 'vof-test-'));
  url = '';

  constructor(options: TargetOptions = {}) {
    this.target = new VofTarget({ log: createLogger('debug', (level, msg) => this.logs.push({ level, msg })), ...options });
  }

  /**
   * A disk image of `size` bytes filled by `fill` (default zeros), exported as `tvqn`; `admin`
   * grants its export-wide admin commands (default: nobody).
   */
  async addDisk(tvqn: string, size: number, opts: FileBlockOptions & { allow?: AllowSpec[]; admin?: AllowSpec[]; fill?: (b: Buffer) => void } = {}): Promise<string> {
    const path = join(this.dir, `${tvqn.replace(/[^\w.-]/g, '_')}.img`);
    const content = Buffer.alloc(size);
    opts.fill?.(content);
    writeFileSync(path, content);
    this.target.addExport(tvqn, await FileBlockExport.open(path, opts), opts.allow, { ...(opts.admin && { admin: opts.admin }) });
    return path;
  }

  async listen(base = 'tcp://127.0.0.1:0'): Promise<string> {
    this.url = await this.target.listen(base);
    return this.url;
  }

  get port(): number {
    return Number(new URL(this.url.replace(/^\w+:/, 'http:')).port);
  }

  logged(re: RegExp): boolean {
    return this.logs.some((l) => re.test(l.msg));
  }

  async close(): Promise<void> {
    await this.target.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
