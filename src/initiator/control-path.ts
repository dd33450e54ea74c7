import { performance } from 'node:perf_hooks';
import { CONNECT_BODY_SIZE, CONTROL_QUEUE_INSTANCE_ID, Opcode, Status, VIRTIO_OF_CONTROL_QUEUE_SIZE } from '../protocol/constants.js';
import { encodeConnectBody } from '../protocol/connect-body.js';
import {
  RedirectRecordError,
  VOF_CONNECT_F_REDIRECT,
  VOF_STATUS_EREDIRECT,
  decodeRedirectRecord,
  redirectUrl,
  setConnectFlags,
} from '../protocol/redirect-record.js';
import { transportFor } from '../transport/registry.js';
import type { ConnectOptions as TransportConnectOptions, Transport } from '../transport/transport.js';
import { UrlError, parseDeviceUrl, type Scheme } from '../transport/url.js';
import type { Logger } from '../util/log.js';
import { InitiatorQueue } from './initiator-queue.js';
import { VofConnectionError, VofError, VofRedirectError } from './vof-error.js';

/** Default most redirects followed for one connect. */
export const DEFAULT_REDIRECT_HOPS = 8;

/** A control queue connected (Connect SUCCESS) at the end of the redirect chain. */
export interface ControlPath {
  /** Where the device was found (the last URL of the chain). */
  readonly url: string;
  readonly tvqn: string;
  readonly transport: Transport;
  readonly control: InitiatorQueue;
  readonly instanceId: number;
  /** The Connect Body sent, reused on every virtqueue (binding rule). */
  readonly connectBody: Buffer;
}

export interface ControlPathOptions {
  readonly ivqn: string;
  readonly log: Logger;
  readonly connect: TransportConnectOptions;
  /** Most redirects followed (default 8); 0 refuses any. */
  readonly maxRedirects?: number;
  /**
   * A target that accepts the connection but never answers the Connect: give up after this
   * long (the keepalive timeout when keepalive is on, else the connect timeout).
   */
  readonly answerTimeoutMs: number;
  /** The answer timeout is the keepalive timeout (for the error message). */
  readonly keepalive: boolean;
  /**
   * The scheme of the URL the user gave (default: `url`'s). A reconnect starts from wherever
   * the device moved to, but what a redirect may lead to is judged against this scheme, so a
   * chain of hops cannot launder a downgrade.
   */
  readonly origin?: Scheme;
  /** Schemes a redirect may lead to beyond the safe ones (see redirectAllowed). */
  readonly allowRedirectTo?: readonly Scheme[];
}

/** The option, on the CLI and in the library, that lets a redirect change the transport. */
export const ALLOW_REDIRECT_OPTION = { cli: '--allow-redirect-to', library: 'allowRedirectTo' } as const;

/**
 * May a connection that the user started on `origin` follow a redirect to `next`? A redirect
 * never lowers the protection the user chose (docs/PROTOCOL.md, "Redirect"): the same scheme
 * is fine (tls:// keeps every trust setting: CA, client certificate or PSK, server name), and
 * tcp:// may be raised to tls://. Anything else (tls:// to tcp:// or rdma://, which carry the
 * IVQN and data in clear; tcp:// to rdma://, a NIC and fabric the user did not pick) only when
 * the user named the scheme in `allowed`.
 */
export function redirectAllowed(origin: Scheme, next: Scheme, allowed: readonly Scheme[] = []): boolean {
  return next === origin || (origin === 'tcp' && next === 'tls') || allowed.includes(next);
}

const canonical = (url: string) => {
  const a = parseDeviceUrl(url);
  return `${a.scheme}://${a.endpoint.host.toLowerCase()}:${a.endpoint.port}/${a.tvqn}`;
};

/**
 * Connect a control queue at `url`, following EREDIRECT answers (docs/PROTOCOL.md "Redirect")
 * hop by hop, each logged. A URL seen before in the chain is a loop; more than `maxRedirects`
 * hops is refused; both end in VofRedirectError.
 */
