/**
 * The same-device data path across two processes: this test process is one
 * end, the peer fixture (a separate process) the other; the daemon is a
 * real process in between. Every operation is checked byte for byte and
 * with its completion fields; every error with the WC status rxe gives.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import {
  Access, EventType, getDeviceList, openDevice, QpAttrMask, QpState, QpType, SendFlags, WcFlags, WcOpcode, WcStatus, WrOpcode, type CompletionQueue,
  type Context, type MemoryRegion, type ProtectionDomain, type QueuePair,
} from '../../src/verbs/index.js';
import { connectQp, mgmt, pattern, pollN, spawnPeer, startDaemon, type RunningDaemon , A2 , A1 } from '../helpers.js';

const ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

let d: RunningDaemon;
before(async () => {
  d = await startDaemon();
});
after(async () => {
  await d.stop();
});

interface End {
  ctx: Context;
  pd: ProtectionDomain;
  cq: CompletionQueue;
  qp: QueuePair;
  mr: MemoryRegion;
}

async function localEnd(qpType: number = QpType.RC, cqe = 256): Promise<End> {
  const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
  const pd = await ctx.allocPd();
  const cq = await ctx.createCq(cqe);
  const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: qpType as QpType, cap: { maxSendWr: 64, maxRecvWr: 64, maxSendSge: 4, maxRecvSge: 4, maxInlineData: 64 } });
  const mr = await pd.allocMr(2 << 20, ALL);
  return { ctx, pd, cq, qp, mr };
}

/** A connected pair: local end + peer process. */
async function pair(qpType: number = QpType.RC, o: { local?: Record<string, number>; remote?: Record<string, number>; peerInit?: Record<string, unknown>; cqe?: number } = {}) {
  const a = await localEnd(qpType, o.cqe);
  const p = spawnPeer();
  const info = await p.call('init', { root: peerRoot ?? d.root, qpType, ...o.peerInit });
  const gid = a.ctx.queryGid(1, 0);
  await connectQp(a.qp, a.ctx, { qpn: info.qpn, gid: Buffer.from(info.gid, 'hex') }, o.local ?? {});
  await p.call('connect', { qpn: a.qp.qpNum, gid: Buffer.from(gid).toString('hex'), opts: o.remote ?? {} });
  return {
    a, p, info, remoteAddr: BigInt(info.addr),
    async close() {
      await p.kill();
      a.ctx.closeDevice();
    },
  };
}

