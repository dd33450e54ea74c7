// What one round trip costs a bare Node.js process, beside what one vof 4 KiB read costs at
// queue depth 1 — interleaved, per round. At QD1 every I/O is a wake of each process, so the
// per-wake cost of the runtime is a floor under vof's latency and CPU per I/O: under the
// soft-RoCE VM's TCG emulation that floor is far higher than on the host, and this says how
// much of vof's QD1 figure it explains.
//
//   node bench/node-floor.mjs [--rounds N] [--time SEC] [URL ...]
//
// URL: where the vof target listens (default tcp://127.0.0.1:0; add rdma://ADDR:0 in the VM).
// Each round runs: a two-process TCP echo (64-byte request, 4112-byte reply: a 4 KiB read's
// bytes on the wire), then a vof target (this process, a 4 MiB file export) and a vof initiator
// (a child) doing 4 KiB reads at QD1 per URL. Prints one JSON line per system and round: round
// trips per second, and CPU µs per round trip of each side (user + system, process.cpuUsage).
import { fork } from 'node:child_process';
import { unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const self = fileURLToPath(import.meta.url);
const dist = new URL('../dist/index.js', import.meta.url).href;
const REQUEST = 64;
const REPLY = 4096 + 16;

const [role] = process.argv.slice(2);
if (role === '--echo-server') echoServer();
else if (role === '--vof-initiator') await vofInitiator(process.argv[3], +process.argv[4]);
else await main();

function usPerTrip(cpu, n) {
  return Math.round((cpu.user + cpu.system) / Math.max(n, 1));
}

/** The child's request: `until` ms of work; it answers with its count, wall time and CPU. */
function childWindow(child, ms) {
  return new Promise((resolve) => {
    child.once('message', resolve);
    child.send(ms);
  });
}

function echoServer() {
  const reply = Buffer.alloc(REPLY);
  const server = net.createServer((s) => {
    s.setNoDelay(true);
    let got = 0;
    s.on('data', (d) => {
      got += d.length;
      while (got >= REQUEST) {
        got -= REQUEST;
        s.write(reply);
      }
    });
  });
  server.listen(0, '127.0.0.1', () => process.send({ port: server.address().port }));
  let c0 = process.cpuUsage();
  process.on('message', (m) => {
    if (m === 'start') c0 = process.cpuUsage();
    else process.send(process.cpuUsage(c0));
  });
}

async function echoRound(ms) {
  const child = fork(self, ['--echo-server']);
  const { port } = await new Promise((r) => child.once('message', r));
  const c = net.connect(port, '127.0.0.1');
  c.setNoDelay(true);
  await new Promise((r) => c.once('connect', r));
  const request = Buffer.alloc(REQUEST);
  child.send('start');
  const c0 = process.cpuUsage();
  const w0 = performance.now();
  const end = w0 + ms;
  let n = 0;
  let got = 0;
  await new Promise((resolve) => {
    c.on('data', (d) => {
      got += d.length;
      if (got < REPLY) return;
      got -= REPLY;
      n++;
      if (performance.now() < end) c.write(request);
      else resolve();
    });
    c.write(request);
  });
  const client = process.cpuUsage(c0);
  const wall = performance.now() - w0;
  child.send('stop');
  const server = await new Promise((r) => child.once('message', r));
  c.destroy();
  child.kill();
  return { n, perSec: Math.round((n / wall) * 1000), initiatorUs: usPerTrip(client, n), targetUs: usPerTrip(server, n) };
}

async function vofInitiator(url, warmMs) {
  const { BlockDevice } = await import(dist);
  const dev = await BlockDevice.open(url, { maxQueues: 1 });
  const buf = Buffer.alloc(4096);
  const slots = (4 << 20) / 4096;
  const run = (ms) =>
    new Promise((resolve, reject) => {
      const end = performance.now() + ms;
      let n = 0;
      const done = (err) => {
        if (err) return reject(err);
        n++;
        if (performance.now() >= end) return resolve(n);
        dev.submitRead((n % slots) * 4096, buf, done);
      };
      dev.submitRead(0, buf, done);
    });
  await run(warmMs);
  process.on('message', async (ms) => {
    const c0 = process.cpuUsage();
    const w0 = performance.now();
    const n = await run(ms);
    process.send({ n, wall: performance.now() - w0, cpu: process.cpuUsage(c0) });
    await dev.close();
    process.exit(0);
  });
  process.send('ready');
}

async function vofRound(url, ms) {
  const { FileBlockExport, VofTarget, silentLogger } = await import(dist);
  const image = join(tmpdir(), `vof-floor-${process.pid}.img`);
  writeFileSync(image, Buffer.alloc(4 << 20));
  const target = new VofTarget({ log: silentLogger });
  target.addExport('floor', await FileBlockExport.open(image));
  const listening = await target.listen(url);
  const child = fork(self, ['--vof-initiator', `${listening}/floor`, '1000']);
  await new Promise((r) => child.once('message', r));
  const c0 = process.cpuUsage();
  const m = await childWindow(child, ms);
  const server = process.cpuUsage(c0);
  await new Promise((r) => (child.exitCode === null ? child.once('exit', r) : r()));
  await target.close();
  unlinkSync(image);
  return { n: m.n, perSec: Math.round((m.n / m.wall) * 1000), initiatorUs: usPerTrip(m.cpu, m.n), targetUs: usPerTrip(server, m.n) };
}

async function main() {
  const args = process.argv.slice(2);
  let rounds = 3;
  let sec = 5;
  const urls = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--rounds') rounds = +args[++i];
    else if (args[i] === '--time') sec = +args[++i];
    else urls.push(args[i]);
  }
  if (urls.length === 0) urls.push('tcp://127.0.0.1:0');
  for (let round = 1; round <= rounds; round++) {
    console.log(JSON.stringify({ round, system: 'node-echo', ...(await echoRound(sec * 1000)) }));
    for (const url of urls) {
      const system = `vof-${url.split(':')[0]}`;
      console.log(JSON.stringify({ round, system, ...(await vofRound(url, sec * 1000)) }));
    }
  }
}
