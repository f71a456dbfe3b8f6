/**
 * ib_cm (the kernel's drivers/infiniband/core/cm.c): the IBA CM state
 * machine (IBA 12.9) and service ID resolution (12.11) for our side of each
 * connection. Its ids (`IbCmId`, ib-cm-id.ts) hold what the REQ and REP
 * negotiate, the MAD that waits for an answer and its timer; MADs come from
 * each device's GSI port, where IbCm is the CM class's agent, and leave
 * through it. What happens to a connection is told to its id's handler as
 * an event (IbCmEvent, the kernel's ib_cm_event); rdma_cm (`cma.ts`) is the
 * one consumer. Each message has one handler, named after it: a REQ is
 * onReq's (cm_req_handler).
 */
import { randomInt } from 'node:crypto';
import { QpType } from '../abi/enums.js';
import type { SoftDevice } from '../hca/device.js';
import { gidToAddr, sameGid } from '../hca/gid.js';
import { formatDreq, formatDrep, formatMra, formatRej, formatRep, formatReq, formatRtu, formatSidrRep, formatSidrReq, formatTimeoutRej } from './cm-msgs.js';
import type { GsiAgent, GsiPort } from './gsi.js';
import { IbCmId, IbState, RETRY_MS, type IbCmEvent, type IbCmHandler, type RepParam, type ReqParam, type SidrRepParam, type SidrReqParam } from './ib-cm-id.js';
import { CmAttr, decodeFields, DREP, DREQ, MRA, MsgRef, REJ, RejReason, REP, REQ, RTU, SIDR_REP, SIDR_REQ, SidrStatus, timeoutMs } from './mad.js';
import { asError } from '../common/errors.js';

/** How long a closed connection's communication ID stays in TIMEWAIT before it may be reused. */
export const TIMEWAIT_MS = 1000;

export interface IbCmHost {
  log(msg: string): void;
  debug(msg: string): void;
}

export class IbCm {
  private readonly ids = new Set<IbCmId>();
  private readonly byCommId = new Map<number, IbCmId>();
  /** ids made by a request, by the peer's (communication ID, CA GUID) or SIDR request: a retransmission finds its id */
  private readonly byRemote = new Map<string, IbCmId>();
  private readonly listens = new Map<bigint, Set<IbCmId>>();

  constructor(private readonly host: IbCmHost) {}

  /** As ib_cm's cm_add_one: we become the CM class's agent on the device's QP1. */
  addDevice(dev: SoftDevice): void {
    dev.gsi.register(this.agent);
  }

  /** The device is going: its ids are dropped where they stand (no MAD can leave it any more), lingering ones too. */
  removeDevice(dev: SoftDevice): void {
    for (const id of [...this.ids]) {
      if (id.dev !== dev) continue;
      this.toIdle(id);
      id.handler = null;
      this.forget(id);
    }
    dev.gsi.unregister(this.agent);
  }

  /** ib_create_cm_id */
  createId(dev: SoftDevice | null, handler: IbCmHandler | null): IbCmId {
    const id = new IbCmId(dev, handler);
    this.ids.add(id);
    return id;
  }

  /** ib_cm_listen: REQs and SIDR_REQs for the service (on the id's device, or on any) are the id's handler's. */
  listen(id: IbCmId, serviceId: bigint): void {
    id.state = IbState.LISTEN;
    id.serviceId = serviceId;
    let set = this.listens.get(serviceId);
    if (!set) this.listens.set(serviceId, (set = new Set()));
    set.add(id);
  }