describe('RC across two processes', () => {
  test('SEND at sizes 0, 1, 4095, 4096, 4097 and 1 MiB arrives byte-exact with the right completions', async () => {
    const t = await pair();
    try {
      for (const [i, len] of [0, 1, 4095, 4096, 4097, 1 << 20].entries()) {
        await t.p.call('postRecv', { wrId: 100 + i, off: 0, len: 1 << 20 });
        pattern(i + 1, len).copy(t.a.mr.buf, 0);
        t.a.qp.postSend({ wrId: i, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, len)] });
        const [s] = await pollN(t.a.cq, 1);
        assert.deepEqual({ st: s!.status, op: s!.opcode, id: s!.wrId, qp: s!.qpNum }, { st: WcStatus.SUCCESS, op: WcOpcode.SEND, id: BigInt(i), qp: t.a.qp.qpNum });
        const [r] = await t.p.call('poll', { n: 1 });
        assert.equal(r.status, WcStatus.SUCCESS);
        assert.equal(r.opcode, WcOpcode.RECV);
        assert.equal(r.byteLen, len);
        assert.equal(r.wrId, String(100 + i));
        assert.equal(r.qpNum, t.info.qpn);
        assert.equal(r.srcQp, t.a.qp.qpNum);
        assert.equal(r.wcFlags, 0);
        assert.equal(await t.p.call('hash', { off: 0, len }), sha(pattern(i + 1, len)));
      }
    } finally {
      await t.close();
    }
  });

  test('SEND gathers several SGEs and scatters into several', async () => {
    const t = await pair();
    try {
      pattern(9, 10000).copy(t.a.mr.buf, 0);
      const rwr = { wrId: 1 };
      void rwr;
      await t.p.call('postRecv', { wrId: 7, off: 0, len: 20000 });
      t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 3000), t.a.mr.sge(3000, 5000), t.a.mr.sge(8000, 2000)] });
      await pollN(t.a.cq, 1);
      const [r] = await t.p.call('poll', { n: 1 });
      assert.equal(r.byteLen, 10000);
      assert.equal(await t.p.call('hash', { off: 0, len: 10000 }), sha(pattern(9, 10000)));
    } finally {
      await t.close();
    }
  });

  test('SEND_WITH_IMM carries the immediate; inline SEND needs no lkey', async () => {
    const t = await pair();
    try {
      await t.p.call('postRecv', { wrId: 1, off: 0, len: 4096, count: 2 });
      t.a.mr.buf.write('hello, verbs', 0);
      t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.SEND_WITH_IMM, imm: 0xdeadbeef, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 12)] });
      t.a.qp.postSend({ wrId: 2, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED | SendFlags.INLINE, sgList: [{ addr: t.a.mr.addr + 100n, length: 40, lkey: 0 }] });
      const sends = await pollN(t.a.cq, 2);
      assert.deepEqual(sends.map((w) => w.status), [0, 0]);
      const [r1, r2] = await t.p.call('poll', { n: 2 });
      assert.equal(r1.imm, 0xdeadbeef);
      assert.equal(r1.wcFlags, WcFlags.WITH_IMM);
      assert.equal(r1.byteLen, 12);
      assert.equal(r2.byteLen, 40);
      assert.equal(r2.wcFlags, 0);
    } finally {
      await t.close();
    }
  });

  test('inline SENDs posted in one go from two regions, turn about, each carry their own bytes', async () => {
    // the library keeps the region it found last for the rest of the job: a SEND from the other region, or from
    // another offset of the same one, must not be read from the one before
    const t = await pair();
    try {
      await using other = await t.a.pd.regMr(t.a.ctx.allocBuffer(8192), Access.LOCAL_WRITE);
      const ends = [t.a.mr, other];
      const want = Array.from({ length: 6 }, (_, i) => `inline ${i} from ${i % 2 ? 'the second region' : 'the first'}`);
      const off = (i: number) => 4096 - 37 + i * 40; // the first two straddle a page boundary
      await t.p.call('postRecv', { wrId: 1, off: 0, len: 64, count: 1 });
      for (let i = 1; i < 6; i++) await t.p.call('postRecv', { wrId: 1 + i, off: i * 64, len: 64 });
      for (let i = 0; i < 6; i++) ends[i % 2]!.buf.write(want[i]!, off(i));
      // all six in one synchronous run (one job); each source is wiped once posted: inline data is copied then
      for (let i = 0; i < 6; i++) {
        const e = ends[i % 2]!;
        t.a.qp.postSend({ wrId: i, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED | SendFlags.INLINE, sgList: [{ addr: e.addr + BigInt(off(i)), length: want[i]!.length, lkey: 0 }] });
        e.buf.fill(0, off(i), off(i) + want[i]!.length);
      }
      // an address or length that is no integer is refused, not rounded (the region just used is not asked)
      const inl = (addr: bigint | number, length: number) => t.a.qp.postSend({ wrId: 9, opcode: WrOpcode.SEND, sendFlags: SendFlags.INLINE, sgList: [{ addr, length, lkey: 0 }] });
      assert.throws(() => inl(t.a.mr.addr + 8n, 1.5), { code: 'EINVAL', message: /malformed/ });
      assert.throws(() => inl(Number(t.a.mr.addr) + 0.5, 4), { code: 'EINVAL', message: /malformed/ });
      assert.deepEqual((await pollN(t.a.cq, 6)).map((w) => w.status), [0, 0, 0, 0, 0, 0]);
      const got = await t.p.call('poll', { n: 6 });
      for (let i = 0; i < 6; i++) {
        assert.equal(got[i].byteLen, want[i]!.length);
        assert.equal(Buffer.from(await t.p.call('read', { off: i * 64, len: want[i]!.length }), 'hex').toString(), want[i]);
      }
    } finally {
      await t.close();
    }
  });

  test('RDMA_WRITE, RDMA_WRITE_WITH_IMM and RDMA_READ move exact bytes; only WRITE_WITH_IMM consumes a receive', async () => {
    const t = await pair();
    try {
      pattern(3, 100000).copy(t.a.mr.buf, 0);
      t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 100000)], rdma: { remoteAddr: t.remoteAddr + 5000n, rkey: t.info.rkey } });
      const [w] = await pollN(t.a.cq, 1);
      assert.equal(w!.status, 0);
      assert.equal(w!.opcode, WcOpcode.RDMA_WRITE);
      assert.equal(w!.byteLen, 100000);
      assert.equal(await t.p.call('hash', { off: 5000, len: 100000 }), sha(pattern(3, 100000)));
      assert.deepEqual(await t.p.call('pollNow'), [], 'a plain WRITE completes nothing at the responder');

      await t.p.call('postRecv', { wrId: 55, off: 900000, len: 16 });
      pattern(4, 9000).copy(t.a.mr.buf, 0);
      t.a.qp.postSend({ wrId: 2, opcode: WrOpcode.RDMA_WRITE_WITH_IMM, imm: 77, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 9000)], rdma: { remoteAddr: t.remoteAddr + 200000n, rkey: t.info.rkey } });
      await pollN(t.a.cq, 1);
      const [r] = await t.p.call('poll', { n: 1 });
      assert.equal(r.opcode, WcOpcode.RECV_RDMA_WITH_IMM);
      assert.equal(r.imm, 77);
      assert.equal(r.byteLen, 9000);
      assert.equal(r.wrId, '55');
      assert.equal(r.wcFlags, WcFlags.WITH_IMM);
      assert.equal(await t.p.call('hash', { off: 200000, len: 9000 }), sha(pattern(4, 9000)));

      await t.p.call('fill', { seed: 5, off: 300000, len: 70000 });
      t.a.qp.postSend({ wrId: 3, opcode: WrOpcode.RDMA_READ, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(1000, 30000), t.a.mr.sge(50000, 40000)], rdma: { remoteAddr: t.remoteAddr + 300000n, rkey: t.info.rkey } });
      const [rd] = await pollN(t.a.cq, 1);
      assert.equal(rd!.status, 0);
      assert.equal(rd!.opcode, WcOpcode.RDMA_READ);
      assert.equal(rd!.byteLen, 70000);
      const p = pattern(5, 70000);
      assert.equal(sha(t.a.mr.buf.subarray(1000, 31000)), sha(p.subarray(0, 30000)));
      assert.equal(sha(t.a.mr.buf.subarray(50000, 90000)), sha(p.subarray(30000)));
    } finally {
      await t.close();
    }
  });

  test('ATOMIC_CMP_AND_SWP and ATOMIC_FETCH_AND_ADD return the old value and change remote memory', async () => {
    const t = await pair();
    try {
      const v = Buffer.alloc(8);
      v.writeBigUInt64LE(1000n);
      await t.p.call('write', { off: 64, hex: v.toString('hex') });
      t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 8)], atomic: { remoteAddr: t.remoteAddr + 64n, compareAdd: 24n, rkey: t.info.rkey } });
      t.a.qp.postSend({ wrId: 2, opcode: WrOpcode.ATOMIC_CMP_AND_SWP, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(8, 8)], atomic: { remoteAddr: t.remoteAddr + 64n, compareAdd: 1024n, swap: 0xffffffffffffffffn, rkey: t.info.rkey } });
      t.a.qp.postSend({ wrId: 3, opcode: WrOpcode.ATOMIC_CMP_AND_SWP, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(16, 8)], atomic: { remoteAddr: t.remoteAddr + 64n, compareAdd: 5n, swap: 9n, rkey: t.info.rkey } });
      const wcs = await pollN(t.a.cq, 3);
      assert.deepEqual(wcs.map((w) => [w.status, w.opcode, w.byteLen]), [[0, WcOpcode.FETCH_ADD, 8], [0, WcOpcode.COMP_SWAP, 8], [0, WcOpcode.COMP_SWAP, 8]]);
      assert.equal(t.a.mr.buf.readBigUInt64LE(0), 1000n);
      assert.equal(t.a.mr.buf.readBigUInt64LE(8), 1024n);
      assert.equal(t.a.mr.buf.readBigUInt64LE(16), 0xffffffffffffffffn, 'failed compare returns the current value');
      assert.equal(Buffer.from(await t.p.call('read', { off: 64, len: 8 }), 'hex').readBigUInt64LE(), 0xffffffffffffffffn);
    } finally {
      await t.close();
    }
  });

  test('ATOMIC_WRITE (rxe >= 6.2) stores its 8 bytes as one and completes as IBV_WC_ATOMIC_WRITE; misaligned, unwritable or bad rkey fail as rxe', async () => {
    const t = await pair();
    try {
      const bytes = Uint8Array.from([1, 2, 3, 4, 5, 6, 7, 8]);
      t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.ATOMIC_WRITE, sendFlags: SendFlags.SIGNALED, atomicWrite: { remoteAddr: t.remoteAddr + 128n, rkey: t.info.rkey, value: bytes } });
      t.a.qp.postSend({ wrId: 2, opcode: WrOpcode.ATOMIC_WRITE, sendFlags: SendFlags.SIGNALED, atomicWrite: { remoteAddr: t.remoteAddr + 136n, rkey: t.info.rkey, value: 0x1122334455667788n } });
      const wcs = await pollN(t.a.cq, 2);
      assert.deepEqual(wcs.map((w) => [w.wrId, w.status, w.opcode]), [[1n, 0, WcOpcode.ATOMIC_WRITE], [2n, 0, WcOpcode.ATOMIC_WRITE]]);
      assert.equal(await t.p.call('read', { off: 128, len: 16 }), '0102030405060708' + '8877665544332211');
      assert.throws(() => t.a.qp.postSend({ opcode: WrOpcode.ATOMIC_WRITE, sendFlags: SendFlags.SIGNALED }), { code: 'EINVAL' });
      t.a.qp.postSend({ wrId: 3, opcode: WrOpcode.ATOMIC_WRITE, sendFlags: SendFlags.SIGNALED, atomicWrite: { remoteAddr: t.remoteAddr + 132n, rkey: t.info.rkey, value: 1n } });
      assert.equal((await pollN(t.a.cq, 1))[0]!.status, WcStatus.REM_INV_REQ_ERR, 'misaligned');
    } finally {
      await t.close();
    }
    const u = await pair();
    try {
      u.a.qp.postSend({ wrId: 1, opcode: WrOpcode.ATOMIC_WRITE, sendFlags: SendFlags.SIGNALED, atomicWrite: { remoteAddr: u.remoteAddr, rkey: u.info.rkey ^ 0x100, value: 1n } });
      assert.equal((await pollN(u.a.cq, 1))[0]!.status, WcStatus.REM_ACCESS_ERR, 'bad rkey');
    } finally {
      await u.close();
    }
  });

  test('unsignaled WRs complete silently, only the SIGNALED one has a completion', async () => {
    const t = await pair();
    try {
      await t.p.call('postRecv', { wrId: 1, off: 0, len: 64, count: 3 });
      for (let i = 0; i < 3; i++) t.a.qp.postSend({ wrId: i, opcode: WrOpcode.SEND, sendFlags: i === 2 ? SendFlags.SIGNALED : 0, sgList: [t.a.mr.sge(0, 8)] });
      const wcs = await pollN(t.a.cq, 1);
      assert.equal(wcs[0]!.wrId, 2n);
      await t.p.call('poll', { n: 3 });
      assert.deepEqual(t.a.cq.pollCq(4), []);
    } finally {
      await t.close();
    }
  });
});

