/**
 * The requester, responder and completer on their own: real QPs on a real
 * device and fabric, no daemon and no client process. The test plays the
 * client through the same ring modules the library writes with, feeds the
 * engines packets, and checks the states they went through, the packets
 * they emitted and the completions they wrote.
 */
import assert from 'node:assert/strict';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { Access, Mtu, QpState, QpType, SendFlags, WcOpcode, WcStatus, WrOpcode } from '../../src/abi/enums.js';
import { CqRingConsumer, CqRingProducer, type CqeOut } from '../../src/abi/cq-ring.js';
import { cqLayout, qpLayout } from '../../src/abi/queue.js';
import { RecvRingConsumer, RecvRingProducer } from '../../src/abi/recv-ring.js';
import { SendRingConsumer, SendRingProducer } from '../../src/abi/send-ring.js';
import { SoftDevice } from '../../src/hca/device.js';
import { Fabric, Fault } from '../../src/hca/fabric.js';
import { gidOf } from '../../src/hca/gid.js';
import { MappedMemory } from '../../src/hca/mr-memory.js';
import { Ah, Cq, Mr, Pd, type Owner } from '../../src/hca/objects.js';
import { Aeth, M, OPCODES, Op, Transport } from '../../src/hca/opcodes.js';
import { Pkt } from '../../src/hca/packet.js';
import type { PcapWriter } from '../../src/hca/pcap.js';
import { Qp, WqeState } from '../../src/hca/qp.js';
import { tracer, type Engine } from '../../src/hca/trace.js';
import { mapAnon, type Mapping } from '../../src/native/libc.js';

/** The owner of the objects: records the events the HCA raises. */
class TestOwner implements Owner {
  readonly pid = process.pid;
  readonly events: number[] = [];
  compEvent(): void {}
  asyncEvent(_el: bigint, type: number): void {
    this.events.push(type);
  }
  lookupAh(): Ah | null {
    return null;
  }
}

const PEER_GID = gidOf('127.77.0.2');
const CAPS = { maxSendWr: 16, maxRecvWr: 16, maxSendSge: 2, maxRecvSge: 2, maxInlineData: 64 };

interface Rig {
  fabric: Fabric;
  dev: SoftDevice;
  owner: TestOwner;
  qp: Qp;
  mr: Mr;
  sq: SendRingProducer;
  rq: RecvRingProducer;
  cq: CqRingConsumer;
  /** packets the engines sent to the peer, copied as they left */
  wire: Pkt[];
  /** engine states, in order */
  trace: string[];
}

function copyPkt(p: Pkt): Pkt {
  const c = Object.assign(new Pkt(), p);
  c.payload = p.payload.slice(p.payOff, p.payOff + p.payLen);
  c.payOff = 0;
  c.done = null;
  return c;
}

/** One RC (or UC) QP on device 127.77.0.1, connected to a peer QP 0x99 at 127.77.0.2 that the test plays (a port of the fabric that records what reaches it). */
function rig(type: QpType = QpType.RC, peer: { spans?: boolean } = {}): Rig {
  const fabric = new Fabric();
  const dev = new SoftDevice(fabric, 'eng0', 0, '127.77.0.1', { mtu: Mtu.MTU_1024 });
  const wire: Pkt[] = [];
  // spans: the peer plays a device of this daemon, which takes descriptors standing for several packets
  fabric.devices.push({ gids: [PEER_GID], receive: (p) => wire.push(copyPkt(p)), transport: null, spans: peer.spans ?? false });
  const owner = new TestOwner();
  const pd = new Pd(owner);
  const cl = cqLayout(64);
  const cqMem = mapAnon(cl.bytes);
  const cq = new Cq(owner, 1n, cqMem, new CqRingProducer(cqMem.buffer, cl.slots), cl.cqe, null);
  const l = qpLayout(CAPS, false)!;
  const qpMem: Mapping = mapAnon(l.bytes);
  const rqc = new RecvRingConsumer(qpMem.buffer, l.rq!.offset, l.rq!.slots, l.rq!.stride, l.caps.maxRecvSge);
  const qp = new Qp(dev, owner, 0x42, type, pd, cq, cq, null, rqc, false, l.caps, qpMem, new SendRingConsumer(qpMem.buffer, l.sq, l.caps), 2n);
  dev.qps.set(qp.qpn, qp);
  qp.attr.destQpn = 0x99;
  qp.attr.path.dgid = PEER_GID;
  qp.attr.accessFlags = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;
  qp.attr.maxRdAtomic = qp.attr.maxDestRdAtomic = 4;
  qp.attr.retryCnt = qp.comp.retryCnt = 7;
  qp.attr.rnrRetry = qp.comp.rnrRetry = 7;
  qp.attr.timeout = 14;
  qp.setMtu(Mtu.MTU_1024, dev.mtuBytes);
  qp.req.psn = qp.comp.psn = 100;
  qp.resp.psn = 500;
  qp.state = QpState.RTS;
  const mrMem = mapAnon(1 << 16);
  const key = dev.allocMrKey();
  const mr = new Mr(pd, key, qp.attr.accessFlags, 0x10000, 1 << 16, new MappedMemory(new Uint8Array(mrMem.buffer)), mrMem, 16);
  dev.mrs.set(key >>> 8, mr);
  const trace: string[] = [];
  tracer.hook = (engine: Engine, qpn: number, state: string) => {
    if (qpn === qp.qpn) trace.push(`${engine}:${state}`);
  };
  return {
    fabric, dev, owner, qp, mr, wire, trace,
    sq: new SendRingProducer(qpMem.buffer, l.sq),
    rq: new RecvRingProducer(qpMem.buffer, l.rq!, l.caps.maxRecvSge),
    cq: new CqRingConsumer(cqMem.buffer, cl.slots),
  };
}

