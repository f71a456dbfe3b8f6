/**
 * The new post-send API (struct ibv_qp_ex, ibv_wr_start … ibv_wr_complete) as a typed builder: `qp.wr.start()`,
 * one operation call per work request (its wrId and flags as they are when it is called, as qp_ex->wr_id and
 * wr_flags), the data setters after it, then `complete()` posts the batch with one doorbell or `abort()` drops it.
 * Each call returns the builder, so a batch reads as a chain. Built on the ordinary post path: the same WQEs,
 * checked the same way; a batch that fails anywhere posts nothing (librxe's wr_complete moves its producer index
 * only when every WQE of it was written).
 */
import { QpExSendOps as Ops, SendFlags, WrOpcode } from '../abi/enums.js';
import type { AddressHandle } from './ah.js';
import type { MemoryWindow, MwBindInfo } from './mw.js';
import { VerbsError } from './errors.js';
import type { QueuePair } from './qp.js';
import type { SendWr, Sge } from './types.js';

export class WrBuilder {
  /** the wr_id the next operation call takes (qp_ex->wr_id) */
  wrId: bigint | number = 0n;
  /** the send flags the next operation call takes (qp_ex->wr_flags: SendFlags bits) */
  wrFlags: number = 0;
  private batch: SendWr[] | null = null;

  /** @internal */
  constructor(private readonly qp: QueuePair, /** the operations this QP was created with (its sendOpsFlags) */ readonly ops: number) {}

  /** ibv_wr_start: a new batch (one already open is dropped, as its WQEs were never published). */
  start(): this {
    this.batch = [];
    return this;
  }

  /** ibv_wr_complete: posts the batch and rings once. Throws (ENOSPC for a full queue, EINVAL for a malformed WR) and posts none. */
  complete(): void {
    const b = this.open('ibv_wr_complete');
    this.batch = null;
    this.qp.postAll('ibv_wr_complete', b);
  }

  /** ibv_wr_abort: drops the batch. */
  abort(): void {
    this.open('ibv_wr_abort');
    this.batch = null;
  }

  /** WRs built in the open batch so far. */
  get pending(): number {
    return this.batch?.length ?? 0;
  }

  send(): this {
    return this.op('ibv_wr_send', Ops.SEND, { opcode: WrOpcode.SEND });
  }

  sendImm(imm: number): this {
    return this.op('ibv_wr_send_imm', Ops.SEND_WITH_IMM, { opcode: WrOpcode.SEND_WITH_IMM, imm });
  }

  rdmaWrite(rkey: number, remoteAddr: bigint | number): this {
    return this.op('ibv_wr_rdma_write', Ops.RDMA_WRITE, { opcode: WrOpcode.RDMA_WRITE, rdma: { rkey, remoteAddr } });
  }

  rdmaWriteImm(rkey: number, remoteAddr: bigint | number, imm: number): this {
    return this.op('ibv_wr_rdma_write_imm', Ops.RDMA_WRITE_WITH_IMM, { opcode: WrOpcode.RDMA_WRITE_WITH_IMM, rdma: { rkey, remoteAddr }, imm });
  }

  rdmaRead(rkey: number, remoteAddr: bigint | number): this {
    return this.op('ibv_wr_rdma_read', Ops.RDMA_READ, { opcode: WrOpcode.RDMA_READ, rdma: { rkey, remoteAddr } });
  }

  atomicCmpSwp(rkey: number, remoteAddr: bigint | number, compare: bigint | number, swap: bigint | number): this {
    return this.op('ibv_wr_atomic_cmp_swp', Ops.ATOMIC_CMP_AND_SWP, { opcode: WrOpcode.ATOMIC_CMP_AND_SWP, atomic: { rkey, remoteAddr, compareAdd: compare, swap } });
  }

  atomicFetchAdd(rkey: number, remoteAddr: bigint | number, add: bigint | number): this {
    return this.op('ibv_wr_atomic_fetch_add', Ops.ATOMIC_FETCH_AND_ADD, { opcode: WrOpcode.ATOMIC_FETCH_AND_ADD, atomic: { rkey, remoteAddr, compareAdd: add } });
  }

