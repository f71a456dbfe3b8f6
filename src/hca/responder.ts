/**
 * The responder (rxe_resp.c): checks each request packet (QP state, PSN,
 * opcode sequence, QP access, rkey, bounds), executes it (places SEND data
 * in a receive WQE, writes, reads, atomics), answers (ACK, read response,
 * atomic acknowledge, RNR NAK, NAK with the IBA error class) and completes
 * receive WQEs. Duplicates are re-ACKed; duplicate READs and ATOMICs are
 * answered from the responder resources, never executed twice.
 */
import { Access, EventType, QpState, QpType, WcFlags, WcOpcode, WcStatus, wcStatusName } from '../abi/enums.js';
import { postRecvWc, toError } from './completion.js';
import { invalidateRkey, isMwKey, rkeyVa, windowMr } from './mw.js';
import { SglCursor, type Mr } from './objects.js';
import type { RecvWqe } from '../abi/wqe.js';
import { copyBytes } from '../abi/ring.js';
import { makeGrh } from './codec.js';
import { Aeth, M, Op, PSN_MASK, psnDiff, Transport } from './opcodes.js';
import { pktBuffer, type Pkt } from './packet.js';
import { atomic64 } from './mr-memory.js';
import type { Qp, ReadOut, RespRes } from './qp.js';
import { Task } from './scheduler.js';
import { tracer } from './trace.js';

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

export const RespState = {
  /** does the QP take requests, and does the packet fit its MTU */
  CHECK_STATE: 0,
  /** in sequence, a duplicate, or after a gap */
  CHECK_PSN: 1,
  /** inside a message only its MIDDLE/LAST may come */
  CHECK_OP_SEQ: 2,
  /** does the QP allow what the request does (its access flags) */
  CHECK_OP_VALID: 3,
  /** a receive WQE for a SEND (first packet) or a WRITE with immediate (last packet) */
  GET_RECV_WQE: 4,
  /** the RETH's rkey, PD, access and bounds */
  CHECK_RKEY: 5,
  /** place the payload: into the receive WQE, or at the WRITE's address */
  EXECUTE: 6,
  /** the message's last packet: its receive completion */
  COMPLETE: 7,
  /** ACK if asked */
  ACKNOWLEDGE: 8,
  /** an RDMA READ request: answer it from the MR */
  READ: 9,
  /** an atomic or ATOMIC_WRITE: execute it once, answer from the responder resources after */
  ATOMIC: 10,
  /** an old PSN: answer again, never execute again */
  DUPLICATE: 11,
  /** RC: no receive WQE posted: RNR NAK */
  RNR: 12,
  /** RC: NAK with run$.err's class, receive completion in error, QP to ERR */
  ERROR: 13,
  /** UC: the rest of this message is dropped */
  DROP: 14,
  /** a UD SEND */
  UD: 15,
  EXIT: 16,
} as const;
export type RespState = (typeof RespState)[keyof typeof RespState];
const NAMES = Object.keys(RespState);

/** What one packet's run carries from state to state; `nak`: the PSN an error NAKs when not the packet's own (-1). */
const run$ = { d: 0, kind: 0, err: Err.INVALID as ErrKind, nak: -1 };

function fail(e: ErrKind): RespState {
  run$.err = e;
  return RespState.ERROR;
}

/**
 * Before the responder sends anything (an ACK, a NAK, a read or atomic response): what it placed in a client's
 * own memory and holds in its write-behind is written. Whatever tells the requester how far the responder has
 * got then never runs ahead of the bytes: an ACK that retires the requester's WQE (whose completion may tell
 * its client to tell ours) follows them into memory. True when nothing was held or it was written; false when
 * it could not be written, with run$ set for ERROR: the error of the message in progress (a WRITE's: remote
 * access, rxe's RKEY_VIOLATION; a SEND's: rxe's MALFORMED_WQE), NAKing the first PSN whose bytes it held (one
 * of that message's: no ACK has gone past it).
 */
function settled(qp: Qp): boolean {
  const st = qp.staging;
  if (st === null || st.recv.len === 0 || st.recv.flush()) return true;
  run$.err = (qp.resp.inMsg || run$.kind) & M.SEND ? Err.MALFORMED_WQE : Err.RKEY;
  run$.nak = st.recv.psn;
  return false;
}

function checkState(qp: Qp, p: Pkt): RespState {
  const st = qp.state;
  if (st !== QpState.RTR && st !== QpState.RTS && st !== QpState.SQD && st !== QpState.SQE) return RespState.EXIT;
  // rxe's check_length: a packet carrying more than the path MTU (the port's, for UD) is no request a requester
  // sends; it is dropped and counted, before it can touch a receive buffer
  if (p.payLen > (qp.type === QpType.UD ? qp.dev.mtuBytes : qp.mtu * p.span)) {
    qp.dev.countDrop('payload over the path MTU');
    return RespState.EXIT;
  }
  return qp.type === QpType.UD ? RespState.UD : RespState.CHECK_PSN;
}

