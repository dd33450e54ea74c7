import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { cpuCost, round } from './cpu.js';
import { fioSystem, type BlockSystem } from './fio.js';
import { accepting, freePort } from './free-port.js';
import type { ProgressLine } from './progress-line.js';
import { run, startDaemon, waitFor } from './tools.js';
import type { BenchRun, Environment } from './types.js';

export interface AnchorContext {
  readonly environment: Environment;
  readonly rampSec: number;
  readonly timeSec: number;
  readonly sizeBytes: number;
  readonly progress: ProgressLine;
}

/** nbdkit's file plugin exporting the image on TCP loopback, driven by fio's nbd engine. */
export async function openNbdkit(ctx: AnchorContext, image: string): Promise<BlockSystem> {
  const port = await freePort();
  const nbdkit = startDaemon('nbdkit', ['--foreground', '--ipaddr', '127.0.0.1', '--port', String(port), 'file', `file=${image}`]);
  try {
    await waitFor(`nbdkit on port ${port} (${nbdkit.stderr().trim()})`, () => accepting(port));
  } catch (err) {
    await nbdkit.stop();
    throw err;
  }
  return fioSystem({ ...ctx, system: 'nbdkit', engine: ['--ioengine=nbd', `--uri=nbd://127.0.0.1:${port}/`], target: { pid: nbdkit.pid } }, () => nbdkit.stop());
}

/**
 * nbdkit's memory plugin on TCP loopback, as the NBD source of a vof target (vof-nbdsrc): the
 * storage costs next to nothing, so what vof-nbdsrc adds over vof-tcp is the NBD hop.
 */
export async function openNbdkitMemory(sizeBytes: number): Promise<{ port: number; stop: () => Promise<void> }> {
  const port = await freePort();
  const nbdkit = startDaemon('nbdkit', ['--foreground', '--ipaddr', '127.0.0.1', '--port', String(port), 'memory', `size=${sizeBytes}`]);
  try {
    await waitFor(`nbdkit memory on port ${port} (${nbdkit.stderr().trim()})`, () => accepting(port));
  } catch (err) {
    await nbdkit.stop();
    throw err;
  }
  return { port, stop: () => nbdkit.stop() };
}

/** A system that cannot run here (not a failure): reported as skipped with this reason. */
export class SystemUnavailable extends Error {}

/** A running `vof nbd` bridge: the NBD URI it printed, its process, and how to stop it. */
export interface VofNbdBridge {
  readonly uri: string;
  readonly pid: number;
  stop(): Promise<void>;
}

/**
 * Starts `vof nbd URL --socket PATH`, the NBD bridge: it prints exactly one line on stdout, the
 * NBD URI (nbd+unix:///EXPORT?socket=PATH), and exits cleanly on SIGTERM. A vof without the
 * command, or a bridge that prints no URI, is a SystemUnavailable.
 */
export async function startVofNbdBridge(cli: string, deviceUrl: string, socketPath: string): Promise<VofNbdBridge> {
  const bridge = spawn(process.execPath, [cli, 'nbd', deviceUrl, '--socket', socketPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  bridge.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-4000)));
  const exited = new Promise<number | null>((r) => bridge.once('exit', (code) => r(code)));
  const stop = async () => {
    if (bridge.exitCode === null) bridge.kill('SIGTERM');
    await exited;
  };
  let uri: string;
  try {
    uri = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new SystemUnavailable(`vof nbd printed no URI within 20 s: ${stderr.trim()}`)), 20000);
      createInterface({ input: bridge.stdout }).once('line', (line) => {
        clearTimeout(timer);
        resolve(line.trim());
      });
      void exited.then((code) => {
        clearTimeout(timer);
        const why = /unknown command/.test(stderr) ? 'this vof has no `nbd` command (the NBD bridge is not built into it)' : `vof nbd exited with ${code}: ${stderr.trim()}`;
        reject(new SystemUnavailable(why));
      });
    });
    if (!/^nbd\+unix:\/\//.test(uri)) throw new SystemUnavailable(`vof nbd printed "${uri}", not an nbd+unix:// URI`);
  } catch (err) {
    await stop();
    throw err;
  }
  return { uri, pid: bridge.pid!, stop };
}

/** fio's nbd engine (user space) through the `vof nbd` bridge. */
export async function openVofNbd(ctx: AnchorContext, cli: string, deviceUrl: string, socketPath: string, targetPid: number | null): Promise<BlockSystem> {
  const bridge = await startVofNbdBridge(cli, deviceUrl, socketPath);
  return fioSystem(
    {
      ...ctx,
      system: 'vof-nbd',
      engine: ['--ioengine=nbd', `--uri=${bridge.uri}`],
      target: targetPid === null ? null : { pid: targetPid },
      initiatorPids: [bridge.pid],
      note: 'initiator CPU = fio + the vof nbd bridge process',
    },
    () => bridge.stop(),
  );
}

interface IperfResult {
  end: {
    sum_received: { bits_per_second: number; bytes: number; seconds: number };
    cpu_utilization_percent: { host_total: number; remote_total: number };
  };
  error?: string;
}

/** Raw TCP loopback throughput (iperf3, one stream, 128 KiB writes): the stream transport's ceiling. */
export async function runIperf3(ctx: AnchorContext, roundNumber: number): Promise<BenchRun> {
  const port = await freePort();
  const server = startDaemon('iperf3', ['--server', '--bind', '127.0.0.1', '--port', String(port)]);
  try {
    await waitFor(`iperf3 server on port ${port}`, () => accepting(port));
    const secs = Math.max(1, Math.round(ctx.timeSec));
    const omit = Math.max(0, Math.round(ctx.rampSec));
    ctx.progress.show(`iperf3 tcp loopback: ${omit + secs} s`);
    // The readiness probe's connection can still be on the server's hands when the client comes
    // ("unable to receive control message: Connection reset by peer"): the client tries again.
    let r: IperfResult;
    for (let attempt = 1; ; attempt++) {
      const out = await run('iperf3', ['--client', '127.0.0.1', '--port', String(port), '--time', String(secs), '--omit', String(omit), '--length', '128K', '--json']).catch((err: Error) => JSON.stringify({ error: err.message }));
      r = JSON.parse(out) as IperfResult;
      if (!r.error) break;
      if (attempt >= 3) throw new Error(`iperf3: ${r.error}`);
      await new Promise((resolve) => setTimeout(resolve, 300));
    }
    ctx.progress.clear();
    const s = r.end.sum_received;
    const bs = 131072;
    const ios = Math.round(s.bytes / bs);
    return {
      system: 'iperf3',
      round: roundNumber,
      environment: ctx.environment,
      workload: { rw: 'tcp-stream', bs, qd: 1 },
      seconds: round(s.seconds),
      ios,
      iops: round(ios / s.seconds),
      mbps: round(s.bits_per_second / 8 / 1e6),
      latencyUs: null,
      cpu: cpuCost((r.end.cpu_utilization_percent.host_total / 100) * s.seconds, (r.end.cpu_utilization_percent.remote_total / 100) * s.seconds, s.bytes, ios),
      note: 'raw TCP loopback, one stream; "ios" are 128 KiB writes; CPU as iperf3 reports it',
    };
  } finally {
    await server.stop();
  }
}
