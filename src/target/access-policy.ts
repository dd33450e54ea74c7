import { checkVqn } from '../protocol/connect-body.js';
import { Status } from '../protocol/constants.js';
import type { ConnectBody } from '../protocol/connect-body.js';
import { quotePeerString } from '../util/escape.js';

/**
 * One allow-list entry: an IVQN, optionally bound to the identity the peer authenticated with
 * (TLS: the PSK identity or the client certificate's subject CN). With an identity the IVQN
 * counts only on connections that proved that identity; without one, any peer may claim it.
 */
export interface AllowEntry {
  readonly ivqn: string;
  readonly identity?: string;
}

export type AllowSpec = string | AllowEntry;

/**
 * "IVQN" or "IVQN@IDENTITY" (split at the last "@"), the command-line form of an entry. An IVQN
 * that itself contains "@" and needs no identity is written as an object in --config.
 */
export function parseAllowEntry(text: string): AllowEntry {
  const at = text.lastIndexOf('@');
  if (at < 0) return { ivqn: text };
  const identity = text.slice(at + 1);
  if (!identity) throw new Error(`allow entry "${text}" ends with "@" but names no identity`);
  return { ivqn: text.slice(0, at), identity };
}

function toEntry(spec: AllowSpec): AllowEntry {
  const entry = typeof spec === 'string' ? { ivqn: spec } : spec;
  if (typeof entry.ivqn !== 'string') throw new Error('an allow entry needs an "ivqn" string');
  checkVqn(entry.ivqn, 'IVQN');
  if (entry.identity !== undefined && (typeof entry.identity !== 'string' || entry.identity === '')) {
    throw new Error(`allow entry for IVQN ${quotePeerString(entry.ivqn)}: "identity" must be a non-empty string`);
  }
  return entry.identity === undefined ? { ivqn: entry.ivqn } : { ivqn: entry.ivqn, identity: entry.identity };
}

/** Who may use one export: everyone (open), or the IVQN/identity pairs of its allow-list. */
export class AccessPolicy {
  /** IVQN → identities that may claim it; an empty set means "any peer, authenticated or not". */
  private readonly byIvqn: ReadonlyMap<string, ReadonlySet<string>> | null;

  /**
   * `undefined` makes the export open. An empty list is refused rather than read as "nobody" or
   * "everyone": the caller meant one of the two and must say which. (`emptyMeansNobody` is for
   * grants(), where nothing else can be meant.)
   */
  constructor(allow: Iterable<AllowSpec> | undefined, emptyMeansNobody = false) {
    if (allow === undefined) {
      this.byIvqn = null;
      return;
    }
    const map = new Map<string, Set<string>>();
    const anyIdentity = new Set<string>();
    for (const spec of allow) {
      const e = toEntry(spec);
      if (e.identity === undefined) anyIdentity.add(e.ivqn);
      const ids = map.get(e.ivqn) ?? new Set<string>();
      if (e.identity !== undefined) ids.add(e.identity);
      map.set(e.ivqn, ids);
    }
    if (map.size === 0 && !emptyMeansNobody) {
      throw new Error('the allow-list is empty: leave it out for an export open to every initiator, or list the IVQNs allowed');
    }
    // An entry without identity admits the IVQN from anyone, whatever other entries name.
    for (const ivqn of anyIdentity) map.set(ivqn, new Set());
    this.byIvqn = map;
  }

  /**
   * An export's admin grants (`admin` entries, docs/PROTOCOL.md "Admin grants"): written and
   * proved exactly like an allow-list, but closed by default: no list, or an empty one, grants
   * nobody.
   */
  static grants(admin: Iterable<AllowSpec> | undefined): AccessPolicy {
    return new AccessPolicy(admin ?? [], true);
  }

  get open(): boolean {
    return this.byIvqn === null;
  }

  /** May a peer that authenticated as `identity` (undefined: did not) act as `ivqn`? */
  admits(ivqn: string, identity: string | undefined): boolean {
    if (this.byIvqn === null) return true;
    const ids = this.byIvqn.get(ivqn);
    if (!ids) return false;
    return ids.size === 0 || (identity !== undefined && ids.has(identity));
  }

