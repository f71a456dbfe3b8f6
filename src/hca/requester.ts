/**
 * The requester (rxe_req.c): walks the send queue, turns each WQE into
 * request packets (segmented by the path MTU, PSN per packet), honours
 * max_rd_atomic credits and fences, and arms the retransmit timer. UD and UC
 * WQEs complete as soon as their last packet is out.
 */
import { QpState, QpType, SendFlags, WcStatus, WrOpcode } from '../abi/enums.js';
import { PROD, SQ_IDLE } from '../abi/queue.js';
import * as completer from './completer.js';
import type { SoftDevice } from './device.js';
import { Op, PSN_MASK, psnDiff, Transport } from './opcodes.js';
import type { Qp, SendWqe } from './qp.js';
import { WqeState } from './qp.js';

/** Packets one doorbell may send before yielding the event loop to other clients. */
const BUDGET = 1024;
/** rxe asks for an ACK at least every this many packets of a long message. */
const MAX_PKT_PER_ACK = 64;

const transportOf = (qp: Qp) => (qp.type === QpType.RC ? Transport.RC : qp.type === QpType.UC ? Transport.UC : Transport.UD);

/**
 * The rest of this QP's send queue on the next turn: one deferred doorbell per QP, however many times it
 * was asked for this turn (every ACK that found the turn's budget spent asked once: thousands of callbacks).
 */
function later(dev: SoftDevice, qp: Qp): void {
  if (qp.req.deferred) return;
  qp.req.deferred = true;
  setImmediate(() => {
    qp.req.deferred = false;
    dev.doorbell(qp);
  });
}

export function run(dev: SoftDevice, qp: Qp): void {
  // a client that keeps moving its producer index while we run gets a few rounds, then the next turn
  for (let round = 0; ; round++) {
    if (round === 8) {
      later(dev, qp);
      return;
    }
    const before = Atomics.load(qp.sqHdr, PROD);
    runOnce(dev, qp);
    if (qp.destroyed) return;
    // going idle: from now on the client rings. WQEs it wrote while we ran, without ringing, are ours to see.
    Atomics.store(qp.sqHdr, SQ_IDLE, 1);
    if (Atomics.load(qp.sqHdr, PROD) === before) return;
    if (Atomics.compareExchange(qp.sqHdr, SQ_IDLE, 1, 0) !== 1) return; // the client took it: its doorbell is coming
  }
}

function runOnce(dev: SoftDevice, qp: Qp): void {
  if (qp.state === QpState.ERR) {
    completer.flushSend(dev, qp);
    return;
  }
  if (qp.state !== QpState.RTS && qp.state !== QpState.SQD) return;
  // this doorbell's share, bounded by the room left in the fabric's queue (a chunk of doorbells for a
  // thousand QPs would otherwise queue a thousand budgets' worth of packets before any was drained)
  let budget = dev.fabric.sendRoom(BUDGET);
  if (budget === 0) {
    later(dev, qp);
    return;
  }
  const prod = qp.sqProduced();
  // (prod - idx) as a signed distance: whatever the client wrote, the requester never runs past the producer
  while (((prod - qp.req.idx) | 0) > 0 && budget > 0 && (qp.state as number) !== QpState.ERR) {
    const w = qp.wqeAt(qp.req.idx);
    if (w.state === WqeState.FREE) {
      const st = qp.fetch(qp.req.idx, dev.lookupMr, (h) => qp.owner.lookupAh(h));
      if (st !== 0) {
        // a WQE hardware refuses: error completion, QP to ERR (rxe: wqe->status + qp error)
        w.state = WqeState.PENDING;
        w.status = st;
        qp.req.idx = (qp.req.idx + 1) >>> 0;
        completer.failWqe(dev, qp);
        return;
      }
    }
    if (w.state === WqeState.POSTED) {
      if (qp.state === QpState.SQD) break; // draining: nothing new starts
      if (qp.type === QpType.RC) {
        if (w.isReadOrAtomic && qp.req.rdAtomic >= Math.max(1, qp.attr.maxRdAtomic)) break;
        if (w.sendFlags & SendFlags.FENCE && qp.req.rdAtomic > 0) break;
        if (w.isReadOrAtomic) qp.req.rdAtomic++;
      }
      w.state = WqeState.PROCESSING;
      w.firstPsn = qp.req.psn;
      w.offset = 0;
      const pkts = w.opcode === WrOpcode.RDMA_READ ? Math.max(1, Math.ceil(w.length / qp.mtu)) : w.isReadOrAtomic ? 1 : Math.max(1, Math.ceil(w.length / qp.mtu));
      w.lastPsn = (w.firstPsn + pkts - 1) & PSN_MASK;
    }
    if ((w.state as number) !== WqeState.PROCESSING) {
      qp.req.idx = (qp.req.idx + 1) >>> 0;
      continue;
    }
    if (!sendOne(dev, qp, w)) return;
    budget--;
    if (w.state === WqeState.PENDING) qp.req.idx = (qp.req.idx + 1) >>> 0;
  }
  if (qp.type === QpType.RC) completer.armRetransmit(qp);
  if (budget === 0 && qp.req.idx !== prod) later(dev, qp);
}

