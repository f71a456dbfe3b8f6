/**
 * The queue pair: attributes, the IBA state machine with its
 * required/optional attribute table, the send ring, and the state the
 * requester, responder and completer keep (rxe's qp->req, qp->resp,
 * qp->comp). The three engines live in their own modules.
 */
import { Access, EventType, mtuBytes, QpAttrMask as A, qpAttrMaskNames, QpState, qpStateName, QpType, SendFlags, WcStatus, WrOpcode } from '../abi/enums.js';
import type { QpCaps } from '../abi/queue.js';
import { copyBytes } from '../abi/ring.js';
import { RecvWqe, SendWqeFields, WrMask, wrMask, type RecvQueueConsumer, type SendQueueConsumer } from '../abi/wqe.js';
import type { Mapping } from '../native/libc.js';
import { udpSportOfQpn } from './codec.js';
import type { CounterName } from './counters.js';
import { SglCursor, type Ah, type Cq, type Mr, type Mw, type Owner, type Pd, type Srq } from './objects.js';
import type { Pkt } from './packet.js';
import type { Linger } from './linger.js';
import type { MrMemory } from './mr-memory.js';
import { QpStaging } from './staging.js';
import { Task, type Scheduler } from './scheduler.js';

/** What a QP's engines need of the device it lives on (rxe's `struct rxe_dev` as the QP sees it; SoftDevice is one). */
export interface Hca {
  readonly counters: Record<CounterName, number>;
  readonly gids: readonly Uint8Array[];
  /** the port's active MTU in bytes (what a UD message may carry) */
  readonly mtuBytes: number;
  readonly sched: Scheduler<Qp>;
  /** adaptive polling of busy send queues */
  readonly linger: Linger<Qp>;
  /** a packet descriptor from the pool, and back */
  newPkt(): Pkt;
  freePkt(p: Pkt): void;
  /** a packet one of the engines made: onto the fabric; returns where it waits there (-1: not known) */
  xmit(p: Pkt): number;
  /** whether a packet xmit() placed at `at` is still waiting to be delivered or sent */
  stillQueued(p: Pkt, at: number): boolean;
  /** whether packets to `gid` may travel as spans (Pkt.span): a device of this daemon, nothing watching */
  acceptsSpans(gid: Uint8Array): boolean;
  lookupMr(key: number): Mr | null;
  /** the window whose rkey is `rkey` */
  lookupMw(rkey: number): Mw | null;
  /** a packet dropped on its way to a QP, by reason */
  countDrop(why: string): void;
  /** the QP entered ERR, and why */
  qpError(qp: Qp, why: string): void;
}

/** Where a send WQE is in its life. */
export const WqeState = { FREE: 0, POSTED: 1, PROCESSING: 2, PENDING: 3, DONE: 4 } as const;
export type WqeState = (typeof WqeState)[keyof typeof WqeState];

/** Bytes of daemon memory one send WQE's state takes at these caps, rounded up (for the owner's memory quota). */
export function wqeBytes(maxSge: number, maxInline: number): number {
  return 400 + maxInline + maxSge * 40;
}

/** A send WQE as the HCA holds it: the fields read from the ring (a private copy), and what the engines keep while it runs. */
export class SendWqe extends SendWqeFields {
  state: WqeState = WqeState.FREE;
  /** what the last packet of a UC/UD message runs once it has left, to complete this WQE (made once per WQE object) */
  onSent: (() => void) | null = null;
  ah: Ah | null = null;
  length = 0;
  readonly mr: Array<Mr | null>;
  firstPsn = 0;
  lastPsn = 0;
  /** Bytes (or, for READ, response packets) handled so far. */
  offset = 0;
  status: WcStatus = WcStatus.SUCCESS;
  constructor(maxSge: number, maxInline: number) {
    super(maxSge, maxInline);
    this.mr = new Array(maxSge).fill(null);
  }
  /** BIND_MW, LOCAL_INV: done by the HCA itself, no packet (rxe's WR_LOCAL_OP_MASK) */
  get isLocal(): boolean {
    return this.opcode === WrOpcode.BIND_MW || this.opcode === WrOpcode.LOCAL_INV;
  }
  get isReadOrAtomic(): boolean {
    return this.opcode === WrOpcode.RDMA_READ || this.opcode === WrOpcode.ATOMIC_CMP_AND_SWP || this.opcode === WrOpcode.ATOMIC_FETCH_AND_ADD;
  }
  /** READ, the atomics and ATOMIC_WRITE: each holds one of the responder's resources, so max_rd_atomic bounds them (rxe ≥ 6.2 too) */
  get takesRdAtomic(): boolean {
    return this.opcode === WrOpcode.ATOMIC_WRITE || this.isReadOrAtomic;
  }
  get signaled(): boolean {
    return (this.sendFlags & SendFlags.SIGNALED) !== 0;
  }
}

