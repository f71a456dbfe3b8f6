/** npm run bench runs end to end (briefly) and prints every line of the performance table with its target. No timing is asserted. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { DIST } from '../helpers.js';

test('the bench measures every line of the table and prints it with its target', () => {
  const env = { ...process.env, BENCH_SECONDS: '0.2', BENCH_PINGS: '300', BENCH_MANY_PROCS: '2', BENCH_MANY_PAIRS: '8', BENCH_IDLE_MS: '300', BENCH_PERF_SECONDS: '2' };
  const r = spawnSync(process.execPath, [join(DIST, 'bench', 'run.js')], { encoding: 'utf8', timeout: 180000, env });
  assert.equal(r.status, 0, r.stderr);
  const num = String.raw` +\d+\.\d+ +`;
  for (const [what, target] of [
    [String.raw`64 KiB RDMA_WRITE / Node dgram \(4112 B datagrams\)`, '>= 1.5'],
    ['8 B SEND round trip / Node UDP round trip, events', '<= 1.5'],
    ['8 B SEND round trip / Node UDP round trip, busy-poll', '<= 2'],
    ['ib_send_bw -s 4096 / Node TCP stream', '>= 0.5'],
    ['ib_write_bw -s 65536 / Node TCP stream', '>= 1'],
    ['the same ib_send_bw, -n 50000 from a fresh tool', '-'],
    ['the same ib_write_bw, -n 20000 from a fresh tool', '-'],
    [String.raw`8 B SENDs per second \(M\)`, '>= 2'],
    ['64 KiB RDMA_WRITE / Buffer.copy 64 KiB', '>= 0.5'],
    ['8 B SEND half round trip / Node TCP round trip, busy-poll', '<= 0.25'],
    ['8 B SEND half round trip / Node TCP round trip, events', '<= 0.5'],
    [String.raw`32 busy RC QPs \(2 processes\) / one QP, aggregate`, '>= 0.8'],
    ['the same / one QP with all their 32 WRs in flight', '-'],
    ['one busy QP beside 32 idle ones / one QP alone', '>= 0.9'],
    ['daemon CPU at idle \\(clients holding QPs\\), % of a core', '<= 1'],
  ] as const) assert.match(r.stdout, new RegExp(`^  ${what}${num}${target}`, 'm'), `${what}\n${r.stdout}`);
  // as root the default wire is the raw socket's: plain UDP is measured as well
  if (process.getuid?.() === 0) assert.match(r.stdout, /raw socket receive;[^\n]*\n[^]*across the wire, wire=udp [^\n]*\n  64 KiB RDMA_WRITE \/ Node dgram[^\n]*\n  8 B SEND round trip \/ Node UDP round trip, events/);
  // latencies: median and p99
  assert.match(r.stdout, /\d+\.\d\/\d+\.\d us vs \d+\.\d\/\d+\.\d us; p99 ratio \d+\.\d+/);
});
