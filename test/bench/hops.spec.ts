/** npm run bench:hops runs end to end (briefly): the round trip, each daemon's CPU, and, with perf and root, the hops. No timing is asserted. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { DIST, IS_ROOT } from '../helpers.js';

const PERF = spawnSync('perf', ['--version']).status === 0 && IS_ROOT;

test(`bench:hops measures a cross-wire round trip${PERF ? ' and breaks one direction into its hops' : ' (no perf or not root: no hops)'}`, () => {
  const r = spawnSync(process.execPath, [join(DIST, 'bench', 'hops.js')], { encoding: 'utf8', timeout: 120000, env: { ...process.env, HOPS_N: '300' } });
  assert.equal(r.status, 0, r.stderr + r.stdout);
  // once as the daemons run by default (polling), once with --poll-us 0 (where the hops start at a doorbell)
  for (const how of ['daemons polling \\(default\\)', 'daemons not polling \\(--poll-us 0\\)']) {
    assert.match(r.stdout, new RegExp(`^cross-wire 8 B SEND round trip, ${how} \\(two daemons, 127\\.\\d+\\.\\d+\\.1 <-> 127\\.\\d+\\.\\d+\\.2, (raw socket|plain UDP); 300 round trips`, 'm'));
  }
  assert.equal(r.stdout.match(/^ {2}round trip +median \d+\.\d us, p99 \d+\.\d us$/gm)?.length, 2, r.stdout);
  assert.equal(r.stdout.match(/^ {2}daemon CPU per trip +A \d+\.\d us, B \d+\.\d us$/gm)?.length, 2, r.stdout);
  if (!PERF) return;
  for (const hop of ['client doorbell write -> daemon reads it', 'daemon read -> sendmmsg', 'sendmmsg -> peer recvmmsg returns', 'peer recvmmsg -> its ACK sendmmsg', 'one way, doorbell to doorbell']) {
    const m = new RegExp(`^ {4}${hop.replace(/[()]/g, '\\$&')}.* +(\\d+\\.\\d) us +\\d+\\.\\d us +\\((\\d+)\\)$`, 'm').exec(r.stdout);
    assert.ok(m, `${hop} in\n${r.stdout}`);
    assert.ok(Number(m[2]) >= 300, `every one-way trip counted (${m[2]}) in\n${r.stdout}`);
  }
});
