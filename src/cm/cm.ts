/**
 * The connection manager (what the kernel's rdma_cm, ib_cm and rdma_ucm do
 * together): cm_ids with their addresses and port spaces, the listen and
 * bind tables, address and route resolution, and the IBA CM state machines
 * that exchange REQ/MRA/REJ/REP/RTU/DREQ/DREP as MADs on each device's QP1.
 * It never touches a consumer's QP: it answers INIT_QP_ATTR with what the
 * REQ and REP negotiated and the library moves the QP itself, as librdmacm
 * does. Message handlers are named after the messages (onReq, onRep, …).
 */
import { randomInt } from 'node:crypto';
import { createSocket } from 'node:dgram';
import { isIPv4, isIPv6, SocketAddress } from 'node:net';
import { Access, QpAttrMask, QpState, QpType } from '../abi/enums.js';
import { Limits } from '../abi/queue.js';
import { CmEventType, PortSpace, type SockAddr } from '../abi/ucma.js';
import { CmdError, E } from '../common/errno.js';
import type { SoftDevice } from '../hca/device.js';
import { gidOf, gidToAddr, isV4Gid, sameGid } from '../hca/gid.js';
import type { GsiAgent, GsiPort } from './gsi.js';
import {
  CmAttr, decodeFields, decodeIpCmHdr, DREP, DREQ, encodeMad, SIDR_REP, SIDR_REQ, IP_CM_HDR_SIZE, ipCmPrivateData, MRA, MsgRef,
  parseServiceId, PRIVATE_DATA, REJ, RejReason, REP, REQ, RTU, serviceId, SidrStatus, timeoutMs, type FieldsIn, type IpCmHdr,
} from './mad.js';

/** rdma_cm's states (enum rdma_cm_state), as `rdma resource show cm_id` names them. */
export const CmState = {
  IDLE: 'IDLE', ADDR_QUERY: 'ADDR_QUERY', ADDR_RESOLVED: 'ADDR_RESOLVED', ROUTE_QUERY: 'ROUTE_QUERY', ROUTE_RESOLVED: 'ROUTE_RESOLVED',
  CONNECT: 'CONNECT', DISCONNECT: 'DISCONNECT', ADDR_BOUND: 'ADDR_BOUND', LISTEN: 'LISTEN', DEVICE_REMOVAL: 'DEVICE_REMOVAL', DESTROYING: 'DESTROYING',
} as const;
export type CmState = (typeof CmState)[keyof typeof CmState];

/** ib_cm's states (enum ib_cm_state). */
export const IbState = {
  IDLE: 'IDLE', LISTEN: 'LISTEN', REQ_SENT: 'REQ_SENT', REQ_RCVD: 'REQ_RCVD', MRA_REQ_SENT: 'MRA_REQ_SENT', MRA_REQ_RCVD: 'MRA_REQ_RCVD',
  REP_SENT: 'REP_SENT', REP_RCVD: 'REP_RCVD', MRA_REP_RCVD: 'MRA_REP_RCVD', ESTABLISHED: 'ESTABLISHED', DREQ_SENT: 'DREQ_SENT',
  DREQ_RCVD: 'DREQ_RCVD', TIMEWAIT: 'TIMEWAIT', SIDR_REQ_SENT: 'SIDR_REQ_SENT', SIDR_REQ_RCVD: 'SIDR_REQ_RCVD', SIDR_REP_SENT: 'SIDR_REP_SENT',
} as const;

export type IbState = (typeof IbState)[keyof typeof IbState];

/** What the REQ says about how fast we answer (2^20 × 4.096 µs, as Linux's rdma_cm) and how often it is sent. */
const CM_RESPONSE_TIMEOUT = 20;
const MAX_CM_RETRIES = 15;
/**
 * Our own retransmission interval, whatever the peer allows: a lost REQ or REP costs a second, not the 4.3 s
 * the response timeout would permit (a duplicate is harmless: the peer's CM resends its answer or an MRA).
 */
const RETRY_MS = 1000;
/** The service timeout an MRA asks for (2^20 × 4.096 µs ≈ 4.3 s), as the kernel's CMA_CM_MRA_SETTING. */
const MRA_SERVICE_TIMEOUT = 20;
/** How long a closed connection's communication ID stays in TIMEWAIT before it may be reused. */
const TIMEWAIT_MS = 1000;
/** ACK timeout for the connection's QP (4.096 µs × 2^19 ≈ 2.1 s), and the hop limit and MTU rules of Linux's rdma_cm on RoCEv2. */
const LOCAL_ACK_TIMEOUT = 19;
const HOP_LIMIT = 64;
/** The Q_Key of RDMA_PS_UDP / RDMA_PS_IPOIB ids (librdmacm's RDMA_UDP_QKEY). */
export const RDMA_UDP_QKEY = 0x01234567;
/** Ports an unbound id gets (the kernel's ip_local_port_range default). */
const EPHEMERAL_LOW = 32768;
const EPHEMERAL_HIGH = 60999;
/** Most connection requests a listener holds unanswered; more are refused. */
const MAX_BACKLOG = 1024;
/** Events a file may have queued unread before new connection requests to it are refused. */
const MAX_QUEUED_EVENTS = 4096;

/** The parameters of CONNECT and ACCEPT (struct rdma_ucm_conn_param). */
export interface ConnParam {
  qpNum: number;
  qkey: number;
  privateData: Uint8Array;
  srq: number;
  responderResources: number;
  initiatorDepth: number;
  flowControl: number;
  retryCount: number;
  rnrRetryCount: number;
}

/** An event on its way to a file (its rdma_ucm_event_resp). */
export interface CmEvent {
  uid: bigint;
  id: number;
  event: CmEventType;
  status: number;
  conn?: Partial<ConnParam>;
  ud?: { qpNum: number; qkey: number; privateData: Uint8Array; dgid?: Uint8Array; hopLimit?: number; trafficClass?: number };
}

/** One open of the rdma_cm file (a ucma_file): its ids, and where its events go. */
export interface CmFile {
  readonly pid: number;
  readonly uid: number;
  readonly comm: string;
  readonly ids: Map<number, CmId>;
  nextId: number;
  /** Queues an event record; false when the file's queue is full. */
  deliver(ev: CmEvent): boolean;
  queued(): number;
  /** Takes one id from the owner's quota (throws its errno), and gives it back. */
  charge(): void;
  uncharge(): void;
}

export class CmId {
  state: CmState = CmState.IDLE;
  ib: IbState = IbState.IDLE;
  dev: SoftDevice | null = null;
  /** bound address (its port 0 until one is taken) */
  local: SockAddr | null = null;
  remote: SockAddr | null = null;
  /** the port is held in the bind table */
  bound = false;
  backlog = 0;
  listener: CmId | null = null;
  /** connection requests this listener has reported and not yet seen answered */
  pending = 0;
  /** route resolved (remote GID known) */
  remoteGid: Uint8Array | null = null;
  pathMtu = 0;
  localCommId = 0;
  remoteCommId = 0;
  remoteGuid = 0n;
  tid = 0n;
  localQpn = 0;
  remoteQpn = 0;
  /** the PSN our QP sends from (the peer's message named it) and the one it receives from (ours named it) */
  sqPsn = 0;
  rqPsn = 0;
  /** max_dest_rd_atomic and max_rd_atomic of our QP */
  respRes = 0;
  initDepth = 0;
  retryCount = 7;
  rnrRetry = 7;
  srq = 0;
  /** the peer's answer time (ms) and how often we resend to it */
  peerTimeoutMs = timeoutMs(CM_RESPONSE_TIMEOUT);
  maxRetries = MAX_CM_RETRIES;
  retries = 0;
  timer: NodeJS.Timeout | null = null;
  /** the last MAD we sent that waits for an answer (resent on timeout), or that a duplicate gets again */
  last: Uint8Array | null = null;
  eventsReported = 0;
  destroyed = false;
  tos = 0;
  /** destroyed, but still resending its DREQ until the peer answers */
  lingering = false;
  /** a SIDR request's key in the duplicate index */
  remoteKey = '';
  /** what `rdma resource show cm_id` calls cm-idn */
  restrackId = 0;

