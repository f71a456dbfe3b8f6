/**
 * The rings' own formats: a completion the HCA writes comes out as the
 * library reads it, at the offsets of struct ib_uverbs_wc; and the one
 * table of which opcodes each QP type takes says what the IBA (and rxe)
 * say.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CQE, CqRingConsumer, CqRingProducer, type CqeIn, type CqeOut } from '../../src/abi/cq-ring.js';
import { QpType, WcFlags, WcOpcode, WcStatus, WrOpcode } from '../../src/abi/enums.js';
import { cqLayout } from '../../src/abi/queue.js';
import { RING_HDR } from '../../src/abi/ring.js';
import { WR_OPCODES, WrMask, wrMask } from '../../src/abi/wqe.js';

test('completion: every ib_uverbs_wc field the HCA writes comes out as the library reads it, at the offsets of the struct', () => {
  const l = cqLayout(4);
  const buf = new ArrayBuffer(l.bytes);
  const prod = new CqRingProducer(buf, l.slots);
  const cons = new CqRingConsumer(buf, l.slots);
  // a slot full of an older completion's bytes: none of them may show through
  new Uint8Array(buf, RING_HDR).fill(0xff);
  const wc: CqeIn = { wrLo: 0x01234567, wrHi: 0x89abcdef, status: WcStatus.REM_ACCESS_ERR, opcode: WcOpcode.RECV_RDMA_WITH_IMM, byteLen: 4096, imm: 0xcafef00d, qpNum: 0x123456, srcQp: 0x654321, wcFlags: WcFlags.WITH_IMM | WcFlags.GRH };
  prod.push(wc);
  const out: CqeOut = { wrId: 0n, status: 0, opcode: 0, vendorErr: 1, byteLen: 0, imm: 0, qpNum: 0, srcQp: 0, wcFlags: 0, pkeyIndex: 1, slid: 1, sl: 1, dlidPathBits: 1 };
  assert.equal(cons.produced(), 1);
  cons.read(out);
  assert.deepEqual(out, {
    wrId: 0x89abcdef_01234567n, status: WcStatus.REM_ACCESS_ERR, opcode: WcOpcode.RECV_RDMA_WITH_IMM, vendorErr: 0, byteLen: 4096, imm: 0xcafef00d,
    qpNum: 0x123456, srcQp: 0x654321, wcFlags: WcFlags.WITH_IMM | WcFlags.GRH, pkeyIndex: 0, slid: 0, sl: 0, dlidPathBits: 0,
  });
  const dv = new DataView(buf, RING_HDR);
  assert.deepEqual([dv.getUint8(CQE.port_num), dv.getUint8(CQE.port_num + 1), dv.getUint32(CQE.status, true)], [1, 0, WcStatus.REM_ACCESS_ERR]);
});

test('the opcode table: which work requests each QP type takes (IBA 10.7 / rxe_wr_opcode_info), and what each is', () => {
  const O = WrOpcode;
  const takes: Record<number, number[]> = {
    [QpType.RC]: [O.SEND, O.SEND_WITH_IMM, O.RDMA_WRITE, O.RDMA_WRITE_WITH_IMM, O.RDMA_READ, O.ATOMIC_CMP_AND_SWP, O.ATOMIC_FETCH_AND_ADD],
    [QpType.UC]: [O.SEND, O.SEND_WITH_IMM, O.RDMA_WRITE, O.RDMA_WRITE_WITH_IMM],
    [QpType.UD]: [O.SEND, O.SEND_WITH_IMM],
  };
  const kind: Record<number, number> = {
    [O.SEND]: WrMask.SEND | WrMask.INLINE, [O.SEND_WITH_IMM]: WrMask.SEND | WrMask.INLINE, [O.RDMA_WRITE]: WrMask.WRITE | WrMask.INLINE,
    [O.RDMA_WRITE_WITH_IMM]: WrMask.WRITE | WrMask.INLINE, [O.RDMA_READ]: WrMask.READ, [O.ATOMIC_CMP_AND_SWP]: WrMask.ATOMIC, [O.ATOMIC_FETCH_AND_ADD]: WrMask.ATOMIC,
  };
  for (const type of Object.values(QpType)) {
    for (const op of Object.values(O)) {
      const want = takes[type]?.includes(op) ? kind[op]! : 0;
      assert.equal(wrMask(type, op), want, `QP type ${type}, opcode ${op}`);
      assert.equal(WR_OPCODES[type]?.[op] ?? 0, want);
    }
  }
  // what a client may pass or write for an opcode: nothing that is not one names an entry
  for (const op of [-1, 1.5, NaN, 2 ** 32 + O.SEND, 0xffffffff, '2' as unknown as number]) assert.equal(wrMask(QpType.RC, op), 0, String(op));
});
