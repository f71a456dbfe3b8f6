/** A protection domain (struct ibv_pd) and what is created on one: MRs, memory windows, AHs, QPs, SRQs. */
import { qpLayout, srqLayout, type QpCaps } from '../abi/queue.js';
import { MwType, QpCreateFlags, QpExSendOps as Ops, QpType, type Access } from '../abi/enums.js';
import { layout, unpack } from '../abi/layout.js';
import * as U from '../abi/uverbs.js';
import { AddressHandle } from './ah.js';
import type { Context } from './context.js';
import { VerbsError } from './errors.js';
import { Dependents } from './lifetime.js';
import { regionOf } from './memory.js';
import { MemoryRegion } from './mr.js';
import { MemoryWindow } from './mw.js';
import { QueuePair } from './qp.js';
import { withQueueMemory } from './queue-memory.js';
import { SharedReceiveQueue } from './srq.js';
import type { AhAttr, QpInitAttr, SrqAttr } from './types.js';

export class ProtectionDomain {
  /** @internal its MRs, AHs, QPs and SRQs */
  readonly dependents = new Dependents();
  private released = false;

  /** @internal */
  constructor(readonly context: Context, /** @internal */ readonly handle: number) {}

  /** @internal */
  get label(): string {
    return `PD ${this.handle}`;
  }

