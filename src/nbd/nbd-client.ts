import net from 'node:net';
import type { Duplex } from 'node:stream';
import {
  CLIENT_FLAGS,
  CLIENT_FLAGS_SIZE,
  ERROR_CHUNK,
  ERROR_CHUNK_SIZE,
  INFO,
  INFO_BLOCK_SIZE,
  INFO_BLOCK_SIZE_SIZE,
  INFO_EXPORT,
  INFO_EXPORT_SIZE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_IHAVEOPT,
  NBD_MAGIC,
  NBD_MAX_STRING,
  NBD_OPT_REPLY_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NbdCommand,
  NbdInfo,
  NbdOption,
  NbdReply,
  OFFSET_DATA_CHUNK,
  OFFSET_DATA_CHUNK_SIZE,
  OFFSET_HOLE_CHUNK,
  OPTION_REPLY,
  OPTION_REPLY_SIZE,
  REQUEST_HEADER,
  REQUEST_HEADER_SIZE,
  SERVER_GREETING,
  SERVER_GREETING_SIZE,
  SIMPLE_REPLY,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY,
  STRUCTURED_REPLY_SIZE,
  TransmissionFlag,
  encodeInfoRequest,
  encodeOptionHeader,
} from './nbd-protocol.js';
import { getBE16, getBE32, getBE64, getBE64Number, setBE16, setBE32, setBE64Number, view } from '../protocol/fields.js';
import { quotePeerString } from '../util/escape.js';
import { SlotTable } from '../util/slot-table.js';
import { StreamInput } from '../transport/tcp/stream-input.js';

/**
 * The client side of NBD (NetworkBlockDevice doc/proto.md): what a vof target uses to reach
 * storage that speaks NBD (rbd-nbd, qemu-nbd, qemu-storage-daemon, nbdkit). Fixed newstyle
 * handshake, optional STARTTLS, structured replies when the server has them, NBD_OPT_GO with
 * NBD_INFO_BLOCK_SIZE; then the transmission phase over pre-allocated request slots.
 *
 * The server is a peer: a reply with a bad magic, an unknown cookie, a chunk outside its request
 * or a payload larger than announced ends the connection ("hard disconnect", as the protocol
 * asks) and fails every request in flight; nothing it sends is written outside the buffer of the
 * request it names.
 */

export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;
const NBD_REPLY_FLAG_DONE = 1;
export const NbdReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;
/** Longest error chunk payload taken: the fields plus the protocol's string limit. */
const MAX_ERROR_CHUNK = 14 + NBD_MAX_STRING;
/** How long close() waits for the server to end the connection after NBD_CMD_DISC. */
const CLOSE_TIMEOUT_MS = 2000;
/** Longest option reply taken during the handshake (strings and infos are far smaller). */
const MAX_OPTION_REPLY = 64 * 1024;

export class NbdClientError extends Error {
  override readonly name = 'NbdClientError';
}

/** What OPT_GO told about the export. */
export interface NbdExportInfo {
  readonly size: number;
  readonly transmissionFlags: number;
  readonly readOnly: boolean;
  readonly canFlush: boolean;
  readonly canFua: boolean;
  readonly canTrim: boolean;
  readonly canWriteZeroes: boolean;
  readonly canMultiConn: boolean;
  /** NBD_INFO_BLOCK_SIZE, or the protocol's defaults (1, 4096, 32 MiB) without it. */
  readonly minimumBlock: number;
  readonly preferredBlock: number;
  readonly maximumBlock: number;
  readonly structuredReplies: boolean;
}

export interface NbdClientOptions {
  readonly exportName: string;
  /**
   * Upgrade with NBD_OPT_STARTTLS before anything else, then run this on the socket: it returns
   * the TLS stream once the handshake has proved the server (the caller's trust settings).
   */
  readonly startTls?: (raw: net.Socket) => Promise<Duplex>;
  /** Requests in flight at once (slots); default 64. */
  readonly maxInFlight?: number;
  /** Handshake deadline; default 10 s. */
  readonly handshakeTimeoutMs?: number;
}

export type NbdAddress = { readonly kind: 'tcp'; readonly host: string; readonly port: number } | { readonly kind: 'unix'; readonly path: string };

/**
 * A request's end: `error` is 0 on success, else the NBD error value (EIO, ENOSPC, ...), -1
 * (NBD_LOST) when the connection was lost before the answer (the request may or may not have
 * run; sending it again is safe), or -2 (NBD_PROTOCOL_ERROR) when the server broke the protocol
 * on this connection (sending it again to the same server would only repeat that).
 */
