/**
 * The one interface every transport implements. The target and initiator state machines talk
 * only to these types; they never see sockets or verbs. A connection carries exactly one
 * Virtio-oF queue (DECISIONS.md item 2).
 *
 * Buffers handed to a transport belong to the caller until the call's promise settles (or, for
 * the fire-and-forget sends, until the matching completion arrives).
 */

import type { AdmissionLimits } from '../util/oldest-first-admission.js';
import type { TlsClientSettings, TlsServerSettings } from './tcp/tls-settings.js';
import type { PinnedMemory } from './pinned-memory.js';

/**
 * What a target connection's transport can do, stated once by the transport (as Linux nvmet's
 * nvmet_fabrics_ops flags do): the target offers Virtio-oF and vof features from this record,
 * never by probing for optional methods.
 */
export interface TargetCapabilities {
  /**
   * VQ data moves by RDMA against keyed descriptors (VIRTIO_OF_F_KEYED_NUM_DESCS is offered);
   * false: it travels after the PDU header on a stream (TCP, TLS).
   */
  readonly keyed: boolean;
  /**
   * vof's inline data (keyed transports): the largest inline size this connection's receive
   * buffers hold (docs/PROTOCOL.md "Inline data on keyed queues"); 0 when it takes none.
   */
  readonly inlineDataBytes: number;
  /**
   * vof's remote invalidation (keyed transports): a VQ completion can be a SEND with
   * Invalidate (docs/PROTOCOL.md "Remote invalidation on keyed queues").
   */
  readonly remoteInvalidation: boolean;
}

/** What an initiator connection's transport can do (see TargetCapabilities). */
export interface InitiatorCapabilities {
  /** VQ data moves by RDMA against keyed descriptors; false: after the PDU header on a stream. */
  readonly keyed: boolean;
  /**
   * allocateBuffer gives memory that sendVq moves with no copy (registered memory); false: it
   * gives plain Buffers, and a caller may as well allocate its own.
   */
  readonly registeredMemory: boolean;
}

/** The capabilities of stream transports (TCP, TLS): none of the keyed ones. */
export const STREAM_TARGET_CAPABILITIES: TargetCapabilities = Object.freeze({ keyed: false, inlineDataBytes: 0, remoteInvalidation: false });
export const STREAM_INITIATOR_CAPABILITIES: InitiatorCapabilities = Object.freeze({ keyed: false, registeredMemory: false });

export interface Endpoint {
  readonly host: string;
  readonly port: number;
}

/**
 * Raised by a transport when VQ buffers cannot be read or written: a keyed descriptor the
 * remote NIC refused, a stream payload over the limit. The target maps it to EOUTVQBUF or
 * EINVQBUF for that one command.
 */
export class VqTransferError extends Error {
  constructor(
    readonly direction: 'out' | 'in',
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'VqTransferError';
  }
}

/**
 * Where a VQ request's buffers are reported once fetched (the core's request slot: made once,
 * so a fetch allocates no callback).
 */
export interface VqBufferSink {
  /** The device-readable and device-writable buffers are at hand. */
  buffersReady(readable: Buffer, writable: Buffer): void;
  /** They cannot be had; `err.direction` says which (answered EOUTVQBUF or EINVQBUF). */
  buffersFailed(err: VqTransferError): void;
}

/**
 * The virtqueue buffers of one VQ command, as seen by the target: the transport's part of the
 * request. Its owner (the target's request object) calls release() exactly once, when the
 * request has ended; until then the buffers it handed out stay valid and untouched by others.
 */
