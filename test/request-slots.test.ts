import { afterEach, describe, expect, it } from 'vitest';
import { BlkRequestType, BlockDevice, FileBlockExport, Status, silentLogger, type RequestCancel } from '../src/index.js';
import type { DeviceRequest } from '../src/target/device.js';
import { encodeBareCompletion } from '../src/protocol/completion.js';
import type { DeviceInstance } from '../src/target/device-instance.js';
import { TargetRequest, type CompletionSink, type RequestSteps } from '../src/target/target-request.js';
import { VqTransferError, type VqBufferSink, type VqRequestData } from '../src/transport/transport.js';
import { withInstanceOverrides } from './helpers/device-proxy.js';
import { TargetFixture } from './helpers/target-fixture.js';

/**
 * A target command's life on its queue's pre-allocated request slot (issue 18): the states
 * free → running → completed → free, cancellation in each, and that a queue makes no more slots
 * than it has commands in flight however many commands it runs.
 */

const status = (b: Buffer) => b.readUInt16LE(0);

function fakeSink() {
  const sent: Buffer[] = [];
  const events: string[] = [];
  let releaseSend: () => void = () => {};
  const sink: CompletionSink = {
    vacate: (r) => events.push(`vacate ${r.commandId}`),
    send: (c) => {
      sent.push(c);
      events.push(`send ${status(c)}`);
    },
    sendVq: (r, c) => {
      sent.push(c);
      events.push(`sendVq ${status(c)}`);
      releaseSend = () => r.onSent(null);
    },
    finished: (r) => events.push(`finished ${r.commandId}`),
  };
  const steps: RequestSteps = {
    dispatchFailed: () => {},
    // As the queue does: the buffers go to the device, which here answers at once (false) unless
    // a test says it holds the command (true: a completion follows).
    fetched: (r, readable, writable) => {
      events.push(`fetched ${r.commandId} ${readable.length}+${writable.length}`);
      if (r.cancelled) {
        r.complete(encodeBareCompletion(Status.ESTATUS, r.commandId));
        return false;
      }
      return holds;
    },
    fetchFailed: (r, err) => r.complete(encodeBareCompletion(err.direction === 'out' ? Status.EOUTVQBUF : Status.EINVQBUF, r.commandId)),
    executed: () => false,
    executeFailed: () => {},
    completed: () => {},
    completeFailed: () => {},
  };
  let holds = false;
  return { sink, steps, sent, events, releaseSend: () => releaseSend(), hold: (h: boolean) => (holds = h) };
}

function fakeData(): VqRequestData & { released: number } {
  const b = Buffer.alloc(8);
  return {
    outLength: 0,
    inLength: 8,
    released: 0,
    readOutNow: () => Buffer.alloc(0),
    writableNow: () => b,
    fetch: (sink) => sink.buffersReady(Buffer.alloc(0), b),
    release() {
      this.released++;
    },
  };
}