/** Posts one send WQE the way the library does, and rings the doorbell. */
function postSend(r: Rig, wr: { wrId: bigint; opcode: number; offset?: number; length: number; remoteAddr?: number; rkey?: number; flags?: number }): void {
  r.sq.write({
    wrId: wr.wrId, opcode: wr.opcode, sendFlags: wr.flags ?? SendFlags.SIGNALED, rdma: { remoteAddr: wr.remoteAddr ?? 0, rkey: wr.rkey ?? 0 },
    sgList: [{ addr: r.mr.iova + (wr.offset ?? 0), length: wr.length, lkey: r.mr.key }],
  });
  r.sq.publish();
  r.dev.doorbell(r.qp);
}

function postRecv(r: Rig, wrId: bigint, offset: number, length: number): void {
  const o = r.rq.begin(wrId, 1);
  r.rq.writeSge(o, 0, BigInt(r.mr.iova + offset), length, r.mr.key);
  r.rq.advance();
  r.rq.publish();
}

function poll(r: Rig): CqeOut[] {
  const out: CqeOut[] = [];
  while (r.cq.cons !== r.cq.produced()) {
    const wc = { wrId: 0n, status: 0, opcode: 0, vendorErr: 0, byteLen: 0, imm: 0, qpNum: 0, srcQp: 0, wcFlags: 0, pkeyIndex: 0, slid: 0, sl: 0, dlidPathBits: 0 };
    r.cq.read(wc);
    out.push(wc);
  }
  r.cq.publish();
  return out;
}

/** A packet from the peer QP to ours, delivered through the device as one off the wire would be. */
function feed(r: Rig, opcode: number, f: Partial<Pkt> = {}): void {
  arrive(r, opcode, f);
  r.dev.wireBatchDone(); // as the transport does once a batch off the wire is handed over
}

/** The same packet as one of a batch still arriving: what it causes waits for the batch's end (wireBatchDone). */
function arrive(r: Rig, opcode: number, f: Partial<Pkt> = {}): void {
  const p = r.dev.newPkt();
  Object.assign(p, { opcode, destQpn: r.qp.qpn, srcQpn: 0x99, srcGid: PEER_GID, dstGid: r.dev.gids[0]!, mask: OPCODES[opcode]!.mask }, f);
  r.dev.receiveFromWire(p);
}

const opName = (p: Pkt) => Object.entries(Op).find(([, v]) => v === (p.opcode & 0x1f))?.[0];
const states = (r: Rig, engine: Engine) => r.trace.filter((t) => t.startsWith(`${engine}:`)).map((t) => t.slice(engine.length + 1));

let current: Rig | null = null;
beforeEach(() => {
  current = null;
});
afterEach(() => {
  tracer.hook = null;
  current?.qp.stopTimers();
});

