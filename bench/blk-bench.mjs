#!/usr/bin/env node
// virtio-blk throughput and IOPS through vof, target in its own process.
//   node bench/blk-bench.mjs [--listen tcp://127.0.0.1:0] [--seconds 3] [--json]
// --listen picks the transport (tcp://…, tls://… or rdma://ADDR:PORT). Needs `npm run build` first.
// tls:// runs TLS 1.3 with a fresh random PSK (identity "bench"), the target requiring it.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BlockDevice } from '../dist/index.js';
import { startTarget } from '../scripts/start-target.mjs';

const { values } = parseArgs({
  options: {
    listen: { type: 'string', default: 'tcp://127.0.0.1:0' },
    seconds: { type: 'string', default: '3' },
    'disk-mib': { type: 'string', default: '256' },
    json: { type: 'boolean', default: false },
    cases: { type: 'string', default: '4k:1,4k:32,64k:16,1m:4' },
  },
});
const seconds = Number(values.seconds);
const diskBytes = Number(values['disk-mib']) * 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'vof-bench-'));
const disk = join(dir, 'disk.img');
writeFileSync(disk, Buffer.alloc(diskBytes, 0x11));

const tlsArgs = [];
let tls;
if (values.listen.startsWith('tls://')) {
  const key = randomBytes(32);
  writeFileSync(join(dir, 'psk.txt'), `bench:${key.toString('hex')}\n`);
  tlsArgs.push('--tls-psk', join(dir, 'psk.txt'), '--allow', 'bench@bench');
  tls = { psk: { identity: 'bench', key } };
}
const target = await startTarget(['--listen', values.listen, '--blk', `bench=${disk}`, '--log', 'warn', '--queues', '2', ...tlsArgs], { stderr: 'inherit' });
const url = target.urls[0];

const parseSize = (s) => Number.parseInt(s) * ({ k: 1024, m: 1024 * 1024 }[s.at(-1).toLowerCase()] ?? 1);
const results = [];
const dev = await BlockDevice.open(`${url}/bench`, { maxTransferBytes: 4 * 1024 * 1024, ...(tls && { ivqn: 'bench', tls }) });
try {
  for (const c of values.cases.split(',')) {
    const [bs, qd] = c.split(':');
    const size = parseSize(bs);
    const depth = Number(qd);
    for (const op of ['read', 'write']) {
      const buffers = Array.from({ length: depth }, () => Buffer.alloc(size, 0x5a));
      const slots = Math.floor(diskBytes / size);
      let ios = 0;
      let x = 12345;
      const end = Date.now() + seconds * 1000;
      const t0 = process.hrtime.bigint();
      await Promise.all(
        buffers.map(async (buf) => {
          while (Date.now() < end) {
            x = (x * 1103515245 + 12345) >>> 0;
            const off = (x % slots) * size;
            if (op === 'read') await dev.read(off, buf);
            else await dev.write(off, buf);
            ios++;
          }
        }),
      );
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      const r = { transport: url.split(':')[0], op, blockSize: bs, queueDepth: depth, iops: Math.round(ios / secs), mibPerSec: +((ios * size) / secs / 1048576).toFixed(1) };
      results.push(r);
      if (!values.json) console.log(`${r.transport} ${op.padEnd(5)} bs=${bs.padEnd(3)} qd=${String(depth).padEnd(2)}  ${String(r.iops).padStart(7)} IOPS  ${String(r.mibPerSec).padStart(7)} MiB/s`);
    }
  }
} finally {
  await dev.close();
  await target.stop();
  rmSync(dir, { recursive: true, force: true });
}
if (values.json) console.log(JSON.stringify(results));