describe('UC across two processes', () => {
  test('UC SEND (multi-packet), RDMA_WRITE and RDMA_WRITE_WITH_IMM: no ACKs, same bytes and completions', async () => {
    const t = await pair(QpType.UC);
    try {
      await t.p.call('postRecv', { wrId: 1, off: 0, len: 65536, count: 2 });
      pattern(21, 20000).copy(t.a.mr.buf, 0);
      t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 20000)] });
      t.a.qp.postSend({ wrId: 2, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 9000)], rdma: { remoteAddr: t.remoteAddr + 100000n, rkey: t.info.rkey } });
      t.a.qp.postSend({ wrId: 3, opcode: WrOpcode.RDMA_WRITE_WITH_IMM, imm: 9, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 5)], rdma: { remoteAddr: t.remoteAddr + 200000n, rkey: t.info.rkey } });
      const s = await pollN(t.a.cq, 3);
      assert.deepEqual(s.map((w) => [w.status, w.opcode]), [[0, WcOpcode.SEND], [0, WcOpcode.RDMA_WRITE], [0, WcOpcode.RDMA_WRITE]]);
      const r = await t.p.call('poll', { n: 2 });
      assert.deepEqual(r.map((w: { opcode: number; byteLen: number }) => [w.opcode, w.byteLen]), [[WcOpcode.RECV, 20000], [WcOpcode.RECV_RDMA_WITH_IMM, 5]]);
      assert.equal(r[1].imm, 9);
      assert.equal(await t.p.call('hash', { off: 0, len: 20000 }), sha(pattern(21, 20000)));
      assert.equal(await t.p.call('hash', { off: 100000, len: 9000 }), sha(pattern(21, 9000)));
      // a bad rkey on UC: the message is dropped silently, the requester still completes, nothing breaks
      t.a.qp.postSend({ wrId: 4, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 8)], rdma: { remoteAddr: t.remoteAddr, rkey: (t.info.rkey ^ 1) >>> 0 } });
      assert.equal((await pollN(t.a.cq, 1))[0]!.status, 0);
      assert.equal(await t.p.call('state'), QpState.RTS);
    } finally {
      await t.close();
    }
  });
});

