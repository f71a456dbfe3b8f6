/**
 * Work requests and completions as the HCA's engines see them, whichever
 * provider layout a client's rings are in: the records a WQE is read into
 * and a completion is written from, the interface each layout's queue
 * implements on the HCA's side, and which work request opcodes each QP type
 * takes (one table, checked by the library when it posts and by the HCA
 * when it reads). `send-ring.ts`, `recv-ring.ts` and `cq-ring.ts` are the
 * softverbs layout; `rxe-rings.ts` is rdma-core's rxe provider layout (for
 * C programs linked against librxe), one more class per queue implementing
 * the same interfaces.
 */
import { QpType, WcOpcode, WcStatus, WrOpcode } from './enums.js';
import type { WrId } from './ring.js';
import { ErrnoError } from '../common/errors.js';

/** What a work request opcode is (rxe's `enum rxe_wr_mask`): the operation, and whether its data may be inline. */
export const WrMask = { INLINE: 1 << 0, ATOMIC: 1 << 1, SEND: 1 << 2, READ: 1 << 3, WRITE: 1 << 4, ATOMIC_WRITE: 1 << 5, LOCAL: 1 << 6 } as const;

const SEND = WrMask.INLINE | WrMask.SEND;
const WRITE = WrMask.INLINE | WrMask.WRITE;
/**
 * Which ibv_wr_opcode each QP type takes and what it is there (rxe_opcode.c's rxe_wr_opcode_info, for the
 * opcodes softverbs implements): an opcode missing from a QP type's row is refused on it.
 */
export const WR_OPCODES: Readonly<Record<number, Readonly<Partial<Record<number, number>>>>> = {
  [QpType.RC]: {
    [WrOpcode.SEND]: SEND, [WrOpcode.SEND_WITH_IMM]: SEND, [WrOpcode.RDMA_WRITE]: WRITE, [WrOpcode.RDMA_WRITE_WITH_IMM]: WRITE,
    [WrOpcode.RDMA_READ]: WrMask.READ, [WrOpcode.ATOMIC_CMP_AND_SWP]: WrMask.ATOMIC, [WrOpcode.ATOMIC_FETCH_AND_ADD]: WrMask.ATOMIC,
    // rxe ≥ 6.2: its 8 bytes are in the WQE itself (the atomic operand), never behind SGEs
    [WrOpcode.ATOMIC_WRITE]: WrMask.ATOMIC_WRITE,
    // IETH exists in RC's opcodes only (rxe's table lists UC and UD too, but its next_opcode refuses them there)
    [WrOpcode.SEND_WITH_INV]: SEND, [WrOpcode.LOCAL_INV]: WrMask.LOCAL, [WrOpcode.BIND_MW]: WrMask.LOCAL,
  },
  [QpType.UC]: {
    [WrOpcode.SEND]: SEND, [WrOpcode.SEND_WITH_IMM]: SEND, [WrOpcode.RDMA_WRITE]: WRITE, [WrOpcode.RDMA_WRITE_WITH_IMM]: WRITE,
    [WrOpcode.BIND_MW]: WrMask.LOCAL,
  },
  [QpType.UD]: { [WrOpcode.SEND]: SEND, [WrOpcode.SEND_WITH_IMM]: SEND },
};

/** The table flat, [QP type (8 bits)][opcode (4 bits)]: a typed-array load per WQE on the engines' path, no dearer than the comparisons it replaces. */
const FLAT = new Uint8Array(256 << 4);
for (const [type, row] of Object.entries(WR_OPCODES)) {
  for (const [op, mask] of Object.entries(row)) {
    if (Number(type) > 0xff || Number(op) > 0xf) throw new ErrnoError('EINVAL', `softverbs: WR_OPCODES[${type}][${op}] is outside the flat table`);
    FLAT[(Number(type) << 4) | Number(op)] = mask!;
  }
}

/** The WrMask bits of `opcode` on a QP of type `qpType`; 0 when that QP type does not take it (or it is no opcode at all). */
export function wrMask(qpType: number, opcode: number): number {
  // whatever a client wrote or passed: only an integer within the table names an entry
  return opcode >>> 0 === opcode && opcode < 16 && qpType >>> 0 === qpType && qpType < 256 ? FLAT[(qpType << 4) | opcode]! : 0;
}

/**
 * A send WQE read out of a client's ring: its values as the client wrote them, copied (a client rewriting
 * its ring cannot change a WQE under the HCA) and not yet checked. Every layout's reader fills the same
 * record; the HCA's SendWqe extends it with what the engines keep per WQE.
 */