export type NbdDone = (error: number) => void;
export const NBD_LOST = -1;
export const NBD_PROTOCOL_ERROR = -2;

/** One pre-allocated request: its header bytes, its buffer and where its reply stands. */
class NbdSlot {
  readonly header = Buffer.alloc(REQUEST_HEADER_SIZE);
  /** Bumped per use: a reply naming an earlier use of the slot is a stale or forged cookie. */
  generation = 0;
  type = 0;
  offset = 0;
  length = 0;
  /** Where a read's data goes. */
  into: Buffer | null = null;
  /** Bytes of a read covered by content chunks so far. */
  covered = 0;
  /** The first error a chunk reported (0: none). */
  error = 0;
  done: NbdDone | null = null;

  constructor(readonly index: number) {}
}

type ParseState =
  | { kind: 'reply' }
  /** A read's data after a simple reply: into the slot's buffer from `at`, `left` bytes to go. */
  | DataState
  /** A structured chunk's payload that is read whole (offset of OFFSET_DATA, hole, error). */
  | { kind: 'chunk'; slot: NbdSlot; type: number; flags: number; length: number };

/** Mutable and one per connection: a read's data state is not made per reply. */
interface DataState {
  kind: 'data';
  slot: NbdSlot;
  at: number;
  left: number;
  /** The simple reply's data ends the request. */
  final: boolean;
}

const REPLY_STATE: ParseState = { kind: 'reply' };

export class NbdClientConnection {
  private readonly slots: NbdSlot[];
  /**
   * Which slots are in flight, by index (the cookie's high half). The slot freed last is taken
   * next (any slot does): a stale cookie is told by its generation, not by the order.
   */
  private readonly ids: SlotTable;
  private state: ParseState = REPLY_STATE;
  private closedWith: Error | null = null;
  /** The server broke the protocol: what was in flight ends with NBD_PROTOCOL_ERROR. */
  private violated = false;
  private readonly closeListeners: ((err: Error | null) => void)[] = [];
  private readonly scratch = Buffer.alloc(STRUCTURED_REPLY_SIZE);
  /** Payloads of holes and error chunks (bounded by chunkFits). */
  private readonly chunkBuffer = Buffer.alloc(MAX_ERROR_CHUNK);
  private dataState: DataState | null = null;

  private constructor(
    private readonly stream: Duplex,
    /** What the handshake left unread stays in it: the parser starts from there. */
    private readonly source: NbdInput,
    readonly info: NbdExportInfo,
    readonly peer: string,
    maxInFlight: number,
  ) {
    this.slots = Array.from({ length: maxInFlight }, (_, i) => new NbdSlot(i));
    this.ids = new SlotTable(maxInFlight, 'last-freed');
    // A read's data lands straight in the request's buffer when nothing else is buffered.
    source.direct = () => {
      const st = this.state;
      return st.kind === 'data' && st.left > 0 && st.slot.into !== null ? st.slot.into.subarray(st.at, st.at + st.left) : null;
    };
    source.onDirect = (n) => {
      const st = this.state as DataState;
      st.at += n;
      st.left -= n;
    };
    source.onBytes = () => this.parse();
    stream.on('error', (err: Error) => this.fail(new NbdClientError(`${peer}: ${err.message}`)));
    stream.on('close', () => this.fail(null));
    this.parse();
  }

