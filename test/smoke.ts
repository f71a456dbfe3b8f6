import { startDaemon, connectQp, pollN } from './helpers.js';
import { getDeviceList, openDevice, Access, QpType, WrOpcode, SendFlags } from '../src/verbs/index.js';
const d = await startDaemon();
try {
  const devs = getDeviceList(d.root);
  console.log(devs);
  const ctx = await openDevice(devs[0]!);
  console.log(await ctx.queryPort(1));
  const pd = await ctx.allocPd();
  const cq = await ctx.createCq(64);
  const a = await pd.createQp({ sendCq: cq, recvCq: cq, cap: { maxSendWr: 16, maxRecvWr: 16 }, qpType: QpType.RC });
  const b = await pd.createQp({ sendCq: cq, recvCq: cq, cap: { maxSendWr: 16, maxRecvWr: 16 }, qpType: QpType.RC });
  const gid = ctx.queryGid(1, 0);
  await connectQp(a, ctx, { qpn: b.qpNum, gid });
  await connectQp(b, ctx, { qpn: a.qpNum, gid });
  const acc = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;
  const m1 = await pd.allocMr(65536, acc);
  const m2 = await pd.allocMr(65536, acc);
  m1.buf.fill(7, 0, 10000);
  b.postRecv({ wrId: 1, sgList: [m2.sge()] });
  a.postSend({ wrId: 2, opcode: WrOpcode.SEND_WITH_IMM, imm: 0x1234, sendFlags: SendFlags.SIGNALED, sgList: [m1.sge(0, 10000)] });
  console.log(await pollN(cq, 2));
  console.log(m2.buf.subarray(9995, 10005));
  a.postSend({ wrId: 3, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [m1.sge(0, 5000)], rdma: { remoteAddr: m2.addr + 20000n, rkey: m2.rkey } });
  a.postSend({ wrId: 4, opcode: WrOpcode.RDMA_READ, sendFlags: SendFlags.SIGNALED, sgList: [m1.sge(30000, 5000)], rdma: { remoteAddr: m2.addr + 20000n, rkey: m2.rkey } });
  a.postSend({ wrId: 5, opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, sendFlags: SendFlags.SIGNALED, sgList: [m1.sge(40000, 8)], atomic: { remoteAddr: m2.addr + 64n, compareAdd: 5n, rkey: m2.rkey } });
  console.log(await pollN(cq, 3));
  console.log(m1.buf.subarray(30000, 30004), m2.buf.readBigUInt64LE(64), m1.buf.readBigUInt64LE(40000));
  ctx.close();
} finally {
  await d.stop();
}
