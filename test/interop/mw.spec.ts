/**
 * Memory windows and invalidation against Linux rdma_rxe (run by `npm run test:interop`, see run.ts): over
 * one RC connection each way, a window bound on the memory's side (type 2 by a BIND_MW work request, type 1
 * by ibv_bind_mw) is reached by RDMA WRITE and READ from the other side; then SEND_WITH_INV (its IETH on the
 * wire) invalidates it, the receiver's completion carries IBV_WC_WITH_INV and the key, and a WRITE through
 * the key is refused (REM_ACCESS_ERR).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createConnection, type Socket } from 'node:net';
import { createInterface } from 'node:readline';
import { after, before, describe, test } from 'node:test';
import {
  Access, getDeviceList, incRkey, MwType, mtuOfBytes, openDevice, QpType, SendFlags, WcFlags, WcOpcode, WcStatus, WrOpcode,
  type CompletionQueue, type Context, type MemoryRegion, type MemoryWindow, type ProtectionDomain, type QueuePair,
} from '../../src/verbs/index.js';
import { connectQp, pollN, startDaemon, type RunningDaemon } from '../helpers.js';

const PEER = process.env.LAB_PEER ?? '';
const HOST = process.env.LAB_HOST ?? '10.77.0.1';
const skip = PEER ? false : 'LAB_PEER is not set: run through `npm run test:interop`';
const SIZE = 1 << 20;
const HALF = SIZE / 2;
const MTU = 1024;

interface Info { qpn: number; gid: string; addr: bigint }
interface Wc { wrId: number; status: number; opcode: number; byteLen: number; wcFlags: number; inv: number }

const gidText = (g: Uint8Array) => Array.from({ length: 8 }, (_, i) => ((g[2 * i]! << 8) | g[2 * i + 1]!).toString(16).padStart(4, '0')).join(':');
const gidBytes = (s: string) => Buffer.from(s.replace(/:/g, ''), 'hex');

/** The pyverbs agent in the guest (agent.py). */
class Theirs {
  info!: Info;
  private sock!: Socket;
  private lines!: AsyncIterator<string>;
  async open(): Promise<this> {
    this.sock = createConnection(18600, PEER);
    await new Promise<void>((res, rej) => this.sock.once('connect', res).once('error', rej));
    this.lines = createInterface({ input: this.sock })[Symbol.asyncIterator]();
    const r = await this.call('open', { type: 'RC', size: SIZE });
    this.info = { qpn: r.qpn, gid: r.gid, addr: BigInt(r.addr) };
    return this;
  }
  async call(cmd: string, args: Record<string, unknown> = {}): Promise<any> {
    this.sock.write(`${JSON.stringify({ ...args, cmd }, (_, v) => (typeof v === 'bigint' ? Number(v) : v))}\n`);
    const { value } = await this.lines.next();
    const r = JSON.parse(value as string);
    if (r.error) throw new Error(`rxe agent ${cmd}: ${r.error}`);
    return r;
  }
  async poll(n: number): Promise<Wc[]> {
    const r = await this.call('poll', { n, timeout: 20 });
    assert.equal(r.wcs.length, n, 'rxe: completions in time');
    return r.wcs.map((w: any) => ({ wrId: w.wr_id, status: w.status, opcode: w.opcode, byteLen: w.byte_len, wcFlags: w.wc_flags, inv: w.imm_raw }));
  }
  async close(): Promise<void> {
    await this.call('close').catch(() => {});
    this.sock.end();
  }
}

/** Our side: a PD, CQ, RC QP and a 1 MiB MR that windows may be bound to (and remote access of its own for the data). */
class Ours {
  info!: Info;
  pd!: ProtectionDomain;
  cq!: CompletionQueue;
  qp!: QueuePair;
  mr!: MemoryRegion;
  constructor(private readonly ctx: Context) {}
  async open(): Promise<this> {
    this.pd = await this.ctx.allocPd();
    this.cq = await this.ctx.createCq(64);
    this.qp = await this.pd.createQp({ sendCq: this.cq, recvCq: this.cq, qpType: QpType.RC, cap: { maxSendWr: 32, maxRecvWr: 32 } });
    this.mr = await this.pd.allocMr(SIZE, Access.LOCAL_WRITE | Access.MW_BIND);
    this.info = { qpn: this.qp.qpNum, gid: gidText(this.ctx.queryGid(1, 0)), addr: this.mr.addr };
    return this;
  }
  async poll(n: number): Promise<Wc[]> {
    return (await pollN(this.cq, n, 20000)).map((w) => ({ wrId: Number(w.wrId), status: w.status, opcode: w.opcode, byteLen: w.byteLen, wcFlags: w.wcFlags, inv: w.invalidatedRkey }));
  }
  async close(): Promise<void> {
    await this.qp.destroyQp().catch(() => {});
  }
}

