/**
 * The send queue ring in the softverbs layout: the library produces send
 * WQEs (write() encodes a work request), the HCA consumes them (read()
 * decodes one into the record every layout's reader fills, `wqe.ts`).
 * Everything the consumer reads is the client's and is checked by the HCA
 * before use.
 */
import { SendFlags, WrOpcode } from './enums.js';
import { offsets, struct } from './layout.js';
import { CONS, ConsumerIndex, copyBytes, PROD, QP_STATE, RING_HDR, SQ_IDLE, SG, setU64, word, wordsU64Number, writeSge, type RingLayout } from './ring.js';
import type { SendQueueConsumer, SendWqeFields } from './wqe.js';

/**
 * The softverbs send WQE header; the SGE list (or the inline data) follows it. As in ibv_send_wr, imm_data is
 * also invalidate_rkey (LOCAL_INV, SEND_WITH_INV). A BIND_MW keeps the window's range in remote_addr and
 * mw_length, the rkey it is to have in rkey, and the window's current rkey, the MR's lkey and the window's
 * access in mw_rkey, mr_lkey and mw_access (ibv_mw_bind_info's fields, as rxe_send_wr's wr.mw holds them).
 */
export const SEND_WQE = struct('sv_send_wqe', [
  ['wr_id', 'u64'], ['opcode', 'u32'], ['send_flags', 'u32'], ['num_sge', 'u32'],
  /** the 32-bit value, as ntohl(ibv_send_wr.imm_data) gives it */
  ['imm_data', 'u32'],
  ['remote_addr', 'u64'], ['rkey', 'u32'], ['inline_len', 'u32'], ['compare_add', 'u64'], ['swap', 'u64'],
  ['ah_handle', 'u32'], ['remote_qpn', 'u32'], ['remote_qkey', 'u32'],
  ['mw_rkey', 'u32'], ['mr_lkey', 'u32'], ['mw_access', 'u32'], ['mw_length', 'u64'], ['reserved', { bytes: 8 }],
]);
export const SW = offsets(SEND_WQE);

/** Word indices of the header fields the HCA reads as words (through a Uint32Array: fewer and cheaper loads than DataView's). */
const W_WR_ID = word(SW.wr_id);
const W_OPCODE = word(SW.opcode);
const W_SEND_FLAGS = word(SW.send_flags);
const W_NUM_SGE = word(SW.num_sge);
const W_IMM = word(SW.imm_data);
const W_REMOTE_ADDR = word(SW.remote_addr);
const W_RKEY = word(SW.rkey);
const W_INLINE_LEN = word(SW.inline_len);
const W_AH_HANDLE = word(SW.ah_handle);
const W_REMOTE_QPN = word(SW.remote_qpn);
const W_REMOTE_QKEY = word(SW.remote_qkey);
const W_MW_RKEY = word(SW.mw_rkey);
const W_MR_LKEY = word(SW.mr_lkey);
const W_MW_ACCESS = word(SW.mw_access);
const W_MW_LENGTH = word(SW.mw_length);
/** where the SGE list starts, and an SGE's size and fields, in words */
const W_SGES = word(SW.SIZE);
const W_SGE = word(SG.SIZE);
const W_SG_ADDR = word(SG.addr);
const W_SG_LENGTH = word(SG.length);
const W_SG_LKEY = word(SG.lkey);

