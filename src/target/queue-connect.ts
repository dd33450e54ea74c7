import {
  CONTROL_QUEUE_INSTANCE_ID,
  CONNECT_BODY_SIZE,
  Status,
  VIRTIO_OF_CONTROL_QUEUE_SIZE,
  formatStatus,
} from '../protocol/constants.js';
import type { ConnectCommand } from '../protocol/command.js';
import { encodeBareCompletion, encodeConnectCompletion } from '../protocol/completion.js';
import { decodeConnectBody } from '../protocol/connect-body.js';
import { VOF_CONNECT_F_REDIRECT, connectFlags, encodeRedirectCompletion } from '../protocol/redirect-record.js';
import { VOF_OP_AUTH_NEGOTIATE, encodeAuthCompletion } from '../protocol/auth.js';
import { quotePeerString } from '../util/escape.js';
import type { DeviceInstance } from './device-instance.js';
import type { TargetQueue } from './target-queue.js';
import type { TargetRequest } from './target-request.js';

/**
 * Connect and binding, the target queue's fabrics commands (nvmet's fabrics-cmd.c): Connect makes a
 * queue a control queue (a new instance) or binds it to a virtqueue of an existing instance,
 * under the binding rule and the authentication rule; Disconnect and the end of the connection
 * undo it. Also the steps of vof in-band authentication, which decide when an instance may be used.
 */

/**
 * Connects refused for access (PROBE_ANSWERS) one connection may send before it is closed
 * (docs/PROTOCOL.md, "Virtqueue binding").
 */
export const MAX_REFUSED_CONNECTS = 4;
const PROBE_ANSWERS: ReadonlySet<number> = new Set([Status.EBADDEV, Status.EBADVQN, Status.EACLREJECTED, Status.ENOTGT]);

/** Connect on an unbound queue (the opcode table checked that): bind it, or refuse. */
export function connect(q: TargetQueue, req: TargetRequest, cmd: ConnectCommand, body: Buffer): void {
  const id = cmd.commandId;
  const refuse = (status: number, why: string) => {
    q.log.info(`${q.connection.peer}: Connect → ${formatStatus(status)}: ${why}`);
    req.complete(encodeConnectCompletion(status, id, cmd.deviceInstanceId));
    // An initiator that is refused access once corrects itself or gives up; one that keeps
    // trying on the same connection is probing (instance ids, IVQNs, TVQNs): close it after
    // the answer. Quota and size refusals are no probe and do not count.
    if (PROBE_ANSWERS.has(status) && ++q.refusedConnects >= MAX_REFUSED_CONNECTS) {
      q.violation(`${q.refusedConnects} refused Connects on one connection`);
    }
  };
  const parsed = body.length === CONNECT_BODY_SIZE ? decodeConnectBody(body) : null;
  if (body.length === CONNECT_BODY_SIZE && parsed === null) return refuse(Status.EBADVQN, 'malformed VQN in Connect Body');

  if (cmd.deviceInstanceId === CONTROL_QUEUE_INSTANCE_ID) {
    if (!parsed) return refuse(Status.ENOTGT, 'control queue Connect without a Connect Body');
    if (cmd.queueSize > VIRTIO_OF_CONTROL_QUEUE_SIZE) {
      return refuse(Status.EQSIZEQUOT, `control queue size ${cmd.queueSize} > ${VIRTIO_OF_CONTROL_QUEUE_SIZE}`);
    }
    q.followsRedirects = (connectFlags(body) & VOF_CONNECT_F_REDIRECT) !== 0;
    const moved = q.ctx.redirectFor?.(parsed, q);
    if (moved && 'status' in moved) return refuse(moved.status, `no redirect of ${quotePeerString(parsed.ivqn)} → ${quotePeerString(parsed.tvqn)}${identityNote(q)}: ${moved.why}`);
    if (moved) {
      // After the access check: a peer the export does not admit learns nothing of where it went.
      if (!q.followsRedirects) return refuse(Status.EACLREJECTED, `${quotePeerString(parsed.tvqn)} moved to ${moved.url}; this initiator does not follow redirects`);
      q.log.info(`${q.connection.peer}: Connect for ${quotePeerString(parsed.tvqn)} → EREDIRECT to ${moved.url}`);
      req.complete(encodeRedirectCompletion(id), false, moved.record);
      return;
    }
    const created = q.ctx.createInstance(parsed, q);
    const pair = `${quotePeerString(parsed.ivqn)} → ${quotePeerString(parsed.tvqn)}${identityNote(q)}`;
    if (!('id' in created)) return refuse(created.status, `no instance of ${pair}: ${created.why}`);
    q.queueSize = cmd.queueSize || VIRTIO_OF_CONTROL_QUEUE_SIZE;
    q.role = { kind: 'control', instance: created };
    q.ctx.queueBound(q);
    q.log.info(`${q.connection.peer}: instance ${created.id} created: ${pair}`);
    req.complete(encodeConnectCompletion(Status.SUCCESS, id, created.id));
    return;
  }

  const inst = q.ctx.findInstance(cmd.deviceInstanceId);
  if (!inst || inst.destroyed) return refuse(Status.EBADDEV, `no instance ${cmd.deviceInstanceId}`);
  // The binding rule (docs/PROTOCOL.md): a virtqueue joins an instance only when its
  // connection proves what the control queue proved.
  const refusal = q.ctx.bindingRefusal(inst, q, parsed);
  if (refusal) return refuse(refusal.status, `virtqueue ${cmd.vqIndex} of instance ${inst.id} refused: ${refusal.why}`);
  // After the binding checks, so only the instance's own initiator learns that it is waiting
  // for authentication; a stranger still gets EBADDEV.
  if (inst.authPending) return refuse(Status.EACLREJECTED, `virtqueue ${cmd.vqIndex} of ${inst.label} refused: the instance has not authenticated`);
  if (cmd.vqIndex >= inst.queueCount) {
    return refuse(Status.EQUEUEQUOT, `vq_index ${cmd.vqIndex} ≥ ${inst.queueCount} queues`);
  }
  if (inst.virtqueues.has(cmd.vqIndex)) return refuse(Status.EQUEUEQUOT, `virtqueue ${cmd.vqIndex} is already connected`);
  const max = inst.maxQueueSize(cmd.vqIndex);
  if (cmd.queueSize > max) return refuse(Status.EQSIZEQUOT, `queue size ${cmd.queueSize} > ${max}`);
  q.queueSize = cmd.queueSize || max;
  q.role = { kind: 'virtqueue', instance: inst, vqIndex: cmd.vqIndex };
  inst.virtqueues.set(cmd.vqIndex, q);
  // vof inline data: this virtqueue keeps the layout negotiated now, before the initiator can send a VQ command.
  // (Both were offered only where the connection's capabilities have them: see DeviceInstance.)
  if (inst.inlineDataSize > 0) q.connection.enableInlineData(inst.inlineDataSize);
  if (inst.remoteInvalidation) q.connection.enableRemoteInvalidation();
  q.ctx.queueBound(q);
  q.log.info(
    `${q.connection.peer}: virtqueue ${cmd.vqIndex} of instance ${inst.id} attached: ` +
      `${quotePeerString(inst.ivqn)} → ${quotePeerString(inst.tvqn)}${parsed ? '' : ' (no Connect Body)'}${identityNote(q)}`,
  );
  req.complete(encodeConnectCompletion(Status.SUCCESS, id, inst.id));
}

