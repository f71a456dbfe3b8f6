/**
 * A hostile local user against the root directory (a shared /tmp is hostile
 * ground): a root planted by another user, a symlinked root,
 * symlinks and ../ names inside the tree, and a fake daemon for the library.
 * The daemon runs as root; mallory is an unprivileged user of the tests' own.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { A1, DAEMON, DIST, IS_ROOT, runProcess, startDaemon, testUser } from '../helpers.js';
import { EventChannel, getDeviceList, openDevice } from '../../src/verbs/index.js';

describe('the root directory is trusted only if it is the daemon\'s', { skip: IS_ROOT ? false : 'needs root (a root daemon, other users)' }, () => {
  const base = mkdtempSync(join(tmpdir(), 'sv-sec-root-'));
  let mallory: ReturnType<typeof testUser>;
  before(() => {
    chmodSync(base, 0o755);
    mallory = testUser('svtest-mallory');
  });
  after(() => rmSync(base, { recursive: true, force: true }));

  /** softverbsd in the foreground until it is ready or exits; what it said and its exit code. */
  const daemonRun = (root: string) => spawnSync(process.execPath, [DAEMON, '--root', root, '--device', `rxe0=${A1}`], { encoding: 'utf8', timeout: 5000, killSignal: 'SIGTERM' });

  test('a root another user created first (the /tmp/softverbs-<uid> race) is refused, and nothing in it is touched', () => {
    const root = join(base, 'planted');
    mkdirSync(root, { mode: 0o777 });
    chownSync(root, mallory.uid, mallory.gid);
    // mallory's bait: a symlinked class directory and an ibdev naming a path outside
    const victim = join(base, 'victim');
    mkdirSync(victim);
    writeFileSync(join(victim, 'precious'), 'keep me');
    mkdirSync(join(root, 'sys', 'class', 'infiniband_verbs'), { recursive: true });
    symlinkSync(victim, join(root, 'sys', 'class', 'infiniband_verbs', 'uverbs7'));
    mkdirSync(join(root, 'sys', 'class', 'infiniband_verbs', 'uverbs8'));
    writeFileSync(join(root, 'sys', 'class', 'infiniband_verbs', 'uverbs8', 'ibdev'), '../../../../victim\n');
    const r = daemonRun(root);
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, new RegExp(`refusing root ${root}: it is owned by uid ${mallory.uid}, not by uid 0`));
    assert.equal(readFileSync(join(victim, 'precious'), 'utf8'), 'keep me');
    assert.ok(lstatSync(join(root, 'sys', 'class', 'infiniband_verbs', 'uverbs7')).isSymbolicLink(), 'not even the bait was removed');
    assert.equal(existsSync(join(root, 'dev')), false, 'nothing created in it');
  });

  test('a root that is a symlink, or that others can write, or that lies under a directory others can write, is refused', () => {
    const real = join(base, 'real');
    mkdirSync(real, { mode: 0o755 });
    const link = join(base, 'link');
    symlinkSync(real, link);
    assert.match(daemonRun(link).stderr, /refusing root .*link: it is a symbolic link/);
    const open = join(base, 'open');
    mkdirSync(open);
    chmodSync(open, 0o777);
    assert.match(daemonRun(open).stderr, /refusing root .*open: it is writable by every user \(mode 0777\)/);
    const parent = join(base, 'malloryland');
    mkdirSync(parent);
    chownSync(parent, mallory.uid, mallory.gid);
    assert.match(daemonRun(join(parent, 'root')).stderr, new RegExp(`lies under ${parent}, owned by uid ${mallory.uid}`));
  });

  test('inside its own root: a planted symlink and a ../ name in the discovery tree delete nothing outside', async () => {
    const root = join(base, 'own');
    mkdirSync(root, { mode: 0o755 });
    const victim = join(base, 'victim2');
    mkdirSync(join(victim, 'sub'), { recursive: true });
    writeFileSync(join(victim, 'sub', 'precious'), 'keep me');
    const cls = join(root, 'sys', 'class', 'infiniband_verbs');
    mkdirSync(cls, { recursive: true });
    symlinkSync(victim, join(cls, 'uverbs5'));
    mkdirSync(join(cls, 'uverbs6'));
    writeFileSync(join(cls, 'uverbs6', 'ibdev'), '../../../../victim2/sub\n');
    writeFileSync(join(cls, 'uverbs6', 'softverbsd_pid'), '999999999\n');
    const d = await startDaemon(['--device', `rxe0=${A1}`], { root, keepRoot: true });
    try {
      assert.equal(readFileSync(join(victim, 'sub', 'precious'), 'utf8'), 'keep me');
      assert.equal(existsSync(join(cls, 'uverbs5')), false, 'the planted link itself is gone');
      assert.equal(existsSync(join(cls, 'uverbs6')), false);
    } finally {
      await d.stop();
    }
  });

  test('device files are born with the rules\' mode (no chmod of a path after bind)', async () => {
    const root = join(base, 'modes');
    const rules = join(base, 'rules');
    writeFileSync(rules, 'KERNEL=="uverbs*", MODE="0600"\n');
    // the daemon's umask is 022: a socket that is 0600 got its mode at bind, from the umask set around it
    const d = await startDaemon(['--device', `rxe0=${A1}`, '--rules', rules], { root, keepRoot: true });
    try {
      assert.equal(lstatSync(join(root, 'dev', 'infiniband', 'uverbs0')).mode & 0o777, 0o600);
    } finally {
      await d.stop();
    }
  });

  test('a rules NAME that leaves dev/ is refused', () => {
    const rules = join(base, 'bad-rules');
    writeFileSync(rules, 'KERNEL=="uverbs*", NAME="../../etc/%k"\n');
    const r = spawnSync(process.execPath, [DAEMON, '--root', join(base, 'x'), '--rules', rules, '--device', `rxe0=${A1}`], { encoding: 'utf8', timeout: 5000 });
    assert.equal(r.status, 2);
    assert.match(r.stderr, /NAME "..\/..\/etc\/%k" gives "..\/..\/etc\/uverbs0", not a path inside dev\//);
  });

  test('the library does not connect through a root another user could have planted (a fake daemon collecting GET_CONTEXT)', async () => {
    // mallory's fake: a discovery tree and a listening socket in a root of hers
    const root = join(base, 'fake');
    mkdirSync(join(root, 'dev', 'infiniband'), { recursive: true });
    const cls = join(root, 'sys', 'class', 'infiniband_verbs', 'uverbs0');
    mkdirSync(cls, { recursive: true });
    mkdirSync(join(root, 'sys', 'class', 'infiniband', 'rxe0'), { recursive: true });
    writeFileSync(join(cls, 'ibdev'), 'rxe0\n');
    writeFileSync(join(cls, 'abi_version'), '6\n');
    writeFileSync(join(cls, 'softverbsd_pid'), `${process.pid}\n`);
    writeFileSync(join(cls, 'dev_path'), `${join(root, 'dev', 'infiniband', 'uverbs0')}\n`);
    writeFileSync(join(root, 'sys', 'class', 'infiniband', 'rxe0', 'node_guid'), '0000:0000:0000:0000\n');
    let got = 0;
    const fake = createServer((s) => s.on('data', () => got++));
    await new Promise<void>((r) => fake.listen(join(root, 'dev', 'infiniband', 'uverbs0'), r));
    spawnSync('chown', ['-R', `${mallory.uid}:${mallory.gid}`, root]);
    try {
      // root itself (a victim that trusts only root and itself) refuses it
      assert.throws(() => getDeviceList(root), { code: 'EACCES', message: new RegExp(`not trusting ${root}: it is owned by uid ${mallory.uid}, not by uid 0 \\(if uid ${mallory.uid} runs softverbsd, set SOFTVERBS_ROOT_OWNER=${mallory.uid}\\)$`) });
      await assert.rejects(openDevice({ name: 'rxe0', devName: 'uverbs0', devPath: join(root, 'dev', 'infiniband', 'uverbs0'), nodeGuid: '', root, daemonPid: process.pid }, root), { code: 'EACCES' });
      // and a tool says so in one line
      const r = await runProcess(process.execPath, [join(DIST, 'src', 'bin', 'ibv_devinfo.js')], { ...process.env, SOFTVERBS_ROOT: root });
      assert.equal(r.code, 1);
      assert.match(r.out, /^ibv_devinfo: ibv_get_device_list: EACCES: not trusting .*: it is owned by uid \d+/);
      assert.equal(got, 0, 'the fake daemon heard nothing');
    } finally {
      fake.close();
    }
  });
});

