/**
 * The verbs API (libibverbs, the Node way) and the softverbs provider that
 * writes the shared queues. Slow-path verbs send uverbs commands and return
 * Promises; fast-path verbs (postSend, postRecv, postSrqRecv, pollCq,
 * reqNotifyCq) touch shared memory only — postSend then rings a doorbell.
 */
import { closeSync, existsSync, ftruncateSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { constants as bufferConstants } from 'node:buffer';
import { join, resolve, sep } from 'node:path';
import { EventType, QpState, QpType, SendFlags, WrOpcode, qpStateName } from '../abi/enums.js';
import { layout, unpack, type Values } from '../abi/layout.js';
import {
  CONS, cqLayout, Limits, NOTIFY, Notify, PROD, QP_STATE, qpLayout, SQ_IDLE, RING_HDR, RWQE, SGE_SIZE, srqLayout, SWQE, WC_SIZE, type QpCaps, type RingLayout,
} from '../abi/queue.js';
import * as U from '../abi/uverbs.js';
import { defaultRoot, ibClassDir, verbsClassDir } from '../common/paths.js';
import { checkTrustedRoot, UntrustedPath } from '../common/trust.js';
import { pidAlive } from '../common/proc.js';
import { mapShared, memfdCreate, unmap, type Mapping } from '../native/libc.js';
import { CommandChannel, EventStream } from './channel.js';
import { VerbsError } from './errors.js';
import { mgmtQuery } from './mgmt.js';
import { allocShared, atAddress, regionOf } from './memory.js';

// ---------------------------------------------------------------- devices

/** A device found in the discovery tree (struct ibv_device). */
export interface Device {
  /** ibdev name, e.g. "rxe0" */
  readonly name: string;
  /** kernel name of its device file, e.g. "uverbs0" */
  readonly devName: string;
  /** path of the device file */
  readonly devPath: string;
  /** node GUID as the sysfs string "xxxx:xxxx:xxxx:xxxx" */
  readonly nodeGuid: string;
  readonly root: string;
  /** the pid of the softverbsd serving it */
  readonly daemonPid: number;
}

/**
 * Who may own a root the library connects through: root, ourselves, and a dedicated
 * service user named in $SOFTVERBS_ROOT_OWNER (a uid), the daemon's possible owners.
 */
function trustedOwners(): number[] {
  const owners = [0, process.getuid?.() ?? 0];
  const extra = process.env.SOFTVERBS_ROOT_OWNER;
  if (extra && /^\d+$/.test(extra)) owners.push(Number(extra));
  return owners;
}

/** The rule the daemon applies to its root (common/trust.ts): a root another user could have planted is not connected through. */
function trustRoot(root: string, verb: string): void {
  try {
    checkTrustedRoot(root, trustedOwners());
  } catch (e) {
    if (e instanceof UntrustedPath) throw new VerbsError(verb, 'EACCES', `not trusting ${e.message} (set SOFTVERBS_ROOT_OWNER=<uid> if a dedicated user runs softverbsd)`);
    throw e;
  }
}

/** A device path read from the tree: a socket inside <root>/dev, owned by a trusted uid, not a symlink. */
function socketUnder(root: string, devPath: string): boolean {
  const dev = resolve(root, 'dev') + sep;
  if (!resolve(devPath).startsWith(dev) || devPath.split(sep).includes('..')) return false;
  try {
    const st = lstatSync(devPath);
    return st.isSocket() && trustedOwners().includes(st.uid);
  } catch {
    return false;
  }
}

/**
 * Lists the devices of the running daemon(s) under `root` (ibv_get_device_list).
 * Synchronous: it reads the discovery tree. Entries whose daemon is gone are
 * skipped, so a crashed daemon's tree does not list dead devices.
 */
export function getDeviceList(root = defaultRoot()): Device[] {
  const dir = verbsClassDir(root);
  if (!existsSync(dir)) return [];
  trustRoot(root, 'ibv_get_device_list');
  const out: Device[] = [];
  for (const k of readdirSync(dir).sort((a, b) => Number(a.slice(6)) - Number(b.slice(6)))) {
    try {
      const d = join(dir, k);
      const pid = Number(readFileSync(join(d, 'softverbsd_pid'), 'utf8'));
      if (!pidAlive(pid)) continue;
      const name = readFileSync(join(d, 'ibdev'), 'utf8').trim();
      const devPath = readFileSync(join(d, 'dev_path'), 'utf8').trim();
      if (!socketUnder(root, devPath)) continue;
      const nodeGuid = readFileSync(join(ibClassDir(root), name, 'node_guid'), 'utf8').trim();
      out.push({ name, devName: k, devPath, nodeGuid, root, daemonPid: pid });
    } catch {
      /* an entry being written or removed: not a device yet / any more */
    }
  }
  return out;
}

/** Opens a device (ibv_open_device): a context with its own handles and event stream. */
export async function openDevice(dev: Device | string, root = defaultRoot()): Promise<Context> {
  const d = typeof dev === 'string' ? getDeviceList(root).find((x) => x.name === dev) : dev;
  if (!d) throw new VerbsError('ibv_open_device', 'ENODEV', `no device ${String(dev)}`);
  trustRoot(d.root, 'ibv_open_device');
  if (!socketUnder(d.root, d.devPath)) throw new VerbsError('ibv_open_device', 'EACCES', `${d.devPath} is not a device file of ${d.root}`);
  // as libibverbs does: a kernel side speaking another uverbs ABI is refused before any command
  let abi = '';
  try {
    abi = readFileSync(join(verbsClassDir(d.root), d.devName, 'abi_version'), 'utf8').trim();
  } catch {
    /* reported below */
  }
  if (abi !== String(U.ABI_VERSION)) throw new VerbsError('ibv_open_device', 'ENOSYS', `${d.name} speaks uverbs ABI version ${abi || '(none)'}, this library speaks ${U.ABI_VERSION}`);
  const ch = await CommandChannel.open(d.devPath);
  ch.daemonPid = d.daemonPid ?? 0;
  try {
    const f = U.frame(U.Cmd.GET_CONTEXT, U.COMMANDS.get(U.Cmd.GET_CONTEXT)!, {});
    const resp = unpack(U.GET_CONTEXT_RESP, await ch.call('ibv_open_device', f));
    const events = await EventStream.attach(d.devPath, U.SvCmd.ATTACH_ASYNC, resp.async_fd as number, layout(U.ASYNC_EVENT_DESC).size, 'ibv_open_device');
    return new Context(d, ch, events);
  } catch (e) {
    ch.close();
    throw e;
  }
}

/** The largest buffer allocBuffer makes: max_mr_size, and what a Buffer can span. */
const MAX_BUFFER = Math.min(Limits.maxMrSize, bufferConstants.MAX_LENGTH);

// ---------------------------------------------------------------- plain data types

/** ibv_device_attr (the fields rdma-core prints, camelCase) */
export interface DeviceAttr {
  fwVer: string; nodeGuid: bigint; sysImageGuid: bigint; maxMrSize: bigint; pageSizeCap: bigint; vendorId: number; vendorPartId: number;
  hwVer: number; maxQp: number; maxQpWr: number; deviceCapFlags: number; maxSge: number; maxSgeRd: number; maxCq: number; maxCqe: number;
  maxMr: number; maxPd: number; maxQpRdAtom: number; maxEeRdAtom: number; maxResRdAtom: number; maxQpInitRdAtom: number;
  maxEeInitRdAtom: number; atomicCap: number; maxEe: number; maxRdd: number; maxMw: number; maxRawIpv6Qp: number; maxRawEthyQp: number;
  maxMcastGrp: number; maxMcastQpAttach: number; maxTotalMcastQpAttach: number; maxAh: number; maxFmr: number; maxMapPerFmr: number;
  maxSrq: number; maxSrqWr: number; maxSrqSge: number; maxPkeys: number; localCaAckDelay: number; physPortCnt: number;
}

/** ibv_port_attr */
export interface PortAttr {
  state: number; maxMtu: number; activeMtu: number; gidTblLen: number; portCapFlags: number; maxMsgSz: number; badPkeyCntr: number;
  qkeyViolCntr: number; pkeyTblLen: number; lid: number; smLid: number; lmc: number; maxVlNum: number; smSl: number; subnetTimeout: number;
  initTypeReply: number; activeWidth: number; activeSpeed: number; physState: number; linkLayer: number;
}

/** An SGE (struct ibv_sge): addr is in the MR's IOVA space (mr.addr + offset). */
export interface Sge { addr: bigint | number; length: number; lkey: number }

/** A send work request (struct ibv_send_wr). `imm` is the 32-bit value (what ntohl(imm_data) gives in C). */
export interface SendWr {
  wrId?: bigint | number;
  opcode: number;
  sendFlags?: number;
  sgList?: Sge[];
  imm?: number;
  rdma?: { remoteAddr: bigint | number; rkey: number };
  atomic?: { remoteAddr: bigint | number; compareAdd: bigint | number; swap?: bigint | number; rkey: number };
  ud?: { ah: AddressHandle; remoteQpn: number; remoteQkey: number };
}

/** A receive work request (struct ibv_recv_wr). */
export interface RecvWr { wrId?: bigint | number; sgList?: Sge[] }

/** A work completion (struct ibv_wc). */
export class WorkCompletion {
  wrId = 0n;
  status = 0;
  opcode = 0;
  vendorErr = 0;
  byteLen = 0;
  imm = 0;
  qpNum = 0;
  srcQp = 0;
  wcFlags = 0;
  pkeyIndex = 0;
  slid = 0;
  sl = 0;
  dlidPathBits = 0;
}

/** ibv_global_route */
export interface GlobalRoute { dgid: Uint8Array; flowLabel?: number; sgidIndex?: number; hopLimit?: number; trafficClass?: number }
/** ibv_ah_attr */
export interface AhAttr { grh: GlobalRoute; isGlobal?: boolean; dlid?: number; sl?: number; srcPathBits?: number; staticRate?: number; portNum?: number }

/** ibv_qp_attr (the fields modify/query use) */
export interface QpAttr {
  qpState?: number; curQpState?: number; pathMtu?: number; pathMigState?: number; qkey?: number; rqPsn?: number; sqPsn?: number;
  destQpNum?: number; qpAccessFlags?: number; cap?: QpCaps; ahAttr?: AhAttr; pkeyIndex?: number; enSqdAsyncNotify?: number;
  sqDraining?: number; maxRdAtomic?: number; maxDestRdAtomic?: number; minRnrTimer?: number; portNum?: number; timeout?: number;
  retryCnt?: number; rnrRetry?: number;
}

/** ibv_qp_init_attr */
export interface QpInitAttr {
  sendCq: CompletionQueue;
  recvCq: CompletionQueue;
  srq?: SharedReceiveQueue | null;
  cap: Partial<QpCaps>;
  qpType: number;
  sqSigAll?: boolean;
}

/** An async event (struct ibv_async_event). */
export interface AsyncEvent {
  eventType: number;
  /** the QP, CQ or SRQ it is about, or the port number */
  element: QueuePair | CompletionQueue | SharedReceiveQueue | number | null;
}

// ---------------------------------------------------------------- context

let nextUserHandle = 1n;
const byUserHandle = new Map<bigint, WeakRef<QueuePair | CompletionQueue | SharedReceiveQueue>>();
function register(o: QueuePair | CompletionQueue | SharedReceiveQueue): bigint {
  const h = nextUserHandle++;
  byUserHandle.set(h, new WeakRef(o));
  return h;
}

/** An open device (struct ibv_context). */
export class Context {
  private closed = false;
  constructor(
    readonly device: Device,
    /** @internal */ readonly cmd: CommandChannel,
    private readonly events: EventStream,
  ) {}

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
  async command(verb: string, cmd: number, req: Partial<Values>, udata?: Partial<Values>): Promise<Values> {
    const spec = U.COMMANDS.get(cmd)!;
    const body = await this.cmd.call(verb, U.frame(cmd, spec, req, udata));
    return spec.resp ? unpack(spec.resp, body) : {};
  }

  /** ibv_query_device */
  async queryDevice(): Promise<DeviceAttr> {
    const r = await this.command('ibv_query_device', U.Cmd.QUERY_DEVICE, {});
    const o = camel(r) as unknown as DeviceAttr;
    const fw = r.fw_ver as bigint;
    // libibverbs formats the u64 as major.minor.sub_minor
    o.fwVer = `${(fw >> 32n) & 0xffffn}.${(fw >> 16n) & 0xffffn}.${fw & 0xffffn}`;
    // node_guid / sys_image_guid are __be64 on the wire; give them in host order
    o.nodeGuid = bswap64(r.node_guid as bigint);
    o.sysImageGuid = bswap64(r.sys_image_guid as bigint);
    return o;
  }

  /** ibv_query_port */
  async queryPort(port = 1): Promise<PortAttr> {
    return camel(await this.command('ibv_query_port', U.Cmd.QUERY_PORT, { port_num: port })) as unknown as PortAttr;
  }

  /** ibv_query_gid: read from the discovery tree, as libibverbs reads sysfs. A missing entry is the zero GID. */
  queryGid(port: number, index: number): Uint8Array {
    const g = new Uint8Array(16);
    try {
      const s = readFileSync(join(ibClassDir(this.device.root), this.device.name, 'ports', String(port), 'gids', String(index)), 'utf8').trim();
      s.split(':').forEach((h, i) => {
        const v = parseInt(h, 16);
        g[2 * i] = v >> 8;
        g[2 * i + 1] = v & 0xff;
      });
    } catch {
      /* zero GID */
    }
    return g;
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
    const r = await this.command('ibv_alloc_pd', U.Cmd.ALLOC_PD, {});
    return new ProtectionDomain(this, r.pd_handle as number);
  }

  /** Shared memory the daemon can map: register it with `pd.regMr(buf, access)`. */
  allocBuffer(length: number): Buffer {
    // checked before any memfd or mapping is made: an absurd size is the caller's EINVAL, not a failed mmap (or an abort)
    if (!Number.isSafeInteger(length) || length < 1 || length > MAX_BUFFER) throw new VerbsError('allocBuffer', 'EINVAL', `length ${length} is not in 1..${MAX_BUFFER} (max_mr_size)`);
    return allocShared(length).buf;
  }

  /** ibv_create_comp_channel */
  async createCompChannel(): Promise<CompletionChannel> {
    const r = await this.command('ibv_create_comp_channel', U.Cmd.CREATE_COMP_CHANNEL, {});
    const token = r.fd as number;
    const s = await EventStream.attach(this.device.devPath, U.SvCmd.ATTACH_COMP_CHANNEL, token, layout(U.COMP_EVENT_DESC).size, 'ibv_create_comp_channel');
    return new CompletionChannel(this, token, s);
  }

  /** ibv_create_cq */
  async createCq(cqe: number, channel: CompletionChannel | null = null, compVector = 0): Promise<CompletionQueue> {
    if (!Number.isInteger(cqe) || cqe < 1 || cqe > Limits.maxCqe) throw new VerbsError('ibv_create_cq', 'EINVAL', `cqe ${cqe} is not in 1..${Limits.maxCqe} (max_cqe)`);
    const l = cqLayout(cqe);
    return withQueueMemory(l.bytes, 'ibv_create_cq', async (mem) => {
      const cq = new CompletionQueue(this, mem, l, channel);
      const r = await this.command('ibv_create_cq', U.Cmd.CREATE_CQ, { user_handle: cq.userHandle, cqe, comp_vector: compVector, comp_channel: channel ? channel.token : -1 }, { memfd: mem.fd });
      cq.handle = r.cq_handle as number;
      cq.cqe = r.cqe as number;
      return cq;
    });
  }

  /** ibv_get_async_event: the next async event (waits). Null once the context is closed. */
  async getAsyncEvent(): Promise<AsyncEvent | null> {
    const rec = await this.events.next();
    if (!rec) return null;
    const d = unpack(U.ASYNC_EVENT_DESC, rec);
    const type = d.event_type as number;
    const el = d.element as bigint;
    const isPort = type === EventType.PORT_ACTIVE || type === EventType.PORT_ERR || type === EventType.LID_CHANGE || type === EventType.PKEY_CHANGE || type === EventType.SM_CHANGE || type === EventType.CLIENT_REREGISTER || type === EventType.GID_CHANGE || type === EventType.DEVICE_FATAL;
    return { eventType: type, element: isPort ? Number(el) : byUserHandle.get(el)?.deref() ?? null };
  }

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

  /** ibv_close_device: the daemon destroys everything this context still holds. */
  closeDevice(): void {
    if (this.closed) return;
    this.closed = true;
    this.cmd.close();
    this.events.close();
  }
}

/** Queue memory: a memfd the daemon maps, mapped here too. */
interface QueueMemory { fd: number; mapping: Mapping; free(): void }

/**
 * Creates queue memory, hands it to `use` (which registers it with the
 * daemon), and closes the fd afterwards: the mapping stays and the daemon
 * holds its own reference. If `use` fails, the mapping goes too.
 */
async function withQueueMemory<T>(bytes: number, verb: string, use: (mem: QueueMemory) => Promise<T>): Promise<T> {
  let fd = -1;
  let mem: QueueMemory;
  try {
    fd = memfdCreate(verb);
    ftruncateSync(fd, bytes);
    const mapping = mapShared(fd, bytes, 0);
    mem = { fd, mapping, free: () => unmap(mapping) };
  } catch (e) {
    if (fd >= 0) closeSync(fd);
    throw new VerbsError(verb, (e as { code?: string }).code ?? 'ENOMEM', (e as Error).message);
  }
  try {
    return await use(mem);
  } catch (e) {
    mem.free();
    throw e;
  } finally {
    closeSync(fd);
  }
}

function bswap64(v: bigint): bigint {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(v);
  return b.readBigUInt64BE();
}

function camel(v: Values): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    if (k === 'reserved' || k === 'response') continue;
    o[k.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase())] = x;
  }
  return o;
}

