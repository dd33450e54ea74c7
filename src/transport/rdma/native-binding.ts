import { REBUILD_HINT, loadNativeAddon } from '../../util/native-addon.js';

/**
 * Types of the native addon (native/*.cc) and its loader. The binding is verb-shaped: every
 * class maps to one rdma-core object, and every object is released by exactly one call
 * (CmId.destroy also destroys its QP; MemoryRegion.deregister, or garbage collection).
 */

export interface CmEvent {
  /** rdma_cm_event_type without the RDMA_CM_EVENT_ prefix, e.g. "ESTABLISHED". */
  readonly type: string;
  readonly status: number;
  readonly id?: CmId;
  /** CONNECT_REQUEST only: the listening id the request came to. */
  readonly listenId?: CmId;
  readonly privateData?: Buffer;
  readonly responderResources?: number;
  readonly initiatorDepth?: number;
}

export interface EventChannel {
  close(): void;
}

export interface ConnParam {
  readonly responderResources: number;
  readonly initiatorDepth: number;
  readonly retryCount?: number;
  readonly rnrRetryCount?: number;
  readonly privateData?: Buffer;
}

export interface QpCaps {
  readonly maxSendWr: number;
  readonly maxRecvWr: number;
  readonly maxSendSge: number;
  readonly maxRecvSge: number;
}

export interface SocketAddress {
  readonly host: string;
  readonly port: number;
}

export interface DeviceLimits {
  readonly initiator: number;
  readonly responder: number;
  readonly maxSge: number;
  readonly maxQpWr: number;
  readonly maxCqe: number;
}

export interface CmId {
  bind(host: string, port: number): void;
  listen(backlog?: number): void;
  resolveAddr(host: string, port: number, timeoutMs: number): void;
  resolveRoute(timeoutMs: number): void;
  connect(param: ConnParam): void;
  accept(param: ConnParam): void;
  reject(): void;
  disconnect(): void;
  createQp(pd: ProtectionDomain, cq: CompletionQueue, caps: QpCaps): QueuePair;
  destroy(): void;
  /** Destroy its QP only (if any): verbs objects go before the CM id (see RcConnection.destroy). */
  destroyQp(): void;
  localAddress(): SocketAddress | null;
  peerAddress(): SocketAddress | null;
  deviceName(): string | null;
  maxReadDepth(): DeviceLimits;
}

export interface MemoryRegion {
  readonly lkey: number;
  readonly rkey: number;
  readonly address: bigint;
  readonly length: number;
  readonly buffer: Buffer;
  deregister(): void;
}

export interface ProtectionDomain {
  registerMemory(buffer: Uint8Array, access: number): MemoryRegion;
  /** False when regions or queue pairs still use it: the PD then goes with the last of them. */
  dealloc(): boolean;
  /** ibv_reg_mr calls made in this PD so far (cumulative). */
  registrations(): number;
}

/**
 * Completions land in `completions`, `wordsPerCompletion` words each: wr_id, status, opcode,
 * byte_len, invalidated (1: a received SEND with Invalidate ended one of our keys), and that
 * invalidated rkey.
 */
export interface CompletionQueue {
  readonly completions: Uint32Array;
  readonly wordsPerCompletion: number;
  destroy(): void;
}

/**
 * A type 2 memory window (ibv_alloc_mw): remote access to exactly the bytes of its latest bind,
 * until a LocalInvalidate (or dealloc). Bound and invalidated by work requests on a QP of the
 * same PD; released by dealloc() or garbage collection.
 */
export interface MemoryWindow {
  /** The key of the latest bind posted (what the peer must use); changes with every bind. */
  readonly rkey: number;
  dealloc(): void;
}

export const WrOpcode = { Send: 0, Write: 1, Read: 2, BindWindow: 3, LocalInvalidate: 4, SendWithInvalidate: 5 } as const;
export type WrOpcode = (typeof WrOpcode)[keyof typeof WrOpcode];

/**
 * One work request as JS builds it (owners keep them as templates and reuse them); the send
 * queue stages it into the addon's flat layout when posting. `sg` is flat triples of (region,
 * offset, length), at most two. BindWindow: `window` over
 * sg's single triple (the region must be registered with access.MW_BIND), granting `access`
 * (REMOTE_READ and/or REMOTE_WRITE). LocalInvalidate: `window`'s current key stops working.
 * SendWithInvalidate: a Send that also makes the receiver's NIC invalidate the receiver's key
 * `rkey` before the receiver sees the message.
 */
export interface SendWr {
  wrId: number;
  opcode: WrOpcode;
  signaled: boolean;
  sg: Array<MemoryRegion | number>;
  /** RDMA READ/WRITE: the remote address in 32-bit halves (a keyed descriptor's words; no BigInt per request). */
  remoteAddrLow?: number;
  remoteAddrHigh?: number;
  rkey?: number;
  window?: MemoryWindow;
  access?: number;
}

