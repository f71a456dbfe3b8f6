/**
 * A queue pair (struct ibv_qp): posting work requests is writing WQEs into
 * the shared send and receive rings (and ringing the doorbell when the HCA
 * went idle); modify, query and destroy are commands.
 */
import { Access, MwType, QpAttrMask, QpState, QpType, SendFlags, WrOpcode, qpStateName } from '../abi/enums.js';
import type { Input } from '../abi/layout.js';
import type { QpCaps, RingLayout } from '../abi/queue.js';
import { RecvRingProducer } from '../abi/recv-ring.js';
import { SendRingProducer, type SendWrIn } from '../abi/send-ring.js';
import * as U from '../abi/uverbs.js';
import { WrMask, wrMask } from '../abi/wqe.js';
import { unmap, type Mapping } from '../native/libc.js';
import { VerbsError } from './errors.js';
import { inlineBytes } from './memory.js';
import type { Dependents } from './lifetime.js';
import type { ProtectionDomain } from './pd.js';
import { badWr, big, malformed, postRecvWrs, refused } from './post.js';
import type { QpAttr, QpInitAttr, RecvWr, SendWr } from './types.js';
import { incRkey, type MemoryWindow, type MwBind } from './mw.js';
import { WrBuilder } from './wr.js';


export class QueuePair {
  /** @internal */ handle = -1;
  qpNum = 0;
  readonly qpType: QpType;
  /** @internal */ readonly userHandle: bigint;
  private readonly sq: SendRingProducer;
  private readonly rq: RecvRingProducer | null;
  private sendBell: Buffer | null = null;
  private recvBell: Buffer | null = null;
  private destroyed = false;
  private builder: WrBuilder | null = null;
  /** the state when it was destroyed: its ring is unmapped then */
  private finalState: QpState | null = null;

  /** @internal */
  constructor(
    readonly pd: ProtectionDomain,
    readonly init: QpInitAttr,
    /** the capabilities the QP really has (≥ what was asked for) */
    readonly cap: QpCaps,
    private readonly mapping: Mapping,
    sq: RingLayout,
    rq: RingLayout | null,
  ) {
    this.qpType = init.qpType;
    this.sq = new SendRingProducer(mapping.buffer, sq, inlineBytes);
    this.rq = rq ? new RecvRingProducer(mapping.buffer, rq, cap.maxRecvSge) : null;
    this.userHandle = pd.context.register(this);
  }

  /** @internal the daemon made it: its handle, its number, the doorbells that name it; its PD, CQs and SRQ now have it as a user */
  created(handle: number, qpn: number): void {
    this.handle = handle;
    this.qpNum = qpn;
    for (const o of this.uses()) o.dependents.add(this);
    this.sendBell = U.frame(U.Spec.POST_SEND, { qp_handle: handle });
    this.sendBell.writeUInt16LE(0, 6); // out_words 0: a pure doorbell, which the daemon does not answer
    this.recvBell = U.frame(U.Spec.POST_RECV, { qp_handle: handle });
  }

  /** The QP state as the HCA last wrote it (a number: `qpStateName(qp.state)` gives its name). */
  get state(): QpState {
    return this.finalState ?? (this.sq.state() as QpState);
  }

  /** @internal */
  get label(): string {
    return `QP ${this.qpNum}`;
  }

  private uses(): Array<{ dependents: Dependents }> {
    const { sendCq, recvCq, srq } = this.init;
    return srq ? [this.pd, sendCq, recvCq, srq] : [this.pd, sendCq, recvCq];
  }

  /** A post's checks before any WR: an error names the first WR as the one not posted (libibverbs' bad_wr). */
  private live(verb: string, wrs: unknown): void {
    try {
      this.pd.context.cmd.ensureUp(verb);
    } catch (e) {
      throw refused(e, wrs);
    }
    if (this.destroyed) throw refused(new VerbsError(verb, 'EINVAL', 'the QP is destroyed'), wrs);
  }

