/**
 * rdma_cm (the kernel's drivers/infiniband/core/cma.c): cm_ids with their
 * addresses and port spaces, the bind and listen tables, address and route
 * resolution, and ib_cm's events told as RDMA_CM events to the file that owns
 * the id (ucma, `daemon/ucma.ts`). The IBA CM's messages and states are
 * ib_cm's (`ib-cm.ts`): an id that connects or listens has an id there. It
 * never touches a consumer's QP: it answers INIT_QP_ATTR with what the REQ and
 * REP negotiated and the library moves the QP itself, as librdmacm does.
 */
import { Access, QpAttrMask, QpState, QpType } from '../abi/enums.js';
import { CmEventType, PortSpace, RdmaOption, type InitQpAttr, type SockAddr } from '../abi/ucma.js';
import { CmdError, E } from '../common/errno.js';
import { errnoOf } from '../common/errors.js';
import type { SoftDevice } from '../hca/device.js';
import { gidOf } from '../hca/gid.js';
import { addrOfIpCm, canonical, checkAddr, deviceOf, ipCmAddr, isWildcard, routeToDevice } from './addr.js';
import { HOP_LIMIT, LOCAL_ACK_TIMEOUT } from './cm-msgs.js';
import { CmId, CmState, type CmEvent, type CmFile, type ConnParam } from './cma-id.js';
import { IbCm } from './ib-cm.js';
import { IbState, type CmPath, type IbCmEvent, type IbCmId, type IbCmRefusal } from './ib-cm-id.js';
import { decodeIpCmHdr, IP_CM_HDR_SIZE, ipCmPrivateData, parseServiceId, PRIVATE_DATA, RejReason, serviceId, SidrStatus, timeoutMs, type IpCmHdr, type Req, type SidrReq } from './mad.js';
import { PortSpaces } from './port-space.js';

/** What a REQ says about how fast we answer (2^20 × 4.096 µs, as Linux's rdma_cm) and how often it is sent. */
const CM_RESPONSE_TIMEOUT = 20;
const MAX_CM_RETRIES = 15;
/** The Q_Key of RDMA_PS_UDP / RDMA_PS_IPOIB ids (librdmacm's RDMA_UDP_QKEY). */
export const RDMA_UDP_QKEY = 0x01234567;
/** Most connection requests a listener holds unanswered; more are refused. */
const MAX_BACKLOG = 1024;
/** Events a file may have queued unread before new connection requests to it are refused. */
const MAX_QUEUED_EVENTS = 4096;

const PORT_SPACES: readonly number[] = Object.values(PortSpace);
const PS_NAME: Record<PortSpace, string> = { [PortSpace.TCP]: 'TCP', [PortSpace.UDP]: 'UDP', [PortSpace.IB]: 'IB', [PortSpace.IPOIB]: 'IPOIB' };

export interface CmHost {
  devices(): readonly SoftDevice[];
  log(msg: string): void;
  debug(msg: string): void;
  privileged(uid: number): boolean;
  /** whether the wire may send to this destination (softverbsd --allow-dst) */
  allowed(addr: string, family: 4 | 6): boolean;
}

const ibState = (id: CmId): IbState => id.cm?.state ?? IbState.IDLE;

export class RdmaCm {
  private readonly ports = new PortSpaces();
  /** every live id (the restrack view) */
  readonly ids = new Set<CmId>();
  private nextRestrackId = 0;
  /** ids' handles, daemon-wide as the kernel's ctx_table: MIGRATE_ID keeps an id's handle in its new file */
  private nextHandle = 0;
  private readonly ib: IbCm;

  constructor(private readonly host: CmHost) {
    this.ib = new IbCm({ log: (m) => host.log(m), debug: (m) => host.debug(m) });
  }

  /** A new device (cma_add_one): ib_cm takes its QP1. */
  addDevice(dev: SoftDevice): void {
    this.ib.addDevice(dev);
  }

  /**
   * A device is going (rdma link delete, the daemon stopping): each id on it hears DEVICE_REMOVAL, as from rdma_cm's
   * cma_process_remove, then loses its connection with the device (no MAD can leave it) as ucma's close_work destroys
   * the kernel's id; rdma_destroy_id is all its owner can do. Ids bound to no device (wildcard listeners) hear nothing.
   */
  removeDevice(dev: SoftDevice): void {
    this.ib.removeDevice(dev);
    for (const id of [...this.ids]) {
      if (id.dev !== dev) continue;
      this.emit(id, CmEventType.DEVICE_REMOVAL, 0);
      this.releaseBacklog(id);
      id.cm = null;
      this.forget(id);
      id.state = CmState.DEVICE_REMOVAL;
      id.destroyed = true;
    }
  }

