/**
 * The receive ring (a QP's receive queue or an SRQ) in the softverbs
 * layout: the library produces receive WQEs, the HCA consumes them into
 * the record every layout's reader fills (`wqe.ts`).
 */
import { offsets, struct } from './layout.js';
import { CONS, ConsumerIndex, PROD, readU64Number, RING_HDR, SG, setU64, writeSge, type RingLayout } from './ring.js';
import type { RecvQueueConsumer, RecvWqe } from './wqe.js';

/** The receive WQE header; its SGE list follows. */
export const RECV_WQE = struct('sv_recv_wqe', [['wr_id', 'u64'], ['num_sge', 'u32'], ['reserved', 'u32']]);
export const RW = offsets(RECV_WQE);

class RecvRing {
  readonly hdr: Int32Array;
  readonly dv: DataView;
  readonly mask: number;
  constructor(
    buffer: ArrayBuffer,
    readonly offset: number,
    readonly slots: number,
    readonly stride: number,
    readonly maxSge: number,
  ) {
    this.hdr = new Int32Array(buffer, offset, RING_HDR / 4);
    this.dv = new DataView(buffer, offset);
    this.mask = slots - 1;
  }
  protected slot(idx: number): number {
    return RING_HDR + (idx & this.mask) * this.stride;
  }
}

/** The library's side. */
export class RecvRingProducer extends RecvRing {
  prod = 0;
  constructor(buffer: ArrayBuffer, l: RingLayout, maxSge: number) {
    super(buffer, l.offset, l.slots, l.stride, maxSge);
  }
  private readonly consumer = new ConsumerIndex(this.hdr);
  consumed(): number {
    return this.consumer.read();
  }
  full(): boolean {
    return this.consumer.full(this.prod, this.slots);
  }
  /** Writes the next WQE's header and returns its offset (its SGEs go in with writeSge, then advance()). */
  begin(wrId: bigint | number, numSge: number): number {
    const o = this.slot(this.prod);
    setU64(this.dv, o + RW.wr_id, wrId);
    this.dv.setUint32(o + RW.num_sge, numSge, true);
    return o;
  }
  writeSge(o: number, j: number, addr: bigint | number, length: number, lkey: number): void {
    writeSge(this.dv, o + RW.SIZE + j * SG.SIZE, addr, length, lkey);
  }
  advance(): void {
    this.prod = (this.prod + 1) >>> 0;
  }
  publish(): void {
    Atomics.store(this.hdr, PROD, this.prod | 0);
  }
  resync(): void {
    this.prod = this.consumed();
  }
}

/** The HCA's side. */
export class RecvRingConsumer extends RecvRing implements RecvQueueConsumer {
  cons = 0;
  constructor(buffer: ArrayBuffer, offset: number, slots: number, stride: number, maxSge: number) {
    super(buffer, offset, slots, stride, maxSge);
    Atomics.store(this.hdr, PROD, 0);
    Atomics.store(this.hdr, CONS, 0);
  }
  /** The producer index as last read. */
  private prodSeen = 0;
  /** Posted WQEs not consumed yet; a producer index the client made up is clamped to the ring. */
  count(): number {
    this.prodSeen = Atomics.load(this.hdr, PROD) >>> 0;
    const n = (this.prodSeen - this.cons) >>> 0;
    return n > this.slots ? this.slots : n;
  }
  /**
   * Whether a posted WQE is waiting: the client's producer index is read only once the WQEs it showed last
   * time are used up (reading it for every message costs a cache miss each while the client posts on
   * another core).
   */
  any(): boolean {
    return this.prodSeen !== this.cons || this.count() > 0;
  }
  /** Forgets everything posted (a QP reset). */
  reset(): void {
    this.cons = this.prodSeen = Atomics.load(this.hdr, PROD) >>> 0;
    Atomics.store(this.hdr, CONS, this.cons | 0);
  }
  /** Takes the head WQE into `out`; false if its SGE count is bad (the WQE is consumed anyway). */
  take(out: RecvWqe): boolean {
    const o = this.slot(this.cons);
    const dv = this.dv;
    out.wrLo = dv.getUint32(o + RW.wr_id, true);
    out.wrHi = dv.getUint32(o + RW.wr_id + 4, true);
    const n = dv.getUint32(o + RW.num_sge, true);
    const ok = n <= this.maxSge;
    out.numSge = ok ? n : 0;
    out.length = 0;
    for (let i = 0; i < out.numSge; i++) {
      const s = o + RW.SIZE + i * SG.SIZE;
      const len = dv.getUint32(s + SG.length, true);
      out.addr[i] = readU64Number(dv, s + SG.addr);
      out.len[i] = len;
      out.lkey[i] = dv.getUint32(s + SG.lkey, true);
      out.length += len;
    }
    this.cons = (this.cons + 1) >>> 0;
    Atomics.store(this.hdr, CONS, this.cons | 0);
    return ok;
  }
}
