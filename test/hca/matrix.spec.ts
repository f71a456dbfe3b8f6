/**
 * The transport matrix: {RC, UC, UD} × every operation the QP type allows ×
 * MTU {256, 1024, 4096} × message sizes {0, 1, MTU−1, MTU, MTU+1, 1 MiB},
 * between two devices of one daemon (the local FIFO) and between two
 * daemons (RoCEv2 frames on 127.0.0.1 <-> 127.0.0.2), each case byte-exact
 * with the completions both sides should see. For each MTU both devices are
 * created with that active MTU and connected QPs use it as path MTU, so UD
 * (bounded by the port's MTU) sees it too; a UD message beyond it fails
 * locally with LOC_LEN_ERR.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import {
  Access, getDeviceList, openDevice, QpType, SendFlags, WcFlags, WcOpcode, WcStatus, WrOpcode,
  type AddressHandle, type CompletionQueue, type Context, type MemoryRegion, type QueuePair,
  mtuOfBytes,
} from '../../src/verbs/index.js';
import { connectQp, pattern, pollN, startDaemon, type RunningDaemon , A1, A2 } from '../helpers.js';

const MIB = 1 << 20;
const ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;
const sizesFor = (mtu: number) => [0, 1, mtu - 1, mtu, mtu + 1, MIB];

interface Side { ctx: Context; cq: CompletionQueue; qp: QueuePair; mr: MemoryRegion; ah?: AddressHandle }

async function side(ctx: Context, type: number): Promise<Side> {
  const pd = await ctx.allocPd();
  const cq = await ctx.createCq(64);
  const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: type as QpType, cap: { maxSendWr: 16, maxRecvWr: 16 } });
  const mr = await pd.allocMr(2 * MIB + 4096, ALL);
  return { ctx, cq, qp, mr };
}

async function pair(a: Context, b: Context, type: number, mtu: number): Promise<[Side, Side]> {
  const s = await side(a, type);
  const r = await side(b, type);
  await connectQp(s.qp, a, { qpn: r.qp.qpNum, gid: b.queryGid(1, 0) }, { mtu: mtuOfBytes(mtu) });
  await connectQp(r.qp, b, { qpn: s.qp.qpNum, gid: a.queryGid(1, 0) }, { mtu: mtuOfBytes(mtu) });
  if (type === QpType.UD) s.ah = await s.qp.pd.createAh({ grh: { dgid: b.queryGid(1, 0) } });
  return [s, r];
}

/**
 * A UC WRITE without immediate completes nowhere at the receiver: wait until
 * its device has taken all of the message's packets. (Comparing the buffer
 * while the daemon still writes it is no test: memcmp racing a writer can
 * report equal when it is not.)
 */
async function untilReceived(r: Side, before: number, pkts: number, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while ((await r.ctx.queryHwCounters()).rcvd_pkts! - before < pkts) {
    if (Date.now() > end) assert.fail(`timed out: ${what}`);
    await new Promise((res) => setTimeout(res, 1));
  }
}

let seed = 1;

/** One message of `op` and `size` bytes from s to r, checked on both sides. */
async function one(s: Side, r: Side, type: number, op: number, size: number, mtu: number): Promise<void> {
  const what = `${['', '', 'RC', 'UC', 'UD'][type]} ${Object.keys(WrOpcode).find((k) => (WrOpcode as Record<string, number>)[k] === op)} ${size} B at MTU ${mtu}`;
  const data = pattern(seed++, size);
  const imm = (0x1000 + seed) >>> 0;
  const isRead = op === WrOpcode.RDMA_READ;
  const isWrite = op === WrOpcode.RDMA_WRITE || op === WrOpcode.RDMA_WRITE_WITH_IMM;
  const withImm = op === WrOpcode.SEND_WITH_IMM || op === WrOpcode.RDMA_WRITE_WITH_IMM;
  const needsRecv = !isRead && op !== WrOpcode.RDMA_WRITE;
  const grh = type === QpType.UD ? 40 : 0;
  // the data starts in the requester's buffer (or the responder's for a READ) at offset 0; lands at 1 MiB on the other side
  const [from, to] = isRead ? [r, s] : [s, r];
  data.copy(from.mr.buf, 0);
  to.mr.buf.fill(0, MIB, MIB + size + grh + 1);
  const udTooBig = type === QpType.UD && size > mtu;
  const ucWrite = type === QpType.UC && op === WrOpcode.RDMA_WRITE;
  const rcvdBefore = ucWrite ? (await r.ctx.queryHwCounters()).rcvd_pkts! : 0;
  if (needsRecv && !udTooBig) r.qp.postRecv({ wrId: seed, sgList: [r.mr.sge(MIB, size + grh + 1)] });
  const local = isRead ? s.mr.sge(MIB, size) : s.mr.sge(0, size);
  s.qp.postSend({
    wrId: seed, opcode: op as WrOpcode, sendFlags: SendFlags.SIGNALED, sgList: size ? [local] : [], imm,
    rdma: isRead ? { remoteAddr: r.mr.addr, rkey: r.mr.rkey } : isWrite ? { remoteAddr: r.mr.addr + BigInt(MIB), rkey: r.mr.rkey } : undefined,
    ud: s.ah ? { ah: s.ah, remoteQpn: r.qp.qpNum, remoteQkey: 0x11111111 } : undefined,
  });
  const [sc] = await pollN(s.cq, 1, 10000);
  if (udTooBig) {
    assert.equal(sc!.status, WcStatus.LOC_LEN_ERR, `${what}: beyond the MTU`);
    return;
  }
  assert.equal(sc!.status, WcStatus.SUCCESS, `${what}: requester status ${sc!.status}`);
  assert.equal(sc!.opcode, isRead ? WcOpcode.RDMA_READ : isWrite ? WcOpcode.RDMA_WRITE : WcOpcode.SEND, what);
  if (isRead) assert.equal(sc!.byteLen, size, what);
  if (needsRecv) {
    const [rc] = await pollN(r.cq, 1, 10000).catch((e) => assert.fail(`${what}: ${e.message}`));
    assert.equal(rc!.status, WcStatus.SUCCESS, `${what}: responder status ${rc!.status}`);
    assert.equal(rc!.opcode, isWrite ? WcOpcode.RECV_RDMA_WITH_IMM : WcOpcode.RECV, what);
    assert.equal(rc!.byteLen, size + grh, what);
    assert.equal(!!(rc!.wcFlags & WcFlags.WITH_IMM), withImm, what);
    if (withImm) assert.equal(rc!.imm, imm, what);
    if (type === QpType.UD) assert.equal(rc!.srcQp, s.qp.qpNum, what);
  } else if (ucWrite) {
    await untilReceived(r, rcvdBefore, Math.max(1, Math.ceil(size / mtu)), what);
  }
  const got = to.mr.buf.subarray(MIB + grh, MIB + grh + size);
  if (!got.equals(data)) {
    let i = 0;
    while (i < size && got[i] === data[i]) i++;
    assert.fail(`${what}: bytes differ from offset ${i} (${got[i]} instead of ${data[i]})`);
  }
  assert.equal(to.mr.buf[MIB + grh + size], 0, `${what}: nothing written past the end`);
}

