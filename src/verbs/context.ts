/**
 * An open device (struct ibv_context): the command connection, the async
 * event stream, the device and port queries, and the objects created
 * directly on a context (PDs, completion channels, CQs).
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { constants as bufferConstants } from 'node:buffer';
import { CreateCqAttrFlags, EventType, WC_STANDARD_FLAGS, WcExFlags } from '../abi/enums.js';
import type { Infer, Input, StructDef } from '../abi/layout.js';
import { layout, unpack } from '../abi/layout.js';
import { cqLayout, Limits } from '../abi/queue.js';
import * as U from '../abi/uverbs.js';
import { ibClassDir } from '../common/paths.js';
import { bswap64, parseGidString } from '../common/format.js';
import { EventStream, type CommandChannel } from './channel.js';
import { exchangePath, putMemfd } from './fd-exchange.js';
import { CompletionChannel, CompletionQueue, CompletionQueueEx } from './cq.js';
import { atCaller, VerbsError } from './errors.js';
import { allocShared } from './memory.js';
import { mgmtQuery } from './mgmt.js';
import { ProtectionDomain } from './pd.js';
import { withQueueMemory } from './queue-memory.js';
import type { QueuePair } from './qp.js';
import type { SharedReceiveQueue } from './srq.js';
import type { AsyncEvent, Device, DeviceAttr, DeviceAttrEx, PortAttr } from './types.js';

/** The largest buffer allocBuffer makes: max_mr_size, and what a Buffer can span. */
const MAX_BUFFER = Math.min(Limits.maxMrSize, bufferConstants.MAX_LENGTH);

/** What an event can name: the objects created with a user_handle. */
type Eventful = QueuePair | CompletionQueue | SharedReceiveQueue;

const PORT_EVENTS: ReadonlySet<number> = new Set([
  EventType.PORT_ACTIVE, EventType.PORT_ERR, EventType.LID_CHANGE, EventType.PKEY_CHANGE, EventType.SM_CHANGE,
  EventType.CLIENT_REREGISTER, EventType.GID_CHANGE, EventType.DEVICE_FATAL,
]);

/** An open device (struct ibv_context). */
export class Context {
  private closed = false;
  private nextUserHandle = 1n;
  /** QPs, CQs and SRQs by the user_handle events name them with; an object leaves when it is destroyed. */
  private readonly byUserHandle = new Map<bigint, Eventful>();

  /** @internal */
  constructor(
    readonly device: Device,
    /** @internal */ readonly cmd: CommandChannel,
    private readonly events: EventStream,
    /** the key naming this context on the daemon's descriptor exchange (SV_GET_CONTEXT_RESP) */
    private readonly fdKey: number,
  ) {}

  /**
   * @internal hands a memfd of ours to the daemon for this context (PUT_MEMFD): the id the udata of the one command
   * that maps it names it by. One round trip, made just before that command.
   */
  async putMemfd(fd: number, verb: string): Promise<number> {
    this.cmd.ensureUp(verb);
    try {
      return await putMemfd(exchangePath(this.device.root, verb), this.fdKey, fd, verb);
    } catch (e) {
      throw e instanceof Error ? atCaller(e) : e;
    }
  }

  /** @internal a user_handle for a new QP, CQ or SRQ */
  register(o: Eventful): bigint {
    const h = this.nextUserHandle++;
    this.byUserHandle.set(h, o);
    return h;
  }

  /** @internal the object is destroyed: events no longer name it */
  unregister(h: bigint): void {
    this.byUserHandle.delete(h);
  }

  /** @internal */
  byHandle(h: bigint): Eventful | undefined {
    return this.byUserHandle.get(h);
  }