  /** Connects, runs the handshake and enters the transmission phase. */
  static async connect(address: NbdAddress, options: NbdClientOptions): Promise<NbdClientConnection> {
    const peer = address.kind === 'tcp' ? `nbd ${address.host}:${address.port}` : `nbd unix:${address.path}`;
    const source = new NbdInput();
    // A plain socket reads through onread into the source (no Buffer per read); one that will
    // carry TLS after STARTTLS is read through 'data' events, which the TLS layer then takes over.
    const reading = options.startTls ? {} : source.readOptions();
    const raw = address.kind === 'tcp' ? net.connect({ host: address.host, port: address.port, ...reading }) : net.connect({ path: address.path, ...reading });
    if (options.startTls) source.feedFrom(raw);
    raw.setNoDelay?.(true);
    const timeoutMs = options.handshakeTimeoutMs ?? 10_000;
    const timer = setTimeout(() => raw.destroy(new NbdClientError(`${peer}: no NBD handshake within ${timeoutMs} ms`)), timeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        raw.once('connect', resolve);
        raw.once('error', reject);
      });
      let reader = new HandshakeReader(source, raw, peer);
      const greeting = await reader.read(SERVER_GREETING_SIZE);
      if (getBE64(greeting, SERVER_GREETING.nbdMagic) !== NBD_MAGIC) throw new NbdClientError(`${peer}: not an NBD server (no NBDMAGIC)`);
      if (getBE64(greeting, SERVER_GREETING.ihaveopt) !== NBD_IHAVEOPT) throw new NbdClientError(`${peer}: an oldstyle NBD server; only fixed newstyle is supported`);
      const handshakeFlags = getBE16(greeting, SERVER_GREETING.handshakeFlags);
      if ((handshakeFlags & NBD_FLAG_FIXED_NEWSTYLE) === 0) throw new NbdClientError(`${peer}: the server does not speak fixed newstyle NBD`);
      const noZeroes = (handshakeFlags & NBD_FLAG_NO_ZEROES) !== 0;
      const flags = Buffer.alloc(CLIENT_FLAGS_SIZE);
      setBE32(flags, CLIENT_FLAGS.flags, NBD_FLAG_C_FIXED_NEWSTYLE | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0));
      raw.write(flags);
      let stream: Duplex = raw;
      if (options.startTls) {
        const reply = await option(stream, reader, NbdOption.STARTTLS, Buffer.alloc(0), peer);
        if (reply.type !== NbdReply.ACK) throw new NbdClientError(`${peer}: the server refused STARTTLS (${replyName(reply.type)}${reply.message})`);
        reader.detach();
        // Nothing may come between the ACK and TLS: the socket's bytes are the TLS layer's now.
        source.stopFeeding();
        source.input.clear();
        stream = await options.startTls(raw);
        source.feedFrom(stream);
        reader = new HandshakeReader(source, stream, peer);
      }
      const sr = await option(stream, reader, NbdOption.STRUCTURED_REPLY, Buffer.alloc(0), peer);
      const structuredReplies = sr.type === NbdReply.ACK;
      if (!structuredReplies && (sr.type & 0x80000000) === 0) throw new NbdClientError(`${peer}: unexpected reply ${sr.type} to NBD_OPT_STRUCTURED_REPLY`);
      const info = await go(stream, reader, options.exportName, structuredReplies, peer);
      reader.detach();
      clearTimeout(timer);
      return new NbdClientConnection(stream, source, info, peer, options.maxInFlight ?? 64);
    } catch (err) {
      clearTimeout(timer);
      raw.destroy();
      throw err instanceof NbdClientError ? err : new NbdClientError(`${peer}: ${(err as Error).message}`);
    }
  }

  get closed(): boolean {
    return this.closedWith !== null || this.stream.destroyed;
  }

  /** Requests in flight. */
  get busy(): number {
    return this.ids.inUse;
  }

  /** Free slots: a caller with none waits for a `done` before submitting again. */
  get available(): number {
    return this.closed ? 0 : this.ids.free;
  }

  /**
   * Sends one request. READ fills `data` (its length is the request's); WRITE sends it; FLUSH,
   * TRIM and WRITE_ZEROES take `length` with `data` null. `done` runs once. Throws when no slot
   * is free or the connection is closed (callers check `available`).
   */
  submit(type: number, flags: number, offset: number, length: number, data: Buffer | null, done: NbdDone): void {
    if (this.closed) throw new NbdClientError(`${this.peer}: connection closed`);
    const index = this.ids.take();
    if (index < 0) throw new NbdClientError(`${this.peer}: more than ${this.slots.length} requests in flight`);
    const slot = this.slots[index]!;
    slot.generation = (slot.generation + 1) >>> 0;
    slot.type = type;
    slot.offset = offset;
    slot.length = length;
    slot.into = type === NbdCommand.READ ? data : null;
    slot.covered = 0;
    slot.error = 0;
    slot.done = done;
    const h = slot.header;
    setBE32(h, REQUEST_HEADER.magic, NBD_REQUEST_MAGIC);
    setBE16(h, REQUEST_HEADER.flags, flags);
    setBE16(h, REQUEST_HEADER.type, type);
    // The cookie names the slot and its use: index in the high half, generation in the low.
    h.writeUInt32BE(slot.index, REQUEST_HEADER.cookie.offset);
    h.writeUInt32BE(slot.generation, REQUEST_HEADER.cookie.offset + 4);
    setBE64Number(h, REQUEST_HEADER.offset, offset);
    setBE32(h, REQUEST_HEADER.length, length >>> 0);
    // The header is reused only after the reply, which the server cannot send before it has
    // received the whole request: by then the socket no longer needs the bytes.
    this.stream.write(h);
    if (type === NbdCommand.WRITE && data) this.stream.write(data);
  }

  /** Sends NBD_CMD_DISC after the requests in flight and closes; resolves when closed. */
  async close(): Promise<void> {
    if (!this.closed) {
      const disc = Buffer.alloc(REQUEST_HEADER_SIZE);
      setBE32(disc, REQUEST_HEADER.magic, NBD_REQUEST_MAGIC);
      setBE16(disc, REQUEST_HEADER.type, NbdCommand.DISC);
      this.stream.end(disc);
    }
    if (!this.stream.destroyed) {
      // A server that does not close after NBD_CMD_DISC is not waited for longer than this.
      const timer = setTimeout(() => this.stream.destroy(), CLOSE_TIMEOUT_MS);
      await new Promise<void>((r) => this.stream.once('close', () => r()));
      clearTimeout(timer);
    }
    this.fail(null);
  }

  /** Drops the connection now: requests in flight end with -1. */
  destroy(why?: string): void {
    this.fail(why ? new NbdClientError(`${this.peer}: ${why}`) : null);
  }

  onClose(listener: (err: Error | null) => void): void {
    if (this.closedWith) listener(this.closedWith);
    else this.closeListeners.push(listener);
  }

  private fail(err: Error | null): void {
    if (this.closedWith) return;
    this.closedWith = err ?? new NbdClientError(`${this.peer}: connection closed`);
    this.stream.destroy();
    this.source.onBytes = () => {};
    this.source.input.clear();
    for (const slot of this.slots) if (this.ids.isTaken(slot.index)) this.finish(slot, this.violated ? NBD_PROTOCOL_ERROR : NBD_LOST);
    for (const l of this.closeListeners.splice(0)) l(err);
  }

  private finish(slot: NbdSlot, error: number): void {
    const done = slot.done!;
    slot.done = null;
    slot.into = null;
    this.ids.release(slot.index);
    done(error);
  }

  /** A protocol violation by the server: hard disconnect (proto.md), everything in flight fails. */
  private violation(what: string): void {
    this.violated = true;
    this.fail(new NbdClientError(`${this.peer}: ${what}; disconnecting`));
  }

  /** The slot a reply's cookie (its 8 bytes at `at` of `b`) names, or null (a violation) when it is not in flight. */
  private slotOf(b: Buffer, at: number): NbdSlot | null {
    const index = b.readUInt32BE(at);
    const generation = b.readUInt32BE(at + 4);
    const slot = this.slots[index];
    return slot && this.ids.isTaken(index) && slot.generation === generation ? slot : null;
  }

  private parse(): void {
    const s = this.scratch;
    const input = this.source.input;
    while (!this.closedWith) {
      const st = this.state;
      if (st.kind === 'reply') {
        if (!input.fill(4)) return;
        const magic = input.peekUInt32BE();
        if (magic === NBD_SIMPLE_REPLY_MAGIC) {
          if (!input.fill(SIMPLE_REPLY_SIZE)) return;
          input.takeInto(SIMPLE_REPLY_SIZE, s, 0);
          const error = getBE32(s, SIMPLE_REPLY.error);
          const slot = this.slotOf(s, SIMPLE_REPLY.cookie.offset);
          if (!slot) return this.violation(`a reply for a request not in flight (cookie ${view(s, SIMPLE_REPLY.cookie).toString('hex')})`);
          if (error === 0 && slot.type === NbdCommand.READ && slot.length > 0) {
            this.state = this.readData(slot, 0, slot.length, true);
          } else {
            this.finish(slot, error === 0 ? 0 : error);
          }
        } else if (magic === NBD_STRUCTURED_REPLY_MAGIC) {
          if (!this.info.structuredReplies) return this.violation('a structured reply that was not negotiated');
          if (!input.fill(STRUCTURED_REPLY_SIZE)) return;
          input.takeInto(STRUCTURED_REPLY_SIZE, s, 0);
          const flags = getBE16(s, STRUCTURED_REPLY.flags);
          const type = getBE16(s, STRUCTURED_REPLY.type);
          const slot = this.slotOf(s, STRUCTURED_REPLY.cookie.offset);
          const length = getBE32(s, STRUCTURED_REPLY.length);
          if (!slot) return this.violation(`a reply chunk for a request not in flight (cookie ${view(s, STRUCTURED_REPLY.cookie).toString('hex')})`);
          if (!this.chunkFits(slot, type, length)) return;
          if (type === NbdReplyType.NONE) {
            this.endChunk(slot, flags);
          } else {
            this.state = { kind: 'chunk', slot, type, flags, length };
          }
        } else {
          return this.violation(`a reply with bad magic 0x${magic.toString(16)}`);
        }
      } else if (st.kind === 'data') {
        // Into the request's own buffer (range checked when the chunk was accepted): what is
        // buffered is copied, the rest is read there directly (source.direct; onDirect counts it).
        while (st.left > 0) {
          if (input.length === 0 && !input.moreFromChunk()) return;
          const n = Math.min(st.left, input.length);
          if (n === 0) continue;
          if (st.slot.into) input.takeInto(n, st.slot.into, st.at);
          else input.skip(n);
          st.at += n;
          st.left -= n;
        }
        this.state = REPLY_STATE;
        if (st.final) this.finish(st.slot, 0);
      } else {
        const { slot, type, flags, length } = st;
        if (type === NbdReplyType.OFFSET_DATA) {
          if (!input.fill(OFFSET_DATA_CHUNK_SIZE)) return;
          input.takeInto(OFFSET_DATA_CHUNK_SIZE, s, 0);
          const offset = getBE64Number(s, OFFSET_DATA_CHUNK.offset);
          const n = length - OFFSET_DATA_CHUNK_SIZE;
          const rel = offset - slot.offset;
          if (rel < 0 || rel + n > slot.length) return this.violation(`read data at ${offset}+${n} outside the request ${slot.offset}+${slot.length}`);
          slot.covered += n;
          if (slot.covered > slot.length) return this.violation('read chunks overlap');
          this.state = this.readData(slot, rel, n, false);
          if (flags & NBD_REPLY_FLAG_DONE) {
            // DONE on a content chunk: the data is read first, then the request ends.
            this.afterData = slot;
          }
          continue;
        }
        if (!input.fill(length)) return;
        const payload = this.chunkBuffer;
        input.takeInto(length, payload, 0);
        this.state = REPLY_STATE;
        if (type === NbdReplyType.OFFSET_HOLE) {
          const offset = getBE64Number(payload, OFFSET_HOLE_CHUNK.offset);
          const n = getBE32(payload, OFFSET_HOLE_CHUNK.holeSize);
          const rel = offset - slot.offset;
          if (n === 0 || rel < 0 || rel + n > slot.length) return this.violation(`a hole at ${offset}+${n} outside the request ${slot.offset}+${slot.length}`);
          slot.into?.fill(0, rel, rel + n);
          slot.covered += n;
          if (slot.covered > slot.length) return this.violation('read chunks overlap');
        } else if (type & 0x8000) {
          const error = getBE32(payload, ERROR_CHUNK.error);
          const messageLength = getBE16(payload, ERROR_CHUNK.messageLength);
          if (messageLength > length - ERROR_CHUNK_SIZE) return this.violation('an error chunk whose message is longer than the chunk');
          // An error chunk without an error value is still an error (the request failed).
          if (slot.error === 0) slot.error = error === 0 ? 5 : error;
        }
        this.endChunk(slot, flags);
      }
      if (this.state.kind === 'reply' && this.afterData) {
        const slot = this.afterData;
        this.afterData = null;
        this.endChunk(slot, NBD_REPLY_FLAG_DONE);
      }
    }
  }

  private readData(slot: NbdSlot, at: number, left: number, final: boolean): DataState {
    const d = this.dataState ?? (this.dataState = { kind: 'data', slot, at, left, final });
    d.slot = slot;
    d.at = at;
    d.left = left;
    d.final = final;
    return d;
  }

  /** A content chunk that ended the reply (DONE on OFFSET_DATA) waits for its data to be read. */
  private afterData: NbdSlot | null = null;

  /** Whether a structured chunk's type and length are what the protocol allows for its request. */
  private chunkFits(slot: NbdSlot, type: number, length: number): boolean {
    const read = slot.type === NbdCommand.READ;
    let ok: boolean;
    if (type === NbdReplyType.NONE) ok = length === 0;
    else if (type === NbdReplyType.OFFSET_DATA) ok = read && length >= 9 && length - 8 <= slot.length;
    else if (type === NbdReplyType.OFFSET_HOLE) ok = read && length === 12;
    else if (type & 0x8000) ok = length >= 6 && length <= MAX_ERROR_CHUNK;
    else ok = false;
    if (!ok) this.violation(`an unexpected reply chunk (type ${type}, ${length} bytes) for ${commandName(slot.type)}`);
    return ok;
  }

  private endChunk(slot: NbdSlot, flags: number): void {
    if ((flags & NBD_REPLY_FLAG_DONE) === 0) return;
    if (slot.error === 0 && slot.type === NbdCommand.READ && slot.covered !== slot.length) {
      return this.violation(`a read reply that covers ${slot.covered} of ${slot.length} bytes`);
    }
    this.finish(slot, slot.error);
  }
}

