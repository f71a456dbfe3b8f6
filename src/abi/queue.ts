/**
 * The softverbs provider's shared queues (what rxe keeps in `rxe_queue.h`
 * and `rxe-abi.h`): how big the rings in a memfd both sides map are, and the
 * device limits they are checked against. The daemon never trusts a value it
 * reads from them: every index and every WQE field is checked before use.
 *
 * Every layout is a pure function of the sizes the client asked for, so the
 * client can size its memfd before the daemon answers, and the daemon can
 * check the memfd is big enough.
 */
import { CQE } from './cq-ring.js';
import { RW } from './recv-ring.js';
import { RING_HDR, SG, type RingLayout } from './ring.js';

export type { RingLayout };
import { SW } from './send-ring.js';

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


function ring(offset: number, slots: number, stride: number): RingLayout {
  return { offset, slots, stride, bytes: pageUp(RING_HDR + slots * stride) };
}

/** CQ: `cqe` usable entries; one more slot than usable, rounded to a power of two. */
export function cqLayout(cqe: number): RingLayout & { cqe: number } {
  const slots = pow2(cqe + 1);
  return { ...ring(0, slots, CQE.SIZE), cqe: slots - 1 };
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
  return SW.SIZE + Math.max(maxSendSge * SG.SIZE, Math.ceil(maxInline / 16) * 16, SG.SIZE);
}

/** Returns null when a cap is over the device limit (EINVAL). Caps come back rounded up as the QP really has them. */
export function qpLayout(req: QpCaps, srq: boolean): QpLayout | null {
  const r = req;
  if (r.maxSendWr > Limits.maxQpWr || r.maxRecvWr > Limits.maxQpWr || r.maxSendSge > Limits.maxSge || r.maxRecvSge > Limits.maxSge || r.maxInlineData > Limits.maxInline) return null;
  const sendSge = Math.max(1, r.maxSendSge);
  const sqSlots = pow2(Math.max(1, r.maxSendWr));
  const sStride = sendStride(sendSge, r.maxInlineData);
  const inline = sStride - SW.SIZE;
  const sq = ring(0, sqSlots, sStride);
  let rq: RingLayout | null = null;
  let recvSge = 0;
  let rqSlots = 0;
  if (!srq) {
    recvSge = Math.max(1, r.maxRecvSge);
    rqSlots = pow2(Math.max(1, r.maxRecvWr));
    rq = ring(sq.bytes, rqSlots, RW.SIZE + recvSge * SG.SIZE);
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
  return ring(0, pow2(maxWr), RW.SIZE + maxSge * SG.SIZE);
}