  /**
   * ib_destroy_cm_id: what the state calls for goes to the peer first (REJ for a request not yet answered, DREQ
   * for an established connection, DREP for one the peer closed), so the peer sees a refusal or a disconnect,
   * not silence. Its handler hears nothing more.
   */
  destroyId(id: IbCmId): void {
    switch (id.state) {
      case IbState.REQ_SENT:
      case IbState.MRA_REQ_RCVD:
        // a REJ from the requester answers no message of the peer's (message_rejected "other")
        this.send(id, formatTimeoutRej(id, id.dev?.nodeGuid ?? 0n));
        break;
      case IbState.REQ_RCVD:
      case IbState.MRA_REQ_SENT:
        this.rej(id, RejReason.CONSUMER_DEFINED, MsgRef.REQ, new Uint8Array(0));
        break;
      case IbState.REP_SENT:
      case IbState.MRA_REP_RCVD:
      case IbState.REP_RCVD:
        this.rej(id, RejReason.CONSUMER_DEFINED, id.state === IbState.REP_RCVD ? MsgRef.REP : MsgRef.OTHER, new Uint8Array(0));
        break;
      case IbState.ESTABLISHED:
        this.sendDreq(id);
        break;
      case IbState.DREQ_RCVD:
        this.drep(id);
        break;
      case IbState.SIDR_REQ_RCVD:
        this.sendSidrRep(id, { status: SidrStatus.REJECT, qpn: 0, qkey: 0, privateData: new Uint8Array(0) });
        break;
    }
    this.stopTimer(id);
    id.handler = null;
    // a DREQ that is lost would leave the peer connected to nobody: the id lingers, out of its consumer's
    // sight, resending the DREQ until the DREP comes or the retries are spent
    if (id.state === IbState.DREQ_SENT && id.msg !== null) {
      this.forgetRequest(id);
      id.lingering = true;
      this.arm(id, Math.min(RETRY_MS, id.peerTimeoutMs));
      return;
    }
    this.forget(id);
  }

  // ---- what the consumer sends (ib_send_cm_*) ----

  /** ib_send_cm_req: a new transaction; REQ_SENT until the REP (or an MRA, a REJ, the last retry). */
  sendReq(id: IbCmId, p: ReqParam): void {
    id.takeReqParam(p);
    this.newTransaction(id);
    const mad = formatReq(id, id.dev!, p);
    id.state = IbState.REQ_SENT;
    this.sendAwaiting(id, mad);
  }

  /** ib_send_cm_rep, from REQ_RCVD or MRA_REQ_SENT: REP_SENT until the RTU. */
  sendRep(id: IbCmId, p: RepParam): void {
    id.takeRepParam(p);
    const mad = formatRep(id, id.dev!, p);
    id.state = IbState.REP_SENT;
    id.retries = 0;
    this.sendAwaiting(id, mad);
  }

  /** ib_send_cm_rtu, from REP_RCVD: ESTABLISHED; the RTU is kept for a REP sent again. */
  sendRtu(id: IbCmId): void {
    this.stopTimer(id);
    id.msg = formatRtu(id);
    this.send(id, id.msg);
    id.state = IbState.ESTABLISHED;
  }

  /** ib_send_cm_rej, from REQ_RCVD, MRA_REQ_SENT or REP_RCVD: the request or reply is refused and the id is IDLE. */
  sendRej(id: IbCmId, reason: RejReason, privateData: Uint8Array): void {
    this.rej(id, reason, id.state === IbState.REP_RCVD ? MsgRef.REP : MsgRef.REQ, privateData);
    this.toIdle(id);
  }

  /** ib_send_cm_dreq, from ESTABLISHED (or a REP not yet answered): DREQ_SENT until the DREP. */
  sendDreq(id: IbCmId): void {
    const mad = formatDreq(id);
    id.state = IbState.DREQ_SENT;
    id.retries = 0;
    this.sendAwaiting(id, mad);
  }

  /** ib_send_cm_drep, from DREQ_RCVD: the connection is closed and the id in TIMEWAIT. */
  sendDrep(id: IbCmId): void {
    this.drep(id);
    this.timewait(id);
  }

  /** ib_send_cm_sidr_req: a new transaction; SIDR_REQ_SENT until the SIDR_REP (or the last retry). */
  sendSidrReq(id: IbCmId, p: SidrReqParam): void {
    id.qpType = QpType.UD;
    id.serviceId = p.serviceId;
    id.setPath(p.path);
    id.peerTimeoutMs = p.timeoutMs;
    id.maxRetries = p.maxCmRetries;
    this.newTransaction(id);
    const mad = formatSidrReq(id, p);
    id.state = IbState.SIDR_REQ_SENT;
    this.sendAwaiting(id, mad);
  }

