import type { RequestCallback } from '../io-slot.js';
import { REQUEST_HEADER, REQUEST_HEADER_SIZE } from '../../protocol/virtio-blk.js';
import { setLE32, setLE64Number } from '../../protocol/fields.js';

/** How a block request ends for a callback caller (see BlockDevice.submitRead). */
export type BlockCallback = (err: Error | null) => void;

/** What a block request slot reports to its disk (BlockDevice implements it). */
export interface BlockRequestOwner {
  /** The request is over: `err` is the transport's or the device's, null when status was OK. */
  blockRequestEnded(slot: BlockRequest, err: Error | null): void;
}

/**
 * One virtio-blk request's own memory, reused request after request (the initiator's I/O
 * slots, on the block layer): its request header and status byte, and the arrays that hand
 * them to the device with the caller's data, all made once with the slot. What a request
 * allocates per I/O is then at most its caller's Promise.
 */
export class BlockRequest {
  /** virtio-blk request header (type, reserved, sector) and the status byte, in one allocation. */
  private readonly memory = Buffer.alloc(REQUEST_HEADER_SIZE + 1);
  private readonly header = this.memory.subarray(0, REQUEST_HEADER_SIZE);
  readonly status = this.memory.subarray(REQUEST_HEADER_SIZE);
  /** Device-readable parts: the header alone, or with the caller's data or a segment. */
  private readonly outHeader: Buffer[] = [this.header];
  private readonly outWith: Buffer[] = [this.header, this.header];
  /** Device-writable parts: the status alone, or after the caller's buffer. */
  private readonly inStatus: Buffer[] = [this.status];
  private readonly inWith: Buffer[] = [this.status, this.status];
  out: readonly Buffer[] = this.outHeader;
  in: readonly Buffer[] = this.inStatus;
  isFlush = false;
  /** For the error message only: what the request did, and at which byte (-1: none). */
  what = '';
  at = -1;
  /** Read requests: the caller's buffer, what read() resolves with. */
  result: Buffer | undefined = undefined;
  callback: BlockCallback | null = null;
  private resolve: ((value: Buffer | undefined) => void) | null = null;
  private reject: ((err: Error) => void) | null = null;
  /** Bound once per slot: `new Promise(executor)` makes nothing else. */
  readonly executor: (resolve: (value: Buffer | undefined) => void, reject: (err: Error) => void) => void;
  /** Bound once per slot: the device's callback for this slot's request. */
  readonly onDone: RequestCallback;
  /** Bound once per slot: settles the promise made with `executor` (a callback for settle mode). */
  readonly settle: BlockCallback;

  constructor(owner: BlockRequestOwner) {
    this.executor = (resolve, reject) => {
      this.resolve = resolve;
      this.reject = reject;
    };
    this.onDone = (err) => owner.blockRequestEnded(this, err);
    this.settle = (err) => {
      const resolve = this.resolve;
      const reject = this.reject;
      const result = this.result;
      this.resolve = null;
      this.reject = null;
      this.result = undefined;
      if (err) reject?.(err);
      else resolve?.(result);
    };
  }

  /**
   * Arm the slot for one request of `type` at `sector`: `extraOut` (data to write, or a
   * discard/write-zeroes segment) follows the header; `data` (read into) comes before the
   * status byte.
   */
  start(type: number, sector: number, extraOut: Buffer | null, data: Buffer | null, what: string, at: number, isFlush: boolean, callback: BlockCallback): void {
    setLE32(this.header, REQUEST_HEADER.type, type);
    setLE32(this.header, REQUEST_HEADER.reserved, 0);
    // The sector as two 32-bit halves: exact below 2^53 bytes (BlockDevice.open refuses more), no BigInt.
    setLE64Number(this.header, REQUEST_HEADER.sector, sector);
    this.status[0] = 0xff;
    if (extraOut) {
      this.outWith[1] = extraOut;
      this.out = this.outWith;
    } else this.out = this.outHeader;
    if (data) {
      this.inWith[0] = data;
      this.in = this.inWith;
    } else this.in = this.inStatus;
    this.isFlush = isFlush;
    this.what = what;
    this.at = at;
    this.result = data ?? undefined;
    this.callback = callback;
  }

  /** The status the device wrote (0xff: none). */
  get statusByte(): number {
    return this.status[0]!;
  }

  /** The request is over: nothing of the caller's stays on the slot. Returns its callback. */
  release(): BlockCallback | null {
    const callback = this.callback;
    this.callback = null;
    // A promise's result is taken by settle(); a callback caller's buffer is not kept.
    if (callback !== this.settle) this.result = undefined;
    this.outWith[1] = this.header;
    this.inWith[0] = this.status;
    this.out = this.outHeader;
    this.in = this.inStatus;
    return callback;
  }
}
