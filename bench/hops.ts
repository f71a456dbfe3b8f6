/**
 * npm run bench:hops: where the time of a round trip goes, across the wire and on one device.
 *
 * Across the wire: two daemons (this run's own 127.a.b.1 and .2, RoCEv2 between them), an RC QP on each,
 * both in this process, busy polling: 8-byte SENDs back and forth. On one device: one daemon, client A in
 * this process and client B in a child, each busy polling its own RC QP, as the bench's same-device
 * ping-pong runs. Each prints the round trip (median, p99) and, per process, the CPU, system calls and
 * context switches per round trip (bench/procstat.ts), and the wake-ups of all of them. With `perf` on PATH
 * and root, it also records the syscalls that mark each hop (the client's doorbell write, the daemon's
 * doorbell read, its sendmmsg, the peer's recvmmsg) and prints the median of each hop of one direction.
 * perf stretches the trip; the hops' shares are what it is for. Each runs twice: as the daemons run by
 * default (polling a busy send queue, so a post rings no doorbell), and with --poll-us 0, where every post
 * rings and the hops start at the client's doorbell.
 */
import { fork, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { median, pct, runNet } from './measure.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { spawnDaemon } from '../src/daemon/spawn.js';
import { schedYield } from '../src/native/libc.js';
import { machine, PER_PROCESS, perOp, rows, syscallGaps, Window, type Proc } from './procstat.js';
import {
  Access, getDeviceList, Mtu, openDevice, QpAttrMask as A, QpState, QpType, SendFlags, WcOpcode, WorkCompletion, WrOpcode,
} from '../src/verbs/index.js';

const N = Number(process.env.HOPS_N ?? 10000);
const NET = runNet();

async function side(root: string) {
  const ctx = await openDevice(getDeviceList(root)[0]!, root);
  const pd = await ctx.allocPd();
  const cq = await ctx.createCq(64);
  const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 16, maxRecvWr: 64, maxInlineData: 64 } });
  const mr = await pd.allocMr(4096, Access.LOCAL_WRITE);
  return { ctx, cq, qp, mr, pid: getDeviceList(root)[0]!.daemonPid };
}
type Side = Awaited<ReturnType<typeof side>>;
interface Peer {
  qpn: number;
  gid: string;
}
const peerOf = (s: Side): Peer => ({ qpn: s.qp.qpNum, gid: Buffer.from(s.ctx.queryGid(1, 0)).toString('hex') });

async function connect(s: Side, peer: Peer): Promise<void> {
  await s.qp.modifyQp({ qpState: QpState.INIT, pkeyIndex: 0, portNum: 1, qpAccessFlags: Access.LOCAL_WRITE }, A.STATE | A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS);
  await s.qp.modifyQp({
    qpState: QpState.RTR, pathMtu: Mtu.MTU_1024, destQpNum: peer.qpn, rqPsn: 0, maxDestRdAtomic: 1, minRnrTimer: 1,
    ahAttr: { grh: { dgid: Buffer.from(peer.gid, 'hex') } },
  }, A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN | A.MAX_DEST_RD_ATOMIC | A.MIN_RNR_TIMER);
  await s.qp.modifyQp({ qpState: QpState.RTS, sqPsn: 0, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 1 }, A.STATE | A.SQ_PSN | A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.MAX_QP_RD_ATOMIC);
  for (let i = 0; i < 32; i++) s.qp.postRecv({ wrId: 1n, sgList: [s.mr.sge(0, 64)] });
}

const wcs = [new WorkCompletion(), new WorkCompletion()];
const send = (s: Side) => s.qp.postSend({ wrId: 2n, opcode: WrOpcode.SEND, sendFlags: SendFlags.INLINE | SendFlags.SIGNALED, sgList: [s.mr.sge(0, 8)] });
/** `yieldEvery`: two busy pollers in two processes and the daemon share 2 cores; a poller that never yields starves the daemon. */
async function waitRecv(s: Side, yieldEvery = 0): Promise<void> {
  for (let spins = 1; ; spins++) {
    const n = s.cq.pollCq(wcs);
    for (let i = 0; i < n; i++) {
      if (wcs[i]!.opcode === WcOpcode.RECV) {
        s.qp.postRecv({ wrId: 1n, sgList: [s.mr.sge(0, 64)] });
        return;
      }
    }
    if (yieldEvery && spins % yieldEvery === 0) schedYield();
    if ((spins & 1023) === 0) await new Promise((r) => setImmediate(r));
  }
}

interface Ev {
  t: number;
  comm: string;
  pid: number;
  what: string;
}
function events(script: string): Ev[] {
  const ev: Ev[] = [];
  for (const l of script.split('\n')) {
    const m = /^\s*(\S+)\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+syscalls:(\w+):/.exec(l);
    if (m) ev.push({ t: Number(m[3]) * 1e6, comm: m[1]!, pid: Number(m[2]), what: m[4]! });
  }
  return ev.sort((a, b) => a.t - b.t);
}
const after = (ev: Ev[], from: number, ok: (e: Ev) => boolean) => {
  let i = from;
  while (i < ev.length && !ok(ev[i]!)) i++;
  return i;
};
const doorbell = (e: Ev) => e.what === 'sys_enter_write' && e.comm !== 'softverbsd';

