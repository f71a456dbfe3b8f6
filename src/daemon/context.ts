/**
 * One client context (a `struct ib_ucontext` behind an open uverbs fd): its
 * handle table, its objects, the command handlers (named after the uverbs
 * commands they serve), and the teardown that runs when the connection
 * closes for any reason.
 */
import type { Socket } from 'node:net';
import { procComm } from '../common/proc.js';
import { Access, AtomicCap, EventType, LinkLayer, mtuBytes, PortState, QpAttrMask as A, QpState, QpType, ReregMrFlags, SrqAttrMask } from '../abi/enums.js';
import { layout, pack, unpack } from '../abi/layout.js';
import { cqLayout, Limits, qpLayout, srqLayout } from '../abi/queue.js';
import * as U from '../abi/uverbs.js';
import { CmdError, E, fail } from '../common/errno.js';
import { bswap64 } from '../common/format.js';
import { unmap, type Mapping } from '../native/libc.js';
import { flushRecv, toError } from '../hca/completion.js';
import { udpSport } from '../hca/codec.js';
import type { SoftDevice } from '../hca/device.js';
import { Ah, Cq, Mr, Pd, Srq, type Owner } from '../hca/objects.js';
import { RecvRingConsumer } from '../abi/recv-ring.js';
import { modifyMaskError, Qp, wqeBytes } from '../hca/qp.js';
import { mapClientMemfd } from './memfd.js';
import { pagesSpanned, type PinnedAccounts } from './memlock.js';
import type { Quotas } from './limits.js';
import { HandleAllocator } from './handles.js';
import { CompChannel, deliverEvent } from './events.js';
import { deviceMax, OBJECT_TYPES, rowOf, OBJ_TYPES, type Entry, type ObjOf, type ObjType } from './object-table.js';

export { CompChannel } from './events.js';

/** A command handler: the decoded request, the udata when the frame carried one; the response bytes, if the command has a response. */
type Handler<K extends U.CmdName> = (r: U.Req<K>, u: U.Udata<K> | null) => Buffer | void;

/** What the context needs from the daemon around it. */
export interface Host {
  readonly pinned: PinnedAccounts;
  newToken(kind: 'async' | 'comp', ctx: Context, chan?: CompChannel): number;
  dropToken(token: number): void;
  log(msg: string): void;
  limitHit(uid: number, limit: string, msg: string): void;
  readonly quotas: Quotas;
}

export class Context implements Owner {
  readonly handles = new Map<number, Entry>();
  readonly comm: string;
  asyncSock: Socket | null = null;
  asyncPending: Buffer[] = [];
  asyncToken = 0;
  closed = false;
  /** handle numbers: the lowest free one, as the kernel's idr gives (O(log n), not a scan from 0) */
  private readonly ids = new HandleAllocator();

  constructor(
    readonly host: Host,
    readonly dev: SoftDevice,
    readonly pid: number,
    readonly uid: number,
    readonly gid: number,
  ) {
    this.comm = procComm(pid);
    this.ctxn = this.dev.assignResId('ctx', this);
  }

  /** This context's restrack id (ctxn). */
  ctxn = 0;

  // ---- handle table (the kernel's per-file idr: lowest free number) ----

  /** How many objects of each type the context holds (the log at close, the metrics). */
  countByType(): Map<ObjType, number> {
    const n = new Map<ObjType, number>();
    for (const e of this.handles.values()) n.set(e.type, (n.get(e.type) ?? 0) + 1);
    return n;
  }

  /**
   * Room for one more object of `type`: the device's limit, then the user's object quota. Checked before
   * anything is created, taken by add() once it is: nothing to give back when a step in between fails.
   */
  private admit(type: ObjType): void {
    const max = deviceMax(this.dev, type);
    const n = this.dev.objCount[type] ?? 0;
    if (n >= max) {
      const msg = `${type.toUpperCase()}: the device's max_${type} ${max} is reached`;
      this.host.limitHit(this.uid, `max_${type}`, msg);
      fail(E.EINVAL, msg);
    }
    this.host.quotas.check(this.uid, 'objects', OBJECT_TYPES[type].charge);
  }

  private add(e: Entry): number {
    const row = rowOf(e);
    if (row.resId) this.dev.assignResId(e.type, e.obj);
    const h = this.ids.take();
    this.handles.set(h, e);
    this.dev.objCount[e.type] = (this.dev.objCount[e.type] ?? 0) + 1;
    this.host.quotas.take(this.uid, 'objects', row.charge);
    return h;
  }

  /** Forgets handle h (its object is already released): the handle, the device's count and the user's quota come back. */
  private remove(h: number): void {
    const e = this.handles.get(h);
    if (!e) return;
    this.handles.delete(h);
    this.ids.give(h);
    this.dev.objCount[e.type] = Math.max(0, (this.dev.objCount[e.type] ?? 1) - 1);
    this.host.quotas.release(this.uid, 'objects', rowOf(e).charge);
  }

  /** Destroys the object behind handle h (its destroy command has checked nothing holds it): released, then forgotten. */
  private destroy(h: number): void {
    const e = this.handles.get(h);
    if (!e) return;
    rowOf(e).release(this, e.obj);
    this.remove(h);
  }