  /**
   * ibv_post_send: writes WQEs into the shared send queue and rings the
   * doorbell once. Throws VerbsError with `badWr` (and `wr`) for the first WR that
   * could not be posted (the ones before it are posted).
   */
  postSend(wrs: SendWr | SendWr[]): void {
    this.live('ibv_post_send', wrs);
    const sq = this.sq;
    // as rxe: a send queue takes work requests from RTS on (and in SQD and ERR, where they drain or flush)
    const st = sq.state();
    if (st === QpState.RESET || st === QpState.INIT || st === QpState.RTR) throw refused(new VerbsError('ibv_post_send', 'EINVAL', `the QP is in ${qpStateName(st)}; sends are posted from RTS on`), wrs);
    let posted = 0;
    try {
      if (!Array.isArray(wrs)) {
        this.postOne(wrs, 0);
        posted = 1;
      } else {
        for (; posted < wrs.length; posted++) this.postOne(wrs[posted]!, posted);
      }
    } finally {
      if (posted > 0 || (Array.isArray(wrs) && wrs.length === 0)) {
        sq.publish();
        // ring only if the HCA said it is idle on this SQ, and we are the ones to wake it
        if (posted > 0 && sq.claimWake()) this.pd.context.cmd.ring('ibv_post_send', this.sendBell!);
      }
    }
  }

  /**
   * @internal a batch that goes whole or not at all (ibv_wr_complete): written at the producer index, published
   * with one doorbell only when every WR was written; on the first that cannot be, the producer index goes back
   * (nothing was shown to the HCA) and its error is thrown with `verb`, a full queue as ENOSPC (librxe's).
   */
  postAll(verb: string, wrs: SendWr[]): void {
    this.live(verb, wrs);
    const sq = this.sq;
    const st = sq.state();
    if (st === QpState.RESET || st === QpState.INIT || st === QpState.RTR) throw refused(new VerbsError(verb, 'EINVAL', `the QP is in ${qpStateName(st)}; sends are posted from RTS on`), wrs);
    const start = sq.prod;
    try {
      for (let i = 0; i < wrs.length; i++) this.postOne(wrs[i]!, i);
    } catch (e) {
      sq.prod = start;
      if (!(e instanceof VerbsError)) throw e;
      const err = new VerbsError(verb, e.code === 'ENOMEM' ? 'ENOSPC' : e.code, e.message.replace(/^[^:]*: [A-Z]+: /, ''), e.badWr);
      err.wr = e.wr;
      throw err;
    }
    if (wrs.length === 0) return;
    sq.publish();
    if (sq.claimWake()) this.pd.context.cmd.ring(verb, this.sendBell!);
  }

  /**
   * The ibv_wr_* builders (ibv_qp_to_qp_ex): `qp.wr.start().send().setSge(…).complete()`. Only a QP created with
   * `sendOpsFlags` has them, and only for those operations.
   */
  get wr(): WrBuilder {
    const ops = this.init.sendOpsFlags;
    if (ops === undefined) throw new VerbsError('ibv_qp_to_qp_ex', 'EINVAL', 'the QP was created without sendOpsFlags: it has no ibv_wr_* builders');
    return (this.builder ??= new WrBuilder(this, ops));
  }

  private postOne(wr: SendWr, i: number): void {
    const sq = this.sq;
    if (sq.full()) throw badWr('ibv_post_send', 'ENOMEM', 'send queue full', i, wr);
    try {
      this.writeWqe(wr, i);
    } catch (e) {
      throw malformed('ibv_post_send', e, i, wr);
    }
  }

