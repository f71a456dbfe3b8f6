/**
 * Completions and the error state, shared by the three engines: send WQEs
 * retire in order with their completions (rxe_comp.c's do_complete), receive
 * completions, and a QP's move to ERR with every outstanding WR flushed
 * (rxe_qp_error and the flushes of rxe_comp.c / rxe_resp.c).
 */
import { EventType, QpState, WcOpcode, WcStatus, WrOpcode, wcStatusName } from '../abi/enums.js';
import { type WrId } from '../abi/ring.js';
import { Wc } from './objects.js';
import { PSN_MASK, psnDiff } from './opcodes.js';
import { WqeState, type Qp, type SendWqe } from './qp.js';
import { Task } from './scheduler.js';

/** The one completion being written; reused, never allocated per completion. */
const wc = new Wc();

export function wcOpcode(op: number): WcOpcode {
  switch (op) {
    case WrOpcode.RDMA_WRITE:
    case WrOpcode.RDMA_WRITE_WITH_IMM:
      return WcOpcode.RDMA_WRITE;
    case WrOpcode.RDMA_READ:
      return WcOpcode.RDMA_READ;
    case WrOpcode.ATOMIC_CMP_AND_SWP:
      return WcOpcode.COMP_SWAP;
    case WrOpcode.ATOMIC_FETCH_AND_ADD:
      return WcOpcode.FETCH_ADD;
    case WrOpcode.BIND_MW:
      return WcOpcode.BIND_MW;
    case WrOpcode.LOCAL_INV:
      return WcOpcode.LOCAL_INV;
    case WrOpcode.ATOMIC_WRITE:
      return WcOpcode.ATOMIC_WRITE;
    default:
      return WcOpcode.SEND;
  }
}

/** Retires the oldest WQE with `status`, writing a completion if it is signaled or failed. */
export function retire(qp: Qp, w: SendWqe, status: WcStatus): void {
  if (w.takesRdAtomic && qp.req.rdAtomic > 0 && w.state !== WqeState.POSTED) qp.req.rdAtomic--;
  w.state = WqeState.FREE;
  // comp.psn: the first PSN not yet answered, whatever retired this WQE (ACK, implied ACK, response)
  const next = (w.lastPsn + 1) & PSN_MASK;
  if (psnDiff(next, qp.comp.psn) > 0) qp.comp.psn = next;
  // free the SQ slot before the CQE shows: an application that posts on seeing a completion must find room (rxe's order too)
  qp.comp.idx = (qp.comp.idx + 1) >>> 0;
  qp.sq.setConsumed(qp.comp.idx);
  if (status !== 0 || w.signaled) {
    wc.clear();
    wc.wrLo = w.wrLo;
    wc.wrHi = w.wrHi;
    wc.status = status;
    wc.opcode = wcOpcode(w.opcode);
    wc.byteLen = w.length;
    wc.qpNum = qp.qpn;
    // an overrun loses this completion: the QP goes to ERR (as rxe's completer on a full CQ), once the loop
    // retiring WQEs around us has finished
    if (!qp.sendCq.post(wc)) queueMicrotask(() => qp.dev.sched.run(qp, Task.CQ_OVERRUN));
  }
  if (status === 0 && (w.opcode === WrOpcode.SEND || w.opcode === WrOpcode.SEND_WITH_IMM || w.opcode === WrOpcode.SEND_WITH_INV)) qp.dev.counters.rdma_sends++;
}

/**
 * Retires the WQEs at the head that are DONE (local operations; UC/UD messages whose last packet left), in
 * posting order: a WQE done early waits behind those before it. Returns how many retired.
 */
export function retireDone(qp: Qp): number {
  let n = 0;
  while (qp.comp.idx !== qp.req.idx && qp.wqeAt(qp.comp.idx).state === WqeState.DONE) {
    retire(qp, qp.wqeAt(qp.comp.idx), 0);
    n++;
  }
  return n;
}

/** UD/UC: a WQE is done once its last packet left. */
export function completeUnreliable(qp: Qp, w: SendWqe): void {
  // a QP reset (or destroyed) while the last packet waited has forgotten the WQE: nothing to complete
  if (qp.destroyed || w.state !== WqeState.PENDING) return;
  // a message's last packet can leave after a later one's (a delayed or reordered packet): completions still
  // retire in posting order, so this one waits, DONE, until those before it are done too
  w.state = WqeState.DONE;
  retireDone(qp);
}