  constructor(
    readonly file: CmFile,
    readonly handle: number,
    readonly uid: bigint,
    readonly ps: number,
    readonly qpType: number,
  ) {}
}

const isWildcard = (a: SockAddr) => a.address === '0.0.0.0' || a.address === '::';

/** The 16-byte address the IP CM header carries: an IPv6 address whole, an IPv4 one in the last 4 bytes. */
function ipCmAddr(a: SockAddr): Uint8Array {
  if (a.family === 6) return gidOf(a.address);
  const b = new Uint8Array(16);
  b.set(gidOf(a.address).subarray(12), 12);
  return b;
}

function addrOfIpCm(b: Uint8Array, v: 4 | 6): string {
  return v === 4 ? `${b[12]}.${b[13]}.${b[14]}.${b[15]}` : canonical(gidToAddr(b), 6);
}

/** One spelling per address (fd00::2, never fd00:0:0:0:0:0:0:2), so addresses compare as strings. */
function canonical(addr: string, family: 4 | 6): string {
  return family === 6 ? new SocketAddress({ address: addr, family: 'ipv6' }).address : addr;
}

export interface CmHost {
  devices(): readonly SoftDevice[];
  log(msg: string): void;
  debug(msg: string): void;
  privileged(uid: number): boolean;
  /** whether the wire may send to this destination (softverbsd --allow-dst) */
  allowed(addr: string, family: 4 | 6): boolean;
}

export class ConnectionManager {
  /** port space → port → ids holding it */
  private readonly ports = new Map<number, Map<number, CmId[]>>();
  private readonly byCommId = new Map<number, CmId>();
  /** passive connections by the peer's (communication ID, CA GUID): a retransmitted REQ finds its connection */
  private readonly byRemote = new Map<string, CmId>();
  /** every live id (the restrack view) */
  readonly ids = new Set<CmId>();
  private nextRestrackId = 0;

  constructor(private readonly host: CmHost) {}

  /** Registers with `dev`'s QP1 as the agent of the CM class. */
  attach(dev: SoftDevice): void {
    dev.gsi.register(this.agent);
  }

  /**
   * A device is going (rdma link delete, the daemon stopping): each id on it hears DEVICE_REMOVAL, as from rdma_cm's
   * cma_process_remove, then loses its connection with the device (no MAD can leave it) as ucma's close_work destroys
   * the kernel's id; rdma_destroy_id is all its owner can do. Ids bound to no device (wildcard listeners) hear nothing.
   */
  detach(dev: SoftDevice): void {
    for (const id of [...this.ids]) {
      if (id.dev !== dev) continue;
      this.emit(id, CmEventType.DEVICE_REMOVAL, 0);
      this.releasePending(id);
      this.toIdle(id);
      this.forget(id);
      id.state = CmState.DEVICE_REMOVAL;
      id.destroyed = true;
    }
    for (const id of this.byCommId.values()) if (id.lingering && id.dev === dev) this.unlinger(id);
    dev.gsi.unregister(this.agent);
  }

  // ---- the consumer's commands ----

  createId(file: CmFile, uid: bigint, ps: number, qpType: number): CmId {
    if (ps !== PortSpace.TCP && ps !== PortSpace.UDP && ps !== PortSpace.IB && ps !== PortSpace.IPOIB) throw new CmdError(E.EINVAL, `port space 0x${ps.toString(16)} is none of RDMA_PS_TCP, RDMA_PS_UDP, RDMA_PS_IB, RDMA_PS_IPOIB`);
    // librdmacm passes qp_type for RDMA_PS_IB only; the others imply theirs
    const t = ps === PortSpace.TCP ? QpType.RC : ps === PortSpace.IB ? qpType || QpType.RC : QpType.UD;
    if (t !== QpType.RC && t !== QpType.UD && t !== QpType.UC) throw new CmdError(E.EINVAL, `qp_type ${qpType} cannot be connected through the CM`);
    let h = file.nextId;
    while (file.ids.has(h)) h = (h + 1) >>> 0;
    file.charge();
    file.nextId = (h + 1) >>> 0;
    const id = new CmId(file, h, uid, ps, t);
    id.restrackId = this.nextRestrackId++;
    file.ids.set(h, id);
    this.ids.add(id);
    return id;
  }

  bind(id: CmId, a: SockAddr): void {
    if (id.state !== CmState.IDLE) throw new CmdError(E.EINVAL, `rdma_bind_addr: the id is ${id.state}, not IDLE`);
    this.checkAddr(a, 'rdma_bind_addr');
    const dev = isWildcard(a) ? null : this.deviceOf(a.address);
    if (!isWildcard(a) && !dev) throw new CmdError(E.EADDRNOTAVAIL, `rdma_bind_addr: no RDMA device has address ${a.address}`);
    id.local = { ...a };
    id.dev = dev;
    if (a.port) this.takePort(id, a.port);
    id.state = CmState.ADDR_BOUND;
  }

