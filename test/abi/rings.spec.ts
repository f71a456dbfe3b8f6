/**
 * The rings' own formats: a work request written by the library's encoder
 * (SendRingProducer.write) comes out of the HCA's decoder
 * (SendRingConsumer.read) field for field; a receive WQE and a completion
 * do the same through their rings; and the one table of which opcodes each
 * QP type takes says what the IBA (and rxe) say.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CQE, CqRingConsumer, CqRingProducer, type CqeOut } from '../../src/abi/cq-ring.js';
import { QpType, SendFlags, WcFlags, WcOpcode, WcStatus, WrOpcode } from '../../src/abi/enums.js';
import { cqLayout, qpLayout, srqLayout, type QpCaps } from '../../src/abi/queue.js';
import { RecvRingConsumer, RecvRingProducer } from '../../src/abi/recv-ring.js';
import { RING_HDR } from '../../src/abi/ring.js';
import { SendRingConsumer, SendRingProducer, SW, type SendWrIn } from '../../src/abi/send-ring.js';
import { RecvWqe, SendWqeFields, WR_OPCODES, WrMask, wrMask, type CqeIn } from '../../src/abi/wqe.js';
import { fieldChecker } from './fields.js';

const CAPS: QpCaps = { maxSendWr: 8, maxRecvWr: 8, maxSendSge: 4, maxRecvSge: 3, maxInlineData: 64 };

/** One QP's rings in a plain buffer: the library's producer and the HCA's consumer over the same bytes. */
function sendRing(inline?: (addr: number, length: number) => Uint8Array | null) {
  const l = qpLayout(CAPS, false)!;
  const buf = new ArrayBuffer(l.bytes);
  const cons = new SendRingConsumer(buf, l.sq, l.caps);
  const prod = new SendRingProducer(buf, l.sq, inline);
  return { l, buf, cons, prod, w: new SendWqeFields(l.caps.maxSendSge, l.caps.maxInlineData) };
}

/** Writes wr, reads it back at the same index. */
function roundTrip(r: ReturnType<typeof sendRing>, wr: SendWrIn): SendWqeFields {
  const idx = r.prod.prod;
  assert.equal(r.prod.write(wr), -1);
  assert.equal(r.prod.prod, idx + 1);
  r.cons.read(idx, r.w);
  return r.w;
}

/** The fields the cases compared, so that together they can be checked to cover every field of the record. */
const { seen, expect } = fieldChecker();