describe('request slot states (fake transport)', () => {
  it('free → running → completed → free; a second completion and a second finish do nothing', () => {
    const f = fakeSink();
    const r = new TargetRequest(f.sink, f.steps);
    expect(r.state).toBe('free');
    const data = fakeData();
    r.start(7, 0, data, 64);
    expect([r.state, r.commandId, r.reserved]).toEqual(['running', 7, 64]);
    r.complete(encodeBareCompletion(Status.SUCCESS, 7));
    r.complete(encodeBareCompletion(Status.ENOCMD, 7));
    expect(r.state).toBe('completed');
    expect(f.events).toEqual(['vacate 7', `send ${Status.SUCCESS}`]);
    r.finish();
    r.finish();
    expect(r.state).toBe('free');
    expect(data.released).toBe(1);
    expect(f.events).toEqual(['vacate 7', `send ${Status.SUCCESS}`, 'finished 7']);
    // A finished slot answers nothing more: a late completion from its old command is dropped.
    r.complete(encodeBareCompletion(Status.SUCCESS, 7));
    expect(f.sent).toHaveLength(1);
  });

  it('a slot serves one command at a time, and starts its next one with no trace of the last (cancel flag, buffers)', () => {
    const f = fakeSink();
    const r = new TargetRequest(f.sink, f.steps);
    r.start(1, 0, fakeData(), 0);
    expect(() => r.start(2, 0, null, 0)).toThrow(/request slot for command 2 is running, not free/);
    r.readable = Buffer.alloc(4);
    r.cancel('reset');
    r.finish();
    expect(r.readable).toBeNull();
    r.start(2, 0, null, 0);
    expect([r.cancelled, r.aborted, r.commandId, r.data]).toEqual([false, false, 2, null]);
    expect(() => r.throwIfAborted()).not.toThrow();
  });

  it('cancelled while running: SUCCESS becomes ESTATUS, the device sees aborted, throwIfAborted and whenAborted', async () => {
    const f = fakeSink();
    const r = new TargetRequest(f.sink, f.steps);
    r.start(3, 0, fakeData(), 0);
    const cancel: RequestCancel = r;
    const woken = cancel.whenAborted!();
    r.cancel('device reset');
    await woken;
    expect(cancel.aborted).toBe(true);
    expect(() => cancel.throwIfAborted()).toThrow(/request cancelled: device reset/);
    r.complete(encodeBareCompletion(Status.SUCCESS, 3));
    expect(status(f.sent[0]!)).toBe(Status.ESTATUS);
    // A refusal the device chose stays what it was.
    const g = fakeSink();
    const q = new TargetRequest(g.sink, g.steps);
    q.start(4, 0, null, 0);
    q.cancel('x');
    q.complete(encodeBareCompletion(Status.ENOCMD, 4));
    expect(status(g.sent[0]!)).toBe(Status.ENOCMD);
  });

  it('cancelled before its VQ completion: no bytes leave, ESTATUS instead; cancelled once completed: nothing changes', async () => {
    const f = fakeSink();
    const r = new TargetRequest(f.sink, f.steps);
    r.start(5, 0, fakeData(), 0);
    r.cancel('queue closed');
    expect(r.completeVq(encodeBareCompletion(Status.SUCCESS, 5), 8)).toBe(false);
    expect(f.events).toEqual(['vacate 5', `send ${Status.ESTATUS}`]);

    const g = fakeSink();
    const s = new TargetRequest(g.sink, g.steps);
    s.start(6, 0, fakeData(), 0);
    expect(s.completeVq(encodeBareCompletion(Status.SUCCESS, 6), 8)).toBe(true);
    expect(s.state).toBe('completed');
    s.cancel('late');
    // The transport's word that the completion has left ends the command (onSent → finish).
    g.releaseSend();
    expect(g.events).toEqual(['vacate 6', `sendVq ${Status.SUCCESS}`, 'finished 6']);
  });

  it('waiting for its buffers (fetch): ready runs it, failure answers the side\'s status, cancel while waiting gives ESTATUS; the slot ends itself each time and a late answer does nothing', () => {
    // A keyed transport's fetch answers later (RDMA READ, pool memory): kept here to answer by hand.
    let answer: VqBufferSink | null = null;
    const data = (): VqRequestData & { released: number } => ({ ...fakeData(), fetch: (s: VqBufferSink) => void (answer = s) });
    const f = fakeSink();
    const r = new TargetRequest(f.sink, f.steps);

    r.start(1, 0, data(), 0);
    r.data!.fetch(r);
    expect(r.state).toBe('running'); // nothing happens until the transport answers
    answer!.buffersReady(Buffer.alloc(16), Buffer.alloc(8));
    expect(f.events).toEqual(['fetched 1 16+8', 'finished 1']); // the fake device answered at once: the slot ended itself
    expect(r.state).toBe('free');

    r.start(2, 0, data(), 0);
    r.data!.fetch(r);
    answer!.buffersFailed(new VqTransferError('out', 'RDMA READ failed'));
    answer!.buffersFailed(new VqTransferError('in', 'late')); // a second answer: ignored
    expect(status(f.sent.at(-1)!)).toBe(Status.EOUTVQBUF);
    expect(f.events.slice(2)).toEqual(['vacate 2', `send ${Status.EOUTVQBUF}`, 'finished 2']);

    r.start(3, 0, data(), 0);
    r.data!.fetch(r);
    answer!.buffersFailed(new VqTransferError('in', 'no target memory'));
    expect(status(f.sent.at(-1)!)).toBe(Status.EINVQBUF);

    r.start(4, 0, data(), 0);
    r.data!.fetch(r);
    r.cancel('device reset');
    answer!.buffersReady(Buffer.alloc(16), Buffer.alloc(8));
    expect(status(f.sent.at(-1)!)).toBe(Status.ESTATUS);
    expect(r.state).toBe('free');

    // The device holds the command: the slot stays running until the completion has left.
    f.hold(true);
    r.start(5, 0, data(), 0);
    r.data!.fetch(r);
    answer!.buffersReady(Buffer.alloc(16), Buffer.alloc(8));
    expect(r.state).toBe('running');
    expect(r.completeVq(encodeBareCompletion(Status.SUCCESS, 5), 0)).toBe(true);
    f.releaseSend();
    expect(r.state).toBe('free');
    // An answer for a command the slot no longer serves changes nothing.
    answer!.buffersFailed(new VqTransferError('out', 'stale'));
    expect(f.events.at(-1)).toBe('finished 5');
  });

  it('cancelling a free slot does nothing', () => {
    const f = fakeSink();
    const r = new TargetRequest(f.sink, f.steps);
    r.cancel('nothing to cancel');
    expect(r.cancelled).toBe(false);
    expect(f.events).toEqual([]);
  });
});

