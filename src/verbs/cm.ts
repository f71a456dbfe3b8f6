/**
 * RDMA CM, the librdmacm way: event channels, cm_ids bound to IP addresses
 * and ports, resolve/listen/connect/accept/reject/disconnect with private
 * data, events with librdmacm's RDMA_CM_EVENT_* values. The daemon runs the
 * CM protocol; this side, as librdmacm, opens the devices the ids land on and
 * moves the ids' QPs through INIT, RTR and RTS with the attributes the daemon
 * answers to INIT_QP_ATTR (the active side on CONNECT_RESPONSE, then ACCEPT,
 * which sends the RTU; the passive side before its ACCEPT sends the REP).
 */
import { lookup } from 'node:dns/promises';
import { existsSync, readFileSync } from 'node:fs';
import { isIPv4, isIPv6 } from 'node:net';
import { join } from 'node:path';
import { layout, unpack, type Input } from '../abi/layout.js';
import * as C from '../abi/ucma.js';
import { CmEventType, cmEventStr, PortSpace } from '../abi/ucma.js';
import { Access, QpAttrMask, QpState, QpType, WrOpcode, type Mtu } from '../abi/enums.js';
import { defaultRoot } from '../common/paths.js';
import { CommandChannel, EventStream } from './channel.js';
import type { Context } from './context.js';
import { getDeviceList, openDevice, socketUnder, trustRoot } from './device.js';
import { VerbsError } from './errors.js';
import type { ProtectionDomain } from './pd.js';
import { nextCompletion, type CompletionQueue } from './cq.js';
import type { WorkCompletion } from './types.js';
import type { QueuePair } from './qp.js';
import type { AhAttr, QpAttr, QpInitAttr } from './types.js';
import { ucmaConnParam, type ConnParam } from './cm-param.js';
import { cmEventReason } from './cm-reason.js';
import { errnoOf, messageOf } from '../common/errors.js';
import type { CmQpParam } from '../cm/ib-cm-id.js';

export { CmEventType, cmEventStr, PortSpace, nextCompletion };
export { RdmaOption } from '../abi/ucma.js';
export type { ConnParam };

/** What an event's conn parameters say (rdma_conn_param as the event carries it). */
export interface EventParam extends CmQpParam {
  privateData: Uint8Array;
  qpNum: number;
  /** UD (SIDR): the peer QP's Q_Key, and the path to it (for createAh) */
  qkey?: number;
  ahAttr?: AhAttr;
}

/** struct rdma_cm_event */
export interface CmEvent {
  event: CmEventType;
  /** the id it is about (for CONNECT_REQUEST: the new connection's id) */
  id: CmId;
  /** the listening id, for CONNECT_REQUEST */
  listenId: CmId | null;
  /** 0, a negative errno, or (REJECTED) the IBA reject reason, (UNREACHABLE of UD) the SIDR_REP status */
  status: number;
  /** the status in words (REJECTED 8: "invalid service ID: nothing listens on that port"); undefined for 0 */
  reason?: string;
  param: EventParam;
}

/** Where the daemon's rdma_cm file is: its discovery entry, else the default name. */
function cmPath(root: string): string {
  trustRoot(root, 'rdma_create_event_channel');
  const entry = join(root, 'sys', 'class', 'misc', 'rdma_cm', 'dev_path');
  let path = join(root, 'dev', 'infiniband', 'rdma_cm');
  if (existsSync(entry)) path = readFileSync(entry, 'utf8').trim();
  if (!socketUnder(root, path)) throw new VerbsError('rdma_create_event_channel', 'ENODEV', `no rdma_cm file under ${root} (is softverbsd running?)`);
  return path;
}

/**
 * Devices are opened once per process and root, as librdmacm opens each device once. A context that was
 * closed meanwhile (by its user, or because the daemon went away) is opened again.
 */
const contexts = new Map<string, Promise<Context>>();
async function deviceContext(root: string, index: number): Promise<Context> {
  const key = `${root}\0${index}`;
  let c = contexts.get(key);
  if (c) {
    const ctx = await c.catch(() => null);
    let up = ctx !== null;
    try {
      ctx?.cmd.ensureUp('rdma_cm');
    } catch {
      up = false;
    }
    if (up) return ctx!;
    contexts.delete(key);
    c = undefined;
  }
  if (!c) {
    const d = getDeviceList(root).find((x) => x.devName === `uverbs${index}`);
    if (!d) return Promise.reject(new VerbsError('rdma_cm', 'ENODEV', `the id's device (uverbs${index}) is not listed under ${root}`));
    c = openDevice(d, root);
    c.catch(() => contexts.delete(key));
    contexts.set(key, c);
  }
  return c;
}

