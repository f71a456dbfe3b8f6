/**
 * The retransmit timer across the wire: when the peer's daemon dies, an RC
 * requester retries retry_cnt times, one local ACK timeout (4.096 µs ×
 * 2^timeout) apart, then completes with RETRY_EXC_ERR and moves the QP to
 * ERR; the time that takes is what the attributes imply, within ±50%.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Access, QpState, QpType, SendFlags, WcStatus, WrOpcode } from '../../src/verbs/index.js';
import { connectQp, pollN, twoDaemons } from '../helpers.js';

for (const [timeout, retryCnt] of [[16, 2], [14, 6]] as const) {
  test(`peer daemon killed: RETRY_EXC_ERR after (retry_cnt ${retryCnt} + 1) × 4.096 µs × 2^${timeout}, ±50%; the rest is flushed`, async () => {
    const t = await twoDaemons();
    const { a, b } = t;
    try {
      const [pa, pb] = [await a.allocPd(), await b.allocPd()];
      const [ca, cb] = [await a.createCq(16), await b.createCq(16)];
      const qa = await pa.createQp({ sendCq: ca, recvCq: ca, qpType: QpType.RC, cap: { maxSendWr: 8 } });
      const qb = await pb.createQp({ sendCq: cb, recvCq: cb, qpType: QpType.RC, cap: { maxRecvWr: 8 } });
      const mr = await pa.allocMr(4096, Access.LOCAL_WRITE);
      const mrb = await pb.allocMr(4096, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
      await connectQp(qa, a, { qpn: qb.qpNum, gid: b.queryGid(1, 0) }, { timeout, retryCnt });
      await connectQp(qb, b, { qpn: qa.qpNum, gid: a.queryGid(1, 0) }, { timeout, retryCnt });
      // first show the connection works
      qa.postSend({ wrId: 1, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 64)], rdma: { remoteAddr: mrb.addr, rkey: mrb.rkey } });
      assert.equal((await pollN(ca, 1))[0]!.status, WcStatus.SUCCESS);
      const before = await a.queryHwCounters();
      t.d2.proc.kill('SIGKILL');
      await new Promise((r) => t.d2.proc.once('exit', r));
      const t0 = performance.now();
      qa.postSend({ wrId: 2, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 64)], rdma: { remoteAddr: mrb.addr, rkey: mrb.rkey } });
      qa.postSend({ wrId: 3, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 64)], rdma: { remoteAddr: mrb.addr, rkey: mrb.rkey } });
      const expect = (retryCnt + 1) * 4.096e-3 * 2 ** timeout;
      const [w] = await pollN(ca, 1, expect * 3);
      const took = performance.now() - t0;
      assert.equal(w!.status, WcStatus.RETRY_EXC_ERR);
      assert.equal(w!.wrId, 2n);
      assert.ok(took > expect * 0.5 && took < expect * 1.5, `took ${took.toFixed(0)} ms, the attributes imply ${expect.toFixed(0)} ms`);
      const [f] = await pollN(ca, 1);
      assert.deepEqual([f!.wrId, f!.status], [3n, WcStatus.WR_FLUSH_ERR]);
      const after = await a.queryHwCounters();
      assert.equal(after.retry_exceeded_err! - before.retry_exceeded_err!, 1);
      assert.equal(after.completer_retry_err! - before.completer_retry_err!, retryCnt);
      assert.equal((await qa.queryQp(1)).qpState, QpState.ERR);
    } finally {
      await t.close();
    }
  });
}
