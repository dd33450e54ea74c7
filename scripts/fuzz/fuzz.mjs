#!/usr/bin/env node
// vof's protocol fuzzer: `npm run fuzz -- [--seconds N] [--seed S] [--rdma] [--batch N] [--concurrency N]`.
//
// Starts a live `vof target` child process, then runs batches of mutated sessions against it
// (TCP: scripts/fuzz/tcp-session.mjs; --rdma: keyed descriptors over raw RDMA queues,
// scripts/fuzz/rdma-session.mjs, which needs an rxe device: `npm run rxe -- npm run fuzz -- --rdma`).
// After every batch it checks that the target process is alive and that a well-behaved
// initiator still writes, flushes and reads back correctly. It reports iterations, crashes
// (the target exited, or logged an internal error), hangs, protocol violations, and the target's
// RSS before and after. Every choice comes from the printed seed: `--seed S` replays the same
// inputs. Exit code 0 only when nothing was found.
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { randomBytes } from 'node:crypto';
import { BlockDevice } from '../../dist/index.js';
import { createLogger } from '../../dist/util/log.js';
import { startTarget } from '../start-target.mjs';
import { Prng, iterationSeed } from './prng.mjs';
import { runTcpSession } from './tcp-session.mjs';

const MiB = 1024 * 1024;
const DISK_BYTES = 8 * MiB;

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '60' },
    seed: { type: 'string' },
    rdma: { type: 'boolean', default: false },
    batch: { type: 'string', default: '16' },
    concurrency: { type: 'string', default: '4' },
    verbose: { type: 'boolean', default: false },
  },
});
const seconds = Number(values.seconds);
const batchSize = Number(values.batch);
const concurrency = Number(values.concurrency);
if (!(seconds > 0) || !(batchSize > 0) || !(concurrency > 0)) {
  console.error('usage: npm run fuzz -- [--seconds N] [--seed S] [--rdma] [--batch N] [--concurrency N]');
  process.exit(2);
}
const seed = values.seed !== undefined ? Number(values.seed) >>> 0 : randomBytes(4).readUInt32LE(0);
const mode = values.rdma ? 'rdma' : 'tcp';
console.log(`fuzz: mode ${mode}, seed ${seed} (replay: npm run fuzz -- ${values.rdma ? '--rdma ' : ''}--seed ${seed} --seconds ${seconds} --batch ${batchSize} --concurrency ${concurrency})`);

const dir = mkdtempSync(join(tmpdir(), 'vof-fuzz-'));
writeFileSync(join(dir, 'fuzz.img'), Buffer.alloc(DISK_BYTES));
writeFileSync(join(dir, 'good.img'), Buffer.alloc(DISK_BYTES));

let listen = 'tcp://127.0.0.1:0';
if (mode === 'rdma') {
  if (!process.env.VOF_RDMA_ADDR) {
    console.error('fuzz --rdma needs an rxe device: run it as `npm run rxe -- npm run fuzz -- --rdma --seconds N`');
    process.exit(2);
  }
  listen = `rdma://${process.env.VOF_RDMA_ADDR}:0`;
}

// Short timeouts so that abandoned connections are reclaimed within a batch or two; under the
// soft-RoCE VM (TCG, ~19x slower) a real initiator needs longer than that to connect.
const slow = mode === 'rdma';
const target = await startTarget(
  ['--listen', 'tcp://127.0.0.1:0', ...(mode === 'rdma' ? ['--listen', listen] : []),
    '--blk', `fuzz=${join(dir, 'fuzz.img')}`, '--blk', `good=${join(dir, 'good.img')}`,
    '--queues', '2', '--queue-size', '32', '--connect-timeout', slow ? '30000' : '2000', '--send-timeout', slow ? '30000' : '3000',
    '--keepalive-interval', '1000', '--keepalive-timeout', slow ? '120000' : '10000', '--log', 'error'],
  { lines: mode === 'rdma' ? 2 : 1, timeoutMs: 120000 },
);
const tcpUrl = target.urls[0];
const port = Number(new URL(tcpUrl.replace('tcp:', 'http:')).port);
const pid = target.child.pid;

function rss() {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : NaN;
  } catch {
    return NaN;
  }
}

/** What the target logged (at level error only): internal failures, which no peer may cause. */
function internalErrors() {
  return target.stderr().split('\n').filter((l) => l.trim() !== '');
}

const tally = { iterations: 0, violations: [], hangs: [], notes: new Map(), crashes: [], fuzzerErrors: [] };
class Hang extends Error {}
const withTimeout = (p, ms, what) =>
  Promise.race([p, new Promise((_, rej) => setTimeout(() => rej(new Hang(`${what}: no answer within ${ms} ms`)), ms).unref())]);

