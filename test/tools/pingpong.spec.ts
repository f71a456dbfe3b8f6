/**
 * The pingpongs: flags and messages against rdma-core 44's (fixtures recorded
 * in the lab VM), the out-of-band messages against the real exchanges in
 * ../shared/captures, and every variant end to end between two processes,
 * on one device and across two, polling and with -e.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { formatDest, MSG_SIZE, parseDest } from '../../src/tools/pingpong.js';
import { DIST, runProcess, startDaemon, tcpPayloads, type Run, type RunningDaemon , A1, A2 } from '../helpers.js';

const FIX = join(DIST, '..', 'test', 'tools', 'fixtures', 'pingpong');
const CAPTURES = join(DIST, '..', 'test', 'fixtures', 'captures');
const tool = (k: string) => join(DIST, 'src', 'bin', `ibv_${k}_pingpong.js`);

function runSync(k: string, args: string[], env: NodeJS.ProcessEnv = process.env): string {
  const r = spawnSync(process.execPath, [tool(k), ...args], { encoding: 'utf8', env, timeout: 20000 });
  return `${r.stderr}${r.stdout}exit=${r.status}\n`;
}

test('bad flags: getopt\'s complaint, the usage and exit 1, as rdma-core 44 prints them', () => {
  for (const k of ['rc', 'uc', 'ud', 'srq']) {
    assert.equal(runSync(k, ['--bogus']), readFileSync(join(FIX, `${k}_bogus.txt`), 'utf8'), `ibv_${k}_pingpong --bogus`);
    assert.equal(runSync(k, ['-x']), readFileSync(join(FIX, `${k}_x.txt`), 'utf8'), `ibv_${k}_pingpong -x`);
    // --help is ours (rdma-core has none): the usage on stdout, exit 0
    const h = spawnSync(process.execPath, [tool(k), '--help'], { encoding: 'utf8' });
    assert.equal(h.status, 0);
    assert.equal(`${h.stdout}exit=1\n`, readFileSync(join(FIX, `${k}_x.txt`), 'utf8').replace(/^.*\n/, ''));
  }
  assert.match(runSync('rc', ['-m', '1000']), /^Usage:\n[^]*exit=1\n$/);
});

test('the out-of-band messages: what rdma-core sent in the captured runs parses, and formats back byte for byte', { skip: existsSync(CAPTURES) ? false : 'no captures' }, () => {
  for (const name of ['rc_pingpong', 'uc_pingpong', 'ud_pingpong']) {
    const stream = Buffer.concat(tcpPayloads(join(CAPTURES, `${name}.pcap`)).map((t) => t.data));
    // client address, server address, the client's "done"
    assert.equal(stream.length, MSG_SIZE * 2 + 5, name);
    for (const m of [stream.subarray(0, MSG_SIZE), stream.subarray(MSG_SIZE, 2 * MSG_SIZE)]) {
      const d = parseDest(m)!;
      assert.ok(d, `${name}: ${m.toString('latin1')}`);
      assert.deepEqual(formatDest(d), m, `${name}: re-formatted`);
      assert.deepEqual([...d.gid.subarray(0, 12)], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff], `${name}: an IPv4-mapped GID in wire order`);
      assert.equal(d.gid[12], 10);
    }
    assert.equal(stream.subarray(2 * MSG_SIZE).toString('latin1'), 'done\0');
  }
});

const run = (k: string, args: string[], root: string): Promise<Run> => runProcess(process.execPath, [tool(k), ...args], { ...process.env, SOFTVERBS_ROOT: root });
const addrs = (out: string, which: string) => [...out.matchAll(new RegExp(`^  ${which} address: +(.*)$`, 'gm'))].map((m) => m[1]!.replace(/^(.*PSN 0x[0-9a-f]{6}):/, '$1,'));

let nextPort = 19000 + (process.pid % 2000);

describe('pingpongs end to end', () => {
  let d: RunningDaemon;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
  });
  after(async () => d.stop());
  const cases: Array<[string, string, string[]]> = [
    ['rc', 'rxe0', []], ['rc', 'rxe1', ['-e', '-c']], ['uc', 'rxe1', ['-s', '1000']], ['ud', 'rxe1', ['-s', '512']], ['ud', 'rxe0', ['-e']],
    ['srq', 'rxe1', ['-q', '4']], ['srq', 'rxe0', ['-q', '2', '-e']],
  ];
  for (const [k, clientDev, extra] of cases) {
    test(`ibv_${k}_pingpong ${extra.join(' ')} between rxe0 and ${clientDev}${clientDev === 'rxe0' ? ' (one device)' : ''}`, async () => {
      const port = String(nextPort++);
      const server = run(k, ['-d', 'rxe0', '-g', '0', '-n', '300', '-p', port, ...extra], d.root);
      await new Promise((r) => setTimeout(r, 500));
      const [c, s] = await Promise.all([run(k, ['-d', clientDev, '-g', '0', '-n', '300', '-p', port, ...extra, '127.0.0.1'], d.root), server]);
      assert.equal(s.code, 0, s.out);
      assert.equal(c.code, 0, c.out);
      for (const r of [c, s]) {
        assert.match(r.out, /^\d+ bytes in \d+\.\d\d seconds = \d+\.\d\d Mbit\/sec\n300 iters in \d+\.\d\d seconds = \d+\.\d\d usec\/iter\n$/m);
        assert.doesNotMatch(r.out, /invalid data/);
      }
      assert.deepEqual(addrs(c.out, 'remote'), addrs(s.out, 'local'));
      assert.deepEqual(addrs(s.out, 'remote'), addrs(c.out, 'local'));
      if (k === 'ud') assert.match(s.out, new RegExp(`^  local address:  LID 0x0000, QPN 0x[0-9a-f]{6}, PSN 0x[0-9a-f]{6}: GID ::ffff:${A1.replace(/\./g, '\\.')}$`, 'm'), "rdma-core's ud_pingpong prints ': GID' there");
    });
  }

  test('errors: unknown device, refused connection, no GID index on RoCE, UD message beyond the MTU', async () => {
    assert.match((await run('rc', ['-d', 'nosuch'], d.root)).out, /^IB device nosuch not found\n$/);
    const refused = await run('rc', ['-g', '0', '-p', '1', '127.0.0.1'], d.root);
    assert.equal(refused.code, 1);
    assert.match(refused.out, /Couldn't connect to 127\.0\.0\.1:1\n/);
    const big = await run('ud', ['-g', '0', '-s', '8192'], d.root);
    assert.equal(big.code, 1);
    assert.match(big.out, /Requested size larger than port MTU \(4096\)/);
    // without -g the AV has no GRH: RoCE cannot be reached that way (rdma-core on rxe fails the same)
    const port = String(nextPort++);
    const server = run('rc', ['-n', '5', '-p', port], d.root);
    await new Promise((r) => setTimeout(r, 400));
    const [c, s] = await Promise.all([run('rc', ['-n', '5', '-p', port, '127.0.0.1'], d.root), server]);
    assert.equal(s.code, 1);
    assert.match(s.out, /Failed to modify QP to RTR\nCouldn't connect to remote QP\n/);
    assert.equal(c.code, 1);
  });
});