  /** Checks the WR as the provider does, and writes it into the ring at the producer index. */
  private writeWqe(wr: SendWr, i: number): void {
    const op = wr.opcode;
    const t = this.qpType;
    const flags = wr.sendFlags ?? 0;
    const sg = wr.sgList ?? [];
    const m = wrMask(t, op);
    if (!m) throw badWr('ibv_post_send', 'EINVAL', `opcode ${op} is not valid on this QP type`, i, wr);
    if (t === QpType.UD && !wr.ud) throw badWr('ibv_post_send', 'EINVAL', 'a UD send needs wr.ud (ah, remoteQpn, remoteQkey)', i, wr);
    if (m & (WrMask.WRITE | WrMask.READ) && !wr.rdma) throw badWr('ibv_post_send', 'EINVAL', 'RDMA operations need wr.rdma (remoteAddr, rkey)', i, wr);
    if (m & WrMask.ATOMIC && !wr.atomic) throw badWr('ibv_post_send', 'EINVAL', 'atomics need wr.atomic (remoteAddr, compareAdd, swap, rkey)', i, wr);
    if (m & WrMask.ATOMIC_WRITE && !wr.atomicWrite) throw badWr('ibv_post_send', 'EINVAL', 'ATOMIC_WRITE needs wr.atomicWrite (remoteAddr, rkey, value)', i, wr);
    if ((op === WrOpcode.LOCAL_INV || op === WrOpcode.SEND_WITH_INV) && typeof wr.invalidateRkey !== 'number') {
      throw badWr('ibv_post_send', 'EINVAL', 'LOCAL_INV and SEND_WITH_INV need wr.invalidateRkey', i, wr);
    }
    if (op === WrOpcode.BIND_MW) return this.writeBind(wr, i);
    if (flags & SendFlags.INLINE) {
      if (!(m & WrMask.INLINE)) throw badWr('ibv_post_send', 'EINVAL', 'INLINE is for SEND and RDMA WRITE only', i, wr);
      let len = 0;
      for (const s of sg) len += s.length;
      if (len > this.cap.maxInlineData) throw badWr('ibv_post_send', 'EINVAL', `${len} inline bytes > max_inline_data ${this.cap.maxInlineData}`, i, wr);
    } else if (sg.length > this.cap.maxSendSge) throw badWr('ibv_post_send', 'EINVAL', `${sg.length} SGEs > max_send_sge ${this.cap.maxSendSge}`, i, wr);
    const bad = this.sq.write(wr);
    if (bad >= 0) throw badWr('ibv_post_send', 'EFAULT', `inline SGE at 0x${big(sg[bad]!.addr).toString(16)} is not memory from allocBuffer`, i, wr);
  }

  /**
   * A BIND_MW WR: a window of this PD, no data (librxe's checks). Its WQE names the window by its rkey as the
   * application knows it and the MR by its lkey, as rxe_send_wr's wr.mw does.
   */
  private writeBind(wr: SendWr, i: number): void {
    const b = wr.bindMw;
    if (!b) throw badWr('ibv_post_send', 'EINVAL', 'BIND_MW needs wr.bindMw (mw, rkey, bindInfo)', i, wr);
    if (wr.sgList?.length) throw badWr('ibv_post_send', 'EINVAL', 'BIND_MW carries no SGEs', i, wr);
    const info = b.bindInfo;
    const w: SendWrIn = {
      wrId: wr.wrId, opcode: WrOpcode.BIND_MW, sendFlags: wr.sendFlags,
      bind: { mwRkey: b.mw.rkey, rkey: b.rkey, mrLkey: info.mr.lkey, addr: info.addr, length: info.length, access: info.mwAccessFlags },
    };
    this.sq.write(w);
  }

  /**
   * ibv_bind_mw: binds a type 1 window to [addr, addr+length) of an MR with `mwAccessFlags` (length 0 unbinds it)
   * by posting a BIND_MW work request. Returns the window's new rkey, which `mw.rkey` holds from now on (if the
   * bind completes in error, the old one stays valid: set it back). As librxe: a zero-based type 1 window is
   * EINVAL.
   */
  bindMw(mw: MemoryWindow, bind: MwBind): number {
    if (mw.type !== MwType.TYPE_1) throw new VerbsError('ibv_bind_mw', 'EINVAL', 'a type 2 window is bound by a BIND_MW work request (postSend)');
    if (bind.bindInfo.mwAccessFlags & Access.ZERO_BASED) throw new VerbsError('ibv_bind_mw', 'EINVAL', 'a type 1 window cannot be zero based');
    const rkey = incRkey(mw.rkey);
    try {
      this.postSend({ wrId: bind.wrId, opcode: WrOpcode.BIND_MW, sendFlags: bind.sendFlags, bindMw: { mw, rkey, bindInfo: bind.bindInfo } });
    } catch (e) {
      if (e instanceof VerbsError) throw Object.assign(new VerbsError('ibv_bind_mw', e.code, e.message.replace(/^ibv_post_send: [A-Z]+: /, '')), { wr: bind });
      throw e;
    }
    mw.rkey = rkey;
    return rkey;
  }

