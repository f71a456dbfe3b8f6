/**
 * One client context (a `struct ib_ucontext` behind an open uverbs fd): its
 * handle table, the objects in it (admitted, released and reported through
 * the object table, object-table.ts), the dispatch of its commands to the
 * handlers of each object family (cmd/), its event streams, and the
 * teardown that runs when the connection closes for any reason.
 */
import type { Socket } from 'node:net';
import { procComm } from '../common/proc.js';
import { listWords } from '../common/format.js';
import { layout, pack, unpack } from '../abi/layout.js';
import * as U from '../abi/uverbs.js';
import { EventType, QpState } from '../abi/enums.js';
import { E, fail } from '../common/errno.js';
import { unmap, type Mapping } from '../native/libc.js';
import type { SoftDevice } from '../hca/device.js';
import type { Ah, Cq, Owner } from '../hca/objects.js';
import { ahCommands } from './cmd/ah.js';
import type { Commands } from './cmd/command.js';
import { cqCommands } from './cmd/cq.js';
import { deviceCommands } from './cmd/device.js';
import { mrCommands } from './cmd/mr.js';
import { pdCommands } from './cmd/pd.js';
import { qpCommands } from './cmd/qp.js';
import { mcastCommands } from './cmd/mcast.js';
import { srqCommands } from './cmd/srq.js';
import { type ClientMap, mapMemfd } from './memfd.js';
import { procMemoryGone } from '../hca/mr-memory.js';
import type { PinnedAccounts } from './memlock.js';
import type { Quotas } from './limits.js';
import { HandleAllocator } from './handles.js';
import { type CompChannel, deliverEvent } from './events.js';
import { deviceMax, OBJ_TYPES, OBJECT_TYPES, rowOf, type Entry, type ObjOf, type ObjType } from './object-table.js';
import { messageOf } from '../common/errors.js';
import { closeFd } from '../native/libc.js';
import type { Provider } from './providers/provider.js';
import type { FdExchange } from './fd-exchange.js';
import { softverbsProvider } from './providers/softverbs.js';

export { CompChannel } from './events.js';

/** Every command the daemon serves, by name: each object family's handlers. */
const COMMANDS: Commands = { ...deviceCommands, ...pdCommands, ...ahCommands, ...mrCommands, ...cqCommands, ...srqCommands, ...qpCommands, ...mcastCommands };

/** What the context needs from the daemon around it. */
export interface Host {
  readonly pinned: PinnedAccounts;
  newToken(kind: 'async' | 'comp' | 'fds', ctx: Context, chan?: CompChannel): number;
  dropToken(token: number): void;
  log(msg: string): void;
  limitHit(uid: number, limit: string, msg: string): void;
  readonly quotas: Quotas;
  /** Where memfds, C programs' queues and /proc/self/mem travel (null: none, as in a daemonless test). */
  readonly fdExchange: FdExchange | null;
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
  /** The provider ABI its client speaks (GET_CONTEXT or GET_CONTEXT_RXE). */
  provider: Provider = softverbsProvider;
  private readonly linked = new Map<Mapping, Mapping[]>();
  /** An rxe client's /proc/<pid>/mem (the descriptor exchange's SET_MEM), through which its MRs are reached; -1 until then. */
  memFd = -1;
  /** …and its /proc/<pid>/maps, which says what of that memory is mapped and writable (read afresh at each REG_MR). */
  mapsFd = -1;
  /** The softverbs client's key for this context on the descriptor exchange (PUT_MEMFD); 0: none (an rxe context). */
  fdKey = 0;
  /** Memfds the client handed over (PUT_MEMFD), by id, until the one command that names them (or the context's end). */
  private readonly memfds = new Map<number, { fd: number; size: number }>();
  private nextMemfdId = 1;

  /** Its process has exited, though its device file is not closed yet: its memory (memFd) reads as gone. */
  exited(): boolean {
    return this.memFd >= 0 && procMemoryGone(this.memFd);
  }

  // ---- handle table (the kernel's per-file idr: lowest free number), through the object table ----

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
  admit(type: ObjType): void {
    const max = deviceMax(this.dev, type);
    const n = this.dev.objCount[type] ?? 0;
    if (n >= max) {
      const msg = `${type.toUpperCase()}: the device's max_${type} ${max} is reached`;
      this.host.limitHit(this.uid, `max_${type}`, msg);
      fail(E.EINVAL, msg);
    }
    this.host.quotas.check(this.uid, 'objects', OBJECT_TYPES[type].charge);
  }

