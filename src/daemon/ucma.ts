/**
 * One connection to the rdma_cm file (a ucma file of the kernel): its
 * commands, each with its handler named after it, and the event stream a
 * second connection attaches to by token. What the commands do is the
 * connection manager's (`cm/cma.ts`); this side checks the frames, owns the
 * file's ids and turns events into `rdma_ucm_event_resp` records.
 *
 * A C program's file (librdmacm through the preload library, `abi/ucma.ts`)
 * is the kernel's: its events wait here until GET_EVENT takes one, and its
 * notification stream holds one byte per waiting event, so the descriptor
 * the program polls is readable exactly when an event waits. Bytes are only
 * ever added here; the replies say how many the preload takes off when
 * events leave (GET_EVENT, rdma_destroy_id, rdma_migrate_id).
 */
import type { Socket } from 'node:net';
import { procComm } from '../common/proc.js';
import { FrameAssembler, replyFrame } from '../abi/framing.js';
import { encode, layout, pack, unpack, type Infer } from '../abi/layout.js';
import * as C from '../abi/ucma.js';
import { CmdError, E } from '../common/errno.js';
import type { CmEvent, CmFile, CmId, ConnParam } from '../cm/cma-id.js';
import type { RdmaCm } from '../cm/cma.js';
import type { Log } from './log.js';
import { asError, errnoOf } from '../common/errors.js';
import { bswap64 } from '../common/format.js';
import { gidOf } from '../hca/gid.js';

/** Events queued for a file whose stream is not attached (or not reading) before the file is closed. */
const PENDING_CAP = 4096;
/** Bytes of unread events on the stream past which the client is dropped, as for unread replies. */
const STREAM_HARD_CAP = 4 << 20;
const ERROR_TEXT = 1024;

export interface UcmaHost {
  readonly cm: RdmaCm;
  readonly logger: Log;
  newUcmaToken(f: UcmaFile): number;
  ucmaToken(t: number): UcmaFile | undefined;
  dropUcmaToken(t: number): void;
  /** cm_ids count among a user's verbs objects (the rdma cgroup's view): EAGAIN past the cap */
  charge(uid: number, what: 'objects'): void;
  release(uid: number, what: 'objects'): void;
  ucmaClosed(c: UcmaConnection): void;
}

/** An event waiting in a C program's file: its record, the id it is reported to, and the id a CONNECT_REQUEST made. */
interface Waiting {
  rec: Buffer;
  owner: CmId;
  child?: CmId;
}

/** The file: ids, and the event stream (or, a C program's, the events waiting and their notification stream). */
export class UcmaFile implements CmFile {
  readonly ids = new Map<number, CmId>();
  readonly comm: string;
  stream: Socket | null = null;
  private pending: Buffer[] = [];
  closed = false;
  /** a C program's file: GET_EVENT takes its events, `notify` holds a byte for each */
  native = false;
  private notify: Socket | null = null;
  private waiting: Waiting[] = [];
  /** notification bytes written that the client has not been told to take (one per waiting event, once settled) */
  private told = 0;
  /** what runs once no event waits (a stopping daemon ends the file then) */
  private drained: (() => void) | null = null;

  constructor(
    private readonly host: UcmaHost,
    readonly pid: number,
    readonly uid: number,
  ) {
    this.comm = procComm(pid);
  }

  queued(): number {
    if (this.native) return this.waiting.length;
    return this.pending.length + (this.stream ? Math.floor(this.stream.writableLength / C.EVENT_RESP_SIZE) : 0);
  }

  deliver(ev: CmEvent, owner: CmId, child?: CmId): boolean {
    if (this.closed) return false;
    if (this.queued() >= PENDING_CAP) return false;
    const rec = eventRecord(ev);
    if (this.native) {
      this.waiting.push({ rec, owner, child });
      this.signal();
      return true;
    }
    // on the stream the event is the user's now
    owner.eventsReported++;
    const s = this.stream;
    if (!s) {
      this.pending.push(rec);
      return true;
    }
    s.write(rec);
    if (s.writableLength > STREAM_HARD_CAP) {
      this.host.logger.warn(`rdma_cm: pid ${this.pid} left ${s.writableLength} bytes of events unread; its event stream is closed`);
      s.destroy();
    }
    return true;
  }

