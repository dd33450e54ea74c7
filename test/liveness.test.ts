import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { Liveness, timeoutBelowInterval } from '../src/util/liveness.js';

// The one liveness module (src/util/liveness.ts): the target's per-instance and the initiator's
// per-device keepalive sender and silence timer. Fake timers, performance.now() included, so
// the times below are exact and nothing waits for real.

describe('Liveness', () => {
  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'performance'] });
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  function make(intervalMs: number, timeoutMs: number) {
    const sent: number[] = [];
    const silent: number[] = [];
    const l = new Liveness(intervalMs, timeoutMs, () => sent.push(performance.now()), (ms) => silent.push(ms));
    return { l, sent, silent };
  }

  it('fires once after the timeout of silence, never before, and not again', () => {
    const { l, silent } = make(1000, 4000);
    l.watch();
    vi.advanceTimersByTime(3999);
    expect(silent).toEqual([]);
    // Checked every quarter of the timeout: fires by the timeout plus a quarter at the latest.
    vi.advanceTimersByTime(1001);
    expect(silent.length).toBe(1);
    expect(silent[0]).toBeGreaterThanOrEqual(4000);
    vi.advanceTimersByTime(20000);
    expect(silent.length).toBe(1);
  });

  it('activity resets it: heard within every timeout, it never fires', () => {
    const { l, silent } = make(1000, 4000);
    l.watch();
    for (let t = 0; t < 40; t++) {
      vi.advanceTimersByTime(1000);
      l.heard();
    }
    expect(silent).toEqual([]);
    // Then silence: counted from the last check that saw the activity.
    vi.advanceTimersByTime(6000);
    expect(silent.length).toBe(1);
  });

  it('sends keepalives every interval once started, and stop() ends both timers', () => {
    const { l, sent, silent } = make(1000, 4000);
    l.watch();
    vi.advanceTimersByTime(2500);
    expect(sent).toEqual([]); // not before startKeepalive()
    l.heard();
    l.startKeepalive();
    vi.advanceTimersByTime(3000);
    expect(sent.length).toBe(3);
    l.heard();
    l.stop();
    vi.advanceTimersByTime(60000);
    expect(sent.length).toBe(3);
    expect(silent).toEqual([]);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('watch() after stop() counts silence from then (a reconnected path)', () => {
    const { l, silent } = make(1000, 4000);
    l.watch();
    l.stop();
    vi.advanceTimersByTime(10000);
    l.watch();
    vi.advanceTimersByTime(3999);
    expect(silent).toEqual([]);
    vi.advanceTimersByTime(1001);
    expect(silent.length).toBe(1);
  });

  it('a timeout of 0 watches nothing; an interval of 0 sends nothing', () => {
    const { l, sent, silent } = make(0, 0);
    l.watch();
    l.startKeepalive();
    vi.advanceTimersByTime(60000);
    expect(sent).toEqual([]);
    expect(silent).toEqual([]);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe('timeoutBelowInterval', () => {
  it('warns only when both are on and the timeout is shorter, with the text both ends log', () => {
    expect(timeoutBelowInterval(1000, 500, 'X happens')).toBe('keepalive timeout 500 ms is below the interval 1000 ms: X happens; use a timeout of about 3 intervals');
    expect(timeoutBelowInterval(1000, 1000, 'X')).toBeNull();
    expect(timeoutBelowInterval(0, 500, 'X')).toBeNull();
    expect(timeoutBelowInterval(1000, 0, 'X')).toBeNull();
  });
});