function checkPsn(qp: Qp, p: Pkt): RespState {
  const rc = qp.type === QpType.RC;
  const d = (run$.d = psnDiff(p.psn, qp.resp.psn));
  // IBA o11-5.1.1: the first request a connected QP takes while still in RTR establishes communication
  // (a passive side that missed the CM's RTU learns it here)
  if (qp.state === QpState.RTR && !qp.commEst && (d === 0 || !rc)) {
    qp.commEst = true;
    qp.raise(EventType.COMM_EST);
  }
  if (rc) {
    if (d > 0) {
      // a gap: one PSN sequence error NAK per gap (Class B), then drop until the requester goes back;
      // rxe counts out_of_seq_request once per NAK, not per dropped packet
      if (!qp.resp.sentPsnNak) {
        if (!settled(qp)) return RespState.ERROR;
        qp.dev.counters.out_of_seq_request++;
        qp.resp.sentPsnNak = true;
        sendAck(qp, Aeth.NAK_PSN_SEQ_ERROR, qp.resp.psn);
      }
      return RespState.EXIT;
    }
    if (d < 0) {
      qp.dev.counters.duplicate_request++;
      return RespState.DUPLICATE;
    }
    qp.resp.sentPsnNak = false;
  } else if (d !== 0) {
    // UC: packets were lost. The message in progress is gone (its receive WQE stays, for the next SEND);
    // a FIRST or ONLY starts the next message afresh, anything else is the rest of a lost one and is dropped next
    abandon(qp);
    qp.resp.inMsg = 0;
    qp.resp.dropMsg = false;
    qp.resp.psn = p.psn;
  }
  return RespState.CHECK_OP_SEQ;
}

function checkOpSeq(qp: Qp, p: Pkt): RespState {
  const m = p.mask;
  const rc = qp.type === QpType.RC;
  run$.kind = m & (M.SEND | M.WRITE);
  if (qp.resp.inMsg) {
    if (m & M.FIRST || run$.kind !== qp.resp.inMsg) {
      if (rc) return fail(Err.INVALID);
      abandon(qp);
      qp.resp.inMsg = 0;
      qp.resp.dropMsg = false;
      if (!(m & M.FIRST)) {
        qp.resp.psn = (p.psn + p.span) & PSN_MASK;
        return RespState.EXIT;
      }
    }
  } else if (!(m & M.FIRST)) {
    if (rc) return fail(Err.INVALID);
    qp.resp.psn = (p.psn + p.span) & PSN_MASK; // UC: a message whose start we lost
    return RespState.EXIT;
  }
  return RespState.CHECK_OP_VALID;
}

function checkOpValid(qp: Qp, p: Pkt): RespState {
  const m = p.mask;
  const need = m & (M.WRITE | M.ATOMIC_WRITE) ? Access.REMOTE_WRITE : m & M.READ ? Access.REMOTE_READ : m & M.ATOMIC ? Access.REMOTE_ATOMIC : 0;
  if (need && !(qp.attr.accessFlags & need)) return qp.type === QpType.RC ? fail(Err.INVALID) : RespState.DROP;
  if (m & M.READ) return RespState.READ;
  if (m & (M.ATOMIC | M.ATOMIC_WRITE)) return RespState.ATOMIC;
  return RespState.GET_RECV_WQE;
}

function getRecvWqe(qp: Qp, p: Pkt): RespState {
  if (p.mask & M.RWR && !qp.resp.wqe) {
    const wqe = takeRecv(qp);
    if (!wqe) return qp.type === QpType.RC ? RespState.RNR : RespState.DROP;
    if (wqe === BAD) return fail(Err.MALFORMED_WQE);
  }
  // a SEND starts at the top of its receive buffer, even one a broken UC message had begun to fill
  if (p.mask & M.SEND && p.mask & M.FIRST) qp.resp.offset = 0;
  return RespState.CHECK_RKEY;
}

function checkRkeyState(qp: Qp, p: Pkt): RespState {
  if (p.mask & M.RETH) {
    const mr = checkRkey(qp, p.rkey, p.va, p.dmaLen, Access.REMOTE_WRITE);
    if (!mr) return qp.type === QpType.RC ? fail(Err.RKEY) : RespState.DROP;
    qp.resp.mr = mr === ZERO_LEN ? null : mr;
    qp.resp.va = mr === ZERO_LEN ? p.va : rkeyVa.va;
    qp.resp.resid = p.dmaLen;
    qp.resp.writeLen = p.dmaLen;
  }
  if (qp.resp.dropMsg) {
    advance(qp, p, run$.kind);
    return RespState.EXIT;
  }
  return RespState.EXECUTE;
}