  /** Gives a created object its handle (the lowest free), its restrack id and its charge, after admit(). */
  add(e: Entry): number {
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
  destroy(h: number): void {
    const e = this.handles.get(h);
    if (!e) return;
    rowOf(e).release(this, e.obj);
    this.remove(h);
  }

  /**
   * Destroys handle h of `type` for its destroy command: EBUSY while other objects still hold it, naming them
   * (a CQ that is one QP's send and receive CQ is one user, not two).
   */
  destroyUnused(cmd: string, type: ObjType, h: number): void {
    const obj = this.get(type, h);
    const users: string[] = [];
    for (const [uh, e] of this.handles) if (rowOf(e).held?.(e.obj).includes(obj)) users.push(userName(uh, e));
    if (users.length > 0) {
      fail(E.EBUSY, `${cmd}: ${type.toUpperCase()} handle ${h} is still used by ${listWords(users)}: destroy ${users.length > 1 ? 'them' : 'it'} first`);
    }
    this.destroy(h);
  }

  /**
   * Holds a memfd the client handed over (checked and sealed by the descriptor exchange, `size` bytes), charged
   * to the user's memfds: the id the client names it by. The descriptor is the context's from here on.
   */
  holdMemfd(fd: number, size: number): number {
    this.host.quotas.charge(this.uid, 'memfds');
    let id = this.nextMemfdId;
    while (this.memfds.has(id)) id = id >= 0xffffffff ? 1 : id + 1;
    this.nextMemfdId = id >= 0xffffffff ? 1 : id + 1;
    this.memfds.set(id, { fd, size });
    return id;
  }

  /** Lets go of a held memfd (named by a command, or the context ends): its descriptor and charge come back. */
  dropMemfd(id: number): void {
    const m = this.memfds.get(id);
    if (!m) return;
    this.memfds.delete(id);
    closeFd(m.fd);
    this.host.quotas.release(this.uid, 'memfds');
  }

  /** How many memfds the context holds unmapped. */
  get heldMemfds(): number {
    return this.memfds.size;
  }

  /**
   * Maps [offset, offset+length) of the memfd held under `id`, charged to the user's mappings (each is one of the
   * daemon's vm.max_map_count entries). The memfd is consumed: the mapping keeps the pages, the descriptor goes.
   */
  mapClient(id: number, offset: bigint, length: bigint): ClientMap {
    const m = this.memfds.get(id);
    if (!m) fail(E.EBADF, `memfd id ${id} names no memfd this context holds (hand it over first with the descriptor exchange's PUT_MEMFD; each id maps once)`);
    try {
      this.host.quotas.charge(this.uid, 'mappings');
      try {
        return mapMemfd(m.fd, m.size, offset, length);
      } catch (e) {
        this.host.quotas.release(this.uid, 'mappings');
        throw e;
      }
    } finally {
      this.dropMemfd(id);
    }
  }

  /** Gives back a mapping mapClient() or the provider made, and those linked to it (null: the memory was never mapped). */
  unmapClient(m: Mapping | null): void {
    if (!m || m.unmapped) return;
    this.provider.unmapped?.(this, m);
    unmap(m);
    this.host.quotas.release(this.uid, 'mappings');
    const more = this.linked.get(m);
    if (!more) return;
    this.linked.delete(m);
    for (const x of more) this.unmapClient(x);
  }

  /** `other` goes when `first` does: one object's queues in two mappings (an rxe QP's SQ and RQ). */
  linkMapping(first: Mapping, other: Mapping): void {
    const l = this.linked.get(first);
    if (l) l.push(other);
    else this.linked.set(first, [other]);
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

  /**
   * The CQ's arm was taken: its channel hears of it once the daemon's current task is over (a turn of the
   * poller, a batch of packets), not at once. Waking a client is a socket write and a wake-up (several us of
   * the daemon's time on a machine where system calls flush the TLB); a client woken in the middle of a turn
   * drains what is there, re-arms and sleeps again before the turn is out, and is woken again. Held to the
   * end of the turn, it wakes once per turn to everything the turn completed. Measured with the bench's
   * "1024 busy RC QPs" line (four clients on events, 16 KiB WRITEs, 2 per QP; AMD EPYC, 2 vCPUs): the daemon's
   * system calls per WRITE 0.064-0.079 -> 0.010, its CPU per WRITE 3.3-4.0 -> 2.3-2.6 us, 3.9-4.5 -> 6.1-6.8
   * GB/s in three alternating pairs of runs. A client that polls instead of sleeping never waits for this.
   */
  compEvent(cq: Cq): void {
    if (!cq.channel) return;
    if (this.eventsDue.length === 0) queueMicrotask(this.sendEventsDue);
    this.eventsDue.push(cq);
  }
  private readonly eventsDue: Cq[] = [];
  private readonly sendEventsDue = (): void => {
    const due = this.eventsDue;
    for (let i = 0; i < due.length; i++) {
      const cq = due[i]!;
      const ch = cq.channel as CompChannel | null;
      // destroyed meanwhile: an event counted is one ibv_destroy_cq waits to see acknowledged
      if (!ch || cq.destroyed) continue;
      cq.compEvents++;
      this.dev.compEvents++;
      ch.send(pack(U.COMP_EVENT_DESC, { cq_handle: cq.userHandle }));
    }
    due.length = 0;
  };

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
    const udataSpec = this.provider.reqUdata(spec);
    if (frame.length < U.HDR_SIZE + reqSize) fail(E.ENOSPC, `${spec.name}: in_words ${frame.length / 4} is shorter than the command`);
    if (spec.resp && outBytes < layout(spec.resp).size) fail(E.ENOSPC, `${spec.name}: out_words ${outBytes / 4} is shorter than the response`);
    const req = unpack(spec.req, frame, U.HDR_SIZE);
    let udata: object | null = null;
    let rest = U.HDR_SIZE + reqSize;
    if (udataSpec) {
      const uSize = layout(udataSpec).size;
      if (frame.length >= rest + uSize) {
        udata = unpack(udataSpec, frame, rest);
        rest += uSize;
      }
    }
    // a held memfd the command names is its alone, whatever the outcome: a failed command leaves none behind
    const memfd = udata ? this.provider.memfdOf?.(udata) ?? 0 : 0;
    try {
      for (let i = rest; i < frame.length; i++) if (frame[i] !== 0) fail(E.EINVAL, `${spec.name}: ${frame.length - rest} trailing bytes not understood`);
      // the table is keyed by the spec's name, so the request decoded with spec.req is the one the handler is typed for
      const handler = COMMANDS[spec.name as U.CmdName] as ((ctx: Context, r: object, u: object | null) => Buffer | void) | undefined;
      if (!handler) return fail(E.EOPNOTSUPP, `${spec.name} is not supported`);
      return handler(this, req, udata) ?? Buffer.alloc(0);
    } finally {
      if (memfd) this.dropMemfd(memfd);
    }
  }

  /** The GET_CONTEXT answer (called by the connection before the context exists in the table). */
  getContextResp(): Buffer {
    const core = pack(U.GET_CONTEXT_RESP, { async_fd: this.asyncToken, num_comp_vectors: 1 });
    return this.fdKey ? Buffer.concat([core, pack(U.SV_GET_CONTEXT_RESP, { fd_key: this.fdKey })]) : core;
  }

  // ---- completion channels ----

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

  /**
   * A client rings a QP's send queue: the connection's undecoded fast path and POST_SEND both come here.
   * 0, or EINVAL for a handle that is not a QP of this context.
   */
  doorbell(handle: number): number {
    const qp = this.find('qp', handle);
    if (!qp) return E.EINVAL;
    // rxe's post_send refuses a QP whose requester is not ready yet (never moved to RTS since its reset), and so
    // does its doorbell for a C program
    if (this.provider.name === 'rxe' && (qp.state === QpState.RESET || qp.state === QpState.INIT || qp.state === QpState.RTR)) return E.EINVAL;
    this.dev.doorbells++;
    this.dev.doorbell(qp);
    return 0;
  }

  // ---- teardown ----

  /**
   * Its device goes (rdma link delete, the daemon stopping): as Linux tells each context of a device it
   * disassociates, DEVICE_FATAL (element 0) is the last record of the async event stream, which then ends
   * (a read after it sees the end, where the kernel's gives EIO). The stream's socket is ended, not destroyed,
   * so what it still holds reaches the client.
   */
  deviceFatal(): void {
    if (this.closed) return;
    this.asyncEvent(0n, EventType.DEVICE_FATAL, null);
    const s = this.asyncSock;
    this.asyncSock = null;
    s?.end();
  }

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
          this.host.log(`teardown of ${e.type} ${h} (pid ${this.pid}): ${messageOf(err)}`);
        }
        this.remove(h);
      }
    }
    this.host.dropToken(this.asyncToken);
    if (this.fdKey) this.host.dropToken(this.fdKey);
    this.asyncSock?.destroy();
    for (const id of [...this.memfds.keys()]) this.dropMemfd(id);
    if (this.memFd >= 0) closeFd(this.memFd);
    if (this.mapsFd >= 0) closeFd(this.mapsFd);
    this.memFd = -1;
    this.mapsFd = -1;
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

/** An object as its user knows it: a QP by its QPN, an MR by its lkey, an SRQ by its number, the rest by handle. */
function userName(h: number, e: Entry): string {
  if (e.type === 'qp') return `QP ${e.obj.qpn}`;
  if (e.type === 'mr') return `MR lkey ${e.obj.key}`;
  if (e.type === 'srq') return `SRQ ${e.obj.srqn}`;
  return `${e.type.toUpperCase()} handle ${h}`;
}