/** What write() reads of a work request: struct ibv_send_wr's fields (the library's SendWr is one). */
export interface SendWrIn {
  wrId?: bigint | number;
  opcode: number;
  sendFlags?: number;
  sgList?: ReadonlyArray<{ addr: bigint | number; length: number; lkey: number }>;
  imm?: number;
  rdma?: { remoteAddr: bigint | number; rkey: number };
  atomic?: { remoteAddr: bigint | number; compareAdd: bigint | number; swap?: bigint | number; rkey: number };
  /** ATOMIC_WRITE: the 8 bytes (or a u64, stored little-endian) for remoteAddr */
  atomicWrite?: { remoteAddr: bigint | number; rkey: number; value: bigint | Uint8Array };
  ud?: { ah: { handle: number }; remoteQpn: number; remoteQkey: number };
  /** LOCAL_INV, SEND_WITH_INV */
  invalidateRkey?: number;
  /** BIND_MW: the window (its current rkey), the rkey it is to have, and what it is bound to */
  bind?: { mwRkey: number; rkey: number; mrLkey: number; addr: bigint | number; length: bigint | number; access: number };
}

/**
 * The bytes at an address of the producer's process (inline data is copied from there when posted), or null if it
 * knows none there. `addr` as a number: a bigint past 2^53 is no address of a mapping here, and converts to one that
 * is no safe integer.
 */
export type InlineSource = (addr: number, length: number) => Uint8Array | null;
/**
 * Where in the array an InlineSource returns the bytes start: 0 unless the source sets it (one that hands out a
 * whole region's bytes, so that no view is made per SGE).
 */
export const inlineAt = { offset: 0 };

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
  protected slot(idx: number): number {
    return RING_HDR + (idx & (this.slots - 1)) * this.stride;
  }
}

/** The library's side: writes WQEs at its producer index and publishes them. */
export class SendRingProducer extends SendRing {
  prod = 0;
  private readonly consumer = new ConsumerIndex(this.hdr);
  constructor(
    buffer: ArrayBuffer,
    l: Pick<RingLayout, 'offset' | 'slots' | 'stride'>,
    private readonly inline: InlineSource = () => null,
  ) {
    super(buffer, l);
  }
  /** The QP state as the HCA last wrote it. */
  state(): number {
    return Atomics.load(this.hdr, QP_STATE);
  }
  consumed(): number {
    return this.consumer.read();
  }
  full(): boolean {
    return this.consumer.full(this.prod, this.slots);
  }
  /**
   * Writes `wr` as the WQE at the producer index and moves past it (publish() shows it to the HCA). The
   * caller has checked it against its QP (the opcode table, the SGE and inline caps): the slot has room for
   * what those allow. Returns -1, or the index of an inline SGE whose bytes the inline source does not
   * know, and then nothing is posted.
   */
  write(wr: SendWrIn): number {
    const o = this.slot(this.prod);
    const dv = this.dv;
    const flags = wr.sendFlags ?? 0;
    const sg = wr.sgList;
    const n = sg ? sg.length : 0;
    setU64(dv, o + SW.wr_id, wr.wrId ?? 0);
    dv.setUint32(o + SW.opcode, wr.opcode, true);
    dv.setUint32(o + SW.send_flags, flags, true);
    dv.setUint32(o + SW.imm_data, (wr.invalidateRkey ?? wr.imm ?? 0) >>> 0, true);
    const aw = wr.atomicWrite;
    const remote = wr.rdma ?? wr.atomic ?? aw;
    setU64(dv, o + SW.remote_addr, remote?.remoteAddr ?? 0);
    dv.setUint32(o + SW.rkey, (remote?.rkey ?? 0) >>> 0, true);
    // a bind's fields out of line: every post went a third slower writing them (engines' SEND rate 1.70 -> 1.10 M);
    // the consumer reads them for BIND_MW only, so other WQEs leave them as they were
    if (wr.bind) writeBind(dv, o, wr.bind);
    // ATOMIC_WRITE's 8 bytes ride where an atomic's operand does
    if (aw && typeof aw.value !== 'bigint') {
      if (aw.value.length !== 8) throw new RangeError(`an ATOMIC_WRITE carries 8 bytes, not ${aw.value.length}`);
      copyBytes(this.bytes, o + SW.compare_add, aw.value, 0, 8);
    } else setU64(dv, o + SW.compare_add, aw ? aw.value as bigint : wr.atomic?.compareAdd ?? 0);
    setU64(dv, o + SW.swap, wr.atomic?.swap ?? 0);
    const ud = wr.ud;
    dv.setUint32(o + SW.ah_handle, ud ? ud.ah.handle : 0, true);
    dv.setUint32(o + SW.remote_qpn, ud ? ud.remoteQpn : 0, true);
    dv.setUint32(o + SW.remote_qkey, ud ? ud.remoteQkey >>> 0 : 0, true);
    if (flags & SendFlags.INLINE) {
      // copied now, from wherever it is in this process: inline data needs no lkey (as in libibverbs)
      let at = o + SW.SIZE;
      for (let j = 0; j < n; j++) {
        const s = sg![j]!;
        inlineAt.offset = 0;
        const src = this.inline(typeof s.addr === 'bigint' ? Number(s.addr) : s.addr, s.length);
        if (!src) return j;
        copyBytes(this.bytes, at, src, inlineAt.offset, s.length);
        at += s.length;
      }
      dv.setUint32(o + SW.inline_len, at - o - SW.SIZE, true);
      dv.setUint32(o + SW.num_sge, 0, true);
    } else {
      dv.setUint32(o + SW.inline_len, 0, true);
      dv.setUint32(o + SW.num_sge, n, true);
      for (let j = 0; j < n; j++) {
        const s = sg![j]!;
        writeSge(dv, o + SW.SIZE + j * SG.SIZE, s.addr, s.length, s.lkey);
      }
    }
    this.prod = (this.prod + 1) >>> 0;
    return -1;
  }
  /** Makes the WQEs written so far visible to the HCA. */
  publish(): void {
    Atomics.store(this.hdr, PROD, this.prod | 0);
  }
  /** True if the HCA had gone idle on this ring and we are the one to wake it (ring the doorbell). */
  claimWake(): boolean {
    // read first: a compare-exchange takes the line from the HCA's core even when it fails (the HCA is looking
    // already, the usual case while it polls); the HCA stores 1 and then reads the producer index, so either it
    // sees what publish() stored or this read sees its 1
    return Atomics.load(this.hdr, SQ_IDLE) === 1 && Atomics.compareExchange(this.hdr, SQ_IDLE, 1, 0) === 1;
  }
  /** A reset QP's queues are empty: start again where the HCA left its consumer. */
  resync(): void {
    this.prod = this.consumed();
  }
}

