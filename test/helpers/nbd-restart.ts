import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { BlockIoError, type BlockDevice } from '../../src/index.js';
import { pattern } from './pattern.js';
import { waitForSocket } from './wait-for.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** nbdkit's file plugin on a Unix socket, which can be killed and started again on the same socket. */
export class NbdkitFile {
  private child: ChildProcess | null = null;

  constructor(
    readonly image: string,
    readonly socket: string,
  ) {}

  async start(): Promise<void> {
    // A killed nbdkit leaves its socket file behind; the new one binds the same path.
    rmSync(this.socket, { force: true });
    const child = spawn('nbdkit', ['--foreground', '--exit-with-parent', '-U', this.socket, 'file', this.image], { stdio: ['ignore', 'inherit', 'inherit'] });
    this.child = child;
    await waitForSocket(this.socket, child, 'nbdkit', 10000);
  }

  /** SIGSTOP: requests already sent stay unanswered, as on a server that dies with them. */
  pause(): void {
    this.child?.kill('SIGSTOP');
  }

  /** SIGKILL (nbdkit waits for its clients on SIGTERM; a dying server is what is tested). */
  async kill(): Promise<void> {
    const child = this.child;
    this.child = null;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGKILL');
    await exited;
  }
}

export interface RestartOutcome {
  /** Blocks whose write the initiator saw acknowledged. */
  readonly acked: number[];
  /** Blocks whose write had no answer when the server was killed. */
  readonly inFlightAtKill: number[];
  /** Blocks whose write failed, with the error. */
  readonly failed: Map<number, unknown>;
  /** Blocks (of the acknowledged ones) whose bytes in the image are not what was written. */
  readonly missing: number[];
}

/**
 * Writes blocks 0..count-1 of `disk` (block i gets pattern(blockSize, i + 1): distinct data in
 * distinct places, so a re-sent write is harmless and a lost one shows), `depth` writes in
 * flight. After `killAfter` acknowledgements the server is paused (what it was sent stays
 * unanswered), the writes in flight are noted once they stop moving, the server is SIGKILLed,
 * and started again on the same socket 300 ms later, while the writers go on. Then the image
 * file is read directly and every acknowledged block checked.
 */
export async function writeThroughServerRestart(
  disk: BlockDevice,
  server: NbdkitFile,
  o: { readonly count: number; readonly depth: number; readonly blockSize: number; readonly killAfter: number },
): Promise<RestartOutcome> {
  const acked: number[] = [];
  const failed = new Map<number, unknown>();
  const inFlight = new Set<number>();
  let inFlightAtKill: number[] = [];
  let restart: Promise<void> | null = null;
  let next = 0;

  const interrupt = async () => {
    server.pause();
    // Bounded: until the initiator's `depth` writes are all stuck behind the paused server.
    let last = -1;
    for (let i = 0, still = 0; i < 200 && still < 3; i++) {
      await sleep(25);
      still = acked.length === last && inFlight.size === o.depth ? still + 1 : 0;
      last = acked.length;
    }
    inFlightAtKill = [...inFlight];
    await server.kill();
    await sleep(300);
    await server.start();
  };

  const writer = async () => {
    while (next < o.count) {
      const block = next++;
      inFlight.add(block);
      try {
        await disk.write(block * o.blockSize, pattern(o.blockSize, block + 1));
        acked.push(block);
      } catch (err) {
        failed.set(block, err);
      }
      inFlight.delete(block);
      if (!restart && acked.length >= o.killAfter) restart = interrupt();
    }
  };
  await Promise.all(Array.from({ length: o.depth }, writer));
  await restart;

  const image = readFileSync(server.image);
  const missing = acked.filter((b) => !image.subarray(b * o.blockSize, (b + 1) * o.blockSize).equals(pattern(o.blockSize, b + 1)));
  return { acked, inFlightAtKill, failed, missing };
}

/** True when every failure is the device's I/O error status (not a lost connection, a timeout, ...). */
export function onlyIoErrors(failed: Map<number, unknown>): boolean {
  return [...failed.values()].every((e) => e instanceof BlockIoError && e.statusName === 'IOERR');
}