// ---------------------------------------------------------------- PD, MR, AH

/** A protection domain (struct ibv_pd). */
export class ProtectionDomain {
  constructor(readonly context: Context, /** @internal */ readonly handle: number) {}

  /**
   * ibv_reg_mr. `buf` must be memory from `ctx.allocBuffer` / `pd.allocMr`:
   * the daemon maps the same pages, so a plain Buffer cannot be registered.
   */
  async regMr(buf: Uint8Array, access: number): Promise<MemoryRegion> {
    const where = regionOf(buf);
    if (!where) throw new VerbsError('ibv_reg_mr', 'EINVAL', 'this Buffer is not shared memory: get one from ctx.allocBuffer() or use pd.allocMr()');
    if (buf.byteLength === 0) throw new VerbsError('ibv_reg_mr', 'EINVAL', 'zero-length buffer');
    const addr = where.region.addr + BigInt(where.offset);
    const r = await this.context.command('ibv_reg_mr', U.Cmd.REG_MR, { start: addr, length: BigInt(buf.byteLength), hca_va: addr, pd_handle: this.handle, access_flags: access }, { memfd: where.region.fd, memfd_offset: BigInt(where.offset) });
    return new MemoryRegion(this, r.mr_handle as number, r.lkey as number, r.rkey as number, addr, Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength), access);
  }

  /** Allocates shared memory of `length` bytes and registers it. */
  async allocMr(length: number, access: number): Promise<MemoryRegion> {
    return this.regMr(this.context.allocBuffer(length), access);
  }

  /** ibv_create_ah */
  async createAh(attr: AhAttr): Promise<AddressHandle> {
    const g = attr.grh;
    const r = await this.context.command('ibv_create_ah', U.Cmd.CREATE_AH, {
      pd_handle: this.handle,
      attr: {
        grh: { dgid: g.dgid, flow_label: g.flowLabel ?? 0, sgid_index: g.sgidIndex ?? 0, hop_limit: g.hopLimit ?? 64, traffic_class: g.trafficClass ?? 0 },
        dlid: attr.dlid ?? 0, sl: attr.sl ?? 0, src_path_bits: attr.srcPathBits ?? 0, static_rate: attr.staticRate ?? 0,
        is_global: attr.isGlobal === false ? 0 : 1, port_num: attr.portNum ?? 1,
      },
    });
    return new AddressHandle(this, r.ah_handle as number);
  }

  /** ibv_create_qp */
  async createQp(init: QpInitAttr): Promise<QueuePair> {
    const want: QpCaps = {
      maxSendWr: init.cap.maxSendWr ?? 1, maxRecvWr: init.cap.maxRecvWr ?? 1, maxSendSge: init.cap.maxSendSge ?? 1,
      maxRecvSge: init.cap.maxRecvSge ?? 1, maxInlineData: init.cap.maxInlineData ?? 0,
    };
    const l = qpLayout(want, !!init.srq);
    if (!l) throw new VerbsError('ibv_create_qp', 'EINVAL', 'a capability is over the device limit');
    return withQueueMemory(l.bytes, 'ibv_create_qp', async (mem) => {
      const qp = new QueuePair(this, init, l.caps, mem.mapping, l.sq, l.rq);
      const r = await this.context.command('ibv_create_qp', U.Cmd.CREATE_QP, {
        user_handle: qp.userHandle, pd_handle: this.handle, send_cq_handle: init.sendCq.handle, recv_cq_handle: init.recvCq.handle,
        srq_handle: init.srq?.handle ?? 0, max_send_wr: want.maxSendWr, max_recv_wr: want.maxRecvWr, max_send_sge: want.maxSendSge,
        max_recv_sge: want.maxRecvSge, max_inline_data: want.maxInlineData, sq_sig_all: init.sqSigAll ? 1 : 0, qp_type: init.qpType,
        is_srq: init.srq ? 1 : 0,
      }, { memfd: mem.fd });
      qp.handle = r.qp_handle as number;
      qp.qpNum = r.qpn as number;
      qp.initDoorbells();
      return qp;
    });
  }

  /** ibv_create_srq */
  async createSrq(attr: { maxWr: number; maxSge: number; srqLimit?: number }): Promise<SharedReceiveQueue> {
    const l = srqLayout(attr.maxWr, attr.maxSge);
    if (!l) throw new VerbsError('ibv_create_srq', 'EINVAL', `max_wr ${attr.maxWr} / max_sge ${attr.maxSge}`);
    return withQueueMemory(l.bytes, 'ibv_create_srq', async (mem) => {
      const srq = new SharedReceiveQueue(this, mem.mapping, l, attr.maxSge);
      const r = await this.context.command('ibv_create_srq', U.Cmd.CREATE_SRQ, { user_handle: srq.userHandle, pd_handle: this.handle, max_wr: attr.maxWr, max_sge: attr.maxSge, srq_limit: attr.srqLimit ?? 0 }, { memfd: mem.fd });
      srq.handle = r.srq_handle as number;
      srq.srqNum = r.srqn as number;
      return srq;
    });
  }

  /** ibv_dealloc_pd (EBUSY while MRs, QPs, SRQs or AHs use it) */
  async deallocPd(): Promise<void> {
    await this.context.command('ibv_dealloc_pd', U.Cmd.DEALLOC_PD, { pd_handle: this.handle });
  }
}