describe('requester', () => {
  test('a 3000-byte SEND at MTU 1024: FIRST, MIDDLE, LAST with consecutive PSNs, an ACK asked for on the last; the retransmit timer armed', () => {
    const r = (current = rig());
    r.mr.mem.view!.fill(7, 0, 3000);
    postSend(r, { wrId: 1n, opcode: WrOpcode.SEND, length: 3000 });
    assert.deepEqual(r.wire.map(opName), ['SEND_FIRST', 'SEND_MIDDLE', 'SEND_LAST']);
    assert.deepEqual(r.wire.map((p) => p.psn), [100, 101, 102]);
    assert.deepEqual(r.wire.map((p) => p.ackReq), [false, false, true]);
    assert.deepEqual(r.wire.map((p) => p.payLen), [1024, 1024, 952]);
    assert.ok(r.wire.every((p) => p.destQpn === 0x99 && p.payload.every((b) => b === 7)));
    assert.deepEqual(states(r, 'requester'), [
      'CHECK_QP', 'NEXT_WQE', 'FETCH', 'CHECK_LIMITS', 'START', 'SEND', 'NEXT_WQE', 'SEND', 'NEXT_WQE', 'SEND', 'NEXT_WQE', 'DONE',
    ]);
    assert.equal(r.qp.wqeAt(0).state, WqeState.PENDING);
    assert.notEqual(r.qp.comp.timer, null, 'waiting for the ACK');
    assert.deepEqual(poll(r), [], 'RC completes on the ACK, not when sent');
  });

  test('max_rd_atomic credits: the fifth READ waits (CHECK_LIMITS → DONE) until an answer frees a credit', () => {
    const r = (current = rig());
    for (let i = 0; i < 5; i++) postSend(r, { wrId: BigInt(i), opcode: WrOpcode.RDMA_READ, offset: i * 8, length: 8, remoteAddr: 0x5000 + i * 8, rkey: 0x1234 });
    assert.equal(r.wire.length, 4);
    assert.ok(r.wire.every((p) => (p.opcode & 0x1f) === Op.RDMA_READ_REQUEST));
    assert.equal(r.qp.req.rdAtomic, 4);
    assert.equal(states(r, 'requester').at(-2), 'CHECK_LIMITS');
  });

  test('a WQE the QP type does not allow (READ on UC) completes LOC_QP_OP_ERR and moves the QP to ERR', () => {
    const r = (current = rig(QpType.UC));
    postSend(r, { wrId: 9n, opcode: WrOpcode.RDMA_READ, length: 8, remoteAddr: 0x5000, rkey: 1 });
    assert.equal(r.wire.length, 0);
    assert.deepEqual(states(r, 'requester'), ['CHECK_QP', 'NEXT_WQE', 'FETCH']);
    const wcs = poll(r);
    assert.equal(wcs.length, 1);
    assert.equal(wcs[0]!.status, WcStatus.LOC_QP_OP_ERR);
    assert.equal(r.qp.state, QpState.ERR);
  });

  test('UC: the WQE completes once its last packet has left, without any answer', () => {
    const r = (current = rig(QpType.UC));
    postSend(r, { wrId: 5n, opcode: WrOpcode.RDMA_WRITE, length: 2000, remoteAddr: 0x8000, rkey: 0x77 });
    assert.deepEqual(r.wire.map(opName), ['RDMA_WRITE_FIRST', 'RDMA_WRITE_LAST']);
    assert.equal(r.wire[0]!.va, 0x8000);
    assert.equal(r.wire[0]!.dmaLen, 2000);
    const wcs = poll(r);
    assert.equal(wcs.length, 1);
    assert.equal(wcs[0]!.status, WcStatus.SUCCESS);
    assert.equal(wcs[0]!.opcode, WcOpcode.RDMA_WRITE);
  });
});