  /** rdma_resolve_addr: the device whose address the host's routing table picks for `dst`; ADDR_RESOLVED / ADDR_ERROR follow. */
  resolveAddr(id: CmId, src: SockAddr | null, dst: SockAddr, timeoutMs: number): void {
    if (id.state !== CmState.IDLE && id.state !== CmState.ADDR_BOUND) throw new CmdError(E.EINVAL, `rdma_resolve_addr: the id is ${id.state}`);
    this.checkAddr(dst, 'rdma_resolve_addr');
    if (isWildcard(dst)) throw new CmdError(E.EINVAL, 'rdma_resolve_addr: the destination is a wildcard address');
    if (src && src.family !== dst.family) throw new CmdError(E.EINVAL, 'rdma_resolve_addr: source and destination are of different families');
    if (src && id.state === CmState.IDLE) this.bind(id, src);
    if (id.local && id.local.family !== dst.family && !isWildcard(id.local)) throw new CmdError(E.EINVAL, 'rdma_resolve_addr: the bound address is of another family');
    id.remote = { ...dst };
    id.state = CmState.ADDR_QUERY;
    const fixed = id.dev;
    const done = (dev: SoftDevice | null, err: number, why: string) => {
      if (id.destroyed || id.state !== CmState.ADDR_QUERY) return;
      if (!dev) {
        id.state = id.bound || id.local ? CmState.ADDR_BOUND : CmState.IDLE;
        this.host.debug(`rdma_cm: resolving ${dst.address} for pid ${id.file.pid}: ${why}`);
        this.emit(id, CmEventType.ADDR_ERROR, -err);
        return;
      }
      id.dev = dev;
      id.local = { family: dst.family, address: canonical(dev.addr, dst.family), port: id.local?.port ?? 0 };
      try {
        if (!id.bound) this.takePort(id, id.local.port);
      } catch (e) {
        id.state = CmState.ADDR_BOUND;
        this.emit(id, CmEventType.ADDR_ERROR, -(e as CmdError).errno);
        return;
      }
      id.state = CmState.ADDR_RESOLVED;
      this.emit(id, CmEventType.ADDR_RESOLVED, 0);
    };
    if (!this.host.allowed(dst.address, dst.family) && !this.deviceOf(dst.address)) {
      setImmediate(() => done(null, E.ENETUNREACH, `${dst.address} is outside the daemon's --allow-dst prefixes`));
      return;
    }
    if (fixed) {
      setImmediate(() => done(fixed, 0, ''));
      return;
    }
    // the kernel's choice of source address for a datagram to dst is the routing table's answer
    const s = createSocket(dst.family === 4 ? 'udp4' : 'udp6');
    const timer = setTimeout(() => {
      s.close();
      done(null, E.ETIMEDOUT, 'timed out');
    }, Math.max(1, Math.min(timeoutMs || 2000, 60_000)));
    s.on('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      s.close();
      // a daemon out of descriptors has no socket to ask the routing table with: that is no answer about the route
      const errno = e.code === 'ENETUNREACH' || e.code === 'EHOSTUNREACH' ? E.ENETUNREACH : e.code === 'EMFILE' || e.code === 'ENFILE' ? E[e.code] : E.EADDRNOTAVAIL;
      done(null, errno, `no route (${e.code})`);
    });
    s.connect(4791, dst.address, () => {
      clearTimeout(timer);
      let src = '';
      try {
        src = s.address().address;
      } catch {
        /* closed meanwhile */
      }
      s.close();
      // a destination that is one of our own devices is reached from it (loopback), as rxe on the same netdev
      const dev = this.deviceOf(src) ?? this.deviceOf(dst.address) ?? (isLocalRoute(src, dst.address) ? this.nearest(dst) : null);
      done(dev, E.ENODEV, dev ? '' : `the route to ${dst.address} leaves from ${src}, which no RDMA device has`);
    });
  }

  /** rdma_resolve_route: on RoCE, the path is the GIDs of the two addresses (no SA to ask). */
  resolveRoute(id: CmId): void {
    if (id.state !== CmState.ADDR_RESOLVED) throw new CmdError(E.EINVAL, `rdma_resolve_route: the id is ${id.state}, not ADDR_RESOLVED`);
    id.state = CmState.ROUTE_QUERY;
    id.remoteGid = gidOf(id.remote!.address);
    id.pathMtu = id.dev!.activeMtu;
    setImmediate(() => {
      if (id.destroyed || id.state !== CmState.ROUTE_QUERY) return;
      id.state = CmState.ROUTE_RESOLVED;
      this.emit(id, CmEventType.ROUTE_RESOLVED, 0);
    });
  }

  listen(id: CmId, backlog: number): void {
    if (id.state === CmState.IDLE) this.bind(id, { family: 4, address: '0.0.0.0', port: 0 });
    if (id.state === CmState.LISTEN) {
      id.backlog = backlog > 0 && backlog < MAX_BACKLOG ? backlog : MAX_BACKLOG;
      return;
    }
    if (id.state !== CmState.ADDR_BOUND) throw new CmdError(E.EINVAL, `rdma_listen: the id is ${id.state}, not bound`);
    if (!id.bound) this.takePort(id, 0);
    id.backlog = backlog > 0 && backlog < MAX_BACKLOG ? backlog : MAX_BACKLOG;
    id.state = CmState.LISTEN;
    id.ib = IbState.LISTEN;
  }

  connect(id: CmId, p: ConnParam): void {
    if (id.state !== CmState.ROUTE_RESOLVED) throw new CmdError(E.EINVAL, `rdma_connect: the id is ${id.state}, not ROUTE_RESOLVED`);
    if (id.qpType === QpType.UD) return this.sidrReq(id, p);
    const room = PRIVATE_DATA.REQ - IP_CM_HDR_SIZE;
    if (p.privateData.length > room) throw new CmdError(E.EINVAL, `rdma_connect: ${p.privateData.length} bytes of private data (at most ${room} fit a REQ after the IP CM header)`);
    const dev = id.dev!;
    this.checkQp(id, dev, p.qpNum, 'rdma_connect');
    id.localQpn = p.qpNum;
    id.respRes = Math.min(p.responderResources, Limits.maxQpRdAtom);
    id.initDepth = Math.min(p.initiatorDepth, Limits.maxQpRdAtom);
    id.retryCount = p.retryCount & 7;
    id.rnrRetry = p.rnrRetryCount & 7;
    id.srq = p.srq ? 1 : 0;
    // a CM message's starting PSN is the one its sender will receive first (its QP's rq_psn): the peer sends from it
    id.rqPsn = randomInt(0x1000000);
    const privateData = this.newRequest(id, p.privateData, PRIVATE_DATA.REQ);
    const remote = id.remote!;
    const mad = encodeMad(CmAttr.REQ, id.tid, REQ, {
      local_comm_id: id.localCommId,
      service_id: serviceId(id.ps, remote.port),
      local_ca_guid: dev.nodeGuid,
      local_qpn: p.qpNum,
      responder_resources: p.responderResources,
      initiator_depth: p.initiatorDepth,
      remote_cm_response_timeout: CM_RESPONSE_TIMEOUT,
      transport_service_type: id.qpType === QpType.UC ? 1 : 0,
      end_to_end_flow_control: p.flowControl ? 1 : 0,
      starting_psn: id.rqPsn,
      local_cm_response_timeout: CM_RESPONSE_TIMEOUT,
      retry_count: id.retryCount,
      pkey: 0xffff,
      path_mtu: id.pathMtu,
      rnr_retry_count: id.rnrRetry,
      max_cm_retries: MAX_CM_RETRIES,
      srq: id.srq,
      primary_local_lid: 0xffff,
      primary_remote_lid: 0xffff,
      primary_local_gid: dev.gids[0]!,
      primary_remote_gid: id.remoteGid!,
      primary_traffic_class: id.tos,
      primary_hop_limit: HOP_LIMIT,
      primary_local_ack_timeout: LOCAL_ACK_TIMEOUT,
      private_data: privateData,
    });
    id.state = CmState.CONNECT;
    id.ib = IbState.REQ_SENT;
    this.sendAwaiting(id, mad);
  }

  /** rdma_accept: the passive side's REP, or the active side's RTU (librdmacm sends ACCEPT after CONNECT_RESPONSE). */
  accept(id: CmId, p: ConnParam): void {
    if (id.ib === IbState.REP_RCVD) return this.sendRtu(id);
    if (id.ib === IbState.SIDR_REQ_RCVD) return this.sidrRep(id, SidrStatus.SUCCESS, p);
    if (id.ib !== IbState.REQ_RCVD && id.ib !== IbState.MRA_REQ_SENT) throw new CmdError(E.EINVAL, `rdma_accept: the connection is ${id.ib}, not a request waiting for an answer`);
    if (p.privateData.length > PRIVATE_DATA.REP) throw new CmdError(E.EINVAL, `rdma_accept: ${p.privateData.length} bytes of private data (a REP holds ${PRIVATE_DATA.REP})`);
    const dev = id.dev!;
    this.checkQp(id, dev, p.qpNum, 'rdma_accept');
    id.localQpn = p.qpNum;
    // what we serve and issue, bounded by what the request offered
    id.respRes = Math.min(p.responderResources, id.respRes);
    id.initDepth = Math.min(p.initiatorDepth, id.initDepth);
    id.srq = p.srq ? 1 : 0;
    const mad = encodeMad(CmAttr.REP, id.tid, REP, {
      local_comm_id: id.localCommId,
      remote_comm_id: id.remoteCommId,
      local_qpn: p.qpNum,
      starting_psn: id.rqPsn,
      responder_resources: id.respRes,
      initiator_depth: id.initDepth,
      target_ack_delay: 15,
      end_to_end_flow_control: p.flowControl ? 1 : 0,
      rnr_retry_count: p.rnrRetryCount & 7,
      srq: id.srq,
      local_ca_guid: dev.nodeGuid,
      private_data: p.privateData,
    });
    this.releasePending(id);
    id.ib = IbState.REP_SENT;
    id.retries = 0;
    this.sendAwaiting(id, mad);
  }

  reject(id: CmId, privateData: Uint8Array, reason: number): void {
    if (id.ib === IbState.SIDR_REQ_RCVD) return this.sidrRep(id, SidrStatus.REJECT, refusal(privateData));
    if (privateData.length > PRIVATE_DATA.REJ) throw new CmdError(E.EINVAL, `rdma_reject: ${privateData.length} bytes of private data (a REJ holds ${PRIVATE_DATA.REJ})`);
    const rejectable: IbState[] = [IbState.REQ_RCVD, IbState.MRA_REQ_SENT, IbState.REP_RCVD];
    if (!rejectable.includes(id.ib)) throw new CmdError(E.EINVAL, `rdma_reject: the connection is ${id.ib}, not a request or reply waiting for an answer`);
    this.sendRej(id, reason || RejReason.CONSUMER_DEFINED, id.ib === IbState.REP_RCVD ? MsgRef.REP : MsgRef.REQ, privateData);
    this.releasePending(id);
    this.toIdle(id);
  }

  disconnect(id: CmId): void {
    switch (id.ib) {
      case IbState.ESTABLISHED:
      case IbState.REP_SENT:
      case IbState.MRA_REP_RCVD: {
        const mad = encodeMad(CmAttr.DREQ, id.tid, DREQ, { local_comm_id: id.localCommId, remote_comm_id: id.remoteCommId, remote_qpn_eecn: id.remoteQpn });
        id.ib = IbState.DREQ_SENT;
        id.state = CmState.DISCONNECT;
        id.retries = 0;
        this.sendAwaiting(id, mad);
        return;
      }
      case IbState.DREQ_RCVD:
        this.sendDrep(id);
        this.timewait(id);
        return;
      case IbState.DREQ_SENT:
      case IbState.TIMEWAIT:
        return;
      default:
        throw new CmdError(E.EINVAL, `rdma_disconnect: the connection is ${id.ib}, not established`);
    }
  }

  /** rdma_init_qp_attr: the attributes (and mask) that move the connection's QP to `state`. */
  initQpAttr(id: CmId, state: number): Record<string, unknown> {
    const dev = id.dev;
    if (!dev) throw new CmdError(E.EINVAL, 'rdma_init_qp_attr: the id has no device yet (resolve or accept first)');
    const M = QpAttrMask;
    if (id.qpType === QpType.UD) {
      if (state === QpState.INIT) return { qp_attr_mask: M.STATE | M.PKEY_INDEX | M.PORT | M.QKEY, qp_state: state, pkey_index: 0, port_num: 1, qkey: RDMA_UDP_QKEY };
      if (state === QpState.RTR) return { qp_attr_mask: M.STATE, qp_state: state };
      if (state === QpState.RTS) return { qp_attr_mask: M.STATE | M.SQ_PSN, qp_state: state, sq_psn: 0 };
      throw new CmdError(E.EINVAL, `rdma_init_qp_attr: no attributes for state ${state}`);
    }
    const connected = id.ib !== IbState.IDLE && id.ib !== IbState.LISTEN;
    if (state === QpState.INIT) {
      const access = connected ? Access.REMOTE_WRITE | (id.respRes ? Access.REMOTE_READ | Access.REMOTE_ATOMIC : 0) : 0;
      return { qp_attr_mask: M.STATE | M.PKEY_INDEX | M.PORT | M.ACCESS_FLAGS, qp_state: state, pkey_index: 0, port_num: 1, qp_access_flags: access };
    }
    if (!connected || !id.remoteQpn) throw new CmdError(E.EINVAL, `rdma_init_qp_attr: the connection is ${id.ib}; RTR and RTS need the peer's answer`);
    if (state === QpState.RTR) {
      return {
        qp_attr_mask: M.STATE | M.AV | M.PATH_MTU | M.DEST_QPN | M.RQ_PSN | (id.qpType === QpType.RC ? M.MAX_DEST_RD_ATOMIC | M.MIN_RNR_TIMER : 0),
        qp_state: state,
        path_mtu: id.pathMtu,
        dest_qp_num: id.remoteQpn,
        rq_psn: id.rqPsn,
        max_dest_rd_atomic: id.respRes,
        min_rnr_timer: 0,
        ah_attr: { grh: { dgid: id.remoteGid!, flow_label: 0, sgid_index: 0, hop_limit: HOP_LIMIT, traffic_class: id.tos }, dlid: 0, sl: 0, is_global: 1, port_num: 1 },
      };
    }
    if (state === QpState.RTS) {
      return {
        qp_attr_mask: M.STATE | M.SQ_PSN | (id.qpType === QpType.RC ? M.TIMEOUT | M.RETRY_CNT | M.RNR_RETRY | M.MAX_QP_RD_ATOMIC : 0),
        qp_state: state,
        sq_psn: id.sqPsn,
        timeout: LOCAL_ACK_TIMEOUT,
        retry_cnt: id.retryCount,
        rnr_retry: id.rnrRetry,
        max_rd_atomic: id.initDepth,
      };
    }
    throw new CmdError(E.EINVAL, `rdma_init_qp_attr: no attributes for state ${state}`);
  }

  /**
   * rdma_destroy_id (and a file's close): what the connection's state calls for goes to the peer first (REJ
   * for a request not yet answered, DREQ for an established connection, DREP for one the peer closed), so the
   * peer sees a refusal or a disconnect, not silence.
   */
  destroy(id: CmId): number {
    id.file.ids.delete(id.handle);
    if (id.destroyed) return id.eventsReported;
    switch (id.ib) {
      case IbState.REQ_SENT:
      case IbState.MRA_REQ_RCVD:
        // as ib_cm: a REJ from the requester answers no message of the peer's (message_rejected "other")
        this.sendRej(id, RejReason.TIMEOUT, MsgRef.OTHER, new Uint8Array(0), bigEndian64(id.dev?.nodeGuid ?? 0n));
        break;
      case IbState.REQ_RCVD:
      case IbState.MRA_REQ_SENT:
        this.sendRej(id, RejReason.CONSUMER_DEFINED, MsgRef.REQ, new Uint8Array(0));
        break;
      case IbState.REP_SENT:
      case IbState.MRA_REP_RCVD:
      case IbState.REP_RCVD:
        this.sendRej(id, RejReason.CONSUMER_DEFINED, id.ib === IbState.REP_RCVD ? MsgRef.REP : MsgRef.OTHER, new Uint8Array(0));
        break;
      case IbState.ESTABLISHED:
        id.last = encodeMad(CmAttr.DREQ, id.tid, DREQ, { local_comm_id: id.localCommId, remote_comm_id: id.remoteCommId, remote_qpn_eecn: id.remoteQpn });
        id.retries = 0;
        id.ib = IbState.DREQ_SENT;
        this.sendMad(id, id.last);
        break;
      case IbState.DREQ_RCVD:
        this.sendDrep(id);
        break;
      case IbState.SIDR_REQ_RCVD:
        this.sidrRep(id, SidrStatus.REJECT, refusal(new Uint8Array(0)));
        break;
    }
    this.releasePending(id);
    this.stopTimer(id);
    id.destroyed = true;
    id.state = CmState.DESTROYING;
    // a DREQ that is lost would leave the peer connected to nobody: the connection lingers, out of its owner's
    // sight, resending the DREQ until the DREP comes or the retries are spent (ib_cm keeps it the same way)
    const linger = id.ib === IbState.DREQ_SENT && id.last !== null;
    this.forget(id);
    if (linger) {
      id.lingering = true;
      this.byCommId.set(id.localCommId, id);
      this.arm(id, Math.min(RETRY_MS, id.peerTimeoutMs));
    }
    return id.eventsReported;
  }

  /** A destroyed id's last exchange is over: nothing of it is left. */
  private unlinger(id: CmId): void {
    this.stopTimer(id);
    id.lingering = false;
    if (this.byCommId.get(id.localCommId) === id) this.byCommId.delete(id.localCommId);
  }

  private forget(id: CmId): void {
    if (this.ids.delete(id)) id.file.uncharge();
    if (id.localCommId && this.byCommId.get(id.localCommId) === id) this.byCommId.delete(id.localCommId);
    if (id.remoteKey && this.byRemote.get(id.remoteKey) === id) this.byRemote.delete(id.remoteKey);
    const key = `${id.remoteCommId}:${id.remoteGuid}`;
    if (this.byRemote.get(key) === id) this.byRemote.delete(key);
    this.releasePort(id);
  }

  /** The addresses and device of an id (QUERY's ADDR option). */
  query(id: CmId): { dev: SoftDevice | null; local: SockAddr | null; remote: SockAddr | null } {
    return { dev: id.dev, local: id.local, remote: id.remote };
  }

  // ---- QP1: MADs in and out ----

  /** The CM class's MADs of every device (the GSI has checked them): each to the handler named after its message. */
  private readonly agent: GsiAgent = {
    recv: (port, m, src) => {
      const dev = port.dev;
      try {
        switch (m.attr) {
          case CmAttr.REQ: return this.onReq(dev, src, m.hdr.tid, m.data);
          case CmAttr.MRA: return this.onMra(port, m.data);
          case CmAttr.REJ: return this.onRej(port, m.data);
          case CmAttr.REP: return this.onRep(port, src, m.data);
          case CmAttr.RTU: return this.onRtu(port, m.data);
          case CmAttr.DREQ: return this.onDreq(dev, src, m.hdr.tid, m.data);
          case CmAttr.DREP: return this.onDrep(port, m.data);
          case CmAttr.SIDR_REQ: return this.onSidrReq(dev, src, m.hdr.tid, m.data);
          case CmAttr.SIDR_REP: return this.onSidrRep(port, src, m.data);
        }
      } catch (e) {
        this.host.log(`rdma_cm: internal error on a CM MAD: ${(e as Error).stack}`);
      }
    },
  };

  private sendTo(dev: SoftDevice, dst: Uint8Array, mad: Uint8Array): void {
    dev.gsi.send(dst, mad);
  }

  private sendMad(id: CmId, mad: Uint8Array): void {
    if (id.dev && id.remoteGid) this.sendTo(id.dev, id.remoteGid, mad);
  }

  /** Sends a MAD that waits for an answer: resent every RETRY_MS (or the peer's time, if shorter) up to maxRetries times. */
  private sendAwaiting(id: CmId, mad: Uint8Array): void {
    id.last = mad;
    this.sendMad(id, mad);
    this.arm(id, Math.min(RETRY_MS, id.peerTimeoutMs));
  }

  private arm(id: CmId, ms: number): void {
    this.stopTimer(id);
    id.timer = setTimeout(() => this.onTimeout(id), ms);
    id.timer.unref();
  }

  private stopTimer(id: CmId): void {
    if (id.timer) clearTimeout(id.timer);
    id.timer = null;
  }

  private onTimeout(id: CmId): void {
    id.timer = null;
    if (id.destroyed && !id.lingering) return;
    if (id.lingering && (id.ib !== IbState.DREQ_SENT || id.retries >= id.maxRetries)) return this.unlinger(id);
    if (id.ib === IbState.TIMEWAIT) {
      id.ib = IbState.IDLE;
      if (id.localCommId && this.byCommId.get(id.localCommId) === id) this.byCommId.delete(id.localCommId);
      this.emit(id, CmEventType.TIMEWAIT_EXIT, 0);
      return;
    }
    const waiting: IbState[] = [IbState.REQ_SENT, IbState.MRA_REQ_RCVD, IbState.REP_SENT, IbState.MRA_REP_RCVD, IbState.DREQ_SENT, IbState.SIDR_REQ_SENT];
    if (!waiting.includes(id.ib) || !id.last) return;
    if (id.retries++ < id.maxRetries) {
      this.sendMad(id, id.last);
      this.arm(id, Math.min(RETRY_MS, id.peerTimeoutMs));
      return;
    }
    // no answer after every retry
    switch (id.ib) {
      case IbState.SIDR_REQ_SENT:
        this.toIdle(id);
        this.emit(id, CmEventType.UNREACHABLE, -E.ETIMEDOUT);
        return;
      case IbState.REQ_SENT:
      case IbState.MRA_REQ_RCVD:
      case IbState.REP_SENT:
      case IbState.MRA_REP_RCVD:
        this.sendRej(id, RejReason.TIMEOUT, MsgRef.OTHER, new Uint8Array(0), bigEndian64(id.dev!.nodeGuid));
        this.toIdle(id);
        this.emit(id, CmEventType.UNREACHABLE, -E.ETIMEDOUT);
        return;
      case IbState.DREQ_SENT:
        this.timewait(id);
        this.emit(id, CmEventType.DISCONNECTED, 0);
        return;
    }
  }

  private sendRej(id: CmId, reason: number, msg: number, privateData: Uint8Array, ari?: Uint8Array): void {
    if (!id.dev || !id.remoteGid) return;
    this.sendTo(id.dev, id.remoteGid, rejMad(id.tid, id.localCommId, id.remoteCommId, reason, msg, privateData, ari));
  }

  private sendRtu(id: CmId): void {
    this.stopTimer(id);
    id.last = encodeMad(CmAttr.RTU, id.tid, RTU, { local_comm_id: id.localCommId, remote_comm_id: id.remoteCommId });
    this.sendMad(id, id.last);
    id.ib = IbState.ESTABLISHED;
  }

  private sendDrep(id: CmId): void {
    this.sendMad(id, encodeMad(CmAttr.DREP, id.tid, DREP, { local_comm_id: id.localCommId, remote_comm_id: id.remoteCommId }));
  }

  private timewait(id: CmId): void {
    id.ib = IbState.TIMEWAIT;
    id.state = CmState.DISCONNECT;
    id.last = null;
    this.arm(id, TIMEWAIT_MS);
  }

  /** Back to where a failed or refused connection leaves an id: it keeps its address and route. */
  private toIdle(id: CmId): void {
    this.stopTimer(id);
    id.ib = IbState.IDLE;
    id.last = null;
    if (id.localCommId && this.byCommId.get(id.localCommId) === id) this.byCommId.delete(id.localCommId);
  }

  private releasePending(id: CmId): void {
    if (id.listener && (id.ib === IbState.REQ_RCVD || id.ib === IbState.MRA_REQ_SENT || id.ib === IbState.SIDR_REQ_RCVD)) id.listener.pending = Math.max(0, id.listener.pending - 1);
  }

  // ---- message handlers ----

  /** A connection request: a listener's new child id and CONNECT_REQUEST, a REJ, or (for a retransmission) our answer again. */
  private onReq(dev: SoftDevice, src: Uint8Array, tid: bigint, data: Uint8Array): void {
    const m = decodeFields(REQ, data);
    const dupe = this.byRemote.get(`${m.local_comm_id}:${m.local_ca_guid}`);
    if (dupe) {
      if (dupe.ib === IbState.REQ_RCVD) {
        // the consumer is still deciding: tell the peer to wait instead of retrying
        dupe.ib = IbState.MRA_REQ_SENT;
        dupe.last = encodeMad(CmAttr.MRA, dupe.tid, MRA, { local_comm_id: dupe.localCommId, remote_comm_id: dupe.remoteCommId, message_mraed: MsgRef.REQ, service_timeout: MRA_SERVICE_TIMEOUT });
        this.sendMad(dupe, dupe.last);
      } else if ((dupe.ib === IbState.MRA_REQ_SENT || dupe.ib === IbState.REP_SENT || dupe.ib === IbState.MRA_REP_RCVD) && dupe.last) this.sendMad(dupe, dupe.last);
      return;
    }
    const refuse = (reason: number, why: string) => {
      this.host.debug(`rdma_cm: ${dev.name}: refused a REQ from ${gidToAddr(src)}: ${why}`);
      this.sendTo(dev, src, rejMad(tid, 0, m.local_comm_id, reason, MsgRef.REQ, new Uint8Array(0)));
    };
    const svc = parseServiceId(m.service_id);
    const hdr = decodeIpCmHdr(m.private_data);
    if (!svc || !hdr || hdr.version !== 0) return refuse(RejReason.INVALID_SERVICE_ID, `service ID 0x${m.service_id.toString(16)} is not an RDMA IP CM service with its header`);
    const dstAddr = addrOfIpCm(hdr.dst, hdr.ipVersion);
    const listener = this.findListener(svc.ps, svc.port, dev, hdr.ipVersion, dstAddr);
    if (!listener) return refuse(RejReason.INVALID_SERVICE_ID, `nothing listens on port ${svc.port} (port space 0x${svc.ps.toString(16)})`);
    const t = m.transport_service_type;
    if ((t === 0 && listener.qpType !== QpType.RC) || (t === 1 && listener.qpType !== QpType.UC) || t > 1) return refuse(RejReason.INVALID_TRANSPORT_TYPE, `transport type ${t}`);
    if (m.path_mtu < 1 || m.path_mtu > 5) return refuse(RejReason.INVALID_MTU, `path MTU ${m.path_mtu}`);
    if (listener.pending >= listener.backlog || listener.file.queued() >= MAX_QUEUED_EVENTS) return refuse(RejReason.NO_RESOURCES, `the listener's backlog (${listener.backlog}) is full`);
    const child = this.childOf(listener, dev, hdr, dstAddr, svc.port, src);
    if (!child) return refuse(RejReason.NO_RESOURCES, 'no id for the connection');
    child.remoteCommId = m.local_comm_id;
    child.remoteGuid = m.local_ca_guid;
    child.remoteQpn = m.local_qpn;
    child.sqPsn = m.starting_psn;
    child.tid = tid;
    // from our side: we serve the reads it issues, and issue as many as it serves
    child.respRes = m.initiator_depth;
    child.initDepth = m.responder_resources;
    child.retryCount = m.retry_count;
    child.rnrRetry = m.rnr_retry_count;
    child.pathMtu = Math.min(m.path_mtu, dev.activeMtu);
    child.peerTimeoutMs = timeoutMs(m.remote_cm_response_timeout);
    child.maxRetries = Math.min(m.max_cm_retries, MAX_CM_RETRIES);
    child.rqPsn = randomInt(0x1000000);
    child.localCommId = this.newCommId(child);
    child.state = CmState.CONNECT;
    child.ib = IbState.REQ_RCVD;
    child.bound = false;
    this.byRemote.set(`${m.local_comm_id}:${m.local_ca_guid}`, child);
    listener.pending++;
    const pd = m.private_data.subarray(IP_CM_HDR_SIZE);
    const ok = listener.file.deliver({
      uid: listener.uid, id: child.handle, event: CmEventType.CONNECT_REQUEST, status: 0,
      conn: { qpNum: m.local_qpn, privateData: pd, responderResources: m.initiator_depth, initiatorDepth: m.responder_resources, flowControl: m.end_to_end_flow_control, retryCount: m.retry_count, rnrRetryCount: m.rnr_retry_count, srq: m.srq },
    });
    if (!ok) {
      this.sendRej(child, RejReason.NO_RESOURCES, MsgRef.REQ, new Uint8Array(0));
      this.releasePending(child);
      child.ib = IbState.IDLE;
      this.destroy(child);
      return;
    }
    listener.eventsReported++;
  }

  private onMra(port: GsiPort, data: Uint8Array): void {
    const m = decodeFields(MRA, data);
    const id = this.byCommId.get(m.remote_comm_id);
    if (!id || id.remoteCommId && m.local_comm_id !== id.remoteCommId) return port.drop('MRA for no connection');
    const wait = timeoutMs(m.service_timeout) + Math.min(RETRY_MS, id.peerTimeoutMs);
    if (m.message_mraed === MsgRef.REQ && id.ib === IbState.REQ_SENT) {
      id.ib = IbState.MRA_REQ_RCVD;
      id.remoteCommId = m.local_comm_id;
      this.arm(id, wait);
    } else if (m.message_mraed === MsgRef.REP && id.ib === IbState.REP_SENT) {
      id.ib = IbState.MRA_REP_RCVD;
      this.arm(id, wait);
    } else if (id.ib === IbState.MRA_REQ_RCVD || id.ib === IbState.MRA_REP_RCVD) this.arm(id, wait);
  }

  private onRej(port: GsiPort, data: Uint8Array): void {
    const m = decodeFields(REJ, data);
    const id = this.byCommId.get(m.remote_comm_id);
    if (!id) return port.drop('REJ for no connection');
    if (id.remoteCommId && m.local_comm_id && m.local_comm_id !== id.remoteCommId) return port.drop('REJ from another connection');
    const before = id.ib;
    const waiting: IbState[] = [IbState.REQ_SENT, IbState.MRA_REQ_RCVD, IbState.REP_SENT, IbState.MRA_REP_RCVD, IbState.REP_RCVD];
    if (waiting.includes(before)) {
      this.releasePending(id);
      this.toIdle(id);
      // the REJECTED event carries the reason as its status, as librdmacm reports it
      this.emit(id, CmEventType.REJECTED, m.reason, { privateData: m.private_data });
      return;
    }
    if (before === IbState.ESTABLISHED || before === IbState.DREQ_SENT) {
      // a stale connection the peer no longer knows: it is over
      this.timewait(id);
      this.emit(id, CmEventType.DISCONNECTED, 0);
    }
  }

  private onRep(port: GsiPort, src: Uint8Array, data: Uint8Array): void {
    const m = decodeFields(REP, data);
    const id = this.byCommId.get(m.remote_comm_id);
    if (!id || !id.remoteGid || !sameGid(src, id.remoteGid)) return port.drop('REP for no connection');
    if (id.ib === IbState.ESTABLISHED && id.remoteCommId === m.local_comm_id) {
      // our RTU was lost: the peer asks again
      if (id.last) this.sendMad(id, id.last);
      return;
    }
    if (id.ib !== IbState.REQ_SENT && id.ib !== IbState.MRA_REQ_RCVD) return;
    this.stopTimer(id);
    id.ib = IbState.REP_RCVD;
    id.remoteCommId = m.local_comm_id;
    id.remoteGuid = m.local_ca_guid;
    id.remoteQpn = m.local_qpn;
    id.sqPsn = m.starting_psn;
    // the REP's resources are the peer's: it serves as many reads as we may issue, and issues as many as we serve
    id.initDepth = Math.min(id.initDepth, m.responder_resources);
    id.respRes = Math.min(id.respRes, m.initiator_depth);
    id.rnrRetry = m.rnr_retry_count;
    id.last = null;
    this.emit(id, CmEventType.CONNECT_RESPONSE, 0, {
      qpNum: m.local_qpn, privateData: m.private_data, responderResources: m.initiator_depth, initiatorDepth: m.responder_resources,
      flowControl: m.end_to_end_flow_control, rnrRetryCount: m.rnr_retry_count, srq: m.srq,
    });
  }

  private onRtu(port: GsiPort, data: Uint8Array): void {
    const m = decodeFields(RTU, data);
    const id = this.byCommId.get(m.remote_comm_id);
    if (!id || m.local_comm_id !== id.remoteCommId) return port.drop('RTU for no connection');
    if (id.ib !== IbState.REP_SENT && id.ib !== IbState.MRA_REP_RCVD) return;
    this.stopTimer(id);
    id.ib = IbState.ESTABLISHED;
    id.last = null;
    this.emit(id, CmEventType.ESTABLISHED, 0, { privateData: m.private_data });
  }

  private onDreq(dev: SoftDevice, src: Uint8Array, tid: bigint, data: Uint8Array): void {
    const m = decodeFields(DREQ, data);
    const id = this.byCommId.get(m.remote_comm_id);
    if (!id || m.local_comm_id !== id.remoteCommId || m.remote_qpn_eecn !== id.localQpn) {
      // a connection we no longer know: the peer is still told it is closed
      this.sendTo(dev, src, encodeMad(CmAttr.DREP, tid, DREP, { local_comm_id: m.remote_comm_id, remote_comm_id: m.local_comm_id }));
      return;
    }
    switch (id.ib) {
      case IbState.REP_SENT:
      case IbState.MRA_REP_RCVD:
      case IbState.ESTABLISHED:
        this.stopTimer(id);
        id.ib = IbState.DREQ_RCVD;
        id.state = CmState.DISCONNECT;
        this.emit(id, CmEventType.DISCONNECTED, 0, { privateData: m.private_data });
        return;
      case IbState.DREQ_SENT:
        // both sides closed at once
        this.sendDrep(id);
        this.timewait(id);
        this.emit(id, CmEventType.DISCONNECTED, 0);
        return;
      case IbState.TIMEWAIT:
        this.sendDrep(id);
        return;
    }
  }

  private onDrep(port: GsiPort, data: Uint8Array): void {
    const m = decodeFields(DREP, data);
    const id = this.byCommId.get(m.remote_comm_id);
    if (!id || m.local_comm_id !== id.remoteCommId) return port.drop('DREP for no connection');
    if (id.ib !== IbState.DREQ_SENT) return;
    if (id.lingering) return this.unlinger(id);
    this.timewait(id);
    this.emit(id, CmEventType.DISCONNECTED, 0, { privateData: m.private_data });
  }

  // ---- SIDR: service ID resolution for UD (IBA 12.11) ----

  /** rdma_connect on a UD id: a SIDR_REQ; ESTABLISHED (with the server's QPN, Q_Key and path) or UNREACHABLE follows. */
  private sidrReq(id: CmId, p: ConnParam): void {
    const room = PRIVATE_DATA.SIDR_REQ - IP_CM_HDR_SIZE;
    if (p.privateData.length > room) throw new CmdError(E.EINVAL, `rdma_connect: ${p.privateData.length} bytes of private data (at most ${room} fit a SIDR_REQ after the IP CM header)`);
    const privateData = this.newRequest(id, p.privateData, PRIVATE_DATA.SIDR_REQ);
    const mad = encodeMad(CmAttr.SIDR_REQ, id.tid, SIDR_REQ, {
      request_id: id.localCommId, pkey: 0xffff, service_id: serviceId(id.ps, id.remote!.port), private_data: privateData,
    });
    id.state = CmState.CONNECT;
    id.ib = IbState.SIDR_REQ_SENT;
    this.sendAwaiting(id, mad);
  }

  /** The passive side's answer: its QP and Q_Key (or a refusal); a retransmitted SIDR_REQ gets it again. */
  private sidrRep(id: CmId, status: number, p: ConnParam): void {
    if (p.privateData.length > PRIVATE_DATA.SIDR_REP) throw new CmdError(E.EINVAL, `${status ? 'rdma_reject' : 'rdma_accept'}: ${p.privateData.length} bytes of private data (a SIDR_REP holds ${PRIVATE_DATA.SIDR_REP})`);
    if (status === SidrStatus.SUCCESS) this.checkQp(id, id.dev!, p.qpNum, 'rdma_accept');
    id.localQpn = p.qpNum;
    id.last = encodeMad(CmAttr.SIDR_REP, id.tid, SIDR_REP, {
      request_id: id.remoteCommId, status, qpn: status ? 0 : p.qpNum, service_id: serviceId(id.ps, id.local!.port),
      qkey: status ? 0 : p.qkey || RDMA_UDP_QKEY, private_data: p.privateData,
    });
    this.releasePending(id);
    this.sendMad(id, id.last);
    id.ib = IbState.SIDR_REP_SENT;
  }

  private onSidrReq(dev: SoftDevice, src: Uint8Array, tid: bigint, data: Uint8Array): void {
    const m = decodeFields(SIDR_REQ, data);
    const key = `sidr:${m.request_id}:${gidToAddr(src)}`;
    const dupe = this.byRemote.get(key);
    if (dupe) {
      if (dupe.ib === IbState.SIDR_REP_SENT && dupe.last) this.sendMad(dupe, dupe.last);
      return;
    }
    const refuse = (status: number, why: string) => {
      this.host.debug(`rdma_cm: ${dev.name}: refused a SIDR_REQ from ${gidToAddr(src)}: ${why}`);
      this.sendTo(dev, src, encodeMad(CmAttr.SIDR_REP, tid, SIDR_REP, { request_id: m.request_id, status, service_id: m.service_id }));
    };
    const svc = parseServiceId(m.service_id);
    const hdr = decodeIpCmHdr(m.private_data);
    if (!svc || !hdr || hdr.version !== 0) return refuse(SidrStatus.UNSUPPORTED, `service ID 0x${m.service_id.toString(16)} is not an RDMA IP CM service with its header`);
    const dstAddr = addrOfIpCm(hdr.dst, hdr.ipVersion);
    const listener = this.findListener(svc.ps, svc.port, dev, hdr.ipVersion, dstAddr);
    if (!listener || listener.qpType !== QpType.UD) return refuse(SidrStatus.UNSUPPORTED, `no UD listener on port ${svc.port} (port space 0x${svc.ps.toString(16)})`);
    if (listener.pending >= listener.backlog || listener.file.queued() >= MAX_QUEUED_EVENTS) return refuse(SidrStatus.REJECT, 'the listener\'s backlog is full');
    const child = this.childOf(listener, dev, hdr, dstAddr, svc.port, src);
    if (!child) return refuse(SidrStatus.REJECT, 'no id for the request');
    child.remoteCommId = m.request_id;
    child.tid = tid;
    child.state = CmState.CONNECT;
    child.ib = IbState.SIDR_REQ_RCVD;
    this.byRemote.set(key, child);
    child.remoteKey = key;
    listener.pending++;
    const ok = listener.file.deliver({ uid: listener.uid, id: child.handle, event: CmEventType.CONNECT_REQUEST, status: 0, ud: { qpNum: 0, qkey: 0, privateData: m.private_data.subarray(IP_CM_HDR_SIZE), dgid: src, hopLimit: HOP_LIMIT } });
    if (!ok) {
      refuse(SidrStatus.REJECT, 'the listener\'s event queue is full');
      this.releasePending(child);
      child.ib = IbState.IDLE;
      this.destroy(child);
      return;
    }
    listener.eventsReported++;
  }

  private onSidrRep(port: GsiPort, src: Uint8Array, data: Uint8Array): void {
    const m = decodeFields(SIDR_REP, data);
    const id = this.byCommId.get(m.request_id);
    if (!id || id.ib !== IbState.SIDR_REQ_SENT || !id.remoteGid || !sameGid(src, id.remoteGid)) return port.drop('SIDR_REP for no request');
    this.toIdle(id);
    if (m.status !== SidrStatus.SUCCESS) {
      this.emit(id, CmEventType.UNREACHABLE, m.status);
      return;
    }
    id.remoteQpn = m.qpn;
    this.emit(id, CmEventType.ESTABLISHED, 0, undefined, { qpNum: m.qpn, qkey: m.qkey, privateData: m.private_data, dgid: id.remoteGid, hopLimit: HOP_LIMIT, trafficClass: id.tos });
  }

  // ---- helpers ----

  private emit(id: CmId, event: CmEventType, status: number, conn?: Partial<ConnParam>, ud?: CmEvent['ud']): void {
    if (id.destroyed) return;
    if (id.file.deliver({ uid: id.uid, id: id.handle, event, status, conn, ud })) id.eventsReported++;
  }

  /**
   * The id a request to `listener` gets (REQ or SIDR_REQ), owned by the listener's owner and file, with the
   * addresses the request's IP CM header names; null if none can be had (the caller refuses the request).
   */
  private childOf(listener: CmId, dev: SoftDevice, hdr: IpCmHdr, dstAddr: string, port: number, src: Uint8Array): CmId | null {
    let child: CmId;
    try {
      child = this.createId(listener.file, listener.uid, listener.ps, listener.qpType);
    } catch {
      return null;
    }
    child.listener = listener;
    child.dev = dev;
    child.local = { family: hdr.ipVersion, address: dstAddr, port };
    child.remote = { family: hdr.ipVersion, address: addrOfIpCm(hdr.src, hdr.ipVersion), port: hdr.srcPort };
    child.remoteGid = src;
    return child;
  }

  /**
   * A new request's identity (communication ID, transaction ID, retries from 0) and its private data: the IP CM
   * header (our address and port, the peer's) with the consumer's bytes after it, in `room` bytes.
   */
  private newRequest(id: CmId, consumer: Uint8Array, room: number): Uint8Array {
    const local = id.local!;
    const remote = id.remote!;
    id.localCommId = this.newCommId(id);
    id.tid = (1n << 32n) | BigInt(id.localCommId);
    id.retries = 0;
    return ipCmPrivateData({ version: 0, ipVersion: remote.family, srcPort: local.port, src: ipCmAddr(local), dst: ipCmAddr(remote) }, consumer, room);
  }

  private newCommId(id: CmId): number {
    let c: number;
    do c = randomInt(1, 0xffffffff);
    while (this.byCommId.has(c));
    this.byCommId.set(c, id);
    return c;
  }

  private deviceOf(addr: string): SoftDevice | null {
    if (!addr) return null;
    const g = gidOf(addr);
    return this.host.devices().find((d) => d.gids.some((x) => sameGid(x, g))) ?? null;
  }

  /**
   * For a destination on this host (a loopback route), any of our devices reaches it, as rdma_cm binds a
   * loopback destination to the first active port: the one whose address shares the longest prefix with it.
   */
  private nearest(dst: SockAddr): SoftDevice | null {
    const g = gidOf(dst.address);
    let best: SoftDevice | null = null;
    let bestLen = -1;
    for (const d of this.host.devices()) {
      const a = d.gids[0]!;
      if (isV4Gid(a) !== (dst.family === 4)) continue;
      let n = 0;
      while (n < 16 && a[n] === g[n]) n++;
      if (n > bestLen) {
        best = d;
        bestLen = n;
      }
    }
    return best;
  }

  private checkAddr(a: SockAddr, verb: string): void {
    if ((a.family === 4 && !isIPv4(a.address)) || (a.family === 6 && !isIPv6(a.address))) throw new CmdError(E.EAFNOSUPPORT, `${verb}: not an IPv4 or IPv6 socket address`);
    a.address = canonical(a.address, a.family);
  }

  /** The QP a consumer names must be its own, on the connection's device (or another user's QP would be handed to a peer). */
  private checkQp(id: CmId, dev: SoftDevice, qpn: number, verb: string): void {
    if (qpn === 0 && id.qpType === QpType.UD) return;
    const qp = dev.qps.get(qpn);
    const owner = qp?.owner as { uid?: number } | undefined;
    if (!qp || owner?.uid !== id.file.uid) throw new CmdError(E.EINVAL, `${verb}: QP ${qpn} is not one of yours on ${dev.name}`);
    if (qp.type !== id.qpType) throw new CmdError(E.EINVAL, `${verb}: QP ${qpn} is not of the id's type`);
  }

  private findListener(ps: number, port: number, dev: SoftDevice, v: 4 | 6, dst: string): CmId | null {
    const holders = this.ports.get(ps)?.get(port) ?? [];
    let wild: CmId | null = null;
    for (const l of holders) {
      if (l.state !== CmState.LISTEN || !l.local) continue;
      if (l.dev && l.dev !== dev) continue;
      if (!isWildcard(l.local)) {
        if (l.local.address === dst) return l;
        continue;
      }
      // 0.0.0.0 takes IPv4; :: takes both (Linux's default, bindv6only off)
      if (l.local.family === v || l.local.family === 6) wild ??= l;
    }
    return wild;
  }

  private takePort(id: CmId, want: number): void {
    const a = id.local!;
    if (want && want < 1024 && !this.host.privileged(id.file.uid)) throw new CmdError(E.EACCES, `port ${want} is below 1024: binding it takes root (CAP_NET_BIND_SERVICE)`);
    let space = this.ports.get(id.ps);
    if (!space) this.ports.set(id.ps, (space = new Map()));
    const conflicts = (port: number) =>
      (space.get(port) ?? []).some((o) => o !== id && o.local && (isWildcard(o.local) || isWildcard(a) || o.local.address === a.address));
    let port = want;
    if (!port) {
      const range = EPHEMERAL_HIGH - EPHEMERAL_LOW + 1;
      const start = randomInt(range);
      for (let i = 0; i < range; i++) {
        const p = EPHEMERAL_LOW + ((start + i) % range);
        if (!conflicts(p)) {
          port = p;
          break;
        }
      }
      if (!port) throw new CmdError(E.EADDRNOTAVAIL, 'no free port in the port space');
    } else if (conflicts(port)) throw new CmdError(E.EADDRINUSE, `port ${port} of port space 0x${id.ps.toString(16)} is in use`);
    const list = space.get(port) ?? [];
    list.push(id);
    space.set(port, list);
    a.port = port;
    id.bound = true;
  }

  private releasePort(id: CmId): void {
    if (!id.bound || !id.local) return;
    const space = this.ports.get(id.ps);
    const list = space?.get(id.local.port);
    if (list) {
      const k = list.indexOf(id);
      if (k >= 0) list.splice(k, 1);
      if (list.length === 0) space!.delete(id.local.port);
    }
    id.bound = false;
  }

  /** The restrack rows of every id (rdma resource show cm_id). */
  track(): Array<Record<string, unknown>> {
    return [...this.ids].map((id) => ({
      type: 'cm_id',
      dev: id.dev?.name ?? null,
      port: id.dev ? 1 : null,
      cmIdn: id.restrackId,
      state: id.state,
      ibState: id.ib,
      ps: id.ps === PortSpace.TCP ? 'TCP' : id.ps === PortSpace.UDP ? 'UDP' : id.ps === PortSpace.IB ? 'IB' : 'IPOIB',
      qpType: id.qpType === QpType.RC ? 'RC' : id.qpType === QpType.UD ? 'UD' : 'UC',
      qpn: id.localQpn || null,
      pid: id.file.pid,
      comm: id.file.comm,
      uid: id.file.uid,
      srcAddr: id.local ? `${id.local.family === 6 ? `[${id.local.address}]` : id.local.address}:${id.local.port}` : null,
      dstAddr: id.remote ? `${id.remote.family === 6 ? `[${id.remote.address}]` : id.remote.address}:${id.remote.port}` : null,
    }));
  }
}

/** The kernel chose a source for `dst` on the loopback interface: the destination is this host. */
function isLocalRoute(src: string, dst: string): boolean {
  return src === dst || src.startsWith('127.') || src === '::1';
}

/** The parameters of a SIDR refusal: no QP, only (maybe) private data. */
function refusal(privateData: Uint8Array): ConnParam {
  return { qpNum: 0, qkey: 0, privateData, srq: 0, responderResources: 0, initiatorDepth: 0, flowControl: 0, retryCount: 0, rnrRetryCount: 0 };
}

function rejMad(tid: bigint, local: number, remote: number, reason: number, msg: number, privateData: Uint8Array, ari?: Uint8Array): Uint8Array {
  const f: FieldsIn<typeof REJ> = { local_comm_id: local, remote_comm_id: remote, message_rejected: msg, reason, private_data: privateData };
  if (ari) {
    f.ari = ari;
    f.reject_info_length = ari.length;
  }
  return encodeMad(CmAttr.REJ, tid, REJ, f);
}

function bigEndian64(v: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, v);
  return b;
}

