import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

// vega and vega-lite are optional peer dependencies (only `vof bench --chart` uses them). A copy
// of the built package with no node_modules beside it stands for an installation without them;
// plain node runs it (vitest would resolve the packages from this checkout).
const dir = mkdtempSync(join(tmpdir(), 'vof-no-vega-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('vof bench --chart without the optional vega packages', () => {
  it('fails with a message naming the packages and how to install them', () => {
    cpSync(join(process.cwd(), 'dist'), join(dir, 'dist'), { recursive: true });
    writeFileSync(join(dir, 'package.json'), JSON.stringify({ type: 'module' }));
    const script = `
      const { renderChart } = await import('./dist/bench/chart.js');
      const report = { summaries: [], results: [], machine: { cpus: 2, cpuModel: 'x' }, startedAt: 'now' };
      try { await renderChart(report); console.log('rendered'); } catch (e) { console.log(e.constructor.name, e.exitCode, e.message); }`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { cwd: dir, encoding: 'utf8' });
    expect(r.stdout.trim()).toBe(
      'CliError 1 --chart needs the optional packages vega and vega-lite: npm install vega vega-lite (in the directory vof is installed in)',
    );
  });
});
