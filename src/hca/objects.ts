/**
 * The HCA's objects other than the QP: protection domains, memory regions,
 * completion queues, shared receive queues and address handles. Their
 * memory is shared with the client that owns them; everything read from it
 * is checked before use.
 */
import { Access, EventType, WcOpcode, WcStatus } from '../abi/enums.js';
import type { CompletionProducer, CqeIn, RecvQueueConsumer } from '../abi/wqe.js';
import type { Mapping } from '../native/libc.js';
import type { MrMemory } from './mr-memory.js';

/** Where the HCA reports events: the owning context's event streams. */
export interface Owner {
  /** A completion event for this CQ on its channel. */
  compEvent(cq: Cq): void;
  /** An async event (element is the object's user_handle, or the port number). */
  asyncEvent(element: bigint, type: number, obj: Cq | Srq | { userHandle: bigint; asyncEvents: number } | null): void;
  readonly pid: number;
  /** The owner's AH for a handle written in a UD WQE. */
  lookupAh(handle: number): Ah | null;
  /**
   * The owner's process has exited while its objects remain (the daemon has yet to see its device file close):
   * memory reached through it is gone. Absent where the memory is the daemon's own mapping, which cannot go.
   */
  exited?(): boolean;
}

export class Pd {
  /** MRs, QPs, SRQs and AHs that hold this PD (DEALLOC_PD: EBUSY while > 0). */
  users = 0;
  constructor(readonly owner: Owner) {}
}

export class Mr {
  valid = true;
  /** Memory windows bound to it (rxe's num_mw): while any is, it cannot be deregistered or invalidated. */
  numMw = 0;
  constructor(
    public pd: Pd,
    public key: number,
    public access: number,
    /** IOVA of the first byte (hca_va). */
    public iova: number,
    public length: number,
    /** The MR's bytes (offset 0 is iova): a mapping of the daemon's (MappedMemory) or the client's own memory (ProcMemory). */
    public mem: MrMemory,
    /** The daemon's mapping under a MappedMemory (unmapped at DEREG_MR); null when the bytes are the client's own. */
    public mapping: Mapping | null,
    /** Pages charged to the owner's pinned count. */
    public pages: number,
  ) {}

  /** Its rkey as rxe hands it out: its key when it grants remote access, else 0 (nothing remote can name it). */
  get rkey(): number {
    return this.access & (Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC) ? this.key : 0;
  }

  /** Is [va, va+len) inside the MR? Handles non-finite and huge values (addresses past 2^53 are never inside). */
  contains(va: number, len: number): boolean {
    return va >= this.iova && len >= 0 && va + len <= this.iova + this.length;
  }
}

/** A memory window's state (rxe's enum rxe_mw_state). */
export const MwState = { INVALID: 0, FREE: 1, VALID: 2 } as const;
export type MwState = (typeof MwState)[keyof typeof MwState];

/**
 * A memory window (rxe_mw): an rkey for a part of an MR, with access of its own. Type 1 is bound by
 * ibv_bind_mw and stays VALID from allocation (a zero-length bind leaves it naming nothing); type 2B is FREE
 * until a BIND_MW work request binds it to that QP, and invalidation frees it again. Its engines' rules are
 * in `mw.ts`.
 */
export class Mw {
  state: MwState;
  access = 0;
  /** the window's first byte in the MR's IOVA space, and its length */
  addr = 0;
  length = 0;
  mr: Mr | null = null;
  /** type 2B: the QP it was bound through, the only one that may use it */
  qp: object | null = null;
  constructor(
    readonly pd: Pd,
    /** 1 or 2 (IBV_MW_TYPE_1, IBV_MW_TYPE_2) */
    readonly type: number,
    public rkey: number,
  ) {
    this.state = type === 2 ? MwState.FREE : MwState.VALID;
  }
}

/** One completion to write; reused, never allocated per completion. */
export class Wc implements CqeIn {
  wrLo = 0;
  wrHi = 0;
  status: WcStatus = WcStatus.SUCCESS;
  opcode: WcOpcode = WcOpcode.SEND;
  byteLen = 0;
  imm = 0;
  qpNum = 0;
  srcQp = 0;
  wcFlags = 0;
  solicited = false;
  clear(): this {
    this.wrLo = this.wrHi = 0;
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
  /** released by its owner (its completion channel hears no more of it) */
  destroyed = false;
  constructor(
    readonly owner: Owner,
    readonly userHandle: bigint,
    public mapping: Mapping,
    /** the completion ring in `mapping`, in the layout of the owner's provider */
    readonly ring: CompletionProducer,
    public cqe: number,
    public channel: object | null,
  ) {}

  /**
   * Writes a completion. A full ring is an overrun: the completion is lost,
   * the CQ is in error and its owner gets IBV_EVENT_CQ_ERR (once).
   * Returns false on overrun.
   */
  post(wc: Wc): boolean {
    if (this.errored) return false;
    // a consumer index the client made up (ahead of us, or further back than a ring) counts as full
    if (this.ring.full(this.cqe)) {
      this.errored = true;
      this.owner.asyncEvent(this.userHandle, EventType.CQ_ERR, this);
      return false;
    }
    this.ring.push(wc);
    if (this.ring.takeArm(wc.solicited || wc.status !== 0) && this.channel) this.owner.compEvent(this);
    return true;
  }

  /** RESIZE_CQ: the completions not yet polled move to the new ring (the caller unmaps the old one). */
  resize(mapping: Mapping, slots: number, cqe: number): void {
    this.ring.moveTo(mapping.buffer, slots);
    this.mapping = mapping;
    this.cqe = cqe;
  }

  /** Arms the CQ (REQ_NOTIFY_CQ); the library normally does this in shared memory. */
  arm(solicitedOnly: boolean): void {
    this.ring.arm(solicitedOnly);
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
    public ring: RecvQueueConsumer,
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
 * Walks the part [off, off+len) of a scatter/gather list piece by piece:
 * after start(), each next() that returns true has set `i` (the SGE),
 * `sgeOff` (the offset inside it), `n` (bytes) and `done` (bytes before this
 * piece); `complete` says whether the list was long enough. One cursor per
 * caller, reused: a callback per piece would be a closure per packet.
 */
export class SglCursor {
  i = 0;
  sgeOff = 0;
  n = 0;
  done = 0;
  private base = 0;
  private numSge = 0;
  private lens: readonly number[] = [];
  private off = 0;
  private len = 0;

  start(numSge: number, lens: readonly number[], off: number, len: number): this {
    this.numSge = numSge;
    this.lens = lens;
    this.off = off;
    this.len = len;
    this.i = -1;
    this.base = 0;
    this.done = 0;
    this.n = 0;
    return this;
  }

  next(): boolean {
    this.done += this.n;
    this.n = 0;
    while (this.done < this.len && ++this.i < this.numSge) {
      const start = this.base;
      const end = (this.base += this.lens[this.i]!);
      const pos = this.off + this.done;
      if (pos < end) {
        this.sgeOff = pos - start;
        this.n = Math.min(end - pos, this.len - this.done);
        return true;
      }
    }
    return false;
  }

  get complete(): boolean {
    return this.done === this.len;
  }
}
