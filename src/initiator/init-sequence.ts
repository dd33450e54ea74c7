import { DeviceStatus, Opcode, Status, VIRTIO_OF_F_KEYED_NUM_DESCS } from '../protocol/constants.js';
import type { DecodedCompletion } from '../protocol/completion.js';
import { VOF_F_INLINE_DATA, VOF_OP_GET_INLINE_DATA_SIZE, inlineSizeProblem } from '../protocol/inline-data.js';
import { VOF_F_REMOTE_INVALIDATE } from '../protocol/remote-invalidation.js';
import { VOF_F_AUTH } from '../protocol/auth.js';
import type { Logger } from '../util/log.js';
import type { CommandWithoutId } from './initiator-queue.js';
import type { ConnectOptions } from './connect-options.js';
import { authKeyOf, authenticate } from './auth-handshake.js';
import { VofAuthError, VofConnectionError, VofError, VofResumeError } from './vof-error.js';

/** What a reconnect must find again (DRIVER_OK state of the first connection). */
export interface ResumePoint {
  readonly ofFeatures: bigint;
  readonly driverFeatures: bigint;
  readonly vendorId: number;
  readonly deviceId: number;
  readonly queueCount: number;
}

/** What the initialization sequence agreed with the device, up to FEATURES_OK. */
export interface Negotiated {
  /** Virtio-oF features the target offered, and the ones negotiated. */
  readonly offeredOfFeatures: bigint;
  readonly ofFeatures: bigint;
  /** Keyed descriptors per VQ command (0 without VIRTIO_OF_F_KEYED_NUM_DESCS). */
  readonly maxKeyedDescriptors: number;
  /** vof inline data size (0: not negotiated). */
  readonly inlineDataBytes: number;
  readonly vendorId: number;
  readonly deviceId: number;
  readonly deviceFeatures: bigint;
  readonly driverFeatures: bigint;
  /** The device status written last (ACKNOWLEDGE | DRIVER | FEATURES_OK). */
  readonly status: number;
}

/** The control queue and what the sequence needs to know of the device it runs for. */
export interface InitControl {
  readonly url: string;
  readonly ivqn: string;
  readonly tvqn: string;
  readonly instanceId: number;
  readonly options: ConnectOptions;
  readonly log: Logger;
  /** One control command on the current control queue; whatever status it gets. */
  call(cmd: CommandWithoutId, body?: Buffer): Promise<DecodedCompletion>;
}

const WANTED_OF_FEATURES = 1n << VIRTIO_OF_F_KEYED_NUM_DESCS;
const INLINE_DATA_BIT = 1n << VOF_F_INLINE_DATA;
const REMOTE_INVALIDATE_BIT = 1n << VOF_F_REMOTE_INVALIDATE;
const AUTH_BIT = 1n << VOF_F_AUTH;
/** vof extensions that only change how requests travel: a resume may gain or lose them. */
const OPTIONAL_BITS = INLINE_DATA_BIT | REMOTE_INVALIDATE_BIT;

/**
 * The initialization sequence on a connected control queue, from the Virtio-oF features to
 * FEATURES_OK (the seed's order; the virtqueues and DRIVER_OK are the caller's, which needs what
 * this agreed to connect them). With `resume` (a reconnect) the device must offer at least what
 * was negotiated before, which is negotiated again unchanged.
 */