  /** Maps client memory, charged to the user's mappings (each is one of the daemon's vm.max_map_count entries). */
  mapClient(memfd: number, offset: bigint, length: bigint): ReturnType<typeof mapClientMemfd> {
    this.host.quotas.charge(this.uid, 'mappings');
    try {
      return mapClientMemfd(this.pid, memfd, offset, length);
    } catch (e) {
      this.host.quotas.release(this.uid, 'mappings');
      throw e;
    }
  }

  unmapClient(m: Mapping): void {
    if (m.unmapped) return;
    unmap(m);
    this.host.quotas.release(this.uid, 'mappings');
  }

  /** The object of `type` behind handle h, or EINVAL naming the handle (`what`: the request field that gave it). */
  get<T extends ObjType>(type: T, h: number, what: string = type): ObjOf<T> {
    return this.find(type, h) ?? fail(E.EINVAL, `${what} handle ${h} is not a ${type} of this context`);
  }

  find<T extends ObjType>(type: T, h: number): ObjOf<T> | null {
    const e = this.handles.get(h);
    return e && e.type === type ? (e.obj as ObjOf<T>) : null;
  }

  handleOf(obj: object): number {
    for (const [h, e] of this.handles) if (e.obj === obj) return h;
    return -1;
  }

  lookupAh(h: number): Ah | null {
    return this.find('ah', h);
  }

  // ---- events ----

  compEvent(cq: Cq): void {
    const ch = cq.channel as CompChannel | null;
    if (!ch) return;
    cq.compEvents++;
    this.dev.compEvents++;
    ch.send(pack(U.COMP_EVENT_DESC, { cq_handle: cq.userHandle }));
  }

  asyncEvent(element: bigint, type: number, obj: { asyncEvents: number } | null): void {
    if (obj) obj.asyncEvents++;
    const b = pack(U.ASYNC_EVENT_DESC, { element, event_type: type });
    deliverEvent(this.asyncSock, this.asyncPending, b);
  }

  // ---- dispatch ----

  /**
   * Runs one command frame (header already checked for size) and returns
   * the response bytes. Throws CmdError for an errno reply.
   */
  dispatch(cmd: number, frame: Buffer, outBytes: number): Buffer {
    const spec = U.COMMANDS.get(cmd);
    if (!spec) fail(E.EOPNOTSUPP, `unknown command ${cmd}`);
    const reqSize = layout(spec.req).size;
    if (frame.length < U.HDR_SIZE + reqSize) fail(E.ENOSPC, `${spec.name}: in_words ${frame.length / 4} is shorter than the command`);
    if (spec.resp && outBytes < layout(spec.resp).size) fail(E.ENOSPC, `${spec.name}: out_words ${outBytes / 4} is shorter than the response`);
    const req = unpack(spec.req, frame, U.HDR_SIZE);
    let udata: object | null = null;
    let rest = U.HDR_SIZE + reqSize;
    if (spec.udata) {
      const uSize = layout(spec.udata).size;
      if (frame.length >= rest + uSize) {
        udata = unpack(spec.udata, frame, rest);
        rest += uSize;
      }
    }
    for (let i = rest; i < frame.length; i++) if (frame[i] !== 0) fail(E.EINVAL, `${spec.name}: ${frame.length - rest} trailing bytes not understood`);
    // the table is keyed by the spec's name, so the request decoded with spec.req is the one the handler is typed for
    const handler = this.handlers[spec.name as U.CmdName] as ((r: object, u: object | null) => Buffer | void) | undefined;
    if (!handler) return fail(E.EOPNOTSUPP, `${spec.name} is not supported`);
    return handler(req, udata) ?? Buffer.alloc(0);
  }

  /** The command handlers, each given its decoded request (and udata) with the types its struct gives. */
  private readonly handlers: { [K in U.CmdName]?: Handler<K> } = {
    GET_CONTEXT: () => fail(E.EINVAL, 'GET_CONTEXT: context already created'),
    QUERY_DEVICE: () => this.queryDevice(),
    QUERY_PORT: (r) => this.queryPort(r),
    ALLOC_PD: () => this.allocPd(),
    DEALLOC_PD: (r) => this.deallocPd(r),
    CREATE_AH: (r) => this.createAh(r),
    DESTROY_AH: (r) => this.destroyAh(r),
    REG_MR: (r, u) => this.regMr(r, need(u, 'REG_MR')),
    REREG_MR: (r, u) => this.reregMr(r, u),
    DEREG_MR: (r) => this.deregMr(r),
    CREATE_COMP_CHANNEL: () => this.createCompChannel(),
    CREATE_CQ: (r, u) => this.createCq(r, need(u, 'CREATE_CQ')),
    RESIZE_CQ: (r, u) => this.resizeCq(r, need(u, 'RESIZE_CQ')),
    DESTROY_CQ: (r) => this.destroyCq(r),
    REQ_NOTIFY_CQ: (r) => this.reqNotifyCq(r),
    CREATE_QP: (r, u) => this.createQp(r, need(u, 'CREATE_QP')),
    QUERY_QP: (r) => this.queryQp(r),
    MODIFY_QP: (r) => this.modifyQp(r),
    DESTROY_QP: (r) => this.destroyQp(r),
    POST_SEND: (r) => this.postSend(r),
    POST_RECV: (r) => this.postRecvDoorbell(r),
    CREATE_SRQ: (r, u) => this.createSrq(r, need(u, 'CREATE_SRQ')),
    MODIFY_SRQ: (r) => this.modifySrq(r),
    QUERY_SRQ: (r) => this.querySrq(r),
    DESTROY_SRQ: (r) => this.destroySrq(r),
  };

