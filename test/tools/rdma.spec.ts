/**
 * `rdma`: link show / add / delete on a running daemon, resource show with
 * pid and comm, statistic show with rxe's counter names, in iproute2 6.1's
 * line format (fixtures recorded from the lab VM's rxe in fixtures/rdma).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Access, getDeviceList, openDevice, QpType, type Context } from '../../src/verbs/index.js';
import { connectQp, DIST, startDaemon, type RunningDaemon , A1 } from '../helpers.js';

const FIX = join(DIST, '..', 'test', 'tools', 'fixtures', 'rdma');
const rdma = (root: string, ...args: string[]) => {
  const r = spawnSync(process.execPath, [join(DIST, 'src', 'bin', 'rdma.js'), ...args], { encoding: 'utf8', env: { ...process.env, SOFTVERBS_ROOT: root }, timeout: 20000 });
  return { code: r.status, out: r.stdout, err: r.stderr };
};

/** A line's shape: its words with numbers, hex and names blanked (what must match rxe's). */
const shape = (line: string) => line.replace(/state (RESET|INIT|RTR|RTS|SQD|SQE|ERR) /, 'state S ').replace(/0x[0-9a-f]+/g, 'H').replace(/\b\d+\b/g, 'N').replace(/\b(rxe\d|eth\d|lo|node|ibv_rc_pingpong|sv\w+)\b/g, 'W');

const netns = spawnSync('unshare', ['--net', 'true']).status === 0 && spawnSync('ip', ['-V']).status === 0;