  /**
   * The device's hardware counters, by rxe's names (sent_pkts, rcvd_pkts,
   * duplicate_request, out_of_seq_request, rcvd_rnr_err, send_rnr_err,
   * rcvd_seq_err, ack_deferred, retry_exceeded_err, retry_rnr_exceeded_err,
   * completer_retry_err, send_err, link_downed, rdma_sends, rdma_recvs): what
   * rxe shows in /sys/class/infiniband/DEV/ports/1/hw_counters and
   * `rdma statistic show`. Asked of the daemon on a management connection.
   */
  async queryHwCounters(port = 1): Promise<Record<string, number>> {
    if (port !== 1) throw new VerbsError('queryHwCounters', 'EINVAL', `port ${port} does not exist (the device has port 1)`);
    const all = await mgmtQuery<Array<{ name: string; counters: Record<string, number> }>>(this.device.devPath, 'counters');
    const mine = all.find((d) => d.name === this.device.name);
    if (!mine) throw new VerbsError('queryHwCounters', 'ENODEV', `${this.device.name} is gone from its daemon`);
    return mine.counters;
  }

  /** @internal sends one uverbs command and decodes its response. */
  async command<S extends U.CmdSpec>(
    verb: string, spec: S, req: Input<S['req']>, udata?: S['udata'] extends infer D extends StructDef ? Input<D> : never,
  ): Promise<U.RespOf<S>> {
    let body: Buffer;
    try {
      body = await this.cmd.call(verb, U.frame(spec, req, udata));
    } catch (e) {
      throw e instanceof Error ? atCaller(e) : e;
    }
    return (spec.resp ? unpack(spec.resp, body) : {}) as U.RespOf<S>;
  }

  /**
   * @internal a destroy: its response, or null when the connection is gone (the daemon died, the device was
   * deleted, or closeDevice): the daemon released the object with the connection, so only this side is left to release.
   */
  async release<S extends U.CmdSpec>(verb: string, spec: S, req: Input<S['req']>): Promise<U.RespOf<S> | null> {
    let body: Buffer | null;
    try {
      body = await this.cmd.release(verb, U.frame(spec, req));
    } catch (e) {
      throw e instanceof Error ? atCaller(e) : e;
    }
    if (!body) return null;
    return (spec.resp ? unpack(spec.resp, body) : {}) as U.RespOf<S>;
  }

  /**
   * @internal sends one extended command (a WRITE_EX frame, as a C program's write() carries it) and returns what
   * its response pointer would get: `outBytes` of core response, then up to `udataOut` of the provider's.
   */
  async commandEx<Q extends StructDef, D extends StructDef>(
    verb: string, cmd: U.ExCmd, req: Q, reqIn: Input<Q>, outBytes: number, udata?: { def: D; value: Input<D> }, udataOut = 0,
  ): Promise<Buffer> {
    try {
      return await this.cmd.call(verb, U.exFrame(cmd, req, reqIn, outBytes, udata, udataOut));
    } catch (e) {
      throw e instanceof Error ? atCaller(e) : e;
    }
  }

  /** ibv_query_device */
  async queryDevice(): Promise<DeviceAttr> {
    return deviceAttr(await this.command('ibv_query_device', U.Spec.QUERY_DEVICE, {}));
  }

  /** ibv_query_device_ex (EX_QUERY_DEVICE) */
  async queryDeviceEx(): Promise<DeviceAttrEx> {
    const body = await this.commandEx('ibv_query_device_ex', U.ExCmd.QUERY_DEVICE, U.EX_QUERY_DEVICE, {}, layout(U.EX_QUERY_DEVICE_RESP).size);
    const r = unpack(U.EX_QUERY_DEVICE_RESP, body);
    return {
      ...deviceAttr(r.base), deviceCapFlagsEx: r.device_cap_flags_ex, completionTimestampMask: r.timestamp_mask, hcaCoreClock: r.hca_core_clock,
      maxWqTypeRq: r.max_wq_type_rq, rawPacketCaps: r.raw_packet_caps, maxDmSize: r.max_dm_size,
    };
  }