  // ---- device ----

  /** The GET_CONTEXT answer (called by the connection before the context exists in the table). */
  getContextResp(): Buffer {
    return pack(U.GET_CONTEXT_RESP, { async_fd: this.asyncToken, num_comp_vectors: 1 });
  }

  queryDevice(): Buffer {
    const d = this.dev;
    return pack(U.QUERY_DEVICE_RESP, {
      fw_ver: 0n, node_guid: bswap64(d.nodeGuid), sys_image_guid: bswap64(d.nodeGuid), max_mr_size: BigInt(Limits.maxMrSize),
      page_size_cap: 0xfffff000n, vendor_id: 0xffffff, vendor_part_id: 0, hw_ver: 0, max_qp: deviceMax(d, 'qp'), max_qp_wr: Limits.maxQpWr,
      device_cap_flags: DEVICE_CAP_FLAGS, max_sge: Limits.maxSge, max_sge_rd: Limits.maxSge, max_cq: deviceMax(d, 'cq'), max_cqe: Limits.maxCqe,
      max_mr: deviceMax(d, 'mr'), max_pd: deviceMax(d, 'pd'), max_qp_rd_atom: Limits.maxQpRdAtom, max_ee_rd_atom: 0, max_res_rd_atom: 258048,
      max_qp_init_rd_atom: Limits.maxQpRdAtom, max_ee_init_rd_atom: 0, atomic_cap: AtomicCap.HCA, max_ee: 0, max_rdd: 0, max_mw: 0,
      max_raw_ipv6_qp: 0, max_raw_ethy_qp: 0, max_mcast_grp: 0, max_mcast_qp_attach: 0, max_total_mcast_qp_attach: 0, max_ah: deviceMax(d, 'ah'),
      max_fmr: 0, max_map_per_fmr: 0, max_srq: deviceMax(d, 'srq'), max_srq_wr: Limits.maxSrqWr, max_srq_sge: Limits.maxSrqSge, max_pkeys: 64,
      local_ca_ack_delay: 15, phys_port_cnt: 1,
    });
  }

  queryPort(r: U.Req<'QUERY_PORT'>): Buffer {
    if (r.port_num !== 1) fail(E.EINVAL, `QUERY_PORT: port ${r.port_num} does not exist (only port 1)`);
    const d = this.dev;
    return pack(U.QUERY_PORT_RESP, {
      port_cap_flags: 0x00010000, // IBV_PORT_CM_SUP, as rxe reports
      max_msg_sz: 0x800000, bad_pkey_cntr: 0, qkey_viol_cntr: 0, gid_tbl_len: 1024, pkey_tbl_len: 1, lid: 0, sm_lid: 0,
      state: d.portState, max_mtu: 5, active_mtu: d.activeMtu, lmc: 0, max_vl_num: 1, sm_sl: 0, subnet_timeout: 0,
      init_type_reply: 0, active_width: 1, active_speed: 1, phys_state: d.portState === PortState.ACTIVE ? 5 : 3,
      link_layer: LinkLayer.ETHERNET,
    });
  }

  // ---- PD ----

  allocPd(): Buffer {
    this.admit('pd');
    return pack(U.ALLOC_PD_RESP, { pd_handle: this.add({ type: 'pd', obj: new Pd(this) }) });
  }

  deallocPd(r: U.Req<'DEALLOC_PD'>): void {
    const pd = this.get('pd', r.pd_handle);
    if (pd.users > 0) fail(E.EBUSY, `DEALLOC_PD: PD ${r.pd_handle} still has ${pd.users} users`);
    this.destroy(r.pd_handle);
  }

  // ---- AH ----

  createAh(r: U.Req<'CREATE_AH'>): Buffer {
    const pd = this.get('pd', r.pd_handle);
    const a = r.attr;
    const g = a.grh;
    if (a.port_num !== 1) fail(E.EINVAL, `CREATE_AH: port ${a.port_num} does not exist`);
    if (!a.is_global) fail(E.EINVAL, 'CREATE_AH: RoCE needs a GRH (is_global)');
    if (g.sgid_index >= this.dev.gids.length) fail(E.EINVAL, `CREATE_AH: sgid_index ${g.sgid_index} is not in the GID table`);
    this.admit('ah');
    const ah = new Ah(pd, g.dgid, g.sgid_index, true, g.hop_limit, g.traffic_class, g.flow_label);
    pd.users++;
    return pack(U.CREATE_AH_RESP, { ah_handle: this.add({ type: 'ah', obj: ah }) });
  }

  destroyAh(r: U.Req<'DESTROY_AH'>): void {
    this.get('ah', r.ah_handle);
    this.destroy(r.ah_handle);
  }

  // ---- MR ----