describe('completer', () => {
  test('an ACK for the last PSN retires the SEND: a SUCCESS completion, the slot back in the ring', () => {
    const r = (current = rig());
    postSend(r, { wrId: 1n, opcode: WrOpcode.SEND, length: 3000 });
    r.trace.length = 0;
    feed(r, Transport.RC | Op.ACKNOWLEDGE, { psn: 102, syndrome: Aeth.ACK | Aeth.CREDITS_INVALID });
    assert.deepEqual(states(r, 'completer'), ['GET_WQE', 'CHECK_PSN', 'ACK', 'COMP_WQE', 'GET_WQE', 'DONE']);
    const wcs = poll(r);
    assert.deepEqual(wcs.map((w) => [w.wrId, w.status, w.opcode, w.byteLen, w.qpNum]), [[1n, WcStatus.SUCCESS, WcOpcode.SEND, 3000, 0x42]]);
    assert.equal(r.sq.consumed(), 1);
    assert.equal(r.qp.comp.psn, 103);
  });

  test('an ACK for a middle PSN moves comp.psn only; a stale ACK changes nothing', () => {
    const r = (current = rig());
    postSend(r, { wrId: 1n, opcode: WrOpcode.SEND, length: 3000 });
    feed(r, Transport.RC | Op.ACKNOWLEDGE, { psn: 100 });
    assert.equal(r.qp.comp.psn, 101);
    assert.deepEqual(poll(r), []);
    r.trace.length = 0;
    feed(r, Transport.RC | Op.ACKNOWLEDGE, { psn: 50 });
    assert.deepEqual(states(r, 'completer'), ['GET_WQE', 'CHECK_PSN', 'DONE']);
  });

  test('read responses are placed in the WQE\'s SGE; the LAST retires it (COMP_ANSWERED)', () => {
    const r = (current = rig());
    postSend(r, { wrId: 3n, opcode: WrOpcode.RDMA_READ, offset: 0x100, length: 1500, remoteAddr: 0x9000, rkey: 0x55 });
    assert.equal(r.wire[0]!.dmaLen, 1500);
    r.trace.length = 0;
    const a = new Uint8Array(1024).fill(0xaa);
    const b = new Uint8Array(476).fill(0xbb);
    feed(r, Transport.RC | Op.RDMA_READ_RESPONSE_FIRST, { psn: 100, payload: a, payLen: 1024 });
    feed(r, Transport.RC | Op.RDMA_READ_RESPONSE_LAST, { psn: 101, payload: b, payLen: 476 });
    assert.deepEqual(states(r, 'completer'), ['GET_WQE', 'CHECK_PSN', 'READ', 'DONE', 'GET_WQE', 'CHECK_PSN', 'READ', 'COMP_ANSWERED', 'DONE']);
    assert.ok(r.mr.mem.view!.subarray(0x100, 0x100 + 1024).every((x) => x === 0xaa));
    assert.ok(r.mr.mem.view!.subarray(0x100 + 1024, 0x100 + 1500).every((x) => x === 0xbb));
    const wcs = poll(r);
    assert.deepEqual(wcs.map((w) => [w.wrId, w.status, w.opcode, w.byteLen]), [[3n, WcStatus.SUCCESS, WcOpcode.RDMA_READ, 1500]]);
  });

  test('a NAK with remote access error fails the WQE (REM_ACCESS_ERR) and moves the QP to ERR; later WQEs are flushed', () => {
    const r = (current = rig());
    postSend(r, { wrId: 1n, opcode: WrOpcode.RDMA_WRITE, length: 64, remoteAddr: 0x9000, rkey: 0x55 });
    postSend(r, { wrId: 2n, opcode: WrOpcode.SEND, length: 8 });
    r.trace.length = 0;
    feed(r, Transport.RC | Op.ACKNOWLEDGE, { psn: 100, syndrome: Aeth.NAK_REM_ACC_ERR });
    assert.deepEqual(states(r, 'completer'), ['GET_WQE', 'CHECK_PSN', 'NAK', 'ERROR']);
    assert.deepEqual(poll(r).map((w) => [w.wrId, w.status]), [[1n, WcStatus.REM_ACCESS_ERR], [2n, WcStatus.WR_FLUSH_ERR]]);
    assert.equal(r.qp.state, QpState.ERR);
  });

  test('an RNR NAK waits min_rnr_timer and sends the same PSN again', async () => {
    const r = (current = rig());
    postSend(r, { wrId: 1n, opcode: WrOpcode.SEND, length: 8 });
    r.wire.length = 0;
    r.trace.length = 0;
    feed(r, Transport.RC | Op.ACKNOWLEDGE, { psn: 100, syndrome: Aeth.RNR_NAK | 1 }); // timer 1: 0.01 ms
    assert.deepEqual(states(r, 'completer'), ['GET_WQE', 'CHECK_PSN', 'NAK', 'RNR']);
    assert.notEqual(r.qp.comp.rnrTimer, null);
    assert.equal(r.dev.counters.rcvd_rnr_err, 1);
    await new Promise((res) => setTimeout(res, 20));
    assert.deepEqual(r.wire.map((p) => [opName(p), p.psn]), [['SEND_ONLY', 100]]);
    assert.equal(r.qp.comp.rnrTimer, null);
  });

  test('a sequence NAK behind an RNR NAK does not cut its wait short: the window goes again once, when the RNR timer fires', async () => {
    const r = (current = rig());
    postSend(r, { wrId: 1n, opcode: WrOpcode.SEND, length: 8 });
    postSend(r, { wrId: 2n, opcode: WrOpcode.SEND, length: 8 });
    r.wire.length = 0;
    // the responder refuses PSN 100 (no receive WQE), then finds 101 out of sequence
    feed(r, Transport.RC | Op.ACKNOWLEDGE, { psn: 100, syndrome: Aeth.RNR_NAK | 14 }); // timer 14: 0.96 ms
    feed(r, Transport.RC | Op.ACKNOWLEDGE, { psn: 100, syndrome: Aeth.NAK_PSN_SEQ_ERROR });
    assert.equal(r.dev.counters.rcvd_seq_err, 1);
    await new Promise((res) => setImmediate(res));
    assert.deepEqual(r.wire.length, 0, 'nothing sent again before the RNR timer');
    await new Promise((res) => setTimeout(res, 30));
    assert.deepEqual(r.wire.map((p) => [opName(p), p.psn]), [['SEND_ONLY', 100], ['SEND_ONLY', 101]]);
  });

  test('a PSN sequence NAK goes back N on the next turn: everything from the NAKed PSN is sent again', async () => {
    const r = (current = rig());
    postSend(r, { wrId: 1n, opcode: WrOpcode.SEND, length: 3000 });
    r.wire.length = 0;
    feed(r, Transport.RC | Op.ACKNOWLEDGE, { psn: 101, syndrome: Aeth.NAK_PSN_SEQ_ERROR });
    assert.equal(r.wire.length, 0, 'not inside the packet loop');
    await new Promise((res) => setImmediate(res));
    assert.deepEqual(r.wire.map((p) => [opName(p), p.psn]), [['SEND_MIDDLE', 101], ['SEND_LAST', 102]]);
    assert.equal(r.dev.counters.rcvd_seq_err, 1);
  });
});