  /** ibv_query_port */
  async queryPort(port = 1): Promise<PortAttr> {
    const r = await this.command('ibv_query_port', U.Spec.QUERY_PORT, { port_num: port });
    return {
      state: r.state, maxMtu: r.max_mtu as PortAttr['maxMtu'], activeMtu: r.active_mtu as PortAttr['activeMtu'], gidTblLen: r.gid_tbl_len,
      portCapFlags: r.port_cap_flags, maxMsgSz: r.max_msg_sz, badPkeyCntr: r.bad_pkey_cntr, qkeyViolCntr: r.qkey_viol_cntr,
      pkeyTblLen: r.pkey_tbl_len, lid: r.lid, smLid: r.sm_lid, lmc: r.lmc, maxVlNum: r.max_vl_num, smSl: r.sm_sl,
      subnetTimeout: r.subnet_timeout, initTypeReply: r.init_type_reply, activeWidth: r.active_width, activeSpeed: r.active_speed,
      physState: r.phys_state, linkLayer: r.link_layer,
    };
  }

  /** ibv_query_gid: read from the discovery tree, as libibverbs reads sysfs. A missing entry is the zero GID. */
  queryGid(port: number, index: number): Uint8Array {
    try {
      const s = readFileSync(join(ibClassDir(this.device.root), this.device.name, 'ports', String(port), 'gids', String(index)), 'utf8');
      return parseGidString(s) ?? new Uint8Array(16);
    } catch {
      return new Uint8Array(16);
    }
  }

  /** ibv_query_gid_type: "RoCE v2" for every GID softverbs has. */
  queryGidType(port: number, index: number): string | null {
    try {
      return readFileSync(join(ibClassDir(this.device.root), this.device.name, 'ports', String(port), 'gid_attrs', 'types', String(index)), 'utf8').trim();
    } catch {
      return null;
    }
  }

  /** ibv_alloc_pd */
  async allocPd(): Promise<ProtectionDomain> {
    const r = await this.command('ibv_alloc_pd', U.Spec.ALLOC_PD, {});
    return new ProtectionDomain(this, r.pd_handle);
  }

  /** Shared memory the daemon can map: register it with `pd.regMr(buf, access)`. */
  allocBuffer(length: number): Buffer {
    // checked before any memfd or mapping is made: an absurd size is the caller's EINVAL, not a failed mmap (or an abort)
    if (!Number.isSafeInteger(length) || length < 1 || length > MAX_BUFFER) throw new VerbsError('allocBuffer', 'EINVAL', `length ${length} is not in 1..${MAX_BUFFER} (max_mr_size)`);
    return allocShared(length).buf;
  }

  /** ibv_create_comp_channel */
  async createCompChannel(): Promise<CompletionChannel> {
    const r = await this.command('ibv_create_comp_channel', U.Spec.CREATE_COMP_CHANNEL, {});
    const s = await EventStream.attach(this.device.devPath, U.SvCmd.ATTACH_COMP_CHANNEL, r.fd, layout(U.COMP_EVENT_DESC).size, 'ibv_create_comp_channel');
    return new CompletionChannel(this, r.fd, s);
  }

  /** ibv_create_cq */
  async createCq(cqe: number, channel: CompletionChannel | null = null, compVector = 0): Promise<CompletionQueue> {
    if (!Number.isInteger(cqe) || cqe < 1 || cqe > Limits.maxCqe) throw new VerbsError('ibv_create_cq', 'EINVAL', `cqe ${cqe} is not in 1..${Limits.maxCqe} (max_cqe)`);
    const l = cqLayout(cqe);
    return withQueueMemory(this, l.bytes, 'ibv_create_cq', async (mem) => {
      const cq = new CompletionQueue(this, mem, l, channel);
      try {
        const r = await this.command('ibv_create_cq', U.Spec.CREATE_CQ, { user_handle: cq.userHandle, cqe, comp_vector: compVector, comp_channel: channel ? channel.token : -1 }, { memfd_id: mem.id });
        cq.handle = r.cq_handle;
        cq.cqe = r.cqe;
        channel?.dependents.add(cq);
        return cq;
      } catch (e) {
        this.unregister(cq.userHandle);
        throw e;
      }
    });
  }

