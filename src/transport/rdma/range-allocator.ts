/** A range [offset, offset + length) handed out by a RangeAllocator. */
export interface Range {
  readonly offset: number;
  readonly length: number;
}

/**
 * First-fit allocation of byte ranges inside one fixed span (a registered region), with
 * neighbouring free ranges merged on release. Every range is rounded up to `align` bytes so
 * that ranges never share a cache line. Pure bookkeeping: no memory is touched.
 */
export class RangeAllocator {
  /** Free ranges, sorted by offset, never adjacent (merged on release). */
  private readonly free: Range[];
  private used = 0;

  constructor(
    readonly size: number,
    readonly align = 64,
  ) {
    this.free = size > 0 ? [{ offset: 0, length: size }] : [];
  }

  /** Bytes handed out (rounded sizes). */
  get bytesInUse(): number {
    return this.used;
  }

  /** Whether a request of `length` bytes could ever fit (the span is large enough). */
  fits(length: number): boolean {
    return this.round(length) <= this.size;
  }

  private round(length: number): number {
    return Math.max(this.align, Math.ceil(length / this.align) * this.align);
  }

  /** A range of at least `length` bytes (its `length` is the rounded size), or null when none is free. */
  allocate(length: number): Range | null {
    const want = this.round(length);
    for (let i = 0; i < this.free.length; i++) {
      const f = this.free[i]!;
      if (f.length < want) continue;
      if (f.length === want) this.free.splice(i, 1);
      else this.free[i] = { offset: f.offset + want, length: f.length - want };
      this.used += want;
      return { offset: f.offset, length: want };
    }
    return null;
  }

  /** Give back a range this allocator returned (exactly once). */
  release(range: Range): void {
    let i = 0;
    while (i < this.free.length && this.free[i]!.offset < range.offset) i++;
    const prev = i > 0 ? this.free[i - 1]! : null;
    const next = i < this.free.length ? this.free[i]! : null;
    if ((prev && prev.offset + prev.length > range.offset) || (next && range.offset + range.length > next.offset)) {
      throw new Error(`range [${range.offset}, ${range.offset + range.length}) released twice or never allocated`);
    }
    this.used -= range.length;
    const joinsPrev = prev !== null && prev.offset + prev.length === range.offset;
    const joinsNext = next !== null && range.offset + range.length === next.offset;
    if (joinsPrev && joinsNext) {
      this.free.splice(i - 1, 2, { offset: prev.offset, length: prev.length + range.length + next.length });
    } else if (joinsPrev) {
      this.free[i - 1] = { offset: prev.offset, length: prev.length + range.length };
    } else if (joinsNext) {
      this.free[i] = { offset: range.offset, length: range.length + next.length };
    } else {
      this.free.splice(i, 0, { offset: range.offset, length: range.length });
    }
  }
}
