import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { encodeCommand, Opcode } from '../../src/index.js';
import { nativeBinding } from '../../src/transport/rdma/native-binding.js';
import { RdmaWorkError } from '../../src/transport/rdma/send-queue.js';
import type { InitiatorConnection, KeyedMemoryOptions } from '../../src/transport/transport.js';
import type { RdmaInitiatorConnection } from '../../src/transport/rdma/rdma-initiator-connection.js';
import { rdmaAddress } from './rdma-env.js';
import { waitFor } from '../helpers/wait-for.js';
import { RawRdmaTarget, type RawTargetConnection } from './raw-rdma-target.js';

// Initiator remote keys die with their request (issue 8 item 5): every keyed descriptor the
// initiator sends is a type 2 memory window bound over exactly that command's bytes and
// invalidated before the caller sees the completion. A target that kept the descriptors of a
// finished command and uses them afterwards gets a remote access error and changes nothing.

/** IBV_WC_REM_ACCESS_ERR */
const REMOTE_ACCESS_ERROR = 10;
const KiB = 1024;

let target: RawRdmaTarget;

beforeAll(() => {
  target = new RawRdmaTarget(rdmaAddress());
});
afterAll(() => {
  target?.close();
});

/** Collects an initiator connection's completions and its close. */
function watch(initiator: InitiatorConnection): { completion(): Promise<Buffer>; closed: () => boolean } {
  const got: Buffer[] = [];
  let closed = false;
  initiator.start({
    onCompletion: (c) => got.push(Buffer.from(c)),
    expectedPayload: () => 0,
    payloadBuffers: () => [],
    onClose: () => (closed = true),
  });
  return {
    completion: async () => {
      await waitFor('the completion to reach the initiator', () => got.length > 0 || closed, 60000);
      const c = got.shift();
      if (!c) throw new Error('initiator connection closed before the completion');
      return c;
    },
    closed: () => closed,
  };
}

/** `body` with a fresh initiator connection to the bare target; both ends are closed afterwards. */
async function withConnection(
  queueSize: number,
  body: (initiator: InitiatorConnection, conn: RawTargetConnection, watcher: ReturnType<typeof watch>) => Promise<void>,
  keyedMemory?: KeyedMemoryOptions,
): Promise<void> {
  const { initiator, target: conn } = await target.connect(queueSize, keyedMemory);
  const watcher = watch(initiator);
  try {
    await body(initiator, conn, watcher);
  } finally {
    await initiator.close();
    conn.destroy();
  }
}

function vqCommand(id: number, outLength: number, inLength: number): Buffer {
  return encodeCommand({ opcode: Opcode.Vq, commandId: id, outLength, inLength });
}

async function expectRemoteAccessError(op: Promise<unknown>): Promise<void> {
  const err = await op.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err, 'the stale key still worked').toBeInstanceOf(RdmaWorkError);
  expect((err as RdmaWorkError).status).toBe(REMOTE_ACCESS_ERROR);
}

/**
 * One command with a device-readable buffer `out` and a device-writable buffer `into`: while
 * it is in flight the target READs and WRITEs through its descriptors (the control); it
 * completes; the initiator delivers the completion. Returns the descriptors the target kept.
 */
async function oneCommand(
  initiator: InitiatorConnection,
  conn: RawTargetConnection,
  watcher: ReturnType<typeof watch>,
  out: Buffer,
  into: Buffer,
  written: Buffer,
  /** Complete with a SEND with Invalidate of the first descriptor's key (vof remote invalidation). */
  invalidateFirst = false,
): Promise<{ outDesc: { addr: bigint; length: number; key: number }; inDesc: { addr: bigint; length: number; key: number } }> {
  initiator.sendVq(vqCommand(3, out.length, into.length), [out], [into]);
  const { command, descriptors } = await conn.nextCommand();
  expect(descriptors.length).toBe(2);
  const [outDesc, inDesc] = descriptors as [typeof descriptors[0], typeof descriptors[0]];
  expect([outDesc.length, inDesc.length]).toEqual([out.length, into.length]);
  // Control: in flight, the keys work, each for its own direction.
  expect((await conn.read(outDesc)).equals(out)).toBe(true);
  await conn.write(inDesc, written);
  await conn.complete(command, written.length, invalidateFirst ? outDesc.key : null);
  const c = await watcher.completion();
  expect([c.readUInt16LE(0), c.readUInt16LE(2), c.readUInt32LE(4)]).toEqual([0, 3, written.length]);
  expect(into.equals(written)).toBe(true);
  return { outDesc, inDesc };
}

