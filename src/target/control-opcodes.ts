import { Opcode, Status } from '../protocol/constants.js';
import { isUnknownCommand, type Command, type ConnectCommand, type DecodedCommand } from '../protocol/command.js';
import {
  encodeBareCompletion,
  encodeFeatureCompletion,
  encodeGetConfigCompletion,
  encodeKeyedNumDescsCompletion,
  encodeU32Completion,
  encodeVqSizeCompletion,
} from '../protocol/completion.js';
import { VOF_OP_GET_INLINE_DATA_SIZE } from '../protocol/inline-data.js';
import { VOF_OP_AUTH_NEGOTIATE, VOF_OP_AUTH_REPLY } from '../protocol/auth.js';
import type { VqRequestData } from '../transport/transport.js';
import type { DeviceInstance, OpResult } from './device-instance.js';
import type { TargetQueue } from './target-queue.js';
import { authStep, connect, disconnect } from './queue-connect.js';
import type { TargetRequest } from './target-request.js';

/**
 * Every command the target knows but a VQ command on a virtqueue (which vq-execution.ts reads
 * in place), as a table (nvmet's admin-cmd.c): each opcode's handler with the rules that say
 * where it may run, checked once in dispatchCommand rather than in each handler.
 */

/** The queue a command needs: an unbound one (Connect), any bound one (Disconnect), or a control queue. */
type Needs = 'unbound' | 'bound' | 'control';

/** The decoded command of an opcode (BareCommand and others hold several opcodes). */
type CommandOf<K extends number> = Command extends infer C ? (C extends { readonly opcode: infer O } ? (K extends O ? C : never) : never) : never;

interface OpcodeEntry {
  readonly needs: Needs;
  /**
   * On a control queue whose instance must authenticate and has not yet: may this opcode run?
   * Only what the exchange itself needs (features, the auth commands), keepalives and the
   * transport's own questions may; every device command gets EACLREJECTED until then
   * (docs/PROTOCOL.md "In-band authentication"). Connect and Disconnect are always valid.
   */
  readonly beforeAuth: boolean;
  /** `inst`: the queue's instance (null on an unbound queue). A promise when the answer comes after this turn. */
  run(q: TargetQueue, req: TargetRequest, cmd: DecodedCommand, payload: Buffer | VqRequestData, inst: DeviceInstance | null): Promise<void> | void;
}

const EMPTY = Buffer.alloc(0);
const BEFORE_AUTH = true;
const AFTER_AUTH = false;

/** A control-queue opcode: its handler gets the instance and the command decoded as its opcode's. */
function control<K extends Command['opcode']>(
  opcode: K,
  beforeAuth: boolean,
  run: (q: TargetQueue, req: TargetRequest, inst: DeviceInstance, cmd: CommandOf<K>) => Promise<void> | void,
): [number, OpcodeEntry] {
  // Made once, when the table is: the table's key is the opcode, so the command is CommandOf<K>.
  return [opcode, { needs: 'control', beforeAuth, run: (q, req, cmd, _payload, inst) => run(q, req, inst!, cmd as CommandOf<K>) }];
}

function replyFeature(req: TargetRequest, r: OpResult): void {
  req.complete(encodeFeatureCompletion(r.status, req.commandId, BigInt(r.value ?? 0)));
}

/** Answered only once every VQ command in flight has ended (virtio 1.x 2.4.1). */
function reset(req: TargetRequest, inst: DeviceInstance): Promise<void> {
  return inst.reset().then(() => req.complete(encodeBareCompletion(Status.SUCCESS, req.commandId)));
}

