/**
 * The completer (rxe_comp.c): handles ACKs, NAKs, read responses and atomic
 * acknowledges for the requester's WQEs, retires WQEs in order with their
 * completions, and handles the retransmit timer and RNR waits.
 *
 * Each answer runs through a state machine: a small function per check,
 * each returning the next state; `receive` drives it.
 */
import { EventType, QpState, QpType, WcStatus, WrOpcode } from '../abi/enums.js';
import { failHead, retire, retireDone } from './completion.js';
import { Aeth, M, PSN_MASK, psnDiff, RNR_TIMER_US } from './opcodes.js';
import type { Pkt } from './packet.js';
import { WqeState, type Qp, type SendWqe } from './qp.js';
import { Task } from './scheduler.js';
import { tracer } from './trace.js';

export const CompState = {
  /** the oldest WQE, if it waits for an answer */
  GET_WQE: 0,
  /** is the answer for it (not a stale duplicate), and what kind of answer is it */
  CHECK_PSN: 1,
  /** a read response */
  READ: 2,
  /** an atomic acknowledge */
  ATOMIC: 3,
  /** an ACK */
  ACK: 4,
  /** a NAK: implied ACK of what is before the PSN it names, then its class */
  NAK: 5,
  /** the answer covers this WQE and maybe more: retire it, look at the next */
  COMP_WQE: 6,
  /** the answer was this WQE's own (its last response, its atomic result): retire it, done */
  COMP_ANSWERED: 7,
  /** an RNR NAK: wait its timer, then send again */
  RNR: 8,
  /** lost packets: go back N on the next turn */
  RETRY: 9,
  /** the oldest WQE fails with run$.status; the QP goes to ERR */
  ERROR: 10,
  /** the packet is handled: if anything moved, restart the timer and let the requester go on */
  DONE: 11,
  EXIT: 12,
} as const;
export type CompState = (typeof CompState)[keyof typeof CompState];
const NAMES = Object.keys(CompState);

const u64 = new Uint8Array(8);
const u64dv = new DataView(u64.buffer);

/** What one packet's run carries from state to state. */
const run$: { p: Pkt | null; w: SendWqe | null; progressed: boolean; status: WcStatus } = { p: null, w: null, progressed: false, status: WcStatus.SUCCESS };

/** An answer that is past the whole of a SEND/WRITE WQE acknowledges it implicitly (IBA 9.7.5.1.3). */
const impliedAck = (p: Pkt, w: SendWqe): boolean => psnDiff(p.psn, w.lastPsn) > 0 && !w.isReadOrAtomic;

function getWqe(qp: Qp): CompState {
  const w = (run$.w = qp.wqeAt(qp.comp.idx));
  if (w.state === WqeState.PENDING || w.state === WqeState.PROCESSING) return CompState.CHECK_PSN;
  // a local operation done while the WQEs before it waited: its turn has come
  return w.state === WqeState.DONE && qp.comp.idx !== qp.req.idx ? CompState.COMP_WQE : CompState.DONE;
}

function checkPsn(_qp: Qp, p: Pkt): CompState {
  if (psnDiff(p.psn, run$.w!.firstPsn) < 0) return CompState.DONE; // older than anything outstanding: a stale duplicate
  if (p.mask & M.RRESP) return CompState.READ;
  if (p.mask & M.ATMACK) return CompState.ATOMIC;
  return (p.syndrome & Aeth.TYPE_MASK) === Aeth.ACK ? CompState.ACK : CompState.NAK;
}

function read(qp: Qp, p: Pkt): CompState {
  const w = run$.w!;
  // a read response must answer the oldest WQE; WQEs before it were implicitly acked
  if (w.opcode !== WrOpcode.RDMA_READ) return impliedAck(p, w) ? CompState.COMP_WQE : CompState.DONE;
  const d = psnDiff(p.psn, qp.comp.psn);
  if (d > 0) {
    // lost response packets: ask again
    qp.dev.counters.completer_retry_err++;
    return CompState.RETRY;
  }
  if (d < 0) return CompState.DONE;
  const off = psnDiff(p.psn, w.firstPsn) * qp.mtu;
  const last = (p.mask & M.LAST) !== 0;
  // into a client's own memory through the write-behind: the READ's bytes are all in memory before its
  // completion (its last response writes them; that one carried none, or a failure, settles the rest here)
  if (p.payLen > 0 && (off + p.payLen > w.length || !qp.scatter(w, off, p.payload, p.payOff, p.payLen, true, last))) {
    run$.status = WcStatus.LOC_PROT_ERR;
    return CompState.ERROR;
  }
  if (last && qp.staging !== null && qp.staging.comp.len > 0 && !qp.staging.comp.flush()) {
    run$.status = WcStatus.LOC_PROT_ERR;
    return CompState.ERROR;
  }
  qp.comp.psn = (p.psn + 1) & PSN_MASK;
  return last ? CompState.COMP_ANSWERED : CompState.DONE;
}