/** Path (primary address vector) the QP sends to. */
export interface Path {
  dgid: Uint8Array;
  sgidIndex: number;
  hopLimit: number;
  trafficClass: number;
  flowLabel: number;
  isGlobal: boolean;
}

export interface QpAttr {
  qkey: number;
  rqPsn: number;
  sqPsn: number;
  destQpn: number;
  accessFlags: number;
  pathMtu: number;
  pkeyIndex: number;
  port: number;
  timeout: number;
  retryCnt: number;
  rnrRetry: number;
  minRnrTimer: number;
  maxRdAtomic: number;
  maxDestRdAtomic: number;
  enSqdAsyncNotify: number;
  pathMigState: number;
  path: Path;
}

/** A read response still going out (the responder's output queue): what it sends, captured when the READ came. */
export interface ReadOut {
  kind: 'read';
  firstPsn: number;
  va: number;
  length: number;
  /** packets in all, and the index of the next to send */
  n: number;
  next: number;
  msn: number;
  /** the MR, and its IOVA, memory and mapping when the READ came */
  mr: Mr | null;
  iova: number;
  mem: MrMemory | null;
  map: Mapping | null;
  mtu: number;
}

/** A responder resource: what a duplicate READ or ATOMIC is answered from. */
export interface RespRes {
  valid: boolean;
  atomic: boolean;
  /** an ATOMIC_WRITE: a duplicate is ACKed, not stored again */
  atomicWrite: boolean;
  firstPsn: number;
  lastPsn: number;
  va: number;
  rkey: number;
  length: number;
  orig: bigint;
}

/**
 * modify_qp's table (IBA 11.2.5.2 / the kernel's qp_state_table): for each
 * cur→next pair that is allowed, the mask bits required and allowed, per
 * QP type. STATE is always allowed; anything else outside req|opt is EINVAL.
 */
