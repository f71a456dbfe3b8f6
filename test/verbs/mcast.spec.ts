/**
 * UD multicast through the library (ibv_attach_mcast / ibv_detach_mcast): the kernel's errnos, delivery to every
 * attached QP of every device of a daemon with the group as the GRH's destination, no delivery after detach,
 * DESTROY_QP refused while attached, and a second daemon's QPs reached over IP multicast on loopback.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import {
  CmEventType, EventChannel, getDeviceList, openDevice, PortSpace, QpType, type CmId, SendFlags, VerbsError, WcFlags, WcOpcode, WcStatus, WrOpcode, Access,
  type Context, type MemoryRegion, type ProtectionDomain, type QueuePair, type CompletionQueue,
} from '../../src/verbs/index.js';
import { UcmaSpecs } from '../../src/abi/ucma.js';
import { A1, A2, A3, connectQp, pollN, startDaemon, type RunningDaemon } from '../helpers.js';

/** ::ffff:239.x.y.z, the MGID rdma_cm gives an IPv4 group on RoCEv2 (random per run, so parallel runs do not meet). */
function group(): { addr: string; gid: Uint8Array } {
  const b = [239, 100 + Math.floor(Math.random() * 100), Math.floor(Math.random() * 256), 1 + Math.floor(Math.random() * 250)];
  const gid = new Uint8Array(16);
  gid[10] = gid[11] = 0xff;
  gid.set(b, 12);
  return { addr: b.join('.'), gid };
}

const QKEY = 0x11111111;
const MCAST_QPN = 0xffffff;

/** A UD QP with its receive CQ (`cq`) apart from its send CQ (`scq`): a sender in its own group hears itself. */
interface UdEnd { ctx: Context; pd: ProtectionDomain; cq: CompletionQueue; scq: CompletionQueue; qp: QueuePair; mr: MemoryRegion }

async function udEnd(ctx: Context): Promise<UdEnd> {
  const pd = await ctx.allocPd();
  const cq = await ctx.createCq(64);
  const scq = await ctx.createCq(64);
  const qp = await pd.createQp({ qpType: QpType.UD, sendCq: scq, recvCq: cq, cap: { maxSendWr: 16, maxRecvWr: 16, maxSendSge: 1, maxRecvSge: 1 } });
  const mr = await pd.allocMr(65536, Access.LOCAL_WRITE);
  await connectQp(qp, ctx, { qpn: 0, gid: new Uint8Array(16) });
  for (let i = 0; i < 8; i++) qp.postRecv({ wrId: i, sgList: [mr.sge(i * 4096, 4096)] });
  return { ctx, pd, cq, scq, qp, mr };
}

async function closeEnd(e: UdEnd): Promise<void> {
  await e.qp[Symbol.asyncDispose]();
  await e.mr.deregMr();
  await e.cq.destroyCq();
  await e.scq.destroyCq();
  await e.pd.deallocPd();
}

async function sendTo(from: UdEnd, gid: Uint8Array, text: string, wrId = 1): Promise<void> {
  const ah = await from.pd.createAh({ grh: { dgid: gid, sgidIndex: 0, hopLimit: 64 }, isGlobal: true, portNum: 1 });
  from.mr.buf.write(text, 60000);
  from.qp.postSend({ wrId, opcode: WrOpcode.SEND_WITH_IMM, imm: 0x1234, sendFlags: SendFlags.SIGNALED, sgList: [from.mr.sge(60000, text.length)], ud: { ah, remoteQpn: MCAST_QPN, remoteQkey: QKEY } });
  const [wc] = await pollN(from.scq, 1);
  assert.equal(wc!.status, WcStatus.SUCCESS);
  await ah.destroyAh();
}

/** What arrived at `e` within `ms`: each message's text, and the GRH's IPv4 source and destination. */
async function received(e: UdEnd, n: number, ms = 3000): Promise<{ text: string; src: string; dst: string; srcQp: number }[]> {
  const wcs = await pollN(e.cq, n, ms);
  return wcs.map((wc) => {
    assert.equal(wc.status, WcStatus.SUCCESS);
    assert.equal(wc.opcode, WcOpcode.RECV);
    assert.equal(wc.wcFlags & WcFlags.GRH, WcFlags.GRH);
    const at = Number(wc.wrId) * 4096;
    const grh = e.mr.buf.subarray(at, at + 40);
    // the RoCEv2 IPv4 GRH: the IPv4 header in the last 20 bytes, as rxe gives it
    assert.equal(grh[20], 0x45);
    const text = e.mr.buf.subarray(at + 40, at + wc.byteLen).toString();
    e.qp.postRecv({ wrId: wc.wrId, sgList: [e.mr.sge(at, 4096)] });
    return { text, src: grh.subarray(32, 36).join('.'), dst: grh.subarray(36, 40).join('.'), srcQp: wc.srcQp };
  });
}

