/** npm run bench runs end to end (briefly) and prints ratios first, then absolute numbers. No timing is asserted. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { DIST } from '../helpers.js';

test('the bench runs every measurement and reports ratios, then absolute numbers', () => {
  const r = spawnSync(process.execPath, [join(DIST, 'bench', 'run.js')], { encoding: 'utf8', timeout: 120000, env: { ...process.env, BENCH_SECONDS: '0.2', BENCH_PINGS: '300' } });
  assert.equal(r.status, 0, r.stderr);
  const ratios = r.stdout.indexOf('ratios');
  const abs = r.stdout.indexOf('absolute');
  assert.ok(ratios > 0 && abs > ratios, r.stdout);
  for (const re of [/RDMA_WRITE 64 KiB \/ Buffer.copy 64 KiB +\d+\.\d+/, /RDMA_WRITE 64 KiB \/ Node TCP stream \(loopback\) +\d+\.\d+/, /RDMA_WRITE 64 KiB +\d+\.\d+ GB\/s/, /the engines alone[^\n]*\n +RDMA_WRITE 64 KiB \/ Buffer.copy 64 KiB +\d+\.\d+\n +8 B SENDs per second +\d+\.\d+ M/, /RDMA_WRITE 64 KiB +\d+\.\d+ GB\/s \(the engines alone\)/, /SEND 8 B ping-pong +\d+\.\d+ us round trip/, /Node TCP 8 B ping-pong +\d+\.\d+ us/])
    assert.match(r.stdout, re);
});
