/**
 * npm run bench:hops: where the time of a cross-wire round trip goes.
 *
 * Two daemons (this run's own 127.a.b.1 and .2, RoCEv2 between them), an
 * RC QP on each, both in this process, busy polling: 8-byte SENDs back and
 * forth. Prints the round trip (median, p99) and each daemon's CPU per
 * round trip. With `perf` on PATH and root, it also records the syscalls
 * that mark each hop (the client's doorbell write, the daemon's doorbell
 * read, its sendmmsg, the peer's recvmmsg) and prints the median of each
 * hop of one direction. perf stretches the trip; the hops' shares are what
 * it is for. It runs twice: as the daemons run by default (polling a busy
 * send queue, so a post rings no doorbell), and with --poll-us 0, where
 * every post rings and the hops start at the client's doorbell.
 */
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { cpuMs, median, pct } from './measure.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnDaemon, type SpawnedDaemon } from '../src/daemon/spawn.js';
import {
  Access, getDeviceList, Mtu, openDevice, QpAttrMask as A, QpState, QpType, SendFlags, WcOpcode, WorkCompletion, WrOpcode,
} from '../src/verbs/index.js';

const N = Number(process.env.HOPS_N ?? 10000);
const NET = `127.${10 + Math.floor(Math.random() * 240)}.${1 + Math.floor(Math.random() * 254)}`;

async function side(d: SpawnedDaemon) {
  const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
  const pd = await ctx.allocPd();
  const cq = await ctx.createCq(64);
  const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 16, maxRecvWr: 64, maxInlineData: 64 } });
  const mr = await pd.allocMr(4096, Access.LOCAL_WRITE);
  return { ctx, cq, qp, mr, pid: getDeviceList(d.root)[0]!.daemonPid };
}
type Side = Awaited<ReturnType<typeof side>>;

async function connect(s: Side, peer: Side): Promise<void> {
  await s.qp.modifyQp({ qpState: QpState.INIT, pkeyIndex: 0, portNum: 1, qpAccessFlags: Access.LOCAL_WRITE }, A.STATE | A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS);
  await s.qp.modifyQp({
    qpState: QpState.RTR, pathMtu: Mtu.MTU_1024, destQpNum: peer.qp.qpNum, rqPsn: 0, maxDestRdAtomic: 1, minRnrTimer: 1,
    ahAttr: { grh: { dgid: peer.ctx.queryGid(1, 0) } },
  }, A.STATE | A.AV | A.PATH_MTU | A.DEST_QPN | A.RQ_PSN | A.MAX_DEST_RD_ATOMIC | A.MIN_RNR_TIMER);
  await s.qp.modifyQp({ qpState: QpState.RTS, sqPsn: 0, timeout: 14, retryCnt: 7, rnrRetry: 7, maxRdAtomic: 1 }, A.STATE | A.SQ_PSN | A.TIMEOUT | A.RETRY_CNT | A.RNR_RETRY | A.MAX_QP_RD_ATOMIC);
}

const wcs = [new WorkCompletion(), new WorkCompletion()];
const send = (s: Side) => s.qp.postSend({ wrId: 2n, opcode: WrOpcode.SEND, sendFlags: SendFlags.INLINE | SendFlags.SIGNALED, sgList: [s.mr.sge(0, 8)] });
async function waitRecv(s: Side): Promise<void> {
  for (let spins = 0; ; spins++) {
    const n = s.cq.pollCq(wcs);
    for (let i = 0; i < n; i++) {
      if (wcs[i]!.opcode === WcOpcode.RECV) {
        s.qp.postRecv({ wrId: 1n, sgList: [s.mr.sge(0, 64)] });
        return;
      }
    }
    if ((spins & 1023) === 1023) await new Promise((r) => setImmediate(r));
  }
}


/** Walks `perf script` output: each one-way trip as its hops, in µs. */
function hops(script: string): Array<[string, number[]]> {
  const ev: Array<{ t: number; comm: string; pid: number; what: string }> = [];
  for (const l of script.split('\n')) {
    const m = /^\s*(\S+)\s+(\d+)\s+\[\d+\]\s+([\d.]+):\s+syscalls:(\w+):/.exec(l);
    if (m) ev.push({ t: Number(m[3]) * 1e6, comm: m[1]!, pid: Number(m[2]), what: m[4]! });
  }
  ev.sort((a, b) => a.t - b.t);
  const names = [
    'client doorbell write -> daemon reads it (wake-up)', 'daemon read -> sendmmsg (requester, codec)',
    'sendmmsg -> peer recvmmsg returns (send, loopback, wake-up)', 'peer recvmmsg -> its ACK sendmmsg',
    'peer recvmmsg -> peer client\'s doorbell (CQE seen, reply posted)', 'one way, doorbell to doorbell',
  ];
  const out: number[][] = names.map(() => []);
  const find = (from: number, ok: (e: (typeof ev)[number]) => boolean) => {
    let i = from;
    while (i < ev.length && !ok(ev[i]!)) i++;
    return i;
  };
  for (let i = find(0, (e) => e.what === 'sys_enter_write' && e.comm !== 'softverbsd'); i < ev.length;) {
    const t0 = ev[i]!.t;
    const j = find(i + 1, (e) => e.comm === 'softverbsd' && e.what === 'sys_exit_read');
    const S = ev[j]?.pid;
    const k = find(j + 1, (e) => e.pid === S && e.what === 'sys_enter_sendmmsg');
    const r = find(k + 1, (e) => e.comm === 'softverbsd' && e.pid !== S && e.what === 'sys_exit_recvmmsg');
    const R = ev[r]?.pid;
    const a = find(r + 1, (e) => e.pid === R && e.what === 'sys_enter_sendmmsg');
    const w = find(r + 1, (e) => e.what === 'sys_enter_write' && e.comm !== 'softverbsd');
    if (w >= ev.length || a >= ev.length) break;
    const [t1, t2, t3, t4, t5] = [ev[j]!.t, ev[k]!.t, ev[r]!.t, ev[a]!.t, ev[w]!.t];
    const v = [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t3, t5 - t0];
    if (v.every((x) => x >= 0) && t5 - t0 < 5000) v.forEach((x, n) => out[n]!.push(x));
    i = w;
  }
  return names.map((n, i) => [n, out[i]!]);
}

