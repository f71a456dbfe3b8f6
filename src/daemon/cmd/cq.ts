/** The completion queue's commands, and the completion channel's it reports to: CREATE_COMP_CHANNEL, CREATE_CQ to REQ_NOTIFY_CQ. */
import { pack } from '../../abi/layout.js';
import { Limits } from '../../abi/queue.js';
import * as U from '../../abi/uverbs.js';
import { E, fail } from '../../common/errno.js';
import { Cq } from '../../hca/objects.js';
import type { Context } from '../context.js';
import { CompChannel } from '../events.js';
import type { Commands } from './command.js';

function createCompChannel(ctx: Context): Buffer {
  ctx.admit('comp_channel');
  const ch = new CompChannel(ctx, 0);
  const token = ctx.host.newToken('comp', ctx, ch);
  (ch as { token: number }).token = token;
  ctx.add({ type: 'comp_channel', obj: ch });
  return pack(U.CREATE_COMP_CHANNEL_RESP, { fd: token });
}

function channelByToken(ctx: Context, token: number): CompChannel {
  for (const e of ctx.handles.values()) if (e.type === 'comp_channel' && e.obj.token === token) return e.obj;
  return fail(E.EINVAL, `comp_channel ${token} is not a channel of this context`);
}

/** What CREATE_CQ and EX_CREATE_CQ have in common (the kernel's create_cq). */
export interface CqRequest {
  user_handle: bigint;
  cqe: number;
  comp_vector: number;
  comp_channel: number;
}

function createCq(ctx: Context, r: U.Req<'CREATE_CQ'>, u: U.Udata<'CREATE_CQ'> | null): Buffer {
  const made = newCq(ctx, r, u);
  return Buffer.concat([pack(U.CREATE_CQ_RESP, { cq_handle: made.handle, cqe: made.cqe }), made.udata]);
}

/** Makes the CQ a create command asks for: its handle, its real size, and the provider's response udata. */
export function newCq(ctx: Context, r: CqRequest, u: U.Udata<'CREATE_CQ'> | null): { handle: number; cqe: number; udata: Buffer } {
  const cqe = r.cqe;
  if (cqe < 1 || cqe > Limits.maxCqe) fail(E.EINVAL, `CREATE_CQ: cqe ${cqe} not in 1..${Limits.maxCqe}`);
  if (r.comp_vector !== 0) fail(E.EINVAL, `CREATE_CQ: comp_vector ${r.comp_vector} (the device has 1)`);
  const ch = r.comp_channel >= 0 ? channelByToken(ctx, r.comp_channel) : null;
  ctx.admit('cq');
  const q = ctx.provider.cq(ctx, cqe, u);
  const cq = new Cq(ctx, r.user_handle, q.mapping, q.ring!, q.cqe, ch);
  if (ch) ch.users++;
  return { handle: ctx.add({ type: 'cq', obj: cq }), cqe: q.cqe, udata: q.udata };
}

function resizeCq(ctx: Context, r: U.Req<'RESIZE_CQ'>, u: U.Udata<'RESIZE_CQ'> | null): Buffer {
  const cq = ctx.get('cq', r.cq_handle);
  const cqe = r.cqe;
  if (cqe < 1 || cqe > Limits.maxCqe) fail(E.EINVAL, `RESIZE_CQ: cqe ${cqe} not in 1..${Limits.maxCqe}`);
  const used = cq.ring.used();
  if (used > cqe) fail(E.EINVAL, `RESIZE_CQ: ${used} completions outstanding do not fit in ${cqe}`);
  const q = ctx.provider.resizeCq(ctx, cqe, u);
  const old = cq.mapping;
  cq.resize(q.mapping, q.slots, q.cqe);
  ctx.unmapClient(old);
  return Buffer.concat([pack(U.RESIZE_CQ_RESP, { cqe: q.cqe }), q.udata]);
}

function destroyCq(ctx: Context, r: U.Req<'DESTROY_CQ'>): Buffer {
  const cq = ctx.get('cq', r.cq_handle);
  ctx.destroyUnused('DESTROY_CQ', 'cq', r.cq_handle);
  return pack(U.DESTROY_CQ_RESP, { comp_events_reported: cq.compEvents, async_events_reported: cq.asyncEvents });
}

function reqNotifyCq(ctx: Context, r: U.Req<'REQ_NOTIFY_CQ'>): void {
  ctx.get('cq', r.cq_handle).arm(r.solicited_only !== 0);
}

export const cqCommands: Commands = {
  CREATE_COMP_CHANNEL: (ctx) => createCompChannel(ctx),
  CREATE_CQ: (ctx, r, u) => createCq(ctx, r, u),
  RESIZE_CQ: (ctx, r, u) => resizeCq(ctx, r, u),
  DESTROY_CQ: (ctx, r) => destroyCq(ctx, r),
  REQ_NOTIFY_CQ: (ctx, r) => reqNotifyCq(ctx, r),
};
