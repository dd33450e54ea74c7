import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { join } from 'node:path';

/**
 * A CPU profile of this process (the initiator) over a stretch of the run, written as a
 * .cpuprofile file in `dir`, the same format as `node --cpu-prof` (open it in Chrome DevTools
 * or read it with bench/cpuprofile-top.mjs).
 */
export async function profileSelf<T>(dir: string, name: string, body: () => Promise<T>): Promise<T> {
  const session = new Session();
  session.connect();
  await session.post('Profiler.enable');
  await session.post('Profiler.start');
  try {
    return await body();
  } finally {
    const { profile } = await session.post('Profiler.stop');
    writeFileSync(join(dir, `${name}.cpuprofile`), JSON.stringify(profile));
    session.disconnect();
  }
}