describe('initiator keys die with their request', () => {
  const cases: Array<{ name: string; keyedMemory?: { registrationCache: boolean }; inPlace: boolean }> = [
    { name: 'bounced buffers (default)', inPlace: false },
    { name: 'allocateBuffer memory, used in place', inPlace: true },
    { name: 'opt-in registration cache', keyedMemory: { registrationCache: true }, inPlace: false },
  ];
  for (const tc of cases) {
    for (const attack of ['READ', 'WRITE'] as const) {
      it(`${tc.name}: an RDMA ${attack} with the descriptor of a completed command fails with a remote access error and changes nothing`, async () => {
        await withConnection(8, async (initiator, conn, watcher) => {
          const size = 64 * KiB; // ≥ 16 KiB: the cache registers it in place
          const out = tc.inPlace ? initiator.allocateBuffer!(size) : Buffer.alloc(size);
          const into = tc.inPlace ? initiator.allocateBuffer!(size) : Buffer.alloc(size);
          out.fill(0x5a);
          into.fill(0);
          const written = Buffer.alloc(size, 0xc3);
          const { outDesc, inDesc } = await oneCommand(initiator, conn, watcher, out, into, written);
          if (attack === 'READ') {
            await expectRemoteAccessError(conn.read(outDesc));
            // A READ through the device-writable window (wrong direction) is refused as well.
          } else {
            await expectRemoteAccessError(conn.write(inDesc, Buffer.alloc(size, 0xee)));
            // Neither the caller's bytes nor (in place) the registered memory changed.
            expect(into.equals(written)).toBe(true);
            expect(out.equals(Buffer.alloc(size, 0x5a))).toBe(true);
          }
        }, tc.keyedMemory);
      });
    }
  }

  it('a window grants only its direction: READ through a device-writable descriptor and WRITE through a device-readable one fail while in flight', async () => {
    for (const wrong of ['READ', 'WRITE'] as const) {
      await withConnection(8, async (initiator, conn) => {
        const out = Buffer.alloc(4 * KiB, 0x11);
        const into = Buffer.alloc(4 * KiB, 0);
        initiator.sendVq(vqCommand(0, out.length, into.length), [out], [into]);
        const { descriptors } = await conn.nextCommand();
        if (wrong === 'READ') await expectRemoteAccessError(conn.read(descriptors[1]!));
        else await expectRemoteAccessError(conn.write(descriptors[0]!, Buffer.alloc(4 * KiB, 0xee)));
        expect(out.equals(Buffer.alloc(4 * KiB, 0x11))).toBe(true);
      });
    }
  });

  it('each descriptor covers exactly the bytes of its command', async () => {
    await withConnection(8, async (initiator, conn) => {
      const header = Buffer.alloc(16, 1);
      const data = initiator.allocateBuffer!(8 * KiB).fill(2);
      const status = Buffer.alloc(1);
      initiator.sendVq(vqCommand(0, 16 + data.length, 1), [header, data], [status]);
      const { descriptors } = await conn.nextCommand();
      expect(descriptors.map((d) => d.length)).toEqual([16, 8 * KiB, 1]);
      // The allocateBuffer bytes are described in place; the window's range is exactly them.
      expect((await conn.read(descriptors[1]!)).equals(data)).toBe(true);
      // Three windows, three distinct keys.
      expect(new Set(descriptors.map((d) => d.key)).size).toBe(3);
      // The keys the initiator worked out in JS are the ones the addon's binds gave the windows.
      const slot = (initiator as unknown as { slots: Array<{ windows: Array<{ rkey: number }> }> }).slots[0]!;
      expect(descriptors.map((d) => d.key)).toEqual(slot.windows.slice(0, 3).map((w) => w.rkey));
    });
  });

  // The IB spec bounds a window to its bind; soft-RoCE (rxe, Linux 6.1 and 6.12) checks the range of the
  // underlying region instead, so there a live window reaches its whole region. Hardware NICs
  // refuse it: the test runs on them and says loudly why it cannot run on rxe.
  const onRxe = (nativeBinding().listDevices().find((d) => d.name.startsWith('rxe')) ?? null) !== null;
  if (onRxe) {
    console.warn(
      '\n##\n##  keys-rdma: NOT RUN on rxe: "one byte past a live window fails" (rxe checks the region, not the window range)\n##\n',
    );
  }
  it.skipIf(onRxe)('a window covers exactly the bytes of its command: one byte past it fails while in flight', async () => {
    await withConnection(8, async (initiator, conn) => {
      const into = Buffer.alloc(4 * KiB, 0);
      initiator.sendVq(vqCommand(0, 0, into.length), [], [into]);
      const { descriptors } = await conn.nextCommand();
      const d = descriptors[0]!;
      await expectRemoteAccessError(conn.write({ ...d, length: d.length + 1 }, Buffer.alloc(d.length + 1, 0xee)));
    });
  });

  it('closing the connection releases every window (native counts back to where they were)', async () => {
    const binding = nativeBinding();
    const before = binding.resourceCounts();
    const { initiator, target: conn } = await target.connect(4);
    const watcher = watch(initiator);
    const into = Buffer.alloc(4 * KiB);
    await oneCommand(initiator, conn, watcher, Buffer.alloc(4 * KiB, 1), into, Buffer.alloc(4 * KiB, 2));
    expect(binding.resourceCounts().memoryWindows).toBeGreaterThan(before.memoryWindows);
    await initiator.close();
    conn.destroy();
    await waitFor('windows and regions to be released', () => {
      const now = binding.resourceCounts();
      return now.memoryWindows === before.memoryWindows && now.memoryRegions === before.memoryRegions;
    }, 60000);
  });
});

