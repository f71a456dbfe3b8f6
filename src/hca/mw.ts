/**
 * Memory windows and invalidation as the engines meet them (rxe_mw.c, and rxe_invalidate_mr's part): a
 * BIND_MW work request, a LOCAL_INV or a SEND_WITH_INV's IETH naming a key, and an rkey in a request that
 * names a window instead of an MR. Whichever layout the WQE came from, these see the same record
 * (SendWqeFields), so the softverbs ring, rxe's ring and the ibv_wr_* builders share one set of rules.
 */
import { Access } from '../abi/enums.js';
import type { SendWqeFields } from '../abi/wqe.js';
import { MwState, type Mr, type Mw, type Pd } from './objects.js';

/**
 * Key indices (a key's upper 24 bits) as Linux rxe 6.1 splits them: MRs below, windows above, each as many as
 * its max_mr / max_mw (524287). rxe's rkey_is_mw() is isMwKey.
 */
export const MR_INDEX = { min: 0x00001, max: 0x80000 } as const;
export const MW_INDEX = { min: 0x80001, max: 0x100000 } as const;
export const isMwKey = (key: number): boolean => key >>> 8 >= MW_INDEX.min && key >>> 8 <= MW_INDEX.max;

/** What the checks here need of a QP (the engines' Qp is one). */
export interface MwQp {
  readonly pd: Pd;
  readonly dev: { lookupMr(key: number): Mr | null; lookupMw(rkey: number): Mw | null };
}

/** The access bits a window may grant (rxe's RXE_ACCESS_SUPPORTED_MW): remote ones, ZERO_BASED and LOCAL_WRITE. */
const MW_ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC | Access.ZERO_BASED;
const REMOTE = Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC;

/**
 * Executes a BIND_MW WQE (rxe_bind_mw with rxe_check_bind_mw's rules). Returns null when done, or why the bind
 * is refused (its completion is then MW_BIND_ERR and the QP goes to ERR).
 */
export function bindMw(qp: MwQp, w: SendWqeFields): string | null {
  const mw = qp.dev.lookupMw(w.mwRkey);
  if (!mw || mw.state === MwState.INVALID) return `no memory window has rkey 0x${hex(w.mwRkey)}`;
  if (mw.pd !== qp.pd) return 'the window is in another PD than the QP';
  const len = w.bindLength;
  let mr: Mr | null = null;
  if (len !== 0) {
    mr = qp.dev.lookupMr(w.mrLkey);
    if (!mr) return `no MR has lkey 0x${hex(w.mrLkey)}`;
  }
  const access = w.bindAccess;
  if (access & ~MW_ACCESS) return `access 0x${hex(access)} has bits a window cannot grant`;
  if (mw.type === 1) {
    if (mw.state !== MwState.VALID) return 'a type 1 window not in the valid state';
    // o10-36.2.2
    if (access & Access.ZERO_BASED) return 'a type 1 window cannot be zero based';
  } else {
    // o10-37.2.30: a type 2 window is bound once, then invalidated before it is bound again
    if (mw.state !== MwState.FREE) return 'a type 2 window that is bound (invalidate it first)';
    // o10-37.2.40: a zero-length bind would be an invalidation, which type 2 has verbs of its own for
    if (!mr) return 'a type 2 window bound to no MR or zero bytes';
  }
  if (mr) {
    // C10-72 and the MR's: the three in one PD
    if (mr.pd !== qp.pd) return 'the MR is in another PD than the QP';
    if (mr.access & Access.ZERO_BASED) return 'the MR is zero based';
    // C10-73
    if (!(mr.access & Access.MW_BIND)) return 'the MR was registered without MW_BIND';
    // C10-74
    if (access & (Access.REMOTE_WRITE | Access.REMOTE_ATOMIC) && !(mr.access & Access.LOCAL_WRITE)) return 'a writable window on an MR without LOCAL_WRITE';
    // C10-75
    if (access & Access.ZERO_BASED ? !(len <= mr.length) : !mr.contains(w.bindAddr, len)) return 'the window is not inside the MR';
  }
  mw.rkey = ((mw.rkey & ~0xff) | (w.bindRkey & 0xff)) >>> 0;
  mw.access = access;
  mw.state = MwState.VALID;
  // (zero based: where the window's offset 0 is in the MR)
  mw.addr = w.bindAddr;
  mw.length = len;
  unbindMr(mw);
  if (mr) {
    mw.mr = mr;
    mr.numMw++;
  }
  if (mw.type === 2) mw.qp = qp;
  return null;
}