function execute(qp: Qp, p: Pkt): RespState {
  const m = p.mask;
  if (m & M.SEND) {
    const w = qp.resp.wqe!;
    if (qp.resp.offset + p.payLen > w.length) return fail(Err.LENGTH);
    if (!scatter(qp, w, qp.resp.offset, p.payload, p.payOff, p.payLen, p)) return fail(Err.MALFORMED_WQE);
    qp.resp.offset += p.payLen;
    // SEND_WITH_INV's last packet: its key is invalidated before the message completes (rxe: ERR_INVALIDATE_RKEY)
    if (m & M.IETH) {
      const why = invalidateRkey(qp, p.rkey, true);
      if (why !== null) {
        qp.dev.countDrop(`SEND_WITH_INV: ${why}`);
        return fail(Err.INVALID);
      }
    }
  } else if (m & M.WRITE) {
    if (p.payLen > qp.resp.resid) return fail(Err.LENGTH);
    const mr = qp.resp.mr;
    if (p.payLen > 0) {
      if (!mr || !mr.valid) return fail(Err.RKEY);
      const v = mr.mem.view;
      // the client's memory that could not be written: as a bad rkey (rxe: a failed rxe_mr_copy is RKEY_VIOLATION)
      if (v !== null) v.set(p.payload.subarray(p.payOff, p.payOff + p.payLen), qp.resp.va - mr.iova);
      else if (!qp.stage.recv.write(mr.mem, qp.resp.va - mr.iova, p.payload, p.payOff, p.payLen, p.psn, (m & M.LAST) !== 0)) return fail(Err.RKEY);
    }
    qp.resp.va += p.payLen;
    qp.resp.resid -= p.payLen;
    if (m & M.LAST && qp.resp.resid !== 0) return fail(Err.LENGTH);
  }
  // the message's last packet: all of it is in memory before its completion or ACK (write() wrote it with its
  // last bytes; this is for a last packet that carried none)
  if (m & M.LAST && !settled(qp)) return RespState.ERROR;
  advance(qp, p, run$.kind);
  return m & M.LAST ? RespState.COMPLETE : RespState.ACKNOWLEDGE;
}

function complete(qp: Qp, p: Pkt): RespState {
  const m = p.mask;
  qp.resp.msn = (qp.resp.msn + 1) & PSN_MASK;
  if (!(m & M.COMP)) return RespState.ACKNOWLEDGE;
  const w = qp.resp.wqe!;
  qp.resp.wqe = null;
  const isWrite = (m & M.WRITE) !== 0;
  // ex is imm_data or, with IBV_WC_WITH_INV, the key the message invalidated
  const flags = m & M.IMM ? WcFlags.WITH_IMM : m & M.IETH ? WcFlags.WITH_INV : 0;
  const ex = m & M.IMM ? p.imm : m & M.IETH ? p.rkey : 0;
  const len = isWrite ? qp.resp.writeLen : qp.resp.offset;
  awaitReply(qp);
  if (!postRecvWc(qp, w, WcStatus.SUCCESS, isWrite ? WcOpcode.RECV_RDMA_WITH_IMM : WcOpcode.RECV, len, ex, p.srcQpn, p.se, flags)) {
    // rxe's RESPST_ERR_CQ_OVERFLOW: the message is not acknowledged (its sender must not see SUCCESS for what
    // no one was told of), and the QP goes to ERR
    toError(qp, 'receive CQ overrun (CQ_ERR)');
    return RespState.EXIT;
  }
  qp.dev.counters.rdma_recvs++;
  return RespState.ACKNOWLEDGE;
}

/**
 * ACK coalescing: an ACK names the last PSN it answers and covers every one before it (IBA 9.7.5.1.x), so
 * while this QP's previous ACK still waits in the fabric (requests that arrived together, in one receive batch
 * or one drain) and nothing else was answered after it, that ACK is moved on to this PSN instead of a second
 * one being made. Requests that arrive one at a time are each ACKed as before.
 */
function acknowledge(qp: Qp, p: Pkt): RespState {
  if (qp.type !== QpType.RC || !p.ackReq) return RespState.EXIT;
  if (!settled(qp)) return RespState.ERROR;
  const r = qp.resp;
  const last = r.lastAck;
  // a span answers for its last PSN
  const psn = (p.psn + p.span - 1) & PSN_MASK;
  if (last !== null && last.life === r.lastAckLife && r.outq.length === 0 && qp.dev.stillQueued(last, r.lastAckAt)) {
    last.psn = psn;
    last.msn = r.msn;
    return RespState.EXIT;
  }
  const a = ackPkt(qp, Aeth.ACK | Aeth.CREDITS_INVALID, psn);
  if (r.outq.length === 0) {
    r.lastAckLife = a.life;
    r.lastAckAt = qp.dev.xmit(a);
    r.lastAck = r.lastAckAt >= 0 ? a : null;
  } else respXmit(qp, a);
  return RespState.EXIT;
}