describe('rdma', { skip: netns ? false : 'needs unshare --net and ip (root)' }, () => {
  let d: RunningDaemon;
  let ctx: Context;
  before(async () => {
    // its own namespace, with an interface rdma link add can put a device on
    const setup = 'ip link set lo up && ip link add sv0 type veth peer name sv1 && ip addr add 10.99.0.1/24 dev sv0 && ip link set sv0 up && ip link set sv1 up && exec "$0" "$@"';
    d = await startDaemon(['--device', `rxe0=${A1}`], { wrapper: ['unshare', '--net', 'sh', '-c', setup] });
    ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
  });
  after(async () => {
    ctx?.closeDevice();
    await d?.stop();
  });

  test('link show; link add NAME type rxe netdev IFACE; link delete NAME', async () => {
    assert.deepEqual(rdma(d.root, 'link', 'show'), { code: 0, out: 'link rxe0/1 state ACTIVE physical_state LINK_UP netdev lo \n', err: '' });
    assert.equal(rdma(d.root, 'link', 'add', 'rxe1', 'type', 'rxe', 'netdev', 'sv0').code, 0);
    assert.equal(rdma(d.root, 'link').out, 'link rxe0/1 state ACTIVE physical_state LINK_UP netdev lo \nlink rxe1/1 state ACTIVE physical_state LINK_UP netdev sv0 \n');
    assert.deepEqual(getDeviceList(d.root).map((x) => x.name), ['rxe0', 'rxe1']);
    // the new device works: a QP on it can be created and connected
    const c1 = await openDevice(getDeviceList(d.root)[1]!, d.root);
    assert.deepEqual([...c1.queryGid(1, 0).subarray(12)], [10, 99, 0, 1]);
    c1.closeDevice();
    assert.match(rdma(d.root, 'link', 'add', 'rxe2', 'type', 'rxe', 'netdev', 'sv0').err, /EEXIST.*10\.99\.0\.1 \(sv0\) already has a device/);
    assert.match(rdma(d.root, 'link', 'add', 'rxe2', 'type', 'rxe', 'netdev', 'nosuch').err, /ENODEV.*no network interface nosuch/);
    assert.match(rdma(d.root, 'link', 'add', 'rxe2').err, /Please provide a link type name/);
    assert.deepEqual(rdma(d.root, 'link', 'show', 'rxe1/1').out, 'link rxe1/1 state ACTIVE physical_state LINK_UP netdev sv0 \n');
    assert.match(rdma(d.root, 'link', 'show', 'rxe7/1').err, /Wrong device name rxe7/);
    assert.equal(rdma(d.root, 'link', 'delete', 'rxe1').code, 0);
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(getDeviceList(d.root).map((x) => x.name), ['rxe0']);
    assert.equal(rdma(d.root, 'link').out, 'link rxe0/1 state ACTIVE physical_state LINK_UP netdev lo \n');
    assert.deepEqual(JSON.parse(rdma(d.root, '-j', 'link').out), [{ ifindex: 0, ifname: 'rxe0', port: 1, state: 'ACTIVE', physical_state: 'LINK_UP', netdev: 'lo' }]);
  });

  test('resource show: the summary, and qp / cq / mr / pd lines with pid and comm', async () => {
    const pd = await ctx.allocPd();
    const cq = await ctx.createCq(16);
    const mr = await pd.allocMr(8192, Access.LOCAL_WRITE);
    const qp = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 4 } });
    await connectQp(qp, ctx, { qpn: qp.qpNum, gid: ctx.queryGid(1, 0), psn: 77 }, { psn: 99 });
    const comm = readFileSync(`/proc/${process.pid}/comm`, 'utf8').trim();
    assert.equal(rdma(d.root, 'resource').out, '0: rxe0: pd 1 cq 1 qp 1 cm_id 0 mr 1 ctx 1 srq 0 \n');
    assert.equal(rdma(d.root, 'res', 'show', 'qp').out, `link rxe0/1 lqpn ${qp.qpNum} rqpn ${qp.qpNum} type RC state RTS rq-psn 77 sq-psn 99 path-mig-state MIGRATED pdn 0 pid ${process.pid} comm ${comm} \n`);
    assert.equal(rdma(d.root, 'res', 'show', 'cq').out, `dev rxe0 cqn 0 cqe ${cq.cqe} users 2 adaptive-moderation off ctxn 0 pid ${process.pid} comm ${comm} \n`);
    assert.equal(rdma(d.root, 'res', 'show', 'mr').out, `dev rxe0 mrn 0 rkey 0x0 lkey 0x${mr.lkey.toString(16)} mrlen 8192 pdn 0 pid ${process.pid} comm ${comm} \n`);
    assert.equal(rdma(d.root, 'res', 'show', 'pd').out, `dev rxe0 pdn 0 local_dma_lkey 0x0 users 2 ctxn 0 pid ${process.pid} comm ${comm} \n`);
    assert.equal(rdma(d.root, 'res', 'show', 'qp', 'link', 'rxe0/1').out, rdma(d.root, 'res', 'show', 'qp').out);
    assert.match(rdma(d.root, 'res', 'show', 'qp', 'link', 'rxe5').err, /Wrong device name rxe5/);
    // every line has the words of rxe's, in rxe's order (values and names aside): fixtures/rdma/res_show_all.txt
    const theirs = readFileSync(join(FIX, 'res_show_all.txt'), 'utf8').split('\n').filter((l) => l.includes('pid ')).map(shape);
    const qpLine = shape(rdma(d.root, 'res', 'show', 'qp').out.trim());
    for (const [obj, theirLine] of [['qp', theirs.find((l) => l.startsWith('link'))], ['cq', theirs.find((l) => l.includes('cqn'))], ['mr', theirs.find((l) => l.includes('mrn'))], ['pd', theirs.find((l) => l.includes('local_dma_lkey'))]] as const) {
      assert.equal(obj === 'qp' ? qpLine : shape(rdma(d.root, 'res', 'show', obj).out.trim()), theirLine!.trim(), `rdma res show ${obj}`);
    }
    for (const [f, args] of [['link.txt', ['link']], ['stat.txt', ['stat', 'show']]] as const) {
      assert.equal(shape(rdma(d.root, ...args).out), shape(readFileSync(join(FIX, f), 'utf8')), f);
    }
    await qp.destroyQp();
    assert.equal(rdma(d.root, 'res', 'show', 'qp').out, '');
  });

  test('resource show ctx and srq, as res-ctx.c and res-srq.c print them, plain and -j', async () => {
    const comm = readFileSync(`/proc/${process.pid}/comm`, 'utf8').trim();
    const before = JSON.parse(rdma(d.root, '-j', 'res', 'show', 'ctx').out) as Array<{ ctxn: number }>;
    // a context that holds nothing yet is an entry of its own, and the summary counts it
    const c2 = await openDevice(getDeviceList(d.root)[0]!, d.root);
    try {
      const ctxs = JSON.parse(rdma(d.root, '-j', 'res', 'show', 'ctx').out) as Array<{ ctxn: number }>;
      assert.equal(ctxs.length, before.length + 1);
      const n2 = ctxs.at(-1)!.ctxn;
      assert.deepEqual(ctxs.at(-1), { ifindex: 0, ifname: 'rxe0', ctxn: n2, pid: process.pid, comm });
      assert.equal(rdma(d.root, 'res', 'show', 'ctx').out, ctxs.map((c) => `dev rxe0 ctxn ${c.ctxn} pid ${process.pid} comm ${comm} \n`).join(''));
      assert.equal(rdma(d.root, 'res', 'show', 'ctx', 'dev', 'rxe0').out, rdma(d.root, 'res', 'show', 'ctx').out);
      assert.match(rdma(d.root, 'resource').out, new RegExp(` ctx ${ctxs.length} srq 0 \n$`));

      const pd = await c2.allocPd();
      const cq = await c2.createCq(16);
      const srq = await pd.createSrq({ maxWr: 8, maxSge: 1 });
      const qp = (withSrq: boolean) => pd.createQp({ sendCq: cq, recvCq: cq, srq: withSrq ? srq : undefined, qpType: QpType.RC, cap: { maxSendWr: 4, maxRecvWr: 4 } });
      const qps = [await qp(true), await qp(true), await qp(false), await qp(true)];
      const [q1, q2, q3, q4] = qps.map((q) => q.qpNum) as [number, number, number, number];
      assert.ok(q2 === q1 + 1 && q3 === q2 + 1 && q4 === q3 + 1, `QPNs in a row: ${[q1, q2, q3, q4]}`);
      const pdn = (JSON.parse(rdma(d.root, '-j', 'res', 'show', 'pd').out) as Array<{ pdn: number; ctxn: number }>).find((x) => x.ctxn === n2)!.pdn;
      const srqs = JSON.parse(rdma(d.root, '-j', 'res', 'show', 'srq').out) as Array<{ srqn: number }>;
      assert.equal(srqs.length, 1);
      const srqn = srqs[0]!.srqn;
      // the QPs that take their receives from it, a run of QPNs as FIRST-LAST
      assert.deepEqual(srqs[0], { ifindex: 0, ifname: 'rxe0', srqn, type: 'BASIC', lqpn: [`${q1}-${q2}`, `${q4}`], pdn, pid: process.pid, comm });
      assert.equal(rdma(d.root, 'res', 'show', 'srq').out, `dev rxe0 srqn ${srqn} type BASIC lqpn ${q1}-${q2},${q4} pdn ${pdn} pid ${process.pid} comm ${comm} \n`);
      assert.equal(rdma(d.root, 'res', 'show', 'srq', 'dev', 'rxe0').out, rdma(d.root, 'res', 'show', 'srq').out);
      assert.match(rdma(d.root, 'resource').out, new RegExp(` ctx ${ctxs.length} srq 1 \n$`));
      // an SRQ no QP uses: no lqpn at all
      for (const q of qps) await q.destroyQp();
      assert.equal(rdma(d.root, 'res', 'show', 'srq').out, `dev rxe0 srqn ${srqn} type BASIC pdn ${pdn} pid ${process.pid} comm ${comm} \n`);
      assert.deepEqual(JSON.parse(rdma(d.root, '-j', 'res', 'show', 'srq').out), [{ ifindex: 0, ifname: 'rxe0', srqn, type: 'BASIC', pdn, pid: process.pid, comm }]);
      assert.match(rdma(d.root, 'res', 'show', 'srq', 'link', 'rxe0').err, /Unknown parameter 'link'/);
    } finally {
      c2.closeDevice();
    }
    // the daemon destroys what a closed context held once it sees the connection go
    let left = rdma(d.root, 'res', 'show', 'srq').out;
    for (let i = 0; i < 40 && left !== ''; i++) {
      await new Promise((r) => setTimeout(r, 50));
      left = rdma(d.root, 'res', 'show', 'srq').out;
    }
    assert.equal(left, '');
  });

  test('statistic show: rxe\'s counters in rxe\'s order', () => {
    const out = rdma(d.root, 'statistic', 'show').out;
    assert.match(out, /^link rxe0\/1 sent_pkts \d+ rcvd_pkts \d+ duplicate_request \d+ out_of_seq_request \d+ rcvd_rnr_err \d+ send_rnr_err \d+ rcvd_seq_err \d+ ack_deferred \d+ retry_exceeded_err \d+ retry_rnr_exceeded_err \d+ completer_retry_err \d+ send_err \d+ link_downed \d+ rdma_sends \d+ rdma_recvs \d+ \n$/);
    assert.equal(rdma(d.root, 'stat', 'show', 'link', 'rxe0/1').out, out);
    assert.match(rdma(d.root, 'bogus').err, /Object "bogus" is unknown/);
  });
});