  private checkAccess(access: number): void {
    const known = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC | Access.RELAXED_ORDERING;
    if (access & Access.ON_DEMAND) fail(E.EOPNOTSUPP, 'ON_DEMAND access is not supported');
    if (access & ~known) fail(E.EINVAL, `access flags 0x${access.toString(16)} have unsupported bits`);
    if (access & (Access.REMOTE_WRITE | Access.REMOTE_ATOMIC) && !(access & Access.LOCAL_WRITE))
      fail(E.EINVAL, 'REMOTE_WRITE / REMOTE_ATOMIC need LOCAL_WRITE');
  }

  /** Maps and accounts [start, start+length) of a memfd: all or nothing. */
  private pin(start: bigint, length: bigint, hcaVa: bigint, u: U.Udata<'REG_MR'>): { mapping: Mapping; mem: Uint8Array; pages: number } {
    if (length === 0n) fail(E.EINVAL, 'zero-length MR');
    if (start + length > 0xffffffffffffffffn || hcaVa + length > 0xffffffffffffffffn) fail(E.EINVAL, 'addr + length overflows');
    if (length > BigInt(Limits.maxMrSize)) fail(E.EINVAL, `length ${length} is over max_mr_size`);
    if ((start & 0xfffn) !== (hcaVa & 0xfffn)) fail(E.EINVAL, 'start and hca_va differ within the page');
    if (hcaVa + length > 1n << 53n) fail(E.EINVAL, 'hca_va beyond 2^53 is not supported');
    const pages = pagesSpanned(start, length);
    if (!this.host.pinned.charge(this.pid, this.uid, pages)) {
      const msg = `pinning ${pages} pages passes RLIMIT_MEMLOCK of pid ${this.pid}`;
      this.host.limitHit(this.uid, 'RLIMIT_MEMLOCK', msg);
      fail(E.ENOMEM, msg);
    }
    let m: ReturnType<typeof mapClientMemfd> | null = null;
    try {
      m = this.mapClient(u.memfd, u.memfd_offset, length);
      return { mapping: m.mapping, mem: new Uint8Array(m.mapping.buffer, m.delta, Number(length)), pages };
    } catch (e) {
      if (m) this.unmapClient(m.mapping);
      this.host.pinned.release(this.pid, pages);
      throw e;
    }
  }

  regMr(r: U.Req<'REG_MR'>, u: U.Udata<'REG_MR'>): Buffer {
    const pd = this.get('pd', r.pd_handle);
    const access = r.access_flags;
    this.checkAccess(access);
    this.admit('mr');
    const key = this.dev.allocMrKey();
    if (key < 0) fail(E.ENOMEM, 'no MR keys left');
    const p = this.pin(r.start, r.length, r.hca_va, u);
    const mr = new Mr(pd, key, access, Number(r.hca_va), Number(r.length), p.mem, p.mapping, p.pages);
    this.dev.mrs.set(key >>> 8, mr);
    pd.users++;
    const h = this.add({ type: 'mr', obj: mr });
    return pack(U.REG_MR_RESP, { mr_handle: h, lkey: key, rkey: mr.rkey });
  }

