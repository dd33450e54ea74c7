// TCP mode of the fuzzer: one iteration is one virtio-blk session (a control queue and up to two
// virtqueues), built valid and then mutated structurally: opcodes, length fields, command ids,
// bit flips, dropped/duplicated/swapped PDUs, garbage, truncation, random write splits,
// interleaving across connections, and an ending that is a half-close, an abrupt close, or a
// Disconnect. Every byte the target sends back is checked against what was sent.
import net from 'node:net';
import {
  BlkFeature,
  BlkRequestType,
  CONNECT_BODY_SIZE,
  DeviceStatus,
  Opcode,
  VIRTIO_F_VERSION_1,
  encodeCommand,
  encodeConnectBody,
  encodeRequestHeader,
  encodeSegment,
} from '../../dist/index.js';
import { Waitable } from './waitable.mjs';

const MiB = 1024 * 1024;
/** The target's default limit on one VQ command's device-readable bytes (DEFAULT_MAX_VQ_PAYLOAD). */
const MAX_VQ_PAYLOAD = 4 * MiB + 4096;
/** How long a connection may stay open after the fuzzer half-closed it before it is a hang. */
const HANG_MS = 15000;
const OPCODES = Object.values(Opcode);
const U32 = [0, 1, 15, 16, 17, 511, 512, 513, 4096, 65536, 4 * MiB, 4 * MiB + 16, MAX_VQ_PAYLOAD, MAX_VQ_PAYLOAD + 1, 0x7fffffff, 0xffffffff];
const U16 = [0, 1, 2, 0x7fff, 0xfeff, 0xff00, 0xfffe, 0xffff];
const FEATURES = (1n << VIRTIO_F_VERSION_1) | (1n << BlkFeature.FLUSH) | (1n << BlkFeature.CONFIG_WCE) | (1n << BlkFeature.MQ);

/** @typedef {{ head: Buffer, payload: Buffer }} Pdu */
/** @typedef {{ iterations: number, violations: string[], hangs: string[], notes: Map<string, number> }} Tally */

const pdu = (cmd, payload = Buffer.alloc(0)) => ({ head: encodeCommand(cmd), payload });

function controlScript(rng, tvqn, ivqn) {
  let id = 1;
  const s = [
    pdu({ opcode: Opcode.Connect, commandId: id++, deviceInstanceId: 0xffff, vqIndex: 0, length: CONNECT_BODY_SIZE, queueSize: 0 }, encodeConnectBody({ ivqn, tvqn })),
    pdu({ opcode: Opcode.SetStatus, commandId: id++, status: DeviceStatus.ACKNOWLEDGE }),
    pdu({ opcode: Opcode.SetStatus, commandId: id++, status: DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER }),
    pdu({ opcode: Opcode.GetDeviceFeature, commandId: id++, featureSelect: 0 }),
    pdu({ opcode: Opcode.SetDriverFeature, commandId: id++, featureSelect: 0, feature: FEATURES }),
    pdu({ opcode: Opcode.SetStatus, commandId: id++, status: 0x0b }),
    pdu({ opcode: Opcode.SetStatus, commandId: id++, status: 0x0f }),
  ];
  const extras = rng.below(6);
  for (let i = 0; i < extras; i++) {
    s.push(
      rng.pick([
        () => pdu({ opcode: Opcode.GetConfig, commandId: id++, offset: rng.below(64), bytes: rng.pick([1, 2, 4, 8, 3]) }),
        () => pdu({ opcode: Opcode.SetConfig, commandId: id++, offset: 32, bytes: 1, config: BigInt(rng.below(2)) }),
        () => pdu({ opcode: Opcode.GetStatus, commandId: id++ }),
        () => pdu({ opcode: Opcode.GetVqSize, commandId: id++, vqIndex: rng.below(3) }),
        () => pdu({ opcode: Opcode.Keepalive, commandId: id++ }),
        () => pdu({ opcode: Opcode.GetFeature, commandId: id++, featureSelect: rng.below(2) }),
        () => pdu({ opcode: Opcode.GetVendorId, commandId: id++ }),
        () => pdu({ opcode: Opcode.ResetDevice, commandId: id++ }),
      ])(),
    );
  }
  return s;
}

