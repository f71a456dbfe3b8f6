/**
 * The HCA's own cost: the requester, responder and completer of two RC QPs
 * on one device, driven through their rings in this process (the rings' own
 * encoders write the WQEs; no daemon, no socket, no client library). What
 * is left of a message's or a WRITE's time here is the engines' and the
 * fabric's; the gap to the daemon-backed lines is IPC, wake-ups and the
 * library.
 */
import { openSync } from 'node:fs';
import { Mtu, QpState, QpType, SendFlags, WrOpcode } from '../src/abi/enums.js';
import { CqRingConsumer, CqRingProducer, type CqeOut } from '../src/abi/cq-ring.js';
import { cqLayout, qpLayout, type QpCaps, type QpLayout } from '../src/abi/queue.js';
import { RecvRingConsumer, RecvRingProducer } from '../src/abi/recv-ring.js';
import { SendRingConsumer, SendRingProducer } from '../src/abi/send-ring.js';
import { SoftDevice } from '../src/hca/device.js';
import { Fabric, Fault } from '../src/hca/fabric.js';
import { MappedMemory, ProcMemory, type MrMemory } from '../src/hca/mr-memory.js';
import { Cq, Mr, Pd, type Ah, type Owner } from '../src/hca/objects.js';
import { Qp } from '../src/hca/qp.js';
import { mapAnon, type Mapping } from '../src/native/libc.js';

const EIGHT = new Uint8Array(8).fill(7);
const owner: Owner = { pid: process.pid, compEvent() {}, asyncEvent() {}, lookupAh: (): Ah | null => null };

interface End {
  qp: Qp;
  sq: SendRingProducer;
  rq: RecvRingProducer;
  cq: CqRingConsumer;
}

/**
 * How the bench's MR reaches its bytes: mapped by the daemon (a TS client's memory, the default), or through
 * this process's own /proc/self/mem as an unmodified C program's memory is reached (ProcMemory).
 */
export type MemKind = 'mapped' | 'proc';

let selfMem = -1;
function memOf(kind: MemKind, m: Mapping): MrMemory {
  if (kind === 'mapped') return new MappedMemory(new Uint8Array(m.buffer));
  if (selfMem < 0) selfMem = openSync('/proc/self/mem', 'r+');
  return new ProcMemory(selfMem, Number(m.addr));
}

/** Connects two RC QPs of one device to each other and moves both to RTS, as modify_qp would (every access, 16 RD atomics). */
function connectPair(dev: SoftDevice, a: Qp, b: Qp): void {
  for (const [q, peer] of [[a, b], [b, a]] as const) {
    q.attr.destQpn = peer.qpn;
    q.attr.path.dgid = dev.gids[0]!;
    q.attr.accessFlags = 7;
    q.attr.maxRdAtomic = q.attr.maxDestRdAtomic = 16;
    q.attr.timeout = 14;
    q.attr.retryCnt = q.comp.retryCnt = 7;
    q.attr.rnrRetry = q.comp.rnrRetry = 7;
    q.setMtu(Mtu.MTU_4096, dev.mtuBytes);
    q.state = QpState.RTS;
  }
}

/** A CQ of at least `cqe` entries in anonymous memory: the HCA's side, and the library's. */
function cqOf(cqe: number): { cq: Cq; consumer: CqRingConsumer } {
  const cl = cqLayout(cqe);
  const cqMem = mapAnon(cl.bytes);
  return { cq: new Cq(owner, 1n, cqMem, new CqRingProducer(cqMem.buffer, cl.slots), cl.cqe, null), consumer: new CqRingConsumer(cqMem.buffer, cl.slots) };
}

/** An RC QP of `caps` on dev, both its queues completing on cq, known to dev by qpn: the HCA's side, and the send queue's producer. */
function qpOf(dev: SoftDevice, pd: Pd, cq: Cq, qpn: number, caps: QpCaps): { qp: Qp; sq: SendRingProducer; mem: ArrayBuffer; rq: NonNullable<QpLayout['rq']> } {
  const l = qpLayout(caps, false)!;
  const mem = mapAnon(l.bytes);
  const rq = new RecvRingConsumer(mem.buffer, l.rq!.offset, l.rq!.slots, l.rq!.stride, 1);
  const qp = new Qp(dev, owner, qpn, QpType.RC, pd, cq, cq, null, rq, false, l.caps, mem, new SendRingConsumer(mem.buffer, l.sq, l.caps), BigInt(qpn));
  dev.qps.set(qpn, qp);
  // inline data: the same 8 bytes whatever the address
  return { qp, sq: new SendRingProducer(mem.buffer, l.sq, () => EIGHT), mem: mem.buffer, rq: l.rq! };
}