  charge(): void {
    this.host.charge(this.uid, 'objects');
  }

  uncharge(): void {
    this.host.release(this.uid, 'objects');
  }

  /** whether an event stream was ever attached (a file has one, for its life) */
  attached = false;

  attach(s: Socket): void {
    this.attached = true;
    this.stream = s;
    for (const b of this.pending.splice(0)) s.write(b);
  }

  // ---- a C program's file ----

  /** GET_EVENT: the oldest waiting event's record, now reported to its id; null when none waits. */
  next(): Buffer | null {
    const w = this.waiting.shift();
    if (!w) return null;
    w.owner.eventsReported++;
    if (!this.waiting.length && this.drained) setImmediate(this.drained);
    return w.rec;
  }

  /** Runs `f` once no event waits (at once if none does). */
  whenDrained(f: () => void): void {
    if (!this.waiting.length) return f();
    this.drained = f;
  }

  /** What waits for `id` leaves the file (the id is destroyed, or moves to another file). */
  withdraw(id: CmId): Waiting[] {
    const out = this.waiting.filter((w) => w.owner === id);
    if (out.length) this.waiting = this.waiting.filter((w) => w.owner !== id);
    if (out.length && !this.waiting.length && this.drained) setImmediate(this.drained);
    return out;
  }

  /**
   * A TypeScript file's stream: `id` left for another file. Its events already on this stream are the client's to
   * move; this record, behind them, tells it that no more follow here.
   */
  markMigrated(id: CmId): void {
    if (this.closed || this.native) return;
    const rec = Buffer.alloc(C.EVENT_RESP_SIZE);
    encode(C.EVENT_RESP, { uid: id.uid, id: id.handle, event: C.SV_EVENT_MIGRATED, status: 0 }, new DataView(rec.buffer, rec.byteOffset, rec.byteLength));
    if (this.stream) this.stream.write(rec);
    else this.pending.push(rec);
  }

  /** Events of an id that moved here (MIGRATE_ID), behind those waiting. */
  adopt(ws: Waiting[]): void {
    this.waiting.push(...ws);
    this.signal();
  }

  hasNotify(): boolean {
    return this.notify !== null;
  }

  attachNotify(s: Socket): void {
    this.notify = s;
    this.told = 0;
    s.once('close', () => {
      if (this.notify !== s) return;
      this.notify = null;
      this.told = 0;
    });
    this.signal();
  }

  /** A byte on the notification stream for each waiting event not yet told. */
  private signal(): void {
    const s = this.notify;
    const n = this.waiting.length - this.told;
    if (!s || s.destroyed || n <= 0) return;
    s.write(Buffer.alloc(n, 1));
    this.told += n;
  }

  /** How many bytes the client takes off the notification stream so that it holds one per waiting event (missing ones are written). */
  settle(): number {
    const excess = this.told - this.waiting.length;
    if (excess <= 0) {
      this.signal();
      return 0;
    }
    this.told -= excess;
    return excess;
  }

  /** The file's end: nothing waits any more, and its notification stream ends. */
  close(): void {
    this.closed = true;
    this.waiting = [];
    this.stream?.end();
    this.notify?.end();
  }
}