export async function connectControlPath(url: string, o: ControlPathOptions): Promise<ControlPath> {
  const limit = o.maxRedirects ?? DEFAULT_REDIRECT_HOPS;
  const origin = o.origin ?? parseDeviceUrl(url).scheme;
  const hops: string[] = [];
  for (;;) {
    hops.push(url);
    const addr = parseDeviceUrl(url);
    const transport = await transportFor(addr.scheme, o.log);
    const body = setConnectFlags(encodeConnectBody({ ivqn: o.ivqn, tvqn: addr.tvqn }), VOF_CONNECT_F_REDIRECT);
    const conn = await transport.connect(addr.endpoint, { ...o.connect, controlQueue: true });
    const control = new InitiatorQueue(conn, VIRTIO_OF_CONTROL_QUEUE_SIZE);
    let next: string;
    const started = performance.now();
    // A target that accepts the connection but never answers: the Connect's answer deadline
    // fails the queue.
    const deadline = {
      answerTimeoutMs: o.answerTimeoutMs,
      onTimeout: () => {
        const waited = Math.round(performance.now() - started);
        return new VofConnectionError(
          o.keepalive
            ? `target silent for ${waited} ms: no answer to Connect (keepalive timeout ${o.answerTimeoutMs} ms)`
            : `${url}: no answer to Connect within ${o.answerTimeoutMs} ms`,
        );
      },
    };
    try {
      const { completion: c, payload } = await control.callWithPayload(
        { opcode: Opcode.Connect, deviceInstanceId: CONTROL_QUEUE_INSTANCE_ID, vqIndex: 0, length: CONNECT_BODY_SIZE, queueSize: VIRTIO_OF_CONTROL_QUEUE_SIZE },
        body,
        deadline,
      );
      if (c.status === Status.SUCCESS) {
        return { url, tvqn: addr.tvqn, transport, control, instanceId: c.kind === 'connect' ? c.deviceInstanceId : -1, connectBody: body };
      }
      if (c.status !== VOF_STATUS_EREDIRECT || !payload) {
        throw new VofError(c.status, Opcode.Connect, `"${o.ivqn}" → "${addr.tvqn}" at ${conn.peer}`);
      }
      try {
        next = redirectUrl(decodeRedirectRecord(payload));
        parseDeviceUrl(next); // a TVQN with control characters, say
      } catch (err) {
        if (err instanceof RedirectRecordError || err instanceof UrlError) throw new VofRedirectError('bad-record', hops, `${url}: ${err.message}`);
        throw err;
      }
    } catch (err) {
      control.onClosed = () => {};
      await control.close();
      throw err;
    }
    await control.close();
    const seen = hops.map(canonical);
    if (seen.includes(canonical(next))) {
      throw new VofRedirectError('loop', [...hops, next], `redirect loop: ${[...hops, next].join(' → ')}`);
    }
    if (hops.length > limit) {
      throw new VofRedirectError('hop-limit', [...hops, next], `more than ${limit} redirects: ${[...hops, next].join(' → ')}`);
    }
    const nextScheme = parseDeviceUrl(next).scheme;
    if (!redirectAllowed(origin, nextScheme, o.allowRedirectTo)) {
      const why = origin === 'tls' ? `it would leave tls:// for ${nextScheme}://, which carries the IVQN and data in clear` : `it would move a ${origin}:// connection to ${nextScheme}://`;
      throw new VofRedirectError(
        'transport',
        [...hops, next],
        `${url}: redirect to ${next} refused: ${why}; ${ALLOW_REDIRECT_OPTION.cli} ${nextScheme} (library: ${ALLOW_REDIRECT_OPTION.library}: ['${nextScheme}']) allows it`,
      );
    }
    o.log.info(`${url}: redirected to ${next} (hop ${hops.length} of at most ${limit})`);
    url = next;
  }
}
