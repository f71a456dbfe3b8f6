/**
 * RC under seeded faults (10% loss, 5% duplication, 5% reordering, 2% delay of every
 * packet): 10,000 messages of mixed operations arrive exactly once, in
 * order, byte-exact, and the counters show the recovery work. UC under loss
 * drops whole messages and never delivers a damaged one.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { test } from 'node:test';
import { Access, getDeviceList, Mtu, openDevice, QpType, SendFlags, WcOpcode, WcStatus, WorkCompletion, WrOpcode } from '../../src/verbs/index.js';
import { connectQp, mgmt, pattern, pollN, startDaemon , A1, A2 } from '../helpers.js';

const N = 10_000;
const ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

test('10,000 mixed RC operations under 10% loss + 5% duplication + 5% reordering + 2% delay: exactly once, in order, byte-exact', { timeout: 240_000 }, async () => {
  const d = await startDaemon(['--device', `rxe0=${A1}`, '--fault', `drop=0.1,dup=0.05,reorder=0.05,delay=0.02,delayms=3,seed=${process.env.FAULT_SEED ?? 7}`]);
  try {
    const dev = getDeviceList(d.root)[0]!;
    const ctx = await openDevice(dev, d.root);
    const pd = await ctx.allocPd();
    const cqA = await ctx.createCq(4096);
    const cqB = await ctx.createCq(4096);
    const a = await pd.createQp({ sendCq: cqA, recvCq: cqA, qpType: QpType.RC, cap: { maxSendWr: 64 } });
    const b = await pd.createQp({ sendCq: cqB, recvCq: cqB, qpType: QpType.RC, cap: { maxRecvWr: 1024 } });
    const ma = await pd.allocMr(16 << 20, ALL);
    const mb = await pd.allocMr(16 << 20, ALL);
    const gid = ctx.queryGid(1, 0);
    await connectQp(a, ctx, { qpn: b.qpNum, gid }, { mtu: Mtu.MTU_1024, timeout: 1, retryCnt: 7, rnrRetry: 7 });
    await connectQp(b, ctx, { qpn: a.qpNum, gid }, { mtu: Mtu.MTU_1024, minRnrTimer: 1 });
    const RECV = 15 << 20; // receive buffers: 256 slots of 4 KiB
    const READSRC = 12 << 20;
    pattern(99, 1 << 20).copy(mb.buf, READSRC);
    const COUNTER = 14 << 20;
    let posted = 0;
    const postRecv = (n: number) => {
      for (let i = 0; i < n; i++, posted++) b.postRecv({ wrId: BigInt(posted), sgList: [mb.sge(RECV + (posted % 256) * 4096, 4096)] });
    };
    postRecv(256);
    const wa = Array.from({ length: 64 }, () => new WorkCompletion());
    const wb = Array.from({ length: 64 }, () => new WorkCompletion());
    let sent = 0;
    let doneA = 0;
    let nextRecv = 0;
    let faa = 0n;
    const inflight: number[] = [];
    const deadline = Date.now() + Number(process.env.FAULT_DEADLINE_MS ?? 200_000);
    const kind = (i: number) => i % 4;
    /** bytes of SEND i: a 4-byte sequence number, then a pattern; 1 to 4 MTU-sized packets */
    const len = (i: number) => 4 + ((i * 7919) % 4092);
    while (doneA < N) {
      if (Date.now() > deadline) assert.fail(`stuck at ${doneA} of ${N}: ${JSON.stringify(await mgmt(dev.devPath, 'qps'))}`);
      while (sent < N && inflight.length < 32) {
        const i = sent;
        const k = kind(i);
        const wr = { wrId: BigInt(i), sendFlags: SendFlags.SIGNALED };
        if (k === 0) {
          const l = len(i);
          ma.buf.writeUInt32LE(i, (i % 64) * 4096);
          pattern(i, l - 4).copy(ma.buf, (i % 64) * 4096 + 4);
          a.postSend({ ...wr, opcode: WrOpcode.SEND, sgList: [ma.sge((i % 64) * 4096, l)] });
        } else if (k === 1) {
          pattern(i, 2048).copy(ma.buf, (4 << 20) + (i % 64) * 4096);
          a.postSend({ ...wr, opcode: WrOpcode.RDMA_WRITE, sgList: [ma.sge((4 << 20) + (i % 64) * 4096, 2048)], rdma: { remoteAddr: mb.addr + BigInt(i * 1024), rkey: mb.rkey } });
        } else if (k === 2) {
          a.postSend({ ...wr, opcode: WrOpcode.RDMA_READ, sgList: [ma.sge((8 << 20) + (i % 64) * 4096, 3000)], rdma: { remoteAddr: mb.addr + BigInt(READSRC + (i % 256) * 1024), rkey: mb.rkey } });
        } else {
          a.postSend({ ...wr, opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, sgList: [ma.sge((10 << 20) + (i % 64) * 8, 8)], atomic: { remoteAddr: mb.addr + BigInt(COUNTER), compareAdd: 1n, rkey: mb.rkey } });
        }
        inflight.push(i);
        sent++;
      }
      const n = cqA.pollCq(wa);
      for (let j = 0; j < n; j++) {
        const w = wa[j]!;
        const i = inflight.shift()!;
        assert.equal(w.status, WcStatus.SUCCESS, `wr ${i}: ${JSON.stringify(w, (_k, v) => (typeof v === "bigint" ? String(v) : v))}`);
        assert.equal(Number(w.wrId), i, 'send completions in order');
        const k = kind(i);
        if (k === 2) assert.equal(sha(ma.buf.subarray((8 << 20) + (i % 64) * 4096, (8 << 20) + (i % 64) * 4096 + 3000)), sha(pattern(99, 1 << 20).subarray((i % 256) * 1024, (i % 256) * 1024 + 3000)), `read ${i}`);
        if (k === 3) {
          assert.equal(ma.buf.readBigUInt64LE((10 << 20) + (i % 64) * 8), faa, `fetch-and-add ${i} executed exactly once, in order`);
          faa++;
        }
        if (k === 1) assert.equal(sha(mb.buf.subarray(i * 1024, i * 1024 + 2048)), sha(pattern(i, 2048)), `write ${i}`);
        doneA++;
      }
      const m = cqB.pollCq(wb);
      for (let j = 0; j < m; j++) {
        const w = wb[j]!;
        assert.equal(w.status, WcStatus.SUCCESS);
        assert.equal(w.opcode, WcOpcode.RECV);
        const slot = Number(w.wrId) % 256;
        const seq = mb.buf.readUInt32LE(RECV + slot * 4096);
        assert.equal(seq, nextRecv, 'each SEND arrives once, in order');
        const l = len(seq);
        assert.equal(w.byteLen, l);
        assert.equal(sha(mb.buf.subarray(RECV + slot * 4096 + 4, RECV + slot * 4096 + 4 + l - 4)), sha(pattern(seq, l - 4)), `send ${seq} bytes`);
        nextRecv += 4;
        postRecv(1);
      }
      if (n === 0 && m === 0) await new Promise((r) => setImmediate(r));
    }
    assert.equal(nextRecv, N, 'every SEND received');
    assert.equal(mb.buf.readBigUInt64LE(COUNTER), BigInt(N / 4), 'the counter was added to exactly once per FETCH_ADD');
    const faults = await mgmt(dev.devPath, 'faults');
    assert.ok(faults.dropped > 1000 && faults.duplicated > 500 && faults.reordered > 500 && faults.delayed > 200, JSON.stringify(faults));
    const c = (await mgmt(dev.devPath, 'counters'))[0].counters;
    assert.ok(c.duplicate_request > 0 && c.out_of_seq_request > 0 && c.completer_retry_err + c.rcvd_seq_err > 0, JSON.stringify(c));
    // as rxe counts it: once per PSN sequence error NAK sent (each reaches the requester unless the fault drops it),
    // not once per packet dropped behind the gap
    assert.ok(c.out_of_seq_request <= 2 * c.rcvd_seq_err + 10, JSON.stringify(c));
    ctx.closeDevice();
  } finally {
    await d.stop();
  }
});

