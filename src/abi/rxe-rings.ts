/**
 * The HCA's side of rxe-layout queues (`rxe.ts`): a send queue, a receive
 * queue (a QP's RQ or an SRQ) and a completion queue, each in its own
 * buffer the daemon maps and a librxe client mmaps. Each implements the
 * interface the engines use (`wqe.ts`), so a WQE read here and one read
 * from a softverbs ring are the same record.
 *
 * rxe keeps masked slot numbers in the header, not counts: a queue of
 * `slots` is full at slots - 1 and the two indices alone cannot say more
 * than that. The interfaces count freely, so each class keeps its own side's
 * index privately and derives the other's count from the masked difference,
 * as the kernel's queue_count does: whatever a client writes there, it
 * names at most slots - 1 entries. The geometry is the daemon's copy, set
 * once in the header by the constructor and never read back from it.
 */
import { SendFlags, WcFlags, WrOpcode } from './enums.js';
// completions as cq-ring.ts writes them (every layout's CQ holds ib_uverbs_wc)
import { CQE, writeCqe } from './cq-ring.js';
import { copyBytes, Notify, word, wordsU64Number } from './ring.js';
import { QB, RSG, RWQE, RXE_CQE_SIZE, RXE_NO_AH, SWQE, type RxeQueueLayout } from './rxe.js';
import type { CompletionProducer, CqeIn, RecvQueueConsumer, RecvWqe, SendQueueConsumer, SendWqeFields } from './wqe.js';
import { ErrnoError } from '../common/errors.js';

/** Word indices in the header. */
const W_LOG2 = word(QB.log2_elem_size);
const W_MASK = word(QB.index_mask);
const W_PROD = word(QB.producer_index);
const W_CONS = word(QB.consumer_index);
/**
 * Ours, not rxe's: a send queue's "the HCA is not looking" flag, in the padding after the producer index (pad_2,
 * which librxe never touches; the kernel's rxe has no such word). The daemon sets it to 1 as its requester goes
 * idle and then looks at the producer index once more; our preload library, handed librxe's doorbell, rings only
 * if it can swap it from 1 to 0 (the send ring's SQ_IDLE protocol, send-ring.ts). While the daemon's requester
 * runs, posts ring no doorbell. A program that writes the word itself only changes when its own doorbells go.
 */
export const RXE_SQ_IDLE_AT = QB.producer_index + 64;
const W_IDLE = word(RXE_SQ_IDLE_AT);

/** Send WQE fields in words (`ring.ts` says why words). */
const W_WR_ID = word(SWQE.wr_id);
const W_OPCODE = word(SWQE.opcode);
const W_SEND_FLAGS = word(SWQE.send_flags);
const W_RDMA_ADDR = word(SWQE.rdma_remote_addr);
const W_RDMA_RKEY = word(SWQE.rdma_rkey);
const W_ATOMIC_ADDR = word(SWQE.atomic_remote_addr);
const W_ATOMIC_RKEY = word(SWQE.atomic_rkey);
const W_UD_QPN = word(SWQE.ud_remote_qpn);
const W_UD_QKEY = word(SWQE.ud_remote_qkey);
const W_UD_AH_NUM = word(SWQE.ud_ah_num);
const W_INV_RKEY = word(SWQE.invalidate_rkey);
const W_MW_ADDR = word(SWQE.mw_addr);
const W_MW_LENGTH = word(SWQE.mw_length);
const W_MW_MR_LKEY = word(SWQE.mw_mr_lkey);
const W_MW_MW_RKEY = word(SWQE.mw_mw_rkey);
const W_MW_RKEY = word(SWQE.mw_rkey);
const W_MW_ACCESS = word(SWQE.mw_access);
const W_DMA_LENGTH = word(SWQE.dma_length);
const W_DMA_NUM_SGE = word(SWQE.dma_num_sge);
const W_DMA_SGE = word(SWQE.dma_data);
const W_SGE = word(RSG.SIZE);
/** Receive WQE fields in words. */
const R_WR_ID = word(RWQE.wr_id);
const R_NUM_SGE = word(RWQE.dma_num_sge);
const R_SGE = word(RWQE.dma_sge);
const W_SG_ADDR = word(RSG.addr);
const W_SG_LENGTH = word(RSG.length);
const W_SG_LKEY = word(RSG.lkey);

/** The 32-bit value whose little-endian bytes are v's big-endian ones (a __be32 through a little-endian word). */
const bswap32 = (v: number): number => ((v << 24) | ((v & 0xff00) << 8) | ((v >>> 8) & 0xff00) | (v >>> 24)) >>> 0;