function blkRequest(rng, id, diskBytes) {
  const sectors = diskBytes / 512;
  const n = rng.chance(0.05) ? 8192 : 1 + rng.below(64); // mostly small, sometimes 4 MiB
  const sector = rng.below(Math.max(1, sectors - n + 1));
  switch (rng.below(6)) {
    case 0:
      return pdu({ opcode: Opcode.Vq, commandId: id, outLength: 16, inLength: n * 512 + 1 }, encodeRequestHeader(BlkRequestType.IN, BigInt(sector)));
    case 1: {
      const data = Buffer.alloc(n * 512, id & 0xff);
      return pdu({ opcode: Opcode.Vq, commandId: id, outLength: 16 + data.length, inLength: 1 }, Buffer.concat([encodeRequestHeader(BlkRequestType.OUT, BigInt(sector)), data]));
    }
    case 2:
      return pdu({ opcode: Opcode.Vq, commandId: id, outLength: 16, inLength: 1 }, encodeRequestHeader(BlkRequestType.FLUSH, 0n));
    case 3:
      return pdu({ opcode: Opcode.Vq, commandId: id, outLength: 16, inLength: 21 }, encodeRequestHeader(BlkRequestType.GET_ID, 0n));
    default: {
      const type = rng.chance(0.5) ? BlkRequestType.DISCARD : BlkRequestType.WRITE_ZEROES;
      const seg = encodeSegment(BigInt(sector), n, rng.chance(0.2) ? 1 : 0);
      return pdu({ opcode: Opcode.Vq, commandId: id, outLength: 32, inLength: 1 }, Buffer.concat([encodeRequestHeader(type, 0n), seg]));
    }
  }
}

function vqScript(rng, instanceId, vqIndex, diskBytes) {
  const s = [pdu({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: instanceId, vqIndex, length: 0, queueSize: 0 })];
  const n = 1 + rng.below(24);
  for (let i = 0; i < n; i++) s.push(blkRequest(rng, 2 + i, diskBytes));
  if (rng.chance(0.15)) s.push(pdu({ opcode: Opcode.Disconnect, commandId: 0x7000 }));
  return s;
}

/** Applies 0..4 structural mutations in place; returns their names (for the report). */
function mutate(rng, script, { keepFirst }) {
  const names = [];
  const count = rng.chance(0.2) ? 0 : 1 + rng.below(4);
  const from = keepFirst ? 1 : 0;
  for (let m = 0; m < count && script.length > from; m++) {
    const i = from + rng.below(script.length - from);
    const p = script[i];
    // Garbage entries have no 16-byte header to mutate: only drop/dup/swap/garbage apply.
    const kind = p.head.length < 16 ? 5 + rng.below(4) : rng.below(10);
    names.push(['bitflip', 'opcode', 'length', 'length+payload', 'id', 'drop', 'dup', 'swap', 'garbage', 'payload-flip'][kind]);
    switch (kind) {
      case 0: {
        const head = Buffer.from(p.head);
        const bit = rng.below(128);
        head[bit >> 3] ^= 1 << (bit & 7);
        script[i] = { head, payload: p.payload };
        break;
      }
      case 1: {
        const head = Buffer.from(p.head);
        head.writeUInt16LE(rng.chance(0.7) ? rng.pick(OPCODES) : rng.below(0x10000), 0);
        script[i] = { head, payload: p.payload };
        break;
      }
      case 2: {
        const head = Buffer.from(p.head);
        head.writeUInt32LE(rng.pick(U32), rng.chance(0.5) ? 8 : 12);
        script[i] = { head, payload: p.payload };
        break;
      }
      case 3: {
        // A consistent but hostile size: the payload follows the new out_length (bounded).
        // (Zero bytes after a non-VQ command are 16-byte Connects to the target: keep those short.)
        const head = Buffer.from(p.head);
        const cap = head.readUInt16LE(0) === Opcode.Vq ? MAX_VQ_PAYLOAD + 1024 : 4096;
        const len = Math.min(rng.pick(U32), cap);
        head.writeUInt32LE(len, 8);
        const payload = Buffer.alloc(len);
        p.payload.copy(payload, 0, 0, Math.min(len, p.payload.length));
        script[i] = { head, payload };
        break;
      }
      case 4: {
        const head = Buffer.from(p.head);
        const other = script[rng.below(script.length)].head; // another PDU's id (garbage entries may be shorter)
        head.writeUInt16LE(rng.chance(0.5) || other.length < 4 ? rng.pick(U16) : other.readUInt16LE(2), 2);
        script[i] = { head, payload: p.payload };
        break;
      }
      case 5:
        script.splice(i, 1);
        break;
      case 6:
        script.splice(i, 0, p);
        break;
      case 7: {
        const j = from + rng.below(script.length - from);
        [script[i], script[j]] = [script[j], script[i]];
        break;
      }
      case 8:
        script.splice(i, 0, { head: rng.bytes(1 + rng.below(40)), payload: Buffer.alloc(0) });
        break;
      default: {
        if (p.payload.length === 0) break;
        const payload = Buffer.from(p.payload);
        const k = rng.below(payload.length);
        payload[k] ^= 1 << rng.below(8);
        script[i] = { head: p.head, payload };
      }
    }
  }
  return names;
}