/** The HCA's side: reads the WQEs the client published (every value still the client's: check before use). */
export class SendRingConsumer extends SendRing implements SendQueueConsumer {
  /** the ring as words, for read() */
  private readonly u32: Uint32Array;
  constructor(
    buffer: ArrayBuffer,
    l: Pick<RingLayout, 'offset' | 'slots' | 'stride'>,
    private readonly caps: { readonly maxSendSge: number; readonly maxInlineData: number },
  ) {
    super(buffer, l);
    this.u32 = new Uint32Array(buffer, l.offset, (buffer.byteLength - l.offset) >>> 2);
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
  /** The ring header's SQ_IDLE word is the doorbell suppression `ring.ts` describes. */
  idle(before: number): boolean {
    Atomics.store(this.hdr, SQ_IDLE, 1);
    return this.produced() !== before && Atomics.compareExchange(this.hdr, SQ_IDLE, 1, 0) === 1;
  }
  wake(): boolean {
    return Atomics.compareExchange(this.hdr, SQ_IDLE, 1, 0) === 1;
  }
  /** Small enough for V8 to inline into the HCA's fetch (its bytecode under 460 bytes): the rarer parts are functions of their own. */
  read(idx: number, w: SendWqeFields): void {
    const u = this.u32;
    const o = this.slot(idx);
    const x = o >>> 2;
    w.wrLo = u[x + W_WR_ID]!;
    w.wrHi = u[x + W_WR_ID + 1]!;
    const op = (w.opcode = u[x + W_OPCODE]!);
    const flags = (w.sendFlags = u[x + W_SEND_FLAGS]!);
    w.imm = u[x + W_IMM]!;
    w.remoteAddr = wordsU64Number(u, x + W_REMOTE_ADDR);
    w.rkey = u[x + W_RKEY]!;
    // atomics, invalidations and binds (opcodes 5 to 9, ATOMIC_WRITE 15): their fields out of line
    if (op >= WrOpcode.ATOMIC_CMP_AND_SWP) readRare(this.dv, u, o, op, w);
    w.ahHandle = u[x + W_AH_HANDLE]!;
    w.remoteQpn = u[x + W_REMOTE_QPN]! & 0xffffff;
    w.remoteQkey = u[x + W_REMOTE_QKEY]!;
    if ((w.inline = (flags & SendFlags.INLINE) !== 0)) {
      const n = (w.inlineLen = u[x + W_INLINE_LEN]!);
      w.numSge = 0;
      if (n <= this.caps.maxInlineData) copyBytes(w.inlineData, 0, this.bytes, o + SW.SIZE, n);
      return;
    }
    const n = (w.numSge = u[x + W_NUM_SGE]!);
    w.inlineLen = 0;
    if (n <= this.caps.maxSendSge) readSges(u, x + W_SGES, n, w);
  }
}

/** A BIND_MW's fields (remote_addr and rkey are the window's new range and rkey). */
function writeBind(dv: DataView, o: number, b: NonNullable<SendWrIn['bind']>): void {
  setU64(dv, o + SW.remote_addr, b.addr);
  dv.setUint32(o + SW.rkey, b.rkey >>> 0, true);
  dv.setUint32(o + SW.mw_rkey, b.mwRkey >>> 0, true);
  dv.setUint32(o + SW.mr_lkey, b.mrLkey >>> 0, true);
  dv.setUint32(o + SW.mw_access, b.access >>> 0, true);
  setU64(dv, o + SW.mw_length, b.length);
}

/** The fields of the rarer opcodes (out of read(), which the engines' hot path wants small enough to inline). */
function readRare(dv: DataView, u: Uint32Array, o: number, op: number, w: SendWqeFields): void {
  if (op === WrOpcode.ATOMIC_CMP_AND_SWP || op === WrOpcode.ATOMIC_FETCH_AND_ADD || op === WrOpcode.ATOMIC_WRITE) readAtomic(dv, o, w);
  else if (op === WrOpcode.SEND_WITH_INV || op === WrOpcode.LOCAL_INV) w.invRkey = w.imm;
  else if (op === WrOpcode.BIND_MW) readBind(u, o >>> 2, w);
}

/** A bind's fields. */
function readBind(u: Uint32Array, x: number, w: SendWqeFields): void {
  w.bindAddr = w.remoteAddr;
  w.bindRkey = w.rkey;
  w.mwRkey = u[x + W_MW_RKEY]!;
  w.mrLkey = u[x + W_MR_LKEY]!;
  w.bindAccess = u[x + W_MW_ACCESS]!;
  w.bindLength = wordsU64Number(u, x + W_MW_LENGTH);
}

/** The operands of an atomic. */
function readAtomic(dv: DataView, o: number, w: SendWqeFields): void {
  w.compareAdd = dv.getBigUint64(o + SW.compare_add, true);
  w.swap = dv.getBigUint64(o + SW.swap, true);
}

/** Copies the n SGEs from word i of the ring into w (out of read(), as readRare). */
function readSges(u: Uint32Array, i: number, n: number, w: SendWqeFields): void {
  for (let j = 0; j < n; j++, i += W_SGE) {
    w.addr[j] = wordsU64Number(u, i + W_SG_ADDR);
    w.len[j] = u[i + W_SG_LENGTH]!;
    w.lkey[j] = u[i + W_SG_LKEY]!;
  }
}
