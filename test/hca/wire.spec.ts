/**
 * Two devices talking: in one daemon (the local FIFO) and in two daemons
 * (RoCEv2 datagrams over UDP on 127.0.0.1 <-> 127.0.0.2). The same
 * requester/responder/completer serve both; every byte is checked.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { Access, getDeviceList, openDevice, QpType, SendFlags, WcOpcode, WcStatus, WrOpcode } from '../../src/verbs/index.js';
import { connectQp, mgmt, pattern, pollN, spawnPeer, startDaemon, type RunningDaemon } from '../helpers.js';

const ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;
const sha = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

async function exercise(rootA: string, devA: string, rootB: string, devB: string): Promise<void> {
  const ctx = await openDevice(devA, rootA);
  const pd = await ctx.allocPd();
  const cq = await ctx.createCq(256);
  const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 32 } });
  const ud = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.UD, cap: { maxSendWr: 8 } });
  const mr = await pd.allocMr(4 << 20, ALL);
  const p = spawnPeer();
  const q = spawnPeer();
  try {
    const info = await p.call('init', { root: rootB, dev: devB, mrLen: 4 << 20 });
    const uinfo = await q.call('init', { root: rootB, dev: devB, qpType: QpType.UD, mrLen: 1 << 16 });
    const myGid = Buffer.from(ctx.queryGid(1, 0)).toString('hex');
    assert.notEqual(info.gid, myGid, 'two different devices');
    await connectQp(qp, ctx, { qpn: info.qpn, gid: Buffer.from(info.gid, 'hex') });
    await p.call('connect', { qpn: qp.qpNum, gid: myGid });
    await connectQp(ud, ctx, { qpn: 0, gid: Buffer.from(uinfo.gid, 'hex') });
    await q.call('connect', { qpn: ud.qpNum, gid: myGid });
    const remote = BigInt(info.addr);

    await p.call('postRecv', { wrId: 1, off: 0, len: 1 << 20 });
    pattern(31, 1 << 20).copy(mr.buf, 0);
    qp.postSend({ wrId: 1, opcode: WrOpcode.SEND_WITH_IMM, imm: 42, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 1 << 20)] });
    assert.equal((await pollN(cq, 1, 10000))[0]!.status, WcStatus.SUCCESS);
    const [r] = await p.call('poll', { n: 1 });
    assert.deepEqual([r.opcode, r.byteLen, r.imm], [WcOpcode.RECV, 1 << 20, 42]);
    assert.equal(await p.call('hash', { off: 0, len: 1 << 20 }), sha(pattern(31, 1 << 20)));

    pattern(32, 1 << 20).copy(mr.buf, 0);
    qp.postSend({ wrId: 2, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 1 << 20)], rdma: { remoteAddr: remote + BigInt(1 << 20), rkey: info.rkey } });
    assert.equal((await pollN(cq, 1, 10000))[0]!.status, WcStatus.SUCCESS);
    assert.equal(await p.call('hash', { off: 1 << 20, len: 1 << 20 }), sha(pattern(32, 1 << 20)));

    await p.call('fill', { seed: 33, off: 2 << 20, len: 1 << 20 });
    qp.postSend({ wrId: 3, opcode: WrOpcode.RDMA_READ, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(2 << 20, 1 << 20)], rdma: { remoteAddr: remote + BigInt(2 << 20), rkey: info.rkey } });
    assert.equal((await pollN(cq, 1, 10000))[0]!.status, WcStatus.SUCCESS);
    assert.equal(sha(mr.buf.subarray(2 << 20, 3 << 20)), sha(pattern(33, 1 << 20)));

    qp.postSend({ wrId: 4, opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(3 << 20, 8)], atomic: { remoteAddr: remote + BigInt(3 << 20), compareAdd: 7n, rkey: info.rkey } });
    qp.postSend({ wrId: 5, opcode: WrOpcode.ATOMIC_CMP_AND_SWP, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge((3 << 20) + 8, 8)], atomic: { remoteAddr: remote + BigInt(3 << 20), compareAdd: 7n, swap: 99n, rkey: info.rkey } });
    const at = await pollN(cq, 2, 10000);
    assert.deepEqual(at.map((w) => w.status), [0, 0]);
    assert.equal(mr.buf.readBigUInt64LE(3 << 20), 0n);
    assert.equal(mr.buf.readBigUInt64LE((3 << 20) + 8), 7n);
    assert.equal(Buffer.from(await p.call('read', { off: 3 << 20, len: 8 }), 'hex').readBigUInt64LE(), 99n);

    const ah = await pd.createAh({ grh: { dgid: Buffer.from(uinfo.gid, 'hex') } });
    await q.call('postRecv', { wrId: 8, off: 0, len: 4096 });
    pattern(34, 1000).copy(mr.buf, 0);
    ud.postSend({ wrId: 6, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 1000)], ud: { ah, remoteQpn: uinfo.qpn, remoteQkey: 0x11111111 } });
    await pollN(cq, 1);
    const [u] = await q.call('poll', { n: 1 });
    assert.deepEqual([u.byteLen, u.srcQp, u.wcFlags & 1], [1040, ud.qpNum, 1]);
    assert.equal(await q.call('hash', { off: 40, len: 1000 }), sha(pattern(34, 1000)));
  } finally {
    await p.kill();
    await q.kill();
    ctx.closeDevice();
  }
}

describe('two devices of one daemon', () => {
  let d: RunningDaemon;
  before(async () => {
    d = await startDaemon(['--device', 'rxe0=127.0.0.1', '--device', 'rxe1=127.0.0.2']);
  });
  after(async () => d.stop());
  test('RC SEND/WRITE/READ of 1 MiB, both atomics and UD SEND between rxe0 and rxe1', async () => {
    await exercise(d.root, 'rxe0', d.root, 'rxe1');
  });
});

describe('two daemons over RoCEv2/UDP (127.0.0.1 <-> 127.0.0.2)', () => {
  let d1: RunningDaemon;
  let d2: RunningDaemon;
  before(async () => {
    d1 = await startDaemon(['--device', 'rxe0=127.0.0.1']);
    d2 = await startDaemon(['--device', 'rxe0=127.0.0.2']);
  });
  after(async () => {
    await d1.stop();
    await d2.stop();
  });
  test('the same operations cross the wire byte-exact; packets are counted on both sides', async () => {
    const dev1 = getDeviceList(d1.root)[0]!;
    assert.equal((await mgmt(dev1.devPath, 'devices'))[0].wire, true);
    await exercise(d1.root, 'rxe0', d2.root, 'rxe0');
    const c1 = (await mgmt(dev1.devPath, 'counters'))[0].counters;
    const c2 = (await mgmt(getDeviceList(d2.root)[0]!.devPath, 'counters'))[0].counters;
    // 256 SEND + 256 WRITE + 1 READ request + 2 atomics + 1 UD from rxe0; 256 READ responses, ACKs and 2 atomic ACKs back
    assert.ok(c1.sent_pkts >= 516 && c2.rcvd_pkts >= 516, `${c1.sent_pkts} sent, ${c2.rcvd_pkts} received`);
    assert.ok(c2.sent_pkts >= 258 && c1.rcvd_pkts >= 258, `${c2.sent_pkts} sent back, ${c1.rcvd_pkts} received`);
  });
});