describe('spans: a run of packets between devices of one daemon as one descriptor', () => {
  test('a 3000-byte WRITE to a device of this daemon leaves as one WRITE_ONLY standing for PSNs 100..102; the ACK for 102 completes it', () => {
    const r = (current = rig(QpType.RC, { spans: true }));
    r.mr.mem.view!.fill(9, 0, 3000);
    postSend(r, { wrId: 5n, opcode: WrOpcode.RDMA_WRITE, length: 3000, remoteAddr: 0x8000, rkey: 0x77 });
    assert.deepEqual(r.wire.map((p) => [opName(p), p.psn, p.span, p.payLen, p.dmaLen, p.ackReq]), [['RDMA_WRITE_ONLY', 100, 3, 3000, 3000, true]]);
    assert.ok(r.wire[0]!.payload.every((b) => b === 9));
    assert.equal(r.qp.req.psn, 103);
    assert.equal(r.dev.counters.sent_pkts, 3, 'counted as the packets it stands for');
    feed(r, Transport.RC | Op.ACKNOWLEDGE, { psn: 102, syndrome: Aeth.ACK, msn: 1 });
    assert.deepEqual(poll(r).map((w) => [w.wrId, w.status]), [[5n, WcStatus.SUCCESS]]);
  });

  test('a SEND_ONLY span fills the receive WQE, moves the expected PSN on by its span and is ACKed for its last PSN', () => {
    const r = (current = rig());
    postRecv(r, 8n, 0x1000, 4096);
    const data = new Uint8Array(2500).map((_, i) => i & 0xff);
    feed(r, Transport.RC | Op.SEND_ONLY, { psn: 500, span: 3, payload: data, payLen: 2500, ackReq: true });
    assert.deepEqual(r.mr.mem.view!.subarray(0x1000, 0x1000 + 2500), data);
    assert.deepEqual(poll(r).map((w) => [w.wrId, w.status, w.byteLen]), [[8n, WcStatus.SUCCESS, 2500]]);
    assert.equal(r.qp.resp.psn, 503);
    assert.deepEqual(r.wire.map((p) => [opName(p), p.psn, p.msn]), [['ACKNOWLEDGE', 502, 1]]);
  });

  test('no spans where packets are looked at one by one (fault injection, the capture) or the peer does not take them', () => {
    const capture = { write: () => {} } as unknown as PcapWriter;
    for (const setup of [(r: Rig) => (r.fabric.fault = Fault.parse('seed=1')), (r: Rig) => (r.fabric.pcap = capture), null]) {
      const r = (current = rig(QpType.RC, { spans: setup !== null }));
      setup?.(r);
      postSend(r, { wrId: 5n, opcode: WrOpcode.RDMA_WRITE, length: 3000, remoteAddr: 0x8000, rkey: 0x77 });
      assert.deepEqual(r.wire.map((p) => [opName(p), p.span]), [['RDMA_WRITE_FIRST', 1], ['RDMA_WRITE_MIDDLE', 1], ['RDMA_WRITE_LAST', 1]]);
      r.qp.stopTimers(); // afterEach stops only the last rig's
    }
  });
});