function commandName(type: number): string {
  return Object.entries(NbdCommand).find(([, v]) => v === type)?.[0] ?? `command ${type}`;
}

function replyName(type: number): string {
  return Object.entries(NbdReply).find(([, v]) => v === type)?.[0] ?? `reply 0x${type.toString(16)}`;
}

/**
 * A connection's received bytes in one StreamInput: read into it through onread (a plain
 * socket, `readOptions()`), or fed from 'data' chunks (TLS, `feedFrom()`). Whoever reads now —
 * the handshake, then the transmission parser — sets `onBytes`, and where a read may land
 * directly (`direct`, `onDirect`: a READ's data into the request's buffer).
 */
class NbdInput {
  readonly input = new StreamInput(
    () => this.direct(),
    (n) => this.onDirect(n),
  );
  direct: () => Buffer | null = () => null;
  onDirect: (n: number) => void = () => {};
  onBytes: () => void = () => {};
  private fed: Duplex | null = null;
  private readonly onData = (d: Buffer): void => {
    this.input.feed(d);
    this.onBytes();
  };

  /** net.connect's onread option for a plain socket. */
  readOptions(): { onread: { buffer: () => Buffer; callback: (n: number) => boolean } } {
    return {
      onread: {
        buffer: () => this.input.nextBuffer(),
        callback: (n) => {
          this.input.received(n);
          this.onBytes();
          return true;
        },
      },
    };
  }