function eventRecord(ev: CmEvent): Buffer {
  const b = Buffer.alloc(C.EVENT_RESP_SIZE);
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  encode(C.EVENT_RESP, { uid: ev.uid, id: ev.id, event: ev.event, status: ev.status }, dv);
  const at = layout(C.EVENT_RESP).byName.get('param')!.offset;
  if (ev.ud) {
    const u = ev.ud;
    encode(C.UD_PARAM, {
      qp_num: u.qpNum, qkey: u.qkey, private_data: u.privateData, private_data_len: Math.min(u.privateData.length, C.RDMA_MAX_PRIVATE_DATA),
      ah_attr: u.dgid ? { grh: { dgid: u.dgid, hop_limit: u.hopLimit ?? 64, traffic_class: u.trafficClass ?? 0 }, is_global: 1, port_num: 1 } : {},
    }, dv, at);
  } else if (ev.conn) {
    const c = ev.conn;
    const pd = c.privateData ?? new Uint8Array(0);
    encode(C.CONN_PARAM, {
      qp_num: c.qpNum ?? 0, qkey: c.qkey ?? 0, private_data: pd, private_data_len: Math.min(pd.length, C.RDMA_MAX_PRIVATE_DATA), srq: c.srq ?? 0,
      responder_resources: c.responderResources ?? 0, initiator_depth: c.initiatorDepth ?? 0, flow_control: c.flowControl ?? 0,
      retry_count: c.retryCount ?? 0, rnr_retry_count: c.rnrRetryCount ?? 0,
    }, dv, at);
  }
  return b;
}

const HDR = C.UCMA_HDR_SIZE;

export class UcmaConnection {
  private kind: 'new' | 'cmd' | 'events' | 'notify' = 'new';
  /** whether this is a file's command connection (not an event or notification stream) */
  get commands(): boolean {
    return this.kind === 'cmd';
  }
  readonly file: UcmaFile;
  private readonly frames: FrameAssembler;
  private token = 0;
  /** the file the MIGRATE_ID being answered took an id from: its client takes the bytes of the events that left */
  private migratedFrom: UcmaFile | null = null;

  constructor(
    private readonly host: UcmaHost,
    readonly sock: Socket,
    readonly cred: { pid: number; uid: number; gid: number },
  ) {
    this.file = new UcmaFile(host, cred.pid, cred.uid);
    this.frames = new FrameAssembler(
      (h) => (h.readUInt16LE(4) > 4096 ? -1 : C.ucmaRequestSize(h)),
      (f) => {
        if (sock.destroyed) return this.frames.stop();
        this.onFrame(f);
      },
      () => sock.end(),
    );
    sock.on('data', (d: Buffer) => this.frames.push(d));
    sock.on('close', () => this.onClose());
    sock.on('error', () => sock.destroy());
  }

  private reply(status: number, body?: Uint8Array): void {
    const len = status === 0 ? (body?.length ?? 0) : Math.min(body?.length ?? 0, ERROR_TEXT);
    if (!this.file.native) return void this.sock.write(replyFrame(status, body, len));
    // a C program's: the notification bytes its events left behind are taken off before the write() returns
    const take = this.file.settle();
    const takeOld = this.migratedFrom?.settle() ?? 0;
    this.migratedFrom = null;
    const b = Buffer.alloc(C.SV_UCMA_REPLY_SIZE + len);
    encode(C.SV_UCMA_REPLY, { status, out_bytes: len, take, take_old: takeOld }, new DataView(b.buffer, b.byteOffset, C.SV_UCMA_REPLY_SIZE));
    if (len && body) b.set(body.subarray(0, len), C.SV_UCMA_REPLY_SIZE);
    this.sock.write(b);
  }