describe('UD across two processes', () => {
  test('UD SEND: AH, Q_Key, the 40-byte GRH before the payload, src_qp and GRH flag', async () => {
    const t = await pair(QpType.UD);
    try {
      const ah = await t.a.pd.createAh({ grh: { dgid: t.a.ctx.queryGid(1, 0), sgidIndex: 0 }, isGlobal: true, portNum: 1 });
      await t.p.call('postRecv', { wrId: 9, off: 0, len: 4096, count: 2 });
      pattern(8, 1000).copy(t.a.mr.buf, 0);
      t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.SEND_WITH_IMM, imm: 5, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 1000)], ud: { ah, remoteQpn: t.info.qpn, remoteQkey: 0x11111111 } });
      // a wrong Q_Key is dropped silently by the receiver; the sender still completes
      t.a.qp.postSend({ wrId: 2, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 10)], ud: { ah, remoteQpn: t.info.qpn, remoteQkey: 0x22 } });
      const s = await pollN(t.a.cq, 2);
      assert.deepEqual(s.map((w) => w.status), [0, 0]);
      const [r] = await t.p.call('poll', { n: 1 });
      assert.equal(r.byteLen, 1040);
      assert.equal(r.srcQp, t.a.qp.qpNum);
      assert.equal(r.wcFlags, WcFlags.GRH | WcFlags.WITH_IMM);
      assert.equal(r.imm, 5);
      assert.equal(await t.p.call('hash', { off: 40, len: 1000 }), sha(pattern(8, 1000)));
      const grh = Buffer.from(await t.p.call('read', { off: 0, len: 40 }), 'hex');
      assert.equal(grh[20], 0x45, 'IPv4 header in the last 20 bytes, as rxe places it');
      assert.equal(grh.subarray(32, 36).join('.'), A1);
      assert.deepEqual(await t.p.call('pollNow'), [], 'the wrong-Q_Key datagram was dropped');
      // over the MTU: a local length error
      t.a.qp.postSend({ wrId: 3, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 4097)], ud: { ah, remoteQpn: t.info.qpn, remoteQkey: 0x11111111 } });
      const [e] = await pollN(t.a.cq, 1);
      assert.equal(e!.status, WcStatus.LOC_LEN_ERR);
    } finally {
      await t.close();
    }
  });
});