/** The header and the slots: what the queue's views cover (nothing past them is read or written). */
const queueBytes = (l: Pick<RxeQueueLayout, 'slots' | 'elemSize'>): number => QB.SIZE + l.slots * l.elemSize;

/**
 * Checks the geometry fits the buffer and writes the header as rxe_queue_init does: the element size and mask
 * the client will use, both indices 0. Returns the header as words.
 */
function initHeader(buffer: ArrayBuffer, l: Pick<RxeQueueLayout, 'slots' | 'log2ElemSize' | 'elemSize'>, what: string): Int32Array {
  const { slots, log2ElemSize: log2 } = l;
  if (!(slots >= 1 && (slots & (slots - 1)) === 0 && slots <= 1 << 20) || l.elemSize !== 2 ** log2 || log2 < 6 || log2 > 16) {
    throw new ErrnoError('EINVAL', `softverbs: rxe ${what}: ${slots} slots of ${l.elemSize} bytes is no rxe queue`);
  }
  if (buffer.byteLength < queueBytes(l)) throw new ErrnoError('EINVAL', `softverbs: rxe ${what}: ${buffer.byteLength} bytes hold no ${slots} slots of ${l.elemSize}`);
  const hdr = new Int32Array(buffer, 0, QB.SIZE / 4);
  Atomics.store(hdr, W_LOG2, log2);
  Atomics.store(hdr, W_MASK, slots - 1);
  Atomics.store(hdr, W_CONS, 0);
  Atomics.store(hdr, W_PROD, 0);
  return hdr;
}

