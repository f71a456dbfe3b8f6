/**
 * What one user can learn of another's resources through the management
 * socket (`rdma resource show`): as nldev, the resources, but not the keys,
 * IOVAs and PSNs that would let a process write into another's memory or
 * inject into its connection, nor which processes pin memory. Alice holds an
 * MR and an RC QP on an SRQ; Mallory looks.
 */
import assert from 'node:assert/strict';
import { chmodSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { A1, A2, DIST, IS_ROOT, runProcess, spawnPeer, startDaemon, testUser, type Peer, type RunningDaemon } from '../helpers.js';
import { mgmtQuery } from '../../src/verbs/mgmt.js';
import { getDeviceList } from '../../src/verbs/index.js';

describe('another user\'s keys, IOVAs and PSNs are not shown', { skip: IS_ROOT ? false : 'needs root (other users)' }, () => {
  let d: RunningDaemon;
  let alice: Peer;
  let info: { qpn: number; rkey: number; lkey: number; addr: string };
  const users = IS_ROOT ? { alice: testUser('svtest-alice'), mallory: testUser('svtest-mallory') } : null;
  const rdma = (as: string[], ...args: string[]) => {
    const argv = [...as.slice(1), ...(as.length ? [process.execPath] : []), join(DIST, 'src', 'bin', 'rdma.js'), ...args];
    return runProcess(as[0] ?? process.execPath, argv, { ...process.env, SOFTVERBS_ROOT: d.root });
  };

  before(async () => {
    d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
    chmodSync(d.root, 0o755);
    alice = spawnPeer(users!.alice.as);
    info = await alice.call('init', { root: d.root, srq: {} });
    // connected (to itself: what matters is that the QP holds a connection's PSNs)
    await alice.call('connect', { qpn: info.qpn, gid: (info as unknown as { gid: string }).gid, opts: { psn: 0x123456 } });
  });
  after(async () => {
    await alice?.kill();
    await d?.stop();
  });

  test('Mallory sees Alice\'s MR and QP, without rkey, lkey, PSNs; Alice and root see them', async () => {
    const m = await rdma(users!.mallory.as, 'resource', 'show', 'mr');
    assert.equal(m.code, 0, m.out);
    assert.doesNotMatch(m.out, /rkey|lkey/, 'no keys of another user');
    assert.match(m.out, /^dev rxe0 mrn \d+ mrlen 1048576 pdn \d+ pid \d+ comm \S+ $/m);
    const q = await rdma(users!.mallory.as, 'resource', 'show', 'qp');
    assert.match(q.out, /^link rxe0\/1 lqpn \d+ rqpn \d+ type RC state \w+ path-mig-state \w+ pdn \d+ pid \d+ comm \S+ $/m);
    assert.doesNotMatch(q.out, /psn/);
    // her context and her SRQ (with the QP that uses it), as any user sees them: nothing in them is secret
    const c = await rdma(users!.mallory.as, 'resource', 'show', 'ctx');
    assert.match(c.out, new RegExp(`^dev rxe0 ctxn \\d+ pid ${alice.pid} comm \\S+ $`, 'm'), c.out);
    const s = await rdma(users!.mallory.as, 'resource', 'show', 'srq');
    assert.match(s.out, new RegExp(`^dev rxe0 srqn \\d+ type BASIC lqpn ${info.qpn} pdn \\d+ pid ${alice.pid} comm \\S+ $`, 'm'), s.out);
    const j = await rdma(users!.mallory.as, '-j', 'resource', 'show', 'mr');
    for (const row of JSON.parse(j.out) as Array<Record<string, unknown>>) assert.equal(row.rkey, undefined);

    for (const who of [users!.alice.as, []]) {
      const own = await rdma(who, 'resource', 'show', 'mr');
      assert.match(own.out, new RegExp(`rkey 0x${info.rkey.toString(16)} lkey 0x${info.lkey.toString(16)} mrlen 1048576`));
      const qp = await rdma(who, 'resource', 'show', 'qp');
      assert.match(qp.out, /rq-psn \d+ sq-psn \d+/);
    }
  });

  test('the raw management answers carry nothing secret for Mallory either; the per-QP transport dump is root\'s', async () => {
    // Mallory could skip the rdma tool and ask the socket herself: a process of hers doing exactly that
    const dev = getDeviceList(d.root)[0]!;
    const script = `import { mgmtQuery } from ${JSON.stringify(join(DIST, 'src', 'verbs', 'mgmt.js'))};
      const rows = await mgmtQuery(${JSON.stringify(dev.devPath)}, 'restrack');
      let qps; try { qps = await mgmtQuery(${JSON.stringify(dev.devPath)}, 'qps'); } catch (e) { qps = e.code; }
      const pinned = await mgmtQuery(${JSON.stringify(dev.devPath)}, 'pinned');
      console.log(JSON.stringify({ rows, qps, pinned }));`;
    type Seen = { rows: Array<Record<string, unknown>>; qps: unknown; pinned: Record<string, number> };
    const ask = async (as: string[]): Promise<Seen> => {
      const r = await runProcess(as[0]!, [...as.slice(1), process.execPath, '--input-type=module', '-e', script], process.env);
      assert.equal(r.code, 0, r.out);
      return JSON.parse(r.out) as Seen;
    };
    const { rows, qps, pinned } = await ask(users!.mallory.as);
    const hers = rows.filter((x) => x.uid === users!.alice.uid);
    assert.ok(hers.length >= 4, JSON.stringify(rows));
    for (const row of hers) for (const k of ['lkey', 'rkey', 'iova', 'sqPsn', 'rqPsn']) assert.equal(row[k], undefined, `${k} of ${row.type}`);
    assert.equal(qps, 'EPERM');
    // pinned pages are shown by pid to their owner and root only
    assert.equal(pinned[alice.pid], undefined, JSON.stringify(pinned));
    const own = await ask(users!.alice.as);
    assert.ok(own.pinned[alice.pid]! > 0, JSON.stringify(own.pinned));
    assert.ok(own.rows.some((x) => x.type === 'mr' && x.rkey === info.rkey), 'Alice sees her keys');
    assert.equal(own.qps, 'EPERM');
    const mine = await mgmtQuery<Array<Record<string, unknown>>>(dev.devPath, 'restrack');
    assert.ok(mine.some((x) => x.type === 'mr' && x.rkey === info.rkey), 'root sees the keys');
    assert.ok((await mgmtQuery<Record<string, number>>(dev.devPath, 'pinned'))[alice.pid]! > 0, 'root sees every pid\'s pinned pages');
  });
});