const perf = !process.env.HOPS_NO_PERF && spawnSync("perf", ["--version"], { encoding: "utf8" }).status === 0 && process.getuid?.() === 0;
// HOPS_CPU_PROF=dir: each daemon writes a V8 CPU profile there when it stops
const prof = process.env.HOPS_CPU_PROF ? { nodeArgs: ['--cpu-prof', '--cpu-prof-dir', process.env.HOPS_CPU_PROF] } : {};
const W = process.env.HOPS_WIRE ? `,wire=${process.env.HOPS_WIRE}` : "";

/**
 * N round trips between two fresh daemons started with `extra`; with `traced`, under perf, and one direction
 * broken into its hops (which start at the client's doorbell: the daemons must not poll, or there is none).
 */
async function measure(extra: string[], label: string, traced: boolean): Promise<string[]> {
  const dA = await spawnDaemon(["--device", `rxe0=${NET}.1${W}`, ...extra], prof);
  const dB = await spawnDaemon(["--device", `rxe0=${NET}.2${W}`, ...extra], prof);
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-hops-'));
  try {
    const wire = /raw socket/.test(dA.stderr()) ? 'raw socket' : 'plain UDP';
    const a = await side(dA);
    const b = await side(dB);
    await connect(a, b);
    await connect(b, a);
    for (let i = 0; i < 32; i++) for (const s of [a, b]) s.qp.postRecv({ wrId: 1n, sgList: [s.mr.sge(0, 64)] });
    for (let i = 0; i < 300; i++) {
      send(a);
      await waitRecv(b);
      send(b);
      await waitRecv(a);
    }
    const data = join(tmp, 'perf.data');
    const rec = traced
      ? spawn('perf', ['record', '-q', '-o', data, '-e', 'syscalls:sys_enter_sendmmsg,syscalls:sys_exit_recvmmsg,syscalls:sys_enter_write,syscalls:sys_exit_read', '-p', `${a.pid},${b.pid},${process.pid}`], { stdio: 'ignore' })
      : null;
    if (rec) await new Promise((r) => setTimeout(r, 1000)); // perf attaches
    const cpu0 = [cpuMs(a.pid), cpuMs(b.pid)];
    const rtt: number[] = [];
    for (let i = 0; i < N; i++) {
      const t = process.hrtime.bigint();
      send(a);
      await waitRecv(b);
      send(b);
      await waitRecv(a);
      rtt.push(Number(process.hrtime.bigint() - t) / 1000);
    }
    const cpu = [cpuMs(a.pid) - cpu0[0]!, cpuMs(b.pid) - cpu0[1]!];
    const out = [
      `cross-wire 8 B SEND round trip, ${label} (two daemons, ${NET}.1 <-> ${NET}.2, ${wire}; ${N} round trips, both QPs in one busy-polling process${rec ? ', under perf record' : ''})`,
      `  round trip            median ${median(rtt).toFixed(1)} us, p99 ${pct(rtt, 0.99).toFixed(1)} us`,
      `  daemon CPU per trip   A ${((cpu[0]! * 1000) / N).toFixed(1)} us, B ${((cpu[1]! * 1000) / N).toFixed(1)} us`,
    ];
    if (rec) {
      rec.kill('SIGINT');
      await new Promise((r) => rec.once('exit', r));
      const script = spawnSync('perf', ['script', '-i', data], { encoding: 'utf8', maxBuffer: 1 << 30 }).stdout;
      out.push('  one direction, by hop (medians; p90):');
      for (const [name, v] of hops(script)) out.push(`    ${name.padEnd(66)} ${median(v).toFixed(1).padStart(7)} us  ${pct(v, 0.9).toFixed(1).padStart(7)} us  (${v.length})`);
    }
    await a.ctx.closeDevice();
    await b.ctx.closeDevice();
    return out;
  } finally {
    await dA.stop();
    await dB.stop();
    rmSync(tmp, { recursive: true, force: true });
  }
}

// as users run it (the daemons poll a busy queue: a post rings no doorbell), then with polling off, where every
// post rings and the hops can be told apart
const out = [...(await measure([], 'daemons polling (default)', false)), ...(await measure(['--poll-us', '0'], 'daemons not polling (--poll-us 0)', perf))];
if (!perf) out.push('  (no perf, or not root: no per-hop breakdown)');
process.stdout.write(out.join('\n') + '\n');
