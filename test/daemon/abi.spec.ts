/**
 * The command ABI from the outside: raw frames on the device socket, every
 * malformed case with the kernel's errno, and a seeded fuzz run after which
 * the daemon still serves a normal client and tracks nothing of the fuzzer.
 */
import assert from 'node:assert/strict';
import { connect, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { constants } from 'node:os';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { layout, unpack } from '../../src/abi/layout.js';
import * as U from '../../src/abi/uverbs.js';
import { allocShared } from '../../src/verbs/memory.js';
import { exchangePath, putMemfd } from '../../src/verbs/fd-exchange.js';
import { xorshift32 } from '../../src/common/rng.js';
import { Access, getDeviceList, openDevice, QpType, ReregMrFlags, SrqAttrMask, WrOpcode, SendFlags } from '../../src/verbs/index.js';
import { assertServing, connectQp, mgmt, pollN, startDaemon, type RunningDaemon } from '../helpers.js';

const E = constants.errno;
let d: RunningDaemon;
let devPath: string;
before(async () => {
  d = await startDaemon();
  devPath = getDeviceList(d.root)[0]!.devPath;
});
after(async () => {
  await d.stop();
});

/** A raw uverbs connection: frames in, (status, body) out, in order. */
class Raw {
  private buf = Buffer.alloc(0);
  private waiting: Array<(r: { status: number; body: Buffer } | null) => void> = [];
  closed = false;
  private constructor(readonly s: Socket) {
    s.on('data', (d) => {
      this.buf = Buffer.concat([this.buf, d]);
      while (this.buf.length >= 8 && this.buf.length >= 8 + this.buf.readUInt32LE(4)) {
        const n = this.buf.readUInt32LE(4);
        const r = { status: this.buf.readInt32LE(0), body: this.buf.subarray(8, 8 + n) };
        this.buf = this.buf.subarray(8 + n);
        this.waiting.shift()?.(r);
      }
    });
    s.on('close', () => {
      this.closed = true;
      for (const w of this.waiting.splice(0)) w(null);
    });
    s.on('error', () => {});
  }
  static open(): Promise<Raw> {
    return new Promise((res, rej) => {
      const s = connect(devPath, () => res(new Raw(s)));
      s.once('error', rej);
    });
  }
  /** Sends raw bytes and waits for one reply (null if the daemon closed the connection). */
  send(b: Buffer): Promise<{ status: number; body: Buffer } | null> {
    return new Promise((r) => {
      if (this.closed) return r(null);
      this.waiting.push(r);
      this.s.write(b);
    });
  }
  cmd(cmd: number, req: Record<string, any> = {}, udata?: Record<string, any>) {
    return this.send(U.frame(U.COMMANDS.get(cmd)!, req, udata as never));
  }
  close() {
    this.s.destroy();
  }
}

/** A raw connection with its context; `key` names the context on the descriptor exchange. */
async function ctxRaw(): Promise<Raw & { key: number }> {
  const r = await Raw.open();
  const g = await r.send(U.frame(U.Spec.GET_CONTEXT, {}, undefined, layout(U.SV_GET_CONTEXT_RESP).size));
  assert.equal(g!.status, 0);
  return Object.assign(r, { key: unpack(U.SV_GET_CONTEXT_RESP, g!.body, layout(U.GET_CONTEXT_RESP).size).fd_key });
}

/** Hands a memfd to the context `r` holds (PUT_MEMFD): its id. */
const put = (r: { key: number }, fd: number) => putMemfd(exchangePath(d.root, 'test'), r.key, fd, 'test');

function hdr(cmd: number, inWords: number, outWords: number, total = inWords * 4): Buffer {
  const b = Buffer.alloc(Math.max(total, 8));
  b.writeUInt32LE(cmd, 0);
  b.writeUInt16LE(inWords, 4);
  b.writeUInt16LE(outWords, 6);
  return b;
}

describe('every command round-trips through the library', () => {
  test('query, PD, AH, MR (reg/rereg/dereg), channel, CQ (create/resize/notify/destroy), QP (create/modify/query/destroy), POST_SEND, SRQ', async () => {
    const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
    try {
      const dev = await ctx.queryDevice();
      assert.equal(dev.vendorId, 0xffffff);
      assert.equal(dev.physPortCnt, 1);
      assert.equal(dev.atomicCap, 1);
      const port = await ctx.queryPort(1);
      assert.deepEqual([port.state, port.activeMtu, port.linkLayer], [4, 5, 2]);
      const pd = await ctx.allocPd();
      const ah = await pd.createAh({ grh: { dgid: ctx.queryGid(1, 0) } });
      const mr = await pd.allocMr(8192, Access.LOCAL_WRITE);
      const oldKey = mr.lkey;
      await mr.reregMr(ReregMrFlags.CHANGE_ACCESS, { access: Access.LOCAL_WRITE | Access.REMOTE_READ });
      assert.notEqual(mr.lkey, oldKey, 'rereg hands out a new key');
      await mr.reregMr(ReregMrFlags.CHANGE_TRANSLATION, { buf: ctx.allocBuffer(20000) });
      assert.equal(mr.length, 20000);
      const ch = await ctx.createCompChannel();
      const cq = await ctx.createCq(10, ch);
      assert.equal(cq.cqe, 15);
      await cq.resizeCq(100);
      assert.equal(cq.cqe, 127);
      const srq = await pd.createSrq({ maxWr: 16, maxSge: 2, srqLimit: 0 });
      await srq.modifySrq({ srqLimit: 4 }, SrqAttrMask.LIMIT); // armed; fires when a dequeue leaves fewer than 4
      assert.deepEqual(await srq.querySrq(), { maxWr: 16, maxSge: 2, srqLimit: 4 });
      const qp = await pd.createQp({ sendCq: cq, recvCq: cq, srq, qpType: QpType.RC, cap: { maxSendWr: 5, maxSendSge: 2, maxInlineData: 100 } });
      assert.deepEqual(qp.cap, { maxSendWr: 8, maxRecvWr: 0, maxSendSge: 2, maxRecvSge: 0, maxInlineData: 112 });
      const qp2 = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
      await connectQp(qp, ctx, { qpn: qp2.qpNum, gid: ctx.queryGid(1, 0) }, { timeout: 3 });
      await connectQp(qp2, ctx, { qpn: qp.qpNum, gid: ctx.queryGid(1, 0) });
      const q = await qp.queryQp();
      assert.deepEqual([q.qpState, q.destQpNum, q.timeout, q.retryCnt, q.maxDestRdAtomic, q.pathMtu], [3, qp2.qpNum, 3, 7, 16, 5]);
      const m2 = await pd.allocMr(64, Access.LOCAL_WRITE);
      srq.postSrqRecv({ wrId: 5, sgList: [m2.sge()] });
      qp2.postSend({ wrId: 9, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [m2.sge(0, 4)] });
      const wcs = await pollN(cq, 2);
      assert.deepEqual(wcs.map((w) => w.wrId).sort(), [5n, 9n]);
      // raw REQ_NOTIFY_CQ on this context's command socket goes through the same handler table
      await ctx.command('ibv_req_notify_cq', U.Spec.REQ_NOTIFY_CQ, { cq_handle: cq.handle, solicited_only: 0 });
      await assert.rejects(pd.deallocPd(), { code: 'EBUSY' });
      await assert.rejects(cq.destroyCq(), { code: 'EBUSY' });
      // the daemon's own refusal (what a client that does not check first sees) names the users too
      await assert.rejects(ctx.command('ibv_dealloc_pd', U.Spec.DEALLOC_PD, { pd_handle: pd.handle }), {
        code: 'EBUSY',
        message: new RegExp(`DEALLOC_PD: PD handle ${pd.handle} is still used by AH handle \\d+, MR lkey ${mr.lkey}, SRQ ${srq.srqNum}, QP ${qp.qpNum}, QP ${qp2.qpNum} and MR lkey ${m2.lkey}: destroy them first`),
      });
      await assert.rejects(ctx.command('ibv_destroy_cq', U.Spec.DESTROY_CQ, { cq_handle: cq.handle }), {
        code: 'EBUSY',
        message: new RegExp(`DESTROY_CQ: CQ handle ${cq.handle} is still used by QP ${qp.qpNum} and QP ${qp2.qpNum}: destroy them first`),
      });
      await qp.destroyQp();
      await qp2.destroyQp();
      await srq.destroySrq();
      const counts = await cq.destroyCq();
      assert.equal(counts.compEventsReported, 0);
      await ah.destroyAh();
      await mr.deregMr();
      await m2.deregMr();
      await pd.deallocPd();
      ch.destroyCompChannel();
    } finally {
      ctx.closeDevice();
    }
  });
});

describe('malformed frames get the kernel errno and the daemon keeps serving', () => {
  test('errors carry the reason: the VerbsError names the verb, the errno and what was wrong', async () => {
    const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
    await assert.rejects(ctx.queryPort(3), (e: Error & { code: string }) => e.code === 'EINVAL' && /ibv_query_port: EINVAL: QUERY_PORT: port 3 does not exist/.test(e.message));
    ctx.closeDevice();
  });

  test('a kernel side speaking another uverbs ABI, or a device another driver ABI, is refused cleanly', async () => {
    const dev = getDeviceList(d.root)[0]!;
    const uverbs = join(d.root, 'sys/class/infiniband_verbs', 'abi_version');
    const driver = join(d.root, 'sys/class/infiniband_verbs', dev.devName, 'abi_version');
    writeFileSync(uverbs, '7\n');
    try {
      await assert.rejects(openDevice(dev, d.root), (e: Error & { code: string }) => e.code === 'ENOSYS' && /speaks uverbs ABI version 7, this library speaks 6/.test(e.message));
    } finally {
      writeFileSync(uverbs, '6\n');
    }
    writeFileSync(driver, '6\n');
    try {
      await assert.rejects(openDevice(dev, d.root), (e: Error & { code: string }) => e.code === 'ENOSYS' && /rxe0 speaks driver ABI version 6, this library speaks 2/.test(e.message));
    } finally {
      writeFileSync(driver, '2\n');
    }
    (await openDevice(dev, d.root)).closeDevice();
  });

  test('any command before GET_CONTEXT is EINVAL; GET_CONTEXT twice is EINVAL', async () => {
    const r = await Raw.open();
    assert.equal((await r.cmd(U.Cmd.ALLOC_PD))!.status, -E.EINVAL);
    assert.equal((await r.cmd(U.Cmd.GET_CONTEXT))!.status, 0);
    assert.equal((await r.cmd(U.Cmd.GET_CONTEXT))!.status, -E.EINVAL);
    r.close();
  });

  test('in_words below the command struct and out_words below the response are ENOSPC; in_words*4 < 8 closes the connection', async () => {
    const r = await ctxRaw();
    assert.equal((await r.send(hdr(U.Cmd.REG_MR, 4, 3)))!.status, -E.ENOSPC);
    const f = U.frame(U.Spec.ALLOC_PD, {});
    f.writeUInt16LE(0, 6);
    assert.equal((await r.send(f))!.status, -E.ENOSPC);
    assert.equal(await r.send(hdr(U.Cmd.ALLOC_PD, 1, 1, 8)), null, 'framing garbage closes the connection');
    assert.ok(r.closed);
  });

  test('trailing bytes the command does not define: zero is accepted, anything else EINVAL', async () => {
    const r = await ctxRaw();
    const base = U.frame(U.Spec.ALLOC_PD, {});
    const longer = Buffer.concat([base, Buffer.alloc(8)]);
    longer.writeUInt16LE(longer.length / 4, 4);
    assert.equal((await r.send(longer))!.status, 0);
    longer[longer.length - 1] = 1;
    assert.equal((await r.send(longer))!.status, -E.EINVAL);
    r.close();
  });

  test('unknown and unsupported commands are EOPNOTSUPP', async () => {
    const r = await ctxRaw();
    for (const c of [U.Cmd.BIND_MW, U.Cmd.POLL_CQ, U.Cmd.PEEK_CQ, 77, 0xff]) assert.equal((await r.send(hdr(c, 4, 2)))!.status, -E.EOPNOTSUPP, `command ${c}`);
    r.close();
  });

  test('bogus, stale and wrong-type handles are EINVAL, never another object', async () => {
    const r = await ctxRaw();
    assert.equal((await r.cmd(U.Cmd.DEALLOC_PD, { pd_handle: 12345 }))!.status, -E.EINVAL);
    const pd = (await r.cmd(U.Cmd.ALLOC_PD))!.body.readUInt32LE(0);
    assert.equal((await r.cmd(U.Cmd.DESTROY_CQ, { cq_handle: pd }))!.status, -E.EINVAL, 'a PD handle is not a CQ');
    assert.equal((await r.cmd(U.Cmd.DEALLOC_PD, { pd_handle: pd }))!.status, 0);
    assert.equal((await r.cmd(U.Cmd.DEALLOC_PD, { pd_handle: pd }))!.status, -E.EINVAL, 'stale handle');
    assert.equal((await r.cmd(U.Cmd.QUERY_PORT, { port_num: 2 }))!.status, -E.EINVAL);
    r.close();
  });

  test('REG_MR lengths and addr+length that overflow, bad access, a memfd id the context does not hold, a span past the memfd', async () => {
    const r = await ctxRaw();
    const pd = (await r.cmd(U.Cmd.ALLOC_PD))!.body.readUInt32LE(0);
    const reg = (req: Record<string, any>, u: Record<string, any> = { memfd_id: 0, memfd_offset: 0n }) => r.cmd(U.Cmd.REG_MR, { pd_handle: pd, access_flags: Access.LOCAL_WRITE, ...req }, u);
    assert.equal((await reg({ start: 0xfffffffffffff000n, length: 0x2000n, hca_va: 0xfffffffffffff000n }))!.status, -E.EINVAL);
    assert.equal((await reg({ start: 0x1000n, length: 0n, hca_va: 0x1000n }))!.status, -E.EINVAL);
    assert.equal((await reg({ start: 0x1000n, length: 0xffffffffffffn, hca_va: 0x1000n }))!.status, -E.EINVAL);
    assert.equal((await reg({ start: 0x1000n, length: 0x1000n, hca_va: 0x1000n, access_flags: Access.REMOTE_WRITE }))!.status, -E.EINVAL, 'REMOTE_WRITE without LOCAL_WRITE');
    assert.equal((await reg({ start: 0x1000n, length: 0x1000n, hca_va: 0x1000n }, { memfd_id: 0, memfd_offset: 0n }))!.status, -E.EBADF, 'id 0 is no memfd');
    assert.equal((await reg({ start: 0x1000n, length: 0x1000n, hca_va: 0x1000n }, { memfd_id: 999, memfd_offset: 0n }))!.status, -E.EBADF);
    const { buf, region } = allocShared(4096); // buf kept: its memfd lives as long as it does
    assert.equal((await reg({ start: region.addr, length: 4096n, hca_va: region.addr }, { memfd_id: region.fd, memfd_offset: 0n }))!.status, -E.EBADF, 'a descriptor number of ours names nothing');
    assert.equal((await reg({ start: region.addr, length: 8192n, hca_va: region.addr }, { memfd_id: await put(r, region.fd), memfd_offset: 0n }))!.status, -E.EFAULT, 'past the memfd end');
    const id = await put(r, region.fd);
    assert.equal((await reg({ start: region.addr, length: 4096n, hca_va: region.addr }, { memfd_id: id, memfd_offset: 0n }))!.status, 0);
    assert.equal((await reg({ start: region.addr, length: 4096n, hca_va: region.addr }, { memfd_id: id, memfd_offset: 0n }))!.status, -E.EBADF, 'an id maps once');
    assert.equal(buf.length, 4096);
    const u = U.frame(U.Spec.REG_MR, { pd_handle: pd, start: 0n, length: 1n, hca_va: 0n, access_flags: 1 });
    assert.equal((await r.send(u))!.status, -E.EINVAL, 'missing provider udata');
    r.close();
  });
});

describe('fuzz', () => {
  const TOTAL = Number(process.env.FUZZ_COUNT ?? 100_000); // npm run fuzz: 1,000,000
  test(`${TOTAL.toLocaleString('en-US')} random and mutated frames (seed ${process.env.FUZZ_SEED ?? '0x5eed'}); afterwards a normal client works and the tracker holds nothing of ours`, async (t) => {
    const rand = xorshift32(Number(process.env.FUZZ_SEED ?? 0x5eed)); // FUZZ_SEED=n reruns it with another seed
    const ri = (n: number) => Math.floor(rand() * n);
    // the Buffer is kept to the end: once it is collected, its memfd is closed (and its number reused)
    const { buf: memBuf, region: mem } = allocShared(1 << 16);
    const HELD = 8;
    // a corpus of valid frames, each then mutated
    const corpus: Buffer[] = [];
    for (const spec of U.COMMANDS.values()) {
      const req: Record<string, any> = {};
      for (const f of layout(spec.req).fields) if (typeof f.type === 'string') req[f.name] = f.type === 'u64' ? BigInt(ri(4)) : ri(4);
      req.start = mem.addr;
      req.hca_va = mem.addr;
      req.length = 4096n;
      req.cqe = 16;
      req.port_num = 1;
      // each batch's context holds memfds under ids 1..HELD (handed over below), so these name live ones
      corpus.push(U.frame(spec, req, (spec.udata ? { memfd_id: 1 + ri(HELD), memfd_offset: 0n } : undefined) as never));
    }
    // the extended commands, in WRITE_EX frames (mutations then reach their headers, word counts and udata too)
    const small = (def: Parameters<typeof layout>[0]) => {
      const req: Record<string, any> = {};
      for (const f of layout(def).fields) if (typeof f.type === 'string') req[f.name] = f.type === 'u64' ? BigInt(ri(4)) : ri(4);
      return req;
    };
    const queue = () => ({ def: U.SV_QUEUE, value: { memfd_id: 1 + ri(HELD) } });
    for (let i = 0; i < 4; i++) {
      corpus.push(U.exFrame(U.ExCmd.QUERY_DEVICE, U.EX_QUERY_DEVICE, {}, layout(U.EX_QUERY_DEVICE_RESP).size));
      corpus.push(U.exFrame(U.ExCmd.CREATE_CQ, U.EX_CREATE_CQ, { ...small(U.EX_CREATE_CQ), cqe: 16, comp_channel: -1, comp_mask: 0, flags: 0, reserved: 0, comp_vector: 0 }, 16, queue()));
      corpus.push(U.exFrame(U.ExCmd.CREATE_QP, U.EX_CREATE_QP, { ...small(U.EX_CREATE_QP), qp_type: 2 + ri(3), comp_mask: 0, create_flags: 0, reserved: 0 }, 40, queue()));
      corpus.push(U.exFrame(U.ExCmd.MODIFY_QP, U.EX_MODIFY_QP, { base: { ...small(U.MODIFY_QP), dest: {}, alt_dest: {} } }, 8));
    }
    let sent = 0;
    let replies = 0;
    let closes = 0;
    while (sent < TOTAL) {
      const r = await ctxRaw();
      for (let i = 0; i < HELD; i++) await put(r, mem.fd);
      const batch: Promise<unknown>[] = [];
      for (let i = 0; i < 500 && sent < TOTAL; i++, sent++) {
        let f: Buffer;
        const kind = rand();
        if (kind < 0.3) {
          // random bytes with a consistent length field
          const words = 2 + ri(40);
          f = Buffer.alloc(words * 4);
          for (let j = 0; j < f.length; j++) f[j] = ri(256);
          f.writeUInt16LE(words, 4);
          if (rand() < 0.5) f.writeUInt32LE(ri(40), 0);
        } else {
          f = Buffer.from(corpus[ri(corpus.length)]!);
          const flips = 1 + ri(6);
          for (let j = 0; j < flips; j++) {
            const at = 8 + ri(Math.max(1, f.length - 8));
            if (at < f.length) f[at] = rand() < 0.5 ? ri(256) : f[at]! ^ (1 << ri(8));
          }
          if (rand() < 0.1) f.writeUInt16LE(ri(64), 6); // out_words
          if (rand() < 0.3 && f.length >= 12) f.writeUInt32LE(ri(8), 8 + 4 * ri((f.length - 8) / 4)); // a small, often live, handle
        }
        // framing garbage closes the connection, so it ends its batch
        const garbage = rand() < 0.002;
        if (garbage) f.writeUInt16LE(ri(2), 4);
        batch.push(r.send(f).then((x) => (x ? replies++ : closes++)));
        if (garbage) {
          sent++;
          break;
        }
      }
      await Promise.all(batch);
      r.close();
    }
    t.diagnostic(`${sent} frames: ${replies} replies, ${closes} connections closed for framing garbage`);
    assert.ok(replies > TOTAL * 0.99, `${replies} replies, ${closes} closes; daemon said:\n${d.stderr().slice(-3000)}`);
    // the daemon is alive, hit no bug of its own, and a normal client works end to end
    const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
    await assertServing(d, ctx, await ctx.allocPd());
    ctx.closeDevice();
    await new Promise((res) => setTimeout(res, 200));
    const rows = await mgmt(devPath, 'restrack');
    assert.deepEqual(rows.filter((x: { pid: number }) => x.pid === process.pid), []);
    assert.equal((await mgmt(devPath, 'pinned'))[process.pid], undefined, 'no pinned pages left');
    assert.equal(memBuf.length, 1 << 16);
  });
});
