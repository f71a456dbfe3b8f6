/**
 * ATTACH_MCAST and DETACH_MCAST (ib_uverbs_attach_mcast / ib_uverbs_detach_mcast with ib_attach_mcast's checks):
 * each QP keeps the (GID, LID) pairs it was attached with, as uverbs' mcast_list, so a second attach of the same
 * pair is answered 0 without the device, a detach of a pair never attached is EINVAL, and DESTROY_QP is EBUSY
 * while the list is not empty; the device's group table (hca/mcast.ts) does the rest.
 */
import { QpType } from '../../abi/enums.js';
import * as U from '../../abi/uverbs.js';
import { E, fail } from '../../common/errno.js';
import { gidToAddr, sameGid } from '../../hca/gid.js';
import { isMcastGid } from '../../hca/mcast.js';
import type { Qp } from '../../hca/qp.js';
import type { Context } from '../context.js';
import type { Commands } from './command.js';

/** The QP's attachments as its commands made them (uverbs' ib_uqp_object.mcast_list). */
export interface McastAttachment {
  gid: Uint8Array;
  lid: number;
}

const lists = new WeakMap<Qp, McastAttachment[]>();

/** The attachments of a QP (empty when it has none). */
export function attachmentsOf(qp: Qp): readonly McastAttachment[] {
  return lists.get(qp) ?? [];
}

/** ib_attach_mcast's checks: a multicast GID, a UD QP (the LID is not looked at on RoCE). */
function check(cmd: string, qp: Qp, gid: Uint8Array): void {
  if (!isMcastGid(gid)) fail(E.EINVAL, `${cmd}: ${gidToAddr(gid)} is not a multicast GID (ff00::/8 or ::ffff:224.0.0.0/100)`);
  if (qp.type !== QpType.UD) fail(E.EINVAL, `${cmd}: QP ${qp.qpn} is not a UD QP`);
}

function attach(ctx: Context, r: U.Req<'ATTACH_MCAST'>): void {
  const qp = ctx.get('qp', r.qp_handle);
  const list = lists.get(qp) ?? [];
  if (list.some((a) => a.lid === r.mlid && sameGid(a.gid, r.gid))) return;
  check('ATTACH_MCAST', qp, r.gid);
  ctx.dev.mcast.attach(qp, r.gid);
  list.push({ gid: r.gid.slice(), lid: r.mlid });
  lists.set(qp, list);
}

function detach(ctx: Context, r: U.Req<'DETACH_MCAST'>): void {
  const qp = ctx.get('qp', r.qp_handle);
  const list = lists.get(qp) ?? [];
  const at = list.findIndex((a) => a.lid === r.mlid && sameGid(a.gid, r.gid));
  if (at < 0) fail(E.EINVAL, `DETACH_MCAST: QP handle ${r.qp_handle} is not attached to ${gidToAddr(r.gid)} with LID 0x${r.mlid.toString(16)}`);
  list.splice(at, 1);
  check('DETACH_MCAST', qp, r.gid);
  // the device knows GIDs only: as on Linux, detaching one of two LIDs of a GID takes the QP out of the group,
  // and detaching the other then finds no group (EINVAL)
  ctx.dev.mcast.detach(qp, r.gid);
}

/** The QP goes without its destroy command (its context closes): its attachments go with it (ib_uverbs_detach_umcast). */
export function detachAll(ctx: Context, qp: Qp): void {
  const list = lists.get(qp);
  if (!list) return;
  lists.delete(qp);
  const seen: Uint8Array[] = [];
  for (const a of list) {
    if (seen.some((g) => sameGid(g, a.gid))) continue;
    seen.push(a.gid);
    try {
      ctx.dev.mcast.detach(qp, a.gid);
    } catch {
      /* not in the device's group: nothing to undo */
    }
  }
}

export const mcastCommands: Commands = {
  ATTACH_MCAST: (ctx, r) => attach(ctx, r),
  DETACH_MCAST: (ctx, r) => detach(ctx, r),
};
