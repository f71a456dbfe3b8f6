/**
 * The responder (rxe_resp.c): checks each request packet (QP state, PSN,
 * opcode sequence, QP access, rkey, bounds), executes it (places SEND data
 * in a receive WQE, writes, reads, atomics), answers (ACK, read response,
 * atomic acknowledge, RNR NAK, NAK with the IBA error class) and completes
 * receive WQEs. Duplicates are re-ACKed; duplicate READs and ATOMICs are
 * answered from the responder resources, never executed twice.
 */
import { Access, EventType, QpState, QpType, WcFlags, WcOpcode, WcStatus, wcStatusName } from '../abi/enums.js';
import { postRecvWc, toError } from './completer.js';
import type { SoftDevice } from './device.js';
import { walkSgl, type Mr, type RecvWqe } from './objects.js';
import { Aeth, M, Op, PSN_MASK, psnDiff, Transport } from './opcodes.js';
import type { Pkt } from './packet.js';
import type { Qp, ReadOut, RespRes } from './qp.js';

/** Read response packets a QP sends per turn of the event loop (all of a 4 MiB READ at MTU 4096). */
const READ_BURST = 1024;

/** Why a request failed, and what each side sees (rxe's RESPST_ERR_* → NAK code, responder WC status). */
const Err = {
  RKEY: { syndrome: Aeth.NAK_REM_ACC_ERR, wc: WcStatus.LOC_ACCESS_ERR },
  INVALID: { syndrome: Aeth.NAK_INVALID_REQUEST, wc: WcStatus.REM_INV_REQ_ERR },
  LENGTH: { syndrome: Aeth.NAK_INVALID_REQUEST, wc: WcStatus.LOC_LEN_ERR },
  MALFORMED_WQE: { syndrome: Aeth.NAK_REM_OP_ERR, wc: WcStatus.LOC_QP_OP_ERR },
} as const;
type ErrKind = (typeof Err)[keyof typeof Err];

