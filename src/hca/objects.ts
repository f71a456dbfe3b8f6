/**
 * The HCA's objects other than the QP: protection domains, memory regions,
 * completion queues, shared receive queues and address handles. Their
 * memory is shared with the client that owns them; everything read from it
 * is checked before use.
 */
import { EventType } from '../abi/enums.js';
import { CONS, NOTIFY, Notify, PROD, RING_HDR, RWQE, SGE_SIZE, WC_SIZE } from '../abi/queue.js';
import { type Mapping, unmap as unmapOld } from '../native/libc.js';

/** Where the HCA reports events: the owning context's event streams. */
export interface Owner {
  /** A completion event for this CQ on its channel. */
  compEvent(cq: Cq): void;
  /** An async event (element is the object's user_handle, or the port number). */
  asyncEvent(element: bigint, type: number, obj: Cq | Srq | { userHandle: bigint; asyncEvents: number } | null): void;
  readonly pid: number;
  /** The owner's AH for a handle written in a UD WQE. */
  lookupAh(handle: number): Ah | null;
}

export class Pd {
  /** MRs, QPs, SRQs and AHs that hold this PD (DEALLOC_PD: EBUSY while > 0). */
  users = 0;
  constructor(readonly owner: Owner) {}
}

export class Mr {
  valid = true;
  constructor(
    public pd: Pd,
    public key: number,
    public access: number,
    /** IOVA of the first byte (hca_va). */
    public iova: number,
    public length: number,
    /** The MR's bytes; index 0 is iova. */
    public mem: Uint8Array,
    public mapping: Mapping,
    /** Pages charged to the owner's pinned count. */
    public pages: number,
  ) {}

  /** Is [va, va+len) inside the MR? Handles non-finite and huge values (addresses past 2^53 are never inside). */
  contains(va: number, len: number): boolean {
    return va >= this.iova && len >= 0 && va + len <= this.iova + this.length;
  }
}

/** One completion to write; reused, never allocated per completion. */
export class Wc {
  wrId = 0n;
  status = 0;
  opcode = 0;
  byteLen = 0;
  imm = 0;
  qpNum = 0;
  srcQp = 0;
  wcFlags = 0;
  solicited = false;
  clear(): this {
    this.wrId = 0n;
    this.status = this.opcode = this.byteLen = this.imm = this.qpNum = this.srcQp = this.wcFlags = 0;
    this.solicited = false;
    return this;
  }
}

export class Cq {
  users = 0;
  compEvents = 0;
  asyncEvents = 0;
  errored = false;
  hdr: Int32Array;
  dv: DataView;
  mask: number;
  private prod = 0;
  constructor(
    readonly owner: Owner,
    readonly userHandle: bigint,
    public mapping: Mapping,
    public slots: number,
    public cqe: number,
    public channel: object | null,
  ) {
    this.hdr = new Int32Array(mapping.buffer, 0, RING_HDR / 4);
    this.dv = new DataView(mapping.buffer);
    this.mask = slots - 1;
    Atomics.store(this.hdr, PROD, 0);
    Atomics.store(this.hdr, CONS, 0);
    Atomics.store(this.hdr, NOTIFY, 0);
  }

  /**
   * Writes a completion. A full ring is an overrun: the completion is lost,
   * the CQ is in error and its owner gets IBV_EVENT_CQ_ERR (once).
   * Returns false on overrun.
   */
  post(wc: Wc): boolean {
    if (this.errored) return false;
    const cons = Atomics.load(this.hdr, CONS) >>> 0;
    const used = (this.prod - cons) >>> 0;
    // a consumer index the client made up (ahead of us, or further back than a ring) counts as full
    if (used >= this.cqe || used > this.slots) {
      this.errored = true;
      this.owner.asyncEvent(this.userHandle, EventType.CQ_ERR, this);
      return false;
    }
    const o = RING_HDR + (this.prod & this.mask) * WC_SIZE;
    const dv = this.dv;
    dv.setBigUint64(o, wc.wrId, true);
    dv.setUint32(o + 8, wc.status, true);
    dv.setUint32(o + 12, wc.opcode, true);
    dv.setUint32(o + 16, 0, true);
    dv.setUint32(o + 20, wc.byteLen >>> 0, true);
    dv.setUint32(o + 24, wc.imm >>> 0, true);
    dv.setUint32(o + 28, wc.qpNum, true);
    dv.setUint32(o + 32, wc.srcQp, true);
    dv.setUint32(o + 36, wc.wcFlags, true);
    dv.setUint32(o + 40, 0, true); // pkey_index, slid
    dv.setUint32(o + 44, 1 << 16, true); // sl 0, dlid_path_bits 0, port_num 1
    this.prod = (this.prod + 1) >>> 0;
    Atomics.store(this.hdr, PROD, this.prod | 0);
    const arm = Atomics.load(this.hdr, NOTIFY);
    if (arm === Notify.NEXT_COMP || (arm === Notify.SOLICITED && (wc.solicited || wc.status !== 0))) {
      if (Atomics.compareExchange(this.hdr, NOTIFY, arm, Notify.NONE) === arm && this.channel) this.owner.compEvent(this);
    }
    return true;
  }

