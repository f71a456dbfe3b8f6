/**
 * npm run bench: softverbs against baselines measured in the same run on
 * the same machine. Ratios first, absolute numbers second; under each line,
 * what every process involved spent per operation (bench/procstat.ts).
 *
 *  - same-device RDMA_WRITE of 64 KiB vs Buffer.copy of 64 KiB vs a Node TCP stream on loopback
 *  - 8-byte SEND ping-pong between two processes vs a Node TCP ping-pong; 8-byte SENDs per second
 *  - the engines alone (bench/engines.ts): the same WRITE and SEND rate, and the many-QP WRITEs, with no
 *    daemon, IPC or library
 *  - across the wire (two daemons on this run's own 127.a.b.1 and .2): RDMA_WRITE of 64 KiB vs Node dgram
 *    throughput of datagrams the size of one MTU-4096 RoCEv2 packet; 8-byte SEND ping-pong vs Node
 *    UDP and TCP ping-pong
 */
import { spawnDaemon, type SpawnedDaemon } from '../src/daemon/spawn.js';
import { getDeviceList } from '../src/verbs/index.js';
import { baselineRole, memcpyBw, tcpBw, tcpPingPong, udpBw, udpPingPong } from './baselines.js';
import { engineManyWriteBw, engineSendRate, engineWriteBw } from './engines.js';
import { cpuMs, type Lat, runNet } from './measure.js';
import { daemonsLine, machine, measured, PER_PROCESS, perOp, rows, syscallGaps, Window, type Figures, type Proc } from './procstat.js';
import { bench, C_PERFTEST, MANY_EVENTS, MANY_SIZE, manyQps, manyQpsBw, perftest, pong, rdmaWriteBw, sendPingPong, sendRate, setup, SIGNAL_EVERY } from './rdma.js';
import { preloadProblem } from '../src/tools/exec.js';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

/** The cross-wire WRITE stream: perftest's default send queue depth for bandwidth tests (128), sleeping on events. */
const WIRE_WRITE = { events: true, window: 128 };
/** BENCH_DAEMON_ARGS: options for every daemon of the run ('--poll-us 0', '--spin always'), printed in the header. */
const DAEMON_ARGS = (process.env.BENCH_DAEMON_ARGS ?? '').split(/\s+/).filter(Boolean);
const MANY_PROCS = Number(process.env.BENCH_MANY_PROCS ?? 4);
const MANY_PAIRS = Number(process.env.BENCH_MANY_PAIRS ?? 128);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 2);
/** perftest's own duration mode for the perftest lines (-D, with its default margins of a quarter each side) */
const PERF_SECONDS = process.env.BENCH_PERF_SECONDS ?? '4';
/** Why perftest's C tools are not measured here (not installed, or no preload library), or null. */
const cToolsMissing = !existsSync(join(C_PERFTEST, 'ib_write_bw')) ? `${C_PERFTEST}/ib_write_bw is not installed (apt-get install perftest)` : preloadProblem();
const cTools = cToolsMissing === null;

/** The daemon's CPU while clients hold QPs and do nothing: percent of one core over `ms`. */
async function idleCpu(pid: number, ms: number): Promise<number> {
  const c0 = cpuMs(pid);
  await new Promise((r) => setTimeout(r, ms));
  return ((cpuMs(pid) - c0) / ms) * 100;
}

/** This run's own loopback addresses (127.a.b.1 and .2): a daemon left on 127.0.0.1 by something else cannot stand in the way. */
const NET = runNet();
const [HOST_A, HOST_B, HOST_E] = [`${NET}.1`, `${NET}.2`, `${NET}.3`];

/**
 * One line of the table: what, the measured ratio, the target, and the absolute numbers behind it; under it,
 * per process, what each measurement it was made from cost per operation (a label heads each measurement).
 */
function line(what: string, v: string, target: string, abs: string, ...figs: Array<Figures | [Figures, string]>): string[] {
  return [`  ${what.padEnd(58)} ${v.padStart(8)}   ${target.padEnd(10)} ${abs}`.trimEnd(), ...figs.flatMap((f) => (Array.isArray(f) ? rows(f[0], f[1]) : rows(f)))];
}
const f2 = (x: number) => x.toFixed(2);
const f3 = (x: number) => x.toFixed(3);
const us = (l: Lat) => `${l.med.toFixed(1)}/${l.p99.toFixed(1)} us`;
const proc = (d: SpawnedDaemon, name: string): Proc & { root: string } => ({ name, pid: d.proc.pid!, root: d.root });

