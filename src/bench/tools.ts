import { execFile, spawn, type ChildProcess } from 'node:child_process';

/** A child process's collected output, or an error naming the command and its stderr. */
export function run(cmd: string, args: readonly string[], opts: { timeoutMs?: number; env?: NodeJS.ProcessEnv } = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 64 * 1024 * 1024, timeout: opts.timeoutMs ?? 600_000, env: opts.env ?? process.env }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message.split('\n')[0]}\n${stderr.trim().slice(-2000)}`));
      else resolve(stdout);
    });
  });
}

/** A long-running helper process (a server); `stop` sends SIGTERM and waits for it. */
export interface Daemon {
  readonly child: ChildProcess;
  readonly pid: number;
  stderr(): string;
  stop(): Promise<void>;
}

export function startDaemon(cmd: string, args: readonly string[]): Daemon {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-4000)));
  child.stdout!.resume();
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  child.once('error', (e) => (err += `\n${e.message}`));
  return {
    child,
    pid: child.pid ?? -1,
    stderr: () => err,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 5000);
        await exited;
        clearTimeout(t);
      }
    },
  };
}

/** Waits until `probe` resolves true, polling; throws with `what` after the deadline. */
export async function waitFor(what: string, probe: () => Promise<boolean> | boolean, timeoutMs = 15000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await probe()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}