  private onFrame(f: Buffer): void {
    const cmd = f.readUInt32LE(0);
    const out = f.readUInt16LE(6);
    if (this.kind === 'events' || this.kind === 'notify') return;
    if (cmd === C.SvUcmaCmd.ATTACH_EVENTS || cmd === C.SvUcmaCmd.ATTACH_NOTIFY) {
      if (this.kind !== 'new') return this.reply(-E.EINVAL, Buffer.from('ATTACH_EVENTS and ATTACH_NOTIFY only as the first frame of a connection'));
      return cmd === C.SvUcmaCmd.ATTACH_EVENTS ? this.onAttachEvents(f) : this.onAttachNotify(f);
    }
    if (cmd === C.SvUcmaCmd.NOTIFY_TOKEN) {
      if (this.kind !== 'new') return this.reply(-E.EINVAL, Buffer.from('NOTIFY_TOKEN only as the first frame of a connection'));
      // a C program's file from its first frame: its token names it for ATTACH_NOTIFY and MIGRATE_ID while it is open
      this.kind = 'cmd';
      this.file.native = true;
      this.token = this.host.newUcmaToken(this.file);
      return this.reply(0, pack(C.SV_UCMA_TOKEN, { token: this.token }));
    }
    this.kind = 'cmd';
    try {
      const body = this.dispatch(cmd, f.subarray(HDR), out);
      this.reply(0, body);
    } catch (e) {
      if (e instanceof CmdError) {
        this.reply(errnoOf(e) ?? -E.EIO, Buffer.from(e.message));
        this.host.logger.debug(`rdma_cm: pid ${this.cred.pid}: command ${cmd}: ${e.code}: ${e.message}`);
      } else {
        this.host.logger.error(`rdma_cm: pid ${this.cred.pid}: internal error on command ${cmd}: ${asError(e).stack}`);
        this.reply(-E.EIO);
      }
    }
  }

  private onAttachEvents(f: Buffer): void {
    const t = f.length >= HDR + 4 ? f.readUInt32LE(HDR) : 0;
    const file = this.host.ucmaToken(t);
    // a C program's file names itself by its token while it is open, and tells its events on its notification stream
    if (!file || file.native) return this.reply(-E.EINVAL, Buffer.from('no rdma_cm file has this token'));
    if (file.pid !== this.cred.pid) return this.reply(-E.EACCES, Buffer.from("only the file's own process may take its events"));
    // the token names the file while it is open (MIGRATE_ID's `fd`), but its stream is attached once
    if (file.attached) return this.reply(-E.EBUSY, Buffer.from('the file has its event stream'));
    this.kind = 'events';
    this.reply(0);
    file.attach(this.sock);
    // the event stream's end is the file's end too (the process closed its channel)
    this.sock.once('close', () => {
      if (file.stream === this.sock) file.stream = null;
    });
  }

  /** A C program's notification stream: the file its token names (the process's own, a C program's) writes a byte here per waiting event. */
  private onAttachNotify(f: Buffer): void {
    const t = f.length >= HDR + 4 ? f.readUInt32LE(HDR) : 0;
    const file = this.host.ucmaToken(t);
    if (!file || !file.native) return this.reply(-E.EINVAL, Buffer.from('no C program\'s rdma_cm file has this token'));
    if (file.pid !== this.cred.pid) return this.reply(-E.EACCES, Buffer.from("only the file's own process may take its events"));
    if (file.hasNotify()) return this.reply(-E.EBUSY, Buffer.from('the file has its notification stream'));
    this.kind = 'notify';
    this.reply(0);
    file.attachNotify(this.sock);
  }

  /** The id a command names: one of this file's, and (but to destroy it) not one whose device went away. */
  private id(handle: number, verb: string, removed = false): CmId {
    const id = this.file.ids.get(handle);
    if (!id) throw new CmdError(E.EINVAL, `${verb}: no cm_id ${handle} in this file`);
    // as ucma's ids after DEVICE_REMOVAL: the kernel's id is gone, only the handle is left
    if (id.destroyed && !removed) throw new CmdError(E.ENXIO, `${verb}: cm_id ${handle} lost its device (RDMA_CM_EVENT_DEVICE_REMOVAL); only rdma_destroy_id is left`);
    return id;
  }

  /** The request struct; ENOSPC when `out` has less room than `minOut` (the whole answer unless the kernel takes less). */
  private need<S extends C.UcmaSpec>(s: S, body: Buffer, out: number, minOut = s.resp ? layout(s.resp).size : 0): Infer<S['req']> {
    const size = layout(s.req).size;
    if (body.length < size) throw new CmdError(E.EINVAL, `${s.name}: ${body.length} bytes, the struct has ${size}`);
    if (out < minOut) throw new CmdError(E.ENOSPC, `${s.name}: no room for the ${minOut}-byte answer (out ${out})`);
    return unpack(s.req, body) as Infer<S['req']>;
  }