/** Two RC QPs on one device (address `addr`, no wire), connected to each other, and a 256 KiB MR. */
function rig(addr: string, kind: MemKind = 'mapped') {
  const fabric = new Fabric();
  const dev = new SoftDevice(fabric, 'bench0', 0, addr, { mtu: Mtu.MTU_4096 });
  const pd = new Pd(owner);
  const end = (qpn: number): End => {
    const { cq, consumer } = cqOf(1024);
    const q = qpOf(dev, pd, cq, qpn, { maxSendWr: 256, maxRecvWr: 1024, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 64 });
    return { qp: q.qp, sq: q.sq, rq: new RecvRingProducer(q.mem, q.rq, 1), cq: consumer };
  };
  const a = end(100);
  const b = end(101);
  connectPair(dev, a.qp, b.qp);
  const mrMem = mapAnon(1 << 18);
  const key = dev.allocMrKey();
  const mr = new Mr(pd, key, 7, 0x10000, 1 << 18, memOf(kind, mrMem), kind === 'mapped' ? mrMem : null, 64);
  dev.mrs.set(key >>> 8, mr);
  const done = () => {
    a.qp.stopTimers();
    b.qp.stopTimers();
  };
  return { dev, fabric, a, b, key, done };
}

const cqe = (): CqeOut => ({ wrId: 0n, status: 0, opcode: 0, vendorErr: 0, byteLen: 0, imm: 0, qpNum: 0, srcQp: 0, wcFlags: 0, pkeyIndex: 0, slid: 0, sl: 0, dlidPathBits: 0 });

/** 8-byte inline SENDs per second, one signaled in 32, 128 in flight, receives reposted as they complete; and how many. */
export function engineSendRate(addr: string, seconds: number): { value: number; ops: number } {
  const { dev, a, b, key, done } = rig(addr);
  const wc = cqe();
  const postRecv = () => {
    const o = b.rq.begin(1n, 1);
    b.rq.writeSge(o, 0, 0x10000n, 64, key);
    b.rq.advance();
  };
  for (let i = 0; i < 1024; i++) postRecv();
  b.rq.publish();
  const plain = { wrId: 0, opcode: WrOpcode.SEND, sendFlags: SendFlags.INLINE, sgList: [{ addr: 0, length: 8, lkey: 0 }] };
  const signaled = { ...plain, sendFlags: SendFlags.INLINE | SendFlags.SIGNALED };
  let posted = 0;
  let acked = 0;
  let received = 0;
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(seconds * 1e9));
  while (process.hrtime.bigint() < end) {
    for (let k = 0; posted - acked < 128 && k < 32; k++) a.sq.write(++posted % 32 === 0 ? signaled : plain);
    a.sq.publish();
    if (a.sq.claimWake()) dev.doorbell(a.qp);
    for (; a.cq.cons !== a.cq.produced(); acked += 32) a.cq.read(wc);
    a.cq.publish();
    let r = 0;
    for (; b.cq.cons !== b.cq.produced(); r++) b.cq.read(wc);
    b.cq.publish();
    for (let i = 0; i < r; i++) postRecv();
    b.rq.publish();
    received += r;
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  done();
  return { value: received / s, ops: received };
}

/** 64 KiB RDMA WRITEs (bytes/s), 32 in flight; and how many completed. */
export function engineWriteBw(addr: string, seconds: number): Promise<{ value: number; ops: number }> {
  return engineStreamBw(addr, seconds);
}

/**
 * A stream of 64 KiB RDMA WRITEs, READs or SENDs from one half of the MR to the other (bytes/s), 32 in flight (a
 * READ stream: 16, the QPs' max_rd_atomic; SENDs: receives reposted as they complete); and how many completed.
 * `perPacket`: each MTU packet its own descriptor, as on the wire (a fault injector that injects nothing keeps
 * the fabric from carrying spans).
 */