function readState(qp: Qp, p: Pkt): RespState {
  read(qp, p);
  return RespState.EXIT;
}

function atomicState(qp: Qp, p: Pkt): RespState {
  if (p.mask & M.ATOMIC_WRITE) atomicWrite(qp, p);
  else atomic(qp, p);
  return RespState.EXIT;
}

function duplicateState(qp: Qp, p: Pkt): RespState {
  duplicate(qp, p);
  return RespState.EXIT;
}

function rnr(qp: Qp, p: Pkt): RespState {
  if (!settled(qp)) return RespState.ERROR;
  qp.dev.counters.send_rnr_err++;
  sendAck(qp, Aeth.RNR_NAK | (qp.attr.minRnrTimer & 0x1f), p.psn);
  return RespState.EXIT;
}

function errorState(qp: Qp, p: Pkt): RespState {
  error(qp, run$.nak < 0 ? p : { psn: run$.nak, srcQpn: p.srcQpn }, run$.err);
  return RespState.EXIT;
}

function drop(qp: Qp, p: Pkt): RespState {
  dropUc(qp, p);
  return RespState.EXIT;
}

function ud(qp: Qp, p: Pkt): RespState {
  receiveUd(qp, p);
  return RespState.EXIT;
}

/** A request packet for one of our QPs. */
export function receive(qp: Qp, p: Pkt): void {
  let s: RespState = RespState.CHECK_STATE;
  run$.nak = -1;
  const hook = tracer.hook;
  // a request in sequence takes each check's next state in turn: walked as straight-line calls (a state
  // variable through the loop below cost ~70 ns a packet); the first state off that path continues in the loop
  if (!hook && (s = checkState(qp, p)) === RespState.CHECK_PSN && (s = checkPsn(qp, p)) === RespState.CHECK_OP_SEQ &&
    (s = checkOpSeq(qp, p)) === RespState.CHECK_OP_VALID && (s = checkOpValid(qp, p)) === RespState.GET_RECV_WQE &&
    (s = getRecvWqe(qp, p)) === RespState.CHECK_RKEY && (s = checkRkeyState(qp, p)) === RespState.EXECUTE &&
    (s = execute(qp, p)) === RespState.ACKNOWLEDGE) s = acknowledge(qp, p);
  while (s !== RespState.EXIT) {
    if (hook) hook('responder', qp.qpn, NAMES[s]!);
    // each state's function called by name, so every call site stays monomorphic (and inlinable)
    switch (s) {
      case RespState.CHECK_STATE: s = checkState(qp, p); break;
      case RespState.CHECK_PSN: s = checkPsn(qp, p); break;
      case RespState.CHECK_OP_SEQ: s = checkOpSeq(qp, p); break;
      case RespState.CHECK_OP_VALID: s = checkOpValid(qp, p); break;
      case RespState.GET_RECV_WQE: s = getRecvWqe(qp, p); break;
      case RespState.CHECK_RKEY: s = checkRkeyState(qp, p); break;
      case RespState.EXECUTE: s = execute(qp, p); break;
      case RespState.COMPLETE: s = complete(qp, p); break;
      case RespState.ACKNOWLEDGE: s = acknowledge(qp, p); break;
      case RespState.READ: s = readState(qp, p); break;
      case RespState.ATOMIC: s = atomicState(qp, p); break;
      case RespState.DUPLICATE: s = duplicateState(qp, p); break;
      case RespState.RNR: s = rnr(qp, p); break;
      case RespState.ERROR: s = errorState(qp, p); break;
      case RespState.DROP: s = drop(qp, p); break;
      case RespState.UD: s = ud(qp, p); break;
      default: s = RespState.EXIT;
    }
  }
}

function advance(qp: Qp, p: Pkt, kind: number): void {
  qp.resp.psn = (p.psn + p.span) & PSN_MASK;
  qp.resp.inMsg = p.mask & M.LAST ? 0 : kind;
  if (p.mask & M.LAST) qp.resp.dropMsg = false;
}

/** UC: the message in progress is given up (packets lost): what of it arrived lands, as it would have packet by packet. */
function abandon(qp: Qp): void {
  if (qp.staging !== null) qp.staging.recv.flush();
}

