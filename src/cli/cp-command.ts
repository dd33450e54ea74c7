import { promises as fsp, type Stats } from 'node:fs';
import { BlockDevice } from '../initiator/blk/block-device.js';
import { createLogger } from '../util/log.js';
import { CliError } from './cli-error.js';
import { TLS_CLIENT_OPTIONS, clientTlsSettings } from './tls-options.js';
import { AUTH_CLIENT_OPTIONS, clientAuthSettings } from './auth-options.js';
import { RECONNECT_OPTIONS, reconnectSettings } from './reconnect-options.js';
import { Progress } from './progress.js';
import { parseCommand, usage, type CommandSpec } from './options.js';
import { IVQN_OPTION } from './client-options.js';

export const CP_COMMAND = {
  name: 'cp',
  args: 'SRC DST',
  summary: 'Copy a remote disk (tcp://, tls:// or rdma://HOST[:PORT]/TVQN) to a local file, or a local file to it.',
  details:
    'Sparse-aware: all-zero blocks are not written to a local file (it keeps holes) and are sent to a\n' +
    'vof disk as WRITE_ZEROES (no data on the wire). A progress bar goes to stderr (not with --json).\n' +
    'SIGINT stops the copy: exit 130, and the destination is incomplete.',
  options: {
    ...IVQN_OPTION,
    json: { type: 'boolean', desc: 'print the result as JSON, without a progress bar' },
    ...TLS_CLIENT_OPTIONS,
    ...AUTH_CLIENT_OPTIONS,
    ...RECONNECT_OPTIONS,
  },
} as const satisfies CommandSpec;

const CHUNK = 1024 * 1024;
const IN_FLIGHT = 8;
/** Zero detection granularity: runs of all-zero 4 KiB blocks become holes / WRITE_ZEROES. */
const ZERO_GRAIN = 4096;
const ZEROES = Buffer.alloc(ZERO_GRAIN);

const isRemote = (s: string) => /^(tcp|tls|rdma):\/\//.test(s);

/** [start, end, isZero] runs of `buf` at ZERO_GRAIN granularity (the tail may be shorter). */
export function zeroRuns(buf: Buffer): Array<[number, number, boolean]> {
  const runs: Array<[number, number, boolean]> = [];
  for (let pos = 0; pos < buf.length; pos += ZERO_GRAIN) {
    const end = Math.min(buf.length, pos + ZERO_GRAIN);
    const zero = buf.compare(ZEROES, 0, end - pos, pos, end) === 0;
    const last = runs[runs.length - 1];
    if (last && last[2] === zero) last[1] = end;
    else runs.push([pos, end, zero]);
  }
  return runs;
}

/** Thrown out of the copy when SIGINT arrives. */
class Interrupted extends Error {}

/** Run `step(offset, length)` over [0, total) in CHUNK pieces, IN_FLIGHT at a time, in order of completion. */
async function pipeline(total: number, step: (offset: number, length: number) => Promise<void>, progress: Progress | null, stop: { interrupted: boolean }): Promise<number> {
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < total) {
      if (stop.interrupted) throw new Interrupted();
      const offset = next;
      const length = Math.min(CHUNK, total - offset);
      next += length;
      await step(offset, length);
      done += length;
      progress?.update(done);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  progress?.finish(done);
  return done;
}

export async function runCp(argv: string[]): Promise<number> {
  const parsed = parseCommand(CP_COMMAND, argv);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  if (positionals.length !== 2) throw usage(CP_COMMAND, `SRC and DST, got ${positionals.length} argument(s)`);
  const [src, dst] = positionals as [string, string];
  if (isRemote(src) === isRemote(dst)) throw new CliError('vof cp copies between a remote disk and a local file: exactly one of SRC and DST must be a URL');
  const tls = clientTlsSettings(values);
  const opts = { ...(values.ivqn && { ivqn: values.ivqn }), ...(tls && { tls }), ...clientAuthSettings(values), ...reconnectSettings(values), log: createLogger('warn') };
  const progress = (total: number) => (values.json ? null : new Progress(`${src} → ${dst}`, total));

  // SIGINT: stop at once and say what is left behind; the default handler would exit 130 silently.
  const stop = { interrupted: false };
  let interrupt!: () => void;
  const interrupted = new Promise<never>((_, reject) => {
    interrupt = () => reject(new Interrupted());
  });
  interrupted.catch(() => {});
  const onSigint = () => {
    stop.interrupted = true;
    interrupt();
    // Whatever still hangs (a reconnecting disk) must not keep an interrupted copy alive.
    setTimeout(() => process.exit(130), 3000).unref();
  };
  process.once('SIGINT', onSigint);
  const started = Date.now();
  let bytes: number;
  try {
    bytes = await Promise.race([interrupted, isRemote(src) ? download(src, dst, opts, progress, stop, interrupted) : upload(src, dst, opts, progress, stop, interrupted)]);
  } catch (err) {
    if (err instanceof Interrupted) throw new CliError(`interrupted: ${dst} is incomplete (the copy did not finish)`, 130);
    throw err;
  } finally {
    process.removeListener('SIGINT', onSigint);
  }
  const secs = (Date.now() - started) / 1000;
  if (values.json) process.stdout.write(`${JSON.stringify({ src, dst, bytes, seconds: secs })}\n`);
  else process.stdout.write(`copied ${bytes} bytes in ${secs.toFixed(2)} s\n`);
  return 0;
}

