/**
 * The perftest tools (ib_{send,write,read,atomic}_{bw,lat}) as perftest
 * 4.5-0.17 runs them: the same steps in the same order, so that either side
 * can be perftest's own. Each tool's flow — which barriers it exchanges
 * where — follows its perftest main(); the loops follow run_iter_bw,
 * run_iter_bw_server, run_iter_lat_write, run_iter_lat_send and
 * run_iter_lat. Loops spin on the CQ (and, for the write latency test, on
 * the last byte of the buffer, as perftest does) and give the event loop a
 * turn every so often, so sockets and the terminal stay served.
 */
import { writeFileSync } from 'node:fs';
import { schedYield } from '../../native/libc.js';
import { performance } from 'node:perf_hooks';
import {
  isMtu, mtuOfBytes, type Mtu,
  Access, getDeviceList, openDevice, PortState, QpAttrMask as A, QpState, QpType, SendFlags, WcStatus, WorkCompletion, WrOpcode,
  type AddressHandle, type CompletionChannel, type CompletionQueue, type Context, type MemoryRegion, type QueuePair, type RecvWr, type SendWr,
} from '../../verbs/index.js';
import { decodeInt, decodeMtu, decodeVersion, encodeInt, encodeMtu, encodeVersion, Oob, OobError, type BwReport, type PerfDest } from './exchange.js';
import { DEF, MIN_PEER_VERSION, parse, PERFTEST_VERSION, RESULT_LINE, Verb, type Params, type Tst } from './params.js';
import {
  addrLines, bannerWaiting, bwHeader, bwJson, bwRow, computeBw, computeLat, latDuration, latHeader, latJson, latRow, testInfo,
  type BwSamples, type InfoCtx, type LatResult,
} from './report.js';
import { writeSweep, type SweepRow } from './sweep.js';

/** A failure perftest reports on stderr before it exits 1: the message is its text, newlines included. */
class Fail extends Error {}
const fail = (err: string): never => {
  throw new Fail(err);
};

const now = () => performance.now() * 1e6;
const MTU_BYTES = (e: number) => 1 << (7 + e);
const CTX_POLL_BATCH = 16;
const PORT_STATE = ['PORT_NOP', 'PORT_DOWN', 'PORT_INIT', 'PORT_ARMED', 'PORT_ACTIVE', 'PORT_ACTIVE_DEFER'];
const BUFF_SIZE = (size: number, cycle: number) => (size < cycle ? cycle : size);
const ROUND_UP = (v: number, a: number) => (v % a === 0 ? v : a * (Math.floor(v / a) + 1));
const INC = (size: number, line: number) => (size > line ? ROUND_UP(size, line) : line);

