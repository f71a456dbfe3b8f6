/** softverbsd as a program: flags, config, the device files and discovery tree over its life, stale state after a crash. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { getDeviceList } from '../../src/verbs/index.js';
import { DAEMON, DIST, startDaemon , A1, A2 } from '../helpers.js';

const run = (...args: string[]) => spawnSync(process.execPath, [DAEMON, ...args], { encoding: 'utf8', timeout: 10000 });

test('--help, and bad flags exit 2 with a message saying what is wrong', () => {
  const h = run('--help');
  assert.equal(h.status, 0);
  assert.match(h.stdout, /Usage: softverbsd/);
  assert.match(run('--device', 'rxe0').stderr, /expected NAME=ADDR/);
  assert.match(run('--device', 'rxe0=not-an-ip').stderr, /is not an IP address/);
  assert.match(run('--device', `rxe0=${A1},mtu=1500`).stderr, /mtu must be 256, 512, 1024, 2048 or 4096/);
  assert.match(run('--device', `a=${A1}`, '--device', `a=${A2}`).stderr, /given twice/);
  assert.match(run('--bogus').stderr, /Unknown option/);
  assert.match(run('--device', `rxe0=${A1},wire=tcp`).stderr, /wire must be auto, raw, udp or none/);
  assert.match(run('--pcap', '/nonexistent-dir/x.pcap').stderr, /--pcap \/nonexistent-dir\/x.pcap: ENOENT/);
  assert.match(run('--fault', 'drop=2').stderr, /drop must be between 0 and 1/);
  assert.match(run('--fault', 'delayms=-1').stderr, /delayms must be between 0 and 10000/);
  assert.match(run('--fault', 'loss=0.1').stderr, /expected drop=P,dup=P,reorder=P,delay=P,delayms=MS,seed=N/);
  const dir = mkdtempSync(join(tmpdir(), 'sv-cfg-'));
  writeFileSync(join(dir, 'rules'), 'KERNEL=="uverbs*", MODE="rw"\n');
  assert.match(run('--rules', join(dir, 'rules')).stderr, /MODE "rw" is not an octal mode/);
  writeFileSync(join(dir, 'rules'), 'KERNEL=="uverbs*", SYMLINK+="x"\n');
  assert.equal(run('--rules', join(dir, 'rules')).status, 2);
  rmSync(dir, { recursive: true, force: true });
});

test('several devices from a config file; SIGTERM removes device files and the discovery tree', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'sv-cfg-'));
  writeFileSync(join(dir, 'cfg.json'), JSON.stringify({ devices: [{ name: 'rxe0', addr: A1 }, { name: 'rxe1', addr: A2, mtu: 1024 }] }));
  const d = await startDaemon(['--config', join(dir, 'cfg.json')], { keepRoot: true });
  try {
    const devs = getDeviceList(d.root);
    assert.deepEqual(devs.map((x) => [x.name, x.devName]), [['rxe0', 'uverbs0'], ['rxe1', 'uverbs1']]);
    // the uverbs ABI class-wide, the driver's (rxe's) per device, as Linux has them
    assert.equal(readFileSync(join(d.root, 'sys/class/infiniband_verbs/abi_version'), 'utf8'), '6\n');
    assert.equal(readFileSync(join(d.root, 'sys/class/infiniband_verbs/uverbs1/abi_version'), 'utf8'), '2\n');
    assert.equal(readFileSync(join(d.root, 'sys/class/infiniband/rxe1/ports/1/gids/0'), 'utf8'), `0000:0000:0000:0000:0000:ffff:${A2.split('.').map((o) => Number(o).toString(16).padStart(2, '0')).reduce((a, b, i) => a + (i === 2 ? ':' : '') + b, '')}\n`);
    assert.equal(readFileSync(join(d.root, 'sys/class/infiniband/rxe1/ports/1/gid_attrs/types/0'), 'utf8'), 'RoCE v2\n');
    assert.equal(readFileSync(join(d.root, 'sys/class/infiniband/rxe0/node_type'), 'utf8'), '1: CA\n');
    // the whole GID table (zero where empty, as rdma-core reads all gid_tbl_len entries), the GID's netdev, the P_Key table
    const port = join(d.root, 'sys/class/infiniband/rxe1/ports/1');
    assert.equal(readdirSync(join(port, 'gids')).length, 1024);
    assert.equal(readFileSync(join(port, 'gids/1023'), 'utf8'), '0000:0000:0000:0000:0000:0000:0000:0000\n');
    assert.equal(readFileSync(join(port, 'gid_attrs/ndevs/0'), 'utf8'), 'lo\n');
    assert.deepEqual(readdirSync(join(port, 'gid_attrs/types')), ['0']);
    assert.equal(readFileSync(join(port, 'pkeys/0'), 'utf8'), '0xffff\n');
    await d.stop();
    assert.ok(!existsSync(join(d.root, 'dev/infiniband/uverbs0')));
    assert.deepEqual(readdirSync(join(d.root, 'sys/class/infiniband_verbs')), []);
    assert.deepEqual(readdirSync(join(d.root, 'sys/class/infiniband')), []);
  } finally {
    rmSync(d.root, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
  }
});

test('after a crash the dead devices are not listed, and the next daemon recovers the stale files; a live daemon is not displaced', async () => {
  const d = await startDaemon(['--device', `rxe0=${A1}`], { keepRoot: true });
  try {
    assert.equal(getDeviceList(d.root).length, 1);
    d.proc.kill('SIGKILL');
    await new Promise((r) => d.proc.once('exit', r));
    assert.ok(existsSync(join(d.root, 'dev/infiniband/uverbs0')), 'the crash left the socket file');
    assert.deepEqual(getDeviceList(d.root), [], 'a dead daemon’s devices are not listed');
    const again = await startDaemon(['--device', `rxe0=${A1}`], { root: d.root, keepRoot: true });
    assert.match(again.stderr(), /removed stale/);
    assert.equal(getDeviceList(d.root).length, 1);
    const second = run('--root', d.root, '--device', `rxe0=${A1}`);
    assert.equal(second.status, 2);
    assert.match(second.stderr, /served by another running softverbsd/);
    assert.equal(getDeviceList(d.root).length, 1, 'the running daemon still serves');
    await again.stop();
  } finally {
    rmSync(d.root, { recursive: true, force: true });
  }
});

test('npm start: the demo runs every operation, prints what happened and leaves nothing behind', () => {
  const r = spawnSync(process.execPath, [join(DIST, 'src', 'tools', 'demo.js')], { encoding: 'utf8', timeout: 60000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /hca_id:\trxe0\n[^]*hca_id:\trxe1\n/);
  assert.match(r.stdout, /^server: 1000 iters in [\d.]+ seconds = [\d.]+ usec\/iter$/m);
  assert.match(r.stdout, /^client:   remote address: LID 0x0000, QPN 0x[0-9a-f]{6}, PSN 0x[0-9a-f]{6}, GID ::ffff:127\.0\.0\.1$/m);
  assert.match(r.stdout, /^link rxe0\/1 sent_pkts \d+ /m);
  // rping and the two processes meet through the RDMA CM
  assert.equal(r.stdout.match(/^client: ping data: rdma-ping-\d+: /gm)?.length, 3);
  assert.match(r.stdout, /^server: server DISCONNECT EVENT\.\.\.$/m);
  assert.match(r.stdout, /RC, connected through the RDMA CM\n  A resolved 127\.0\.0\.2:\d+ and connected from 127\.0\.0\.1:\d+; B's buffer \(addr 0x[0-9a-f]+, rkey 0x[0-9a-f]+\) came in the REP's private data/);
  assert.match(r.stdout, /both saw RDMA_CM_EVENT_DISCONNECTED/);
  assert.match(r.stdout, /SEND_WITH_IMM +20 bytes: B received "hello from process A" \(byte_len 20, imm 0x1234/);
  assert.match(r.stdout, /RDMA_WRITE +1 MiB into B's memory .* matches/);
  assert.match(r.stdout, /RDMA_READ +1 MiB from B's memory .* every byte is 0xab/);
  assert.match(r.stdout, /FETCH_AND_ADD +\+5 on B's counter: returned 100, counter is now 105/);
  assert.match(r.stdout, /CMP_AND_SWP +105 -> 7: returned 105, counter is now 7/);
  // the perftest sweeps: every size from 2 B to 8 MiB, and a chart of each
  for (const t of ['ib_write_bw', 'ib_send_lat']) {
    const part = r.stdout.slice(r.stdout.indexOf(`$ ${t} -d rxe1`));
    assert.equal(part.slice(0, part.indexOf('chart: ')).match(/^ \d+ +\d+ +[\d.]+ /gm)?.length, 23, t);
    const chart = new RegExp(`^chart: (\\S+${t}\\.svg)$`, 'm').exec(r.stdout)![1]!;
    assert.match(readFileSync(chart, 'utf8'), /^<svg /);
  }
  const root = /root (\S+)/.exec(r.stdout)![1]!;
  assert.ok(!existsSync(root), 'the demo removed its root');
  assert.equal(spawnSync('pgrep', ['-f', root]).status, 1, 'no process of the demo is left');
});