/** A memory region (struct ibv_mr). `addr` is its IOVA: SGEs and remote addresses are `mr.addr + offset`. */
export class MemoryRegion {
  constructor(
    public pd: ProtectionDomain,
    /** @internal */ readonly handle: number,
    public lkey: number,
    public rkey: number,
    public addr: bigint,
    /** the registered bytes */
    public buf: Buffer,
    public access: number,
  ) {}
  get length(): number {
    return this.buf.byteLength;
  }
  /** An SGE covering [offset, offset+length) of this MR. */
  sge(offset = 0, length = this.length - offset): Sge {
    return { addr: this.addr + BigInt(offset), length, lkey: this.lkey };
  }
  /** ibv_rereg_mr (flags: ReregMrFlags). New keys come back, the old ones stop working. */
  async reregMr(flags: number, opts: { pd?: ProtectionDomain; buf?: Uint8Array; access?: number }): Promise<void> {
    let udata: Partial<Values> | undefined;
    let start = 0n;
    let len = 0n;
    if (opts.buf) {
      const w = regionOf(opts.buf);
      if (!w) throw new VerbsError('ibv_rereg_mr', 'EINVAL', 'this Buffer is not shared memory');
      start = w.region.addr + BigInt(w.offset);
      len = BigInt(opts.buf.byteLength);
      udata = { memfd: w.region.fd, memfd_offset: BigInt(w.offset) };
    }
    const r = await this.pd.context.command('ibv_rereg_mr', U.Cmd.REREG_MR, {
      mr_handle: this.handle, flags, start, length: len, hca_va: start, pd_handle: opts.pd?.handle ?? this.pd.handle, access_flags: opts.access ?? this.access,
    }, udata ?? { memfd: 0, memfd_offset: 0n });
    this.lkey = r.lkey as number;
    this.rkey = r.rkey as number;
    if (opts.pd) this.pd = opts.pd;
    if (opts.access !== undefined) this.access = opts.access;
    if (opts.buf) {
      this.buf = Buffer.from(opts.buf.buffer, opts.buf.byteOffset, opts.buf.byteLength);
      this.addr = start;
    }
  }
  /** ibv_dereg_mr */
  async deregMr(): Promise<void> {
    await this.pd.context.command('ibv_dereg_mr', U.Cmd.DEREG_MR, { mr_handle: this.handle });
  }
}