export class SendWqeFields implements WrId {
  wrLo = 0;
  wrHi = 0;
  opcode = 0;
  sendFlags = 0;
  imm = 0;
  /** past 2^53: +Infinity, which no MR contains */
  remoteAddr = 0;
  rkey = 0;
  /** read for atomics only (two BigInts per WQE otherwise); ATOMIC_WRITE: its 8 bytes, little-endian */
  compareAdd = 0n;
  swap = 0n;
  /** LOCAL_INV, SEND_WITH_INV: the key to invalidate (ibv_send_wr's invalidate_rkey, imm_data's union mate) */
  invRkey = 0;
  /** BIND_MW (ibv_mw_bind_info, rxe_send_wr's wr.mw): the window's current rkey, the rkey it is to have, the MR, range and access */
  mwRkey = 0;
  bindRkey = 0;
  mrLkey = 0;
  /** past 2^53: +Infinity, which no MR contains */
  bindAddr = 0;
  bindLength = 0;
  bindAccess = 0;
  /** UD: the client's handle of its address handle */
  ahHandle = 0;
  /** UD: 24 bits */
  remoteQpn = 0;
  remoteQkey = 0;
  /** the data is in the WQE (inlineData), not behind SGEs */
  inline = false;
  /** inline bytes the client claims; copied into inlineData only when they fit it */
  inlineLen = 0;
  /** SGEs the client claims (0 for inline data); copied only when they fit addr/len/lkey */
  numSge = 0;
  readonly inlineData: Uint8Array;
  /** SGE addresses as numbers (past 2^53: +Infinity) */
  readonly addr: number[];
  readonly len: number[];
  readonly lkey: number[];
  constructor(maxSge: number, maxInline: number) {
    this.inlineData = new Uint8Array(maxInline);
    this.addr = new Array<number>(maxSge).fill(0);
    this.len = new Array<number>(maxSge).fill(0);
    this.lkey = new Array<number>(maxSge).fill(0);
  }
}

/** A receive WQE taken off the ring, as the HCA holds it while filling it (one per QP, reused). */
export class RecvWqe implements WrId {
  wrLo = 0;
  wrHi = 0;
  numSge = 0;
  /** bytes the SGEs cover */
  length = 0;
  readonly addr: number[];
  readonly len: number[];
  readonly lkey: number[];
  constructor(maxSge: number) {
    this.addr = new Array<number>(maxSge).fill(0);
    this.len = new Array<number>(maxSge).fill(0);
    this.lkey = new Array<number>(maxSge).fill(0);
  }
}

/** The fields of a completion both sides know, wr_id aside. */
export interface CqeFields {
  status: WcStatus;
  opcode: WcOpcode;
  byteLen: number;
  imm: number;
  qpNum: number;
  srcQp: number;
  wcFlags: number;
}

/** A completion as the HCA writes it (wr_id as the WQE's two halves). */
export interface CqeIn extends CqeFields, WrId {}

/**
 * A send queue as the engines use it. Indices are free-running 32-bit counts whatever the layout keeps in
 * its header (a layout that stores masked indices converts), and the client's producer index is its
 * claim, unchecked: the QP bounds it.
 */
export interface SendQueueConsumer {
  readonly slots: number;
  produced(): number;
  /** WQEs before idx are done: their slots are the client's again. */
  setConsumed(idx: number): void;
  /** Shows the client the QP state, where the layout has a place for it. */
  setState(s: number): void;
  /**
   * The HCA stops looking at this queue until a doorbell; true if WQEs arrived since the producer index
   * `before` without one, and the HCA is to look at them itself.
   */
  idle(before: number): boolean;
  /** The HCA looks at this queue without a doorbell; false if the client had already rung. */
  wake(): boolean;
  /** Copies the WQE at idx into w (counts past the QP's caps are kept, their entries not copied: the HCA refuses them). */
  read(idx: number, w: SendWqeFields): void;
}

/** A receive queue (a QP's RQ or an SRQ) as the engines use it. */
export interface RecvQueueConsumer {
  readonly slots: number;
  readonly maxSge: number;
  /** Posted WQEs not taken yet (never more than the ring holds, whatever the client's index says). */
  count(): number;
  /** count() > 0, cheaply. */
  any(): boolean;
  /** Forgets everything posted (a QP reset). */
  reset(): void;
  /** Takes the head WQE into `out`; false if it is malformed (it is consumed anyway). */
  take(out: RecvWqe): boolean;
}

/** A completion queue as the engines use it. */
export interface CompletionProducer {
  /** Completions written and not yet polled (more than the ring holds: the client's index is made up). */
  used(): number;
  /** Whether `cqe` completions wait unpolled, or the client's index is made up. */
  full(cqe: number): boolean;
  /** Writes one completion and shows it to the client (the caller has checked there is room). */
  push(wc: CqeIn): void;
  /** Disarms the CQ if this completion is one its arming asked for; true if a completion event is due. */
  takeArm(solicited: boolean): boolean;
  arm(solicitedOnly: boolean): void;
  /** RESIZE_CQ: carries the completions not yet polled and the arming over to a new ring of `slots`. */
  moveTo(buffer: ArrayBuffer, slots: number): void;
}
