/**
 * rxe's provider ABI: the struct layouts against the installed uapi header
 * (compiled with `cc`), the queue sizes against the kernel's formulas, WQEs
 * written as librxe 44 writes them (`librxe.ts`) coming out of the HCA's
 * readers field for field, completions coming out as librxe polls them,
 * and a client that writes anything anywhere in its pages getting nothing
 * out of bounds, no exception and no count past its queue.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { CqRingProducer } from '../../src/abi/cq-ring.js';
import { QpType, SendFlags, WcFlags, WcOpcode, WcStatus, WrOpcode } from '../../src/abi/enums.js';
import { Limits } from '../../src/abi/queue.js';
import * as R from '../../src/abi/rxe.js';
import { RXE_SQ_IDLE_AT, RxeCompletionQueue, RxeRecvQueue, RxeSendQueue } from '../../src/abi/rxe-rings.js';
import { WC } from '../../src/abi/uverbs.js';
import { RecvWqe, SendWqeFields, type CqeIn } from '../../src/abi/wqe.js';
import { xorshift32 } from '../../src/common/rng.js';
import { ClientQueue, pollCq, postAtomicWrite, postRecv, postSend, type Wr } from './librxe.js';
import { fieldChecker } from './fields.js';

// ---- (a) layouts ----

/** [C struct, member path, our offset] for every field rxe.ts lays out (SIZE: sizeof). */
function ours(): Array<[string, string, number]> {
  const rows: Array<[string, string, number]> = [];
  const add = (c: string, m: Readonly<Record<string, number>>) => {
    for (const [k, v] of Object.entries(m)) rows.push([c, k, v]);
  };
  add('rxe_queue_buf', { ...R.memberOffsets(R.RXE_QUEUE_BUF), data: R.QB.SIZE });
  add('rxe_send_wqe', R.RXE_SEND_WQE_MEMBERS);
  add('rxe_recv_wqe', R.RXE_RECV_WQE_MEMBERS);
  for (const d of [R.RXE_SEND_WR, R.RXE_DMA_INFO, R.RXE_SGE, R.RXE_AV, R.MMINFO, R.RXE_CREATE_AH_RESP, R.RXE_CREATE_CQ_RESP, R.RXE_RESIZE_CQ_RESP, R.RXE_CREATE_QP_RESP, R.RXE_CREATE_SRQ_RESP, R.RXE_MODIFY_SRQ_CMD]) {
    add(d.name, R.memberOffsets(d));
  }
  // the completion librxe memcpy()s: ib_uverbs_wc, whose imm_data is in the union `ex`
  for (const [k, v] of Object.entries(R.memberOffsets(WC))) rows.push(['ib_uverbs_wc', k === 'imm_data' ? 'ex.imm_data' : k, v]);
  return rows;
}

/**
 * The kernel's struct rxe_cqe as Linux 6.1 declares it (rxe_verbs.h; struct ib_wc from include/rdma/ib_verbs.h,
 * with its enums as int and its pointers as void *): the compiler sizes it, so RXE_CQE_SIZE is not our arithmetic.
 */
const KERNEL_CQE = `
struct ib_wc_6_1 { union { __u64 wr_id; void *wr_cqe; }; int status; int opcode; __u32 vendor_err; __u32 byte_len; void *qp;
  union { __be32 imm_data; __u32 invalidate_rkey; } ex; __u32 src_qp; __u32 slid; int wc_flags; __u16 pkey_index; __u8 sl;
  __u8 dlid_path_bits; __u32 port_num; __u8 smac[6]; __u16 vlan_id; __u8 network_hdr_type; };
union rxe_cqe_6_1 { struct ib_wc_6_1 ibwc; struct ib_uverbs_wc uibwc; };`;