/** A well-behaved initiator on another disk: write, flush, read back. */
async function goodInitiatorWorks(round) {
  const rng = new Prng(iterationSeed(seed ^ 0xc0ffee, round));
  const d = await BlockDevice.open(`${mode === 'rdma' ? target.urls[1] : tcpUrl}/good`, {
    keepaliveIntervalMs: 0,
    ivqn: 'good-initiator',
    // Its keepalive is off on purpose (a fuzzed target may be slow to answer): no warning per batch.
    log: createLogger('error'),
  });
  try {
    const bytes = 512 * (1 + rng.below(256));
    const offset = 512 * rng.below((DISK_BYTES - bytes) / 512);
    const data = rng.bytes(bytes);
    await d.write(offset, data);
    await d.flush();
    const back = await d.read(offset, bytes);
    if (!back.equals(data)) throw new Error(`good initiator read back different data at ${offset}+${bytes}`);
  } finally {
    await d.close();
  }
}

let runSession = runTcpSession;
let sessionOpts = { port, tvqn: 'fuzz', diskBytes: DISK_BYTES, tally };
if (mode === 'rdma') {
  const { runRdmaSession } = await import('./rdma-session.mjs');
  runSession = runRdmaSession;
  sessionOpts = { url: target.urls[1], tvqn: 'fuzz', diskBytes: DISK_BYTES, tally };
}

try {
  await withTimeout(goodInitiatorWorks(-1), 120000, 'good initiator before fuzzing');
} catch (e) {
  console.error(`fuzz: the target does not serve a well-behaved initiator even before fuzzing: ${e.message}\n${target.stderr()}`);
  await target.stop();
  process.exit(1);
}
const rssBefore = rss();
let rssPeak = rssBefore;
const deadline = Date.now() + seconds * 1000;
let iteration = 0;
let batches = 0;
let errorsSeen = 0;

while (Date.now() < deadline) {
  const start = iteration;
  const indices = Array.from({ length: batchSize }, (_, k) => start + k);
  iteration += batchSize;
  // `concurrency` sessions at a time, interleaving on the target.
  for (let k = 0; k < indices.length; k += concurrency) {
    await Promise.all(
      indices.slice(k, k + concurrency).map((i) =>
        withTimeout(runSession(new Prng(iterationSeed(seed, i)), { ...sessionOpts, label: `#${i}` }), 120000, `iteration ${i}`).catch((e) => {
          // A timeout is the target's hang; anything else is the fuzzer's own failure.
          (e instanceof Hang ? tally.hangs : tally.fuzzerErrors).push(`iteration ${i}: ${e instanceof Hang ? e.message : e.stack}`);
        }),
      ),
    );
  }
  batches++;
  rssPeak = Math.max(rssPeak, rss());
  if (target.child.exitCode !== null || target.child.signalCode !== null) {
    tally.crashes.push(`target exited (${target.child.exitCode ?? target.child.signalCode}) during iterations ${start}..${iteration - 1}`);
    break;
  }
  const errs = internalErrors();
  if (errs.length > errorsSeen) {
    tally.crashes.push(`target logged internal errors during iterations ${start}..${iteration - 1}: ${errs.slice(errorsSeen, errorsSeen + 3).join(' | ')}`);
    errorsSeen = errs.length;
  }
  try {
    await withTimeout(goodInitiatorWorks(batches), 60000, 'good initiator');
  } catch (e) {
    tally.hangs.push(`after iterations ${start}..${iteration - 1}: ${e.message}`);
  }
  if (values.verbose) console.log(`fuzz: ${tally.iterations} iterations, RSS ${(rss() / MiB).toFixed(0)} MiB`);
}

// Let abandoned connections and instances be reclaimed, then measure again.
await new Promise((r) => setTimeout(r, 4000));
const rssAfter = rss();
const alive = target.child.exitCode === null && target.child.signalCode === null;
if (alive) {
  try {
    await withTimeout(goodInitiatorWorks(-2), 60000, 'final good initiator');
  } catch (e) {
    tally.hangs.push(`at the end: ${e.message}`);
  }
}
const code = alive ? await target.stop() : target.child.exitCode;
if (alive && code !== 0) tally.crashes.push(`target exited ${code} on SIGTERM`);
rmSync(dir, { recursive: true, force: true });

const mib = (n) => `${(n / MiB).toFixed(1)} MiB`;
console.log(`fuzz: ${tally.iterations} iterations in ${batches} batches (${seconds} s, seed ${seed})`);
console.log(`fuzz: crashes ${tally.crashes.length}, hangs ${tally.hangs.length}, protocol violations ${tally.violations.length}` +
  (tally.fuzzerErrors.length ? `, errors of the fuzzer itself ${tally.fuzzerErrors.length}` : ''));
console.log(`fuzz: target RSS before ${mib(rssBefore)}, peak ${mib(rssPeak)}, after ${mib(rssAfter)}`);
const notes = [...tally.notes.entries()].sort().map(([k, v]) => `${k} ${v}`).join(', ');
if (notes) console.log(`fuzz: ${notes}`);
for (const [what, list] of [['CRASH', tally.crashes], ['HANG', tally.hangs], ['VIOLATION', tally.violations], ['FUZZER ERROR', tally.fuzzerErrors]]) {
  for (const l of list.slice(0, 20)) console.log(`fuzz: ${what}: ${l}`);
  if (list.length > 20) console.log(`fuzz: ... and ${list.length - 20} more ${what}s`);
}
process.exitCode = tally.crashes.length + tally.hangs.length + tally.violations.length + tally.fuzzerErrors.length > 0 ? 1 : 0;