export function receive(dev: SoftDevice, qp: Qp, p: Pkt): void {
  const st = qp.state;
  if (st !== QpState.RTR && st !== QpState.RTS && st !== QpState.SQD && st !== QpState.SQE) return;
  // rxe's check_length: a packet carrying more than the path MTU (the port's, for UD) is no request a requester
  // sends; it is dropped and counted, before it can touch a receive buffer
  if (p.payLen > (qp.type === QpType.UD ? dev.mtuBytes : qp.mtu)) {
    dev.countDrop('payload over the path MTU');
    return;
  }
  if (qp.type === QpType.UD) return receiveUd(dev, qp, p);
  const m = p.mask;
  const rc = qp.type === QpType.RC;

  const d = psnDiff(p.psn, qp.resp.psn);
  // IBA o11-5.1.1: the first request a connected QP takes while still in RTR establishes communication
  // (a passive side that missed the CM's RTU learns it here); UD QPs never report it
  if (st === QpState.RTR && !qp.commEst && (d === 0 || !rc)) {
    qp.commEst = true;
    qp.raise(EventType.COMM_EST);
  }
  if (rc) {
    if (d > 0) {
      // a gap: one PSN sequence error NAK per gap (Class B), then drop until the requester goes back;
      // rxe counts out_of_seq_request once per NAK, not per dropped packet
      if (!qp.resp.sentPsnNak) {
        dev.counters.out_of_seq_request++;
        qp.resp.sentPsnNak = true;
        sendAck(dev, qp, Aeth.NAK_PSN_SEQ_ERROR, qp.resp.psn);
      }
      return;
    }
    if (d < 0) {
      dev.counters.duplicate_request++;
      duplicate(dev, qp, p);
      return;
    }
    qp.resp.sentPsnNak = false;
  } else if (d !== 0) {
    // UC: packets were lost. The message in progress is gone (its receive WQE stays, for the next SEND);
    // a FIRST or ONLY starts the next message afresh, anything else is the rest of a lost one and is dropped below
    qp.resp.inMsg = 0;
    qp.resp.dropMsg = false;
    qp.resp.psn = p.psn;
  }

  // opcode sequence: inside a message only its MIDDLE/LAST may come
  const kind = m & (M.SEND | M.WRITE);
  if (qp.resp.inMsg) {
    if (m & M.FIRST || (m & (M.SEND | M.WRITE)) !== qp.resp.inMsg) {
      if (rc) return error(dev, qp, p, Err.INVALID);
      qp.resp.inMsg = 0;
      qp.resp.dropMsg = false;
      if (!(m & M.FIRST)) {
        qp.resp.psn = (p.psn + 1) & PSN_MASK;
        return;
      }
    }
  } else if (!(m & M.FIRST)) {
    if (rc) return error(dev, qp, p, Err.INVALID);
    qp.resp.psn = (p.psn + 1) & PSN_MASK; // UC: a message whose start we lost
    return;
  }

  // QP access rights
  const need = m & M.WRITE ? Access.REMOTE_WRITE : m & M.READ ? Access.REMOTE_READ : m & M.ATOMIC ? Access.REMOTE_ATOMIC : 0;
  if (need && !(qp.attr.accessFlags & need)) {
    if (rc) return error(dev, qp, p, Err.INVALID);
    return dropUc(qp, p);
  }

  if (m & M.READ) return read(dev, qp, p, d);
  if (m & M.ATOMIC) return atomic(dev, qp, p);

  // a receive WQE for SEND (first packet) or RDMA WRITE with immediate (last packet)
  if (m & M.RWR && !qp.resp.wqe) {
    const wqe = takeRecv(qp);
    if (!wqe) {
      if (rc) {
        dev.counters.send_rnr_err++;
        sendAck(dev, qp, Aeth.RNR_NAK | (qp.attr.minRnrTimer & 0x1f), p.psn);
      } else dropUc(qp, p);
      return;
    }
    if (wqe === BAD) return error(dev, qp, p, Err.MALFORMED_WQE);
  }
  // a SEND starts at the top of its receive buffer, even one a broken UC message had begun to fill
  if (m & M.SEND && m & M.FIRST) qp.resp.offset = 0;

  if (m & M.RETH) {
    const mr = checkRkey(dev, qp, p.rkey, p.va, p.dmaLen, Access.REMOTE_WRITE);
    if (!mr) {
      if (rc) return error(dev, qp, p, Err.RKEY);
      return dropUc(qp, p);
    }
    qp.resp.mr = mr;
    qp.resp.va = p.va;
    qp.resp.resid = p.dmaLen;
    qp.resp.writeLen = p.dmaLen;
  }

  if (qp.resp.dropMsg) {
    advance(qp, p, kind);
    return;
  }

  if (m & M.SEND) {
    const w = qp.resp.wqe!;
    if (qp.resp.offset + p.payLen > w.length) return error(dev, qp, p, Err.LENGTH);
    if (!scatter(dev, qp, w, qp.resp.offset, p.payload, p.payOff, p.payLen)) return error(dev, qp, p, Err.MALFORMED_WQE);
    qp.resp.offset += p.payLen;
  } else if (m & M.WRITE) {
    if (p.payLen > qp.resp.resid) return error(dev, qp, p, Err.LENGTH);
    const mr = qp.resp.mr;
    if (p.payLen > 0) {
      if (!mr || !mr.valid) return error(dev, qp, p, Err.RKEY);
      mr.mem.set(p.payload.subarray(p.payOff, p.payOff + p.payLen), qp.resp.va - mr.iova);
    }
    qp.resp.va += p.payLen;
    qp.resp.resid -= p.payLen;
    if (m & M.LAST && qp.resp.resid !== 0) return error(dev, qp, p, Err.LENGTH);
  }

  advance(qp, p, kind);
  if (m & M.LAST) {
    qp.resp.msn = (qp.resp.msn + 1) & PSN_MASK;
    if (m & M.COMP) {
      const w = qp.resp.wqe!;
      qp.resp.wqe = null;
      const isWrite = (m & M.WRITE) !== 0;
      const flags = m & M.IMM ? WcFlags.WITH_IMM : 0;
      const len = isWrite ? qp.resp.writeLen : qp.resp.offset;
      if (!postRecvWc(qp, w.wrId, WcStatus.SUCCESS, isWrite ? WcOpcode.RECV_RDMA_WITH_IMM : WcOpcode.RECV, len, m & M.IMM ? p.imm : 0, p.srcQpn, p.se, flags)) {
        // rxe's RESPST_ERR_CQ_OVERFLOW: the message is not acknowledged (its sender must not see SUCCESS for what
        // no one was told of), and the QP goes to ERR
        toError(dev, qp, 'receive CQ overrun (CQ_ERR)');
        return;
      }
      dev.counters.rdma_recvs++;
    }
  }
  if (rc && p.ackReq) sendAck(dev, qp, Aeth.ACK | Aeth.CREDITS_INVALID, p.psn);
}

