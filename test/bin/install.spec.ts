/**
 * The package as a user gets it: `npm pack` of the checkout, installed into
 * a prefix of its own, its bin/ first on PATH; softverbsd started from PATH
 * as root, the tools from PATH as an unprivileged user, each output checked.
 * Then every other way npm and users launch a bin, and the daemon under npx.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pidAlive } from '../../src/common/proc.js';
import { verbsClassDir } from '../../src/common/paths.js';
import { DIST, freePort, IS_ROOT, loopbackAddrs, runProcess, testUser, type Run } from '../helpers.js';

const REPO = join(DIST, '..');
const PKG = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string; bin: Record<string, string> };

/** Resolves once `stream` has printed a line matching re (rejects when the process exits first). */
function waitOutput(p: ChildProcess, re: RegExp, ms = 20_000): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error(`no ${re} in ${ms} ms:\n${out}`)), ms);
    const on = (d: Buffer) => {
      out += d;
      if (re.test(out)) {
        clearTimeout(t);
        resolve(out);
      }
    };
    p.stdout?.on('data', on);
    p.stderr?.on('data', on);
    p.once('exit', (c) => {
      clearTimeout(t);
      reject(new Error(`exited (${c}) before ${re}:\n${out}`));
    });
  });
}

async function until<T>(f: () => T | undefined | null | false | Promise<T | undefined | null | false>, what: string, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('installed from the tarball, run from PATH', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-install-'));
  chmodSync(tmp, 0o755); // the unprivileged user runs the installed bins from here
  const prefix = join(tmp, 'prefix');
  const root = join(tmp, 'root');
  const [a1, a2] = loopbackAddrs(2) as [string, string];
  const user = IS_ROOT ? testUser('svtest-install') : null;
  const asUser = user?.as ?? [];
  const env = { ...process.env, PATH: `${join(prefix, 'bin')}:${process.env.PATH}`, SOFTVERBS_ROOT: root, HOME: tmp };
  let pack: { files: Array<{ path: string }>; size: number; unpackedSize: number; filename: string };
  let packErr = '';
  let installErr = '';
  let daemon: ChildProcess;
  let daemonLog = '';
  /** A tool from PATH, as the unprivileged user (as ourselves without root). */
  const tool = (name: string, args: string[], ms = 30_000): Promise<Run> => {
    const cmd = [...asUser, name, ...args];
    return runProcess(cmd[0]!, cmd.slice(1), env, ms);
  };

  before(async () => {
    // what a user does: pack the checkout, install the tarball globally (into a prefix of our own)
    const p = spawnSync('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: REPO, encoding: 'utf8', timeout: 180_000 });
    assert.equal(p.status, 0, p.stderr);
    packErr = p.stderr;
    pack = (JSON.parse(p.stdout.slice(p.stdout.indexOf('['))) as Array<typeof pack>)[0]!;
    const i = spawnSync('npm', ['install', '-g', '--prefix', prefix, '--no-audit', '--no-fund', '--prefer-offline', join(tmp, pack.filename)], { encoding: 'utf8', timeout: 180_000 });
    assert.equal(i.status, 0, i.stderr);
    installErr = i.stderr;
    mkdirSync(root, { mode: 0o755 });
    daemon = spawn('softverbsd', ['--root', root, '--device', `rxe0=${a1}`, '--device', `rxe1=${a2}`], { env, stdio: ['ignore', 'ignore', 'pipe'] });
    daemon.stderr!.on('data', (d) => (daemonLog += d));
    await waitOutput(daemon, /softverbsd: ready/);
  });

  after(async () => {
    if (daemon && daemon.exitCode === null) {
      const gone = new Promise((r) => daemon.once('exit', r));
      daemon.kill('SIGTERM');
      await gone;
    }
    rmSync(tmp, { recursive: true, force: true });
  });

  test('the tarball holds only what a user needs: the compiled library and tools, the preload library with its source and build script, README, LICENSE, the service unit, the README\'s example', (t) => {
    const files = pack.files.map((f) => f.path).sort();
    for (const f of files) assert.match(f, /^(LICENSE|README\.md|package\.json|contrib\/softverbsd\.service|dist\/src\/[a-z]+(\/[a-z]+)?\/[\w.-]+\.(js|d\.ts)|examples\/[\w-]+\.ts|dist\/examples\/[\w-]+\.js|native\/build\.mjs|native\/preload\/preload\.c|dist\/native\/libsoftverbs-preload\.so)$/, `${f} does not belong in the package`);
    for (const f of ['LICENSE', 'README.md', 'package.json', 'contrib/softverbsd.service', 'dist/src/verbs/index.js', 'dist/src/verbs/index.d.ts', 'examples/rc-write.ts', 'dist/examples/rc-write.js', 'native/build.mjs', 'native/preload/preload.c']) assert.ok(files.includes(f), `${f} missing`);
    for (const bin of Object.values(PKG.bin)) assert.ok(files.includes(bin), `bin ${bin} missing`);
    assert.ok(!files.some((f) => /(^|\/)(test|bench|\.ci)\/|\.map$|cpuprofile/.test(f)));
    assert.match(readFileSync(join(REPO, 'LICENSE'), 'utf8'), /^MIT License/);
    // the published manifest has no prepare script: the tarball is built, and a prepare would run tsc without sources
    const manifest = JSON.parse(readFileSync(join(prefix, 'lib', 'node_modules', 'softverbs', 'package.json'), 'utf8')) as { scripts?: Record<string, string> };
    assert.equal(manifest.scripts?.prepare, undefined);
    t.diagnostic(`tarball: ${files.length} files, ${pack.size} bytes packed, ${pack.unpackedSize} unpacked`);
  });

  test('npm pack and npm install -g print no warning the package can avoid (koffi\'s unneeded install script is npm\'s notice)', () => {
    assert.doesNotMatch(packErr, /warn/i, packErr);
    const warnings = installErr.split('\n').filter((l) => /warn/i.test(l));
    // npm 11 lists dependencies whose install scripts it skipped; koffi ships prebuilt binaries and needs none,
    // and a global install has no package.json of ours to approve or deny it in
    for (const w of warnings) assert.match(w, /install-scripts( +koffi@|.*allow-scripts=koffi| *$| \d+ package has install scripts)/, `unexpected: ${w}`);
  });

  test('the installed package\'s types: a strict TypeScript program importing \'softverbs\' compiles against them, and a wrong enum value does not', () => {
    const app = join(prefix, 'lib', 'app');
    mkdirSync(app, { recursive: true });
    writeFileSync(join(app, 'package.json'), '{"type":"module"}');
    const program = (mtu: string) => `import { openDevice, getDeviceList, Access, QpType, QpState, QpAttrMask as A, VerbsError, type QpAttr } from 'softverbs';
await using ctx = await openDevice(getDeviceList()[0]!);
await using pd = await ctx.allocPd();
await using mr = await pd.allocMr(64, Access.LOCAL_WRITE);
await using cq = await ctx.createCq(4);
await using qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: {} });
const attr: QpAttr = { qpState: QpState.RTR, pathMtu: ${mtu} };
await qp.modifyQp(attr, A.STATE | A.PATH_MTU);
for await (const wc of cq.completions()) console.log(wc.status, JSON.stringify(mr));
export const E = VerbsError;
`;
    writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({ compilerOptions: { target: 'ES2022', lib: ['ES2022', 'esnext.disposable'], module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, noEmit: true, skipLibCheck: false, types: ['node'], typeRoots: [join(REPO, 'node_modules', '@types')] }, files: ['main.ts'] }));
    const tsc = join(REPO, 'node_modules', 'typescript', 'bin', 'tsc');
    writeFileSync(join(app, 'main.ts'), program('3'));
    let r = spawnSync(process.execPath, [tsc, '-p', app], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    writeFileSync(join(app, 'main.ts'), program('4096'));
    r = spawnSync(process.execPath, [tsc, '-p', app], { encoding: 'utf8', timeout: 120_000 });
    assert.notEqual(r.status, 0);
    assert.match(r.stdout, /main\.ts\(7,.*Type '4096' is not assignable to type 'Mtu/);
  });

  test('ibv_devices and ibv_devinfo -v from PATH, as an unprivileged user', async () => {
    const dv = await tool('ibv_devices', []);
    assert.equal(dv.code, 0, dv.out);
    assert.match(dv.out, /^ {4}device {10}\t {3}node GUID\n {4}------ {10}\t----------------\n {4}rxe0 {12}\t[0-9a-f]{16}\n {4}rxe1 {12}\t[0-9a-f]{16}\n$/);
    const di = await tool('ibv_devinfo', ['-v', '-d', 'rxe1']);
    assert.equal(di.code, 0, di.out);
    assert.match(di.out, /^hca_id:\trxe1\n\ttransport:\t\t\tInfiniBand \(0\)\n/);
    assert.match(di.out, /\t\t\tstate:\t\t\tPORT_ACTIVE \(4\)\n/);
    assert.match(di.out, new RegExp(`GID\\[ {2}0\\]:\\t\\t::ffff:${a2.replace(/\./g, '\\.')}, RoCE v2`));
  });

  test('rdma-core\'s own ibv_devinfo through the installed softverbs exec, as an unprivileged user: ours line for line', { skip: existsSync('/usr/bin/ibv_devinfo') ? false : '/usr/bin/ibv_devinfo is not installed' }, async () => {
    // the tarball carries the library built at pack time (this machine has a compiler: the test needs it there)
    const path = await tool('softverbs', ['preload-path']);
    assert.equal(path.code, 0, path.out);
    assert.equal(path.out, `${join(prefix, 'lib', 'node_modules', 'softverbs', 'dist', 'native', 'libsoftverbs-preload.so')}\n`);
    const c = await tool('softverbs', ['exec', '--', '/usr/bin/ibv_devinfo', '-v', '-d', 'rxe1']);
    assert.equal(c.code, 0, c.out);
    const ours = await tool('ibv_devinfo', ['-v', '-d', 'rxe1']);
    assert.deepEqual(c.out.split('\n'), ours.out.split('\n').filter((l) => !l.startsWith('\tsoftverbs_wire:')));
  });

  test('the README\'s example, run from the installed package with the README\'s command, as an unprivileged user', async () => {
    const readme = readFileSync(join(REPO, 'README.md'), 'utf8');
    const cmd = /`(node "\$\(npm root -g\)\/softverbs\/dist\/examples\/rc-write\.js")`/.exec(readme)?.[1];
    assert.ok(cmd, 'the README says how to run the installed example');
    // npm root -g answers for the prefix the package was installed into, as it would for the user's own
    const sh = [...asUser, 'sh', '-c', `${cmd} rxe0 rxe1`];
    const r = await runProcess(sh[0]!, sh.slice(1), { ...env, npm_config_prefix: prefix });
    assert.equal(r.code, 0, r.out);
    assert.match(r.out, /^A: QP \d+ at \S+ connected to B: QP \d+/m);
    assert.match(r.out, /^A: write completed: SUCCESS$/m);
    assert.match(r.out, /^B: 15 bytes arrived with immediate 0x1234: "hello over RDMA"$/m);
  });

  test('ibv_rc_pingpong pair; rdma resource show while the server waits, rdma statistic show after', async () => {
    const port = await freePort();
    const serverCmd = [...asUser, 'ibv_rc_pingpong', '-d', 'rxe0', '-g', '0', '-p', String(port), '-n', '200'];
    const server = runProcess(serverCmd[0]!, serverCmd.slice(1), env);
    // the server has its PD, CQ, MR and QP before it waits for the client: rdma sees them
    const qpLine = await until(async () => {
      const r = await tool('rdma', ['resource', 'show', 'qp']);
      // the QP shows from its creation (RESET); the server moves it to INIT before it waits
      return /state INIT .*comm ibv_rc_pingpong/.test(r.out) && r.out;
    }, 'the server\'s QP in rdma resource show qp, in INIT');
    assert.match(qpLine, /^link rxe0\/1 lqpn \d+ rqpn 0 type RC state INIT rq-psn 0 sq-psn 0 path-mig-state MIGRATED pdn \d+ pid \d+ comm ibv_rc_pingpong $/m);
    const res = await tool('rdma', ['resource', 'show']);
    assert.match(res.out, /^0: rxe0: pd 1 cq 1 qp 1 cm_id 0 mr 1 ctx 1 srq 0 $/m);
    const client = await tool('ibv_rc_pingpong', ['-d', 'rxe1', '-g', '0', '-p', String(port), '-n', '200', '127.0.0.1']);
    const s = await server;
    for (const r of [s, client]) {
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /local address: {2}LID 0x0000, QPN 0x[0-9a-f]{6}, PSN 0x[0-9a-f]{6}, GID ::ffff:127\./);
      assert.match(r.out, /^1638400 bytes in [\d.]+ seconds = [\d.]+ Mbit\/sec\n200 iters in [\d.]+ seconds = [\d.]+ usec\/iter\n/m);
    }
    const st = await tool('rdma', ['statistic', 'show']);
    assert.equal(st.code, 0, st.out);
    const sent = /^link rxe0\/1 sent_pkts (\d+) rcvd_pkts (\d+) /m.exec(st.out);
    assert.ok(sent && Number(sent[1]) >= 200 && Number(sent[2]) >= 200, st.out);
  });

  test('rping pair from PATH through the RDMA CM; rdma resource show cm_id while the server listens', async () => {
    const port = String(20000 + Math.floor(Math.random() * 20000));
    const srvCmd = [...asUser, 'rping', '-s', '-a', a2, '-p', port, '-C', '5', '-v'];
    const server = runProcess(srvCmd[0]!, srvCmd.slice(1), env);
    const line = await until(async () => {
      const r = await tool('rdma', ['resource', 'show', 'cm_id']);
      return /state LISTEN .*comm rping/.test(r.out) && r.out;
    }, 'the server\'s listening cm_id in rdma resource show cm_id');
    assert.match(line, new RegExp(`^link rxe1/1 state LISTEN ps TCP pid \\d+ comm rping src-addr ${a2.replace(/\./g, '\\.')}:${port} cm-idn \\d+ $`, 'm'));
    const client = await tool('rping', ['-c', '-a', a2, '-I', a1, '-p', port, '-C', '5', '-v', '-V']);
    const s = await server;
    assert.equal(client.code, 0, client.out);
    assert.equal(s.code, 0, s.out);
    assert.equal(client.out.match(/^ping data: rdma-ping-\d+: /gm)?.length, 5, client.out);
    assert.equal(s.out.match(/^server ping data: rdma-ping-\d+: /gm)?.length, 5, s.out);
  });

  test('ib_write_bw pair from PATH (perftest\'s test block and result row)', async () => {
    const port = await freePort();
    const srvCmd = [...asUser, 'ib_write_bw', '-d', 'rxe0', '-p', String(port), '-s', '4096', '-n', '500', '-F'];
    const server = runProcess(srvCmd[0]!, srvCmd.slice(1), env);
    await new Promise((r) => setTimeout(r, 300));
    let client = await tool('ib_write_bw', ['-d', 'rxe1', '-p', String(port), '-s', '4096', '-n', '500', '-F', '127.0.0.1']);
    for (let i = 0; i < 20 && client.code !== 0 && /Couldn't connect/.test(client.out); i++) {
      await new Promise((r) => setTimeout(r, 250)); // the server may still be starting: perftest's client does not retry
      client = await tool('ib_write_bw', ['-d', 'rxe1', '-p', String(port), '-s', '4096', '-n', '500', '-F', '127.0.0.1']);
    }
    const s = await server;
    for (const r of [s, client]) {
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /RDMA_Write BW Test/);
      assert.match(r.out, /^ 4096\s+500\s+[\d.]+\s+[\d.]+\s+[\d.]+\s*$/m);
    }
  });

  test('every way of launching a bin runs its tool: a symlink to it, softverbs <tool>, node <file>, npm exec, npx --no-install in the checkout, npm link', async () => {
    const links = join(tmp, 'links');
    mkdirSync(links, { mode: 0o755 });
    symlinkSync(join(prefix, 'bin', 'ibv_devinfo'), join(links, 'my-devinfo'));
    const installed = join(prefix, 'lib', 'node_modules', 'softverbs');
    const ways: Array<[string, string[], string?]> = [
      [join(links, 'my-devinfo'), ['-l']],
      ['softverbs', ['ibv_devinfo', '-l']],
      [process.execPath, [join(installed, PKG.bin.ibv_devinfo!), '-l']],
      ['npm', ['exec', '--no', '--', 'ibv_devinfo', '-l'], REPO],
      ['npx', ['--no-install', 'ibv_devinfo', '-l'], REPO],
    ];
    for (const [cmd, args, cwd] of ways) {
      const r = spawnSync(cmd, args, { env, cwd: cwd ?? tmp, encoding: 'utf8', timeout: 120_000 });
      assert.equal(r.status, 0, `${cmd} ${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stdout, '2 HCAs found:\n\trxe0\n\trxe1\n\n', `${cmd} ${args.join(' ')}`);
    }
    // npm link: the checkout itself linked into a global prefix (bins are symlinks into the checkout)
    const linkPrefix = join(tmp, 'link-prefix');
    const l = spawnSync('npm', ['link', '--no-audit', '--no-fund'], { cwd: REPO, env: { ...env, npm_config_prefix: linkPrefix }, encoding: 'utf8', timeout: 180_000 });
    assert.equal(l.status, 0, l.stderr);
    const r = spawnSync(join(linkPrefix, 'bin', 'ibv_devices'), [], { env, encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /rxe0 .*\n.*rxe1/);
  });

  test('exit codes are the imitated tools\': a failed run is non-zero, usage errors as rdma-core and perftest return them', async () => {
    const nodev = await tool('ibv_devinfo', ['-d', 'nosuch']);
    assert.equal(nodev.code, 255);
    assert.match(nodev.out, /IB device 'nosuch' wasn't found/);
    const bad = await tool('ibv_rc_pingpong', ['--bogus']);
    assert.equal(bad.code, 1);
    const port = await freePort();
    const refused = await tool('ibv_rc_pingpong', ['-d', 'rxe1', '-g', '0', '-p', String(port), '127.0.0.1']);
    assert.equal(refused.code, 1);
    assert.match(refused.out, new RegExp(`Couldn't connect to 127.0.0.1:${port}`));
    const pt = await tool('ib_send_bw', ['-s', 'x', '-d', 'nosuch']);
    assert.notEqual(pt.code, 0);
    const ok = await tool('softverbsd', ['--version']);
    assert.equal(ok.out, `softverbsd ${PKG.version}\n`);
    assert.equal(ok.code, 0);
    const help = await tool('softverbsd', ['--help']);
    assert.equal(help.code, 0);
    assert.match(help.out, /^Usage: softverbsd \[options\]/);
    const unknown = await tool('softverbsd', ['--bogus']);
    assert.equal(unknown.code, 2);
    assert.match(unknown.out, /softverbsd: Unknown option '--bogus'/);
  });

  test('the daemon logs clients arriving and leaving', () => {
    assert.match(daemonLog, /rxe0: pid \d+ \(ibv_rc_pingpong, uid \d+\) opened the device/);
    assert.match(daemonLog, /rxe0: pid \d+ \(ibv_rc_pingpong, uid \d+\) closed the device; destroyed what it held: 1 pd, 1 mr, 1 cq, 1 qp/);
  });

  for (const sig of ['SIGTERM', 'SIGKILL'] as const) {
    test(`npx softverbsd stops with its launcher: ${sig} to npx leaves no daemon and no device file`, async () => {
      const r2 = join(tmp, `root-npx-${sig}`);
      const [a] = loopbackAddrs(1) as [string];
      const npx = spawn('npx', ['--no-install', 'softverbsd', '--root', r2, '--device', `rxe0=${a}`], { cwd: REPO, env, stdio: ['ignore', 'ignore', 'pipe'] });
      await waitOutput(npx, /softverbsd: ready/, 120_000);
      const pid = Number(readFileSync(join(verbsClassDir(r2), 'uverbs0', 'softverbsd_pid'), 'utf8'));
      assert.ok(pidAlive(pid));
      npx.kill(sig);
      await until(() => !pidAlive(pid), `softverbsd (pid ${pid}) to stop after ${sig} to npx`, 5000);
      assert.equal(existsSync(join(r2, 'dev', 'infiniband', 'uverbs0')), false, 'the device file is removed');
    });
  }
});