test('send WQE: every field a work request carries comes out of the ring as the library put it in', () => {
  const r = sendRing((addr, length) => new Uint8Array(length).fill(addr & 0xff));
  // SGEs, RDMA: a bigint wr_id with both halves set, a remote address and an SGE address past 2^32, flags and imm
  let w = roundTrip(r, {
    wrId: 0x89abcdef_01234567n, opcode: WrOpcode.RDMA_WRITE_WITH_IMM, sendFlags: SendFlags.SIGNALED | SendFlags.SOLICITED | SendFlags.FENCE,
    imm: 0xdeadbeef, rdma: { remoteAddr: 2 ** 40 + 5, rkey: 0xfedcba98 },
    sgList: [{ addr: 0x1_0000_1000n, length: 100, lkey: 0x101 }, { addr: 4096, length: 0, lkey: 0x202 }, { addr: 2 ** 52, length: 2 ** 31, lkey: 0xffffffff }],
  });
  expect(w, {
    wrLo: 0x01234567, wrHi: 0x89abcdef, opcode: WrOpcode.RDMA_WRITE_WITH_IMM, sendFlags: SendFlags.SIGNALED | SendFlags.SOLICITED | SendFlags.FENCE,
    imm: 0xdeadbeef, remoteAddr: 2 ** 40 + 5, rkey: 0xfedcba98, inline: false, inlineLen: 0, numSge: 3,
    addr: [0x1_0000_1000, 4096, 2 ** 52], len: [100, 0, 2 ** 31], lkey: [0x101, 0x202, 0xffffffff],
  });
  // an atomic: its compare/add and swap (u64s, the top bit set), its remote address from wr.atomic
  w = roundTrip(r, {
    wrId: 7, opcode: WrOpcode.ATOMIC_CMP_AND_SWP, atomic: { remoteAddr: 0x2000n, compareAdd: 2n ** 64n - 1n, swap: 2n ** 63n + 3n, rkey: 0x77 },
    sgList: [{ addr: 0x3000, length: 8, lkey: 9 }],
  });
  expect(w, { wrLo: 7, wrHi: 0, opcode: WrOpcode.ATOMIC_CMP_AND_SWP, remoteAddr: 0x2000, rkey: 0x77, compareAdd: 2n ** 64n - 1n, swap: 2n ** 63n + 3n, numSge: 1 });
  // UD with inline data: the address handle, the remote QPN and Q_Key, and the bytes copied from where the SGEs point
  w = roundTrip(r, {
    wrId: 2 ** 53 - 1, opcode: WrOpcode.SEND_WITH_IMM, sendFlags: SendFlags.INLINE, imm: 1,
    ud: { ah: { handle: 0x4455 }, remoteQpn: 0xabcdef, remoteQkey: 0x80000001 },
    sgList: [{ addr: 0x11n, length: 3, lkey: 0 }, { addr: 0x22, length: 2, lkey: 0 }],
  });
  expect(w, {
    wrLo: 0xffffffff, wrHi: 0x1fffff, sendFlags: SendFlags.INLINE, ahHandle: 0x4455, remoteQpn: 0xabcdef, remoteQkey: 0x80000001,
    inline: true, inlineLen: 5, numSge: 0, inlineData: [0x11, 0x11, 0x11, 0x22, 0x22], remoteAddr: 0, rkey: 0,
  });
  // a negative wr_id goes in as the u64 BigInt() makes of it; an address past 2^53 reads as +Infinity (no MR contains it)
  w = roundTrip(r, { wrId: -1, opcode: WrOpcode.RDMA_READ, rdma: { remoteAddr: 2n ** 60n, rkey: 1 }, sgList: [] });
  expect(w, { wrLo: 0xffffffff, wrHi: 0xffffffff, remoteAddr: Infinity, numSge: 0 });

  // LOCAL_INV and SEND_WITH_INV: the key in imm_data's word (ibv_send_wr's union), as the value
  w = roundTrip(r, { wrId: 8, opcode: WrOpcode.SEND_WITH_INV, invalidateRkey: 0x80001a5, sgList: [{ addr: 0x3000, length: 8, lkey: 9 }] });
  expect(w, { opcode: WrOpcode.SEND_WITH_INV, invRkey: 0x80001a5, numSge: 1 });
  w = roundTrip(r, { wrId: 9, opcode: WrOpcode.LOCAL_INV, invalidateRkey: 0xfedcba98 });
  expect(w, { opcode: WrOpcode.LOCAL_INV, invRkey: 0xfedcba98, numSge: 0 });
  // BIND_MW: the window's range in remote_addr and mw_length, the new rkey in rkey, the rest in their own words
  w = roundTrip(r, { wrId: 10, opcode: WrOpcode.BIND_MW, bind: { mwRkey: 0x8000_1234, rkey: 0x8000_1235, mrLkey: 0x1_0107, addr: 2n ** 40n + 16n, length: 2n ** 33n, access: 0x2e } });
  expect(w, { opcode: WrOpcode.BIND_MW, mwRkey: 0x8000_1234, bindRkey: 0x8000_1235, mrLkey: 0x1_0107, bindAddr: 2 ** 40 + 16, bindLength: 2 ** 33, bindAccess: 0x2e });

  const all = Object.keys(new SendWqeFields(1, 1));
  assert.deepEqual(all.filter((k) => !seen.has(k)), [], 'every field of the record is covered by a case above');
});