/** Disconnect on a bound queue: answered once the queue (and a control queue's virtqueues) are idle, then unbound and closed. */
export async function disconnect(q: TargetQueue, req: TargetRequest): Promise<void> {
  q.disconnecting = true;
  // Every other command of this queue completes before the Disconnect Completion (seed).
  await q.whenIdle(req);
  const role = q.role;
  if (role.kind === 'control') {
    // The initiator should have disconnected its virtqueues first; if not, let theirs drain.
    await Promise.all([...role.instance.virtqueues.values()].map((vq) => vq.whenIdle()));
  }
  req.complete(encodeBareCompletion(Status.SUCCESS, req.commandId));
  unbind(q);
  q.close();
}

/** The queue serves no instance any more: a control queue's instance is destroyed, a virtqueue leaves its instance. */
export function unbind(q: TargetQueue): void {
  const role = q.role;
  q.role = { kind: 'unbound' };
  if (role.kind === 'control') role.instance.destroy();
  else if (role.kind === 'virtqueue' && role.instance.virtqueues.get(role.vqIndex) === q) {
    role.instance.virtqueues.delete(role.vqIndex);
  }
}

/**
 * One step of the authentication exchange. A failure (wrong response, a step out of order, an
 * IVQN without a secret here) is answered EACLREJECTED with a zero field and then the control
 * queue is closed, which destroys the instance: each attempt costs a new Connect.
 */
export function authStep(q: TargetQueue, req: TargetRequest, inst: DeviceInstance, opcode: number, data: Buffer): void {
  const id = req.commandId;
  if (!inst.authNegotiated) return q.refuse(req, Status.ENOCMD, 'VOF_F_AUTH not negotiated');
  const negotiate = opcode === VOF_OP_AUTH_NEGOTIATE;
  const step = inst.auth === null ? { ok: false as const, why: 'this target holds no secret for the IVQN' } : negotiate ? inst.auth.negotiate(data) : inst.auth.reply(data);
  if (step.ok) {
    if (!negotiate) q.log.info(`${q.connection.peer}: ${inst.label} authenticated${identityNote(q)}`);
    req.complete(encodeAuthCompletion(Status.SUCCESS, id, step.data));
    return;
  }
  q.log.warn(`${q.connection.peer}: ${inst.label}: authentication failed: ${step.why}${identityNote(q)}`);
  req.complete(encodeAuthCompletion(Status.EACLREJECTED, id));
  q.violation(`${inst.label}: authentication failed`);
}

/** ", identity "X"" when the connection authenticated (TLS), for log lines. */
function identityNote(q: TargetQueue): string {
  const identity = q.connection.identity;
  return identity === undefined ? '' : `, identity ${quotePeerString(identity)}`;
}