/** A test's resources (perftest's pingpong_context). */
interface Res {
  ctx: Context;
  mr: MemoryRegion;
  sendCq: CompletionQueue;
  recvCq: CompletionQueue;
  chan: CompletionChannel | null;
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
interface Session {
  p: Params;
  oob: Oob;
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

/** Entry point of every perftest bin. */
export async function run(tool: string, verb: Verb, tst: Tst, argv: string[]): Promise<number> {
  const parsed = parse(tool, verb, tst, argv);
  if (parsed.kind === 'exit') {
    process.stdout.write(parsed.out);
    process.stderr.write(parsed.err);
    return parsed.code;
  }
  const p = parsed.params;
  const out = (s: string) => process.stdout.write(s);
  out(parsed.out);
  let oob: Oob | null = null;
  let ctx: Context | null = null;
  try {
    const devs = getDeviceList();
    if (!devs.length) fail('No IB devices found\n Unable to find the Infiniband/RoCE device\n');
    const dev = p.ibDevname === null ? devs[0]! : devs.find((d) => d.name === p.ibDevname) ?? fail(`IB device ${p.ibDevname} not found\n Unable to find the Infiniband/RoCE device\n`);
    ctx = await openDevice(dev).catch(() => fail(" Couldn't get context for the device\n"));
    const port = await ctx.queryPort(p.ibPort).catch(() => fail(` Unable to query port ${p.ibPort} attributes\n Couldn't get context for the device\n`));
    if (port.state !== PortState.ACTIVE) fail(` Port number ${p.ibPort} state is ${PORT_STATE[port.state] ?? port.state}\n Couldn't set the link layer\n Couldn't get context for the device\n`);
    // check_link on an Ethernet port: GID index 0 unless asked; an unrecognised device (rxe, and us) gets no inline
    const gidIndex = p.gidIndex === -1 ? 0 : p.gidIndex;
    if (p.inlineSize !== -1) {
      out(RESULT_LINE);
      process.stderr.write('Device not recognized to implement inline feature. Disabling it\n');
    }
    p.inlineSize = 0;
    const devAttr = await ctx.queryDevice();
    let outReads = 1;
    if (p.verb === Verb.READ || p.verb === Verb.ATOMIC) {
      const max = devAttr.maxQpRdAtom;
      outReads = p.outReads;
      if (outReads > max) {
        out(RESULT_LINE);
        process.stderr.write(` Number of outstanding reads is above max = ${max}\n Changing to that max value\n`);
        outReads = max;
      } else if (outReads <= 0) outReads = max;
    }
    let gid: Uint8Array;
    try {
      gid = ctx.queryGid(p.ibPort, gidIndex);
    } catch {
      return fail(` Failed to query GID index ${gidIndex} of port ${p.ibPort}\n Unable to set up socket connection\n`);
    }

    if (p.machine === 'SERVER') out(bannerWaiting());
    oob = p.servername ? await Oob.connect(p.servername, p.port) : await Oob.accept(p.port);

    // exchange_versions, check_version_compatibility, check_sys_data, check_mtu
    const rv = decodeVersion(await oob.xchg(encodeVersion(PERFTEST_VERSION), 'version'));
    if (rv.value < MIN_PEER_VERSION) {
      const what = /^[0-9]{4}:[0-9a-f]{6}:/i.test(rv.text) ? ' (it looks like an ibv_*_pingpong address message)' : '';
      fail(`Current implementation is not compatible with versions older than 5.70\n The peer speaks perftest exchange version "${printable(rv.text)}"${what}; softverbs speaks ${PERFTEST_VERSION} (perftest 4.5-0.17)\n`);
    }
    const remCycle = decodeInt(await oob.xchg(encodeInt(DEF.pageSize), 'page size'));
    const remLine = decodeInt(await oob.xchg(encodeInt(DEF.cacheLine), 'cache line size'));
    const cycleBuffer = Math.max(DEF.pageSize, remCycle);
    const cacheLine = Math.max(DEF.cacheLine, remLine);
    let mtu = port.activeMtu;
    if (p.mtu) {
      const e = mtuOfBytes(p.mtu);
      if (!e) process.stderr.write(` Invalid MTU - ${p.mtu} \n Please choose mtu from {256,512,1024,2048,4096}\n Will run with the port active mtu - ${port.activeMtu}\n`);
      else if (e > port.activeMtu) out(`Requested mtu is higher than active mtu \nChanging to active mtu - ${port.activeMtu}\n`);
      else mtu = e;
    }
    const remMtu = decodeMtu(await oob.xchg(encodeMtu(mtu), 'MTU'));
    if (isMtu(remMtu) && mtu > remMtu) mtu = remMtu;
    if (p.conn === 'UD' && p.size > MTU_BYTES(mtu)) {
      if (p.testMethod === 'ALL' || !p.reqSize) {
        process.stderr.write(` Max msg size in UD is MTU ${MTU_BYTES(mtu)}\n Changing to this MTU\n`);
        p.size = MTU_BYTES(mtu);
      } else fail(' Max message size in UD cannot be greater than MTU \n');
    }

    const res = await initResources(p, ctx, cycleBuffer, cacheLine);
    const my = res.qps.map((qp, i): PerfDest => ({
      lid: port.lid, outReads, qpn: qp.qpNum, psn: Math.floor(Math.random() * 0x1000000), rkey: res.mr.rkey,
      vaddr: res.mr.addr + BigInt(res.recvBase + i * res.slice), gid, srqn: 0,
    }));
    const info: InfoCtx = { devName: dev.name, mtuBytes: MTU_BYTES(mtu), gidIndex, inlineSize: p.inlineSize, outReads };
    const s: Session = { p, oob, res, my, rem: [], info, out, sweep: [], sendWrs: [], recvWrs: [] };
    out(testInfo(p, info));
    const connect = () => connectQps(s, mtu, gidIndex);
    if (p.tst === 'BW' && p.verb !== Verb.SEND) await bwRdma(s, connect);
    else if (p.tst === 'BW') await bwSend(s, connect);
    else if (p.verb === Verb.WRITE) await latWrite(s, connect);
    else if (p.verb === Verb.SEND) await latSend(s, connect);
    else await latReadAtomic(s, connect);
    if (s.sweep.length) writeSweep(p, s.sweep);
    return 0;
  } catch (e) {
    if (e instanceof Fail || e instanceof OobError) {
      process.stderr.write(e.message);
      return 1;
    }
    throw e;
  } finally {
    oob?.destroy();
    ctx?.closeDevice();
  }
}

const printable = (s: string) => s.replace(/[^\x20-\x7e]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`).slice(0, 32);

/** ctx_init: one buffer and MR for all QPs (send half, receive half), CQs, QPs in INIT. */
async function initResources(p: Params, ctx: Context, cycleBuffer: number, cacheLine: number): Promise<Res> {
  const slice = BUFF_SIZE(p.size, cycleBuffer);
  const inc = INC(slice, cacheLine);
  let bytes = inc * 2 * p.numQps;
  if (p.conn === 'UD') bytes += cacheLine;
  const access = Access.LOCAL_WRITE |
    (p.verb === Verb.WRITE ? Access.REMOTE_WRITE : p.verb === Verb.READ ? Access.REMOTE_READ : p.verb === Verb.ATOMIC ? Access.REMOTE_ATOMIC : 0);
  const chan = p.useEvent ? await ctx.createCompChannel().catch(() => fail(" Couldn't create a completion channel\n Couldn't create IB resources\n")) : null;
  const pd = await ctx.allocPd().catch(() => fail(" Couldn't allocate PD\n Couldn't create IB resources\n"));
  const mr = await pd.allocMr(bytes, access).catch((e: Error) => fail(` Couldn't allocate MR: ${e.message}\n Couldn't create IB resources\n`));
  // perftest fills its buffer with random bytes; a write latency test counts on the poll byte not matching 1 at start
  mr.buf.fill(0);
  const needRecv = p.verb === Verb.SEND;
  const sendCq = await ctx.createCq(Math.max(1, p.txDepth * p.numQps), chan).catch(() => fail(" Couldn't create CQ\n Couldn't create IB resources\n"));
  const recvCq = needRecv ? await ctx.createCq(Math.max(1, p.rxDepth * p.numQps), chan).catch(() => fail(" Couldn't create CQ\n Couldn't create IB resources\n")) : sendCq;
  const qpType = p.conn === 'UC' ? QpType.UC : p.conn === 'UD' ? QpType.UD : QpType.RC;
  const qps: QueuePair[] = [];
  for (let i = 0; i < p.numQps; i++) {
    const qp = await pd.createQp({
      sendCq, recvCq, qpType, sqSigAll: false,
      cap: { maxSendWr: Math.max(p.txDepth, p.postList), maxRecvWr: needRecv ? p.rxDepth : 1, maxSendSge: 1, maxRecvSge: 1, maxInlineData: p.inlineSize },
    }).catch((e: Error) => fail(` Unable to create QP: ${e.message}\n Couldn't create IB resources\n`));
    const qpAccess = p.verb === Verb.ATOMIC ? Access.REMOTE_ATOMIC : p.verb === Verb.READ ? Access.REMOTE_READ : p.verb === Verb.WRITE ? Access.REMOTE_WRITE : Access.REMOTE_WRITE | Access.LOCAL_WRITE;
    const ud = p.conn === 'UD';
    await qp.modifyQp(ud ? { qpState: QpState.INIT, pkeyIndex: 0, portNum: p.ibPort, qkey: DEF.qkey } : { qpState: QpState.INIT, pkeyIndex: 0, portNum: p.ibPort, qpAccessFlags: qpAccess },
      A.STATE | A.PKEY_INDEX | A.PORT | (ud ? A.QKEY : A.ACCESS_FLAGS)).catch((e: Error) => fail(`Failed to modify QP to INIT, ret=${e.message}\n Couldn't create IB resources\n`));
    qps.push(qp);
  }
  return { ctx, mr, sendCq, recvCq, chan, qps, ahs: qps.map(() => null), slice, recvBase: p.numQps * slice, cacheLine, cycleBuffer };
}

/** ctx_connect: RTR for everyone, RTS for whoever sends (clients, latency tests, bidirectional runs). */
async function connectQps(s: Session, mtu: Mtu, gidIndex: number): Promise<void> {
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
    await rtr.catch((e: Error) => fail(`Failed to modify QP ${qp.qpNum} to RTR (${e.message})\n Unable to Connect the HCA's through the link\n`));
    if (!sends) continue;
    const rts = p.conn === 'RC'
      ? qp.modifyQp({ qpState: QpState.RTS, sqPsn: my[i]!.psn, timeout: p.qpTimeout, retryCnt: 7, rnrRetry: 7, maxRdAtomic: d.outReads },
        A.STATE | A.SQ_PSN | A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.MAX_QP_RD_ATOMIC)
      : qp.modifyQp({ qpState: QpState.RTS, sqPsn: my[i]!.psn }, A.STATE | A.SQ_PSN);
    await rts.catch((e: Error) => fail(`Failed to modify QP to RTS (${e.message})\n Unable to Connect the HCA's through the link\n`));
    if (p.conn === 'UD') res.ahs[i] = await qp.pd.createAh(ahAttr).catch(() => fail("Failed to create AH\n Unable to Connect the HCA's through the link\n"));
  }
}