const OPCODES: ReadonlyMap<number, OpcodeEntry> = new Map<number, OpcodeEntry>([
  [
    Opcode.Connect,
    {
      needs: 'unbound',
      beforeAuth: BEFORE_AUTH,
      run: (q, req, cmd, payload) => connect(q, req, cmd as ConnectCommand, payload instanceof Buffer ? payload : EMPTY),
    },
  ],
  [Opcode.Disconnect, { needs: 'bound', beforeAuth: BEFORE_AUTH, run: (q, req) => disconnect(q, req) }],

  // The transport's own commands (the seed's 0x0000-0x0fff range) and vof's extensions.
  control(Opcode.Keepalive, BEFORE_AUTH, (_q, req) => req.complete(encodeBareCompletion(Status.SUCCESS, req.commandId))),
  control(Opcode.GetFeature, BEFORE_AUTH, (_q, req, inst, cmd) => replyFeature(req, inst.getFeature(cmd.featureSelect))),
  control(Opcode.SetFeature, BEFORE_AUTH, (_q, req, inst, cmd) =>
    req.complete(encodeBareCompletion(inst.setFeature(cmd.featureSelect, cmd.feature).status, req.commandId)),
  ),
  control(Opcode.GetKeyedNumDescs, BEFORE_AUTH, (q, req, inst) => {
    if (!inst.keyedNumDescsNegotiated) return q.refuse(req, Status.ENOCMD, 'VIRTIO_OF_F_KEYED_NUM_DESCS not negotiated');
    req.complete(encodeKeyedNumDescsCompletion(Status.SUCCESS, req.commandId, Math.min(255, q.connection.maxKeyedDescriptors)));
  }),
  control(VOF_OP_GET_INLINE_DATA_SIZE, BEFORE_AUTH, (q, req, inst) => {
    if (inst.inlineDataSize === 0) return q.refuse(req, Status.ENOCMD, 'VOF_F_INLINE_DATA not negotiated');
    req.complete(encodeU32Completion(Status.SUCCESS, req.commandId, inst.inlineDataSize));
  }),
  control(VOF_OP_AUTH_NEGOTIATE, BEFORE_AUTH, (q, req, inst, cmd) => authStep(q, req, inst, cmd.opcode, cmd.data)),
  control(VOF_OP_AUTH_REPLY, BEFORE_AUTH, (q, req, inst, cmd) => authStep(q, req, inst, cmd.opcode, cmd.data)),
  // VQ commands belong on virtqueues, where the target queue never decodes them (vq-execution.ts);
  // on the control queue one is refused, after the authentication rule like any device command.
  control(Opcode.Vq, AFTER_AUTH, (q, req) => q.refuse(req, Status.ENOCMD, 'VQ command on the control queue')),

  // The device's commands (0x1000-).
  control(Opcode.GetVendorId, AFTER_AUTH, (_q, req, inst) => req.complete(encodeU32Completion(Status.SUCCESS, req.commandId, inst.device.vendorId))),
  control(Opcode.GetDeviceId, AFTER_AUTH, (_q, req, inst) => req.complete(encodeU32Completion(Status.SUCCESS, req.commandId, inst.device.deviceId))),
  control(Opcode.ResetDevice, AFTER_AUTH, (_q, req, inst) => reset(req, inst)),
  control(Opcode.GetStatus, AFTER_AUTH, (_q, req, inst) => req.complete(encodeU32Completion(Status.SUCCESS, req.commandId, inst.deviceStatus))),
  control(Opcode.SetStatus, AFTER_AUTH, (_q, req, inst, cmd) => {
    if (cmd.status === 0) return reset(req, inst);
    req.complete(encodeBareCompletion(inst.setStatus(cmd.status).status, req.commandId));
  }),
  control(Opcode.GetDeviceFeature, AFTER_AUTH, (_q, req, inst, cmd) => replyFeature(req, inst.getDeviceFeature(cmd.featureSelect))),
  control(Opcode.SetDriverFeature, AFTER_AUTH, (_q, req, inst, cmd) =>
    req.complete(encodeBareCompletion(inst.setDriverFeature(cmd.featureSelect, cmd.feature).status, req.commandId)),
  ),
  control(Opcode.GetVqSize, AFTER_AUTH, (_q, req, inst, cmd) => {
    const r = inst.getVqSize(cmd.vqIndex);
    // EQUEUEQUOT is how an initiator finds the last (admin) virtqueue: an answer, not a refusal.
    req.complete(encodeVqSizeCompletion(r.status, req.commandId, Number(r.value ?? 0)), r.status !== Status.EQUEUEQUOT);
  }),
  control(Opcode.GetConfig, AFTER_AUTH, (_q, req, inst, cmd) => {
    const r = inst.getConfig(cmd.offset, cmd.bytes);
    req.complete(encodeGetConfigCompletion(r.status, req.commandId, r.generation ?? 0, BigInt(r.value ?? 0)));
    inst.configRead();
  }),
  control(Opcode.SetConfig, AFTER_AUTH, (_q, req, inst, cmd) =>
    req.complete(encodeBareCompletion(inst.setConfig(cmd.offset, cmd.bytes, cmd.config).status, req.commandId)),
  ),
]);

/**
 * Run a decoded command after its opcode's rules; a promise when it is answered after this
 * turn (Disconnect, Reset). The rules, in the order a refusal names the first one broken:
 * a known opcode; Connect only on an unbound queue, anything else only after it; on a
 * virtqueue nothing but Disconnect (and VQ commands, which do not come here); on a control
 * queue the authentication rule.
 */
export function dispatchCommand(q: TargetQueue, req: TargetRequest, cmd: DecodedCommand, payload: Buffer | VqRequestData): Promise<void> | void {
  const entry = isUnknownCommand(cmd) ? undefined : OPCODES.get(cmd.opcode);
  if (entry === undefined) return q.refuse(req, Status.ENOCMD, 'unknown opcode');
  const role = q.role;
  if (entry.needs === 'unbound') {
    if (role.kind !== 'unbound') return q.refuse(req, Status.ENOCMD, 'queue is already connected');
    return entry.run(q, req, cmd, payload, null);
  }
  if (role.kind === 'unbound') return q.refuse(req, Status.ENOCMD, 'the first command on a queue must be Connect');
  if (entry.needs === 'bound') return entry.run(q, req, cmd, payload, role.instance);
  if (role.kind === 'virtqueue') return q.refuse(req, Status.ENOCMD, 'only VQ and Disconnect are valid on a virtqueue');
  const inst = role.instance;
  // Control-queue traffic proves the initiator alive (the keepalive timeout).
  inst.heard();
  if (inst.authPending && !entry.beforeAuth) return q.refuse(req, Status.EACLREJECTED, `${inst.label} has not authenticated`);
  return entry.run(q, req, cmd, payload, inst);
}