function sockaddrOf(addr: string, port: number, verb: string): C.SockAddr {
  if (isIPv4(addr)) return { family: 4, address: addr, port };
  if (isIPv6(addr)) return { family: 6, address: addr, port };
  throw new VerbsError(verb, 'EINVAL', `"${addr}" is not an IPv4 or IPv6 address`);
}

function storage(a: C.SockAddr | null): { bytes: Uint8Array; size: number } {
  const bytes = new Uint8Array(128);
  if (!a) return { bytes, size: 0 };
  return { bytes, size: C.writeSockaddr(a, bytes) };
}

/** Where a record's fields are (struct rdma_ucm_event_resp), for routing records as they arrive. */
const EV_UID = layout(C.EVENT_RESP).byName.get('uid')!.offset;
const EV_ID = layout(C.EVENT_RESP).byName.get('id')!.offset;
const EV_EVENT = layout(C.EVENT_RESP).byName.get('event')!.offset;

/**
 * An id on its way to another channel (rdma_migrate_id). The kernel moves an id's unread events with it; ours
 * travelled on the old channel's stream already, so they are taken off it here, together with those the new
 * stream brings meanwhile, until the daemon's MIGRATED record says the old stream has no more of them. Then the
 * new channel gets them, the old ones first. A connection request among them made an id of its own, which moves too.
 */
class Move {
  /** the handles whose events move (the id's, then its waiting requests' ids) */
  readonly handles = new Set<number>();
  /** events off the old stream, and off the new one, in the order each stream brought them */
  readonly old: Buffer[] = [];
  readonly own: Buffer[] = [];
  /** request ids found among the moved events */
  readonly children: number[] = [];
  /** handles whose MIGRATED record is awaited */
  readonly waiting = new Map<number, () => void>();

  constructor(
    readonly from: EventChannel,
    readonly to: EventChannel,
    handle: number,
    /** the listening id's uid (its CONNECT_REQUESTs carry it, not its handle); 0n for a request's id */
    readonly uid: bigint,
  ) {
    this.handles.add(handle);
  }

  takes(rec: Buffer): boolean {
    const event = rec.readUInt32LE(EV_EVENT);
    if (event === CmEventType.CONNECT_REQUEST) return this.uid !== 0n && rec.readBigUInt64LE(EV_UID) === this.uid;
    return event !== C.SV_EVENT_MIGRATED && this.handles.has(rec.readUInt32LE(EV_ID));
  }

  /** a record of the old stream is this move's: it is kept (a request's id joins the move at once) */
  takeOld(rec: Buffer): void {
    this.old.push(rec);
    if (rec.readUInt32LE(EV_EVENT) !== CmEventType.CONNECT_REQUEST) return;
    const child = rec.readUInt32LE(EV_ID);
    this.handles.add(child);
    this.children.push(child);
  }
}

/** Unique per process, not per channel: an id keeps its uid when it moves to another channel. */
let nextUid = 1n;

export class EventChannel {
  /** ids of this channel by the daemon's handle */
  readonly ids = new Map<number, CmId>();
  private closed = false;
  /** @internal moves of ids away from this channel, and to it */
  readonly outgoing = new Set<Move>();
  /** @internal */ readonly incoming = new Set<Move>();

  private constructor(
    readonly root: string,
    /** @internal */ readonly cmd: CommandChannel,
    /** @internal */ readonly stream: EventStream,
    /** @internal the daemon's name for this channel's file (MIGRATE_ID's `fd`) */ readonly token: number,
  ) {
    stream.tap = (rec) => this.route(rec);
  }

  /** @internal Each arriving record: an event of an id moving away or moving here is held for the move. */
  private route(rec: Buffer): boolean {
    const event = rec.readUInt32LE(EV_EVENT);
    for (const m of this.outgoing) {
      if (event === C.SV_EVENT_MIGRATED) {
        const done = m.waiting.get(rec.readUInt32LE(EV_ID));
        if (done) return done(), true;
      } else if (m.takes(rec)) return m.takeOld(rec), true;
    }
    for (const m of this.incoming) if (m.from !== this && m.takes(rec)) return m.own.push(rec), true;
    // a MIGRATED record no move waits for (its move gave up): nothing for the reader
    return event === C.SV_EVENT_MIGRATED;
  }

  /** rdma_create_event_channel */
  static async create(root = defaultRoot()): Promise<EventChannel> {
    const path = cmPath(root);
    const cmd = await CommandChannel.open(path, 'rdma_create_event_channel');
    try {
      const tok = unpack(C.SV_UCMA_TOKEN, await cmd.call('rdma_create_event_channel', C.ucmaSvFrame(C.SvUcmaCmd.EVENT_TOKEN)));
      const stream = await EventStream.attach(path, C.SvUcmaCmd.ATTACH_EVENTS, tok.token, C.EVENT_RESP_SIZE, 'rdma_create_event_channel', C.ucmaSvFrame);
      return new EventChannel(root, cmd, stream, tok.token);
    } catch (e) {
      await cmd.close();
      throw e;
    }
  }

