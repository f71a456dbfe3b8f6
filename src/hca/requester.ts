/**
 * The requester (rxe_req.c): walks the send queue, turns each WQE into
 * request packets (segmented by the path MTU, PSN per packet), honours
 * max_rd_atomic credits and fences, and arms the retransmit timer. UD and UC
 * WQEs complete as soon as their last packet is out.
 *
 * One run is a state machine: each state is a small function that does one
 * check or one step and returns the next state; `runOnce` drives it.
 */
import { QpState, QpType, SendFlags, WcStatus, WrOpcode } from '../abi/enums.js';
import { completeUnreliable, failWqe, flushSend, retireDone } from './completion.js';
import { bindMw, invalidateRkey } from './mw.js';
import { Op, PSN_MASK, psnDiff, Transport } from './opcodes.js';
import { pktBuffer, spanBuffer, type Pkt } from './packet.js';
import { STAGE_BYTES } from './staging.js';
import { WqeState, type Qp, type SendWqe } from './qp.js';
import { Task } from './scheduler.js';
import { tracer } from './trace.js';

/** Packets one doorbell may send before yielding the event loop to other clients. */
const BUDGET = 1024;
/** rxe asks for an ACK at least every this many packets of a long message. */
const MAX_PKT_PER_ACK = 64;

export const ReqState = {
  /** is the QP in a state that sends? */
  CHECK_QP: 0,
  /** is there a WQE to work on, and budget for it? */
  NEXT_WQE: 1,
  /** copy a newly posted WQE out of the ring and check it */
  FETCH: 2,
  /** may it start: not draining, a READ/ATOMIC credit, no fence in the way */
  CHECK_LIMITS: 3,
  /** give it its PSNs */
  START: 4,
  /** build and send its next packet */
  SEND: 5,
  /** the WQE at req.idx is already out (or done): move past it */
  SKIP: 6,
  /** the QP is in ERR: flush the send queue */
  FLUSH: 7,
  /** no room in this turn: run again on the next */
  DEFER: 8,
  /** the run is over: arm the retransmit timer, and come back if the budget ran out first */
  DONE: 9,
  /** a BIND_MW or LOCAL_INV: done here and now, no packet */
  LOCAL: 10,
  EXIT: 11,
} as const;
export type ReqState = (typeof ReqState)[keyof typeof ReqState];
const NAMES = Object.keys(ReqState);

/** What one run carries from state to state (one run at a time: the requester never re-enters itself). */
const run$ = { budget: 0, prod: 0, w: null as SendWqe | null };

function checkQp(qp: Qp): ReqState {
  if (qp.state === QpState.ERR) return ReqState.FLUSH;
  if (qp.state !== QpState.RTS && qp.state !== QpState.SQD) return ReqState.EXIT;
  // this doorbell's share, bounded by the room left in the fabric's queue (a chunk of doorbells for a
  // thousand QPs would otherwise queue a thousand budgets' worth of packets before any was drained)
  run$.budget = qp.dev.sched.budget(BUDGET);
  if (run$.budget === 0) return ReqState.DEFER;
  run$.prod = qp.sqProduced();
  return ReqState.NEXT_WQE;
}

function nextWqe(qp: Qp): ReqState {
  // (prod - idx) as a signed distance: whatever the client wrote, the requester never runs past the producer
  if (((run$.prod - qp.req.idx) | 0) <= 0 || run$.budget <= 0 || qp.state === QpState.ERR) return ReqState.DONE;
  const w = (run$.w = qp.wqeAt(qp.req.idx));
  if (w.state === WqeState.FREE) return ReqState.FETCH;
  if (w.state === WqeState.POSTED) return ReqState.CHECK_LIMITS;
  if (w.state === WqeState.PROCESSING) return ReqState.SEND;
  return ReqState.SKIP;
}