function advance(qp: Qp, p: Pkt, kind: number): void {
  qp.resp.psn = (p.psn + 1) & PSN_MASK;
  qp.resp.inMsg = p.mask & M.LAST ? 0 : kind;
  if (p.mask & M.LAST) qp.resp.dropMsg = false;
}

function dropUc(qp: Qp, p: Pkt): void {
  qp.resp.dropMsg = !(p.mask & M.LAST);
  qp.resp.inMsg = p.mask & M.LAST ? 0 : p.mask & (M.SEND | M.WRITE);
  qp.resp.psn = (p.psn + 1) & PSN_MASK;
}

const BAD = {} as RecvWqe;

/** The next receive WQE from the SRQ or the RQ; null if none is posted, BAD if it cannot be used. */
function takeRecv(qp: Qp): RecvWqe | null {
  const ring = qp.srq ? qp.srq.ring : qp.rq;
  if (!ring || ring.count() === 0) return null;
  const ok = ring.take(qp.recvWqe);
  if (qp.srq) qp.srq.checkLimit();
  qp.resp.wqe = qp.recvWqe;
  if (!ok) {
    qp.resp.wqe = null;
    postRecvWc(qp, qp.recvWqe.wrId, WcStatus.LOC_QP_OP_ERR, WcOpcode.RECV, 0, 0, 0, false);
    return BAD;
  }
  return qp.recvWqe;
}

/** Places len bytes into a receive WQE's SGEs at byte `off`. False on a bad lkey / PD / access / bounds. */
function scatter(dev: SoftDevice, qp: Qp, w: RecvWqe, off: number, src: Uint8Array, srcOff: number, len: number): boolean {
  return walkSgl(w.numSge, w.len, off, len, (i, sgeOff, n, done) => {
    const mr = dev.lookupMr(w.lkey[i]!);
    const va = w.addr[i]! + sgeOff;
    if (!mr || mr.pd !== qp.pd || !(mr.access & Access.LOCAL_WRITE) || !mr.contains(va, n)) return false;
    mr.mem.set(src.subarray(srcOff + done, srcOff + done + n), va - mr.iova);
    return true;
  });
}

/** rkey → MR if it is valid, in the QP's PD, allows `need`, and covers [va, va+len). */
function checkRkey(dev: SoftDevice, qp: Qp, rkey: number, va: number, len: number, need: number): Mr | null {
  if (len === 0) return dev.lookupMr(rkey) ?? ZERO_LEN_MR(qp);
  const mr = dev.lookupMr(rkey);
  if (!mr || mr.pd !== qp.pd || (mr.access & need) !== need || !mr.contains(va, len)) return null;
  return mr;
}
// A zero-length RDMA op needs no valid rkey (IBA 9.4.x; rxe skips the check too)
const ZERO_LEN_MR = (_qp: Qp): Mr | null => ({ valid: true } as unknown as Mr);

function read(dev: SoftDevice, qp: Qp, p: Pkt, _d: number): void {
  if (qp.attr.maxDestRdAtomic === 0) return error(dev, qp, p, Err.INVALID);
  const mr = checkRkey(dev, qp, p.rkey, p.va, p.dmaLen, Access.REMOTE_READ);
  if (!mr) return error(dev, qp, p, Err.RKEY);
  const n = Math.max(1, Math.ceil(p.dmaLen / qp.mtu));
  const r = newRes(qp);
  r.atomic = false;
  r.firstPsn = p.psn;
  r.lastPsn = (p.psn + n - 1) & PSN_MASK;
  r.va = p.va;
  r.rkey = p.rkey;
  r.length = p.dmaLen;
  qp.resp.msn = (qp.resp.msn + 1) & PSN_MASK;
  qp.resp.psn = (r.lastPsn + 1) & PSN_MASK;
  sendReadResponses(dev, qp, p, r, p.psn);
}

