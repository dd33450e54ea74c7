import net from 'node:net';

/**
 * net's `onread` for sockets a server accepted.
 *
 * `onread` (libuv reads into memory the caller picks, and no Buffer is allocated per read) is an
 * option of `net.connect` and `new net.Socket`, but not of `net.createServer`: an accepted socket
 * reads through 'data', and every read is a fresh 64 KiB Buffer. On a target taking 128 KiB writes
 * that is ~12,000 short-lived external allocations a second, which V8 answers with a full
 * mark-compact every ~30 ms ("GC in old space requested" with a flat heap, `node --trace-gc`):
 * the stalls behind 128 KiB writes' 14 ms p99 (issue 18).
 *
 * Node implements `onread` with three per-socket fields and the handle's `useUserBuffer()`, set
 * when the socket is made. This installs the same on an accepted socket before it reads its
 * first byte (a server with `pauseOnConnect`). The fields are Node's internal symbols, found by
 * their descriptions on a socket made with `onread`; if this Node does not have them (or names
 * them differently), nothing is changed and the caller keeps 'data' events — slower, not wrong.
 * test/tcp-user-buffer.test.ts fails when this Node stops offering them, so the fallback is never
 * silent in CI.
 */
interface OnreadFields {
  buffer: symbol;
  callback: symbol;
  generator: symbol;
}

let fields: OnreadFields | null | undefined;

function onreadFields(): OnreadFields | null {
  if (fields !== undefined) return fields;
  // (Node's own docs give `new net.Socket` the onread option; @types/node 20 lists it for connect only.)
  const probe = new net.Socket({ onread: { buffer: () => Buffer.alloc(1), callback: () => true } } as net.SocketConstructorOpts);
  const byName = new Map<string, symbol>();
  for (const s of Object.getOwnPropertySymbols(probe)) byName.set(s.description ?? '', s);
  const buffer = byName.get('kBuffer');
  const callback = byName.get('kBufferCb');
  const generator = byName.get('kBufferGen');
  const p = probe as unknown as Record<symbol, unknown>;
  fields =
    buffer && callback && generator && p[buffer] === true && typeof p[callback] === 'function' && typeof p[generator] === 'function'
      ? { buffer, callback, generator }
      : null;
  probe.destroy();
  return fields;
}

/** Whether readIntoUserBuffers can work on this Node. */
export function userBufferReadsSupported(): boolean {
  return onreadFields() !== null;
}

/**
 * Make `socket` (accepted, not reading yet) read like a socket opened with
 * `onread: { buffer, callback }`: `buffer()` is asked for the memory of every read, before it,
 * and `callback(n)` told how many bytes landed there; false from it pauses the socket. No 'data'
 * events come any more. Returns false (and changes nothing) where this Node does not allow it.
 */
export function readIntoUserBuffers(socket: net.Socket, buffer: () => Buffer, callback: (n: number) => boolean): boolean {
  const f = onreadFields();
  const handle = (socket as unknown as { _handle?: { useUserBuffer?: (b: Buffer) => void; reading?: boolean } })._handle;
  if (f === null || !handle || typeof handle.useUserBuffer !== 'function' || handle.reading) return false;
  const s = socket as unknown as Record<symbol, unknown>;
  const first = buffer();
  s[f.generator] = buffer;
  s[f.callback] = callback;
  s[f.buffer] = first;
  handle.useUserBuffer(first);
  return true;
}
