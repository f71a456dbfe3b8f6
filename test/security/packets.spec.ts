/**
 * Seeded packet fuzzing over the real wire: RoCEv2 datagrams, well-formed
 * and mutated, to a daemon whose RC, UC and UD QPs are connected to the
 * fuzzer's address, so they reach the responder and completer, not only the
 * codec. PACKETS=n sets how many (`npm run fuzz` sends 1,000,000),
 * PACKETS_SEED=n the seed. Afterwards the daemon is alive, reported no
 * internal error, and a normal client works.
 */
import { createSocket } from 'node:dgram';
import { test } from 'node:test';
import { A3, assertServing, connectQp, startDaemon } from '../helpers.js';
import { xorshift32 } from '../../src/common/rng.js';
import { Access, getDeviceList, openDevice, QpType } from '../../src/verbs/index.js';
import { encodeFrame } from '../../src/hca/codec.js';
import { Pkt } from '../../src/hca/packet.js';

const TOTAL = Number(process.env.PACKETS ?? 20_000);

test(`${TOTAL.toLocaleString('en-US')} fuzzed RoCEv2 packets to connected RC, UC and UD QPs (seed ${process.env.PACKETS_SEED ?? '0xf00d'}): the daemon is unharmed`, async (t) => {
  const d = await startDaemon(['--device', `rxe0=${A3},wire=udp`]);
  const sock = createSocket('udp4');
  try {
    const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
    const pd = await ctx.allocPd();
    const cq = await ctx.createCq(4096);
    const mr = await pd.allocMr(1 << 16, Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC);
    const peer = Uint8Array.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]);
    const qps = [];
    for (const type of [QpType.RC, QpType.UC, QpType.UD]) {
      const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: type, cap: { maxSendWr: 64, maxRecvWr: 256 } });
      await connectQp(qp, ctx, { qpn: 0x77, gid: peer }, { timeout: 8, retryCnt: 1, rnrRetry: 1 });
      qps.push(qp);
    }
    const rand = xorshift32(Number(process.env.PACKETS_SEED ?? 0xf00d));
    const ri = (n: number) => Math.floor(rand() * n);
    const OPS = [0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x1d, 0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x2b, 0x64, 0x65];
    const src = new Uint8Array([127, 0, 0, 1]);
    const dst = new Uint8Array(A3.split('.').map(Number));
    const payload = new Uint8Array(8192);
    for (let i = 0; i < payload.length; i++) payload[i] = ri(256);
    const frame = new Uint8Array(8192 + 128);
    const p = new Pkt();
    let sent = 0;
    while (sent < TOTAL) {
      // keep the posted receives topped up so SENDs reach the receive path
      if (sent % 2000 === 0) for (const qp of qps) try { qp.postRecv(Array.from({ length: 32 }, (_, i) => ({ wrId: i, sgList: [mr.sge(ri(1 << 15), 64 + ri(4096))] }))); } catch { /* full, or the QP is in ERR */ }
      const batch: Promise<void>[] = [];
      for (let k = 0; k < 256 && sent < TOTAL; k++, sent++) {
        const qp = qps[ri(qps.length)]!;
        p.opcode = (rand() < 0.9 ? OPS[ri(OPS.length)]! : ri(256)) | (qp.qpType === QpType.UD && rand() < 0.8 ? 0x60 : 0);
        p.destQpn = rand() < 0.9 ? qp.qpNum : ri(1 << 24);
        p.psn = rand() < 0.5 ? ri(64) : ri(1 << 24);
        p.ackReq = rand() < 0.5;
        p.se = rand() < 0.2;
        p.va = rand() < 0.7 ? Number(mr.addr) + ri(1 << 16) : ri(2 ** 32);
        p.rkey = rand() < 0.7 ? mr.rkey : ri(2 ** 32);
        p.dmaLen = rand() < 0.8 ? ri(8192) : ri(2 ** 32);
        p.imm = ri(2 ** 32);
        p.qkey = rand() < 0.7 ? 0x11111111 : ri(2 ** 32);
        p.srcQpn = ri(1 << 24);
        p.syndrome = ri(256);
        p.msn = ri(1 << 24);
        p.compare = BigInt(ri(2 ** 32));
        p.swapAdd = BigInt(ri(2 ** 32));
        p.orig = BigInt(ri(2 ** 32));
        p.payload = payload;
        p.payOff = ri(4096);
        p.payLen = rand() < 0.8 ? ri(1100) : ri(4096);
        p.padCnt = (4 - (p.payLen & 3)) & 3;
        let n: number;
        try {
          n = encodeFrame(p, src, dst, 0, frame);
        } catch {
          continue; // an opcode the codec does not know: nothing to send
        }
        const body = frame.slice(28, n);
        // and sometimes mangled after encoding: flipped bytes, a cut, garbage appended
        const r = rand();
        let out = body;
        if (r < 0.15) for (let j = 0; j < 1 + ri(4); j++) out[ri(out.length)] = ri(256);
        else if (r < 0.2) out = out.subarray(0, ri(out.length));
        else if (r < 0.22) out = Uint8Array.from([...out, ...payload.subarray(0, ri(64))]);
        batch.push(new Promise<void>((res) => sock.send(out, 4791, A3, () => res())));
      }
      await Promise.all(batch);
      if (sent % 8192 < 256) await new Promise((res) => setTimeout(res, 1)); // let the daemon breathe, as a real wire would
    }
    await new Promise((res) => setTimeout(res, 300));
    t.diagnostic(`${sent} packets sent`);
    await assertServing(d, ctx, pd);
    ctx.closeDevice();
  } finally {
    sock.close();
    await d.stop();
  }
});
