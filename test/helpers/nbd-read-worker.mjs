// An NBD client in a worker thread (its own V8 isolate and heap): pipelined reads (or writes) of
// `length` bytes (default 4 KiB) through an NBD server of the main thread, so that a test there
// measures the server's heap alone. Plain fixed newstyle with NBD_OPT_EXPORT_NAME, simple
// replies; each reply is checked: its cookie is the slot's and its error 0, and a read's data
// starts with its own byte offset (memory-target-worker: every 4 KiB block does).
import { createConnection } from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';

const { socket: path, depth, disk, length = 4096 } = workerData;
const sock = createConnection(path);
let input = Buffer.alloc(0);
let need = null;
const handshake = (d) => {
  input = input.length ? Buffer.concat([input, d]) : d;
  while (need && input.length >= need.n) {
    const n = need.n;
    const f = need.f;
    const b = input.subarray(0, n);
    input = input.subarray(n);
    need = null;
    f(b);
  }
};
sock.on('data', handshake);
const read = (n) => new Promise((resolve) => ((need = { n, f: resolve }), sock.emit('data', Buffer.alloc(0))));

await new Promise((r) => sock.once('connect', r));
await read(18); // NBDMAGIC, IHAVEOPT, handshake flags
const flags = Buffer.alloc(4);
flags.writeUInt32BE(3); // FIXED_NEWSTYLE | NO_ZEROES
sock.write(flags);
const opt = Buffer.alloc(16);
opt.write('IHAVEOPT', 0, 'latin1');
opt.writeUInt32BE(1, 8); // NBD_OPT_EXPORT_NAME, empty name: the default export
opt.writeUInt32BE(0, 12);
sock.write(opt);
await read(10); // export size, transmission flags
sock.off('data', handshake);

/** `count` reads (or writes), `depth` in flight, each slot with its own request buffer; resolves with failures. */
function requests(count, write) {
  // One payload for every write (the disk's content is not checked after writes).
  const payload = write ? Buffer.alloc(length, 0xa5) : null;
  const replySize = write ? 16 : 16 + length;
  return new Promise((resolve) => {
    let next = 0;
    let done = 0;
    let bad = 0;
    const offsets = new Array(depth).fill(0);
    const headers = Array.from({ length: depth }, (_, slot) => {
      const r = Buffer.alloc(28);
      r.writeUInt32BE(0x25609513, 0);
      r.writeUInt16BE(write ? 1 : 0, 6); // NBD_CMD_WRITE or NBD_CMD_READ
      r.writeUInt32BE(slot, 12); // cookie: the slot
      r.writeUInt32BE(length, 24);
      return r;
    });
    const issue = (slot) => {
      const at = (next++ * length) % disk;
      offsets[slot] = at;
      headers[slot].writeUInt32BE(at, 20);
      sock.write(headers[slot]);
      if (payload) sock.write(payload);
    };
    let pending = Buffer.alloc(0);
    const onData = (d) => {
      pending = pending.length ? Buffer.concat([pending, d]) : d;
      while (pending.length >= replySize) {
        const slot = pending.readUInt32BE(12);
        if (pending.readUInt32BE(0) !== 0x67446698 || pending.readUInt32BE(4) !== 0 || (!write && pending.readUInt32LE(16) !== offsets[slot])) bad++;
        pending = pending.subarray(replySize);
        done++;
        if (next < count) issue(slot);
        else if (done === count) {
          sock.off('data', onData);
          resolve(bad);
        }
      }
    };
    sock.on('data', onData);
    for (let s = 0; s < depth; s++) issue(s);
  });
}

parentPort.on('message', async (m) => {
  if (m.reads) parentPort.postMessage({ bad: await requests(m.reads, false) });
  else if (m.writes) parentPort.postMessage({ bad: await requests(m.writes, true) });
  else {
    sock.destroy();
    parentPort.postMessage({ closed: true });
  }
});
parentPort.postMessage({ ready: true });