  /** ib_send_cm_sidr_rep, from SIDR_REQ_RCVD: the answer, kept for a SIDR_REQ sent again. */
  sendSidrRep(id: IbCmId, p: SidrRepParam): void {
    id.localQpn = p.qpn;
    id.msg = formatSidrRep(id.tid, id.remoteCommId, id.serviceId, p);
    this.send(id, id.msg);
    id.state = IbState.SIDR_REP_SENT;
  }

  // ---- the MADs that arrive (cm_recv_handler) ----

  /** The CM class's MADs of every device (the GSI has checked them): each to the handler named after its message. */
  private readonly agent: GsiAgent = {
    recv: (port, m, src) => {
      try {
        switch (m.attr) {
          case CmAttr.REQ: return this.onReq(port, src, m.hdr.tid, m.data);
          case CmAttr.MRA: return this.onMra(port, m.data);
          case CmAttr.REJ: return this.onRej(port, m.data);
          case CmAttr.REP: return this.onRep(port, src, m.data);
          case CmAttr.RTU: return this.onRtu(port, m.data);
          case CmAttr.DREQ: return this.onDreq(port, src, m.hdr.tid, m.data);
          case CmAttr.DREP: return this.onDrep(port, m.data);
          case CmAttr.SIDR_REQ: return this.onSidrReq(port, src, m.hdr.tid, m.data);
          case CmAttr.SIDR_REP: return this.onSidrRep(port, src, m.data);
        }
      } catch (e) {
        this.host.log(`rdma_cm: internal error on a CM MAD: ${asError(e).stack}`);
      }
    },
  };

  /** A connection request: a new id for the listener's handler, a REJ, or (for a retransmission) our answer again. */
  private onReq(port: GsiPort, src: Uint8Array, tid: bigint, data: Uint8Array): void {
    const m = decodeFields(REQ, data);
    const key = `${m.local_comm_id}:${m.local_ca_guid}`;
    const dupe = this.byRemote.get(key);
    if (dupe) {
      if (dupe.state === IbState.REQ_RCVD) {
        // the consumer is still deciding: tell the peer to wait instead of retrying
        dupe.state = IbState.MRA_REQ_SENT;
        dupe.msg = formatMra(dupe);
        this.send(dupe, dupe.msg);
      } else if ((dupe.state === IbState.MRA_REQ_SENT || dupe.state === IbState.REP_SENT || dupe.state === IbState.MRA_REP_RCVD) && dupe.msg) this.send(dupe, dupe.msg);
      return;
    }
    // a refusal names no connection of ours (local comm ID 0): the request never had one
    const refuse = (r: { reason: RejReason; why: string }) => {
      this.host.debug(`rdma_cm: ${port.dev.name}: refused a REQ from ${gidToAddr(src)}: ${r.why}`);
      port.send(src, formatRej(tid, 0, m.local_comm_id, r.reason, MsgRef.REQ, new Uint8Array(0)));
    };
    const listen = this.listenFor(m.service_id, port.dev);
    if (!listen) return refuse({ reason: RejReason.INVALID_SERVICE_ID, why: `nothing listens on service ID 0x${m.service_id.toString(16)}` });
    const id = this.createId(port.dev, listen.handler);
    id.takeReq(m, src, port.dev.activeMtu);
    id.tid = tid;
    id.localCommId = this.newCommId(id);
    id.state = IbState.REQ_RCVD;
    this.byRemote.set(key, id);
    id.remoteKey = key;
    const r = listen.handler?.(id, { type: 'REQ_RECEIVED', listen, req: m });
    if (r && 'reason' in r) {
      this.forget(id);
      refuse(r);
    }
  }