type Masks = Partial<Record<number, { req: number; opt: number }>>;
const T = (rc: [number, number], uc: [number, number], ud: [number, number]): Masks => ({
  [QpType.RC]: { req: rc[0], opt: rc[1] },
  [QpType.UC]: { req: uc[0], opt: uc[1] },
  [QpType.UD]: { req: ud[0], opt: ud[1] },
});
const ALL0 = T([0, 0], [0, 0], [0, 0]);
const S = QpState;
export const QP_STATE_TABLE: Record<number, Partial<Record<number, Masks>>> = {
  [S.RESET]: {
    [S.RESET]: ALL0,
    [S.ERR]: ALL0,
    [S.INIT]: T([A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS, 0], [A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS, 0], [A.PKEY_INDEX | A.PORT | A.QKEY, 0]),
  },
  [S.INIT]: {
    [S.RESET]: ALL0,
    [S.ERR]: ALL0,
    [S.INIT]: T([0, A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS], [0, A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS], [0, A.PKEY_INDEX | A.PORT | A.QKEY]),
    [S.RTR]: T(
      [A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN | A.MAX_DEST_RD_ATOMIC | A.MIN_RNR_TIMER, A.ALT_PATH | A.ACCESS_FLAGS | A.PKEY_INDEX],
      [A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN, A.ALT_PATH | A.ACCESS_FLAGS | A.PKEY_INDEX],
      [0, A.PKEY_INDEX | A.QKEY],
    ),
  },
  [S.RTR]: {
    [S.RESET]: ALL0,
    [S.ERR]: ALL0,
    [S.RTS]: T(
      [A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.SQ_PSN | A.MAX_QP_RD_ATOMIC, A.CUR_STATE | A.ALT_PATH | A.ACCESS_FLAGS | A.MIN_RNR_TIMER | A.PATH_MIG_STATE],
      [A.SQ_PSN, A.CUR_STATE | A.ALT_PATH | A.ACCESS_FLAGS | A.PATH_MIG_STATE],
      [A.SQ_PSN, A.CUR_STATE | A.QKEY],
    ),
  },
  [S.RTS]: {
    [S.RESET]: ALL0,
    [S.ERR]: ALL0,
    [S.RTS]: T(
      [0, A.CUR_STATE | A.ACCESS_FLAGS | A.ALT_PATH | A.PATH_MIG_STATE | A.MIN_RNR_TIMER],
      [0, A.CUR_STATE | A.ACCESS_FLAGS | A.ALT_PATH | A.PATH_MIG_STATE],
      [0, A.CUR_STATE | A.QKEY],
    ),
    [S.SQD]: T([0, A.EN_SQD_ASYNC_NOTIFY], [0, A.EN_SQD_ASYNC_NOTIFY], [0, A.EN_SQD_ASYNC_NOTIFY]),
  },
  [S.SQD]: {
    [S.RESET]: ALL0,
    [S.ERR]: ALL0,
    [S.RTS]: T(
      [0, A.CUR_STATE | A.ALT_PATH | A.ACCESS_FLAGS | A.MIN_RNR_TIMER | A.PATH_MIG_STATE],
      [0, A.CUR_STATE | A.ALT_PATH | A.ACCESS_FLAGS | A.PATH_MIG_STATE],
      [0, A.CUR_STATE | A.QKEY],
    ),
    [S.SQD]: T(
      [0, A.PORT | A.AV | A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.MAX_QP_RD_ATOMIC | A.MAX_DEST_RD_ATOMIC | A.ALT_PATH | A.ACCESS_FLAGS | A.PKEY_INDEX | A.MIN_RNR_TIMER | A.PATH_MIG_STATE],
      [0, A.AV | A.ALT_PATH | A.ACCESS_FLAGS | A.PKEY_INDEX | A.PATH_MIG_STATE],
      [0, A.PKEY_INDEX | A.QKEY],
    ),
  },
  [S.SQE]: {
    [S.RESET]: ALL0,
    [S.ERR]: ALL0,
    [S.RTS]: T([0, 0], [0, A.CUR_STATE | A.ACCESS_FLAGS], [0, A.CUR_STATE | A.QKEY]),
  },
  [S.ERR]: { [S.RESET]: ALL0, [S.ERR]: ALL0 },
};

/**
 * Why `mask` is not valid for cur→next on this QP type (ib_modify_qp_is_ok's checks), naming the
 * attributes missing or not allowed; null when it is valid.
 */
export function modifyMaskError(cur: number, next: number, type: number, mask: number): string | null {
  if (cur < 0 || cur > S.ERR) return `the QP state ${cur} does not exist`;
  if (next < 0 || next > S.ERR) return `qp_state ${next} does not exist`;
  const move = `${qpStateName(cur)}->${qpStateName(next)}`;
  if (mask & A.CUR_STATE && cur !== S.RTS && cur !== S.SQD && cur !== S.SQE) return `${move}: CUR_STATE (curQpState) is only allowed from RTS, SQD or SQE`;
  const m = QP_STATE_TABLE[cur]?.[next]?.[type];
  if (!m) return `${move} is not a transition a QP of this type makes`;
  const missing = m.req & ~mask;
  if (missing) return `${move} needs ${qpAttrMaskNames(missing)} in attr_mask`;
  const extra = mask & ~(m.req | m.opt | A.STATE);
  if (extra) return `${move} does not take ${qpAttrMaskNames(extra)}`;
  return null;
}

