/**
 * The rings' own formats: a completion the HCA writes comes out as the
 * library reads it, at the offsets of struct ib_uverbs_wc.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CQE, CqRingConsumer, CqRingProducer, type CqeIn, type CqeOut } from '../../src/abi/cq-ring.js';
import { WcFlags, WcOpcode, WcStatus } from '../../src/abi/enums.js';
import { cqLayout } from '../../src/abi/queue.js';
import { RING_HDR } from '../../src/abi/ring.js';

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
