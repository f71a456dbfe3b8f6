/**
 * The IBA base-transport opcode table as data (what rxe keeps in
 * `rxe_opcode.c`): for each BTH opcode, its name, which extension headers
 * follow the BTH, whether it carries payload, and where it sits in a
 * message. The requester picks opcodes from it, the responder and completer
 * classify packets by its masks, and the wire codec (`codec.ts`) sizes
 * headers from it.
 */

export const M = {
  REQ: 1 << 0, // a request (requester → responder)
  ACK: 1 << 1, // an acknowledge or atomic acknowledge
  RRESP: 1 << 2, // an RDMA read response
  FIRST: 1 << 3,
  MIDDLE: 1 << 4,
  LAST: 1 << 5,
  SEND: 1 << 6,
  WRITE: 1 << 7,
  READ: 1 << 8,
  ATOMIC: 1 << 9,
  IMM: 1 << 10, // ImmDt header
  RETH: 1 << 11,
  AETH: 1 << 12,
  ATMETH: 1 << 13,
  ATMACK: 1 << 14,
  DETH: 1 << 15,
  PAYLOAD: 1 << 16,
  COMP: 1 << 17, // completes a receive WQE at the responder
  RWR: 1 << 18, // needs a receive WQE at the responder
  IETH: 1 << 19,
  /** rxe ≥ 6.2's ATOMIC WRITE: a RETH and 8 bytes the responder stores as one */
  ATOMIC_WRITE: 1 << 20,
} as const;
const ONLY = M.FIRST | M.LAST;

export const Transport = { RC: 0x00, UC: 0x20, RD: 0x40, UD: 0x60 } as const;
export type Transport = (typeof Transport)[keyof typeof Transport];

/** BTH opcode low 5 bits (the operation; the top 3 bits are the transport). */
export const Op = {
  SEND_FIRST: 0x00, SEND_MIDDLE: 0x01, SEND_LAST: 0x02, SEND_LAST_WITH_IMMEDIATE: 0x03, SEND_ONLY: 0x04, SEND_ONLY_WITH_IMMEDIATE: 0x05,
  RDMA_WRITE_FIRST: 0x06, RDMA_WRITE_MIDDLE: 0x07, RDMA_WRITE_LAST: 0x08, RDMA_WRITE_LAST_WITH_IMMEDIATE: 0x09, RDMA_WRITE_ONLY: 0x0a,
  RDMA_WRITE_ONLY_WITH_IMMEDIATE: 0x0b, RDMA_READ_REQUEST: 0x0c, RDMA_READ_RESPONSE_FIRST: 0x0d, RDMA_READ_RESPONSE_MIDDLE: 0x0e,
  RDMA_READ_RESPONSE_LAST: 0x0f, RDMA_READ_RESPONSE_ONLY: 0x10, ACKNOWLEDGE: 0x11, ATOMIC_ACKNOWLEDGE: 0x12, COMPARE_SWAP: 0x13,
  FETCH_ADD: 0x14, SEND_LAST_WITH_INVALIDATE: 0x16, SEND_ONLY_WITH_INVALIDATE: 0x17, ATOMIC_WRITE: 0x1d,
} as const;
export type Op = (typeof Op)[keyof typeof Op];

export interface OpInfo {
  readonly name: string;
  readonly mask: number;
}