/**
 * What the target will see in `bytes`, parsed with its own framing (DECISIONS.md item 3): the
 * commands it will answer (id → kind, in_length), and whether the framing breaks (the target
 * then closes). A pure function of the bytes, so mutations need no bookkeeping.
 */
function expectedCommands(bytes) {
  const sent = [];
  let off = 0;
  while (off + 16 <= bytes.length) {
    const op = bytes.readUInt16LE(off);
    const id = bytes.readUInt16LE(off + 2);
    if (op === Opcode.Connect) {
      const len = bytes.readUInt32LE(off + 8);
      if (len !== 0 && len !== CONNECT_BODY_SIZE) return { sent, framingBroken: true };
      if (off + 16 + len > bytes.length) break;
      sent.push({ id, vq: false, inLength: 0 });
      off += 16 + len;
    } else if (op === Opcode.Vq) {
      const out = bytes.readUInt32LE(off + 8);
      if (off + 16 + out > bytes.length) {
        // A header whose payload never fully arrives (a truncated stream) is still answered
        // when it comes before Connect: the target refuses it ENOCMD without reading the
        // payload (docs/PROTOCOL.md, "Payload admission"). Whether the queue was connected is
        // not a function of these bytes alone, so the answer is allowed, not required.
        sent.push({ id, vq: true, inLength: bytes.readUInt32LE(off + 12) });
        break;
      }
      sent.push({ id, vq: true, inLength: bytes.readUInt32LE(off + 12) });
      off += 16 + out;
    } else {
      sent.push({ id, vq: false, inLength: 0 });
      off += 16;
    }
  }
  return { sent, framingBroken: false, complete: off === bytes.length };
}

/**
 * One connection of a session: sends a byte stream in random pieces and checks every response
 * PDU against the commands that stream contains.
 */
class CheckedConnection extends Waitable {
  constructor(port, label, isControl, tally) {
    super();
    this.label = label;
    this.isControl = isControl;
    this.tally = tally;
    this.in = Buffer.alloc(0);
    /** id → { other: count of non-VQ commands, vq: in_lengths of VQ commands } not answered yet */
    this.outstanding = new Map();
    this.completions = [];
    this.unverifiable = false;
    this.closed = false;
    this.socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    this.socket.on('error', () => {});
    this.socket.on('data', (d) => this.onData(d));
    this.socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    this.ready = new Promise((resolve) => {
      this.socket.once('connect', resolve);
      this.socket.once('close', resolve);
    });
  }


  expect(bytes) {
    // Counts, not lists: a flood of one id (a payload of equal bytes read as commands) must
    // cost O(1) per completion.
    for (const c of expectedCommands(bytes).sent) {
      const e = this.outstanding.get(c.id) ?? { other: 0, vq: [] };
      if (c.vq) e.vq.push(c.inLength);
      else e.other++;
      this.outstanding.set(c.id, e);
    }
  }

  violation(what) {
    this.tally.violations.push(`${this.label}: ${what}`);
    this.unverifiable = true;
  }

  onData(d) {
    if (this.unverifiable) return;
    this.in = this.in.length ? Buffer.concat([this.in, d]) : d;
    while (this.in.length >= 16) {
      const status = this.in.readUInt16LE(0);
      const id = this.in.readUInt16LE(2);
      const e = this.outstanding.get(id);
      if (!e) {
        if (this.isControl && (id === 0xffff || id === 0xfffe)) {
          this.in = this.in.subarray(16); // keepalive / config change event
          continue;
        }
        return this.violation(`completion (status 0x${status.toString(16)}) for command id ${id}, never sent or already answered`);
      }
      if (e.other > 0 && e.vq.length > 0) {
        // Duplicate ids of different kinds in flight: which framing applies is ambiguous.
        this.tally.notes.set('ambiguous duplicate ids', (this.tally.notes.get('ambiguous duplicate ids') ?? 0) + 1);
        this.unverifiable = true;
        return;
      }
      // With one id in flight several times (a duplicate id), completions may come in any
      // order: attribute this one to the smallest in_length it fits.
      let k = -1;
      let size = 16;
      if (e.vq.length > 0) {
        const length = this.in.readUInt32LE(4);
        e.vq.forEach((inLength, j) => {
          if (length <= inLength && (k < 0 || inLength < e.vq[k])) k = j;
        });
        if (k < 0) return this.violation(`VQ completion for id ${id} with length ${length} > in_length ${Math.max(...e.vq)}`);
        if (status !== 0 && length !== 0) this.tally.notes.set('failed VQ completion with data', (this.tally.notes.get('failed VQ completion with data') ?? 0) + 1);
        size += length;
      }
      if (this.in.length < size) return;
      if (k >= 0) e.vq.splice(k, 1);
      else e.other--;
      if (e.other === 0 && e.vq.length === 0) this.outstanding.delete(id);
      this.completions.push(this.in.subarray(0, 16));
      this.in = this.in.subarray(size);
      this.wake();
    }
  }

