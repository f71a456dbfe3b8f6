/** The memory region's and window's commands: REG_MR, REREG_MR, DEREG_MR, ALLOC_MW, DEALLOC_MW. */
import { Access, ReregMrFlags } from '../../abi/enums.js';
import { pack } from '../../abi/layout.js';
import { Limits } from '../../abi/queue.js';
import * as U from '../../abi/uverbs.js';
import { E, fail } from '../../common/errno.js';
import { Mr, Mw } from '../../hca/objects.js';
import { settleMemory } from '../../hca/staging.js';
import type { Context } from '../context.js';
import { pagesSpanned } from '../memlock.js';
import type { MrPages } from '../providers/provider.js';
import type { Commands } from './command.js';

function checkAccess(access: number): void {
  const known = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC | Access.MW_BIND | Access.RELAXED_ORDERING;
  if (access & Access.ON_DEMAND) fail(E.EOPNOTSUPP, 'ON_DEMAND access is not supported');
  if (access & ~known) fail(E.EINVAL, `access flags 0x${access.toString(16)} have unsupported bits`);
  if (access & (Access.REMOTE_WRITE | Access.REMOTE_ATOMIC) && !(access & Access.LOCAL_WRITE))
    fail(E.EINVAL, 'REMOTE_WRITE / REMOTE_ATOMIC need LOCAL_WRITE');
}

/** Reaches and accounts [start, start+length) of the client's memory, as its provider says: all or nothing. */
function pin(ctx: Context, start: bigint, length: bigint, hcaVa: bigint, access: number, u: U.Udata<'REG_MR'> | null): MrPages {
  if (length === 0n) fail(E.EINVAL, 'zero-length MR');
  if (start + length > 0xffffffffffffffffn || hcaVa + length > 0xffffffffffffffffn) fail(E.EINVAL, 'addr + length overflows');
  if (length > BigInt(Limits.maxMrSize)) fail(E.EINVAL, `length ${length} is over max_mr_size`);
  if ((start & 0xfffn) !== (hcaVa & 0xfffn)) fail(E.EINVAL, 'start and hca_va differ within the page');
  if (hcaVa + length > 1n << 53n) fail(E.EINVAL, 'hca_va beyond 2^53 is not supported');
  const pages = pagesSpanned(start, length);
  if (!ctx.host.pinned.charge(ctx.pid, ctx.uid, pages)) {
    const msg = `pinning ${pages} pages passes RLIMIT_MEMLOCK of pid ${ctx.pid}`;
    ctx.host.limitHit(ctx.uid, 'RLIMIT_MEMLOCK', msg);
    fail(E.ENOMEM, msg);
  }
  try {
    return { ...ctx.provider.mr(ctx, start, length, access, u), pages };
  } catch (e) {
    ctx.host.pinned.release(ctx.pid, pages);
    throw e;
  }
}

function regMr(ctx: Context, r: U.Req<'REG_MR'>, u: U.Udata<'REG_MR'> | null): Buffer {
  const pd = ctx.get('pd', r.pd_handle);
  const access = r.access_flags;
  checkAccess(access);
  ctx.admit('mr');
  const key = ctx.dev.allocMrKey();
  if (key < 0) fail(E.ENOMEM, 'no MR keys left');
  const p = pin(ctx, r.start, r.length, r.hca_va, access, u);
  const mr = new Mr(pd, key, access, Number(r.hca_va), Number(r.length), p.mem, p.mapping, p.pages);
  ctx.dev.mrs.set(key >>> 8, mr);
  pd.users++;
  const h = ctx.add({ type: 'mr', obj: mr });
  return pack(U.REG_MR_RESP, { mr_handle: h, lkey: key, rkey: mr.rkey });
}