/** The send queue librxe posts to; its producer index is the client's, its consumer index ours. */
export class RxeSendQueue implements SendQueueConsumer {
  readonly slots: number;
  private readonly mask: number;
  private readonly log2: number;
  private readonly hdr: Int32Array;
  private readonly u32: Uint32Array;
  private readonly dv: DataView;
  private readonly bytes: Uint8Array;
  /** the engines' consumer index (setConsumed), free-running: the client's producer index is read relative to it */
  private consumed = 0;
  /**
   * `caps` are the QP's (rxeSqLayout's): they must fit a slot, so whatever count a WQE claims, no more than a
   * slot is ever copied out of it.
   */
  constructor(
    buffer: ArrayBuffer,
    l: RxeQueueLayout,
    private readonly caps: { readonly maxSendSge: number; readonly maxInlineData: number },
  ) {
    if (SWQE.SIZE + Math.max(caps.maxSendSge * RSG.SIZE, caps.maxInlineData) > l.elemSize) {
      throw new ErrnoError('EINVAL', `softverbs: rxe SQ: ${caps.maxSendSge} SGEs or ${caps.maxInlineData} inline bytes do not fit a ${l.elemSize}-byte WQE`);
    }
    this.hdr = initHeader(buffer, l, 'SQ');
    // idle until a doorbell: the first post rings
    Atomics.store(this.hdr, W_IDLE, 1);
    this.slots = l.slots;
    this.mask = l.slots - 1;
    this.log2 = l.log2ElemSize;
    this.u32 = new Uint32Array(buffer, 0, queueBytes(l) >>> 2);
    this.dv = new DataView(buffer, 0, queueBytes(l));
    this.bytes = new Uint8Array(buffer, 0, queueBytes(l));
  }
  /** The client's producer index as a count: only its ring bits name a slot (as rxe's queue_count), so at most slots - 1 past ours. */
  produced(): number {
    const p = Atomics.load(this.hdr, W_PROD);
    return (this.consumed + ((p - this.consumed) & this.mask)) >>> 0;
  }
  setConsumed(idx: number): void {
    this.consumed = idx >>> 0;
    Atomics.store(this.hdr, W_CONS, idx & this.mask);
  }
  /** rxe's queue page has no place for the QP state: librxe asks the kernel (QUERY_QP). */
  setState(_s: number): void {}
  /*
   * librxe writes POST_SEND after every post (post_send_db, once it has stored its producer index); our preload
   * library sends it on only when the flag says the requester is idle (RXE_SQ_IDLE_AT). So the daemon holds this
   * queue in its poll window as it holds ours, and a C program's post is a store with no system call. It once
   * never did (a78e500: a C poller that never yielded beside a polling daemon cost ~150 system calls a round
   * trip); since the preload's ibv_poll_cq gives the CPU away in runs of empty polls (6b18729),
   * holding it halved C ib_send_lat across the wire (139/96 -> 66/60 us, the daemons' wake-ups 1.0-1.15 ->
   * 0.015 a round trip) and doubled C ib_write_bw on one device (2.2-2.4 -> 4.3-4.4 GB/s; bench/cratio.ts).
   */
  /** As the send ring's idle(): marked idle, then WQEs written meanwhile (their doorbell not sent) are claimed. */
  idle(before: number): boolean {
    Atomics.store(this.hdr, W_IDLE, 1);
    return this.produced() !== before && Atomics.compareExchange(this.hdr, W_IDLE, 1, 0) === 1;
  }
  wake(): boolean {
    return Atomics.compareExchange(this.hdr, W_IDLE, 1, 0) === 1;
  }
  /**
   * Copies the WQE at idx into w, as librxe 44 fills one (post_one_send, or the ibv_wr_* builders): the
   * remote address and rkey from the union member of its opcode (rdma or atomic; none for a send), the UD
   * fields for a send, inline data or SGEs by IBV_SEND_INLINE. The kernel's requester takes the remote
   * address from iova, which librxe sets to the same value.
   */
  read(idx: number, w: SendWqeFields): void {
    const u = this.u32;
    const o = QB.SIZE + ((idx & this.mask) << this.log2);
    const x = o >>> 2;
    w.wrLo = u[x + W_WR_ID]!;
    w.wrHi = u[x + W_WR_ID + 1]!;
    const op = (w.opcode = u[x + W_OPCODE]!);
    const flags = (w.sendFlags = u[x + W_SEND_FLAGS]!);
    // ex.imm_data is the application's __be32 as it passed it: the engines carry the value (ntohl of it)
    w.imm = this.dv.getUint32(o + SWQE.imm_data, false);
    if (op === WrOpcode.ATOMIC_CMP_AND_SWP || op === WrOpcode.ATOMIC_FETCH_AND_ADD) {
      w.remoteAddr = wordsU64Number(u, x + W_ATOMIC_ADDR);
      w.rkey = u[x + W_ATOMIC_RKEY]!;
      readOperands(this.dv, o, w);
    } else if (op === WrOpcode.RDMA_WRITE || op === WrOpcode.RDMA_WRITE_WITH_IMM || op === WrOpcode.RDMA_READ || op === WrOpcode.ATOMIC_WRITE) {
      w.remoteAddr = wordsU64Number(u, x + W_RDMA_ADDR);
      w.rkey = u[x + W_RDMA_RKEY]!;
    } else w.remoteAddr = w.rkey = 0;
    // ex is invalidate_rkey, a plain u32, for the two opcodes that invalidate; the window's fields for a bind
    if (op === WrOpcode.SEND_WITH_INV || op === WrOpcode.LOCAL_INV) w.invRkey = u[x + W_INV_RKEY]!;
    else if (op === WrOpcode.BIND_MW) readBind(u, x, w);
    if (op === WrOpcode.SEND || op === WrOpcode.SEND_WITH_IMM) {
      w.remoteQpn = u[x + W_UD_QPN]! & 0xffffff;
      w.remoteQkey = u[x + W_UD_QKEY]!;
      // the daemon hands out ah_num = AH handle + 1 (rxeAhNum); 0 is librxe's "no AH number" (an rxe_av instead)
      const ah = u[x + W_UD_AH_NUM]!;
      w.ahHandle = ah === 0 ? RXE_NO_AH : ah - 1;
    } else {
      w.remoteQpn = w.remoteQkey = 0;
      w.ahHandle = RXE_NO_AH;
    }
    if (op === WrOpcode.ATOMIC_WRITE) return readAtomicWrite(this.dv, o, w);
    if ((w.inline = (flags & SendFlags.INLINE) !== 0)) {
      // librxe copies the SGEs' bytes into inline_data and sets dma.length to their sum (dma.num_sge stays the SGE count)
      const n = (w.inlineLen = u[x + W_DMA_LENGTH]!);
      w.numSge = 0;
      if (n <= this.caps.maxInlineData) copyBytes(w.inlineData, 0, this.bytes, o + SWQE.dma_data, n);
      return;
    }
    const n = (w.numSge = u[x + W_DMA_NUM_SGE]!);
    w.inlineLen = 0;
    if (n <= this.caps.maxSendSge) readSges(u, x + W_DMA_SGE, n, w);
  }
}

/** A BIND_MW's wr.mw (out of read(), as readOperands). */
function readBind(u: Uint32Array, x: number, w: SendWqeFields): void {
  w.bindAddr = wordsU64Number(u, x + W_MW_ADDR);
  w.bindLength = wordsU64Number(u, x + W_MW_LENGTH);
  w.mrLkey = u[x + W_MW_MR_LKEY]!;
  w.mwRkey = u[x + W_MW_MW_RKEY]!;
  w.bindRkey = u[x + W_MW_RKEY]!;
  w.bindAccess = u[x + W_MW_ACCESS]!;
}

