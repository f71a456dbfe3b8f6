/**
 * rdma-core's own verbs programs (Debian's rdma-core 44, /usr/bin), unmodified, through
 * `softverbs exec` as the unprivileged user svtest-alice against a root daemon: the
 * pingpongs on two devices of one daemon, against our TypeScript tools both ways and
 * across two daemons; ibv_xsrq_pingpong failing as on Linux rxe; ibv_asyncwatch hearing
 * the device go; a program SIGKILLed mid-transfer; a pair inside user, mount and pid
 * namespaces that see nothing of the machine but the daemon's root.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { EventType } from '../../src/abi/enums.js';
import { PRELOAD_PATH } from '../../src/tools/exec.js';
import { getDeviceList, openDevice } from '../../src/verbs/index.js';
import { A1, A2, A3, A4, DIST, freePort, mgmt, runProcess, startDaemon, type Run, type RunningDaemon } from '../helpers.js';
import { buildPreload, execSkip, launchers, pair, serverUp, start } from './exec-harness.js';

const KINDS = ['rc', 'uc', 'ud', 'srq'] as const;
type Kind = (typeof KINDS)[number];
/** the message size each pingpong sends by default (rdma-core 44's, and ours) */
const SIZE: Record<Kind, number> = { rc: 4096, uc: 4096, ud: 1024, srq: 4096 };
const N = 100;
const hasStrace = spawnSync('strace', ['-V']).status === 0;
const skip = execSkip([...KINDS.map((k) => `ibv_${k}_pingpong`), 'ibv_xsrq_pingpong', 'ibv_asyncwatch', 'ib_write_bw']);

/** A pingpong's last two lines: the bytes both ways and the iterations, as rdma-core prints them. */
const result = (k: Kind, n = N) =>
  new RegExp(`^${2 * n * SIZE[k]} bytes in \\d+\\.\\d\\d seconds = \\d+\\.\\d\\d Mbit/sec\\n${n} iters in \\d+\\.\\d\\d seconds = \\d+\\.\\d\\d usec/iter\\n`, 'm');
/** its address lines (ud_pingpong writes ': GID' after its local PSN, the others ', GID') */
const addrs = (out: string, which: string) => [...out.matchAll(new RegExp(`^  ${which} address: +(.*)$`, 'gm'))].map((m) => m[1]!.replace(/^(.*PSN 0x[0-9a-f]{6}):/, '$1,'));

