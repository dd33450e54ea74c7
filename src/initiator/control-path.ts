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
import { parseDeviceUrl } from '../url.js';
import type { Logger } from '../util/log.js';
import { QueueClient } from './queue-client.js';
import { VofConnectionError, VofError, VofRedirectError } from './vof-error.js';

/** Default most redirects followed for one connect. */
export const DEFAULT_REDIRECT_HOPS = 8;

/** A control queue connected (Connect SUCCESS) at the end of the redirect chain. */
export interface ControlPath {
  /** Where the device was found (the last URL of the chain). */
  readonly url: string;
  readonly tvqn: string;
  readonly transport: Transport;
  readonly control: QueueClient;
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
  const hops: string[] = [];
  for (;;) {
    hops.push(url);
    const addr = parseDeviceUrl(url);
    const transport = await transportFor(addr.scheme, o.log);
    const body = setConnectFlags(encodeConnectBody({ ivqn: o.ivqn, tvqn: addr.tvqn }), VOF_CONNECT_F_REDIRECT);
    const conn = await transport.connect(addr.endpoint, { ...o.connect, controlQueue: true });
    const control = new QueueClient(conn, VIRTIO_OF_CONTROL_QUEUE_SIZE);
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
      } catch (err) {
        if (err instanceof RedirectRecordError) throw new VofRedirectError('bad-record', hops, `${url}: ${err.message}`);
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
    o.log.info(`${url}: redirected to ${next} (hop ${hops.length} of at most ${limit})`);
    url = next;
  }
}