function dropUc(qp: Qp, p: Pkt): void {
  abandon(qp);
  qp.resp.dropMsg = !(p.mask & M.LAST);
  qp.resp.inMsg = p.mask & M.LAST ? 0 : p.mask & (M.SEND | M.WRITE);
  qp.resp.psn = (p.psn + p.span) & PSN_MASK;
}

const BAD = {} as RecvWqe;

/** The next receive WQE from the SRQ or the RQ; null if none is posted, BAD if it cannot be used. */
function takeRecv(qp: Qp): RecvWqe | null {
  const ring = qp.srq ? qp.srq.ring : qp.rq;
  if (!ring || !ring.any()) return null;
  const ok = ring.take(qp.recvWqe);
  if (qp.srq) qp.srq.checkLimit();
  qp.resp.wqe = qp.recvWqe;
  if (!ok) {
    qp.resp.wqe = null;
    postRecvWc(qp, qp.recvWqe, WcStatus.LOC_QP_OP_ERR, WcOpcode.RECV, 0, 0, 0, false);
    return BAD;
  }
  return qp.recvWqe;
}

/**
 * Places len bytes into a receive WQE's SGEs at byte `off`: into a client's own memory through the responder's
 * write-behind when they are a packet `p` of an RC/UC SEND (its last bytes written with the message's last
 * packet), straight when p is null (a UD message is one packet). False on a bad lkey / PD / access / bounds, or
 * unwritable client memory.
 */
const sgl = new SglCursor();
function scatter(qp: Qp, w: RecvWqe, off: number, src: Uint8Array, srcOff: number, len: number, p: Pkt | null): boolean {
  const c = sgl.start(w.numSge, w.len, off, len);
  while (c.next()) {
    const mr = qp.dev.lookupMr(w.lkey[c.i]!);
    const va = w.addr[c.i]! + c.sgeOff;
    if (!mr || mr.pd !== qp.pd || !(mr.access & Access.LOCAL_WRITE) || !mr.contains(va, c.n)) return false;
    const v = mr.mem.view;
    if (v !== null) copyBytes(v, va - mr.iova, src, srcOff + c.done, c.n);
    else if (p === null) {
      if (!mr.mem.write(va - mr.iova, src, srcOff + c.done, c.n)) return false;
    } else if (!qp.stage.recv.write(mr.mem, va - mr.iova, src, srcOff + c.done, c.n, p.psn, (p.mask & M.LAST) !== 0 && c.done + c.n === len)) return false;
  }
  return c.complete;
}

/** A zero-length RDMA operation needs no valid rkey (IBA 9.4.x; rxe skips the check too). */
const ZERO_LEN = 'zero-length';

/**
 * rkey → MR if it is valid, in the QP's PD, allows `need`, and covers [va, va+len), or the MR under a memory
 * window that does (mw.ts); the address in the MR's IOVA space in rkeyVa.va. ZERO_LEN for a zero-length
 * operation on a key that is not.
 */
function checkRkey(qp: Qp, rkey: number, va: number, len: number, need: number): Mr | typeof ZERO_LEN | null {
  if (len === 0) return qp.dev.lookupMr(rkey) ?? ZERO_LEN;
  if (isMwKey(rkey)) return windowMr(qp, rkey, va, len, need);
  const mr = qp.dev.lookupMr(rkey);
  if (!mr || mr.pd !== qp.pd || (mr.access & need) !== need || !mr.contains(va, len)) return null;
  rkeyVa.va = va;
  return mr;
}

function read(qp: Qp, p: Pkt): void {
  // (nothing is held here in RC: a READ inside a message is refused by checkOpSeq; settled all the same)
  if (!settled(qp)) return error(qp, { psn: run$.nak, srcQpn: p.srcQpn }, run$.err);
  if (qp.attr.maxDestRdAtomic === 0) return error(qp, p, Err.INVALID);
  const mr = checkRkey(qp, p.rkey, p.va, p.dmaLen, Access.REMOTE_READ);
  if (!mr) return error(qp, p, Err.RKEY);
  const n = Math.max(1, Math.ceil(p.dmaLen / qp.mtu));
  const r = newRes(qp);
  r.atomic = r.atomicWrite = false;
  r.firstPsn = p.psn;
  r.lastPsn = (p.psn + n - 1) & PSN_MASK;
  r.va = p.va;
  r.rkey = p.rkey;
  r.length = p.dmaLen;
  qp.resp.msn = (qp.resp.msn + 1) & PSN_MASK;
  qp.resp.psn = (r.lastPsn + 1) & PSN_MASK;
  sendReadResponses(qp, p, r, p.psn);
}

/**
 * Sends the read response packets of resource r from PSN `from` on (a duplicate may ask for the tail only).
 * A response of more than READ_BURST packets goes out READ_BURST packets per turn of the event loop, through
 * the QP's output queue (one 4 MiB READ at MTU 256 is 16,384 packets: made all at once, a few READs in flight
 * held hundreds of MB of packets and the daemon for as long as they took).
 */