/** The window lets go of its MR. */
function unbindMr(mw: Mw): void {
  if (mw.mr) mw.mr.numMw--;
  mw.mr = null;
}

/**
 * Invalidates `rkey` for a LOCAL_INV (remote: false) or a SEND_WITH_INV's IETH (remote: true) arriving on qp.
 * Returns null when done, or why not. A window must be a bound type 2 one in the QP's PD, and one that came
 * with a SEND_WITH_INV must have been bound through this QP. An MR key is refused as rxe refuses it for every
 * MR userspace can register (only an IB_MR_TYPE_MEM_REG MR, which kernel ULPs fast-register, is invalidated).
 */
export function invalidateRkey(qp: MwQp & object, rkey: number, remote: boolean): string | null {
  if (!isMwKey(rkey)) {
    const mr = qp.dev.lookupMr(rkey);
    if (!mr) return `no MR or window has key 0x${hex(rkey)}`;
    if (mr.numMw > 0) return 'the MR has windows bound to it';
    return 'a registered MR is not invalidated (only fast-registered ones are)';
  }
  const mw = qp.dev.lookupMw(rkey);
  if (!mw || mw.state !== MwState.VALID) return `no bound window has rkey 0x${hex(rkey)}`;
  // o10-37.2.26
  if (mw.type === 1) return 'a type 1 window is invalidated by binding it with zero length';
  if (mw.pd !== qp.pd) return 'the window is in another PD than the QP';
  if (remote && mw.qp !== qp) return 'the window was bound through another QP';
  freeMw(mw);
  return null;
}

/** A type 2 window invalidated: unbound, FREE, naming nothing. */
function freeMw(mw: Mw): void {
  unbindMr(mw);
  mw.qp = null;
  mw.access = mw.addr = mw.length = 0;
  mw.state = MwState.FREE;
}

/** DEALLOC_MW (rxe_mw_cleanup): whatever it was bound to is let go, and its rkey names nothing from now on. */
export function deallocMw(mw: Mw): void {
  unbindMr(mw);
  mw.qp = null;
  mw.access = mw.addr = mw.length = 0;
  mw.state = MwState.INVALID;
}

/**
 * The MR behind a window's rkey for a remote access of `need` to [va, va+len) (rxe_lookup_mw and check_rkey),
 * with the address in that MR's IOVA space in `rkeyVa.va` (a zero-based window's va counts from its start);
 * null if the window does not allow it. The access must lie inside the window, not just the MR under it.
 */
export function windowMr(qp: MwQp & object, rkey: number, va: number, len: number, need: number): Mr | null {
  const mw = qp.dev.lookupMw(rkey);
  if (!mw || mw.state !== MwState.VALID || mw.pd !== qp.pd || (mw.type === 2 && mw.qp !== qp) || mw.length === 0) return null;
  if ((mw.access & need) !== need || !(need & REMOTE)) return null;
  const mr = mw.mr;
  if (!mr || !mr.valid) return null;
  const at = mw.access & Access.ZERO_BASED ? mw.addr + va : va;
  if (!(va >= 0 && len >= 0 && at >= mw.addr && at + len <= mw.addr + mw.length) || !mr.contains(at, len)) return null;
  rkeyVa.va = at;
  return mr;
}

/** windowMr's translated address (one object, reused: no allocation per request). */
export const rkeyVa = { va: 0 };

const hex = (n: number): string => (n >>> 0).toString(16);