/** A WQE failed locally (its status is set): WQEs before it are flushed, it completes with its status, then ERR. */
export function failWqe(qp: Qp, why?: string): void {
  qp.staging?.settle();
  // The QP is in ERR before its error completion shows: whoever sees that completion and looks at the QP finds it in ERR
  const was = qp.state;
  qp.state = QpState.ERR;
  let status: WcStatus = WcStatus.GENERAL_ERR;
  while (qp.comp.idx !== qp.req.idx) {
    const w = qp.wqeAt(qp.comp.idx);
    if (w.status !== 0) {
      status = w.status;
      retire(qp, w, w.status);
      break;
    }
    retire(qp, w, WcStatus.WR_FLUSH_ERR);
  }
  toError(qp, `a send WR failed locally (${wcStatusName(status)}${why ? `: ${why}` : ''})`, was);
}

/** The oldest WQE completes with `status` (an answer the requester refuses, or retries exhausted), then ERR. */
export function failHead(qp: Qp, w: SendWqe, status: WcStatus): void {
  qp.staging?.settle();
  const was = qp.state;
  qp.state = QpState.ERR;
  retire(qp, w, status);
  toError(qp, `send completion ${wcStatusName(status)}`, was);
}

/** ERR: stop, flush every outstanding send and receive WR with WR_FLUSH_ERR. */
export function toError(qp: Qp, why = 'error', was = qp.state): void {
  // what the engines placed and still hold lands before the flush completions show (staging.ts)
  qp.staging?.settle();
  qp.state = QpState.ERR;
  if (was !== QpState.ERR) qp.dev.qpError(qp, why);
  qp.stopTimers();
  flushSend(qp);
  flushRecv(qp);
  if (was !== QpState.ERR && qp.srq) qp.raise(EventType.QP_LAST_WQE_REACHED);
}

export function flushSend(qp: Qp): void {
  const prod = qp.sqProduced();
  while (qp.comp.idx !== prod) {
    const w = qp.wqeAt(qp.comp.idx);
    // posted but never fetched: read it for its wr_id and opcode (whether it is valid does not matter for a flush)
    if (w.state === WqeState.FREE) qp.fetch(qp.comp.idx);
    // flushed WRs always complete, signaled or not
    w.state = WqeState.FREE;
    wc.clear();
    wc.wrLo = w.wrLo;
    wc.wrHi = w.wrHi;
    wc.status = WcStatus.WR_FLUSH_ERR;
    wc.opcode = wcOpcode(w.opcode);
    wc.qpNum = qp.qpn;
    qp.comp.idx = (qp.comp.idx + 1) >>> 0;
    qp.sq.setConsumed(qp.comp.idx);
    qp.sendCq.post(wc);
  }
  qp.req.idx = qp.comp.idx;
  qp.req.rdAtomic = 0;
}

export function flushRecv(qp: Qp): void {
  if (qp.resp.wqe) {
    postRecvWc(qp, qp.resp.wqe, WcStatus.WR_FLUSH_ERR, 0, 0, 0, 0, false);
    qp.resp.wqe = null;
  }
  const rq = qp.rq;
  if (!rq) return;
  while (rq.count() > 0) {
    rq.take(qp.recvWqe);
    postRecvWc(qp, qp.recvWqe, WcStatus.WR_FLUSH_ERR, 0, 0, 0, 0, false);
  }
}

/** Posts a receive completion; false when the receive CQ overran (the completion is lost: the caller moves the QP to ERR). */
export function postRecvWc(qp: Qp, w: WrId, status: WcStatus, opcode: WcOpcode, byteLen: number, imm: number, srcQp: number, solicited: boolean, flags = 0): boolean {
  wc.clear();
  wc.wrLo = w.wrLo;
  wc.wrHi = w.wrHi;
  wc.status = status;
  wc.opcode = opcode;
  wc.byteLen = byteLen;
  wc.imm = imm;
  wc.qpNum = qp.qpn;
  wc.srcQp = srcQp;
  wc.wcFlags = flags;
  wc.solicited = solicited;
  return qp.recvCq.post(wc);
}