function sendReadResponses(qp: Qp, req: Pkt, r: RespRes, from: number): void {
  const mtu = qp.mtu;
  const n = Math.max(1, Math.ceil(r.length / mtu));
  // (checked again for a duplicate: a window invalidated since answers nothing more)
  const found = r.length > 0 ? checkRkey(qp, r.rkey, r.va, r.length, Access.REMOTE_READ) : null;
  if (r.length > 0 && (found === null || found === ZERO_LEN)) return error(qp, req, Err.RKEY);
  const mr = found === ZERO_LEN ? null : found;
  const out: ReadOut = { kind: 'read', firstPsn: r.firstPsn, va: mr ? rkeyVa.va : r.va, length: r.length, n, next: psnDiff(from, r.firstPsn), msn: qp.resp.msn, mr, iova: mr?.iova ?? 0, mem: mr?.mem ?? null, map: mr?.mapping ?? null, mtu };
  const q = qp.resp.outq;
  qp.resp.lastAck = null; // an ACK may not be moved past these responses
  if (q.length === 0 && out.n - out.next <= READ_BURST) {
    while (out.next < out.n) {
      const p = readResponse(qp, out);
      if (p === null) return error(qp, req, Err.RKEY);
      qp.dev.xmit(p);
    }
    return;
  }
  q.push(out);
  qp.dev.sched.schedule(qp, Task.RESPOND);
}

/**
 * The next packet of a read response: a window on the MR's memory, or its bytes read from the client's memory
 * into the descriptor's buffer; null when those could not be read (rxe: a failed rxe_mr_copy in read_reply is
 * RKEY_VIOLATION, a remote access error NAK).
 */
function readResponse(qp: Qp, o: ReadOut): Pkt | null {
  const i = o.next++;
  const n = o.n;
  const p = qp.dev.newPkt();
  p.opcode = Transport.RC | (n === 1 ? Op.RDMA_READ_RESPONSE_ONLY : i === 0 ? Op.RDMA_READ_RESPONSE_FIRST : i === n - 1 ? Op.RDMA_READ_RESPONSE_LAST : Op.RDMA_READ_RESPONSE_MIDDLE);
  fillReply(qp, p);
  p.psn = (o.firstPsn + i) & PSN_MASK;
  p.syndrome = Aeth.ACK | Aeth.CREDITS_INVALID;
  p.msn = o.msn;
  const off = i * o.mtu;
  const len = Math.min(o.mtu, o.length - off);
  if (o.mem && len > 0) {
    const v = o.mem.view;
    if (v !== null) {
      p.payload = v;
      p.payMap = o.map;
      p.payOff = o.va - o.iova + off;
    } else if (qp.stage.read.read(o, o.mem, o.va - o.iova + off, (p.payload = pktBuffer(p, len)), 0, len, o.length - off)) {
      p.payOff = 0;
      if (o.next === n) qp.stage.read.drop();
    } else {
      qp.dev.freePkt(p);
      return null;
    }
    p.payLen = len;
    p.padCnt = (4 - (len & 3)) & 3;
  }
  return p;
}

/** Responses go in PSN order: while a long read response is going out, later ACKs and atomic responses queue behind it. */
function respXmit(qp: Qp, p: Pkt): void {
  qp.resp.lastAck = null; // an ACK may not be moved past a later response
  if (qp.resp.outq.length === 0) qp.dev.xmit(p);
  else qp.resp.outq.push(p);
}

/** Task.RESPOND: one turn's worth (READ_BURST packets) of the QP's queued responses. */
export function pump(qp: Qp): void {
  const q = qp.resp.outq;
  if (qp.state === QpState.ERR || qp.state === QpState.RESET) {
    q.length = 0; // an errored or reset responder answers nothing more
    return;
  }
  // this turn's share, bounded by the room in the fabric's queue as the requester's is
  let budget = qp.dev.sched.budget(READ_BURST);
  while (q.length > 0 && budget > 0) {
    const head = q[0]!;
    if ('kind' in head) {
      // the MR went away (or changed its translation) under a response still going out: the rest is not sent,
      // the requester retries or times out, as after any lost packets
      if (head.map?.unmapped || (head.mr && (!head.mr.valid || head.mr.mem !== head.mem))) {
        head.next = head.n;
        qp.staging?.read.drop();
      }
      while (head.next < head.n && budget-- > 0) {
        const p = readResponse(qp, head);
        if (p === null) {
          q.length = 0; // the NAK goes now, and nothing after it
          return error(qp, { psn: head.firstPsn, srcQpn: qp.attr.destQpn }, Err.RKEY);
        }
        qp.dev.xmit(p);
      }
      if (head.next < head.n) break;
    } else {
      qp.dev.xmit(head);
      budget--;
    }
    q.shift();
  }
  if (q.length > 0) qp.dev.sched.schedule(qp, Task.RESPOND);
}

