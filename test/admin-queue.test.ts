import { describe, expect, it } from 'vitest';
import { Opcode, Status } from '../src/protocol/constants.js';
import { VIRTIO_F_ADMIN_VQ } from '../src/protocol/admin-records.js';
import { AdminQueue, type AdminQueueHost } from '../src/initiator/admin-queue.js';
import type { InitiatorQueue } from '../src/initiator/initiator-queue.js';

/** A host whose openQueue calls the test settles by hand; the admin queue is virtqueue 1. */
function host() {
  const opens: Array<{ resolve: (q: InitiatorQueue) => void; reject: (e: Error) => void }> = [];
  const control = {
    call: async (cmd: { opcode: number; vqIndex: number }) => ({ status: cmd.opcode === Opcode.GetVqSize && cmd.vqIndex <= 1 ? Status.SUCCESS : 1 }),
  } as unknown as InitiatorQueue;
  const h: AdminQueueHost = {
    url: () => 'tcp://127.0.0.1:1/x',
    control: () => control,
    virtqueuesConnected: () => 1,
    hasFeature: (bit) => bit === VIRTIO_F_ADMIN_VQ,
    unusable: () => null,
    whenUsable: async () => {},
    openQueue: () => new Promise((resolve, reject) => opens.push({ resolve, reject })),
  };
  return { h, opens };
}

const settle = () => new Promise((r) => setTimeout(r, 0));

describe('AdminQueue attempts', () => {
  it('an older attempt that fails after a path failure dropped it does not clear the newer attempt (issue 21 item 7)', async () => {
    const { h, opens } = host();
    const admin = new AdminQueue(h);
    const connect = () => (admin as unknown as { connect(): Promise<InitiatorQueue> }).connect();
    const first = connect();
    first.catch(() => {});
    await settle();
    expect(opens).toHaveLength(1);
    // The path fails: the device drops the attempt; the next admin command starts another.
    expect(admin.drop()).toBe(first);
    const second = connect();
    await settle();
    expect(opens).toHaveLength(2);
    // Now the first attempt fails (its connection went with the old path).
    opens[0]!.reject(new Error('old path gone'));
    await settle();
    // The second attempt is still the current one: it will be closed with the device.
    expect(admin.current).toBe(second);
    const q = {} as InitiatorQueue;
    opens[1]!.resolve(q);
    expect(await second).toBe(q);
    expect(admin.current).toBe(second);
  });

  it('a failed attempt is forgotten, so the next call tries again', async () => {
    const { h, opens } = host();
    const admin = new AdminQueue(h);
    const connect = () => (admin as unknown as { connect(): Promise<InitiatorQueue> }).connect();
    const first = connect();
    await settle();
    opens[0]!.reject(new Error('refused'));
    await expect(first).rejects.toThrow('refused');
    await settle();
    expect(admin.current).toBeNull();
    void connect().catch(() => {});
    await settle();
    expect(opens).toHaveLength(2);
  });
});
