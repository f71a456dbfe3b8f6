/**
 * Resource management across real processes: isolation between contexts,
 * cleanup of a SIGKILLed client, pinned-memory accounting against the
 * client's own RLIMIT_MEMLOCK, and device-file permissions.
 */
import assert from 'node:assert/strict';
import { chmodSync, ftruncateSync, mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { regionOf } from '../../src/verbs/memory.js';
import * as U from '../../src/abi/uverbs.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { SoftDevice } from '../../src/hca/device.js';
import { Fabric } from '../../src/hca/fabric.js';
import { ibMtuOf, netdevMtu } from '../../src/hca/netdev.js';
import { Access, getDeviceList, openDevice, QpType, ReregMrFlags, SendFlags, WcStatus, WrOpcode } from '../../src/verbs/index.js';
import { connectQp, mgmt, pollN, spawnPeer, startDaemon , A1 } from '../helpers.js';

const ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;
const NOBODY = ['setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];

describe('isolation', () => {
  test('an MR without remote access has rkey 0, as rxe gives it; rereg with remote access gives it its key', async () => {
    const d = await startDaemon();
    try {
      const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
      const pd = await ctx.allocPd();
      const local = await pd.allocMr(4096, Access.LOCAL_WRITE);
      assert.equal(local.rkey, 0);
      assert.notEqual(local.lkey, 0);
      const remote = await pd.allocMr(4096, Access.LOCAL_WRITE | Access.REMOTE_READ);
      assert.equal(remote.rkey, remote.lkey);
      await local.reregMr(ReregMrFlags.CHANGE_ACCESS, { access: Access.LOCAL_WRITE | Access.REMOTE_WRITE });
      assert.equal(local.rkey, local.lkey);
      ctx.closeDevice();
    } finally {
      await d.stop();
    }
  });

  test("context B cannot use context A's handles; an rkey of a deregistered MR is REM_ACCESS_ERR", async () => {
    const d = await startDaemon();
    try {
      const dev = getDeviceList(d.root)[0]!;
      const a = await openDevice(dev, d.root);
      const b = await openDevice(dev, d.root);
      const pdA = await a.allocPd();
      const mrA = await pdA.allocMr(4096, ALL);
      // B has no PD yet: A's handle number means nothing to B
      await assert.rejects(b.command('ibv_dealloc_pd', U.Spec.DEALLOC_PD, { pd_handle: 0 }), { code: 'EINVAL' });
      await assert.rejects(b.command('ibv_dereg_mr', U.Spec.DEREG_MR, { mr_handle: 1 }), { code: 'EINVAL' });
      // B's own handle 0 is B's PD; deallocating it leaves A's PD working
      const pdB = await b.allocPd();
      await pdB.deallocPd();
      await pdA.allocMr(4096, Access.LOCAL_WRITE);
      // dereg'd rkey
      const cq = await a.createCq(8);
      const q1 = await pdA.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
      const q2 = await pdA.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
      await connectQp(q1, a, { qpn: q2.qpNum, gid: a.queryGid(1, 0) });
      await connectQp(q2, a, { qpn: q1.qpNum, gid: a.queryGid(1, 0) });
      const target = await pdA.allocMr(4096, ALL);
      const { rkey, addr } = target;
      await target.deregMr();
      q1.postSend({ wrId: 1, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [mrA.sge(0, 8)], rdma: { remoteAddr: addr, rkey } });
      assert.equal((await pollN(cq, 1))[0]!.status, WcStatus.REM_ACCESS_ERR);
      // an rkey of another PD is refused the same way
      const pd2 = await a.allocPd();
      const foreign = await pd2.allocMr(4096, ALL);
      const cq2 = await a.createCq(8);
      const q3 = await pdA.createQp({ sendCq: cq2, recvCq: cq2, qpType: QpType.RC, cap: {} });
      const q4 = await pdA.createQp({ sendCq: cq2, recvCq: cq2, qpType: QpType.RC, cap: {} });
      await connectQp(q3, a, { qpn: q4.qpNum, gid: a.queryGid(1, 0) });
      await connectQp(q4, a, { qpn: q3.qpNum, gid: a.queryGid(1, 0) });
      q3.postSend({ wrId: 1, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [mrA.sge(0, 8)], rdma: { remoteAddr: foreign.addr, rkey: foreign.rkey } });
      assert.equal((await pollN(cq2, 1))[0]!.status, WcStatus.REM_ACCESS_ERR);
      a.closeDevice();
      b.closeDevice();
    } finally {
      await d.stop();
    }
  });
});

describe('cleanup', () => {
  test('a client killed with SIGKILL mid-transfer: gone from the tracker within 1 s, pages back, QPNs free, its peer gets RETRY_EXC_ERR, a third client sees nothing', async () => {
    const d = await startDaemon();
    const victim = spawnPeer();
    const third = spawnPeer();
    try {
      const dev = getDeviceList(d.root)[0]!;
      const other = await openDevice(dev, d.root);
      const pd = await other.allocPd();
      const cq = await other.createCq(256);
      const a = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 16 } });
      const c = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 16 } });
      const mr = await pd.allocMr(1 << 20, ALL);
      const v = await victim.call('init', { root: d.root, srq: { maxWr: 32 }, mrLen: 1 << 20 });
      const t = await third.call('init', { root: d.root });
      const gid = Buffer.from(other.queryGid(1, 0)).toString('hex');
      await connectQp(a, other, { qpn: v.qpn, gid: Buffer.from(v.gid, 'hex') }, { timeout: 8, retryCnt: 2 });
      await victim.call('connect', { qpn: a.qpNum, gid });
      await connectQp(c, other, { qpn: t.qpn, gid: Buffer.from(t.gid, 'hex') });
      await third.call('connect', { qpn: c.qpNum, gid });
      await victim.call('postRecv', { wrId: 1, off: 0, len: 64, count: 8 });
      const before = await mgmt(dev.devPath, 'restrack');
      assert.ok(before.some((r: { pid: number; type: string }) => r.pid === v.pid && r.type === 'srq'), 'the victim holds an SRQ');
      assert.ok((await mgmt(dev.devPath, 'pinned'))[v.pid] > 0, 'the victim has pinned pages');
      await victim.call('stream', { len: 65536, remoteAddr: mr.addr.toString(), rkey: mr.rkey });
      await third.call('stream', { len: 4096, remoteAddr: mr.addr.toString(), rkey: mr.rkey });
      await new Promise((r) => setTimeout(r, 150));
      const t0 = Date.now();
      await victim.kill('SIGKILL');
      let rows: Array<{ pid: number }> = [];
      for (;;) {
        rows = (await mgmt(dev.devPath, 'restrack')).filter((r: { pid: number }) => r.pid === v.pid);
        if (rows.length === 0 || Date.now() - t0 > 2000) break;
        await new Promise((r) => setTimeout(r, 10));
      }
      const elapsed = Date.now() - t0;
      assert.deepEqual(rows, []);
      assert.ok(elapsed < 1000, `cleanup took ${elapsed} ms`);
      assert.equal((await mgmt(dev.devPath, 'pinned'))[v.pid], undefined, 'pinned pages returned');
      const qpns: number[] = (await mgmt(dev.devPath, 'devices'))[0].qpns;
      assert.ok(!qpns.includes(v.qpn), 'the QPN is free');
      // the surviving peer: its next request to the dead QP times out with the IBA outcome
      a.postSend({ wrId: 99, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 8)], rdma: { remoteAddr: BigInt(v.addr), rkey: v.rkey } });
      const end = Date.now() + 3000;
      let seen: number | null = null;
      while (Date.now() < end && seen === null) {
        for (const w of cq.pollCq(64)) if (w.qpNum === a.qpNum && w.status !== WcStatus.SUCCESS && seen === null) seen = w.status;
        await new Promise((r) => setTimeout(r, 5));
      }
      assert.equal(seen, WcStatus.RETRY_EXC_ERR);
      // the third client kept working and saw no error and no event
      await new Promise((r) => setTimeout(r, 100));
      const stats = await third.call('stats');
      assert.ok((stats[WcStatus.SUCCESS] ?? 0) > 0, 'third client completed writes');
      assert.deepEqual(Object.keys(stats), [String(WcStatus.SUCCESS)], `third client statuses ${JSON.stringify(stats)}`);
      assert.deepEqual(await third.call('events'), []);
      other.closeDevice();
    } finally {
      await victim.kill();
      await third.kill();
      await d.stop();
    }
  });

  test('a QP destroyed while its send work is deferred (over one doorbell budget) leaves the daemon unharmed', async () => {
    const d = await startDaemon();
    try {
      for (let round = 0; round < 5; round++) {
        const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
        const pd = await ctx.allocPd();
        const cq = await ctx.createCq(64);
        const a = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 16 } });
        const b = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
        const mr = await pd.allocMr(4 << 20, ALL);
        await connectQp(a, ctx, { qpn: b.qpNum, gid: ctx.queryGid(1, 0) });
        await connectQp(b, ctx, { qpn: a.qpNum, gid: ctx.queryGid(1, 0) });
        // 16 x 2 MiB = 8192 packets: several budgets of deferred requester work
        for (let i = 0; i < 16; i++) a.postSend({ wrId: i, opcode: WrOpcode.RDMA_WRITE, sgList: [mr.sge(0, 2 << 20)], rdma: { remoteAddr: mr.addr + BigInt(2 << 20), rkey: mr.rkey } });
        if (round % 2) ctx.closeDevice();
        else await a.destroyQp();
        ctx.closeDevice();
      }
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(d.proc.exitCode, null, 'daemon alive');
      assert.doesNotMatch(d.stderr(), /internal error/);
      const rows = await mgmt(getDeviceList(d.root)[0]!.devPath, 'restrack');
      assert.deepEqual(rows, []);
    } finally {
      await d.stop();
    }
  });

  test('active MTU from the interface MTU as rxe derives it: 1500 -> 1024, 9000 and loopback -> 4096, tiny -> 256', () => {
    assert.deepEqual([1500, 9000, 65536, 1280, 600, 300].map(ibMtuOf), [3, 5, 5, 3, 2, 1]);
    assert.equal(netdevMtu('127.0.0.2'), 65536, 'loopback carries all of 127/8');
    const dev = new SoftDevice(new Fabric(), 'y', 0, '127.0.0.1');
    assert.equal(dev.mtuBytes, 4096);
  });

  test('QPNs are handed out cyclically from 17 and a freed one is reused once the cycle comes round', () => {
    const dev = new SoftDevice(new Fabric(), 'x', 0, '127.0.0.1', { maxQpn: 20 });
    const got = [17, 18, 19, 20].map(() => {
      const q = dev.allocQpn();
      dev.qps.set(q, {} as never);
      return q;
    });
    assert.deepEqual(got, [17, 18, 19, 20]);
    assert.equal(dev.allocQpn(), -1, 'all in use');
    dev.qps.delete(18);
    assert.equal(dev.allocQpn(), 18);
  });
});

