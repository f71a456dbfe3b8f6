/**
 * Programs that read sysfs themselves, not through libibverbs and SYSFS_PATH (UCX, hwloc, scripts), see the
 * daemon's devices through the preload library, with what Linux rxe's sysfs shows for them; every other path is
 * the host's. A C walker (fixtures/sysfs-walk.c), coreutils and a shell as the unprivileged user svtest-alice
 * through `softverbs exec` against a root daemon; UCX (Debian's ucx-utils) finding and using rxe0 and rxe1.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DIST, IS_ROOT, runProcess, testUser, type RunningDaemon } from '../helpers.js';
import { execSkip, pair, preloadDaemon } from './exec-harness.js';

const UCX_INFO = '/usr/bin/ucx_info';
const UCX_PERFTEST = '/usr/bin/ucx_perftest';
const noUcx = !existsSync(UCX_INFO) || !existsSync(UCX_PERFTEST) ? `${UCX_INFO} or ${UCX_PERFTEST} is not installed (apt-get install ucx-utils)` : false;

/** what the walker prints for one of the daemon's devices (its addresses are on lo, so lo is its netdev) */
const device = (dev: string) => `${dev}: stat dir, lstat dir
${dev} node_type: 1: CA
${dev} node_desc: rxe
${dev} fw_ver: 
${dev} parent: readable
${dev} device: readlink EINVAL, numa_node ENOENT
ports: 1
${dev} port 1 state: 4: ACTIVE
${dev} port 1 phys_state: 5: LinkUp
${dev} port 1 rate: 2.5 Gb/sec (1X SDR)
${dev} port 1 link_layer: Ethernet
${dev} port 1 cap_mask: 0x00010000
${dev} port 1 lid: 0x0
${dev} port 1 sm_lid: 0x0
${dev} port 1 lid_mask_count: 0
${dev} port 1 sm_sl: 0
${dev} port 1 pkeys/0: 0xffff
${dev} port 1 gid_attrs/types/0: RoCE v2
${dev} gid 0 ndev: an interface
${dev} gid 7 ndev: fopen EINVAL, open EINVAL
${dev} gid 7: 0000:0000:0000:0000:0000:0000:0000:0000
${dev} realpath: itself, realpath NULL /sys/class/infiniband/${dev}, canonicalize_file_name itself
`;