  // ---- the consumer's commands ----

  createId(file: CmFile, uid: bigint, ps: number, qpType: number): CmId {
    if (!isPortSpace(ps)) throw new CmdError(E.EINVAL, `port space 0x${ps.toString(16)} is none of RDMA_PS_TCP, RDMA_PS_UDP, RDMA_PS_IB, RDMA_PS_IPOIB`);
    // librdmacm passes qp_type for RDMA_PS_IB only; the others imply theirs
    const t = ps === PortSpace.TCP ? QpType.RC : ps === PortSpace.IB ? qpType || QpType.RC : QpType.UD;
    if (t !== QpType.RC && t !== QpType.UD && t !== QpType.UC) throw new CmdError(E.EINVAL, `qp_type ${qpType} cannot be connected through the CM`);
    let h = this.nextHandle;
    while (file.ids.has(h)) h = (h + 1) >>> 0;
    file.charge();
    this.nextHandle = (h + 1) >>> 0;
    const id = new CmId(file, h, uid, ps, t);
    id.restrackId = this.nextRestrackId++;
    file.ids.set(h, id);
    this.ids.add(id);
    return id;
  }

  bind(id: CmId, a: SockAddr): void {
    if (id.state !== CmState.IDLE) throw new CmdError(E.EINVAL, `rdma_bind_addr: the id is ${id.state}, not IDLE`);
    checkAddr(a, 'rdma_bind_addr');
    const dev = isWildcard(a) ? null : deviceOf(this.host.devices(), a.address);
    if (!isWildcard(a) && !dev) throw new CmdError(E.EADDRNOTAVAIL, `rdma_bind_addr: no RDMA device has address ${a.address}`);
    id.local = { ...a };
    id.dev = dev;
    if (a.port) this.takePort(id, a.port);
    id.state = CmState.ADDR_BOUND;
  }

