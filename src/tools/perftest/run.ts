/**
 * The perftest tools (ib_{send,write,read,atomic}_{bw,lat}) as perftest
 * 4.5-0.17 runs them: the same steps in the same order, so that either side
 * can be perftest's own. Each tool's flow — which barriers it exchanges
 * where — follows its perftest main(): that is this file. The resources
 * and the connection are `session.ts`, the loops (perftest's run_iter_*)
 * `loops.ts`, their clock and progress `clock.ts`, the exchange with the
 * peer `exchange.ts`, the printed results `report.ts`.
 */
import { writeFileSync } from 'node:fs';
import { Fail, messageOf } from '../../common/errors.js';
import { inet6 } from '../devinfo.js';
import { isMtu, mtuOfBytes, getDeviceList, openDevice, PortState, type CmId, type Context, type ProtectionDomain, type QpInitAttr } from '../../verbs/index.js';
import { decodeInt, decodeMtu, decodeVersion, encodeInt, encodeMtu, encodeVersion, Oob, type BwReport, type Exchange, type PerfDest } from './exchange.js';
import { CmOob, CmQps } from './cm-exchange.js';
import { DEF, MIN_PEER_VERSION, parse, PERFTEST_VERSION, RESULT_LINE, Verb, type Params, type Tst } from './params.js';
import { addrLines, bannerWaiting, bwHeader, bwJson, bwRow, computeBw, latDuration, latHeader, latJson, latRow, resultLine, testInfo, type InfoCtx } from './report.js';
import { writeSweep } from './sweep.js';
import { armCqs, connectQps, fail, initResources, MTU_BYTES, PORT_STATE, postRecvs, printable, setSendWqes, type Res, type Session } from './session.js';
import { runBw, runLat, runLatSend, runLatWrite, type LatOutcome } from './loops.js';

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
  let oob: Exchange | null = null;
  let cmq: CmQps | null = null;
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

    // -R with -d: the connections leave from (or are taken on) the named device's address. perftest 4.5 binds only
    // to --source_ip and lets the route pick the device, while its header names -d's: a run that said rxe0 ran on rxe1
    const src = p.rdmaCm && p.ibDevname !== null ? addressOf(ctx.queryGid(p.ibPort, 0)) : undefined;
    if (p.machine === 'SERVER' && p.output === 'FULL') out(bannerWaiting());
    if (p.rdmaCm) oob = p.servername ? await CmOob.connect(p.servername, p.port, p, outReads, src) : await CmOob.accept(p.port, p, outReads, src);
    else oob = p.servername ? await Oob.connect(p.servername, p.port) : await Oob.accept(p.port);

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

    let res: Res;
    if (p.rdmaCm) {
      // create_rdma_cm_connection: a barrier, the test QPs connected through the CM on the same port, a barrier
      const zero: PerfDest = { lid: 0, outReads: 0, qpn: 0, psn: 0, rkey: 0, vaddr: 0n, gid: new Uint8Array(16), srqn: 0 };
      const listening = p.servername ? null : await CmQps.listen(p.port, p, src).catch((e: unknown) => fail(`${messageOf(e)}\nFailed to create RDMA CM connection with resources.\n`));
      await oob.handShake(zero);
      let made: Res | null = null;
      let qpInit: { init: QpInitAttr; pd: ProtectionDomain } | null = null;
      const setup = async (cmCtx: Context, ids: CmId[]) => {
        made = await initResources(p, cmCtx, cycleBuffer, cacheLine, (i, init, pd) => ((qpInit = { init, pd }), ids[i]!.createQp(pd, init)));
        return made.qps;
      };
      // a connection tried again: a new id, a new QP in the old one's place
      const remake = async (id: CmId, i: number) => (made!.qps[i] = await id.createQp(qpInit!.pd, qpInit!.init));
      cmq = await (listening ? listening.accept(outReads, setup) : CmQps.connect(p.servername!, p.port, p, outReads, src, setup, remake))
        .catch((e: unknown) => fail(`${messageOf(e).replace(/\n?$/, '\n')}Failed to create RDMA CM connection with resources.\n`));
      res = made!;
      await oob.handShake(zero);
      gid = res.ctx.queryGid(p.ibPort, gidIndex);
    } else res = await initResources(p, ctx, cycleBuffer, cacheLine);
    const my = res.qps.map((qp, i): PerfDest => ({
      lid: port.lid, outReads, qpn: qp.qpNum, psn: Math.floor(Math.random() * 0x1000000), rkey: res.mr.rkey,
      vaddr: res.mr.addr + BigInt(res.recvBase + i * res.slice), gid, srqn: 0,
    }));
    // with -R, the device the CM connected the QPs on (without -d, the route's choice, not the first device)
    const info: InfoCtx = { devName: res.ctx.device.name, mtuBytes: MTU_BYTES(mtu), gidIndex, inlineSize: p.inlineSize, outReads };
    const s: Session = { p, oob, res, my, rem: [], info, out, sweep: [], sendWrs: [], recvWrs: [] };
    out(testInfo(p, info));
    // with -R the CM has taken the QPs to RTS
    const connect = () => (p.rdmaCm ? Promise.resolve() : connectQps(s, mtu, gidIndex));
    if (p.tst === 'BW' && p.verb !== Verb.SEND) await bwRdma(s, connect);
    else if (p.tst === 'BW') await bwSend(s, connect);
    else if (p.verb === Verb.WRITE) await latWrite(s, connect);
    else if (p.verb === Verb.SEND) await latSend(s, connect);
    else await latReadAtomic(s, connect);
    if (s.sweep.length) writeSweep(p, s.sweep);
    // destroy_ctx: rdma_cm_disconnect_nodes
    await cmq?.disconnect();
    return 0;
  } catch (e) {
    if (e instanceof Fail) {
      process.stderr.write(e.message);
      return 1;
    }
    throw e;
  } finally {
    oob?.destroy();
    ctx?.closeDevice();
  }
}