  /** Writes `bytes` in 1..4 random pieces with tiny pauses, so PDUs split across reads. */
  async send(rng, bytes) {
    this.expect(bytes);
    let off = 0;
    const pieces = 1 + rng.below(4);
    for (let k = 0; k < pieces && off < bytes.length && !this.closed; k++) {
      const end = k === pieces - 1 ? bytes.length : off + rng.below(bytes.length - off + 1);
      await new Promise((r) => this.socket.write(bytes.subarray(off, end), () => r()));
      off = end;
      if (rng.chance(0.3)) await new Promise((r) => setTimeout(r, rng.below(5)));
    }
  }


  /** The first completion of `id` (the Connect), or null. */
  async answerTo(index, ms) {
    await this.waitFor(() => this.completions.length > index || this.closed || this.unverifiable, ms);
    return this.completions[index] ?? null;
  }

  /** Half-close: the target must answer what it will answer, then close. */
  async endAndExpectClose() {
    this.socket.end();
    const closed = await this.waitFor(() => this.closed, HANG_MS);
    if (!closed) {
      const left = [...this.outstanding.entries()].map(([id, e]) => `${id}×${e.other + e.vq.length}`).join(' ');
      this.tally.hangs.push(`${this.label}: still open ${HANG_MS} ms after our half-close (unanswered ids: ${left || 'none'})`);
      this.socket.destroy();
    }
  }

  abort() {
    this.socket.destroy();
  }
}

const flatten = (script) => Buffer.concat(script.flatMap((p) => [p.head, p.payload]));

/**
 * One iteration. Resolves when every connection is closed (or declared hung).
 * @param {import('./prng.mjs').Prng} rng
 */
export async function runTcpSession(rng, { port, tvqn, diskBytes, label, tally }) {
  tally.iterations++;
  const control = new CheckedConnection(port, `${label} control`, true, tally);
  const conns = [control];
  try {
    await control.ready;
    const cScript = controlScript(rng, tvqn, `fuzz-${label}`);
    const cMut = mutate(rng, cScript, { keepFirst: rng.chance(0.8) });
    let cBytes = flatten(cScript);
    if (rng.chance(0.1)) cBytes = cBytes.subarray(0, rng.below(cBytes.length + 1)); // truncation
    await control.send(rng, cBytes);
    const connect = await control.answerTo(0, 5000);
    const instanceId = connect && connect.readUInt16LE(0) === 0 && connect.readUInt16LE(2) === 1 ? connect.readUInt16LE(4) : rng.below(4);
    const vqCount = rng.below(3);
    const vqs = [];
    for (let v = 0; v < vqCount; v++) {
      const q = new CheckedConnection(port, `${label} vq${v}`, false, tally);
      conns.push(q);
      vqs.push(q);
    }
    await Promise.all(vqs.map((q) => q.ready));
    // Interleave: every virtqueue's stream goes out concurrently, in random pieces.
    await Promise.all(
      vqs.map(async (q, v) => {
        const script = vqScript(rng, instanceId, rng.chance(0.9) ? v : rng.below(4), diskBytes);
        cMut.push(...mutate(rng, script, { keepFirst: rng.chance(0.7) }));
        let bytes = flatten(script);
        if (rng.chance(0.1)) bytes = bytes.subarray(0, rng.below(bytes.length + 1));
        await q.send(rng, bytes);
      }),
    );
    for (const m of cMut) tally.notes.set(`mutation ${m}`, (tally.notes.get(`mutation ${m}`) ?? 0) + 1);
    const ending = rng.below(10);
    if (ending < 2) {
      // Abrupt close of one or all connections at a random moment.
      await new Promise((r) => setTimeout(r, rng.below(50)));
      for (const q of conns) if (rng.chance(0.7)) q.abort();
    }
    // Virtqueues first, like a driver; then the control queue.
    for (const q of vqs) if (!q.closed) await q.endAndExpectClose();
    if (!control.closed) await control.endAndExpectClose();
  } finally {
    for (const q of conns) q.abort();
  }
}