/** Where the peer process opens its device: this daemon's, or (across the wire) a second daemon's on A2. */
let peerRoot: string | null = null;
const TOPOLOGIES = ['one daemon', 'two daemons over the wire'] as const;

/** Inside a describe: across the wire, a second daemon hosts the peer for the describe's tests. */
function peerDaemon(topology: (typeof TOPOLOGIES)[number]): void {
  let d2: RunningDaemon | null = null;
  before(async () => {
    if (topology === 'one daemon') return;
    d2 = await startDaemon(['--device', `rxe0=${A2}`]);
    peerRoot = d2.root;
  });
  after(async () => {
    peerRoot = null;
    await d2?.stop();
  });
}

for (const topology of TOPOLOGIES) describe(`completion channels and solicited events (${topology})`, () => {
  peerDaemon(topology);
  test('reqNotifyCq(solicitedOnly) wakes only for the solicited SEND; the async iterator yields the CQ', async () => {
    const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
    const pd = await ctx.allocPd();
    const ch = await ctx.createCompChannel();
    const cq = await ctx.createCq(16, ch);
    const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 8, maxRecvWr: 8 } });
    const mr = await pd.allocMr(4096, ALL);
    const p = spawnPeer();
    try {
      const info = await p.call('init', { root: peerRoot ?? d.root });
      await connectQp(qp, ctx, { qpn: info.qpn, gid: Buffer.from(info.gid, 'hex') });
      await p.call('connect', { qpn: qp.qpNum, gid: Buffer.from(ctx.queryGid(1, 0)).toString('hex') });
      qp.postRecv([{ wrId: 1, sgList: [mr.sge(0, 64)] }, { wrId: 2, sgList: [mr.sge(64, 64)] }]);
      cq.reqNotifyCq(true);
      await p.call('postSend', { wr: { wrId: 1, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED }, sg: [{ off: 0, len: 8 }] });
      await p.call('poll', { n: 1 });
      const first = cq.pollCq(1);
      assert.equal(first.length, 1, 'the unsolicited receive completed');
      let woke = false;
      const ev = (async () => {
        for await (const c of ch) {
          woke = true;
          return c;
        }
        return null;
      })();
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(woke, false, 'no event for an unsolicited completion');
      await p.call('postSend', { wr: { wrId: 2, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED | SendFlags.SOLICITED }, sg: [{ off: 0, len: 8 }] });
      const got = await ev;
      assert.equal(got, cq);
      cq.ackCqEvents(1);
      assert.equal(cq.pollCq(1)[0]!.wrId, 2n);
    } finally {
      await p.kill();
      ctx.closeDevice();
    }
  });
});