  /** Take `stream`'s 'data' chunks (a socket without onread, or the TLS stream). */
  feedFrom(stream: Duplex): void {
    this.stopFeeding();
    this.fed = stream;
    stream.on('data', this.onData);
  }

  stopFeeding(): void {
    this.fed?.off('data', this.onData);
    this.fed = null;
  }
}

/** Reads exact byte counts during the handshake; what it does not read stays in the source. */
class HandshakeReader {
  private wanted: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private ended: Error | null = null;
  private readonly onEnd = () => {
    this.ended = new NbdClientError(`${this.peer}: the server closed the connection during the handshake`);
    this.serve();
  };
  private readonly onError = (err: Error) => {
    this.ended = err;
    this.serve();
  };

  constructor(
    private readonly source: NbdInput,
    private readonly stream: Duplex,
    private readonly peer: string,
  ) {
    source.onBytes = () => this.serve();
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  read(n: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      this.wanted = { n, resolve, reject };
      this.serve();
    });
  }

  /** Stops listening; bytes beyond what was read stay in the source for the next reader. */
  detach(): void {
    this.source.onBytes = () => {};
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onEnd);
    this.stream.off('error', this.onError);
  }

  private serve(): void {
    const w = this.wanted;
    if (!w) return;
    const input = this.source.input;
    if (input.fill(w.n)) {
      this.wanted = null;
      w.resolve(input.takeCopy(w.n));
    } else if (this.ended) {
      this.wanted = null;
      w.reject(this.ended);
    }
  }
}