export async function negotiate(c: InitControl, resume?: ResumePoint): Promise<Negotiated> {
  const command = async (cmd: CommandWithoutId): Promise<DecodedCompletion> => {
    const done = await c.call(cmd);
    if (done.status !== Status.SUCCESS) throw new VofError(done.status, cmd.opcode);
    return done;
  };
  // The control-queue Connect was made by connectControlPath (which follows redirects).

  const offeredOfFeatures = featureOf(await command({ opcode: Opcode.GetFeature, featureSelect: 0 }));
  // vof's extensions only change how requests travel: a target without them is no reason to refuse a resume.
  const required = resume ? resume.ofFeatures & ~OPTIONAL_BITS : 0n;
  if ((offeredOfFeatures & required) !== required) {
    throw new VofResumeError(`${c.url}: cannot resume: the target now offers Virtio-oF features ${hex(offeredOfFeatures)}, without ${hex(required & ~offeredOfFeatures)} negotiated before`);
  }
  let wanted = WANTED_OF_FEATURES;
  if (c.options.inlineData !== false) wanted |= INLINE_DATA_BIT;
  if (c.options.remoteInvalidation !== false) wanted |= REMOTE_INVALIDATE_BIT;
  // With a secret, authentication is not optional: a target that does not offer it cannot prove it.
  const key = c.options.authSecret !== undefined ? authKeyOf(c.options.authSecret) : null;
  if (key && (offeredOfFeatures & AUTH_BIT) === 0n) {
    throw new VofAuthError(`${c.url}: target did not prove the secret: it does not offer authentication (VOF_F_AUTH)`);
  }
  if (key) wanted |= AUTH_BIT;
  let ofFeatures = offeredOfFeatures & (resume ? required | (wanted & OPTIONAL_BITS) : wanted);
  await command({ opcode: Opcode.SetFeature, featureSelect: 0, feature: ofFeatures });
  if (key) {
    await authenticate((opcode, data) => c.call({ opcode, data }), { key, ivqn: c.ivqn, tvqn: c.tvqn, instanceId: c.instanceId, url: c.url });
    c.log.debug(`${c.url}: authenticated; the target proved the secret`);
  }
  let maxKeyedDescriptors = 0;
  if (ofFeatures & (1n << VIRTIO_OF_F_KEYED_NUM_DESCS)) {
    const k = await command({ opcode: Opcode.GetKeyedNumDescs });
    maxKeyedDescriptors = k.kind === 'keyedNumDescs' ? k.descs : 0;
    if (maxKeyedDescriptors < 1) throw new VofConnectionError('target allows no keyed descriptors');
  }

  // vof inline data (docs/PROTOCOL.md "Inline data on keyed queues"): with VOF_F_INLINE_DATA set,
  // ask the size. One this initiator cannot use (outside 1..64 KiB), or a target without keyed
  // descriptors, turns the extension off again: the seed's layout still works.
  let inlineDataBytes = 0;
  if ((ofFeatures & INLINE_DATA_BIT) !== 0n) {
    let problem = maxKeyedDescriptors < 1 ? 'VIRTIO_OF_F_KEYED_NUM_DESCS was not negotiated' : null;
    if (!problem) {
      const size = u32Of(await command({ opcode: VOF_OP_GET_INLINE_DATA_SIZE }));
      problem = inlineSizeProblem(size);
      if (!problem) inlineDataBytes = size;
    }
    if (problem) {
      c.log.warn(`${c.url}: not using inline data: ${problem}`);
      ofFeatures &= ~INLINE_DATA_BIT;
      await command({ opcode: Opcode.SetFeature, featureSelect: 0, feature: ofFeatures });
    }
  }

  const vendorId = u32Of(await command({ opcode: Opcode.GetVendorId }));
  const deviceId = u32Of(await command({ opcode: Opcode.GetDeviceId }));
  if (resume && (vendorId !== resume.vendorId || deviceId !== resume.deviceId)) {
    throw new VofResumeError(`${c.url}: cannot resume: the target now serves vendor ${hex(vendorId)} device ${deviceId}, not vendor ${hex(resume.vendorId)} device ${resume.deviceId}`);
  }

  await command({ opcode: Opcode.ResetDevice });
  let status: number = DeviceStatus.ACKNOWLEDGE;
  await command({ opcode: Opcode.SetStatus, status });
  status |= DeviceStatus.DRIVER;
  await command({ opcode: Opcode.SetStatus, status });

  const lo = featureOf(await command({ opcode: Opcode.GetDeviceFeature, featureSelect: 0 }));
  const hi = featureOf(await command({ opcode: Opcode.GetDeviceFeature, featureSelect: 1 }));
  const deviceFeatures = lo | (hi << 64n);
  if (resume && (deviceFeatures & resume.driverFeatures) !== resume.driverFeatures) {
    throw new VofResumeError(`${c.url}: cannot resume: the device no longer offers feature bits ${hex(resume.driverFeatures & ~deviceFeatures)} negotiated before`);
  }
  const choose = c.options.negotiateFeatures ?? ((f: bigint) => f);
  const driverFeatures = resume ? resume.driverFeatures : choose(deviceFeatures) & deviceFeatures;
  const mask = (1n << 64n) - 1n;
  await command({ opcode: Opcode.SetDriverFeature, featureSelect: 0, feature: driverFeatures & mask });
  await command({ opcode: Opcode.SetDriverFeature, featureSelect: 1, feature: driverFeatures >> 64n });
  status |= DeviceStatus.FEATURES_OK;
  await command({ opcode: Opcode.SetStatus, status });
  if ((u32Of(await command({ opcode: Opcode.GetStatus })) & DeviceStatus.FEATURES_OK) === 0) {
    throw new VofConnectionError('device did not accept the negotiated features (FEATURES_OK not set)');
  }
  return { offeredOfFeatures, ofFeatures, maxKeyedDescriptors, inlineDataBytes, vendorId, deviceId, deviceFeatures, driverFeatures, status };
}

function hex(n: bigint | number): string {
  return `0x${n.toString(16)}`;
}

function featureOf(c: DecodedCompletion): bigint {
  return c.kind === 'feature' ? c.feature : 0n;
}

/** A u32 completion's value (0 for another kind). */
export function u32Of(c: DecodedCompletion): number {
  return c.kind === 'u32' ? c.value : 0;
}
