/** The address handle's commands: CREATE_AH, DESTROY_AH. */
import { pack } from '../../abi/layout.js';
import * as U from '../../abi/uverbs.js';
import { E, fail } from '../../common/errno.js';
import { Ah } from '../../hca/objects.js';
import type { Context } from '../context.js';
import type { Commands } from './command.js';

function createAh(ctx: Context, r: U.Req<'CREATE_AH'>): Buffer {
  const pd = ctx.get('pd', r.pd_handle);
  const a = r.attr;
  const g = a.grh;
  if (a.port_num !== 1) fail(E.EINVAL, `CREATE_AH: port ${a.port_num} does not exist`);
  if (!a.is_global) fail(E.EINVAL, 'CREATE_AH: RoCE needs a GRH (is_global)');
  if (g.sgid_index >= ctx.dev.gids.length) fail(E.EINVAL, `CREATE_AH: sgid_index ${g.sgid_index} is not in the GID table`);
  ctx.admit('ah');
  const ah = new Ah(pd, g.dgid, g.sgid_index, true, g.hop_limit, g.traffic_class, g.flow_label);
  pd.users++;
  const h = ctx.add({ type: 'ah', obj: ah });
  return Buffer.concat([pack(U.CREATE_AH_RESP, { ah_handle: h }), ctx.provider.ahUdata(h)]);
}

function destroyAh(ctx: Context, r: U.Req<'DESTROY_AH'>): void {
  ctx.get('ah', r.ah_handle);
  ctx.destroy(r.ah_handle);
}

export const ahCommands: Commands = {
  CREATE_AH: (ctx, r) => createAh(ctx, r),
  DESTROY_AH: (ctx, r) => destroyAh(ctx, r),
};
