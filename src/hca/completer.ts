/**
 * The completer (rxe_comp.c): handles ACKs, NAKs, read responses and atomic
 * acknowledges for the requester's WQEs, retires WQEs in order with their
 * completions, runs the retransmit and RNR timers, and moves a QP to ERR
 * with every outstanding WR flushed.
 */
import { EventType, QpState, QpType, WcOpcode, WcStatus, WrOpcode, wcStatusName } from '../abi/enums.js';
import { CONS } from '../abi/queue.js';
import type { SoftDevice } from './device.js';
import { Wc } from './objects.js';
import { Aeth, M, PSN_MASK, psnDiff, RNR_TIMER_US } from './opcodes.js';
import type { Pkt } from './packet.js';
import type { Qp, SendWqe } from './qp.js';
import { WqeState } from './qp.js';
import * as requester from './requester.js';

const wc = new Wc();
const u64 = new Uint8Array(8);
const u64dv = new DataView(u64.buffer);

function wcOpcode(op: number): number {
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
    default:
      return WcOpcode.SEND;
  }
}

/** Retires the oldest WQE with `status`, writing a completion if it is signaled or failed. */
function retire(dev: SoftDevice, qp: Qp, w: SendWqe, status: number): void {
  if (w.isReadOrAtomic && qp.req.rdAtomic > 0 && w.state !== WqeState.POSTED) qp.req.rdAtomic--;
  w.state = WqeState.FREE;
  // comp.psn: the first PSN not yet answered, whatever retired this WQE (ACK, implied ACK, response)
  const next = (w.lastPsn + 1) & PSN_MASK;
  if (psnDiff(next, qp.comp.psn) > 0) qp.comp.psn = next;
  // free the SQ slot before the CQE shows: an application that posts on seeing a completion must find room (rxe's order too)
  qp.comp.idx = (qp.comp.idx + 1) >>> 0;
  Atomics.store(qp.sqHdr, CONS, qp.comp.idx | 0);
  if (status !== 0 || w.signaled) {
    wc.clear();
    wc.wrId = w.wrId;
    wc.status = status;
    wc.opcode = wcOpcode(w.opcode);
    wc.byteLen = w.length;
    wc.qpNum = qp.qpn;
    // an overrun loses this completion: the QP goes to ERR (as rxe's completer on a full CQ), once the loop
    // retiring WQEs around us has finished
    if (!qp.sendCq.post(wc)) queueMicrotask(() => dev.guard(qp, () => toError(dev, qp, 'send CQ overrun (CQ_ERR)')));
  }
  if (status === 0 && (w.opcode === WrOpcode.SEND || w.opcode === WrOpcode.SEND_WITH_IMM)) dev.counters.rdma_sends++;
}

/** UD/UC: a WQE is done once its last packet left. */
export function completeUnreliable(dev: SoftDevice, qp: Qp, w: SendWqe): void {
  // a message's last packet can leave after a later one's (a delayed or reordered packet): completions still
  // retire in posting order, so this one waits, DONE, until those before it are done too
  w.state = WqeState.DONE;
  while (qp.comp.idx !== qp.req.idx && qp.wqeAt(qp.comp.idx).state === WqeState.DONE) retire(dev, qp, qp.wqeAt(qp.comp.idx), 0);
}

/** A WQE failed locally (its status is set): WQEs before it are flushed, it completes with its status, then ERR. */
export function failWqe(dev: SoftDevice, qp: Qp): void {
  // WQEs before it that are still waiting for their ACK are flushed by toError, after it. The QP is in ERR before
  // its error completion shows: whoever sees that completion and looks at the QP finds it in ERR
  const was = qp.state;
  qp.state = QpState.ERR;
  let status: number = WcStatus.GENERAL_ERR;
  while (qp.comp.idx !== qp.req.idx) {
    const w = qp.wqeAt(qp.comp.idx);
    if (w.status !== 0) {
      status = w.status;
      retire(dev, qp, w, w.status);
      break;
    }
    retire(dev, qp, w, WcStatus.WR_FLUSH_ERR);
  }
  toError(dev, qp, `a send WR failed locally (${wcStatusName(status)})`, was);
}

