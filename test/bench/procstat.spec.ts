/**
 * bench/procstat.ts counts what a real process did in a window: its system calls (with perf), its sleeps as
 * voluntary context switches, its CPU; and says so when it cannot (no perf, a thread or the process gone).
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { perOp, rows, Window } from '../../bench/procstat.js';
import { DIST } from '../helpers.js';

const COUNTS = spawnSync('perf', ['stat', '-e', 'raw_syscalls:sys_enter', '--', 'true']).status === 0;

/** A child that, told to, makes 2000 fstat calls, sleeps 50 times for 2 ms, and spins for 50 ms of CPU (a getrusage every ms or so). */
const WORKER = `
const fs = require('fs');
const { Worker } = require('worker_threads');
const sab = new Int32Array(new SharedArrayBuffer(4));
let w;
process.on('message', (m) => {
  if (m === 'thread') {
    w = new Worker('require("worker_threads").parentPort.once("message", () => process.exit(0))', { eval: true });
    w.once('online', () => process.send('ready'));
  } else if (m === 'bye') {
    w.once('exit', () => process.send('done'));
    w.postMessage('bye');
  } else if (m === 'exit') process.exit(0);
  else {
    for (let i = 0; i < 2000; i++) fs.fstatSync(0);
    for (let i = 0; i < 50; i++) Atomics.wait(sab, 0, 0, 2);
    const c0 = process.cpuUsage();
    let x = 0;
    for (;;) { for (let k = 0; k < 1e6; k++) x += k; const c = process.cpuUsage(c0); if (c.user + c.system >= 50000) break; }
    process.send('done');
  }
});
process.send('ready');
`;

function child(): Promise<ChildProcess> {
  const c = spawn(process.execPath, ['-e', WORKER], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((r) => c.once('message', () => r(c)));
}
const said = (c: ChildProcess) => new Promise((r) => c.once('message', r));

test('a window counts what the process did in it: system calls, sleeps, CPU', async () => {
  const c = await child();
  try {
    const w = await Window.open([{ name: 'child', pid: c.pid! }]);
    c.send('go');
    await said(c);
    const t = await w.end();
    const s = t.spent[0]!;
    assert.ok(s.cpuNs! >= 50e6, `CPU ${s.cpuNs} ns`);
    // every 2 ms sleep is a voluntary switch; the IPC and node's own threads add some
    assert.ok(s.vcs! >= 50 && s.vcs! <= 150, `vcs ${s.vcs}`);
    assert.equal(s.lost, 0);
    if (COUNTS) {
      // 2000 fstat, 50 futex waits, a getrusage per ms of the spin, the message in and the reply out, and node's own threads
      assert.ok(s.syscalls! >= 2050 && s.syscalls! <= 2600, `syscalls ${s.syscalls}`);
      const [row] = rows(perOp(t, 1000, 'op'));
      assert.match(row!, /^ {4}per op {16}child {25} +\d+(\.\d+)? CPU-µs +2\.\d\d syscalls +0\.\d{3} vcs +\d+(\.\d+)? ivcs$/);
    } else assert.equal(s.syscalls, null);
  } finally {
    c.kill();
  }
});

test('a thread that exits inside the window is said to be uncounted; a process that exits, too', async () => {
  const c = await child();
  c.send('thread');
  await said(c);
  const w = await Window.open([{ name: 'child', pid: c.pid! }]);
  c.send('bye');
  await said(c);
  const t = await w.end();
  assert.ok(t.spent[0]!.lost >= 1, `lost ${t.spent[0]!.lost}`);
  assert.match(rows(perOp(t, 1, 'op'))[0]!, /  \(\+\d+\)$/);

  const w2 = await Window.open([{ name: 'child', pid: c.pid! }]);
  const gone = new Promise((r) => c.once('exit', r));
  c.send('exit');
  await gone;
  const row = rows(perOp(await w2.end(), 1, 'op'))[0]!;
  assert.match(row, /child +- CPU-µs +\S+ syscalls +- vcs +- ivcs {2}\(x\)$/);
});

for (const [how, env, why] of [
  ['perf is not on PATH', { PATH: '/nonexistent' }, 'perf is not installed'],
  ['BENCH_SYSCALLS=0', { BENCH_SYSCALLS: '0' }, 'BENCH_SYSCALLS=0'],
] as const) {
  test(`without system-call counting (${how}) the syscalls are '-' and why is said`, () => {
    const code = `
      import { perOp, rows, syscallGaps, Window } from ${JSON.stringify(join(DIST, 'bench', 'procstat.js'))};
      const w = await Window.open([{ name: 'me', pid: process.pid }]);
      const t = await w.end();
      console.log(JSON.stringify({ row: rows(perOp(t, 1, 'op'))[0], gaps: syscallGaps() }));`;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', code], { encoding: 'utf8', env: { ...process.env, ...env } });
    assert.equal(r.status, 0, r.stderr);
    const { row, gaps } = JSON.parse(r.stdout) as { row: string; gaps: string[] };
    assert.match(row, /me +\d+(\.\d+)? CPU-µs +- syscalls +\d+(\.\d+)? vcs +\d+(\.\d+)? ivcs$/);
    assert.deepEqual(gaps, [why]);
  });
}