  private onMra(port: GsiPort, data: Uint8Array): void {
    const m = decodeFields(MRA, data);
    const id = this.byCommId.get(m.remote_comm_id);
    if (!id || (id.remoteCommId && m.local_comm_id !== id.remoteCommId)) return port.drop('MRA for no connection');
    const wait = timeoutMs(m.service_timeout) + Math.min(RETRY_MS, id.peerTimeoutMs);
    if (m.message_mraed === MsgRef.REQ && id.state === IbState.REQ_SENT) {
      id.state = IbState.MRA_REQ_RCVD;
      id.remoteCommId = m.local_comm_id;
      this.arm(id, wait);
    } else if (m.message_mraed === MsgRef.REP && id.state === IbState.REP_SENT) {
      id.state = IbState.MRA_REP_RCVD;
      this.arm(id, wait);
    } else if (id.state === IbState.MRA_REQ_RCVD || id.state === IbState.MRA_REP_RCVD) this.arm(id, wait);
    else return;
    this.report(id, { type: 'MRA_RECEIVED' });
  }

  private onRej(port: GsiPort, data: Uint8Array): void {
    const m = decodeFields(REJ, data);
    const id = this.byCommId.get(m.remote_comm_id);
    if (!id) return port.drop('REJ for no connection');
    if (id.remoteCommId && m.local_comm_id && m.local_comm_id !== id.remoteCommId) return port.drop('REJ from another connection');
    switch (id.state) {
      case IbState.REQ_SENT:
      case IbState.MRA_REQ_RCVD:
      case IbState.REP_SENT:
      case IbState.MRA_REP_RCVD:
      case IbState.REP_RCVD:
        this.toIdle(id);
        break;
      case IbState.ESTABLISHED:
      case IbState.DREQ_SENT:
        // a stale connection the peer no longer knows: it is over
        this.timewait(id);
        break;
      default:
        return;
    }
    this.report(id, { type: 'REJ_RECEIVED', reason: m.reason, privateData: m.private_data });
  }

  private onRep(port: GsiPort, src: Uint8Array, data: Uint8Array): void {
    const m = decodeFields(REP, data);
    const id = this.byCommId.get(m.remote_comm_id);
    if (!id || !id.dgid || !sameGid(src, id.dgid)) return port.drop('REP for no connection');
    if (id.state === IbState.ESTABLISHED && id.remoteCommId === m.local_comm_id) {
      // our RTU was lost: the peer asks again
      if (id.msg) this.send(id, id.msg);
      return;
    }
    if (id.state !== IbState.REQ_SENT && id.state !== IbState.MRA_REQ_RCVD) return;
    this.stopTimer(id);
    id.state = IbState.REP_RCVD;
    id.takeRep(m);
    id.msg = null;
    this.report(id, { type: 'REP_RECEIVED', rep: m });
  }

  private onRtu(port: GsiPort, data: Uint8Array): void {
    const m = decodeFields(RTU, data);
    const id = this.byCommId.get(m.remote_comm_id);
    if (!id || m.local_comm_id !== id.remoteCommId) return port.drop('RTU for no connection');
    if (id.state !== IbState.REP_SENT && id.state !== IbState.MRA_REP_RCVD) return;
    this.stopTimer(id);
    id.state = IbState.ESTABLISHED;
    id.msg = null;
    this.report(id, { type: 'RTU_RECEIVED', privateData: m.private_data });
  }

  private onDreq(port: GsiPort, src: Uint8Array, tid: bigint, data: Uint8Array): void {
    const m = decodeFields(DREQ, data);
    const id = this.byCommId.get(m.remote_comm_id);
    if (!id || m.local_comm_id !== id.remoteCommId || m.remote_qpn_eecn !== id.localQpn) {
      // a connection we no longer know: the peer is still told it is closed
      port.send(src, formatDrep(tid, m.remote_comm_id, m.local_comm_id));
      return;
    }
    switch (id.state) {
      case IbState.REP_SENT:
      case IbState.MRA_REP_RCVD:
      case IbState.ESTABLISHED:
        this.stopTimer(id);
        id.state = IbState.DREQ_RCVD;
        this.report(id, { type: 'DREQ_RECEIVED', privateData: m.private_data });
        return;
      case IbState.DREQ_SENT:
        // both sides closed at once
        this.drep(id);
        this.timewait(id);
        this.report(id, { type: 'DREQ_RECEIVED' });
        return;
      case IbState.TIMEWAIT:
        this.drep(id);
        return;
    }
  }

