/**
 * The send queue ring: the library produces send WQEs, the HCA consumes
 * them. One definition of the WQE layout for both sides; everything the
 * consumer reads is the client's and is checked by the HCA before use.
 */
import { offsets, struct } from './layout.js';
import { CONS, ConsumerIndex, copyBytes, PROD, QP_STATE, readU64Number, RING_HDR, SQ_IDLE, SG, writeSge, type RingLayout } from './ring.js';

/** The softverbs send WQE header; the SGE list (or the inline data) follows it. */
export const SEND_WQE = struct('sv_send_wqe', [
  ['wr_id', 'u64'], ['opcode', 'u32'], ['send_flags', 'u32'], ['num_sge', 'u32'],
  /** the 32-bit value, as ntohl(ibv_send_wr.imm_data) gives it */
  ['imm_data', 'u32'],
  ['remote_addr', 'u64'], ['rkey', 'u32'], ['inline_len', 'u32'], ['compare_add', 'u64'], ['swap', 'u64'],
  ['ah_handle', 'u32'], ['remote_qpn', 'u32'], ['remote_qkey', 'u32'], ['reserved', { bytes: 28 }],
]);
export const SW = offsets(SEND_WQE);

/** Ring state both sides see: header words, slot geometry. */
class SendRing {
  readonly hdr: Int32Array;
  readonly dv: DataView;
  readonly bytes: Uint8Array;
  readonly slots: number;
  readonly stride: number;
  constructor(buffer: ArrayBuffer, l: Pick<RingLayout, 'offset' | 'slots' | 'stride'>) {
    this.hdr = new Int32Array(buffer, l.offset, RING_HDR / 4);
    this.dv = new DataView(buffer, l.offset);
    this.bytes = new Uint8Array(buffer, l.offset);
    this.slots = l.slots;
    this.stride = l.stride;
  }
  /** Byte offset (in dv) of the WQE with index idx. */
  slot(idx: number): number {
    return RING_HDR + (idx & (this.slots - 1)) * this.stride;
  }
  /** Byte offset of SGE j of the WQE at o. */
  static sge(o: number, j: number): number {
    return o + SW.SIZE + j * SG.SIZE;
  }
}

/** The library's side: writes WQEs at its producer index and publishes them. */
export class SendRingProducer extends SendRing {
  prod = 0;
  /** The QP state as the HCA last wrote it. */
  state(): number {
    return Atomics.load(this.hdr, QP_STATE);
  }
  private readonly consumer = new ConsumerIndex(this.hdr);
  consumed(): number {
    return this.consumer.read();
  }
  full(): boolean {
    return this.consumer.full(this.prod, this.slots);
  }
  /** Makes the WQEs written so far visible to the HCA. */
  publish(): void {
    Atomics.store(this.hdr, PROD, this.prod | 0);
  }
  /** True if the HCA had gone idle on this ring and we are the one to wake it (ring the doorbell). */
  claimWake(): boolean {
    return Atomics.compareExchange(this.hdr, SQ_IDLE, 1, 0) === 1;
  }
  /** A reset QP's queues are empty: start again where the HCA left its consumer. */
  resync(): void {
    this.prod = this.consumed();
  }
  writeSge(o: number, j: number, addr: bigint, length: number, lkey: number): void {
    writeSge(this.dv, SendRing.sge(o, j), addr, length, lkey);
  }
  /** Where inline data of the WQE at o starts, as a byte offset into `bytes`. */
  inlineAt(o: number): number {
    return o + SW.SIZE;
  }
}

/** The HCA's side: reads the WQEs the client published (every value still the client's: check before use). */
export class SendRingConsumer extends SendRing {
  constructor(buffer: ArrayBuffer, l: Pick<RingLayout, 'offset' | 'slots' | 'stride'>) {
    super(buffer, l);
    Atomics.store(this.hdr, PROD, 0);
    Atomics.store(this.hdr, CONS, 0);
    Atomics.store(this.hdr, SQ_IDLE, 1);
  }
  produced(): number {
    return Atomics.load(this.hdr, PROD) >>> 0;
  }
  setConsumed(idx: number): void {
    Atomics.store(this.hdr, CONS, idx | 0);
  }
  setState(s: number): void {
    Atomics.store(this.hdr, QP_STATE, s);
  }
  /**
   * Marks the ring idle: from now on the client rings. True if WQEs arrived since `before` (the producer index
   * read when the run started) without a doorbell, and we took the ring back to look at them ourselves.
   */
  idle(before: number): boolean {
    Atomics.store(this.hdr, SQ_IDLE, 1);
    return this.produced() !== before && Atomics.compareExchange(this.hdr, SQ_IDLE, 1, 0) === 1;
  }
  /** Marks the ring awake (the client rings no doorbell); false if the client had already claimed the wake-up. */
  wake(): boolean {
    return Atomics.compareExchange(this.hdr, SQ_IDLE, 1, 0) === 1;
  }
  /** An SGE's address as a number (past 2^53: +Infinity, which no MR contains). */
  sgeAddr(o: number, j: number): number {
    return readU64Number(this.dv, SendRing.sge(o, j) + SG.addr);
  }
  sgeLength(o: number, j: number): number {
    return this.dv.getUint32(SendRing.sge(o, j) + SG.length, true);
  }
  sgeLkey(o: number, j: number): number {
    return this.dv.getUint32(SendRing.sge(o, j) + SG.lkey, true);
  }
  /** Copies the n inline bytes of the WQE at o into dst (a private copy: the client may change its ring at any time). */
  copyInline(o: number, n: number, dst: Uint8Array): void {
    copyBytes(dst, 0, this.bytes, o + SW.SIZE, n);
  }
}
