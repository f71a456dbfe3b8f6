/**
 * What rdma-core's test suite asks of softverbs exec beyond the verbs, each as the kernel answers, through a
 * probe program (fixtures/pyverbs-probe.c) run as svtest-alice against a root daemon: a dup() of a device file
 * is the char device and ibv_import_device() of it fails EOPNOTSUPP as with librxe on Linux; /sys/class/infiniband
 * named whole is the daemon's tree, where each device lists its interface in device/net; rdma_set_option's
 * answers (the ACK timeout's effect on the QP: pyverbs.spec.ts's rdmacm traffic tests).
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DIST, type RunningDaemon } from '../helpers.js';
import { execSkip, launchers, preloadDaemon, start } from './exec-harness.js';

const skip = execSkip(['ibv_devinfo']) || (!existsSync('/usr/lib/x86_64-linux-gnu/librdmacm.so.1') && !existsSync('/lib/x86_64-linux-gnu/librdmacm.so.1') ? 'librdmacm1 is not installed' : false);

describe('what pyverbs\' tests need of softverbs exec', { skip }, () => {
  let d: RunningDaemon;
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-pyverbs-probe-'));
  const probe = join(tmp, 'pyverbs-probe');
  const { env, alice } = launchers(() => d.root);
  const run = async (...args: string[]) => {
    const r = await start([...alice.as, process.execPath, join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--', probe, ...args], env(), 15_000).done;
    assert.equal(r.code, 0, r.out);
    return r.out;
  };

  before(async () => {
    d = await preloadDaemon(tmp, { src: 'pyverbs-probe.c', out: probe, flags: ['-O1', '-Wall', '-libverbs', '-l:librdmacm.so.1'] });
  });
  after(async () => {
    await d?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('a dup() of a device file is the char device; ibv_import_device() of it is EOPNOTSUPP, as librxe on Linux', async () => {
    assert.equal(await run('import'), `fstat dup: chr, same device number yes
statx dup: chr, same device number yes
fstat async_fd: not chr
ibv_import_device: EOPNOTSUPP
fstat pipe: fifo
`);
  });

  test('each device lists its interface in device/net (lo for a 127/8 address), as a NIC\'s function does', () => {
    for (const dev of ['rxe0', 'rxe1']) assert.deepEqual(readdirSync(join(d.root, 'sys', 'class', 'infiniband', dev, 'device', 'net')), ['lo']);
  });

  test('/sys/class/infiniband named whole is the daemon\'s tree: stat, opendir, fopen, open, access', async () => {
    assert.equal(await run('sys', 'rxe1'), `stat net: ok
opendir net: ok lo
fopen node_guid: the daemon's
open node_guid: the daemon's
access: ok
stat /sys/class/infiniband_verbs/abi_version: ok
stat /sys/class/infinibandx: ENOENT
`);
  });

  test('rdma_set_option answers as the kernel\'s ucma: sizes, RC-only ACK timeout, EFAULT, ENOSYS', async () => {
    assert.equal(await run('option'), `ACK_TIMEOUT: ok
ACK_TIMEOUT 4 bytes: EINVAL
ACK_TIMEOUT on UDP: EINVAL
ACK_TIMEOUT bad pointer: EFAULT
TOS: ok
REUSEADDR: ok
AFONLY 1 byte: EINVAL
optname 9: ENOSYS
level 7: ENOSYS
IB_PATH: EOPNOTSUPP
`);
  });
});