/** One handshake per QP (or just the first), keeping what the peer sent. */
async function shakeAll(s: Session, print = false): Promise<void> {
  for (let i = 0; i < s.my.length; i++) {
    s.rem[i] = await s.oob.handShake(s.my[i]!);
    if (print && s.p.output === 'FULL') s.out(addrLines('remote', s.rem[i]!, addrVerb(s.p)));
  }

}
const shake = async (s: Session) => {
  await s.oob.handShake(s.my[0]!);

};
// ctx_print_pingpong_data prints nothing under --output
const printMine = (s: Session) => s.p.output === 'FULL' && s.out(s.my.map((d) => addrLines('local', d, addrVerb(s.p))).join(''));
/** The address lines follow the exchange's verb: with -R that is the rdma_cm exchange's own, SEND (no RKey, VAddr or reads). */
const addrVerb = (p: Params) => (p.rdmaCm ? Verb.SEND : p.verb);


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
    out(resultLine(p));
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
  out(resultLine(p));
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
  out(resultLine(p));
  await closeConn(s);
}


/** write_lat.c: no closing exchange, each side just ends. */
async function latWrite(s: Session, connect: () => Promise<void>): Promise<void> {
  const { p, out } = s;
  await setUp(s, connect, { first: true, afterConnect: false, afterRtr: true });
  setSendWqes(s, p.size);
  out(latHeader(p));
  for (const size of sizes(p)) latReport(s, size, await runLatWrite(s, size));
  out(resultLine(p));
}


/** read_lat.c / atomic_lat.c: only the client posts; the server waits in its closing exchange. */
async function latReadAtomic(s: Session, connect: () => Promise<void>): Promise<void> {
  const { p, out } = s;
  await setUp(s, connect, { first: true, afterConnect: false, afterRtr: true });
  if (p.machine === 'SERVER') {
    await closeConn(s);
    out(resultLine(p));
    return;
  }
  armCqs(s);
  out(latHeader(p));
  setSendWqes(s, p.size);
  for (const size of sizes(p)) latReport(s, size, await runLat(s, size));
  await closeConn(s);
  out(resultLine(p));
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
  out(resultLine(p));
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
    s.out(r.lat.listing + latRow(p, r.lat));
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

/** The IP address a RoCEv2 GID stands for (an IPv4 one is IPv4-mapped), for rdma_bind_addr / rdma_resolve_addr. */
function addressOf(gid: Uint8Array): string {
  const v4 = gid.subarray(0, 10).every((b) => b === 0) && gid[10] === 0xff && gid[11] === 0xff;
  return v4 ? Array.from(gid.subarray(12)).join('.') : inet6(gid);
}
