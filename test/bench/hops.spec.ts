/**
 * npm run bench:hops runs end to end (briefly): the cross-wire and the same-device round trip, what each process
 * spent per round trip, and, with perf and root, the hops. No timing is asserted.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { DIST, IS_ROOT } from '../helpers.js';
import { assertBlock, block } from './figures.js';

const PERF = spawnSync('perf', ['--version']).status === 0 && IS_ROOT;
const COUNTS = spawnSync('perf', ['stat', '-e', 'raw_syscalls:sys_enter', '--', 'true']).status === 0;

test(`bench:hops measures a cross-wire and a same-device round trip${PERF ? ' and breaks one direction of each into its hops' : ' (no perf or not root: no hops)'}`, () => {
  const r = spawnSync(process.execPath, [join(DIST, 'bench', 'hops.js')], { encoding: 'utf8', timeout: 120000, env: { ...process.env, HOPS_N: '300' } });
  assert.equal(r.status, 0, r.stderr + r.stdout);
  const out = r.stdout;
  const lines = out.split('\n');
  assert.match(out, /^machine: .+ × \d+ vCPUs, kernel \S+, node v\d+\.\d+\.\d+$/m);
  assert.equal((out.match(/^syscalls: - \(.+\)$/gm) ?? []).length, COUNTS ? 0 : 1, out);
  // each once as the daemons run by default (polling), once with --poll-us 0 (where the hops start at a doorbell)
  const runs: Array<[RegExp, string[]]> = [];
  for (const how of ['daemons polling \\(default\\)', 'daemons not polling \\(--poll-us 0\\)']) {
    runs.push([new RegExp(`^cross-wire 8 B SEND round trip, ${how} \\(two daemons, 127\\.\\d+\\.\\d+\\.1 <-> 127\\.\\d+\\.\\d+\\.2, (raw socket|plain UDP); 300 round trips`), ['clients A and B (this process)', 'daemon A', 'daemon B']]);
  }
  for (const how of ['daemon polling \\(default\\)', 'daemon not polling \\(--poll-us 0\\)']) {
    runs.push([new RegExp(`^same-device 8 B SEND round trip, ${how} \\(one daemon, 127\\.\\d+\\.\\d+\\.3; 300 round trips, client A in this process and client B in another`), ['client A (this process)', 'client B', 'daemon']]);
  }
  for (const [title, procs] of runs) {
    const at = lines.findIndex((l) => title.test(l));
    assert.ok(at >= 0, `${title}\n${out}`);
    assert.match(lines[at + 1]!, /^ {2}round trip +median \d+\.\d us, p99 \d+\.\d us$/, out);
    // the rows are indented by 2 here, not 4
    assertBlock(block(lines, at + 1, 2), [['per round trip', procs]], COUNTS, true, `${title}\n${out}`);
  }
  if (!PERF) return;
  const hops = (from: number, names: string[]) => {
    for (const hop of names) {
      const m = new RegExp(`^ {4}${hop.replace(/[()]/g, '\\$&')}.* +(\\d+\\.\\d) us +\\d+\\.\\d us +\\((\\d+)\\)$`).exec(lines.slice(from).find((l) => l.startsWith(`    ${hop}`)) ?? '');
      assert.ok(m, `${hop} in\n${out}`);
      assert.ok(Number(m[2]) >= 300, `every one-way trip counted (${m[2]}) in\n${out}`);
    }
  };
  hops(lines.findIndex((l) => l.startsWith('cross-wire 8 B SEND round trip, daemons not polling')), ['client doorbell write -> daemon reads it', 'daemon read -> sendmmsg', 'sendmmsg -> peer recvmmsg returns', 'peer recvmmsg -> its ACK sendmmsg', 'one way, doorbell to doorbell']);
  hops(lines.findIndex((l) => l.startsWith('same-device 8 B SEND round trip, daemon not polling')), ['client doorbell write -> daemon reads it', 'daemon read -> peer client\'s doorbell', 'one way, doorbell to doorbell']);
});
