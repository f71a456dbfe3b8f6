/**
 * The extended verbs through the library (our provider ABI, WRITE_EX frames to the daemon): queryDeviceEx,
 * createCqEx and its completions with exactly the fields asked for, createQp with create flags (EX_CREATE_QP)
 * and send ops, the qp.wr builders (ibv_wr_*) over a connected RC pair and a UD pair, and each refusal's errno.
 */
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import {
  Access, CreateCqAttrFlags, getDeviceList, openDevice, QpCreateFlags, QpExSendOps, QpType, SendFlags, WC_STANDARD_FLAGS, WcExFlags, WcOpcode,
  WcStatus, WrOpcode, type Context, type CompletionQueueEx, type Device, type WorkCompletionEx,
} from '../../src/verbs/index.js';
import { connectQp, mgmt, startDaemon, type RunningDaemon } from '../helpers.js';

let d: RunningDaemon;
let dev: Device;
before(async () => {
  d = await startDaemon();
  dev = getDeviceList(d.root)[0]!;
});
after(async () => {
  await d.stop();
});

const ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;

/** Polls an extended CQ (start/next/end) until n completions came or 3 s passed. */
async function pollEx(cq: CompletionQueueEx, n: number): Promise<WorkCompletionEx[]> {
  const out: WorkCompletionEx[] = [];
  for (const end = Date.now() + 3000; out.length < n && Date.now() < end;) {
    out.push(...cq.pollEx(n - out.length));
    if (out.length < n) await new Promise((r) => setImmediate(r));
  }
  return out;
}

/** Two QPs of `type` on one context, connected to each other, on one extended CQ each. */
async function pair(ctx: Context, type: QpType, ops: number, wcFlags: number) {
  const pd = await ctx.allocPd();
  const ca = await ctx.createCqEx({ cqe: 32, wcFlags });
  const cb = await ctx.createCqEx({ cqe: 32, wcFlags });
  const cap = { maxSendWr: 16, maxRecvWr: 16, maxSendSge: 2, maxRecvSge: 2, maxInlineData: 64 };
  const a = await pd.createQp({ sendCq: ca, recvCq: ca, qpType: type, cap, sendOpsFlags: ops });
  const b = await pd.createQp({ sendCq: cb, recvCq: cb, qpType: type, cap, sendOpsFlags: ops });
  const gid = ctx.queryGid(1, 0);
  await connectQp(a, ctx, { qpn: b.qpNum, gid });
  await connectQp(b, ctx, { qpn: a.qpNum, gid });
  const ma = await pd.allocMr(8192, ALL);
  const mb = await pd.allocMr(8192, ALL);
  return { pd, ca, cb, a, b, ma, mb };
}

