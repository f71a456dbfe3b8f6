/**
 * node dist/bench/cratio.js [--wire] [--only write,send,lat]: the bench's C-through-the-preload lines alone (what
 * `npm run bench` prints under "perftest's C tools ... / ours"), without the rest of the bench: C ib_write_bw -s 65536,
 * ib_send_bw -s 4096 and ib_send_lat -s 8 against ours in the same run, each with what every process spent per
 * operation (bench/procstat.ts). Same device of one daemon, or with --wire two daemons. BENCH_SYSCALLS=0 leaves
 * perf out: perf stat attached to a spinning C client changes what it measures (C ib_write_bw -s 65536, same
 * device: ~3100 MB/s without it, ~1600 with it, the daemon then sleeping once per WRITE).
 */
import { runNet } from './measure.js';
import { spawnDaemon } from '../src/daemon/spawn.js';
import { preloadProblem } from '../src/tools/exec.js';
import { machine, rows } from './procstat.js';
import { perftest } from './rdma.js';

const WIRE = process.argv.includes('--wire');
const only = process.argv.includes('--only') ? process.argv[process.argv.indexOf('--only') + 1]!.split(',') : ['write', 'send', 'lat'];
const SECONDS = process.env.BENCH_PERF_SECONDS ?? '4';
const why = preloadProblem();
if (why) throw new Error(why);
const NET = runNet();
const d1 = await spawnDaemon(['--device', `rxe0=${NET}.1`]);
const d2 = WIRE ? await spawnDaemon(['--device', `rxe0=${NET}.2`]) : d1;
console.log(machine());
try {
  const ds = [d1, d2].map((d, i) => ({ name: WIRE ? `daemon ${'AB'[i]}` : 'daemon', pid: d.proc.pid!, root: d.root })) as [{ name: string; pid: number; root: string }, { name: string; pid: number; root: string }];
  const lines: Array<[string, string, string[], string, number]> = [
    ['write', 'ib_write_bw', ['-s', '65536', '-D', SECONDS], 'WRITE', 3],
    ['send', 'ib_send_bw', ['-s', '4096', '-D', SECONDS], 'SEND', 3],
    ['lat', 'ib_send_lat', ['-s', '8', '-n', '20000'], 'round trip', 4],
  ];
  for (const [k, t, args, per, col] of lines) {
    if (!only.includes(k)) continue;
    const c = await perftest(t, args, ds, per, true);
    const ours = await perftest(t, args, ds, per);
    const r = c.value[col]! / ours.value[col]!;
    console.log(`C ${t} ${args.join(' ')}${WIRE ? ' (wire)' : ''} / ours: ${r.toFixed(3)}   C ${c.value[col]!.toFixed(2)} vs ours ${ours.value[col]!.toFixed(2)} ${col === 3 ? 'MB/sec' : 'us t_typical'}`);
    for (const l of rows(c.fig, `C, per ${per}`)) console.log(l);
    for (const l of rows(ours.fig, `ours, per ${per}`)) console.log(l);
  }
} finally {
  await d1.stop();
  if (WIRE) await d2.stop();
}
