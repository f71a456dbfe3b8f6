/** The protection domain's commands: ALLOC_PD, DEALLOC_PD. */
import { pack } from '../../abi/layout.js';
import * as U from '../../abi/uverbs.js';
import { Pd } from '../../hca/objects.js';
import type { Context } from '../context.js';
import type { Commands } from './command.js';

function allocPd(ctx: Context): Buffer {
  ctx.admit('pd');
  return pack(U.ALLOC_PD_RESP, { pd_handle: ctx.add({ type: 'pd', obj: new Pd(ctx) }) });
}

function deallocPd(ctx: Context, r: U.Req<'DEALLOC_PD'>): void {
  ctx.destroyUnused('DEALLOC_PD', 'pd', r.pd_handle);
}

export const pdCommands: Commands = {
  ALLOC_PD: (ctx) => allocPd(ctx),
  DEALLOC_PD: (ctx, r) => deallocPd(ctx, r),
};
