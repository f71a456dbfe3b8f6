/**
 * The library as a TypeScript user meets it: enum types that refuse wrong
 * values at compile time, Node-style errors that say what was wrong and
 * where the call was made, `await using`, `cq.completions()`, JSON-safe
 * values, and no leak of objects or memfds behind the user's back.
 */
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { after, before, describe, test } from 'node:test';
import {
  Access, EventType, getDeviceList, gidString, nextCompletion, openDevice, parseGidString, QpAttrMask as A, QpState, QpType, SendFlags, VerbsError, WcOpcode, WcStatus,
  WrOpcode, type AddressHandle, type CompletionChannel, type CompletionQueue, type Context, type Device, type MemoryRegion, type ProtectionDomain, type QpAttr,
  type RecvWr, type SendWr, type SharedReceiveQueue,
} from '../../src/verbs/index.js';
import { rmSync } from 'node:fs';
import { A2, connectQp, DIST, mgmt, startDaemon, type RunningDaemon } from '../helpers.js';

let d: RunningDaemon;
let dev: Device;
before(async () => {
  d = await startDaemon();
  dev = getDeviceList(d.root)[0]!;
});
after(async () => {
  await d.stop();
});

const myRows = async () => ((await mgmt(dev.devPath, 'restrack')) as Array<{ pid: number; type: string }>).filter((r) => r.pid === process.pid);

/** One of each object a program makes on a context before its QPs. */
interface Objects { channel: CompletionChannel; cq: CompletionQueue; pd: ProtectionDomain; srq: SharedReceiveQueue; mr: MemoryRegion; ah: AddressHandle }

/**
 * `body` with the objects, made on `ctx` (the CQ on the channel; the SRQ, MR and AH on the PD) and each held by
 * `await using`: when body ends, however it ends, they go in reverse order.
 */
async function withObjects(ctx: Context, body: (o: Objects) => Promise<void>): Promise<void> {
  await using channel = await ctx.createCompChannel();
  await using cq = await ctx.createCq(8, channel);
  await using pd = await ctx.allocPd();
  await using srq = await pd.createSrq({ maxWr: 4, maxSge: 1 });
  await using mr = await pd.allocMr(4096, Access.LOCAL_WRITE);
  await using ah = await pd.createAh({ grh: { dgid: ctx.queryGid(1, 0) } });
  await body({ channel, cq, pd, srq, mr, ah });
}

describe('types', () => {
  test('enum values are types: a byte count where an ibv_mtu belongs does not compile', () => {
    // @ts-expect-error 4096 is not an ibv_mtu (Mtu.MTU_4096 is 5)
    const wrong: QpAttr = { pathMtu: 4096 };
    const right: QpAttr = { pathMtu: 5 };
    // @ts-expect-error QP types are 2, 3, 4, …
    const t: QpType = 7;
    assert.ok(wrong && right && t);
  });

  test('a work completion\'s fields are typed with the enums', async () => {
    await using ctx = await openDevice(dev, d.root);
    await using pd = await ctx.allocPd();
    await using cq = await ctx.createCq(4);
    await using qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
    await using mr = await pd.allocMr(64, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
    await connectQp(qp, ctx, { qpn: qp.qpNum, gid: ctx.queryGid(1, 0) });
    qp.postSend({ wrId: 7n, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 8)], rdma: { remoteAddr: mr.addr + 32n, rkey: mr.rkey } });
    let wcs = cq.pollCq(1);
    for (let i = 0; i < 1000 && wcs.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 1));
      wcs = cq.pollCq(1);
    }
    const status: WcStatus = wcs[0]!.status;
    const opcode: WcOpcode = wcs[0]!.opcode;
    assert.equal(status, WcStatus.SUCCESS);
    assert.equal(opcode, WcOpcode.RDMA_WRITE);
  });
});

