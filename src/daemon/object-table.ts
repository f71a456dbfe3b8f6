/**
 * The daemon's object table, as rxe_pool.c's rxe_type_info[]: per uverbs object type its device limit, what
 * one costs its user, the types it holds, how it is released and its fields in the resource tracker. A
 * context admits, tears down and reports its objects through this table only, so a new type is one row.
 */
import { QpState } from '../abi/enums.js';
import type { SoftDevice } from '../hca/device.js';
import type { Ah, Cq, Mr, Mw, Pd, Srq } from '../hca/objects.js';
import { deallocMw, MW_INDEX } from '../hca/mw.js';
import type { Qp } from '../hca/qp.js';
import { settleMemory } from '../hca/staging.js';
import type { Context } from './context.js';
import { CompChannel } from './events.js';
import { ErrnoError } from '../common/errors.js';
import { detachAll } from './cmd/mcast.js';

export interface ObjectType<O> {
  /** The device limit QUERY_DEVICE advertises as max_<type>: past it the next create is EINVAL, as rxe's pools. */
  max(dev: SoftDevice): number;
  /** What one costs its user's object quota (the rdma cgroup's hca_object). */
  charge: number;
  /** Whether it gets a restrack id of its own (pdn, cqn, mrn: per device, from 0); a QP has its QPN. */
  resId: boolean;
  /**
   * The types whose objects it holds (counted in their users): it comes before them in the table, so teardown
   * releases it first. Names, checked as the module loads: the table's type cannot name its own keys here.
   */
  holds: readonly string[];
  /** The objects it holds, so that a refused destroy can name who still uses an object. */
  held?(obj: O): readonly object[];
  /** Gives back what it holds and what it was charged; its destroy command and the context's teardown both call it. */
  release(ctx: Context, obj: O): void;
  /** Its own fields in its restrack row (`rdma resource show`), after those every row has. */
  track?(ctx: Context, obj: O, resId: number | undefined): Record<string, unknown>;
}

const row = <O>(t: ObjectType<O>): ObjectType<O> => t;

