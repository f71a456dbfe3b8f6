/** Writing receive work requests into a receive ring (a QP's RQ or an SRQ): the checks libibverbs' providers make. */
import { RecvRingProducer } from '../abi/recv-ring.js';
import { VerbsError } from './errors.js';
import type { RecvWr } from './types.js';
import { messageOf } from '../common/errors.js';

/** A wr_id or address as the rings hold it: a u64. */
export const big = (v: bigint | number): bigint => (typeof v === 'bigint' ? v : BigInt(v));

/** Writes WRs; throws (with badWr and wr) for one that does not fit or is malformed. A single WR takes no array: nothing is allocated. */
export function postRecvWrs(ring: RecvRingProducer, verb: string, wrs: RecvWr | RecvWr[]): void {
  try {
    if (!Array.isArray(wrs)) postOne(ring, verb, wrs, 0);
    else for (let i = 0; i < wrs.length; i++) postOne(ring, verb, wrs[i]!, i);
  } finally {
    ring.publish();
  }
}

function postOne(ring: RecvRingProducer, verb: string, wr: RecvWr, i: number): void {
  if (ring.full()) throw badWr(verb, 'ENOMEM', 'receive queue full', i, wr);
  const sg = wr.sgList;
  const n = sg ? sg.length : 0;
  if (n > ring.maxSge) throw badWr(verb, 'EINVAL', `${n} SGEs > max_recv_sge ${ring.maxSge}`, i, wr);
  try {
    // a number goes in as it is (setU64 makes no BigInt of a safe integer), a bigint as the bigint
    const o = ring.begin(wr.wrId ?? 0, n);
    for (let j = 0; j < n; j++) {
      const s = sg![j]!;
      ring.writeSge(o, j, s.addr, s.length, s.lkey);
    }
  } catch (e) {
    throw malformed(verb, e, i, wr);
  }
  ring.advance();
}

/** The error of a post: which WR (index and object) was not posted, and why. */
export function badWr(verb: string, code: string, detail: string, i: number, wr: unknown): VerbsError {
  const e = new VerbsError(verb, code, `work request ${i}: ${detail}`, i);
  e.wr = wr;
  return e;
}

/**
 * A WR whose fields could not be written (a wr_id or address that is no integer, an SGE that is not an object):
 * the TypeError or RangeError as the post's EINVAL, with the WR it came from. Nothing of it reached the ring.
 */
export function malformed(verb: string, e: unknown, i: number, wr: unknown): VerbsError {
  if (e instanceof VerbsError) return e;
  return badWr(verb, 'EINVAL', `malformed: ${messageOf(e)}`, i, wr);
}

/**
 * The error of a whole post refused before any WR was looked at (the QP's state, a lost daemon): libibverbs' bad_wr
 * is then the first WR. Anything but a VerbsError is no refusal and is thrown as it is.
 */
export function refused(e: unknown, wrs: unknown): VerbsError {
  if (!(e instanceof VerbsError)) throw e;
  const first = Array.isArray(wrs) ? wrs[0] : wrs;
  return Object.assign(e, { badWr: first === undefined ? undefined : 0, wr: first });
}
