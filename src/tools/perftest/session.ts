/** A perftest run's resources (perftest's pingpong_context) and connection: the buffer, CQs, QPs and AHs, the
 * work requests built once per size, and the QPs walked to RTS from the exchanged destinations. */
import { performance } from 'node:perf_hooks';
import { type Mtu, Access, QpAttrMask as A, QpState, QpType, SendFlags, WrOpcode, type AddressHandle, type CompletionChannel, type CompletionQueue, type Context, type MemoryRegion, type ProtectionDomain, type QpInitAttr, type QueuePair, type RecvWr, type SendWr } from '../../verbs/index.js';
import { type Exchange, type PerfDest } from './exchange.js';
import { DEF, Verb, type Params } from './params.js';
import { type InfoCtx } from './report.js';
import { type SweepRow } from './sweep.js';
import { Fail, messageOf } from '../../common/errors.js';

/** A failure perftest reports on stderr before it exits 1: the message is its text, newlines included. */
export const fail = (err: string): never => {
  throw new Fail(err);
};

export const now = () => performance.now() * 1e6;

export const MTU_BYTES = (e: number) => 1 << (7 + e);

export const CTX_POLL_BATCH = 16;

export const PORT_STATE = ['PORT_NOP', 'PORT_DOWN', 'PORT_INIT', 'PORT_ARMED', 'PORT_ACTIVE', 'PORT_ACTIVE_DEFER'];

export const BUFF_SIZE = (size: number, cycle: number) => (size < cycle ? cycle : size);

export const ROUND_UP = (v: number, a: number) => (v % a === 0 ? v : a * (Math.floor(v / a) + 1));
const INC = (size: number, line: number) => (size > line ? ROUND_UP(size, line) : line);

/** A test's resources (perftest's pingpong_context). */
export interface Res {
  ctx: Context;
  mr: MemoryRegion;
  sendCq: CompletionQueue;
  recvCq: CompletionQueue;
  chan: CompletionChannel | null;
  /**
   * A bandwidth test's CQs without -e get a channel anyway: the loop polls as perftest does, and once it has
   * polled empty for a while it sleeps on this channel until the next completion (see `Napper` in clock.ts).
   */
  nap: CompletionChannel | null;
  qps: QueuePair[];
  ahs: (AddressHandle | null)[];
  /** BUFF_SIZE(size, cycle_buffer): each QP's slice of the send half and of the receive half */
  slice: number;
  /** byte offset of the receive half (and of what the peer writes to) */
  recvBase: number;
  cacheLine: number;
  cycleBuffer: number;
}

/** What one side knows once connected. */
export interface Session {
  p: Params;
  oob: Exchange;
  res: Res;
  my: PerfDest[];
  rem: PerfDest[];
  info: InfoCtx;
  out: (s: string) => void;
  sweep: SweepRow[];
  /** per QP, the post_list send WRs, built once per size and re-posted (perftest's ctx->wr[]) */
  sendWrs: SendWr[][];
  /** per QP, the receive WR (perftest's ctx->rwr[]) */
  recvWrs: RecvWr[];
}