  /** ibv_post_recv: shared memory only; a QP in ERR also gets a doorbell so the WRs are flushed. */
  postRecv(wrs: RecvWr | RecvWr[]): void {
    if (!this.rq) throw refused(new VerbsError('ibv_post_recv', 'EINVAL', 'this QP receives through an SRQ'), wrs);
    this.live('ibv_post_recv', wrs);
    if (this.sq.state() === QpState.RESET) throw refused(new VerbsError('ibv_post_recv', 'EINVAL', 'the QP is in RESET; receives are posted from INIT on'), wrs);
    postRecvWrs(this.rq, 'ibv_post_recv', wrs);
    if (this.sq.state() === QpState.ERR) this.pd.context.cmd.post('ibv_post_recv', this.recvBell!);
  }

  /** ibv_modify_qp: attributes named by `mask` (QpAttrMask) are applied; a mask the IBA does not allow for the transition is EINVAL. */
  async modifyQp(attr: QpAttr, mask: QpAttrMask): Promise<void> {
    const ah = attr.ahAttr;
    const g = ah?.grh;
    const dest: Input<typeof U.QP_DEST> = ah ? {
      dgid: g?.dgid ?? new Uint8Array(16), flow_label: g?.flowLabel ?? 0, dlid: ah.dlid ?? 0, sgid_index: g?.sgidIndex ?? 0, hop_limit: g?.hopLimit ?? 64,
      traffic_class: g?.trafficClass ?? 0, sl: ah.sl ?? 0, src_path_bits: ah.srcPathBits ?? 0, static_rate: ah.staticRate ?? 0,
      is_global: ah.isGlobal === false ? 0 : 1, port_num: ah.portNum ?? 1,
    } : {};
    await this.pd.context.command('ibv_modify_qp', U.Spec.MODIFY_QP, {
      dest, qp_handle: this.handle, attr_mask: mask, qkey: attr.qkey ?? 0, rq_psn: attr.rqPsn ?? 0, sq_psn: attr.sqPsn ?? 0,
      dest_qp_num: attr.destQpNum ?? 0, qp_access_flags: attr.qpAccessFlags ?? 0, pkey_index: attr.pkeyIndex ?? 0, qp_state: attr.qpState ?? 0,
      cur_qp_state: attr.curQpState ?? 0, path_mtu: attr.pathMtu ?? 0, path_mig_state: attr.pathMigState ?? 0,
      en_sqd_async_notify: attr.enSqdAsyncNotify ?? 0, max_rd_atomic: attr.maxRdAtomic ?? 0, max_dest_rd_atomic: attr.maxDestRdAtomic ?? 0,
      min_rnr_timer: attr.minRnrTimer ?? 0, port_num: attr.portNum ?? 0, timeout: attr.timeout ?? 0, retry_cnt: attr.retryCnt ?? 0,
      rnr_retry: attr.rnrRetry ?? 0,
    });
    if (mask & QpAttrMask.STATE && attr.qpState === QpState.RESET) {
      // a reset QP's queues are empty: start our producer indices where the HCA left its consumers
      this.sq.resync();
      this.rq?.resync();
    }
  }