/** Both ends finished their N iterations, exit 0, and each heard the other's addresses as they were sent. */
function assertPingpong(k: Kind, [s, c]: Run[], what: string, n = N): void {
  assert.equal(s!.code, 0, `${what}: server\n${s!.out}`);
  assert.equal(c!.code, 0, `${what}: client\n${c!.out}`);
  for (const r of [s!, c!]) {
    assert.match(r.out, result(k, n), what);
    assert.doesNotMatch(r.out, /invalid data|Failed|Couldn't/, what);
  }
  assert.ok(addrs(s!.out, 'local').length >= 1, what);
  assert.deepEqual(addrs(c!.out, 'remote'), addrs(s!.out, 'local'), `${what}: the client heard the server's addresses`);
  assert.deepEqual(addrs(s!.out, 'remote'), addrs(c!.out, 'local'), `${what}: the server heard the client's`);
}

/** fixtures/NAME.c built against libibverbs into a directory of its own that alice can read (remove `dir` after). */
function cProbe(name: string): { dir: string; probe: string } {
  const dir = mkdtempSync(join(tmpdir(), `softverbs-${name}-`));
  chmodSync(dir, 0o755);
  const probe = join(dir, name);
  const cc = spawnSync('cc', ['-O1', '-Wall', '-Werror', '-o', probe, join(DIST, '..', 'test', 'fixtures', `${name}.c`), '-libverbs'], { encoding: 'utf8' });
  if (cc.status !== 0) rmSync(dir, { recursive: true, force: true });
  assert.equal(cc.status, 0, cc.stderr);
  return { dir, probe };
}

describe('rdma-core\'s verbs programs through softverbs exec', { skip }, () => {
  let d: RunningDaemon;
  const { alice, env, c, ours } = launchers(() => d.root);
  const rdma = (root: string, ...args: string[]) => runProcess(process.execPath, [join(DIST, 'src', 'bin', 'rdma.js'), ...args], { ...process.env, SOFTVERBS_ROOT: root });
  /** the daemon's log has a line matching re (it comes once the daemon has seen the client's file close) */
  const logged = async (re: RegExp, ms = 5000) => {
    for (const end = Date.now() + ms; !re.test(d.stderr()) && Date.now() < end;) await new Promise((r) => setTimeout(r, 25));
    assert.match(d.stderr(), re);
  };

  before(async () => {
    buildPreload();
    // rxe2 is there to be deleted (ibv_asyncwatch)
    d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`, '--device', `rxe2=${A3}`]);
    chmodSync(d.root, 0o755);
  });
  after(async () => {
    await d?.stop();
  });

  // -N: rdma-core's post send through ibv_wr_* on a QP of ibv_create_qp_ex (EX_CREATE_QP); -c: received buffers checked
  for (const k of KINDS) {
    for (const ev of k === 'rc' ? [[], ['-e'], ['-N', '-c']] : [[], ['-e']]) {
      test(`ibv_${k}_pingpong ${ev.join(' ')}: rdma-core's on rxe0 and rxe1, ${N} iterations`, async () => {
        const args = (dev: string) => ['-d', dev, '-g', '0', '-n', String(N), ...ev];
        const r = await pair((p) => c(`ibv_${k}_pingpong`, ...args('rxe0'), '-p', p), (p) => c(`ibv_${k}_pingpong`, ...args('rxe1'), '-p', p, '127.0.0.1'), env());
        assertPingpong(k, r, `ibv_${k}_pingpong ${ev.join(' ')}`);
        if (k !== 'srq') assert.match(r[0].out, new RegExp(`^  local address: .* GID ::ffff:${A1.replace(/\./g, '\\.')}\\n  remote address: .* GID ::ffff:${A2.replace(/\./g, '\\.')}\\n`, 'm'));
      });
    }
  }

  // the out-of-band exchange of ours is rdma-core's byte for byte (test/tools/pingpong.spec.ts checks it against captures): here it meets the real thing
  const mixed: Array<[Kind, string[]]> = [['rc', ['-c']], ['uc', []], ['ud', []], ['srq', []], ['rc', ['-e']], ['ud', ['-e']]];
  for (const [k, ev] of mixed) {
    for (const oursServes of [false, true]) {
      test(`ibv_${k}_pingpong ${ev.join(' ')}: ${oursServes ? 'our server, rdma-core\'s client' : 'rdma-core\'s server, our client'}`, async () => {
        const args = (dev: string) => ['-d', dev, '-g', '0', '-n', String(N), ...ev];
        const sv = oursServes ? ours : c;
        const cl = oursServes ? c : ours;
        const r = await pair((p) => sv(`ibv_${k}_pingpong`, ...args('rxe0'), '-p', p), (p) => cl(`ibv_${k}_pingpong`, ...args('rxe1'), '-p', p, '127.0.0.1'), env());
        assertPingpong(k, r, `ibv_${k}_pingpong ${ev.join(' ')} ${oursServes ? 'TS↔C' : 'C↔TS'}`);
      });
    }
  }

  test('a C program\'s posts ring no doorbell while the daemon polls its send queue: ibv_rc_pingpong -n 2000, rdma-core\'s both ends, rings for a few of its 4,000 SENDs', async () => {
    // librxe writes POST_SEND after every post; the preload sends it on only when the daemon's requester is idle on
    // that queue, and the daemon holds a busy queue in its poll window (the C program's post is then a store)
    const devs = getDeviceList(d.root);
    const count = async () => {
      const all = (await mgmt(devs[0]!.devPath, 'devices')) as Array<{ name: string; doorbells: number; polled: number }>;
      const of = all.filter((x) => x.name === 'rxe0' || x.name === 'rxe1');
      return { doorbells: of.reduce((a, x) => a + x.doorbells, 0), polled: of.reduce((a, x) => a + x.polled, 0) };
    };
    const before = await count();
    const n = 2000;
    const args = (dev: string) => ['-d', dev, '-g', '0', '-n', String(n)];
    const r = await pair((p) => c('ibv_rc_pingpong', ...args('rxe0'), '-p', p), (p) => c('ibv_rc_pingpong', ...args('rxe1'), '-p', p, '127.0.0.1'), env());
    assertPingpong('rc', r, `ibv_rc_pingpong -n ${n}`, n);
    const after = await count();
    const doorbells = after.doorbells - before.doorbells;
    assert.ok(doorbells < (2 * n) / 10, `${doorbells} doorbells for ${2 * n} SENDs (polled ${after.polled - before.polled} times)`);
    assert.ok(after.polled - before.polled > n, `the daemon found the posts itself: polled ${after.polled - before.polled}`);
  });

  test('the extended verbs from C (fixtures/ex-probe.c): ibv_query_device_ex, ibv_create_cq_ex and its start/next/end poll, ibv_wr_* with rxe >= 6.2\'s ATOMIC_WRITE, and what librxe and the daemon refuse', async () => {
    const { dir, probe } = cProbe('ex-probe');
    try {
      const r = await runProcess(alice.as[0]!, [...alice.as.slice(1), process.execPath, join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--', probe, 'rxe0'], env(), 30_000);
      assert.equal(r.code, 0, r.out);
      assert.equal(r.out, `ibv_query_device_ex: ok, ATOMIC_WRITE advertised
ibv_create_cq_ex timestamps: EOPNOTSUPP
ibv_create_cq_ex IGNORE_OVERRUN: EOPNOTSUPP
ibv_create_cq_ex standard flags: made
ibv_create_qp_ex UD with RDMA_WRITE: EOPNOTSUPP
ibv_wr_complete: ok
completion: wr_id 1, success, opcode 1, byte_len 14, qp_num set
completion: wr_id 2, success, opcode 9, byte_len 8, qp_num set
written: extended verbs
atomic written: same 8 bytes
completion: wr_id 3, remote invalid request error, opcode 9, byte_len 8, qp_num set
`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('a C program spinning on an empty CQ gives the CPU away: ibv_poll_cq and ibv_start_poll (fixtures/poll-yield.c) call sched_yield once every 16 empty polls in a row, and sleep a moment every 1,024th instead', { skip: hasStrace ? false : 'strace is not installed (apt-get install strace)' }, async () => {
    const { dir, probe } = cProbe('poll-yield');
    try {
      const trace = join(dir, 'trace');
      const polls = 1600;
      const r = await runProcess('strace', ['-f', '-qq', '-e', 'trace=sched_yield,nanosleep,clock_nanosleep', '-o', trace, ...alice.as, process.execPath, join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--', probe, 'rxe0', String(polls)], env(), 30_000);
      assert.equal(r.code, 0, r.out);
      const pid = /^pid (\d+) polled 1600 times, got 0$/m.exec(r.out)?.[1];
      assert.ok(pid, r.out);
      assert.match(r.out, /^start_poll 1600 times, ENOENT 1600$/m);
      // ibv_poll_cq's empty polls, then ibv_start_poll's ENOENTs: one run of 2 * polls
      const mine = readFileSync(trace, 'utf8').split('\n').filter((l) => l.startsWith(`${pid} `));
      const sleeps = mine.filter((l) => /\b(clock_)?nanosleep\(/.test(l)).length;
      const yields = mine.filter((l) => l.includes('sched_yield(')).length;
      assert.equal(sleeps, Math.floor((2 * polls) / 1024), `nanosleep calls of the polling program (pid ${pid})`);
      assert.equal(yields, (2 * polls) / 16 - sleeps, `sched_yield calls of the polling program (pid ${pid})`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('ibv_xsrq_pingpong fails as on Linux rxe: no XRC domain (rdma-core\'s rxe provider has no open_xrcd: EOPNOTSUPP, 95), exit 1; the daemon releases what it held', async () => {
    const port = String(await freePort());
    for (const args of [['-d', 'rxe0', '-g', '0', '-p', port], ['-d', 'rxe1', '-g', '0', '-p', port, '127.0.0.1']]) {
      const r = await start(c('ibv_xsrq_pingpong', ...args), env()).done;
      assert.equal(r.code, 1, r.out);
      // it opens /tmp/xrc_domain first, and goes on if it cannot (a file another user made)
      assert.match(r.out, /^(Couldn't create the file for the XRC Domain but not stopping \d+\n)?Couldn't Open the XRC Domain 95\n$/);
    }
    // it returns without freeing its PD and MR: the daemon does, at the close
    await logged(new RegExp(`rxe1: pid \\d+ \\(ibv_xsrq_pingpo, uid ${alice.uid}\\) closed the device; destroyed what it held: 1 pd, 1 mr\\n`));
  });

  test('ibv_asyncwatch hears rdma link delete: IBV_EVENT_DEVICE_FATAL, port 0, then the end (exit 1), as from a Linux device that disassociates; our context hears it once', async () => {
    const w = start(c('ibv_asyncwatch', '-d', 'rxe2'), env(), 15_000);
    for (const end = Date.now() + 10_000; !w.out().includes('async event FD') && Date.now() < end;) await new Promise((r) => setTimeout(r, 25));
    const ctx = await openDevice(getDeviceList(d.root).find((x) => x.name === 'rxe2')!, d.root);
    const fatal = ctx.getAsyncEvent();
    const del = await rdma(d.root, 'link', 'delete', 'rxe2');
    assert.equal(del.code, 0, del.out);
    const r = await w.done;
    assert.equal(r.code, 1, r.out);
    assert.match(r.out, /^rxe2: async event FD \d+\n {2}event_type IBV_EVENT_DEVICE_FATAL \(8\), port 0\n$/);
    assert.deepEqual(await fatal, { eventType: EventType.DEVICE_FATAL, element: 0 });
    assert.equal(await ctx.getAsyncEvent(), null, 'once: the end of the stream is not a second DEVICE_FATAL');
    await ctx.closeDevice();
  });

  test('across two daemons (two roots, RoCEv2 between their devices): rc with -e rdma-core\'s both ends, ud ours against rdma-core\'s; ibv_asyncwatch hears the second daemon stop', async () => {
    const d2 = await startDaemon(['--device', `rxe0=${A4}`]);
    try {
      chmodSync(d2.root, 0o755);
      const args = ['-d', 'rxe0', '-g', '0', '-n', String(N)];
      const rc = await pair((p) => c('ibv_rc_pingpong', ...args, '-e', '-p', p), (p) => c('ibv_rc_pingpong', ...args, '-e', '-p', p, '127.0.0.1'), env(), 30_000, env(d2.root));
      assertPingpong('rc', rc, 'rc across daemons');
      assert.match(rc[0].out, new RegExp(`^  remote address: .* GID ::ffff:${A4.replace(/\./g, '\\.')}$`, 'm'));
      const ud = await pair((p) => ours('ibv_ud_pingpong', ...args, '-p', p), (p) => c('ibv_ud_pingpong', ...args, '-p', p, '127.0.0.1'), env(), 30_000, env(d2.root));
      assertPingpong('ud', ud, 'ud across daemons, ours serving');
      assert.match(d2.stderr(), new RegExp(`rxe0: pid \\d+ \\(ibv_ud_pingpong, uid ${alice.uid}\\) opened the device \\(rxe provider ABI, through the preload library\\)`));
      // and as this daemon stops (SIGTERM), a program watching its device hears it go, as of a link deleted
      const w = start(c('ibv_asyncwatch', '-d', 'rxe0'), env(d2.root), 15_000);
      for (const end = Date.now() + 10_000; !w.out().includes('async event FD') && Date.now() < end;) await new Promise((r) => setTimeout(r, 25));
      await d2.stop();
      const r = await w.done;
      assert.equal(r.code, 1, r.out);
      assert.match(r.out, /^rxe0: async event FD \d+\n {2}event_type IBV_EVENT_DEVICE_FATAL \(8\), port 0\n$/);
    } finally {
      await d2.stop();
    }
  });

  test('a program SIGKILLed mid-transfer: the daemon destroys what it held, its peer retries unanswered (rxe\'s retry_cnt 7 is for ever) until its own timing ends it, a pair beside it does not notice', async () => {
    const stats = async () => {
      const out = (await rdma(d.root, 'statistic', 'show')).out;
      const n = (dev: string, name: string) => Number(new RegExp(`^link ${dev}/1 .*\\b${name} (\\d+)`, 'm').exec(out)![1]);
      return { retries: n('rxe1', 'completer_retry_err'), exceeded: n('rxe1', 'retry_exceeded_err') };
    };
    const earlier = await stats();
    /** a QP of `comm` on rxe1 in RTS: its program's exchange is over and it is running */
    const running = async (comm: string) => {
      const re = new RegExp(`^link rxe1/1 .* state RTS .* comm ${comm} `, 'm');
      for (const end = Date.now() + 15_000; Date.now() < end; await new Promise((r) => setTimeout(r, 50))) if (re.test((await rdma(d.root, 'resource', 'show', 'qp')).out)) return;
      assert.fail(`no ${comm} QP in RTS on rxe1`);
    };
    const port = String(await freePort());
    // (its duration outlasts the pair beside it starting and being seen running, on a loaded 2-core machine too:
    // the two spinning C programs leave little to the rest, and a poll of `rdma resource show` took seconds)
    const bw = ['-x', '0', '-p', port, '-D', '20'];
    const t0 = Date.now();
    const vs = start(c('ib_write_bw', '-d', 'rxe0', ...bw), env());
    await serverUp(vs, Number(port));
    const vc = start(c('ib_write_bw', '-d', 'rxe1', ...bw, '127.0.0.1'), env());
    await running('ib_write_bw');
    // beside it, on the same two devices: a pingpong that is running when the kill comes
    const calmPort = await freePort();
    // long enough to be seen running by a 50 ms poll of `rdma resource show` and to outlast the kill: with the
    // daemon no longer woken per WRITE of the stream beside it, 1000 iterations took ~0.4 s and were over unseen
    // (one poll, a node process, takes ~0.3 s on a loaded machine): 30000 take seconds
    const calmArgs = ['-g', '0', '-n', '30000', '-e', '-p', String(calmPort)];
    const calmS = start(c('ibv_rc_pingpong', '-d', 'rxe0', ...calmArgs), env(), 60_000);
    await serverUp(calmS, calmPort);
    const calmC = start(c('ibv_rc_pingpong', '-d', 'rxe1', ...calmArgs, '127.0.0.1'), env(), 60_000);
    let calmDone = false;
    void calmC.done.then(() => (calmDone = true));
    await running('ibv_rc_pingpong');
    // the program itself: setpriv became softverbs exec, which became the program (execve, as env(1) does)
    const victim = vs.pid;
    assert.ok(existsSync(`/proc/${victim}`), `the victim is still running (${Date.now() - t0} ms after it started): ${vs.out()}`);
    assert.equal(readFileSync(`/proc/${victim}/comm`, 'utf8'), 'ib_write_bw\n');
    process.kill(victim, 'SIGKILL');
    const killedAt = Date.now();
    assert.equal(calmDone, false, 'the pair beside it was still running at the kill');

    const s = await vs.done;
    assert.deepEqual([s.code, s.signal], [null, 'SIGKILL'], 'softverbs exec is the program: its caller sees the SIGKILL itself');
    // its QP, CQ, MR and PD: destroyed when the daemon saw its device file close; nothing of it left
    await logged(new RegExp(`rxe0: pid ${victim} \\(ib_write_bw, uid ${alice.uid}\\) closed the device; destroyed what it held: 1 pd, 1 mr, 1 cq, 1 qp\\n`));
    assert.doesNotMatch((await rdma(d.root, 'resource', 'show', 'qp')).out, new RegExp(`pid ${victim} `));
    // its QP went unanswering, not into error: no NAK told the peer it had done wrong (REM_ACCESS_ERR) while the
    // daemon had yet to hear of the exit; as on Linux rxe, whose MR pages stay pinned until the QP is destroyed
    assert.doesNotMatch(d.stderr(), new RegExp(`QP \\d+ of pid ${victim} .*entered ERR`));
    // the peer: its WRITEs go unacknowledged and are retried, never given up (retry_cnt 7: rxe retries for ever), so
    // no error completion; its duration ends the run, and the report exchange over TCP finds the server gone
    const p = await vc.done;
    assert.equal(p.code, 1, p.out);
    assert.match(p.out, /Failed to exchange data between server and clients/);
    assert.doesNotMatch(p.out, /Completion with error/);
    assert.ok(Date.now() - killedAt > 500, 'the peer went on for its duration');
    const later = await stats();
    assert.ok(later.retries > earlier.retries, `the peer's WRITEs were retried: ${JSON.stringify([earlier, later])} ${p.out}`);
    assert.equal(later.exceeded, earlier.exceeded, 'and never given up');

    const calm = await Promise.all([calmS.done, calmC.done]);
    for (const r of calm) {
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, result('rc', 30000));
    }
  });

  test('a container-like run: user, mount and pid namespaces (unshare, as alice), only the daemon\'s root, the library and /usr, /etc inside; an unmodified ibv_rc_pingpong pair there', async (t) => {
    const probe = await runProcess(alice.as[0]!, [...alice.as.slice(1), 'unshare', '--user', '--map-root-user', '--mount', '--pid', '--fork', 'true']);
    if (probe.code !== 0) return t.skip(`no unprivileged user namespaces here: ${probe.out.trim()}`);
    const dir = mkdtempSync(join(tmpdir(), 'softverbs-ct-'));
    chownSync(dir, alice.uid, alice.gid);
    const lib = dirname(PRELOAD_PATH);
    const port = String(await freePort());
    // inside the new namespaces: a tmpfs root holding /usr, /etc (libibverbs.d names the providers), the daemon's root
    // and the library at their own paths, a /proc of the pid namespace, /dev/null; then the pair, chrooted there
    const script = `set -e
cd "$1"; mount -t tmpfs -o mode=755 tmpfs .; cd "$1"
mkdir -p usr etc proc dev tmp ".$2" ".$3"
for d in bin sbin lib lib64 lib32 libx32; do [ -L /$d ] && ln -s "$(readlink /$d)" $d || true; done
mount --rbind /usr usr; mount --rbind /etc etc
mount --bind "$2" ".$2"; mount --bind "$3" ".$3"
mount -t proc proc proc
touch dev/null; mount --bind /dev/null dev/null
echo "inside: pid $$ uid $(id -u)"
exec chroot . /bin/sh -c '
echo "/: $(ls / | tr "\\n" " ")"
hex=$(printf %04X $1)
/usr/bin/ibv_rc_pingpong -d rxe0 -g 0 -n ${N} -p $1 >/tmp/s 2>&1 & s=$!
for i in $(seq 400); do grep -qE ":$hex [0-9A-F]+:0000 0A " /proc/net/tcp /proc/net/tcp6 && break; sleep 0.025; done
/usr/bin/ibv_rc_pingpong -d rxe1 -g 0 -n ${N} -p $1 127.0.0.1 >/tmp/c 2>&1 && echo "client: exit 0" || echo "client: exit $?"
wait $s && echo "server: exit 0" || echo "server: exit $?"
echo "== server"; cat /tmp/s; echo "== client"; cat /tmp/c' sh "$4"
`;
    try {
      const argv = [...alice.as, process.execPath, join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--', 'unshare', '--user', '--map-root-user', '--mount', '--pid', '--fork', '--', 'sh', '-c', script, 'sh', dir, d.root, lib, port];
      const run = await start(argv, env()).done;
      assert.match(run.out, /^inside: pid 1 uid 0\n/, run.out);
      const seen = new Set(/^\/: (.*)$/m.exec(run.out)![1]!.trim().split(' '));
      const allowed = new Set(['bin', 'sbin', 'lib', 'lib64', 'lib32', 'libx32', 'usr', 'etc', 'proc', 'dev', 'tmp', d.root.split('/')[1]!, lib.split('/')[1]!]);
      assert.deepEqual([...seen].filter((x) => !allowed.has(x)), [], 'nothing else of the machine inside');
      assert.match(run.out, /^client: exit 0\nserver: exit 0\n/m, run.out);
      const [s, cl] = run.out.split(/^== (?:server|client)\n/m).slice(1);
      assertPingpong('rc', [{ code: 0, out: s! }, { code: 0, out: cl! }], 'in the container');
      // the daemon knows them by their pids in its own namespace and alice's uid (not the namespace's 0 and 1)
      const opened = [...d.stderr().matchAll(new RegExp(`rxe[01]: pid (\\d+) \\(ibv_rc_pingpong, uid ${alice.uid}\\) opened the device`, 'g'))].map((m) => Number(m[1]));
      assert.ok(opened.length >= 2 && opened.every((p) => p > 1));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
