/**
 * softverbsd as an administrator runs it: the systemd unit (verified, and
 * its capability set shown sufficient), readiness on $NOTIFY_SOCKET, SIGHUP
 * re-reading the rules, the operator's log lines, and /metrics.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync, chmodSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { NotifySocket } from '../fixtures/notify.js';
import { DAEMON, DIST, freePort, IS_ROOT, loopbackAddrs, runProcess, spawnPeer, startDaemon, testUser } from '../helpers.js';
import { Access, getDeviceList, openDevice, QpAttrMask as A, QpState, QpType } from '../../src/verbs/index.js';
import { preloadProblem } from '../../src/tools/exec.js';

const UNIT = join(DIST, '..', 'contrib', 'softverbsd.service');
const HAVE_SYSTEMD = spawnSync('systemd-analyze', ['--version']).status === 0;
const C_PINGPONG = '/usr/bin/ibv_rc_pingpong';

function canConnect(path: string): Promise<string | null> {
  return new Promise((resolve) => {
    const s = connect(path);
    s.once('connect', () => {
      s.destroy();
      resolve(null);
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

describe('the systemd unit', () => {
  test('systemd-analyze verify accepts contrib/softverbsd.service (ExecStart pointed at this checkout)', { skip: HAVE_SYSTEMD ? false : 'systemd-analyze is not installed (Debian: apt-get install systemd)' }, () => {
    const dir = mkdtempSync(join(tmpdir(), 'softverbs-unit-'));
    try {
      const unit = readFileSync(UNIT, 'utf8');
      assert.match(unit, /^ExecStart=\/usr\/bin\/softverbsd --root \/run\/softverbs \$SOFTVERBSD_OPTS$/m);
      // the unit names where `npm install -g` puts the bin; here the daemon is this checkout's
      const f = join(dir, 'softverbsd.service');
      writeFileSync(f, unit.replace('ExecStart=/usr/bin/softverbsd', `ExecStart=${process.execPath} ${DAEMON}`));
      const r = spawnSync('systemd-analyze', ['verify', f], { encoding: 'utf8' });
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stderr.trim(), '', 'no warnings either');
      for (const key of ['Type=notify', 'RuntimeDirectory=softverbs', 'Restart=on-failure', 'ProtectSystem=strict', 'ProtectHome=yes', 'NoNewPrivileges=yes', 'ExecReload=/bin/kill -HUP $MAINPID']) assert.ok(unit.includes(`\n${key}\n`), key);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  /** The unit's capability bounding set, as setpriv and /proc name capabilities (net_raw, chown). */
  const unitCaps = () => /^CapabilityBoundingSet=(.*)$/m.exec(readFileSync(UNIT, 'utf8'))![1]!.split(/\s+/).map((c) => c.replace(/^CAP_/, '').toLowerCase());
  /** The bits of capability names in a /proc/PID/status Cap* mask. */
  const CAP_BITS: Record<string, number> = { chown: 0, dac_override: 1, dac_read_search: 2, net_raw: 13, sys_ptrace: 19 };

  /**
   * softverbsd as root with exactly the unit's capabilities (its bounding set; nothing inherited, so nothing else is
   * permitted or effective: checked in /proc), rxe0 and rxe1, and device files in GROUP `group` from the rules.
   */
  async function cappedDaemon(dir: string, group: number) {
    const caps = unitCaps();
    const rules = join(dir, 'rules');
    writeFileSync(rules, `KERNEL=="uverbs*", MODE="0666", GROUP="${group}"\n`);
    const [a1, a2] = loopbackAddrs(2) as [string, string];
    const d = await startDaemon(['--device', `rxe0=${a1}`, '--device', `rxe1=${a2}`, '--rules', rules], {
      root: join(dir, 'root'),
      wrapper: ['setpriv', '--bounding-set', `-all,${caps.map((c) => `+${c}`).join(',')}`, '--inh-caps', '-all', '--'],
    });
    const want = caps.reduce((m, c) => m | (1n << BigInt(CAP_BITS[c]!)), 0n);
    const status = readFileSync(`/proc/${d.proc.pid}/status`, 'utf8');
    for (const f of ['CapEff', 'CapPrm', 'CapBnd']) assert.equal(BigInt(`0x${new RegExp(`^${f}:\\s*([0-9a-f]+)$`, 'm').exec(status)![1]}`), want, `${f} of the daemon`);
    return d;
  }

  /** A pingpong pair of `user` on rxe0 and rxe1 of `d` (`argv` the tool): both exit 0, having exchanged 50 messages. */
  async function pingpong(d: { root: string }, user: ReturnType<typeof testUser>, argv: string[]): Promise<void> {
    const port = await freePort();
    const env = { ...process.env, SOFTVERBS_ROOT: d.root };
    const server = runProcess('setpriv', [...user.as.slice(1), ...argv, '-d', 'rxe0', '-g', '0', '-p', String(port), '-n', '50'], env);
    await new Promise((r) => setTimeout(r, 500));
    const client = await runProcess('setpriv', [...user.as.slice(1), ...argv, '-d', 'rxe1', '-g', '0', '-p', String(port), '-n', '50', '127.0.0.1'], env);
    const s = await server;
    assert.equal(client.code, 0, client.out);
    assert.equal(s.code, 0, s.out);
    for (const r of [client, s]) assert.match(r.out, /409600 bytes in [\d.]+ seconds/);
  }

  test('the unit keeps nothing over other users\' processes: CAP_NET_RAW and CAP_CHOWN only (memfds and /proc/self/mem come over the descriptor exchange)', () => {
    assert.deepEqual(unitCaps().sort(), ['chown', 'net_raw']);
  });

  test('the unit\'s CapabilityBoundingSet is enough: the raw wire, another user\'s memory registration, GROUP from the rules', { skip: IS_ROOT ? false : 'needs root' }, async () => {
    const user = testUser('svtest-svc');
    const group = testUser('svtest-svcgrp');
    const dir = mkdtempSync(join(tmpdir(), 'softverbs-caps-'));
    chmodSync(dir, 0o755);
    const d = await cappedDaemon(dir, group.gid);
    try {
      assert.match(d.stderr(), /rxe0: uverbs0 on .* through a raw socket/);
      assert.equal(statSync(join(d.root, 'dev', 'infiniband', 'uverbs0')).gid, group.gid);
      await pingpong(d, user, [process.execPath, join(DIST, 'src', 'bin', 'ibv_rc_pingpong.js')]);
    } finally {
      await d.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('the unit\'s capabilities serve a C program of another user too: rdma-core\'s ibv_rc_pingpong pair through softverbs exec', { skip: !IS_ROOT ? 'needs root' : !existsSync(C_PINGPONG) ? `${C_PINGPONG} is not installed (apt-get install ibverbs-utils)` : false }, async () => {
    const b = spawnSync(process.execPath, [join(DIST, '..', 'native', 'build.mjs')], { encoding: 'utf8' });
    assert.equal(b.status, 0, b.stderr);
    assert.equal(preloadProblem(), null);
    const user = testUser('svtest-alice');
    const dir = mkdtempSync(join(tmpdir(), 'softverbs-caps-'));
    chmodSync(dir, 0o755);
    const d = await cappedDaemon(dir, user.gid);
    try {
      await pingpong(d, user, [process.execPath, join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--', C_PINGPONG]);
      assert.match(d.stderr(), new RegExp(`rxe0: pid \\d+ \\(ibv_rc_pingpong, uid ${user.uid}\\) opened the device \\(rxe provider ABI, through the preload library\\)`));
    } finally {
      await d.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('readiness, reload and the log', () => {
  const dir = mkdtempSync(join(tmpdir(), 'softverbs-svc-'));
  chmodSync(dir, 0o755);
  const rules = join(dir, 'rules');
  let notify: NotifySocket;
  let d: Awaited<ReturnType<typeof startDaemon>>;
  const [a1, a2] = loopbackAddrs(2) as [string, string];

  before(async () => {
    writeFileSync(rules, 'KERNEL=="uverbs*", MODE="0666"\n');
    notify = new NotifySocket(join(dir, 'notify'));
    process.env.NOTIFY_SOCKET = join(dir, 'notify');
    try {
      d = await startDaemon(['--device', `rxe0=${a1}`, '--device', `rxe1=${a2}`, '--rules', rules], { root: join(dir, 'root') });
    } finally {
      delete process.env.NOTIFY_SOCKET;
    }
  });

  after(async () => {
    await d?.stop();
    notify.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('READY=1 reaches $NOTIFY_SOCKET, and by then every device file accepts connections', async () => {
    const msgs = await notify.waitFor(/^READY=1$/m);
    assert.match(msgs.join('\n'), new RegExp(`MAINPID=${d.proc.pid}`));
    assert.match(msgs.join('\n'), /STATUS=serving rxe0, rxe1/);
    assert.equal(await canConnect(join(d.root, 'dev', 'infiniband', 'uverbs0')), null);
    assert.equal(await canConnect(join(d.root, 'dev', 'infiniband', 'uverbs1')), null);
  });

  test('SIGHUP re-reads the rules: new mode and group on the device files, connected clients keep working, others are refused', { skip: IS_ROOT ? false : 'needs root (other users, chown)' }, async () => {
    const user = testUser('svtest-hup');
    const group = testUser('svtest-hupgrp');
    const peer = spawnPeer(user.as);
    try {
      await peer.call('init', { root: d.root });
      writeFileSync(rules, `KERNEL=="uverbs*", MODE="0660", GROUP="${group.gid}"\nKERNEL=="rdma_cm", MODE="0640"\n`);
      notify.drain();
      d.proc.kill('SIGHUP');
      const msgs = await notify.waitFor(/^READY=1$/m);
      assert.match(msgs.join('\n'), /RELOADING=1/);
      for (const k of ['uverbs0', 'uverbs1']) {
        const st = statSync(join(d.root, 'dev', 'infiniband', k));
        assert.equal(st.mode & 0o777, 0o660);
        assert.equal(st.gid, group.gid);
      }
      assert.equal(statSync(join(d.root, 'dev', 'infiniband', 'rdma_cm')).mode & 0o777, 0o640, 'the rdma_cm file follows its rule too');
      // the connected client keeps its context; a new connection from the same user is refused as open() would be
      assert.equal(await peer.call('state'), QpState.RESET);
      const again = await runProcess('setpriv', [...user.as.slice(1), process.execPath, join(DIST, 'src', 'bin', 'ibv_devinfo.js'), '-d', 'rxe0'], { ...process.env, SOFTVERBS_ROOT: d.root });
      assert.notEqual(again.code, 0);
      assert.match(again.out, /EACCES/);
      assert.match(d.stderr(), /SIGHUP: .*uverbs0 mode 0660 group \d+/);
    } finally {
      await peer.kill();
      writeFileSync(rules, 'KERNEL=="uverbs*", MODE="0666"\nKERNEL=="rdma_cm", MODE="0666"\n');
      d.proc.kill('SIGHUP');
    }
  });

  test('a rules file that no longer parses on SIGHUP is an error line; the device files keep their modes', async () => {
    const file = join(d.root, 'dev', 'infiniband', 'uverbs0');
    const end0 = Date.now() + 5000; // the previous test's last SIGHUP put 0666 back
    while ((statSync(file).mode & 0o777) !== 0o666 && Date.now() < end0) await new Promise((r) => setTimeout(r, 20));
    const before = statSync(file).mode;
    writeFileSync(rules, 'KERNEL=="uverbs*", MODE="nonsense"\n');
    d.proc.kill('SIGHUP');
    const end = Date.now() + 5000;
    while (!/SIGHUP: .*MODE "nonsense" is not an octal mode; the device files keep their modes/.test(d.stderr()) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    assert.match(d.stderr(), /softverbsd: error: SIGHUP: .*MODE "nonsense" is not an octal mode; the device files keep their modes/);
    assert.equal(statSync(join(d.root, 'dev', 'infiniband', 'uverbs0')).mode, before);
    writeFileSync(rules, 'KERNEL=="uverbs*", MODE="0666"\n');
  });

  test('the log says what an operator needs after ready: clients, QPs entering ERR, limits hit (once per user and limit)', { skip: IS_ROOT ? false : 'needs root (prlimit on another user)' }, async () => {
    const ctx = await openDevice(getDeviceList(d.root).find((x) => x.name === 'rxe0')!, d.root);
    const pd = await ctx.allocPd();
    const cq = await ctx.createCq(16);
    const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 4, maxRecvWr: 4 } });
    await qp.modifyQp({ qpState: QpState.INIT, pkeyIndex: 0, portNum: 1, qpAccessFlags: Access.LOCAL_WRITE }, A.STATE | A.PKEY_INDEX | A.PORT | A.ACCESS_FLAGS);
    await qp.modifyQp({ qpState: QpState.ERR }, A.STATE);
    await qp.destroyQp();
    await cq.destroyCq();
    await pd.deallocPd();
    ctx.closeDevice();
    const user = testUser('svtest-limit');
    // 64 KiB of RLIMIT_MEMLOCK, and the pingpong's 1 MiB buffer to register: ENOMEM, twice
    for (let i = 0; i < 2; i++) {
      const r = await runProcess('prlimit', ['--memlock=65536', '--', ...user.as, process.execPath, join(DIST, 'src', 'bin', 'ibv_rc_pingpong.js'), '-d', 'rxe0', '-g', '0', '-s', '1048576', '-p', String(await freePort())], { ...process.env, SOFTVERBS_ROOT: d.root });
      assert.equal(r.code, 1);
      assert.match(r.out, /Couldn't register MR/);
    }
    const log = d.stderr();
    assert.match(log, new RegExp(`rxe0: pid ${process.pid} \\(node, uid 0\\) opened the device`));
    assert.match(log, new RegExp(`rxe0: QP \\d+ of pid ${process.pid} \\(node, uid 0\\) entered ERR: modify_qp to ERR`));
    assert.match(log, new RegExp(`rxe0: pid ${process.pid} \\(node, uid 0\\) closed the device`));
    const hits = log.match(new RegExp(`softverbsd: warning: uid ${user.uid} hit RLIMIT_MEMLOCK: pinning 256 pages passes RLIMIT_MEMLOCK of pid \\d+`, 'g'));
    assert.equal(hits?.length, 1, log);
  });

  test('SIGTERM: STOPPING=1, then the device files are gone', async () => {
    notify.drain();
    const path = join(d.root, 'dev', 'infiniband', 'uverbs0');
    const exited = new Promise((r) => d.proc.once('exit', r));
    d.proc.kill('SIGTERM');
    await notify.waitFor(/^STOPPING=1$/m);
    await exited;
    assert.equal(await canConnect(path), 'ENOENT');
  });
});

describe('--log-level', () => {
  test('warn keeps the client lines out; a bad level is a usage error', async () => {
    const [a] = loopbackAddrs(1) as [string];
    const d = await startDaemon(['--device', `rxe0=${a}`, '--log-level', 'warn']);
    try {
      const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
      ctx.closeDevice();
      await new Promise((r) => setTimeout(r, 100));
      assert.doesNotMatch(d.stderr(), /opened the device/);
      assert.match(d.stderr(), /softverbsd: ready/);
    } finally {
      await d.stop();
    }
    const bad = spawnSync(process.execPath, [DAEMON, '--log-level', 'chatty'], { encoding: 'utf8' });
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--log-level "chatty": expected error, warn, info, debug/);
  });
});