/** Is `mask` valid for cur→next on this QP type? (ib_modify_qp_is_ok) */
export function modifyIsOk(cur: number, next: number, type: number, mask: number): boolean {
  return modifyMaskError(cur, next, type, mask) === null;
}

export class Qp {
  private _state: QpState = QpState.RESET;
  /** The QP state; mirrored into the send ring header so the library sees ERR without asking (postRecv must then ring). */
  get state(): QpState {
    return this._state;
  }
  set state(s: QpState) {
    this._state = s;
    this.sq.setState(s);
  }
  attr: QpAttr = {
    qkey: 0, rqPsn: 0, sqPsn: 0, destQpn: 0, accessFlags: 0, pathMtu: 5, pkeyIndex: 0, port: 1, timeout: 0, retryCnt: 0, rnrRetry: 0,
    minRnrTimer: 0, maxRdAtomic: 0, maxDestRdAtomic: 0, enSqdAsyncNotify: 0, pathMigState: 0,
    path: { dgid: new Uint8Array(16), sgidIndex: 0, hopLimit: 64, trafficClass: 0, flowLabel: 0, isGlobal: true },
  };
  mtu = 4096;
  /** UDP source port of its packets: from the QPN at creation, from the flow (rdma_get_udp_sport) once connected. */
  srcPort: number;
  asyncEvents = 0;
  /** COMM_EST raised (once per connection: cleared by RESET). */
  commEst = false;
  /** Destroyed: its rings are unmapped, so nothing may touch it (a deferred doorbell or timer checks this). */
  destroyed = false;
  readonly userHandle: bigint;
  /** Tasks scheduled for the next turn (the scheduler's bits). */
  scheduled = 0;
  /** Daemon memory charged to the owner for this QP (given back when it is destroyed). */
  chargedBytes = 0;

  readonly sq: SendQueueConsumer;
  readonly wqes: SendWqe[];

  /** Requester (rxe qp->req): next WQE index to work on, next PSN, READ/ATOMIC in flight, packets since an ACK was asked for. */
  /** seen: the producer index as the requester last read it (what a poll compares against) */
  req = { idx: 0, psn: 0, rdAtomic: 0, noAck: 0, seen: 0 };
  /** Completer (rxe qp->comp): oldest unfinished WQE, next PSN expected to be answered, retry budgets. */
  comp = { idx: 0, psn: 0, retryCnt: 0, rnrRetry: 0, timer: null as NodeJS.Timeout | null, deadline: 0, rnrTimer: null as NodeJS.Timeout | null };
  /** Responder (rxe qp->resp). */
  resp = {
    psn: 0, msn: 0, sentPsnNak: false,
    /** the opcode class of the message in progress (M.SEND / M.WRITE) or 0 between messages */
    inMsg: 0,
    wqe: null as RecvWqe | null,
    offset: 0,
    mr: null as Mr | null,
    va: 0,
    resid: 0,
    writeLen: 0,
    dropMsg: false,
    res: [] as RespRes[],
    resHead: 0,
    /** responses waiting behind a long read response, in PSN order (empty almost always) */
    outq: [] as Array<ReadOut | Pkt>,
    /** the last response sent, if it is a plain ACK, and where it waits in the fabric: a later ACK folds into it */
    lastAck: null as Pkt | null,
    lastAckAt: -1,
    lastAckLife: 0,
  };
  readonly recvWqe: RecvWqe;
  /** Staging for a client's own memory (ProcMemory): made the first time one of the engines moves some (staging.ts). */
  staging: QpStaging | null = null;
  get stage(): QpStaging {
    return (this.staging ??= new QpStaging());
  }