describe('errors', () => {
  test('VerbsError has Node\'s code and errno, the verb, and a stack through the caller\'s await', async () => {
    await using ctx = await openDevice(dev, d.root);
    async function theCallersFunction(c: Context) {
      await c.queryPort(3);
    }
    const e = await theCallersFunction(ctx).then(() => null, (x: unknown) => x);
    assert.ok(e instanceof VerbsError);
    assert.equal(e.code, 'EINVAL');
    assert.equal(e.errno, -22);
    assert.equal(e.verb, 'ibv_query_port');
    assert.match(e.message, /^ibv_query_port: EINVAL: QUERY_PORT: port 3 does not exist/);
    assert.match(e.stack!, /theCallersFunction/, e.stack);
  });

  test('a refused modify_qp names the attributes missing from the mask', async () => {
    await using ctx = await openDevice(dev, d.root);
    await using pd = await ctx.allocPd();
    await using cq = await ctx.createCq(4);
    await using qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
    await assert.rejects(qp.modifyQp({ qpState: QpState.INIT, pkeyIndex: 0, portNum: 1 }, A.STATE | A.PKEY_INDEX | A.PORT), {
      code: 'EINVAL', message: /RESET->INIT needs ACCESS_FLAGS \(qpAccessFlags\) in attr_mask/,
    });
  });

  test('a bad work request: badWr is its index, wr the request itself; the ones before it are posted', async () => {
    await using ctx = await openDevice(dev, d.root);
    await using pd = await ctx.allocPd();
    await using cq = await ctx.createCq(4);
    await using qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxRecvWr: 4, maxRecvSge: 1 } });
    await qp.modifyQp({ qpState: QpState.INIT, pkeyIndex: 0, portNum: 1, qpAccessFlags: 0 }, A.STATE | A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS);
    const bad = { wrId: 2n, sgList: [{ addr: 0n, length: 1, lkey: 1 }, { addr: 0n, length: 1, lkey: 1 }] };
    assert.throws(() => qp.postRecv([{ wrId: 1n }, bad]), (e: VerbsError) => e.code === 'EINVAL' && e.badWr === 1 && e.wr === bad && /work request 1: 2 SGEs > max_recv_sge 1/.test(e.message));
  });

  test('every post error names the WR not posted: a QP not yet in RTS, in RESET, destroyed, or a WR that cannot be written', async () => {
    await using ctx = await openDevice(dev, d.root);
    await using pd = await ctx.allocPd();
    await using cq = await ctx.createCq(8);
    await using mr = await pd.allocMr(64, Access.LOCAL_WRITE);
    const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 4, maxRecvWr: 4 } });
    const is = (wr: unknown, i: number, code: string, message: RegExp) => (e: VerbsError) => {
      assert.ok(e instanceof VerbsError, String(e));
      assert.equal(e.code, code);
      assert.equal(e.badWr, i);
      assert.equal(e.wr, wr, 'wr is the very request');
      assert.match(e.message, message);
      return true;
    };
    const send: SendWr = { wrId: 1n, opcode: WrOpcode.SEND, sgList: [mr.sge(0, 8)] };
    const recv: RecvWr = { wrId: 2n, sgList: [mr.sge(8, 8)] };
    assert.throws(() => qp.postRecv(recv), is(recv, 0, 'EINVAL', /the QP is in RESET; receives are posted from INIT on/));
    assert.throws(() => qp.postRecv([recv, { wrId: 3n }]), is(recv, 0, 'EINVAL', /the QP is in RESET/));
    await connectQp(qp, ctx, { qpn: qp.qpNum, gid: ctx.queryGid(1, 0) }, { rtrOnly: true });
    assert.throws(() => qp.postSend(send), is(send, 0, 'EINVAL', /the QP is in RTR; sends are posted from RTS on/));
    assert.throws(() => qp.postSend([send]), is(send, 0, 'EINVAL', /the QP is in RTR/));
    await qp.modifyQp({ qpState: QpState.RTS, sqPsn: 0, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 1 }, A.STATE | A.SQ_PSN | A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.MAX_QP_RD_ATOMIC);
    // fields that cannot be written at all: EINVAL for that WR, not a TypeError or RangeError from deep inside
    const badId = { wrId: 1.5, opcode: WrOpcode.SEND, sgList: [mr.sge(0, 8)] } as SendWr;
    assert.throws(() => qp.postSend([send, badId]), is(badId, 1, 'EINVAL', /work request 1: malformed: .*1\.5/));
    const badSge = { wrId: 4n, sgList: [{ addr: 'here', length: 8, lkey: mr.lkey }] } as unknown as RecvWr;
    assert.throws(() => qp.postRecv([recv, badSge]), is(badSge, 1, 'EINVAL', /work request 1: malformed/));
    await qp.destroyQp();
    assert.throws(() => qp.postSend(send), is(send, 0, 'EINVAL', /the QP is destroyed/));
    assert.throws(() => qp.postRecv([recv]), is(recv, 0, 'EINVAL', /the QP is destroyed/));
  });

  test('a destroy refused because something still uses the object names what does', async () => {
    await using ctx = await openDevice(dev, d.root);
    await using channel = await ctx.createCompChannel();
    await using cq = await ctx.createCq(4, channel);
    await using pd = await ctx.allocPd();
    await using mr = await pd.allocMr(64, Access.LOCAL_WRITE);
    await using srq = await pd.createSrq({ maxWr: 4, maxSge: 1 });
    await using qp = await pd.createQp({ sendCq: cq, recvCq: cq, srq, qpType: QpType.RC, cap: {} });
    const lkey = `0x${mr.lkey.toString(16)}`;
    await assert.rejects(cq.destroyCq(), { code: 'EBUSY', message: new RegExp(`^ibv_destroy_cq: EBUSY: CQ \\d+ is still used by QP ${qp.qpNum}: destroy it first`) });
    await assert.rejects(srq.destroySrq(), { code: 'EBUSY', message: new RegExp(`^ibv_destroy_srq: EBUSY: SRQ ${srq.srqNum} is still used by QP ${qp.qpNum}: destroy it first`) });
    await assert.rejects(pd.deallocPd(), { code: 'EBUSY', message: new RegExp(`^ibv_dealloc_pd: EBUSY: PD \\d+ is still used by MR lkey ${lkey}, SRQ ${srq.srqNum} and QP ${qp.qpNum}: destroy them first`) });
    await assert.rejects(channel.destroyCompChannel(), { code: 'EBUSY', message: /^ibv_destroy_comp_channel: EBUSY: the channel is still used by CQ \d+: destroy it first/ });
  });

  test('openDevice says why there is no device: nothing ever ran under the root, the daemon stopped, or which devices there are', async () => {
    const nowhere = join(DIST, 'no-such-root');
    await assert.rejects(openDevice('rxe0', nowhere), { code: 'ENODEV', message: new RegExp(`no device rxe0: no softverbsd serves ${nowhere} \\(it does not exist\\)`) });
    await assert.rejects(openDevice('mlx5_0', d.root), { code: 'ENODEV', message: new RegExp(`no device mlx5_0 under ${d.root}; devices there: rxe0`) });
    // a daemon killed hard leaves its tree behind: the message says the daemon has stopped
    const killed = await startDaemon(['--device', `rxe0=${A2}`], { keepRoot: true });
    killed.proc.kill('SIGKILL');
    await new Promise((r) => killed.proc.once('exit', r));
    await assert.rejects(openDevice('rxe0', killed.root), { code: 'ENODEV', message: /no running softverbsd serves .* \(its daemon has stopped\)/ });
    rmSync(killed.root, { recursive: true, force: true });
  });
});

