/**
 * Limits: the device limits QUERY_DEVICE advertises, and per-user caps a
 * hostile user runs into (with the kernel's errno, a log line once per user
 * and limit) while another user goes on unhindered and the daemon stays small.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { A1, DIST, IS_ROOT, rssKiB, startDaemon, testUser, type RunningDaemon } from '../helpers.js';
import { getDeviceList, openDevice, QpType } from '../../src/verbs/index.js';

const HOG = join(DIST, 'test', 'fixtures', 'hog.js');

/** Runs the hog fixture (as `as`), returns its report once it has taken what it could; it holds it until released. */
async function hog(as: string[], root: string, what: string, n: number): Promise<{ got: number; error: { code: string; message: string } | null; release(): Promise<void> }> {
  const cmd = [...as, process.execPath, HOG, root, what, String(n)];
  const p: ChildProcess = spawn(cmd[0]!, cmd.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] });
  const line = await new Promise<string>((resolve, reject) => {
    let out = '';
    p.stdout!.on('data', (d) => {
      out += d;
      if (out.includes('\n')) resolve(out.split('\n')[0]!);
    });
    p.once('exit', (c) => reject(new Error(`hog exited ${c}: ${out}`)));
  });
  const r = JSON.parse(line) as { got: number; error: { code: string; message: string } | null };
  return {
    ...r,
    release: () =>
      new Promise<void>((resolve) => {
        p.once('exit', () => resolve());
        p.stdin!.end();
      }),
  };
}

describe('per-user caps', { skip: IS_ROOT ? false : 'needs root (other users)' }, () => {
  let d: RunningDaemon;
  const dir = mkdtempSync(join(tmpdir(), 'sv-sec-limits-'));
  const mallory = IS_ROOT ? testUser('svtest-mallory') : null;
  const alice = IS_ROOT ? testUser('svtest-alice') : null;
  before(async () => {
    writeFileSync(join(dir, 'cfg.json'), JSON.stringify({
      devices: [{ name: 'rxe0', addr: A1 }],
      limits: { contexts: 3, connections: 10, objects: 40, mappings: 12, memory: 48 * 1024 * 1024 },
    }));
    d = await startDaemon(['--config', join(dir, 'cfg.json')]);
    chmodSync(d.root, 0o755);
  });
  after(async () => {
    await d?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('objects: the 41st is EAGAIN (the rdma cgroup\'s answer); another user and root are not held back', async () => {
    const m = await hog(mallory!.as, d.root, 'pd', 100);
    try {
      assert.equal(m.got, 40);
      assert.equal(m.error?.code, 'EAGAIN');
      assert.match(m.error!.message, new RegExp(`uid ${mallory!.uid} holds 40 objects \\(limit 40\\)`));
      const a = await hog(alice!.as, d.root, 'pd', 30);
      assert.equal(a.got, 30, JSON.stringify(a.error));
      await a.release();
      const r = await hog([], d.root, 'pd', 60);
      assert.equal(r.got, 60, 'root is exempt');
      await r.release();
    } finally {
      await m.release();
    }
    // once freed, they can be had again
    const again = await hog(mallory!.as, d.root, 'pd', 10);
    assert.equal(again.got, 10);
    await again.release();
  });

  test('rdma_cm event channels opened and closed give both their connections back (40 in turn under a cap of 10)', async () => {
    const m = await hog(mallory!.as, d.root, 'cm-churn', 40);
    await m.release();
    assert.equal(m.got, 40, JSON.stringify(m.error));
  });

  test('contexts: the 4th open is EMFILE; connections: the 11th is EMFILE', async () => {
    const c = await hog(mallory!.as, d.root, 'ctx', 10);
    assert.equal(c.got, 3);
    assert.equal(c.error?.code, 'EMFILE');
    await c.release();
    const n = await hog(mallory!.as, d.root, 'conn', 20);
    assert.equal(n.got, 10);
    assert.equal(n.error?.code, 'EMFILE');
    await n.release();
  });

  test('mappings (each one of the daemon\'s vm.max_map_count): one-entry CQs stop with ENOMEM, not a daemon killed by SIGSEGV', async () => {
    const m = await hog(mallory!.as, d.root, 'cq', 1000);
    assert.equal(m.got, 12);
    assert.equal(m.error?.code, 'ENOMEM');
    await m.release();
  });

  test('daemon memory: QPs at the maximum caps are charged (16384 WQEs of 32 SGEs and 512 inline bytes each); the 2nd is ENOMEM', async () => {
    const m = await hog(mallory!.as, d.root, 'qp-max', 10);
    assert.equal(m.got, 1);
    assert.equal(m.error?.code, 'ENOMEM');
    assert.match(m.error!.message, /bytes of daemon memory/);
    await m.release();
  });

  test('each limit a user hit is logged once; the daemon is alive', () => {
    const log = d.stderr();
    for (const what of ['objects', 'contexts', 'connections', 'mappings', 'memory']) {
      const hits = log.split('\n').filter((l) => l.includes(`warning: uid ${mallory!.uid} hit ${what}:`));
      assert.equal(hits.length, 1, `${what}:\n${log}`);
    }
    assert.equal(d.proc.exitCode, null);
  });
});

describe('device limits and daemon memory', () => {
  let d: RunningDaemon;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${A1}`]);
  });
  after(() => d?.stop());

  test('max_pd is 65536: the next ALLOC_PD is EINVAL (rxe\'s pool), even for root', async () => {
    const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
    const attr = await ctx.queryDevice();
    assert.equal(attr.maxPd, 65536);
    let n = 0;
    while (n < attr.maxPd) {
      const batch = Math.min(2048, attr.maxPd - n);
      await Promise.all(Array.from({ length: batch }, () => ctx.allocPd()));
      n += batch;
    }
    await assert.rejects(ctx.allocPd(), { code: 'EINVAL', message: /max_pd 65536 is reached/ });
    ctx.closeDevice();
    // given back on close: a new context gets PDs again
    await new Promise((r) => setTimeout(r, 300));
    const c2 = await openDevice(getDeviceList(d.root)[0]!, d.root);
    await c2.allocPd();
    c2.closeDevice();
  });

  test('a QP at the maximum caps costs the daemon what is in flight, not what the caps allow (was ~40 MB each)', async () => {
    const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
    const pd = await ctx.allocPd();
    const cq = await ctx.createCq(1);
    const before = rssKiB(d.proc.pid!);
    const qps = [];
    for (let i = 0; i < 10; i++) qps.push(await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 16384, maxRecvWr: 16384, maxSendSge: 32, maxRecvSge: 32, maxInlineData: 512 } }));
    const grown = rssKiB(d.proc.pid!) - before;
    assert.ok(grown < 40 * 1024, `10 max-cap QPs grew the daemon by ${grown} KiB`);
    ctx.closeDevice();
  });
});
