/**
 * A hostile local user against the root directory (a shared /tmp is hostile
 * ground): a root planted by another user, a symlinked root,
 * symlinks and ../ names inside the tree, and a fake daemon for the library.
 * The daemon runs as root; mallory is an unprivileged user of the tests' own.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { A1, DAEMON, DIST, IS_ROOT, runProcess, startDaemon, testUser } from '../helpers.js';
import { getDeviceList, openDevice } from '../../src/verbs/index.js';

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
    assert.match(r.stderr, new RegExp(`refusing root ${root} is owned by uid ${mallory.uid}, not by uid 0`));
    assert.equal(readFileSync(join(victim, 'precious'), 'utf8'), 'keep me');
    assert.ok(lstatSync(join(root, 'sys', 'class', 'infiniband_verbs', 'uverbs7')).isSymbolicLink(), 'not even the bait was removed');
    assert.equal(existsSync(join(root, 'dev')), false, 'nothing created in it');
  });

  test('a root that is a symlink, or that others can write, or that lies under a directory others can write, is refused', () => {
    const real = join(base, 'real');
    mkdirSync(real, { mode: 0o755 });
    const link = join(base, 'link');
    symlinkSync(real, link);
    assert.match(daemonRun(link).stderr, /refusing root .*link is a symbolic link/);
    const open = join(base, 'open');
    mkdirSync(open);
    chmodSync(open, 0o777);
    assert.match(daemonRun(open).stderr, /refusing root .*open is writable by every user \(mode 0777\)/);
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
      assert.throws(() => getDeviceList(root), { code: 'EACCES', message: new RegExp(`not trusting ${root} is owned by uid ${mallory.uid}`) });
      await assert.rejects(openDevice({ name: 'rxe0', devName: 'uverbs0', devPath: join(root, 'dev', 'infiniband', 'uverbs0'), nodeGuid: '', root, daemonPid: process.pid }, root), { code: 'EACCES' });
      // and a tool says so in one line
      const r = await runProcess(process.execPath, [join(DIST, 'src', 'bin', 'ibv_devinfo.js')], { ...process.env, SOFTVERBS_ROOT: root });
      assert.equal(r.code, 1);
      assert.match(r.out, /^ibv_devinfo: ibv_get_device_list: EACCES: not trusting .* is owned by uid \d+/);
      assert.equal(got, 0, 'the fake daemon heard nothing');
    } finally {
      fake.close();
    }
  });
});
