// RDMA mode of the fuzzer: keyed descriptors over raw RDMA queues (soft-RoCE). One iteration
// brings an instance up on a raw control queue, connects a raw virtqueue, registers its own
// buffers, and sends virtio-blk requests whose keyed descriptor lists are valid and then
// mutated: count (0, over the limit), lengths, addresses outside the region, wrong keys, buffers
// of the wrong access, straddling the readable/writable boundary, trailing partial descriptors,
// header lengths that disagree with the list, opcodes and ids. Checks every completion (id sent,
// length ≤ in_length) and that each command ends in a completion or a closed queue. A wrong key
// or address legitimately closes the queue (an RC QP cannot survive a remote access error).
import {
  BlkRequestType,
  CONNECT_BODY_SIZE,
  DeviceStatus,
  Opcode,
  VIRTIO_F_VERSION_1,
  encodeCommand,
  encodeConnectBody,
  encodeKeyedDescriptor,
  encodeRequestHeader,
  silentLogger,
} from '../../dist/index.js';
import { Waitable } from './waitable.mjs';
import { RdmaTransport } from '../../dist/transport/rdma/rdma-transport.js';
import { nativeBinding } from '../../dist/transport/rdma/native-binding.js';
import { parseListenUrl } from '../../dist/transport/url.js';

/** Under TCG everything is ~19x slower: generous. */
const HANG_MS = 60000;

class RawKeyedQueue extends Waitable {
  static async open(url, label, tally) {
    const { endpoint } = parseListenUrl(url);
    const conn = await new RdmaTransport(silentLogger).connect(endpoint, { timeoutMs: 30000, maxVqPayload: 1 << 20 });
    return new RawKeyedQueue(conn, label, tally);
  }

  constructor(conn, label, tally) {
    super();
    this.conn = conn;
    this.label = label;
    this.tally = tally;
    this.outstanding = new Map(); // id → [{ vq, inLength }]
    this.completions = [];
    this.closed = false;
    this.mrs = [];
    conn.start({
      onCompletion: (c) => this.onCompletion(Buffer.from(c)),
      onClose: () => {
        this.closed = true;
        this.wake();
      },
    });
  }


  onCompletion(c) {
    const id = c.readUInt16LE(2);
    const list = this.outstanding.get(id);
    if (!list || list.length === 0) {
      if (id === 0xffff || id === 0xfffe) return;
      this.tally.violations.push(`${this.label}: completion for command id ${id}, never sent or already answered`);
      return;
    }
    const sent = list.shift();
    if (list.length === 0) this.outstanding.delete(id);
    if (sent.vq && c.readUInt32LE(4) > sent.inLength) {
      this.tally.violations.push(`${this.label}: VQ completion for id ${id} with length ${c.readUInt32LE(4)} > in_length ${sent.inLength}`);
    }
    this.completions.push(c);
    this.wake();
  }

  send(command, rest) {
    if (this.closed) return;
    const op = command.readUInt16LE(0);
    const id = command.readUInt16LE(2);
    const list = this.outstanding.get(id) ?? [];
    list.push({ vq: op === Opcode.Vq, inLength: command.readUInt32LE(12) });
    this.outstanding.set(id, list);
    this.conn.sendCommand(command, rest);
  }

  async call(cmd, rest) {
    const before = this.completions.length;
    this.send(encodeCommand(cmd), rest);
    await this.waitFor(() => this.completions.length > before || this.closed, HANG_MS);
    return this.completions[before] ?? null;
  }


  register(buf, access) {
    const mr = this.conn.rc.pd.registerMemory(buf, access);
    this.mrs.push(mr);
    return mr;
  }

  /** Every command answered, or the queue closed. */
  async settle() {
    const ok = await this.waitFor(() => this.closed || this.outstanding.size === 0, HANG_MS);
    if (!ok) {
      const left = [...this.outstanding.keys()].join(' ');
      this.tally.hangs.push(`${this.label}: commands ${left} neither answered nor their queue closed within ${HANG_MS} ms`);
    }
  }

  async close() {
    await this.conn.close().catch(() => {});
    for (const mr of this.mrs) mr.deregister();
    this.mrs = [];
  }
}

const descriptorBytes = (list) => {
  const b = Buffer.alloc(list.length * 16);
  list.forEach((d, i) => encodeKeyedDescriptor(d, b, i * 16));
  return b;
};