/**
 * Which root an unprivileged user's tools look in when no SOFTVERBS_ROOT is set, and what they say when it
 * serves nothing. /run/softverbs is the machine's: each case runs in a mount namespace of its own with a
 * private tmpfs on /run, so a real softverbsd's root neither helps nor hinders and none is made or touched.
 */
const mountNs = IS_ROOT && spawnSync('unshare', ['--mount', '--propagation', 'private', 'true']).status === 0;
describe('an unprivileged user\'s default root', { skip: mountNs ? false : 'needs root and unshare --mount' }, () => {
  const base = mkdtempSync(join(tmpdir(), 'sv-sec-defroot-'));
  let alice: ReturnType<typeof testUser>;
  let mallory: ReturnType<typeof testUser>;
  // alice's own root: under a runtime directory she does not have (never created)
  const runtime = join(base, 'alice-runtime');
  const own = join(runtime, 'softverbs');
  const holders: ChildProcess[] = [];
  before(() => {
    chmodSync(base, 0o755);
    alice = testUser('svtest-alice');
    mallory = testUser('svtest-mallory');
  });
  after(() => {
    for (const h of holders) h.kill('SIGKILL');
    rmSync(base, { recursive: true, force: true });
  });

  /** A mount namespace with an empty tmpfs on /run, held open by a process in it; the prefix that enters it. */
  async function namespace(): Promise<string[]> {
    const h = spawn('unshare', ['--mount', '--propagation', 'private', '--', 'sh', '-c', 'mount -t tmpfs -o mode=0755 tmpfs /run && echo ready && exec sleep 600'], { stdio: ['ignore', 'pipe', 'inherit'] });
    holders.push(h);
    await new Promise<void>((resolve, reject) => {
      h.stdout!.once('data', () => resolve());
      h.once('exit', (c) => reject(new Error(`unshare exited (${c})`)));
    });
    return ['nsenter', `--mount=/proc/${h.pid}/ns/mnt`, '--'];
  }

  /** A tool (or node script) as alice inside `ns`, her environment without SOFTVERBS_ROOT: stdout, stderr and status apart. */
  const asAlice = (ns: string[], args: string[], extra: NodeJS.ProcessEnv = {}) => {
    const env: NodeJS.ProcessEnv = { PATH: process.env.PATH, XDG_RUNTIME_DIR: runtime, ...extra };
    const cmd = [...ns, ...alice.as, process.execPath, ...args];
    return spawnSync(cmd[0]!, cmd.slice(1), { encoding: 'utf8', env, timeout: 20_000 });
  };
  const bin = (t: string) => join(DIST, 'src', 'bin', `${t}.js`);
  const cmScript = ['--input-type=module', '-e', `import { EventChannel } from ${JSON.stringify(join(DIST, 'src', 'verbs', 'index.js'))};
    try { await EventChannel.create(); console.log('opened'); } catch (e) { console.log(e.code + ' ' + e.message); }`];

  test('her own root missing, a root daemon\'s /run/softverbs trusted: her tools use the root daemon\'s devices', async () => {
    const ns = await namespace();
    const d = await startDaemon(['--device', `rxe0=${A1}`], { root: '/run/softverbs', keepRoot: true, wrapper: ns });
    try {
      const dv = asAlice(ns, [bin('ibv_devices')]);
      assert.equal(dv.status, 0, dv.stderr);
      assert.match(dv.stdout, /^ {4}device {10}\t {3}node GUID\n {4}------ {10}\t----------------\n {4}rxe0 {12}\t[0-9a-f]{16}\n$/);
      assert.equal(dv.stderr, '');
      const di = asAlice(ns, [bin('ibv_devinfo'), '-d', 'rxe0']);
      assert.equal(di.status, 0, di.stderr);
      assert.match(di.stdout, /^hca_id:\trxe0\n/);
      assert.equal(asAlice(ns, cmScript).stdout, 'opened\n', 'the RDMA CM file too');
      assert.equal(existsSync(own), false, 'nothing of hers was made');
      // once she has a root of her own (a daemon of hers ran and stopped), it is hers that is looked in: the
      // tools say where the root daemon's devices are
      mkdirSync(own, { recursive: true, mode: 0o700 });
      spawnSync('chown', ['-R', `${alice.uid}:${alice.gid}`, runtime]);
      try {
        const stale = asAlice(ns, [bin('ibv_devinfo')]);
        assert.equal(stale.status, 255);
        assert.equal(stale.stderr, `ibv_devinfo: no softverbsd has run under ${own} (start one with \`softverbsd\`, or set SOFTVERBS_ROOT to the root it uses); the softverbsd running as root serves rxe0 from /run/softverbs: set SOFTVERBS_ROOT=/run/softverbs\nNo IB devices found\n`);
        assert.equal(asAlice(ns, [bin('ibv_devinfo'), '-l'], { SOFTVERBS_ROOT: '/run/softverbs' }).stdout, '1 HCA found:\n\trxe0\n\n');
      } finally {
        rmSync(runtime, { recursive: true, force: true });
      }
    } finally {
      await d.stop();
    }
  });

  test('neither her root nor /run/softverbs exists: ENOENT, and the tools say so beside rdma-core\'s "No IB devices found"', async () => {
    const ns = await namespace();
    const why = `no softverbsd serves this user's root ${own} (it does not exist), nor /run/softverbs, the root of a softverbsd running as root, which does not exist either: start softverbsd (as root it serves every user from /run/softverbs), or set SOFTVERBS_ROOT to the root of the one that runs`;
    const di = asAlice(ns, [bin('ibv_devinfo')]);
    assert.equal(di.status, 255);
    assert.equal(di.stderr, `ibv_devinfo: ${why}\nNo IB devices found\n`);
    const dv = asAlice(ns, [bin('ibv_devices')]);
    assert.equal(dv.status, 0);
    assert.equal(dv.stdout, `    device          \t   node GUID\n    ------          \t----------------\n`);
    assert.equal(dv.stderr, `ibv_devices: ${why}\n`);
    assert.equal(asAlice(ns, cmScript).stdout, `ENOENT rdma_create_event_channel: ENOENT: ${why}\n`);
  });

  test('/run/softverbs not trusted (another user\'s): not used, and the tools say why; named in SOFTVERBS_ROOT, EACCES with the uid to trust', async () => {
    const ns = await namespace();
    const mk = spawnSync(ns[0]!, [...ns.slice(1), 'sh', '-c', `mkdir -m 0755 /run/softverbs && chown ${mallory.uid}:${mallory.gid} /run/softverbs`]);
    assert.equal(mk.status, 0, String(mk.stderr));
    const di = asAlice(ns, [bin('ibv_devinfo')]);
    assert.equal(di.status, 255);
    assert.equal(di.stderr, `ibv_devinfo: no softverbsd serves this user's root ${own} (it does not exist), nor /run/softverbs, the root of a softverbsd running as root, which is not trusted: it is owned by uid ${mallory.uid}, not by uid 0 or uid ${alice.uid}: start softverbsd (as root it serves every user from /run/softverbs), or set SOFTVERBS_ROOT to the root of the one that runs\nNo IB devices found\n`);
    const named = asAlice(ns, [bin('ibv_devinfo')], { SOFTVERBS_ROOT: '/run/softverbs' });
    assert.equal(named.stderr, `ibv_devinfo: not trusting /run/softverbs: it is owned by uid ${mallory.uid}, not by uid 0 or uid ${alice.uid} (if uid ${mallory.uid} runs softverbsd, set SOFTVERBS_ROOT_OWNER=${mallory.uid})\nNo IB devices found\n`);
    assert.match(asAlice(ns, cmScript, { SOFTVERBS_ROOT: '/run/softverbs' }).stdout, /^EACCES rdma_create_event_channel: EACCES: not trusting \/run\/softverbs: it is owned by uid \d+/);
  });

  test('a root the daemon keeps to its own users (mode 0700) is EACCES, saying so; a missing SOFTVERBS_ROOT is ENOENT', async () => {
    const ns = await namespace();
    const d = await startDaemon(['--device', `rxe0=${A1}`, '--root-mode', '0700'], { root: '/run/softverbs', keepRoot: true, wrapper: ns });
    try {
      const di = asAlice(ns, [bin('ibv_devinfo')], { SOFTVERBS_ROOT: '/run/softverbs' });
      assert.equal(di.stderr, `ibv_devinfo: /run/softverbs is not open to uid ${alice.uid} (mode 0700, owner uid 0): the softverbsd serving it serves its own users only (softverbsd --root-mode 0755 serves every user)\nNo IB devices found\n`);
    } finally {
      await d.stop();
    }
    const gone = join(base, 'no-such-root');
    await assert.rejects(EventChannel.create(gone), { code: 'ENOENT', message: `rdma_create_event_channel: ENOENT: no softverbsd serves ${gone} (it does not exist)` });
  });
});