interface OptionReply {
  readonly type: number;
  readonly data: Buffer;
  /** ": message" from an error reply's text, escaped; or empty. */
  readonly message: string;
}

async function optionReply(reader: HandshakeReader, opt: number, peer: string): Promise<OptionReply> {
  const h = await reader.read(OPTION_REPLY_SIZE);
  if (getBE64(h, OPTION_REPLY.magic) !== NBD_OPT_REPLY_MAGIC) throw new NbdClientError(`${peer}: bad option reply magic`);
  const replied = getBE32(h, OPTION_REPLY.option);
  if (replied !== opt) throw new NbdClientError(`${peer}: a reply to option ${replied} when ${opt} was asked`);
  const type = getBE32(h, OPTION_REPLY.type);
  const length = getBE32(h, OPTION_REPLY.length);
  if (length > MAX_OPTION_REPLY) throw new NbdClientError(`${peer}: an option reply of ${length} bytes`);
  const data = length > 0 ? Buffer.from(await reader.read(length)) : Buffer.alloc(0);
  const message = type & 0x80000000 && data.length > 0 ? `: ${quotePeerString(data.toString('utf8', 0, Math.min(data.length, NBD_MAX_STRING)))}` : '';
  return { type, data, message };
}

async function option(stream: Duplex, reader: HandshakeReader, opt: number, data: Buffer, peer: string): Promise<OptionReply> {
  stream.write(Buffer.concat([encodeOptionHeader(opt, data.length), data]));
  return optionReply(reader, opt, peer);
}

