#!/usr/bin/env node
// The top self-time costs of a .cpuprofile (node --cpu-prof, or `vof bench --cpu-prof DIR`).
//   node bench/cpuprofile-top.mjs FILE.cpuprofile [N]
// Prints self time per function (name, file:line) as a share of all samples, GC and idle included.
import { readFileSync } from 'node:fs';
import { relative } from 'node:path';

const [file, count = '15'] = process.argv.slice(2);
if (!file) {
  console.error('usage: node bench/cpuprofile-top.mjs FILE.cpuprofile [N]');
  process.exit(2);
}
const profile = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(profile.nodes.map((n) => [n.id, n]));
// timeDeltas[i] is the time before sample i: attribute it to that sample's node.
const self = new Map();
let total = 0;
profile.samples.forEach((id, i) => {
  const dt = profile.timeDeltas[i] ?? 0;
  const { functionName, url, lineNumber } = byId.get(id).callFrame;
  const where = url ? `${relative(process.cwd(), url.replace(/^file:\/\//, ''))}:${lineNumber + 1}` : '';
  const key = `${functionName || '(anonymous)'} ${where}`.trim();
  self.set(key, (self.get(key) ?? 0) + dt);
  total += dt;
});
console.log(`${file}: ${(total / 1e6).toFixed(2)} s sampled`);
for (const [key, t] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(count))) {
  console.log(`${((100 * t) / total).toFixed(1).padStart(5)}%  ${(t / 1e3).toFixed(0).padStart(6)} ms  ${key}`);
}