  /** @internal */
  call<S extends C.UcmaSpec>(verb: string, s: S, req: Input<S['req']>): Promise<Buffer> {
    return this.cmd.call(verb, C.ucmaFrame(s, req));
  }

  /** @internal a frame made whole by its caller (rdma_set_option's carries the value after the struct) */
  cmdCall(verb: string, frame: Buffer): Promise<Buffer> {
    return this.cmd.call(verb, frame);
  }

  /** rdma_create_id: RDMA_PS_TCP (RC), RDMA_PS_UDP (UD), RDMA_PS_IB (qpType given). */
  async createId(ps: PortSpace = PortSpace.TCP, context: unknown = null, qpType: number = 0): Promise<CmId> {
    const uid = nextUid++;
    const r = unpack(C.CREATE_ID_RESP, await this.call('rdma_create_id', C.UcmaSpecs.CREATE_ID, { uid, ps, qp_type: qpType }));
    const id = new CmId(this, r.id, uid, ps, ps === PortSpace.TCP ? QpType.RC : ps === PortSpace.IB ? qpType || QpType.RC : QpType.UD);
    id.context = context;
    this.ids.set(r.id, id);
    this.byUid.set(uid, id);
    return id;
  }
  /** @internal */ readonly byUid = new Map<bigint, CmId>();

  /** rdma_get_cm_event: the next event (waits); null once the channel is closed. */
  async getCmEvent(): Promise<CmEvent | null> {
    for (;;) {
      const rec = await this.stream.next();
      if (!rec) return null;
      const ev = await this.process(rec);
      if (!ev) continue;
      // the kernel counts a request on the listening id it is reported to
      (ev.listenId ?? ev.id).eventsReported++;
      return ev;
    }
  }

  /** Events as an async iterator (ends when the channel is destroyed). */
  async *[Symbol.asyncIterator](): AsyncGenerator<CmEvent> {
    for (;;) {
      const e = await this.getCmEvent();
      if (!e) return;
      yield e;
    }
  }

  private async process(rec: Buffer): Promise<CmEvent | null> {
    const r = unpack(C.EVENT_RESP, rec);
    const at = layout(C.EVENT_RESP).byName.get('param')!.offset;
    const of = r.event === CmEventType.CONNECT_REQUEST ? this.byUid.get(r.uid) : this.ids.get(r.id);
    let param: EventParam;
    if (of?.qpType === QpType.UD) {
      const u = unpack(C.UD_PARAM, rec, at);
      const g = u.ah_attr.grh;
      param = {
        privateData: u.private_data.slice(0, u.private_data_len), responderResources: 0, initiatorDepth: 0, flowControl: 0, retryCount: 0, rnrRetryCount: 0, srq: 0,
        qpNum: u.qp_num, qkey: u.qkey,
        ahAttr: { grh: { dgid: g.dgid, flowLabel: g.flow_label, sgidIndex: g.sgid_index, hopLimit: g.hop_limit, trafficClass: g.traffic_class }, isGlobal: u.ah_attr.is_global === 1, portNum: u.ah_attr.port_num || 1 },
      };
    } else {
      const p = unpack(C.CONN_PARAM, rec, at);
      param = {
        privateData: p.private_data.slice(0, p.private_data_len), responderResources: p.responder_resources, initiatorDepth: p.initiator_depth,
        flowControl: p.flow_control, retryCount: p.retry_count, rnrRetryCount: p.rnr_retry_count, srq: p.srq, qpNum: p.qp_num,
      };
    }
    let event = r.event as CmEventType;
    let status = r.status;
    if (event === CmEventType.CONNECT_REQUEST) {
      const listen = this.byUid.get(r.uid) ?? null;
      const id = new CmId(this, r.id, 0n, listen?.ps ?? PortSpace.TCP, listen?.qpType ?? QpType.RC);
      id.context = listen?.context ?? null;
      this.ids.set(r.id, id);
      try {
        await id.learn();
      } catch {
        /* the daemon has it; the consumer's accept says what went wrong */
      }
      return { event, id, listenId: listen, status, reason: cmEventReason(event, status), param };
    }
    const id = this.ids.get(r.id);
    if (!id) return null; // an id destroyed while its event was on the way
    // the address fixes the device and both addresses; the route that follows changes neither
    if (event === CmEventType.ADDR_RESOLVED) await id.learn().catch(() => {});
    if (event === CmEventType.CONNECT_RESPONSE && id.qp) {
      // librdmacm's ucma_process_conn_resp: the QP to RTR and RTS, then ACCEPT (our RTU); the consumer sees ESTABLISHED
      try {
        await id.modifyQpRtr(param.initiatorDepth);
        await id.modifyQpRts();
        await this.call('rdma_accept', C.UcmaSpecs.ACCEPT, { id: id.handle, conn_param: {} });
        event = CmEventType.ESTABLISHED;
      } catch (e) {
        await this.call('rdma_reject', C.UcmaSpecs.REJECT, { id: id.handle }).catch(() => {});
        event = CmEventType.CONNECT_ERROR;
        status = errnoOf(e) ?? -5;
      }
    }
    id.lastEvent = event;
    return { event, id, listenId: null, status, reason: cmEventReason(event, status), param };
  }