test('layout: every rxe struct field we use sits where <rdma/rdma_user_rxe.h> puts it (compiled with cc)', () => {
  const rows = ours();
  const lines = rows.map(([s, m]) => (m === 'SIZE' ? `  printf("${s} SIZE %zu\\n", sizeof(struct ${s}));` : `  printf("${s} ${m} %zu\\n", offsetof(struct ${s}, ${m}));`));
  const src = `#include <stdio.h>\n#include <stddef.h>\n#include <rdma/rdma_user_rxe.h>\n#include <rdma/ib_user_verbs.h>\n${KERNEL_CQE}\nint main(void) {\n${lines.join('\n')}\n  printf("rxe_cqe SIZE %zu\\n", sizeof(union rxe_cqe_6_1));\n  return 0;\n}\n`;
  const dir = mkdtempSync(join(tmpdir(), 'rxe-layout-'));
  try {
    writeFileSync(join(dir, 'layout.c'), src);
    const cc = spawnSync('cc', ['-std=gnu11', '-Wall', '-Werror', '-o', join(dir, 'layout'), join(dir, 'layout.c')], { encoding: 'utf8' });
    if ((cc.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') {
      assert.fail('the rxe layout check compiles C against <rdma/rdma_user_rxe.h>, and there is no `cc` on PATH: install a C compiler (gcc) and the kernel uapi headers (linux-libc-dev)');
    }
    assert.equal(cc.status, 0, `cc failed:\n${cc.stderr}`);
    const run = spawnSync(join(dir, 'layout'), { encoding: 'utf8' });
    assert.equal(run.status, 0, run.stderr);
    const got = run.stdout.trim().split('\n').map((l) => l.split(' '));
    const want = [...rows.map(([s, m, v]) => [s, m, String(v)]), ['rxe_cqe', 'SIZE', String(R.RXE_CQE_SIZE)]];
    assert.deepEqual(got, want);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// ---- (b) sizing ----

/** rxe_queue_init, written out again from the kernel (cache_line_size() 64, sizeof(struct rxe_queue_buf) 384, PAGE_ALIGN). */
function kernelQueue(numElem: number, elemSize: number) {
  const up = (n: number) => 2 ** Math.ceil(Math.log2(n));
  const elem = up(Math.max(elemSize, 64));
  const slots = up(numElem + 1);
  const bufSize = 384 + slots * elem;
  return { slots, elemSize: elem, log2ElemSize: Math.log2(elem), bufSize, bytes: Math.ceil(bufSize / 4096) * 4096 };
}

test('sizing: each queue is what the kernel makes for the same caps; caps come back as it reports them', () => {
  // send queue: room = max(sge * sizeof(ib_sge), inline), WQE = sizeof(rxe_send_wqe) (208) + room
  const sq = (wr: number, sge: number, inline: number) => R.rxeSqLayout({ maxSendWr: wr, maxSendSge: sge, maxInlineData: inline });
  assert.deepEqual(sq(16, 4, 64), { slots: 32, log2ElemSize: 9, elemSize: 512, bufSize: 16768, bytes: 20480, caps: { maxSendWr: 31, maxSendSge: 4, maxInlineData: 64 } });
  assert.deepEqual(sq(100, 2, 100)?.caps, { maxSendWr: 127, maxSendSge: 6, maxInlineData: 100 });
  assert.deepEqual(sq(1, 1, 0), { slots: 2, log2ElemSize: 8, elemSize: 256, bufSize: 896, bytes: 4096, caps: { maxSendWr: 1, maxSendSge: 1, maxInlineData: 16 } });
  assert.deepEqual(sq(0, 0, 0), { slots: 1, log2ElemSize: 8, elemSize: 256, bufSize: 640, bytes: 4096, caps: { maxSendWr: 0, maxSendSge: 0, maxInlineData: 0 } });
  // the largest: 32768 slots of 1024 bytes; the WR count reported is capped at max_qp_wr (16384), not 32767
  assert.deepEqual(sq(Limits.maxQpWr, Limits.maxSge, Limits.maxInline), { slots: 32768, log2ElemSize: 10, elemSize: 1024, bufSize: 33554816, bytes: 33558528, caps: { maxSendWr: 16384, maxSendSge: 32, maxInlineData: 512 } });
  for (const bad of [sq(Limits.maxQpWr + 1, 1, 0), sq(1, Limits.maxSge + 1, 0), sq(1, 1, Limits.maxInline + 1), sq(-1, 1, 0), sq(1.5, 1, 0)]) assert.equal(bad, null);
  // receive queue: sizeof(rxe_recv_wqe) (40) + sge * 16; the SGE count as asked
  assert.deepEqual(R.rxeRqLayout(16, 3), { slots: 32, log2ElemSize: 7, elemSize: 128, bufSize: 4480, bytes: 8192, caps: { maxRecvWr: 31, maxRecvSge: 3 } });
  assert.deepEqual(R.rxeRqLayout(1, 1)?.elemSize, 64);
  assert.equal(R.rxeRqLayout(1, Limits.maxSge + 1), null);
  assert.deepEqual(R.rxeQpLayout({ maxSendWr: 8, maxRecvWr: 8, maxSendSge: 2, maxRecvSge: 2, maxInlineData: 0 }, true)?.caps, { maxSendWr: 15, maxSendSge: 2, maxInlineData: 32, maxRecvWr: 0, maxRecvSge: 0 });
  // CQ: the kernel's element is sizeof(rxe_cqe), 72 bytes, so 128; it reports slots - 1
  assert.deepEqual(R.rxeCqLayout(4), { slots: 8, log2ElemSize: 7, elemSize: 128, bufSize: 1408, bytes: 4096, cqe: 7 });
  assert.deepEqual(R.rxeCqLayout(1), { slots: 2, log2ElemSize: 7, elemSize: 128, bufSize: 640, bytes: 4096, cqe: 1 });
  assert.deepEqual(R.rxeCqLayout(Limits.maxCqe), { slots: 32768, log2ElemSize: 7, elemSize: 128, bufSize: 4194688, bytes: 4198400, cqe: 32767 });
  for (const bad of [0, -1, Limits.maxCqe + 1]) assert.equal(R.rxeCqLayout(bad), null);
  // SRQ: 1..max_srq_wr, max_sge raised to 1
  assert.deepEqual(R.rxeSrqLayout(4, 3), { slots: 8, log2ElemSize: 7, elemSize: 128, bufSize: 1408, bytes: 4096, maxWr: 7, maxSge: 3 });
  assert.deepEqual(R.rxeSrqLayout(1, 0), { slots: 2, log2ElemSize: 6, elemSize: 64, bufSize: 512, bytes: 4096, maxWr: 1, maxSge: 1 });
  for (const [wr, sge] of [[0, 1], [Limits.maxSrqWr + 1, 1], [1, Limits.maxSrqSge + 1]]) assert.equal(R.rxeSrqLayout(wr!, sge!), null);

  // and across the caps: rxe_qp_init_req, rcv_wqe_size, rxe_cq_from_init as the kernel computes them
  const rand = xorshift32(0x5eed);
  const ri = (n: number) => Math.floor(rand() * (n + 1));
  for (let i = 0; i < 2000; i++) {
    const [wr, sge, inline] = [ri(Limits.maxQpWr), ri(Limits.maxSge), ri(Limits.maxInline)];
    const room = Math.max(sge * 16, inline);
    const k = kernelQueue(wr, 208 + room);
    assert.deepEqual(sq(wr, sge, inline), { ...k, caps: { maxSendWr: Math.min(k.slots - 1, Limits.maxQpWr), maxSendSge: Math.floor(room / 16), maxInlineData: room } });
    const rk = kernelQueue(wr, 40 + sge * 16);
    assert.deepEqual(R.rxeRqLayout(wr, sge), { ...rk, caps: { maxRecvWr: Math.min(rk.slots - 1, Limits.maxQpWr), maxRecvSge: sge } });
    const cqe = 1 + ri(Limits.maxCqe - 1);
    const ck = kernelQueue(cqe, 72);
    assert.deepEqual(R.rxeCqLayout(cqe), { ...ck, cqe: ck.slots - 1 });
  }
});

// ---- (c) round trips ----

/** A queue's buffer as the daemon maps it: its mmap size, with a page of canary past it (no view reaches it). */
const mapped = (l: R.RxeQueueLayout) => new Uint8Array(l.bytes + 4096).fill(0xee).buffer;

function sendQueue(qpType: number, caps = { maxSendWr: 4, maxSendSge: 4, maxInlineData: 64 }) {
  const l = R.rxeSqLayout(caps)!;
  const buf = mapped(l);
  const sq = new RxeSendQueue(buf, l, l.caps);
  return { l, buf, sq, client: new ClientQueue(buf), w: new SendWqeFields(l.caps.maxSendSge, l.caps.maxInlineData), qpType, ssn: 0, idx: 0 };
}

/** Posts wr as librxe does and reads it back at the engines' next index; the slot is consumed after. */
function roundTrip(r: ReturnType<typeof sendQueue>, wr: Wr): SendWqeFields {
  postSend(r.client, r.qpType, wr, r.ssn++);
  assert.equal(r.sq.produced(), (r.idx + 1) >>> 0);
  r.sq.read(r.idx, r.w);
  r.idx = (r.idx + 1) >>> 0;
  r.sq.setConsumed(r.idx);
  return r.w;
}

/** The fields the cases compared, so that together they can be checked to cover every field of the record. */
const { seen, expect } = fieldChecker();

test('send WQE: what librxe 44 writes for each opcode comes out of RxeSendQueue.read as the application posted it', () => {
  const rc = sendQueue(QpType.RC);
  const sg = [{ addr: 0x1_0000_1000n, length: 100, lkey: 0x101 }, { addr: 4096n, length: 0, lkey: 0x202 }, { addr: 2n ** 52n, length: 2 ** 31, lkey: 0xffffffff }, { addr: 7n, length: 1, lkey: 3 }];
  let w = roundTrip(rc, { wrId: 0x89abcdef_01234567n, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED | SendFlags.FENCE, sg });
  expect(w, {
    wrLo: 0x01234567, wrHi: 0x89abcdef, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED | SendFlags.FENCE, imm: 0, remoteAddr: 0, rkey: 0,
    inline: false, inlineLen: 0, numSge: 4, addr: [0x1_0000_1000, 4096, 2 ** 52, 7], len: [100, 0, 2 ** 31, 1], lkey: [0x101, 0x202, 0xffffffff, 3],
  });
  // imm: the application passes htonl(v); the engines carry v
  w = roundTrip(rc, { wrId: 1n, opcode: WrOpcode.SEND_WITH_IMM, sendFlags: SendFlags.SOLICITED, imm: 0xdeadbeef, sg: sg.slice(0, 1) });
  expect(w, { opcode: WrOpcode.SEND_WITH_IMM, imm: 0xdeadbeef, sendFlags: SendFlags.SOLICITED, numSge: 1 });
  // inline: the SGEs' bytes in inline_data, dma.length their sum (dma.num_sge keeps the SGE count: not ours to read)
  const data = (n: number, b: number) => new Uint8Array(n).fill(b);
  w = roundTrip(rc, { wrId: 2n, opcode: WrOpcode.SEND, sendFlags: SendFlags.INLINE, sg: [{ addr: 1n, length: 3, lkey: 0, data: data(3, 0x11) }, { addr: 2n, length: 2, lkey: 0, data: data(2, 0x22) }] });
  expect(w, { inline: true, inlineLen: 5, numSge: 0, inlineData: [0x11, 0x11, 0x11, 0x22, 0x22] });
  w = roundTrip(rc, { wrId: 3n, opcode: WrOpcode.RDMA_WRITE, rdma: { remoteAddr: 2n ** 40n + 5n, rkey: 0xfedcba98 }, sg: sg.slice(0, 2) });
  expect(w, { opcode: WrOpcode.RDMA_WRITE, remoteAddr: 2 ** 40 + 5, rkey: 0xfedcba98, numSge: 2, inline: false });
  w = roundTrip(rc, { wrId: 4n, opcode: WrOpcode.RDMA_WRITE_WITH_IMM, imm: 0x01020304, rdma: { remoteAddr: 0x2000n, rkey: 9 }, sendFlags: SendFlags.INLINE, sg: [{ addr: 0n, length: 64, lkey: 0, data: data(64, 0x33) }] });
  expect(w, { opcode: WrOpcode.RDMA_WRITE_WITH_IMM, imm: 0x01020304, remoteAddr: 0x2000, rkey: 9, inline: true, inlineLen: 64 });
  // an address past 2^53 is +Infinity (no MR contains it)
  w = roundTrip(rc, { wrId: 5n, opcode: WrOpcode.RDMA_READ, rdma: { remoteAddr: 2n ** 60n, rkey: 1 }, sg: sg.slice(2, 3) });
  expect(w, { opcode: WrOpcode.RDMA_READ, remoteAddr: Infinity, rkey: 1, numSge: 1, addr: [2 ** 52] });
  w = roundTrip(rc, { wrId: 6n, opcode: WrOpcode.ATOMIC_CMP_AND_SWP, atomic: { remoteAddr: 0x3000n, compareAdd: 2n ** 64n - 1n, swap: 2n ** 63n + 3n, rkey: 0x77 }, sg: [{ addr: 0x8000n, length: 8, lkey: 5 }] });
  expect(w, { opcode: WrOpcode.ATOMIC_CMP_AND_SWP, remoteAddr: 0x3000, rkey: 0x77, compareAdd: 2n ** 64n - 1n, swap: 2n ** 63n + 3n, numSge: 1 });
  w = roundTrip(rc, { wrId: 7n, opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, atomic: { remoteAddr: 0x3008n, compareAdd: 42n, swap: 0n, rkey: 0x78 }, sg: [{ addr: 0x8008n, length: 8, lkey: 5 }] });
  expect(w, { opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, remoteAddr: 0x3008, rkey: 0x78, compareAdd: 42n, swap: 0n });
  // a send on RC names no AH; the union's UD words are not read for other opcodes
  expect(w, { ahHandle: R.RXE_NO_AH, remoteQpn: 0, remoteQkey: 0 });
  // ibv_wr_atomic_write: the 8 bytes in the WQE (dma's atomic_wr), no SGEs whatever the flags say
  postAtomicWrite(rc.client, { wrId: 8n, sendFlags: SendFlags.SIGNALED | SendFlags.INLINE, rkey: 0x79, remoteAddr: 0x3010n, data: Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 0x88]) }, rc.ssn++);
  rc.sq.read(rc.idx, rc.w);
  rc.idx = (rc.idx + 1) >>> 0;
  rc.sq.setConsumed(rc.idx);
  expect(rc.w, { opcode: WrOpcode.ATOMIC_WRITE, remoteAddr: 0x3010, rkey: 0x79, compareAdd: 0x8807060504030201n, inline: false, inlineLen: 0, numSge: 0 });
  // ex as invalidate_rkey: a plain u32, for SEND_WITH_INV and LOCAL_INV alike
  w = roundTrip(rc, { wrId: 10n, opcode: WrOpcode.SEND_WITH_INV, invalidateRkey: 0x80001a5, sg: sg.slice(0, 1) });
  expect(w, { opcode: WrOpcode.SEND_WITH_INV, invRkey: 0x80001a5, numSge: 1 });
  w = roundTrip(rc, { wrId: 11n, opcode: WrOpcode.LOCAL_INV, invalidateRkey: 0xfedcba98 });
  expect(w, { opcode: WrOpcode.LOCAL_INV, invRkey: 0xfedcba98, numSge: 0 });
  // BIND_MW: wr.mw, the six fields of ibv_mw_bind_info and the window (rxe_bind_mw reads no others)
  w = roundTrip(rc, { wrId: 12n, opcode: WrOpcode.BIND_MW, bindMw: { mwRkey: 0x8000_1234, rkey: 0x8000_1235, mrLkey: 0x1_0107, addr: 2n ** 40n + 16n, length: 2n ** 33n, access: 0x2e } });
  expect(w, { opcode: WrOpcode.BIND_MW, mwRkey: 0x8000_1234, bindRkey: 0x8000_1235, mrLkey: 0x1_0107, bindAddr: 2 ** 40 + 16, bindLength: 2 ** 33, bindAccess: 0x2e });

  // UD: ah_num is the daemon's AH handle + 1; 0 (librxe's "no AH number", an rxe_av instead) names none
  const ud = sendQueue(QpType.UD);
  w = roundTrip(ud, { wrId: 2n ** 53n - 1n, opcode: WrOpcode.SEND, ud: { ahNum: R.rxeAhNum(4), remoteQpn: 0xabcdef, remoteQkey: 0x80000001 }, sg: sg.slice(0, 3) });
  expect(w, { wrLo: 0xffffffff, wrHi: 0x1fffff, ahHandle: 4, remoteQpn: 0xabcdef, remoteQkey: 0x80000001, numSge: 3, remoteAddr: 0, rkey: 0 });
  w = roundTrip(ud, { wrId: 9n, opcode: WrOpcode.SEND_WITH_IMM, imm: 7, ud: { ahNum: 0, remoteQpn: 0xffffff, remoteQkey: 1 }, sg: [] });
  expect(w, { ahHandle: R.RXE_NO_AH, remoteQpn: 0xffffff, imm: 7, numSge: 0 });

  assert.deepEqual(Object.keys(new SendWqeFields(1, 1)).filter((k) => !seen.has(k)), [], 'every field of the record is covered by a case above');
  // nothing of the canary past the mapping was touched, and the header shows masked indices only
  assert.ok(new Uint8Array(rc.buf, rc.l.bytes).every((b) => b === 0xee));
  assert.deepEqual([rc.client.prod, rc.client.cons, rc.client.log2, rc.client.mask], [rc.idx & (rc.l.slots - 1), rc.idx & (rc.l.slots - 1), rc.l.log2ElemSize, rc.l.slots - 1]);
});

test('send queue: indices wrap as masked slot numbers while the engines count on; a full queue refuses the post', () => {
  const r = sendQueue(QpType.RC);
  const slots = r.l.slots;
  for (let i = 0; i < slots * 5 + 3; i++) {
    const w = roundTrip(r, { wrId: BigInt(i), opcode: WrOpcode.SEND, sg: [{ addr: BigInt(i), length: i, lkey: i }] });
    assert.deepEqual([w.wrLo, w.addr[0], w.len[0]], [i, i, i]);
  }
  // the ring takes slots - 1 before the client sees it full; the engines see all of them
  for (let i = 0; i < slots - 1; i++) postSend(r.client, QpType.RC, { wrId: BigInt(i), opcode: WrOpcode.SEND }, 0);
  assert.throws(() => postSend(r.client, QpType.RC, { wrId: 99n, opcode: WrOpcode.SEND }, 0), { code: 'ENOMEM' });
  assert.equal((r.sq.produced() - r.idx) >>> 0, slots - 1);
  const before = new Uint8Array(r.buf.slice(0, R.QB.SIZE));
  r.sq.setState(3);
  assert.deepEqual(new Uint8Array(r.buf.slice(0, R.QB.SIZE)), before, 'setState writes nothing: rxe has no place for it');
});

test('send queue idle flag (ours, in pad_2 after the producer index): the preload library\'s doorbell goes only when it swaps 1 to 0; WQEs posted as the requester idles are claimed by it', () => {
  const r = sendQueue(QpType.RC);
  const flag = new Int32Array(r.buf, RXE_SQ_IDLE_AT, 1);
  // the preload library's test: swap 1 to 0, ring only if that worked
  const rings = () => Atomics.compareExchange(flag, 0, 1, 0) === 1;
  assert.ok(RXE_SQ_IDLE_AT > R.QB.producer_index && RXE_SQ_IDLE_AT + 4 <= R.QB.consumer_index, 'in the padding librxe never touches');
  assert.equal(Atomics.load(flag, 0), 1, 'a new queue is idle: the first post rings');
  postSend(r.client, QpType.RC, { wrId: 1n, opcode: WrOpcode.SEND }, 0);
  assert.equal(rings(), true);
  // the requester runs (flag 0): a post meanwhile rings nothing
  postSend(r.client, QpType.RC, { wrId: 2n, opcode: WrOpcode.SEND }, 0);
  assert.equal(rings(), false);
  // going idle with nothing new since `before`: idle, the next post rings
  assert.equal(r.sq.idle(r.sq.produced()), false);
  assert.equal(Atomics.load(flag, 0), 1);
  // a WQE written as it goes idle, its doorbell not yet sent: the requester claims it, the client then rings nothing
  const before = r.sq.produced();
  postSend(r.client, QpType.RC, { wrId: 3n, opcode: WrOpcode.SEND }, 0);
  assert.equal(r.sq.idle(before), true);
  assert.equal(rings(), false);
  // idle, then the client claims the wake-up with its post: wake() finds it taken (its doorbell is on the way)
  assert.equal(r.sq.idle(r.sq.produced()), false);
  postSend(r.client, QpType.RC, { wrId: 4n, opcode: WrOpcode.SEND }, 0);
  assert.equal(rings(), true);
  assert.equal(r.sq.wake(), false, 'already claimed');
  // a client writing the flag itself only changes its own doorbells: the engines read nothing else from it
  Atomics.store(flag, 0, 0x7fffffff);
  assert.equal(rings(), false);
});

test('receive WQE: what rxe_post_one_recv writes comes out of RxeRecvQueue.take, for an RQ and an SRQ, across wraparound', () => {
  for (const l of [R.rxeRqLayout(3, 3)!, R.rxeSrqLayout(5, 2)!]) {
    const maxSge = 'caps' in l ? l.caps.maxRecvSge : l.maxSge;
    const buf = mapped(l);
    const rq = new RxeRecvQueue(buf, l, maxSge);
    const c = new ClientQueue(buf);
    const w = new RecvWqe(maxSge);
    assert.deepEqual([rq.count(), rq.any()], [0, false]);
    let n = 0;
    for (let round = 0; round < 7; round++) {
      const k = 1 + (round % (l.slots - 1));
      for (let i = 0; i < k; i++, n++) postRecv(c, 0xfeedface_00000000n + BigInt(n), Array.from({ length: n % (maxSge + 1) }, (_, j) => ({ addr: BigInt(2 ** 40 + n * 16 + j), length: 10 + j, lkey: n })));
      assert.equal(rq.count(), k);
      for (let i = n - k; i < n; i++) {
        assert.equal(rq.any(), true);
        assert.equal(rq.take(w), true);
        const sges = i % (maxSge + 1);
        assert.deepEqual([w.wrLo, w.wrHi, w.numSge, w.length], [i, 0xfeedface, sges, sges * 10 + (sges * (sges - 1)) / 2]);
        assert.deepEqual(w.addr.slice(0, sges), Array.from({ length: sges }, (_, j) => 2 ** 40 + i * 16 + j));
      }
      assert.deepEqual([rq.count(), rq.any(), c.cons], [0, false, n & (l.slots - 1)]);
    }
    for (let i = 0; i < l.slots - 1; i++) postRecv(c, 0n, []);
    assert.throws(() => postRecv(c, 0n, []), { code: 'ENOMEM' });
    assert.equal(rq.count(), l.slots - 1);
    rq.reset();
    assert.deepEqual([rq.count(), c.cons], [0, c.prod]);
  }
});

const wcOf = (i: number): CqeIn => ({
  wrLo: i, wrHi: (0x80000000 | i) >>> 0, status: i % 3 === 0 ? WcStatus.SUCCESS : WcStatus.REM_ACCESS_ERR, opcode: i % 2 ? WcOpcode.RECV_RDMA_WITH_IMM : WcOpcode.SEND,
  byteLen: i * 7, imm: (0xcafe0000 | i) >>> 0, qpNum: 0x123456, srcQp: i & 0xffffff, wcFlags: WcFlags.WITH_IMM | WcFlags.GRH,
});

test('completion: push() writes what rxe_poll_cq reads (imm as a __be32), indices masked, across many wraparounds', () => {
  const l = R.rxeCqLayout(4)!;
  const buf = mapped(l);
  const cq = new RxeCompletionQueue(buf, l);
  const c = new ClientQueue(buf);
  let pushed = 0;
  let polled = 0;
  const rand = xorshift32(7);
  while (pushed < l.slots * 9) {
    while (!cq.full(l.cqe) && rand() < 0.8) cq.push(wcOf(pushed++));
    assert.ok(cq.used() <= l.cqe && c.prod <= l.slots - 1);
    for (const wc of pollCq(c, 1 + Math.floor(rand() * l.slots))) {
      const i = polled++;
      const want = wcOf(i);
      assert.deepEqual(wc, {
        wrId: (BigInt(want.wrHi) << 32n) | BigInt(want.wrLo), status: want.status, opcode: want.opcode, vendorErr: 0, byteLen: want.byteLen, imm: want.imm,
        qpNum: want.qpNum, srcQp: want.srcQp, wcFlags: want.wcFlags, pkeyIndex: 0, slid: 0, sl: 0, dlidPathBits: 0, port: 1,
      });
    }
    assert.equal(cq.used(), pushed - polled);
  }
  assert.ok(polled > l.slots * 4);
  // a full CQ is cqe (slots - 1) completions, as the kernel's queue_full
  pollCq(c, l.slots);
  for (let i = 0; i < l.cqe; i++) cq.push(wcOf(i));
  assert.deepEqual([cq.used(), cq.full(l.cqe)], [l.cqe, true]);
  assert.ok(new Uint8Array(buf, l.bytes).every((b) => b === 0xee));
});

test('completion: arming is CqRingProducer\'s; RESIZE_CQ carries the unpolled completions and the arming to the new queue', () => {
  const l = R.rxeCqLayout(4)!;
  const cq = new RxeCompletionQueue(mapped(l), l);
  const ref = new CqRingProducer(new ArrayBuffer(4096), 8);
  const rand = xorshift32(3);
  for (let i = 0; i < 500; i++) {
    if (rand() < 0.3) {
      const s = rand() < 0.5;
      cq.arm(s);
      ref.arm(s);
    } else {
      const s = rand() < 0.5;
      assert.equal(cq.takeArm(s), ref.takeArm(s));
    }
  }
  const buf = mapped(l);
  const small = new RxeCompletionQueue(buf, l);
  const c = new ClientQueue(buf);
  for (let i = 0; i < 7; i++) small.push(wcOf(i));
  assert.equal(pollCq(c, 3).length, 3);
  small.arm(true);
  const big = R.rxeCqLayout(20)!;
  const nbuf = mapped(big);
  small.moveTo(nbuf, big.slots);
  const nc = new ClientQueue(nbuf);
  assert.deepEqual([nc.log2, nc.mask, nc.prod, nc.cons, small.used()], [big.log2ElemSize, big.slots - 1, 4, 0, 4]);
  for (let i = 7; i < 7 + 20; i++) small.push(wcOf(i));
  assert.deepEqual(pollCq(nc, 100).map((w) => Number(w.wrId & 0xffffffffn)), Array.from({ length: 24 }, (_, i) => i + 3));
  assert.deepEqual([small.takeArm(false), small.takeArm(true), small.takeArm(true)], [false, true, false]);
});

// ---- (d) a hostile client ----

/** Every number the reader wrote is one (a read past a view gives undefined, and arithmetic on it NaN). */
function sane(w: SendWqeFields | RecvWqe): void {
  for (const [k, v] of Object.entries(w)) {
    if (typeof v === 'number') assert.ok(Number.isInteger(v) || v === Infinity, `${k} = ${v}`);
  }
  for (const k of ['addr', 'len', 'lkey'] as const) assert.ok(w[k].every((v) => Number.isInteger(v) || v === Infinity), k);
}

test('hostile indices and counts: made-up producer and consumer indices, huge num_sge and inline lengths, a rewritten header', () => {
  const r = sendQueue(QpType.RC, { maxSendWr: 7, maxSendSge: 2, maxInlineData: 32 });
  const { sq, client: c, l } = r;
  const mask = l.slots - 1;
  sq.setConsumed(5);
  for (const p of [0xffffffff, 0x7fffffff, mask + 1, l.slots * 7 + 3, 3, 5, 4, 0x80000000 | 6]) {
    Atomics.store(c.hdr, R.QB.producer_index / 4, p | 0);
    const n = (sq.produced() - 5) >>> 0;
    assert.equal(n, ((p >>> 0) - 5) & mask, `producer ${p}: only its ring bits count`);
  }
  // a header the client rewrote: the queue keeps its own geometry, and its own consumer index
  c.dv.setUint32(R.QB.log2_elem_size, 31, true);
  c.dv.setUint32(R.QB.index_mask, 0xffffffff, true);
  Atomics.store(c.hdr, R.QB.consumer_index / 4, 0x7fffffff);
  Atomics.store(c.hdr, R.QB.producer_index / 4, 0x7ffffff0);
  assert.ok(((sq.produced() - 5) >>> 0) <= mask);
  // a WQE claiming 2^32 - 1 SGEs, or 2^32 - 1 inline bytes: counts kept for the HCA to refuse, nothing copied
  const o = R.QB.SIZE + (5 & mask) * l.elemSize;
  r.w.addr.fill(-1);
  r.w.inlineData.fill(0xab);
  c.dv.setUint32(o + R.SWQE.opcode, WrOpcode.SEND, true);
  c.dv.setUint32(o + R.SWQE.send_flags, 0, true);
  c.dv.setUint32(o + R.SWQE.dma_num_sge, 0xffffffff, true);
  sq.read(5, r.w);
  assert.deepEqual([r.w.numSge, r.w.addr], [0xffffffff, [-1, -1]]);
  c.dv.setUint32(o + R.SWQE.send_flags, SendFlags.INLINE, true);
  c.dv.setUint32(o + R.SWQE.dma_length, 0xffffffff, true);
  sq.read(5, r.w);
  assert.deepEqual([r.w.inline, r.w.inlineLen, r.w.numSge, r.w.inlineData[0]], [true, 0xffffffff, 0, 0xab]);
  c.dv.setUint32(o + R.SWQE.dma_length, l.caps.maxInlineData + 1, true);
  sq.read(5, r.w);
  assert.equal(r.w.inlineData[0], 0xab, 'one byte past the QP\'s inline data is not copied either');

  // receive: a made-up producer index names at most slots - 1; a WQE with too many SGEs is consumed, refused
  const rl = R.rxeSrqLayout(3, 2)!;
  const rbuf = mapped(rl);
  const rq = new RxeRecvQueue(rbuf, rl, rl.maxSge);
  const rc = new ClientQueue(rbuf);
  Atomics.store(rc.hdr, R.QB.producer_index / 4, -1);
  assert.equal(rq.count(), rl.slots - 1);
  new DataView(rbuf).setUint32(R.QB.SIZE + R.RWQE.dma_num_sge, 3, true);
  const w = new RecvWqe(rl.maxSge);
  assert.deepEqual([rq.take(w), w.numSge, w.length, rq.count(), rc.cons], [false, 0, 0, rl.slots - 2, 1]);

  // CQ: a consumer index past the mask is made up (more than the CQ holds: full); one "ahead" of ours counts a full queue
  const cl = R.rxeCqLayout(8)!;
  const cbuf = mapped(cl);
  const cq = new RxeCompletionQueue(cbuf, cl);
  const cc = new ClientQueue(cbuf);
  for (const [cons, used] of [[cl.slots, cl.slots], [-1, cl.slots], [0x7fffffff, cl.slots], [1, cl.slots - 1], [0, 0]] as const) {
    Atomics.store(cc.hdr, R.QB.consumer_index / 4, cons);
    assert.equal(cq.used(), used, `consumer ${cons}`);
    assert.equal(cq.full(cl.cqe), used >= cl.cqe);
  }
});

const FUZZ = Number(process.env.RXE_RINGS_COUNT ?? 20000);
const SEED = Number(process.env.RXE_RINGS_SEED ?? 0xbad);

test(`fuzz (${FUZZ} steps, seed ${SEED}): random bytes anywhere in the pages, the engines reading on: bounded, in bounds, no exception`, () => {
  const rand = xorshift32(SEED);
  const ri = (n: number) => Math.floor(rand() * n);
  const word = () => (rand() < 0.3 ? ri(8) : rand() < 0.5 ? ri(0x100000000) : ri(64) - 32) >>> 0;
  const sl = R.rxeSqLayout({ maxSendWr: 5, maxSendSge: 3, maxInlineData: 40 })!;
  const rl = R.rxeRqLayout(6, 2)!;
  const cl = R.rxeCqLayout(6)!;
  const bufs = [mapped(sl), mapped(rl), mapped(cl)];
  const sq = new RxeSendQueue(bufs[0]!, sl, sl.caps);
  const rq = new RxeRecvQueue(bufs[1]!, rl, rl.caps.maxRecvSge);
  const cq = new RxeCompletionQueue(bufs[2]!, cl);
  const sw = new SendWqeFields(sl.caps.maxSendSge, sl.caps.maxInlineData);
  const rw = new RecvWqe(rl.caps.maxRecvSge);
  let consumed = 0;
  for (let step = 0; step < FUZZ; step++) {
    const b = bufs[ri(3)]!;
    const dv = new DataView(b, 0, b.byteLength - 4096);
    // the client: a header word, or WQE words with plausible opcodes, flags and counts
    if (rand() < 0.3) dv.setUint32([R.QB.log2_elem_size, R.QB.index_mask, R.QB.producer_index, R.QB.consumer_index][ri(4)]!, word(), true);
    else for (let k = 0; k < 8; k++) dv.setUint32((R.QB.SIZE + ri(dv.byteLength - R.QB.SIZE - 4)) & ~3, word(), true);
    const at = R.QB.SIZE + ri(sl.slots) * sl.elemSize;
    if (rand() < 0.3) new DataView(bufs[0]!).setUint32(at + R.SWQE.send_flags, rand() < 0.5 ? SendFlags.INLINE : 0, true);
    // the engines
    const n = (sq.produced() - consumed) >>> 0;
    assert.ok(n < sl.slots);
    for (let i = 0; i < n; i++) {
      sq.read((consumed + i) >>> 0, sw);
      sane(sw);
    }
    if (n && rand() < 0.5) sq.setConsumed((consumed = (consumed + 1 + ri(n)) >>> 0));
    const k = rq.count();
    assert.ok(k < rl.slots);
    for (let i = 0; i < k && rand() < 0.7; i++) {
      rq.take(rw);
      sane(rw);
      assert.ok(rw.numSge <= rl.caps.maxRecvSge);
    }
    const used = cq.used();
    assert.ok(used <= cl.slots);
    if (!cq.full(cl.cqe)) cq.push(wcOf(step));
    if (rand() < 0.01) rq.reset();
  }
  for (const b of bufs) assert.ok(new Uint8Array(b, b.byteLength - 4096).every((x) => x === 0xee), 'nothing past the mapping written');
});

test('completion: with IBV_WC_WITH_INV, ex is invalidate_rkey, a plain u32 (not imm_data\'s __be32)', () => {
  const l = R.rxeCqLayout(4)!;
  const buf = mapped(l);
  const cq = new RxeCompletionQueue(buf, l);
  cq.push({ ...wcOf(0), opcode: WcOpcode.RECV, wcFlags: WcFlags.WITH_INV, imm: 0x08002ad4 });
  cq.push({ ...wcOf(1), opcode: WcOpcode.RECV, wcFlags: WcFlags.WITH_IMM, imm: 0x08002ad4 });
  const dv = new DataView(buf);
  const ex = R.memberOffsets(WC).imm_data!;
  assert.deepEqual([dv.getUint32(R.QB.SIZE + ex, true), dv.getUint32(R.QB.SIZE + l.elemSize + ex, false)], [0x08002ad4, 0x08002ad4]);
});