const base: Array<[Op, string, number]> = [
  [Op.SEND_FIRST, 'SEND_FIRST', M.REQ | M.SEND | M.PAYLOAD | M.RWR | M.FIRST],
  [Op.SEND_MIDDLE, 'SEND_MIDDLE', M.REQ | M.SEND | M.PAYLOAD | M.MIDDLE],
  [Op.SEND_LAST, 'SEND_LAST', M.REQ | M.SEND | M.PAYLOAD | M.COMP | M.LAST],
  [Op.SEND_LAST_WITH_IMMEDIATE, 'SEND_LAST_WITH_IMMEDIATE', M.REQ | M.SEND | M.PAYLOAD | M.IMM | M.COMP | M.LAST],
  [Op.SEND_ONLY, 'SEND_ONLY', M.REQ | M.SEND | M.PAYLOAD | M.RWR | M.COMP | ONLY],
  [Op.SEND_ONLY_WITH_IMMEDIATE, 'SEND_ONLY_WITH_IMMEDIATE', M.REQ | M.SEND | M.PAYLOAD | M.IMM | M.RWR | M.COMP | ONLY],
  [Op.RDMA_WRITE_FIRST, 'RDMA_WRITE_FIRST', M.REQ | M.WRITE | M.RETH | M.PAYLOAD | M.FIRST],
  [Op.RDMA_WRITE_MIDDLE, 'RDMA_WRITE_MIDDLE', M.REQ | M.WRITE | M.PAYLOAD | M.MIDDLE],
  [Op.RDMA_WRITE_LAST, 'RDMA_WRITE_LAST', M.REQ | M.WRITE | M.PAYLOAD | M.LAST],
  [Op.RDMA_WRITE_LAST_WITH_IMMEDIATE, 'RDMA_WRITE_LAST_WITH_IMMEDIATE', M.REQ | M.WRITE | M.PAYLOAD | M.IMM | M.RWR | M.COMP | M.LAST],
  [Op.RDMA_WRITE_ONLY, 'RDMA_WRITE_ONLY', M.REQ | M.WRITE | M.RETH | M.PAYLOAD | ONLY],
  [Op.RDMA_WRITE_ONLY_WITH_IMMEDIATE, 'RDMA_WRITE_ONLY_WITH_IMMEDIATE', M.REQ | M.WRITE | M.RETH | M.PAYLOAD | M.IMM | M.RWR | M.COMP | ONLY],
  [Op.RDMA_READ_REQUEST, 'RDMA_READ_REQUEST', M.REQ | M.READ | M.RETH | ONLY],
  [Op.RDMA_READ_RESPONSE_FIRST, 'RDMA_READ_RESPONSE_FIRST', M.RRESP | M.AETH | M.PAYLOAD | M.FIRST],
  [Op.RDMA_READ_RESPONSE_MIDDLE, 'RDMA_READ_RESPONSE_MIDDLE', M.RRESP | M.PAYLOAD | M.MIDDLE],
  [Op.RDMA_READ_RESPONSE_LAST, 'RDMA_READ_RESPONSE_LAST', M.RRESP | M.AETH | M.PAYLOAD | M.LAST],
  [Op.RDMA_READ_RESPONSE_ONLY, 'RDMA_READ_RESPONSE_ONLY', M.RRESP | M.AETH | M.PAYLOAD | ONLY],
  [Op.ACKNOWLEDGE, 'ACKNOWLEDGE', M.ACK | M.AETH | ONLY],
  [Op.ATOMIC_ACKNOWLEDGE, 'ATOMIC_ACKNOWLEDGE', M.ACK | M.AETH | M.ATMACK | ONLY],
  [Op.COMPARE_SWAP, 'COMPARE_SWAP', M.REQ | M.ATOMIC | M.ATMETH | ONLY],
  [Op.FETCH_ADD, 'FETCH_ADD', M.REQ | M.ATOMIC | M.ATMETH | ONLY],
  [Op.SEND_LAST_WITH_INVALIDATE, 'SEND_LAST_WITH_INVALIDATE', M.REQ | M.SEND | M.PAYLOAD | M.IETH | M.COMP | M.LAST],
  [Op.SEND_ONLY_WITH_INVALIDATE, 'SEND_ONLY_WITH_INVALIDATE', M.REQ | M.SEND | M.PAYLOAD | M.IETH | M.RWR | M.COMP | ONLY],
  // IBA 1.5 / rxe ≥ 6.2 (rxe_opcode.c): RC only, a RETH then its 8-byte payload, answered by a plain ACK
  [Op.ATOMIC_WRITE, 'ATOMIC_WRITE', M.REQ | M.RETH | M.PAYLOAD | M.ATOMIC_WRITE | ONLY],
];

/** Which operations each transport allows (IBA Table 38 / rxe_opcode.c). */
const allowed: Record<number, ReadonlySet<number>> = {
  [Transport.RC]: new Set(base.map((b) => b[0])),
  [Transport.UC]: new Set([0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b]),
  [Transport.UD]: new Set([Op.SEND_ONLY, Op.SEND_ONLY_WITH_IMMEDIATE]),
};

/** Full 8-bit opcode → info; undefined for opcodes softverbs does not implement (RD, CNP, reserved). */
export const OPCODES: ReadonlyArray<OpInfo | undefined> = (() => {
  const t: Array<OpInfo | undefined> = new Array(256).fill(undefined);
  for (const tr of [Transport.RC, Transport.UC, Transport.UD]) {
    const prefix = tr === Transport.RC ? 'RC' : tr === Transport.UC ? 'UC' : 'UD';
    for (const [op, name, mask] of base) {
      if (!allowed[tr]!.has(op)) continue;
      t[tr | op] = { name: `${prefix}_${name}`, mask: tr === Transport.UD ? mask | M.DETH : mask };
    }
  }
  return t;
})();

/** Sizes of the extension headers, in bytes (for the wire codec and payload accounting). */
export const HdrSize = { BTH: 12, RETH: 16, AETH: 4, ATMETH: 28, ATMACK: 8, DETH: 8, IMM: 4, IETH: 4, ICRC: 4, GRH: 40 } as const;

/** AETH syndrome: top 3 bits say ACK / RNR NAK / NAK, low 5 the credit count, timer or NAK code. */
export const Aeth = {
  ACK: 0x00,
  RNR_NAK: 0x20,
  NAK: 0x60,
  TYPE_MASK: 0x60,
  NAK_PSN_SEQ_ERROR: 0x60,
  NAK_INVALID_REQUEST: 0x61,
  NAK_REM_ACC_ERR: 0x62,
  NAK_REM_OP_ERR: 0x63,
  NAK_INV_RD_REQUEST: 0x64,
  /** "credits invalid" (rxe answers with this credit count; it does not do end-to-end credits). */
  CREDITS_INVALID: 0x1f,
} as const;
export type Aeth = (typeof Aeth)[keyof typeof Aeth];

/** IBA RNR NAK timer encoding (Table 45): code → microseconds. Code 0 is the longest, 655.36 ms. */
export const RNR_TIMER_US: readonly number[] = [
  655360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1280, 1920, 2560, 3840, 5120, 7680, 10240, 15360, 20480, 30720,
  40960, 61440, 81920, 122880, 163840, 245760, 327680, 491520,
];

/** 24-bit PSN arithmetic: the signed distance a − b. */
export function psnDiff(a: number, b: number): number {
  return ((a - b) << 8) >> 8;
}
export const PSN_MASK = 0xffffff;
