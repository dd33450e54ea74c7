#!/usr/bin/env node
// Samples a running target's memory every 5 s while 128 KiB writes at QD8 run against it:
//   node dist/cli/main.js target --listen tcp://127.0.0.1:17002 --blk d=IMAGE --control /tmp/rss.ctl &
//   node bench/target-rss.mjs tcp://127.0.0.1:17002/d /tmp/rss.ctl [seconds]
// Reads RSS, V8 heap and ArrayBuffer bytes through the control socket's {"op":"stats"}.
import { BlockDevice } from '../dist/index.js';
import { controlRequest } from '../dist/target/control-client.js';

const [url, ctl, secondsArg] = process.argv.slice(2);
if (!url || !ctl) {
  console.error('usage: node bench/target-rss.mjs DEVICE-URL CONTROL-SOCKET [seconds]');
  process.exit(2);
}
const seconds = Number(secondsArg ?? 60);
const dev = await BlockDevice.open(url);
const bs = 131072;
const qd = 8;
let stop = false;
let ios = 0;
const workers = Array.from({ length: qd }, async (_, w) => {
  const b = dev.device.allocateBuffer(bs);
  for (let i = w; !stop; i += qd, ios++) await dev.write((i % 1500) * bs, b);
});
const t0 = Date.now();
const mib = (n) => (n / 2 ** 20).toFixed(1);
const sample = async () => {
  const s = await controlRequest(ctl, { op: 'stats' });
  console.log(`${((Date.now() - t0) / 1000).toFixed(0).padStart(3)} s  rss ${mib(s.rssBytes)} MiB  heapUsed ${mib(s.heapUsedBytes)}  arrayBuffers ${mib(s.arrayBuffersBytes)}  writes ${ios}`);
};
await sample();
for (let t = 5; t <= seconds; t += 5) {
  await new Promise((r) => setTimeout(r, 5000));
  await sample();
}
stop = true;
await Promise.all(workers);
await dev.close();
