/**
 * The QP state machine: the IBA's required/optional attribute table for
 * every modify_qp transition (pure, and through a real daemon), SQ drain,
 * and the SRQ / QP async events.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { modifyIsOk, modifyMaskError } from '../../src/hca/qp.js';
import {
  Access, EventType, getDeviceList, openDevice, QpAttrMask as A, QpState as S, QpType, SendFlags, SrqAttrMask, WcOpcode, WcStatus, WrOpcode, type Context,
  type Mtu,
} from '../../src/verbs/index.js';
import { connectQp, mgmt, pollN, startDaemon, type RunningDaemon } from '../helpers.js';

describe('the modify_qp attribute table (IBA 11.2.5.2)', () => {
  const RC_INIT = A.STATE | A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS;
  const RC_RTR = A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN | A.MAX_DEST_RD_ATOMIC | A.MIN_RNR_TIMER;
  const RC_RTS = A.STATE | A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.SQ_PSN | A.MAX_QP_RD_ATOMIC;
  test('a refused mask is explained: the attributes missing, or the ones the transition does not take', () => {
    assert.equal(modifyMaskError(S.RESET, S.INIT, QpType.RC, RC_INIT), null);
    assert.equal(modifyMaskError(S.RESET, S.INIT, QpType.RC, A.STATE | A.PKEY_INDEX | A.PORT), 'RESET->INIT needs ACCESS_FLAGS (qpAccessFlags) in attr_mask');
    assert.equal(modifyMaskError(S.INIT, S.RTR, QpType.RC, A.STATE | A.AV | A.DEST_QPN | A.RQ_PSN), 'INIT->RTR needs PATH_MTU (pathMtu), MIN_RNR_TIMER (minRnrTimer), MAX_DEST_RD_ATOMIC (maxDestRdAtomic) in attr_mask');
    assert.equal(modifyMaskError(S.RESET, S.INIT, QpType.RC, RC_INIT | A.QKEY), 'RESET->INIT does not take QKEY (qkey)');
    assert.equal(modifyMaskError(S.RESET, S.RTS, QpType.RC, A.STATE), 'RESET->RTS is not a transition a QP of this type makes');
  });

  test('required attributes must all be there, and nothing outside required|optional', () => {
    assert.ok(modifyIsOk(S.RESET, S.INIT, QpType.RC, RC_INIT));
    assert.ok(!modifyIsOk(S.RESET, S.INIT, QpType.RC, RC_INIT & ~A.ACCESS_FLAGS));
    assert.ok(!modifyIsOk(S.RESET, S.INIT, QpType.RC, RC_INIT | A.QKEY), 'QKEY is not an RC attribute');
    assert.ok(modifyIsOk(S.RESET, S.INIT, QpType.UD, A.STATE | A.PKEY_INDEX | A.PORT | A.QKEY));
    assert.ok(!modifyIsOk(S.RESET, S.INIT, QpType.UD, A.STATE | A.PKEY_INDEX | A.PORT));
    assert.ok(modifyIsOk(S.INIT, S.RTR, QpType.RC, RC_RTR));
    assert.ok(!modifyIsOk(S.INIT, S.RTR, QpType.RC, RC_RTR & ~A.MIN_RNR_TIMER));
    assert.ok(modifyIsOk(S.INIT, S.RTR, QpType.UC, A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN));
    assert.ok(!modifyIsOk(S.INIT, S.RTR, QpType.UC, A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN | A.MIN_RNR_TIMER));
    assert.ok(modifyIsOk(S.INIT, S.RTR, QpType.UD, A.STATE));
    assert.ok(modifyIsOk(S.RTR, S.RTS, QpType.RC, RC_RTS));
    assert.ok(modifyIsOk(S.RTR, S.RTS, QpType.RC, RC_RTS | A.MIN_RNR_TIMER | A.ACCESS_FLAGS));
    assert.ok(!modifyIsOk(S.RTR, S.RTS, QpType.RC, RC_RTS & ~A.RNR_RETRY));
    assert.ok(modifyIsOk(S.RTR, S.RTS, QpType.UD, A.STATE | A.SQ_PSN));
    assert.ok(!modifyIsOk(S.RESET, S.RTR, QpType.RC, RC_RTR), 'no skipping INIT');
    assert.ok(!modifyIsOk(S.INIT, S.RTS, QpType.RC, RC_RTS));
    for (const from of [S.RESET, S.INIT, S.RTR, S.RTS, S.SQD, S.SQE, S.ERR]) {
      assert.ok(modifyIsOk(from, S.RESET, QpType.RC, A.STATE), `${from} -> RESET`);
      assert.ok(modifyIsOk(from, S.ERR, QpType.UD, A.STATE), `${from} -> ERR`);
    }
    assert.ok(modifyIsOk(S.RTS, S.SQD, QpType.RC, A.STATE | A.EN_SQD_ASYNC_NOTIFY));
    assert.ok(modifyIsOk(S.SQD, S.RTS, QpType.RC, A.STATE));
    assert.ok(!modifyIsOk(S.ERR, S.RTS, QpType.RC, A.STATE));
    assert.ok(!modifyIsOk(S.INIT, S.INIT, QpType.RC, A.STATE | A.CUR_STATE), 'CUR_STATE only from RTS/SQD/SQE');
  });
});

describe('through the daemon', () => {
  let d: RunningDaemon;
  let ctx: Context;
  before(async () => {
    d = await startDaemon();
    ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
  });
  after(async () => {
    ctx.closeDevice();
    await d.stop();
  });

  test('a wrong mask is EINVAL and changes nothing; a right one moves the QP', async () => {
    const pd = await ctx.allocPd();
    const cq = await ctx.createCq(8);
    const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
    await assert.rejects(qp.modifyQp({ qpState: S.RTR }, A.STATE), { code: 'EINVAL' });
    await assert.rejects(qp.modifyQp({ qpState: S.INIT, pkeyIndex: 0, portNum: 1 }, A.STATE | A.PKEY_INDEX | A.PORT), { code: 'EINVAL' });
    await assert.rejects(qp.modifyQp({ qpState: S.INIT, pkeyIndex: 0, portNum: 2, qpAccessFlags: 0 }, A.STATE | A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS), { code: 'EINVAL' }, 'port 2');
    assert.equal((await qp.queryQp()).qpState, S.RESET);
    await qp.modifyQp({ qpState: S.INIT, pkeyIndex: 0, portNum: 1, qpAccessFlags: Access.REMOTE_WRITE }, A.STATE | A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS);
    assert.equal((await qp.queryQp()).qpState, S.INIT);
    await assert.rejects(qp.modifyQp({ qpState: S.RTR, pathMtu: 9 as Mtu }, A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN | A.MAX_DEST_RD_ATOMIC | A.MIN_RNR_TIMER), { code: 'EINVAL' }, 'bad MTU enum');
    await assert.rejects(qp.modifyQp({ qpState: S.INIT, curQpState: S.RESET }, A.STATE | A.CUR_STATE), { code: 'EINVAL' });
    await qp.modifyQp({ qpState: S.ERR }, A.STATE);
    await qp.modifyQp({ qpState: S.RESET }, A.STATE);
    assert.equal(qp.state, S.RESET);
    await qp.destroyQp();
  });

  test('RTS -> SQD drains the send queue and raises SQ_DRAINED; SQD -> RTS sends again', async () => {
    const pd = await ctx.allocPd();
    const cq = await ctx.createCq(16);
    const a = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 8 } });
    const b = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxRecvWr: 8 } });
    const mr = await pd.allocMr(4096, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
    await connectQp(a, ctx, { qpn: b.qpNum, gid: ctx.queryGid(1, 0) });
    await connectQp(b, ctx, { qpn: a.qpNum, gid: ctx.queryGid(1, 0) });
    const ev = ctx.getAsyncEvent();
    await a.modifyQp({ qpState: S.SQD, enSqdAsyncNotify: 1 }, A.STATE | A.EN_SQD_ASYNC_NOTIFY);
    const e = await ev;
    assert.equal(e!.eventType, EventType.SQ_DRAINED);
    assert.equal(e!.element, a);
    a.postSend({ wrId: 1, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 8)], rdma: { remoteAddr: mr.addr + 64n, rkey: mr.rkey } });
    await new Promise((r) => setTimeout(r, 30));
    assert.deepEqual(cq.pollCq(4), [], 'nothing starts while in SQD');
    await a.modifyQp({ qpState: S.RTS }, A.STATE);
    assert.equal((await pollN(cq, 1))[0]!.status, 0);
  });

  test('wr_id: all 64 bits come back in the completion, sent, received and flushed', async () => {
    const pd = await ctx.allocPd();
    const cq = await ctx.createCq(16);
    const a = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 8 } });
    const b = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxRecvWr: 8 } });
    const mr = await pd.allocMr(4096, Access.LOCAL_WRITE);
    await connectQp(a, ctx, { qpn: b.qpNum, gid: ctx.queryGid(1, 0) });
    await connectQp(b, ctx, { qpn: a.qpNum, gid: ctx.queryGid(1, 0) });
    const ids = [0xfedcba9876543210n, 0x8000000000000001n, 0xffffffffffffffffn, 0x00000001ffffffffn];
    b.postRecv({ wrId: ids[1]!, sgList: [mr.sge(0, 64)] });
    b.postRecv({ wrId: ids[3]!, sgList: [mr.sge(64, 64)] });
    a.postSend({ wrId: ids[0]!, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(1000, 8)] });
    const got = await pollN(cq, 2);
    assert.deepEqual(got.map((w) => [w.opcode, w.wrId] as const).sort((x, y) => x[0] - y[0]), [[WcOpcode.SEND, ids[0]], [WcOpcode.RECV, ids[1]]]);
    // the receive still posted is flushed when its QP goes to ERR, with its wr_id
    await b.modifyQp({ qpState: S.ERR }, A.STATE);
    const [f] = await pollN(cq, 1);
    assert.deepEqual([f!.status, f!.wrId], [WcStatus.WR_FLUSH_ERR, ids[3]]);
    a.postSend({ wrId: ids[2]!, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(1000, 8)] });
    await a.modifyQp({ qpState: S.ERR }, A.STATE);
    const [g] = await pollN(cq, 1);
    assert.equal(g!.wrId, ids[2]);
  });

  test('SRQ: SRQ_LIMIT_REACHED when a dequeue leaves fewer than the limit; QP_LAST_WQE_REACHED when its QP goes to ERR', async () => {
    const pd = await ctx.allocPd();
    const cq = await ctx.createCq(32);
    const srq = await pd.createSrq({ maxWr: 16, maxSge: 1 });
    const a = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 8 } });
    const b = await pd.createQp({ sendCq: cq, recvCq: cq, srq, qpType: QpType.RC, cap: {} });
    const mr = await pd.allocMr(4096, Access.LOCAL_WRITE);
    await connectQp(a, ctx, { qpn: b.qpNum, gid: ctx.queryGid(1, 0) });
    await connectQp(b, ctx, { qpn: a.qpNum, gid: ctx.queryGid(1, 0) });
    for (let i = 0; i < 5; i++) srq.postSrqRecv({ wrId: BigInt(i), sgList: [mr.sge(i * 64, 64)] });
    await srq.modifySrq({ srqLimit: 4 }, SrqAttrMask.LIMIT);
    a.postSend({ wrId: 10, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(1000, 8)] });
    await pollN(cq, 2);
    assert.equal((await srq.querySrq()).srqLimit, 4, 'still armed: 4 left is not fewer than 4');
    const ev = ctx.getAsyncEvent();
    a.postSend({ wrId: 11, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(1000, 8)] });
    const e = await ev;
    assert.equal(e!.eventType, EventType.SRQ_LIMIT_REACHED);
    assert.equal(e!.element, srq);
    assert.equal((await srq.querySrq()).srqLimit, 0, 'the limit disarms once it fired');
    await pollN(cq, 2);
    const ev2 = ctx.getAsyncEvent();
    await b.modifyQp({ qpState: S.ERR }, A.STATE);
    const e2 = await ev2;
    assert.equal(e2!.eventType, EventType.QP_LAST_WQE_REACHED);
    assert.equal(e2!.element, b);
  });

  test('a pure doorbell (out_words 0) gets no reply, so the next command gets its own; one with room for a reply gets it', async () => {
    const pd = await ctx.allocPd();
    const cq = await ctx.createCq(8);
    const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 4 } });
    const bell = (qp as unknown as { sendBell: Buffer }).sendBell;
    assert.equal(bell.readUInt16LE(6), 0, 'the library rings with out_words 0');
    for (let i = 0; i < 10; i++) ctx.cmd.ring('doorbell', bell);
    assert.equal((await qp.queryQp(A.STATE)).qpState, S.RESET, 'the reply that comes is the query\'s');
    const answered = Buffer.from(bell);
    answered.writeUInt16LE(1, 6); // room for ib_uverbs_post_send_resp
    assert.equal((await ctx.cmd.call('doorbell', answered)).readUInt32LE(0), 0, 'bad_wr 0');
    await qp.destroyQp();
  });

  test('postSend rings the doorbell only when the HCA is idle on the SQ: 64 WRs posted at once need far fewer doorbells, and all complete', async () => {
    // (this daemon polls a busy queue for a while: a burst posted meanwhile rings nothing; test/hca/poll.spec.ts)
    const pd = await ctx.allocPd();
    const cq = await ctx.createCq(128);
    const a = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 64 } });
    const b = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
    const mr = await pd.allocMr(1 << 16, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
    await connectQp(a, ctx, { qpn: b.qpNum, gid: ctx.queryGid(1, 0) });
    await connectQp(b, ctx, { qpn: a.qpNum, gid: ctx.queryGid(1, 0) });
    const devPath = getDeviceList(d.root)[0]!.devPath;
    const before = (await mgmt(devPath, 'devices'))[0].doorbells;
    for (let round = 0; round < 4; round++) {
      for (let i = 0; i < 64; i++) a.postSend({ wrId: i, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 64)], rdma: { remoteAddr: mr.addr + 4096n, rkey: mr.rkey } });
      const wcs = await pollN(cq, 64);
      assert.ok(wcs.every((w) => w.status === 0));
    }
    const rung = (await mgmt(devPath, 'devices'))[0].doorbells - before;
    assert.ok(rung >= 1 && rung < 64, `${rung} doorbells for 256 WRs in 4 bursts`);
  });

  test('regMr of a plain Buffer is a clear error', async () => {
    const pd = await ctx.allocPd();
    await assert.rejects(pd.regMr(Buffer.alloc(4096), Access.LOCAL_WRITE), (e: Error & { code: string }) => e.code === 'EINVAL' && /not shared memory/.test(e.message));
  });
});
