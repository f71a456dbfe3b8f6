/** A memory window (struct ibv_mw): an rkey for part of an MR, granted and taken back through a QP. */
import { MwType, type Access } from '../abi/enums.js';
import * as U from '../abi/uverbs.js';
import type { MemoryRegion } from './mr.js';
import type { ProtectionDomain } from './pd.js';
import type { QueuePair } from './qp.js';

/** struct ibv_mw_bind_info: the window covers [addr, addr+length) of `mr` (length 0: a type 1 window unbound) with `mwAccessFlags`. */
export interface MwBindInfo {
  mr: MemoryRegion;
  addr: bigint | number;
  length: bigint | number;
  mwAccessFlags: Access;
}

/** struct ibv_mw_bind: ibv_bind_mw's work request. */
export interface MwBind {
  wrId?: bigint | number;
  sendFlags?: number;
  bindInfo: MwBindInfo;
}

/** ibv_inc_rkey: the rkey with its key byte (the low 8 bits) moved on, the one a (re)bind gives the window. */
export function incRkey(rkey: number): number {
  return ((rkey & 0xffffff00) | ((rkey + 1) & 0xff)) >>> 0;
}

export class MemoryWindow {
  private released = false;
  /** @internal */
  constructor(
    readonly pd: ProtectionDomain,
    /** @internal */ readonly handle: number,
    readonly type: MwType,
    /** the rkey as of the last bind through `bind` / `qp.bindMw` (a type 2 window's owner tracks the rkeys it binds with) */
    public rkey: number,
  ) {}

  /** @internal */
  get label(): string {
    return `MW rkey 0x${this.rkey.toString(16)}`;
  }

  /** ibv_bind_mw through `qp` (type 1 only): the window's new rkey, which it has once the bind's completion says SUCCESS. */
  bind(qp: QueuePair, bind: MwBind): number {
    return qp.bindMw(this, bind);
  }

  /** ibv_dealloc_mw: its rkey names nothing from now on, bound or not. Once the daemon is gone it only releases the window here. */
  async dealloc(): Promise<void> {
    if (this.released) return;
    await this.pd.context.release('ibv_dealloc_mw', U.Spec.DEALLOC_MW, { mw_handle: this.handle });
    this.released = true;
    this.pd.dependents.delete(this);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dealloc();
  }
}

export { MwType };