async function nothing(e: UdEnd, ms = 300): Promise<void> {
  await new Promise((r) => setTimeout(r, ms));
  assert.deepEqual(e.cq.pollCq(8), [], 'no datagram arrives');
}

describe('multicast on one daemon, two devices', () => {
  let d: RunningDaemon;
  let c0: Context;
  let c1: Context;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
    const devs = getDeviceList(d.root);
    c0 = await openDevice(devs.find((x) => x.name === 'rxe0')!);
    c1 = await openDevice(devs.find((x) => x.name === 'rxe1')!);
  });
  after(async () => {
    await c0?.closeDevice();
    await c1?.closeDevice();
    await d?.stop();
  });

  test('QUERY_DEVICE reports rxe\'s multicast limits', async () => {
    const a = await c0.queryDevice();
    assert.equal(a.maxMcastGrp, 8192);
    assert.equal(a.maxMcastQpAttach, 56);
    assert.equal(a.maxTotalMcastQpAttach, 0x70000);
  });

  test('attach and detach: the kernel\'s errnos', async () => {
    const g = group();
    const e = await udEnd(c0);
    try {
      const errno = async (p: Promise<unknown>) => {
        const err = await p.then(() => null, (x: unknown) => x);
        assert.ok(err instanceof VerbsError, `expected a VerbsError, got ${String(err)}`);
        return (err as VerbsError).code;
      };
      // not a multicast GID (the device's own unicast GID)
      assert.equal(await errno(e.qp.attachMcast(c0.queryGid(1, 0), 0)), 'EINVAL');
      // attached twice: not an error
      await e.qp.attachMcast(g.gid, 0);
      await e.qp.attachMcast(g.gid, 0);
      // a QP in groups cannot be destroyed by its user
      assert.equal(await errno(e.qp.destroyQp()), 'EBUSY');
      await e.qp.detachMcast(g.gid, 0);
      // detached already: EINVAL
      assert.equal(await errno(e.qp.detachMcast(g.gid, 0)), 'EINVAL');
      // an RC QP cannot join
      const rc = await e.pd.createQp({ qpType: QpType.RC, sendCq: e.cq, recvCq: e.cq, cap: { maxSendWr: 1, maxRecvWr: 1, maxSendSge: 1, maxRecvSge: 1 } });
      assert.equal(await errno(rc.attachMcast(g.gid, 0)), 'EINVAL');
      await rc.destroyQp();
    } finally {
      await closeEnd(e);
    }
  });

  test('max_mcast_qp_attach: the 57th QP of a group is EINVAL', async () => {
    const g = group();
    const pd = await c0.allocPd();
    const cq = await c0.createCq(4);
    const qps: QueuePair[] = [];
    try {
      for (let i = 0; i < 57; i++) qps.push(await pd.createQp({ qpType: QpType.UD, sendCq: cq, recvCq: cq, cap: { maxSendWr: 1, maxRecvWr: 1, maxSendSge: 1, maxRecvSge: 1 } }));
      for (const qp of qps.slice(0, 56)) await qp.attachMcast(g.gid);
      await assert.rejects(qps[56]!.attachMcast(g.gid), { code: 'EINVAL' });
      // one leaves: room again
      await qps[0]!.detachMcast(g.gid);
      await qps[56]!.attachMcast(g.gid);
    } finally {
      for (const qp of qps) await qp[Symbol.asyncDispose]();
      await cq.destroyCq();
      await pd.deallocPd();
    }
  });

  test('a SEND to the group reaches every attached QP of both devices, the sender\'s own included; detach stops it', async () => {
    const g = group();
    const s = await udEnd(c0);
    const r0 = await udEnd(c0);
    const r1 = await udEnd(c1);
    const r2 = await udEnd(c1);
    const outsider = await udEnd(c1);
    try {
      for (const e of [s, r0, r1, r2]) await e.qp.attachMcast(g.gid, 0);
      await sendTo(s, g.gid, 'hello group');
      for (const e of [s, r0, r1, r2]) {
        const [m] = await received(e, 1);
        assert.deepEqual(m, { text: 'hello group', src: A1, dst: g.addr, srcQp: s.qp.qpNum });
      }
      await nothing(outsider, 50);
      // detach: r1 no longer hears the group, the others still do
      await r1.qp.detachMcast(g.gid, 0);
      await sendTo(s, g.gid, 'second', 2);
      for (const e of [s, r0, r2]) assert.equal((await received(e, 1))[0]!.text, 'second');
      await nothing(r1);
      // a wrong Q_Key is dropped by each QP, as a unicast one
      const ah = await s.pd.createAh({ grh: { dgid: g.gid, sgidIndex: 0 }, isGlobal: true, portNum: 1 });
      s.qp.postSend({ wrId: 3, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [s.mr.sge(0, 8)], ud: { ah, remoteQpn: MCAST_QPN, remoteQkey: 0x22 } });
      await pollN(s.scq, 1);
      await nothing(r0);
      await ah.destroyAh();
    } finally {
      for (const e of [s, r0, r1, r2, outsider]) await closeEnd(e);
    }
  });

  test('each group joined on the wire is one socket on group:4791, at most 256 a device; the last detach closes it', async () => {
    const e = await udEnd(c0);
    // /proc/net/udp's local address is the IPv4 address as a little-endian hex word, then :12B7 (4791)
    const base = 100 + Math.floor(Math.random() * 100);
    const gids = Array.from({ length: 260 }, (_, i) => Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 239, base, i >> 8, (i & 255) + 1]));
    const hex = (g: Uint8Array) => `${[15, 14, 13, 12].map((k) => g[k]!.toString(16).padStart(2, '0')).join('').toUpperCase()}:12B7`;
    const want = new Set(gids.map(hex));
    const sockets = () => readFileSync('/proc/net/udp', 'utf8').split('\n').filter((l) => want.has(l.trim().split(/\s+/)[1] ?? '')).length;
    try {
      for (const g of gids) await e.qp.attachMcast(g);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(sockets(), 256);
      for (const g of gids) await e.qp.detachMcast(g);
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(sockets(), 0);
    } finally {
      await closeEnd(e);
    }
  });

  test('a context that closes takes its QPs out of their groups', async () => {
    const g = group();
    const s = await udEnd(c0);
    const c2 = await openDevice(getDeviceList(d.root).find((x) => x.name === 'rxe1')!);
    const gone = await udEnd(c2);
    await gone.qp.attachMcast(g.gid);
    await c2.closeDevice();
    try {
      // the daemon holds nothing of the group: 56 other QPs fit again... and a send to it reaches no one, harmlessly
      await sendTo(s, g.gid, 'anyone?');
      await s.qp.attachMcast(g.gid);
      await sendTo(s, g.gid, 'me');
      assert.equal((await received(s, 1))[0]!.text, 'me');
    } finally {
      await closeEnd(s);
    }
  });
});

