/**
 * Our ibv_{rc,uc,ud,srq}_pingpong against rdma-core 44's in the lab VM (run
 * by `npm run test:interop`), each side as server and as client: the TCP
 * exchange must be byte-compatible for them to meet at all, and each side's
 * "remote address" line must be the other's "local address" line. Then the
 * same with rdma-core's own C tool on softverbsd (`softverbs exec`) on our side.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DIST, meet, runProcess, startDaemon, type Run, type RunningDaemon } from '../helpers.js';

const PEER = process.env.LAB_PEER ?? '';
const HOST = process.env.LAB_HOST ?? '10.77.0.1';
const LAB = process.env.LAB_DIR ?? '';
const skip = PEER && LAB ? false : 'LAB_PEER/LAB_DIR are not set: run through `npm run test:interop`';

const run = (cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Run> => runProcess(cmd, args, env, 90_000);

const addr = (out: string, which: 'local' | 'remote') =>
  [...out.matchAll(new RegExp(`^  ${which} address: +LID (0x[0-9a-f]{4}), QPN (0x[0-9a-f]{6}), PSN (0x[0-9a-f]{6})[,:] GID (\\S+)$`, 'gm'))].map((m) => m.slice(1).join(' '));

describe('pingpongs: softverbs <-> rdma-core 44 on Linux rxe', { skip }, () => {
  let d: RunningDaemon;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${HOST}`]);
  });
  after(async () => d?.stop());
  for (const kind of ['rc', 'uc', 'ud', 'srq']) {
    for (const [oursServes, c] of [[true, false], [false, false], [true, true], [false, true]] as const) {
      const who = c ? 'rdma-core\'s tool on softverbsd' : 'softverbs';
      test(`ibv_${kind}_pingpong, ${who} ${oursServes ? 'server' : 'client'}, rdma-core on Linux rxe ${oursServes ? 'client' : 'server'}`, async () => {
        const extra = kind === 'srq' ? ['-q', '4'] : kind === 'ud' ? ['-s', '1024'] : [];
        const args = (server: boolean) => ['-g', '0', '-n', '100', ...extra, ...(server ? [] : [PEER])];
        const ours = (server: boolean) => c
          ? run(process.execPath, [join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--', `/usr/bin/ibv_${kind}_pingpong`, '-d', 'rxe0', ...args(server)], { ...process.env, SOFTVERBS_ROOT: d.root })
          : run(process.execPath, [join(DIST, 'src', 'bin', `ibv_${kind}_pingpong.js`), ...args(server)], { ...process.env, SOFTVERBS_ROOT: d.root });
        const theirs = (server: boolean) => run(join(LAB, 'vm-exec.sh'), ['1', `timeout 80 ibv_${kind}_pingpong -d rxe0 -g 1 -n 100 ${extra.join(' ')} ${server ? '' : HOST}`]);
        const [a, b] = await meet(oursServes, ours, theirs);
        assert.equal(a.code, 0, `softverbs:\n${a.out}`);
        assert.equal(b.code, 0, `rdma-core:\n${b.out}`);
        for (const r of [a, b]) assert.match(r.out, /^\d+ bytes in [\d.]+ seconds = [\d.]+ Mbit\/sec\n\d+ iters in [\d.]+ seconds = [\d.]+ usec\/iter$/m);
        assert.deepEqual(addr(a.out, 'remote'), addr(b.out, 'local'), 'we saw what they sent');
        assert.deepEqual(addr(b.out, 'remote'), addr(a.out, 'local'), 'they saw what we sent');
        assert.equal(addr(a.out, 'local').length, kind === 'srq' ? 4 : 1);
      });
    }
  }
});
