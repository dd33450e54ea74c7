// Shared by the fuzzer's raw connections: wait for a condition that events make true.

export class Waitable {
  waiters = [];

  /** Re-check every pending waitFor (call after anything that may make a condition true). */
  wake() {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Resolves true when cond() holds, false after ms. */
  async waitFor(cond, ms) {
    const deadline = Date.now() + ms;
    while (!cond()) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
    return true;
  }
}