  private onDrep(port: GsiPort, data: Uint8Array): void {
    const m = decodeFields(DREP, data);
    const id = this.byCommId.get(m.remote_comm_id);
    if (!id || m.local_comm_id !== id.remoteCommId) return port.drop('DREP for no connection');
    if (id.state !== IbState.DREQ_SENT) return;
    if (id.lingering) return this.unlinger(id);
    this.timewait(id);
    this.report(id, { type: 'DREP_RECEIVED', privateData: m.private_data });
  }

  /** A service ID resolution request: a new id for the listener's handler, a refusal, or our answer again. */
  private onSidrReq(port: GsiPort, src: Uint8Array, tid: bigint, data: Uint8Array): void {
    const m = decodeFields(SIDR_REQ, data);
    const key = `sidr:${m.request_id}:${gidToAddr(src)}`;
    const dupe = this.byRemote.get(key);
    if (dupe) {
      if (dupe.state === IbState.SIDR_REP_SENT && dupe.msg) this.send(dupe, dupe.msg);
      return;
    }
    const refuse = (r: { status: SidrStatus; why: string }) => {
      this.host.debug(`rdma_cm: ${port.dev.name}: refused a SIDR_REQ from ${gidToAddr(src)}: ${r.why}`);
      port.send(src, formatSidrRep(tid, m.request_id, m.service_id, { status: r.status, qpn: 0, qkey: 0, privateData: new Uint8Array(0) }));
    };
    const listen = this.listenFor(m.service_id, port.dev);
    if (!listen) return refuse({ status: SidrStatus.UNSUPPORTED, why: `nothing listens on service ID 0x${m.service_id.toString(16)}` });
    const id = this.createId(port.dev, listen.handler);
    id.qpType = QpType.UD;
    id.serviceId = m.service_id;
    id.remoteCommId = m.request_id;
    id.tid = tid;
    id.dgid = src;
    id.state = IbState.SIDR_REQ_RCVD;
    this.byRemote.set(key, id);
    id.remoteKey = key;
    const r = listen.handler?.(id, { type: 'SIDR_REQ_RECEIVED', listen, req: m });
    if (r && 'status' in r) {
      this.forget(id);
      refuse(r);
    }
  }

  private onSidrRep(port: GsiPort, src: Uint8Array, data: Uint8Array): void {
    const m = decodeFields(SIDR_REP, data);
    const id = this.byCommId.get(m.request_id);
    if (!id || id.state !== IbState.SIDR_REQ_SENT || !id.dgid || !sameGid(src, id.dgid)) return port.drop('SIDR_REP for no request');
    this.toIdle(id);
    this.report(id, { type: 'SIDR_REP_RECEIVED', rep: m });
  }

  // ---- timers: retransmission, MRA waits, timewait ----

  /**
   * Sends a MAD that waits for an answer: resent every RETRY_MS (or the peer's time, if shorter) up to maxRetries
   * times. The timer is armed before the MAD leaves: a peer of this daemon answers before send returns, and its
   * answer (an MRA's longer wait, a DREP's TIMEWAIT) must not be overwritten by ours.
   */
  private sendAwaiting(id: IbCmId, mad: Uint8Array): void {
    id.msg = mad;
    this.arm(id, Math.min(RETRY_MS, id.peerTimeoutMs));
    this.send(id, mad);
  }

  private arm(id: IbCmId, ms: number): void {
    this.stopTimer(id);
    id.timer = setTimeout(() => this.onTimeout(id), ms);
    id.timer.unref();
  }

  private stopTimer(id: IbCmId): void {
    if (id.timer) clearTimeout(id.timer);
    id.timer = null;
  }

