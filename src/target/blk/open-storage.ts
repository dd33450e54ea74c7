import { readFileSync } from 'node:fs';
import { reconnectPolicy } from '../../util/reconnect-policy.js';
import { NbdSource } from '../../nbd/nbd-source.js';
import { nbdClientStartTls } from '../../nbd/nbd-tls.js';
import { isNbdUri, parseNbdUri } from '../../nbd/nbd-uri.js';
import { parsePskFile, type TlsClientSettings } from '../../transport/tcp/tls-settings.js';
import type { Logger } from '../../util/log.js';
import { FileBlockExport, type FileBlockOptions } from './file-block-export.js';
import { NbdFileIo } from './nbd-file-io.js';
import { NullFileIo } from './null-file-io.js';

/**
 * What `--blk NAME=WHERE` can name (issue 20): a file or block device path, an NBD source
 * (nbd://, nbds://, nbd+unix://, nbds+unix://: rbd-nbd, qemu-nbd, qemu-storage-daemon, nbdkit),
 * or `null:SIZE`, a device with no storage at all.
 */
export type StorageKind = 'file' | 'nbd' | 'null';

export function storageKind(where: string): StorageKind {
  if (isNbdUri(where)) return 'nbd';
  if (where.startsWith('null:')) return 'null';
  return 'file';
}

/** An NBD source's own settings (from --blk options or the config). */
export interface NbdSourceSettings {
  /** Connections to the server when it offers multi-conn (default 1). */
  readonly connections?: number;
  /** nbds://: PEM CA file for the server's certificate (default: Node's bundle). */
  readonly tlsCa?: string;
  /** nbds://: a PSK file (IDENTITY:HEXKEY, one line) instead of certificates. */
  readonly tlsPsk?: string;
  /** nbds://: client certificate and key (PEM files), for servers that ask for one. */
  readonly tlsCert?: string;
  readonly tlsKey?: string;
  /** Seconds between reconnect attempts (default 2). */
  readonly reconnectDelay?: number;
  /** Seconds the server may stay away before requests fail and the device needs a reset (default 120, -1: never). */
  readonly ctrlLossTmo?: number;
}

/** null:SIZE, SIZE with an optional k/m/g/t suffix (powers of 1024). */
export function parseNullSize(where: string): number {
  const m = /^null:(\d+)([kmgt]?)$/i.exec(where);
  if (!m) throw new Error(`"${where}" is not null:SIZE (e.g. null:1g)`);
  const scale = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2]!.toLowerCase() as '' | 'k' | 'm' | 'g' | 't'];
  const size = Number(m[1]) * scale;
  if (!Number.isSafeInteger(size) || size < 512) throw new Error(`"${where}": a disk is at least 512 bytes`);
  return size;
}

function nbdTls(s: NbdSourceSettings): TlsClientSettings {
  let psk: TlsClientSettings['psk'];
  if (s.tlsPsk !== undefined) {
    const keys = parsePskFile(readFileSync(s.tlsPsk, 'utf8'), s.tlsPsk);
    if (keys.size !== 1) throw new Error(`${s.tlsPsk}: an NBD source uses one PSK; the file lists ${keys.size}`);
    const [identity, key] = [...keys][0]!;
    psk = { identity, key };
  }
  if ((s.tlsCert === undefined) !== (s.tlsKey === undefined)) throw new Error('give both tls-cert and tls-key');
  return {
    ...(s.tlsCa !== undefined && { ca: readFileSync(s.tlsCa) }),
    ...(s.tlsCert !== undefined && { cert: readFileSync(s.tlsCert) }),
    ...(s.tlsKey !== undefined && { key: readFileSync(s.tlsKey) }),
    ...(psk && { psk }),
  };
}

const seconds = (s: number | undefined, fallback: number) => (s === undefined ? fallback : s < 0 ? -1 : Math.round(s * 1000));

/**
 * Opens the storage `where` names as a virtio-blk export. An NBD source connects now (a
 * server that cannot be reached is an error here, not later); a read-only server makes a
 * read-only disk whatever was asked.
 */
export async function openBlockStorage(where: string, options: FileBlockOptions, nbd: NbdSourceSettings, log: Logger): Promise<FileBlockExport> {
  const kind = storageKind(where);
  if (kind === 'file') {
    if (nbd.connections !== undefined || nbd.tlsCa !== undefined || nbd.tlsPsk !== undefined || nbd.tlsCert !== undefined) {
      throw new Error('connections= and tls-* apply to NBD sources (nbd://, nbds://) only');
    }
    return FileBlockExport.open(where, options);
  }
  if (kind === 'null') return FileBlockExport.fromIo(where, new NullFileIo(), parseNullSize(where), options);
  const uri = parseNbdUri(where);
  const tls = nbdTls(nbd);
  if (!uri.tls && (tls.ca || tls.psk || tls.cert)) throw new Error(`tls-* options need an nbds:// URI (got ${uri.text})`);
  const source = await NbdSource.open({
    address: uri.address,
    exportName: uri.exportName,
    ...(uri.tls && { startTls: nbdClientStartTls(tls, uri.address.kind === 'tcp' ? uri.address.host : undefined) }),
    ...(nbd.connections !== undefined && { connections: nbd.connections }),
    depth: options.queueSize ?? 128,
    reconnect: reconnectPolicy({ reconnectDelayMs: seconds(nbd.reconnectDelay, 2000), ctrlLossTimeoutMs: seconds(nbd.ctrlLossTmo, 120_000) }),
    log,
    label: uri.text,
  });
  try {
    const info = source.info;
    const readOnly = (options.readOnly ?? false) || info.readOnly;
    if (info.readOnly && !options.readOnly) log.info(`${uri.text}: the NBD server exports read-only; so does this disk`);
    const blockSize = info.minimumBlock > 512 ? 4096 : undefined;
    if (info.minimumBlock > 4096) throw new Error(`${uri.text}: the server's minimum block size is ${info.minimumBlock}; vof serves 512 or 4096`);
    const disk = FileBlockExport.fromIo(uri.text, new NbdFileIo(source), info.size, {
      ...options,
      readOnly,
      canFlush: info.canFlush,
      ...(blockSize !== undefined && options.blockSize === undefined && { blockSize }),
    });
    source.onState((s) => {
      if (s === 'lost') disk.fault(`the NBD server ${uri.text} stayed away`);
    });
    return disk;
  } catch (err) {
    await source.close();
    throw err;
  }
}
