/**
 * The bench's softverbs measurements: WRITE bandwidth, SEND rate, SEND ping-pong, many QPs and the perftest
 * tools, each with what every process involved (clients, daemons, tools) spent on it (bench/procstat.ts).
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { schedYield } from '../src/native/libc.js';
import { preloadEnv } from '../src/tools/exec.js';

/** Where Debian's perftest puts its tools. */
export const C_PERFTEST = '/usr/bin';
import { lat, tick, type Lat } from './measure.js';
import { measured, perOp, Window, type Figures, type Proc } from './procstat.js';
import {
  Access, getDeviceList, Mtu, openDevice, QpAttrMask as A, QpState, QpType, SendFlags, WcStatus, WorkCompletion, WrOpcode, type QueuePair,
} from '../src/verbs/index.js';

const RUN = join(dirname(fileURLToPath(import.meta.url)), 'run.js');
export const SIZE = 64 * 1024;
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
const PINGS = Number(process.env.BENCH_PINGS ?? 20000);
const ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;

/** This process, as the line's client(s). */
export const bench = (name: string): Proc => ({ name: `${name} (bench)`, pid: process.pid });

export async function connect(qp: QueuePair, qpn: number, gid: Uint8Array): Promise<void> {
  await qp.modifyQp({ qpState: QpState.INIT, pkeyIndex: 0, portNum: 1, qpAccessFlags: ALL }, A.STATE | A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS);
  await qp.modifyQp({ qpState: QpState.RTR, pathMtu: Mtu.MTU_4096, destQpNum: qpn, rqPsn: 0, maxDestRdAtomic: 16, minRnrTimer: 1, ahAttr: { grh: { dgid: gid } } }, A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN | A.MAX_DEST_RD_ATOMIC | A.MIN_RNR_TIMER);
  await qp.modifyQp({ qpState: QpState.RTS, sqPsn: 0, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 16 }, A.STATE | A.SQ_PSN | A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.MAX_QP_RD_ATOMIC);
}

export async function setup(root: string, events = false) {
  const ctx = await openDevice(getDeviceList(root)[0]!, root);
  const pd = await ctx.allocPd();
  const ch = events ? await ctx.createCompChannel() : null;
  const cq = await ctx.createCq(1024, ch);
  const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 256, maxRecvWr: 1024 } });
  const mr = await pd.allocMr(SIZE * 2, ALL);
  return { ctx, pd, cq, qp, mr, ch };
}

/**
 * RDMA_WRITE bandwidth (bytes/s) with a window of outstanding WRs. The client busy-polls, or (events) sleeps
 * on the CQ's completion channel whenever nothing has completed, as `ib_write_bw -e` does: across the wire
 * two daemons share this machine's 2 cores with it, and a client spinning through the whole run took most of
 * one core from them (the dgram baseline's sender sleeps in epoll too).
 */
export async function rdmaWriteBw(daemons: Proc[], root: string, rootB = root, opts: { events?: boolean; window?: number } = {}): Promise<{ value: number; fig: Figures }> {
  const a = await setup(root, opts.events);
  const b = await setup(rootB);
  await connect(a.qp, b.qp.qpNum, b.ctx.queryGid(1, 0));
  await connect(b.qp, a.qp.qpNum, a.ctx.queryGid(1, 0));
  const wcs = Array.from({ length: 64 }, () => new WorkCompletion());
  const window = opts.window ?? 32;
  let inflight = 0;
  let done = 0;
  const wr = { wrId: 0n, opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [a.mr.sge(0, SIZE)], rdma: { remoteAddr: b.mr.addr, rkey: b.mr.rkey } };
  const poll = (): number => {
    const n = a.cq.pollCq(wcs);
    for (let i = 0; i < n; i++) if (wcs[i]!.status !== WcStatus.SUCCESS) throw new Error(`write failed: ${wcs[i]!.status}`);
    inflight -= n;
    return n;
  };
  const r = await measured([bench('clients A and B'), ...daemons], 'WRITE', async () => {
    const t0 = process.hrtime.bigint();
    const end = t0 + BigInt(SECONDS * 1e9);
    while (process.hrtime.bigint() < end) {
      while (inflight < window) {
        a.qp.postSend(wr);
        inflight++;
      }
      let n = poll();
      if (n === 0 && a.ch) {
        a.cq.reqNotifyCq();
        // what completed before the arm raises no event
        if ((n = poll()) === 0) {
          await a.ch.getCqEvent();
          a.cq.ackCqEvents(1);
          n = poll();
        }
      }
      done += n;
      if (n === 0) await tick();
    }
    const left = inflight;
    while (inflight > 0) {
      poll();
      await tick();
    }
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    return { value: (done * SIZE) / s, ops: done + left };
  });
  a.ctx.closeDevice();
  b.ctx.closeDevice();
  return r;
}