/**
 * Sends the read response packets of resource r from PSN `from` on (a duplicate may ask for the tail only).
 * A response of more than READ_BURST packets goes out READ_BURST packets per turn of the event loop, through
 * the QP's output queue (one 4 MiB READ at MTU 256 is 16,384 packets: made all at once, a few READs in flight
 * held hundreds of MB of packets and the daemon for as long as they took).
 */
function sendReadResponses(dev: SoftDevice, qp: Qp, req: Pkt, r: RespRes, from: number): void {
  const mtu = qp.mtu;
  const n = Math.max(1, Math.ceil(r.length / mtu));
  const mr = r.length > 0 ? dev.lookupMr(r.rkey) : null;
  if (r.length > 0 && (!mr || mr.pd !== qp.pd || !mr.contains(r.va, r.length))) return error(dev, qp, req, Err.RKEY);
  const out: ReadOut = { kind: 'read', firstPsn: r.firstPsn, va: r.va, length: r.length, n, next: psnDiff(from, r.firstPsn), msn: qp.resp.msn, iova: mr?.iova ?? 0, mem: mr?.mem ?? null, map: mr?.mapping ?? null, mtu };
  const q = qp.resp.outq;
  if (q.length === 0 && out.n - out.next <= READ_BURST) {
    while (out.next < out.n) dev.xmit(readResponse(dev, qp, out));
    return;
  }
  q.push(out);
  schedulePump(dev, qp);
}

/** The next packet of a read response. */
function readResponse(dev: SoftDevice, qp: Qp, o: ReadOut): Pkt {
  const i = o.next++;
  const n = o.n;
  const p = dev.fabric.pool.get();
  p.opcode = Transport.RC | (n === 1 ? Op.RDMA_READ_RESPONSE_ONLY : i === 0 ? Op.RDMA_READ_RESPONSE_FIRST : i === n - 1 ? Op.RDMA_READ_RESPONSE_LAST : Op.RDMA_READ_RESPONSE_MIDDLE);
  fillReply(dev, qp, p);
  p.psn = (o.firstPsn + i) & PSN_MASK;
  p.syndrome = Aeth.ACK | Aeth.CREDITS_INVALID;
  p.msn = o.msn;
  const off = i * o.mtu;
  const len = Math.min(o.mtu, o.length - off);
  if (o.mem && len > 0) {
    p.payload = o.mem;
    p.payMap = o.map;
    p.payOff = o.va - o.iova + off;
    p.payLen = len;
    p.padCnt = (4 - (len & 3)) & 3;
  }
  return p;
}

/** Responses go in PSN order: while a long read response is going out, later ACKs and atomic responses queue behind it. */
function respXmit(dev: SoftDevice, qp: Qp, p: Pkt): void {
  if (qp.resp.outq.length === 0) dev.xmit(p);
  else qp.resp.outq.push(p);
}

function schedulePump(dev: SoftDevice, qp: Qp): void {
  if (qp.resp.pumping) return;
  qp.resp.pumping = true;
  setImmediate(() => {
    qp.resp.pumping = false;
    dev.guard(qp, () => pump(dev, qp));
  });
}

/** One turn's worth (READ_BURST packets) of the QP's queued responses. */
function pump(dev: SoftDevice, qp: Qp): void {
  const q = qp.resp.outq;
  if (qp.state === QpState.ERR || qp.state === QpState.RESET) {
    q.length = 0; // an errored or reset responder answers nothing more
    return;
  }
  let budget = READ_BURST;
  while (q.length > 0 && budget > 0) {
    const head = q[0]!;
    if ('kind' in head) {
      // the MR went away (or changed its translation) under a response still going out: the rest is not sent,
      // the requester retries or times out, as after any lost packets
      if (head.map?.unmapped) head.next = head.n;
      while (head.next < head.n && budget-- > 0) dev.xmit(readResponse(dev, qp, head));
      if (head.next < head.n) break;
    } else {
      dev.xmit(head);
      budget--;
    }
    q.shift();
  }
  if (q.length > 0) schedulePump(dev, qp);
}