/** An atomic's operands (out of read(), which the engines' path wants small: two BigInts, atomics only). */
function readOperands(dv: DataView, o: number, w: SendWqeFields): void {
  w.compareAdd = dv.getBigUint64(o + SWQE.atomic_compare_add, true);
  w.swap = dv.getBigUint64(o + SWQE.atomic_swap, true);
}

/**
 * wr_atomic_write's WQE: librxe copies the 8 bytes to the head of dma's data (its atomic_wr member) whatever
 * the send flags say; there are no SGEs.
 */
function readAtomicWrite(dv: DataView, o: number, w: SendWqeFields): void {
  w.compareAdd = dv.getBigUint64(o + SWQE.dma_data, true);
  w.inline = false;
  w.inlineLen = w.numSge = 0;
}

/** Copies n rxe_sges from word i into the SGE arrays of w. */
function readSges(u: Uint32Array, i: number, n: number, w: { addr: number[]; len: number[]; lkey: number[] }): void {
  for (let j = 0; j < n; j++, i += W_SGE) {
    w.addr[j] = wordsU64Number(u, i + W_SG_ADDR);
    w.len[j] = u[i + W_SG_LENGTH]!;
    w.lkey[j] = u[i + W_SG_LKEY]!;
  }
}

/** A QP's receive queue or an SRQ, as librxe's rxe_post_one_recv fills it. */
export class RxeRecvQueue implements RecvQueueConsumer {
  readonly slots: number;
  private readonly mask: number;
  private readonly log2: number;
  private readonly hdr: Int32Array;
  private readonly u32: Uint32Array;
  /** our consumer index, a slot number as the header holds it */
  private cons = 0;
  /** WQEs the last look at the producer index showed and not taken since */
  private avail = 0;
  /** `maxSge` is the queue's (rxeRqLayout's or rxeSrqLayout's), and must fit a slot. */
  constructor(
    buffer: ArrayBuffer,
    l: RxeQueueLayout,
    readonly maxSge: number,
  ) {
    if (RWQE.SIZE + maxSge * RSG.SIZE > l.elemSize) throw new ErrnoError('EINVAL', `softverbs: rxe RQ: ${maxSge} SGEs do not fit a ${l.elemSize}-byte WQE`);
    this.hdr = initHeader(buffer, l, 'RQ');
    this.slots = l.slots;
    this.mask = l.slots - 1;
    this.log2 = l.log2ElemSize;
    this.u32 = new Uint32Array(buffer, 0, queueBytes(l) >>> 2);
  }
  /** Posted WQEs not taken yet: the masked distance to the client's producer index (at most slots - 1). */
  count(): number {
    return (this.avail = (Atomics.load(this.hdr, W_PROD) - this.cons) & this.mask);
  }
  /** The client's cache line is read only once the WQEs it showed last time are used up. */
  any(): boolean {
    return this.avail > 0 || this.count() > 0;
  }
  reset(): void {
    this.cons = Atomics.load(this.hdr, W_PROD) & this.mask;
    this.avail = 0;
    Atomics.store(this.hdr, W_CONS, this.cons);
  }
  /**
   * Takes the head WQE: its wr_id and dma.num_sge SGEs. The length is the SGEs' sum, not dma.length (the
   * client's claim about the same SGEs). More SGEs than the queue has room for is malformed: the WQE is
   * consumed and false returned (the kernel's responder: RESPST_ERR_MALFORMED_WQE).
   */
  take(out: RecvWqe): boolean {
    const u = this.u32;
    const x = (QB.SIZE + (this.cons << this.log2)) >>> 2;
    out.wrLo = u[x + R_WR_ID]!;
    out.wrHi = u[x + R_WR_ID + 1]!;
    const n = u[x + R_NUM_SGE]!;
    const ok = n <= this.maxSge;
    out.numSge = ok ? n : 0;
    out.length = 0;
    if (ok) {
      readSges(u, x + R_SGE, n, out);
      for (let j = 0; j < n; j++) out.length += out.len[j]!;
    }
    this.cons = (this.cons + 1) & this.mask;
    if (this.avail > 0) this.avail--;
    Atomics.store(this.hdr, W_CONS, this.cons);
    return ok;
  }
}