describe('extended verbs through the library', () => {
  test('queryDeviceEx: the legacy attributes, and device_cap_flags_ex with rxe >= 6.2\'s ATOMIC_WRITE (bit 40)', async () => {
    await using ctx = await openDevice(dev, d.root);
    const base = await ctx.queryDevice();
    const ex = await ctx.queryDeviceEx();
    const { deviceCapFlagsEx, completionTimestampMask, hcaCoreClock, maxWqTypeRq, rawPacketCaps, maxDmSize, ...legacy } = ex;
    assert.deepEqual(legacy, base);
    assert.equal(deviceCapFlagsEx, BigInt(base.deviceCapFlags >>> 0) | (1n << 40n));
    assert.deepEqual([completionTimestampMask, hcaCoreClock, maxWqTypeRq, rawPacketCaps, maxDmSize], [0n, 0n, 0, 0, 0n]);
  });

  test('createCqEx: completions carry the fields wcFlags asked for and no others; RC send/recv, write with immediate, read, atomics, ATOMIC_WRITE through qp.wr', async () => {
    await using ctx = await openDevice(dev, d.root);
    const ops = QpExSendOps.SEND | QpExSendOps.SEND_WITH_IMM | QpExSendOps.RDMA_WRITE_WITH_IMM | QpExSendOps.RDMA_READ |
      QpExSendOps.ATOMIC_FETCH_AND_ADD | QpExSendOps.ATOMIC_WRITE;
    const t = await pair(ctx, QpType.RC, ops, WcExFlags.BYTE_LEN | WcExFlags.IMM | WcExFlags.QP_NUM);
    assert.equal(t.ca.wcFlags, WcExFlags.BYTE_LEN | WcExFlags.IMM | WcExFlags.QP_NUM);
    for (let i = 0; i < 3; i++) t.b.postRecv({ wrId: 100 + i, sgList: [t.mb.sge(i * 256, 256)] });
    t.ma.buf.write('hello, extended', 0);
    const wr = t.a.wr;
    wr.start();
    wr.wrId = 1n;
    wr.wrFlags = SendFlags.SIGNALED;
    wr.send().setSge(t.ma.lkey, t.ma.addr, 15);
    wr.wrId = 2n;
    wr.sendImm(0xdeadbeef).setSgeList([t.ma.sge(0, 5), t.ma.sge(7, 8)]);
    wr.wrId = 3n;
    wr.rdmaWriteImm(t.mb.rkey, t.mb.addr + 4096n, 7).setSge(t.ma.lkey, t.ma.addr, 15);
    wr.wrId = 4n;
    wr.rdmaRead(t.mb.rkey, t.mb.addr + 4096n).setSge(t.ma.lkey, t.ma.addr + 1024n, 15);
    t.mb.buf.writeBigUInt64LE(40n, 5000);
    wr.wrId = 5n;
    wr.atomicFetchAdd(t.mb.rkey, t.mb.addr + 5000n, 2n).setSge(t.ma.lkey, t.ma.addr + 2048n, 8);
    wr.wrId = 6n;
    wr.atomicWrite(t.mb.rkey, t.mb.addr + 5008n, Uint8Array.from([9, 8, 7, 6, 5, 4, 3, 2]));
    assert.equal(wr.pending, 6);
    wr.complete();
    const sent = await pollEx(t.ca, 6);
    assert.deepEqual(sent.map((w) => [w.wrId, w.status, w.opcode]), [
      [1n, 0, WcOpcode.SEND], [2n, 0, WcOpcode.SEND], [3n, 0, WcOpcode.RDMA_WRITE], [4n, 0, WcOpcode.RDMA_READ], [5n, 0, WcOpcode.FETCH_ADD],
      [6n, 0, WcOpcode.ATOMIC_WRITE],
    ]);
    for (const w of sent) assert.deepEqual(Object.keys(w).sort(), ['byteLen', 'imm', 'opcode', 'qpNum', 'status', 'vendorErr', 'wcFlags', 'wrId'], 'the requested fields only');
    assert.equal(sent[0]!.qpNum, t.a.qpNum);
    const got = await pollEx(t.cb, 3);
    assert.deepEqual(got.map((w) => [w.wrId, w.status, w.opcode, w.byteLen, w.imm, w.qpNum]), [
      [100n, 0, WcOpcode.RECV, 15, 0, t.b.qpNum], [101n, 0, WcOpcode.RECV, 13, 0xdeadbeef, t.b.qpNum], [102n, 0, WcOpcode.RECV_RDMA_WITH_IMM, 15, 7, t.b.qpNum],
    ]);
    assert.equal(t.mb.buf.toString('utf8', 0, 15), 'hello, extended');
    assert.equal(t.mb.buf.toString('utf8', 256, 269), 'helloextended');
    assert.equal(t.ma.buf.toString('utf8', 1024, 1039), 'hello, extended');
    assert.equal(t.ma.buf.readBigUInt64LE(2048), 40n);
    assert.equal(t.mb.buf.readBigUInt64LE(5000), 42n);
    assert.deepEqual([...t.mb.buf.subarray(5008, 5016)], [9, 8, 7, 6, 5, 4, 3, 2]);
  });

  test('UD through qp.wr with setUdAddr and inline data; a CQ with the standard flags gives src_qp, slid, sl and dlid_path_bits too', async () => {
    await using ctx = await openDevice(dev, d.root);
    const t = await pair(ctx, QpType.UD, QpExSendOps.SEND | QpExSendOps.SEND_WITH_IMM, WC_STANDARD_FLAGS);
    const ah = await t.pd.createAh({ grh: { dgid: ctx.queryGid(1, 0) }, portNum: 1 });
    t.b.postRecv({ wrId: 7, sgList: [t.mb.sge(0, 40 + 64)] });
    const buf = ctx.allocBuffer(64);
    buf.write('inline ud');
    const { addr } = (await t.pd.regMr(buf, Access.LOCAL_WRITE)).sge(0, 9);
    t.a.wr.start();
    t.a.wr.wrId = 9;
    t.a.wr.wrFlags = SendFlags.SIGNALED;
    t.a.wr.sendImm(5).setUdAddr(ah, t.b.qpNum, 0x11111111).setInlineData(addr, 9).complete();
    const [s] = await pollEx(t.ca, 1);
    assert.deepEqual([s!.wrId, s!.status, s!.opcode], [9n, 0, WcOpcode.SEND]);
    const [r] = await pollEx(t.cb, 1);
    assert.deepEqual(r, { wrId: 7n, status: 0, opcode: WcOpcode.RECV, vendorErr: 0, wcFlags: r!.wcFlags, byteLen: 49, imm: 5, qpNum: t.b.qpNum, srcQp: t.a.qpNum, slid: 0, sl: 0, dlidPathBits: 0 });
    assert.equal(t.mb.buf.toString('utf8', 40, 49), 'inline ud');
  });

  test('an extended CQ on a completion channel: EX_CREATE_CQ names the channel, its events wake completions()', async () => {
    await using ctx = await openDevice(dev, d.root);
    await using channel = await ctx.createCompChannel();
    await using rcq = await ctx.createCqEx({ cqe: 8, channel, wcFlags: ['BYTE_LEN'] });
    await using scq = await ctx.createCq(8);
    await using pd = await ctx.allocPd();
    await using mr = await pd.allocMr(4096, ALL);
    await using a = await pd.createQp({ sendCq: scq, recvCq: scq, qpType: QpType.RC, cap: {} });
    await using b = await pd.createQp({ sendCq: rcq, recvCq: rcq, qpType: QpType.RC, cap: {} });
    await connectQp(a, ctx, { qpn: b.qpNum, gid: ctx.queryGid(1, 0) });
    await connectQp(b, ctx, { qpn: a.qpNum, gid: ctx.queryGid(1, 0) });
    b.postRecv({ wrId: 5, sgList: [mr.sge(1024, 64)] });
    const got = (async () => {
      for await (const wc of rcq.completions()) return wc;
    })();
    await new Promise((r) => setTimeout(r, 20)); // the CQ is armed and waiting when the message comes
    a.postSend({ wrId: 1, opcode: WrOpcode.SEND, sgList: [mr.sge(0, 33)] });
    const wc = await got;
    assert.deepEqual([wc!.wrId, wc!.opcode, wc!.byteLen], [5n, WcOpcode.RECV, 33]);
    assert.equal(rcq.eventsUnacked + rcq.compEvents > 0, true, 'woken by the channel\'s event');
  });

  test('a batch that fails anywhere posts nothing (ENOSPC when the queue is full); abort drops it; operations the QP was not made with are EOPNOTSUPP', async () => {
    await using ctx = await openDevice(dev, d.root);
    const t = await pair(ctx, QpType.RC, QpExSendOps.RDMA_WRITE, WcExFlags.BYTE_LEN);
    const wr = t.a.wr;
    assert.throws(() => wr.complete(), { code: 'EINVAL' });
    wr.start();
    wr.wrFlags = SendFlags.SIGNALED;
    for (let i = 0; i < 40; i++) wr.rdmaWrite(t.mb.rkey, t.mb.addr).setSge(t.ma.lkey, t.ma.addr, 8);
    assert.throws(() => wr.complete(), { code: 'ENOSPC' });
    wr.start().rdmaWrite(t.mb.rkey, t.mb.addr).setSgeList([t.ma.sge(0, 8), t.ma.sge(8, 8), t.ma.sge(16, 8)]);
    assert.throws(() => wr.complete(), { code: 'EINVAL' }, '3 SGEs > max_send_sge');
    wr.start().rdmaWrite(t.mb.rkey, t.mb.addr).setSge(t.ma.lkey, t.ma.addr, 8);
    wr.abort();
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(t.ca.pollEx(8), [], 'nothing of the failed or aborted batches was posted');
    assert.throws(() => wr.start().send(), { code: 'EOPNOTSUPP' });
    assert.throws(() => wr.start().setSge(t.ma.lkey, t.ma.addr, 8), { code: 'EINVAL' }, 'no operation to set');
    wr.abort();
    wr.start().rdmaWrite(t.mb.rkey, t.mb.addr).setSge(t.ma.lkey, t.ma.addr, 8).complete();
    const [w] = await pollEx(t.ca, 1);
    assert.deepEqual(w, { wrId: 0n, status: WcStatus.SUCCESS, opcode: WcOpcode.RDMA_WRITE, vendorErr: 0, wcFlags: 0, byteLen: 8 });
    // the legacy post works beside it, and startPoll/nextPoll/endPoll are the C calls' order
    assert.equal(t.ca.startPoll(), null);
    assert.throws(() => t.ca.nextPoll(), { code: 'EINVAL' });
    assert.throws(() => t.ca.endPoll(), { code: 'EINVAL' });
    const plain = await t.pd.createQp({ sendCq: t.ca, recvCq: t.ca, qpType: QpType.RC, cap: {} });
    assert.throws(() => plain.wr, { code: 'EINVAL' });
  });

  test('refusals: wc flags past the standard ones and IGNORE_OVERRUN are EOPNOTSUPP, comp_vector 1 EINVAL; create flags EOPNOTSUPP, SOURCE_QPN EPERM for a user, send ops a QP type lacks EOPNOTSUPP', async () => {
    await using ctx = await openDevice(dev, d.root);
    for (const wcFlags of [WcExFlags.COMPLETION_TIMESTAMP, WcExFlags.CVLAN, WcExFlags.FLOW_TAG, WcExFlags.TM_INFO, WcExFlags.COMPLETION_TIMESTAMP_WALLCLOCK])
      await assert.rejects(ctx.createCqEx({ cqe: 4, wcFlags }), { code: 'EOPNOTSUPP' });
    await assert.rejects(ctx.createCqEx({ cqe: 4, wcFlags: ['BYTE_LEN', 'NOPE' as 'IMM'] }), { code: 'EINVAL' });
    await assert.rejects(ctx.createCqEx({ cqe: 4, flags: CreateCqAttrFlags.IGNORE_OVERRUN }), (e: Error & { code: string }) => e.code === 'EOPNOTSUPP' && /EX_CREATE_CQ: flags 0x2/.test(e.message));
    await assert.rejects(ctx.createCqEx({ cqe: 4, compVector: 1 }), { code: 'EINVAL' });
    // a refused create leaves nothing of its ring's memfd in the daemon
    const fds = () => readdirSync(`/proc/${d.proc.pid}/fd`).length;
    const before = fds();
    for (let i = 0; i < 20; i++) await assert.rejects(ctx.createCqEx({ cqe: 4, flags: CreateCqAttrFlags.IGNORE_OVERRUN }), { code: 'EOPNOTSUPP' });
    assert.equal(fds(), before, 'the daemon holds no memfd of a refused EX_CREATE_CQ');
    await assert.rejects(ctx.createCqEx({ cqe: 0 }), { code: 'EINVAL' });
    await using cq = await ctx.createCqEx({ cqe: 4, wcFlags: ['BYTE_LEN', 'SRC_QP'], flags: CreateCqAttrFlags.SINGLE_THREADED });
    assert.equal(cq.wcFlags, WcExFlags.BYTE_LEN | WcExFlags.SRC_QP);
    await using pd = await ctx.allocPd();
    const init = { sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} };
    await using qp = await pd.createQp({ ...init, createFlags: 0 });
    assert.ok(qp.qpNum > 0, 'EX_CREATE_QP with no flags makes the QP');
    await assert.rejects(pd.createQp({ ...init, createFlags: QpCreateFlags.BLOCK_SELF_MCAST_LB }), (e: Error & { code: string }) => e.code === 'EOPNOTSUPP' && /EX_CREATE_QP: create_flags 0x2/.test(e.message));
    await assert.rejects(pd.createQp({ ...init, createFlags: 1 << 0 }), { code: 'EINVAL' });
    // this test process is root (CAP_NET_RAW): the kernel lets it ask, and rxe then says it cannot
    await assert.rejects(pd.createQp({ ...init, createFlags: QpCreateFlags.SOURCE_QPN, sourceQpn: 5 }), { code: process.getuid?.() === 0 ? 'EOPNOTSUPP' : 'EPERM' });
    await assert.rejects(pd.createQp({ ...init, qpType: QpType.UD, sendOpsFlags: QpExSendOps.RDMA_WRITE }), { code: 'EOPNOTSUPP' });
    await assert.rejects(pd.createQp({ ...init, qpType: QpType.UC, sendOpsFlags: QpExSendOps.ATOMIC_WRITE }), { code: 'EOPNOTSUPP' });
    // nothing of the refused ones is left in the daemon
    const rows = ((await mgmt(dev.devPath, 'restrack')) as Array<{ pid: number; type: string }>).filter((r) => r.pid === process.pid);
    assert.deepEqual(rows.map((r) => r.type).sort(), ['cq', 'pd', 'qp']);
  });
});