/** A valid keyed blk request, then 0..3 mutations of its descriptors or header. */
function keyedRequest(rng, q, id, diskBytes, mutations) {
  const { REMOTE_READ, REMOTE_WRITE } = nativeBinding().access;
  const sectors = 1 + rng.below(16);
  const sector = rng.below(diskBytes / 512 - sectors);
  const write = rng.chance(0.5);
  const header = encodeRequestHeader(write ? BlkRequestType.OUT : BlkRequestType.IN, BigInt(sector));
  const out = write ? Buffer.concat([header, Buffer.alloc(sectors * 512, id & 0xff)]) : header;
  const inBuf = Buffer.alloc(write ? 1 : sectors * 512 + 1);
  const outMr = q.register(out, REMOTE_READ);
  const inMr = q.register(inBuf, REMOTE_WRITE);
  let descs = [
    { addr: outMr.address, length: out.length, key: outMr.rkey },
    { addr: inMr.address, length: inBuf.length, key: inMr.rkey },
  ];
  let outLength = out.length;
  let inLength = inBuf.length;
  let opcode = Opcode.Vq;
  let trailing = 0;
  const n = rng.chance(0.3) ? 0 : 1 + rng.below(3);
  for (let m = 0; m < n; m++) {
    const kind = rng.below(10);
    mutations.push(['count-0', 'count-33', 'length', 'addr', 'key', 'wrong-access', 'straddle', 'trailing', 'header-length', 'zero-length'][kind]);
    switch (kind) {
      case 0:
        descs = [];
        break;
      case 1:
        descs = Array.from({ length: 33 }, (_, i) => ({ addr: outMr.address + BigInt(i % out.length), length: 1, key: outMr.rkey }));
        break;
      case 2:
        if (descs.length) descs[rng.below(descs.length)].length += rng.pick([-1, 1, 4096, 0x7fffffff]);
        break;
      case 3:
        if (descs.length) descs[rng.below(descs.length)].addr += BigInt(rng.pick([1 << 20, -4096, 1 << 30]));
        break;
      case 4:
        if (descs.length) descs[rng.below(descs.length)].key = (descs[0].key ^ (1 + rng.below(0xffff))) >>> 0;
        break;
      case 5:
        // device-readable bytes described by the REMOTE_WRITE-only region and vice versa
        if (descs.length === 2) [descs[0].key, descs[1].key] = [descs[1].key, descs[0].key];
        break;
      case 6:
        descs = [{ addr: outMr.address, length: out.length + 1, key: outMr.rkey }];
        break;
      case 7:
        trailing = 1 + rng.below(15);
        break;
      case 8:
        if (rng.chance(0.5)) outLength = rng.pick([0, 1, outLength + 1, 0xffffffff]);
        else inLength = rng.pick([0, inLength + 512, 0xffffffff]);
        break;
      default:
        descs.splice(1, 0, { addr: outMr.address, length: 0, key: outMr.rkey });
    }
  }
  if (rng.chance(0.05)) opcode = rng.pick(Object.values(Opcode));
  const command = encodeCommand({ opcode: Opcode.Vq, commandId: id, outLength, inLength });
  command.writeUInt16LE(opcode, 0);
  return { command, rest: Buffer.concat([descriptorBytes(descs), Buffer.alloc(trailing)]) };
}

export async function runRdmaSession(rng, { url, tvqn, diskBytes, label, tally }) {
  tally.iterations++;
  const queues = [];
  try {
    const control = await RawKeyedQueue.open(url, `${label} control`, tally);
    queues.push(control);
    const connect = await control.call(
      { opcode: Opcode.Connect, commandId: 1, deviceInstanceId: 0xffff, vqIndex: 0, length: CONNECT_BODY_SIZE, queueSize: 0 },
      encodeConnectBody({ ivqn: `fuzz-${label}`, tvqn }),
    );
    if (!connect || connect.readUInt16LE(0) !== 0) throw new Error(`control Connect failed: ${connect?.readUInt16LE(0)}`);
    const instanceId = connect.readUInt16LE(4);
    let id = 2;
    for (const cmd of [
      { opcode: Opcode.SetStatus, commandId: id++, status: DeviceStatus.ACKNOWLEDGE | DeviceStatus.DRIVER },
      { opcode: Opcode.SetDriverFeature, commandId: id++, featureSelect: 0, feature: 1n << VIRTIO_F_VERSION_1 },
      { opcode: Opcode.SetStatus, commandId: id++, status: 0x0b },
      { opcode: Opcode.SetStatus, commandId: id++, status: 0x0f },
    ]) {
      await control.call(cmd);
    }
    const vq = await RawKeyedQueue.open(url, `${label} vq0`, tally);
    queues.push(vq);
    await vq.call({ opcode: Opcode.Connect, commandId: 1, deviceInstanceId: instanceId, vqIndex: 0, length: 0, queueSize: 16 });
    const mutations = [];
    const count = 1 + rng.below(8);
    for (let i = 0; i < count && !vq.closed; i++) {
      const { command, rest } = keyedRequest(rng, vq, 10 + i, diskBytes, mutations);
      vq.send(command, rest);
    }
    for (const m of mutations) tally.notes.set(`mutation ${m}`, (tally.notes.get(`mutation ${m}`) ?? 0) + 1);
    await vq.settle();
    if (rng.chance(0.3)) return; // abrupt: close without Disconnect (finally)
    if (!vq.closed) await vq.call({ opcode: Opcode.Disconnect, commandId: 0x7001 });
    if (!control.closed) await control.call({ opcode: Opcode.Disconnect, commandId: 0x7002 });
  } finally {
    for (const q of queues) await q.close();
  }
}
