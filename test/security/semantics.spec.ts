/**
 * IBA semantics that protect data, and a library that fails loudly: a CQ
 * overrun moves the QP to ERR instead of losing messages a sender was told
 * were delivered; a payload beyond the path MTU is dropped and counted; a
 * daemon that dies makes every verb throw EIO (a poll loop too); sizes past
 * the device limits are EINVAL before any memory is mapped.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { A1, A2, assertServing, connectQp, DIST, mgmt, pollN, startDaemon } from '../helpers.js';
import { Access, EventType, getDeviceList, Mtu, openDevice, QpState, QpType, SendFlags, WcStatus, WrOpcode, type WorkCompletion } from '../../src/verbs/index.js';
import { encodeFrame } from '../../src/hca/codec.js';
import { Pkt } from '../../src/hca/packet.js';

describe('data is not lost silently', () => {
  test('a receive CQ overrun: the QP goes to ERR with CQ_ERR, and the sender gets SUCCESS for no message the receiver was not told of', async () => {
    const d = await startDaemon(['--device', `rxe0=${A1}`]);
    try {
      const dev = getDeviceList(d.root)[0]!;
      const rx = await openDevice(dev, d.root);
      const tx = await openDevice(dev, d.root);
      const rpd = await rx.allocPd();
      const rcq = await rx.createCq(3);
      const rqp = await rpd.createQp({ sendCq: rcq, recvCq: rcq, qpType: QpType.RC, cap: { maxSendWr: 8, maxRecvWr: 16 } });
      const rmr = await rpd.allocMr(1 << 16, Access.LOCAL_WRITE);
      const tpd = await tx.allocPd();
      const tcq = await tx.createCq(64);
      const tqp = await tpd.createQp({ sendCq: tcq, recvCq: tcq, qpType: QpType.RC, cap: { maxSendWr: 16, maxRecvWr: 1 } });
      const tmr = await tpd.allocMr(4096, Access.LOCAL_WRITE);
      await connectQp(rqp, rx, { qpn: tqp.qpNum, gid: rx.queryGid(1, 0) });
      await connectQp(tqp, tx, { qpn: rqp.qpNum, gid: tx.queryGid(1, 0) }, { timeout: 8, retryCnt: 2 });
      for (let i = 0; i < 8; i++) rqp.postRecv({ wrId: i, sgList: [rmr.sge(i * 64, 64)] });
      assert.equal(rcq.cqe, 3);
      for (let i = 0; i < 8; i++) tqp.postSend({ wrId: i, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [tmr.sge(0, 8)] });
      const sent = await pollN(tcq, 8, 10_000);
      const received: WorkCompletion[] = await pollN(rcq, 3);
      const ok = sent.filter((w) => w.status === WcStatus.SUCCESS).length;
      assert.ok(ok <= received.length, `the sender saw ${ok} SUCCESS, the receiver was told of ${received.length}`);
      assert.ok(sent.some((w) => w.status === WcStatus.RETRY_EXC_ERR), JSON.stringify(sent.map((w) => w.status)));
      assert.equal(rqp.state, QpState.ERR);
      const ev = await rx.getAsyncEvent();
      assert.equal(ev?.eventType, EventType.CQ_ERR);
      assert.match(d.stderr(), /entered ERR: receive CQ overrun \(CQ_ERR\)/);
      rx.closeDevice();
      tx.closeDevice();
    } finally {
      await d.stop();
    }
  });

  test('a request whose payload is larger than the path MTU is dropped and counted, not written', async () => {
    const d = await startDaemon(['--device', `rxe0=${A2},wire=udp`]);
    try {
      const dev = getDeviceList(d.root)[0]!;
      const ctx = await openDevice(dev, d.root);
      const pd = await ctx.allocPd();
      const cq = await ctx.createCq(8);
      const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.UC, cap: { maxRecvWr: 4 } });
      const mr = await pd.allocMr(8192, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
      // a peer at 127.0.0.1 (nothing of ours is there; we only forge its packet), path MTU 1024
      await connectQp(qp, ctx, { qpn: 0x99, gid: Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]) }, { mtu: Mtu.MTU_1024 });
      const p = new Pkt();
      p.opcode = 0x2a; // UC RDMA_WRITE_ONLY
      p.destQpn = qp.qpNum;
      p.psn = 0;
      p.va = Number(mr.addr);
      p.rkey = mr.rkey;
      p.dmaLen = 2048;
      const payload = new Uint8Array(2048).fill(0xee);
      p.payload = payload;
      p.payOff = 0;
      p.payLen = 2048;
      const buf = new Uint8Array(4200);
      const n = encodeFrame(p, new Uint8Array([127, 0, 0, 1]), new Uint8Array(A2.split('.').map(Number)), 0, buf);
      const s = createSocket('udp4');
      await new Promise<void>((r) => s.send(buf.subarray(28, n), 4791, A2, () => r()));
      s.close();
      let dropped: Record<string, number> = {};
      for (let i = 0; i < 100 && !dropped['payload over the path MTU']; i++) {
        await new Promise((r) => setTimeout(r, 20));
        dropped = (await mgmt(dev.devPath, 'devices'))[0].wireDropped;
      }
      assert.equal(dropped['payload over the path MTU'], 1, JSON.stringify(dropped));
      assert.ok(mr.buf.every((b) => b === 0), 'nothing was written');
      ctx.closeDevice();
    } finally {
      await d.stop();
    }
  });
});

describe('memory that goes away under packets still queued', () => {
  test('an MR deregistered while a 4 MiB READ response from it is still going out (MTU 256, 16,384 packets): the rest is dropped, not read from unmapped memory', async () => {
    const d = await startDaemon(['--device', `rxe0=${A1}`]);
    try {
      const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
      const pd = await ctx.allocPd();
      const cq = await ctx.createCq(16);
      const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 4 } });
      await connectQp(qp, ctx, { qpn: qp.qpNum, gid: ctx.queryGid(1, 0) }, { mtu: Mtu.MTU_256, timeout: 8, retryCnt: 2 });
      const src = await pd.allocMr(4 << 20, Access.LOCAL_WRITE | Access.REMOTE_READ);
      const dst = await pd.allocMr(4 << 20, Access.LOCAL_WRITE);
      for (let round = 0; round < 5; round++) {
        const s = round === 0 ? src : await pd.allocMr(4 << 20, Access.LOCAL_WRITE | Access.REMOTE_READ);
        qp.postSend({ wrId: round, opcode: WrOpcode.RDMA_READ, sendFlags: SendFlags.SIGNALED, sgList: [dst.sge(0, 4 << 20)], rdma: { remoteAddr: s.addr, rkey: s.rkey } });
        await new Promise((r) => setImmediate(r));
        await s.deregMr();
        const [wc] = await pollN(cq, 1, 10_000);
        if (wc!.status !== WcStatus.SUCCESS) break; // the QP is in ERR now: one round showed it
      }
      await new Promise((r) => setTimeout(r, 200));
      await assertServing(d, ctx, await ctx.allocPd());
      ctx.closeDevice();
    } finally {
      await d.stop();
    }
  });
});

describe('the library fails loudly', () => {
  test('once the daemon is gone, a poll loop that never yields throws EIO within seconds, and so do postSend and the slow path', async () => {
    const d = await startDaemon(['--device', `rxe0=${A1}`]);
    const script = `
      import { getDeviceList, openDevice, QpType, WrOpcode, QpAttrMask as A, QpState } from ${JSON.stringify(join(DIST, 'src', 'verbs', 'index.js'))};
      const root = ${JSON.stringify(d.root)};
      const ctx = await openDevice(getDeviceList(root)[0], root);
      const pd = await ctx.allocPd();
      const cq = await ctx.createCq(4);
      const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.UD, cap: {} });
      const mr = await pd.allocMr(64, 1);
      process.stdout.write('ready\\n');
      const t0 = Date.now();
      const out = {};
      try { for (;;) cq.pollCq(1); } catch (e) { out.poll = { code: e.code, message: e.message, ms: Date.now() - t0 }; }
      try { qp.postRecv({ wrId: 1, sgList: [mr.sge(0, 8)] }); } catch (e) { out.recv = e.code; }
      try { await ctx.allocPd(); } catch (e) { out.alloc = e.code; }
      console.log(JSON.stringify(out));
      process.exit(0);`;
    const p = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (b) => (out += b));
    while (!out.includes('ready')) await new Promise((r) => setTimeout(r, 20));
    d.proc.kill('SIGKILL');
    const code = await new Promise((r) => p.once('exit', r));
    await d.stop();
    assert.equal(code, 0);
    const r = JSON.parse(out.slice(out.indexOf('{'))) as { poll: { code: string; message: string; ms: number }; recv: string; alloc: string };
    assert.equal(r.poll.code, 'EIO');
    assert.match(r.poll.message, /ibv_poll_cq: EIO: the daemon connection is lost \(softverbsd \(pid \d+\) is gone\)/);
    assert.ok(r.poll.ms < 5000, `${r.poll.ms} ms`);
    assert.equal(r.recv, 'EIO');
    assert.equal(r.alloc, 'EIO');
  });

  test('sizes past the device limits are EINVAL before any memory is mapped (was: the process aborted)', async () => {
    const d = await startDaemon(['--device', `rxe0=${A1}`]);
    try {
      const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
      const pd = await ctx.allocPd();
      assert.throws(() => ctx.allocBuffer(2 ** 40), { code: 'EINVAL', message: /length 1099511627776 is not in 1\.\.4294967296/ });
      await assert.rejects(pd.allocMr(2 ** 53, Access.LOCAL_WRITE), { code: 'EINVAL' });
      await assert.rejects(ctx.createCq(1e9), { code: 'EINVAL', message: /cqe 1000000000 is not in 1\.\.32767/ });
      const cq = await ctx.createCq(1);
      await assert.rejects(pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 1e9 } }), { code: 'EINVAL' });
      await assert.rejects(pd.createSrq({ maxWr: 1e9, maxSge: 1 }), { code: 'EINVAL' });
      ctx.closeDevice();
    } finally {
      await d.stop();
    }
  });
});