/** An address handle (struct ibv_ah), for UD sends. */
export class AddressHandle {
  constructor(readonly pd: ProtectionDomain, /** @internal */ readonly handle: number) {}
  /** ibv_destroy_ah */
  async destroyAh(): Promise<void> {
    await this.pd.context.command('ibv_destroy_ah', U.Cmd.DESTROY_AH, { ah_handle: this.handle });
  }
}

// ---------------------------------------------------------------- CQ and channel

/** A completion channel (struct ibv_comp_channel). */
export class CompletionChannel {
  constructor(readonly context: Context, /** @internal */ readonly token: number, private readonly stream: EventStream) {}

  /** ibv_get_cq_event: waits for the next completion event and returns its CQ (null once closed). */
  async getCqEvent(): Promise<CompletionQueue | null> {
    for (;;) {
      const rec = await this.stream.next();
      if (!rec) return null;
      const cq = byUserHandle.get(rec.readBigUInt64LE(0))?.deref();
      if (cq instanceof CompletionQueue) {
        cq.eventsUnacked++;
        return cq;
      }
    }
  }

  /** Completion events as an async iterator. */
  async *[Symbol.asyncIterator](): AsyncGenerator<CompletionQueue> {
    for (;;) {
      const cq = await this.getCqEvent();
      if (!cq) return;
      yield cq;
    }
  }