/**
 * 8-byte SENDs per second on one device: inline, one signaled every 32, a
 * window of 128 in flight; B reposts each receive as it completes. Both QPs
 * in this process, so the number is the daemon's, not IPC's.
 */
export async function sendRate(daemons: Proc[], root: string): Promise<{ value: number; fig: Figures }> {
  const a = await setup(root);
  const b = await setup(root);
  await connect(a.qp, b.qp.qpNum, b.ctx.queryGid(1, 0));
  await connect(b.qp, a.qp.qpNum, a.ctx.queryGid(1, 0));
  const recv = { wrId: 1n, sgList: [b.mr.sge(0, 64)] };
  for (let i = 0; i < 1024; i++) b.qp.postRecv(recv);
  const plain = { wrId: 0n, opcode: WrOpcode.SEND, sendFlags: SendFlags.INLINE, sgList: [a.mr.sge(0, 8)] };
  const signaled = { ...plain, sendFlags: SendFlags.INLINE | SendFlags.SIGNALED };
  const wcs = Array.from({ length: 256 }, () => new WorkCompletion());
  const r = await measured([bench('clients A and B'), ...daemons], 'SEND', async () => {
    let posted = 0;
    let acked = 0;
    let received = 0;
    const t0 = process.hrtime.bigint();
    const end = t0 + BigInt(SECONDS * 1e9);
    while (process.hrtime.bigint() < end) {
      // keep 128 in flight: every 32nd is signaled, and each completion retires 32
      while (posted - acked < 128) a.qp.postSend(++posted % 32 === 0 ? signaled : plain);
      const n = a.cq.pollCq(wcs);
      for (let i = 0; i < n; i++) if (wcs[i]!.status !== WcStatus.SUCCESS) throw new Error(`send failed: ${wcs[i]!.status}`);
      acked += n * 32;
      const r = b.cq.pollCq(wcs);
      for (let i = 0; i < r; i++) b.qp.postRecv(recv);
      received += r;
      if (n === 0 && r === 0) await tick();
    }
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    return { value: received / s, ops: received };
  });
  a.ctx.closeDevice();
  b.ctx.closeDevice();
  return r;
}

/**
 * RDMA_WRITEs of MANY_SIZE bytes on `pairs` connected RC QP pairs of one
 * device in this process (A writes to B), every QP kept busy with a window
 * of 2 signaled WRs; all share one CQ. Bytes/s written, and how many WRITEs,
 * said through `measuredDone` the moment the measuring stops; the teardown waits
 * for what it returns (until the parent has read this process's counters).
 */
