import { BlkConfig, BlkFeature } from '../protocol/virtio-blk.js';
import { RemoteDevice } from '../initiator/remote-device.js';
import { VofError } from '../initiator/vof-error.js';
import { DeviceId, Opcode, VIRTIO_F_VERSION_1 } from '../protocol/constants.js';
import { VIRTIO_F_ADMIN_VQ } from '../protocol/admin-records.js';
import { createLogger } from '../util/log.js';
import { TLS_CLIENT_OPTIONS, clientTlsSettings } from './tls-options.js';
import { AUTH_CLIENT_OPTIONS, clientAuthSettings } from './auth-options.js';
import { REDIRECT_OPTIONS, redirectSettings } from './reconnect-options.js';
import { parseCommand, usage, type CommandSpec } from './options.js';
import { IVQN_OPTION, URL_HELP } from './client-options.js';

export const INFO_COMMAND = {
  name: 'info',
  args: 'URL/TVQN',
  summary: 'Connect and print instance id, vendor and device ids, features, queue sizes and config space.',
  details: URL_HELP,
  options: {
    ...IVQN_OPTION,
    json: { type: 'boolean', desc: 'print JSON (numbers as numbers, feature masks as hex strings)' },
    ...REDIRECT_OPTIONS,
    ...TLS_CLIENT_OPTIONS,
    ...AUTH_CLIENT_OPTIONS,
  },
} as const satisfies CommandSpec;

const blkFeatureNames = new Map<bigint, string>([
  ...Object.entries(BlkFeature).map(([k, v]) => [v, `VIRTIO_BLK_F_${k}`] as [bigint, string]),
  [VIRTIO_F_VERSION_1, 'VIRTIO_F_VERSION_1'],
]);
const commonFeatureNames = new Map<bigint, string>([
  [VIRTIO_F_VERSION_1, 'VIRTIO_F_VERSION_1'],
  [VIRTIO_F_ADMIN_VQ, 'VIRTIO_F_ADMIN_VQ'],
]);

function featureList(bits: bigint, deviceId: number): string[] {
  const out: string[] = [];
  for (let b = 0n; b < 128n; b++) {
    if (!(bits & (1n << b))) continue;
    const name = commonFeatureNames.get(b) ?? (deviceId === DeviceId.Block ? blkFeatureNames.get(b) : undefined);
    out.push(name ?? `bit ${b}`);
  }
  return out;
}

function hex(n: bigint | number, width = 0): string {
  return `0x${n.toString(16).padStart(width, '0')}`;
}