describe('pinned memory against RLIMIT_MEMLOCK', () => {
  test('a non-root client gets ENOMEM past its limit; double registration counts twice; dereg gives pages back; root is exempt', async () => {
    const d = await startDaemon();
    chmodSync(d.root, 0o755);
    const limited = spawnPeer([...NOBODY, 'prlimit', '--memlock=65536:65536']);
    try {
      const dev = getDeviceList(d.root)[0]!;
      const info = await limited.call('init', { root: d.root, mrLen: 4096 });
      const pinned = async () => (await mgmt(dev.devPath, 'pinned'))[info.pid] ?? 0;
      assert.equal(await pinned(), 1);
      const buf = await limited.call('alloc', { len: 40960 }); // 10 pages
      const m1 = await limited.call('regMr', { buf });
      assert.equal(await pinned(), 11);
      // the same pages again: 10 more would make 21 > 16
      await assert.rejects(limited.call('regMr', { buf }), { code: 'ENOMEM' });
      assert.equal(await pinned(), 11, 'nothing half-registered');
      const rows = (await mgmt(dev.devPath, 'restrack')).filter((r: { pid: number; type: string }) => r.pid === info.pid && r.type === 'mr');
      assert.equal(rows.length, 2, 'no MR left behind by the failed registration');
      const small = await limited.call('regMr', { buf, off: 4096, len: 8192 }); // 2 pages: 13
      assert.equal(await pinned(), 13);
      await limited.call('deregMr', { mr: m1 });
      assert.equal(await pinned(), 3);
      await limited.call('regMr', { buf });
      assert.equal(await pinned(), 13, 'pages given back are usable again');
      void small;
      await limited.kill();
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(await pinned(), 0, 'exit gives everything back');
      const root = spawnPeer(['prlimit', '--memlock=4096:4096']);
      const rinfo = await root.call('init', { root: d.root, mrLen: 1 << 20 });
      assert.equal((await mgmt(dev.devPath, 'pinned'))[rinfo.pid], 256, 'uid 0 is exempt and still counted');
      await root.kill();
    } finally {
      await limited.kill();
      await d.stop();
    }
  });
});