for (const topology of TOPOLOGIES) describe(`errors with the WC status rxe gives (${topology})`, () => {
  peerDaemon(topology);

  test('bad rkey, out of bounds, and an MR without REMOTE_WRITE: REM_ACCESS_ERR; the responder QP goes to ERR and flushes', async () => {
    for (const variant of ['rkey', 'bounds', 'mraccess'] as const) {
      const t = await pair(QpType.RC, variant === 'mraccess' ? { peerInit: { access: Access.LOCAL_WRITE | Access.REMOTE_READ } } : {});
      try {
        await t.p.call('postRecv', { wrId: 42, off: 0, len: 64 });
        const rkey = variant === 'rkey' ? (t.info.rkey ^ 0xff) >>> 0 : t.info.rkey;
        const addr = variant === 'bounds' ? t.remoteAddr + BigInt((1 << 20) - 100) : t.remoteAddr;
        t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 200)], rdma: { remoteAddr: addr, rkey } });
        t.a.qp.postSend({ wrId: 2, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 8)] });
        const wcs = await pollN(t.a.cq, 2);
        assert.equal(wcs[0]!.status, WcStatus.REM_ACCESS_ERR, variant);
        assert.equal(wcs[1]!.status, WcStatus.WR_FLUSH_ERR, `${variant}: the next WR is flushed`);
        assert.equal(t.a.qp.state, QpState.ERR);
        assert.equal(await t.p.call('state'), QpState.ERR, `${variant}: responder QP in ERR`);
        const [flushed] = await t.p.call('poll', { n: 1 });
        assert.equal(flushed.status, WcStatus.WR_FLUSH_ERR, `${variant}: the responder's posted receive is flushed`);
        assert.equal(flushed.wrId, '42');
      } finally {
        await t.close();
      }
    }
  });

  test('READ from an MR without REMOTE_READ is REM_ACCESS_ERR; a QP without remote rights is REM_INV_REQ_ERR', async () => {
    const t = await pair(QpType.RC, { peerInit: { access: Access.LOCAL_WRITE | Access.REMOTE_WRITE } });
    try {
      t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.RDMA_READ, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 64)], rdma: { remoteAddr: t.remoteAddr, rkey: t.info.rkey } });
      assert.equal((await pollN(t.a.cq, 1))[0]!.status, WcStatus.REM_ACCESS_ERR);
    } finally {
      await t.close();
    }
    const u = await pair(QpType.RC, { remote: { access: Access.LOCAL_WRITE } });
    try {
      u.a.qp.postSend({ wrId: 1, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [u.a.mr.sge(0, 64)], rdma: { remoteAddr: u.remoteAddr, rkey: u.info.rkey } });
      assert.equal((await pollN(u.a.cq, 1))[0]!.status, WcStatus.REM_INV_REQ_ERR);
    } finally {
      await u.close();
    }
  });

  test('a local SGE whose MR is in another PD is LOC_PROT_ERR', async () => {
    const t = await pair();
    try {
      const pd2 = await t.a.ctx.allocPd();
      const other = await pd2.allocMr(4096, ALL);
      await t.p.call('postRecv', { wrId: 1, off: 0, len: 64 });
      t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [other.sge(0, 16)] });
      assert.equal((await pollN(t.a.cq, 1))[0]!.status, WcStatus.LOC_PROT_ERR);
      assert.equal(t.a.qp.state, QpState.ERR);
    } finally {
      await t.close();
    }
  });

  test('a misaligned atomic is REM_INV_REQ_ERR (rxe), an 8-byte aligned one succeeds', async () => {
    const t = await pair();
    try {
      t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 8)], atomic: { remoteAddr: t.remoteAddr + 4n, compareAdd: 1n, rkey: t.info.rkey } });
      assert.equal((await pollN(t.a.cq, 1))[0]!.status, WcStatus.REM_INV_REQ_ERR);
    } finally {
      await t.close();
    }
    const u = await pair();
    try {
      u.a.qp.postSend({ wrId: 1, opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, sendFlags: SendFlags.SIGNALED, sgList: [u.a.mr.sge(0, 8)], atomic: { remoteAddr: u.remoteAddr + 8n, compareAdd: 1n, rkey: u.info.rkey } });
      assert.equal((await pollN(u.a.cq, 1))[0]!.status, WcStatus.SUCCESS);
    } finally {
      await u.close();
    }
  });

  test('a receive buffer too small: REM_INV_REQ_ERR at the requester, LOC_LEN_ERR at the responder', async () => {
    const t = await pair();
    try {
      await t.p.call('postRecv', { wrId: 3, off: 0, len: 10 });
      t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 100)] });
      assert.equal((await pollN(t.a.cq, 1))[0]!.status, WcStatus.REM_INV_REQ_ERR);
      const [r] = await t.p.call('poll', { n: 1 });
      assert.equal(r.status, WcStatus.LOC_LEN_ERR);
    } finally {
      await t.close();
    }
  });

  test('no receive posted: RNR NAKs, then RNR_RETRY_EXC_ERR after rnr_retry; with a receive posted in time it succeeds', async () => {
    const t = await pair(QpType.RC, { local: { rnrRetry: 2 }, remote: { minRnrTimer: 1 } });
    try {
      // the requester's device counts the NAKs it got, the responder's (another daemon across the wire) those it sent
      const counters = async (root: string) => (await mgmt(getDeviceList(root)[0]!.devPath, 'counters'))[0].counters;
      const before = [await counters(d.root), await counters(peerRoot ?? d.root)];
      t.a.qp.postSend({ wrId: 1, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [t.a.mr.sge(0, 8)] });
      assert.equal((await pollN(t.a.cq, 1))[0]!.status, WcStatus.RNR_RETRY_EXC_ERR);
      const after = [await counters(d.root), await counters(peerRoot ?? d.root)];
      assert.equal(after[0].rcvd_rnr_err - before[0].rcvd_rnr_err, 3, 'initial try + 2 retries were NAKed');
      assert.equal(after[1].send_rnr_err - before[1].send_rnr_err, 3);
    } finally {
      await t.close();
    }
    const u = await pair(QpType.RC, { local: { rnrRetry: 7 }, remote: { minRnrTimer: 14 } });
    try {
      u.a.qp.postSend({ wrId: 1, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [u.a.mr.sge(0, 8)] });
      await new Promise((r) => setTimeout(r, 20));
      await u.p.call('postRecv', { wrId: 1, off: 0, len: 64 });
      assert.equal((await pollN(u.a.cq, 1))[0]!.status, WcStatus.SUCCESS, 'rnr_retry 7 retries until the receive is there');
    } finally {
      await u.close();
    }
  });

  test('modify to ERR flushes posted sends and receives with WR_FLUSH_ERR; receives posted in ERR are flushed too', async () => {
    const a = await localEnd();
    try {
      // as rxe: receives from INIT on, sends from RTS on (SQD and ERR too); before that, EINVAL and nothing posted
      assert.throws(() => a.qp.postRecv({ wrId: 9, sgList: [a.mr.sge(0, 8)] }), { code: 'EINVAL', message: /the QP is in RESET; receives are posted from INIT on/ });
      assert.throws(() => a.qp.postSend({ wrId: 9, opcode: WrOpcode.SEND, sgList: [a.mr.sge(0, 8)] }), { code: 'EINVAL', message: /the QP is in RESET; sends are posted from RTS on/ });
      await a.qp.modifyQp({ qpState: QpState.INIT, pkeyIndex: 0, portNum: 1, qpAccessFlags: 0 }, QpAttrMask.STATE | QpAttrMask.PKEY_INDEX | QpAttrMask.PORT | QpAttrMask.ACCESS_FLAGS);
      assert.throws(() => a.qp.postSend({ wrId: 9, opcode: WrOpcode.SEND, sgList: [a.mr.sge(0, 8)] }), { code: 'EINVAL', message: /the QP is in INIT; sends are posted from RTS on/ });
      a.qp.postRecv([{ wrId: 1, sgList: [a.mr.sge(0, 8)] }, { wrId: 2, sgList: [a.mr.sge(0, 8)] }]);
      await a.qp.modifyQp({ qpState: QpState.ERR }, 1);
      const wcs = await pollN(a.cq, 2);
      assert.deepEqual(wcs.map((w) => [w.wrId, w.status]), [[1n, WcStatus.WR_FLUSH_ERR], [2n, WcStatus.WR_FLUSH_ERR]]);
      a.qp.postRecv({ wrId: 3, sgList: [a.mr.sge(0, 8)] });
      a.qp.postSend({ wrId: 4, opcode: WrOpcode.SEND, sgList: [a.mr.sge(0, 8)] });
      const more = await pollN(a.cq, 2);
      assert.deepEqual(more.map((w) => [w.wrId, w.status]).sort(), [[3n, WcStatus.WR_FLUSH_ERR], [4n, WcStatus.WR_FLUSH_ERR]]);
    } finally {
      a.ctx.closeDevice();
    }
  });

  test('CQ overrun raises IBV_EVENT_CQ_ERR', async () => {
    const t = await pair(QpType.RC, { cqe: 1 });
    try {
      assert.equal(t.a.cq.cqe, 1);
      t.a.qp.postRecv([0, 1, 2].map((i) => ({ wrId: i, sgList: [t.a.mr.sge(i * 64, 64)] })));
      const ev = t.a.ctx.getAsyncEvent();
      for (let i = 0; i < 3; i++) await t.p.call('postSend', { wr: { wrId: i, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED }, sg: [{ off: 0, len: 8 }] });
      const e = await ev;
      assert.equal(e!.eventType, EventType.CQ_ERR);
      assert.equal(e!.element, t.a.cq);
    } finally {
      await t.close();
    }
  });
});