/** Walks `perf script` output of two daemons: each one-way trip as its hops, in µs. */
function wireHops(script: string): Array<[string, number[]]> {
  const ev = events(script);
  const names = [
    'client doorbell write -> daemon reads it (wake-up)', 'daemon read -> sendmmsg (requester, codec)',
    'sendmmsg -> peer recvmmsg returns (send, loopback, wake-up)', 'peer recvmmsg -> its ACK sendmmsg',
    'peer recvmmsg -> peer client\'s doorbell (CQE seen, reply posted)', 'one way, doorbell to doorbell',
  ];
  const out: number[][] = names.map(() => []);
  for (let i = after(ev, 0, doorbell); i < ev.length;) {
    const t0 = ev[i]!.t;
    const j = after(ev, i + 1, (e) => e.comm === 'softverbsd' && e.what === 'sys_exit_read');
    const S = ev[j]?.pid;
    const k = after(ev, j + 1, (e) => e.pid === S && e.what === 'sys_enter_sendmmsg');
    const r = after(ev, k + 1, (e) => e.comm === 'softverbsd' && e.pid !== S && e.what === 'sys_exit_recvmmsg');
    const R = ev[r]?.pid;
    const a = after(ev, r + 1, (e) => e.pid === R && e.what === 'sys_enter_sendmmsg');
    const w = after(ev, r + 1, doorbell);
    if (w >= ev.length || a >= ev.length) break;
    const [t1, t2, t3, t4, t5] = [ev[j]!.t, ev[k]!.t, ev[r]!.t, ev[a]!.t, ev[w]!.t];
    const v = [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t3, t5 - t0];
    if (v.every((x) => x >= 0) && t5 - t0 < 5000) v.forEach((x, n) => out[n]!.push(x));
    i = w;
  }
  return names.map((n, i) => [n, out[i]!]);
}

/** Walks `perf script` output of one daemon and two client processes: each one-way trip as its hops, in µs. */
function deviceHops(script: string): Array<[string, number[]]> {
  const ev = events(script);
  const names = [
    'client doorbell write -> daemon reads it (wake-up)', 'daemon read -> peer client\'s doorbell (delivery, CQE seen, reply posted)',
    'one way, doorbell to doorbell',
  ];
  const out: number[][] = names.map(() => []);
  for (let i = after(ev, 0, doorbell); i < ev.length;) {
    const t0 = ev[i]!.t;
    const from = ev[i]!.pid;
    const j = after(ev, i + 1, (e) => e.comm === 'softverbsd' && e.what === 'sys_exit_read');
    const w = after(ev, j + 1, (e) => doorbell(e) && e.pid !== from);
    if (w >= ev.length) break;
    const v = [ev[j]!.t - t0, ev[w]!.t - ev[j]!.t, ev[w]!.t - t0];
    if (v.every((x) => x >= 0) && v[2]! < 5000) v.forEach((x, n) => out[n]!.push(x));
    i = w;
  }
  return names.map((n, i) => [n, out[i]!]);
}

