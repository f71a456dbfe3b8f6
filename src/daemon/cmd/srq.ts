/** The shared receive queue's commands: CREATE_SRQ, MODIFY_SRQ, QUERY_SRQ, DESTROY_SRQ. */
import { SrqAttrMask } from '../../abi/enums.js';
import { pack } from '../../abi/layout.js';
import * as U from '../../abi/uverbs.js';
import { E, fail } from '../../common/errno.js';
import { Srq } from '../../hca/objects.js';
import type { Context } from '../context.js';
import type { Commands } from './command.js';

function createSrq(ctx: Context, r: U.Req<'CREATE_SRQ'>, u: U.Udata<'CREATE_SRQ'> | null): Buffer {
  const pd = ctx.get('pd', r.pd_handle);
  const limit = r.srq_limit;
  if (limit > r.max_wr) fail(E.EINVAL, `CREATE_SRQ: srq_limit ${limit} > max_wr ${r.max_wr}`);
  ctx.admit('srq');
  const q = ctx.provider.srq(ctx, r.max_wr, r.max_sge, u);
  const srq = new Srq(ctx, r.user_handle, pd, q.mapping, q.ring, ctx.dev.allocSrqn());
  srq.limit = limit;
  pd.users++;
  ctx.dev.srqs.set(srq.srqn, srq);
  const h = ctx.add({ type: 'srq', obj: srq });
  return Buffer.concat([pack(U.CREATE_SRQ_RESP, { srq_handle: h, max_wr: q.maxWr, max_sge: q.maxSge, srqn: srq.srqn }), q.udata(srq.srqn)]);
}

function modifySrq(ctx: Context, r: U.Req<'MODIFY_SRQ'>): void {
  const srq = ctx.get('srq', r.srq_handle);
  const mask = r.attr_mask;
  if (mask & ~(SrqAttrMask.MAX_WR | SrqAttrMask.LIMIT)) fail(E.EINVAL, `MODIFY_SRQ: attr_mask 0x${mask.toString(16)}`);
  if (mask & SrqAttrMask.MAX_WR) fail(E.EOPNOTSUPP, 'MODIFY_SRQ: resizing an SRQ is not supported');
  if (mask & SrqAttrMask.LIMIT) {
    const limit = r.srq_limit;
    if (limit > srq.ring.slots) fail(E.EINVAL, `MODIFY_SRQ: srq_limit ${limit} > max_wr ${srq.ring.slots}`);
    // armed; the event fires when taking a WQE leaves fewer than `limit` (IBA 10.2.9.3), not now
    srq.limit = limit;
  }
}

function querySrq(ctx: Context, r: U.Req<'QUERY_SRQ'>): Buffer {
  const srq = ctx.get('srq', r.srq_handle);
  return pack(U.QUERY_SRQ_RESP, { max_wr: srq.ring.slots, max_sge: srq.ring.maxSge, srq_limit: srq.limit });
}

function destroySrq(ctx: Context, r: U.Req<'DESTROY_SRQ'>): Buffer {
  const srq = ctx.get('srq', r.srq_handle);
  ctx.destroyUnused('DESTROY_SRQ', 'srq', r.srq_handle);
  return pack(U.DESTROY_SRQ_RESP, { events_reported: srq.asyncEvents });
}

export const srqCommands: Commands = {
  CREATE_SRQ: (ctx, r, u) => createSrq(ctx, r, u),
  MODIFY_SRQ: (ctx, r) => modifySrq(ctx, r),
  QUERY_SRQ: (ctx, r) => querySrq(ctx, r),
  DESTROY_SRQ: (ctx, r) => destroySrq(ctx, r),
};