  /** rdma_destroy_id; in a C program's file what waited for the id goes too, and requests it never saw take their ids along (ucma_cleanup_ctx_events). */
  private destroyId(id: CmId): number {
    const n = this.host.cm.destroy(id);
    if (!this.file.native) return n;
    for (const w of this.file.withdraw(id)) if (w.child) this.destroyId(w.child);
    return n;
  }

  /**
   * rdma_migrate_id: the id, what waits for it and the ids its waiting requests made move here from `from` (to the
   * same file, its events go behind the others, as in the kernel). A TypeScript file's events are on its stream
   * already: a record behind them tells the library, which moves them (and asks again for each request's id).
   */
  private migrate(id: CmId, from: UcmaFile): void {
    if (!from.native) {
      this.host.cm.migrate(id, this.file);
      from.markMigrated(id);
      return;
    }
    const moved = from.withdraw(id);
    this.host.cm.migrate(id, this.file);
    for (const w of moved) if (w.child) this.host.cm.migrate(w.child, this.file);
    this.file.adopt(moved);
  }

  private dispatch(cmd: number, body: Buffer, out: number): Buffer | undefined {
    const S = C.UcmaSpecs;
    const cm = this.host.cm;
    switch (cmd) {
      case C.SvUcmaCmd.EVENT_TOKEN: {
        if (this.token) throw new CmdError(E.EINVAL, 'EVENT_TOKEN: the file has its token');
        this.token = this.host.newUcmaToken(this.file);
        return pack(C.SV_UCMA_TOKEN, { token: this.token });
      }
      case C.UcmaCmd.CREATE_ID: {
        const r = this.need(S.CREATE_ID, body, out);
        const id = cm.createId(this.file, r.uid, r.ps, r.qp_type);
        return pack(C.CREATE_ID_RESP, { id: id.handle });
      }
      case C.UcmaCmd.DESTROY_ID: {
        const r = this.need(S.DESTROY_ID, body, out);
        const n = this.destroyId(this.id(r.id, 'rdma_destroy_id', true));
        return pack(C.DESTROY_ID_RESP, { events_reported: n });
      }
      case C.UcmaCmd.BIND: {
        const r = this.need(S.BIND, body, out);
        cm.bind(this.id(r.id, 'rdma_bind_addr'), sockaddr(r.addr.bytes, 'rdma_bind_addr'));
        return;
      }
      case C.UcmaCmd.BIND_IP: {
        const r = this.need(S.BIND_IP, body, out);
        cm.bind(this.id(r.id, 'rdma_bind_addr'), ipAddr(r.addr.bytes, 'rdma_bind_addr'));
        return;
      }
      case C.UcmaCmd.RESOLVE_IP: {
        const r = this.need(S.RESOLVE_IP, body, out);
        // sin6_family 0: no source
        const src = r.src_addr.bytes[0] || r.src_addr.bytes[1] ? ipAddr(r.src_addr.bytes, 'rdma_resolve_addr') : null;
        cm.resolveAddr(this.id(r.id, 'rdma_resolve_addr'), src && isAny(src) && src.port === 0 ? null : src, ipAddr(r.dst_addr.bytes, 'rdma_resolve_addr'), r.timeout_ms);
        return;
      }
      case C.UcmaCmd.QUERY_ROUTE: {
        // the kernel answers an `out` without room for ibdev_index and reserved1 too
        const r = this.need(S.QUERY_ROUTE, body, out, layout(C.QUERY_ROUTE_RESP).byName.get('ibdev_index')!.offset);
        return queryRoute(cm.route(this.id(r.id, 'rdma_query_route')));
      }
      case C.UcmaCmd.RESOLVE_ADDR: {
        const r = this.need(S.RESOLVE_ADDR, body, out);
        const src = r.src_size ? sockaddr(r.src_addr.bytes, 'rdma_resolve_addr') : null;
        cm.resolveAddr(this.id(r.id, 'rdma_resolve_addr'), src && isAny(src) && src.port === 0 ? null : src, sockaddr(r.dst_addr.bytes, 'rdma_resolve_addr'), r.timeout_ms);
        return;
      }
      case C.UcmaCmd.RESOLVE_ROUTE: {
        const r = this.need(S.RESOLVE_ROUTE, body, out);
        cm.resolveRoute(this.id(r.id, 'rdma_resolve_route'));
        return;
      }
      case C.UcmaCmd.QUERY: {
        const r = this.need(S.QUERY, body, out);
        if (r.option !== C.QueryOption.ADDR) throw new CmdError(E.EOPNOTSUPP, `rdma_cm QUERY option ${r.option}: only RDMA_USER_CM_QUERY_ADDR is served`);
        const q = cm.query(this.id(r.id, 'rdma_query'));
        const b = pack(C.QUERY_ADDR_RESP, { node_guid: q.dev ? bswap64(q.dev.nodeGuid) : 0n, port_num: q.dev ? 1 : 0, pkey: 0xffff, ibdev_index: q.dev ? q.dev.index : 0xffffffff });
        const L = layout(C.QUERY_ADDR_RESP).byName;
        if (q.local) b.writeUInt16LE(C.writeSockaddr(q.local, b.subarray(L.get('src_addr')!.offset, L.get('src_addr')!.offset + 128)), L.get('src_size')!.offset);
        if (q.remote) b.writeUInt16LE(C.writeSockaddr(q.remote, b.subarray(L.get('dst_addr')!.offset, L.get('dst_addr')!.offset + 128)), L.get('dst_size')!.offset);
        return b;
      }
      case C.UcmaCmd.CONNECT: {
        const r = this.need(S.CONNECT, body, out);
        cm.connect(this.id(r.id, 'rdma_connect'), connParam(r.conn_param, 'rdma_connect'));
        return;
      }
      case C.UcmaCmd.LISTEN: {
        const r = this.need(S.LISTEN, body, out);
        cm.listen(this.id(r.id, 'rdma_listen'), r.backlog);
        return;
      }
      case C.UcmaCmd.ACCEPT: {
        const r = this.need(S.ACCEPT, body, out);
        // the uid is taken with the parameters (ucma_accept): librdmacm's ACCEPT for the active side's RTU has neither
        cm.accept(this.id(r.id, 'rdma_accept'), connParam(r.conn_param, 'rdma_accept'), r.conn_param.valid ? r.uid : undefined);
        return;
      }
      case C.UcmaCmd.REJECT: {
        const r = this.need(S.REJECT, body, out);
        if (r.private_data_len > C.RDMA_MAX_PRIVATE_DATA) throw new CmdError(E.EINVAL, 'rdma_reject: private_data_len too large');
        cm.reject(this.id(r.id, 'rdma_reject'), r.private_data.subarray(0, r.private_data_len), r.reason);
        return;
      }
      case C.UcmaCmd.DISCONNECT: {
        const r = this.need(S.DISCONNECT, body, out);
        cm.disconnect(this.id(r.id, 'rdma_disconnect'));
        return;
      }
      case C.UcmaCmd.INIT_QP_ATTR: {
        const r = this.need(S.INIT_QP_ATTR, body, out);
        const attr = cm.initQpAttr(this.id(r.id, 'rdma_init_qp_attr'), r.qp_state);
        return pack(C.QP_ATTR, attr);
      }
      case C.UcmaCmd.NOTIFY: {
        const r = this.need(S.NOTIFY, body, out);
        this.id(r.id, 'rdma_notify');
        return;
      }
      case C.UcmaCmd.SET_OPTION: {
        const r = this.need(S.SET_OPTION, body, out);
        const id = this.id(r.id, 'rdma_set_option');
        // the value lives in the caller's memory: the preload brings its optlen bytes after the struct
        const at = layout(S.SET_OPTION.req).size;
        if (body.length - at !== r.optlen) throw new CmdError(E.EINVAL, `rdma_set_option: optlen ${r.optlen}, but ${body.length - at} bytes of value came`);
        cm.setOption(id, r.level, r.optname, body.subarray(at));
        return;
      }
      case C.UcmaCmd.GET_EVENT: {
        if (!this.file.native) throw new CmdError(E.EOPNOTSUPP, 'rdma_cm GET_EVENT: events arrive on the file\'s event stream (ATTACH_EVENTS)');
        // the kernel still answers an `out` without the trailing reserved and ece (old 32-bit librdmacm)
        this.need(S.GET_EVENT, body, out, C.EVENT_RESP_MIN);
        // never waits: the preload waits on the notification stream when the program's descriptor is blocking
        const rec = this.file.next();
        if (!rec) throw new CmdError(E.EAGAIN, 'rdma_cm GET_EVENT: no event waits');
        return rec;
      }
      case C.UcmaCmd.MIGRATE_ID: {
        const r = this.need(S.MIGRATE_ID, body, out);
        // `fd` is the token of the file the id is in: the preload puts the one of the program's descriptor there (0:
        // not an rdma_cm descriptor), our library its old channel's. The kernel's fdget: a closed file is ENOENT
        const from = r.fd ? this.host.ucmaToken(r.fd) : undefined;
        if (from?.closed) throw new CmdError(E.ENOENT, 'rdma_migrate_id: fd is closed');
        // an id moves between files of one kind: a C program's events wait in the daemon, ours travel on a stream
        if (!from || from.native !== this.file.native) throw new CmdError(E.EINVAL, 'rdma_migrate_id: fd is not an rdma_cm event channel');
        if (from.pid !== this.cred.pid) throw new CmdError(E.EINVAL, 'rdma_migrate_id: fd is another process\'s event channel');
        const id = from.ids.get(r.id);
        // handles are daemon-wide, as the kernel's ctx_table: another file's id is EINVAL, no id at all ENOENT
        if (!id) throw new CmdError(this.host.cm.hasHandle(r.id) ? E.EINVAL : E.ENOENT, `rdma_migrate_id: no cm_id ${r.id} on that channel`);
        this.migrate(id, from);
        if (from.native) this.migratedFrom = from;
        return pack(C.MIGRATE_RESP, { events_reported: id.eventsReported });
      }
      case C.UcmaCmd.GET_OPTION:
        // no kernel has it (ucma_cmd_table's hole)
        throw new CmdError(E.ENOSYS, 'rdma_cm GET_OPTION: no such command');
      case C.UcmaCmd.JOIN_IP_MCAST:
      case C.UcmaCmd.JOIN_MCAST:
      case C.UcmaCmd.LEAVE_MCAST:
        throw new CmdError(E.EOPNOTSUPP, 'rdma_join_multicast: softverbsd serves no multicast');
      default:
        // past the kernel's table
        throw new CmdError(E.EINVAL, `rdma_cm command ${cmd} does not exist`);
    }
  }