export async function runInfo(argv: string[]): Promise<number> {
  const parsed = parseCommand(INFO_COMMAND, argv);
  if (!parsed) return 0;
  const { values, positionals } = parsed;
  const url = positionals[0];
  if (!url || positionals.length > 1) throw usage(INFO_COMMAND, positionals.length > 1 ? `one URL, got ${positionals.length} arguments` : 'which device? (a URL)');
  // No virtqueues: info needs only the control queue. Keepalive stays on (its default): a
  // one-shot command has no reason to turn it off, nor to be warned that it did.
  const tls = clientTlsSettings(values);
  const dev = await RemoteDevice.connect(url, {
    ...(values.ivqn && { ivqn: values.ivqn }),
    ...(tls && { tls }),
    ...clientAuthSettings(values),
    queueCount: () => 0,
    ...redirectSettings(values),
    log: createLogger('warn'),
  });
  try {
    const isBlk = dev.deviceId === DeviceId.Block;
    let numQueues = 1;
    if (isBlk && dev.hasFeature(BlkFeature.MQ)) numQueues = Number((await dev.getConfig(BlkConfig.num_queues, 2)).value);
    const queueSizes: number[] = [];
    for (let q = 0; q < numQueues; q++) {
      const c = await dev.command({ opcode: Opcode.GetVqSize, vqIndex: q });
      queueSizes.push(c.kind === 'vqSize' ? c.size : 0);
    }
    // The admin queue is the one after the device's own (docs/PROTOCOL.md).
    let adminQueue: { index: number; size: number } | null = null;
    if (dev.hasFeature(VIRTIO_F_ADMIN_VQ)) {
      const c = await dev.command({ opcode: Opcode.GetVqSize, vqIndex: numQueues });
      adminQueue = { index: numQueues, size: c.kind === 'vqSize' ? c.size : 0 };
    }
    const configBytes = isBlk ? await dev.readConfig(0, BlkConfig.SIZE) : null;
    // A device without config space (virtio-rng) answers ECONFOFF: no generation to show.
    const generation = await dev.getConfig(0, 1).then(
      (c) => c.generation,
      (err: unknown) => {
        if (err instanceof VofError && err.statusName === 'ECONFOFF') return null;
        throw err;
      },
    );
    const blk = configBytes
      ? {
          // Numbers: exact up to 2^53 bytes (8 PiB).
          capacitySectors: Number(configBytes.readBigUInt64LE(BlkConfig.capacity)),
          capacityBytes: Number(configBytes.readBigUInt64LE(BlkConfig.capacity) * 512n),
          sizeMax: configBytes.readUInt32LE(BlkConfig.size_max),
          segMax: configBytes.readUInt32LE(BlkConfig.seg_max),
          blkSize: configBytes.readUInt32LE(BlkConfig.blk_size),
          writeback: configBytes.readUInt8(BlkConfig.writeback),
          numQueues: configBytes.readUInt16LE(BlkConfig.num_queues),
          maxDiscardSectors: configBytes.readUInt32LE(BlkConfig.max_discard_sectors),
          maxWriteZeroesSectors: configBytes.readUInt32LE(BlkConfig.max_write_zeroes_sectors),
          readOnly: dev.hasFeature(BlkFeature.RO),
        }
      : null;
    const info = {
      url,
      foundAt: dev.url,
      state: dev.state,
      tvqn: dev.tvqn,
      ivqn: dev.ivqn,
      deviceInstanceId: dev.instanceId,
      // Hex as in the text output (and as the virtio spec writes vendor ids).
      vendorId: hex(dev.vendorId, 4),
      deviceId: dev.deviceId,
      virtioOfFeatures: { offered: hex(dev.offeredOfFeatures), negotiated: hex(dev.ofFeatures) },
      maxKeyedDescriptors: dev.maxKeyedDescriptors,
      inlineDataBytes: dev.inlineDataBytes,
      deviceFeatures: { bits: hex(dev.deviceFeatures), names: featureList(dev.deviceFeatures, dev.deviceId) },
      queueSizes,
      adminQueue,
      configGeneration: generation,
      config: configBytes?.toString('hex') ?? null,
      blk,
    };
    if (values.json) {
      process.stdout.write(`${JSON.stringify(info, null, 2)}\n`);
    } else {
      const lines = [
        `device          ${url}`,
        ...(dev.url !== url ? [`found at        ${dev.url} (redirected)`] : []),
        `state           ${info.state}`,
        `instance id     ${info.deviceInstanceId}`,
        `vendor id       ${info.vendorId}`,
        `device id       ${info.deviceId}${isBlk ? ' (virtio-blk)' : info.deviceId === DeviceId.Entropy ? ' (entropy, virtio-rng)' : ''}`,
        `virtio-oF feat. offered ${info.virtioOfFeatures.offered}, negotiated ${info.virtioOfFeatures.negotiated}${info.maxKeyedDescriptors ? `, ${info.maxKeyedDescriptors} keyed descriptors` : ''}${info.inlineDataBytes ? `, inline data ${info.inlineDataBytes} bytes` : ''}`,
        `device features ${info.deviceFeatures.bits}: ${info.deviceFeatures.names.join(' ')}`,
        `virtqueues      ${queueSizes.length}, sizes ${queueSizes.join(' ')}`,
        `admin queue     ${adminQueue ? `index ${adminQueue.index}, size ${adminQueue.size}` : 'none'}`,
        `config gen.     ${generation ?? 'none (no config space)'}`,
      ];
      if (blk) {
        lines.push(
          `capacity        ${blk.capacityBytes} bytes (${blk.capacitySectors} sectors)${blk.readOnly ? ', read-only' : ''}`,
          `blk_size        ${blk.blkSize}`,
          `size_max        ${blk.sizeMax}, seg_max ${blk.segMax}`,
          `writeback       ${blk.writeback}`,
          `discard         up to ${blk.maxDiscardSectors} sectors; write zeroes up to ${blk.maxWriteZeroesSectors}`,
        );
      }
      process.stdout.write(`${lines.join('\n')}\n`);
    }
  } finally {
    await dev.close();
  }
  return 0;
}