  /** ibv_destroy_comp_channel: closes the event stream. */
  destroyCompChannel(): void {
    this.stream.close();
  }
}

/** A completion queue (struct ibv_cq). */
export class CompletionQueue {
  /** @internal */ handle = -1;
  /** usable entries */
  cqe: number;
  /** @internal */ readonly userHandle: bigint;
  /** completion events got and not yet acknowledged (ibv_ack_cq_events) */
  eventsUnacked = 0;
  private emptyPolls = 0;
  private hdr: Int32Array;
  private dv: DataView;
  private mask: number;
  private cons = 0;
  constructor(
    readonly context: Context,
    private mem: QueueMemory,
    l: RingLayout & { cqe: number },
    readonly channel: CompletionChannel | null,
  ) {
    this.cqe = l.cqe;
    this.hdr = new Int32Array(mem.mapping.buffer, 0, RING_HDR / 4);
    this.dv = new DataView(mem.mapping.buffer);
    this.mask = l.slots - 1;
    this.userHandle = register(this);
  }

  /**
   * ibv_poll_cq: up to `max` completions (default 1) as new objects, or, given
   * an array of WorkCompletion, fills it from index 0 and returns the count
   * (no allocation). Pure shared-memory reads: no syscall, no message.
   */
  pollCq(max?: number): WorkCompletion[];
  pollCq(out: WorkCompletion[]): number;
  pollCq(arg: number | WorkCompletion[] = 1): WorkCompletion[] | number {
    const ch = this.context.cmd;
    ch.ensureUp('ibv_poll_cq');
    const fill = Array.isArray(arg);
    const max = fill ? arg.length : arg;
    const out: WorkCompletion[] = fill ? arg : [];
    const prod = Atomics.load(this.hdr, PROD) >>> 0;
    let n = 0;
    const dv = this.dv;
    while (n < max && this.cons !== prod) {
      const o = RING_HDR + (this.cons & this.mask) * WC_SIZE;
      const wc = fill ? out[n]! : new WorkCompletion();
      wc.wrId = dv.getBigUint64(o, true);
      wc.status = dv.getUint32(o + 8, true);
      wc.opcode = dv.getUint32(o + 12, true);
      wc.vendorErr = dv.getUint32(o + 16, true);
      wc.byteLen = dv.getUint32(o + 20, true);
      wc.imm = dv.getUint32(o + 24, true);
      wc.qpNum = dv.getUint32(o + 28, true);
      wc.srcQp = dv.getUint32(o + 32, true);
      wc.wcFlags = dv.getUint32(o + 36, true);
      wc.pkeyIndex = dv.getUint16(o + 40, true);
      wc.slid = dv.getUint16(o + 42, true);
      wc.sl = dv.getUint8(o + 44);
      wc.dlidPathBits = dv.getUint8(o + 45);
      if (!fill) out.push(wc);
      n++;
      this.cons = (this.cons + 1) >>> 0;
    }
    if (n) Atomics.store(this.hdr, CONS, this.cons | 0);
    // nothing there: every 1024 empty polls, make sure there is still a daemon to fill it (a poll loop that never
    // yields would otherwise wait for ever on a dead one)
    else if (++this.emptyPolls >= 1024) {
      this.emptyPolls = 0;
      ch.probe('ibv_poll_cq');
    }
    return fill ? n : out;
  }

  /** ibv_req_notify_cq: arms the CQ in shared memory; the next (solicited) completion sends an event to the channel. */
  reqNotifyCq(solicitedOnly = false): void {
    this.context.cmd.ensureUp('ibv_req_notify_cq');
    Atomics.store(this.hdr, NOTIFY, solicitedOnly ? Notify.SOLICITED : Notify.NEXT_COMP);
  }

  /** ibv_ack_cq_events */
  ackCqEvents(n: number): void {
    this.eventsUnacked = Math.max(0, this.eventsUnacked - n);
  }

