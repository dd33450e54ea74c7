import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// The folder layout is the architecture (docs/ARCHITECTURE.md section 1, docs/LAYOUT.md): the
// codec and the shared primitives import no end, the transports no core, and the two ends never
// import each other. This reads every import of src/ and fails on the first that crosses a line.
const SRC = fileURLToPath(new URL('../src/', import.meta.url));

/** What each top-level folder of src/ may import besides itself. */
const MAY_IMPORT: Record<string, readonly string[]> = {
  protocol: ['util'],
  util: [],
  transport: ['protocol', 'util'],
  target: ['protocol', 'util', 'transport', 'nbd'], // nbd: the NBD client behind nbd:// storage
  initiator: ['protocol', 'util', 'transport'],
  nbd: ['protocol', 'util', 'transport', 'initiator'], // the bridge serves an initiator's BlockDevice
  vduse: ['protocol', 'util', 'transport', 'initiator'],
};

function* sources(dir: string): Generator<string> {
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* sources(p);
    else if (e.name.endsWith('.ts')) yield p;
  }
}

/** The top-level folder of src/ a path is in ('' for src/index.ts and the like). */
const area = (file: string) => {
  const rel = path.relative(SRC, file).split(path.sep);
  return rel.length > 1 ? rel[0]! : '';
};

describe('the layering of src/', () => {
  it('no import crosses a line the layout draws', () => {
    const crossings: string[] = [];
    let imports = 0;
    for (const file of sources(SRC)) {
      const from = area(file);
      const allowed = MAY_IMPORT[from];
      if (!allowed) continue; // cli, bench, the package root: users of everything
      for (const m of readFileSync(file, 'utf8').matchAll(/(?:from|import)\s*\(?\s*'(\.{1,2}\/[^']+)'/g)) {
        imports++;
        const to = area(path.resolve(path.dirname(file), m[1]!));
        if (to !== from && !allowed.includes(to)) crossings.push(`${path.relative(SRC, file)} imports ${m[1]} (${from} -> ${to || 'src/'})`);
      }
    }
    expect(imports).toBeGreaterThan(300); // the scan found the imports it checks
    expect(crossings).toEqual([]);
  });
});
