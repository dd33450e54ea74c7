#!/usr/bin/env node
// Prints how binding.gyp links liburing into the addon: "static" (liburing.a, so the built addon
// needs no liburing at run time), "shared" (-luring), or "none" (no liburing.h: the addon is
// built without io_uring and vof uses libuv's thread pool for file I/O).
// VOF_NO_URING=1 forces "none".
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { isAbsolute } from 'node:path';

function mode() {
  if (process.env.VOF_NO_URING === '1') return 'none';
  if (!['/usr/include', '/usr/local/include'].some((d) => existsSync(`${d}/liburing.h`))) return 'none';
  const cc = process.env.CC || 'cc';
  const r = spawnSync(cc, ['-print-file-name=liburing.a'], { encoding: 'utf8' });
  const found = r.status === 0 ? r.stdout.trim() : '';
  return isAbsolute(found) && existsSync(found) ? 'static' : 'shared';
}
process.stdout.write(`${mode()}\n`);