export const printable = (s: string) => s.replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`).slice(0, 32);

/** ctx_init: one buffer and MR for all QPs (send half, receive half), CQs, QPs in INIT. */
export async function initResources(p: Params, ctx: Context, cycleBuffer: number, cacheLine: number, makeQp?: (i: number, init: QpInitAttr, pd: ProtectionDomain) => Promise<QueuePair>): Promise<Res> {
  const slice = BUFF_SIZE(p.size, cycleBuffer);
  const inc = INC(slice, cacheLine);
  let bytes = inc * 2 * p.numQps;
  if (p.conn === 'UD') bytes += cacheLine;
  const access = Access.LOCAL_WRITE |
    (p.verb === Verb.WRITE ? Access.REMOTE_WRITE : p.verb === Verb.READ ? Access.REMOTE_READ : p.verb === Verb.ATOMIC ? Access.REMOTE_ATOMIC : 0);
  // -e's channel, or (a bandwidth test without -e) the one its loop naps on
  const channel = p.useEvent || p.tst === 'BW' ? await ctx.createCompChannel().catch(() => fail(" Couldn't create a completion channel\n Couldn't create IB resources\n")) : null;
  const chan = p.useEvent ? channel : null;
  const nap = p.useEvent ? null : channel;
  const pd = await ctx.allocPd().catch(() => fail(" Couldn't allocate PD\n Couldn't create IB resources\n"));
  const mr = await pd.allocMr(bytes, access).catch((e: unknown) => fail(` Couldn't allocate MR: ${messageOf(e)}\n Couldn't create IB resources\n`));
  // perftest fills its buffer with random bytes; a write latency test counts on the poll byte not matching 1 at start
  mr.buf.fill(0);
  const needRecv = p.verb === Verb.SEND;
  const sendCq = await ctx.createCq(Math.max(1, p.txDepth * p.numQps), channel).catch(() => fail(" Couldn't create CQ\n Couldn't create IB resources\n"));
  const recvCq = needRecv ? await ctx.createCq(Math.max(1, p.rxDepth * p.numQps), channel).catch(() => fail(" Couldn't create CQ\n Couldn't create IB resources\n")) : sendCq;
  const qpType = p.conn === 'UC' ? QpType.UC : p.conn === 'UD' ? QpType.UD : QpType.RC;
  const qps: QueuePair[] = [];
  for (let i = 0; i < p.numQps; i++) {
    const init: QpInitAttr = {
      sendCq, recvCq, qpType, sqSigAll: false,
      cap: { maxSendWr: Math.max(p.txDepth, p.postList), maxRecvWr: needRecv ? p.rxDepth : 1, maxSendSge: 1, maxRecvSge: 1, maxInlineData: p.inlineSize },
    };
    // -R: the QP is the cm_id's (rdma_create_qp), and the CM moves it through its states
    if (makeQp) {
      qps.push(await makeQp(i, init, pd).catch((e: unknown) => fail(` Unable to create QP: ${messageOf(e)}\n Failed to create QP.\n`)));
      continue;
    }
    const qp = await pd.createQp(init).catch((e: unknown) => fail(` Unable to create QP: ${messageOf(e)}\n Couldn't create IB resources\n`));
    const qpAccess = p.verb === Verb.ATOMIC ? Access.REMOTE_ATOMIC : p.verb === Verb.READ ? Access.REMOTE_READ : p.verb === Verb.WRITE ? Access.REMOTE_WRITE : Access.REMOTE_WRITE | Access.LOCAL_WRITE;
    const ud = p.conn === 'UD';
    await qp.modifyQp(ud ? { qpState: QpState.INIT, pkeyIndex: 0, portNum: p.ibPort, qkey: DEF.qkey } : { qpState: QpState.INIT, pkeyIndex: 0, portNum: p.ibPort, qpAccessFlags: qpAccess },
      A.STATE | A.PKEY_INDEX | A.PORT | (ud ? A.QKEY : A.ACCESS_FLAGS)).catch((e: unknown) => fail(`Failed to modify QP to INIT, ret=${messageOf(e)}\n Couldn't create IB resources\n`));
    qps.push(qp);
  }
  return { ctx, mr, sendCq, recvCq, chan, nap, qps, ahs: qps.map(() => null), slice, recvBase: p.numQps * slice, cacheLine, cycleBuffer };
}

/** ctx_connect: RTR for everyone, RTS for whoever sends (clients, latency tests, bidirectional runs). */
export async function connectQps(s: Session, mtu: Mtu, gidIndex: number): Promise<void> {
  const { p, res, my, rem } = s;
  const sends = p.tst === 'LAT' || p.machine === 'CLIENT' || p.duplex;
  for (let i = 0; i < res.qps.length; i++) {
    const qp = res.qps[i]!;
    const d = rem[i]!;
    const ahAttr = { isGlobal: true, dlid: d.lid, sl: p.sl, srcPathBits: 0, portNum: p.ibPort, grh: { dgid: d.gid, sgidIndex: gidIndex, hopLimit: 0xff, trafficClass: 0 } };
    const rtr = p.conn === 'UD'
      ? qp.modifyQp({ qpState: QpState.RTR }, A.STATE)
      : qp.modifyQp({ qpState: QpState.RTR, ahAttr, pathMtu: mtu, destQpNum: d.qpn, rqPsn: d.psn, maxDestRdAtomic: my[i]!.outReads, minRnrTimer: DEF.minRnrTimer },
        A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN | (p.conn === 'RC' ? A.MIN_RNR_TIMER | A.MAX_DEST_RD_ATOMIC : 0));
    await rtr.catch((e: unknown) => fail(`Failed to modify QP ${qp.qpNum} to RTR (${messageOf(e)})\n Unable to Connect the HCA's through the link\n`));
    if (!sends) continue;
    const rts = p.conn === 'RC'
      ? qp.modifyQp({ qpState: QpState.RTS, sqPsn: my[i]!.psn, timeout: p.qpTimeout, retryCnt: 7, rnrRetry: 7, maxRdAtomic: d.outReads },
        A.STATE | A.SQ_PSN | A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.MAX_QP_RD_ATOMIC)
      : qp.modifyQp({ qpState: QpState.RTS, sqPsn: my[i]!.psn }, A.STATE | A.SQ_PSN);
    await rts.catch((e: unknown) => fail(`Failed to modify QP to RTS (${messageOf(e)})\n Unable to Connect the HCA's through the link\n`));
    if (p.conn === 'UD') res.ahs[i] = await qp.pd.createAh(ahAttr).catch(() => fail("Failed to create AH\n Unable to Connect the HCA's through the link\n"));
  }
}