  private onClose(): void {
    this.frames.stop();
    // either connection of a file counts against its user's connections
    this.host.ucmaClosed(this);
    if (this.kind === 'events' || this.kind === 'notify') return;
    if (this.token) this.host.dropUcmaToken(this.token);
    const f = this.file;
    const n = f.ids.size;
    f.close();
    for (const id of [...f.ids.values()]) this.host.cm.destroy(id);
    if (n) this.host.logger.info(`rdma_cm: pid ${f.pid} (${f.comm}, uid ${f.uid}) closed its rdma_cm file; destroyed ${n} cm_id${n === 1 ? '' : 's'}`);
  }
}

/**
 * The daemon is stopping: what is queued for the client (its last events) is written before the connection ends;
 * a C program's command connection stays until GET_EVENT has taken them.
 */
export function endUcma(c: UcmaConnection, ms: number): Promise<void> {
  const s = c.sock;
  if (s.destroyed) return Promise.resolve();
  return new Promise<void>((res) => {
    // a client that reads nothing does not hold the daemon up
    const t = setTimeout(() => s.destroy(), ms);
    s.once('close', () => {
      clearTimeout(t);
      res();
    });
    if (c.commands && c.file.native) c.file.whenDrained(() => s.end());
    else s.end();
  });
}

function isAny(a: C.SockAddr): boolean {
  return a.address === '0.0.0.0' || a.address === '::';
}