export const MANY_SIZE = 16 * 1024;
/** BENCH_MANY_EVENTS=0: the many-QP clients spin on their CQs instead of sleeping on completion events. */
export const MANY_EVENTS = process.env.BENCH_MANY_EVENTS !== '0';
export async function manyQpsBw(root: string, pairs: number, window: number, idlePairs: number, ready: () => Promise<void>, measuredDone: (r: { bw: number; ops: number }) => Promise<void>): Promise<void> {
  const ctx = await openDevice(getDeviceList(root)[0]!, root);
  const pd = await ctx.allocPd();
  const ch = MANY_EVENTS ? await ctx.createCompChannel() : null;
  const cq = await ctx.createCq(Math.min(65536, pairs * window * 2 + 64), ch);
  const mr = await pd.allocMr(MANY_SIZE * 2, ALL);
  const gid = ctx.queryGid(1, 0);
  const qps: QueuePair[] = [];
  // connected QPs that never post: what they cost the busy ones is what this measures
  for (let i = 0; i < idlePairs; i++) {
    const a = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 1, maxRecvWr: 1 } });
    const b = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 1, maxRecvWr: 1 } });
    await connect(a, b.qpNum, gid);
    await connect(b, a.qpNum, gid);
  }
  for (let i = 0; i < pairs; i++) {
    const a = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: window, maxRecvWr: 1 } });
    const b = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 1, maxRecvWr: 1 } });
    await connect(a, b.qpNum, gid);
    await connect(b, a.qpNum, gid);
    qps.push(a, b);
  }
  const wrs = Array.from({ length: pairs }, (_, i) => ({ wrId: BigInt(i), opcode: WrOpcode.RDMA_WRITE, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, MANY_SIZE)], rdma: { remoteAddr: mr.addr + BigInt(MANY_SIZE), rkey: mr.rkey } }));
  const wcs = Array.from({ length: 256 }, () => new WorkCompletion());
  // every process measures the same seconds: one still setting up its QPs would not count as busy
  await ready();
  for (let i = 0; i < pairs; i++) for (let w = 0; w < window; w++) qps[2 * i]!.postSend(wrs[i]!);
  let done = 0;
  const t0 = process.hrtime.bigint();
  const end = t0 + BigInt(SECONDS * 1e9);
  while (process.hrtime.bigint() < end) {
    let n = cq.pollCq(wcs);
    if (n === 0 && ch) {
      // nothing completed: sleep until something does (what completed before the arm is polled first)
      cq.reqNotifyCq();
      if ((n = cq.pollCq(wcs)) === 0) {
        await ch.getCqEvent();
        cq.ackCqEvents(1);
        continue;
      }
    }
    for (let j = 0; j < n; j++) {
      const wc = wcs[j]!;
      if (wc.status !== WcStatus.SUCCESS) throw new Error(`write failed: ${wc.status}`);
      qps[2 * Number(wc.wrId)]!.postSend(wrs[Number(wc.wrId)]!);
    }
    done += n;
    if (n === 0) await tick();
  }
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  await measuredDone({ bw: (done * MANY_SIZE) / s, ops: done });
  await ctx.closeDevice();
}

/**
 * `procs` processes with `pairs` QP pairs each (2 * procs * pairs busy QPs): each sets up its QPs, then all
 * start together and measure the same SECONDS (total bytes/s).
 */