/** One handshake per QP (or just the first), keeping what the peer sent. */
async function shakeAll(s: Session, print = false): Promise<void> {
  for (let i = 0; i < s.my.length; i++) {
    s.rem[i] = await s.oob.handShake(s.my[i]!);
    if (print) s.out(addrLines('remote', s.rem[i]!, s.p.verb));
  }
}
const shake = async (s: Session) => {
  await s.oob.handShake(s.my[0]!);
};
const printMine = (s: Session) => s.out(s.my.map((d) => addrLines('local', d, s.p.verb)).join(''));

/** perftest's ibv_req_notify_cq before the loops, for -e. */
function armCqs(s: Session): void {
  if (s.res.chan) {
    s.res.sendCq.reqNotifyCq();
    if (s.res.recvCq !== s.res.sendCq) s.res.recvCq.reqNotifyCq();
  }
}

// ---------------------------------------------------------------- flows (each perftest main())

/**
 * The part every tool shares: the key-message exchanges around ctx_connect
 * and the address lines. Where the extra single barriers fall is what
 * differs between perftest's mains, so it is spelled out per tool.
 */
interface Barriers {
  /** one before the per-QP exchange (the latency tests) */
  first: boolean;
  /** one right after ctx_connect (the SEND tests) */
  afterConnect: boolean;
  /** one after the remote addresses are printed, "after moving the QP to RTR" (the RDMA tests) */
  afterRtr: boolean;
}

