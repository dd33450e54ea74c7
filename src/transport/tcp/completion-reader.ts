import { COMPLETION_SIZE } from '../../protocol/constants.js';

/** What the reader asks of, and reports to, its connection. */
export interface CompletionReaderSink {
  /**
   * A completion header arrived: the bytes of payload that follow it, or why the stream cannot
   * go on (the reader then stops and reports nothing more).
   */
  expectedPayload(completion: Buffer): number | string;
  /** The buffers a VQ completion's payload goes into, in order (the connection checked their room). */
  payloadBuffers(completion: Buffer, length: number): readonly Buffer[] | string;
  /**
   * A complete response PDU; its payload, if any, is in the buffers given for it. Like the
   * other calls it gets the reader's one completion buffer, valid only during the call.
   */
  completion(completion: Buffer): void;
  /** The stream cannot be trusted any more; called once, then nothing else. */
  fail(why: string): void;
}

/** Completion headers, and what arrives with them, land here; a payload's bulk never does. */
const SCRATCH_SIZE = 64 * 1024;
/** A payload's last piece shorter than this is read into the scratch, not on its own (see nextBuffer). */
const DIRECT_MIN = 512;
const NO_BUFFERS: readonly Buffer[] = [];

/**
 * Receives response PDUs through net's `onread` (libuv reads into memory the reader picks): the
 * completion headers into one reusable scratch buffer, and once a VQ completion's payload has
 * begun, the rest of it straight into the command's device-writable buffers. A 128 KiB read
 * then costs no allocation and no copy beyond the few bytes that shared a read with a header;
 * with 'data' events each read was a fresh 64 KiB Buffer copied again into place (half the
 * initiator's CPU at 128 KiB, issue 8).
 *
 * `nextBuffer()` is onread's buffer function (asked before every read), `received(n)` its
 * callback. Streams without onread (TLS) `feed()` their chunks through the same logic.
 */
export class CompletionReader {
  private readonly scratch = Buffer.allocUnsafeSlow(SCRATCH_SIZE);
  /**
   * The completion being delivered, copied out of the scratch (which moves under it): one
   * buffer reused for every completion, so the sink may read it only while it is called.
   */
  private readonly header = Buffer.alloc(COMPLETION_SIZE);
  /**
   * Views of the scratch by where they start (see view()). Reads land at the scratch's start
   * (or just after a partial header), so with I/Os of one size the same few positions recur
   * read after read: each view is made once, not per copy (Buffer#copy from part of a buffer
   * makes one each time on Node 20, about 190 heap bytes per small read). At most one per
   * position of the scratch, and replaced only when a position is used with another length.
   */
  private readonly views = new Map<number, Buffer>();
  /** Unparsed received bytes are scratch[start, end). */
  private start = 0;
  private end = 0;
  /** The VQ completion whose payload is arriving, and where that payload goes. */
  private pending: Buffer | null = null;
  private into: readonly Buffer[] = [];
  private index = 0;
  private offset = 0;
  private left = 0;
  /** The last buffer handed out was a payload buffer, not the scratch. */
  private direct = false;
  private failed = false;
  /** Set by the connection once it exists; bytes that arrive before wait in the scratch. */
  private sink: CompletionReaderSink | null = null;

  attach(sink: CompletionReaderSink): void {
    this.sink = sink;
    if (this.failed) {
      this.failed = false;
      return this.fail(`the peer sent ${this.end} bytes before any command`);
    }
    this.parse();
  }

  /**
   * From now on every read lands in the scratch and is dropped: a closed connection delivers
   * nothing more and writes no caller's buffer, yet keeps reading until the peer's FIN.
   */
  discard(): void {
    this.failed = true;
    this.left = 0;
    this.start = this.end = 0;
  }

