import { describe, expect, it } from 'vitest';
import { PinnedMemory } from '../src/transport/pinned-memory.js';
import { PinnedRegistrations } from '../src/transport/rdma/memory-registration-cache.js';
import { fakePd } from './helpers/fake-pd.js';

/**
 * Pinned memory (RemoteDevice.pinMemory, issue 19): which views go in place, when the
 * registrations are made and deregistered, with a protection domain that only keeps count.
 */

const ACCESS = 0x1 | 0x10;

describe('PinnedRegistrations', () => {
  it('finds views inside a pinned buffer, not ones straddling its end or outside it', () => {
    const backing = Buffer.alloc(64 * 1024);
    // A pinned part of a larger mapping: its neighbours are not registered.
    const pinned = backing.subarray(4096, 8192);
    const pd = fakePd();
    const regs = new PinnedRegistrations(pd, ACCESS);
    const set = new PinnedMemory();
    set.attach(regs);
    set.pin(pinned);
    expect(pd.made).toBe(1);
    const inside = regs.find(backing.subarray(4096 + 100, 4096 + 612));
    expect(inside?.buffer).toBe(pinned);
    expect(inside?.mr.length).toBe(4096);
    // The whole buffer, and its last byte: inside.
    expect(regs.find(pinned)).toBe(inside);
    expect(regs.find(backing.subarray(8191, 8192))).toBe(inside);
    // One byte past its end, one byte before its start, another backing: not in place.
    expect(regs.find(backing.subarray(8192 - 16, 8192 + 1))).toBeNull();
    expect(regs.find(backing.subarray(4095, 4100))).toBeNull();
    expect(regs.find(backing.subarray(8192, 9000))).toBeNull();
    expect(regs.find(Buffer.alloc(16))).toBeNull();
    // Looking up registers nothing.
    expect(pd.made).toBe(1);
  });

  it('release deregisters at once when idle, or when the last command using it is done', () => {
    const pd = fakePd();
    const regs = new PinnedRegistrations(pd, ACCESS);
    const set = new PinnedMemory();
    set.attach(regs);
    const a = set.pin(Buffer.alloc(8192));
    const b = set.pin(Buffer.alloc(8192));
    expect(pd.live).toBe(2);
    a.release();
    expect(pd.live).toBe(1);
    expect(regs.find(a.buffer)).toBeNull();
    // b is in use by two commands when released: kept registered until both are done.
    const e = regs.find(b.buffer.subarray(0, 512))!;
    regs.use(e);
    regs.use(e);
    b.release();
    b.release(); // idempotent
    expect(regs.find(b.buffer)).toBeNull(); // no new command gets it
    regs.done(e);
    expect(pd.live).toBe(1);
    regs.done(e);
    expect(pd.live).toBe(0);
  });

  it('a domain that joins later registers what is pinned; leaving and clear() deregister it', () => {
    const set = new PinnedMemory();
    const buf = Buffer.alloc(4096);
    set.pin(buf);
    const pd1 = fakePd();
    const regs1 = new PinnedRegistrations(pd1, ACCESS);
    const leave1 = set.attach(regs1);
    expect(pd1.live).toBe(1);
    // A reconnect: a second domain, registered again there.
    const pd2 = fakePd();
    const regs2 = new PinnedRegistrations(pd2, ACCESS);
    set.attach(regs2);
    expect(pd2.live).toBe(1);
    leave1();
    expect(pd1.live).toBe(0);
    expect(regs1.find(buf)).toBeNull();
    // A buffer pinned after the first domain left is not registered there.
    set.pin(Buffer.alloc(4096));
    expect(pd1.made).toBe(1);
    expect(pd2.live).toBe(2);
    regs2.clear();
    expect(pd2.live).toBe(0);
  });

  it('a registration that fails is reported and the buffer is not in place (its bytes fall back to the copy)', () => {
    const err = Object.assign(new Error('ibv_reg_mr failed: Bad address'), { code: 'EFAULT' });
    const pd = fakePd(err);
    const regs = new PinnedRegistrations(pd, ACCESS);
    const set = new PinnedMemory();
    const failed: Array<{ buf: Buffer; err: Error }> = [];
    set.onRegistrationFailed = (buf, e) => failed.push({ buf, err: e });
    set.attach(regs);
    const buf = Buffer.alloc(4096);
    const pin = set.pin(buf);
    expect(failed).toEqual([{ buf, err }]);
    expect(regs.find(buf)).toBeNull();
    pin.release(); // nothing registered, nothing to undo
    expect(pd.live).toBe(0);
  });

  it('refuses an empty buffer and the same Buffer pinned twice', () => {
    const set = new PinnedMemory();
    expect(() => set.pin(Buffer.alloc(0))).toThrow(/empty/);
    const buf = Buffer.alloc(16);
    set.pin(buf);
    expect(() => set.pin(buf)).toThrow(/pinned already/);
  });
});