describe('multicast between two daemons on loopback (IP multicast)', () => {
  let d1: RunningDaemon;
  let d2: RunningDaemon;
  let a: Context;
  let b: Context;
  before(async () => {
    d1 = await startDaemon(['--device', `rxe0=${A1}`]);
    d2 = await startDaemon(['--device', `rxe0=${A3}`]);
    a = await openDevice(getDeviceList(d1.root)[0]!);
    b = await openDevice(getDeviceList(d2.root)[0]!);
  });
  after(async () => {
    await a?.closeDevice();
    await b?.closeDevice();
    await d1?.stop();
    await d2?.stop();
  });

  test('a SEND to the group reaches the other daemon\'s attached QPs once, and its own once', async () => {
    const g = group();
    const s = await udEnd(a);
    const r = await udEnd(b);
    const r2 = await udEnd(b);
    try {
      await s.qp.attachMcast(g.gid);
      await r.qp.attachMcast(g.gid);
      await r2.qp.attachMcast(g.gid);
      // the join (IGMP, the group socket) is made as the attach returns; a moment for the kernel to have it
      await new Promise((res) => setTimeout(res, 100));
      await sendTo(s, g.gid, 'across');
      for (const e of [r, r2]) assert.deepEqual(await received(e, 1), [{ text: 'across', src: A1, dst: g.addr, srcQp: s.qp.qpNum }]);
      // its own copy came from its fabric; the copy the kernel loops back to d1's group socket is not a second one
      assert.equal((await received(s, 1))[0]!.text, 'across');
      await nothing(s);
      // and back
      await sendTo(r, g.gid, 'back', 5);
      for (const e of [s, r, r2]) assert.equal((await received(e, 1))[0]!.src, A3);
      await r2.qp.detachMcast(g.gid);
      await r.qp.detachMcast(g.gid);
      await new Promise((res) => setTimeout(res, 50));
      await sendTo(s, g.gid, 'nobody there', 6);
      await received(s, 1);
      await nothing(r);
      await nothing(r2, 10);
    } finally {
      for (const e of [s, r, r2]) await closeEnd(e);
    }
  });
});