  /** ibv_resize_cq */
  async resizeCq(cqe: number): Promise<void> {
    const l = cqLayout(cqe);
    await withQueueMemory(l.bytes, 'ibv_resize_cq', async (mem) => {
      const r = await this.context.command('ibv_resize_cq', U.Cmd.RESIZE_CQ, { cq_handle: this.handle, cqe }, { memfd: mem.fd });
      this.mem.free();
      this.mem = mem;
      this.hdr = new Int32Array(mem.mapping.buffer, 0, RING_HDR / 4);
      this.dv = new DataView(mem.mapping.buffer);
      this.mask = l.slots - 1;
      this.cons = 0;
      this.cqe = r.cqe as number;
    });
  }

  /** ibv_destroy_cq (EBUSY while QPs use it) */
  async destroyCq(): Promise<{ compEventsReported: number; asyncEventsReported: number }> {
    const r = await this.context.command('ibv_destroy_cq', U.Cmd.DESTROY_CQ, { cq_handle: this.handle });
    this.mem.free();
    return { compEventsReported: r.comp_events_reported as number, asyncEventsReported: r.async_events_reported as number };
  }
}

// ---------------------------------------------------------------- receive rings

/** The client side of a receive ring (RQ or SRQ). */
class RecvProducer {
  readonly hdr: Int32Array;
  readonly dv: DataView;
  prod = 0;
  constructor(mapping: Mapping, readonly l: RingLayout, readonly maxSge: number) {
    this.hdr = new Int32Array(mapping.buffer, l.offset, RING_HDR / 4);
    this.dv = new DataView(mapping.buffer, l.offset);
  }
  /** Writes WRs; throws (with bad_wr) for one that does not fit or is malformed. A single WR takes no array: nothing is allocated. */
  post(verb: string, wrs: RecvWr | RecvWr[]): void {
    const cons = Atomics.load(this.hdr, CONS) >>> 0;
    try {
      if (!Array.isArray(wrs)) this.one(verb, wrs, cons, 0);
      else for (let i = 0; i < wrs.length; i++) this.one(verb, wrs[i]!, cons, i);
    } finally {
      Atomics.store(this.hdr, PROD, this.prod | 0);
    }
  }

  private one(verb: string, wr: RecvWr, cons: number, i: number): void {
    if (((this.prod - cons) >>> 0) >= this.l.slots) throw new VerbsError(verb, 'ENOMEM', 'receive queue full', i);
    const sg = wr.sgList;
    const n = sg ? sg.length : 0;
    if (n > this.maxSge) throw new VerbsError(verb, 'EINVAL', `${n} SGEs > max_recv_sge ${this.maxSge}`, i);
    const o = RING_HDR + (this.prod & (this.l.slots - 1)) * this.l.stride;
    const id = wr.wrId ?? 0;
    this.dv.setBigUint64(o + RWQE.WR_ID, typeof id === 'bigint' ? id : BigInt(id), true);
    this.dv.setUint32(o + RWQE.NUM_SGE, n, true);
    for (let j = 0; j < n; j++) writeSge(this.dv, o + RWQE.HDR + j * SGE_SIZE, sg![j]!);
    this.prod = (this.prod + 1) >>> 0;
  }
}

function writeSge(dv: DataView, o: number, s: Sge): void {
  dv.setBigUint64(o, typeof s.addr === 'bigint' ? s.addr : BigInt(s.addr), true);
  dv.setUint32(o + 8, s.length >>> 0, true);
  dv.setUint32(o + 12, s.lkey >>> 0, true);
}

/** A shared receive queue (struct ibv_srq). */
export class SharedReceiveQueue {
  /** @internal */ handle = -1;
  srqNum = 0;
  /** @internal */ readonly userHandle: bigint;
  private ring: RecvProducer;
  constructor(readonly pd: ProtectionDomain, private mapping: Mapping, l: RingLayout, maxSge: number) {
    this.ring = new RecvProducer(mapping, l, maxSge);
    this.userHandle = register(this);
  }
  /** ibv_post_srq_recv: shared memory only. */
  postSrqRecv(wrs: RecvWr | RecvWr[]): void {
    this.pd.context.cmd.ensureUp('ibv_post_srq_recv');
    this.ring.post('ibv_post_srq_recv', wrs);
  }
  /** ibv_modify_srq (SrqAttrMask.LIMIT arms the limit event) */
  async modifySrq(attr: { maxWr?: number; srqLimit?: number }, mask: number): Promise<void> {
    await this.pd.context.command('ibv_modify_srq', U.Cmd.MODIFY_SRQ, { srq_handle: this.handle, attr_mask: mask, max_wr: attr.maxWr ?? 0, srq_limit: attr.srqLimit ?? 0 });
  }
  /** ibv_query_srq */
  async querySrq(): Promise<{ maxWr: number; maxSge: number; srqLimit: number }> {
    const r = await this.pd.context.command('ibv_query_srq', U.Cmd.QUERY_SRQ, { srq_handle: this.handle });
    return { maxWr: r.max_wr as number, maxSge: r.max_sge as number, srqLimit: r.srq_limit as number };
  }
  /** ibv_destroy_srq */
  async destroySrq(): Promise<void> {
    await this.pd.context.command('ibv_destroy_srq', U.Cmd.DESTROY_SRQ, { srq_handle: this.handle });
    unmap(this.mapping);
  }
}

// ---------------------------------------------------------------- QP

/** A queue pair (struct ibv_qp). */
export class QueuePair {
  /** @internal */ handle = -1;
  qpNum = 0;
  readonly qpType: number;
  /** @internal */ readonly userHandle: bigint;
  private readonly sqHdr: Int32Array;
  private readonly sqDv: DataView;
  private readonly sqBytes: Uint8Array;
  private sqProd = 0;
  private readonly rq: RecvProducer | null;
  private sendBell: Buffer | null = null;
  private recvBell: Buffer | null = null;

  constructor(
    readonly pd: ProtectionDomain,
    readonly init: QpInitAttr,
    /** the capabilities the QP really has (≥ what was asked for) */
    readonly cap: QpCaps,
    private readonly mapping: Mapping,
    private readonly sq: RingLayout,
    rq: RingLayout | null,
  ) {
    this.qpType = init.qpType;
    this.sqHdr = new Int32Array(mapping.buffer, sq.offset, RING_HDR / 4);
    this.sqDv = new DataView(mapping.buffer, sq.offset);
    this.sqBytes = new Uint8Array(mapping.buffer, sq.offset);
    this.rq = rq ? new RecvProducer(mapping, rq, cap.maxRecvSge) : null;
    this.userHandle = register(this);
  }