  reregMr(r: U.Req<'REREG_MR'>, u: U.Udata<'REREG_MR'> | null): Buffer {
    const mr = this.get('mr', r.mr_handle);
    const flags = r.flags;
    if (!flags || flags & ~(ReregMrFlags.CHANGE_TRANSLATION | ReregMrFlags.CHANGE_PD | ReregMrFlags.CHANGE_ACCESS))
      fail(E.EINVAL, `REREG_MR: flags 0x${flags.toString(16)}`);
    const newPd = flags & ReregMrFlags.CHANGE_PD ? this.get('pd', r.pd_handle) : mr.pd;
    const access = flags & ReregMrFlags.CHANGE_ACCESS ? r.access_flags : mr.access;
    this.checkAccess(access);
    let p: { mapping: Mapping; mem: Uint8Array; pages: number } | null = null;
    if (flags & ReregMrFlags.CHANGE_TRANSLATION) {
      if (!u) fail(E.EINVAL, 'REREG_MR: CHANGE_TRANSLATION needs the memfd udata');
      p = this.pin(r.start, r.length, r.hca_va, u);
    }
    // everything checked: now change the MR (a new key, so old keys stop working, as the kernel does)
    const key = this.dev.allocMrKey();
    this.dev.mrs.delete(mr.key >>> 8);
    if (p) {
      this.unmapClient(mr.mapping);
      this.host.pinned.release(this.pid, mr.pages);
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
    this.dev.mrs.set(key >>> 8, mr);
    return pack(U.REREG_MR_RESP, { lkey: key, rkey: mr.rkey });
  }

  deregMr(r: U.Req<'DEREG_MR'>): void {
    this.get('mr', r.mr_handle);
    this.destroy(r.mr_handle);
  }

  // ---- completion channels and CQs ----

  createCompChannel(): Buffer {
    this.admit('comp_channel');
    const ch = new CompChannel(this, 0);
    const token = this.host.newToken('comp', this, ch);
    (ch as { token: number }).token = token;
    this.add({ type: 'comp_channel', obj: ch });
    return pack(U.CREATE_COMP_CHANNEL_RESP, { fd: token });
  }

  private channelByToken(token: number): CompChannel {
    for (const e of this.handles.values()) if (e.type === 'comp_channel' && e.obj.token === token) return e.obj;
    return fail(E.EINVAL, `comp_channel ${token} is not a channel of this context`);
  }

  createCq(r: U.Req<'CREATE_CQ'>, u: U.Udata<'CREATE_CQ'>): Buffer {
    const cqe = r.cqe;
    if (cqe < 1 || cqe > Limits.maxCqe) fail(E.EINVAL, `CREATE_CQ: cqe ${cqe} not in 1..${Limits.maxCqe}`);
    if (r.comp_vector !== 0) fail(E.EINVAL, `CREATE_CQ: comp_vector ${r.comp_vector} (the device has 1)`);
    const ch = r.comp_channel >= 0 ? this.channelByToken(r.comp_channel) : null;
    this.admit('cq');
    const l = cqLayout(cqe);
    const m = this.mapClient(u.memfd, 0n, BigInt(l.bytes));
    const cq = new Cq(this, r.user_handle, m.mapping, l.slots, l.cqe, ch);
    if (ch) ch.users++;
    return pack(U.CREATE_CQ_RESP, { cq_handle: this.add({ type: 'cq', obj: cq }), cqe: l.cqe });
  }

  resizeCq(r: U.Req<'RESIZE_CQ'>, u: U.Udata<'RESIZE_CQ'>): Buffer {
    const cq = this.get('cq', r.cq_handle);
    const cqe = r.cqe;
    if (cqe < 1 || cqe > Limits.maxCqe) fail(E.EINVAL, `RESIZE_CQ: cqe ${cqe} not in 1..${Limits.maxCqe}`);
    const l = cqLayout(cqe);
    const used = cq.ring.used();
    if (used > l.cqe) fail(E.EINVAL, `RESIZE_CQ: ${used} completions outstanding do not fit in ${l.cqe}`);
    const m = this.mapClient(u.memfd, 0n, BigInt(l.bytes));
    cq.resize(m.mapping, l.slots, l.cqe);
    this.host.quotas.release(this.uid, 'mappings'); // resize unmapped the old ring
    return pack(U.RESIZE_CQ_RESP, { cqe: l.cqe });
  }

  destroyCq(r: U.Req<'DESTROY_CQ'>): Buffer {
    const cq = this.get('cq', r.cq_handle);
    if (cq.users > 0) fail(E.EBUSY, `DESTROY_CQ: CQ ${r.cq_handle} is used by ${cq.users} QPs`);
    this.destroy(r.cq_handle);
    return pack(U.DESTROY_CQ_RESP, { comp_events_reported: cq.compEvents, async_events_reported: cq.asyncEvents });
  }

  /**
   * The client closed a completion channel's event stream, as closing the fd is ibv_destroy_comp_channel on
   * Linux: the channel goes now, or when the last CQ using it does (libibverbs refuses to destroy a channel
   * CQs still use; a client that closed the socket anyway is not given the events any more).
   */
  compChannelClosed(ch: CompChannel): void {
    if (ch.closed || this.closed) return;
    ch.closed = true;
    ch.sock = null;
    ch.pending.length = 0;
    if (ch.users === 0) this.removeChannel(ch);
  }

  /** A closed channel no CQ uses any more goes (from compChannelClosed, or as its last CQ is released). */
  removeChannel(ch: CompChannel): void {
    const h = this.handleOf(ch);
    if (h >= 0) this.destroy(h);
  }

  reqNotifyCq(r: U.Req<'REQ_NOTIFY_CQ'>): void {
    this.get('cq', r.cq_handle).arm(r.solicited_only !== 0);
  }

  // ---- SRQ ----

  createSrq(r: U.Req<'CREATE_SRQ'>, u: U.Udata<'CREATE_SRQ'>): Buffer {
    const pd = this.get('pd', r.pd_handle);
    const maxWr = r.max_wr;
    const maxSge = r.max_sge;
    const l = srqLayout(maxWr, maxSge);
    if (!l) fail(E.EINVAL, `CREATE_SRQ: max_wr ${maxWr} / max_sge ${maxSge} out of range`);
    const limit = r.srq_limit;
    if (limit > l.slots) fail(E.EINVAL, `CREATE_SRQ: srq_limit ${limit} > max_wr`);
    this.admit('srq');
    const m = this.mapClient(u.memfd, 0n, BigInt(l.bytes));
    const srq = new Srq(this, r.user_handle, pd, m.mapping, new RecvRingConsumer(m.mapping.buffer, 0, l.slots, l.stride, maxSge), this.dev.allocSrqn());
    srq.limit = limit;
    pd.users++;
    this.dev.srqs.set(srq.srqn, srq);
    return pack(U.CREATE_SRQ_RESP, { srq_handle: this.add({ type: 'srq', obj: srq }), max_wr: l.slots, max_sge: maxSge, srqn: srq.srqn });
  }

  modifySrq(r: U.Req<'MODIFY_SRQ'>): void {
    const srq = this.get('srq', r.srq_handle);
    const mask = r.attr_mask;
    if (mask & ~(SrqAttrMask.MAX_WR | SrqAttrMask.LIMIT)) fail(E.EINVAL, `MODIFY_SRQ: attr_mask 0x${mask.toString(16)}`);
    if (mask & SrqAttrMask.MAX_WR) fail(E.EOPNOTSUPP, 'MODIFY_SRQ: resizing an SRQ is not supported');
    if (mask & SrqAttrMask.LIMIT) {
      const limit = r.srq_limit;
      if (limit > srq.ring.slots) fail(E.EINVAL, `MODIFY_SRQ: srq_limit ${limit} > max_wr ${srq.ring.slots}`);
      // armed; the event fires when taking a WQE leaves fewer than `limit` (IBA 10.2.9.3), not now
      srq.limit = limit;
    }
  }

  querySrq(r: U.Req<'QUERY_SRQ'>): Buffer {
    const srq = this.get('srq', r.srq_handle);
    return pack(U.QUERY_SRQ_RESP, { max_wr: srq.ring.slots, max_sge: srq.ring.maxSge, srq_limit: srq.limit });
  }

  destroySrq(r: U.Req<'DESTROY_SRQ'>): Buffer {
    const srq = this.get('srq', r.srq_handle);
    if (srq.users > 0) fail(E.EBUSY, `DESTROY_SRQ: SRQ ${r.srq_handle} is used by ${srq.users} QPs`);
    this.destroy(r.srq_handle);
    return pack(U.DESTROY_SRQ_RESP, { events_reported: srq.asyncEvents });
  }

  // ---- QP ----

  createQp(r: U.Req<'CREATE_QP'>, u: U.Udata<'CREATE_QP'>): Buffer {
    const type = r.qp_type;
    if (type !== QpType.RC && type !== QpType.UC && type !== QpType.UD) fail(E.EOPNOTSUPP, `CREATE_QP: QP type ${type} is not supported`);
    const pd = this.get('pd', r.pd_handle);
    const scq = this.get('cq', r.send_cq_handle, 'send_cq');
    const rcq = this.get('cq', r.recv_cq_handle, 'recv_cq');
    const srq = r.is_srq ? this.get('srq', r.srq_handle) : null;
    if (srq && srq.pd !== pd) fail(E.EINVAL, 'CREATE_QP: SRQ is in another PD');
    const l = qpLayout({
      maxSendWr: r.max_send_wr, maxRecvWr: r.max_recv_wr, maxSendSge: r.max_send_sge,
      maxRecvSge: r.max_recv_sge, maxInlineData: r.max_inline_data,
    }, !!srq);
    if (!l) fail(E.EINVAL, 'CREATE_QP: a capability is over the device limit');
    // the daemon's memory for its send WQEs, at most one per SQ slot: charged at the caps, allocated as they fill
    const bytes = QP_BASE_BYTES + l.sq.slots * wqeBytes(l.caps.maxSendSge, l.caps.maxInlineData);
    this.admit('qp');
    this.host.quotas.check(this.uid, 'memory', bytes);
    const qpn = this.dev.allocQpn();
    if (qpn < 0) fail(E.ENOMEM, 'CREATE_QP: no QP numbers left');
    const m = this.mapClient(u.memfd, 0n, BigInt(l.bytes));
    this.host.quotas.take(this.uid, 'memory', bytes);
    const rq = l.rq ? new RecvRingConsumer(m.mapping.buffer, l.rq.offset, l.rq.slots, l.rq.stride, l.caps.maxRecvSge) : null;
    const qp = new Qp(this.dev, this, qpn, type, pd, scq, rcq, srq, rq, !!r.sq_sig_all, l.caps, m.mapping, l.sq, r.user_handle);
    qp.chargedBytes = bytes;
    qp.setMtu(5, this.dev.mtuBytes);
    this.dev.qps.set(qpn, qp);
    pd.users++;
    scq.users++;
    rcq.users++;
    if (srq) srq.users++;
    const h = this.add({ type: 'qp', obj: qp });
    const c = l.caps;
    return pack(U.CREATE_QP_RESP, {
      qp_handle: h, qpn, max_send_wr: c.maxSendWr, max_recv_wr: c.maxRecvWr, max_send_sge: c.maxSendSge, max_recv_sge: c.maxRecvSge,
      max_inline_data: c.maxInlineData,
    });
  }

  queryQp(r: U.Req<'QUERY_QP'>): Buffer {
    const qp = this.get('qp', r.qp_handle);
    const a = qp.attr;
    const dest = {
      dgid: a.path.dgid, flow_label: a.path.flowLabel, sgid_index: a.path.sgidIndex, hop_limit: a.path.hopLimit,
      traffic_class: a.path.trafficClass, is_global: 1, port_num: a.port,
    };
    return pack(U.QUERY_QP_RESP, {
      dest, max_send_wr: qp.caps.maxSendWr, max_recv_wr: qp.caps.maxRecvWr, max_send_sge: qp.caps.maxSendSge,
      max_recv_sge: qp.caps.maxRecvSge, max_inline_data: qp.caps.maxInlineData, qkey: a.qkey, rq_psn: qp.resp.psn, sq_psn: qp.req.psn,
      dest_qp_num: a.destQpn, qp_access_flags: a.accessFlags, pkey_index: a.pkeyIndex, qp_state: qp.state, cur_qp_state: qp.state,
      path_mtu: a.pathMtu, path_mig_state: a.pathMigState, sq_draining: qp.state === QpState.SQD && qp.comp.idx !== qp.req.idx ? 1 : 0,
      max_rd_atomic: a.maxRdAtomic, max_dest_rd_atomic: a.maxDestRdAtomic, min_rnr_timer: a.minRnrTimer, port_num: a.port,
      timeout: a.timeout, retry_cnt: a.retryCnt, rnr_retry: a.rnrRetry, sq_sig_all: qp.sqSigAll ? 1 : 0,
    });
  }

  modifyQp(r: U.Req<'MODIFY_QP'>): void {
    const qp = this.get('qp', r.qp_handle);
    const mask = r.attr_mask;
    const cur = qp.state;
    if (mask & A.CUR_STATE && r.cur_qp_state !== cur) fail(E.EINVAL, `MODIFY_QP: cur_qp_state ${r.cur_qp_state} is not the QP's state ${cur}`);
    const next = mask & A.STATE ? r.qp_state : cur;
    const maskError = modifyMaskError(cur, next, qp.type, mask);
    if (maskError) fail(E.EINVAL, `MODIFY_QP: attr_mask 0x${mask.toString(16)}: ${maskError}`);
    // check every value before changing anything
    const dest = r.dest;
    if (mask & A.PORT && r.port_num !== 1) fail(E.EINVAL, `MODIFY_QP: port ${r.port_num} does not exist`);
    if (mask & A.PATH_MTU && !mtuBytes(r.path_mtu)) fail(E.EINVAL, `MODIFY_QP: path_mtu ${r.path_mtu}`);
    if (mask & A.PKEY_INDEX && r.pkey_index >= 1) fail(E.EINVAL, `MODIFY_QP: pkey_index ${r.pkey_index} (the table has 1 entry)`);
    if (mask & A.MAX_QP_RD_ATOMIC && r.max_rd_atomic > Limits.maxQpRdAtom) fail(E.EINVAL, `MODIFY_QP: max_rd_atomic ${r.max_rd_atomic}`);
    if (mask & A.MAX_DEST_RD_ATOMIC && r.max_dest_rd_atomic > Limits.maxQpRdAtom) fail(E.EINVAL, `MODIFY_QP: max_dest_rd_atomic ${r.max_dest_rd_atomic}`);
    if (mask & A.TIMEOUT && r.timeout > 31) fail(E.EINVAL, `MODIFY_QP: timeout ${r.timeout}`);
    if (mask & A.RETRY_CNT && r.retry_cnt > 7) fail(E.EINVAL, `MODIFY_QP: retry_cnt ${r.retry_cnt}`);
    if (mask & A.RNR_RETRY && r.rnr_retry > 7) fail(E.EINVAL, `MODIFY_QP: rnr_retry ${r.rnr_retry}`);
    if (mask & A.MIN_RNR_TIMER && r.min_rnr_timer > 31) fail(E.EINVAL, `MODIFY_QP: min_rnr_timer ${r.min_rnr_timer}`);
    if (mask & A.ACCESS_FLAGS && r.qp_access_flags & ~(Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ | Access.REMOTE_ATOMIC))
      fail(E.EINVAL, `MODIFY_QP: qp_access_flags 0x${r.qp_access_flags.toString(16)}`);
    if (mask & A.AV) {
      if (!dest.is_global) fail(E.EINVAL, 'MODIFY_QP: RoCE address vectors need a GRH (is_global)');
      if (dest.sgid_index >= this.dev.gids.length) fail(E.EINVAL, `MODIFY_QP: sgid_index ${dest.sgid_index} is not in the GID table`);
      if (dest.port_num !== 1 && dest.port_num !== 0) fail(E.EINVAL, `MODIFY_QP: ah_attr.port_num ${dest.port_num}`);
    }
    if (mask & A.DEST_QPN && r.dest_qp_num > 0xffffff) fail(E.EINVAL, `MODIFY_QP: dest_qp_num ${r.dest_qp_num}`);
    if (mask & A.ALT_PATH) fail(E.EOPNOTSUPP, 'MODIFY_QP: alternate paths are not supported');

    const a = qp.attr;
    if (mask & A.QKEY) a.qkey = r.qkey;
    if (mask & A.ACCESS_FLAGS) a.accessFlags = r.qp_access_flags;
    if (mask & A.PKEY_INDEX) a.pkeyIndex = r.pkey_index;
    if (mask & A.PORT) a.port = r.port_num;
    if (mask & A.PATH_MTU) {
      a.pathMtu = r.path_mtu;
      qp.setMtu(a.pathMtu, this.dev.mtuBytes);
    }
    if (mask & A.TIMEOUT) a.timeout = r.timeout;
    if (mask & A.RETRY_CNT) a.retryCnt = qp.comp.retryCnt = r.retry_cnt;
    if (mask & A.RNR_RETRY) a.rnrRetry = qp.comp.rnrRetry = r.rnr_retry;
    if (mask & A.MIN_RNR_TIMER) a.minRnrTimer = r.min_rnr_timer;
    if (mask & A.MAX_QP_RD_ATOMIC) a.maxRdAtomic = r.max_rd_atomic;
    if (mask & A.MAX_DEST_RD_ATOMIC) a.maxDestRdAtomic = r.max_dest_rd_atomic;
    if (mask & A.EN_SQD_ASYNC_NOTIFY) a.enSqdAsyncNotify = r.en_sqd_async_notify;
    if (mask & A.PATH_MIG_STATE) a.pathMigState = r.path_mig_state;
    if (mask & A.DEST_QPN) a.destQpn = r.dest_qp_num;
    if (mask & A.RQ_PSN) qp.resp.psn = r.rq_psn & 0xffffff;
    if (mask & A.SQ_PSN) qp.req.psn = qp.comp.psn = r.sq_psn & 0xffffff;
    if (mask & A.AV) {
      a.path = {
        dgid: dest.dgid.slice(), sgidIndex: dest.sgid_index, hopLimit: dest.hop_limit,
        trafficClass: dest.traffic_class, flowLabel: dest.flow_label, isGlobal: true,
      };
      if (qp.type !== QpType.UD) qp.srcPort = udpSport(a.path.flowLabel, qp.qpn, a.destQpn);
    }
    if (!(mask & A.STATE)) return;
    this.transition(qp, cur, next);
  }

  private transition(qp: Qp, cur: number, next: number): void {
    if (next === QpState.RESET) {
      qp.reset();
      return;
    }
    if (next === QpState.ERR) {
      toError(qp, 'modify_qp to ERR');
      return;
    }
    qp.state = next;
    if (next === QpState.SQD && cur === QpState.RTS && qp.comp.idx === qp.req.idx && qp.attr.enSqdAsyncNotify) {
      qp.attr.enSqdAsyncNotify = 0;
      qp.raise(EventType.SQ_DRAINED);
    }
    if (next === QpState.RTS && cur !== QpState.RTS) this.dev.doorbell(qp);
  }

  destroyQp(r: U.Req<'DESTROY_QP'>): Buffer {
    const qp = this.get('qp', r.qp_handle);
    this.destroy(r.qp_handle);
    return pack(U.DESTROY_QP_RESP, { events_reported: qp.asyncEvents });
  }

  /**
   * A client rings a QP's send queue: the connection's undecoded fast path and POST_SEND both come here.
   * 0, or EINVAL for a handle that is not a QP of this context.
   */
  doorbell(handle: number): number {
    const qp = this.find('qp', handle);
    if (!qp) return E.EINVAL;
    this.dev.doorbells++;
    this.dev.doorbell(qp);
    return 0;
  }

  postSend(r: U.Req<'POST_SEND'>): Buffer {
    this.get('qp', r.qp_handle);
    if (r.wr_count !== 0) fail(E.EINVAL, 'POST_SEND: WRs go in the shared send queue; the command is only the doorbell (wr_count 0)');
    this.doorbell(r.qp_handle);
    return pack(U.POST_SEND_RESP, { bad_wr: 0 });
  }

  /** POST_RECV as a doorbell: a receive posted to a QP in ERR must be flushed, and only a doorbell tells us. */
  postRecvDoorbell(r: U.Req<'POST_RECV'>): Buffer {
    const qp = this.get('qp', r.qp_handle);
    if (r.wr_count !== 0) fail(E.EINVAL, 'POST_RECV: WRs go in the shared receive queue; the command is only the doorbell (wr_count 0)');
    flushRecv(qp);
    this.dev.fabric.drain();
    return pack(U.POST_SEND_RESP, { bad_wr: 0 });
  }

  // ---- teardown ----

  /** Destroys everything, type by type in the object table's teardown order (each before what it holds). */
  destroyAll(): void {
    if (this.closed) return;
    this.closed = true;
    for (const t of OBJ_TYPES) {
      for (const [h, e] of [...this.handles]) {
        if (e.type !== t) continue;
        try {
          rowOf(e).release(this, e.obj);
        } catch (err) {
          this.host.log(`teardown of ${e.type} ${h} (pid ${this.pid}): ${(err as Error).message}`);
        }
        this.remove(h);
      }
    }
    this.host.dropToken(this.asyncToken);
    this.asyncSock?.destroy();
  }

  /** The resource tracker's rows for this context. */
  track(): Array<Record<string, unknown>> {
    const rows: Array<Record<string, unknown>> = [];
    for (const [h, e] of this.handles) {
      const id = this.dev.resIds.get(e.obj);
      const row: Record<string, unknown> = { dev: this.dev.name, pid: this.pid, uid: this.uid, comm: this.comm, type: e.type, handle: h, ctxn: this.ctxn };
      const own = rowOf(e).track?.(this, e.obj, id);
      if (own) Object.assign(row, own);
      rows.push(row);
    }
    return rows;
  }
}

/** What a QP costs the daemon besides its send WQEs (its state, receive WQE, responder resources), for the memory quota. */
const QP_BASE_BYTES = 16 * 1024;

/**
 * IBV_DEVICE_* flags. rxe on 6.1 reports 0x01223c76 (ibv_devinfo -v in the lab VM); softverbs
 * has no memory windows, no MEM_MGT_EXTENSIONS and no SRQ resize, so those bits are off.
 */
const DEVICE_CAP_FLAGS = 0x00001c76;

function need<T>(u: T | null, name: string): T {
  if (!u) throw new CmdError(E.EINVAL, `${name}: the softverbs provider data (memfd) is missing`);
  return u;
}