test('send WQE: an inline SGE the source does not know posts nothing; counts past the caps are read, their entries not copied', () => {
  const r = sendRing((addr, length) => (addr === 0x10 ? new Uint8Array(length) : null));
  const wr = { wrId: 1, opcode: WrOpcode.SEND, sendFlags: SendFlags.INLINE, sgList: [{ addr: 0x10, length: 4, lkey: 0 }, { addr: 0x99, length: 4, lkey: 0 }] };
  assert.equal(r.prod.write(wr), 1);
  assert.equal(r.prod.prod, 0);

  // a client writing its ring by hand: more SGEs and more inline bytes than the QP has room for
  const dv = new DataView(r.buf, r.l.sq.offset);
  const o = RING_HDR;
  r.w.addr.fill(-1);
  r.w.inlineData.fill(0xee);
  dv.setUint32(o + SW.opcode, WrOpcode.SEND, true);
  dv.setUint32(o + SW.send_flags, 0, true);
  dv.setUint32(o + SW.num_sge, CAPS.maxSendSge + 1, true);
  r.cons.read(0, r.w);
  assert.equal(r.w.numSge, CAPS.maxSendSge + 1);
  assert.deepEqual(r.w.addr, new Array(CAPS.maxSendSge).fill(-1));
  dv.setUint32(o + SW.send_flags, SendFlags.INLINE, true);
  dv.setUint32(o + SW.inline_len, 0xffffffff, true);
  r.cons.read(0, r.w);
  assert.deepEqual([r.w.inline, r.w.inlineLen, r.w.numSge, r.w.inlineData[0]], [true, 0xffffffff, 0, 0xee]);
});

test('receive WQE: wr_id and SGEs come out as posted; an SGE count past the ring\'s is refused, the WQE consumed', () => {
  const l = srqLayout(4, 3)!;
  const buf = new ArrayBuffer(l.bytes);
  const cons = new RecvRingConsumer(buf, 0, l.slots, l.stride, 3);
  const prod = new RecvRingProducer(buf, l, 3);
  const o = prod.begin(0xfeedface_12345678n, 2);
  prod.writeSge(o, 0, 0x1_0000_0000n, 10, 5);
  prod.writeSge(o, 1, 2 ** 40, 20, 6);
  prod.advance();
  prod.begin(9, 4);
  prod.advance();
  prod.publish();
  const w = new RecvWqe(3);
  assert.equal(cons.count(), 2);
  assert.equal(cons.take(w), true);
  assert.deepEqual([w.wrLo, w.wrHi, w.numSge, w.length, w.addr.slice(0, 2), w.len.slice(0, 2), w.lkey.slice(0, 2)], [0x12345678, 0xfeedface, 2, 30, [2 ** 32, 2 ** 40], [10, 20], [5, 6]]);
  assert.equal(cons.take(w), false);
  assert.deepEqual([w.wrLo, w.numSge, cons.count()], [9, 0, 0]);
});

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
    // ATOMIC_WRITE: RC only, as rxe >= 6.2; BIND_MW on RC and UC, LOCAL_INV on RC; SEND_WITH_INV's IETH opcodes are RC's only
    [QpType.RC]: [O.SEND, O.SEND_WITH_IMM, O.RDMA_WRITE, O.RDMA_WRITE_WITH_IMM, O.RDMA_READ, O.ATOMIC_CMP_AND_SWP, O.ATOMIC_FETCH_AND_ADD, O.ATOMIC_WRITE, O.SEND_WITH_INV, O.LOCAL_INV, O.BIND_MW],
    [QpType.UC]: [O.SEND, O.SEND_WITH_IMM, O.RDMA_WRITE, O.RDMA_WRITE_WITH_IMM, O.BIND_MW],
    [QpType.UD]: [O.SEND, O.SEND_WITH_IMM],
  };
  const kind: Record<number, number> = {
    [O.SEND]: WrMask.SEND | WrMask.INLINE, [O.SEND_WITH_IMM]: WrMask.SEND | WrMask.INLINE, [O.RDMA_WRITE]: WrMask.WRITE | WrMask.INLINE,
    [O.RDMA_WRITE_WITH_IMM]: WrMask.WRITE | WrMask.INLINE, [O.RDMA_READ]: WrMask.READ, [O.ATOMIC_CMP_AND_SWP]: WrMask.ATOMIC, [O.ATOMIC_FETCH_AND_ADD]: WrMask.ATOMIC,
    [O.SEND_WITH_INV]: WrMask.SEND | WrMask.INLINE, [O.LOCAL_INV]: WrMask.LOCAL, [O.BIND_MW]: WrMask.LOCAL,
    [O.ATOMIC_WRITE]: WrMask.ATOMIC_WRITE,
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