/** Rows in teardown order: each type before the types it holds (checked when the module loads). */
export const OBJECT_TYPES = {
  mw: row<Mw>({
    // max_mw: the window key indices, as rxe's (524287)
    max: () => MW_INDEX.max - MW_INDEX.min,
    charge: 1,
    resId: false,
    // (a type 2 window bound through a QP names it, but does not keep it: a destroyed QP's windows serve no one)
    holds: ['mr', 'pd'],
    held: (mw) => (mw.mr ? [mw.pd, mw.mr] : [mw.pd]),
    release(ctx, mw) {
      deallocMw(mw);
      ctx.dev.mws.delete(mw.rkey >>> 8);
      mw.pd.users--;
    },
  }),
  qp: row<Qp>({
    // max_qp: the QPNs the device hands out (those below 17 are reserved, as rxe's)
    max: (dev) => dev.maxQpn - 16,
    charge: 1,
    resId: false,
    holds: ['pd', 'cq', 'srq'],
    held: (qp) => (qp.srq ? [qp.pd, qp.sendCq, qp.recvCq, qp.srq] : [qp.pd, qp.sendCq, qp.recvCq]),
    release(ctx, qp) {
      qp.destroyed = true;
      qp.stopTimers();
      detachAll(ctx, qp);
      // what its engines placed in the client's memory and still hold lands now, while the client's memory
      // descriptor is open (it closes with the context)
      qp.staging?.release();
      qp.state = QpState.RESET;
      ctx.dev.qps.delete(qp.qpn);
      qp.pd.users--;
      qp.sendCq.users--;
      qp.recvCq.users--;
      if (qp.srq) qp.srq.users--;
      ctx.unmapClient(qp.mapping);
      ctx.host.quotas.release(ctx.uid, 'memory', qp.chargedBytes);
    },
    track: (ctx, qp) => ({
      lqpn: qp.qpn, rqpn: qp.attr.destQpn, qpType: qp.type, state: qp.state, sqPsn: qp.req.psn, rqPsn: qp.resp.psn,
      pathMigState: qp.attr.pathMigState, pdn: ctx.dev.resIds.get(qp.pd),
    }),
  }),
  srq: row<Srq>({
    max: () => 65536,
    charge: 1,
    resId: true,
    holds: ['pd'],
    held: (srq) => [srq.pd],
    release(ctx, srq) {
      srq.pd.users--;
      ctx.dev.srqs.delete(srq.srqn);
      ctx.unmapClient(srq.mapping);
    },
    track: (ctx, srq, id) => ({
      srqn: id, srqType: 0, pdn: ctx.dev.resIds.get(srq.pd),
      lqpns: [...ctx.dev.qps.values()].filter((q) => q.srq === srq).map((q) => q.qpn).sort((a, b) => a - b),
    }),
  }),
  cq: row<Cq>({
    max: () => 65536,
    charge: 1,
    resId: true,
    holds: ['comp_channel'],
    held: (cq) => (cq.channel ? [cq.channel] : []),
    release(ctx, cq) {
      const ch = cq.channel instanceof CompChannel ? cq.channel : null;
      if (ch && --ch.users === 0 && ch.closed) ctx.removeChannel(ch);
      cq.errored = true;
      cq.destroyed = true;
      ctx.unmapClient(cq.mapping);
    },
    track: (_ctx, cq, id) => ({ cqn: id, cqe: cq.cqe, users: cq.users }),
  }),
  ah: row<Ah>({
    max: () => 32766,
    charge: 1,
    resId: true,
    holds: ['pd'],
    held: (ah) => [ah.pd],
    release(_ctx, ah) {
      ah.pd.users--;
    },
  }),
  mr: row<Mr>({
    max: () => 65536,
    charge: 1,
    resId: true,
    holds: ['pd'],
    held: (mr) => [mr.pd],
    release(ctx, mr) {
      mr.valid = false;
      // bytes placed for it and still held land before the client may unmap or reuse its memory
      if (mr.mem.view === null) settleMemory(mr.mem);
      ctx.dev.mrs.delete(mr.key >>> 8);
      mr.pd.users--;
      if (mr.mapping) ctx.unmapClient(mr.mapping);
      ctx.host.pinned.release(ctx.pid, mr.pages);
    },
    track: (ctx, mr, id) => ({
      mrn: id, lkey: mr.key, rkey: mr.rkey, iova: String(mr.iova), mrlen: mr.length, pages: mr.pages, pdn: ctx.dev.resIds.get(mr.pd),
    }),
  }),
  pd: row<Pd>({
    max: () => 65536,
    charge: 1,
    resId: true,
    holds: [],
    release() {},
    track: (_ctx, pd, id) => ({ pdn: id, users: pd.users }),
  }),
  comp_channel: row<CompChannel>({
    // a channel is an fd, not an HCA object: the device does not limit them
    max: () => Infinity,
    charge: 1,
    resId: true,
    holds: [],
    release(ctx, ch) {
      ctx.host.dropToken(ch.token);
      ch.sock?.destroy();
    },
  }),
};

type Table = typeof OBJECT_TYPES;
export type ObjType = keyof Table;
export type ObjOf<T extends ObjType> = Table[T] extends ObjectType<infer O> ? O : never;
/** A handle's entry in a context's table: its type and its object. */
export type Entry = { [T in ObjType]: { type: T; obj: ObjOf<T> } }[ObjType];

/** Every object type, in the table's order: the teardown order. */
export const OBJ_TYPES = Object.keys(OBJECT_TYPES) as ObjType[];

for (const [i, t] of OBJ_TYPES.entries())
  for (const h of OBJECT_TYPES[t].holds) {
    const at = OBJ_TYPES.indexOf(h as ObjType);
    if (at <= i) throw new ErrnoError('EINVAL', `object table: ${t} holds ${h}, which ${at < 0 ? 'has no row' : 'must come after it'}`);
  }

/** An entry's row, typed for its object (TypeScript does not tie e.obj's type to e.type through the lookup). */
export function rowOf(e: Entry): ObjectType<Entry['obj']> {
  return OBJECT_TYPES[e.type] as ObjectType<Entry['obj']>;
}

/** The device limit on objects of `type` (QUERY_DEVICE's max_<type>). */
export function deviceMax(dev: SoftDevice, type: ObjType): number {
  return OBJECT_TYPES[type].max(dev);
}
