import { createServer, type Server, type Socket } from 'node:net';
import { existsSync, lstatSync, unlinkSync } from 'node:fs';
import { quotePeerString } from '../util/escape.js';
import { withSocketMode } from '../util/socket-mode.js';
import type { Logger } from '../util/log.js';
import type { DrainResult } from './target.js';

/**
 * The operator's control socket of `vof target --control PATH` (a Unix socket: who may drain
 * is whoever the file permissions admit, mode 0600 by default). One JSON object per line in,
 * one JSON object per line out:
 *   {"op":"drain","tvqn":"disk0","url":"tcp://10.0.0.2:15771","graceMs":10000}
 *     → {"ok":true,"told":1,"closed":0}
 *   {"op":"redirect","tvqn":"disk0","url":"tcp://10.0.0.2:15771"} → {"ok":true,"url":"…"}
 *   {"op":"unredirect","tvqn":"disk0"} → {"ok":true,"removed":true} (false: there was none;
 *     new Connects for the TVQN are answered here again either way)
 *   {"op":"stats"} → {"ok":true,"rssBytes":…,"registrationsTotal":…,…} (process-wide counters:
 *     memory, and the RDMA addon's resource counts once RDMA is in use; `vof bench` reads them)
 *   {"op":"revalidate","tvqn":"disk0"} → {"ok":true,"capacityBytes":…,"changed":true} (the size
 *     of the backing file or device is read again; a change is a config change for every
 *     instance: `vof revalidate`)
 * Errors: {"ok":false,"error":"…"}.
 */
export interface ControlHandler {
  drain(tvqn: string, url: string, graceMs?: number): Promise<DrainResult>;
  redirect(tvqn: string, url: string): string;
  /** Stop redirecting `tvqn`; false when it was not redirected. */
  unredirect(tvqn: string): boolean;
  /** Process-wide counters (numbers only); see TargetProcessStats. */
  stats(): Record<string, number>;
  /** Re-read the size of `tvqn`'s storage; a change reaches its instances as a config change. */
  revalidate(tvqn: string): Promise<{ capacityBytes: number; changed: boolean }>;
}

const MAX_LINE = 4096;

export class ControlSocket {
  private constructor(
    private readonly server: Server,
    readonly path: string,
  ) {}

  static async listen(path: string, handler: ControlHandler, log: Logger): Promise<ControlSocket> {
    if (existsSync(path)) {
      if (!lstatSync(path).isSocket()) throw new Error(`${path} exists and is not a socket`);
      unlinkSync(path);
    }
    const server = createServer((sock) => serve(sock, handler, log));
    // Operators only: the socket file is created 0600.
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      withSocketMode(0o600, () => server.listen(path, () => resolve()));
    });
    return new ControlSocket(server, path);
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

function serve(sock: Socket, handler: ControlHandler, log: Logger): void {
  let buf = '';
  sock.setEncoding('utf8');
  sock.on('error', () => {});
  sock.on('data', (chunk: string) => {
    buf += chunk;
    if (buf.length > MAX_LINE && !buf.includes('\n')) {
      sock.end(`${JSON.stringify({ ok: false, error: 'request line too long' })}\n`);
      return;
    }
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      void answer(line, handler, log).then((reply) => sock.write(`${JSON.stringify(reply)}\n`));
    }
  });
}

async function answer(line: string, handler: ControlHandler, log: Logger): Promise<Record<string, unknown>> {
  try {
    const req = JSON.parse(line) as { op?: unknown; tvqn?: unknown; url?: unknown; graceMs?: unknown };
    if (req.op === 'stats') return { ok: true, ...handler.stats() };
    if (req.op === 'unredirect') {
      if (typeof req.tvqn !== 'string') throw new Error('"tvqn" must be a string');
      const removed = handler.unredirect(req.tvqn);
      log.info(`control socket: ${removed ? 'redirect of' : 'no redirect to remove for'} ${quotePeerString(req.tvqn)}${removed ? ' removed' : ''}`);
      return { ok: true, removed };
    }
    if (req.op === 'revalidate') {
      if (typeof req.tvqn !== 'string') throw new Error('"tvqn" must be a string');
      log.info(`control socket: revalidate ${quotePeerString(req.tvqn)}`);
      return { ok: true, ...(await handler.revalidate(req.tvqn)) };
    }
    if (typeof req.tvqn !== 'string' || typeof req.url !== 'string') throw new Error('"tvqn" and "url" must be strings');
    if (req.op === 'drain') {
      const grace = req.graceMs === undefined ? undefined : Number(req.graceMs);
      if (grace !== undefined && (!Number.isFinite(grace) || grace < 0 || grace > 3_600_000)) throw new Error('"graceMs" must be 0-3600000');
      log.info(`control socket: drain ${quotePeerString(req.tvqn)} to ${req.url}`);
      return { ok: true, ...(await handler.drain(req.tvqn, req.url, grace)) };
    }
    if (req.op === 'redirect') return { ok: true, url: handler.redirect(req.tvqn, req.url) };
    throw new Error('"op" must be "drain", "redirect", "unredirect", "revalidate" or "stats"');
  } catch (err) {
    return { ok: false, error: (err as Error).message };
  }
}