export interface VqRequestData {
  /** Device-readable byte count announced by the command. */
  readonly outLength: number;
  /** Device-writable byte count announced by the command. */
  readonly inLength: number;
  /**
   * The device-readable bytes when they are here already and usable (stream: the payload that
   * came with the command; keyed: inline data, or none to read), else undefined: then fetch()
   * gets them (or says why not). Lets the core run a command at once when nothing has to travel.
   */
  readOutNow(): Buffer | undefined;
  /**
   * The device-writable buffer, supplied by the transport for the device to fill in place:
   * inLength bytes (fewer only where the transport caps it). Stream: a pooled buffer that
   * goes on the wire right after the completion header; keyed: registered memory the RDMA
   * WRITE sends from. Its contents are undefined until the device writes them (it may hold
   * an earlier request's bytes): only the first `written` bytes given to completeVq leave.
   * Undefined when it cannot be had without waiting: then fetch(). The same buffer on every call.
   */
  writableNow(): Buffer | undefined;
  /**
   * Both buffers, when readOutNow() or writableNow() had none: the transport fetches them
   * (RDMA READ, waits for pool memory, never registers) and tells `sink` once, possibly before
   * this returns. A buffer is valid until the request is released. A request released while
   * its buffers are on their way still gets its one answer (the core ends it there).
   */
  fetch(sink: VqBufferSink): void;
  /** The request has ended: give back what it holds (once the transport no longer uses it). */
  release(): void;
}

/**
 * The target queue's answer when a stream transport asks whether it may buffer a VQ command's
 * device-readable payload: 'accept' (buffer out_length bytes, then deliver the command),
 * 'discard' (skip the payload without keeping it and deliver the command with a readOut() that
 * rejects; the target queue answers it with a status), 'close' (read none of the payload: deliver
 * the command at once with a readOut() that rejects, then close the connection once the
 * queue's answer has been written; for connections that may send no payload at all, i.e.
 * before Connect), or a promise: read nothing more from this connection until it settles, then
 * ask again for the same command.
 */
export type PayloadAdmission = 'accept' | 'discard' | 'close' | Promise<void>;

/** Target side: what the transport reports about one connection. */
export interface TargetConnectionHandler {
  /**
   * Stream transports only: a VQ command's header has arrived and none of its payload has been
   * buffered yet. The next onCommand is this command (unless the connection closes first).
   * Memory for a peer's payload is spent only where the target queue allows it: on a bound
   * virtqueue, within its limits and the target's send budget. `payloadBytes`: the memory
   * buffering the payload keeps alive until the command is released (the buffer it lands in as
   * allocated, at least out_length), which the budgets count for it.
   */
  admitVq(command: Buffer, payloadBytes: number): PayloadAdmission;
  /**
   * One request PDU. `payload` is the Connect Body (possibly empty) for Connect, a
   * VqRequestData for a VQ command, and an empty buffer for everything else. `command` is
   * valid during this call only (stream transports decode every header in one buffer of the
   * connection's): copy what must outlive it.
   */
  onCommand(command: Buffer, payload: Buffer | VqRequestData): void;
  /**
   * The peer has ended its sending side (TCP half-close) and every command it sent has been
   * delivered: finish the commands in flight, send their completions, then close.
   */
  onEnd(): void;
  /** The connection is gone (peer closed, error, or close() was called). Called exactly once. */
  onClose(reason?: Error): void;
}