const perf = !process.env.HOPS_NO_PERF && spawnSync("perf", ["--version"], { encoding: "utf8" }).status === 0 && process.getuid?.() === 0;
// HOPS_CPU_PROF=dir: each daemon writes a V8 CPU profile there when it stops
const prof = process.env.HOPS_CPU_PROF ? { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', process.env.HOPS_CPU_PROF] } : {};
const W = process.env.HOPS_WIRE ? `,wire=${process.env.HOPS_WIRE}` : "";
const EVENTS = 'syscalls:sys_enter_sendmmsg,syscalls:sys_exit_recvmmsg,syscalls:sys_enter_write,syscalls:sys_exit_read';

/**
 * 300 round trips to warm up, then N measured ones (one `trip()` each) with every process's counters read
 * around them; with `traced`, under perf record, broken into hops by `hopsOf`.
 */
async function roundTrips(procs: Proc[], trip: () => Promise<void>, traced: ((script: string) => Array<[string, number[]]>) | null): Promise<{ out: string[]; perfRecord: boolean }> {
  for (let i = 0; i < 300; i++) await trip();
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-hops-'));
  try {
    const data = join(tmp, 'perf.data');
    const rec = traced ? spawn('perf', ['record', '-q', '-o', data, '-e', EVENTS, '-p', procs.map((p) => p.pid).join(',')], { stdio: 'ignore' }) : null;
    if (rec) await new Promise((r) => setTimeout(r, 1000)); // perf attaches
    const w = await Window.open(procs);
    const rtt: number[] = [];
    for (let i = 0; i < N; i++) {
      const t = process.hrtime.bigint();
      await trip();
      rtt.push(Number(process.hrtime.bigint() - t) / 1000);
    }
    const fig = perOp(await w.end(), N, 'round trip', true);
    const out = [`  round trip            median ${median(rtt).toFixed(1)} us, p99 ${pct(rtt, 0.99).toFixed(1)} us`, ...rows(fig).map((l) => l.slice(2))];
    if (rec) {
      rec.kill('SIGINT');
      await new Promise((r) => rec.once('exit', r));
      const script = spawnSync('perf', ['script', '-i', data], { encoding: 'utf8', maxBuffer: 1 << 30 }).stdout;
      out.push('  one direction, by hop (medians; p90):');
      for (const [name, v] of traced!(script)) out.push(`    ${name.padEnd(72)} ${median(v).toFixed(1).padStart(7)} us  ${pct(v, 0.9).toFixed(1).padStart(7)} us  (${v.length})`);
    }
    return { out, perfRecord: !!rec };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/**
 * N round trips between two fresh daemons started with `extra`; with `traced`, under perf, and one direction
 * broken into its hops (which start at the client's doorbell: the daemons must not poll, or there is none).
 */
async function acrossTheWire(extra: string[], label: string, traced: boolean): Promise<string[]> {
  const dA = await spawnDaemon(["--device", `rxe0=${NET}.1${W}`, ...extra], prof);
  const dB = await spawnDaemon(["--device", `rxe0=${NET}.2${W}`, ...extra], prof);
  try {
    const wire = /raw socket/.test(dA.stderr()) ? 'raw socket' : 'plain UDP';
    const a = await side(dA.root);
    const b = await side(dB.root);
    await connect(a, peerOf(b));
    await connect(b, peerOf(a));
    const procs = [{ name: 'clients A and B (this process)', pid: process.pid }, { name: 'daemon A', pid: a.pid }, { name: 'daemon B', pid: b.pid }];
    const r = await roundTrips(procs, async () => {
      send(a);
      await waitRecv(b);
      send(b);
      await waitRecv(a);
    }, traced ? wireHops : null);
    await a.ctx.closeDevice();
    await b.ctx.closeDevice();
    return [`cross-wire 8 B SEND round trip, ${label} (two daemons, ${NET}.1 <-> ${NET}.2, ${wire}; ${N} round trips, both QPs in one busy-polling process${r.perfRecord ? ', under perf record' : ''})`, ...r.out];
  } finally {
    await dA.stop();
    await dB.stop();
  }
}

/** The same on one device: client A here, client B in a child (hops.js --peer), one daemon between them. */
async function sameDevice(extra: string[], label: string, traced: boolean): Promise<string[]> {
  const d = await spawnDaemon(["--device", `rxe0=${NET}.3`, ...extra], prof);
  let child: ChildProcess | null = null;
  try {
    const a = await side(d.root);
    child = fork(fileURLToPath(import.meta.url), ['--peer', d.root], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const b = await new Promise<Peer>((r) => child!.once('message', r as never));
    child.send(peerOf(a));
    await connect(a, b);
    await new Promise((r) => child!.once('message', r));
    const procs = [{ name: 'client A (this process)', pid: process.pid }, { name: 'client B', pid: child.pid! }, { name: 'daemon', pid: a.pid }];
    const r = await roundTrips(procs, async () => {
      send(a);
      await waitRecv(a, 64);
    }, traced ? deviceHops : null);
    await a.ctx.closeDevice();
    return [`same-device 8 B SEND round trip, ${label} (one daemon, ${NET}.3; ${N} round trips, client A in this process and client B in another, both busy-polling${r.perfRecord ? ', under perf record' : ''})`, ...r.out];
  } finally {
    child?.kill();
    await d.stop();
  }
}

/** Client B of the same-device round trip: answers every SEND with one. */
async function peer(root: string): Promise<void> {
  const b = await side(root);
  process.send!(peerOf(b));
  await connect(b, await new Promise<Peer>((r) => process.once('message', r as never)));
  process.send!({ ready: true });
  for (;;) {
    await waitRecv(b, 64);
    send(b);
  }
}

if (process.argv[2] === '--peer') await peer(process.argv[3]!);
else {
  // as users run it (the daemons poll a busy queue: a post rings no doorbell), then with polling off, where every
  // post rings and the hops can be told apart
  const out = [
    ...(await acrossTheWire([], 'daemons polling (default)', false)), ...(await acrossTheWire(['--poll-us', '0'], 'daemons not polling (--poll-us 0)', perf)),
    ...(await sameDevice([], 'daemon polling (default)', false)), ...(await sameDevice(['--poll-us', '0'], 'daemon not polling (--poll-us 0)', perf)),
  ];
  if (!perf) out.push('  (no perf, or not root: no per-hop breakdown)');
  process.stdout.write([machine(), ...PER_PROCESS, ...syscallGaps().map((g) => `syscalls: - (${g})`), '', ...out].join('\n') + '\n');
}