describe('sysfs read directly (not through libibverbs) through softverbs exec', { skip: execSkip([]) }, () => {
  let d: RunningDaemon;
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-sysfs-'));
  const walk = join(tmp, 'sysfs-walk');
  const alice = IS_ROOT ? testUser('svtest-alice') : null;
  const exec = (...cmd: string[]) => [process.execPath, join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--root', d.root, '--', ...cmd];
  /** a program through `softverbs exec`, as alice (from a directory she may enter: UCX and the shell look at it) */
  const as = (cmd: string[], env: NodeJS.ProcessEnv = {}, ms?: number) => {
    const argv = [...alice!.as, 'sh', '-c', 'cd / && exec "$@"', 'sh', ...exec(...cmd)];
    return runProcess(argv[0]!, argv.slice(1), { ...process.env, ...env }, ms);
  };

  before(async () => {
    d = await preloadDaemon(tmp, { src: 'sysfs-walk.c', out: walk, flags: ['-O1', '-Wall'] });
  });
  after(async () => {
    await d?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('a C program walking /sys/class/infiniband with opendir, scandir, fopen, open, stat, access, readlink, realpath and chdir sees the devices as Linux rxe shows them', async () => {
    const r = await as([walk, 'classes']);
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out, `devices: rxe0 rxe1
${device('rxe0')}${device('rxe1')}infiniband_verbs: abi_version uverbs0 uverbs1
uverbs abi_version: 6
uverbs0 ibdev: rxe0, abi_version 2
rdma_cm abi_version: 4
infiniband_mad: ENOENT
/dev/infiniband/uverbs0: chr, access rw ok
faccessat rxe0: ok
chdir rxe0: ok, node_type 1: CA
`);
  });

  test('paths outside the RDMA classes are the host\'s: stat, access, readlink, open and opendir answer as the system calls do', async () => {
    const r = await as([walk, 'host']);
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out, `/sys/class/net/lo/type: as the kernel's
/sys/class/net: as the kernel's
/sys/class: as the kernel's
/sys/class/infinibandx: as the kernel's
/sys/class/infiniband/../net: as the kernel's
/sys/class/misc/rdma_cmx: as the kernel's
/sys/devices/virtual/infiniband: as the kernel's
sys/class/infiniband: as the kernel's
/dev/null: as the kernel's
/proc/self/exe: as the kernel's
net lo type: 772
realpath net lo: /sys/devices/virtual/net/lo
`);
  });

  test('a shell script and coreutils: ls (-l), a glob, cat, cd, readlink -f', async () => {
    const r = await as(['sh', '-c', [
      'ls /sys/class/infiniband',
      'cat /sys/class/infiniband/*/ports/1/link_layer',
      'cd /sys/class/infiniband_verbs/uverbs1 && cat ibdev',
      'readlink -f /sys/class/infiniband/rxe1/ports/1/../1',
      'ls -l /sys/class/infiniband/rxe0/ports/1 | grep -c " state$"',
    ].join(' && ')]);
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out, 'rxe0\nrxe1\nEthernet\nEthernet\nrxe1\n/sys/class/infiniband/rxe1/ports/1\n1\n');
  });

  test('UCX (ucx_info -d) finds both devices and opens rc_verbs and ud_verbs on each port', { skip: noUcx }, async () => {
    const r = await as([UCX_INFO, '-d'], {}, 60_000);
    assert.equal(r.code, 0, r.out);
    assert.doesNotMatch(r.out, /ERROR|failed to open interface/, r.out);
    // the verbs transports, in UCX's order: its memory domain per device, then each transport's interface on port 1
    const verbs = r.out.split('\n').filter((l) => /^# Memory domain: rxe|^#\s+Transport: \w+_verbs|^#\s+Device: rxe/.test(l)).map((l) => l.replace(/^#\s+/, ''));
    assert.deepEqual(verbs, [
      'Memory domain: rxe0', 'Transport: rc_verbs', 'Device: rxe0:1', 'Transport: ud_verbs', 'Device: rxe0:1',
      'Memory domain: rxe1', 'Transport: rc_verbs', 'Device: rxe1:1', 'Transport: ud_verbs', 'Device: rxe1:1',
    ]);
  });

  test('UCX moves data: ucx_perftest put bandwidth over rc_verbs from rxe1 to rxe0 (queues mapped through libucm\'s mmap hook)', { skip: noUcx }, async () => {
    // as root: UCX's default buffer pools register more than the 8 MB RLIMIT_MEMLOCK an unprivileged user has here.
    // UD (UCX's wire-up transport beside RC) checks each packet's destination GID where mlx5 puts it, the RoCE
    // header type in the completion's sl; rxe's completion says 0 and its IPv4 header sits in the GRH's last 20 bytes
    const env = { ...process.env, UCX_TLS: 'rc_verbs,ud_verbs', UCX_UD_VERBS_ETH_DGID_CHECK: 'n' };
    const [s, c] = await pair(
      (port) => exec(UCX_PERFTEST, '-p', port),
      (port) => exec(UCX_PERFTEST, '-p', port, '127.0.0.1', '-t', 'ucp_put_bw', '-s', '65536', '-n', '200'),
      { ...env, UCX_NET_DEVICES: 'rxe0:1' }, 60_000, { ...env, UCX_NET_DEVICES: 'rxe1:1' });
    assert.equal(c.code, 0, `client: ${c.out}\nserver: ${s.out}`);
    assert.equal(s.code, 0, s.out);
    assert.match(c.out, /^Final:\s+200\s/m, c.out);
    assert.doesNotMatch(c.out + s.out, /ERROR|Fatal/);
  });
});
