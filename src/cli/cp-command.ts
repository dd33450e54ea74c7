import { promises as fsp } from 'node:fs';
import { parseArgs } from 'node:util';
import { BlockDevice } from '../devices/blk/block-device.js';
import { createLogger } from '../util/log.js';
import { CliError } from './cli-error.js';
import { AUTH_CLIENT_OPTIONS, clientAuthSettings } from './auth-options.js';
import { TLS_CLIENT_OPTIONS, clientTlsSettings } from './tls-options.js';
import { RECONNECT_OPTIONS, RECONNECT_USAGE, reconnectSettings } from './reconnect-options.js';
import { Progress } from './progress.js';

const CHUNK = 1024 * 1024;
const IN_FLIGHT = 8;

const isRemote = (s: string) => /^(tcp|tls|rdma):\/\//.test(s);

/** Run `step(offset, length)` over [0, total) in CHUNK pieces, IN_FLIGHT at a time, in order of completion. */
async function pipeline(total: number, step: (offset: number, length: number) => Promise<void>, progress: Progress): Promise<void> {
  let next = 0;
  let done = 0;
  const worker = async () => {
    while (next < total) {
      const offset = next;
      const length = Math.min(CHUNK, total - offset);
      next += length;
      await step(offset, length);
      done += length;
      progress.update(done);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  progress.finish(done);
}

export async function runCp(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    options: { ivqn: { type: 'string' }, json: { type: 'boolean' }, ...TLS_CLIENT_OPTIONS, ...RECONNECT_OPTIONS, ...AUTH_CLIENT_OPTIONS },
    allowPositionals: true,
  });
  if (positionals.length !== 2) throw new CliError(`usage: vof cp SRC DST (one of them tcp://, tls:// or rdma://HOST[:PORT]/TVQN) ${RECONNECT_USAGE}`);
  const [src, dst] = positionals as [string, string];
  if (isRemote(src) === isRemote(dst)) throw new CliError('vof cp copies between a remote disk and a local file: exactly one of SRC and DST must be a URL');
  const tls = clientTlsSettings(values);
  const opts = { ...(values.ivqn && { ivqn: values.ivqn }), ...(tls && { tls }), ...clientAuthSettings(values), ...reconnectSettings(values), log: createLogger('warn') };
  const started = Date.now();
  let bytes: number;
  if (isRemote(src)) {
    const disk = await BlockDevice.open(src, opts);
    try {
      const out = await fsp.open(dst, 'w');
      try {
        // Whole logical blocks: after a format to 4096, a partial last block cannot be read.
        bytes = disk.capacity - (disk.capacity % disk.blockSize);
        await pipeline(bytes, async (offset, length) => {
          const data = await disk.read(offset, length);
          await out.write(data, 0, length, offset);
        }, new Progress(`${src} → ${dst}`, bytes));
        await out.datasync();
      } finally {
        await out.close();
      }
    } finally {
      await disk.close();
    }
  } else {
    const input = await fsp.open(src, 'r');
    try {
      const size = (await input.stat()).size;
      const disk = await BlockDevice.open(dst, opts);
      try {
        if (size > disk.capacity) throw new CliError(`${src} is ${size} bytes; the remote disk holds only ${disk.capacity}`, 1);
        bytes = size;
        await pipeline(size, async (offset, length) => {
          // The device works in logical blocks (blk_size): a short tail is padded with zeros.
          const buf = Buffer.alloc(Math.ceil(length / disk.blockSize) * disk.blockSize);
          await input.read(buf, 0, length, offset);
          await disk.write(offset, buf);
        }, new Progress(`${src} → ${dst}`, size));
        await disk.flush();
      } finally {
        await disk.close();
      }
    } finally {
      await input.close();
    }
  }
  const secs = (Date.now() - started) / 1000;
  if (values.json) process.stdout.write(`${JSON.stringify({ src, dst, bytes, seconds: secs })}\n`);
  else process.stdout.write(`copied ${bytes} bytes in ${secs.toFixed(2)} s\n`);
  return 0;
}
