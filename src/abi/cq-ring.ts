/**
 * The completion ring in the softverbs layout: the HCA produces completions
 * (struct ib_uverbs_wc, as rxe's CQ ring holds them), the library consumes
 * them.
 */
import { offsets } from './layout.js';
import { CONS, NOTIFY, Notify, PROD, RING_HDR, word } from './ring.js';
import { WC } from './uverbs.js';
import type { CompletionProducer, CqeFields, CqeIn } from './wqe.js';
import { ErrnoError } from '../common/errors.js';

export const CQE = offsets(WC);

/** Word indices of a completion's fields: writeCqe() writes it as words (`ring.ts` says why). */
const W_WR_ID = word(CQE.wr_id);
const W_STATUS = word(CQE.status);
const W_OPCODE = word(CQE.opcode);
const W_VENDOR_ERR = word(CQE.vendor_err);
const W_BYTE_LEN = word(CQE.byte_len);
const W_IMM = word(CQE.imm_data);
const W_QP_NUM = word(CQE.qp_num);
const W_SRC_QP = word(CQE.src_qp);
const W_WC_FLAGS = word(CQE.wc_flags);
/** pkey_index and slid: both 0 */
const W_PKEY_SLID = word(CQE.pkey_index);
/** sl, dlid_path_bits, port_num and reserved: port 1, the rest 0 */
const W_PORT = word(CQE.sl);
const PORT_WORD = 1 << ((CQE.port_num - CQE.sl) * 8);
// writeCqe() writes every word of a slot once (no byte of the completion the slot held before shows through), and
// the fields it leaves 0 or 1 are the ones sharing those two words
const WORDS = [W_WR_ID, W_WR_ID + 1, W_STATUS, W_OPCODE, W_VENDOR_ERR, W_BYTE_LEN, W_IMM, W_QP_NUM, W_SRC_QP, W_WC_FLAGS, W_PKEY_SLID, W_PORT];
if (WORDS.length * 4 !== CQE.SIZE || new Set(WORDS).size !== WORDS.length || Math.max(...WORDS) * 4 >= CQE.SIZE || CQE.slid >> 2 !== W_PKEY_SLID || CQE.port_num >> 2 !== W_PORT) {
  throw new ErrnoError('EINVAL', 'softverbs: ib_uverbs_wc is not the shape push() writes');
}

/**
 * Writes wc as an ib_uverbs_wc at word w of a ring seen as words, every word of the slot once (no byte of the
 * completion it held before shows through). `imm` as the layout keeps imm_data: ours in host order, rxe's as the
 * __be32 the application ntohl()s.
 */
export function writeCqe(u: Uint32Array, w: number, wc: CqeIn, imm: number): void {
  u[w + W_WR_ID] = wc.wrLo;
  u[w + W_WR_ID + 1] = wc.wrHi;
  u[w + W_STATUS] = wc.status;
  u[w + W_OPCODE] = wc.opcode;
  u[w + W_VENDOR_ERR] = 0;
  u[w + W_BYTE_LEN] = wc.byteLen;
  u[w + W_IMM] = imm;
  u[w + W_QP_NUM] = wc.qpNum;
  u[w + W_SRC_QP] = wc.srcQp;
  u[w + W_WC_FLAGS] = wc.wcFlags;
  u[w + W_PKEY_SLID] = 0;
  u[w + W_PORT] = PORT_WORD;
}

/**
 * A completion as the library reads it (struct ibv_wc): the words as they are in the ring, status and opcode
 * included (the HCA wrote them; the reader says what an unknown value is).
 */
export interface CqeOut extends Omit<CqeFields, 'status' | 'opcode'> {
  status: number;
  opcode: number;
  wrId: bigint;
  vendorErr: number;
  pkeyIndex: number;
  slid: number;
  sl: number;
  dlidPathBits: number;
}

class CqRing {
  hdr: Int32Array;
  dv: DataView;
  mask: number;
  constructor(
    public buffer: ArrayBuffer,
    public slots: number,
  ) {
    this.hdr = new Int32Array(buffer, 0, RING_HDR / 4);
    this.dv = new DataView(buffer);
    this.mask = slots - 1;
  }
  protected slot(idx: number): number {
    return RING_HDR + (idx & this.mask) * CQE.SIZE;
  }
}