  /** For logs and docs: the entries in the command-line form, after `what` ("allowed", "admin"). */
  describe(what = 'allowed'): string {
    if (this.byIvqn === null) return 'open to every initiator';
    const parts: string[] = [];
    for (const [ivqn, ids] of this.byIvqn) {
      if (ids.size === 0) parts.push(quotePeerString(ivqn));
      for (const id of ids) parts.push(`${quotePeerString(ivqn)}@${quotePeerString(id)}`);
    }
    return `${what}: ${parts.length > 0 ? parts.join(', ') : 'nobody'}`;
  }
}

/** What the binding rule needs to know about the instance a virtqueue wants to join. */
export interface BindingInstance {
  readonly tvqn: string;
  readonly ivqn: string;
  /** Transport scheme and host of the control queue's connection ("tcp://10.0.0.1"). */
  readonly controlHost: string;
  /** Identity the control queue's connection authenticated with. */
  readonly controlIdentity: string | undefined;
}

/** What the binding rule needs to know about the connection asking to become a virtqueue. */
export interface BindingPeer {
  readonly host: string;
  readonly identity: string | undefined;
  /** Its Connect Body, or null when it sent none. */
  readonly body: ConnectBody | null;
}

export interface Refusal {
  readonly status: number;
  readonly why: string;
}

/**
 * The virtqueue binding rule (docs/PROTOCOL.md, "Virtqueue binding"): a connection may become
 * a virtqueue of an instance only if it proves what the control queue proved.
 *  1. Same transport scheme as the control queue (a scheme is its own fabric).
 *  2. Same authenticated identity as the control queue's connection, or none on both.
 *  3. Without an identity (plain TCP, RDMA, anonymous TLS): from the control queue's host.
 *  4. A Connect Body, when present, names the instance's IVQN and TVQN.
 *  5. Without a Connect Body: only on an open export. An export with an allow-list requires it.
 * A peer that fails 1-3 is not the instance's initiator at all: it gets EBADDEV, exactly what an
 * instance id nobody uses gets, so refusals tell a stranger nothing about which ids exist.
 * The instance's own initiator (1-3 hold) gets the seed's EBADVQN for a body that does not match.
 */
export function bindingRefusal(inst: BindingInstance, peer: BindingPeer, policy: AccessPolicy): Refusal | null {
  const scheme = (h: string) => h.slice(0, h.indexOf('://'));
  if (scheme(peer.host) !== scheme(inst.controlHost)) {
    return { status: Status.EBADDEV, why: `the instance's control queue is on ${scheme(inst.controlHost)}, not ${scheme(peer.host)}` };
  }
  if (peer.identity !== inst.controlIdentity) {
    const shown = (id: string | undefined) => (id === undefined ? 'no identity' : `identity ${quotePeerString(id)}`);
    return { status: Status.EBADDEV, why: `connection has ${shown(peer.identity)}, the control queue ${shown(inst.controlIdentity)}` };
  }
  if (peer.identity === undefined && peer.host !== inst.controlHost) {
    return { status: Status.EBADDEV, why: `unauthenticated connection from ${peer.host}, not the control queue's host` };
  }
  if (peer.body) {
    if (peer.body.tvqn !== inst.tvqn || peer.body.ivqn !== inst.ivqn) {
      return {
        status: Status.EBADVQN,
        why: `Connect Body ${quotePeerString(peer.body.ivqn)} → ${quotePeerString(peer.body.tvqn)} does not match the instance's`,
      };
    }
    return null;
  }
  if (!policy.open) return { status: Status.EBADVQN, why: 'no Connect Body: required on an export with an allow-list' };
  if (peer.host !== inst.controlHost) {
    return { status: Status.EBADVQN, why: `no Connect Body from ${peer.host}, not the control queue's host` };
  }
  return null;
}

/** "tcp://10.0.0.1:5000" → "tcp://10.0.0.1": transport and host of a peer, without the port. */
export function hostOf(peer: string): string {
  return peer.replace(/:\d+$/, '');
}