/** perftest's C tools (through the preload library) against ours, in the same run: the lines, or why there are none. */
function cLines(where: string, r: { ts: Record<'write' | 'send' | 'lat', { value: number[]; fig: Figures }>; c: Record<'write' | 'send' | 'lat', { value: number[]; fig: Figures }> } | null): string[] {
  if (!r) return [`perftest's C tools ${where}: not measured (${cToolsMissing})`];
  const bw = (x: { value: number[] }) => x.value[3]!;
  return [
    `perftest's C tools through the preload library / ours, ${where} (goal: bandwidth >= 0.8, latency <= 1.5)`,
    ...line('C ib_write_bw -s 65536 / ours', f3(bw(r.c.write) / bw(r.ts.write)), '>= 0.8', `${f2(bw(r.c.write))} vs ${f2(bw(r.ts.write))} MB/sec; -D ${PERF_SECONDS}`, r.c.write.fig, [r.ts.write.fig, 'ours, per WRITE']),
    ...line('C ib_send_bw -s 4096 / ours', f3(bw(r.c.send) / bw(r.ts.send)), '>= 0.8', `${f2(bw(r.c.send))} vs ${f2(bw(r.ts.send))} MB/sec; -D ${PERF_SECONDS}`, r.c.send.fig, [r.ts.send.fig, 'ours, per SEND']),
    ...line('C ib_send_lat -s 8 t_typical / ours', f2(r.c.lat.value[4]! / r.ts.lat.value[4]!), '<= 1.5', `${f2(r.c.lat.value[4]!)} vs ${f2(r.ts.lat.value[4]!)} us`, r.c.lat.fig, [r.ts.lat.fig, 'ours, per round trip']),
  ];
}