async function go(stream: Duplex, reader: HandshakeReader, name: string, structuredReplies: boolean, peer: string): Promise<NbdExportInfo> {
  const data = encodeInfoRequest(name, [NbdInfo.BLOCK_SIZE]);
  stream.write(Buffer.concat([encodeOptionHeader(NbdOption.GO, data.length), data]));
  let size = -1;
  let tflags = 0;
  let block = { minimum: 1, preferred: 4096, maximum: 32 * 1024 * 1024 };
  for (let replies = 0; replies < 64; replies++) {
    const r = await optionReply(reader, NbdOption.GO, peer);
    if (r.type === NbdReply.ACK) {
      if (size < 0) throw new NbdClientError(`${peer}: NBD_OPT_GO succeeded without NBD_INFO_EXPORT`);
      const has = (bit: number) => (tflags & bit) !== 0;
      return {
        size,
        transmissionFlags: tflags,
        readOnly: has(TransmissionFlag.READ_ONLY),
        canFlush: has(TransmissionFlag.SEND_FLUSH),
        canFua: has(TransmissionFlag.SEND_FUA),
        canTrim: has(TransmissionFlag.SEND_TRIM),
        canWriteZeroes: has(TransmissionFlag.SEND_WRITE_ZEROES),
        canMultiConn: has(TransmissionFlag.CAN_MULTI_CONN),
        minimumBlock: block.minimum,
        preferredBlock: block.preferred,
        maximumBlock: block.maximum,
        structuredReplies,
      };
    }
    if (r.type === NbdReply.INFO) {
      if (r.data.length < INFO.type.width) throw new NbdClientError(`${peer}: a short NBD_REP_INFO`);
      const info = getBE16(r.data, INFO.type);
      if (info === NbdInfo.EXPORT) {
        if (r.data.length !== INFO_EXPORT_SIZE) throw new NbdClientError(`${peer}: NBD_INFO_EXPORT of ${r.data.length} bytes`);
        const big = getBE64(r.data, INFO_EXPORT.size);
        if (big > BigInt(Number.MAX_SAFE_INTEGER)) throw new NbdClientError(`${peer}: export size ${big} is too large`);
        size = Number(big);
        tflags = getBE16(r.data, INFO_EXPORT.transmissionFlags);
      } else if (info === NbdInfo.BLOCK_SIZE) {
        if (r.data.length !== INFO_BLOCK_SIZE_SIZE) throw new NbdClientError(`${peer}: NBD_INFO_BLOCK_SIZE of ${r.data.length} bytes`);
        block = {
          minimum: getBE32(r.data, INFO_BLOCK_SIZE.minimum),
          preferred: getBE32(r.data, INFO_BLOCK_SIZE.preferred),
          maximum: getBE32(r.data, INFO_BLOCK_SIZE.maximum),
        };
      }
      continue;
    }
    if (r.type === NbdReply.ERR_UNKNOWN) throw new NbdClientError(`${peer}: no export named ${quotePeerString(name)}${r.message}`);
    if (r.type === NbdReply.ERR_TLS_REQD) throw new NbdClientError(`${peer}: the server requires TLS (use nbds:// and the TLS options)${r.message}`);
    throw new NbdClientError(`${peer}: NBD_OPT_GO refused (${replyName(r.type)})${r.message}`);
  }
  throw new NbdClientError(`${peer}: too many replies to NBD_OPT_GO`);
}