export function receive(dev: SoftDevice, qp: Qp, p: Pkt): void {
  if (qp.type !== QpType.RC) return;
  if (qp.state !== QpState.RTS && qp.state !== QpState.SQD) return;
  const m = p.mask;
  let progressed = false;
  while (qp.comp.idx !== qp.req.idx || qp.wqeAt(qp.comp.idx).state === WqeState.PENDING || qp.wqeAt(qp.comp.idx).state === WqeState.PROCESSING) {
    const w = qp.wqeAt(qp.comp.idx);
    if (w.state !== WqeState.PENDING && w.state !== WqeState.PROCESSING) break;
    if (psnDiff(p.psn, w.firstPsn) < 0) break; // older than anything outstanding: a stale duplicate
    const syn = p.syndrome & Aeth.TYPE_MASK;
    if (m & M.RRESP) {
      if (w.opcode !== WrOpcode.RDMA_READ) {
        // a read response must answer the oldest WQE; WQEs before it were implicitly acked
        if (psnDiff(p.psn, w.lastPsn) > 0 && !w.isReadOrAtomic) {
          retire(dev, qp, w, 0);
          progressed = true;
          continue;
        }
        break;
      }
      const d = psnDiff(p.psn, qp.comp.psn);
      if (d > 0) {
        // lost response packets: ask again
        dev.counters.completer_retry_err++;
        scheduleRetry(dev, qp);
        return;
      }
      if (d < 0) break;
      const off = psnDiff(p.psn, w.firstPsn) * qp.mtu;
      if (p.payLen > 0 && (off + p.payLen > w.length || !qp.scatter(w, off, p.payload, p.payOff, p.payLen))) {
        fail(dev, qp, w, WcStatus.LOC_PROT_ERR);
        return;
      }
      qp.comp.psn = (p.psn + 1) & PSN_MASK;
      if (m & M.LAST) {
        retire(dev, qp, w, 0);
        progressed = true;
      }
      break;
    }
    if (m & M.ATMACK) {
      if (!w.isReadOrAtomic || w.opcode === WrOpcode.RDMA_READ) {
        if (psnDiff(p.psn, w.lastPsn) > 0 && !w.isReadOrAtomic) {
          retire(dev, qp, w, 0);
          progressed = true;
          continue;
        }
        break;
      }
      if (p.psn !== w.firstPsn) break;
      u64dv.setBigUint64(0, p.orig, true);
      if (!qp.scatter(w, 0, u64, 0, 8)) {
        fail(dev, qp, w, WcStatus.LOC_PROT_ERR);
        return;
      }
      qp.comp.psn = (p.psn + 1) & PSN_MASK;
      retire(dev, qp, w, 0);
      progressed = true;
      break;
    }
    // ACK / NAK
    if (syn === Aeth.ACK) {
      if (w.isReadOrAtomic) {
        // an ACK past a READ/ATOMIC whose answer we never saw: the answer was lost (implied NAK)
        if (psnDiff(p.psn, w.firstPsn) >= 0 && w.state === WqeState.PENDING) {
          if (psnDiff(p.psn, w.lastPsn) >= 0) {
            scheduleRetry(dev, qp);
            return;
          }
        }
        break;
      }
      if (psnDiff(p.psn, w.lastPsn) >= 0 && w.state === WqeState.PENDING) {
        // retire() moves comp.psn past this WQE only: an ACK covering later WQEs must not
        // skip a READ or atomic among them whose answer has not come
        retire(dev, qp, w, 0);
        progressed = true;
        continue;
      }
      // part of a multi-packet SEND / WRITE is acknowledged
      if (psnDiff(p.psn, qp.comp.psn) >= 0) qp.comp.psn = (p.psn + 1) & PSN_MASK;
      progressed = true;
      break;
    }
    // a NAK names the PSN it refuses; everything before it is acknowledged
    if (psnDiff(p.psn, w.firstPsn) > 0 && psnDiff(p.psn, w.lastPsn) > 0 && !w.isReadOrAtomic && w.state === WqeState.PENDING) {
      retire(dev, qp, w, 0);
      progressed = true;
      continue;
    }
    if (syn === Aeth.RNR_NAK) {
      dev.counters.rcvd_rnr_err++;
      if (qp.comp.rnrRetry === 0) {
        dev.counters.retry_rnr_exceeded_err++;
        fail(dev, qp, w, WcStatus.RNR_RETRY_EXC_ERR);
        return;
      }
      if (qp.attr.rnrRetry !== 7) qp.comp.rnrRetry--;
      if (!w.isReadOrAtomic) qp.comp.psn = p.psn;
      const us = RNR_TIMER_US[p.syndrome & 0x1f]!;
      stopRetransmit(qp);
      if (qp.comp.rnrTimer) clearTimeout(qp.comp.rnrTimer);
      qp.comp.rnrTimer = setTimeout(() => {
        qp.comp.rnrTimer = null;
        dev.guard(qp, () => requester.retry(dev, qp));
      }, Math.max(1, Math.round(us / 1000)));
      return;
    }
    if (p.syndrome === Aeth.NAK_PSN_SEQ_ERROR) {
      dev.counters.rcvd_seq_err++;
      // a READ or atomic at the head still waits for its answer: comp.psn stays on it
      if (!w.isReadOrAtomic) qp.comp.psn = p.psn;
      scheduleRetry(dev, qp);
      return;
    }
    const st =
      p.syndrome === Aeth.NAK_REM_ACC_ERR ? WcStatus.REM_ACCESS_ERR :
      p.syndrome === Aeth.NAK_REM_OP_ERR ? WcStatus.REM_OP_ERR :
      p.syndrome === Aeth.NAK_INV_RD_REQUEST ? WcStatus.REM_INV_RD_REQ_ERR :
      WcStatus.REM_INV_REQ_ERR;
    fail(dev, qp, w, st);
    return;
  }
  if (progressed) {
    qp.comp.retryCnt = qp.attr.retryCnt;
    qp.comp.rnrRetry = qp.attr.rnrRetry;
    // the timer restarts: its deadline moves, the setTimeout stays (re-creating it per ACK was 14% of a daemon's CPU)
    if (qp.comp.timer) qp.comp.deadline = performance.now() + timeoutMs(qp);
    else armRetransmit(qp);
    requester.run(dev, qp);
    if (qp.state === QpState.SQD) checkDrained(qp);
  }
}