describe('sealed memory', () => {
  test('once registered, the client can neither shrink nor grow the memfd, so the daemon can never SIGBUS on it', async () => {
    const d = await startDaemon();
    try {
      const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
      const pd = await ctx.allocPd();
      const buf = ctx.allocBuffer(8192);
      const { region } = regionOf(buf)!;
      ftruncateSync(region.fd, 16384); // before registration: still the client's to resize
      await pd.regMr(buf, Access.LOCAL_WRITE);
      assert.throws(() => ftruncateSync(region.fd, 0), { code: 'EPERM' });
      assert.throws(() => ftruncateSync(region.fd, 1 << 20), { code: 'EPERM' });
      ctx.closeDevice();
    } finally {
      await d.stop();
    }
  });
});

describe('device file permissions', () => {
  test('MODE 0660 and GROUP from the rules file; outsiders get EACCES; 0666 lets anyone in', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sv-rules-'));
    const rules = join(dir, 'rules');
    writeFileSync(rules, '# test rules\nKERNEL=="uverbs*", NAME="infiniband/%k", MODE="0660", GROUP="4242"\n');
    const d = await startDaemon(['--device', `rxe0=${A1}`, '--rules', rules]);
    chmodSync(d.root, 0o755);
    try {
      const dev = getDeviceList(d.root)[0]!;
      const st = statSync(dev.devPath);
      assert.equal(st.mode & 0o777, 0o660);
      assert.equal(st.gid, 4242);
      const outsider = spawnPeer(NOBODY);
      await assert.rejects(outsider.call('init', { root: d.root }), { code: 'EACCES' });
      await outsider.kill();
      const member = spawnPeer(['setpriv', '--reuid=65534', '--regid=4242', '--clear-groups']);
      const ok = await member.call('init', { root: d.root, mrLen: 4096 });
      assert.ok(ok.qpn > 0);
      await member.kill();
    } finally {
      await d.stop();
      rmSync(dir, { recursive: true, force: true });
    }
    const open = await startDaemon();
    chmodSync(open.root, 0o755);
    try {
      assert.equal(statSync(getDeviceList(open.root)[0]!.devPath).mode & 0o777, 0o666);
      const anyone = spawnPeer(NOBODY);
      const ok = await anyone.call('init', { root: open.root, mrLen: 4096 });
      assert.ok(ok.qpn > 0);
      await anyone.kill();
    } finally {
      await open.stop();
    }
  });
});