async function main(): Promise<void> {
  const engWrite = await measured([bench('engines')], 'WRITE', () => engineWriteBw(HOST_E, SECONDS));
  const engRate = await measured([bench('engines')], 'SEND', async () => engineSendRate(HOST_E, SECONDS));
  // the many-QP line's WRITEs in the engines alone: as many QPs with 2 WRs each, and one with all their WRs
  const engMany = await measured([bench('engines')], 'WRITE', () => engineManyWriteBw(HOST_E, SECONDS, MANY_PROCS * MANY_PAIRS, 2));
  const engDeep = await measured([bench('engines')], 'WRITE', () => engineManyWriteBw(HOST_E, SECONDS, 1, 2 * MANY_PROCS * MANY_PAIRS));
  const daemon = await spawnDaemon(['--device', `rxe0=${HOST_A}`, ...DAEMON_ARGS]);
  const root = daemon.root;
  const D = [proc(daemon, 'daemon')];
  try {
    const GB = 1e9;
    const write = await rdmaWriteBw(D, root);
    const copy = await memcpyBw();
    const tcp = await tcpBw();
    const rate = await sendRate(D, root);
    const ping = await sendPingPong(D, root, false);
    const pingEv = await sendPingPong(D, root, true);
    const tping = await tcpPingPong();
    // 1,024 busy RC QPs: four processes with 128 pairs each, against one pair with the same window, one process;
    // and against one QP with as many WRs in flight as all of them together (what each QP costs the engines)
    const one = await manyQps(D, root, 1, 1, 2);
    const many = await manyQps(D, root, MANY_PROCS, MANY_PAIRS, 2);
    const oneDeep = await manyQps(D, root, 1, 1, 2 * MANY_PROCS * MANY_PAIRS);
    // the same one busy QP with 2 * MANY_PROCS * MANY_PAIRS connected idle QPs beside it
    const amongIdle = await manyQps(D, root, 1, 1, 2, MANY_PROCS * MANY_PAIRS);
    // idle: a client holding a connected QP pair, doing nothing
    const idleCtx = await setup(root);
    const idleW = await Window.open([...D, bench('client holding QPs')]);
    const idle = await idleCpu(getDeviceList(root)[0]!.daemonPid, Number(process.env.BENCH_IDLE_MS ?? 3000));
    const idleT = await idleW.end();
    const idleFig = perOp(idleT, idleT.seconds, 'second');
    await idleCtx.ctx.closeDevice();
    // perftest's C tools through the preload library against ours, both ends on the one device
    const S = [D[0]!, D[0]!] as [ReturnType<typeof proc>, ReturnType<typeof proc>];
    const same = cTools
      ? {
        ts: { write: await perftest('ib_write_bw', ['-s', '65536', '-D', PERF_SECONDS], S, 'WRITE'), send: await perftest('ib_send_bw', ['-s', '4096', '-D', PERF_SECONDS], S, 'SEND'), lat: await perftest('ib_send_lat', ['-s', '8', '-n', '20000'], S, 'round trip') },
        c: { write: await perftest('ib_write_bw', ['-s', '65536', '-D', PERF_SECONDS], S, 'WRITE', true), send: await perftest('ib_send_bw', ['-s', '4096', '-D', PERF_SECONDS], S, 'SEND', true), lat: await perftest('ib_send_lat', ['-s', '8', '-n', '20000'], S, 'round trip', true) },
      }
      : null;
    await daemon.stop();
    // across the wire: two daemons, one device each, RoCEv2 frames between HOST_A and HOST_B
    // the UDP round trip moves with this machine's neighbours (100 to 360 us median between runs): measured before
    // and after the cross-wire lines, and the faster of the two is the baseline (the ratios err against us)
    const uping1 = await udpPingPong();
    const d1 = await spawnDaemon(['--device', `rxe0=${HOST_A}`, ...DAEMON_ARGS]);
    const d2 = await spawnDaemon(['--device', `rxe0=${HOST_B}`, ...DAEMON_ARGS]);
    const wire = /raw socket/.test(d1.stderr()) ? 'raw socket receive' : 'plain UDP';
    const X = [proc(d1, 'daemon A'), proc(d2, 'daemon B')] as [ReturnType<typeof proc>, ReturnType<typeof proc>];
    let xwrite: Awaited<ReturnType<typeof rdmaWriteBw>>;
    let xping: Awaited<ReturnType<typeof sendPingPong>>;
    let xpingEv: Awaited<ReturnType<typeof sendPingPong>>;
    let pWrite: Awaited<ReturnType<typeof perftest>>;
    let pSend: Awaited<ReturnType<typeof perftest>>;
    let pWriteCold: Awaited<ReturnType<typeof perftest>>;
    let pSendCold: Awaited<ReturnType<typeof perftest>>;
    let pLat: Awaited<ReturnType<typeof perftest>>;
    type PerfTrio = { write: typeof pLat; send: typeof pLat; lat: typeof pLat };
    let cx: PerfTrio | null = null;
    try {
      xwrite = await rdmaWriteBw(X, d1.root, d2.root, WIRE_WRITE);
      xping = await sendPingPong(X, d1.root, false, d2.root);
      xpingEv = await sendPingPong(X, d1.root, true, d2.root);
      // the perftest tools, as a user runs them: their own processes, polling, across the wire. The lines with
      // targets run perftest's duration mode, whose margins leave out the first and last quarter: a fresh tool
      // spends its first ~150 ms with V8's compiler threads on the same 2 cores as the daemons, which a run of
      // -n 50000 (0.3-0.5 s) is mostly made of. Those runs are printed too.
      pWrite = await perftest('ib_write_bw', ['-s', '65536', '-D', PERF_SECONDS], X, 'WRITE');
      pSend = await perftest('ib_send_bw', ['-s', '4096', '-D', PERF_SECONDS], X, 'SEND');
      pWriteCold = await perftest('ib_write_bw', ['-s', '65536', '-n', '20000'], X, 'WRITE');
      pSendCold = await perftest('ib_send_bw', ['-s', '4096', '-n', '50000'], X, 'SEND');
      pLat = await perftest('ib_send_lat', ['-s', '8', '-n', '20000'], X, 'round trip');
      if (cTools) {
        cx = {
          write: await perftest('ib_write_bw', ['-s', '65536', '-D', PERF_SECONDS], X, 'WRITE', true),
          send: await perftest('ib_send_bw', ['-s', '4096', '-D', PERF_SECONDS], X, 'SEND', true),
          lat: await perftest('ib_send_lat', ['-s', '8', '-n', '20000'], X, 'round trip', true),
        };
      }
    } finally {
      await d1.stop();
      await d2.stop();
    }
    // as root the default wire reads through a raw socket (every arriving ICRC checked); without root it is plain
    // UDP: measured too, so both are on the table
    let u: { write: typeof xwrite; ping: typeof xping; pingEv: typeof xping } | null = null;
    if (wire !== 'plain UDP') {
      const u1 = await spawnDaemon(['--device', `rxe0=${HOST_A},wire=udp`, ...DAEMON_ARGS]);
      const u2 = await spawnDaemon(['--device', `rxe0=${HOST_B},wire=udp`, ...DAEMON_ARGS]);
      const U = [proc(u1, 'daemon A'), proc(u2, 'daemon B')];
      try {
        u = { write: await rdmaWriteBw(U, u1.root, u2.root, WIRE_WRITE), ping: await sendPingPong(U, u1.root, false, u2.root), pingEv: await sendPingPong(U, u1.root, true, u2.root) };
      } finally {
        await u1.stop();
        await u2.stop();
      }
    }
    // one RC_RDMA_WRITE_MIDDLE at path MTU 4096: BTH 12 + 4096 payload + ICRC 4
    const FRAME = 12 + 4096 + 4;
    const udp = await udpBw(FRAME);
    const uping2 = await udpPingPong();
    const uping = uping1.value.med <= uping2.value.med ? uping1 : uping2;
    const MiB = 1048576;
    const ul = uping.value;
    const gaps = syscallGaps();
    const out = [
      'softverbs bench (baselines measured in this run; latencies as median/p99)',
      machine(),
      daemonsLine(DAEMON_ARGS),
      ...PER_PROCESS,
      'perftest -D: messages = its MsgRate × the window (the middle half of its run).',
      `round trips: 8 B inline SENDs, one in ${SIGNAL_EVERY} signaled (a signaled SEND's completion would wake a client`,
      'asleep on events a second time a round trip, for the ACK).',
      ...gaps.map((g) => `syscalls: - (${g})`),
      '',
      `  ${'line'.padEnd(58)} ${'now'.padStart(8)}   ${'target'.padEnd(10)} measured`,
      `across the wire (two daemons, ${HOST_A} <-> ${HOST_B}, ${wire}; the UDP round trip is the faster of ${us(uping1.value)} and ${us(uping2.value)})`,
      ...line(`64 KiB RDMA_WRITE / Node dgram (${FRAME} B datagrams)`, f3(xwrite.value / udp.value), '>= 1.5', `${f3(xwrite.value / GB)} vs ${f3(udp.value / GB)} GB/s`, xwrite.fig),
      ...line('8 B SEND round trip / Node UDP round trip, events', f2(xpingEv.value.med / ul.med), '<= 1.5', `${us(xpingEv.value)} vs ${us(ul)}; p99 ratio ${f2(xpingEv.value.p99 / ul.p99)}`, xpingEv.fig),
      ...line('8 B SEND round trip / Node UDP round trip, busy-poll', f2(xping.value.med / ul.med), '<= 2', `${us(xping.value)}; p99 ratio ${f2(xping.value.p99 / ul.p99)}`, xping.fig),
      ...(u
        ? [
          `across the wire, wire=udp (what a daemon without CAP_NET_RAW runs: arriving IPv4 ICRCs unchecked)`,
          ...line(`64 KiB RDMA_WRITE / Node dgram (${FRAME} B datagrams)`, f3(u.write.value / udp.value), '>= 1.5', `${f3(u.write.value / GB)} GB/s`, u.write.fig),
          ...line('8 B SEND round trip / Node UDP round trip, events', f2(u.pingEv.value.med / ul.med), '<= 1.5', `${us(u.pingEv.value)}; p99 ratio ${f2(u.pingEv.value.p99 / ul.p99)}`, u.pingEv.fig),
          ...line('8 B SEND round trip / Node UDP round trip, busy-poll', f2(u.ping.value.med / ul.med), '<= 2', `${us(u.ping.value)}; p99 ratio ${f2(u.ping.value.p99 / ul.p99)}`, u.ping.fig),
        ]
        : []),
      'perftest across the wire (their MB/sec are MiB/s)',
      ...line('ib_send_bw -s 4096 / Node TCP stream', f3((pSend.value[3]! * MiB) / tcp.value), '>= 0.5', `${f2(pSend.value[3]!)} MB/sec vs ${f3(tcp.value / GB)} GB/s; -D ${PERF_SECONDS}`, pSend.fig),
      ...line('ib_write_bw -s 65536 / Node TCP stream', f3((pWrite.value[3]! * MiB) / tcp.value), '>= 1', `${f2(pWrite.value[3]!)} MB/sec; -D ${PERF_SECONDS}`, pWrite.fig),
      ...line('the same ib_send_bw, -n 50000 from a fresh tool', f3((pSendCold.value[3]! * MiB) / tcp.value), '-', `${f2(pSendCold.value[3]!)} MB/sec (start-up included)`, pSendCold.fig),
      ...line('the same ib_write_bw, -n 20000 from a fresh tool', f3((pWriteCold.value[3]! * MiB) / tcp.value), '-', `${f2(pWriteCold.value[3]!)} MB/sec`, pWriteCold.fig),
      ...line('ib_send_lat -s 8 t_typical / Node UDP half round trip', f2(pLat.value[4]! / (ul.med / 2)), '-', `t_typical ${f2(pLat.value[4]!)} us, 99% ${f2(pLat.value[7]!)} us`, pLat.fig),
      ...cLines('across the wire', cx && { ts: { write: pWrite, send: pSend, lat: pLat }, c: cx }),
      'same device (one daemon)',
      ...line('8 B SENDs per second (M)', f3(rate.value / 1e6), '>= 2', `engines alone ${f3(engRate.value / 1e6)} M`, rate.fig, [engRate.fig, 'engines, per SEND']),
      ...line('64 KiB RDMA_WRITE / Buffer.copy 64 KiB', f3(write.value / copy.value), '>= 0.5', `${f3(write.value / GB)} vs ${f3(copy.value / GB)} GB/s; engines alone ${f3(engWrite.value / copy.value)}`, write.fig, [engWrite.fig, 'engines, per WRITE']),
      ...line('8 B SEND half round trip / Node TCP round trip, busy-poll', f3(ping.value.med / 2 / tping.value.med), '<= 0.25', `${us(ping.value)} round trip vs TCP ${us(tping.value)}`, ping.fig),
      ...line('8 B SEND half round trip / Node TCP round trip, events', f3(pingEv.value.med / 2 / tping.value.med), '<= 0.5', `${us(pingEv.value)} round trip`, pingEv.fig),
      ...line('64 KiB RDMA_WRITE / Node TCP stream', f2(write.value / tcp.value), '-', `${f3(tcp.value / GB)} GB/s TCP`, write.fig),
      ...line(`${2 * MANY_PROCS * MANY_PAIRS} busy RC QPs (${MANY_PROCS} processes) / one QP, aggregate`, f3(many.value / one.value), '>= 0.8', `${f3(many.value / GB)} vs ${f3(one.value / GB)} GB/s, ${MANY_SIZE / 1024} KiB WRITEs, 2 in flight per QP${MANY_EVENTS ? ', clients on events' : ''}`, many.fig, [one.fig, 'one QP, per WRITE']),
      ...line(
        `the same / one QP with all their ${2 * MANY_PROCS * MANY_PAIRS} WRs in flight`, f3(many.value / oneDeep.value), '-',
        `${f3(oneDeep.value / GB)} GB/s; engines alone ${f3(engMany.value / engDeep.value)} (${f3(engMany.value / GB)} vs ${f3(engDeep.value / GB)} GB/s, one process)`,
        oneDeep.fig, [engMany.fig, `engines, ${MANY_PROCS * MANY_PAIRS} pairs`], [engDeep.fig, 'engines, one deep QP'],
      ),
      ...line(`one busy QP beside ${2 * MANY_PROCS * MANY_PAIRS} idle ones / one QP alone`, f3(amongIdle.value / one.value), '>= 0.9 (ours)', `${f3(amongIdle.value / GB)} GB/s`, amongIdle.fig),
      ...line('daemon CPU at idle (clients holding QPs), % of a core', f2(idle), '<= 1', '', idleFig),
      ...cLines('same device', same),
      'the baselines, per process',
      `  Node dgram, ${FRAME} B datagrams`, ...rows(udp.fig),
      '  Node UDP round trip (the faster one)', ...rows(uping.fig),
      '  Node TCP stream, 64 KiB writes', ...rows(tcp.fig),
      '  Node TCP round trip', ...rows(tping.fig),
      '  Buffer.copy 64 KiB', ...rows(copy.fig),
    ];
    process.stdout.write(out.join('\n') + '\n');
  } finally {
    await daemon.stop();
  }
}

const role = process.argv[2];
if (role === '--pong') await pong(process.argv[3]!, process.argv[4] === 'true');
else if (role === '--many') {
  // ready, then 'go'; the result, then 'bye' (once the parent has read this process's counters)
  const said = (m: object) => new Promise<void>((r) => {
    process.once('message', () => r());
    process.send!(m);
  });
  await manyQpsBw(process.argv[3]!, Number(process.argv[4]), Number(process.argv[5]), Number(process.argv[6] ?? 0), () => said({ ready: true }), said);
  process.disconnect();
} else if (!baselineRole(role)) await main();