async function setUp(s: Session, connect: () => Promise<void>, b: Barriers): Promise<void> {
  if (b.first) await shake(s);
  await shakeAll(s);
  await connect();
  if (b.afterConnect) await shake(s);
  printMine(s);
  await shakeAll(s, true);
  if (b.afterRtr) await shake(s);
}

/** write_bw.c / read_bw.c / atomic_bw.c */
async function bwRdma(s: Session, connect: () => Promise<void>): Promise<void> {
  const { p, oob, out } = s;
  await setUp(s, connect, { first: false, afterConnect: false, afterRtr: true });
  armCqs(s);
  out(bwHeader(p));
  if (p.machine === 'SERVER' && !p.duplex) {
    await shake(s); // waits for the client to finish
    const rem = await oob.xchgBwReports(zeroReport());
    // print_full_bw_report of the client's numbers: the row, and --out_json's file too
    out(bwRow(p, rem));
    if (p.outJson) writeJson(p, bwJson(p, s.info, rem));
    await closeConn(s);
    out(RESULT_LINE);
    return;
  }
  let last: BwReport = zeroReport();
  for (const size of sizes(p)) {
    setSendWqes(s, size);
    if (p.duplex) await shake(s);
    const samples = await runBw(s, size, false);
    // perftest >= 4.6 syncs again after each size of a bidirectional sweep (not after a single size)
    if (p.duplex && p.testMethod === 'ALL') await shake(s);
    last = computeBw(p, samples);
    if (!p.duplex) report(s, last, null);
    else report(s, last, await oob.xchgBwReports(last));
  }
  out(RESULT_LINE);
  if (!p.duplex) {
    await shake(s);
    await oob.xchgBwReports(last);
  }
  await closeConn(s);
}

/** send_bw.c */
async function bwSend(s: Session, connect: () => Promise<void>): Promise<void> {
  const { p, oob, out } = s;
  await setUp(s, connect, { first: false, afterConnect: true, afterRtr: false });
  armCqs(s);
  out(bwHeader(p));
  const recvs = p.machine === 'SERVER' || p.duplex;
  const sends = p.machine === 'CLIENT' || p.duplex;
  for (const size of sizes(p)) {
    if (sends) setSendWqes(s, size);
    if (recvs) postRecvs(s, size);
    await shake(s);
    const samples = await runBw(s, size, !sends);
    const mine = computeBw(p, samples);
    if (!p.duplex) report(s, mine, null);
    else report(s, mine, await oob.xchgBwReports(mine));
    if (p.testMethod === 'ALL') await shake(s);
  }
  out(RESULT_LINE);
  await closeConn(s);
}

/** write_lat.c: no closing exchange, each side just ends. */
async function latWrite(s: Session, connect: () => Promise<void>): Promise<void> {
  const { p, out } = s;
  await setUp(s, connect, { first: true, afterConnect: false, afterRtr: true });
  setSendWqes(s, p.size);
  out(latHeader(p));
  for (const size of sizes(p)) latReport(s, size, await runLatWrite(s, size));
  out(RESULT_LINE);
}

/** read_lat.c / atomic_lat.c: only the client posts; the server waits in its closing exchange. */
async function latReadAtomic(s: Session, connect: () => Promise<void>): Promise<void> {
  const { p, out } = s;
  await setUp(s, connect, { first: true, afterConnect: false, afterRtr: true });
  if (p.machine === 'SERVER') {
    await closeConn(s);
    out(RESULT_LINE);
    return;
  }
  armCqs(s);
  out(latHeader(p));
  setSendWqes(s, p.size);
  for (const size of sizes(p)) latReport(s, size, await runLat(s, size));
  await closeConn(s);
  out(RESULT_LINE);
}

