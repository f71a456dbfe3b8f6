/**
 * Unmodified C programs on softverbsd through the preload library: rdma-core's
 * own ibv_devices and ibv_devinfo (Debian's rdma-core 44, /usr/bin) started
 * with `softverbs exec` as an unprivileged user against a root daemon, each
 * output the same as our tool's; a probe program (fixtures/preload-probe.c)
 * for what a device file answers and for everything the library must leave
 * alone.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { PRELOAD_PATH, preloadProblem } from '../../src/tools/exec.js';
import { A1, DIST, IS_ROOT, runProcess, testUser, type RunningDaemon } from '../helpers.js';
import { preloadDaemon } from './exec-harness.js';

const C_TOOLS = '/usr/bin';
const hasCc = !spawnSync('cc', ['--version']).error;
const skip = !IS_ROOT ? 'needs root (a root daemon, an unprivileged user)'
  : !existsSync(join(C_TOOLS, 'ibv_devinfo')) ? `${C_TOOLS}/ibv_devinfo is not installed (apt-get install ibverbs-utils ibverbs-providers)`
    : !hasCc ? 'no C compiler (cc) to build the preload library' : false;

describe('rdma-core\'s tools through softverbs exec', { skip }, () => {
  let d: RunningDaemon;
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-exec-'));
  const probe = join(tmp, 'preload-probe');
  const alice = IS_ROOT ? testUser('svtest-alice') : null;
  /** a command as alice, with the daemon's root in SOFTVERBS_ROOT as a user sets it */
  const as = (cmd: string[], ms?: number) => {
    const argv = [...alice!.as, ...cmd];
    return runProcess(argv[0]!, argv.slice(1), { ...process.env, SOFTVERBS_ROOT: d.root }, ms);
  };
  const softverbs = (...args: string[]) => [process.execPath, join(DIST, 'src', 'bin', 'softverbs.js'), ...args];
  /** an rdma-core program through `softverbs exec` */
  const c = (tool: string, ...args: string[]) => as(softverbs('exec', '--', join(C_TOOLS, tool), ...args));
  const ours = (tool: string, ...args: string[]) => as([process.execPath, join(DIST, 'src', 'bin', `${tool}.js`), ...args]);

  before(async () => {
    writeFileSync(join(tmp, 'file.txt'), 'an ordinary file\n');
    d = await preloadDaemon(tmp, { src: 'preload-probe.c', out: probe, flags: ['-O1', '-Wall'] });
  });
  after(async () => {
    await d?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('ibv_devices lists both devices with their node GUIDs, as ours does', async () => {
    const r = await c('ibv_devices');
    assert.equal(r.code, 0, r.out);
    const guid = (dev: string) => readFileSync(join(d.root, 'sys', 'class', 'infiniband', dev, 'node_guid'), 'utf8').trim().replace(/:/g, '');
    assert.equal(r.out, `    device          \t   node GUID\n    ------          \t----------------\n    rxe0            \t${guid('rxe0')}\n    rxe1            \t${guid('rxe1')}\n`);
    assert.equal(r.out, (await ours('ibv_devices')).out);
  });

  test('ibv_devinfo -v -d rxe0 is ours line for line; the daemon served an rxe-ABI context and released it', async () => {
    const r = await c('ibv_devinfo', '-v', '-d', 'rxe0');
    assert.equal(r.code, 0, r.out);
    // ours adds softverbs_wire when the wire is not the exact (raw) one: not rdma-core's, and the only line that may differ
    const o = (await ours('ibv_devinfo', '-v', '-d', 'rxe0')).out.split('\n').filter((l) => !l.startsWith('\tsoftverbs_wire:'));
    assert.deepEqual(r.out.split('\n'), o);
    // what only a working context gives: the device's attributes and its GID from the tree
    assert.match(r.out, /^\tfw_ver:\t\t\t\t0\.0\.0\n/m);
    // rxe >= 6.2's ATOMIC_WRITE (bit 40), a flag rdma-core 44 has no name for
    assert.match(r.out, /^\tdevice_cap_flags_ex:\t\t0x10001221C76\n\t\t\t\t\tUnknown flags: 0x10000000000\n/m);
    assert.ok(r.out.includes(`\t\t\tGID[  0]:\t\t::ffff:${A1}, RoCE v2\n`), r.out);
    // the close reaches the daemon after the program has exited: waited for, not raced
    const served = /rxe0: pid (\d+) \(ibv_devinfo, uid \d+\) opened the device \(rxe provider ABI, through the preload library\)\n(.*\n)*softverbsd: rxe0: pid \1 \(ibv_devinfo, uid \d+\) closed the device\n/;
    for (const end = Date.now() + 5000; !served.test(d.stderr()) && Date.now() < end;) await new Promise((res) => setTimeout(res, 50));
    assert.match(d.stderr(), served);
  });

  test('ibv_devinfo for every device, -d rxe1 -i 1, and -l are ours line for line', async () => {
    for (const args of [[], ['-d', 'rxe1', '-i', '1'], ['-l']]) {
      const r = await c('ibv_devinfo', ...args);
      assert.equal(r.code, 0, r.out);
      assert.equal(r.out, (await ours('ibv_devinfo', ...args)).out, `ibv_devinfo ${args.join(' ')}`);
    }
  });

  test('a device file answers as the kernel\'s uverbs file: a char device, ENOTTY, EINVAL, a real async fd, extended commands checked', async () => {
    const r = await as(softverbs('exec', '--root', d.root, '--', probe, 'dev', '/dev/infiniband/uverbs0'), 10_000);
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out, `open: ok
open nosuch: ENOENT
fstat: chr 231:192
stat: chr 231:192
ioctl RDMA_VERBS_IOCTL: ENOTTY
read: EINVAL
write 4 bytes: EINVAL
write short of in_words: EINVAL
QUERY_DEVICE before GET_CONTEXT: EINVAL
GET_CONTEXT: ok
async_fd: ok cloexec 1, a socket
num_comp_vectors: 1
GET_CONTEXT again: EINVAL
QUERY_DEVICE: ok
EX_QUERY_DEVICE: ok base same, response_length 304, device_cap_flags_ex = device_cap_flags + ATOMIC_WRITE
EX_QUERY_DEVICE comp_mask 1: EINVAL
EX_QUERY_DEVICE out_words 2: ENOSPC
EX_QUERY_DEVICE in_words off: EINVAL
EX_QUERY_DEVICE cmd_hdr_reserved: EINVAL
EX_QUERY_DEVICE no response: ok
extended 99: EOPNOTSUPP
EX_CREATE_CQ: ok cqe 15, comp_mask 0, response_length 16, mminfo size 4096
EX_CREATE_CQ comp_mask 1: EINVAL
EX_CREATE_CQ reserved: EINVAL
EX_CREATE_CQ flags IGNORE_OVERRUN: EOPNOTSUPP
EX_CREATE_CQ comp_vector 1: EINVAL
EX_CREATE_CQ cqe 0: EINVAL
EX_CREATE_CQ no room for the mminfo: EINVAL
EX_CREATE_CQ out_words 1: ENOSPC
ALLOC_PD: ok
EX_CREATE_QP comp_mask 2: EINVAL
EX_CREATE_QP IND_TABLE: EINVAL
EX_CREATE_QP qp_type 7: EINVAL
EX_CREATE_QP create_flags 0x1: EINVAL
EX_CREATE_QP SOURCE_QPN: EPERM
EX_CREATE_QP BLOCK_MULTICAST_LOOPBACK: EOPNOTSUPP
EX_CREATE_QP bad PD: EINVAL
EX_CREATE_QP no room for the mminfos: EINVAL
EX_CREATE_QP: ok qpn set, max_send_wr 7, comp_mask 0, response_length 40, sq mminfo size 4096
EX_MODIFY_QP RATE_LIMIT: EOPNOTSUPP
EX_MODIFY_QP attr_mask bit 26: EOPNOTSUPP
EX_MODIFY_QP attr_mask bit 21: EOPNOTSUPP
MODIFY_QP RATE_LIMIT: EOPNOTSUPP
EX_MODIFY_QP to INIT: ok comp_mask 0, response_length 8
DESTROY_QP: ok
DESTROY_CQ: ok
doorbell, no QP: EINVAL
close: ok
write after close: EBADF
`);
  });

  test('everything else is left alone: files, /sys, /dev/null, pipes, netlink; coreutils\' stat sees the device files as char devices', async () => {
    const r = await as(softverbs('exec', '--', probe, 'files', join(tmp, 'file.txt')));
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out, `file: an ordinary file

fstat file: reg 0:0
sys: 772
stat /dev/null: chr 1:3
pipe write: 1
pipe FIONREAD: ok 1
netlink route: ok
netlink rdma: EPROTONOSUPPORT
`);
    const s = await as(softverbs('exec', '--', 'stat', '-c', '%n %F %t:%T', '/dev/infiniband/uverbs0', '/dev/infiniband/uverbs1', '/dev/null'));
    assert.equal(s.out, '/dev/infiniband/uverbs0 character special file e7:c0\n/dev/infiniband/uverbs1 character special file e7:c1\n/dev/null character special file 1:3\n');
    // the environment the program runs in; a LD_PRELOAD of the user's is kept, after ours
    const e = await runProcess(alice!.as[0]!, [...alice!.as.slice(1), ...softverbs('exec', '--', 'sh', '-c', 'echo "$LD_PRELOAD|$SYSFS_PATH|$SOFTVERBS_ROOT"')], { ...process.env, SOFTVERBS_ROOT: d.root, LD_PRELOAD: 'libc.so.6' });
    assert.equal(e.out, `${PRELOAD_PATH}:libc.so.6|${d.root}/sys|${d.root}\n`);
  });

  test('exit codes as env(1) has them; a clear error for a missing root, program or library; preload-path', async () => {
    const run = (...args: string[]) => runProcess(process.execPath, [join(DIST, 'src', 'bin', 'softverbs.js'), ...args], { ...process.env, SOFTVERBS_ROOT: d.root });
    assert.equal((await run('exec', '--', 'sh', '-c', 'exit 7')).code, 7);
    // softverbs exec becomes the program (execve): a signal that kills the program is what its caller sees,
    // and the program's pid is the one the caller started (nothing outlives a SIGKILL of it)
    const killed = await run('exec', '--', 'sh', '-c', 'kill -TERM $$');
    assert.deepEqual([killed.code, killed.signal], [null, 'SIGTERM']);
    const self = spawnSync(process.execPath, [join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--', 'sh', '-c', 'echo $$; exec grep -E "^Sig(Blk|Ign)" /proc/self/status'], { encoding: 'utf8', env: { ...process.env, SOFTVERBS_ROOT: d.root } });
    // and it starts as a program started by a shell would: no signal blocked or ignored (Node ignores SIGPIPE)
    assert.equal(self.stdout, `${self.pid}\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n`);
    const missing = await run('exec', '--', join(tmp, 'nosuch'));
    assert.deepEqual([missing.code, missing.out], [127, `softverbs exec: ${join(tmp, 'nosuch')}: No such file or directory\n`]);
    const none = await run('exec');
    assert.equal(none.code, 125);
    assert.match(none.out, /^softverbs exec: no PROGRAM to run\nUsage: softverbs exec/);
    const bad = await run('exec', '--bogus', 'true');
    assert.equal(bad.code, 125);
    assert.match(bad.out, /^softverbs exec: unrecognized option '--bogus'\n/);
    const noRoot = await run('exec', '--root', join(tmp, 'noroot'), '--', 'true');
    assert.deepEqual([noRoot.code, noRoot.out], [125, `softverbs exec: no softverbsd serves ${join(tmp, 'noroot')} (it does not exist)\n`]);
    const p = await run('preload-path');
    assert.deepEqual([p.code, p.out], [0, `${PRELOAD_PATH}\n`]);
    // a library that is not there, or not for this machine, is a sentence saying how to build it
    assert.match(preloadProblem(join(tmp, 'none.so'))!, /^the preload library .*none\.so is missing .*: build it with: node \S+\/native\/build\.mjs \(needs a C compiler/);
    const other = Buffer.from(readFileSync(PRELOAD_PATH).subarray(0, 64));
    other.writeUInt16LE(other.readUInt16LE(18) === 62 ? 183 : 62, 18);
    writeFileSync(join(tmp, 'other.so'), other);
    assert.match(preloadProblem(join(tmp, 'other.so'))!, /is not built for this machine \((x64|arm64)\): build it with/);
  });
});