function atomic(qp: Qp, p: Pkt): CompState {
  const w = run$.w!;
  if (!w.isReadOrAtomic || w.opcode === WrOpcode.RDMA_READ) return impliedAck(p, w) ? CompState.COMP_WQE : CompState.DONE;
  if (p.psn !== w.firstPsn) return CompState.DONE;
  u64dv.setBigUint64(0, p.orig, true);
  if (!qp.scatter(w, 0, u64, 0, 8)) {
    run$.status = WcStatus.LOC_PROT_ERR;
    return CompState.ERROR;
  }
  qp.comp.psn = (p.psn + 1) & PSN_MASK;
  return CompState.COMP_ANSWERED;
}

function ack(qp: Qp, p: Pkt): CompState {
  const w = run$.w!;
  if (w.isReadOrAtomic) {
    // an ACK past a READ/ATOMIC whose answer we never saw: the answer was lost (implied NAK)
    return w.state === WqeState.PENDING && psnDiff(p.psn, w.lastPsn) >= 0 ? CompState.RETRY : CompState.DONE;
  }
  // retire() moves comp.psn past this WQE only: an ACK covering later WQEs must not skip a READ or atomic
  // among them whose answer has not come
  if (psnDiff(p.psn, w.lastPsn) >= 0 && w.state === WqeState.PENDING) return CompState.COMP_WQE;
  // part of a multi-packet SEND / WRITE is acknowledged
  if (psnDiff(p.psn, qp.comp.psn) >= 0) qp.comp.psn = (p.psn + 1) & PSN_MASK;
  run$.progressed = true;
  return CompState.DONE;
}

function nak(qp: Qp, p: Pkt): CompState {
  const w = run$.w!;
  // a NAK names the PSN it refuses; everything before it is acknowledged
  if (psnDiff(p.psn, w.firstPsn) > 0 && impliedAck(p, w) && w.state === WqeState.PENDING) return CompState.COMP_WQE;
  if ((p.syndrome & Aeth.TYPE_MASK) === Aeth.RNR_NAK) return CompState.RNR;
  if (p.syndrome === Aeth.NAK_PSN_SEQ_ERROR) {
    qp.dev.counters.rcvd_seq_err++;
    // a READ or atomic at the head still waits for its answer: comp.psn stays on it
    if (!w.isReadOrAtomic) qp.comp.psn = p.psn;
    return CompState.RETRY;
  }
  run$.status =
    p.syndrome === Aeth.NAK_REM_ACC_ERR ? WcStatus.REM_ACCESS_ERR :
    p.syndrome === Aeth.NAK_REM_OP_ERR ? WcStatus.REM_OP_ERR :
    p.syndrome === Aeth.NAK_INV_RD_REQUEST ? WcStatus.REM_INV_RD_REQ_ERR :
    WcStatus.REM_INV_REQ_ERR;
  return CompState.ERROR;
}

function compWqe(qp: Qp): CompState {
  retire(qp, run$.w!, 0);
  run$.progressed = true;
  return CompState.GET_WQE;
}

function compAnswered(qp: Qp): CompState {
  retire(qp, run$.w!, 0);
  run$.progressed = true;
  return CompState.DONE;
}

function rnr(qp: Qp, p: Pkt): CompState {
  const w = run$.w!;
  qp.dev.counters.rcvd_rnr_err++;
  if (qp.comp.rnrRetry === 0) {
    qp.dev.counters.retry_rnr_exceeded_err++;
    run$.status = WcStatus.RNR_RETRY_EXC_ERR;
    return CompState.ERROR;
  }
  if (qp.attr.rnrRetry !== 7) qp.comp.rnrRetry--; // 7: retry for ever (IBA 9.7.5.2.8)
  if (!w.isReadOrAtomic) qp.comp.psn = p.psn;
  qp.stopRetransmit();
  if (qp.comp.rnrTimer) clearTimeout(qp.comp.rnrTimer);
  qp.comp.rnrTimer = qp.dev.sched.after(qp, Task.RNR_RETRY, Math.max(1, Math.round(RNR_TIMER_US[p.syndrome & 0x1f]! / 1000)));
  return CompState.EXIT;
}

