/**
 * Memory windows and invalidation through the library, against a real daemon: pd.allocMw, type 1 binds
 * (qp.bindMw / mw.bind) and type 2 binds (a BIND_MW work request), remote WRITE/READ/atomics through a
 * window's rkey within its bounds and access, LOCAL_INV and SEND_WITH_INV (the receiver's completion carries
 * IBV_WC_WITH_INV and the key), dealloc with a window bound, and the rules that make a bind or an
 * invalidation fail. Requests go between two devices of one daemon, and once across the wire between two
 * daemons (the IETH in a real packet).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  Access, getDeviceList, incRkey, MwType, openDevice, QpExSendOps, QpType, ReregMrFlags, SendFlags, VerbsError, WcFlags, WcOpcode, WcStatus, WrOpcode,
  type Context, type MemoryRegion, type MemoryWindow, type ProtectionDomain, type QueuePair, type WorkCompletion,
} from '../../src/verbs/index.js';
import { A1, A2, connectQp, pollN, startDaemon, twoDaemons, type RunningDaemon } from '../helpers.js';

const RW = Access.REMOTE_WRITE | Access.REMOTE_READ;

/** The side that owns the memory (b) and the side that reaches it (a), each a context, PD and CQ. */
interface Sides {
  a: { ctx: Context; pd: ProtectionDomain; cq: Awaited<ReturnType<Context['createCq']>> };
  b: { ctx: Context; pd: ProtectionDomain; cq: Awaited<ReturnType<Context['createCq']>> };
}

async function sides(ca: Context, cb: Context): Promise<Sides> {
  const mk = async (ctx: Context) => ({ ctx, pd: await ctx.allocPd(), cq: await ctx.createCq(64) });
  return { a: await mk(ca), b: await mk(cb) };
}

/** A connected RC pair: qa on a's side, qb on b's. */
async function pair(s: Sides): Promise<{ qa: QueuePair; qb: QueuePair }> {
  const qa = await s.a.pd.createQp({ sendCq: s.a.cq, recvCq: s.a.cq, qpType: QpType.RC, cap: { maxSendWr: 16, maxRecvWr: 16 } });
  const qb = await s.b.pd.createQp({ sendCq: s.b.cq, recvCq: s.b.cq, qpType: QpType.RC, cap: { maxSendWr: 16, maxRecvWr: 16 } });
  await connectQp(qa, s.a.ctx, { qpn: qb.qpNum, gid: s.b.ctx.queryGid(1, 0) });
  await connectQp(qb, s.b.ctx, { qpn: qa.qpNum, gid: s.a.ctx.queryGid(1, 0) });
  return { qa, qb };
}

/** b binds a type 2 window over [off, off+len) of mr through qb (signaled); its completion. */
async function bind2(s: Sides, qb: QueuePair, mw: MemoryWindow, mr: MemoryRegion, off: number, len: number, access: number, rkey = incRkey(mw.rkey)): Promise<WorkCompletion> {
  qb.postSend({ wrId: 0xb1, opcode: WrOpcode.BIND_MW, sendFlags: SendFlags.SIGNALED, bindMw: { mw, rkey, bindInfo: { mr, addr: mr.addr + BigInt(off), length: len, mwAccessFlags: access } } });
  const [wc] = await pollN(s.b.cq, 1);
  if (wc!.status === WcStatus.SUCCESS) mw.rkey = rkey;
  return wc!;
}

/** a WRITEs `data` to remoteAddr with rkey from a fresh MR of its own; the completion. */
async function write(s: Sides, qa: QueuePair, data: string, remoteAddr: bigint, rkey: number): Promise<WorkCompletion> {
  const src = await s.a.pd.allocMr(256, Access.LOCAL_WRITE);
  const n = src.buf.write(data);
  qa.postSend({ wrId: 1, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [src.sge(0, n)], rdma: { remoteAddr, rkey } });
  const [wc] = await pollN(s.a.cq, 1);
  await src.deregMr();
  return wc!;
}

/** b's MR: LOCAL_WRITE | MW_BIND, no remote access of its own (only windows grant it). */
const bindable = (s: Sides, len = 4096) => s.b.pd.allocMr(len, Access.LOCAL_WRITE | Access.MW_BIND);