  /** rdma_resolve_addr: the device whose address the host's routing table picks for `dst`; ADDR_RESOLVED / ADDR_ERROR follow. */
  resolveAddr(id: CmId, src: SockAddr | null, dst: SockAddr, timeoutMs: number): void {
    if (id.state !== CmState.IDLE && id.state !== CmState.ADDR_BOUND) throw new CmdError(E.EINVAL, `rdma_resolve_addr: the id is ${id.state}`);
    checkAddr(dst, 'rdma_resolve_addr');
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
        this.emit(id, CmEventType.ADDR_ERROR, errnoOf(e) ?? -E.EIO);
        return;
      }
      id.state = CmState.ADDR_RESOLVED;
      this.emit(id, CmEventType.ADDR_RESOLVED, 0);
    };
    if (!this.host.allowed(dst.address, dst.family) && !deviceOf(this.host.devices(), dst.address)) {
      setImmediate(() => done(null, E.ENETUNREACH, `${dst.address} is outside the daemon's --allow-dst prefixes`));
      return;
    }
    if (fixed) setImmediate(() => done(fixed, 0, ''));
    else routeToDevice(() => this.host.devices(), dst, timeoutMs, done);
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

  /** rdma_listen: the id's service (port space and port) is listened for in ib_cm, on its device or on all. */
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
    id.cm = this.ib.createId(id.dev, (cm, ev) => {
      if (ev.type === 'REQ_RECEIVED') return this.onReq(cm, ev.req);
      if (ev.type === 'SIDR_REQ_RECEIVED') return this.onSidrReq(cm, ev.req);
    });
    this.ib.listen(id.cm, serviceId(id.ps, id.local!.port));
  }

  /** rdma_connect: a REQ (a SIDR_REQ for UD) with the IP CM header in front of the consumer's private data. */
  connect(id: CmId, p: ConnParam): void {
    if (id.state !== CmState.ROUTE_RESOLVED) throw new CmdError(E.EINVAL, `rdma_connect: the id is ${id.state}, not ROUTE_RESOLVED`);
    const room = (id.qpType === QpType.UD ? PRIVATE_DATA.SIDR_REQ : PRIVATE_DATA.REQ) - IP_CM_HDR_SIZE;
    if (p.privateData.length > room) throw new CmdError(E.EINVAL, `rdma_connect: ${p.privateData.length} bytes of private data (at most ${room} fit a ${id.qpType === QpType.UD ? 'SIDR_REQ' : 'REQ'} after the IP CM header)`);
    const qpType = id.qpType;
    if (qpType !== QpType.UD) this.checkQp(id, id.dev!, p.qpNum, 'rdma_connect');
    const cm = this.connection(id, this.ib.createId(id.dev, null));
    id.state = CmState.CONNECT;
    const remote = id.remote!;
    const path: CmPath = { dgid: id.remoteGid!, trafficClass: id.tos, mtu: id.pathMtu };
    if (qpType === QpType.UD) {
      const privateData = this.ipCmData(id, p.privateData, PRIVATE_DATA.SIDR_REQ);
      this.ib.sendSidrReq(cm, { serviceId: serviceId(id.ps, remote.port), path, timeoutMs: timeoutMs(CM_RESPONSE_TIMEOUT), maxCmRetries: MAX_CM_RETRIES, privateData });
      return;
    }
    id.localQpn = p.qpNum;
    this.ib.sendReq(cm, {
      serviceId: serviceId(id.ps, remote.port), qpn: p.qpNum, qpType, startingPsn: id.seqNum,
      responderResources: p.responderResources, initiatorDepth: p.initiatorDepth, flowControl: p.flowControl, retryCount: p.retryCount,
      rnrRetryCount: p.rnrRetryCount, srq: p.srq, path, remoteCmResponseTimeout: CM_RESPONSE_TIMEOUT, localCmResponseTimeout: CM_RESPONSE_TIMEOUT,
      maxCmRetries: MAX_CM_RETRIES, privateData: this.ipCmData(id, p.privateData, PRIVATE_DATA.REQ),
    });
  }

  /**
   * rdma_accept: the passive side's REP (SIDR_REP for UD), or the active side's RTU (librdmacm sends ACCEPT after
   * CONNECT_RESPONSE). `uid` is what the id's events carry from now on (the kernel's ucma_accept sets ctx->uid).
   */
  accept(id: CmId, p: ConnParam, uid = id.uid): void {
    this.acceptId(id, p);
    id.uid = uid;
  }

  private acceptId(id: CmId, p: ConnParam): void {
    const cm = id.cm;
    if (cm?.state === IbState.REP_RCVD) return this.ib.sendRtu(cm);
    if (cm?.state === IbState.SIDR_REQ_RCVD) return this.sidrRep(id, cm, SidrStatus.SUCCESS, p.qpNum, p.qkey, p.privateData);
    if (cm?.state !== IbState.REQ_RCVD && cm?.state !== IbState.MRA_REQ_SENT) throw new CmdError(E.EINVAL, `rdma_accept: the connection is ${ibState(id)}, not a request waiting for an answer`);
    if (p.privateData.length > PRIVATE_DATA.REP) throw new CmdError(E.EINVAL, `rdma_accept: ${p.privateData.length} bytes of private data (a REP holds ${PRIVATE_DATA.REP})`);
    this.checkQp(id, id.dev!, p.qpNum, 'rdma_accept');
    id.localQpn = p.qpNum;
    this.releaseBacklog(id);
    this.ib.sendRep(cm, {
      qpn: p.qpNum, startingPsn: id.seqNum, responderResources: p.responderResources, initiatorDepth: p.initiatorDepth,
      flowControl: p.flowControl, rnrRetryCount: p.rnrRetryCount, srq: p.srq, privateData: p.privateData,
    });
  }

  /** rdma_reject: a REJ with the consumer's reason (any 8-bit value, passed through as the kernel does), or a SIDR_REP refusal. */
  reject(id: CmId, privateData: Uint8Array, reason: number): void {
    const cm = id.cm;
    if (cm?.state === IbState.SIDR_REQ_RCVD) return this.sidrRep(id, cm, SidrStatus.REJECT, 0, 0, privateData);
    if (privateData.length > PRIVATE_DATA.REJ) throw new CmdError(E.EINVAL, `rdma_reject: ${privateData.length} bytes of private data (a REJ holds ${PRIVATE_DATA.REJ})`);
    if (cm?.state !== IbState.REQ_RCVD && cm?.state !== IbState.MRA_REQ_SENT && cm?.state !== IbState.REP_RCVD) {
      throw new CmdError(E.EINVAL, `rdma_reject: the connection is ${ibState(id)}, not a request or reply waiting for an answer`);
    }
    this.ib.sendRej(cm, (reason || RejReason.CONSUMER_DEFINED) as RejReason, privateData);
    this.releaseBacklog(id);
  }

  disconnect(id: CmId): void {
    const cm = id.cm;
    switch (ibState(id)) {
      case IbState.ESTABLISHED:
      case IbState.REP_SENT:
      case IbState.MRA_REP_RCVD:
        id.state = CmState.DISCONNECT;
        return this.ib.sendDreq(cm!);
      case IbState.DREQ_RCVD:
        return this.ib.sendDrep(cm!);
      case IbState.DREQ_SENT:
      case IbState.TIMEWAIT:
        return;
      default:
        throw new CmdError(E.EINVAL, `rdma_disconnect: the connection is ${ibState(id)}, not established`);
    }
  }

  /** rdma_init_qp_attr (ib_cm_init_qp_attr for a connection): the attributes (and mask) that move the id's QP to `state`. */
  initQpAttr(id: CmId, state: number): InitQpAttr {
    if (!id.dev) throw new CmdError(E.EINVAL, 'rdma_init_qp_attr: the id has no device yet (resolve or accept first)');
    const M = QpAttrMask;
    if (id.qpType === QpType.UD) {
      if (state === QpState.INIT) return { qp_attr_mask: M.STATE | M.PKEY_INDEX | M.PORT | M.QKEY, qp_state: state, pkey_index: 0, port_num: 1, qkey: RDMA_UDP_QKEY };
      if (state === QpState.RTR) return { qp_attr_mask: M.STATE, qp_state: state };
      if (state === QpState.RTS) return { qp_attr_mask: M.STATE | M.SQ_PSN, qp_state: state, sq_psn: 0 };
      throw new CmdError(E.EINVAL, `rdma_init_qp_attr: no attributes for state ${state}`);
    }
    const cm = id.cm && id.cm.state !== IbState.IDLE && id.cm.state !== IbState.LISTEN ? id.cm : null;
    if (state === QpState.INIT) {
      const access = cm ? Access.REMOTE_WRITE | (cm.respRes ? Access.REMOTE_READ | Access.REMOTE_ATOMIC : 0) : 0;
      return { qp_attr_mask: M.STATE | M.PKEY_INDEX | M.PORT | M.ACCESS_FLAGS, qp_state: state, pkey_index: 0, port_num: 1, qp_access_flags: access };
    }
    if (!cm || !cm.remoteQpn) throw new CmdError(E.EINVAL, `rdma_init_qp_attr: the connection is ${ibState(id)}; RTR and RTS need the peer's answer`);
    const rc = cm.qpType === QpType.RC;
    if (state === QpState.RTR) {
      return {
        qp_attr_mask: M.STATE | M.AV | M.PATH_MTU | M.DEST_QPN | M.RQ_PSN | (rc ? M.MAX_DEST_RD_ATOMIC | M.MIN_RNR_TIMER : 0),
        qp_state: state, path_mtu: cm.pathMtu, dest_qp_num: cm.remoteQpn, rq_psn: id.seqNum, max_dest_rd_atomic: cm.respRes, min_rnr_timer: 0,
        ah_attr: { grh: { dgid: cm.dgid!, flow_label: 0, sgid_index: 0, hop_limit: HOP_LIMIT, traffic_class: cm.trafficClass }, dlid: 0, sl: 0, is_global: 1, port_num: 1 },
      };
    }
    if (state === QpState.RTS) {
      return {
        qp_attr_mask: M.STATE | M.SQ_PSN | (rc ? M.TIMEOUT | M.RETRY_CNT | M.RNR_RETRY | M.MAX_QP_RD_ATOMIC : 0),
        qp_state: state, sq_psn: cm.sqPsn, timeout: id.ackTimeout ?? LOCAL_ACK_TIMEOUT, retry_cnt: cm.retryCount, rnr_retry: cm.rnrRetry, max_rd_atomic: cm.initDepth,
      };
    }
    throw new CmdError(E.EINVAL, `rdma_init_qp_attr: no attributes for state ${state}`);
  }

  /**
   * rdma_set_option (ucma_set_option_id): the value's size must be the option's; TOS is the traffic class of the
   * route resolved after it, ACK_TIMEOUT (RC ids only) the QP's timeout at RTS; REUSEADDR and AFONLY only before
   * their states allow them, as rdma_set_reuseaddr/afonly check (the value changes nothing here: the port space
   * shares no port and maps no IPv4 into IPv6). RDMA_OPTION_IB_PATH (a path record for an IB fabric's SA) has no RoCE meaning here.
   */
  setOption(id: CmId, level: number, name: number, value: Uint8Array): void {
    const size = (n: number) => {
      if (value.length !== n) throw new CmdError(E.EINVAL, `rdma_set_option: option ${level}/${name} takes ${n} bytes, not ${value.length}`);
    };
    if (level === RdmaOption.IB && name === RdmaOption.IB_PATH) throw new CmdError(E.EOPNOTSUPP, 'rdma_set_option: RDMA_OPTION_IB_PATH: no IB subnet administrator on a RoCE device');
    if (level !== RdmaOption.ID) throw new CmdError(E.ENOSYS, `rdma_set_option: level ${level} is neither RDMA_OPTION_ID nor RDMA_OPTION_IB`);
    switch (name) {
      case RdmaOption.ID_TOS:
        size(1);
        id.tos = value[0]!;
        return;
      case RdmaOption.ID_REUSEADDR: {
        size(4);
        // rdma_set_reuseaddr: turning it on is refused only to a listener, turning it off to any id past IDLE
        const on = new DataView(value.buffer, value.byteOffset, 4).getInt32(0, true) !== 0;
        if (on ? id.state === CmState.LISTEN : id.state !== CmState.IDLE) throw new CmdError(E.EINVAL, `rdma_set_option: REUSEADDR ${on ? 'on' : 'off'} on an id that is ${id.state}`);
        return;
      }
      case RdmaOption.ID_AFONLY:
        size(4);
        if (id.state !== CmState.IDLE && id.state !== CmState.ADDR_BOUND) throw new CmdError(E.EINVAL, `rdma_set_option: AFONLY on an id that is ${id.state}`);
        return;
      case RdmaOption.ID_ACK_TIMEOUT:
        size(1);
        if (id.qpType !== QpType.RC) throw new CmdError(E.EINVAL, 'rdma_set_option: ACK_TIMEOUT is for RC ids');
        id.ackTimeout = value[0]!;
        return;
      default:
        throw new CmdError(E.ENOSYS, `rdma_set_option: no option ${name} at RDMA_OPTION_ID`);
    }
  }

  /** rdma_destroy_id (and a file's close): ib_cm tells the peer what the connection's state calls for. */
  destroy(id: CmId): number {
    id.file.ids.delete(id.handle);
    if (id.destroyed) return id.eventsReported;
    if (id.cm) this.ib.destroyId(id.cm);
    this.releaseBacklog(id);
    id.destroyed = true;
    id.state = CmState.DESTROYING;
    this.forget(id);
    return id.eventsReported;
  }

  /** The addresses and device of an id (QUERY's ADDR option). */
  query(id: CmId): { dev: SoftDevice | null; local: SockAddr | null; remote: SockAddr | null } {
    return { dev: id.dev, local: id.local, remote: id.remote };
  }

  /**
   * The id's route as QUERY_ROUTE tells it (ucma_copy_iboe_route): once resolved (rdma_resolve_route, or the request
   * that made a passive side's id), its one path; before, no path and the GIDs of its addresses.
   */
  route(id: CmId): { dev: SoftDevice | null; local: SockAddr | null; remote: SockAddr | null; path: { sgid: Uint8Array; dgid: Uint8Array; mtu: number; trafficClass: number; hopLimit: number } | null } {
    const gid = (a: SockAddr | null) => (a && !isWildcard(a) ? gidOf(a.address) : new Uint8Array(16));
    const path = id.remoteGid && id.dev
      ? { sgid: gid(id.local), dgid: id.remoteGid, mtu: id.pathMtu || id.cm?.pathMtu || id.dev.activeMtu, trafficClass: id.tos, hopLimit: HOP_LIMIT }
      : null;
    return { dev: id.dev, local: id.local, remote: id.remote, path };
  }

  /** Whether any file has an id of this handle (the kernel's ctx_table lookup). */
  hasHandle(handle: number): boolean {
    for (const id of this.ids) if (id.handle === handle) return true;
    return false;
  }

  /** rdma_migrate_id: the id belongs to file `to` from now on (its events go there), under the same handle. */
  migrate(id: CmId, to: CmFile): void {
    if (id.file === to) return;
    if (to.ids.has(id.handle)) throw new CmdError(E.EBUSY, `rdma_migrate_id: the channel has a cm_id ${id.handle} already`);
    id.file.ids.delete(id.handle);
    to.ids.set(id.handle, id);
    id.file = to;
  }

  /** The restrack rows of every id (rdma resource show cm_id). */
  track(): Array<Record<string, unknown>> {
    const addr = (a: SockAddr | null) => (a ? `${a.family === 6 ? `[${a.address}]` : a.address}:${a.port}` : null);
    return [...this.ids].map((id) => ({
      type: 'cm_id', dev: id.dev?.name ?? null, port: id.dev ? 1 : null, cmIdn: id.restrackId, state: id.state, ibState: ibState(id),
      ps: PS_NAME[id.ps], qpType: id.qpType === QpType.RC ? 'RC' : id.qpType === QpType.UD ? 'UD' : 'UC', qpn: id.localQpn || null,
      pid: id.file.pid, comm: id.file.comm, uid: id.file.uid, srcAddr: addr(id.local), dstAddr: addr(id.remote),
    }));
  }

  // ---- ib_cm's events (cma_ib_handler, cma_ib_req_handler) ----

  /** ib_cm's id `cm` becomes the connection of `id`: what happens to it is told to the id's file. */
  private connection(id: CmId, cm: IbCmId): IbCmId {
    id.cm = cm;
    cm.handler = (_, ev) => this.onIbEvent(id, ev);
    return cm;
  }

  private onIbEvent(id: CmId, ev: IbCmEvent): void {
    switch (ev.type) {
      case 'REP_RECEIVED': {
        const m = ev.rep;
        return this.emit(id, CmEventType.CONNECT_RESPONSE, 0, {
          qpNum: m.local_qpn, privateData: m.private_data, responderResources: m.initiator_depth, initiatorDepth: m.responder_resources,
          flowControl: m.end_to_end_flow_control, rnrRetryCount: m.rnr_retry_count, srq: m.srq,
        });
      }
      case 'RTU_RECEIVED':
        return this.emit(id, CmEventType.ESTABLISHED, 0, { privateData: ev.privateData });
      case 'REJ_RECEIVED':
        if (id.cm?.state === IbState.TIMEWAIT) return this.disconnected(id);
        this.releaseBacklog(id);
        // the REJECTED event carries the reason as its status, as librdmacm reports it
        return this.emit(id, CmEventType.REJECTED, ev.reason, { privateData: ev.privateData });
      case 'DREQ_RECEIVED':
      case 'DREP_RECEIVED':
        return this.disconnected(id, ev.privateData);
      case 'DREQ_ERROR':
        return this.disconnected(id);
      case 'TIMEWAIT_EXIT':
        return this.emit(id, CmEventType.TIMEWAIT_EXIT, 0);
      case 'REQ_ERROR':
      case 'REP_ERROR':
      case 'SIDR_REQ_ERROR':
        return this.emit(id, CmEventType.UNREACHABLE, -E.ETIMEDOUT);
      case 'SIDR_REP_RECEIVED': {
        const m = ev.rep;
        if (m.status !== SidrStatus.SUCCESS) return this.emit(id, CmEventType.UNREACHABLE, m.status);
        return this.emit(id, CmEventType.ESTABLISHED, 0, undefined, { qpNum: m.qpn, qkey: m.qkey, privateData: m.private_data, dgid: id.remoteGid!, hopLimit: HOP_LIMIT, trafficClass: id.tos });
      }
    }
  }

  private disconnected(id: CmId, privateData?: Uint8Array): void {
    id.state = CmState.DISCONNECT;
    this.emit(id, CmEventType.DISCONNECTED, 0, privateData && { privateData });
  }

  /**
   * What a REQ's or SIDR_REQ's service ID and IP CM header name: the port, the header, the address it was sent
   * to and the listener there (null when none listens); or why they name nothing.
   */
  private service(cm: IbCmId, serviceId: bigint, privateData: Uint8Array) {
    const svc = parseServiceId(serviceId);
    const hdr = decodeIpCmHdr(privateData);
    if (!svc || !hdr || hdr.version !== 0) return `service ID 0x${serviceId.toString(16)} is not an RDMA IP CM service with its header`;
    const dstAddr = addrOfIpCm(hdr.dst, hdr.ipVersion);
    return { svc, hdr, dstAddr, listener: this.ports.findListener(svc.ps, svc.port, cm.dev!, hdr.ipVersion, dstAddr) };
  }

  /** A REQ for a service we listen on: the listener its IP CM header names gets a child id and CONNECT_REQUEST. */
  private onReq(cm: IbCmId, m: Req): IbCmRefusal | void {
    const at = this.service(cm, m.service_id, m.private_data);
    if (typeof at === 'string') return { reason: RejReason.INVALID_SERVICE_ID, why: at };
    const { svc, hdr, dstAddr, listener } = at;
    if (!listener) return { reason: RejReason.INVALID_SERVICE_ID, why: `nothing listens on port ${svc.port} (port space 0x${svc.ps.toString(16)})` };
    const t = m.transport_service_type;
    if ((t === 0 && listener.qpType !== QpType.RC) || (t === 1 && listener.qpType !== QpType.UC) || t > 1) return { reason: RejReason.INVALID_TRANSPORT_TYPE, why: `transport type ${t}` };
    // the path's MTU, as the REQ names it
    if (m.path_mtu < 1 || m.path_mtu > 5) return { reason: RejReason.INVALID_MTU, why: `path MTU ${m.path_mtu}` };
    if (listener.pending >= listener.backlog || listener.file.queued() >= MAX_QUEUED_EVENTS) return { reason: RejReason.NO_RESOURCES, why: `the listener's backlog (${listener.backlog}) is full` };
    const child = this.childOf(listener, cm, hdr, dstAddr, svc.port);
    if (!child) return { reason: RejReason.NO_RESOURCES, why: 'no id for the connection' };
    const ok = listener.file.deliver({
      uid: listener.uid, id: child.handle, event: CmEventType.CONNECT_REQUEST, status: 0,
      conn: {
        qpNum: m.local_qpn, privateData: m.private_data.subarray(IP_CM_HDR_SIZE), responderResources: m.initiator_depth, initiatorDepth: m.responder_resources,
        flowControl: m.end_to_end_flow_control, retryCount: m.retry_count, rnrRetryCount: m.rnr_retry_count, srq: m.srq,
      },
    }, listener, child);
    if (!ok) {
      // the connection exists on our side by now: its REJ names it
      this.ib.sendRej(cm, RejReason.NO_RESOURCES, new Uint8Array(0));
      this.releaseBacklog(child);
      this.destroy(child);
      return;
    }
  }

  /** A SIDR_REQ for a service we listen on: as a REQ, for a UD listener. */
  private onSidrReq(cm: IbCmId, m: SidrReq): IbCmRefusal | void {
    const at = this.service(cm, m.service_id, m.private_data);
    if (typeof at === 'string') return { status: SidrStatus.UNSUPPORTED, why: at };
    const { svc, hdr, dstAddr, listener } = at;
    if (!listener || listener.qpType !== QpType.UD) return { status: SidrStatus.UNSUPPORTED, why: `no UD listener on port ${svc.port} (port space 0x${svc.ps.toString(16)})` };
    if (listener.pending >= listener.backlog || listener.file.queued() >= MAX_QUEUED_EVENTS) return { status: SidrStatus.REJECT, why: 'the listener\'s backlog is full' };
    const child = this.childOf(listener, cm, hdr, dstAddr, svc.port);
    if (!child) return { status: SidrStatus.REJECT, why: 'no id for the request' };
    const ok = listener.file.deliver({
      uid: listener.uid, id: child.handle, event: CmEventType.CONNECT_REQUEST, status: 0,
      ud: { qpNum: 0, qkey: 0, privateData: m.private_data.subarray(IP_CM_HDR_SIZE), dgid: cm.dgid!, hopLimit: HOP_LIMIT },
    }, listener, child);
    if (!ok) {
      // ib_cm refuses the request itself: the child goes without a word
      child.cm = null;
      this.releaseBacklog(child);
      this.destroy(child);
      return { status: SidrStatus.REJECT, why: 'the listener\'s event queue is full' };
    }
  }

  // ---- helpers ----

  private emit(id: CmId, event: CmEventType, status: number, conn?: Partial<ConnParam>, ud?: CmEvent['ud']): void {
    if (id.destroyed) return;
    id.file.deliver({ uid: id.uid, id: id.handle, event, status, conn, ud }, id);
  }

  /**
   * The id a request to `listener` gets (REQ or SIDR_REQ), owned by the listener's owner and file, with the
   * addresses the request's IP CM header names, counted in the listener's backlog; null if none can be had.
   */
  private childOf(listener: CmId, cm: IbCmId, hdr: IpCmHdr, dstAddr: string, port: number): CmId | null {
    let child: CmId;
    try {
      // no uid until rdma_accept names one (the kernel's ctx->uid): its events before that carry 0, which librdmacm
      // looks up by handle (and drops all but ESTABLISHED)
      child = this.createId(listener.file, 0n, listener.ps, listener.qpType);
    } catch {
      return null;
    }
    this.connection(child, cm);
    child.listener = listener;
    child.dev = cm.dev;
    child.local = { family: hdr.ipVersion, address: dstAddr, port };
    child.remote = { family: hdr.ipVersion, address: addrOfIpCm(hdr.src, hdr.ipVersion), port: hdr.srcPort };
    child.remoteGid = cm.dgid;
    child.state = CmState.CONNECT;
    listener.pending++;
    child.inBacklog = true;
    return child;
  }

  private releaseBacklog(id: CmId): void {
    if (!id.inBacklog) return;
    id.inBacklog = false;
    if (id.listener) id.listener.pending = Math.max(0, id.listener.pending - 1);
  }

  private sidrRep(id: CmId, cm: IbCmId, status: SidrStatus, qpNum: number, qkey: number, privateData: Uint8Array): void {
    const verb = status === SidrStatus.SUCCESS ? 'rdma_accept' : 'rdma_reject';
    if (privateData.length > PRIVATE_DATA.SIDR_REP) throw new CmdError(E.EINVAL, `${verb}: ${privateData.length} bytes of private data (a SIDR_REP holds ${PRIVATE_DATA.SIDR_REP})`);
    if (status === SidrStatus.SUCCESS) this.checkQp(id, id.dev!, qpNum, verb);
    id.localQpn = qpNum;
    this.releaseBacklog(id);
    this.ib.sendSidrRep(cm, { status, qpn: qpNum, qkey: qkey || RDMA_UDP_QKEY, privateData });
  }

  /** A request's private data: the IP CM header (our address and port, the peer's), then the consumer's bytes, in `room` bytes. */
  private ipCmData(id: CmId, consumer: Uint8Array, room: number): Uint8Array {
    const local = id.local!;
    const remote = id.remote!;
    return ipCmPrivateData({ version: 0, ipVersion: remote.family, srcPort: local.port, src: ipCmAddr(local), dst: ipCmAddr(remote) }, consumer, room);
  }

  /** The QP a consumer names must be its own, on the connection's device (or another user's QP would be handed to a peer). */
  private checkQp(id: CmId, dev: SoftDevice, qpn: number, verb: string): void {
    if (qpn === 0 && id.qpType === QpType.UD) return;
    const qp = dev.qps.get(qpn);
    const owner = qp?.owner as { uid?: number } | undefined;
    if (!qp || owner?.uid !== id.file.uid) throw new CmdError(E.EINVAL, `${verb}: QP ${qpn} is not one of yours on ${dev.name}`);
    if (qp.type !== id.qpType) throw new CmdError(E.EINVAL, `${verb}: QP ${qpn} is not of the id's type`);
  }

  /** A port for the id in its port space (`want`, or any free one for 0); below 1024 only for root. */
  private takePort(id: CmId, want: number): void {
    if (want && want < 1024 && !this.host.privileged(id.file.uid)) throw new CmdError(E.EACCES, `port ${want} is below 1024: binding it takes root (CAP_NET_BIND_SERVICE)`);
    this.ports.take(id, want);
  }

  private forget(id: CmId): void {
    if (this.ids.delete(id)) id.file.uncharge();
    this.ports.release(id);
  }
}

function isPortSpace(ps: number): ps is PortSpace {
  return PORT_SPACES.includes(ps);
}