/** What ibv_query_qp reports; rdma_cm takes the send-side retry counts from the peer's CM message. */
export interface QpAttributes {
  readonly state: number;
  /** 7 means "retry forever" (IB spec). */
  readonly rnrRetry: number;
  readonly retryCount: number;
  readonly minRnrTimer: number;
  readonly timeout: number;
}

export interface QueuePair {
  /**
   * Post the first `count` work requests of `staging` (WorkRequestStaging in send-queue.ts
   * writes them: WR_WORDS words each, regions and windows as indexes into `objects`; entries
   * no request names may be null) as one list: one ibv_post_send.
   */
  postSend(staging: Uint32Array, count: number, objects: ReadonlyArray<MemoryRegion | MemoryWindow | null>): void;
  postRecv(wrId: number, mr: MemoryRegion, offset: number, length: number): void;
  query(): QpAttributes;
  /** Move the QP to the error state (its posted work requests flush): fault tests. */
  modifyToError(): void;
}

export interface PortInfo {
  readonly port: number;
  readonly state: string;
  readonly activeMtu: number;
  readonly linkLayer: string;
  readonly gids: ReadonlyArray<{ readonly index: number; readonly gid: string }>;
}

export interface DeviceInfo {
  readonly name: string;
  readonly nodeGuid: string;
  readonly ports: readonly PortInfo[];
  readonly error?: string;
}

/**
 * Live rdma-core objects by kind, per Node.js environment: the main thread and each worker thread
 * count the objects they created (native/common.h), so a thread's leak check is not moved by
 * another thread's connections.
 */
export interface ResourceCounts {
  readonly eventChannels: number;
  readonly cmIds: number;
  readonly protectionDomains: number;
  readonly completionQueues: number;
  readonly queuePairs: number;
  readonly memoryRegions: number;
  /** Cumulative count of ibv_reg_mr calls in this environment (never decreases). */
  readonly registrationsTotal: number;
  readonly memoryWindows: number;
}

export interface NativeBinding {
  EventChannel: new (onEvent: (event: CmEvent) => void) => EventChannel;
  CmId: new (channel: EventChannel) => CmId;
  ProtectionDomain: new (cmId: CmId) => ProtectionDomain;
  /**
   * `onCompletions(count)`: `count` completions are in `completions`. A negative count is
   * -errno of a failed ibv_req_notify_cq: the CQ delivers nothing more, its owner must fail.
   */
  CompletionQueue: new (cmId: CmId, cqe: number, onCompletions: (count: number) => void) => CompletionQueue;
  MemoryWindow: new (pd: ProtectionDomain) => MemoryWindow;
  listDevices(): DeviceInfo[];
  /**
   * Refresh librdmacm's device list (rdma_get_devices): a device found gone is forgotten, and its
   * verbs context closed as soon as no CM id uses it. Returns the names of the devices present.
   */
  syncDevices(): string[];
  resourceCounts(): ResourceCounts;
  wcStatusName(status: number): string;
  readonly access: { readonly LOCAL_WRITE: number; readonly REMOTE_WRITE: number; readonly REMOTE_READ: number; readonly MW_BIND: number };
}

/** The addon if something in this process already loaded it (never loads it): for counters. */
export function loadedNativeBinding(): NativeBinding | null {
  return cached;
}

/** Raised when the RDMA transport is asked for but the addon or rdma-core is missing. */
export class RdmaUnavailableError extends Error {
  override name = 'RdmaUnavailableError';
}

let cached: NativeBinding | null = null;

/**
 * The addon, loaded on first use only: a TCP-only user never needs rdma-core. node-gyp-build
 * prefers prebuilds/<platform>-<arch>/ and falls back to build/Release.
 */
export function nativeBinding(): NativeBinding {
  if (cached) return cached;
  let addon: Partial<NativeBinding> & { rdma?: boolean; rdmaLoadError?: string };
  try {
    addon = loadNativeAddon() as typeof addon;
  } catch (err) {
    const why = (err as Error).message.split('\n')[0];
    throw new RdmaUnavailableError(
      `the RDMA transport needs vof's native addon (${why}): install g++ make python3, and ` +
        `libibverbs-dev librdmacm-dev for RDMA (Debian/Ubuntu), then run ${REBUILD_HINT}.`,
      { cause: err },
    );
  }
  if (addon.rdma !== true) {
    throw new RdmaUnavailableError(
      "the RDMA transport was not compiled into vof's native addon: rdma-core's headers were missing when it was built. " +
        `Install the Debian/Ubuntu packages libibverbs-dev librdmacm-dev, then run ${REBUILD_HINT}.`,
    );
  }
  if (addon.rdmaLoadError !== undefined) {
    throw new RdmaUnavailableError(
      `the RDMA transport needs rdma-core's libraries (${addon.rdmaLoadError}): ` +
        'install the Debian/Ubuntu packages libibverbs1 librdmacm1 ibverbs-providers (rdma-core on Fedora/RHEL).',
    );
  }
  cached = addon as NativeBinding;
  return cached;
}