/** An address of the IP-only commands (a sockaddr_in or sockaddr_in6 in sockaddr_in6 room): another family is EINVAL there. */
function ipAddr(b: Uint8Array, verb: string): C.SockAddr {
  const a = C.readSockaddr(b);
  if (!a) throw new CmdError(E.EINVAL, `${verb}: the address is neither AF_INET nor AF_INET6`);
  return a;
}

/** QUERY_ROUTE's answer (ucma_query_route with ucma_copy_iboe_route): the addresses, the device, and the path once resolved. */
function queryRoute(q: ReturnType<RdmaCm['route']>): Buffer {
  const b = Buffer.alloc(layout(C.QUERY_ROUTE_RESP).size);
  const L = layout(C.QUERY_ROUTE_RESP).byName;
  const put = (name: 'src_addr' | 'dst_addr', a: C.SockAddr | null) => {
    const at = L.get(name)!.offset;
    if (a) C.writeSockaddr(a, b.subarray(at, at + 28));
  };
  put('src_addr', q.local);
  put('dst_addr', q.remote);
  if (!q.dev) return b;
  const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const gid = (a: C.SockAddr | null) => (a && a.address !== '0.0.0.0' && a.address !== '::' ? gidOf(a.address) : new Uint8Array(16));
  const p = q.path;
  // a resolved route is one path record (RoCE: no SA, the kernel fills it in cma_resolve_iboe_route); before, the addresses' GIDs
  encode(C.USER_PATH_REC, p
    ? {
      dgid: p.dgid, sgid: p.sgid, reversible: 1, numb_path: 1, mtu: p.mtu, pkey: 0xffff, hop_limit: p.hopLimit, traffic_class: p.trafficClass,
      mtu_selector: 2, rate_selector: 2, rate: 0, packet_life_time_selector: 2, packet_life_time: 16,
    }
    : { dgid: gid(q.remote), sgid: gid(q.local), pkey: 0xffff }, dv, L.get('ib_route0')!.offset);
  dv.setBigUint64(L.get('node_guid')!.offset, bswap64(q.dev.nodeGuid), true);
  dv.setUint32(L.get('num_paths')!.offset, p ? 1 : 0, true);
  dv.setUint8(L.get('port_num')!.offset, 1);
  dv.setUint32(L.get('ibdev_index')!.offset, q.dev.index, true);
  return b;
}

