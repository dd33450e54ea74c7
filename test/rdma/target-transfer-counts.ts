import type { DeviceInstance } from '../../src/target/device-instance.js';
import type { RdmaTargetConnection } from '../../src/transport/rdma/rdma-target-connection.js';
import type { TargetFixture } from '../helpers/target-fixture.js';

export type TransferCounts = RdmaTargetConnection['transferCounts'];

/**
 * What the RDMA virtqueue connections of an in-process target have counted so far, summed:
 * inline requests, RDMA READ chains, completions sent as a SEND with Invalidate.
 */
export function targetTransferCounts(fx: TargetFixture): TransferCounts {
  const instances = (fx.target as unknown as { instances: Map<number, DeviceInstance> }).instances;
  const sum = { inlineRequests: 0, rdmaReads: 0, remoteInvalidations: 0 };
  for (const inst of instances.values()) {
    for (const q of inst.virtqueues.values()) {
      const c = (q.connection as RdmaTargetConnection).transferCounts;
      sum.inlineRequests += c.inlineRequests;
      sum.rdmaReads += c.rdmaReads;
      sum.remoteInvalidations += c.remoteInvalidations;
    }
  }
  return sum;
}