function atomic(dev: SoftDevice, qp: Qp, p: Pkt): void {
  if (qp.attr.maxDestRdAtomic === 0) return error(dev, qp, p, Err.INVALID);
  const mr = checkRkey(dev, qp, p.rkey, p.va, 8, Access.REMOTE_ATOMIC);
  if (!mr) return error(dev, qp, p, Err.RKEY);
  if (p.va % 8 !== 0) return error(dev, qp, p, Err.INVALID); // rxe: misaligned atomic → invalid request
  const off = p.va - mr.iova;
  const mem = mr.mem;
  let orig: bigint;
  const isCas = (p.opcode & 0x1f) === Op.COMPARE_SWAP;
  if ((mem.byteOffset + off) % 8 === 0) {
    // a real atomic on the shared page: the client may be touching it from its own CPU
    const a = new BigUint64Array(mem.buffer, mem.byteOffset + off, 1);
    orig = isCas ? Atomics.compareExchange(a, 0, p.compare, p.swapAdd) : Atomics.add(a, 0, p.swapAdd);
  } else {
    const dv = new DataView(mem.buffer, mem.byteOffset + off, 8);
    orig = dv.getBigUint64(0, true);
    const next = isCas ? (orig === p.compare ? p.swapAdd : orig) : BigInt.asUintN(64, orig + p.swapAdd);
    dv.setBigUint64(0, next, true);
  }
  const r = newRes(qp);
  r.atomic = true;
  r.firstPsn = r.lastPsn = p.psn;
  r.orig = orig;
  qp.resp.msn = (qp.resp.msn + 1) & PSN_MASK;
  qp.resp.psn = (p.psn + 1) & PSN_MASK;
  sendAtomicAck(dev, qp, r);
}

function sendAtomicAck(dev: SoftDevice, qp: Qp, r: RespRes): void {
  const a = dev.fabric.pool.get();
  a.opcode = Transport.RC | Op.ATOMIC_ACKNOWLEDGE;
  fillReply(dev, qp, a);
  a.psn = r.firstPsn;
  a.syndrome = Aeth.ACK | Aeth.CREDITS_INVALID;
  a.msn = qp.resp.msn;
  a.orig = r.orig;
  respXmit(dev, qp, a);
}

/** A new responder resource; the oldest is replaced when all max_dest_rd_atomic are in use (rxe does the same). */
function newRes(qp: Qp): RespRes {
  const max = Math.max(1, qp.attr.maxDestRdAtomic);
  const res = qp.resp.res;
  if (res.length < max) {
    const r: RespRes = { valid: true, atomic: false, firstPsn: 0, lastPsn: 0, va: 0, rkey: 0, length: 0, orig: 0n };
    res.push(r);
    return r;
  }
  const r = res[qp.resp.resHead % res.length]!;
  qp.resp.resHead = (qp.resp.resHead + 1) % res.length;
  r.valid = true;
  return r;
}

function duplicate(dev: SoftDevice, qp: Qp, p: Pkt): void {
  const m = p.mask;
  if (m & (M.READ | M.ATOMIC)) {
    for (const r of qp.resp.res) {
      if (!r.valid) continue;
      if (psnDiff(p.psn, r.firstPsn) >= 0 && psnDiff(p.psn, r.lastPsn) <= 0) {
        if (r.atomic) sendAtomicAck(dev, qp, r);
        else sendReadResponses(dev, qp, p, r, p.psn);
        return;
      }
    }
    return; // not in the resources any more: drop, the requester will time out
  }
  // SEND / WRITE: already done; tell the requester how far we are
  if (p.ackReq) sendAck(dev, qp, Aeth.ACK | Aeth.CREDITS_INVALID, (qp.resp.psn - 1) & PSN_MASK);
}

function fillReply(dev: SoftDevice, qp: Qp, p: Pkt): void {
  p.destQpn = qp.attr.destQpn;
  p.srcQpn = qp.qpn;
  p.srcPort = qp.srcPort;
  p.dstGid = qp.attr.path.dgid;
  p.srcGid = dev.gids[0]!;
}