describe('responder', () => {
  test('requests that arrive in one batch are answered by one ACK for the last (coalesced); one at a time, one ACK each', () => {
    const r = (current = rig());
    for (let i = 0; i < 4; i++) postRecv(r, BigInt(i), 0x200, 256);
    const send = (psn: number) => arrive(r, Transport.RC | Op.SEND_ONLY, { psn, payload: new Uint8Array(8), payLen: 8, ackReq: true });
    send(500);
    send(501);
    send(502);
    r.dev.wireBatchDone();
    assert.deepEqual(r.wire.map((p) => [opName(p), p.psn, p.syndrome & Aeth.TYPE_MASK, p.msn]), [['ACKNOWLEDGE', 502, Aeth.ACK, 3]]);
    assert.equal(poll(r).length, 3, 'every receive completes');
    feed(r, Transport.RC | Op.SEND_ONLY, { psn: 503, payload: new Uint8Array(8), payLen: 8, ackReq: true });
    assert.deepEqual(r.wire.map((p) => [p.psn, p.msn]), [[502, 3], [503, 4]]);
  });

  test('a SEND_ONLY lands in the posted receive WQE: a RECV completion and an ACK', () => {
    const r = (current = rig());
    postRecv(r, 77n, 0x200, 256);
    const data = new Uint8Array(100).map((_, i) => i);
    feed(r, Transport.RC | Op.SEND_ONLY, { psn: 500, payload: data, payLen: 100, ackReq: true });
    assert.deepEqual(states(r, 'responder'), ['CHECK_STATE', 'CHECK_PSN', 'CHECK_OP_SEQ', 'CHECK_OP_VALID', 'GET_RECV_WQE', 'CHECK_RKEY', 'EXECUTE', 'COMPLETE', 'ACKNOWLEDGE']);
    assert.deepEqual(r.mr.mem.view!.subarray(0x200, 0x200 + 100), data);
    assert.deepEqual(poll(r).map((w) => [w.wrId, w.status, w.opcode, w.byteLen, w.srcQp]), [[77n, WcStatus.SUCCESS, WcOpcode.RECV, 100, 0x99]]);
    assert.deepEqual(r.wire.map((p) => [opName(p), p.psn, p.syndrome & Aeth.TYPE_MASK, p.msn]), [['ACKNOWLEDGE', 500, Aeth.ACK, 1]]);
    assert.equal(r.qp.resp.psn, 501);
  });

  test('no receive WQE posted: an RNR NAK carrying min_rnr_timer; nothing completes', () => {
    const r = (current = rig());
    r.qp.attr.minRnrTimer = 12;
    feed(r, Transport.RC | Op.SEND_ONLY, { psn: 500, payload: new Uint8Array(8), payLen: 8, ackReq: true });
    assert.deepEqual(states(r, 'responder').slice(-2), ['GET_RECV_WQE', 'RNR']);
    assert.deepEqual(r.wire.map((p) => [opName(p), p.syndrome]), [['ACKNOWLEDGE', Aeth.RNR_NAK | 12]]);
    assert.equal(r.qp.resp.psn, 500, 'the PSN is not consumed');
    assert.deepEqual(poll(r), []);
  });

  test('a PSN gap: one sequence-error NAK for the expected PSN, then silence until the requester goes back', () => {
    const r = (current = rig());
    feed(r, Transport.RC | Op.SEND_ONLY, { psn: 503, payLen: 0, ackReq: true });
    feed(r, Transport.RC | Op.SEND_ONLY, { psn: 504, payLen: 0, ackReq: true });
    assert.deepEqual(r.wire.map((p) => [p.psn, p.syndrome]), [[500, Aeth.NAK_PSN_SEQ_ERROR]]);
    assert.equal(r.dev.counters.out_of_seq_request, 1);
  });

  test('an RDMA WRITE is placed at its address; its duplicate is acknowledged again, not executed again', () => {
    const r = (current = rig());
    const first = new Uint8Array(64).fill(1);
    feed(r, Transport.RC | Op.RDMA_WRITE_ONLY, { psn: 500, va: 0x10000 + 0x400, rkey: r.mr.key, dmaLen: 64, payload: first, payLen: 64, ackReq: true });
    assert.ok(r.mr.mem.view!.subarray(0x400, 0x440).every((x) => x === 1));
    r.mr.mem.view!.fill(0, 0x400, 0x440);
    r.trace.length = 0;
    feed(r, Transport.RC | Op.RDMA_WRITE_ONLY, { psn: 500, va: 0x10000 + 0x400, rkey: r.mr.key, dmaLen: 64, payload: first, payLen: 64, ackReq: true });
    assert.deepEqual(states(r, 'responder'), ['CHECK_STATE', 'CHECK_PSN', 'DUPLICATE']);
    assert.ok(r.mr.mem.view!.subarray(0x400, 0x440).every((x) => x === 0), 'not written twice');
    assert.deepEqual(r.wire.map((p) => [p.psn, p.syndrome & Aeth.TYPE_MASK]), [[500, Aeth.ACK], [500, Aeth.ACK]]);
    assert.equal(r.dev.counters.duplicate_request, 1);
  });

  test('a WRITE with a bad rkey: NAK remote access error, the QP in ERR', () => {
    const r = (current = rig());
    feed(r, Transport.RC | Op.RDMA_WRITE_ONLY, { psn: 500, va: 0x10000, rkey: r.mr.key ^ 0xff, dmaLen: 8, payload: new Uint8Array(8), payLen: 8, ackReq: true });
    assert.deepEqual(states(r, 'responder').slice(-2), ['CHECK_RKEY', 'ERROR']);
    assert.deepEqual(r.wire.map((p) => p.syndrome), [Aeth.NAK_REM_ACC_ERR]);
    assert.equal(r.qp.state, QpState.ERR);
  });

  test('an RDMA READ is answered from the MR: FIRST and LAST responses with the bytes, PSNs from the request\'s', () => {
    const r = (current = rig());
    r.mr.mem.view!.fill(0x5a, 0x1000, 0x1000 + 1500);
    feed(r, Transport.RC | Op.RDMA_READ_REQUEST, { psn: 500, va: 0x10000 + 0x1000, rkey: r.mr.key, dmaLen: 1500, ackReq: true });
    assert.deepEqual(states(r, 'responder').at(-1), 'READ');
    assert.deepEqual(r.wire.map((p) => [opName(p), p.psn, p.payLen]), [['RDMA_READ_RESPONSE_FIRST', 500, 1024], ['RDMA_READ_RESPONSE_LAST', 501, 476]]);
    assert.ok(r.wire.every((p) => p.payload.every((x) => x === 0x5a)));
    assert.equal(r.qp.resp.psn, 502);
    assert.ok(M.RRESP & OPCODES[r.wire[0]!.opcode]!.mask);
  });
});

