import { REBUILD_HINT } from '../../util/native-addon.js';
import type { FileHandle } from 'node:fs/promises';
import { defaultLogger, type Logger } from '../../util/log.js';
import { LibuvFileIo } from './libuv-file-io.js';
import { UringFileIo } from './uring-file-io.js';
import { NoAddonError, sharedUringRing, type IoDone } from './uring-ring.js';

/**
 * How a file export reads and writes its backing file. Both backends move whole buffers (short
 * transfers are continued; a read that hits the end of the file fails with EIO) and report
 * failures as errors with an errno `code`, which the device maps to VIRTIO_BLK_S_IOERR.
 */
export interface FileIo {
  readonly backend: FileIoBackend;
  /** Fills all of `into` from the file at byte `position`. */
  read(into: Buffer, position: number): Promise<void>;
  /** Writes all of `from` to the file at byte `position`. */
  write(from: Buffer, position: number): Promise<void>;
  datasync(): Promise<void>;
  /** Storage that can drop a range (NBD_CMD_TRIM); without it a DISCARD is only acknowledged. */
  trim?(position: number, length: number): Promise<void>;
  /**
   * Storage that zeroes a range itself (NBD_CMD_WRITE_ZEROES); null when this one cannot, and
   * without it the export writes zero buffers.
   */
  writeZeroes?(position: number, length: number): Promise<void> | null;
  /**
   * The per-command entry points, without a promise: bytes [offset, offset + length) of the
   * buffer, and `done` hears the end once (possibly before the call returns; errors as above).
   * A caller that reuses its IoDone makes the backend allocate as little as it can.
   */
  submitRead(into: Buffer, offset: number, length: number, position: number, done: IoDone): void;
  submitWrite(from: Buffer, offset: number, length: number, position: number, done: IoDone): void;
  submitDatasync(done: IoDone): void;
  /** Waits for this file's I/O in flight; later calls fail. The FileHandle is closed by its owner. */
  close(): Promise<void>;
}

/**
 * io_uring in vof's native addon, Node's fs (libuv's thread pool), an NBD server (nbd-file-io.ts)
 * or nothing at all (null-file-io.ts).
 */
export type FileIoBackend = 'uring' | 'libuv' | 'nbd' | 'null';
/** What a user asks for: a backend, or `auto` (io_uring where it works, else libuv). */
/** The backends that serve a local file or block device. */
export type LocalFileIoBackend = 'uring' | 'libuv';
export type FileIoMode = LocalFileIoBackend | 'auto';
export const FILE_IO_MODES: readonly FileIoMode[] = ['auto', 'uring', 'libuv'];

export function parseFileIoMode(value: string, where: string): FileIoMode {
  if ((FILE_IO_MODES as readonly string[]).includes(value)) return value as FileIoMode;
  throw new Error(`${where}: "${value}" is not one of ${FILE_IO_MODES.join(', ')}`);
}

/** The mode when none is given: VOF_FILE_IO (auto, uring or libuv) or auto. */
export function defaultFileIoMode(): FileIoMode {
  const env = process.env['VOF_FILE_IO'];
  return env ? parseFileIoMode(env, 'VOF_FILE_IO') : 'auto';
}

export interface FileIoChoice {
  readonly backend: LocalFileIoBackend;
  /** One line for the operator's log: what is used and, for libuv under auto, why. */
  readonly description: string;
}

let debugLogged = false;

/**
 * Resolves a mode to a backend. auto takes io_uring when the addon loads and its probe ring
 * works, else libuv quietly (the reason goes to the debug log: TCP-only users may have no addon
 * at all). An explicit `uring` that cannot work is an error saying why.
 */
export function chooseFileIo(mode: FileIoMode = defaultFileIoMode(), log: Logger = defaultLogger()): FileIoChoice {
  if (mode === 'libuv') return { backend: 'libuv', description: 'file I/O: libuv thread pool (asked for)' };
  const ring = sharedUringRing();
  if (!(ring instanceof Error)) {
    return { backend: 'uring', description: `file I/O: io_uring (${ring.slots} slots, one ring per process)` };
  }
  if (mode === 'uring') throw new Error(`io_uring file I/O is unavailable: ${ring.message}`);
  if (!debugLogged) log.debug(`io_uring file I/O unavailable, using libuv: ${ring.message}`);
  debugLogged = true;
  // Without the addon libuv is what there is; the target's start-up line says how to get io_uring.
  const why =
    ring instanceof NoAddonError
      ? `vof's native addon is not built, so no io_uring: install g++ make python3, then run ${REBUILD_HINT}`
      : `io_uring unavailable: ${ring.message}`;
  return { backend: 'libuv', description: `file I/O: libuv thread pool (${why})` };
}

export function openFileIo(file: FileHandle, backend: LocalFileIoBackend): FileIo {
  if (backend === 'libuv') return new LibuvFileIo(file);
  const ring = sharedUringRing();
  if (ring instanceof Error) throw new Error(`io_uring file I/O is unavailable: ${ring.message}`);
  return new UringFileIo(ring, file.fd);
}
