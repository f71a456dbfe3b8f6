/**
 * What every shared ring has: a header page of indices (each written by one
 * side only, read with Atomics so the other process sees them in order) and
 * the scatter/gather entry WQEs carry. The rings themselves are
 * `send-ring.ts`, `recv-ring.ts` and `cq-ring.ts`; their sizes `queue.ts`;
 * what the engines see of them, whatever the layout, `wqe.ts`.
 */
import { offsets, struct } from './layout.js';
import { ErrnoError } from '../common/errors.js';

/**
 * The HCA reads WQEs and writes completions as words through Uint32Arrays (fewer and cheaper operations than
 * DataView's per field): that is the ABI's little-endian layout only on a little-endian host, which every
 * platform the native layer supports (x86-64, aarch64) is.
 */
if (new Uint8Array(Uint32Array.of(1).buffer)[0] !== 1) throw new ErrnoError('EOPNOTSUPP', 'softverbs: the rings are read and written in host byte order, and this host is big-endian');

/** The word (index into a Uint32Array) where a field at this byte offset starts; the fields read or written as words are aligned. */
export function word(offset: number): number {
  if (offset % 4) throw new ErrnoError('EINVAL', `softverbs: a ring field at byte ${offset} is not word aligned`);
  return offset / 4;
}

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

/** struct ibv_sge as it sits in a WQE. */
export const SGE = struct('ibv_sge', [['addr', 'u64'], ['length', 'u32'], ['lkey', 'u32']]);
export const SG = offsets(SGE);

/**
 * Stores a u64 the client passed (a bigint, or a number as JS code mostly passes a wr_id or an address):
 * a safe integer goes in as two words, with no BigInt made; anything else as the BigInt it converts to
 * (modulo 2^64; a fraction is a RangeError, as BigInt() gives).
 */
export function setU64(dv: DataView, o: number, v: bigint | number): void {
  if (typeof v === 'number' && v >= 0 && v <= Number.MAX_SAFE_INTEGER && Number.isInteger(v)) {
    dv.setUint32(o, v >>> 0, true);
    dv.setUint32(o + 4, (v / 0x100000000) >>> 0, true);
  } else dv.setBigUint64(o, typeof v === 'bigint' ? v : BigInt(v), true);
}

/** Writes one SGE at byte offset s of a ring (both rings' WQEs carry them the same way). */
export function writeSge(dv: DataView, s: number, addr: bigint | number, length: number, lkey: number): void {
  setU64(dv, s + SG.addr, addr);
  dv.setUint32(s + SG.length, length >>> 0, true);
  dv.setUint32(s + SG.lkey, lkey >>> 0, true);
}

/** Where one ring sits in its memfd, and its geometry (the sizes are `queue.ts`'s). */
export interface RingLayout {
  /** Byte offset of the ring's header inside the memfd. */
  readonly offset: number;
  readonly slots: number;
  readonly stride: number;
  /** Bytes this ring occupies (page aligned). */
  readonly bytes: number;
}

/**
 * A little-endian u64 the client wrote, as a JS number without making a BigInt: anything past 2^53 becomes
 * +Infinity, so it can never pass a bounds check.
 */
export function readU64Number(dv: DataView, o: number): number {
  const hi = dv.getUint32(o + 4, true);
  return hi > 0x1fffff ? Number.POSITIVE_INFINITY : hi * 0x100000000 + dv.getUint32(o, true);
}

/** readU64Number() of the u64 at word i of a little-endian ring seen as words. */
export function wordsU64Number(u: Uint32Array, i: number): number {
  const hi = u[i + 1]!;
  return hi > 0x1fffff ? Number.POSITIVE_INFINITY : hi * 0x100000000 + u[i]!;
}

/**
 * A producer's view of the other side's consumer index (byte 64 of a ring's header). It moves with every
 * completion, and reading it on every post costs a cache miss each while the other side works on another
 * core: full() reads it only when the value read before says the ring may be full.
 */
export class ConsumerIndex {
  private seen = 0;
  constructor(private readonly hdr: Int32Array) {}
  read(): number {
    return (this.seen = Atomics.load(this.hdr, CONS) >>> 0);
  }
  /** Whether a ring of `slots` with producer index `prod` is full. */
  full(prod: number, slots: number): boolean {
    if (((prod - this.seen) >>> 0) < slots) return false;
    return ((prod - this.read()) >>> 0) >= slots;
  }
}

/**
 * A work request's wr_id as the HCA carries it: the client's 64 bits as two 32-bit halves, copied from its
 * WQE to its completion as they are (a BigInt would be an allocation per WQE on the engines' path).
 */
export interface WrId {
  wrLo: number;
  wrHi: number;
}
/** The wr_id as one number, for people (the management views). */
export const wrIdOf = (w: WrId): bigint => (BigInt(w.wrHi >>> 0) << 32n) | BigInt(w.wrLo >>> 0);

/** Copies n bytes from src[from..] to dst[to..]: a plain loop for the few bytes of inline data and small packets (no view to allocate), set() beyond. */
export function copyBytes(dst: Uint8Array, to: number, src: Uint8Array, from: number, n: number): void {
  if (n <= 64) for (let i = 0; i < n; i++) dst[to + i] = src[from + i]!;
  else dst.set(src.subarray(from, from + n), to);
}
