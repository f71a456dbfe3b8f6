/**
 * node dist/bench/wr.js ROOT [N]: 8-byte work requests between two RC QPs of one device of the daemon at ROOT,
 * 32 a post, one signaled, through postSend([...]) and through the qp.wr builders (ibv_wr_*), and
 * ATOMIC_WRITEs through qp.wr; completions read from an extended CQ (pollEx). The builders' cost over the
 * plain post is what this shows (each batch is one doorbell either way).
 */
import { Access, getDeviceList, Mtu, openDevice, QpAttrMask as A, QpExSendOps, QpState, QpType, SendFlags, WrOpcode, type QueuePair, type SendWr } from '../src/verbs/index.js';

const root = process.argv[2] ?? process.env.SOFTVERBS_ROOT;
const N = Number(process.argv[3] ?? 200_000);
const BATCH = 32;
const ctx = await openDevice(getDeviceList(root)[0]!, root);
const pd = await ctx.allocPd();
const cq = await ctx.createCqEx({ cqe: 4096, wcFlags: ['BYTE_LEN'] });
const init = { sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 1024, maxRecvWr: 16 }, sendOpsFlags: QpExSendOps.RDMA_WRITE | QpExSendOps.ATOMIC_WRITE };
const a = await pd.createQp(init);
const b = await pd.createQp(init);
const gid = ctx.queryGid(1, 0);
for (const [q, r] of [[a, b], [b, a]] as Array<[QueuePair, QueuePair]>) {
  await q.modifyQp({ qpState: QpState.INIT, pkeyIndex: 0, portNum: 1, qpAccessFlags: Access.LOCAL_WRITE | Access.REMOTE_WRITE }, A.STATE | A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS);
  await q.modifyQp({ qpState: QpState.RTR, pathMtu: Mtu.MTU_4096, destQpNum: r.qpNum, rqPsn: 0, ahAttr: { grh: { dgid: gid, hopLimit: 64 }, portNum: 1 }, maxDestRdAtomic: 16, minRnrTimer: 1 },
    A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN | A.MAX_DEST_RD_ATOMIC | A.MIN_RNR_TIMER);
  await q.modifyQp({ qpState: QpState.RTS, sqPsn: 0, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 16 }, A.STATE | A.SQ_PSN | A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.MAX_QP_RD_ATOMIC);
}
const mr = await pd.allocMr(1 << 16, Access.LOCAL_WRITE | Access.REMOTE_WRITE);

async function run(name: string, post: () => void): Promise<void> {
  let done = 0;
  let posted = 0;
  const t0 = process.hrtime.bigint();
  while (done < N) {
    for (; posted - done <= 1024 - BATCH && posted < N; posted += BATCH) post();
    const wcs = cq.pollEx(256);
    for (const w of wcs) if (w.status) throw new Error(`${name}: completion status ${w.status}`);
    done += wcs.length * BATCH;
    if (!wcs.length) await new Promise((r) => setImmediate(r));
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(`${name.padEnd(36)} ${N} WRs in ${s.toFixed(2)} s: ${(N / s / 1e6).toFixed(3)} M WR/s`);
}

const last = (i: number) => (i === BATCH - 1 ? SendFlags.SIGNALED : 0);
const wrs: SendWr[] = Array.from({ length: BATCH }, (_, i) => ({ wrId: i, opcode: WrOpcode.RDMA_WRITE, sendFlags: last(i), sgList: [mr.sge(0, 8)], rdma: { remoteAddr: mr.addr + 4096n, rkey: mr.rkey } }));
await run('postSend, 32 RDMA WRITEs of 8 B', () => a.postSend(wrs));
await run('qp.wr, 32 rdmaWrite of 8 B', () => {
  const w = a.wr.start();
  for (let i = 0; i < BATCH; i++) {
    w.wrFlags = last(i);
    w.rdmaWrite(mr.rkey, mr.addr + 4096n).setSge(mr.lkey, mr.addr, 8);
  }
  w.complete();
});
await run('qp.wr, 32 atomicWrite', () => {
  const w = a.wr.start();
  for (let i = 0; i < BATCH; i++) {
    w.wrFlags = last(i);
    w.atomicWrite(mr.rkey, mr.addr + 8192n, 42n);
  }
  w.complete();
});
await ctx.closeDevice();