describe('rdma_cm multicast through the library (JOIN_MCAST, LEAVE_MCAST)', () => {
  let d: RunningDaemon;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
  });
  after(async () => {
    await d?.stop();
  });

  async function udId(ch: EventChannel, bind: string): Promise<CmId> {
    const id = await ch.createId(PortSpace.UDP);
    await id.bindAddr(bind);
    return id;
  }

  test('the kernel\'s errnos: no device, not UD, an IPv6 group on RoCEv2, a join never made', async () => {
    await using ch = await EventChannel.create(d.root);
    const fresh = await ch.createId(PortSpace.UDP);
    await assert.rejects(fresh.joinMulticast('239.1.1.1'), { code: 'ENODEV' });
    const rc = await ch.createId(PortSpace.TCP);
    await rc.bindAddr(A1);
    await assert.rejects(rc.joinMulticast('239.1.1.1'), { code: 'EINVAL' });
    const ud = await udId(ch, A1);
    // ENOTSUPP (524): the kernel's own errno, which userspace has no name for
    await assert.rejects(ud.joinMulticast('ff0e::1234'), (e: VerbsError) => e.errno === 524 || e.errno === -524);
    await assert.rejects(ud.leaveMulticast('239.1.1.1'), { code: 'EADDRNOTAVAIL' });
    // LEAVE_MCAST of a join handle that does not exist
    await assert.rejects(ch.call('rdma_leave_multicast', UcmaSpecs.LEAVE_MCAST, { id: 12345 }), { code: 'ENOENT' });
    for (const id of [fresh, rc, ud]) await id.destroy();
  });

  test('MULTICAST_JOIN carries rdma_cm\'s UD parameters; the id\'s QP hears the group until it leaves', async () => {
    const g = group();
    await using ch = await EventChannel.create(d.root);
    const rid = await udId(ch, A2);
    const sid = await udId(ch, A1);
    const recv = await udEnd(rid.verbs!);
    const send = await udEnd(sid.verbs!);
    try {
      // the library attaches the id's QP when MULTICAST_JOIN arrives, as librdmacm does
      rid.qp = recv.qp;
      await rid.joinMulticast(g.addr, 'mine');
      const ev = (await ch.getCmEvent())!;
      assert.equal(ev.event, CmEventType.MULTICAST_JOIN);
      assert.equal(ev.id, rid);
      assert.equal(ev.status, 0);
      assert.equal(ev.param.context, 'mine');
      assert.equal(ev.param.qpNum, 0xffffff);
      assert.equal(ev.param.qkey, 0x01234567);
      assert.deepEqual([...ev.param.ahAttr!.grh!.dgid!], [...g.gid]);
      assert.equal(ev.param.ahAttr!.grh!.hopLimit, 64);
      assert.equal(ev.param.ahAttr!.grh!.sgidIndex, 0);
      // the QP keeps QKEY (connectQp's): the sender uses the Q_Key the event gave only for rdma_cm's own QPs
      await sendTo(send, g.gid, 'via the cm');
      assert.equal((await received(recv, 1))[0]!.text, 'via the cm');
      await rid.leaveMulticast(g.addr);
      await sendTo(send, g.gid, 'after leaving', 2);
      await nothing(recv);
      rid.qp = null;
    } finally {
      await closeEnd(recv);
      await closeEnd(send);
      await rid.destroy();
      await sid.destroy();
    }
  });
});