/** send_lat.c */
async function latSend(s: Session, connect: () => Promise<void>): Promise<void> {
  const { p, out } = s;
  await setUp(s, connect, { first: false, afterConnect: true, afterRtr: false });
  armCqs(s);
  out(latHeader(p));
  setSendWqes(s, p.size);
  for (const size of sizes(p)) {
    postRecvs(s, size);
    await shake(s);
    latReport(s, size, await runLatSend(s, size));
  }
  out(RESULT_LINE);
  await closeConn(s);
}

/** ctx_close_connection: one more barrier, then "done". */
async function closeConn(s: Session): Promise<void> {
  await shake(s);
  await s.oob.close();
}

const zeroReport = (): BwReport => ({ size: 0n, iters: 0n, bwPeak: 0, bwAvg: 0, msgRate: 0 });

/** The sizes a run covers: -a's powers of two (UD only up to the MTU), or the one size. */
function sizes(p: Params): number[] {
  if (p.testMethod !== 'ALL') return [p.size];
  const maxPow = p.conn === 'UD' ? Math.log2(p.size) + 1 : 24;
  return Array.from({ length: maxPow - 1 }, (_, i) => 2 ** (i + 1));
}

function report(s: Session, mine: BwReport, rem: BwReport | null): void {
  const { p } = s;
  s.out(bwRow(p, mine, rem));
  if (p.outJson) writeJson(p, bwJson(p, s.info, mine, rem));
  if (p.testMethod === 'ALL') {
    s.sweep.push({ size: Number(mine.size), bwPeak: mine.bwPeak + (rem?.bwPeak ?? 0), bwAvg: mine.bwAvg + (rem?.bwAvg ?? 0), msgRate: mine.msgRate + (rem?.msgRate ?? 0) });
  }
}

function latReport(s: Session, size: number, r: LatOutcome): void {
  const { p } = s;
  if ('lat' in r) {
    s.out(r.lat.listing + latRow(r.lat));
    if (p.outJson) writeJson(p, latJson(p, s.info, r.lat));
    if (p.testMethod === 'ALL') {
      const l = r.lat;
      s.sweep.push({ size, tMin: l.tMin, tTypical: l.tTypical, tAvg: l.tAvg, p99: l.p99, tMax: l.tMax });
    }
  } else {
    const d = latDuration(p, size, r.iters, r.spanNs);
    s.out(d.row);
    if (p.outJson) writeJson(p, d.json(s.info));
  }
}

function writeJson(p: Params, text: string): void {
  try {
    writeFileSync(p.outJsonFile, text, { mode: 0o600 });
  } catch {
    process.stderr.write(`failed to open ${p.outJsonFile}\n`);
  }
}

// ---------------------------------------------------------------- work requests

/** ctx_set_send_wqes: each QP's WRs, from its slice of the send half to the peer's buffer. */
function setSendWqes(s: Session, size: number): void {
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
function postRecvs(s: Session, size: number): void {
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
        fail(`Couldn't post recv Qp = ${i}: counter=${j} (${(e as Error).message})\n`);
      }
    }
  }
  s.recvWrs = list;
}

// ---------------------------------------------------------------- loops

/**
 * Gives the event loop a turn every `every` calls (sockets, the TTY,
 * completion channels). A loop that still waits for its peer a second after
 * the peer closed the out-of-band connection stops with an error: perftest
 * (and rxe, where retry_cnt 7 retries forever) would wait for ever.
 */
function spinner(s: Session, every = 1024): () => Promise<void> | null {
  let n = 0;
  return () => {
    // on 2 cores, two spinning tools and the daemon: a spin that never yields starves the HCA itself
    // (ib_send_bw 4 KiB: 0.05 -> 0.15-0.20 Mpps, ib_send_lat p99 630 -> 45 us on this machine)
    if (++n % 64 === 0) schedYield();
    if (n % every !== 0) return null;
    const gone = s.oob.peerGoneAt;
    if (gone && Date.now() - gone > 1000 && s.p.testType === 'ITERATIONS') {
      fail(' The peer closed the out-of-band connection in the middle of the test (did it exit?)\n');
    }
    return new Promise<void>((r) => setImmediate(r));
  };
}

/** -D: perftest's alarm states (warm-up margin, sample, cool-down margin), by clock. */
class Clock {
  readonly t0 = now();
  readonly sampleFrom: number;
  readonly sampleTo: number;
  readonly end: number;
  constructor(p: Params) {
    this.sampleFrom = this.t0 + p.margin * 1e9;
    this.sampleTo = this.t0 + (p.duration - p.margin) * 1e9;
    this.end = this.t0 + p.duration * 1e9;
  }
}

