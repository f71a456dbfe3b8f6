/**
 * The daemon's object table, through a real Context on a real SoftDevice
 * (commands framed as the library frames them, rings and MRs in memfds of
 * this process, held by the context as the descriptor exchange's PUT_MEMFD holds them): teardown releases every type before what it holds, each
 * type's device limit is EINVAL at the max QUERY_DEVICE advertises, and the
 * restrack rows keep their fields.
 */
import assert from 'node:assert/strict';
import { ftruncateSync } from 'node:fs';
import { describe, test } from 'node:test';
import { Access, QpType } from '../../src/abi/enums.js';
import { layout, unpack, type Input, type StructDef } from '../../src/abi/layout.js';
import * as U from '../../src/abi/uverbs.js';
import { CmdError, E } from '../../src/common/errno.js';
import { Context, type Host } from '../../src/daemon/context.js';
import { DEFAULT_USER_LIMITS, Quotas } from '../../src/daemon/limits.js';
import { PinnedAccounts } from '../../src/daemon/memlock.js';
import { deviceMax, OBJ_TYPES, OBJECT_TYPES, type ObjType } from '../../src/daemon/object-table.js';
import { SoftDevice } from '../../src/hca/device.js';
import { Fabric } from '../../src/hca/fabric.js';
import { memfdCreate } from '../../src/native/libc.js';

/** Not root (root is exempt from the quotas), not anyone's uid either. */
const UID = 54321;

const MEMFD_SIZE = 1 << 20;

/** A memfd of this process for one ring or MR, handed to the context (as PUT_MEMFD does): its id, for the udata. */
function memfd(ctx: Context): number {
  const fd = memfdCreate('object-table-spec');
  ftruncateSync(fd, MEMFD_SIZE);
  return ctx.holdMemfd(fd, MEMFD_SIZE);
}

function harness(opts: { maxQpn?: number; exempt?: boolean; objects?: number } = {}) {
  const dev = new SoftDevice(new Fabric(), 'rxe0', 0, '127.0.0.1', { maxQpn: opts.maxQpn });
  const logs: string[] = [];
  const hits: string[] = [];
  const dropped: number[] = [];
  let token = 100;
  const quotas = new Quotas({ ...DEFAULT_USER_LIMITS, objects: opts.objects ?? DEFAULT_USER_LIMITS.objects }, () => opts.exempt ?? false, () => {});
  const host: Host = {
    pinned: new PinnedAccounts(),
    fdExchange: null,
    newToken: () => token++,
    dropToken: (t) => void dropped.push(t),
    log: (m) => void logs.push(m),
    limitHit: (_uid, limit) => void hits.push(limit),
    quotas,
  };
  const ctx = new Context(host, dev, process.pid, UID, UID);
  ctx.asyncToken = host.newToken('async', ctx);
  return { dev, ctx, host, quotas, logs, hits, dropped };
}

/** Runs one command as the connection would hand it over; its decoded response. */
function run<S extends U.CmdSpec>(ctx: Context, spec: S, req: Input<S['req']>, udata?: S['udata'] extends infer D extends StructDef ? Input<D> : never): U.RespOf<S> {
  const out = spec.resp ? layout(spec.resp).size : 0;
  const b = ctx.dispatch(spec.cmd, U.frame(spec, req, udata), out);
  return (spec.resp ? unpack(spec.resp, b) : {}) as U.RespOf<S>;
}

type Made = { pd: number; cq: number; srq: number; channel: number };

/** How to make one object of each type (its handle); a new row in the table needs a way here. */
const MAKE: Record<ObjType, (ctx: Context, m: Made) => number> = {
  comp_channel: (ctx) => {
    const token = run(ctx, U.Spec.CREATE_COMP_CHANNEL, {}).fd;
    return [...ctx.handles].find(([, e]) => e.type === 'comp_channel' && e.obj.token === token)![0];
  },
  pd: (ctx) => run(ctx, U.Spec.ALLOC_PD, {}).pd_handle,
  mw: (ctx, m) => run(ctx, U.Spec.ALLOC_MW, { pd_handle: m.pd, mw_type: 2 }).mw_handle,
  cq: (ctx, m) => run(ctx, U.Spec.CREATE_CQ, { user_handle: 1n, cqe: 16, comp_vector: 0, comp_channel: m.channel }, { memfd_id: memfd(ctx) }).cq_handle,
  srq: (ctx, m) => run(ctx, U.Spec.CREATE_SRQ, { user_handle: 2n, pd_handle: m.pd, max_wr: 16, max_sge: 1, srq_limit: 0 }, { memfd_id: memfd(ctx) }).srq_handle,
  mr: (ctx, m) =>
    run(ctx, U.Spec.REG_MR, { start: 0x10000n, length: 4096n, hca_va: 0x10000n, pd_handle: m.pd, access_flags: Access.LOCAL_WRITE | Access.REMOTE_WRITE }, { memfd_id: memfd(ctx), memfd_offset: 0n }).mr_handle,
  ah: (ctx, m) => run(ctx, U.Spec.CREATE_AH, { pd_handle: m.pd, attr: { is_global: 1, port_num: 1, grh: { dgid: new Uint8Array(16), sgid_index: 0, hop_limit: 64 } } }).ah_handle,
  qp: (ctx, m) =>
    run(ctx, U.Spec.CREATE_QP, {
      user_handle: 3n, pd_handle: m.pd, send_cq_handle: m.cq, recv_cq_handle: m.cq, srq_handle: m.srq, is_srq: 1,
      max_send_wr: 4, max_recv_wr: 0, max_send_sge: 1, max_recv_sge: 1, max_inline_data: 0, qp_type: QpType.RC,
    }, { memfd_id: memfd(ctx) }).qp_handle,
};