  constructor(
    readonly dev: Hca,
    readonly owner: Owner,
    readonly qpn: number,
    readonly type: QpType,
    readonly pd: Pd,
    readonly sendCq: Cq,
    readonly recvCq: Cq,
    readonly srq: Srq | null,
    readonly rq: RecvQueueConsumer | null,
    readonly sqSigAll: boolean,
    readonly caps: QpCaps,
    public mapping: Mapping,
    sq: SendQueueConsumer,
    userHandle: bigint,
  ) {
    this.userHandle = userHandle;
    this.srcPort = udpSportOfQpn(qpn);
    this.sq = sq;
    // WQE state for what is in flight, not for every slot of the ring: it grows (doubling, up to the ring) as the
    // window from the oldest unfinished WQE widens, so an idle QP at large caps costs the daemon little
    this.wqes = Array.from({ length: Math.min(sq.slots, 16) }, () => new SendWqe(caps.maxSendSge, caps.maxInlineData));
    this.recvWqe = new RecvWqe(Math.max(caps.maxRecvSge, srq ? srq.ring.maxSge : 0, 1));
  }

  /**
   * Send WQEs the client has posted. A producer index further ahead than the ring holds is the client's
   * lie: as rxe masks its queue indices, only its low bits count, so it names at most a ring's worth of
   * WQEs and, once those are done, none (clamping it to a full ring instead gave a fresh ring of work
   * after every ring completed: 2^30 WQEs from one bogus index).
   */
  sqProduced(): number {
    const prod = this.sq.produced();
    const n = (prod - this.comp.idx) >>> 0;
    if (n <= this.sq.slots) return prod;
    // never below what the requester has already taken: the masked count may be smaller than that
    const taken = (this.req.idx - this.comp.idx) >>> 0;
    return (this.comp.idx + Math.max(n & (this.sq.slots - 1), taken)) >>> 0;
  }

  wqeAt(idx: number): SendWqe {
    const d = (idx - this.comp.idx) >>> 0;
    if (d >= this.wqes.length && d < this.sq.slots) this.growWqes(d + 1);
    return this.wqes[idx & (this.wqes.length - 1)]!;
  }

  /** Widens the WQE window to hold n from comp.idx on; the live WQEs keep their objects at their new places. */
  private growWqes(n: number): void {
    const old = this.wqes;
    let cap = old.length;
    while (cap < n) cap *= 2;
    cap = Math.min(cap, this.sq.slots);
    const next: SendWqe[] = new Array(cap);
    for (let i = 0; i < old.length; i++) {
      const idx = (this.comp.idx + i) >>> 0;
      next[idx & (cap - 1)] = old[idx & (old.length - 1)]!;
    }
    for (let i = 0; i < cap; i++) next[i] ??= new SendWqe(this.caps.maxSendSge, this.caps.maxInlineData);
    (this as { wqes: SendWqe[] }).wqes = next;
  }

  /**
   * Copies the WQE at `idx` out of the shared ring and checks it as hardware
   * would. Returns 0 or the WC status it fails with.
   */
  fetch(idx: number): WcStatus {
    const w = this.wqeAt(idx);
    this.sq.read(idx, w);
    w.state = WqeState.POSTED;
    if (this.sqSigAll) w.sendFlags |= SendFlags.SIGNALED;
    w.offset = 0;
    w.status = WcStatus.SUCCESS;
    w.length = 0;
    w.ah = null;
    const t = this.type;
    const m = wrMask(t, w.opcode);
    if (m === 0) return WcStatus.LOC_QP_OP_ERR;
    // a local operation moves no data: its SGEs, if the client wrote any, are not looked at (as rxe)
    if (m & WrMask.LOCAL) {
      w.numSge = 0;
      return WcStatus.SUCCESS;
    }
    if (m & WrMask.ATOMIC_WRITE) {
      // its 8 bytes came with the WQE (compareAdd); any SGEs or inline flag it carries mean nothing
      w.inline = false;
      w.numSge = 0;
      w.length = 8;
      return WcStatus.SUCCESS;
    }
    if (t === QpType.UD) {
      w.ah = this.owner.lookupAh(w.ahHandle);
      if (!w.ah || w.ah.pd !== this.pd) return WcStatus.LOC_QP_OP_ERR;
    }
    if (w.inline) {
      if (!(m & WrMask.INLINE)) return WcStatus.LOC_QP_OP_ERR;
      if (w.inlineLen > this.caps.maxInlineData) return WcStatus.LOC_LEN_ERR;
      w.length = w.inlineLen;
      return this.checkLength(w);
    }
    const n = w.numSge;
    if (n > this.caps.maxSendSge) {
      // the reader copied none of them
      w.numSge = 0;
      return WcStatus.LOC_QP_OP_ERR;
    }
    // READ and atomics write into local memory: their SGEs need LOCAL_WRITE
    const need = m & (WrMask.READ | WrMask.ATOMIC) ? Access.LOCAL_WRITE : 0;
    for (let i = 0; i < n; i++) {
      const len = w.len[i]!;
      w.length += len;
      if (len === 0) {
        w.mr[i] = null;
        continue;
      }
      const lkey = w.lkey[i]!;
      const mr = this.dev.lookupMr(lkey);
      if (!mr || mr.key !== lkey || mr.pd !== this.pd || (mr.access & need) !== need || !mr.contains(w.addr[i]!, len)) return WcStatus.LOC_PROT_ERR;
      w.mr[i] = mr;
    }
    if (m & WrMask.ATOMIC && w.length !== 8) return WcStatus.LOC_LEN_ERR;
    return this.checkLength(w);
  }