  /** @internal */
  initDoorbells(): void {
    this.sendBell = U.frame(U.Cmd.POST_SEND, U.COMMANDS.get(U.Cmd.POST_SEND)!, { qp_handle: this.handle });
    this.sendBell.writeUInt16LE(0, 6); // out_words 0: a pure doorbell, which the daemon does not answer
    this.recvBell = U.frame(U.Cmd.POST_RECV, U.COMMANDS.get(U.Cmd.POST_RECV)!, { qp_handle: this.handle });
  }

  /** The QP state as the HCA last wrote it. */
  get state(): number {
    return Atomics.load(this.sqHdr, QP_STATE);
  }

  /**
   * ibv_post_send: writes WQEs into the shared send queue and rings the
   * doorbell once. Throws VerbsError with `badWr` for the first WR that
   * could not be posted (the ones before it are posted).
   */
  postSend(wrs: SendWr | SendWr[]): void {
    this.pd.context.cmd.ensureUp('ibv_post_send');
    const list = Array.isArray(wrs) ? wrs : [wrs];
    // as rxe: a send queue takes work requests from RTS on (and in SQD and ERR, where they drain or flush)
    const st = Atomics.load(this.sqHdr, QP_STATE);
    if (st === QpState.RESET || st === QpState.INIT || st === QpState.RTR) throw new VerbsError('ibv_post_send', 'EINVAL', `the QP is in ${qpStateName(st)}; sends are posted from RTS on`, 0);
    const cons = Atomics.load(this.sqHdr, CONS) >>> 0;
    const slots = this.sq.slots;
    const stride = this.sq.stride;
    const dv = this.sqDv;
    let i = 0;
    try {
      for (; i < list.length; i++) {
        const wr = list[i]!;
        if (((this.sqProd - cons) >>> 0) >= slots) throw new VerbsError('ibv_post_send', 'ENOMEM', 'send queue full', i);
        const o = RING_HDR + (this.sqProd & (slots - 1)) * stride;
        this.writeWqe(wr, dv, o, i);
        this.sqProd = (this.sqProd + 1) >>> 0;
      }
    } finally {
      if (i > 0 || list.length === 0) {
        Atomics.store(this.sqHdr, PROD, this.sqProd | 0);
        // ring only if the HCA said it is idle on this SQ, and we are the ones to wake it
        if (i > 0 && Atomics.compareExchange(this.sqHdr, SQ_IDLE, 1, 0) === 1) this.pd.context.cmd.ring('ibv_post_send', this.sendBell!);
      }
    }
  }

  private writeWqe(wr: SendWr, dv: DataView, o: number, i: number): void {
    const op = wr.opcode;
    const t = this.qpType;
    const flags = wr.sendFlags ?? 0;
    const sg = wr.sgList ?? [];
    const isAtomic = op === WrOpcode.ATOMIC_CMP_AND_SWP || op === WrOpcode.ATOMIC_FETCH_AND_ADD;
    const valid =
      op === WrOpcode.SEND || op === WrOpcode.SEND_WITH_IMM ||
      (t !== QpType.UD && (op === WrOpcode.RDMA_WRITE || op === WrOpcode.RDMA_WRITE_WITH_IMM)) ||
      (t === QpType.RC && (op === WrOpcode.RDMA_READ || isAtomic));
    if (!valid) throw new VerbsError('ibv_post_send', 'EINVAL', `opcode ${op} is not valid on this QP type`, i);
    if (t === QpType.UD && !wr.ud) throw new VerbsError('ibv_post_send', 'EINVAL', 'a UD send needs wr.ud (ah, remoteQpn, remoteQkey)', i);
    if ((op === WrOpcode.RDMA_WRITE || op === WrOpcode.RDMA_WRITE_WITH_IMM || op === WrOpcode.RDMA_READ) && !wr.rdma)
      throw new VerbsError('ibv_post_send', 'EINVAL', 'RDMA operations need wr.rdma (remoteAddr, rkey)', i);
    if (isAtomic && !wr.atomic) throw new VerbsError('ibv_post_send', 'EINVAL', 'atomics need wr.atomic (remoteAddr, compareAdd, swap, rkey)', i);
    dv.setBigUint64(o + SWQE.WR_ID, BigInt(wr.wrId ?? 0), true);
    dv.setUint32(o + SWQE.OPCODE, op, true);
    dv.setUint32(o + SWQE.SEND_FLAGS, flags, true);
    dv.setUint32(o + SWQE.IMM, (wr.imm ?? 0) >>> 0, true);
    const remote = wr.rdma ?? wr.atomic;
    dv.setBigUint64(o + SWQE.REMOTE_ADDR, BigInt(remote?.remoteAddr ?? 0), true);
    dv.setUint32(o + SWQE.RKEY, (remote?.rkey ?? 0) >>> 0, true);
    dv.setBigUint64(o + SWQE.COMPARE_ADD, BigInt.asUintN(64, BigInt(wr.atomic?.compareAdd ?? 0)), true);
    dv.setBigUint64(o + SWQE.SWAP, BigInt.asUintN(64, BigInt(wr.atomic?.swap ?? 0)), true);
    dv.setUint32(o + SWQE.AH, wr.ud ? wr.ud.ah.handle : 0, true);
    dv.setUint32(o + SWQE.REMOTE_QPN, wr.ud ? wr.ud.remoteQpn : 0, true);
    dv.setUint32(o + SWQE.REMOTE_QKEY, wr.ud ? wr.ud.remoteQkey >>> 0 : 0, true);
    if (flags & SendFlags.INLINE) {
      if (op !== WrOpcode.SEND && op !== WrOpcode.SEND_WITH_IMM && op !== WrOpcode.RDMA_WRITE && op !== WrOpcode.RDMA_WRITE_WITH_IMM)
        throw new VerbsError('ibv_post_send', 'EINVAL', 'INLINE is for SEND and RDMA WRITE only', i);
      let len = 0;
      for (const s of sg) len += s.length;
      if (len > this.cap.maxInlineData) throw new VerbsError('ibv_post_send', 'EINVAL', `${len} inline bytes > max_inline_data ${this.cap.maxInlineData}`, i);
      let at = o + SWQE.HDR;
      for (const s of sg) {
        // inline data is copied now, from wherever it is in this process: no lkey needed (as in libibverbs)
        const src = atAddress(BigInt(s.addr), s.length);
        if (!src) throw new VerbsError('ibv_post_send', 'EFAULT', `inline SGE at 0x${BigInt(s.addr).toString(16)} is not memory from allocBuffer`, i);
        this.sqBytes.set(src, at);
        at += s.length;
      }
      dv.setUint32(o + SWQE.INLINE_LEN, len, true);
      dv.setUint32(o + SWQE.NUM_SGE, 0, true);
      return;
    }
    if (sg.length > this.cap.maxSendSge) throw new VerbsError('ibv_post_send', 'EINVAL', `${sg.length} SGEs > max_send_sge ${this.cap.maxSendSge}`, i);
    dv.setUint32(o + SWQE.INLINE_LEN, 0, true);
    dv.setUint32(o + SWQE.NUM_SGE, sg.length, true);
    for (let j = 0; j < sg.length; j++) writeSge(dv, o + SWQE.HDR + j * SGE_SIZE, sg[j]!);
  }

