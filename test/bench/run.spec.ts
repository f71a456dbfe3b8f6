/**
 * npm run bench runs end to end (briefly) and prints every line of the performance table with its target, and
 * under each line what every process involved spent per operation. No timing is asserted.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { DIST } from '../helpers.js';
import { assertBlock, block } from './figures.js';

/** perf can count system calls here: then every row must have them. */
const PERF = spawnSync('perf', ['stat', '-e', 'raw_syscalls:sys_enter', '--', 'true']).status === 0;

test('the bench measures every line of the table and prints it with its target and its per-process figures', () => {
  const env = { ...process.env, BENCH_SECONDS: '0.2', BENCH_PINGS: '300', BENCH_MANY_PROCS: '2', BENCH_MANY_PAIRS: '8', BENCH_IDLE_MS: '300', BENCH_PERF_SECONDS: '2' };
  const r = spawnSync(process.execPath, [join(DIST, 'bench', 'run.js')], { encoding: 'utf8', timeout: 180000, env });
  assert.equal(r.status, 0, r.stderr);
  const out = r.stdout;
  assert.match(out, /^machine: .+ × \d+ vCPUs, kernel \S+, node v\d+\.\d+\.\d+$/m);
  // without perf every syscalls figure is '-', and the header says why, once
  const gaps = out.match(/^syscalls: - \(.+\)$/gm) ?? [];
  if (PERF) assert.deepEqual(gaps, [], out);
  else assert.equal(gaps.length, 1, out);
  const lines = out.split('\n');
  const num = String.raw` +\d+\.\d+ +`;
  const clients = (...n: string[]) => ['clients A and B (bench)', ...n];
  const pingers = (...n: string[]) => ['ping client (bench)', 'pong client', ...n];
  const tools = (t: string) => [`${t} server`, `${t} client`, 'daemon A', 'daemon B'];
  const wire: Array<[string, string, Array<[string, string[]]>, boolean]> = [
    [String.raw`64 KiB RDMA_WRITE / Node dgram \(4112 B datagrams\)`, '>= 1.5', [['per WRITE', clients('daemon A', 'daemon B')]], false],
    ['8 B SEND round trip / Node UDP round trip, events', '<= 1.5', [['per round trip', pingers('daemon A', 'daemon B')]], true],
    ['8 B SEND round trip / Node UDP round trip, busy-poll', '<= 2', [['per round trip', pingers('daemon A', 'daemon B')]], true],
  ];
  const all: Array<[string, string, Array<[string, string[]]>, boolean]> = [
    ...wire,
    ['ib_send_bw -s 4096 / Node TCP stream', '>= 0.5', [['per SEND', tools('ib_send_bw')]], false],
    ['ib_write_bw -s 65536 / Node TCP stream', '>= 1', [['per WRITE', tools('ib_write_bw')]], false],
    ['the same ib_send_bw, -n 50000 from a fresh tool', '-', [['per SEND', tools('ib_send_bw')]], false],
    ['the same ib_write_bw, -n 20000 from a fresh tool', '-', [['per WRITE', tools('ib_write_bw')]], false],
    ['ib_send_lat -s 8 t_typical / Node UDP half round trip', '-', [['per round trip', tools('ib_send_lat')]], true],
    [String.raw`8 B SENDs per second \(M\)`, '>= 2', [['per SEND', clients('daemon')], ['engines, per SEND', ['engines (bench)']]], false],
    ['64 KiB RDMA_WRITE / Buffer.copy 64 KiB', '>= 0.5', [['per WRITE', clients('daemon')], ['engines, per WRITE', ['engines (bench)']]], false],
    ['8 B SEND half round trip / Node TCP round trip, busy-poll', '<= 0.25', [['per round trip', pingers('daemon')]], true],
    ['8 B SEND half round trip / Node TCP round trip, events', '<= 0.5', [['per round trip', pingers('daemon')]], true],
    ['64 KiB RDMA_WRITE / Node TCP stream', '-', [['per WRITE', clients('daemon')]], false],
    [String.raw`32 busy RC QPs \(2 processes\) / one QP, aggregate`, '>= 0.8', [['per WRITE', ['client 1 of 2', 'client 2 of 2', 'daemon']], ['one QP, per WRITE', ['client', 'daemon']]], false],
    ['the same / one QP with all their 32 WRs in flight', '-', [['per WRITE', ['client', 'daemon']], ['engines, 16 pairs', ['engines (bench)']], ['engines, one deep QP', ['engines (bench)']]], false],
    ['one busy QP beside 32 idle ones / one QP alone', '>= 0.9', [['per WRITE', ['client', 'daemon']]], false],
    ['daemon CPU at idle \\(clients holding QPs\\), % of a core', '<= 1', [['per second', ['daemon', 'client holding QPs (bench)']]], false],
  ];
  for (const [what, target, groups, rt] of all) {
    const re = new RegExp(`^  ${what}${num}${target}`);
    const at = lines.findIndex((l) => re.test(l));
    assert.ok(at >= 0, `${what}\n${out}`);
    assertBlock(block(lines, at), groups, PERF, rt, `${what}\n${out}`);
  }
  // as root the default wire is the raw socket's: plain UDP is measured as well, with the same figures
  if (process.getuid?.() === 0) {
    assert.match(out, /raw socket receive;[^\n]*\n[^]*across the wire, wire=udp [^\n]*\n  64 KiB RDMA_WRITE \/ Node dgram[^\n]*\n/);
    const u = lines.findIndex((l) => l.startsWith('across the wire, wire=udp'));
    for (const [what, target, groups, rt] of wire) {
      const re = new RegExp(`^  ${what}${num}${target}`);
      const at = lines.findIndex((l, i) => i > u && re.test(l));
      assert.ok(at > u, `${what} (wire=udp)\n${out}`);
      assertBlock(block(lines, at), groups, PERF, rt, `${what} (wire=udp)\n${out}`);
    }
  }
  // clients sleeping on completion events wake at least once a round trip, and (their SENDs mostly unsignaled) about
  // once: a client woken for each SEND's completion as well (its ACK) showed 1.7-1.9 across the wire
  if (!process.env.BENCH_SIGNAL_EVERY) assert.match(out, /^round trips: 8 B inline SENDs, one in 64 signaled/m);
  for (const what of ['8 B SEND round trip / Node UDP round trip, events', '8 B SEND half round trip / Node TCP round trip, events']) {
    const at = lines.findIndex((l) => l.startsWith(`  ${what}`));
    const b = block(lines, at);
    assert.ok(Number(b.wakeups) >= 0.5, `${what}\n${out}`);
    if (what.includes('UDP')) for (const r of b.rows.filter((x) => x.name.endsWith('client') || x.name.endsWith('client (bench)'))) assert.ok(Number(r.vcs) < 1.4, `${what}: ${r.name} woke ${r.vcs} times a round trip\n${out}`);
  }
  // the baselines, each with its processes
  for (const [what, groups, rt] of [
    ['Node dgram, 4112 B datagrams', [['per datagram sent', ['sender (bench)', 'sink']]], false],
    ['Node UDP round trip (the faster one)', [['per round trip', ['client (bench)', 'echo']]], true],
    ['Node TCP stream, 64 KiB writes', [['per 64 KiB write', ['writer (bench)', 'sink']]], false],
    ['Node TCP round trip', [['per round trip', ['client (bench)', 'echo']]], true],
    ['Buffer.copy 64 KiB', [['per copy', ['copier (bench)']]], false],
  ] as Array<[string, Array<[string, string[]]>, boolean]>) {
    const at = lines.indexOf(`  ${what}`);
    assert.ok(at >= 0, `${what}\n${out}`);
    assertBlock(block(lines, at), groups, PERF, rt, `${what}\n${out}`);
  }
  // the many-QP WRITEs in the engines alone, against one deep QP there
  assert.match(out, /WRs in flight +\d+\.\d+ +- +\d+\.\d+ GB\/s; engines alone \d+\.\d+ \(\d+\.\d+ vs \d+\.\d+ GB\/s, one process\)/);
  // latencies: median and p99
  assert.match(out, /\d+\.\d\/\d+\.\d us vs \d+\.\d\/\d+\.\d us; p99 ratio \d+\.\d+/);
  // readable in 120 columns
  for (const l of lines.filter((x) => !/^(across the wire \(|  \S)/.test(x))) assert.ok(l.length <= 120, `over 120 columns: ${l}`);
});