export interface TargetConnection {
  readonly capabilities: TargetCapabilities;
  /** Peer address for log lines, e.g. "tcp://127.0.0.1:50312". */
  readonly peer: string;
  /**
   * The identity the peer proved when the connection was set up (TLS: its PSK identity or
   * its certificate's subject CN); undefined when it proved none.
   */
  readonly identity?: string | undefined;
  /** Keyed descriptors accepted per VQ command; 0 on stream transports. */
  readonly maxKeyedDescriptors: number;
  /** Begin delivering commands; nothing is read before this is called. */
  start(handler: TargetConnectionHandler): void;
  /**
   * Send a completion that carries no data: every non-VQ completion, events, failed VQ
   * commands. `payload` only for vof's EREDIRECT Connect completion (its redirect record, to
   * an initiator that announced VOF_CONNECT_F_REDIRECT): it follows the completion in the same
   * stream write, or in the same SEND on keyed transports.
   */
  sendCompletion(completion: Buffer, payload?: Buffer): void;
  /**
   * Complete a VQ command: deliver the first `written` bytes of its writable() buffer (none
   * when `written` is 0; written ≤ request.inLength) to the device-writable buffers, then the
   * 16-byte completion whose length field already says `written`. `done` runs once: with null
   * once the completion and its data have left this process (stream: handed to the kernel;
   * keyed: posted, see the transport; a connection that closes first counts too), so the
   * command counts as in flight, and its buffers as spent, until then; with a VqTransferError,
   * without the completion having been sent, when the writable buffers could not be written
   * (the caller then answers with EINVQBUF); with a TypeError or RangeError for a call that
   * breaks this contract. It may run before this returns. The one way to complete a VQ
   * command: a callback, not a promise, so that the target passes one bound once per request
   * slot and completing a command allocates nothing. `request` must be one this connection
   * delivered.
   */
  completeVq(request: VqRequestData, completion: Buffer, written: number, done: (err: Error | null) => void): void;
  /** Close now; sends already handed to the connection still go out when possible. */
  close(): void;
  /**
   * From now on, VQ requests with out_length ≤ `size` carry their readable bytes inline (the
   * virtqueue's instance negotiated VOF_F_INLINE_DATA). Called before the virtqueue's Connect
   * completion is sent, and only when capabilities.inlineDataBytes is non-zero; `size` never
   * exceeds it. A connection without the capability throws (a caller's bug).
   */
  enableInlineData(size: number): void;
  /**
   * From now on a VQ completion may end its request's first keyed descriptor's key at the
   * initiator (the virtqueue's instance negotiated VOF_F_REMOTE_INVALIDATE). Called before the
   * virtqueue's Connect completion is sent, and only when capabilities.remoteInvalidation is
   * set; a connection without the capability throws (a caller's bug).
   */
  enableRemoteInvalidation(): void;
}

/** Initiator side: what the transport reports about one connection. */
export interface InitiatorConnectionHandler {
  /**
   * One response PDU. A VQ completion's device-written bytes are already in the buffers given
   * to sendVq: keyed transports had them written by the target, stream transports copied them
   * there as they arrived (see payloadBuffers). `completion` may be the transport's reusable
   * buffer: it is valid only during this call (and expectedPayload's and payloadBuffers').
   */
  onCompletion(completion: Buffer): void;
  /**
   * Stream transports ask this when a completion header arrives, before reading anything
   * after it: how many payload bytes follow (0 for all but a VQ completion), or why the
   * completion cannot belong to this queue (no command in flight has its id, or it claims more
   * bytes than its command's in_length). The connection then closes without reading further:
   * past such a completion the stream cannot be trusted.
   */
  expectedPayload(completion: Buffer): number | string;
  /**
   * Stream transports, after expectedPayload answered a non-zero length: the device-writable
   * buffers of the completion's command (those given to sendVq), filled in order as the
   * payload arrives. Their total length is at least what expectedPayload answered.
   */
  payloadBuffers(completion: Buffer): readonly Buffer[];
  /** The connection is gone. Called exactly once. */
  onClose(reason?: Error): void;
}

export interface InitiatorConnection {
  readonly capabilities: InitiatorCapabilities;
  readonly peer: string;
  /**
   * Most keyed descriptors one VQ command may carry, from Get Keyed Number Descriptors. The
   * initiator sets it before the first VQ command; keyed transports never exceed it (they
   * bounce through a pool buffer instead). Ignored by stream transports.
   */
  maxKeyedDescriptors: number;
  start(handler: InitiatorConnectionHandler): void;
  /** A non-VQ command; `body` only for Connect. */
  sendCommand(command: Buffer, body?: Buffer): void;
  /**
   * A VQ command with its device-readable (`out`) and device-writable (`inBuffers`) buffers,
   * whose lengths match the command's out_length and in_length.
   */
  sendVq(command: Buffer, out: readonly Buffer[], inBuffers: readonly Buffer[]): void;
  /** Close the connection; resolves when its resources are released. */
  close(): Promise<void>;
  /**
   * `size` bytes for sendVq: memory the transport moves with no copy where
   * capabilities.registeredMemory says so, else a plain Buffer. Give it back with freeBuffer.
   */
  allocateBuffer(size: number): Buffer;
  freeBuffer(buffer: Buffer): void;
}