  /** ibv_wr_atomic_write: the 8 bytes (or a u64, little-endian) at remoteAddr, written as one; it takes no SGE. */
  atomicWrite(rkey: number, remoteAddr: bigint | number, value: Uint8Array | bigint): this {
    return this.op('ibv_wr_atomic_write', Ops.ATOMIC_WRITE, { opcode: WrOpcode.ATOMIC_WRITE, atomicWrite: { rkey, remoteAddr, value } });
  }

  /** ibv_wr_bind_mw: binds a type 2 window (as qp.postSend's BIND_MW with wr.bindMw); no data setter follows. */
  bindMw(mw: MemoryWindow, rkey: number, bindInfo: MwBindInfo): this {
    return this.op('ibv_wr_bind_mw', Ops.BIND_MW, { opcode: WrOpcode.BIND_MW, bindMw: { mw, rkey, bindInfo } });
  }

  /** ibv_wr_local_inv: invalidates a type 2 window of this QP's PD; no data setter follows. */
  localInv(invalidateRkey: number): this {
    return this.op('ibv_wr_local_inv', Ops.LOCAL_INV, { opcode: WrOpcode.LOCAL_INV, invalidateRkey });
  }

  /** ibv_wr_send_inv: a SEND whose last packet's IETH invalidates the peer's `invalidateRkey`. */
  sendInv(invalidateRkey: number): this {
    return this.op('ibv_wr_send_inv', Ops.SEND_WITH_INV, { opcode: WrOpcode.SEND_WITH_INV, invalidateRkey });
  }

  /** ibv_wr_set_ud_addr (UD): where the last operation goes. */
  setUdAddr(ah: AddressHandle, remoteQpn: number, remoteQkey: number): this {
    this.last('ibv_wr_set_ud_addr').ud = { ah, remoteQpn, remoteQkey };
    return this;
  }

  /** ibv_wr_set_sge: the last operation's one SGE. */
  setSge(lkey: number, addr: bigint | number, length: number): this {
    return this.setSgeList([{ lkey, addr, length }]);
  }

  /** ibv_wr_set_sge_list */
  setSgeList(sges: Sge[]): this {
    const w = this.last('ibv_wr_set_sge_list');
    w.sgList = sges;
    w.sendFlags = (w.sendFlags ?? 0) & ~SendFlags.INLINE;
    return this;
  }

  /** ibv_wr_set_inline_data: the bytes at addr (memory from allocBuffer or an MR) copied into the WQE now. */
  setInlineData(addr: bigint | number, length: number): this {
    return this.setInlineDataList([{ addr, length }]);
  }

  /** ibv_wr_set_inline_data_list */
  setInlineDataList(bufs: Array<{ addr: bigint | number; length: number }>): this {
    const w = this.last('ibv_wr_set_inline_data_list');
    w.sgList = bufs.map((b) => ({ addr: b.addr, length: b.length, lkey: 0 }));
    w.sendFlags = (w.sendFlags ?? 0) | SendFlags.INLINE;
    return this;
  }

  private open(verb: string): SendWr[] {
    if (!this.batch) throw new VerbsError(verb, 'EINVAL', 'no batch open: call start() first');
    return this.batch;
  }

  private op(verb: string, bit: number, wr: SendWr): this {
    const b = this.open(verb);
    // librxe leaves an operation the QP was not created with unset (a NULL pointer in C): refused here
    if (!(this.ops & bit)) throw new VerbsError(verb, 'EOPNOTSUPP', `the QP was not created with this operation in its sendOpsFlags (0x${this.ops.toString(16)})`);
    wr.wrId = this.wrId;
    wr.sendFlags = this.wrFlags;
    b.push(wr);
    return this;
  }

  private last(verb: string): SendWr {
    const b = this.open(verb);
    const w = b[b.length - 1];
    if (!w) throw new VerbsError(verb, 'EINVAL', 'no work request to set: call an operation (send(), rdmaWrite(), …) first');
    return w;
  }
}