/** Live progress for -D runs on a terminal: one line, rewritten every second. */
class Progress {
  private next = 0;
  private lastT = 0;
  private lastN = 0;
  readonly on: boolean;
  constructor(private p: Params, private size: number, private clock: Clock | null) {
    this.on = !!clock && !!process.stderr.isTTY;
    this.lastT = clock?.t0 ?? 0;
    this.next = this.lastT + 1e9;
  }
  tick(t: number, n: number): void {
    if (!this.on || t < this.next) return;
    const dt = (t - this.lastT) / 1e9;
    const rate = (n - this.lastN) / dt;
    const el = (t - this.clock!.t0) / 1e9;
    const phase = t < this.clock!.sampleFrom ? 'warm-up' : t < this.clock!.sampleTo ? 'sampling' : 'cool-down';
    const what = this.p.tst === 'BW'
      ? `${((rate * this.size) / (this.p.reportGbits ? 125000000 : 0x100000)).toFixed(2)} ${this.p.reportGbits ? 'Gb/sec' : 'MB/sec'}  ${(rate / 1e6).toFixed(6)} Mpps`
      : `${rate.toFixed(0)} iters/sec  ${(1e6 / rate / (this.p.verb === Verb.READ || this.p.verb === Verb.ATOMIC ? 1 : 2)).toFixed(2)} usec`;
    process.stderr.write(`\r\x1b[K ${el.toFixed(0)}/${this.p.duration} s  ${phase}  ${what}`);
    this.lastT = t;
    this.lastN = n;
    this.next = t + 1e9;
  }
  done(): void {
    if (this.on) process.stderr.write('\r\x1b[K');
  }
}

/**
 * Polls until `cq` yields a completion: spinning (with turns for the event
 * loop), or with -e sleeping on the completion channel between polls. An
 * event may belong to the other CQ: whichever CQ it names is re-armed, and
 * polling first means nothing that already arrived waits for an event.
 */
type LatOutcome = { lat: LatResult } | { iters: number; spanNs: number };

/**
 * What the latency loops share: per-iteration start times, or with -D the
 * clock (perftest's alarm states) and the round trips that fell between the
 * margins, and the live progress line.
 */
class LatRun {
  readonly clock: Clock | null;
  readonly iters: number;
  readonly tposted: Float64Array;
  private readonly progress: Progress;
  private sampled = 0;
  private tFrom = 0;
  private tTo = 0;
  constructor(private p: Params, private size: number) {
    this.clock = p.testType === 'DURATION' ? new Clock(p) : null;
    this.progress = new Progress(p, size, this.clock);
    this.iters = this.clock ? Infinity : p.iters;
    this.tposted = new Float64Array(this.clock ? 1 : p.iters);
  }
  /** false once a -D run's time is up */
  running(): boolean {
    const c = this.clock;
    if (!c) return true;
    const t = now();
    if (!this.tFrom && t >= c.sampleFrom) this.tFrom = t;
    if (!this.tTo && t >= c.sampleTo) this.tTo = t;
    if (t >= c.end) return false;
    this.progress.tick(t, this.sampled);
    return true;
  }
  /** iteration i begins */
  post(i: number): void {
    if (!this.clock) this.tposted[i] = now();
  }
  /** a round trip completed */
  count(): void {
    if (this.tFrom && !this.tTo) this.sampled++;
  }
  get until(): number {
    return this.clock ? this.clock.end : Infinity;
  }
  finish(): LatOutcome {
    this.progress.done();
    if (this.clock) return { iters: this.sampled, spanNs: (this.tTo || now()) - this.tFrom };
    return { lat: computeLat(this.p, this.size, this.tposted, this.p.iters) };
  }
}

async function pollNext(s: Session, cq: CompletionQueue, wcs: WorkCompletion[], spin: () => Promise<void> | null, until = Infinity): Promise<number> {
  for (;;) {
    const ne = cq.pollCq(wcs) as number;
    if (ne) return ne;
    if (s.res.chan) await waitEvent(s);
    else {
      const y = spin();
      if (y) {
        await y;
        if (until !== Infinity && now() >= until) return 0;
      }
    }
  }
}

async function waitEvent(s: Session): Promise<void> {
  const cq = await s.res.chan!.getCqEvent();
  if (!cq) fail(" Failed to get cq_event\n");
  cq!.ackCqEvents(1);
  cq!.reqNotifyCq();
}

function wcError(wc: WorkCompletion, side: 'client' | 'server', counts: string): never {
  return fail(` Completion with error at ${side}\n Failed status ${wc.status}: wr_id ${Number(wc.wrId)} syndrom 0x${wc.vendorErr.toString(16)}\n${counts}\n`);
}

/**
 * run_iter_bw (senders, including both sides of -b) and run_iter_bw_server
 * (a SEND test's receiver): returns what print_report_bw needs.
 */