function fetchWqe(qp: Qp): ReqState {
  const w = run$.w!;
  const st = qp.fetch(qp.req.idx);
  if (st === 0) return ReqState.CHECK_LIMITS;
  // a WQE hardware refuses: error completion, QP to ERR (rxe: wqe->status + qp error)
  w.state = WqeState.PENDING;
  w.status = st;
  qp.req.idx = (qp.req.idx + 1) >>> 0;
  failWqe(qp);
  return ReqState.EXIT;
}

function checkLimits(qp: Qp): ReqState {
  const w = run$.w!;
  if (qp.state === QpState.SQD) return ReqState.DONE; // draining: nothing new starts
  // the local invalidate fence (IBA 10.6.5.1), which rxe makes mandatory: everything before it has completed
  if (w.opcode === WrOpcode.LOCAL_INV && qp.comp.idx !== qp.req.idx) return ReqState.DONE;
  if (qp.type === QpType.RC) {
    if (w.takesRdAtomic && qp.req.rdAtomic >= Math.max(1, qp.attr.maxRdAtomic)) return ReqState.DONE;
    if (w.sendFlags & SendFlags.FENCE && qp.req.rdAtomic > 0) return ReqState.DONE;
    if (w.takesRdAtomic) qp.req.rdAtomic++;
  }
  return ReqState.START;
}

function start(qp: Qp): ReqState {
  const w = run$.w!;
  if (w.isLocal) return ReqState.LOCAL;
  w.state = WqeState.PROCESSING;
  w.firstPsn = qp.req.psn;
  w.offset = 0;
  // a new WQE: a window read for the one before (its gathered SGEs) is not its; one read by index may be
  if (qp.staging !== null) qp.staging.send.dropOwned();
  const pkts = w.opcode === WrOpcode.RDMA_READ || !w.isReadOrAtomic ? Math.max(1, Math.ceil(w.length / qp.mtu)) : 1;
  w.lastPsn = (w.firstPsn + pkts - 1) & PSN_MASK;
  return ReqState.SEND;
}

function send(qp: Qp): ReqState {
  const w = run$.w!;
  if (!sendPacket(qp, w)) return ReqState.EXIT;
  run$.budget--;
  if (w.state === WqeState.PENDING) qp.req.idx = (qp.req.idx + 1) >>> 0;
  return ReqState.NEXT_WQE;
}

/**
 * rxe_do_local_ops: the bind or invalidation happens as the requester reaches the WQE, in order with the
 * packets of the WQEs before it; its completion waits, DONE, until theirs are written. A refused one completes
 * in error (MW_BIND_ERR for a bind, LOC_QP_OP_ERR for an invalidation) and the QP goes to ERR.
 */
function local(qp: Qp): ReqState {
  const w = run$.w!;
  const bind = w.opcode === WrOpcode.BIND_MW;
  const why = bind ? bindMw(qp, w) : invalidateRkey(qp, w.invRkey, false);
  // no PSNs: retiring it moves comp.psn nowhere
  w.firstPsn = qp.req.psn;
  w.lastPsn = (qp.req.psn - 1) & PSN_MASK;
  w.length = 0;
  qp.req.idx = (qp.req.idx + 1) >>> 0;
  run$.budget--;
  if (why !== null) {
    w.state = WqeState.PENDING;
    w.status = bind ? WcStatus.MW_BIND_ERR : WcStatus.LOC_QP_OP_ERR;
    failWqe(qp, `${bind ? 'BIND_MW' : 'LOCAL_INV'}: ${why}`);
    return ReqState.EXIT;
  }
  w.state = WqeState.DONE;
  retireDone(qp);
  return ReqState.NEXT_WQE;
}

function skip(qp: Qp): ReqState {
  qp.req.idx = (qp.req.idx + 1) >>> 0;
  return ReqState.NEXT_WQE;
}

function flush(qp: Qp): ReqState {
  flushSend(qp);
  return ReqState.EXIT;
}

function defer(qp: Qp): ReqState {
  qp.dev.sched.schedule(qp, Task.REQUESTER);
  return ReqState.EXIT;
}

