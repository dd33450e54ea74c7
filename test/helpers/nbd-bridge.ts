import { spawn, type ChildProcess } from 'node:child_process';
import { VOF_CLI } from '../../scripts/start-target.mjs';

export interface Bridge {
  child: ChildProcess;
  /** The one line `vof nbd` (or the command run) printed on stdout. */
  uri: string;
  /** Everything printed on stdout so far (the contract: exactly the URI line). */
  stdout: () => string;
  stderr: () => string;
  /** SIGTERM, resolves with the exit code. */
  stop: () => Promise<number | null>;
}

/**
 * Run `vof nbd ARGS...` and wait for the NBD URI line on stdout (or another command that prints
 * one line when ready, e.g. `vof vduse`, which prints its device's path).
 */
export function startBridge(args: string[], timeoutMs = 20000, command = 'nbd'): Promise<Bridge> {
  const child = spawn(process.execPath, [VOF_CLI, command, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`vof ${command} printed no line in ${timeoutMs} ms: ${err}`));
    }, timeoutMs);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`vof ${command} exited with ${code}: ${err}`));
    });
    child.stdout.on('data', (d) => {
      out += d;
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      clearTimeout(timer);
      resolve({
        child,
        uri: out.slice(0, nl),
        stdout: () => out,
        stderr: () => err,
        stop: () => {
          if (child.exitCode === null) child.kill('SIGTERM');
          return exited;
        },
      });
    });
  });
}

/** The socket path of an nbd+unix URI. */
export function socketOf(uri: string): string {
  const path = new URL(uri).searchParams.get('socket');
  if (!path) throw new Error(`no socket in ${uri}`);
  return path;
}
