/**
 * vof's remote-invalidation extension for keyed (RDMA) virtqueues (docs/PROTOCOL.md "Remote
 * invalidation on keyed queues"). Once VOF_F_REMOTE_INVALIDATE has been set on the control
 * queue, the target may send a VQ completion as a SEND with Invalidate whose invalidate key is
 * the request's first keyed descriptor's key, so the initiator's NIC ends that key before the
 * completion is reported and the initiator posts no LOCAL_INV for it (NVMe over RDMA's
 * "Send with Invalidate"). Pure constants: the verbs are in src/transport/rdma.
 */

/** Virtio-oF feature bit (Get/Set Feature, window 0): VQ completions may invalidate desc[0].key. */
export const VOF_F_REMOTE_INVALIDATE = 57n;