describe('ATOMIC_WRITE (rxe >= 6.2)', () => {
  /** Posts an ATOMIC_WRITE as the library does (its 8 bytes in the WQE, no SGE). */
  function postAtomicWrite(r: Rig, wrId: bigint, remoteAddr: number, value: bigint): void {
    r.sq.write({ wrId, opcode: WrOpcode.ATOMIC_WRITE, sendFlags: SendFlags.SIGNALED, atomicWrite: { remoteAddr, rkey: 0x1234, value } });
    r.sq.publish();
    r.dev.doorbell(r.qp);
  }

  test('requester: one packet, a RETH for 8 bytes and the 8 bytes; it takes a max_rd_atomic credit; a plain ACK retires it as IBV_WC_ATOMIC_WRITE', () => {
    const r = (current = rig());
    for (let i = 0; i < 5; i++) postAtomicWrite(r, BigInt(i), 0x5000 + i * 8, 0x0102030405060708n + BigInt(i));
    assert.equal(r.wire.length, 4, 'the fifth waits for a credit');
    const p = r.wire[0]!;
    assert.deepEqual([opName(p), p.psn, p.va, p.rkey, p.dmaLen, p.payLen, p.ackReq], ['ATOMIC_WRITE', 100, 0x5000, 0x1234, 8, 8, true]);
    assert.deepEqual([...p.payload], [8, 7, 6, 5, 4, 3, 2, 1]);
    assert.equal(OPCODES[Transport.RC | Op.ATOMIC_WRITE]!.name, 'RC_ATOMIC_WRITE');
    assert.equal(OPCODES[Transport.UC | Op.ATOMIC_WRITE], undefined, 'RC only');
    feed(r, Transport.RC | Op.ACKNOWLEDGE, { psn: 100, syndrome: Aeth.ACK | Aeth.CREDITS_INVALID });
    assert.deepEqual(poll(r).map((w) => [w.wrId, w.status, w.opcode]), [[0n, WcStatus.SUCCESS, WcOpcode.ATOMIC_WRITE]]);
    assert.equal(r.wire.length, 5, 'the credit freed lets the fifth go');
    assert.equal(r.wire[4]!.psn, 104);
  });

  test('responder: stored as one at an aligned address and ACKed; a duplicate is ACKed again, not stored again', () => {
    const r = (current = rig());
    const v = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
    feed(r, Transport.RC | Op.ATOMIC_WRITE, { psn: 500, va: 0x10000 + 0x800, rkey: r.mr.key, dmaLen: 8, payload: v, payLen: 8, ackReq: true });
    assert.deepEqual([...r.mr.mem.view!.subarray(0x800, 0x808)], [...v]);
    assert.equal(states(r, 'responder').at(-1), 'ATOMIC');
    r.mr.mem.view!.fill(0, 0x800, 0x808);
    feed(r, Transport.RC | Op.ATOMIC_WRITE, { psn: 500, va: 0x10000 + 0x800, rkey: r.mr.key, dmaLen: 8, payload: v, payLen: 8, ackReq: true });
    assert.ok(r.mr.mem.view!.subarray(0x800, 0x808).every((x) => x === 0), 'not stored twice');
    assert.deepEqual(r.wire.map((p) => [opName(p), p.psn, p.syndrome]), [['ACKNOWLEDGE', 500, Aeth.ACK | Aeth.CREDITS_INVALID], ['ACKNOWLEDGE', 500, Aeth.ACK | Aeth.CREDITS_INVALID]]);
    assert.equal(r.qp.resp.psn, 501);
  });

  for (const [what, f, syndrome] of [
    ['a misaligned address', { va: 0x10000 + 0x804 }, Aeth.NAK_INVALID_REQUEST],
    ['a RETH length other than 8', { dmaLen: 16 }, Aeth.NAK_INVALID_REQUEST],
    ['a bad rkey', { rkey: 0x77 }, Aeth.NAK_REM_ACC_ERR],
  ] as const) {
    test(`responder: ${what} is NAKed (${syndrome === Aeth.NAK_REM_ACC_ERR ? 'remote access error' : 'invalid request'}), nothing stored, the QP in ERR`, () => {
      const r = (current = rig());
      const pkt: Partial<Pkt> = { psn: 500, va: 0x10000 + 0x800, rkey: r.mr.key, dmaLen: 8, payload: new Uint8Array(8).fill(9), payLen: 8, ackReq: true };
      feed(r, Transport.RC | Op.ATOMIC_WRITE, Object.assign(pkt, f));
      assert.deepEqual(r.wire.map((p) => p.syndrome), [syndrome]);
      assert.ok(r.mr.mem.view!.every((x) => x !== 9));
      assert.equal(r.qp.state, QpState.ERR);
    });
  }

  test('responder: a QP without REMOTE_WRITE refuses it as an invalid request', () => {
    const r = (current = rig());
    r.qp.attr.accessFlags = Access.LOCAL_WRITE | Access.REMOTE_ATOMIC;
    feed(r, Transport.RC | Op.ATOMIC_WRITE, { psn: 500, va: 0x10000 + 0x800, rkey: r.mr.key, dmaLen: 8, payload: new Uint8Array(8), payLen: 8, ackReq: true });
    assert.deepEqual(r.wire.map((p) => p.syndrome), [Aeth.NAK_INVALID_REQUEST]);
  });
});

describe('the fabric', () => {
  test('a device looked up by GID is found by any array holding it, and not once it has left', () => {
    const fabric = new Fabric();
    const port = (addr: string) => ({ gids: [gidOf(addr)], receive() {}, transport: null });
    const a = port('127.3.0.1');
    const b = port('127.3.0.2');
    fabric.devices.push(a, b);
    const toB = gidOf('127.3.0.2');
    assert.equal(fabric.byGid(toB), b);
    assert.equal(fabric.byGid(toB), b, 'again, the same array');
    assert.equal(fabric.byGid(gidOf('127.3.0.1')), a);
    assert.equal(fabric.byGid(gidOf('127.3.0.9')), null);
    fabric.removeDevice(b);
    assert.equal(fabric.byGid(toB), null, 'a device that left is no destination, whatever was looked up before');
    assert.deepEqual(fabric.devices, [a]);
  });
});