  /** rdma_destroy_event_channel: the daemon destroys the ids still on it (their peers see a refusal or a disconnect). */
  /** @internal */
  get isClosed(): boolean {
    return this.closed;
  }

  async destroy(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.stream.close();
    await this.cmd.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.destroy();
  }
}

export class CmId {
  /** the user's own value (rdma_cm_id.context) */
  context: unknown = null;
  /** the device the id is on, once resolved or connected (rdma_cm_id.verbs) */
  verbs: Context | null = null;
  pd: ProtectionDomain | null = null;
  qp: QueuePair | null = null;
  sendCq: CompletionQueue | null = null;
  recvCq: CompletionQueue | null = null;
  portNum = 0;
  localAddr: C.SockAddr | null = null;
  peerAddr: C.SockAddr | null = null;
  /** @internal */ lastEvent: CmEventType | null = null;
  /** events rdma_get_cm_event has returned for the id (a listening id's connection requests included): the kernel's events_reported */
  eventsReported = 0;
  private destroyed = false;
  /**
   * An endpoint of createEp (librdmacm's synchronous ids): the id has a channel of its own, and connect,
   * accept and getRequest wait for their outcome; a refusal or a timeout is thrown as the errno librdmacm sets.
   */
  sync = false;
  /** @internal the QP attributes createEp was given: a listening endpoint's requests get a QP with them */
  epInit: (Partial<QpInitAttr> & { cap?: QpInitAttr['cap'] }) | null = null;
  /** @internal */ epPd: ProtectionDomain | null = null;
  /** the private data of the event that established the connection (its REP's, for the active side) */
  lastParam: EventParam | null = null;

  constructor(
    /** the channel its events arrive on (migrate() changes it) */
    public channel: EventChannel,
    /** @internal the daemon's handle */ readonly handle: number,
    /** @internal */ readonly uid: bigint,
    readonly ps: PortSpace,
    readonly qpType: number,
  ) {}

  /** @internal The id's device and addresses, as the daemon has them (librdmacm's ucma_query_addr). */
  async learn(): Promise<void> {
    const q = unpack(C.QUERY_ADDR_RESP, await this.channel.call('rdma_query', C.UcmaSpecs.QUERY, { id: this.handle, option: C.QueryOption.ADDR }));
    this.localAddr = q.src_size ? C.readSockaddr(q.src_addr.bytes) : null;
    this.peerAddr = q.dst_size ? C.readSockaddr(q.dst_addr.bytes) : null;
    if (q.ibdev_index !== 0xffffffff && !this.verbs) {
      this.verbs = await deviceContext(this.channel.root, q.ibdev_index);
      this.portNum = q.port_num;
    }
  }

  /** rdma_bind_addr ('0.0.0.0' or '::' for every device) */
  async bindAddr(addr: string, port = 0): Promise<void> {
    const a = storage(sockaddrOf(addr, port, 'rdma_bind_addr'));
    await this.channel.call('rdma_bind_addr', C.UcmaSpecs.BIND, { id: this.handle, addr_size: a.size, addr: { bytes: a.bytes } });
    await this.learn();
  }

  /** rdma_resolve_addr: ADDR_RESOLVED (or ADDR_ERROR) follows on the channel. */
  async resolveAddr(dst: string, port: number, opts: { src?: string; timeoutMs?: number } = {}): Promise<void> {
    const d = storage(sockaddrOf(dst, port, 'rdma_resolve_addr'));
    const s = storage(opts.src ? sockaddrOf(opts.src, 0, 'rdma_resolve_addr') : null);
    await this.channel.call('rdma_resolve_addr', C.UcmaSpecs.RESOLVE_ADDR, {
      id: this.handle, timeout_ms: opts.timeoutMs ?? 2000, src_size: s.size, dst_size: d.size, src_addr: { bytes: s.bytes }, dst_addr: { bytes: d.bytes },
    });
  }

  /** rdma_resolve_route: ROUTE_RESOLVED follows. */
  async resolveRoute(timeoutMs = 2000): Promise<void> {
    await this.channel.call('rdma_resolve_route', C.UcmaSpecs.RESOLVE_ROUTE, { id: this.handle, timeout_ms: timeoutMs });
  }

  /** rdma_listen (backlog 0: the daemon's maximum) */
  async listen(backlog = 0): Promise<void> {
    await this.channel.call('rdma_listen', C.UcmaSpecs.LISTEN, { id: this.handle, backlog });
    await this.learn();
  }