async function connected(ctx: Context): Promise<{ ours: Ours; theirs: Theirs }> {
  const ours = await new Ours(ctx).open();
  const theirs = await new Theirs().open();
  await connectQp(ours.qp, ctx, { qpn: theirs.info.qpn, gid: gidBytes(theirs.info.gid) }, { mtu: mtuOfBytes(MTU) });
  await theirs.call('connect', { qpn: ours.info.qpn, gid: ours.info.gid, mtu: MTU });
  return { ours, theirs };
}

describe('memory windows and invalidation, softverbs <-> Linux rxe', { skip }, () => {
  let d: RunningDaemon;
  let ctx: Context;
  before(async () => {
    // INTEROP_PCAP=FILE: what crossed the wire, as test/fixtures/captures/ieth_rxe.pcap was taken
    d = await startDaemon(['--device', `rxe0=${HOST}`, ...(process.env.INTEROP_PCAP ? ['--pcap', process.env.INTEROP_PCAP] : [])]);
    ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
  });
  after(async () => {
    ctx?.closeDevice();
    await d?.stop();
  });

  for (const mwType of [MwType.TYPE_2, MwType.TYPE_1]) {
    test(`softverbs reaches an rxe type ${mwType} window (WRITE, READ)${mwType === MwType.TYPE_2 ? ', invalidates it with SEND_WITH_INV, then is refused' : ''}`, async () => {
      const { ours, theirs } = await connected(ctx);
      try {
        const access = Access.REMOTE_WRITE | Access.REMOTE_READ | Access.LOCAL_WRITE;
        const { rkey, status } = await theirs.call('mw', { mw_type: mwType, off: HALF, len: 8192, access });
        assert.equal(status, WcStatus.SUCCESS, 'rxe bound its window');
        const base = theirs.info.addr + BigInt(HALF);
        // WRITE 3000 bytes (3 packets at MTU 1024) through the window, READ them back through it
        const data = randomBytes(3000);
        data.copy(ours.mr.buf, 0);
        ours.qp.postSend({ wrId: 1, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [ours.mr.sge(0, 3000)], rdma: { remoteAddr: base + 100n, rkey } });
        assert.deepEqual((await ours.poll(1)).map((w) => w.status), [WcStatus.SUCCESS]);
        assert.ok(Buffer.from((await theirs.call('read', { off: HALF + 100, len: 3000 })).b64, 'base64').equals(data), 'the bytes landed in rxe\'s window');
        ours.qp.postSend({ wrId: 2, opcode: WrOpcode.RDMA_READ, sendFlags: SendFlags.SIGNALED, sgList: [ours.mr.sge(8192, 3000)], rdma: { remoteAddr: base + 100n, rkey } });
        assert.deepEqual((await ours.poll(1)).map((w) => w.status), [WcStatus.SUCCESS]);
        assert.ok(ours.mr.buf.subarray(8192, 8192 + 3000).equals(data), 'READ through the window');
        if (mwType === MwType.TYPE_1) return; // a type 1 window is not invalidated by SEND_WITH_INV (o10-37.2.26)
        await theirs.call('post_recv', { wr_id: 77, off: 0, len: 64 });
        ours.mr.buf.write('invalidate', 16384);
        ours.qp.postSend({ wrId: 3, opcode: WrOpcode.SEND_WITH_INV, sendFlags: SendFlags.SIGNALED, sgList: [ours.mr.sge(16384, 10)], invalidateRkey: rkey });
        assert.deepEqual((await ours.poll(1)).map((w) => [w.status, w.opcode]), [[WcStatus.SUCCESS, WcOpcode.SEND]]);
        const [got] = await theirs.poll(1);
        // Linux rxe 6.1 writes a user CQE's wc_flags with the kernel's enum ib_wc_flags: IB_WC_GRH (1) and
        // IB_WC_WITH_INVALIDATE (1 << 2, which libibverbs reads as IBV_WC_IP_CSUM_OK), not IBV_WC_WITH_INV
        // (1 << 3); the key is in ex as it should be. softverbs reports IBV_WC_WITH_INV (next test).
        assert.deepEqual([got!.wrId, got!.status, got!.opcode, got!.byteLen, got!.wcFlags, got!.inv >>> 0], [77, WcStatus.SUCCESS, WcOpcode.RECV, 10, 1 | (1 << 2), rkey], 'rxe\'s receive completion');
        ours.qp.postSend({ wrId: 4, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [ours.mr.sge(0, 8)], rdma: { remoteAddr: base, rkey } });
        assert.deepEqual((await ours.poll(1)).map((w) => w.status), [WcStatus.REM_ACCESS_ERR], 'the invalidated window refuses');
      } finally {
        await theirs.close();
        await ours.close();
      }
    });
  }

  test('rxe reaches a softverbs type 2 window (WRITE, READ), invalidates it with SEND_WITH_INV, then is refused', async () => {
    const { ours, theirs } = await connected(ctx);
    let mw: MemoryWindow | null = null;
    try {
      mw = await ours.pd.allocMw(MwType.TYPE_2);
      const rkey = incRkey(mw.rkey);
      ours.qp.postSend({ wrId: 0xb1, opcode: WrOpcode.BIND_MW, sendFlags: SendFlags.SIGNALED, bindMw: { mw, rkey, bindInfo: { mr: ours.mr, addr: ours.mr.addr + BigInt(HALF), length: 8192, mwAccessFlags: Access.REMOTE_WRITE | Access.REMOTE_READ | Access.LOCAL_WRITE } } });
      assert.deepEqual((await ours.poll(1)).map((w) => [w.status, w.opcode]), [[WcStatus.SUCCESS, WcOpcode.BIND_MW]]);
      mw.rkey = rkey;
      const base = ours.mr.addr + BigInt(HALF);
      const data = randomBytes(3000);
      await theirs.call('write', { off: 0, b64: data.toString('base64') });
      await theirs.call('post_send', { wr_id: 1, opcode: 'RDMA_WRITE', off: 0, len: 3000, raddr: base + 100n, rkey });
      assert.deepEqual((await theirs.poll(1)).map((w) => w.status), [WcStatus.SUCCESS]);
      assert.ok(ours.mr.buf.subarray(HALF + 100, HALF + 3100).equals(data), 'rxe\'s bytes landed in our window');
      await theirs.call('post_send', { wr_id: 2, opcode: 'RDMA_READ', off: 8192, len: 3000, raddr: base + 100n, rkey });
      assert.deepEqual((await theirs.poll(1)).map((w) => w.status), [WcStatus.SUCCESS]);
      assert.equal((await theirs.call('read', { off: 8192, len: 3000 })).b64, data.toString('base64'), 'rxe READ through our window');

      ours.qp.postRecv({ wrId: 77, sgList: [ours.mr.sge(0, 64)] });
      await theirs.call('post_send', { wr_id: 3, opcode: 'SEND_WITH_INV', off: 0, len: 10, inv: rkey });
      assert.deepEqual((await theirs.poll(1)).map((w) => w.status), [WcStatus.SUCCESS]);
      const [got] = await ours.poll(1);
      assert.deepEqual([got!.wrId, got!.status, got!.opcode, got!.byteLen, got!.wcFlags & WcFlags.WITH_INV, got!.inv], [77, WcStatus.SUCCESS, WcOpcode.RECV, 10, WcFlags.WITH_INV, rkey], 'our receive completion');
      await theirs.call('post_send', { wr_id: 4, opcode: 'RDMA_WRITE', off: 0, len: 8, raddr: base, rkey });
      assert.deepEqual((await theirs.poll(1)).map((w) => w.status), [WcStatus.REM_ACCESS_ERR], 'our invalidated window refuses rxe');
    } finally {
      await theirs.close();
      await ours.close();
      await mw?.dealloc().catch(() => {});
    }
  });

  test('past the window but inside its MR: Linux rxe 6.1 takes the WRITE (it bounds by the MR), softverbs refuses it (by the window)', async () => {
    {
      const { ours, theirs } = await connected(ctx);
      try {
        const { rkey, status } = await theirs.call('mw', { mw_type: MwType.TYPE_2, off: HALF, len: 4096, access: Access.REMOTE_WRITE | Access.LOCAL_WRITE });
        assert.equal(status, WcStatus.SUCCESS);
        ours.mr.buf.write('past the window', 0);
        ours.qp.postSend({ wrId: 1, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [ours.mr.sge(0, 15)], rdma: { remoteAddr: theirs.info.addr + BigInt(HALF + 4096), rkey } });
        // rxe 6.1's check_rkey tests a window's request against the MR under it only (mr_check_range)
        assert.deepEqual((await ours.poll(1)).map((w) => w.status), [WcStatus.SUCCESS]);
        assert.equal(Buffer.from((await theirs.call('read', { off: HALF + 4096, len: 15 })).b64, 'base64').toString(), 'past the window');
      } finally {
        await theirs.close();
        await ours.close();
      }
    }
    const { ours, theirs } = await connected(ctx);
    const mw = await ours.pd.allocMw(MwType.TYPE_2);
    try {
      const rkey = incRkey(mw.rkey);
      ours.qp.postSend({ wrId: 0xb1, opcode: WrOpcode.BIND_MW, sendFlags: SendFlags.SIGNALED, bindMw: { mw, rkey, bindInfo: { mr: ours.mr, addr: ours.mr.addr + BigInt(HALF), length: 4096, mwAccessFlags: Access.REMOTE_WRITE | Access.LOCAL_WRITE } } });
      assert.deepEqual((await ours.poll(1)).map((w) => w.status), [WcStatus.SUCCESS]);
      await theirs.call('post_send', { wr_id: 1, opcode: 'RDMA_WRITE', off: 0, len: 15, raddr: ours.mr.addr + BigInt(HALF + 4096), rkey });
      assert.deepEqual((await theirs.poll(1)).map((w) => w.status), [WcStatus.REM_ACCESS_ERR]);
      assert.equal(ours.mr.buf[HALF + 4096], 0, 'nothing landed past our window');
    } finally {
      await theirs.close();
      await ours.close();
      await mw.dealloc().catch(() => {});
    }
  });
});