function sockaddr(b: Uint8Array, verb: string): C.SockAddr {
  const a = C.readSockaddr(b);
  if (!a) throw new CmdError(E.EAFNOSUPPORT, `${verb}: the address is neither AF_INET nor AF_INET6`);
  return a;
}

function connParam(p: ReturnType<typeof unpack<typeof C.CONN_PARAM>>, verb: string): ConnParam {
  if (p.private_data_len > C.RDMA_MAX_PRIVATE_DATA) throw new CmdError(E.EINVAL, `${verb}: private_data_len too large`);
  // 3-bit fields of the REQ and REP: cut to their low bits, 8 would be 0 (no retry at all)
  if (p.retry_count > 7 || p.rnr_retry_count > 7) throw new CmdError(E.EINVAL, `${verb}: retry_count ${p.retry_count}, rnr_retry_count ${p.rnr_retry_count}: each is 0 to 7`);
  return {
    qpNum: p.qp_num & 0xffffff,
    qkey: p.qkey,
    privateData: p.private_data.subarray(0, p.private_data_len),
    srq: p.srq,
    responderResources: p.responder_resources,
    initiatorDepth: p.initiator_depth,
    flowControl: p.flow_control,
    retryCount: p.retry_count,
    rnrRetryCount: p.rnr_retry_count,
  };
}