export async function manyQps(daemons: Proc[], root: string, procs: number, pairs: number, window: number, idlePairs = 0): Promise<{ value: number; fig: Figures }> {
  const kids = Array.from({ length: procs }, () => fork(RUN, ['--many', root, String(pairs), String(window), String(idlePairs)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
  const said = <K extends 'ready' | 'bw'>(k: ChildProcess, what: K) => new Promise<{ bw: number; ops: number }>((r, j) => {
    const on = (m: { ready?: boolean; bw?: number; ops?: number }) => {
      if (what === 'ready' ? m.ready : m.bw !== undefined) {
        k.off('message', on);
        r({ bw: m.bw ?? 0, ops: m.ops ?? 0 });
      }
    };
    k.on('message', on);
    k.once('exit', (c) => c !== 0 && j(new Error(`--many child exited ${c}`)));
  });
  await Promise.all(kids.map((k) => said(k, 'ready')));
  const names = kids.map((k, i): Proc => ({ name: procs > 1 ? `client ${i + 1} of ${procs}` : 'client', pid: k.pid! }));
  const w = await Window.open([...names, ...daemons]);
  const results = kids.map((k) => said(k, 'bw'));
  for (const k of kids) k.send('go');
  const all = await Promise.all(results);
  const fig = perOp(await w.end(), all.reduce((a, b) => a + b.ops, 0), 'WRITE');
  // the next line's window must not see these processes tear their QPs down in the daemon
  const gone = kids.map((k) => (k.exitCode !== null || k.signalCode !== null ? Promise.resolve() : new Promise((r) => k.once('exit', r))));
  for (const k of kids) k.send('bye');
  await Promise.all(gone);
  return { value: all.reduce((a, b) => a + b.bw, 0), fig };
}

/** Waits for a receive completion: busy-polling, or (events) armed CQ + completion channel, as ibv_rc_pingpong -e does. */
async function waitRecv(e: Awaited<ReturnType<typeof setup>>, wcs: WorkCompletion[], events: boolean): Promise<void> {
  for (let spins = 1; ; spins++) {
    const n = e.cq.pollCq(wcs);
    for (let j = 0; j < n; j++) if (wcs[j]!.opcode === 128) return;
    // busy-polling as our perftest tools do: two pollers and two daemons share 2 cores here, and a poller that
    // never gives its CPU away starves the daemon it waits on
    if (!events && (spins & 63) === 0) schedYield();
    if (events) {
      e.cq.reqNotifyCq();
      // a completion that landed before the arm raises no event: poll once more
      const m = e.cq.pollCq(wcs);
      for (let j = 0; j < m; j++) if (wcs[j]!.opcode === 128) return;
      await e.ch!.getCqEvent();
      e.cq.ackCqEvents(1);
    }
  }
}

/** The ping-pong's SENDs that ask for a completion: one in this many. */
export const SIGNAL_EVERY = Number(process.env.BENCH_SIGNAL_EVERY ?? 64);

/** One end of the ping-pong: a connected QP with receives posted, an inline 8-byte SEND, and a CQ to wait on. */
async function pingEnd(root: string, events: boolean, peer: () => Promise<{ qpn: number; gid: string }>, announce: (me: { qpn: number; gid: string }) => void) {
  const e = await setup(root, events);
  announce({ qpn: e.qp.qpNum, gid: Buffer.from(e.ctx.queryGid(1, 0)).toString('hex') });
  const other = await peer();
  await connect(e.qp, other.qpn, Buffer.from(other.gid, 'hex'));
  const recv = { wrId: 1n, sgList: [e.mr.sge(SIZE, 64)] };
  for (let i = 0; i < 512; i++) e.qp.postRecv(recv);
  // one SEND in SIGNAL_EVERY asks for a completion (to free its queue's slots as a portable program must; ours
  // frees them at the ACK anyway): a signaled SEND's completion on the CQ a client sleeps on wakes it once more a
  // round trip, for its ACK, which Node's UDP round trip it is measured against has none of
  const plain = { wrId: 2n, opcode: WrOpcode.SEND, sendFlags: SendFlags.INLINE, sgList: [e.mr.sge(0, 8)] };
  const signaled = { ...plain, sendFlags: SendFlags.SIGNALED | SendFlags.INLINE };
  let sent = 0;
  const send = () => e.qp.postSend(++sent % SIGNAL_EVERY === 0 ? signaled : plain);
  const wcs = Array.from({ length: 16 }, () => new WorkCompletion());
  return { e, recv, send, wcs };
}

/**
 * 8-byte SEND ping-pong between this process and a child: both busy-poll
 * their CQs, or (events) both sleep on completion events. Round trip in µs.
 */
export async function sendPingPong(daemons: Proc[], root: string, events: boolean, rootB = root): Promise<{ value: Lat; fig: Figures }> {
  const child = fork(RUN, ['--pong', rootB, String(events)], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const childInfo = new Promise<{ qpn: number; gid: string }>((r) => child.once('message', r as never));
  const ready = new Promise<void>((r) => child.on('message', (m: { ready?: boolean }) => m.ready && r()));
  const p = await pingEnd(root, events, () => childInfo, (me) => child.send(me));
  await ready;
  const n = events ? Math.min(PINGS, 10000) : PINGS;
  const warm = 500;
  const rtt: number[] = [];
  let w: Window | null = null;
  for (let i = 0; i < n + warm; i++) {
    if (i === warm) w = await Window.open([bench('ping client'), { name: 'pong client', pid: child.pid! }, ...daemons]);
    const t = process.hrtime.bigint();
    p.send();
    await waitRecv(p.e, p.wcs, events);
    p.e.qp.postRecv(p.recv);
    if (i >= warm) rtt.push(Number(process.hrtime.bigint() - t) / 1e3);
    // busy-polling: let the doorbell replies drain now and then, so nothing piles up unread
    if ((i & 1023) === 1023) await tick();
  }
  const fig = perOp(await w!.end(), n, 'round trip', true);
  child.kill();
  p.e.ctx.closeDevice();
  return { value: lat(rtt), fig };
}

export async function pong(root: string, events: boolean): Promise<void> {
  const p = await pingEnd(root, events, () => new Promise((r) => process.once('message', r as never)), (me) => process.send!(me));
  process.send!({ ready: true });
  for (let i = 0; ; i++) {
    await waitRecv(p.e, p.wcs, events);
    p.e.qp.postRecv(p.recv);
    p.send();
    if ((i & 1023) === 1023) await tick();
  }
}

/**
 * One perftest tool, server on daemons[0]'s rxe0 and client on daemons[1]'s: the client's result row, as
 * numbers, and what the two tools and the two daemons spent per message (per round trip for the latency
 * tools). With -D the window is the middle half of the client's run (inside perftest's own sampling) and the
 * messages in it are its MsgRate times the window; with -n it runs from the client's result header to its
 * result row, and the messages are its iterations.
 */
/**
 * A perftest tool pair, server on the first daemon's rxe0 and client on the second's (the same daemon twice: both
 * on its one device). `c`: perftest's own C tool (/usr/bin) through the preload library, else ours.
 */
export async function perftest(t: string, args: string[], daemons: [Proc & { root: string }, Proc & { root: string }], per: string, c = false): Promise<{ value: number[]; fig: Figures }> {
  const tool = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'bin', `${t}.js`);
  const port = String(20515 + (process.pid % 1000));
  const lat = t.endsWith('_lat');
  const duration = args.includes('-D') ? Number(args[args.indexOf('-D') + 1]) : 0;
  const run = (root: string, extra: string[], onOut: (all: string) => void = () => {}) => {
    const argv = ['-d', 'rxe0', '-p', port, ...args, ...extra];
    const p = c
      // line-buffered (stdbuf execs the tool in its own process): C stdio holds a pipe's lines until exit, and the
      // window opens when the client prints its table's head
      ? spawn('stdbuf', ['-oL', join(C_PERFTEST, t), ...argv], { env: preloadEnv(root), stdio: ['ignore', 'pipe', 'inherit'] })
      : spawn(process.execPath, [tool, ...argv], { env: { ...process.env, SOFTVERBS_ROOT: root }, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (d) => onOut((out += d)));
    const done = new Promise<string>((resolve, reject) => p.on('close', (code, sig) => (code === 0 ? resolve(out) : reject(new Error(`${t} ${sig ? `was killed by ${sig}` : `exited ${code}`}: ${out}`)))));
    return { p, done };
  };
  const server = run(daemons[0].root, []);
  await new Promise((r) => setTimeout(r, 400));
  let w: Promise<Window> | null = null;
  let started = false;
  let ended: Promise<Awaited<ReturnType<Window['end']>>> | null = null;
  const timers: NodeJS.Timeout[] = [];
  const client = run(daemons[1].root, ['127.0.0.1'], (out) => {
    if (!started && /#bytes/.test(out)) {
      started = true;
      if (duration) {
        timers.push(setTimeout(() => void w!.then((x) => x.begin()), (duration * 1000) / 4));
        timers.push(setTimeout(() => (ended = w!.then((x) => x.end())), (duration * 3000) / 4));
      } else void w!.then((x) => x.begin());
    }
    if (!duration && started && !ended && /^ \d+ +\d+ +[\d.]+.*$/m.test(out)) ended = w!.then((x) => x.end());
  });
  const ds = daemons[0].pid === daemons[1].pid ? [daemons[0]] : daemons;
  w = Window.prepare([{ name: `${t} server`, pid: server.p.pid! }, { name: `${t} client`, pid: client.p.pid! }, ...ds.map((d) => ({ name: d.name, pid: d.pid }))]);
  const out = await client.done;
  await server.done;
  for (const x of timers) clearTimeout(x);
  const row = /^ \d+ +\d+ +[\d.]+.*$/m.exec(out);
  if (!row) throw new Error(`${t}: no result row in\n${out}`);
  const value = row[0].trim().split(/\s+/).map(Number);
  const totals = await (ended ?? (await w).end());
  // bandwidth rows: #bytes #iterations BW-peak BW-average MsgRate[Mpps]; latency rows: #bytes #iterations ...
  const ops = duration && !lat ? value[4]! * 1e6 * totals.seconds : value[1]!;
  return { value, fig: perOp(totals, ops, per, lat) };
}
