import type { MemoryRegion, ProtectionDomain } from '../../src/transport/rdma/native-binding.js';

/**
 * A protection domain that only keeps count (the registration bookkeeping needs no NIC): `live`
 * registrations not yet deregistered, `made` ever, every region made. A region deregistered
 * twice throws (one release path per registration); `failWith` makes every registration fail.
 */
export function fakePd(failWith?: Error): ProtectionDomain & { live: number; made: number; regions: MemoryRegion[] } {
  const pd = {
    live: 0,
    made: 0,
    regions: [] as MemoryRegion[],
    registerMemory(buffer: Uint8Array): MemoryRegion {
      if (failWith) throw failWith;
      pd.live++;
      pd.made++;
      let gone = false;
      const mr: MemoryRegion = {
        lkey: 1,
        rkey: 1,
        address: 0n,
        length: buffer.length,
        buffer: Buffer.from(buffer.buffer, buffer.byteOffset, buffer.length),
        deregister: () => {
          if (gone) throw new Error('deregistered twice');
          pd.live--;
          gone = true;
        },
      };
      pd.regions.push(mr);
      return mr;
    },
    dealloc: () => true,
    registrations: () => pd.made,
  };
  return pd;
}