describe('request slots on a live queue', () => {
  let fx: TargetFixture | undefined;
  afterEach(async () => {
    await fx?.close();
    fx = undefined;
  });

  /** The target queues of virtqueue 0 (test access to the target's internals). */
  const queuesOf = (f: TargetFixture) =>
    [...(f.target as unknown as { instances: Map<number, DeviceInstance> }).instances.values()].map((i) => i.virtqueues.get(0)!);

  it('3000 commands at depth 16 on a 16-entry queue use at most 16 slots', async () => {
    fx = new TargetFixture();
    await fx.addDisk('d', 1 << 20, { queueSize: 16 });
    await fx.listen();
    const d = await BlockDevice.open(`${fx.url}/d`, { log: silentLogger, keepaliveIntervalMs: 0, maxQueues: 1 });
    try {
      await Promise.all(
        Array.from({ length: 16 }, async (_, w) => {
          const buf = Buffer.alloc(4096);
          for (let i = 0; i < 3000 / 16; i++) await d.read(((i * 16 + w) % 256) * 4096, buf);
        }),
      );
      const [vq] = queuesOf(fx);
      expect(vq!.slotsMade).toBeGreaterThan(1);
      expect(vq!.slotsMade).toBeLessThanOrEqual(16);
    } finally {
      await d.close();
    }
  });

  it('cancelled while the device holds it: ESTATUS, no device fault (the device stopped as asked), the slot serves the next command', async () => {
    fx = new TargetFixture();
    const path = await fx.addDisk('plain', 1 << 20);
    const real = await FileBlockExport.open(path);
    let hold = true;
    fx.target.addExport(
      'd',
      withInstanceOverrides(real, 'holding', (inner) => ({
        handleRequest: async (vq: number, readable: Buffer, writable: Buffer, cancel?: RequestCancel) => {
          if (hold && readable.readUInt32LE(0) === BlkRequestType.OUT) {
            await cancel?.whenAborted?.();
            throw new Error('cancelled');
          }
          return inner.handleRequest(vq, readable, writable, cancel);
        },
      })),
    );
    await fx.listen();
    const d = await BlockDevice.open(`${fx.url}/d`, { log: silentLogger, keepaliveIntervalMs: 0, maxQueues: 1 });
    try {
      const held = d.write(0, Buffer.alloc(4096, 1)).then(() => 'ok', (e: Error) => e.message);
      await new Promise((r) => setTimeout(r, 100));
      const [vq] = queuesOf(fx);
      expect(vq!.inFlightCount).toBe(1);
      await vq!.cancelAll('test reset');
      expect(await held).toMatch(/ESTATUS/);
      expect(vq!.inFlightCount).toBe(0);
      hold = false;
      await d.write(0, Buffer.alloc(4096, 2));
      expect((await d.read(0, 4096)).equals(Buffer.alloc(4096, 2))).toBe(true);
      expect(vq!.slotsMade).toBeLessThanOrEqual(2);
    } finally {
      await d.close();
    }
  });

  it('a device on the callback entry point (submitRequest) that holds a command: cancelled, it reports (twice, even) and the command is ESTATUS once; the slot serves the next', async () => {
    fx = new TargetFixture();
    const path = await fx.addDisk('plain', 1 << 20);
    const real = await FileBlockExport.open(path);
    let hold = true;
    let reports = 0;
    fx.target.addExport(
      'd',
      withInstanceOverrides(real, 'holding', (inner) => ({
        // Cancellation is a state the device looks at: here it waits for it, then reports the
        // request done (as a device that finished anyway would), and reports it again (a bug
        // the slot must ignore: the second report would otherwise end the slot's next command).
        submitRequest: (vq: number, readable: Buffer, writable: Buffer, request: DeviceRequest) => {
          if (hold && readable.readUInt32LE(0) === BlkRequestType.OUT) {
            void request.whenAborted!().then(() => {
              reports++;
              writable[writable.length - 1] = 0;
              request.deviceDone(writable.length);
              request.deviceDone(writable.length);
            });
            return;
          }
          inner.submitRequest!(vq, readable, writable, request);
        },
      })),
    );
    await fx.listen();
    const d = await BlockDevice.open(`${fx.url}/d`, { log: silentLogger, keepaliveIntervalMs: 0, maxQueues: 1 });
    try {
      const held = d.write(0, Buffer.alloc(4096, 1)).then(() => 'ok', (e: Error) => e.message);
      await new Promise((r) => setTimeout(r, 100));
      const [vq] = queuesOf(fx);
      expect(vq!.inFlightCount).toBe(1);
      await vq!.cancelAll('test reset');
      expect(reports).toBe(1);
      expect(await held).toMatch(/ESTATUS/);
      expect(vq!.inFlightCount).toBe(0);
      hold = false;
      // No device fault was recorded (that would make the next commands ESTATUS too).
      await d.write(0, Buffer.alloc(4096, 2));
      expect((await d.read(0, 4096)).equals(Buffer.alloc(4096, 2))).toBe(true);
      expect(vq!.slotsMade).toBeLessThanOrEqual(2);
    } finally {
      await d.close();
    }
  });
});