type Opts = Parameters<typeof BlockDevice.open>[1];

async function openDisk(url: string, opts: Opts, interrupted: Promise<never>): Promise<BlockDevice> {
  const opening = BlockDevice.open(url, opts);
  // A disk that opens after SIGINT is closed, not leaked.
  interrupted.catch(() => opening.then((d) => d.close(), () => {}));
  return Promise.race([opening, interrupted]);
}

async function download(src: string, dst: string, opts: Opts, progress: (n: number) => Progress | null, stop: { interrupted: boolean }, interrupted: Promise<never>): Promise<number> {
  const disk = await openDisk(src, opts, interrupted);
  try {
    const out = await fsp.open(dst, 'w');
    try {
      // A regular file was just truncated to 0: blocks not written read back as zeros (holes).
      // Anything else (a block device) keeps its old content, so every block is written there.
      const st: Stats = await out.stat();
      const sparse = st.isFile();
      // Whole logical blocks: after a format to 4096, a partial last block cannot be read.
      const bytes = disk.capacity - (disk.capacity % disk.blockSize);
      await pipeline(bytes, async (offset, length) => {
        const data = await disk.read(offset, length);
        if (!sparse) {
          await out.write(data, 0, length, offset);
          return;
        }
        for (const [s, e, zero] of zeroRuns(data)) if (!zero) await out.write(data, s, e - s, offset + s);
      }, progress(bytes), stop);
      // The size, with a trailing hole if the disk ends in zeros.
      if (sparse) await out.truncate(bytes);
      await out.datasync();
      return bytes;
    } finally {
      await out.close();
    }
  } finally {
    await disk.close();
  }
}

async function upload(src: string, dst: string, opts: Opts, progress: (n: number) => Progress | null, stop: { interrupted: boolean }, interrupted: Promise<never>): Promise<number> {
  const input = await fsp.open(src, 'r');
  try {
    const size = (await input.stat()).size;
    const disk = await openDisk(dst, opts, interrupted);
    try {
      // Said before anything is read or sent: a write would only come back as IOERR.
      if (disk.readOnly) throw new CliError(`${dst} is exported read-only (VIRTIO_BLK_F_RO): nothing was written`, 1);
      if (size > disk.capacity) throw new CliError(`${src} is ${size} bytes; the remote disk holds only ${disk.capacity}`, 1);
      const zeroes = disk.canWriteZeroes;
      await pipeline(size, async (offset, length) => {
        // The device works in logical blocks (blk_size): a short tail is padded with zeros.
        const buf = Buffer.alloc(Math.ceil(length / disk.blockSize) * disk.blockSize);
        await input.read(buf, 0, length, offset);
        if (!zeroes) {
          await disk.write(offset, buf);
          return;
        }
        // Zero runs go as WRITE_ZEROES (no payload); runs are ZERO_GRAIN-aligned, a multiple
        // of 512 and 4096-byte logical blocks, and the padded tail stays within the buffer.
        await Promise.all(
          zeroRuns(buf).map(([s, e, zero]) => (zero ? disk.writeZeroes(offset + s, e - s) : disk.write(offset + s, buf.subarray(s, e)))),
        );
      }, progress(size), stop);
      await disk.flush();
      return size;
    } finally {
      await disk.close();
    }
  } finally {
    await input.close();
  }
}