  /** RESIZE_CQ: moves the completions not yet polled to the start of a new ring. */
  resize(mapping: Mapping, slots: number, cqe: number): void {
    const cons = Atomics.load(this.hdr, CONS) >>> 0;
    const used = Math.min((this.prod - cons) >>> 0, this.slots);
    const dst = new Uint8Array(mapping.buffer);
    const src = new Uint8Array(this.mapping.buffer);
    for (let i = 0; i < used; i++) {
      const from = RING_HDR + ((cons + i) & this.mask) * WC_SIZE;
      dst.set(src.subarray(from, from + WC_SIZE), RING_HDR + i * WC_SIZE);
    }
    const old = this.mapping;
    this.mapping = mapping;
    this.slots = slots;
    this.cqe = cqe;
    this.mask = slots - 1;
    this.hdr = new Int32Array(mapping.buffer, 0, RING_HDR / 4);
    this.dv = new DataView(mapping.buffer);
    this.prod = used;
    Atomics.store(this.hdr, CONS, 0);
    Atomics.store(this.hdr, NOTIFY, Atomics.load(new Int32Array(old.buffer, 0, RING_HDR / 4), NOTIFY));
    Atomics.store(this.hdr, PROD, used);
    unmapOld(old);
  }

  /** Arms the CQ (REQ_NOTIFY_CQ); the library normally does this in shared memory. */
  arm(solicitedOnly: boolean): void {
    Atomics.store(this.hdr, NOTIFY, solicitedOnly ? Notify.SOLICITED : Notify.NEXT_COMP);
  }
}

/** A receive ring (a QP's RQ or an SRQ): the client produces, the HCA consumes. */
export class RecvRing {
  readonly hdr: Int32Array;
  readonly dv: DataView;
  readonly mask: number;
  cons = 0;
  constructor(
    mapping: Mapping,
    readonly offset: number,
    readonly slots: number,
    readonly stride: number,
    readonly maxSge: number,
  ) {
    this.hdr = new Int32Array(mapping.buffer, offset, RING_HDR / 4);
    this.dv = new DataView(mapping.buffer, offset);
    this.mask = slots - 1;
    Atomics.store(this.hdr, PROD, 0);
    Atomics.store(this.hdr, CONS, 0);
  }
  /** Posted WQEs not consumed yet; a producer index the client made up is clamped to the ring. */
  count(): number {
    const n = (Atomics.load(this.hdr, PROD) - this.cons) >>> 0;
    return n > this.slots ? this.slots : n;
  }
  /** Byte offset (within dv) of the WQE at the head. */
  head(): number {
    return RING_HDR + (this.cons & this.mask) * this.stride;
  }
  /** Takes the head WQE into `out`; returns false if its sge count is bad (the WQE is consumed anyway). */
  take(out: RecvWqe): boolean {
    const o = this.head();
    const dv = this.dv;
    out.wrId = dv.getBigUint64(o + RWQE.WR_ID, true);
    const n = dv.getUint32(o + RWQE.NUM_SGE, true);
    const ok = n <= this.maxSge;
    out.numSge = ok ? n : 0;
    out.length = 0;
    for (let i = 0; i < out.numSge; i++) {
      const s = o + RWQE.HDR + i * SGE_SIZE;
      out.addr[i] = u64ToNumber(dv.getBigUint64(s, true));
      out.len[i] = dv.getUint32(s + 8, true);
      out.lkey[i] = dv.getUint32(s + 12, true);
      out.length += out.len[i]!;
    }
    this.cons = (this.cons + 1) >>> 0;
    Atomics.store(this.hdr, CONS, this.cons | 0);
    return ok;
  }
}

/** A receive WQE as the HCA holds it while filling it. */
export class RecvWqe {
  wrId = 0n;
  numSge = 0;
  length = 0;
  addr: number[] = [];
  len: number[] = [];
  lkey: number[] = [];
  constructor(maxSge: number) {
    this.addr = new Array(maxSge).fill(0);
    this.len = new Array(maxSge).fill(0);
    this.lkey = new Array(maxSge).fill(0);
  }
}

export class Srq {
  users = 0;
  asyncEvents = 0;
  limit = 0;
  constructor(
    readonly owner: Owner,
    readonly userHandle: bigint,
    readonly pd: Pd,
    public mapping: Mapping,
    public ring: RecvRing,
    readonly srqn: number,
  ) {}
  /** After a WQE is taken: fire SRQ_LIMIT_REACHED once when the count drops below the armed limit. */
  checkLimit(): void {
    if (this.limit > 0 && this.ring.count() < this.limit) {
      this.limit = 0;
      this.owner.asyncEvent(this.userHandle, EventType.SRQ_LIMIT_REACHED, this);
    }
  }
}

/** An address handle: where UD sends go. */
export class Ah {
  constructor(
    readonly pd: Pd,
    readonly dgid: Uint8Array,
    readonly sgidIndex: number,
    readonly isGlobal: boolean,
    readonly hopLimit: number,
    readonly trafficClass: number,
    readonly flowLabel: number,
  ) {}
}

/**
 * Walks the part [off, off+len) of a scatter/gather list: `visit(i, sgeOff,
 * n, done)` for each piece (SGE i, offset inside it, bytes, bytes before it).
 * False if a visit refuses or the list is shorter than off+len.
 */
export function walkSgl(numSge: number, lens: readonly number[], off: number, len: number, visit: (i: number, sgeOff: number, n: number, done: number) => boolean): boolean {
  let base = 0;
  let done = 0;
  for (let i = 0; i < numSge && done < len; i++) {
    const end = base + lens[i]!;
    const pos = off + done;
    if (pos < end) {
      const n = Math.min(end - pos, len - done);
      if (!visit(i, pos - base, n, done)) return false;
      done += n;
    }
    base = end;
  }
  return done === len;
}

/** u64 from the client → a JS number; anything past 2^53 becomes +Infinity so it can never pass a bounds check. */
export function u64ToNumber(v: bigint): number {
  return v > 0x1fffffffffffffn ? Number.POSITIVE_INFINITY : Number(v);
}