  /** rdma_create_qp: a QP on the id's device, in INIT, with CQs of its own when none are given (pd null: one per device). */
  async createQp(pd: ProtectionDomain | null, init: Partial<QpInitAttr> & { cap?: QpInitAttr['cap'] }): Promise<QueuePair> {
    if (!this.verbs) throw new VerbsError('rdma_create_qp', 'EINVAL', 'the id has no device yet (resolve the address or take a connection request first)');
    const ctx = this.verbs;
    const qpPd = (this.pd = pd ?? (await defaultPd(ctx)));
    const { withChannels, ...rest } = init as { withChannels?: boolean } & typeof init;
    // what this call makes, the newest first: it goes again if the call fails
    const made: Array<{ [Symbol.asyncDispose](): Promise<void> }> = [];
    const keep = <T extends (typeof made)[number]>(o: T): T => (made.unshift(o), o);
    // rdma_create_ep's ids wait for completions asleep: their CQs get channels
    const ownCq = async (n: number) => keep(await ctx.createCq(Math.max(1, n), withChannels ? keep(await ctx.createCompChannel()) : null));
    try {
      const sendCq = init.sendCq ?? (await ownCq(init.cap?.maxSendWr ?? 1));
      const recvCq = init.recvCq ?? (await ownCq(init.cap?.maxRecvWr ?? 1));
      const qp = keep(await qpPd.createQp({ ...rest, sendCq, recvCq, cap: init.cap ?? {}, qpType: (init.qpType ?? this.qpType) as QpType }));
      await this.modifyQp(qp, QpState.INIT);
      // a UD QP needs no peer: librdmacm takes it to RTS at once
      if (qp.qpType === QpType.UD) {
        await this.modifyQp(qp, QpState.RTR);
        await this.modifyQp(qp, QpState.RTS);
      }
      this.qp = qp;
      if (!init.sendCq) this.sendCq = sendCq;
      if (!init.recvCq) this.recvCq = recvCq;
      this.qpCqs = [sendCq, recvCq];
      return qp;
    } catch (e) {
      // the error that stopped it is the one to see
      for (const o of made) await o[Symbol.asyncDispose]().catch(() => {});
      throw e;
    }
  }

  /** rdma_destroy_qp: the id's QP, and the CQs (and their channels) the id made for it. Every step is tried; the first failure is thrown. */
  async destroyQp(): Promise<void> {
    const qp = this.qp;
    const cqs = [this.sendCq, this.recvCq];
    this.qp = this.sendCq = this.recvCq = null;
    let failed: unknown = null;
    const step = (p: Promise<unknown> | undefined) => p?.catch((e: unknown) => void (failed ??= e));
    await step(qp?.destroyQp());
    for (const cq of cqs) {
      const ch = cq?.channel;
      await step(cq?.destroyCq());
      await step(ch?.destroyCompChannel());
    }
    if (failed) throw failed;
  }

  /** rdma_init_qp_attr: what moves the id's QP to `state`. */
  async initQpAttr(state: QpState): Promise<{ attr: QpAttr; mask: number }> {
    const r = unpack(C.QP_ATTR, await this.channel.call('rdma_init_qp_attr', C.UcmaSpecs.INIT_QP_ATTR, { id: this.handle, qp_state: state }));
    const g = r.ah_attr.grh;
    const attr: QpAttr = {
      qpState: r.qp_state as QpState, pathMtu: r.path_mtu as Mtu, qkey: r.qkey, rqPsn: r.rq_psn, sqPsn: r.sq_psn, destQpNum: r.dest_qp_num,
      qpAccessFlags: r.qp_access_flags, pkeyIndex: r.pkey_index, maxRdAtomic: r.max_rd_atomic, maxDestRdAtomic: r.max_dest_rd_atomic,
      minRnrTimer: r.min_rnr_timer, portNum: r.port_num, timeout: r.timeout, retryCnt: r.retry_cnt, rnrRetry: r.rnr_retry,
      ahAttr: { grh: { dgid: g.dgid, flowLabel: g.flow_label, sgidIndex: g.sgid_index, hopLimit: g.hop_limit, trafficClass: g.traffic_class }, isGlobal: r.ah_attr.is_global === 1, portNum: r.ah_attr.port_num, sl: r.ah_attr.sl },
    };
    return { attr, mask: r.qp_attr_mask };
  }

  private async modifyQp(qp: QueuePair, state: QpState, override?: Partial<QpAttr>): Promise<void> {
    const { attr, mask } = await this.initQpAttr(state);
    await qp.modifyQp({ ...attr, ...override }, mask);
  }