// vof remote invalidation (docs/PROTOCOL.md "Remote invalidation on keyed queues"): the target
// may send a VQ completion as a SEND with Invalidate of the command's first key. The initiator's
// NIC ends that key before the completion is reported; the initiator invalidates only the rest.
describe('remote invalidation: a completion that ends its command\'s first key', () => {
  const stats = (i: InitiatorConnection) => (i as RdmaInitiatorConnection).keyStats;

  for (const attack of ['READ', 'WRITE'] as const) {
    it(`the first key dies with the completion's arrival, the second by a LOCAL_INV: an RDMA ${attack} through it afterwards fails`, async () => {
      await withConnection(8, async (initiator, conn, watcher) => {
        const out = Buffer.alloc(8 * KiB, 0x5a);
        const into = Buffer.alloc(8 * KiB, 0);
        const written = Buffer.alloc(8 * KiB, 0xc3);
        const { outDesc, inDesc } = await oneCommand(initiator, conn, watcher, out, into, written, true);
        // One key ended by the target's SEND with Invalidate, one by the initiator's LOCAL_INV.
        expect(stats(initiator)).toEqual({ remoteInvalidations: 1, localInvalidations: 1 });
        if (attack === 'READ') await expectRemoteAccessError(conn.read(outDesc));
        else {
          await expectRemoteAccessError(conn.write(inDesc, Buffer.alloc(into.length, 0xee)));
          expect(into.equals(written)).toBe(true);
        }
      });
    });
  }

  it('a window ended remotely is bound again by the next command on the same id, which works', async () => {
    await withConnection(8, async (initiator, conn, watcher) => {
      for (let round = 1; round <= 3; round++) {
        const out = Buffer.alloc(4 * KiB, round);
        const into = Buffer.alloc(4 * KiB, 0);
        const written = Buffer.alloc(4 * KiB, 0x80 + round);
        await oneCommand(initiator, conn, watcher, out, into, written, true);
        expect(stats(initiator)).toEqual({ remoteInvalidations: round, localInvalidations: round });
      }
    });
  });

  it('a command with one descriptor needs no LOCAL_INV at all, and its key is dead afterwards', async () => {
    await withConnection(8, async (initiator, conn, watcher) => {
      const into = Buffer.alloc(4 * KiB, 0);
      initiator.sendVq(vqCommand(5, 0, into.length), [], [into]);
      const { command, descriptors } = await conn.nextCommand();
      expect(descriptors.length).toBe(1);
      const d = descriptors[0]!;
      await conn.write(d, Buffer.alloc(4 * KiB, 0x42));
      await conn.complete(command, 4 * KiB, d.key);
      const c = await watcher.completion();
      expect([c.readUInt16LE(0), c.readUInt16LE(2)]).toEqual([0, 5]);
      expect(into.equals(Buffer.alloc(4 * KiB, 0x42))).toBe(true);
      expect(stats(initiator)).toEqual({ remoteInvalidations: 1, localInvalidations: 0 });
      await expectRemoteAccessError(conn.write(d, Buffer.alloc(4 * KiB, 0xee)));
      expect(into.equals(Buffer.alloc(4 * KiB, 0x42))).toBe(true);
    });
  });

  it('a completion that ends a key other than its command\'s first closes the connection; the caller never sees it', async () => {
    await withConnection(8, async (initiator, conn, watcher) => {
      const out = Buffer.alloc(4 * KiB, 1);
      const into = Buffer.alloc(4 * KiB, 0);
      initiator.sendVq(vqCommand(2, out.length, into.length), [out], [into]);
      const { command, descriptors } = await conn.nextCommand();
      // The second descriptor's key: a live key of ours, but not the one the rule allows.
      await conn.complete(command, 0, descriptors[1]!.key);
      await waitFor('the initiator to close the connection', () => watcher.closed(), 60000);
      await expect(watcher.completion()).rejects.toThrow('initiator connection closed before the completion');
    });
  });
});