  /**
   * ibv_create_cq_ex (EX_CREATE_CQ): a CQ whose completions carry the fields `wcFlags` names (WcExFlags bits, or
   * their names). As librxe: the standard fields only (timestamps, VLANs, flow tags and tag matching are
   * EOPNOTSUPP), and no creation flag the HCA would see (IGNORE_OVERRUN: EOPNOTSUPP from the daemon, as from the
   * kernel's rxe); SINGLE_THREADED is the library's business and changes nothing here.
   */
  async createCqEx(attr: {
    cqe: number; wcFlags?: WcExFlags | Array<keyof typeof WcExFlags>; channel?: CompletionChannel | null; compVector?: number; flags?: number;
  }): Promise<CompletionQueueEx> {
    const { cqe, channel = null, compVector = 0, flags = 0 } = attr;
    const wcFlags = Array.isArray(attr.wcFlags) ? attr.wcFlags.reduce((a, n) => a | (WcExFlags[n] ?? wcFlagName(n)), 0) : attr.wcFlags ?? 0;
    if (wcFlags & ~WC_STANDARD_FLAGS) throw new VerbsError('ibv_create_cq_ex', 'EOPNOTSUPP', `wc_flags 0x${wcFlags.toString(16)}: only the standard fields (0x${WC_STANDARD_FLAGS.toString(16)}) are supported`);
    if (flags & ~(CreateCqAttrFlags.SINGLE_THREADED | CreateCqAttrFlags.IGNORE_OVERRUN)) throw new VerbsError('ibv_create_cq_ex', 'EOPNOTSUPP', `flags 0x${flags.toString(16)}`);
    if (!Number.isInteger(cqe) || cqe < 1 || cqe > Limits.maxCqe) throw new VerbsError('ibv_create_cq_ex', 'EINVAL', `cqe ${cqe} is not in 1..${Limits.maxCqe} (max_cqe)`);
    const l = cqLayout(cqe);
    return withQueueMemory(this, l.bytes, 'ibv_create_cq_ex', async (mem) => {
      const cq = new CompletionQueueEx(this, mem, l, channel, wcFlags);
      try {
        const body = await this.commandEx('ibv_create_cq_ex', U.ExCmd.CREATE_CQ, U.EX_CREATE_CQ, {
          user_handle: cq.userHandle, cqe, comp_vector: compVector, comp_channel: channel ? channel.token : -1,
          flags: flags & CreateCqAttrFlags.IGNORE_OVERRUN ? U.ExCqFlags.IGNORE_OVERRUN : 0,
        }, layout(U.EX_CREATE_CQ_RESP).size, { def: U.SV_QUEUE, value: { memfd_id: mem.id } });
        const r = unpack(U.EX_CREATE_CQ_RESP, body);
        cq.handle = r.base.cq_handle;
        cq.cqe = r.base.cqe;
        channel?.dependents.add(cq);
        return cq;
      } catch (e) {
        this.unregister(cq.userHandle);
        throw e;
      }
    });
  }

  /**
   * ibv_get_async_event: the next async event (waits). When the device goes away (the daemon died, the device was
   * deleted) that is DEVICE_FATAL, as Linux reports a disassociated device, and then null; null once the context is closed.
   */
  async getAsyncEvent(): Promise<AsyncEvent | null> {
    const rec = await this.events.next();
    if (!rec) {
      if (this.closed || this.fatalReported) return null;
      this.fatalReported = true;
      return { eventType: EventType.DEVICE_FATAL, element: 0 };
    }
    const d = unpack(U.ASYNC_EVENT_DESC, rec);
    const type = d.event_type as AsyncEvent['eventType'];
    // the daemon's own DEVICE_FATAL (the device deleted, the daemon stopping) is the one the end would make
    if (type === EventType.DEVICE_FATAL) this.fatalReported = true;
    const element = PORT_EVENTS.has(type) ? Number(d.element) : this.byUserHandle.get(d.element) ?? null;
    if (element instanceof CompletionQueue) element.asyncEvents++;
    return { eventType: type, element };
  }
  private fatalReported = false;