  /** @internal librdmacm's ucma_modify_qp_rtr: INIT again with the connection's access rights, then RTR */
  async modifyQpRtr(_respRes?: number): Promise<void> {
    if (!this.qp) return;
    await this.modifyQp(this.qp, QpState.INIT);
    await this.modifyQp(this.qp, QpState.RTR);
  }

  /** @internal */
  async modifyQpRts(): Promise<void> {
    if (this.qp) await this.modifyQp(this.qp, QpState.RTS);
  }

  /** rdma_connect: the REQ; ESTABLISHED, REJECTED, UNREACHABLE or CONNECT_ERROR follows. */
  async connect(p: ConnParam = {}): Promise<void> {
    await this.channel.call('rdma_connect', C.UcmaSpecs.CONNECT, { id: this.handle, conn_param: ucmaConnParam(p, 'rdma_connect', this.qpType, this.ps, p.qpNum ?? this.qp?.qpNum ?? 0) });
    if (this.sync) this.lastParam = (await this.waitEvent('rdma_connect', CmEventType.ESTABLISHED)).param;
  }

  /** rdma_accept: the id's QP to RTR and RTS, then the REP; ESTABLISHED follows when the RTU arrives. */
  async accept(p: ConnParam = {}): Promise<void> {
    const param = ucmaConnParam(p, 'rdma_accept', this.qpType, this.ps, p.qpNum ?? this.qp?.qpNum ?? 0);
    if (this.qp && this.qpType !== QpType.UD) {
      await this.modifyQpRtr();
      await this.modifyQpRts();
    }
    await this.channel.call('rdma_accept', C.UcmaSpecs.ACCEPT, { id: this.handle, conn_param: param });
    if (this.sync && this.qpType !== QpType.UD) await this.waitEvent('rdma_accept', CmEventType.ESTABLISHED);
  }

  /** rdma_reject: a REJ (consumer defined) with private data. */
  async reject(privateData: Uint8Array = new Uint8Array(0)): Promise<void> {
    if (privateData.length > C.RDMA_MAX_PRIVATE_DATA) throw new VerbsError('rdma_reject', 'EINVAL', `${privateData.length} bytes of private data`);
    await this.channel.call('rdma_reject', C.UcmaSpecs.REJECT, { id: this.handle, private_data_len: privateData.length, private_data: privateData });
  }

  /**
   * rdma_set_option(id, level, optname, value): RdmaOption.ID with ID_TOS (1 byte), ID_REUSEADDR and ID_AFONLY
   * (4-byte ints), ID_ACK_TIMEOUT (1 byte, RC ids); the kernel's errnos (EINVAL for a wrong size or state, ENOSYS
   * for an unknown option). setTos and setAckTimeout are the common two.
   */
  async setOption(level: number, optname: number, value: Uint8Array): Promise<void> {
    await this.channel.cmdCall('rdma_set_option', C.setOptionFrame(this.handle, level, optname, value));
  }

  /** The type of service (IP TOS) of the route resolved after this: its GRH traffic class. */
  async setTos(tos: number): Promise<void> {
    await this.setOption(C.RdmaOption.ID, C.RdmaOption.ID_TOS, Uint8Array.of(tos));
  }

  /** The QP's local ACK timeout at RTS (4.096 µs × 2^timeout) instead of the path's; RC ids only. */
  async setAckTimeout(timeout: number): Promise<void> {
    await this.setOption(C.RdmaOption.ID, C.RdmaOption.ID_ACK_TIMEOUT, Uint8Array.of(timeout));
  }

  /** rdma_disconnect: the QP to ERR (its WRs flush), then a DREQ (or the DREP for the peer's). */
  async disconnect(): Promise<void> {
    if (this.qp) await this.qp.modifyQp({ qpState: QpState.ERR }, QpAttrMask.STATE).catch(() => {});
    await this.channel.call('rdma_disconnect', C.UcmaSpecs.DISCONNECT, { id: this.handle });
  }