  /** Where the next read lands: the payload's next buffer while one is due and nothing is buffered, else the scratch. */
  nextBuffer(): Buffer {
    if (this.failed) {
      this.direct = false;
      this.start = this.end = 0;
      return this.scratch;
    }
    if (this.left > 0 && this.start === this.end) {
      const target = this.into[this.index]!;
      const due = Math.min(target.length - this.offset, this.left);
      // The payload's last few bytes (virtio-blk's status byte after its data) go through the
      // scratch with whatever follows them: a read of their own would be one more system call
      // per completion, where a scratch read usually brings the next completions along.
      if (due < DIRECT_MIN && due === this.left) return this.scratchBuffer();
      this.direct = true;
      // The whole buffer when the whole of it is due: no view to make.
      if (this.offset === 0 && target.length <= this.left) return target;
      return target.subarray(this.offset, this.offset + due);
    }
    return this.scratchBuffer();
  }

  /** The scratch's free part, for a read whose bytes parse() takes apart. */
  private scratchBuffer(): Buffer {
    this.direct = false;
    if (this.start > 0) {
      // Only a partial header can be left over (payload bytes are moved out as they come).
      this.scratch.copy(this.scratch, 0, this.start, this.end);
      this.end -= this.start;
      this.start = 0;
    }
    return this.view(this.end, SCRATCH_SIZE - this.end);
  }

  /** scratch[at, at + length), made once per position and length (see views). */
  private view(at: number, length: number): Buffer {
    let v = this.views.get(at);
    if (v === undefined || v.length !== length) {
      v = this.scratch.subarray(at, at + length);
      this.views.set(at, v);
    }
    return v;
  }

  /** `n` bytes were read into the buffer nextBuffer() gave (onread's callback: true keeps reading). */
  received(n: number): boolean {
    if (this.failed) return true; // dropped; keep reading up to the peer's FIN
    if (this.direct) {
      this.advancePayload(n);
      if (this.left === 0) this.finishPayload();
      return true;
    }
    this.end += n;
    this.parse();
    return true;
  }

  /** The same for a chunk some other reader produced (TLS): copied through nextBuffer(). */
  feed(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length && !this.failed) {
      const into = this.nextBuffer();
      const n = chunk.copy(into, 0, at, at + into.length);
      at += n;
      this.received(n);
    }
  }

  private parse(): void {
    for (;;) {
      if (this.failed) return;
      if (!this.sink) {
        // Nothing is expected before the connection exists; a peer that fills the scratch
        // anyway stops the reading (the connection then fails it on attach).
        if (this.end === this.scratch.length) this.failed = true;
        return;
      }
      if (this.left > 0) {
        // Payload bytes that shared a read with their header (or came before the reader could
        // point the read at the payload buffer): copy them to where they belong.
        const avail = this.end - this.start;
        if (avail === 0) return;
        const target = this.into[this.index]!;
        const n = Math.min(avail, this.left, target.length - this.offset);
        target.set(this.view(this.start, n), this.offset);
        this.start += n;
        this.advancePayload(n);
        if (this.left === 0) this.finishPayload();
        continue;
      }
      if (this.end - this.start < COMPLETION_SIZE) return;
      const completion = this.header;
      // Four words rather than Buffer#copy, which makes a view of a partial source.
      for (let k = 0; k < COMPLETION_SIZE; k += 4) completion.writeUInt32LE(this.scratch.readUInt32LE(this.start + k), k);
      this.start += COMPLETION_SIZE;
      const length = this.sink!.expectedPayload(completion);
      if (typeof length === 'string') return this.fail(length);
      if (length === 0) {
        this.sink!.completion(completion);
        continue;
      }
      const into = this.sink!.payloadBuffers(completion, length);
      if (typeof into === 'string') return this.fail(into);
      this.pending = completion;
      this.into = into;
      this.index = 0;
      this.offset = 0;
      this.left = length;
      this.skipFullBuffers();
    }
  }

  private advancePayload(n: number): void {
    this.offset += n;
    this.left -= n;
    this.skipFullBuffers();
  }

  /** Step past device-writable buffers that are full (or empty to begin with). */
  private skipFullBuffers(): void {
    while (this.left > 0 && this.offset >= this.into[this.index]!.length) {
      this.index++;
      this.offset = 0;
    }
  }

  private finishPayload(): void {
    const completion = this.pending!;
    this.pending = null;
    this.into = NO_BUFFERS;
    this.sink!.completion(completion);
  }

  private fail(why: string): void {
    if (this.failed) return;
    this.failed = true;
    this.sink?.fail(why);
  }
}