  private checkLength(w: SendWqe): WcStatus {
    if (w.length > 0x80000000) return WcStatus.LOC_LEN_ERR;
    if (this.type === QpType.UD && w.length > this.mtu) return WcStatus.LOC_LEN_ERR;
    return WcStatus.SUCCESS;
  }

  /**
   * Copies `len` bytes of the WQE's data from byte `off` into dst (the requester's gather; a client's own memory
   * through the requester's read-ahead). False on a dead MR or unreadable client memory.
   */
  gather(w: SendWqe, off: number, dst: Uint8Array, dstOff: number, len: number): boolean {
    if (w.inline) {
      copyBytes(dst, dstOff, w.inlineData, off, len);
      return true;
    }
    return copySges(this, w, off, len, dst, dstOff, false, false, false);
  }

  /**
   * Copies len bytes from src into the WQE's SGEs at byte `off` (READ responses, atomic results). `staged`: into a
   * client's own memory through the completer's write-behind (READ responses), the message's last bytes when
   * `last` (written then, with what was staged before them).
   */
  scatter(w: SendWqe, off: number, src: Uint8Array, srcOff: number, len: number, staged = false, last = false): boolean {
    return copySges(this, w, off, len, src, srcOff, true, staged, last);
  }

  /**
   * If the whole [off, off+len) lies in one SGE, its MR, offset into MR memory (zero-copy send) and how many
   * bytes of the SGE there are from there on.
   */
  single(w: SendWqe, off: number, len: number): { mr: Mr; off: number; rest: number } | null {
    if (w.inline) return null;
    let base = 0;
    for (let i = 0; i < w.numSge; i++) {
      const l = w.len[i]!;
      if (off >= base && off + len <= base + l) {
        const mr = w.mr[i];
        if (!mr || !mr.valid) return null;
        SINGLE.mr = mr;
        SINGLE.off = w.addr[i]! - mr.iova + (off - base);
        SINGLE.rest = base + l - off;
        return SINGLE;
      }
      base += l;
    }
    return null;
  }

  setMtu(pathMtu: number, portMtu: number): void {
    this.mtu = Math.min(mtuBytes(pathMtu) || portMtu, portMtu);
  }

  /**
   * modify_qp to RESET (rxe_qp_reset): timers stop and everything posted is forgotten, as a reset QP's
   * queues are empty; the consumers catch up with the client's producer indices, so nothing posted before
   * the reset is run after it.
   */
  reset(): void {
    this.stopTimers();
    this.state = QpState.RESET;
    const sqProd = this.sq.produced();
    for (const w of this.wqes) w.state = WqeState.FREE;
    this.req.idx = this.comp.idx = sqProd;
    this.req.rdAtomic = this.req.noAck = 0;
    this.sq.setConsumed(sqProd);
    this.rq?.reset();
    this.resp.wqe = null;
    this.resp.inMsg = 0;
    this.resp.res.length = 0;
    this.resp.outq.length = 0;
    this.resp.msn = 0;
    this.commEst = false;
    // what arrived before the reset lands; read-ahead windows go
    this.staging?.release();
  }