function atomic(qp: Qp, p: Pkt): void {
  if (!settled(qp)) return error(qp, { psn: run$.nak, srcQpn: p.srcQpn }, run$.err);
  if (qp.attr.maxDestRdAtomic === 0) return error(qp, p, Err.INVALID);
  const mr = checkRkey(qp, p.rkey, p.va, 8, Access.REMOTE_ATOMIC);
  if (!mr || mr === ZERO_LEN) return error(qp, p, Err.RKEY);
  if (p.va % 8 !== 0) return error(qp, p, Err.INVALID); // rxe: misaligned atomic → invalid request
  // (a client's memory that could not be read or written: as a bad rkey, rxe's RKEY_VIOLATION)
  const orig = atomic64(mr.mem, rkeyVa.va - mr.iova, (p.opcode & 0x1f) === Op.COMPARE_SWAP, p.compare, p.swapAdd);
  if (orig === null) return error(qp, p, Err.RKEY);
  const r = newRes(qp);
  r.atomic = true;
  r.atomicWrite = false;
  r.firstPsn = r.lastPsn = p.psn;
  r.orig = orig;
  qp.resp.msn = (qp.resp.msn + 1) & PSN_MASK;
  qp.resp.psn = (p.psn + 1) & PSN_MASK;
  sendAtomicAck(qp, r);
}

/**
 * ATOMIC_WRITE (rxe ≥ 6.2's do_atomic_write): the RETH names exactly the 8 bytes the packet carries, at an
 * 8-aligned address of an MR that allows remote writes; they are stored as one (all prior requests are already
 * in memory: settled), and a plain ACK answers. Like an atomic it takes a responder resource, so that a
 * duplicate is ACKed again and never stored a second time over whatever came after it.
 */
function atomicWrite(qp: Qp, p: Pkt): void {
  if (!settled(qp)) return error(qp, { psn: run$.nak, srcQpn: p.srcQpn }, run$.err);
  if (qp.attr.maxDestRdAtomic === 0) return error(qp, p, Err.INVALID);
  if (p.payLen !== 8 || p.dmaLen !== 8) return error(qp, p, Err.INVALID); // rxe: RESPST_ERR_LENGTH, an invalid request
  const mr = checkRkey(qp, p.rkey, p.va, 8, Access.REMOTE_WRITE);
  if (!mr || mr === ZERO_LEN || !mr.valid) return error(qp, p, Err.RKEY);
  if (p.va % 8 !== 0) return error(qp, p, Err.INVALID); // rxe: RESPST_ERR_MISALIGNED_ATOMIC
  const v = mr.mem.view;
  if (v !== null) v.set(p.payload.subarray(p.payOff, p.payOff + 8), p.va - mr.iova);
  else if (!mr.mem.write(p.va - mr.iova, p.payload, p.payOff, 8)) return error(qp, p, Err.RKEY);
  const r = newRes(qp);
  r.atomic = false;
  r.atomicWrite = true;
  r.firstPsn = r.lastPsn = p.psn;
  qp.resp.msn = (qp.resp.msn + 1) & PSN_MASK;
  qp.resp.psn = (p.psn + 1) & PSN_MASK;
  sendAck(qp, Aeth.ACK | Aeth.CREDITS_INVALID, p.psn);
}

function sendAtomicAck(qp: Qp, r: RespRes): void {
  const a = qp.dev.newPkt();
  a.opcode = Transport.RC | Op.ATOMIC_ACKNOWLEDGE;
  fillReply(qp, a);
  a.psn = r.firstPsn;
  a.syndrome = Aeth.ACK | Aeth.CREDITS_INVALID;
  a.msn = qp.resp.msn;
  a.orig = r.orig;
  respXmit(qp, a);
}

/** A new responder resource; the oldest is replaced when all max_dest_rd_atomic are in use (rxe does the same). */
function newRes(qp: Qp): RespRes {
  const max = Math.max(1, qp.attr.maxDestRdAtomic);
  const res = qp.resp.res;
  if (res.length < max) {
    const r: RespRes = { valid: true, atomic: false, atomicWrite: false, firstPsn: 0, lastPsn: 0, va: 0, rkey: 0, length: 0, orig: 0n };
    res.push(r);
    return r;
  }
  const r = res[qp.resp.resHead % res.length]!;
  qp.resp.resHead = (qp.resp.resHead + 1) % res.length;
  r.valid = true;
  return r;
}