  /** ibv_post_recv: shared memory only; a QP in ERR also gets a doorbell so the WRs are flushed. */
  postRecv(wrs: RecvWr | RecvWr[]): void {
    if (!this.rq) throw new VerbsError('ibv_post_recv', 'EINVAL', 'this QP receives through an SRQ', 0);
    this.pd.context.cmd.ensureUp('ibv_post_recv');
    if (Atomics.load(this.sqHdr, QP_STATE) === QpState.RESET) throw new VerbsError('ibv_post_recv', 'EINVAL', 'the QP is in RESET; receives are posted from INIT on', 0);
    this.rq.post('ibv_post_recv', wrs);
    if (Atomics.load(this.sqHdr, QP_STATE) === QpState.ERR) this.pd.context.cmd.post('ibv_post_recv', this.recvBell!);
  }

  /** ibv_modify_qp: attributes named by `mask` (QpAttrMask) are applied; a mask the IBA does not allow for the transition is EINVAL. */
  async modifyQp(attr: QpAttr, mask: number): Promise<void> {
    const ah = attr.ahAttr;
    const g = ah?.grh;
    const dest: Values = ah ? {
      dgid: g?.dgid ?? new Uint8Array(16), flow_label: g?.flowLabel ?? 0, dlid: ah.dlid ?? 0, sgid_index: g?.sgidIndex ?? 0, hop_limit: g?.hopLimit ?? 64,
      traffic_class: g?.trafficClass ?? 0, sl: ah.sl ?? 0, src_path_bits: ah.srcPathBits ?? 0, static_rate: ah.staticRate ?? 0,
      is_global: ah.isGlobal === false ? 0 : 1, port_num: ah.portNum ?? 1,
    } : {};
    await this.pd.context.command('ibv_modify_qp', U.Cmd.MODIFY_QP, {
      dest, qp_handle: this.handle, attr_mask: mask, qkey: attr.qkey ?? 0, rq_psn: attr.rqPsn ?? 0, sq_psn: attr.sqPsn ?? 0,
      dest_qp_num: attr.destQpNum ?? 0, qp_access_flags: attr.qpAccessFlags ?? 0, pkey_index: attr.pkeyIndex ?? 0, qp_state: attr.qpState ?? 0,
      cur_qp_state: attr.curQpState ?? 0, path_mtu: attr.pathMtu ?? 0, path_mig_state: attr.pathMigState ?? 0,
      en_sqd_async_notify: attr.enSqdAsyncNotify ?? 0, max_rd_atomic: attr.maxRdAtomic ?? 0, max_dest_rd_atomic: attr.maxDestRdAtomic ?? 0,
      min_rnr_timer: attr.minRnrTimer ?? 0, port_num: attr.portNum ?? 0, timeout: attr.timeout ?? 0, retry_cnt: attr.retryCnt ?? 0,
      rnr_retry: attr.rnrRetry ?? 0,
    });
    if (mask & 1 && attr.qpState === QpState.RESET) {
      // a reset QP's queues are empty: start our producer indices where the HCA left its consumers
      this.sqProd = Atomics.load(this.sqHdr, CONS) >>> 0;
      if (this.rq) this.rq.prod = Atomics.load(this.rq.hdr, CONS) >>> 0;
    }
  }

  /** ibv_query_qp: the attributes and the init attributes. */
  async queryQp(mask = 0xffffffff): Promise<QpAttr & { sqSigAll: boolean }> {
    const r = await this.pd.context.command('ibv_query_qp', U.Cmd.QUERY_QP, { qp_handle: this.handle, attr_mask: mask });
    const d = r.dest as Values;
    return {
      qpState: r.qp_state as number, curQpState: r.cur_qp_state as number, pathMtu: r.path_mtu as number, pathMigState: r.path_mig_state as number,
      qkey: r.qkey as number, rqPsn: r.rq_psn as number, sqPsn: r.sq_psn as number, destQpNum: r.dest_qp_num as number,
      qpAccessFlags: r.qp_access_flags as number, pkeyIndex: r.pkey_index as number, sqDraining: r.sq_draining as number,
      maxRdAtomic: r.max_rd_atomic as number, maxDestRdAtomic: r.max_dest_rd_atomic as number, minRnrTimer: r.min_rnr_timer as number,
      portNum: r.port_num as number, timeout: r.timeout as number, retryCnt: r.retry_cnt as number, rnrRetry: r.rnr_retry as number,
      cap: { maxSendWr: r.max_send_wr as number, maxRecvWr: r.max_recv_wr as number, maxSendSge: r.max_send_sge as number, maxRecvSge: r.max_recv_sge as number, maxInlineData: r.max_inline_data as number },
      ahAttr: { grh: { dgid: d.dgid as Uint8Array, flowLabel: d.flow_label as number, sgidIndex: d.sgid_index as number, hopLimit: d.hop_limit as number, trafficClass: d.traffic_class as number }, isGlobal: !!d.is_global, portNum: d.port_num as number },
      sqSigAll: !!r.sq_sig_all,
    };
  }

  /** ibv_destroy_qp */
  async destroyQp(): Promise<void> {
    await this.pd.context.command('ibv_destroy_qp', U.Cmd.DESTROY_QP, { qp_handle: this.handle });
    unmap(this.mapping);
  }
}

