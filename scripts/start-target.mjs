// Start `vof target` as a child process and wait for its "listening on URL" lines.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const VOF_CLI = fileURLToPath(new URL('../dist/cli/main.js', import.meta.url));

/**
 * @param {string[]} args arguments after `vof target`
 * @param {{ lines?: number, stderr?: 'inherit' | 'pipe', timeoutMs?: number, nodeArgs?: string[] }} [opts]
 *   nodeArgs: options for node itself, before the script (e.g. --cpu-prof)
 * @returns {Promise<{ child: import('node:child_process').ChildProcess, urls: string[], stderr: () => string, stop: () => Promise<number | null> }>}
 */
export function startTarget(args, opts = {}) {
  const lines = opts.lines ?? 1;
  const child = spawn(process.execPath, [...(opts.nodeArgs ?? []), VOF_CLI, 'target', ...args], { stdio: ['ignore', 'pipe', opts.stderr ?? 'pipe'] });
  let out = '';
  let err = '';
  child.stderr?.on('data', (d) => (err += d));
  const exited = new Promise((r) => child.once('exit', (code) => r(code)));
  const stop = () => {
    child.kill('SIGTERM');
    return exited;
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`vof target did not start in time: ${err}`));
    }, opts.timeoutMs ?? 15000);
    exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`vof target exited with ${code}: ${err}`));
    });
    child.stdout.on('data', (d) => {
      out += d;
      const urls = [...out.matchAll(/^listening on (\S+)$/gm)].map((m) => m[1]);
      if (urls.length >= lines) {
        clearTimeout(timer);
        resolve({ child, urls, stderr: () => err, stop });
      }
    });
  });
}