describe('memory windows, two devices of one daemon', () => {
  let d: RunningDaemon;
  let s: Sides;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
    const devs = getDeviceList(d.root);
    s = await sides(await openDevice(devs[0]!, d.root), await openDevice(devs[1]!, d.root));
  });
  after(async () => {
    s.a.ctx.closeDevice();
    s.b.ctx.closeDevice();
    await d.stop();
  });

  test('QUERY_DEVICE says windows of type 1 and 2B, as Linux rxe 6.1 does; allocMw of another type is EINVAL', async () => {
    const attr = await s.a.ctx.queryDevice();
    assert.equal(attr.maxMw, 524287);
    const MEM_WINDOW = 1 << 17, MEM_MGT_EXTENSIONS = 1 << 21, MEM_WINDOW_TYPE_2B = 1 << 24;
    assert.equal(attr.deviceCapFlags & (MEM_WINDOW | MEM_MGT_EXTENSIONS | MEM_WINDOW_TYPE_2B), MEM_WINDOW | MEM_MGT_EXTENSIONS | MEM_WINDOW_TYPE_2B);
    await assert.rejects(s.b.pd.allocMw(3 as MwType), (e: VerbsError) => e.code === 'EINVAL' && e.verb === 'ibv_alloc_mw');
    await using mw = await s.b.pd.allocMw(MwType.TYPE_2);
    assert.ok(mw.rkey >>> 8 > 0x80000, `a window's key index lies above every MR's (rxe's split): 0x${mw.rkey.toString(16)}`);
  });

  test('type 2: bound by a BIND_MW WR, WRITE/READ/atomics through its rkey inside it; outside it, or without the access, REM_ACCESS_ERR', async () => {
    const mr = await bindable(s);
    const mw = await s.b.pd.allocMw(MwType.TYPE_2);
    let { qa, qb } = await pair(s);
    const before = mw.rkey;
    const wc = await bind2(s, qb, mw, mr, 64, 256, RW | Access.REMOTE_ATOMIC | Access.LOCAL_WRITE);
    assert.deepEqual([wc.status, wc.opcode, Number(wc.wrId), wc.byteLen], [WcStatus.SUCCESS, WcOpcode.BIND_MW, 0xb1, 0]);
    assert.equal(mw.rkey, incRkey(before));
    assert.equal(mw.rkey >>> 8, before >>> 8, 'a bind changes the key byte only');

    // WRITE at the window's start and up to its last byte
    assert.equal((await write(s, qa, 'through the window', mr.addr + 64n, mw.rkey)).status, WcStatus.SUCCESS);
    assert.equal(mr.buf.toString('utf8', 64, 64 + 18), 'through the window');
    assert.equal((await write(s, qa, 'end', mr.addr + 64n + 253n, mw.rkey)).status, WcStatus.SUCCESS);
    // READ back through the window
    const dst = await s.a.pd.allocMr(64, Access.LOCAL_WRITE);
    qa.postSend({ wrId: 2, opcode: WrOpcode.RDMA_READ, sendFlags: SendFlags.SIGNALED, sgList: [dst.sge(0, 18)], rdma: { remoteAddr: mr.addr + 64n, rkey: mw.rkey } });
    assert.equal((await pollN(s.a.cq, 1))[0]!.status, WcStatus.SUCCESS);
    assert.equal(dst.buf.toString('utf8', 0, 18), 'through the window');
    // a fetch-and-add through it
    mr.buf.writeBigUInt64LE(40n, 128);
    qa.postSend({ wrId: 3, opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, sendFlags: SendFlags.SIGNALED, sgList: [dst.sge(0, 8)], atomic: { remoteAddr: mr.addr + 128n, compareAdd: 2n, rkey: mw.rkey } });
    assert.equal((await pollN(s.a.cq, 1))[0]!.status, WcStatus.SUCCESS);
    assert.deepEqual([dst.buf.readBigUInt64LE(0), mr.buf.readBigUInt64LE(128)], [40n, 42n]);

    // one byte past the window (still inside the MR): refused
    assert.equal((await write(s, qa, 'xy', mr.addr + 64n + 255n, mw.rkey)).status, WcStatus.REM_ACCESS_ERR);
    assert.equal(mr.buf[64 + 256], 0, 'nothing landed past the window');
    ({ qa, qb } = await pair(s));
    // before the window's start
    assert.equal((await write(s, qa, 'x', mr.addr + 63n, mw.rkey)).status, WcStatus.REM_ACCESS_ERR);
    ({ qa, qb } = await pair(s));
    // the rkey it had before the bind, and the MR's own key (no remote access of its own), name nothing
    assert.equal((await write(s, qa, 'x', mr.addr + 64n, before)).status, WcStatus.REM_ACCESS_ERR);
    ({ qa, qb } = await pair(s));
    assert.equal((await write(s, qa, 'x', mr.addr + 64n, mr.lkey)).status, WcStatus.REM_ACCESS_ERR);
    // a type 2 window serves the QP it was bound through only: another QP of the same PD is refused
    const other = await pair(s);
    assert.equal((await write(s, other.qa, 'x', mr.addr + 64n, mw.rkey)).status, WcStatus.REM_ACCESS_ERR);
    ({ qa, qb } = await pair(s));
    void qb;

    await dst.deregMr();
    await mw.dealloc();
    await mr.deregMr();
  });

  test('a read-only window refuses WRITE; a zero-based window counts its addresses from 0', async () => {
    const mr = await bindable(s);
    const ro = await s.b.pd.allocMw(MwType.TYPE_2);
    let { qa, qb } = await pair(s);
    assert.equal((await bind2(s, qb, ro, mr, 0, 128, Access.REMOTE_READ)).status, WcStatus.SUCCESS);
    assert.equal((await write(s, qa, 'x', mr.addr, ro.rkey)).status, WcStatus.REM_ACCESS_ERR);
    ({ qa, qb } = await pair(s));
    const zb = await s.b.pd.allocMw(MwType.TYPE_2);
    assert.equal((await bind2(s, qb, zb, mr, 1024, 64, Access.REMOTE_WRITE | Access.LOCAL_WRITE | Access.ZERO_BASED)).status, WcStatus.SUCCESS);
    assert.equal((await write(s, qa, 'zero based', 8n, zb.rkey)).status, WcStatus.SUCCESS);
    assert.equal(mr.buf.toString('utf8', 1032, 1042), 'zero based');
    assert.equal((await write(s, qa, 'x', 64n, zb.rkey)).status, WcStatus.REM_ACCESS_ERR);
    await ro.dealloc();
    await zb.dealloc();
    await mr.deregMr();
  });

  test('LOCAL_INV frees a type 2 window (completion LOCAL_INV); access through it then fails, and it can be bound again', async () => {
    const mr = await bindable(s);
    const mw = await s.b.pd.allocMw(MwType.TYPE_2);
    let { qa, qb } = await pair(s);
    assert.equal((await bind2(s, qb, mw, mr, 0, 512, RW)).status, WcStatus.SUCCESS);
    assert.equal((await write(s, qa, 'ok', mr.addr, mw.rkey)).status, WcStatus.SUCCESS);
    qb.postSend({ wrId: 0x1a, opcode: WrOpcode.LOCAL_INV, sendFlags: SendFlags.SIGNALED, invalidateRkey: mw.rkey });
    const [inv] = await pollN(s.b.cq, 1);
    assert.deepEqual([inv!.status, inv!.opcode, Number(inv!.wrId)], [WcStatus.SUCCESS, WcOpcode.LOCAL_INV, 0x1a]);
    assert.equal((await write(s, qa, 'no', mr.addr, mw.rkey)).status, WcStatus.REM_ACCESS_ERR);
    ({ qa, qb } = await pair(s));
    // FREE again: a new bind takes it, with a new key byte
    assert.equal((await bind2(s, qb, mw, mr, 0, 512, RW)).status, WcStatus.SUCCESS);
    assert.equal((await write(s, qa, 'again', mr.addr, mw.rkey)).status, WcStatus.SUCCESS);
    assert.equal(mr.buf.toString('utf8', 0, 5), 'again');
    // rxe's local invalidate fence: a LOCAL_INV right behind a SEND waits for the SEND's ACK; completions in order
    const abuf = await s.a.pd.allocMr(64, Access.LOCAL_WRITE);
    qa.postRecv({ wrId: 0x70, sgList: [abuf.sge()] });
    qb.postSend([
      { wrId: 0x71, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 5)] },
      { wrId: 0x72, opcode: WrOpcode.LOCAL_INV, sendFlags: SendFlags.SIGNALED, invalidateRkey: mw.rkey },
    ]);
    assert.deepEqual((await pollN(s.b.cq, 2)).map((w) => [Number(w.wrId), w.status, w.opcode]), [[0x71, WcStatus.SUCCESS, WcOpcode.SEND], [0x72, WcStatus.SUCCESS, WcOpcode.LOCAL_INV]]);
    assert.equal(Number((await pollN(s.a.cq, 1))[0]!.wrId), 0x70);
    assert.equal((await write(s, qa, 'no', mr.addr, mw.rkey)).status, WcStatus.REM_ACCESS_ERR);
    await abuf.deregMr();
    await mw.dealloc();
    await mr.deregMr();
  });

  test('SEND_WITH_INV: the receiver\'s window is invalidated before its completion, which carries WITH_INV and the key', async () => {
    const mr = await bindable(s);
    const mw = await s.b.pd.allocMw(MwType.TYPE_2);
    let { qa, qb } = await pair(s);
    assert.equal((await bind2(s, qb, mw, mr, 0, 512, RW)).status, WcStatus.SUCCESS);
    const rbuf = await s.b.pd.allocMr(64, Access.LOCAL_WRITE);
    qb.postRecv({ wrId: 0x5e, sgList: [rbuf.sge()] });
    const src = await s.a.pd.allocMr(64, Access.LOCAL_WRITE);
    src.buf.write('done with it');
    qa.postSend({ wrId: 0x51, opcode: WrOpcode.SEND_WITH_INV, sendFlags: SendFlags.SIGNALED, sgList: [src.sge(0, 12)], invalidateRkey: mw.rkey });
    const [sent] = await pollN(s.a.cq, 1);
    assert.deepEqual([sent!.status, sent!.opcode], [WcStatus.SUCCESS, WcOpcode.SEND]);
    const [got] = await pollN(s.b.cq, 1);
    assert.deepEqual([got!.status, got!.opcode, got!.byteLen, got!.wcFlags & (WcFlags.WITH_INV | WcFlags.WITH_IMM), got!.invalidatedRkey], [WcStatus.SUCCESS, WcOpcode.RECV, 12, WcFlags.WITH_INV, mw.rkey]);
    assert.equal(rbuf.buf.toString('utf8', 0, 12), 'done with it');
    assert.equal((await write(s, qa, 'no', mr.addr, mw.rkey)).status, WcStatus.REM_ACCESS_ERR);
    ({ qa, qb } = await pair(s));

    // a key the receiver cannot invalidate (an MR's; a window already free): its receive completes in error,
    // the sender sees a remote invalid request
    qb.postRecv({ wrId: 0x5f, sgList: [rbuf.sge()] });
    qa.postSend({ wrId: 0x52, opcode: WrOpcode.SEND_WITH_INV, sendFlags: SendFlags.SIGNALED, sgList: [src.sge(0, 4)], invalidateRkey: mw.rkey });
    assert.equal((await pollN(s.a.cq, 1))[0]!.status, WcStatus.REM_INV_REQ_ERR);
    const [bad] = await pollN(s.b.cq, 1);
    assert.deepEqual([Number(bad!.wrId), bad!.status], [0x5f, WcStatus.REM_INV_REQ_ERR]);
    // on UC and UD there is no IETH: the post is refused
    const uc = await s.a.pd.createQp({ sendCq: s.a.cq, recvCq: s.a.cq, qpType: QpType.UC, cap: {} });
    await connectQp(uc, s.a.ctx, { qpn: qb.qpNum, gid: s.b.ctx.queryGid(1, 0) });
    assert.throws(() => uc.postSend({ opcode: WrOpcode.SEND_WITH_INV, invalidateRkey: 1 }), (e: VerbsError) => e.code === 'EINVAL' && e.badWr === 0);
    assert.throws(() => qa.postSend({ opcode: WrOpcode.LOCAL_INV }), (e: VerbsError) => e.code === 'EINVAL' && /invalidateRkey/.test(e.message));
    await uc.destroyQp();
    await src.deregMr();
    await rbuf.deregMr();
    await mw.dealloc();
    await mr.deregMr();
  });

  test('type 1: qp.bindMw / mw.bind give a new rkey; a zero-length bind unbinds; LOCAL_INV cannot invalidate it (LOC_QP_OP_ERR)', async () => {
    const mr = await bindable(s);
    const mw = await s.b.pd.allocMw(MwType.TYPE_1);
    let { qa, qb } = await pair(s);
    const first = mw.rkey;
    const rkey = qb.bindMw(mw, { wrId: 7, sendFlags: SendFlags.SIGNALED, bindInfo: { mr, addr: mr.addr, length: 256, mwAccessFlags: Access.REMOTE_WRITE } });
    assert.deepEqual([rkey, mw.rkey], [incRkey(first), incRkey(first)]);
    const [wc] = await pollN(s.b.cq, 1);
    assert.deepEqual([wc!.status, wc!.opcode, Number(wc!.wrId)], [WcStatus.SUCCESS, WcOpcode.BIND_MW, 7]);
    // a type 1 window is not tied to a QP: any QP of the PD reaches it
    const other = await pair(s);
    assert.equal((await write(s, other.qa, 'type one', mr.addr, mw.rkey)).status, WcStatus.SUCCESS);
    assert.equal(mr.buf.toString('utf8', 0, 8), 'type one');
    // bound again (a type 1 window rebinds in place): the old rkey stops working
    const old = mw.rkey;
    mw.bind(qb, { sendFlags: SendFlags.SIGNALED, bindInfo: { mr, addr: mr.addr + 256n, length: 256, mwAccessFlags: Access.REMOTE_WRITE } });
    assert.equal((await pollN(s.b.cq, 1))[0]!.status, WcStatus.SUCCESS);
    assert.equal((await write(s, qa, 'x', mr.addr, old)).status, WcStatus.REM_ACCESS_ERR);
    ({ qa, qb } = await pair(s));
    assert.equal((await write(s, qa, 'moved', mr.addr + 256n, mw.rkey)).status, WcStatus.SUCCESS);
    // zero length: bound to nothing
    mw.bind(qb, { sendFlags: SendFlags.SIGNALED, bindInfo: { mr, addr: mr.addr, length: 0, mwAccessFlags: 0 } });
    assert.equal((await pollN(s.b.cq, 1))[0]!.status, WcStatus.SUCCESS);
    assert.equal((await write(s, qa, 'x', mr.addr + 256n, mw.rkey)).status, WcStatus.REM_ACCESS_ERR);
    ({ qa, qb } = await pair(s));
    // the library's rules (libibverbs' and librxe's): type 2 through ibv_bind_mw, a zero-based type 1 window
    const t2 = await s.b.pd.allocMw(MwType.TYPE_2);
    assert.throws(() => qb.bindMw(t2, { bindInfo: { mr, addr: mr.addr, length: 8, mwAccessFlags: Access.REMOTE_WRITE } }), (e: VerbsError) => e.code === 'EINVAL' && e.verb === 'ibv_bind_mw');
    assert.throws(() => qb.bindMw(mw, { bindInfo: { mr, addr: 0, length: 8, mwAccessFlags: Access.REMOTE_WRITE | Access.ZERO_BASED } }), (e: VerbsError) => e.code === 'EINVAL');
    // o10-37.2.26: LOCAL_INV of a type 1 window fails the WR and the QP
    qb.postSend({ wrId: 8, opcode: WrOpcode.LOCAL_INV, sendFlags: SendFlags.SIGNALED, invalidateRkey: mw.rkey });
    const [li] = await pollN(s.b.cq, 1);
    assert.deepEqual([li!.status, li!.opcode], [WcStatus.LOC_QP_OP_ERR, WcOpcode.LOCAL_INV]);
    await t2.dealloc();
    await mw.dealloc();
    await mr.deregMr();
  });

  test('binds the rules refuse complete with MW_BIND_ERR (and the QP goes to ERR)', async () => {
    const mr = await bindable(s, 1024);
    const plain = await s.b.pd.allocMr(1024, Access.LOCAL_WRITE);
    const pd2 = await s.b.ctx.allocPd();
    const foreign = await pd2.allocMw(MwType.TYPE_2);
    const cases: Array<[string, (mw: MemoryWindow) => { mr: MemoryRegion; off: number; len: number; access: number }]> = [
      ['an MR registered without MW_BIND (C10-73)', () => ({ mr: plain, off: 0, len: 64, access: Access.REMOTE_READ })],
      ['zero length for a type 2 window (o10-37.2.40)', () => ({ mr, off: 0, len: 0, access: Access.REMOTE_READ })],
      ['past the MR\'s end (C10-75)', () => ({ mr, off: 1000, len: 64, access: Access.REMOTE_READ })],
      ['access a window cannot grant', () => ({ mr, off: 0, len: 64, access: Access.MW_BIND })],
    ];
    for (const [why, c] of cases) {
      const mw = await s.b.pd.allocMw(MwType.TYPE_2);
      const { qb } = await pair(s);
      const b = c(mw);
      const wc = await bind2(s, qb, mw, b.mr, b.off, b.len, b.access);
      assert.deepEqual([wc.status, wc.opcode], [WcStatus.MW_BIND_ERR, WcOpcode.BIND_MW], why);
      await mw.dealloc();
    }
    // a window of another PD than the QP's
    {
      const { qb } = await pair(s);
      assert.equal((await bind2(s, qb, foreign, mr, 0, 64, Access.REMOTE_READ)).status, WcStatus.MW_BIND_ERR);
    }
    // a type 2 window already bound (o10-37.2.30)
    const mw = await s.b.pd.allocMw(MwType.TYPE_2);
    const { qb } = await pair(s);
    assert.equal((await bind2(s, qb, mw, mr, 0, 64, Access.REMOTE_READ)).status, WcStatus.SUCCESS);
    assert.equal((await bind2(s, qb, mw, mr, 0, 64, Access.REMOTE_READ)).status, WcStatus.MW_BIND_ERR);
    await mw.dealloc();
    await foreign.dealloc();
    await pd2.deallocPd();
    await plain.deregMr();
    await mr.deregMr();
  });

  test('await using: a PD disposes its windows before its MRs, whichever was made first (an MR with a window bound cannot go)', async () => {
    const { qb } = await pair(s);
    let mrKey = 0;
    {
      await using pd = await s.b.ctx.allocPd();
      const mw = await pd.allocMw(MwType.TYPE_1);
      const mr = await pd.allocMr(4096, Access.LOCAL_WRITE | Access.MW_BIND);
      mrKey = mr.lkey;
      const q = await pd.createQp({ sendCq: s.b.cq, recvCq: s.b.cq, qpType: QpType.RC, cap: {} });
      await connectQp(q, s.b.ctx, { qpn: qb.qpNum, gid: s.a.ctx.queryGid(1, 0) });
      q.bindMw(mw, { sendFlags: SendFlags.SIGNALED, bindInfo: { mr, addr: mr.addr, length: 64, mwAccessFlags: Access.REMOTE_READ } });
      assert.equal((await pollN(s.b.cq, 1))[0]!.status, WcStatus.SUCCESS);
    }
    assert.ok(mrKey, 'the block ran, and its disposal did not throw');
  });

  test('UC: a type 2 window bound through a UC QP takes UC WRITEs inside it and drops those outside; LOCAL_INV is RC\'s only', async () => {
    const mk = (side: Sides['a']) => side.pd.createQp({ sendCq: side.cq, recvCq: side.cq, qpType: QpType.UC, cap: { maxSendWr: 8, maxRecvWr: 8 } });
    const qa = await mk(s.a);
    const qb = await mk(s.b);
    await connectQp(qa, s.a.ctx, { qpn: qb.qpNum, gid: s.b.ctx.queryGid(1, 0) });
    await connectQp(qb, s.b.ctx, { qpn: qa.qpNum, gid: s.a.ctx.queryGid(1, 0) });
    const mr = await bindable(s);
    const mw = await s.b.pd.allocMw(MwType.TYPE_2);
    assert.equal((await bind2(s, qb, mw, mr, 512, 512, Access.REMOTE_WRITE)).status, WcStatus.SUCCESS);
    // UC: the requester completes once sent; whether it landed is seen in the memory
    assert.equal((await write(s, qa, 'outside', mr.addr, mw.rkey)).status, WcStatus.SUCCESS);
    assert.equal((await write(s, qa, 'inside', mr.addr + 512n, mw.rkey)).status, WcStatus.SUCCESS);
    for (let i = 0; i < 100 && mr.buf.toString('utf8', 512, 518) !== 'inside'; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(mr.buf.toString('utf8', 512, 518), 'inside');
    assert.equal(mr.buf[0], 0, 'the WRITE outside the window was dropped');
    assert.throws(() => qb.postSend({ opcode: WrOpcode.LOCAL_INV, invalidateRkey: mw.rkey }), (e: VerbsError) => e.code === 'EINVAL' && e.badWr === 0);
    await qa.destroyQp();
    await qb.destroyQp();
    await mw.dealloc();
    await mr.deregMr();
  });

  test('qp.wr (ibv_wr_bind_mw, ibv_wr_local_inv, ibv_wr_send_inv) posts the same work requests', async () => {
    const Ops = QpExSendOps;
    const ops = Ops.SEND | Ops.RDMA_WRITE | Ops.BIND_MW | Ops.LOCAL_INV | Ops.SEND_WITH_INV;
    const qa = await s.a.pd.createQp({ sendCq: s.a.cq, recvCq: s.a.cq, qpType: QpType.RC, cap: { maxSendWr: 8, maxRecvWr: 8 }, sendOpsFlags: ops });
    const qb = await s.b.pd.createQp({ sendCq: s.b.cq, recvCq: s.b.cq, qpType: QpType.RC, cap: { maxSendWr: 8, maxRecvWr: 8 }, sendOpsFlags: ops });
    await connectQp(qa, s.a.ctx, { qpn: qb.qpNum, gid: s.b.ctx.queryGid(1, 0) });
    await connectQp(qb, s.b.ctx, { qpn: qa.qpNum, gid: s.a.ctx.queryGid(1, 0) });
    const mr = await bindable(s);
    const mw = await s.b.pd.allocMw(MwType.TYPE_2);
    const rkey = incRkey(mw.rkey);
    qb.wr.start();
    qb.wr.wrId = 0x10;
    qb.wr.wrFlags = SendFlags.SIGNALED;
    qb.wr.bindMw(mw, rkey, { mr, addr: mr.addr, length: 1024, mwAccessFlags: Access.REMOTE_WRITE }).complete();
    assert.deepEqual((await pollN(s.b.cq, 1)).map((w) => [Number(w.wrId), w.status, w.opcode]), [[0x10, WcStatus.SUCCESS, WcOpcode.BIND_MW]]);
    // as in C, a type 2 window's owner keeps its rkey: the next bind names the window by the key it has now
    mw.rkey = rkey;
    assert.equal((await write(s, qa, 'wr api', mr.addr, rkey)).status, WcStatus.SUCCESS);
    // the peer takes it back with ibv_wr_send_inv; then it binds again and invalidates it itself with ibv_wr_local_inv
    const rbuf = await s.b.pd.allocMr(64, Access.LOCAL_WRITE);
    qb.postRecv({ wrId: 0x11, sgList: [rbuf.sge()] });
    qa.wr.start();
    qa.wr.wrFlags = SendFlags.SIGNALED;
    qa.wr.sendInv(rkey).complete();
    assert.equal((await pollN(s.a.cq, 1))[0]!.status, WcStatus.SUCCESS);
    const [got] = await pollN(s.b.cq, 1);
    assert.deepEqual([got!.status, got!.wcFlags & WcFlags.WITH_INV, got!.invalidatedRkey], [WcStatus.SUCCESS, WcFlags.WITH_INV, rkey]);
    const again = incRkey(rkey);
    qb.wr.start().bindMw(mw, again, { mr, addr: mr.addr, length: 1024, mwAccessFlags: Access.REMOTE_WRITE }).localInv(again).complete();
    assert.deepEqual((await pollN(s.b.cq, 2)).map((w) => [w.status, w.opcode]), [[WcStatus.SUCCESS, WcOpcode.BIND_MW], [WcStatus.SUCCESS, WcOpcode.LOCAL_INV]]);
    assert.equal((await write(s, qa, 'x', mr.addr, again)).status, WcStatus.REM_ACCESS_ERR);
    // a QP created without these operations refuses them, as librxe leaves them unset
    const plain = await s.b.pd.createQp({ sendCq: s.b.cq, recvCq: s.b.cq, qpType: QpType.RC, cap: {}, sendOpsFlags: Ops.SEND });
    assert.throws(() => plain.wr.start().localInv(1), { code: 'EOPNOTSUPP' });
    await plain.destroyQp();
    await rbuf.deregMr();
    await mw.dealloc();
    await mr.deregMr();
  });

  test("another context's window (another process, another user) is out of reach: SEND_WITH_INV and LOCAL_INV of its rkey fail, it keeps serving", async () => {
    const devs = getDeviceList(d.root);
    const other = await sides(s.a.ctx, await openDevice(devs[1]!, d.root));
    try {
      const mr = await other.b.pd.allocMr(4096, Access.LOCAL_WRITE | Access.MW_BIND);
      const mw = await other.b.pd.allocMw(MwType.TYPE_2);
      const theirs = await pair(other);
      assert.equal((await bind2(other, theirs.qb, mw, mr, 0, 4096, Access.REMOTE_WRITE)).status, WcStatus.SUCCESS);
      // a SEND_WITH_INV of its rkey arriving on one of our QPs
      let { qa, qb } = await pair(s);
      const rbuf = await s.b.pd.allocMr(64, Access.LOCAL_WRITE);
      qb.postRecv({ wrId: 1, sgList: [rbuf.sge()] });
      qa.postSend({ wrId: 2, opcode: WrOpcode.SEND_WITH_INV, sendFlags: SendFlags.SIGNALED, invalidateRkey: mw.rkey });
      assert.equal((await pollN(s.a.cq, 1))[0]!.status, WcStatus.REM_INV_REQ_ERR);
      assert.equal((await pollN(s.b.cq, 1))[0]!.status, WcStatus.REM_INV_REQ_ERR);
      // a LOCAL_INV of it on our QP
      ({ qa, qb } = await pair(s));
      qb.postSend({ wrId: 3, opcode: WrOpcode.LOCAL_INV, sendFlags: SendFlags.SIGNALED, invalidateRkey: mw.rkey });
      assert.equal((await pollN(s.b.cq, 1))[0]!.status, WcStatus.LOC_QP_OP_ERR);
      // and a bind of it through our QP
      ({ qa, qb } = await pair(s));
      assert.equal((await bind2(s, qb, mw, mr, 0, 64, Access.REMOTE_READ)).status, WcStatus.MW_BIND_ERR);
      // still bound, still its QP's
      assert.equal((await write(other, theirs.qa, 'still mine', mr.addr, mw.rkey)).status, WcStatus.SUCCESS);
      assert.equal(mr.buf.toString('utf8', 0, 10), 'still mine');
      await rbuf.deregMr();
    } finally {
      other.b.ctx.closeDevice();
    }
  });

  test('with a window bound: DEREG_MR is EINVAL (rxe) and DEALLOC_PD EBUSY; dealloc of the window ends its rkey, then both go', async () => {
    const pd = await s.b.ctx.allocPd();
    const mr = await pd.allocMr(4096, Access.LOCAL_WRITE | Access.MW_BIND);
    const mw = await pd.allocMw(MwType.TYPE_2);
    const qa = await s.a.pd.createQp({ sendCq: s.a.cq, recvCq: s.a.cq, qpType: QpType.RC, cap: {} });
    const qb = await pd.createQp({ sendCq: s.b.cq, recvCq: s.b.cq, qpType: QpType.RC, cap: {} });
    await connectQp(qa, s.a.ctx, { qpn: qb.qpNum, gid: s.b.ctx.queryGid(1, 0) });
    await connectQp(qb, s.b.ctx, { qpn: qa.qpNum, gid: s.a.ctx.queryGid(1, 0) });
    assert.equal((await bind2(s, qb, mw, mr, 0, 4096, RW)).status, WcStatus.SUCCESS);
    await assert.rejects(mr.deregMr(), (e: VerbsError) => e.code === 'EINVAL' && /memory window/.test(e.message));
    await assert.rejects(mr.reregMr(ReregMrFlags.CHANGE_ACCESS, { access: Access.LOCAL_WRITE }), (e: VerbsError) => e.code === 'EINVAL' && /memory windows/.test(e.message));
    await qb.destroyQp();
    await assert.rejects(pd.deallocPd(), (e: VerbsError) => e.code === 'EBUSY' && /MW rkey|MR lkey/.test(e.message));
    // the window outlives the QP it was bound through, serving no one
    await mw.dealloc();
    await mr.deregMr();
    await pd.deallocPd();
    await qa.destroyQp();
  });
});