async function atomics(s: Side, r: Side, mtu: number): Promise<void> {
  r.mr.buf.writeBigUInt64LE(10n, 4096);
  s.qp.postSend({ wrId: 1, opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, sendFlags: SendFlags.SIGNALED, sgList: [s.mr.sge(0, 8)], atomic: { remoteAddr: r.mr.addr + 4096n, compareAdd: 5n, rkey: r.mr.rkey } });
  s.qp.postSend({ wrId: 2, opcode: WrOpcode.ATOMIC_CMP_AND_SWP, sendFlags: SendFlags.SIGNALED, sgList: [s.mr.sge(8, 8)], atomic: { remoteAddr: r.mr.addr + 4096n, compareAdd: 15n, swap: 99n, rkey: r.mr.rkey } });
  const wcs = await pollN(s.cq, 2, 10000);
  assert.deepEqual(wcs.map((w) => [w.status, w.opcode]), [[0, WcOpcode.FETCH_ADD], [0, WcOpcode.COMP_SWAP]], `atomics at MTU ${mtu}`);
  assert.deepEqual([s.mr.buf.readBigUInt64LE(0), s.mr.buf.readBigUInt64LE(8), r.mr.buf.readBigUInt64LE(4096)], [10n, 15n, 99n]);
}

const OPS: Array<[number, number[]]> = [
  [QpType.RC, [WrOpcode.SEND, WrOpcode.SEND_WITH_IMM, WrOpcode.RDMA_WRITE, WrOpcode.RDMA_WRITE_WITH_IMM, WrOpcode.RDMA_READ]],
  [QpType.UC, [WrOpcode.SEND, WrOpcode.SEND_WITH_IMM, WrOpcode.RDMA_WRITE, WrOpcode.RDMA_WRITE_WITH_IMM]],
  [QpType.UD, [WrOpcode.SEND, WrOpcode.SEND_WITH_IMM]],
];

for (const topology of ['two devices of one daemon', 'two daemons'] as const) {
  for (const mtu of [256, 1024, 4096]) {
    describe(`matrix, ${topology}, MTU ${mtu}`, () => {
      const daemons: RunningDaemon[] = [];
      let a: Context;
      let b: Context;
      before(async () => {
        if (topology === 'two daemons') {
          daemons.push(await startDaemon(['--device', `rxe0=${A1},mtu=${mtu}`]), await startDaemon(['--device', `rxe0=${A2},mtu=${mtu}`]));
          a = await openDevice(getDeviceList(daemons[0]!.root)[0]!, daemons[0]!.root);
          b = await openDevice(getDeviceList(daemons[1]!.root)[0]!, daemons[1]!.root);
        } else {
          daemons.push(await startDaemon(['--device', `rxe0=${A1},mtu=${mtu}`, '--device', `rxe1=${A2},mtu=${mtu}`]));
          const devs = getDeviceList(daemons[0]!.root);
          a = await openDevice(devs.find((d) => d.name === 'rxe0')!, daemons[0]!.root);
          b = await openDevice(devs.find((d) => d.name === 'rxe1')!, daemons[0]!.root);
        }
        assert.equal((await a.queryPort(1)).activeMtu, mtuOfBytes(mtu));
      });
      after(async () => {
        a?.closeDevice();
        b?.closeDevice();
        for (const d of daemons) await d.stop();
      });
      for (const [type, ops] of OPS) {
        test(`${['', '', 'RC', 'UC', 'UD'][type]}: ${ops.length} operations × sizes ${sizesFor(mtu).join(', ')}`, async () => {
          const [s, r] = await pair(a, b, type, mtu);
          for (const op of ops) for (const size of sizesFor(mtu)) {
            // a UD beyond the MTU is a local error that moves the QP to ERR (IBA): checked once, last
            if (type === QpType.UD && size > mtu) continue;
            await one(s, r, type, op, size, mtu);
          }
          if (type === QpType.RC) await atomics(s, r, mtu);
          if (type === QpType.UD) await one(s, r, type, WrOpcode.SEND, mtu + 1, mtu);
        });
      }
    });
  }
}