test('UC under 5% loss: a message that lost a packet is dropped whole, every message delivered is intact and in order', { timeout: 60_000 }, async () => {
  const d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`, '--fault', `drop=0.05,seed=${process.env.FAULT_SEED ?? 7}`]);
  try {
    const devs = getDeviceList(d.root);
    const ca = await openDevice(devs[0]!, d.root);
    const cb = await openDevice(devs[1]!, d.root);
    const [pa, pb] = [await ca.allocPd(), await cb.allocPd()];
    const [qa, qb] = [await ca.createCq(512), await cb.createCq(512)];
    const a = await pa.createQp({ sendCq: qa, recvCq: qa, qpType: QpType.UC, cap: { maxSendWr: 512 } });
    const b = await pb.createQp({ sendCq: qb, recvCq: qb, qpType: QpType.UC, cap: { maxRecvWr: 512 } });
    const N = 400;
    const LEN = 3000; // three packets at MTU 1024
    const ma = await pa.allocMr(N * LEN, ALL);
    const mb = await pb.allocMr(N * 4096, ALL);
    await connectQp(a, ca, { qpn: b.qpNum, gid: cb.queryGid(1, 0) }, { mtu: Mtu.MTU_1024 });
    await connectQp(b, cb, { qpn: a.qpNum, gid: ca.queryGid(1, 0) }, { mtu: Mtu.MTU_1024 });
    for (let i = 0; i < N; i++) {
      const m = pattern(1000 + i, LEN);
      m.writeUInt32LE(i, 0);
      m.copy(ma.buf, i * LEN);
      b.postRecv({ wrId: i, sgList: [mb.sge(i * 4096, 4096)] });
    }
    for (let i = 0; i < N; i++) a.postSend({ wrId: i, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [ma.sge(i * LEN, LEN)] });
    const sent = await pollN(qa, N, 20_000);
    assert.ok(sent.every((w) => w.status === 0), 'UC sends complete when sent, lost or not');
    await new Promise((r) => setTimeout(r, 200));
    const got = [];
    for (let w = qb.pollCq(64); w.length; w = qb.pollCq(64)) got.push(...w);
    let last = -1;
    for (const w of got) {
      assert.equal(w.status, 0);
      assert.equal(w.byteLen, LEN, 'never a partial message');
      const buf = mb.buf.subarray(Number(w.wrId) * 4096, Number(w.wrId) * 4096 + LEN);
      const i = buf.readUInt32LE(0);
      assert.ok(i > last, 'in order');
      last = i;
      const want = pattern(1000 + i, LEN);
      want.writeUInt32LE(i, 0);
      assert.ok(buf.equals(want), `message ${i} intact`);
    }
    // 5% of ~1200 packets lost: some messages gone, most through
    assert.ok(got.length < N && got.length > N * 0.7, `${got.length} of ${N} delivered`);
    ca.closeDevice();
    cb.closeDevice();
  } finally {
    await d.stop();
  }
});

test('every packet duplicated: inline SENDs, built in the descriptors\' own buffers, each arrive with their own bytes', { timeout: 60_000 }, async () => {
  // a duplicate is a second descriptor carrying the first's bytes; were it to keep the first's buffer as its own
  // too, two descriptors of the pool would build their payloads in one buffer
  const d = await startDaemon(['--device', `rxe0=${A1}`, '--fault', 'dup=1,seed=3']);
  try {
    const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
    const pd = await ctx.allocPd();
    const cq = await ctx.createCq(1024);
    const a = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 256, maxInlineData: 64 } });
    const b = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxRecvWr: 512 } });
    const N = 300;
    const ma = await pd.allocMr(N * 64, ALL);
    const mb = await pd.allocMr(N * 64, ALL);
    const gid = ctx.queryGid(1, 0);
    await connectQp(a, ctx, { qpn: b.qpNum, gid });
    await connectQp(b, ctx, { qpn: a.qpNum, gid });
    for (let i = 0; i < N; i++) b.postRecv({ wrId: 1000 + i, sgList: [mb.sge(i * 64, 64)] });
    for (let i = 0; i < N; i++) pattern(i, 48).copy(ma.buf, i * 64);
    for (let i = 0; i < N; i += 50) {
      // 50 at a time: one run of the requester builds them back to back
      for (let j = i; j < i + 50; j++) a.postSend({ wrId: j, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED | SendFlags.INLINE, sgList: [{ addr: ma.addr + BigInt(j * 64), length: 48, lkey: 0 }] });
      const wcs = await pollN(cq, 100, 10_000);
      assert.ok(wcs.every((w) => w.status === 0), JSON.stringify(wcs.find((w) => w.status !== 0)));
    }
    for (let i = 0; i < N; i++) assert.ok(mb.buf.subarray(i * 64, i * 64 + 48).equals(pattern(i, 48)), `SEND ${i} arrived with its own bytes`);
    const faults = (await mgmt(getDeviceList(d.root)[0]!.devPath, 'faults')) as { duplicated: number };
    assert.ok(faults.duplicated >= 2 * N, JSON.stringify(faults));
    ctx.closeDevice();
  } finally {
    await d.stop();
  }
});