/** Builds and sends the next packet of w. False if the WQE failed locally (already completed in error). */
function sendOne(dev: SoftDevice, qp: Qp, w: SendWqe): boolean {
  const p = dev.fabric.pool.get();
  const tr = transportOf(qp);
  const mtu = qp.mtu;
  p.srcQpn = qp.qpn;
  p.srcPort = qp.srcPort;
  p.srcGid = dev.gids[0]!;
  if (qp.type === QpType.UD) {
    p.dstGid = w.ah!.dgid;
    p.destQpn = w.remoteQpn;
    // a Q_Key with the high bit set means "use the QP's own" (IBA 10.2.4.1)
    p.qkey = w.remoteQkey & 0x80000000 ? qp.attr.qkey : w.remoteQkey;
  } else {
    p.dstGid = qp.attr.path.dgid;
    p.destQpn = qp.attr.destQpn;
  }
  p.psn = qp.req.psn;
  const op = w.opcode;
  if (op === WrOpcode.RDMA_READ) {
    // w.offset: response packets already received (a resumed READ asks for the rest only)
    p.opcode = tr | Op.RDMA_READ_REQUEST;
    p.va = w.remoteAddr + w.offset * mtu;
    p.rkey = w.rkey;
    p.dmaLen = w.length - w.offset * mtu;
    p.ackReq = true;
    qp.req.psn = (w.lastPsn + 1) & PSN_MASK;
    w.state = WqeState.PENDING;
    dev.xmit(p);
    return true;
  }
  if (op === WrOpcode.ATOMIC_CMP_AND_SWP || op === WrOpcode.ATOMIC_FETCH_AND_ADD) {
    p.opcode = tr | (op === WrOpcode.ATOMIC_CMP_AND_SWP ? Op.COMPARE_SWAP : Op.FETCH_ADD);
    p.va = w.remoteAddr;
    p.rkey = w.rkey;
    p.swapAdd = op === WrOpcode.ATOMIC_CMP_AND_SWP ? w.swap : w.compareAdd;
    p.compare = w.compareAdd;
    p.ackReq = true;
    qp.req.psn = (qp.req.psn + 1) & PSN_MASK;
    w.state = WqeState.PENDING;
    dev.xmit(p);
    return true;
  }
  const remaining = w.length - w.offset;
  const n = Math.min(mtu, remaining);
  const first = w.offset === 0;
  const last = remaining <= mtu;
  const isSend = op === WrOpcode.SEND || op === WrOpcode.SEND_WITH_IMM;
  const imm = op === WrOpcode.SEND_WITH_IMM || op === WrOpcode.RDMA_WRITE_WITH_IMM;
  let o: number;
  if (isSend) o = first && last ? (imm ? Op.SEND_ONLY_WITH_IMMEDIATE : Op.SEND_ONLY) : first ? Op.SEND_FIRST : last ? (imm ? Op.SEND_LAST_WITH_IMMEDIATE : Op.SEND_LAST) : Op.SEND_MIDDLE;
  else o = first && last ? (imm ? Op.RDMA_WRITE_ONLY_WITH_IMMEDIATE : Op.RDMA_WRITE_ONLY) : first ? Op.RDMA_WRITE_FIRST : last ? (imm ? Op.RDMA_WRITE_LAST_WITH_IMMEDIATE : Op.RDMA_WRITE_LAST) : Op.RDMA_WRITE_MIDDLE;
  p.opcode = tr | o;
  if (!isSend && first) {
    p.va = w.remoteAddr;
    p.rkey = w.rkey;
    p.dmaLen = w.length;
  }
  if (imm && last) p.imm = w.imm;
  if (last && w.sendFlags & SendFlags.SOLICITED) p.se = true;
  qp.req.noAck++;
  if (qp.type === QpType.RC && (last || qp.req.noAck >= MAX_PKT_PER_ACK)) {
    p.ackReq = true;
    qp.req.noAck = 0;
  }
  if (n > 0) {
    const one = qp.single(w, w.offset, n);
    if (one) {
      p.payload = one.mr.mem;
      p.payMap = one.mr.mapping;
      p.payOff = one.off;
    } else {
      const scratch = scratchOf(p);
      if (!qp.gather(w, w.offset, scratch, 0, n)) {
        dev.fabric.pool.put(p);
        w.status = WcStatus.LOC_PROT_ERR;
        completer.failWqe(dev, qp);
        return false;
      }
      p.payload = scratch;
      p.payOff = 0;
    }
  }
  p.payLen = n;
  p.padCnt = (4 - (n & 3)) & 3;
  w.offset += n;
  qp.req.psn = (qp.req.psn + 1) & PSN_MASK;
  if (last) {
    w.state = WqeState.PENDING;
    if (qp.type !== QpType.RC) p.done = w.doneRef ??= { dev, qp, wqe: w };
  }
  dev.xmit(p);
  return true;
}

