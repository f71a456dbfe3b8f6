/**
 * A client that writes garbage into its own shared rings: random WQE bytes,
 * made-up producer and consumer indices, doorbells at random. The daemon
 * must treat all of it like hardware treats a bad descriptor (error
 * completions, QP to ERR), never fault, and keep serving everyone else.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CONS, PROD, RING_HDR } from '../../src/abi/ring.js';
import { xorshift32 } from '../../src/common/rng.js';
import { Access, getDeviceList, openDevice, QpType, type CompletionQueue, type QueuePair } from '../../src/verbs/index.js';
import { assertServing, connectQp, mgmt, startDaemon } from '../helpers.js';

/** What the library keeps private, as a hostile client would reach it. */
interface Rings {
  sq: { hdr: Int32Array; bytes: Uint8Array };
  sendBell: Buffer;
}

/** Ring mutations in all (RINGS_COUNT; npm run fuzz: 1,000,000), 50 per QP pair, 500 per pair when there are many. */
const TOTAL = Number(process.env.RINGS_COUNT ?? 2000);
const PER_ROUND = TOTAL > 20_000 ? 500 : 50;

test(`${TOTAL.toLocaleString('en-US')} random WQEs, bogus ring indices and stray doorbells (seed ${process.env.RINGS_SEED ?? '0xbad'}): error completions at most, the daemon unharmed`, async () => {
  const d = await startDaemon();
  try {
    const dev = getDeviceList(d.root)[0]!;
    const rand = xorshift32(Number(process.env.RINGS_SEED ?? 0xbad));
    const ri = (n: number) => Math.floor(rand() * n);
    const ctx = await openDevice(dev, d.root);
    const pd = await ctx.allocPd();
    const mr = await pd.allocMr(1 << 16, Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC);
    for (let round = 0; round * PER_ROUND < TOTAL; round++) {
      const cq: CompletionQueue = await ctx.createCq(64);
      const type = [QpType.RC, QpType.UC, QpType.UD][round % 3]!;
      const a: QueuePair = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: type, cap: { maxSendWr: 16, maxRecvWr: 16, maxSendSge: 4, maxInlineData: 64 } });
      const b: QueuePair = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: type, cap: { maxSendWr: 16, maxRecvWr: 16 } });
      await connectQp(a, ctx, { qpn: b.qpNum, gid: ctx.queryGid(1, 0) }, { timeout: 8, retryCnt: 1, rnrRetry: 1 });
      await connectQp(b, ctx, { qpn: a.qpNum, gid: ctx.queryGid(1, 0) });
      b.postRecv({ wrId: 1, sgList: [mr.sge(0, 64)] });
      const r = a as unknown as Rings;
      const sqHdr = r.sq.hdr;
      const sqBytes = r.sq.bytes;
      for (let k = 0; k < PER_ROUND; k++) {
        const what = ri(6);
        if (what <= 2) {
          // a WQE slot full of noise, sometimes with a plausible opcode / lkey / address
          const slot = RING_HDR + ri(16) * ((sqBytes.length - RING_HDR) / 16 | 0);
          for (let i = 0; i < 96 + 64; i++) if (slot + i < sqBytes.length) sqBytes[slot + i] = ri(256);
          const dv = new DataView(sqBytes.buffer, sqBytes.byteOffset);
          if (rand() < 0.5) dv.setUint32(slot + 8, ri(16), true); // every ibv_wr_opcode, ATOMIC_WRITE (15) among them
          if (rand() < 0.5) dv.setUint32(slot + 16, ri(6), true);
          if (rand() < 0.5) {
            dv.setBigUint64(slot + 96, mr.addr + BigInt(ri(1 << 16)), true);
            dv.setUint32(slot + 104, ri(1 << 17), true);
            dv.setUint32(slot + 108, rand() < 0.7 ? mr.lkey : ri(0xffffffff), true);
          }
          Atomics.add(sqHdr, PROD, 1);
        } else if (what === 3) {
          Atomics.store(sqHdr, PROD, ri(0x7fffffff)); // a producer index from nowhere
        } else if (what === 4) {
          Atomics.store((cq as unknown as { ring: { hdr: Int32Array } }).ring.hdr, CONS, ri(0x7fffffff));
        }
        ctx.cmd.ring('doorbell', r.sendBell);
        if (rand() < 0.2) await new Promise((res) => setImmediate(res));
      }
      await new Promise((res) => setTimeout(res, 5));
      cq.pollCq(64);
      // each round's objects go again: a million inputs must not become tens of thousands of mappings
      await a.destroyQp();
      await b.destroyQp();
      await cq.destroyCq();
    }
    // the daemon is alive, logged no fault of its own, and a fresh, well-behaved QP pair works
    await new Promise((res) => setTimeout(res, 100));
    await assertServing(d, ctx, pd);
    ctx.closeDevice();
    await new Promise((res) => setTimeout(res, 100));
    assert.deepEqual(await mgmt(dev.devPath, 'restrack'), []);
  } finally {
    await d.stop();
  }
});