  /** Async events as an async iterator (ends when the context closes). */
  async *asyncEvents(): AsyncGenerator<AsyncEvent> {
    for (;;) {
      const e = await this.getAsyncEvent();
      if (!e) return;
      yield e;
    }
  }

  /** ibv_ack_async_event: nothing to release in softverbs; kept for symmetry. */
  ackAsyncEvent(_e: AsyncEvent): void {}

  /**
   * ibv_close_device: the daemon destroys everything this context still holds, and the rings of its QPs, CQs and
   * SRQs are unmapped here. Resolves once the connection is closed.
   */
  async closeDevice(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const o of [...this.byUserHandle.values()]) o.releaseLocal();
    this.byUserHandle.clear();
    void this.events.close();
    await this.cmd.close();
  }

  /** `await using ctx = await openDevice(…)` closes the device at the end of the block. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.closeDevice();
  }
}

/** ibv_device_attr from ib_uverbs_query_device_resp (QUERY_DEVICE's, and EX_QUERY_DEVICE's base). */
function deviceAttr(r: Infer<typeof U.QUERY_DEVICE_RESP>): DeviceAttr {
  const fw = r.fw_ver;
  return {
    // libibverbs formats the u64 as major.minor.sub_minor
    fwVer: `${(fw >> 32n) & 0xffffn}.${(fw >> 16n) & 0xffffn}.${fw & 0xffffn}`,
    // node_guid / sys_image_guid are __be64 on the wire; give them in host order
    nodeGuid: bswap64(r.node_guid), sysImageGuid: bswap64(r.sys_image_guid),
    maxMrSize: r.max_mr_size, pageSizeCap: r.page_size_cap, vendorId: r.vendor_id, vendorPartId: r.vendor_part_id, hwVer: r.hw_ver,
    maxQp: r.max_qp, maxQpWr: r.max_qp_wr, deviceCapFlags: r.device_cap_flags, maxSge: r.max_sge, maxSgeRd: r.max_sge_rd,
    maxCq: r.max_cq, maxCqe: r.max_cqe, maxMr: r.max_mr, maxPd: r.max_pd, maxQpRdAtom: r.max_qp_rd_atom, maxEeRdAtom: r.max_ee_rd_atom,
    maxResRdAtom: r.max_res_rd_atom, maxQpInitRdAtom: r.max_qp_init_rd_atom, maxEeInitRdAtom: r.max_ee_init_rd_atom,
    atomicCap: r.atomic_cap, maxEe: r.max_ee, maxRdd: r.max_rdd, maxMw: r.max_mw, maxRawIpv6Qp: r.max_raw_ipv6_qp,
    maxRawEthyQp: r.max_raw_ethy_qp, maxMcastGrp: r.max_mcast_grp, maxMcastQpAttach: r.max_mcast_qp_attach,
    maxTotalMcastQpAttach: r.max_total_mcast_qp_attach, maxAh: r.max_ah, maxFmr: r.max_fmr, maxMapPerFmr: r.max_map_per_fmr,
    maxSrq: r.max_srq, maxSrqWr: r.max_srq_wr, maxSrqSge: r.max_srq_sge, maxPkeys: r.max_pkeys, localCaAckDelay: r.local_ca_ack_delay,
    physPortCnt: r.phys_port_cnt,
  };
}

function wcFlagName(n: string): never {
  throw new VerbsError('ibv_create_cq_ex', 'EINVAL', `wc flag ${n} does not exist (one of ${Object.keys(WcExFlags).join(', ')})`);
}