/**
 * The completion queue librxe polls: the producer index ours, the consumer index the client's. The arming
 * (REQ_NOTIFY_CQ) is kept here, as rxe keeps cq->notify in the kernel: librxe arms through the command.
 */
export class RxeCompletionQueue implements CompletionProducer {
  private buffer: ArrayBuffer;
  private hdr: Int32Array;
  private u32: Uint32Array;
  private slots: number;
  private mask: number;
  private readonly log2: number;
  /** our producer index, a slot number */
  private prod = 0;
  /** the client's consumer index as last read */
  private consSeen = 0;
  private notify: number = Notify.NONE;
  constructor(buffer: ArrayBuffer, l: RxeQueueLayout) {
    if (l.elemSize < RXE_CQE_SIZE) throw new ErrnoError('EINVAL', `softverbs: rxe CQ: ${l.elemSize}-byte elements hold no completion`);
    this.hdr = initHeader(buffer, l, 'CQ');
    this.buffer = buffer;
    this.slots = l.slots;
    this.mask = l.slots - 1;
    this.log2 = l.log2ElemSize;
    this.u32 = new Uint32Array(buffer, 0, queueBytes(l) >>> 2);
  }
  /**
   * Completions not yet polled: at most slots - 1. librxe only ever stores slot numbers, so a consumer index
   * past the mask is made up, and reads as more than the CQ holds (slots).
   */
  used(): number {
    const c = (this.consSeen = Atomics.load(this.hdr, W_CONS) >>> 0);
    return c > this.mask ? this.slots : (this.prod - c) & this.mask;
  }
  /**
   * Whether `cqe` completions wait, or slots - 1 (all the queue holds, rxe's queue_full), or the client's
   * index is made up. The client's cache line is read only when the index read before says the CQ may be
   * full: the client only moves it towards ours, so an older value counts at least as many.
   */
  full(cqe: number): boolean {
    const limit = cqe < this.mask ? cqe : this.mask;
    if (this.consSeen <= this.mask && ((this.prod - this.consSeen) & this.mask) < limit) return false;
    return this.used() >= limit;
  }
  /** Writes an ib_uverbs_wc into the producer's slot, then publishes the slot (the caller has checked there is room). */
  push(wc: CqeIn): void {
    // ex.imm_data is a __be32 the application ntohl()s: the immediate's bytes as they were on the wire
    // (its union mate invalidate_rkey is a plain u32, as the key was)
    writeCqe(this.u32, (QB.SIZE + (this.prod << this.log2)) >>> 2, wc, wc.wcFlags & WcFlags.WITH_INV ? wc.imm : bswap32(wc.imm));
    this.prod = (this.prod + 1) & this.mask;
    Atomics.store(this.hdr, W_PROD, this.prod);
  }
  /** Disarms the CQ if this completion is one its arming asked for (rxe_cq_post); true if a completion event is due. */
  takeArm(solicited: boolean): boolean {
    const a = this.notify;
    if (a === Notify.NEXT_COMP || (a === Notify.SOLICITED && solicited)) {
      this.notify = Notify.NONE;
      return true;
    }
    return false;
  }
  arm(solicitedOnly: boolean): void {
    this.notify = solicitedOnly ? Notify.SOLICITED : Notify.NEXT_COMP;
  }
  /**
   * RESIZE_CQ: a new queue of `slots` (rxeCqLayout's, same element size) in `buffer`, its header written, the
   * completions not yet polled copied to its start in order (as rxe's resize_finish) and published; the
   * arming stays. The caller has checked they fit (used()); a made-up consumer index counts by its ring bits.
   */
  moveTo(buffer: ArrayBuffer, slots: number): void {
    const l = { slots, log2ElemSize: this.log2, elemSize: 1 << this.log2 };
    const c = Atomics.load(this.hdr, W_CONS) & this.mask;
    const n = Math.min((this.prod - c) & this.mask, slots - 1);
    const src = new Uint8Array(this.buffer);
    const dst = new Uint8Array(buffer);
    const hdr = initHeader(buffer, l, 'CQ');
    for (let i = 0; i < n; i++) {
      const from = QB.SIZE + (((c + i) & this.mask) << this.log2);
      dst.set(src.subarray(from, from + CQE.SIZE), QB.SIZE + (i << this.log2));
    }
    this.buffer = buffer;
    this.hdr = hdr;
    this.u32 = new Uint32Array(buffer, 0, queueBytes(l) >>> 2);
    this.slots = slots;
    this.mask = slots - 1;
    this.prod = n;
    this.consSeen = 0;
    Atomics.store(hdr, W_PROD, n);
  }
}