  /** The QP is gone or in error: stop its timers. */
  stopTimers(): void {
    this.stopRetransmit();
    if (this.comp.rnrTimer) clearTimeout(this.comp.rnrTimer);
    this.comp.rnrTimer = null;
  }

  /** The local ACK timeout: 4.096 µs × 2^timeout, in ms; 0 means wait for ever (no timer). Asked on every ACK: computed once per value. */
  timeoutMs(): number {
    const t = this.attr.timeout;
    if (t !== this.rto.of) {
      this.rto.of = t;
      this.rto.ms = t === 0 ? 0 : Math.max(1, Math.round((4.096 * 2 ** t) / 1000));
    }
    return this.rto.ms;
  }
  private readonly rto = { of: 0, ms: 0 };

  /** Arms the retransmit timer if anything waits for an answer and it is not running (nor an RNR wait). */
  armRetransmit(): void {
    if (this.comp.timer || this.comp.rnrTimer || this.state === QpState.ERR) return;
    const w = this.wqeAt(this.comp.idx);
    if (w.state !== WqeState.PENDING && w.state !== WqeState.PROCESSING) return;
    const ms = this.timeoutMs();
    if (ms === 0) return;
    this.comp.deadline = performance.now() + ms;
    this.comp.timer = this.dev.sched.after(this, Task.TIMEOUT, ms);
  }

  /** Progress: the timeout counts from now. The deadline moves, the timer stays (re-creating it per ACK was 14% of a daemon's CPU). */
  restartRetransmit(): void {
    if (this.comp.timer) this.comp.deadline = performance.now() + this.timeoutMs();
    else this.armRetransmit();
  }

  stopRetransmit(): void {
    if (this.comp.timer) clearTimeout(this.comp.timer);
    this.comp.timer = null;
  }

  raise(type: EventType): void {
    this.owner.asyncEvent(this.userHandle, type, this);
  }
}

/** single()'s answer: the MR holding a packet's payload and the offset in its memory (one object, reused). */
class SingleSge {
  mr!: Mr;
  off = 0;
  rest = 0;
}
const SINGLE = new SingleSge();

/**
 * Copies `len` bytes between the WQE's SGEs from byte `off` and buf[bufOff..] (into the SGEs when `toWqe`). A
 * client's own memory is read through the requester's read-ahead (ahead: the rest of each SGE), and written
 * through the completer's write-behind when `staged` (`last`: the message's last bytes). False on a dead MR,
 * client memory that could not be read or written, or a list shorter than off+len.
 */
const sgl = new SglCursor();
function copySges(qp: Qp, w: SendWqe, off: number, len: number, buf: Uint8Array, bufOff: number, toWqe: boolean, staged: boolean, last: boolean): boolean {
  const c = sgl.start(w.numSge, w.len, off, len);
  while (c.next()) {
    const mr = w.mr[c.i];
    if (!mr || !mr.valid) return false;
    const mOff = w.addr[c.i]! - mr.iova + c.sgeOff;
    const v = mr.mem.view;
    if (v !== null) {
      if (toWqe) copyBytes(v, mOff, buf, bufOff + c.done, c.n);
      else copyBytes(buf, bufOff + c.done, v, mOff, c.n);
    } else if (!toWqe) {
      if (!qp.stage.send.read(w, mr.mem, mOff, buf, bufOff + c.done, c.n, w.len[c.i]! - c.sgeOff)) return false;
    } else if (!(staged ? qp.stage.comp.write(mr.mem, mOff, buf, bufOff + c.done, c.n, 0, last && c.done + c.n === len) : mr.mem.write(mOff, buf, bufOff + c.done, c.n))) return false;
  }
  return c.complete;
}

