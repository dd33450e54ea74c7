#!/usr/bin/env node
// Durability under SIGKILL: a `vof target` process is killed at a random moment while this
// initiator writes 4 KiB blocks and flushes; after a restart on the same image, every block
// whose write was acknowledged before the start of the last successful FLUSH must hold that
// write or a later one issued to the same block (never older data, never a torn block).
//
//   npm run durability -- [--trials N] [--max-ms MS] [--blocks N] [--depth N]
//                          [--json] [--keep] [--sabotage]
//   (npm run durability builds first; node scripts/durability.mjs takes the same options)
//
// --sabotage checks the checker: after each kill it zeroes one flushed block in the image, so
// every trial that flushed anything must report a loss.
// Prints one line per trial and a summary; exits 1 if anything was lost. Note: SIGKILL ends
// the process, not the machine: data the target had written() survives in the page cache, so
// this checks that the target never acknowledges a write (or a flush) before handing it to the
// kernel. Power loss would need a VM whose disk can be cut off; that is not what this does.
import { mkdtempSync, openSync, closeSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { BlockDevice, silentLogger } from '../dist/index.js';
import { startTarget } from './start-target.mjs';

const { values } = parseArgs({
  options: {
    trials: { type: 'string', default: '20' },
    'max-ms': { type: 'string', default: '2000' },
    blocks: { type: 'string', default: '1024' },
    depth: { type: 'string', default: '16' },
    json: { type: 'boolean', default: false },
    keep: { type: 'boolean', default: false },
    sabotage: { type: 'boolean', default: false },
  },
});
const TRIALS = Number(values.trials);
const MAX_MS = Number(values['max-ms']);
const BLOCKS = Number(values.blocks);
const DEPTH = Number(values.depth);
const BLOCK = 4096;
for (const [k, v] of Object.entries({ trials: TRIALS, 'max-ms': MAX_MS, blocks: BLOCKS, depth: DEPTH })) {
  if (!Number.isInteger(v) || v < 1) {
    console.error(`durability: --${k} must be a positive integer`);
    process.exit(2);
  }
}

/** The content of write number `seq` of trial `trial`: a header naming it, then a pattern. */
function blockFor(trial, seq) {
  const b = Buffer.alloc(BLOCK, (seq * 131 + trial * 7) & 0xff);
  b.write('VOFDURAB', 0, 'latin1');
  b.writeUInt32LE(trial, 8);
  b.writeUInt32LE(seq, 12);
  return b;
}

const dir = mkdtempSync(join(tmpdir(), 'vof-durability-'));
const image = join(dir, 'disk.img');
writeFileSync(image, Buffer.alloc(BLOCKS * BLOCK));
const targetArgs = ['--listen', 'tcp://127.0.0.1:0', '--blk', `d=${image}`, '--log', 'error'];

async function trial(n) {
  const target = await startTarget(targetArgs, { timeoutMs: 60000 });
  const url = `${target.urls[0]}/d`;
  const dev = await BlockDevice.open(url, { log: silentLogger, keepaliveIntervalMs: 0 });
  /** Per block: the seqs issued to it, in order. */
  const issued = new Map();
  /**
   * Blocks with a write in flight: never two at once on one block, since concurrent writes to
   * the same block may land in either order and no order could be checked.
   */
  const busy = new Set();
  /** seq → acknowledged. */
  const acked = new Set();
  /** Per block: the seq that must be on disk at least (acked before a flush that succeeded). */
  let durable = new Map();
  let seq = 0;
  let flushes = 0;
  let stopped = false;
  let killedAt = 0;

  const writer = async () => {
    while (!stopped) {
      let block = Math.floor(Math.random() * BLOCKS);
      while (busy.has(block)) block = (block + 1) % BLOCKS;
      busy.add(block);
      const s = ++seq;
      if (!issued.has(block)) issued.set(block, []);
      issued.get(block).push(s);
      try {
        await dev.write(block * BLOCK, blockFor(n, s));
        acked.add(s);
      } catch {
        return; // the target is gone: this block's write stays in flight for good
      }
      busy.delete(block);
    }
  };
  const flusher = async () => {
    while (!stopped) {
      // What is acknowledged now must be durable once this flush succeeds.
      const candidate = new Map();
      for (const [block, seqs] of issued) {
        for (let i = seqs.length - 1; i >= 0; i--) {
          if (acked.has(seqs[i])) {
            candidate.set(block, seqs[i]);
            break;
          }
        }
      }
      try {
        await dev.flush();
      } catch {
        return;
      }
      durable = candidate;
      flushes++;
      await new Promise((r) => setTimeout(r, Math.random() * 20));
    }
  };

  const work = [...Array.from({ length: DEPTH }, writer), flusher()];
  const killAfter = 50 + Math.random() * (MAX_MS - 50);
  await new Promise((r) => setTimeout(r, killAfter));
  target.child.kill('SIGKILL');
  killedAt = seq;
  await new Promise((r) => target.child.once('exit', r));
  stopped = true;
  await Promise.all(work);
  await dev.close().catch(() => {});
  if (values.sabotage && durable.size > 0) {
    const [victim] = [...durable.keys()];
    const fd = openSync(image, 'r+');
    writeSync(fd, Buffer.alloc(BLOCK), 0, BLOCK, victim * BLOCK);
    closeSync(fd);
  }

  // Restart on the same image and read every block through a fresh initiator.
  const again = await startTarget(targetArgs, { timeoutMs: 60000 });
  let lost = 0;
  const examples = [];
  try {
    const reader = await BlockDevice.open(`${again.urls[0]}/d`, { log: silentLogger, keepaliveIntervalMs: 0 });
    const disk = await reader.read(0, BLOCKS * BLOCK);
    await reader.close();
    for (const [block, must] of durable) {
      const seqs = issued.get(block);
      const allowed = seqs.slice(seqs.indexOf(must));
      const got = disk.subarray(block * BLOCK, (block + 1) * BLOCK);
      if (!allowed.some((s) => got.equals(blockFor(n, s)))) {
        lost++;
        if (examples.length < 3) examples.push({ block, expectedAtLeast: must, found: got.subarray(0, 16).toString('hex') });
      }
    }
  } finally {
    await again.stop();
  }
  return { trial: n, killAfterMs: Math.round(killAfter), writesIssued: seq, writesAcked: acked.size, issuedAtKill: killedAt, flushes, blocksChecked: durable.size, lost, examples };
}

const results = [];
try {
  for (let n = 1; n <= TRIALS; n++) {
    const r = await trial(n);
    results.push(r);
    if (!values.json) {
      console.log(
        `trial ${n}: killed after ${r.killAfterMs} ms; ${r.writesAcked}/${r.writesIssued} writes acked, ${r.flushes} flushes; ` +
          `${r.blocksChecked} blocks flushed and checked, ${r.lost} lost${r.lost ? ` ${JSON.stringify(r.examples)}` : ''}`,
      );
    }
  }
} finally {
  if (!values.keep) rmSync(dir, { recursive: true, force: true });
}
const summary = {
  trials: results.length,
  writesAcked: results.reduce((a, r) => a + r.writesAcked, 0),
  flushes: results.reduce((a, r) => a + r.flushes, 0),
  blocksChecked: results.reduce((a, r) => a + r.blocksChecked, 0),
  lost: results.reduce((a, r) => a + r.lost, 0),
};
if (values.json) console.log(JSON.stringify({ summary, results }));
else console.log(`summary: ${summary.trials} trials, ${summary.writesAcked} writes acked, ${summary.flushes} flushes, ${summary.blocksChecked} flushed blocks checked, ${summary.lost} lost`);
process.exitCode = summary.lost > 0 ? 1 : 0;