/** The HCA's side. */
export class CqRingProducer extends CqRing implements CompletionProducer {
  prod = 0;
  /** the ring as words, for push */
  private u32: Uint32Array;
  constructor(buffer: ArrayBuffer, slots: number) {
    super(buffer, slots);
    this.u32 = new Uint32Array(buffer, 0, buffer.byteLength >>> 2);
    Atomics.store(this.hdr, PROD, 0);
    Atomics.store(this.hdr, CONS, 0);
    Atomics.store(this.hdr, NOTIFY, Notify.NONE);
  }
  /** The consumer index as last read (the client's cache line is read only when the ring may be full). */
  private consSeen = 0;
  /** Completions written and not yet polled; a consumer index the client made up (ahead of us, or a ring behind) reads as more than `slots`. */
  used(): number {
    this.consSeen = Atomics.load(this.hdr, CONS) >>> 0;
    return (this.prod - this.consSeen) >>> 0;
  }
  /**
   * Whether `cqe` completions are waiting unpolled (or the client's index is made up): the consumer index
   * the client last wrote is read only when the one read before says the ring may be full. Reading it on
   * every completion costs a cache miss each while the client polls on another core.
   */
  full(cqe: number): boolean {
    if (((this.prod - this.consSeen) >>> 0) < cqe) return false;
    const used = this.used();
    return used >= cqe || used > this.slots;
  }
  /** Writes one completion and publishes it (the caller has checked there is room). */
  push(wc: CqeIn): void {
    writeCqe(this.u32, this.slot(this.prod) >>> 2, wc, wc.imm);
    this.prod = (this.prod + 1) >>> 0;
    Atomics.store(this.hdr, PROD, this.prod | 0);
  }
  /** Disarms the CQ if this completion is one its arming asked for; true if a completion event is due. */
  takeArm(solicited: boolean): boolean {
    const arm = Atomics.load(this.hdr, NOTIFY);
    if (arm === Notify.NEXT_COMP || (arm === Notify.SOLICITED && solicited)) return Atomics.compareExchange(this.hdr, NOTIFY, arm, Notify.NONE) === arm;
    return false;
  }
  arm(solicitedOnly: boolean): void {
    Atomics.store(this.hdr, NOTIFY, solicitedOnly ? Notify.SOLICITED : Notify.NEXT_COMP);
  }
  /** RESIZE_CQ: moves the completions not yet polled to the start of a new ring, keeps the arming, and switches to it. */
  moveTo(buffer: ArrayBuffer, slots: number): void {
    const cons = Atomics.load(this.hdr, CONS) >>> 0;
    const used = Math.min((this.prod - cons) >>> 0, this.slots);
    const dst = new Uint8Array(buffer);
    const src = new Uint8Array(this.buffer);
    for (let i = 0; i < used; i++) {
      const from = this.slot(cons + i);
      dst.set(src.subarray(from, from + CQE.SIZE), RING_HDR + i * CQE.SIZE);
    }
    const notify = Atomics.load(this.hdr, NOTIFY);
    this.buffer = buffer;
    this.slots = slots;
    this.mask = slots - 1;
    this.hdr = new Int32Array(buffer, 0, RING_HDR / 4);
    this.dv = new DataView(buffer);
    this.u32 = new Uint32Array(buffer, 0, buffer.byteLength >>> 2);
    this.prod = used;
    this.consSeen = 0;
    Atomics.store(this.hdr, CONS, 0);
    Atomics.store(this.hdr, NOTIFY, notify);
    Atomics.store(this.hdr, PROD, used);
  }
}

/** The library's side. */
export class CqRingConsumer extends CqRing {
  cons = 0;
  produced(): number {
    return Atomics.load(this.hdr, PROD) >>> 0;
  }
  /** Reads the completion at the consumer index into `out` and moves on (publish() makes the room visible to the HCA). */
  read(out: CqeOut): void {
    const o = this.slot(this.cons);
    const dv = this.dv;
    out.wrId = dv.getBigUint64(o + CQE.wr_id, true);
    out.status = dv.getUint32(o + CQE.status, true);
    out.opcode = dv.getUint32(o + CQE.opcode, true);
    out.vendorErr = dv.getUint32(o + CQE.vendor_err, true);
    out.byteLen = dv.getUint32(o + CQE.byte_len, true);
    out.imm = dv.getUint32(o + CQE.imm_data, true);
    out.qpNum = dv.getUint32(o + CQE.qp_num, true);
    out.srcQp = dv.getUint32(o + CQE.src_qp, true);
    out.wcFlags = dv.getUint32(o + CQE.wc_flags, true);
    out.pkeyIndex = dv.getUint16(o + CQE.pkey_index, true);
    out.slid = dv.getUint16(o + CQE.slid, true);
    out.sl = dv.getUint8(o + CQE.sl);
    out.dlidPathBits = dv.getUint8(o + CQE.dlid_path_bits);
    this.cons = (this.cons + 1) >>> 0;
  }
  publish(): void {
    Atomics.store(this.hdr, CONS, this.cons | 0);
  }
  arm(solicitedOnly: boolean): void {
    Atomics.store(this.hdr, NOTIFY, solicitedOnly ? Notify.SOLICITED : Notify.NEXT_COMP);
  }
}
