import { join } from 'node:path';
import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileBlockExport, RemoteDevice, type DeviceModel } from '../../src/index.js';
import { withInstanceOverrides } from '../helpers/device-proxy.js';
import { TargetFixture } from '../helpers/target-fixture.js';
import { waitFor } from '../helpers/wait-for.js';

const opts = { keepaliveIntervalMs: 0 };

/**
 * Request objects and transport-supplied buffers end to end over one transport: what a device
 * writes into the writable buffer the transport gave it is exactly what reaches the initiator,
 * and the initiator's slots (command id = slot < queue size) hold a full queue.
 */
export function ioSlotsSuite(name: string, listenUrl: string): void {
  describe(`device requests over ${name}`, () => {
    let fx: TargetFixture;
    let url: string;
    /** Requests the gated device has started and not finished. */
    let started = 0;
    let gate: Promise<void> = Promise.resolve();
    let open: () => void = () => {};

    beforeAll(async () => {
      fx = new TargetFixture();
      const path = join(fx.dir, 'partial.img');
      writeFileSync(path, Buffer.alloc(1024 * 1024));
      // readable[0] = 1: write readable[1..4] (u32) bytes of 0x5a, then report that count.
      // readable[0] = 2: the same, after the gate opens. Anything else: the real disk.
      const partial = (inner: DeviceModel): Partial<DeviceModel> => ({
        handleRequest: async (vq, readable, writable, signal) => {
          const mode = readable[0];
          if (mode !== 1 && mode !== 2) return inner.handleRequest(vq, readable, writable, signal);
          if (mode === 2) {
            started++;
            await gate;
            started--;
          }
          const n = Math.min(readable.readUInt32LE(1), writable.length);
          writable.fill(0x5a, 0, n);
          return n;
        },
      });
      fx.target.addExport('partial', withInstanceOverrides(await FileBlockExport.open(path), 'partial writes', partial));
      url = await fx.listen(listenUrl);
    });
    afterAll(async () => {
      await fx?.close();
    });

    const ask = (mode: number, n: number) => {
      const r = Buffer.alloc(16);
      r[0] = mode;
      r.writeUInt32LE(n, 1);
      return r;
    };

    it('a device that writes fewer bytes than in_length: the completion length is what it wrote, and only those bytes reach the initiator', async () => {
      const dev = await RemoteDevice.connect(`${url}/partial`, opts);
      try {
        // Full, then shorter and shorter: the transport's buffers are reused, and what an
        // earlier request left in them must not arrive (the stream must stay in step too).
        for (const n of [8192, 8192, 100, 4096, 1, 0, 8191]) {
          const into = Buffer.alloc(8192, 0xaa);
          const written = await dev.request(0, [ask(1, n)], [into]);
          expect(written).toBe(n);
          expect(into.subarray(0, n).every((b) => b === 0x5a)).toBe(true);
          expect(into.subarray(n).every((b) => b === 0xaa)).toBe(true);
        }
        // Split device-writable buffers: filled in order, the rest untouched.
        const parts = [Buffer.alloc(3, 0xaa), Buffer.alloc(5000, 0xaa), Buffer.alloc(200, 0xaa)];
        expect(await dev.request(0, [ask(1, 3000)], parts)).toBe(3000);
        expect(parts[0]!.every((b) => b === 0x5a)).toBe(true);
        expect(parts[1]!.subarray(0, 2997).every((b) => b === 0x5a)).toBe(true);
        expect(parts[1]!.subarray(2997).every((b) => b === 0xaa)).toBe(true);
        expect(parts[2]!.every((b) => b === 0xaa)).toBe(true);
      } finally {
        await dev.close();
      }
    });

    it('queue-size commands are in flight at once, one more waits for a slot (and does not fail), and command ids stay below the queue size', async () => {
      const dev = await RemoteDevice.connect(`${url}/partial`, { ...opts, queueSize: 4 });
      try {
        const q = dev.queues[0]!;
        expect(q.queueSize).toBe(4);
        const ids: number[] = [];
        const conn = q.connection;
        const send = conn.sendVq.bind(conn);
        conn.sendVq = (command, out, inBuffers) => {
          ids.push(command.readUInt16LE(2));
          send(command, out, inBuffers);
        };
        gate = new Promise((r) => (open = r));
        const held = Array.from({ length: 5 }, () => dev.request(0, [ask(2, 16)], [Buffer.alloc(16)]));
        await waitFor('four requests to start', () => started >= 4, 5000, 10);
        expect(started).toBe(4);
        expect(q.inFlight).toBe(4);
        expect(ids).toEqual([0, 1, 2, 3]); // the fifth waits for a slot
        open();
        expect(await Promise.all(held)).toEqual([16, 16, 16, 16, 16]);
        // Keep the queue full for a while: every new command takes the slot a completion has
        // just freed, which the target must accept at once.
        const many = Array.from({ length: 200 }, (_, i) => dev.request(0, [ask(1, i % 64)], [Buffer.alloc(64)]));
        expect(await Promise.all(many)).toEqual(Array.from({ length: 200 }, (_, i) => i % 64));
        expect(ids.length).toBe(205);
        expect(ids.every((id) => id >= 0 && id < 4)).toBe(true);
      } finally {
        open();
        gate = Promise.resolve();
        await dev.close();
      }
    });
  });
}
