#!/usr/bin/env node
// A self-contained tour: export a scratch disk over Virtio-oF (TCP by default; pass a listen
// URL such as rdma://10.177.0.1:0 for RDMA, as `npm run demo:rdma` does), use it from a second
// process through the CLI and from this one through the library, then shut everything down.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BlockDevice } from '../dist/index.js';
import { VOF_CLI as vof, startTarget } from './start-target.mjs';

const dir = mkdtempSync(join(tmpdir(), 'vof-demo-'));
const disk = join(dir, 'disk.img');
writeFileSync(disk, Buffer.alloc(64 * 1024 * 1024));
const step = (s) => console.log(`\n== ${s}`);

const listen = process.argv[2] ?? 'tcp://127.0.0.1:0';
step(`vof target --listen ${listen} --blk demo=${disk}`);
const target = await startTarget(['--listen', listen, '--blk', `demo=${disk}`, '--log', 'warn'], { stderr: 'inherit', timeoutMs: 120000 });
const url = target.urls[0];
console.log(`listening on ${url}`);

try {
  step(`vof info ${url}/demo`);
  spawnSync(process.execPath, [vof, 'info', `${url}/demo`], { stdio: 'inherit' });

  step('library: BlockDevice.open(), write 16 MiB, flush, close, reopen, read back');
  const data = Buffer.alloc(16 * 1024 * 1024);
  for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i * 2654435761 >>> 0, i);
  let dev = await BlockDevice.open(`${url}/demo`);
  let t = process.hrtime.bigint();
  await dev.write(0, data);
  await dev.flush();
  const wms = Number(process.hrtime.bigint() - t) / 1e6;
  await dev.close();
  dev = await BlockDevice.open(`${url}/demo`);
  t = process.hrtime.bigint();
  const back = await dev.read(0, data.length);
  const rms = Number(process.hrtime.bigint() - t) / 1e6;
  console.log(`queues: ${dev.numQueues}, capacity: ${dev.capacity} bytes, serial: ${await dev.getId()}`);
  console.log(`write+flush 16 MiB: ${wms.toFixed(0)} ms; read 16 MiB: ${rms.toFixed(0)} ms; data ${back.equals(data) ? 'verified' : 'MISMATCH'}`);
  await dev.close();
  if (!back.equals(data)) process.exitCode = 1;

  step(`vof cp ${url}/demo ${join(dir, 'copy.img')}`);
  spawnSync(process.execPath, [vof, 'cp', `${url}/demo`, join(dir, 'copy.img')], { stdio: 'inherit' });
} finally {
  step('SIGTERM to the target');
  await target.stop();
  rmSync(dir, { recursive: true, force: true });
  console.log('done');
}
