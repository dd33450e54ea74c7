import { promises as fsp } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { formatHostPort } from '../transport/address.js';
import { defaultLogger, type Logger } from '../util/log.js';
import { withSocketMode } from '../util/socket-mode.js';
import { BridgeBudget } from './bridge-budget.js';
import { NbdConnection, type NbdConnectionLimits, type NbdShared } from './nbd-connection.js';
import { NbdExport, type NbdBlockDevice, type NbdExportOptions } from './nbd-export.js';
import { NBD_DEFAULT_PORT } from './nbd-protocol.js';
import { NbdTls, type NbdTlsSettings } from './nbd-tls.js';

export interface NbdServerOptions extends NbdExportOptions {
  /** Requests in flight per NBD connection (default 64). */
  readonly maxRequestsPerConnection?: number;
  /** Read/write payload bytes in flight per NBD connection (default 64 MiB, at least maxBlockBytes). */
  readonly maxBytesPerConnection?: number;
  /** How long close() waits for in-flight requests before cutting connections (default 10 s). */
  readonly shutdownTimeoutMs?: number;
  /** Drop a connection that has not finished the NBD handshake after this long (default 10 s). */
  readonly handshakeTimeoutMs?: number;
  /** NBD connections at once; one more is closed at accept with a log line (default 64). */
  readonly maxConnections?: number;
  /** Mode of the Unix socket file (default 0o600: the server's user only). */
  readonly socketMode?: number;
  /**
   * Read/write payload bytes in flight across all connections, replies not yet handed to the
   * kernel included (default 64 MiB). When it is full, connections stop reading new requests
   * until bytes come back; a request larger than the whole budget runs alone.
   */
  readonly memoryBudgetBytes?: number;
  /** Disconnect a client whose replies have not moved for this long (default 10 s; 0: never). */
  readonly sendTimeoutMs?: number;
  /** NBD_OPT_STARTTLS with these credentials (default: no TLS, STARTTLS gets NBD_REP_ERR_UNSUP). */
  readonly tls?: NbdTlsSettings;
  readonly log?: Logger;
}

export const NBD_DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
export const NBD_DEFAULT_MAX_CONNECTIONS = 64;
export const NBD_DEFAULT_MEMORY_BUDGET = 64 * 1024 * 1024;
export const NBD_DEFAULT_SEND_TIMEOUT_MS = 10_000;

/** Whether a --listen host is this machine's loopback only (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127(?:\.\d{1,3}){3}$/.test(host);
}

/** Where to listen: a Unix socket path, or a TCP host and port (port 0 picks one). */
export type NbdListenAddress = { readonly socket: string } | { readonly host: string; readonly port?: number };

/** Characters kept as they are in a URI path segment or query value (RFC 3986 pchar, minus '&', '=', '+', '?'). */
function uriEscape(s: string, keep: RegExp): string {
  return [...s].map((ch) => (keep.test(ch) ? ch : encodeURIComponent(ch))).join('');
}

/** The NBD URI of an export (NetworkBlockDevice/nbd doc/uri.md); nbds when TLS is required. */
export function formatNbdUri(address: NbdListenAddress, exportName: string, tlsRequired = false): string {
  const scheme = tlsRequired ? 'nbds' : 'nbd';
  const path = `/${uriEscape(exportName, /[A-Za-z0-9\-._~!$'()*,;:@]/)}`;
  if ('socket' in address) return `${scheme}+unix://${path}?socket=${uriEscape(address.socket, /[A-Za-z0-9\-._~!$'()*,;:@/]/)}`;
  return `${scheme}://${formatHostPort(address.host, address.port ?? NBD_DEFAULT_PORT)}${path}`;
}