/**
 * Go-back-N on the next turn of the event loop, once however many NAKs ask
 * for it: a retry run inside the packet loop could livelock it (each resend
 * meets new loss, which NAKs again) and starve every other client.
 */
function scheduleRetry(dev: SoftDevice, qp: Qp): void {
  if (retryPending.has(qp)) return;
  retryPending.add(qp);
  setImmediate(() => {
    retryPending.delete(qp);
    dev.guard(qp, () => requester.retry(dev, qp));
  });
}
const retryPending = new WeakSet<Qp>();

function fail(dev: SoftDevice, qp: Qp, w: SendWqe, status: number): void {
  const was = qp.state;
  qp.state = QpState.ERR;
  retire(dev, qp, w, status);
  toError(dev, qp, `send completion ${wcStatusName(status)}`, was);
}

/** SQD: once nothing is outstanding, the SQ is drained (IBV_EVENT_SQ_DRAINED if asked for). */
export function checkDrained(qp: Qp): void {
  if (qp.comp.idx === qp.req.idx && qp.attr.enSqdAsyncNotify) {
    qp.attr.enSqdAsyncNotify = 0;
    qp.raise(EventType.SQ_DRAINED);
  }
}

function timeoutMs(qp: Qp): number {
  // 4.096 µs × 2^timeout; 0 means wait forever (no timer)
  if (qp.attr.timeout === 0) return 0;
  return Math.max(1, Math.round((4.096 * 2 ** qp.attr.timeout) / 1000));
}

function stopRetransmit(qp: Qp): void {
  if (qp.comp.timer) clearTimeout(qp.comp.timer);
  qp.comp.timer = null;
}

/** Arms the retransmit timer if anything waits for an answer and it is not running. */
export function armRetransmit(qp: Qp): void {
  if (qp.comp.timer || qp.comp.rnrTimer || qp.state === QpState.ERR) return;
  const w = qp.wqeAt(qp.comp.idx);
  if (w.state !== WqeState.PENDING && w.state !== WqeState.PROCESSING) return;
  const ms = timeoutMs(qp);
  if (ms === 0) return;
  const dev = devOf.get(qp);
  if (!dev) return;
  qp.comp.deadline = performance.now() + ms;
  qp.comp.timer = setTimeout(() => expire(dev, qp), ms);
}

