/**
 * The descriptor exchange (src/daemon/fd-exchange.ts, <root>/fds.sock) from
 * the outside: a real daemon, and real client processes
 * (test/fixtures/fdx-client.c) sending what a C program through the preload
 * library sends, and what a hostile one could: garbage, short requests,
 * unknown ops, the wrong descriptors or none or too many, other processes'
 * tokens and offsets, connections that never send, many at once. Each gets
 * its errno in the reply (status is -errno, with the reason), the daemon
 * goes on serving others, and holds no descriptor more than before.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import { A1, A2, DIST, IS_ROOT, runProcess, startDaemon, testUser, type RunningDaemon } from '../helpers.js';

const REPO = join(DIST, '..');
const skip = spawnSync('cc', ['--version']).error ? 'no C compiler (cc) for the exchange client' : false;

describe('the descriptor exchange', { skip }, () => {
  let d: RunningDaemon;
  let dev: string;
  let baseline = 0;
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-fdx-'));
  const client = join(tmp, 'fdx-client');
  const other = IS_ROOT ? testUser('svtest-fdx') : null;

  /** The daemon's open descriptors. */
  const fds = (pid = d.proc.pid!) => readdirSync(`/proc/${pid}/fd`).length;
  const env = (root = d.root) => ({ ...process.env, SOFTVERBS_ROOT: root });
  /** The client run with `steps` (as another user with `as`, to the daemon at `root`): its output lines. */
  async function run(steps: string[], as: string[] = [], root = d.root): Promise<string[]> {
    const argv = [...as, client, ...steps];
    const r = await runProcess(argv[0]!, argv.slice(1), env(root), 20_000);
    assert.equal(r.code, 0, r.out);
    return r.out.trimEnd().split('\n');
  }
  /** The status word of each reply line. */
  const statuses = (lines: string[]) => lines.filter((l) => l.startsWith('status ')).map((l) => l.split(' ')[1]);

  /** A client that stops at each `wait` until told to go on. */
  function interactive(steps: string[], root = d.root) {
    const p = spawn(client, steps, { env: env(root), stdio: ['pipe', 'pipe', 'inherit'] });
    const lines: string[] = [];
    let buf = '';
    p.stdout!.on('data', (b: Buffer) => {
      buf += b;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        lines.push(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
    const exited = new Promise<number | null>((r) => p.once('close', (c) => r(c)));
    return {
      lines,
      async until(re: RegExp): Promise<string> {
        for (const end = Date.now() + 10_000; Date.now() < end; await new Promise((r) => setTimeout(r, 10))) {
          const l = lines.find((x) => re.test(x));
          if (l) return l;
          if (p.exitCode !== null) break;
        }
        throw new Error(`no line ${re} in:\n${lines.join('\n')}`);
      },
      go: () => p.stdin!.write('\n'),
      async done(): Promise<string[]> {
        p.stdin!.end();
        assert.equal(await exited, 0, lines.join('\n'));
        return lines;
      },
    };
  }

  /** The whole path a C program takes, for a context of its own: its memory taken, its queue handed over. */
  async function serves(as: string[] = []): Promise<void> {
    const out = await run(['ctx', dev, 'cq', 'req', '1', 'token', '0', 'mem', ';', 'req', '2', '0', 'offset', ';'], as);
    assert.deepEqual(statuses(out), ['0', '0'], out.join('\n'));
    assert.match(out.at(-1)!, /^status 0 fds 1 size 4096 /);
  }

  before(async () => {
    const cc = spawnSync('cc', ['-O1', '-Wall', '-Wextra', '-Werror', '-o', client, join(REPO, 'test', 'fixtures', 'fdx-client.c')], { encoding: 'utf8' });
    assert.equal(cc.status, 0, cc.stderr);
    chmodSync(tmp, 0o755);
    d = await startDaemon(['--device', `rxe0=${A1},wire=none`]);
    chmodSync(d.root, 0o755);
    dev = join(d.root, 'dev', 'infiniband', 'uverbs0');
    await serves();
    // what the daemon holds at rest, once a client has come and gone
    for (const end = Date.now() + 5000; Date.now() < end && !/closed the device/.test(d.stderr());) await new Promise((r) => setTimeout(r, 20));
    baseline = fds();
  });
  afterEach(async () => {
    // after each: the daemon alive, no internal error, serving, and back to the descriptors it held at rest
    assert.equal(d.proc.exitCode, null, d.stderr());
    assert.doesNotMatch(d.stderr(), /internal error/);
    await serves();
    let n = fds();
    for (const end = Date.now() + 5000; n !== baseline && Date.now() < end; n = fds()) await new Promise((r) => setTimeout(r, 20));
    assert.equal(n, baseline, `the daemon holds ${n - baseline} descriptors more than at rest`);
  });
  after(async () => {
    await d?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('garbage, short requests and unknown ops are EINVAL with the reason', async () => {
    const out = await run([
      'raw', '00', // a byte
      'raw', '0100000000000000', // half a request
      'raw', '01000000000000000000000000000000'.slice(0, 30), // 15 bytes
      'raw', '00000000000000000000000000000000', // op 0
      'raw', '04000000000000000000000000000000', // op 4
      'raw', 'ffffffffffffffffffffffffffffffff', // op 0xffffffff
      'raw', 'de'.repeat(2048), // a message as long as one can be
      'raw', '5a'.repeat(3000), // longer: the first 2048 bytes are the message
    ]);
    assert.deepEqual(statuses(out), Array(8).fill('EINVAL'), out.join('\n'));
    assert.match(out[0]!, /a request of 1 bytes is not an sv_fd_req/);
    assert.match(out[3]!, /op 0 is not a descriptor exchange request/);
    assert.match(out[6]!, /op 3739147998 is not a descriptor exchange request/);
  });

  test('SET_MEM: a wrong token is EINVAL, no descriptor EBADF; then the context\'s own /proc/self/mem and maps are taken, and a second pair is EBUSY', async () => {
    const out = await run([
      'ctx', dev,
      'req', '1', '0', '0', 'mem', ';',
      'req', '1', '2147483647', '0', 'mem', ';',
      'req', '1', 'token', '0', ';',
      'req', '1', 'token', '0', 'mem', ';',
      'req', '1', 'token', '0', 'mem', ';',
    ]);
    assert.deepEqual(statuses(out), ['EINVAL', 'EINVAL', 'EBADF', '0', 'EBUSY'], out.join('\n'));
    assert.match(out[1]!, /SET_MEM: token 0 names no context waiting for its memory/);
    assert.match(out[3]!, /SET_MEM: 0 descriptors came with the request; it takes two, \/proc\/self\/mem and \/proc\/self\/maps/);
  });

  test('SET_MEM: a pipe, a socket, a memfd, /dev/null, a regular file, one named like a process\'s memory and another process\'s /proc/PID/maps are not a process\'s memory (EINVAL); the memory is still to be given', async () => {
    const file = join(tmp, 'file');
    writeFileSync(file, '');
    // an empty regular file is what /proc/PID/mem looks like to fstat(); only its name and filesystem tell them apart
    mkdirSync(join(tmp, 'proc', '123'), { recursive: true });
    const fake = join(tmp, 'proc', '123', 'mem');
    writeFileSync(fake, '');
    const kinds = ['pipe', 'sock', 'memfd', 'null', `file:${file}`, `file:${fake}`, `file:/proc/${process.pid}/maps`, 'mem'];
    // each in the place of the memory, beside the process's own map (SET_MEM takes the two)
    const out = await run(['ctx', dev, ...kinds.flatMap((k) => (k === 'mem' ? ['req', '1', 'token', '0', k, ';'] : ['req', '1', 'token', '0', k, 'file:/proc/self/maps', ';']))]);
    assert.deepEqual(statuses(out), [...Array(7).fill('EINVAL'), '0'], out.join('\n'));
    assert.match(out[1]!, /SET_MEM: the descriptor is pipe:\[\d+\], not a process's \/proc\/PID\/mem/);
    // named like one, but on another filesystem than procfs
    assert.match(out[6]!, new RegExp(`SET_MEM: the descriptor is ${fake.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} on \\w+, not a process's /proc/PID/mem`));
  });

  test('another process, of the same user or of another, is refused a context\'s memory and its queues (EACCES); the owner then gets both', async () => {
    const owner = interactive(['ctx', dev, 'cq', 'wait', 'req', '1', 'token', '0', 'mem', ';', 'req', '2', '0', 'offset', ';', 'req', '2', '0', 'offset', ';']);
    const token = (await owner.until(/^token /)).split(' ')[1]!;
    const offset = (await owner.until(/^offset /)).split(' ')[1]!;
    await owner.until(/^waiting$/);
    const steal = ['req', '1', token, '0', 'mem', ';', 'req', '2', '0', offset, ';'];
    const same = await run(steal);
    assert.deepEqual(statuses(same), ['EACCES', 'EACCES'], same.join('\n'));
    assert.match(same[0]!, new RegExp(`SET_MEM: the context is pid \\d+'s, not pid \\d+'s`));
    assert.match(same[1]!, new RegExp(`mmap offset 0x${BigInt(offset).toString(16)}: the queue is pid \\d+'s`));
    if (other) {
      const theirs = await run(steal, other.as);
      assert.deepEqual(statuses(theirs), ['EACCES', 'EACCES'], theirs.join('\n'));
    }
    owner.go();
    const out = await owner.done();
    // the queue went to its owner, once: the offer is gone after that
    assert.deepEqual(statuses(out), ['0', '0', 'EINVAL'], out.join('\n'));
    assert.match(out.filter((l) => l.startsWith('status '))[1]!, /^status 0 fds 1 size 4096 /);
  });

  test('GET_QUEUE at an offset no queue waits at is EINVAL', async () => {
    const out = await run(['ctx', dev, 'cq', ...['0', '1', '4096', '0x7fffffffffff000', '0x8000000000000000', '0xffffffffffffffff'].flatMap((o) => ['req', '2', '0', o, ';'])]);
    assert.deepEqual(statuses(out), Array(6).fill('EINVAL'), out.join('\n'));
    assert.match(out.at(-1)!, /mmap offset 0xffffffffffffffff names no queue waiting to be mapped/);
  });

  test('a request carries no more descriptors than it takes: SET_MEM two, GET_QUEUE and the rest none (EINVAL, each one closed); the memory and the queue are still to be had', async () => {
    const out = await run([
      'ctx', dev, 'cq',
      'req', '1', 'token', '0', 'mem', 'pipe', ';', // the memory and one more
      'req', '1', 'token', '0', 'many:2', ';',
      'req', '1', 'token', '0', 'many:12', ';', // more than the daemon's control buffer holds: the kernel drops the rest
      'req', '2', '0', 'offset', 'pipe', ';', // GET_QUEUE takes none: a descriptor sent along must not stay in the daemon
      'req', '2', '0', 'offset', 'many:12', ';',
      'req', '2', '0', '4096', 'mem', ';',
      'req', '7', '0', '0', 'many:3', ';',
      'req', '1', 'token', '0', 'mem', ';',
      'req', '2', '0', 'offset', ';',
    ]);
    assert.deepEqual(statuses(out), [...Array(7).fill('EINVAL'), '0', '0'], out.join('\n'));
    const st = out.filter((l) => l.startsWith('status '));
    assert.match(st[0]!, /SET_MEM: 3 descriptors came with the request; it takes two/);
    assert.match(st[2]!, /more descriptors came than any request carries/);
    assert.match(st[3]!, /GET_QUEUE: 1 descriptors came with the request; it takes none/);
    assert.match(st[8]!, /^status 0 fds 1 size 4096 /);
  });

  test('many connections at once that send nothing: past 16 of one user (64 of all) they are turned away with EAGAIN, and meanwhile another user is served', async () => {
    const flood = interactive(['flood', '100', '1500']);
    await flood.until(/^flooding 100$/);
    await new Promise((r) => setTimeout(r, 100));
    // the flood's user holds all the waiting it may: another user's requests are still read and answered
    if (other) await serves(other.as);
    const out = await flood.done();
    assert.ok(out.includes('answered 84 closed 0 open 16'), out.join('\n'));
    assert.deepEqual([...new Set(out.filter((l) => l.startsWith('answer ')).map((l) => l.split(' ')[2]))], ['EAGAIN']);
    assert.match(out.find((l) => l.startsWith('answer '))!, /uid \d+ has 16 descriptor exchange connections waiting for their request/);
  });

  test('with no descriptor to spare, connections wait in the queue, the daemon does not spin on its listener, and they are served once there is room', async () => {
    const d2 = await startDaemon(['--device', `rxe0=${A2},wire=none`]);
    try {
      const pid = d2.proc.pid!;
      const nofile = (n: string) => {
        const pl = spawnSync('prlimit', ['--pid', String(pid), `--nofile=${n}`], { encoding: 'utf8' });
        assert.equal(pl.status, 0, pl.stderr);
      };
      const [soft, hard] = spawnSync('prlimit', ['--pid', String(pid), '--nofile', '--raw', '--noheadings', '--output=SOFT,HARD'], { encoding: 'utf8' }).stdout.trim().split(/\s+/);
      // a table with fewer free descriptors than one user's connections may hold waiting (16): it used to fill up,
      // and then the listener, readable with nothing to accept, woke the daemon again and again
      const limit = fds(pid) + 12;
      nofile(`${limit}:${hard}`);
      const cpu = () => readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ').slice(11, 13).reduce((a, b) => a + Number(b), 0);
      const flood = interactive(['flood', '40', '1500'], d2.root);
      await flood.until(/^flooding 40$/);
      await new Promise((r) => setTimeout(r, 200));
      const before = cpu();
      await new Promise((r) => setTimeout(r, 1000));
      // clock ticks (1/100 s) in that second: a listener woken at once, again and again, took most of a CPU
      const ticks = cpu() - before;
      assert.ok(ticks < 30, `the daemon used ${ticks}% of a CPU while connections waited for room`);
      assert.ok(fds(pid) <= limit);
      const out = await flood.done();
      assert.ok(out.includes('answered 0 closed 0 open 40'), out.join('\n'));
      // room again: what waited in the queue is answered (the flood's, closed by now), and the next request
      nofile(`${soft}:${hard}`);
      const after = await run(['req', '2', '0', '4096', ';'], [], d2.root);
      assert.deepEqual(statuses(after), ['EINVAL'], after.join('\n'));
      assert.doesNotMatch(d2.stderr(), /internal error/);
    } finally {
      await d2.stop();
    }
  });

  test('a connection that never sends is closed after the request timeout (2 s)', async () => {
    const out = await run(['hold', '6000']);
    const ms = Number(/^closed after (\d+) ms$/.exec(out[0]!)?.[1]);
    assert.ok(ms >= 1900 && ms < 5000, out.join('\n'));
  });
});