async function runBw(s: Session, size: number, receiverOnly: boolean): Promise<BwSamples> {
  const { p, res } = s;
  const nq = res.qps.length;
  const durationMode = p.testType === 'DURATION';
  const clock = durationMode ? new Clock(p) : null;
  const progress = new Progress(p, size, clock);
  const spin = spinner(s);
  const wcs = Array.from({ length: CTX_POLL_BATCH }, () => new WorkCompletion());
  const recvs = p.verb === Verb.SEND && (receiverOnly || p.duplex);
  const iters = p.iters;
  const tot = iters * nq;
  const peak = !p.noPeak && !receiverOnly;
  const tposted = new Float64Array(peak ? Math.max(1, tot) : 1);
  const tcompleted = new Float64Array(peak ? Math.max(1, tot) : 1);
  const scnt = new Array<number>(nq).fill(0);
  const ccnt = new Array<number>(nq).fill(0);
  const posted = new Array<number>(nq).fill(p.rxDepth);
  let totscnt = 0;
  let totccnt = 0;
  let rcnt = 0;
  let sampled = 0;
  let firstRx = true;
  let sampling = !durationMode;
  const lists = s.sendWrs;
  const rwrs = s.recvWrs;
  if (!peak && !receiverOnly) tposted[0] = now();
  const sendDone = () => receiverOnly || (totscnt >= tot && totccnt >= tot);
  const recvDone = () => !recvs || rcnt >= tot;
  for (;;) {
    let t = 0;
    if (clock) {
      t = now();
      if (!sampling && t >= clock.sampleFrom && t < clock.sampleTo) {
        sampling = true;
        tposted[0] = t;
      } else if (sampling && t >= clock.sampleTo && t < clock.end && tcompleted[0] === 0) {
        tcompleted[0] = t;
        sampling = false;
      }
      if (t >= clock.end) {
        if (tcompleted[0] === 0) tcompleted[0] = t;
        break;
      }
      progress.tick(t, sampled);
    } else if (sendDone() && recvDone()) break;
    let idle = true;
    if (!receiverOnly) {
      for (let q = 0; q < nq; q++) {
        const list = lists[q]!;
        while ((durationMode || scnt[q]! < iters) && scnt[q]! - ccnt[q]! + p.postList <= p.txDepth) {
          if (p.postList === 1) {
            const k = scnt[q]!;
            const sig = k % p.cqMod === p.cqMod - 1 || (!durationMode && k === iters - 1);
            list[0]!.sendFlags = (list[0]!.sendFlags! & ~SendFlags.SIGNALED) | (sig ? SendFlags.SIGNALED : 0);
          }
          if (peak) tposted[totscnt] = now();
          try {
            res.qps[q]!.postSend(p.postList === 1 ? list[0]! : list);
          } catch (e) {
            fail(`Couldn't post send: qp ${q} scnt=${scnt[q]} (${(e as Error).message})\n Failed to complete run_iter_bw function successfully\n`);
          }
          scnt[q]! += p.postList;
          totscnt += p.postList;
          idle = false;
        }
      }
      if (totccnt < tot || (durationMode && totccnt < totscnt)) {
        const ne = res.sendCq.pollCq(wcs) as number;
        for (let i = 0; i < ne; i++) {
          const wc = wcs[i]!;
          if (wc.status !== WcStatus.SUCCESS) wcError(wc, 'client', `scnt=${totscnt}, ccnt=${totccnt}`);
          const q = Number(wc.wrId);
          ccnt[q]! += p.cqMod;
          totccnt += p.cqMod;
          if (peak) tcompleted[totccnt > tot ? tot - 1 : totccnt - 1] = now();
          if (sampling && durationMode) sampled += p.cqMod;
        }
        if (ne > 0) idle = false;
      }
    }
    if (recvs && (durationMode || rcnt < tot)) {
      const ne = res.recvCq.pollCq(wcs) as number;
      for (let i = 0; i < ne; i++) {
        const wc = wcs[i]!;
        if (wc.status !== WcStatus.SUCCESS) wcError(wc, 'server', ` rcnt=${rcnt}`);
        if (firstRx && receiverOnly && !durationMode) {
          tposted[0] = now();
          firstRx = false;
        }
        const q = Number(wc.wrId);
        rcnt++;
        if (receiverOnly && sampling && durationMode) sampled++;
        if (durationMode || posted[q]! + 1 <= iters) {
          res.qps[q]!.postRecv(rwrs[q]!);
          posted[q]!++;
        }
      }
      if (ne > 0) idle = false;
    }
    if (idle) {
      // nothing to post and nothing completed: sleep on the channel (-e), or let the event loop in now and then
      if (res.chan && !(sendDone() && recvDone())) await waitEvent(s);
      else {
        const y = spin();
        if (y) await y;
      }
    }
  }
  progress.done();
  if (!durationMode && !peak) tcompleted[0] = now();
  return { size, iters: durationMode ? sampled : tot, tposted, tcompleted, noPeak: !peak, cqMod: p.cqMod, postList: p.postList };
}