  /**
   * rdma_migrate_id: the id's events arrive on `to` from now on. Those it had that getCmEvent has not returned
   * move with it, ahead of its new ones, and so do the ids of connection requests waiting among them. Returns
   * the events reported for the id so far (the kernel's events_reported). Errors as the kernel's: ENOENT for an
   * id that is gone or an old channel that is closed, EBADF for a closed new channel.
   */
  async migrate(to: EventChannel): Promise<number> {
    const from = this.channel;
    // the kernel's fdget of the id's channel fails with ENOENT; a write to the new one's closed descriptor is EBADF
    if (from.isClosed) throw new VerbsError('rdma_migrate_id', 'ENOENT', "the id's event channel is closed");
    if (to.isClosed) throw new VerbsError('rdma_migrate_id', 'EBADF', 'the new event channel is closed');
    const m = new Move(from, to, this.handle, this.uid);
    // what the old stream holds unread goes along
    for (const rec of from.stream.extract((r) => m.takes(r))) m.takeOld(rec);
    from.outgoing.add(m);
    to.incoming.add(m);
    const moveOne = async (handle: number) => {
      let done!: () => void;
      const marked = new Promise<void>((r) => (done = r));
      m.waiting.set(handle, done);
      try {
        await to.call('rdma_migrate_id', C.UcmaSpecs.MIGRATE_ID, { id: handle, fd: from.token });
        // the old stream's end is its last record too
        await Promise.race([marked, from.stream.ended]);
      } finally {
        m.waiting.delete(handle);
      }
    };
    try {
      await moveOne(this.handle);
    } catch (e) {
      from.outgoing.delete(m);
      to.incoming.delete(m);
      for (const r of m.old) from.stream.put(r);
      for (const r of m.own) to.stream.put(r);
      throw e;
    }
    from.ids.delete(this.handle);
    from.byUid.delete(this.uid);
    to.ids.set(this.handle, this);
    if (this.uid) to.byUid.set(this.uid, this);
    this.channel = to;
    // requests found on the way (more may turn up while one moves); one gone meanwhile stays gone
    for (let i = 0; i < m.children.length; i++) await moveOne(m.children[i]!).catch(() => {});
    from.outgoing.delete(m);
    to.incoming.delete(m);
    for (const r of [...m.old, ...m.own]) to.stream.put(r);
    return this.eventsReported;
  }

  /** rdma_destroy_id: its QP stays the caller's, as in librdmacm (disposing the id takes it). Once the daemon is gone: only here. */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    this.channel.ids.delete(this.handle);
    this.channel.byUid.delete(this.uid);
    await this.channel.cmd.release('rdma_destroy_id', C.ucmaFrame(C.UcmaSpecs.DESTROY_ID, { id: this.handle }));
  }

  /** rdma_destroy_ep: the QP made with createQp (and its CQs), the id, a createEp id's own channel; each step runs, a failure is thrown after. */
  async [Symbol.asyncDispose](): Promise<void> {
    const failed: unknown[] = [];
    const step = (p: Promise<void>) => p.catch((e: unknown) => void failed.push(e));
    await step(this.destroyQp());
    await step(this.destroy());
    if (this.sync && !this.listenerOf) await step(this.channel.destroy());
    if (failed.length > 1) throw new AggregateError(failed, `rdma_destroy_ep: ${failed.map(messageOf).join('; ')}`);
    if (failed.length) throw failed[0];
  }

  // ---- the convenience layer (rdma_verbs.h and librdmacm's synchronous ids) ----

  /** @internal the CQs of the id's QP (send, receive) */
  qpCqs: [CompletionQueue, CompletionQueue] | null = null;
  /** @internal the listening endpoint a request endpoint came from (they share its channel) */
  listenerOf: CmId | null = null;

  /** @internal The next event of a synchronous id: `want`, or the errno librdmacm sets for what came instead. */
  async waitEvent(verb: string, want: CmEventType): Promise<CmEvent> {
    const e = await this.channel.getCmEvent();
    if (!e) throw new VerbsError(verb, 'EIO', 'the event channel is closed');
    if (e.event === want) return e;
    const code = e.event === CmEventType.REJECTED ? 'ECONNREFUSED' : e.event === CmEventType.UNREACHABLE ? (e.status === -110 ? 'ETIMEDOUT' : 'EHOSTUNREACH') : e.event === CmEventType.ADDR_ERROR || e.event === CmEventType.ROUTE_ERROR ? 'EHOSTUNREACH' : 'ECONNABORTED';
    const err = new VerbsError(verb, code, `${cmEventStr(e.event)} (status ${e.status}${e.reason ? ` = ${e.reason}` : ''})`);
    throw Object.assign(err, { event: e });
  }

  /** rdma_get_request: the next connection request to a listening endpoint, as an endpoint with its QP made. */
  async getRequest(): Promise<CmId> {
    if (!this.sync) throw new VerbsError('rdma_get_request', 'EINVAL', 'not an endpoint of createEp (use the event channel)');
    const e = await this.waitEvent('rdma_get_request', CmEventType.CONNECT_REQUEST);
    const id = e.id;
    id.sync = true;
    id.listenerOf = this;
    id.lastParam = e.param;
    if (this.epInit) await id.createQp(this.epPd && this.epPd.context === id.verbs ? this.epPd : null, epQpAttr(this.epInit, id));
    return id;
  }

  /** rdma_reg_msgs for a buffer the library allocates (registrable memory is shared memory here). */
  async allocMsgs(length: number): Promise<import('./mr.js').MemoryRegion> {
    if (!this.pd) throw new VerbsError('rdma_reg_msgs', 'EINVAL', 'the id has no PD (create its QP first)');
    return this.pd.allocMr(length, Access.LOCAL_WRITE);
  }

  /** rdma_post_recv */
  postRecv(mr: import('./mr.js').MemoryRegion, offset = 0, length = mr.length - offset, wrId: bigint | number = 0): void {
    this.qp!.postRecv({ wrId, sgList: [mr.sge(offset, length)] });
  }

  /** rdma_post_send (flags: SendFlags, e.g. INLINE | SIGNALED) */
  postSend(mr: import('./mr.js').MemoryRegion, offset = 0, length = mr.length - offset, flags = 0, wrId: bigint | number = 0): void {
    this.qp!.postSend({ wrId, opcode: WrOpcode.SEND, sendFlags: flags, sgList: [mr.sge(offset, length)] });
  }

  /** rdma_get_send_comp: the next send completion (waits, asleep on the CQ's channel). */
  getSendComp(): Promise<WorkCompletion> {
    return nextCompletion(this.qpCqs![0]);
  }

  /** rdma_get_recv_comp */
  getRecvComp(): Promise<WorkCompletion> {
    return nextCompletion(this.qpCqs![1]);
  }
}