describe('lifetimes', () => {
  test('await using closes a context and destroys its objects in reverse order; the daemon holds nothing of ours afterwards', async () => {
    {
      await using ctx = await openDevice(dev, d.root);
      await withObjects(ctx, async ({ channel, cq, pd, srq, mr, ah }) => {
        await using qp = await pd.createQp({ sendCq: cq, recvCq: cq, srq, qpType: QpType.RC, cap: {} });
        assert.ok(channel && mr && ah && qp);
        assert.equal((await myRows()).length, 7, JSON.stringify(await myRows()));
      });
    }
    assert.deepEqual(await myRows(), []);
  });

  test('disposing a CQ, PD or SRQ first destroys what still uses it, so the order of await using does not matter', async () => {
    await using ctx = await openDevice(dev, d.root);
    {
      await using cq = await ctx.createCq(8);
      await using pd = await ctx.allocPd();
      // created without await using: the PD's and the CQ's disposal take them
      const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
      await pd.allocMr(4096, Access.LOCAL_WRITE);
      await pd.createAh({ grh: { dgid: ctx.queryGid(1, 0) } });
      await pd.createQp({ sendCq: cq, recvCq: cq, srq: await pd.createSrq({ maxWr: 4, maxSge: 1 }), qpType: QpType.RC, cap: {} });
      assert.equal((await myRows()).length, 7, JSON.stringify(await myRows()));
      await qp.destroyQp();
    }
    assert.deepEqual(await myRows(), []);
  });

  test('the daemon killed mid-program: await using still releases everything here, without a throw; DEVICE_FATAL and EIO say the device is gone', { timeout: 30_000 }, async () => {
    const rings = () => readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => /memfd:ibv_create_(cq|qp|srq) /.test(l)).length;
    const sockets = () => readdirSync('/proc/self/fd').filter((f) => {
      try {
        return readlinkSync(`/proc/self/fd/${f}`).startsWith('socket:');
      } catch {
        return false;
      }
    }).length;
    const ringsBefore = rings();
    const socketsBefore = sockets();
    const own = await startDaemon(['--device', `rxe0=${A2}`]);
    const seen: string[] = [];
    const program = async () => {
      await using ctx = await openDevice(getDeviceList(own.root)[0]!, own.root);
      await withObjects(ctx, async ({ cq, pd, srq, mr, ah }) => {
        await using qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
        await using ud = await pd.createQp({ sendCq: cq, recvCq: cq, srq, qpType: QpType.UD, cap: {} });
        await connectQp(qp, ctx, { qpn: qp.qpNum, gid: ctx.queryGid(1, 0) });
        assert.ok(ah && ud && rings() >= ringsBefore + 4);
        const fatal = ctx.getAsyncEvent();
        const exited = new Promise((r) => own.proc.once('exit', r));
        own.proc.kill('SIGKILL');
        const ev = await fatal;
        seen.push(`event ${ev?.eventType} ${String(ev?.element)}`);
        await exited;
        await assert.rejects(ctx.allocPd(), { code: 'EIO', message: /^ibv_alloc_pd: EIO: the daemon connection is lost \(softverbsd \(pid \d+\) is gone\)/ });
        const send: SendWr = { wrId: 1n, opcode: WrOpcode.SEND, sgList: [mr.sge(0, 8)] };
        assert.throws(() => qp.postSend(send), (e: VerbsError) => e.code === 'EIO' && e.badWr === 0 && e.wr === send);
        seen.push('unwinding');
      });
    };
    await program();
    assert.deepEqual(seen, [`event ${EventType.DEVICE_FATAL} 0`, 'unwinding']);
    assert.equal(rings(), ringsBefore, 'every ring unmapped');
    await own.stop();
    assert.equal(sockets(), socketsBefore, 'every connection to the daemon closed');
  });

  test('cq.completions(): arm, wait, poll, acknowledge; two CQs on one channel each get their own', async () => {
    await using ctx = await openDevice(dev, d.root);
    await using channel = await ctx.createCompChannel();
    await using scq = await ctx.createCq(8, channel);
    await using rcq = await ctx.createCq(8, channel);
    await using pd = await ctx.allocPd();
    await using mr = await pd.allocMr(4096, Access.LOCAL_WRITE);
    await using a = await pd.createQp({ sendCq: scq, recvCq: scq, qpType: QpType.RC, cap: { maxSendWr: 4, maxRecvWr: 4 } });
    await using b = await pd.createQp({ sendCq: rcq, recvCq: rcq, qpType: QpType.RC, cap: { maxSendWr: 4, maxRecvWr: 4 } });
    await connectQp(a, ctx, { qpn: b.qpNum, gid: ctx.queryGid(1, 0) });
    await connectQp(b, ctx, { qpn: a.qpNum, gid: ctx.queryGid(1, 0) });
    const received = (async () => {
      const got = [];
      for await (const wc of rcq.completions()) {
        got.push(wc);
        if (got.length === 3) break;
      }
      return got;
    })();
    const sent = (async () => {
      const got = [];
      for await (const wc of scq.completions()) {
        got.push(wc);
        if (got.length === 3) break;
      }
      return got;
    })();
    for (let i = 0; i < 3; i++) b.postRecv({ wrId: BigInt(100 + i), sgList: [mr.sge(1024 + i * 64, 64)] });
    for (let i = 0; i < 3; i++) {
      await new Promise((r) => setTimeout(r, 5)); // each completion finds the CQ armed and waits for its event
      a.postSend({ wrId: BigInt(i), opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 8)] });
    }
    assert.deepEqual((await received).map((w) => [w.wrId, w.opcode, w.status]), [[100n, WcOpcode.RECV, 0], [101n, WcOpcode.RECV, 0], [102n, WcOpcode.RECV, 0]]);
    assert.deepEqual((await sent).map((w) => w.wrId), [0n, 1n, 2n]);
    assert.ok(rcq.eventsUnacked === 0 && scq.eventsUnacked === 0, 'every event acknowledged');
    const noChannel = await ctx.createCq(1);
    await assert.rejects(noChannel.completions().next(), { code: 'EINVAL', message: /no completion channel/ });
    await noChannel.destroyCq();
  });

  test('destroyed objects leave the context\'s map; their rings are not touched again', async () => {
    await using ctx = await openDevice(dev, d.root);
    const map = (ctx as unknown as { byUserHandle: Map<bigint, unknown> }).byUserHandle;
    await using pd = await ctx.allocPd();
    for (let i = 0; i < 50; i++) {
      const cq = await ctx.createCq(4);
      const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.UD, cap: {} });
      await qp.destroyQp();
      await cq.destroyCq();
      assert.throws(() => cq.pollCq(1), { code: 'EINVAL', message: /the CQ is destroyed/ });
      assert.throws(() => qp.postRecv({ wrId: 1n }), { code: 'EINVAL', message: /the QP is destroyed/ });
    }
    assert.equal(map.size, 0);
  });

  test('buffers from allocBuffer give their mapping and memfd back once collected', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const fds = () => readdirSync('/proc/self/fd').length;
    await using ctx = await openDevice(dev, d.root);
    const before = fds();
    (() => {
      for (let i = 0; i < 200; i++) ctx.allocBuffer(4096)[0] = i;
    })();
    assert.ok(fds() >= before + 200);
    for (let i = 0; i < 20 && fds() > before + 10; i++) {
      gc();
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(fds() <= before + 10, `${fds() - before} memfds still open`);
  });
});