function duplicate(qp: Qp, p: Pkt): void {
  const m = p.mask;
  if (m & (M.READ | M.ATOMIC | M.ATOMIC_WRITE)) {
    for (const r of qp.resp.res) {
      if (!r.valid) continue;
      if (psnDiff(p.psn, r.firstPsn) >= 0 && psnDiff(p.psn, r.lastPsn) <= 0) {
        if (r.atomicWrite) sendAck(qp, Aeth.ACK | Aeth.CREDITS_INVALID, p.psn);
        else if (r.atomic) sendAtomicAck(qp, r);
        else sendReadResponses(qp, p, r, p.psn);
        return;
      }
    }
    return; // not in the resources any more: drop, the requester will time out
  }
  // SEND / WRITE: already done; tell the requester how far we are
  if (!p.ackReq) return;
  if (!settled(qp)) return error(qp, { psn: run$.nak, srcQpn: p.srcQpn }, run$.err);
  sendAck(qp, Aeth.ACK | Aeth.CREDITS_INVALID, (qp.resp.psn - 1) & PSN_MASK);
}

function fillReply(qp: Qp, p: Pkt): void {
  p.destQpn = qp.attr.destQpn;
  p.srcQpn = qp.qpn;
  p.srcPort = qp.srcPort;
  p.dstGid = qp.attr.path.dgid;
  p.srcGid = qp.dev.gids[0]!;
}

function ackPkt(qp: Qp, syndrome: number, psn: number): Pkt {
  const a = qp.dev.newPkt();
  a.opcode = Transport.RC | Op.ACKNOWLEDGE;
  fillReply(qp, a);
  a.psn = psn & PSN_MASK;
  a.syndrome = syndrome;
  a.msn = qp.resp.msn;
  return a;
}

function sendAck(qp: Qp, syndrome: number, psn: number): void {
  respXmit(qp, ackPkt(qp, syndrome, psn));
}

/** Class A/C errors on RC (rxe do_class_ac_error): NAK the requester, complete the receive in error, QP to ERR. */
function error(qp: Qp, p: { psn: number; srcQpn: number }, e: ErrKind): void {
  // its process has exited (its memory gone: the reason this request failed) and the daemon is about to destroy
  // the QP as its device file closes: a QP that is gone answers nothing, so the requester retries and then gives
  // up (RETRY_EXC_ERR), as with Linux rxe, not a NAK blaming the request (REM_ACCESS_ERR, REM_OP_ERR)
  if (qp.owner.exited?.()) {
    qp.dev.countDrop('the QP\'s process has exited');
    return;
  }
  // what was placed before the error lands (a failure now changes nothing: the NAK below is the message's)
  qp.staging?.settle();
  sendAck(qp, e.syndrome, p.psn);
  const was = qp.state;
  qp.state = QpState.ERR; // before the error completion shows, as on the send side
  if (qp.resp.wqe) {
    postRecvWc(qp, qp.resp.wqe, e.wc, WcOpcode.RECV, 0, 0, p.srcQpn, false);
    qp.resp.wqe = null;
  }
  toError(qp, `responder error (receive completion ${wcStatusName(e.wc)})`, was);
}

/** A received message is when a reply usually gets posted: the QP's send queue is polled for it meanwhile. */
function awaitReply(qp: Qp): void {
  if (qp.dev.linger.enabled) qp.dev.linger.hold(qp);
}

function receiveUd(qp: Qp, p: Pkt): void {
  if (p.qkey !== qp.attr.qkey) return; // Q_Key violation: silently dropped
  if (!(p.mask & M.SEND)) return;
  const w = takeRecv(qp);
  if (!w || w === BAD) return;
  qp.resp.wqe = null;
  const total = 40 + p.payLen;
  if (total > w.length) {
    postRecvWc(qp, w, WcStatus.LOC_LEN_ERR, WcOpcode.RECV, 0, 0, p.srcQpn, false);
    return;
  }
  const grh = makeGrh(p);
  if (!scatter(qp, w, 0, grh, 0, 40, null) || !scatter(qp, w, 40, p.payload, p.payOff, p.payLen, null)) {
    postRecvWc(qp, w, WcStatus.LOC_PROT_ERR, WcOpcode.RECV, 0, 0, p.srcQpn, false);
    return;
  }
  const imm = (p.mask & M.IMM) !== 0;
  awaitReply(qp);
  if (!postRecvWc(qp, w, WcStatus.SUCCESS, WcOpcode.RECV, total, imm ? p.imm : 0, p.srcQpn, p.se, WcFlags.GRH | (imm ? WcFlags.WITH_IMM : 0))) {
    toError(qp, 'receive CQ overrun (CQ_ERR)');
    return;
  }
  qp.dev.counters.rdma_recvs++;
}
