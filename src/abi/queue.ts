/**
 * The softverbs provider's shared queues (what rxe keeps in `rxe_queue.h`
 * and `rxe-abi.h`): rings in a memfd both sides map. Indices are free-running
 * u32 counters, each written by one side only and read with Atomics so the
 * other process sees them in order. The daemon never trusts a value it reads
 * here: every index and every WQE field is checked before use.
 *
 * Every layout is a pure function of the sizes the client asked for, so the
 * client can size its memfd before the daemon answers, and the daemon can
 * check the memfd is big enough.
 */
import { layout } from './layout.js';
import { WC } from './uverbs.js';

/** Ring header: each index on its own cache line so the two writers do not share one. */
export const RING_HDR = 256;
/** Word offsets (Int32Array index) in the header. */
export const PROD = 0; // producer index
export const CONS = 16; // consumer index (byte 64)
export const NOTIFY = 32; // CQ arm: 0 none, 1 next completion, 2 solicited only (byte 128)
export const QP_STATE = 40; // SQ: the QP state, written by the daemon (byte 160)
/**
 * SQ doorbell suppression (byte 192): 1 = the HCA will not look at this SQ
 * again without a doorbell; 0 = it has been rung and will look. postSend
 * rings only when it is the one to turn 1 into 0; the HCA sets 1 after a
 * run and looks again itself if WQEs arrived meanwhile.
 */
export const SQ_IDLE = 48;

export const Notify = { NONE: 0, NEXT_COMP: 1, SOLICITED: 2 } as const;

export const WC_SIZE = layout(WC).size; // 48
export const SGE_SIZE = 16; // struct ibv_sge: u64 addr, u32 length, u32 lkey

/**
 * Send WQE, 96 bytes then the SGE list (or inline data):
 *  0 wr_id u64 | 8 opcode u32 | 12 send_flags u32 | 16 num_sge u32 | 20 imm_data u32 (network order, as ibv_send_wr)
 * 24 remote_addr u64 | 32 rkey u32 | 36 inline_len u32 | 40 compare_add u64 | 48 swap u64
 * 56 ah_handle u32 | 60 remote_qpn u32 | 64 remote_qkey u32 | 68..96 reserved
 */
export const SWQE = {
  WR_ID: 0, OPCODE: 8, SEND_FLAGS: 12, NUM_SGE: 16, IMM: 20, REMOTE_ADDR: 24, RKEY: 32, INLINE_LEN: 36, COMPARE_ADD: 40, SWAP: 48,
  AH: 56, REMOTE_QPN: 60, REMOTE_QKEY: 64, HDR: 96,
} as const;
/** Receive WQE: wr_id u64, num_sge u32, reserved u32, then SGEs. */
export const RWQE = { WR_ID: 0, NUM_SGE: 8, HDR: 16 } as const;

export const PAGE = 4096;
const pageUp = (n: number) => Math.ceil(n / PAGE) * PAGE;

/** Smallest power of two ≥ n (n ≥ 1). */
export function pow2(n: number): number {
  let p = 1;
  while (p < n) p *= 2;
  return p;
}

/** Device limits the layouts are checked against (also QUERY_DEVICE's answer). */
export const Limits = {
  maxQpWr: 16384,
  maxSge: 32,
  maxInline: 512,
  maxCqe: 32767,
  maxSrqWr: 16384,
  maxSrqSge: 27,
  maxQpRdAtom: 128,
  /** one MR is one ArrayBuffer view in the daemon: Node caps those at 4 GiB */
  maxMrSize: 2 ** 32,
} as const;

export interface RingLayout {
  /** Byte offset of the ring's header inside the memfd. */
  readonly offset: number;
  readonly slots: number;
  readonly stride: number;
  /** Bytes this ring occupies (page aligned). */
  readonly bytes: number;
}

function ring(offset: number, slots: number, stride: number): RingLayout {
  return { offset, slots, stride, bytes: pageUp(RING_HDR + slots * stride) };
}

/** CQ: `cqe` usable entries; one more slot than usable, rounded to a power of two. */
export function cqLayout(cqe: number): RingLayout & { cqe: number } {
  const slots = pow2(cqe + 1);
  return { ...ring(0, slots, WC_SIZE), cqe: slots - 1 };
}

export interface QpCaps {
  maxSendWr: number;
  maxRecvWr: number;
  maxSendSge: number;
  maxRecvSge: number;
  maxInlineData: number;
}

export interface QpLayout {
  readonly caps: QpCaps;
  readonly sq: RingLayout;
  /** Absent when the QP uses an SRQ. */
  readonly rq: RingLayout | null;
  readonly bytes: number;
}

/** Send WQE stride for these caps: header plus the larger of the SGE list and inline data, 16-byte aligned. */
export function sendStride(maxSendSge: number, maxInline: number): number {
  return SWQE.HDR + Math.max(maxSendSge * SGE_SIZE, Math.ceil(maxInline / 16) * 16, SGE_SIZE);
}

/** Returns null when a cap is over the device limit (EINVAL). Caps come back rounded up as the QP really has them. */
export function qpLayout(req: QpCaps, srq: boolean): QpLayout | null {
  const r = req;
  if (r.maxSendWr > Limits.maxQpWr || r.maxRecvWr > Limits.maxQpWr || r.maxSendSge > Limits.maxSge || r.maxRecvSge > Limits.maxSge || r.maxInlineData > Limits.maxInline) return null;
  const sendSge = Math.max(1, r.maxSendSge);
  const sqSlots = pow2(Math.max(1, r.maxSendWr));
  const sStride = sendStride(sendSge, r.maxInlineData);
  const inline = sStride - SWQE.HDR;
  const sq = ring(0, sqSlots, sStride);
  let rq: RingLayout | null = null;
  let recvSge = 0;
  let rqSlots = 0;
  if (!srq) {
    recvSge = Math.max(1, r.maxRecvSge);
    rqSlots = pow2(Math.max(1, r.maxRecvWr));
    rq = ring(sq.bytes, rqSlots, RWQE.HDR + recvSge * SGE_SIZE);
  }
  const caps: QpCaps = {
    maxSendWr: sqSlots,
    maxRecvWr: rqSlots,
    maxSendSge: Math.min(sendSge + 0, Limits.maxSge),
    maxRecvSge: recvSge,
    maxInlineData: Math.min(inline, Limits.maxInline),
  };
  return { caps, sq, rq, bytes: sq.bytes + (rq ? rq.bytes : 0) };
}

/** SRQ: one receive ring. */
export function srqLayout(maxWr: number, maxSge: number): RingLayout | null {
  if (maxWr < 1 || maxWr > Limits.maxSrqWr || maxSge < 1 || maxSge > Limits.maxSrqSge) return null;
  return ring(0, pow2(maxWr), RWQE.HDR + maxSge * SGE_SIZE);
}