function reregMr(ctx: Context, r: U.Req<'REREG_MR'>, u: U.Udata<'REREG_MR'> | null): Buffer {
  const mr = ctx.get('mr', r.mr_handle);
  const flags = r.flags;
  if (!flags || flags & ~(ReregMrFlags.CHANGE_TRANSLATION | ReregMrFlags.CHANGE_PD | ReregMrFlags.CHANGE_ACCESS))
    fail(E.EINVAL, `REREG_MR: flags 0x${flags.toString(16)}`);
  // a window names the MR's IOVA range and PD as they were when it was bound: neither changes under it
  if (mr.numMw > 0) fail(E.EINVAL, `REREG_MR: memory windows are bound to MR lkey ${mr.key}: invalidate or deallocate them first`);
  const newPd = flags & ReregMrFlags.CHANGE_PD ? ctx.get('pd', r.pd_handle) : mr.pd;
  const access = flags & ReregMrFlags.CHANGE_ACCESS ? r.access_flags : mr.access;
  checkAccess(access);
  let p: MrPages | null = null;
  if (flags & ReregMrFlags.CHANGE_TRANSLATION) p = pin(ctx, r.start, r.length, r.hca_va, access, u);
  // everything checked: now change the MR (a new key, so old keys stop working, as the kernel does)
  const key = ctx.dev.allocMrKey();
  ctx.dev.mrs.delete(mr.key >>> 8);
  // bytes placed for it under the old translation and key, and still held, land now (staging.ts)
  if (mr.mem.view === null) settleMemory(mr.mem);
  if (p) {
    if (mr.mapping) ctx.unmapClient(mr.mapping);
    ctx.host.pinned.release(ctx.pid, mr.pages);
    mr.mapping = p.mapping;
    mr.mem = p.mem;
    mr.pages = p.pages;
    mr.iova = Number(r.hca_va);
    mr.length = Number(r.length);
  }
  if (newPd !== mr.pd) {
    mr.pd.users--;
    newPd.users++;
    mr.pd = newPd;
  }
  mr.access = access;
  mr.key = key;
  ctx.dev.mrs.set(key >>> 8, mr);
  return pack(U.REREG_MR_RESP, { lkey: key, rkey: mr.rkey });
}

function deregMr(ctx: Context, r: U.Req<'DEREG_MR'>): void {
  const mr = ctx.get('mr', r.mr_handle);
  // rxe_dereg_mr: not while windows are bound to it
  if (mr.numMw > 0) fail(E.EINVAL, `DEREG_MR: ${mr.numMw} memory window${mr.numMw > 1 ? 's are' : ' is'} bound to MR lkey ${mr.key}: invalidate or deallocate ${mr.numMw > 1 ? 'them' : 'it'} first`);
  ctx.destroy(r.mr_handle);
}

/** ALLOC_MW (rxe_alloc_mw): a window of type 1 (VALID, bound by ibv_bind_mw) or 2 (FREE until a BIND_MW WR). */
function allocMw(ctx: Context, r: U.Req<'ALLOC_MW'>): Buffer {
  const pd = ctx.get('pd', r.pd_handle);
  if (r.mw_type !== 1 && r.mw_type !== 2) fail(E.EINVAL, `ALLOC_MW: mw_type ${r.mw_type} is neither IBV_MW_TYPE_1 (1) nor IBV_MW_TYPE_2 (2)`);
  ctx.admit('mw');
  const key = ctx.dev.allocMwKey();
  if (key < 0) fail(E.ENOMEM, 'no MW keys left');
  const mw = new Mw(pd, r.mw_type, key);
  ctx.dev.mws.set(key >>> 8, mw);
  pd.users++;
  return pack(U.ALLOC_MW_RESP, { mw_handle: ctx.add({ type: 'mw', obj: mw }), rkey: key });
}

function deallocMw(ctx: Context, r: U.Req<'DEALLOC_MW'>): void {
  ctx.get('mw', r.mw_handle);
  ctx.destroy(r.mw_handle);
}

export const mrCommands: Commands = {
  REG_MR: (ctx, r, u) => regMr(ctx, r, u),
  REREG_MR: (ctx, r, u) => reregMr(ctx, r, u),
  DEREG_MR: (ctx, r) => deregMr(ctx, r),
  ALLOC_MW: (ctx, r) => allocMw(ctx, r),
  DEALLOC_MW: (ctx, r) => deallocMw(ctx, r),
};