export async function engineStreamBw(addr: string, seconds: number, o: { kind?: MemKind; perPacket?: boolean; op?: 'write' | 'read' | 'send' } = {}): Promise<{ value: number; ops: number }> {
  const { dev, fabric, a, b, key, done } = rig(addr, o.kind);
  if (o.perPacket) fabric.fault = Fault.parse('seed=1');
  const wc = cqe();
  const op = o.op ?? 'write';
  const wr = { wrId: 0, opcode: op === 'read' ? WrOpcode.RDMA_READ : op === 'send' ? WrOpcode.SEND : WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [{ addr: 0x10000, length: 65536, lkey: key }], rdma: { remoteAddr: 0x10000 + 65536, rkey: key } };
  const window = op === 'read' ? 16 : 32;
  const postRecv = () => {
    const r = b.rq.begin(1n, 1);
    b.rq.writeSge(r, 0, 0x10000n + 65536n, 65536, key);
    b.rq.advance();
  };
  if (op === 'send') {
    for (let i = 0; i < 64; i++) postRecv();
    b.rq.publish();
  }
  let posted = 0;
  let completed = 0;
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(seconds * 1e9));
  while (process.hrtime.bigint() < end) {
    for (; posted - completed < window; posted++) a.sq.write(wr);
    a.sq.publish();
    if (a.sq.claimWake()) dev.doorbell(a.qp);
    for (; a.cq.cons !== a.cq.produced(); completed++) {
      a.cq.read(wc);
      if (wc.status !== 0) throw new Error(`completion status ${wc.status}`);
    }
    a.cq.publish();
    if (op === 'send') {
      let r = 0;
      for (; b.cq.cons !== b.cq.produced(); r++) b.cq.read(wc);
      b.cq.publish();
      for (let i = 0; i < r; i++) postRecv();
      b.rq.publish();
    }
    // the requester defers what its per-turn budget did not cover to the next turn
    if (posted - completed >= window) await new Promise((r) => setImmediate(r));
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  done();
  return { value: (completed * 65536) / s, ops: completed };
}

/**
 * The many-QP line's WRITEs in the engines alone: `pairs` connected RC QP pairs of one device, each kept busy
 * with `window` signaled 16 KiB RDMA WRITEs, all completing on one CQ, the send queues polled as the daemon
 * polls them (200 us, its default --poll-us); what completes is posted again. Bytes/s, and how many WRITEs.
 * Against one pair with all the WRs in flight, it is what a QP's turn through the engines costs, with no
 * process, wake-up or cache line between a client and the daemon.
 */
export async function engineManyWriteBw(addr: string, seconds: number, pairs: number, window: number): Promise<{ value: number; ops: number }> {
  const SIZE = 16 * 1024;
  const fabric = new Fabric();
  const dev = new SoftDevice(fabric, 'bench0', 0, addr, { mtu: Mtu.MTU_4096, pollUs: 200 });
  const pd = new Pd(owner);
  const { cq, consumer: cqc } = cqOf(Math.min(65536, pairs * window * 2 + 64));
  let qpn = 100;
  const make = (maxSendWr: number) => qpOf(dev, pd, cq, qpn++, { maxSendWr, maxRecvWr: 1, maxSendSge: 1, maxRecvSge: 1, maxInlineData: 0 });
  const mrMem = mapAnon(2 * SIZE);
  const key = dev.allocMrKey();
  dev.mrs.set(key >>> 8, new Mr(pd, key, 7, 0x10000, 2 * SIZE, memOf('mapped', mrMem), mrMem, 64));
  const senders: Array<ReturnType<typeof make>> = [];
  const all: Qp[] = [];
  for (let i = 0; i < pairs; i++) {
    const a = make(window);
    const b = make(1);
    connectPair(dev, a.qp, b.qp);
    senders.push(a);
    all.push(a.qp, b.qp);
  }
  const wrs = senders.map((_, i) => ({ wrId: i, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [{ addr: 0x10000, length: SIZE, lkey: key }], rdma: { remoteAddr: 0x10000 + SIZE, rkey: key } }));
  const post = (i: number) => {
    const s = senders[i]!;
    s.sq.write(wrs[i]!);
    s.sq.publish();
    if (s.sq.claimWake()) dev.doorbell(s.qp);
  };
  for (let i = 0; i < pairs; i++) for (let w = 0; w < window; w++) post(i);
  const wc = cqe();
  let completed = 0;
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(Math.round(seconds * 1e9));
  while (process.hrtime.bigint() < end) {
    for (; cqc.cons !== cqc.produced(); completed++) {
      cqc.read(wc);
      if (wc.status !== 0) throw new Error(`completion status ${wc.status}`);
      post(Number(wc.wrId));
    }
    cqc.publish();
    // the poller runs on the event loop's turns
    await new Promise((r) => setImmediate(r));
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  for (const q of all) q.stopTimers();
  return { value: (completed * SIZE) / s, ops: completed };
}