/** ibv_req_notify_cq on the send CQ and (when it is another) the receive CQ. */
export function notifyCqs(res: Res): void {
  res.sendCq.reqNotifyCq();
  if (res.recvCq !== res.sendCq) res.recvCq.reqNotifyCq();
}

/** perftest's ibv_req_notify_cq before the loops, for -e. */
export function armCqs(s: Session): void {
  if (s.res.chan) notifyCqs(s.res);
}

// ---------------------------------------------------------------- flows (each perftest main())

/** ctx_set_send_wqes: each QP's WRs, from its slice of the send half to the peer's buffer. */
export function setSendWqes(s: Session, size: number): void {
  const { p, res, rem } = s;
  const lists: SendWr[][] = [];
  for (let i = 0; i < res.qps.length; i++) {
    const list: SendWr[] = [];
    for (let j = 0; j < p.postList; j++) {
      const sge = res.mr.sge(i * res.slice, size);
      const wr: SendWr = { wrId: i, opcode: WrOpcode.SEND, sendFlags: 0, sgList: [sge] };
      if (p.verb === Verb.WRITE) (wr.opcode = WrOpcode.RDMA_WRITE), (wr.rdma = { remoteAddr: rem[i]!.vaddr, rkey: rem[i]!.rkey });
      else if (p.verb === Verb.READ) (wr.opcode = WrOpcode.RDMA_READ), (wr.rdma = { remoteAddr: rem[i]!.vaddr, rkey: rem[i]!.rkey });
      else if (p.verb === Verb.ATOMIC) {
        const cas = p.atomicType === 'CMP_AND_SWAP';
        wr.opcode = cas ? WrOpcode.ATOMIC_CMP_AND_SWP : WrOpcode.ATOMIC_FETCH_AND_ADD;
        // perftest's ATOMIC_ADD_VALUE and ATOMIC_SWAP_VALUE
        wr.atomic = { remoteAddr: rem[i]!.vaddr, rkey: rem[i]!.rkey, compareAdd: cas ? 0n : 1n, swap: cas ? 0n : undefined };
      } else if (p.conn === 'UD') wr.ud = { ah: res.ahs[i]!, remoteQpn: rem[i]!.qpn, remoteQkey: DEF.qkey };
      if ((j + 1) % p.cqMod === 0) wr.sendFlags = SendFlags.SIGNALED;
      if ((p.verb === Verb.SEND || p.verb === Verb.WRITE) && size <= p.inlineSize) wr.sendFlags! |= SendFlags.INLINE;
      list.push(wr);
    }
    lists.push(list);
  }
  s.sendWrs = lists;
}

/** ctx_set_recv_wqes: rx_depth receives per QP into its slice of the receive half (UD: room for the GRH before it). */
export function postRecvs(s: Session, size: number): void {
  const { p, res } = s;
  const list: RecvWr[] = [];
  for (let i = 0; i < res.qps.length; i++) {
    const off = res.recvBase + i * res.slice + (p.conn === 'UD' ? res.cacheLine - 40 : 0);
    const wr: RecvWr = { wrId: i, sgList: [res.mr.sge(off, size + (p.conn === 'UD' ? 40 : 0))] };
    list.push(wr);
    for (let j = 0; j < p.rxDepth; j++) {
      try {
        res.qps[i]!.postRecv(wr);
      } catch (e) {
        fail(`Couldn't post recv Qp = ${i}: counter=${j} (${messageOf(e)})\n`);
      }
    }
  }
  s.recvWrs = list;
}

// ---------------------------------------------------------------- loops