describe('the package entry', () => {
  test("what the library's declarations name is exported from 'softverbs'", async () => {
    // by the package's own name, as a user imports it (Node resolves a package's name from inside it through "exports")
    const entry: string = 'softverbs';
    const pkg = (await import(entry)) as Record<string, unknown>;
    assert.equal(pkg.nextCompletion, nextCompletion);
    assert.equal(typeof pkg.qpStateName, 'function');
  });
});

describe('values', () => {
  test('an MR serializes to JSON (its address as a decimal string); GIDs have a text form both ways', async () => {
    await using ctx = await openDevice(dev, d.root);
    await using pd = await ctx.allocPd();
    await using mr = await pd.allocMr(4096, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
    const j = JSON.parse(JSON.stringify(mr)) as { addr: string; rkey: number; length: number };
    assert.equal(BigInt(j.addr), mr.addr);
    assert.equal(j.rkey, mr.rkey);
    assert.equal(j.length, 4096);
    const gid = ctx.queryGid(1, 0);
    const text = gidString(gid);
    assert.match(text, /^0000:0000:0000:0000:0000:ffff:[0-9a-f]{4}:[0-9a-f]{4}$/);
    assert.deepEqual(parseGidString(text), gid);
    assert.equal(parseGidString('not a gid'), null);
  });
});
