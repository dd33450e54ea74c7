#!/usr/bin/env node
// CPU cost of TLS against plain TCP: the same fixed amount of virtio-blk I/O over tcp:// and
// tls:// (TLS 1.3, PSK), target and initiator in this one process, so process.cpuUsage() counts
// both ends. CPU time per operation is far less sensitive to other load on the machine than
// IOPS are (wall-clock figures are printed too, but read them with the machine's load in mind).
//   npm run build && node bench/tls-cost.mjs [--rounds 2] [--json]
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BlockDevice, FileBlockExport, VofTarget, silentLogger } from '../dist/index.js';

const { values } = parseArgs({ options: { rounds: { type: 'string', default: '2' }, json: { type: 'boolean', default: false } } });
const DISK = 64 * 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'vof-tls-cost-'));
const path = join(dir, 'disk.img');
writeFileSync(path, Buffer.alloc(DISK, 0x11));
const key = randomBytes(32);

const target = new VofTarget({ log: silentLogger, tls: { psk: new Map([['bench', key]]) } });
target.addExport('bench', await FileBlockExport.open(path, { numQueues: 2 }));
const urls = { tcp: await target.listen('tcp://127.0.0.1:0'), tls: await target.listen('tls://127.0.0.1:0') };

// [name, block size, queue depth, operations per depth slot]
const cases = [
  ['read 4k qd1', 4096, 1, 3000],
  ['write 4k qd1', 4096, 1, 3000],
  ['read 4k qd32', 4096, 32, 200],
  ['read 1m qd4', 1 << 20, 4, 64],
  ['write 1m qd4', 1 << 20, 4, 64],
];

async function run(dev, op, size, depth, perSlot) {
  const slots = Math.floor(DISK / size);
  let x = 7;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await Promise.all(
    Array.from({ length: depth }, async () => {
      const buf = Buffer.alloc(size, 0x5a);
      for (let i = 0; i < perSlot; i++) {
        x = (x * 1103515245 + 12345) >>> 0;
        const off = (x % slots) * size;
        if (op === 'read') await dev.read(off, buf);
        else await dev.write(off, buf);
      }
    }),
  );
  const wall = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  const ops = depth * perSlot;
  const cpuSec = (cpu.user + cpu.system) / 1e6;
  return { ops, cpuUsPerOp: (cpuSec * 1e6) / ops, cpuSecPerGiB: cpuSec / ((ops * size) / 2 ** 30), iops: ops / wall };
}

const results = [];
for (let round = 1; round <= Number(values.rounds); round++) {
  for (const transport of ['tcp', 'tls']) {
    const dev = await BlockDevice.open(`${urls[transport]}/bench`, {
      keepaliveIntervalMs: 0,
      maxTransferBytes: 1 << 20,
      ...(transport === 'tls' && { tls: { psk: { identity: 'bench', key } } }),
    });
    await run(dev, 'read', 4096, 4, 200); // warm-up
    for (const [name, size, depth, perSlot] of cases) {
      const r = await run(dev, name.split(' ')[0], size, depth, perSlot);
      results.push({ round, transport, case: name, ...r });
      if (!values.json) {
        console.log(`${transport} ${name.padEnd(13)} ${r.cpuUsPerOp.toFixed(1).padStart(8)} µs CPU/op ${r.cpuSecPerGiB.toFixed(2).padStart(7)} s CPU/GiB ${Math.round(r.iops).toString().padStart(7)} IOPS (wall)`);
      }
    }
    await dev.close();
  }
}
await target.close();
rmSync(dir, { recursive: true, force: true });
if (values.json) console.log(JSON.stringify(results));