/** The QP an endpoint gets: the caller's attributes, with CQs (and their channels) the id makes for itself. */
function epQpAttr(init: Partial<QpInitAttr> & { cap?: QpInitAttr['cap'] }, id: CmId): Partial<QpInitAttr> & { cap?: QpInitAttr['cap'] } {
  return { ...init, qpType: (init.qpType ?? id.qpType) as QpType, withChannels: true } as Partial<QpInitAttr>;
}

/** struct rdma_addrinfo, as far as RoCE uses it. */
export interface RdmaAddrInfo {
  passive: boolean;
  portSpace: PortSpace;
  qpType: number;
  srcAddr: string | null;
  srcPort: number;
  dstAddr: string | null;
  dstPort: number;
}

/**
 * rdma_getaddrinfo: node and service to addresses (a name is looked up; a passive lookup without a node is the
 * wildcard, which takes IPv4 and IPv6).
 */
export async function getAddrInfo(node: string | null, service: string | number | null, hints: { passive?: boolean; portSpace?: PortSpace; qpType?: number; src?: string } = {}): Promise<RdmaAddrInfo> {
  const port = service === null ? 0 : Number(service);
  if (!Number.isInteger(port) || port < 0 || port > 0xffff) throw new VerbsError('rdma_getaddrinfo', 'EINVAL', `service "${service}" is not a port number`);
  const ps = hints.portSpace ?? PortSpace.TCP;
  const qpType = hints.qpType ?? (ps === PortSpace.UDP ? QpType.UD : QpType.RC);
  const look = async (n: string) => {
    try {
      return (await lookup(n)).address;
    } catch (e) {
      throw new VerbsError('rdma_getaddrinfo', 'ENOENT', `${n}: ${messageOf(e)}`);
    }
  };
  if (hints.passive) return { passive: true, portSpace: ps, qpType, srcAddr: node ? await look(node) : '::', srcPort: port, dstAddr: null, dstPort: 0 };
  if (!node) throw new VerbsError('rdma_getaddrinfo', 'EINVAL', 'an active lookup needs a node');
  return { passive: false, portSpace: ps, qpType, srcAddr: hints.src ? await look(hints.src) : null, srcPort: 0, dstAddr: await look(node), dstPort: port };
}

/**
 * rdma_create_ep: a synchronous id for `res`. Passive: bound to its address (listen, then getRequest). Active:
 * address and route resolved, and (with `qpInit`) its QP made; connect() then waits for the connection.
 */
export async function createEp(res: RdmaAddrInfo, pd: ProtectionDomain | null = null, qpInit: (Partial<QpInitAttr> & { cap?: QpInitAttr['cap'] }) | null = null, root = defaultRoot()): Promise<CmId> {
  const ch = await EventChannel.create(root);
  try {
    const id = await ch.createId(res.portSpace, null, res.portSpace === PortSpace.IB ? res.qpType : 0);
    id.sync = true;
    id.epInit = qpInit;
    id.epPd = pd;
    if (res.passive) {
      await id.bindAddr(res.srcAddr ?? '::', res.srcPort);
      return id;
    }
    await id.resolveAddr(res.dstAddr!, res.dstPort, { src: res.srcAddr ?? undefined });
    await id.waitEvent('rdma_create_ep', CmEventType.ADDR_RESOLVED);
    await id.resolveRoute();
    await id.waitEvent('rdma_create_ep', CmEventType.ROUTE_RESOLVED);
    if (qpInit) await id.createQp(pd, epQpAttr(qpInit, id));
    return id;
  } catch (e) {
    await ch.destroy();
    throw e;
  }
}

const pds = new WeakMap<Context, Promise<ProtectionDomain>>();
function defaultPd(ctx: Context): Promise<ProtectionDomain> {
  let p = pds.get(ctx);
  if (!p) pds.set(ctx, (p = ctx.allocPd()));
  return p;
}