  private onTimeout(id: IbCmId): void {
    id.timer = null;
    if (id.lingering && (id.state !== IbState.DREQ_SENT || id.retries >= id.maxRetries)) return this.unlinger(id);
    if (id.state === IbState.TIMEWAIT) {
      id.state = IbState.IDLE;
      this.forgetCommId(id);
      this.report(id, { type: 'TIMEWAIT_EXIT' });
      return;
    }
    const waiting: IbState[] = [IbState.REQ_SENT, IbState.MRA_REQ_RCVD, IbState.REP_SENT, IbState.MRA_REP_RCVD, IbState.DREQ_SENT, IbState.SIDR_REQ_SENT];
    if (!waiting.includes(id.state) || !id.msg) return;
    if (id.retries++ < id.maxRetries) {
      this.arm(id, Math.min(RETRY_MS, id.peerTimeoutMs));
      this.send(id, id.msg);
      return;
    }
    // no answer after every retry
    switch (id.state) {
      case IbState.SIDR_REQ_SENT:
        this.toIdle(id);
        return this.report(id, { type: 'SIDR_REQ_ERROR' });
      case IbState.REQ_SENT:
      case IbState.MRA_REQ_RCVD:
      case IbState.REP_SENT:
      case IbState.MRA_REP_RCVD: {
        const type = id.state === IbState.REQ_SENT || id.state === IbState.MRA_REQ_RCVD ? 'REQ_ERROR' : 'REP_ERROR';
        this.send(id, formatTimeoutRej(id, id.dev!.nodeGuid));
        this.toIdle(id);
        return this.report(id, { type });
      }
      case IbState.DREQ_SENT:
        this.timewait(id);
        return this.report(id, { type: 'DREQ_ERROR' });
    }
  }

  private timewait(id: IbCmId): void {
    id.state = IbState.TIMEWAIT;
    id.msg = null;
    this.arm(id, TIMEWAIT_MS);
  }

  // ---- helpers ----

  private report(id: IbCmId, ev: IbCmEvent): void {
    id.handler?.(id, ev);
  }

  private send(id: IbCmId, mad: Uint8Array): void {
    if (id.dev && id.dgid) id.dev.gsi.send(id.dgid, mad);
  }

  private rej(id: IbCmId, reason: RejReason, msg: MsgRef, privateData: Uint8Array): void {
    this.send(id, formatRej(id.tid, id.localCommId, id.remoteCommId, reason, msg, privateData));
  }

  private drep(id: IbCmId): void {
    this.send(id, formatDrep(id.tid, id.localCommId, id.remoteCommId));
  }

  /** A new request's identity: its communication ID, a transaction ID made from it, retries from 0. */
  private newTransaction(id: IbCmId): void {
    id.localCommId = this.newCommId(id);
    id.tid = (1n << 32n) | BigInt(id.localCommId);
    id.retries = 0;
  }

  private newCommId(id: IbCmId): number {
    let c: number;
    do c = randomInt(1, 0xffffffff);
    while (this.byCommId.has(c));
    this.byCommId.set(c, id);
    return c;
  }

  private listenFor(serviceId: bigint, dev: SoftDevice): IbCmId | null {
    for (const l of this.listens.get(serviceId) ?? []) if (!l.dev || l.dev === dev) return l;
    return null;
  }

  /** Back to where a failed or refused connection leaves an id; its communication ID is free again. */
  private toIdle(id: IbCmId): void {
    this.stopTimer(id);
    id.state = IbState.IDLE;
    id.msg = null;
    this.forgetCommId(id);
  }

  private forgetCommId(id: IbCmId): void {
    if (id.localCommId && this.byCommId.get(id.localCommId) === id) this.byCommId.delete(id.localCommId);
  }

  /** What finds the id from outside, but for its communication ID (a lingering id still hears its DREP). */
  private forgetRequest(id: IbCmId): void {
    if (id.remoteKey && this.byRemote.get(id.remoteKey) === id) this.byRemote.delete(id.remoteKey);
    const set = this.listens.get(id.serviceId);
    if (set?.delete(id) && set.size === 0) this.listens.delete(id.serviceId);
  }

  private forget(id: IbCmId): void {
    this.forgetRequest(id);
    this.forgetCommId(id);
    this.ids.delete(id);
  }

  /** A destroyed id's last exchange is over: nothing of it is left. */
  private unlinger(id: IbCmId): void {
    this.stopTimer(id);
    id.lingering = false;
    this.forget(id);
  }
}