/** run_iter_lat_write: each side writes its counter into the last byte of the peer's buffer and spins on its own. */
async function runLatWrite(s: Session, size: number): Promise<LatOutcome> {
  const { p, res } = s;
  const wr = s.sendWrs[0]![0]!;
  wr.sgList![0]!.length = size;
  wr.sendFlags = SendFlags.SIGNALED | (size <= p.inlineSize ? SendFlags.INLINE : 0);
  const buf = new Uint8Array(res.mr.buf.buffer, res.mr.buf.byteOffset, res.mr.buf.byteLength);
  const postOff = size - 1;
  const pollOff = res.recvBase + size - 1;
  const wcs = [new WorkCompletion()];
  const r = new LatRun(p, size);
  const iters = r.iters;
  const spin = spinner(s, 4096);
  let scnt = 0;
  let ccnt = 0;
  let rcnt = 0;
  while ((scnt < iters || ccnt < iters || rcnt < iters) && r.running()) {
    if (rcnt < iters && !(scnt < 1 && p.machine === 'SERVER')) {
      rcnt++;
      const want = rcnt & 0xff;
      // Atomics.load: a plain read in a loop with no other side effect may be hoisted by the JIT
      while (Atomics.load(buf, pollOff) !== want) {
        const y = spin();
        if (y) await y;
        if (r.clock && now() >= r.until) break;
      }
    }
    if (scnt < iters) {
      r.post(scnt);
      buf[postOff] = ++scnt & 0xff;
      res.qps[0]!.postSend(wr);
    }
    if (ccnt < iters) {
      const ne = await pollNext(s, res.sendCq, wcs, spin, r.until);
      if (!ne) continue; // -D: the time is up
      if (wcs[0]!.status !== WcStatus.SUCCESS) wcError(wcs[0]!, 'client', `scnt=${scnt}, ccnt=${ccnt}`);
      ccnt += ne;
      r.count();
    }
  }
  return r.finish();
}

/** run_iter_lat: post, wait for the completion, repeat (READ and atomics: the client alone). */
async function runLat(s: Session, size: number): Promise<LatOutcome> {
  const { p, res } = s;
  const wr = s.sendWrs[0]![0]!;
  wr.sgList![0]!.length = size;
  wr.sendFlags = SendFlags.SIGNALED;
  const wcs = [new WorkCompletion()];
  const r = new LatRun(p, size);
  const spin = spinner(s, 4096);
  for (let scnt = 0; scnt < r.iters && r.running(); ) {
    r.post(scnt++);
    res.qps[0]!.postSend(wr);
    const ne = await pollNext(s, res.sendCq, wcs, spin, r.until);
    if (ne > 0 && wcs[0]!.status !== WcStatus.SUCCESS) wcError(wcs[0]!, 'client', `scnt=${scnt}, ccnt=${scnt}`);
    if (ne > 0) r.count();
  }
  return r.finish();
}

/** run_iter_lat_send: the server answers each SEND with one; the client sends first. */
async function runLatSend(s: Session, size: number): Promise<LatOutcome> {
  const { p, res } = s;
  const wr = s.sendWrs[0]![0]!;
  const rwr = s.recvWrs[0]!;
  wr.sgList![0]!.length = size;
  wr.sendFlags = size <= p.inlineSize ? SendFlags.INLINE : 0;
  const wcs = [new WorkCompletion()];
  const swc = [new WorkCompletion()];
  const r = new LatRun(p, size);
  const iters = r.iters;
  const spin = spinner(s, 4096);
  let scnt = 0;
  let rcnt = 0;
  while ((scnt < iters || rcnt < iters) && r.running()) {
    if (rcnt < iters && !(scnt < 1 && p.machine === 'CLIENT')) {
      const ne = await pollNext(s, res.recvCq, wcs, spin, r.until);
      if (ne > 0) {
        if (wcs[0]!.status !== WcStatus.SUCCESS) wcError(wcs[0]!, 'server', ` rcnt=${rcnt}`);
        rcnt++;
        r.count();
        if (rcnt + p.rxDepth <= iters) res.qps[0]!.postRecv(rwr);
      }
    }
    if (scnt < iters) {
      r.post(scnt);
      scnt++;
      const signal = scnt % p.cqMod === 0 || scnt === iters;
      wr.sendFlags = (wr.sendFlags! & ~SendFlags.SIGNALED) | (signal ? SendFlags.SIGNALED : 0);
      res.qps[0]!.postSend(wr);
      if (signal) {
        if (!(await pollNext(s, res.sendCq, swc, spin, r.until))) continue;
        if (swc[0]!.status !== WcStatus.SUCCESS) wcError(swc[0]!, 'client', `scnt=${scnt}, ccnt=${scnt}`);
      }
    }
  }
  return r.finish();
}