/** The timer went off: at its deadline a timeout, before it (progress moved it) wait for the rest. */
function expire(dev: SoftDevice, qp: Qp): void {
  const left = qp.comp.deadline - performance.now();
  if (left >= 1) {
    qp.comp.timer = setTimeout(() => expire(dev, qp), Math.ceil(left));
    return;
  }
  dev.guard(qp, () => onTimeout(dev, qp));
}

/** The device a QP lives on, for timer callbacks. */
export const devOf = new WeakMap<Qp, SoftDevice>();

function onTimeout(dev: SoftDevice, qp: Qp): void {
  qp.comp.timer = null;
  if (qp.state === QpState.ERR) return;
  const w = qp.wqeAt(qp.comp.idx);
  if (w.state !== WqeState.PENDING && w.state !== WqeState.PROCESSING) return;
  if (qp.comp.retryCnt === 0) {
    dev.counters.retry_exceeded_err++;
    fail(dev, qp, w, WcStatus.RETRY_EXC_ERR);
    return;
  }
  if (qp.attr.retryCnt !== 7) qp.comp.retryCnt--;
  dev.counters.completer_retry_err++;
  requester.retry(dev, qp);
}

/** ERR: stop, flush every outstanding send and receive WR with WR_FLUSH_ERR. */
export function toError(dev: SoftDevice, qp: Qp, why = 'error', was = qp.state): void {
  qp.state = QpState.ERR;
  if (was !== QpState.ERR) dev.onQpError?.(qp, why);
  qp.stopTimers();
  flushSend(dev, qp);
  flushRecv(dev, qp);
  if (was !== QpState.ERR && qp.srq) qp.raise(EventType.QP_LAST_WQE_REACHED);
}

export function flushSend(dev: SoftDevice, qp: Qp): void {
  const prod = qp.sqProduced();
  while (qp.comp.idx !== prod) {
    const w = qp.wqeAt(qp.comp.idx);
    // posted but never fetched: read it for its wr_id and opcode (whether it is valid does not matter for a flush)
    if (w.state === WqeState.FREE) qp.fetch(qp.comp.idx, dev.lookupMr, (h) => qp.owner.lookupAh(h));
    retireFlushed(qp, w); // flushed WRs always complete, signaled or not
  }
  qp.req.idx = qp.comp.idx;
  qp.req.rdAtomic = 0;
}

function retireFlushed(qp: Qp, w: SendWqe): void {
  w.state = WqeState.FREE;
  wc.clear();
  wc.wrId = w.wrId;
  wc.status = WcStatus.WR_FLUSH_ERR;
  wc.opcode = wcOpcode(w.opcode);
  wc.qpNum = qp.qpn;
  qp.comp.idx = (qp.comp.idx + 1) >>> 0;
  Atomics.store(qp.sqHdr, CONS, qp.comp.idx | 0);
  qp.sendCq.post(wc);
}

export function flushRecv(_dev: SoftDevice, qp: Qp): void {
  if (qp.resp.wqe) {
    postRecvWc(qp, qp.resp.wqe.wrId, WcStatus.WR_FLUSH_ERR, 0, 0, 0, 0, false);
    qp.resp.wqe = null;
  }
  const rq = qp.rq;
  if (!rq) return;
  while (rq.count() > 0) {
    rq.take(qp.recvWqe);
    postRecvWc(qp, qp.recvWqe.wrId, WcStatus.WR_FLUSH_ERR, 0, 0, 0, 0, false);
  }
}

/** Writes a receive completion to the QP's receive CQ. */
/** Posts a receive completion; false when the receive CQ overran (the completion is lost: the caller moves the QP to ERR). */
export function postRecvWc(qp: Qp, wrId: bigint, status: number, opcode: number, byteLen: number, imm: number, srcQp: number, solicited: boolean, flags = 0): boolean {
  wc.clear();
  wc.wrId = wrId;
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