/** One object of every type, each holding what it can (the QP its PD, CQ and SRQ; the CQ a channel). */
function makeAll(ctx: Context): Map<ObjType, number> {
  const m: Made = { pd: -1, cq: -1, srq: -1, channel: -1 };
  const made = new Map<ObjType, number>();
  // creation order: what is held first, the reverse of teardown, so a teardown in handle order would be wrong
  for (const t of [...OBJ_TYPES].reverse()) {
    const h = MAKE[t](ctx, m);
    made.set(t, h);
    if (t === 'pd') m.pd = h;
    if (t === 'cq') m.cq = h;
    if (t === 'srq') m.srq = h;
    if (t === 'comp_channel') m.channel = ctx.get('comp_channel', h).token;
  }
  return made;
}

describe('the object table', () => {
  test('each row holds only types with rows after its own, so the table order is a teardown order', () => {
    for (const [i, t] of OBJ_TYPES.entries())
      for (const h of OBJECT_TYPES[t].holds) assert.ok(OBJ_TYPES.indexOf(h as ObjType) > i, `${t} holds ${h}, which comes before it`);
  });

  test('a context holding every type is torn down each before what it holds: nothing in use when released, everything given back', () => {
    const { dev, ctx, quotas, logs, dropped } = harness({ objects: OBJ_TYPES.length });
    const made = makeAll(ctx);
    assert.equal(ctx.handles.size, OBJ_TYPES.length);
    assert.throws(() => quotas.check(UID, 'objects'), { errno: -E.EAGAIN, code: 'EAGAIN' }, 'the objects quota is taken, one per object');
    assert.deepEqual([dev.qps.size, dev.mrs.size, dev.srqs.size], [1, 1, 1], "the device's QP, MR and SRQ tables");
    const channelToken = ctx.get('comp_channel', made.get('comp_channel')!).token;

    // watch the table's own release functions: which object, in what order, and whether anything still held it
    const released: Array<{ type: ObjType; users: number | undefined }> = [];
    const saved = new Map(OBJ_TYPES.map((t) => [t, OBJECT_TYPES[t].release]));
    for (const t of OBJ_TYPES) {
      const orig = saved.get(t)! as (c: Context, o: object) => void;
      (OBJECT_TYPES[t] as { release: (c: Context, o: object) => void }).release = (c, o) => {
        released.push({ type: t, users: (o as { users?: number }).users });
        orig(c, o);
      };
    }
    try {
      ctx.destroyAll();
    } finally {
      for (const t of OBJ_TYPES) (OBJECT_TYPES[t] as { release: unknown }).release = saved.get(t);
    }

    assert.deepEqual(released.map((r) => r.type), OBJ_TYPES, 'one release per object, in the table order');
    for (const r of released) assert.ok(!r.users, `${r.type} released while ${r.users} objects still held it`);
    for (const t of OBJ_TYPES)
      for (const h of OBJECT_TYPES[t].holds) assert.ok(released.findIndex((r) => r.type === t) < released.findIndex((r) => r.type === h), `${t} after ${h}`);
    assert.deepEqual(logs, [], 'no release failed');
    assert.equal(ctx.handles.size, 0);
    for (const t of OBJ_TYPES) assert.equal(dev.objCount[t], 0, `the device's ${t} count`);
    assert.deepEqual([dev.qps.size, dev.mrs.size, dev.srqs.size], [0, 0, 0], "the device's QP, MR and SRQ tables");
    assert.equal(ctx.host.pinned.pinned(process.pid), 0, 'the MR pages are unpinned');
    quotas.check(UID, 'objects', OBJ_TYPES.length);
    quotas.check(UID, 'memory', DEFAULT_USER_LIMITS.memory);
    assert.equal(quotas.held(UID, 'memfds'), 0, 'each memfd was consumed by the command that mapped it');
    assert.equal(quotas.held(UID, 'mappings'), 0, 'and its mapping went with its object');
    assert.deepEqual(dropped.sort((a, b) => a - b), [ctx.asyncToken, channelToken].sort((a, b) => a - b), 'the channel and async tokens are dropped');
  });

  test("each type's device limit is the max QUERY_DEVICE advertises, and the next create is EINVAL (max_qp from the QPN space)", () => {
    const { dev, ctx, hits } = harness({ maxQpn: 20, exempt: true });
    const attr = run(ctx, U.Spec.QUERY_DEVICE, {});
    const advertised: Partial<Record<ObjType, number>> = { qp: attr.max_qp, pd: attr.max_pd, mr: attr.max_mr, cq: attr.max_cq, srq: attr.max_srq, ah: attr.max_ah, mw: attr.max_mw };
    assert.deepEqual(advertised, { qp: 4, pd: 65536, mr: 65536, cq: 65536, srq: 65536, ah: 32766, mw: 524287 });
    const m: Made = { pd: MAKE.pd(ctx, {} as Made), cq: -1, srq: -1, channel: -1 };
    m.cq = MAKE.cq(ctx, m);
    m.srq = MAKE.srq(ctx, m);
    for (const t of OBJ_TYPES) {
      const max = deviceMax(dev, t);
      if (t === 'comp_channel') {
        assert.equal(max, Infinity, 'a channel is an fd, not an HCA object');
        continue;
      }
      assert.equal(advertised[t], max, `QUERY_DEVICE's max_${t}`);
      // QPs for real (the device has 4 QPNs); 65536 CQs, SRQs or MRs would need more mappings than vm.max_map_count
      // allows, so the rest start where other contexts' objects would have left the device's count
      if (t !== 'qp') dev.objCount[t] = max - 1;
      while ((dev.objCount[t] ?? 0) < max) MAKE[t](ctx, m);
      assert.throws(() => MAKE[t](ctx, m), (e: CmdError) => e.errno === -E.EINVAL && e.message === `${t.toUpperCase()}: the device's max_${t} ${max} is reached`);
      assert.equal(hits.at(-1), `max_${t}`, 'the limit hit is reported');
      assert.equal(ctx.heldMemfds, 0, `the refused ${t} consumed the memfd it named all the same`);
    }
  });

  test('the restrack rows: the fields every row has, then each type its own, as before the table', () => {
    const { ctx } = harness();
    makeAll(ctx);
    const common = ['dev', 'pid', 'uid', 'comm', 'type', 'handle', 'ctxn'];
    const own: Record<ObjType, string[]> = {
      qp: ['lqpn', 'rqpn', 'qpType', 'state', 'sqPsn', 'rqPsn', 'pathMigState', 'pdn'],
      srq: ['srqn'],
      cq: ['cqn', 'cqe', 'users'],
      ah: [],
      mw: [],
      mr: ['mrn', 'lkey', 'rkey', 'iova', 'mrlen', 'pages', 'pdn'],
      pd: ['pdn', 'users'],
      comp_channel: [],
    };
    const rows = ctx.track();
    assert.equal(rows.length, OBJ_TYPES.length);
    for (const r of rows) {
      const t = r.type as ObjType;
      const want = [...common, ...own[t]];
      assert.deepEqual(Object.keys(r).slice(0, want.length), want, `${t} row`);
    }
    const qp = rows.find((r) => r.type === 'qp')!;
    const pd = rows.find((r) => r.type === 'pd')!;
    const mr = rows.find((r) => r.type === 'mr')!;
    assert.equal(qp.pdn, pd.pdn);
    assert.equal(mr.pdn, pd.pdn);
    assert.equal(pd.users, 5, 'the MW, the MR, the AH, the SRQ and the QP');
    assert.equal(mr.rkey, mr.lkey, 'REMOTE_WRITE: the rkey is the key');
    assert.equal(mr.iova, String(0x10000));
    ctx.destroyAll();
  });
});