/** Remove a Unix socket file left by a dead server; refuse to touch anything else. */
async function removeStaleSocket(path: string): Promise<void> {
  let st;
  try {
    st = await fsp.lstat(path);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${path} exists and is not a socket`);
  const live = await new Promise<boolean>((resolve) => {
    const probe: Socket = createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (live) throw new Error(`${path} is in use by another server`);
  await fsp.unlink(path);
}

/**
 * An NBD server exporting one block device (e.g. a remote vof disk) to any number of NBD
 * clients: qemu, qemu-img, nbdcopy, fio's nbd engine, the kernel's nbd-client. Every
 * connection shares the device; requests from all of them are spread over its virtqueues.
 */
export class NbdServer {
  readonly export: NbdExport;
  private readonly server: Server;
  private readonly connections = new Set<NbdConnection>();
  private readonly log: Logger;
  private readonly limits: NbdConnectionLimits;
  private readonly shared: NbdShared;
  private address: NbdListenAddress | null = null;
  private closing: Promise<void> | null = null;
  private nextId = 1;
  /** The URI clients use, once listening. */
  uri = '';

  constructor(
    readonly disk: NbdBlockDevice,
    private readonly options: NbdServerOptions,
  ) {
    this.export = new NbdExport(disk, options);
    this.log = options.log ?? defaultLogger();
    const maxRequests = Math.max(1, options.maxRequestsPerConnection ?? 64);
    const maxBytes = Math.max(this.export.blockSizes.maximum, options.maxBytesPerConnection ?? 64 * 1024 * 1024);
    this.limits = { maxRequests, maxBytes, sendTimeoutMs: options.sendTimeoutMs ?? NBD_DEFAULT_SEND_TIMEOUT_MS };
    this.shared = {
      // Not raised to maxBlockBytes: a request larger than the budget runs when nothing else is held.
      budget: new BridgeBudget(Math.max(1, options.memoryBudgetBytes ?? NBD_DEFAULT_MEMORY_BUDGET)),
      tls: options.tls ? new NbdTls(options.tls, this.log) : null,
    };
    // Paused: NbdConnection decides how the socket reads (onread, or 'data' when TLS may come).
    this.server = createServer({ noDelay: true, pauseOnConnect: true }, (socket) => this.accept(socket));
    // A listen() failure is its caller's to report (it rejects): logging it here too printed it twice.
    this.server.on('error', (err) => {
      if (this.server.listening) this.log.error(`nbd server: ${err.message}`);
    });
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * The bridge-wide memory budget: bytes held now by requests in flight and unsent replies, and
   * the limit; `kept`: data buffers idle requests keep for reuse (at most `keptLimit`).
   */
  get memory(): { readonly used: number; readonly limit: number; readonly waiting: number; readonly kept: number; readonly keptLimit: number } {
    const b = this.shared.budget;
    return { used: b.used, limit: b.limit, waiting: b.waiting, kept: b.kept, keptLimit: b.keptLimit };
  }

  private accept(socket: Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const peer = socket.remoteAddress ? formatHostPort(socket.remoteAddress, socket.remotePort ?? 0) : `unix#${this.nextId++}`;
    const max = this.options.maxConnections ?? NBD_DEFAULT_MAX_CONNECTIONS;
    if (this.connections.size >= max) {
      this.log.warn(`nbd ${peer}: refused: ${this.connections.size} connections, the limit (--max-connections)`);
      socket.destroy();
      return;
    }
    const conn = new NbdConnection(socket, this.export, this.limits, this.shared, this.log, peer);
    this.connections.add(conn);
    this.log.debug(`nbd ${peer}: connected`);
    // A client that never finishes the handshake (TLS's included) holds a connection slot for nothing.
    const timeoutMs = this.options.handshakeTimeoutMs ?? NBD_DEFAULT_HANDSHAKE_TIMEOUT_MS;
    const timer = setTimeout(() => {
      if (conn.inTransmission) return;
      conn.drop(`no completed handshake within ${timeoutMs} ms`);
    }, timeoutMs);
    timer.unref();
    void conn.closedPromise.then(() => {
      clearTimeout(timer);
      this.connections.delete(conn);
      this.log.debug(`nbd ${peer}: closed`);
    });
  }

  /** Start listening; resolves with the NBD URI (nbd+unix:///NAME?socket=PATH or nbd://HOST:PORT/NAME). */
  async listen(address: NbdListenAddress): Promise<string> {
    if ('socket' in address) await removeStaleSocket(address.socket);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: Error) => reject(err);
      this.server.once('error', onError);
      const done = () => {
        this.server.off('error', onError);
        resolve();
      };
      if ('socket' in address) withSocketMode(this.options.socketMode ?? 0o600, () => this.server.listen(address.socket, done));
      else this.server.listen(address.port ?? NBD_DEFAULT_PORT, address.host, done);
    });
    if ('socket' in address) {
      this.address = address;
    } else {
      const bound = this.server.address();
      this.address = { host: address.host, port: typeof bound === 'object' && bound ? bound.port : (address.port ?? NBD_DEFAULT_PORT) };
    }
    this.uri = formatNbdUri(this.address, this.export.name, this.shared.tls?.required ?? false);
    return this.uri;
  }

  /**
   * Stop: no new connections; handshakes get NBD_REP_ERR_SHUTDOWN, new requests ESHUTDOWN;
   * requests in flight finish (up to shutdownTimeoutMs), the disk is flushed, then every
   * connection is closed. The disk itself stays open (its owner closes it).
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    const stopped = new Promise<void>((resolve) => this.server.close(() => resolve()));
    const conns = [...this.connections];
    for (const c of conns) c.beginShutdown();
    const timeoutMs = this.options.shutdownTimeoutMs ?? 10000;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), timeoutMs)));
    const gaveUp = await Promise.race([Promise.all(conns.map((c) => c.idle())).then(() => false), timedOut]);
    clearTimeout(timer);
    if (gaveUp) this.log.warn(`nbd: requests still in flight after ${timeoutMs} ms; closing anyway`);
    if (!this.export.readOnly && this.disk.canFlush) {
      try {
        await this.disk.flush();
      } catch (err) {
        this.log.error(`nbd: flush at shutdown failed: ${(err as Error).message}`);
      }
    }
    for (const c of conns) c.close();
    await Promise.all(conns.map((c) => c.closedPromise));
    await stopped;
  }
}