function done(qp: Qp): ReqState {
  if (qp.type === QpType.RC) qp.armRetransmit();
  // (below 0: a span of a client's own memory is charged the packets it stands for)
  if (run$.budget <= 0 && qp.req.idx !== run$.prod) qp.dev.sched.schedule(qp, Task.REQUESTER);
  return ReqState.EXIT;
}


function runOnce(qp: Qp): void {
  let s: ReqState = ReqState.CHECK_QP;
  const hook = tracer.hook;
  // the common path, WQE after WQE, as straight-line calls (see the responder's receive); any other state continues in the loop
  if (!hook && (s = checkQp(qp)) === ReqState.NEXT_WQE) {
    for (;;) {
      s = nextWqe(qp);
      if (s === ReqState.FETCH) s = fetchWqe(qp);
      if (s === ReqState.CHECK_LIMITS) s = checkLimits(qp);
      if (s === ReqState.START) s = start(qp);
      if (s !== ReqState.SEND || (s = send(qp)) !== ReqState.NEXT_WQE) break;
    }
  }
  while (s !== ReqState.EXIT) {
    if (hook) hook('requester', qp.qpn, NAMES[s]!);
    // each state's function called by name, so every call site stays monomorphic (and inlinable)
    switch (s) {
      case ReqState.CHECK_QP: s = checkQp(qp); break;
      case ReqState.NEXT_WQE: s = nextWqe(qp); break;
      case ReqState.FETCH: s = fetchWqe(qp); break;
      case ReqState.CHECK_LIMITS: s = checkLimits(qp); break;
      case ReqState.START: s = start(qp); break;
      case ReqState.SEND: s = send(qp); break;
      case ReqState.SKIP: s = skip(qp); break;
      case ReqState.FLUSH: s = flush(qp); break;
      case ReqState.DEFER: s = defer(qp); break;
      case ReqState.DONE: s = done(qp); break;
      case ReqState.LOCAL: s = local(qp); break;
      default: s = ReqState.EXIT;
    }
  }
  run$.w = null;
}

/** Task.REQUESTER: the doorbell. Runs until the send queue stops moving, a few rounds at most, then yields. */
export function run(qp: Qp): void {
  // a client that keeps moving its producer index while we run gets a few rounds, then the next turn
  for (let round = 0; ; round++) {
    if (round === 8) {
      qp.dev.sched.schedule(qp, Task.REQUESTER);
      return;
    }
    const before = (qp.req.seen = qp.sq.produced());
    runOnce(qp);
    if (qp.destroyed) return;
    // a busy queue stays awake for a while, polled: the client's next post needs no doorbell
    if (qp.dev.linger.enabled && qp.dev.linger.hold(qp)) return;
    // going idle; WQEs the client wrote while we ran, without ringing, are ours to see (unless its doorbell is coming)
    if (!qp.sq.idle(before)) return;
  }
}

const transportOf = (qp: Qp) => (qp.type === QpType.RC ? Transport.RC : qp.type === QpType.UC ? Transport.UC : Transport.UD);

/** The packet's addressing: the AH of a UD WQE, the QP's path otherwise. */
function address(qp: Qp, w: SendWqe, p: Pkt): void {
  p.srcQpn = qp.qpn;
  p.srcPort = qp.srcPort;
  p.srcGid = qp.dev.gids[0]!;
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
}

