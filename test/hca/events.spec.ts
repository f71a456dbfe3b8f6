/**
 * Async events the wire and the link raise: COMM_EST when a connected QP
 * still in RTR takes its first request, PORT_ERR / PORT_ACTIVE when the
 * device's network interface goes down and up (the daemon runs in a
 * network namespace of its own, so the test can take its loopback down),
 * and the hardware counters read through the library.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { Access, EventType, getDeviceList, openDevice, PortState, QpAttrMask as A, QpState, QpType, SendFlags, SrqAttrMask, WrOpcode, type Context } from '../../src/verbs/index.js';
import { connectQp, pollN, startDaemon, twoDaemons, type RunningDaemon , A1, A2 } from '../helpers.js';

/** The next async event, or null after `ms`. */
async function nextEvent(ctx: Context, ms = 3000) {
  let t: NodeJS.Timeout | undefined;
  const timeout = new Promise<null>((r) => (t = setTimeout(() => r(null), ms)));
  const e = await Promise.race([ctx.getAsyncEvent(), timeout]);
  clearTimeout(t);
  return e;
}

describe('COMM_EST and counters', () => {
  let d: RunningDaemon;
  let ctx: Context;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
    ctx = await openDevice(getDeviceList(d.root).find((x) => x.name === 'rxe0')!, d.root);
  });
  after(async () => {
    ctx.closeDevice();
    await d.stop();
  });

  test('the first request a QP in RTR takes raises COMM_EST once per connection', async () => {
    const ctx1 = await openDevice(getDeviceList(d.root).find((x) => x.name === 'rxe1')!, d.root);
    try {
      const pd = await ctx.allocPd();
      const pd1 = await ctx1.allocPd();
      const cq = await ctx.createCq(16);
      const cq1 = await ctx1.createCq(16);
      const a = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 8 } });
      const b = await pd1.createQp({ sendCq: cq1, recvCq: cq1, qpType: QpType.RC, cap: { maxRecvWr: 8 } });
      const mr = await pd.allocMr(4096, Access.LOCAL_WRITE);
      const mr1 = await pd1.allocMr(4096, Access.LOCAL_WRITE);
      await connectQp(a, ctx, { qpn: b.qpNum, gid: ctx1.queryGid(1, 0) });
      await connectQp(b, ctx1, { qpn: a.qpNum, gid: ctx.queryGid(1, 0) }, { rtrOnly: true });
      for (let i = 0; i < 3; i++) b.postRecv({ wrId: i, sgList: [mr1.sge(0, 64)] });
      a.postSend({ wrId: 1, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 8)] });
      const e = await nextEvent(ctx1);
      assert.equal(e?.eventType, EventType.COMM_EST);
      assert.equal(e?.element, b);
      await pollN(cq, 1);
      a.postSend({ wrId: 2, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 8)] });
      await pollN(cq, 1);
      await b.modifyQp({ qpState: QpState.RTS, sqPsn: 0, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 1 }, A.STATE | A.SQ_PSN | A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.MAX_QP_RD_ATOMIC);
      a.postSend({ wrId: 3, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 8)] });
      await pollN(cq, 1);
      assert.equal(await nextEvent(ctx1, 200), null, 'one COMM_EST per connection');
      assert.equal((await pollN(cq1, 3)).length, 3);
    } finally {
      ctx1.closeDevice();
    }
  });

  test('hardware counters through the library, by rxe names', async () => {
    const c = await ctx.queryHwCounters();
    for (const n of ['sent_pkts', 'rcvd_pkts', 'duplicate_request', 'out_of_seq_request', 'rcvd_rnr_err', 'send_rnr_err', 'rcvd_seq_err', 'ack_deferred', 'retry_exceeded_err', 'retry_rnr_exceeded_err', 'completer_retry_err', 'send_err', 'link_downed']) {
      assert.equal(typeof c[n], 'number', n);
    }
    // the previous test sent three SENDs from rxe0 and took three ACKs back
    assert.ok(c.sent_pkts! >= 3 && c.rcvd_pkts! >= 3, JSON.stringify(c));
    await assert.rejects(ctx.queryHwCounters(2), /EINVAL.*port 2/);
  });
});

const netns = spawnSync('unshare', ['--net', 'true']).status === 0 && spawnSync('ip', ['-V']).status === 0;

describe('port events follow the network interface', { skip: netns ? false : 'needs unshare --net and ip (root)' }, () => {
  let d: RunningDaemon;
  const ipIn = (...a: string[]) => execFileSync('nsenter', ['-t', String(d.proc.pid), '-n', 'ip', ...a]);
  before(async () => {
    // a network namespace of its own: its loopback can go down without touching the host
    d = await startDaemon(['--device', `rxe0=${A1}`], { wrapper: ['unshare', '--net', 'sh', '-c', 'ip link set lo up && exec "$0" "$@"'] });
  });
  after(async () => d.stop());

  test('interface down: PORT_ERR, port DOWN, link_downed; up again: PORT_ACTIVE, port ACTIVE', async () => {
    const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
    try {
      assert.equal((await ctx.queryPort(1)).state, PortState.ACTIVE);
      ipIn('link', 'set', 'lo', 'down');
      const e = await nextEvent(ctx);
      assert.deepEqual([e?.eventType, e?.element], [EventType.PORT_ERR, 1]);
      assert.equal((await ctx.queryPort(1)).state, PortState.DOWN);
      assert.equal((await ctx.queryHwCounters()).link_downed, 1);
      ipIn('link', 'set', 'lo', 'up');
      const e2 = await nextEvent(ctx);
      assert.deepEqual([e2?.eventType, e2?.element], [EventType.PORT_ACTIVE, 1]);
      assert.equal((await ctx.queryPort(1)).state, PortState.ACTIVE);
      assert.match(d.stderr(), /rxe0: port 1 DOWN/);
    } finally {
      ctx.closeDevice();
    }
  });
});

test('across the wire: an SRQ on another daemon raises SRQ_LIMIT_REACHED when a dequeue leaves fewer than the limit', async () => {
  const t = await twoDaemons();
  const { a, b } = t;
  try {
    const [pa, pb] = [await a.allocPd(), await b.allocPd()];
    const [ca, cb] = [await a.createCq(16), await b.createCq(16)];
    const srq = await pb.createSrq({ maxWr: 16, maxSge: 1 });
    const qa = await pa.createQp({ sendCq: ca, recvCq: ca, qpType: QpType.RC, cap: { maxSendWr: 8 } });
    const qb = await pb.createQp({ sendCq: cb, recvCq: cb, srq, qpType: QpType.RC, cap: {} });
    const ma = await pa.allocMr(4096, Access.LOCAL_WRITE);
    const mb = await pb.allocMr(4096, Access.LOCAL_WRITE);
    await connectQp(qa, a, { qpn: qb.qpNum, gid: b.queryGid(1, 0) });
    await connectQp(qb, b, { qpn: qa.qpNum, gid: a.queryGid(1, 0) });
    for (let i = 0; i < 4; i++) srq.postSrqRecv({ wrId: i, sgList: [mb.sge(i * 64, 64)] });
    await srq.modifySrq({ srqLimit: 3 }, SrqAttrMask.LIMIT);
    const ev = nextEvent(b);
    qa.postSend({ wrId: 1, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [ma.sge(0, 8)] });
    qa.postSend({ wrId: 2, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [ma.sge(0, 8)] });
    const e = await ev;
    assert.deepEqual([e?.eventType, e?.element], [EventType.SRQ_LIMIT_REACHED, srq]);
    assert.equal((await pollN(cb, 2)).length, 2);
  } finally {
    await t.close();
  }
});