function sendAck(dev: SoftDevice, qp: Qp, syndrome: number, psn: number): void {
  const a = dev.fabric.pool.get();
  a.opcode = Transport.RC | Op.ACKNOWLEDGE;
  fillReply(dev, qp, a);
  a.psn = psn & PSN_MASK;
  a.syndrome = syndrome;
  a.msn = qp.resp.msn;
  respXmit(dev, qp, a);
}

/** Class A/C errors on RC (rxe do_class_ac_error): NAK the requester, complete the receive in error, QP to ERR. */
function error(dev: SoftDevice, qp: Qp, p: Pkt, e: ErrKind): void {
  sendAck(dev, qp, e.syndrome, p.psn);
  const was = qp.state;
  qp.state = QpState.ERR; // before the error completion shows, as on the send side
  if (qp.resp.wqe) {
    postRecvWc(qp, qp.resp.wqe.wrId, e.wc, WcOpcode.RECV, 0, 0, p.srcQpn, false);
    qp.resp.wqe = null;
  }
  toError(dev, qp, `responder error (receive completion ${wcStatusName(e.wc)})`, was);
}

function receiveUd(dev: SoftDevice, qp: Qp, p: Pkt): void {
  if (p.qkey !== qp.attr.qkey) return; // Q_Key violation: silently dropped
  if (!(p.mask & M.SEND)) return;
  const w = takeRecv(qp);
  if (!w || w === BAD) return;
  qp.resp.wqe = null;
  const total = 40 + p.payLen;
  if (total > w.length) {
    postRecvWc(qp, w.wrId, WcStatus.LOC_LEN_ERR, WcOpcode.RECV, 0, 0, p.srcQpn, false);
    return;
  }
  const grh = makeGrh(p);
  if (!scatter(dev, qp, w, 0, grh, 0, 40) || !scatter(dev, qp, w, 40, p.payload, p.payOff, p.payLen)) {
    postRecvWc(qp, w.wrId, WcStatus.LOC_PROT_ERR, WcOpcode.RECV, 0, 0, p.srcQpn, false);
    return;
  }
  const imm = (p.mask & M.IMM) !== 0;
  if (!postRecvWc(qp, w.wrId, WcStatus.SUCCESS, WcOpcode.RECV, total, imm ? p.imm : 0, p.srcQpn, p.se, WcFlags.GRH | (imm ? WcFlags.WITH_IMM : 0))) {
    toError(dev, qp, 'receive CQ overrun (CQ_ERR)');
    return;
  }
  dev.counters.rdma_recvs++;
}

const grhBuf = new Uint8Array(40);
const grhDv = new DataView(grhBuf.buffer);

/**
 * The 40 bytes a UD receiver finds before the payload. For an IPv4 GID
 * (::ffff:a.b.c.d) rxe puts the IPv4 header in the last 20 bytes; for IPv6
 * the IPv6 header fills all 40.
 */
function makeGrh(p: Pkt): Uint8Array {
  grhBuf.fill(0);
  const s = p.srcGid;
  const d = p.dstGid;
  const v4 = s.length === 16 && s[10] === 0xff && s[11] === 0xff && s.subarray(0, 10).every((x) => x === 0);
  const udpLen = 8 + 12 + 8 + (p.mask & M.IMM ? 4 : 0) + p.payLen + p.padCnt + 4;
  if (v4) {
    grhDv.setUint8(20, 0x45);
    grhDv.setUint16(22, 20 + udpLen);
    grhDv.setUint16(26, 0x4000);
    grhDv.setUint8(28, 64);
    grhDv.setUint8(29, 17);
    grhBuf.set(s.subarray(12, 16), 32);
    grhBuf.set(d.subarray(12, 16), 36);
    let sum = 0;
    for (let i = 20; i < 40; i += 2) sum += grhDv.getUint16(i);
    while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
    grhDv.setUint16(30, ~sum & 0xffff);
  } else {
    grhDv.setUint32(0, 0x60000000);
    grhDv.setUint16(4, udpLen);
    grhDv.setUint8(6, 17);
    grhDv.setUint8(7, 64);
    grhBuf.set(s, 8);
    grhBuf.set(d, 24);
  }
  return grhBuf;
}