/** Builds and sends the next packet of w. False if the WQE failed locally (already completed in error). */
function sendPacket(qp: Qp, w: SendWqe): boolean {
  const dev = qp.dev;
  const p = dev.newPkt();
  address(qp, w, p);
  const tr = transportOf(qp);
  const op = w.opcode;
  if (op === WrOpcode.RDMA_READ) {
    // w.offset: response packets already received (a resumed READ asks for the rest only)
    p.opcode = tr | Op.RDMA_READ_REQUEST;
    p.va = w.remoteAddr + w.offset * qp.mtu;
    p.rkey = w.rkey;
    p.dmaLen = w.length - w.offset * qp.mtu;
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
  if (op === WrOpcode.ATOMIC_WRITE) {
    atomicWritePacket(qp, w, p);
    return true;
  }
  const remaining = w.length - w.offset;
  const first = w.offset === 0;
  // to a device of this daemon, a run of MTU packets whose bytes lie in one SGE goes as one descriptor: one
  // copy and one pass through the engines for up to SPAN_BYTES, the PSNs advanced as by the packets it stands for
  let span = 1;
  if (remaining > qp.mtu && qp.mtu < SPAN_BYTES && dev.acceptsSpans(p.dstGid)) {
    span = Math.min(Math.ceil(remaining / qp.mtu), Math.floor(SPAN_BYTES / qp.mtu));
    const one = qp.single(w, w.offset, Math.min(remaining, span * qp.mtu));
    if (!one) span = 1;
    // a client's own memory: one read into the descriptor's span buffer, charged to this run's budget as the
    // packets it stands for (the bytes one run reads stay what they were packet by packet: its span buffers,
    // and the time the event loop is held, stay bounded)
    else if (one.mr.mem.view === null) run$.budget -= span - 1;
  }
  const n = Math.min(span * qp.mtu, remaining);
  const last = remaining <= span * qp.mtu;
  p.opcode = tr | sendOrWriteOpcode(op, first, last);
  if ((op === WrOpcode.RDMA_WRITE || op === WrOpcode.RDMA_WRITE_WITH_IMM) && first) {
    p.va = w.remoteAddr;
    p.rkey = w.rkey;
    p.dmaLen = w.length;
  }
  if (last && (op === WrOpcode.SEND_WITH_IMM || op === WrOpcode.RDMA_WRITE_WITH_IMM)) p.imm = w.imm;
  // the IETH's key (codec.ts carries it in rkey: a packet has a RETH or an IETH, never both)
  else if (last && op === WrOpcode.SEND_WITH_INV) p.rkey = w.invRkey;
  if (last && w.sendFlags & SendFlags.SOLICITED) p.se = true;
  qp.req.noAck++;
  if (qp.type === QpType.RC && (last || qp.req.noAck >= MAX_PKT_PER_ACK)) {
    p.ackReq = true;
    qp.req.noAck = 0;
  }
  if (n > 0 && !payload(qp, w, p, n, last)) {
    dev.freePkt(p);
    // as a WQE its checks refuse (fetchWqe): past the requester, so failWqe completes it with its status
    w.state = WqeState.PENDING;
    w.status = WcStatus.LOC_PROT_ERR;
    qp.req.idx = (qp.req.idx + 1) >>> 0;
    failWqe(qp);
    return false;
  }
  p.payLen = n;
  p.padCnt = (4 - (n & 3)) & 3;
  p.span = span;
  w.offset += n;
  qp.req.psn = (qp.req.psn + span) & PSN_MASK;
  if (last) {
    w.state = WqeState.PENDING;
    if (qp.type !== QpType.RC) p.done = w.onSent ??= () => completeUnreliable(qp, w);
  }
  dev.xmit(p);
  return true;
}

const u64 = new Uint8Array(8);
const u64dv = new DataView(u64.buffer);

/** ATOMIC_WRITE (rxe ≥ 6.2): one packet, a RETH for 8 bytes and the WQE's 8 bytes as its payload, ACKed as a write. */
function atomicWritePacket(qp: Qp, w: SendWqe, p: Pkt): void {
  p.opcode = Transport.RC | Op.ATOMIC_WRITE;
  p.va = w.remoteAddr;
  p.rkey = w.rkey;
  p.dmaLen = 8;
  const buf = pktBuffer(p, 8);
  u64dv.setBigUint64(0, w.compareAdd, true);
  buf.set(u64);
  p.payload = buf;
  p.payOff = 0;
  p.payLen = 8;
  p.padCnt = 0;
  p.ackReq = true;
  qp.req.noAck = 0;
  qp.req.psn = (qp.req.psn + 1) & PSN_MASK;
  w.state = WqeState.PENDING;
  qp.dev.xmit(p);
}

/**
 * The most bytes one span descriptor carries: a bound on the work of one pass, as a turn's packet budget is; a
 * span of a client's own memory is read into a staging buffer (spanBuffer), which holds as much.
 */
const SPAN_BYTES = 65536;
if (SPAN_BYTES > STAGE_BYTES) throw new Error('a span buffer holds less than a span');

/** SEND_* / RDMA_WRITE_* for a packet's place in its message (rxe's next_opcode). */
function sendOrWriteOpcode(op: number, first: boolean, last: boolean): number {
  const imm = op === WrOpcode.SEND_WITH_IMM || op === WrOpcode.RDMA_WRITE_WITH_IMM;
  if (op === WrOpcode.SEND_WITH_INV) {
    if (first && last) return Op.SEND_ONLY_WITH_INVALIDATE;
    if (first) return Op.SEND_FIRST;
    return last ? Op.SEND_LAST_WITH_INVALIDATE : Op.SEND_MIDDLE;
  }
  if (op === WrOpcode.SEND || op === WrOpcode.SEND_WITH_IMM) {
    if (first && last) return imm ? Op.SEND_ONLY_WITH_IMMEDIATE : Op.SEND_ONLY;
    if (first) return Op.SEND_FIRST;
    return last ? (imm ? Op.SEND_LAST_WITH_IMMEDIATE : Op.SEND_LAST) : Op.SEND_MIDDLE;
  }
  if (first && last) return imm ? Op.RDMA_WRITE_ONLY_WITH_IMMEDIATE : Op.RDMA_WRITE_ONLY;
  if (first) return Op.RDMA_WRITE_FIRST;
  return last ? (imm ? Op.RDMA_WRITE_LAST_WITH_IMMEDIATE : Op.RDMA_WRITE_LAST) : Op.RDMA_WRITE_MIDDLE;
}

/**
 * The packet's n payload bytes: the MR's memory itself when one SGE holds them all and the daemon maps it, else
 * copied into the descriptor's buffer (gathered from the SGEs, or read from the client's memory: a span's in one
 * read into its span buffer, an MTU packet's through the QP's read-ahead). False when the client's memory
 * could not be read (or an MR died). `last`: the message's last packet (its read-ahead window goes after it).
 */
function payload(qp: Qp, w: SendWqe, p: Pkt, n: number, last: boolean): boolean {
  const one = qp.single(w, w.offset, n);
  if (one) {
    const v = one.mr.mem.view;
    if (v !== null) {
      p.payload = v;
      p.payMap = one.mr.mapping;
      p.payOff = one.off;
      return true;
    }
    const buf = n > qp.mtu ? spanBuffer(p) : pktBuffer(p, n);
    // (a span is read whole, nothing ahead of it; an MTU packet's read reaches ahead into the rest of its SGE)
    const ra = qp.stage.send;
    const ok = ra.readWqe(qp.req.idx, run$.prod, one.mr.mem, one.off, buf, 0, n, n > qp.mtu ? n : one.rest);
    // after a message's last packet the window stays only for WQEs posted before it was read
    if (!ok || (last && !ra.servesFrom((qp.req.idx + 1) >>> 0))) ra.drop();
    if (!ok) return false;
    p.payload = buf;
    p.payOff = 0;
    return true;
  }
  const buf = pktBuffer(p, n);
  const ok = qp.gather(w, w.offset, buf, 0, n);
  if ((last || !ok) && qp.staging !== null) qp.staging.send.drop();
  if (!ok) return false;
  p.payload = buf;
  p.payOff = 0;
  return true;
}

/**
 * Task.RETRY: go back to the oldest unacknowledged WQE and send again from
 * there (go-back-N). The oldest resumes at the first PSN not yet answered
 * (comp.psn): a SEND or WRITE from its next packet, a READ with a request
 * for the responses still missing; everything after it goes again whole.
 */
export function retry(qp: Qp): void {
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
  // what goes again is read again
  if (qp.staging !== null) qp.staging.send.reset();
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
  run(qp);
}
