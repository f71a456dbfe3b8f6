/** A memory region (struct ibv_mr). */
import type { Access, ReregMrFlags } from '../abi/enums.js';
import * as U from '../abi/uverbs.js';
import { VerbsError } from './errors.js';
import { regionOf } from './memory.js';
import type { ProtectionDomain } from './pd.js';
import type { Sge } from './types.js';

/** `addr` is the MR's IOVA: SGEs and remote addresses are `mr.addr + offset`. */
export class MemoryRegion {
  private deregistered = false;
  /** @internal */
  constructor(
    public pd: ProtectionDomain,
    /** @internal */ readonly handle: number,
    public lkey: number,
    public rkey: number,
    public addr: bigint,
    /** the registered bytes */
    public buf: Buffer,
    public access: Access,
  ) {}
  get length(): number {
    return this.buf.byteLength;
  }
  /** An SGE covering [offset, offset+length) of this MR. */
  sge(offset = 0, length = this.length - offset): Sge {
    return { addr: this.addr + BigInt(offset), length, lkey: this.lkey };
  }
  /** What a peer needs to reach this MR with RDMA READ/WRITE/atomics, JSON-safe (the address as a decimal string). */
  remote(): { addr: string; rkey: number; length: number } {
    return { addr: this.addr.toString(), rkey: this.rkey, length: this.length };
  }
  /** @internal */
  get label(): string {
    return `MR lkey 0x${this.lkey.toString(16)}`;
  }
  /** The JSON form: JSON.stringify(mr) works (bigints as decimal strings). */
  toJSON(): { addr: string; length: number; lkey: number; rkey: number; access: number } {
    return { addr: this.addr.toString(), length: this.length, lkey: this.lkey, rkey: this.rkey, access: this.access };
  }
  /** ibv_rereg_mr (flags: ReregMrFlags). New keys come back, the old ones stop working. */
  async reregMr(flags: ReregMrFlags, opts: { pd?: ProtectionDomain; buf?: Uint8Array; access?: Access }): Promise<void> {
    let udata = { memfd_id: 0, memfd_offset: 0n };
    let start = 0n;
    let len = 0n;
    if (opts.buf) {
      const w = regionOf(opts.buf);
      if (!w) throw new VerbsError('ibv_rereg_mr', 'EINVAL', 'this Buffer is not shared memory');
      start = w.region.addr + BigInt(w.offset);
      len = BigInt(opts.buf.byteLength);
      udata = { memfd_id: await this.pd.context.putMemfd(w.region.fd, 'ibv_rereg_mr'), memfd_offset: BigInt(w.offset) };
    }
    const r = await this.pd.context.command('ibv_rereg_mr', U.Spec.REREG_MR, {
      mr_handle: this.handle, flags, start, length: len, hca_va: start, pd_handle: opts.pd?.handle ?? this.pd.handle, access_flags: opts.access ?? this.access,
    }, udata);
    this.lkey = r.lkey;
    this.rkey = r.rkey;
    if (opts.pd && opts.pd !== this.pd) {
      this.pd.dependents.delete(this);
      opts.pd.dependents.add(this);
      this.pd = opts.pd;
    }
    if (opts.access !== undefined) this.access = opts.access;
    if (opts.buf) {
      this.buf = Buffer.from(opts.buf.buffer, opts.buf.byteOffset, opts.buf.byteLength);
      this.addr = start;
    }
  }
  /** ibv_dereg_mr (once the daemon is gone: only here). The memory stays the caller's. */
  async deregMr(): Promise<void> {
    if (this.deregistered) return;
    await this.pd.context.release('ibv_dereg_mr', U.Spec.DEREG_MR, { mr_handle: this.handle });
    this.deregistered = true;
    this.pd.dependents.delete(this);
  }
  async [Symbol.asyncDispose](): Promise<void> {
    await this.deregMr();
  }
}