  /** ibv_query_qp: the attributes and the init attributes. */
  async queryQp(mask = 0xffffffff): Promise<QpAttr & { sqSigAll: boolean }> {
    const r = await this.pd.context.command('ibv_query_qp', U.Spec.QUERY_QP, { qp_handle: this.handle, attr_mask: mask });
    const d = r.dest;
    return {
      qpState: r.qp_state as QpState, curQpState: r.cur_qp_state as QpState, pathMtu: r.path_mtu as QpAttr['pathMtu'],
      pathMigState: r.path_mig_state as QpAttr['pathMigState'], qkey: r.qkey, rqPsn: r.rq_psn, sqPsn: r.sq_psn, destQpNum: r.dest_qp_num,
      qpAccessFlags: r.qp_access_flags, pkeyIndex: r.pkey_index, sqDraining: r.sq_draining,
      maxRdAtomic: r.max_rd_atomic, maxDestRdAtomic: r.max_dest_rd_atomic, minRnrTimer: r.min_rnr_timer,
      portNum: r.port_num, timeout: r.timeout, retryCnt: r.retry_cnt, rnrRetry: r.rnr_retry,
      cap: { maxSendWr: r.max_send_wr, maxRecvWr: r.max_recv_wr, maxSendSge: r.max_send_sge, maxRecvSge: r.max_recv_sge, maxInlineData: r.max_inline_data },
      ahAttr: { grh: { dgid: d.dgid, flowLabel: d.flow_label, sgidIndex: d.sgid_index, hopLimit: d.hop_limit, trafficClass: d.traffic_class }, isGlobal: !!d.is_global, portNum: d.port_num },
      sqSigAll: !!r.sq_sig_all,
    };
  }

  /** Multicast groups this QP was attached to here (GID and LID), for `await using` to detach before it destroys. */
  private readonly mcast: { gid: Uint8Array; lid: number }[] = [];

  /**
   * ibv_attach_mcast: UD SENDs to the multicast GID `gid` (ff00::/8, or ::ffff:224.0.0.0/100 for an IPv4 group;
   * sent to QPN 0xFFFFFF) arrive at this UD QP, with the group as the GRH's destination. On RoCE the LID is not
   * looked at. Attaching again is not an error. EINVAL for a GID that is no multicast GID or a QP that is not UD.
   */
  async attachMcast(gid: Uint8Array, lid = 0): Promise<void> {
    await this.pd.context.command('ibv_attach_mcast', U.Spec.ATTACH_MCAST, { gid, qp_handle: this.handle, mlid: lid });
    if (!this.mcast.some((m) => m.lid === lid && sameGid(m.gid, gid))) this.mcast.push({ gid: gid.slice(), lid });
  }

  /** ibv_detach_mcast: EINVAL when the QP is not attached to `gid` with `lid`. */
  async detachMcast(gid: Uint8Array, lid = 0): Promise<void> {
    await this.pd.context.command('ibv_detach_mcast', U.Spec.DETACH_MCAST, { gid, qp_handle: this.handle, mlid: lid });
    const at = this.mcast.findIndex((m) => m.lid === lid && sameGid(m.gid, gid));
    if (at >= 0) this.mcast.splice(at, 1);
  }

  /** ibv_destroy_qp. Once the daemon is gone (or the device closed) it only releases the QP here: the daemon's side went with the connection. */
  async destroyQp(): Promise<void> {
    if (this.destroyed) return;
    await this.pd.context.release('ibv_destroy_qp', U.Spec.DESTROY_QP, { qp_handle: this.handle });
    this.releaseLocal();
  }

  /** @internal forgets the QP here: the daemon has destroyed it */
  releaseLocal(): void {
    if (this.destroyed) return;
    this.finalState = this.sq.state() as QpState;
    this.destroyed = true;
    this.pd.context.unregister(this.userHandle);
    for (const o of this.uses()) o.dependents.delete(this);
    unmap(this.mapping);
  }

  /** Detaches the groups it was attached to here first: ibv_destroy_qp of an attached QP is EBUSY. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (!this.destroyed) for (const m of [...this.mcast]) await this.detachMcast(m.gid, m.lid).catch(() => {});
    await this.destroyQp();
  }
}

function sameGid(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}