test('across the wire (two daemons): a window reached by WRITE, then SEND_WITH_INV\'s IETH invalidates it', async () => {
  const t = await twoDaemons();
  try {
    const s = await sides(t.a, t.b);
    const { qa, qb } = await pair(s);
    const mr = await bindable(s);
    const mw = await s.b.pd.allocMw(MwType.TYPE_2);
    assert.equal((await bind2(s, qb, mw, mr, 100, 200, Access.REMOTE_WRITE)).status, WcStatus.SUCCESS);
    assert.equal((await write(s, qa, 'over udp', mr.addr + 100n, mw.rkey)).status, WcStatus.SUCCESS);
    assert.equal(mr.buf.toString('utf8', 100, 108), 'over udp');
    const rbuf = await s.b.pd.allocMr(64, Access.LOCAL_WRITE);
    qb.postRecv({ wrId: 9, sgList: [rbuf.sge()] });
    qa.postSend({ wrId: 10, opcode: WrOpcode.SEND_WITH_INV, sendFlags: SendFlags.SIGNALED, invalidateRkey: mw.rkey });
    assert.equal((await pollN(s.a.cq, 1))[0]!.status, WcStatus.SUCCESS);
    const [got] = await pollN(s.b.cq, 1);
    assert.deepEqual([got!.status, got!.byteLen, got!.wcFlags & WcFlags.WITH_INV, got!.invalidatedRkey], [WcStatus.SUCCESS, 0, WcFlags.WITH_INV, mw.rkey]);
    assert.equal((await write(s, qa, 'no', mr.addr + 100n, mw.rkey)).status, WcStatus.REM_ACCESS_ERR);
  } finally {
    await t.close();
  }
});
