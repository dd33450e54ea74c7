#!/usr/bin/env node
// The block exports' file I/O alone, without the network: random reads (or writes) of --bs bytes
// at --qd in flight through each backend (src/target/blk/file-io.ts), on a scratch file in the
// page cache. Prints operations per second and the process's CPU time per operation (user + sys,
// all threads: libuv's pool and io_uring's workers included).
//   npm run build && node bench/file-io.mjs [--backend uring,libuv] [--rw read|write] [--bs 4096] [--qd 32] [--ops 200000]
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { openFileIo } from '../dist/target/blk/file-io.js';

const { values } = parseArgs({
  options: {
    backend: { type: 'string', default: 'uring,libuv' },
    rw: { type: 'string', default: 'read' },
    bs: { type: 'string', default: '4096' },
    qd: { type: 'string', default: '32' },
    ops: { type: 'string', default: '200000' },
  },
});
const bs = Number(values.bs);
const qd = Number(values.qd);
const ops = Number(values.ops);
const fileBytes = 64 << 20;
const blocks = Math.floor(fileBytes / bs);
const dir = mkdtempSync(join(tmpdir(), 'vof-file-io-'));
const path = join(dir, 'disk.img');
writeFileSync(path, Buffer.alloc(fileBytes, 0x5a));

async function run(backend) {
  const handle = await open(path, 'r+');
  const io = openFileIo(handle, backend);
  const op = values.rw === 'write' ? (b, pos) => io.write(b, pos) : (b, pos) => io.read(b, pos);
  let next = 0;
  let seed = 12345;
  const random = () => (seed = (seed * 1103515245 + 12345) >>> 0) % blocks;
  const worker = async () => {
    const buf = Buffer.alloc(bs, 1);
    while (next++ < ops) await op(buf, random() * bs);
  };
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: qd }, worker));
  const sec = Number(process.hrtime.bigint() - t0) / 1e9;
  const cpu = process.cpuUsage(cpu0);
  await io.close();
  await handle.close();
  const cpuUs = (cpu.user + cpu.system) / ops;
  console.log(`${backend.padEnd(5)} ${values.rw} ${bs} B qd${qd}: ${Math.round(ops / sec)} ops/s, ${cpuUs.toFixed(2)} µs CPU per op (user ${(cpu.user / ops).toFixed(2)}, sys ${(cpu.system / ops).toFixed(2)})`);
}

try {
  for (const backend of values.backend.split(',')) await run(backend);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