  /**
   * ibv_reg_mr. `buf` must be memory from `ctx.allocBuffer` / `pd.allocMr`:
   * the daemon maps the same pages, so a plain Buffer cannot be registered.
   */
  async regMr(buf: Uint8Array, access: Access): Promise<MemoryRegion> {
    const where = regionOf(buf);
    if (!where) throw new VerbsError('ibv_reg_mr', 'EINVAL', 'this Buffer is not shared memory: get one from ctx.allocBuffer() or use pd.allocMr()');
    if (buf.byteLength === 0) throw new VerbsError('ibv_reg_mr', 'EINVAL', 'zero-length buffer');
    const addr = where.region.addr + BigInt(where.offset);
    const id = await this.context.putMemfd(where.region.fd, 'ibv_reg_mr');
    const r = await this.context.command('ibv_reg_mr', U.Spec.REG_MR, { start: addr, length: BigInt(buf.byteLength), hca_va: addr, pd_handle: this.handle, access_flags: access }, { memfd_id: id, memfd_offset: BigInt(where.offset) });
    const mr = new MemoryRegion(this, r.mr_handle, r.lkey, r.rkey, addr, Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength), access);
    this.dependents.add(mr);
    return mr;
  }

  /** Allocates shared memory of `length` bytes and registers it. */
  async allocMr(length: number, access: Access): Promise<MemoryRegion> {
    return this.regMr(this.context.allocBuffer(length), access);
  }

  /**
   * ibv_alloc_mw: a window of type 1 (bound with `mw.bind` / `qp.bindMw`) or type 2 (bound by a BIND_MW work
   * request, invalidated by LOCAL_INV or a peer's SEND_WITH_INV). Another type is EINVAL, from the daemon as
   * from the kernel.
   */
  async allocMw(type: MwType): Promise<MemoryWindow> {
    const r = await this.context.command('ibv_alloc_mw', U.Spec.ALLOC_MW, { pd_handle: this.handle, mw_type: type });
    const mw = new MemoryWindow(this, r.mw_handle, type, r.rkey);
    this.dependents.add(mw);
    return mw;
  }

  /** ibv_create_ah */
  async createAh(attr: AhAttr): Promise<AddressHandle> {
    const g = attr.grh;
    const r = await this.context.command('ibv_create_ah', U.Spec.CREATE_AH, {
      pd_handle: this.handle,
      attr: {
        grh: { dgid: g.dgid, flow_label: g.flowLabel ?? 0, sgid_index: g.sgidIndex ?? 0, hop_limit: g.hopLimit ?? 64, traffic_class: g.trafficClass ?? 0 },
        dlid: attr.dlid ?? 0, sl: attr.sl ?? 0, src_path_bits: attr.srcPathBits ?? 0, static_rate: attr.staticRate ?? 0,
        is_global: attr.isGlobal === false ? 0 : 1, port_num: attr.portNum ?? 1,
      },
    });
    const ah = new AddressHandle(this, r.ah_handle);
    this.dependents.add(ah);
    return ah;
  }

  /**
   * ibv_create_ah_from_wc: an AH back to whoever sent a UD message, from the 40-byte GRH its receive buffer
   * starts with (RoCEv2: an IPv4 header in the last 20 bytes, or an IPv6 header filling all 40).
   */
  async createAhFromWc(grh: Uint8Array, portNum = 1): Promise<AddressHandle> {
    if (grh.length < 40) throw new VerbsError('ibv_create_ah_from_wc', 'EINVAL', 'the GRH is 40 bytes');
    const dgid = new Uint8Array(16);
    let trafficClass = 0;
    if (grh[20]! >> 4 === 4) {
      dgid[10] = dgid[11] = 0xff;
      dgid.set(grh.subarray(32, 36), 12);
      trafficClass = grh[21]!;
    } else if (grh[0]! >> 4 === 6) {
      dgid.set(grh.subarray(8, 24));
      trafficClass = ((grh[0]! & 0xf) << 4) | (grh[1]! >> 4);
    } else throw new VerbsError('ibv_create_ah_from_wc', 'EINVAL', 'the GRH holds neither an IPv4 nor an IPv6 header');
    return this.createAh({ grh: { dgid, hopLimit: 0xff, trafficClass }, portNum });
  }

  /** ibv_create_qp */
  async createQp(init: QpInitAttr): Promise<QueuePair> {
    const want: QpCaps = {
      maxSendWr: init.cap.maxSendWr ?? 1, maxRecvWr: init.cap.maxRecvWr ?? 1, maxSendSge: init.cap.maxSendSge ?? 1,
      maxRecvSge: init.cap.maxRecvSge ?? 1, maxInlineData: init.cap.maxInlineData ?? 0,
    };
    const verb = init.createFlags !== undefined || init.sendOpsFlags !== undefined ? 'ibv_create_qp_ex' : 'ibv_create_qp';
    checkSendOps(verb, init);
    const l = qpLayout(want, !!init.srq);
    if (!l) throw new VerbsError(verb, 'EINVAL', 'a capability is over the device limit');
    return withQueueMemory(this.context, l.bytes, verb, async (mem) => {
      const qp = new QueuePair(this, init, l.caps, mem.mapping, l.sq, l.rq);
      try {
        const req = {
          user_handle: qp.userHandle, pd_handle: this.handle, send_cq_handle: init.sendCq.handle, recv_cq_handle: init.recvCq.handle,
          srq_handle: init.srq?.handle ?? 0, max_send_wr: want.maxSendWr, max_recv_wr: want.maxRecvWr, max_send_sge: want.maxSendSge,
          max_recv_sge: want.maxRecvSge, max_inline_data: want.maxInlineData, sq_sig_all: init.sqSigAll ? 1 : 0, qp_type: init.qpType,
          is_srq: init.srq ? 1 : 0,
        };
        // as libibverbs: the extended command only for what the legacy one cannot say (create flags)
        if (init.createFlags !== undefined) {
          const body = await this.context.commandEx(verb, U.ExCmd.CREATE_QP, U.EX_CREATE_QP, {
            ...req, create_flags: init.createFlags, source_qpn: init.createFlags & QpCreateFlags.SOURCE_QPN ? init.sourceQpn ?? 0 : 0,
          }, layout(U.EX_CREATE_QP_RESP).size, { def: U.SV_QUEUE, value: { memfd_id: mem.id } });
          const r = unpack(U.EX_CREATE_QP_RESP, body);
          qp.created(r.base.qp_handle, r.base.qpn);
          return qp;
        }
        const r = await this.context.command(verb, U.Spec.CREATE_QP, req, { memfd_id: mem.id });
        qp.created(r.qp_handle, r.qpn);
        return qp;
      } catch (e) {
        this.context.unregister(qp.userHandle);
        throw e;
      }
    });
  }

  /** ibv_create_srq */
  async createSrq(attr: SrqAttr): Promise<SharedReceiveQueue> {
    const l = srqLayout(attr.maxWr, attr.maxSge);
    if (!l) throw new VerbsError('ibv_create_srq', 'EINVAL', `max_wr ${attr.maxWr} / max_sge ${attr.maxSge}`);
    return withQueueMemory(this.context, l.bytes, 'ibv_create_srq', async (mem) => {
      const srq = new SharedReceiveQueue(this, mem.mapping, l, attr.maxSge);
      try {
        const r = await this.context.command('ibv_create_srq', U.Spec.CREATE_SRQ, { user_handle: srq.userHandle, pd_handle: this.handle, max_wr: attr.maxWr, max_sge: attr.maxSge, srq_limit: attr.srqLimit ?? 0 }, { memfd_id: mem.id });
        srq.handle = r.srq_handle;
        srq.srqNum = r.srqn;
        this.dependents.add(srq);
        return srq;
      } catch (e) {
        this.context.unregister(srq.userHandle);
        throw e;
      }
    });
  }

  /** ibv_dealloc_pd (EBUSY while MRs, QPs, SRQs or AHs use it, naming them). Once the daemon is gone it only releases the PD here. */
  async deallocPd(): Promise<void> {
    if (this.released) return;
    try {
      await this.context.release('ibv_dealloc_pd', U.Spec.DEALLOC_PD, { pd_handle: this.handle });
    } catch (e) {
      throw this.dependents.explain(e, 'ibv_dealloc_pd', this.label);
    }
    this.released = true;
  }

  /**
   * Destroys what is still on the PD (QPs, SRQs, MRs, AHs; the newest first), then the PD. Memory windows go
   * first, whenever they were made: an MR with a window bound to it cannot be deregistered.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.released) return;
    await this.dependents.dispose((o) => o instanceof MemoryWindow);
    await this.deallocPd();
  }
}

/** The ibv_wr_* operations librxe gives each QP type (RXE_SUP_{RC,UC,UD}_QP_SEND_OPS_FLAGS). */
const SEND_OPS: Readonly<Partial<Record<number, number>>> = {
  [QpType.RC]: Ops.RDMA_WRITE | Ops.RDMA_WRITE_WITH_IMM | Ops.SEND | Ops.SEND_WITH_IMM | Ops.RDMA_READ | Ops.ATOMIC_CMP_AND_SWP |
    Ops.ATOMIC_FETCH_AND_ADD | Ops.LOCAL_INV | Ops.BIND_MW | Ops.SEND_WITH_INV | Ops.ATOMIC_WRITE,
  [QpType.UC]: Ops.RDMA_WRITE | Ops.RDMA_WRITE_WITH_IMM | Ops.SEND | Ops.SEND_WITH_IMM | Ops.BIND_MW | Ops.SEND_WITH_INV,
  [QpType.UD]: Ops.SEND | Ops.SEND_WITH_IMM,
};

/** librxe's check_qp_init_attr: send ops the QP type does not have are EOPNOTSUPP, before any command. */
function checkSendOps(verb: string, init: QpInitAttr): void {
  const ops = init.sendOpsFlags;
  if (ops === undefined) return;
  const sup = SEND_OPS[init.qpType] ?? 0;
  if (ops & ~sup) throw new VerbsError(verb, 'EOPNOTSUPP', `send_ops_flags 0x${ops.toString(16)}: a QP of type ${init.qpType} has 0x${sup.toString(16)}`);
}
