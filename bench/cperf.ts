/**
 * node dist/bench/cperf.js [seconds] [--wire]: perftest's C bandwidth tools (/usr/bin, through the preload
 * library: their MRs are the programs' own memory, reached through /proc/<pid>/mem) against ours (the
 * daemon's mapped memory): ib_write_bw, ib_read_bw and ib_send_bw at -s 65536, MB/sec (BW average) each,
 * C / ours. Server and client on one device of one daemon, or with --wire on two daemons (RoCEv2 frames
 * between this run's own 127.a.b.1 and .2).
 */
import { runNet } from './measure.js';
import { spawnDaemon } from '../src/daemon/spawn.js';
import { preloadProblem } from '../src/tools/exec.js';
import { perftest } from './rdma.js';

const SECONDS = process.argv.find((a) => /^\d+$/.test(a)) ?? '4';
const WIRE = process.argv.includes('--wire');
const why = preloadProblem();
if (why) throw new Error(why);
const NET = runNet();
const d1 = await spawnDaemon(['--device', `rxe0=${NET}.1`]);
const d2 = WIRE ? await spawnDaemon(['--device', `rxe0=${NET}.2`]) : d1;
try {
  const ds = [d1, d2].map((d, i) => ({ name: `daemon ${i}`, pid: d.proc.pid!, root: d.root })) as [{ name: string; pid: number; root: string }, { name: string; pid: number; root: string }];
  for (const t of ['ib_write_bw', 'ib_read_bw', 'ib_send_bw']) {
    const args = ['-s', '65536', '-D', SECONDS];
    const c = await perftest(t, args, ds, 'op', true);
    const ours = await perftest(t, args, ds, 'op');
    console.log(`${`${t} ${args.join(' ')}${WIRE ? ' (wire)' : ''}`.padEnd(41)} C ${c.value[3]!.toFixed(0).padStart(6)} MB/sec   ours ${ours.value[3]!.toFixed(0).padStart(6)} MB/sec   C/ours ${(c.value[3]! / ours.value[3]!).toFixed(3)}`);
  }
} finally {
  await d1.stop();
  if (WIRE) await d2.stop();
}
