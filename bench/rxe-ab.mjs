// Shared set-up of the in-process RDMA A/B scripts (send-batching.mjs, remote-invalidation.mjs):
// their command-line options, the rxe address the soft-RoCE harness exports, and a VofTarget in
// this process exporting a 64 MiB image in /dev/shm over RDMA with 2 virtqueues (as `vof bench`).
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { FileBlockExport, VofTarget, silentLogger } from '../dist/index.js';

/** --qd, --bs, --time (s per window), --rw randread|randwrite, --rounds, with this script's default qd. */
export function abOptions(script, defaultQd) {
  const { values } = parseArgs({
    options: {
      qd: { type: 'string', default: String(defaultQd) },
      bs: { type: 'string', default: '4096' },
      time: { type: 'string', default: '3' },
      rw: { type: 'string', default: 'randread' },
      rounds: { type: 'string', default: '5' },
    },
  });
  const addr = process.env.VOF_RDMA_ADDR;
  if (!addr) {
    console.error(`${script}: VOF_RDMA_ADDR is not set: run it through \`npm run rxe -- --vm node bench/${script}.mjs\``);
    process.exit(2);
  }
  return { addr, rw: values.rw, qd: Number(values.qd), bs: Number(values.bs), seconds: Number(values.time), writing: values.rw === 'randwrite', rounds: Number(values.rounds) };
}

/** A target exporting "disk" over rdma://addr; close() stops it and removes the image. */
export async function startAbTarget(script, addr) {
  const dir = mkdtempSync(join('/dev/shm', `vof-${script}-`));
  const image = join(dir, 'disk.img');
  const size = 64 << 20;
  writeFileSync(image, Buffer.alloc(size));
  const target = new VofTarget({ log: silentLogger });
  target.addExport('disk', await FileBlockExport.open(image, { numQueues: 2 }));
  const url = `${await target.listen(`rdma://${addr}:0`)}/disk`;
  return {
    url,
    size,
    close: async () => {
      await target.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** The median of a list of numbers. */
export const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