/** Each pooled descriptor keeps its own gather buffer, made the first time one is needed. */
const scratches = new WeakMap<object, Uint8Array>();
function scratchOf(p: object): Uint8Array {
  let s = scratches.get(p);
  if (!s) {
    s = new Uint8Array(4096);
    scratches.set(p, s);
  }
  return s;
}

/**
 * Go back to the oldest unacknowledged WQE and send again from there
 * (go-back-N). The oldest resumes at the first PSN not yet answered
 * (comp.psn): a SEND or WRITE from its next packet, a READ with a request
 * for the responses still missing; everything after it goes again whole.
 */
export function retry(dev: SoftDevice, qp: Qp): void {
  if (qp.state === QpState.ERR) return;
  const first = qp.wqeAt(qp.comp.idx);
  if (first.state !== WqeState.PROCESSING && first.state !== WqeState.PENDING) return;
  let idx = qp.comp.idx;
  while (idx !== qp.req.idx) {
    const w = qp.wqeAt(idx);
    if (w.state === WqeState.PROCESSING || w.state === WqeState.PENDING) w.state = WqeState.POSTED;
    idx = (idx + 1) >>> 0;
  }
  const cur = qp.wqeAt(qp.req.idx);
  if (cur.state === WqeState.PROCESSING) cur.state = WqeState.POSTED;
  qp.req.idx = qp.comp.idx;
  qp.req.psn = first.firstPsn;
  qp.req.rdAtomic = 0;
  qp.req.noAck = 0;
  const done = psnDiff(qp.comp.psn, first.firstPsn);
  const atomic = first.isReadOrAtomic && first.opcode !== WrOpcode.RDMA_READ;
  if (!atomic && done > 0 && psnDiff(qp.comp.psn, first.lastPsn) <= 0) {
    first.state = WqeState.PROCESSING;
    first.offset = first.opcode === WrOpcode.RDMA_READ ? done : done * qp.mtu;
    if (first.opcode === WrOpcode.RDMA_READ) qp.req.rdAtomic++;
    qp.req.psn = qp.comp.psn;
  }
  run(dev, qp);
}