/** Initiator memory options of keyed transports (ignored by stream transports). */
export interface KeyedMemoryOptions {
  /**
   * Bytes of registered bounce memory per virtqueue connection, registered when it is set up
   * (default: 32 KiB per queue slot, within 2..16 MiB). Commands wait for it when it is short.
   */
  readonly bounceBytes?: number;
  /**
   * Opt-in: register large caller Buffers (≥ 16 KiB) in place and keep the registrations in a
   * cache, instead of copying them through bounce memory. Still one memory window per command,
   * invalidated when it completes: the target's keys die with the request either way.
   */
  readonly registrationCache?: boolean;
}

export interface Listener {
  /** The bound address (port resolved when 0 was asked for). */
  readonly endpoint: Endpoint;
  /** A URL such as tcp://127.0.0.1:15771. */
  readonly url: string;
  close(): Promise<void>;
}

export interface ListenOptions {
  /** Largest device-readable payload accepted in one VQ command (bytes). */
  readonly maxVqPayload: number;
  /** Server credentials; required by the tls transport, ignored by the others. */
  readonly tls?: TlsServerSettings;
  /**
   * Close a connection whose queued completions have not moved for this long (a peer that
   * stopped reading, or on RDMA stopped posting receives); 0 never does.
   */
  readonly sendStallTimeoutMs?: number;
  /** Keyed transports: registered bytes of one RDMA device's shared data pools at most. */
  readonly deviceMemoryBytes?: number;
  /**
   * Keyed transports: the inline size offered with VOF_F_INLINE_DATA (receive buffers are sized
   * for it); 0 or absent offers no inline data.
   */
  readonly inlineDataBytes?: number;
  /**
   * Connections accepted but not yet handed to the target (a TLS handshake in progress), held at
   * most this many in total and per peer host; beyond, the oldest is closed. Absent: unbounded
   * (tcp:// hands a connection over at once; the target counts it from there).
   */
  readonly handshakeLimits?: AdmissionLimits;
  /**
   * rdma://: a connection still not established this long after its connect request is
   * destroyed with its queue pair (ms; 0 or absent: never). The target gives its connect timeout.
   */
  readonly handshakeTimeoutMs?: number;
}

export interface ConnectOptions {
  /** Give up on connection establishment after this many milliseconds. */
  readonly timeoutMs: number;
  /** Largest device-writable payload expected in one VQ completion (bytes). */
  readonly maxVqPayload: number;
  /** Client credentials and trust; used by the tls transport, ignored by the others. */
  readonly tls?: TlsClientSettings;
  /**
   * This connection becomes a control queue: keyed transports size its receive buffers for a
   * completion plus a redirect record (docs/PROTOCOL.md "Redirect").
   */
  readonly controlQueue?: boolean;
  /** The queue size the connection will carry (command ids stay below it); default 256. */
  readonly queueSize?: number;
  readonly keyedMemory?: KeyedMemoryOptions;
  /**
   * Keyed transports, virtqueues: buffers the owner pinned (RemoteDevice.pinMemory), registered
   * once in the connection's protection domain and moved in place; the connection also counts
   * how its VQ bytes moved in `pinnedMemory.stats`. Ignored by stream transports.
   */
  readonly pinnedMemory?: PinnedMemory;
  /**
   * Keyed transports, virtqueues of an instance that negotiated VOF_F_INLINE_DATA: VQ requests
   * with out_length ≤ `bytes` carry their readable bytes inline, after at most
   * `maxDescriptors` descriptors of the writable part (send buffers are sized for that).
   */
  readonly inlineData?: { readonly bytes: number; readonly maxDescriptors: number };
}

/** One transport: TCP (stream data transfers) or RDMA (keyed data transfers). */
export interface Transport {
  readonly scheme: 'tcp' | 'tls' | 'rdma';
  listen(
    endpoint: Endpoint,
    options: ListenOptions,
    onConnection: (connection: TargetConnection) => void,
  ): Promise<Listener>;
  connect(endpoint: Endpoint, options: ConnectOptions): Promise<InitiatorConnection>;
}