function retry(qp: Qp): CompState {
  // on the next turn, once however many NAKs ask for it: a retry run inside the packet loop could livelock
  // it (each resend meets new loss, which NAKs again) and starve every other client
  qp.dev.sched.schedule(qp, Task.RETRY);
  return CompState.EXIT;
}

function error(qp: Qp): CompState {
  failHead(qp, run$.w!, run$.status);
  return CompState.EXIT;
}

function done(qp: Qp): CompState {
  // local operations right behind a WQE its own answer retired (compAnswered)
  if (!run$.progressed) return CompState.EXIT;
  retireDone(qp);
  qp.comp.retryCnt = qp.attr.retryCnt;
  qp.comp.rnrRetry = qp.attr.rnrRetry;
  qp.restartRetransmit();
  qp.dev.sched.run(qp, Task.REQUESTER);
  if (qp.state === QpState.SQD) checkDrained(qp);
  return CompState.EXIT;
}


/** An answer (ACK, NAK, read response, atomic acknowledge) for one of our QPs. */
export function receive(qp: Qp, p: Pkt): void {
  if (qp.type !== QpType.RC) return;
  if (qp.state !== QpState.RTS && qp.state !== QpState.SQD) return;
  run$.p = p;
  run$.progressed = false;
  run$.status = 0;
  let s: CompState = CompState.GET_WQE;
  const hook = tracer.hook;
  // the common answer, an ACK retiring WQEs, as straight-line calls (see the responder's receive); any other state continues in the loop
  if (!hook) {
    while ((s = getWqe(qp)) === CompState.CHECK_PSN && (s = checkPsn(qp, p)) === CompState.ACK && (s = ack(qp, p)) === CompState.COMP_WQE) compWqe(qp);
  }
  while (s !== CompState.EXIT) {
    if (hook) hook('completer', qp.qpn, NAMES[s]!);
    // each state's function called by name, so every call site stays monomorphic (and inlinable)
    switch (s) {
      case CompState.GET_WQE: s = getWqe(qp); break;
      case CompState.CHECK_PSN: s = checkPsn(qp, p); break;
      case CompState.READ: s = read(qp, p); break;
      case CompState.ATOMIC: s = atomic(qp, p); break;
      case CompState.ACK: s = ack(qp, p); break;
      case CompState.NAK: s = nak(qp, p); break;
      case CompState.COMP_WQE: s = compWqe(qp); break;
      case CompState.COMP_ANSWERED: s = compAnswered(qp); break;
      case CompState.RNR: s = rnr(qp, p); break;
      case CompState.RETRY: s = retry(qp); break;
      case CompState.ERROR: s = error(qp); break;
      case CompState.DONE: s = done(qp); break;
      default: s = CompState.EXIT;
    }
  }
  run$.p = null;
  run$.w = null;
}

/** SQD: once nothing is outstanding, the SQ is drained (IBV_EVENT_SQ_DRAINED if asked for). */
export function checkDrained(qp: Qp): void {
  if (qp.comp.idx === qp.req.idx && qp.attr.enSqdAsyncNotify) {
    qp.attr.enSqdAsyncNotify = 0;
    qp.raise(EventType.SQ_DRAINED);
  }
}

/** Task.TIMEOUT: the retransmit timer went off. At its deadline it is a timeout; before it (progress moved it), wait for the rest. */
export function timeout(qp: Qp): void {
  const left = qp.comp.deadline - performance.now();
  if (left >= 1) {
    qp.comp.timer = qp.dev.sched.after(qp, Task.TIMEOUT, Math.ceil(left));
    return;
  }
  qp.comp.timer = null;
  if (qp.state === QpState.ERR) return;
  const w = qp.wqeAt(qp.comp.idx);
  if (w.state !== WqeState.PENDING && w.state !== WqeState.PROCESSING) return;
  if (qp.comp.retryCnt === 0) {
    qp.dev.counters.retry_exceeded_err++;
    failHead(qp, w, WcStatus.RETRY_EXC_ERR);
    return;
  }
  if (qp.attr.retryCnt !== 7) qp.comp.retryCnt--;
  qp.dev.counters.completer_retry_err++;
  qp.dev.sched.run(qp, Task.RETRY);
}
