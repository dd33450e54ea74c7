import { loadedNativeBinding } from '../transport/rdma/native-binding.js';

/**
 * What `{"op":"stats"}` on the control socket answers: this process's memory and, once the RDMA
 * addon is loaded, the live rdma-core objects and the cumulative number of memory registrations
 * (`registrationsTotal`, where the addon counts them) of the thread the target runs in (the
 * addon counts per Node.js environment). `vof bench` reads it before and after a
 * measurement to show that the data path registers no memory and that RSS stays flat.
 */
export function targetProcessStats(): Record<string, number> {
  const mem = process.memoryUsage();
  const stats: Record<string, number> = { rssBytes: mem.rss, heapUsedBytes: mem.heapUsed, arrayBuffersBytes: mem.arrayBuffers };
  const counts = loadedNativeBinding()?.resourceCounts();
  if (counts) for (const [k, v] of Object.entries(counts)) if (typeof v === 'number') stats[k] = v;
  return stats;
}
