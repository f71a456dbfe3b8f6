/**
 * Work requests as both sides see them: which work request opcodes each QP
 * type takes, one table the library checks when it posts and the HCA when
 * it reads a WQE.
 */
import { QpType, WrOpcode } from './enums.js';

/** What a work request opcode is (rxe's `enum rxe_wr_mask`): the operation, and whether its data may be inline. */
export const WrMask = { INLINE: 1 << 0, ATOMIC: 1 << 1, SEND: 1 << 2, READ: 1 << 3, WRITE: 1 << 4 } as const;

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
  },
  [QpType.UC]: { [WrOpcode.SEND]: SEND, [WrOpcode.SEND_WITH_IMM]: SEND, [WrOpcode.RDMA_WRITE]: WRITE, [WrOpcode.RDMA_WRITE_WITH_IMM]: WRITE },
  [QpType.UD]: { [WrOpcode.SEND]: SEND, [WrOpcode.SEND_WITH_IMM]: SEND },
};

/** The table as one array per QP type, indexed by opcode: a lookup per WQE on the engines' path. */
const BY_TYPE: Array<readonly number[] | undefined> = [];
for (const [type, row] of Object.entries(WR_OPCODES)) {
  const a = new Array<number>(Math.max(...Object.keys(row).map(Number)) + 1).fill(0);
  for (const [op, mask] of Object.entries(row)) a[Number(op)] = mask!;
  BY_TYPE[Number(type)] = a;
}

/** The WrMask bits of `opcode` on a QP of type `qpType`; 0 when that QP type does not take it (or it is no opcode at all). */
export function wrMask(qpType: number, opcode: number): number {
  const row = BY_TYPE[qpType];
  // whatever a client wrote or passed: only an integer in the row's range names an entry
  if (row === undefined || opcode >>> 0 !== opcode || opcode >= row.length) return 0;
  return row[opcode]!;
}
