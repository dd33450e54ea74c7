import { copyBytes } from '../../util/bytes.js';
/** At most this much is read at once into the scratch... */
const READ_MAX = 64 * 1024;
/**
 * ...which holds twice that. Before each read the scratch keeps only what its owner could not
 * parse yet: a partial header or small record, or — while the owner waits for something and has
 * paused the socket — at most one read's bytes. So a read always has room, never a zero-length
 * buffer (which libuv would take for the end of the stream).
 */
const SCRATCH_SIZE = 2 * READ_MAX;

/**
 * The bytes a server-side stream connection has received and not parsed yet, in one reusable
 * scratch buffer: the input side of the target's TCP connection and of the NBD bridge.
 *
 * With onread (user-buffer-read.ts) libuv reads into `nextBuffer()` and `received(n)` says how
 * much landed; streams without it (TLS) `feed()` their chunks, copied in as room allows. While
 * the owner is receiving a payload into memory of its own and nothing is buffered, reads land
 * there directly (`direct()` gives the place, `onDirect(n)` reports what landed), so a large
 * payload is neither allocated per read nor copied. No Buffer is made per read or per record.
 */
export class StreamInput {
  private readonly scratch = Buffer.allocUnsafeSlow(SCRATCH_SIZE);
  /** Unparsed bytes are scratch[head, end). */
  private head = 0;
  private end = 0;
  /** Views of the scratch by where they start: reads of one size recur at the same few places. */
  private readonly views = new Map<number, Buffer>();
  /** The last buffer handed out for a read was the owner's (direct()), not the scratch. */
  private wentDirect = false;
  /** A fed chunk's bytes that have not fit in yet. */
  private pending: Buffer | null = null;
  private pendingAt = 0;

  constructor(
    /** Where a read may land directly when nothing is buffered (the rest of a payload), or null. */
    private readonly direct: () => Buffer | null,
    /** `n` bytes landed in the buffer direct() gave. */
    private readonly onDirect: (n: number) => void,
  ) {}

  /** Bytes received and not taken yet (a fed chunk's pending part not included). */
  get length(): number {
    return this.end - this.head;
  }

  /** Whether a fed chunk still has bytes waiting to come in. */
  get hasPending(): boolean {
    return this.pending !== null;
  }

  /** Where the next read lands (onread's buffer function, asked before every read). */
  nextBuffer(): Buffer {
    if (this.head === this.end) {
      this.head = this.end = 0;
      const d = this.direct();
      if (d !== null && d.length > 0) {
        this.wentDirect = true;
        return d;
      }
    } else if (this.head > 0) {
      this.scratch.copyWithin(0, this.head, this.end);
      this.end -= this.head;
      this.head = 0;
    }
    this.wentDirect = false;
    const at = this.end;
    const length = Math.min(READ_MAX, SCRATCH_SIZE - at);
    let v = this.views.get(at);
    if (v === undefined || v.length !== length) {
      v = this.scratch.subarray(at, at + length);
      this.views.set(at, v);
    }
    return v;
  }

  /** `n` bytes landed in the buffer nextBuffer() gave (onread's callback). */
  received(n: number): void {
    if (this.wentDirect) this.onDirect(n);
    else this.end += n;
  }

  /** A chunk someone else read (TLS): it comes in through moreFromChunk() as room allows. */
  feed(chunk: Buffer): void {
    // Owners pause their socket while a chunk cannot come in, so one is pending at most; should a
    // stream deliver another anyway, the two are joined rather than either lost.
    this.pending = this.pending === null ? chunk : Buffer.concat([this.pending.subarray(this.pendingAt), chunk]);
    this.pendingAt = 0;
  }

  /** Moves what is pending of a fed chunk in, as far as one buffer; false if nothing moved. */
  moreFromChunk(): boolean {
    const chunk = this.pending;
    if (chunk === null) return false;
    const into = this.nextBuffer();
    const n = chunk.copy(into, 0, this.pendingAt, Math.min(chunk.length, this.pendingAt + into.length));
    this.pendingAt += n;
    if (this.pendingAt === chunk.length) this.pending = null;
    this.received(n);
    return n > 0;
  }

  /** The next four bytes as a big-endian number, left in place (length ≥ 4). */
  peekUInt32BE(): number {
    return this.scratch.readUInt32BE(this.head);
  }

  /** Pulls a fed chunk's pending bytes in until `n` are buffered (or no more fit); whether they are. */
  fill(n: number): boolean {
    while (this.end - this.head < n && this.moreFromChunk());
    return this.end - this.head >= n;
  }

  /** The next `n` bytes (n ≤ length, a multiple of 4) into `into` at 0: four-byte words, no view made. */
  takeWords(n: number, into: Buffer): void {
    const s = this.scratch;
    const h = this.head;
    for (let k = 0; k < n; k += 4) into.writeUInt32LE(s.readUInt32LE(h + k), k);
    this.head += n;
  }

  /** The next `n` bytes (n ≤ length) into `into` at `at` (no view made when few: copyBytes). */
  takeInto(n: number, into: Buffer, at: number): void {
    copyBytes(this.scratch, this.head, n, into, at);
    this.head += n;
  }

  /** The next `n` bytes (n ≤ length) in a Buffer of their own (rare records the caller keeps). */
  takeCopy(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    this.takeInto(n, out, 0);
    return out;
  }

  /** Drops up to `n` bytes; returns how many. */
  skip(n: number): number {
    const k = Math.min(n, this.end - this.head);
    this.head += k;
    return k;
  }

  /** Forget everything (a closed connection). */
  clear(): void {
    this.head = this.end = 0;
    this.pending = null;
  }
}
