import {
  BlkFeature,
  BlkRequestType,
  DeviceStatus,
  Opcode,
  VIRTIO_F_VERSION_1,
  encodeCommand,
  encodeRequestHeader,
  statusName,
} from '../../src/index.js';
import { RawQueue } from './raw-queue.js';

/** The features a plain virtio-blk driver negotiates. */
export const BLK_FEATURES = (1n << VIRTIO_F_VERSION_1) | (1n << BlkFeature.FLUSH) | (1n << BlkFeature.CONFIG_WCE) | (1n << BlkFeature.MQ);

/** A virtio-blk instance driven with bare PDUs: its control queue and connected virtqueues. */
export interface RawBlkDevice {
  readonly control: RawQueue;
  readonly instanceId: number;
  readonly vqs: RawQueue[];
}

async function expectSuccess(q: RawQueue, what: string, cmd: Parameters<RawQueue['call']>[0], payload?: Buffer): Promise<Buffer> {
  const c = await q.call(cmd, payload);
  const status = c.readUInt16LE(0);
  if (status !== 0) throw new Error(`${what}: ${statusName(status)}`);
  return c;
}

/** Connect, negotiate, reach DRIVER_OK, and connect `vqCount` virtqueues. */
export async function openRawBlkDevice(port: number, tvqn: string, vqCount = 1, ivqn = 'raw-initiator'): Promise<RawBlkDevice> {
  const control = await RawQueue.open(port);
  const c = await control.connectControl(tvqn, ivqn);
  if (c.readUInt16LE(0) !== 0) throw new Error(`Connect: ${statusName(c.readUInt16LE(0))}`);
  const instanceId = c.readUInt16LE(4);
  let id = 10;
  const status = (s: number) => expectSuccess(control, `Set Status ${s}`, { opcode: Opcode.SetStatus, commandId: id++, status: s });
  await status(DeviceStatus.ACKNOWLEDGE);
  await status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER);
  await expectSuccess(control, 'Set Driver Feature', { opcode: Opcode.SetDriverFeature, commandId: id++, featureSelect: 0, feature: BLK_FEATURES });
  await status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK);
  await status(DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER | DeviceStatus.FEATURES_OK | DeviceStatus.DRIVER_OK);
  const vqs: RawQueue[] = [];
  for (let i = 0; i < vqCount; i++) {
    const v = await RawQueue.open(port);
    await expectSuccess(v, `Connect vq ${i}`, { opcode: Opcode.Connect, commandId: 1, deviceInstanceId: instanceId, vqIndex: i, length: 0, queueSize: 0 });
    vqs.push(v);
  }
  return { control, instanceId, vqs };
}

/** The bytes of a virtio-blk READ of `bytes` at `offset` as one VQ command PDU. */
export function blkReadPdu(commandId: number, offset: number, bytes: number): Buffer {
  return Buffer.concat([
    encodeCommand({ opcode: Opcode.Vq, commandId, outLength: 16, inLength: bytes + 1 }),
    encodeRequestHeader(BlkRequestType.IN, BigInt(offset / 512)),
  ]);
}

/** The bytes of a virtio-blk WRITE of `data` at `offset` as one VQ command PDU. */
export function blkWritePdu(commandId: number, offset: number, data: Buffer): Buffer {
  return Buffer.concat([
    encodeCommand({ opcode: Opcode.Vq, commandId, outLength: 16 + data.length, inLength: 1 }),
    encodeRequestHeader(BlkRequestType.OUT, BigInt(offset / 512)),
    data,
  ]);
}