describe('completion events', () => {
  test("a CQ's event goes to its channel once the daemon's current task is over; a CQ destroyed before then gets none and counts none", async () => {
    const { ctx } = harness();
    const chHandle = MAKE.comp_channel(ctx, { pd: -1, cq: -1, srq: -1, channel: -1 });
    const ch = ctx.get('comp_channel', chHandle);
    const m: Made = { pd: -1, cq: -1, srq: -1, channel: ch.token };
    const kept = ctx.get('cq', MAKE.cq(ctx, m));
    const goneHandle = MAKE.cq(ctx, m);
    const gone = ctx.get('cq', goneHandle);
    // the channel's stream is not attached: what is sent waits in `pending`, where this test reads it
    ctx.compEvent(kept);
    ctx.compEvent(gone);
    ctx.compEvent(kept);
    assert.equal(ch.pending.length, 0, 'nothing sent during the task that completed');
    const reported = run(ctx, U.Spec.DESTROY_CQ, { cq_handle: goneHandle }).comp_events_reported;
    assert.equal(reported, 0, 'ibv_destroy_cq waits for as many acknowledgements as the events reported');
    await Promise.resolve();
    assert.deepEqual(ch.pending.map((b) => unpack(U.COMP_EVENT_DESC, b).cq_handle), [1n, 1n], "the kept CQ's two events, after the task");
    assert.equal(kept.compEvents, 2);
    assert.equal(gone.compEvents, 0);
    ctx.destroyAll();
  });
});
