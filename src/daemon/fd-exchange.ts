/**
 * The descriptor exchange: what a uverbs file carries in the kernel and a
 * command frame cannot. The softverbs library's queues and registered
 * memory live in memfds of its own, which it hands over (PUT_MEMFD) just
 * before the command that maps them; a C program's queues are mmap()ed from
 * the device file (GET_QUEUE), and the daemon reaches its memory through
 * the /proc/self/mem and /proc/self/maps it hands over (SET_MEM). All are
 * descriptors, and descriptors cross a Unix socket only as SCM_RIGHTS,
 * which Node's sockets drop. So they travel here, on a socket of their own
 * (`<root>/fds.sock`) read and written natively: one request per
 * connection (`sv_fd_req`, abi/uverbs.ts), one reply, then the connection
 * closes. Who asks is the kernel's word (SO_PEERCRED): a context's
 * descriptors go to and come from its own process only. Because the client
 * passes what it opened itself, the daemon never opens anything of another
 * process (no /proc/<pid>/fd, no CAP_SYS_PTRACE or CAP_DAC_READ_SEARCH).
 *
 * What comes is judged before it is kept: the descriptors a request
 * carries must be the ones its op takes (a memfd for PUT_MEMFD, the two
 * /proc files for SET_MEM, none for GET_QUEUE), else it is refused with
 * its errno and every descriptor that came is closed at once: a client
 * passing garbage costs the daemon nothing it keeps. Held memfds are
 * charged to the user's `memfds` quota.
 */
import { fstatSync, readFileSync, readlinkSync } from 'node:fs';
import { layout, pack, unpack } from '../abi/layout.js';
import * as U from '../abi/uverbs.js';
import { CmdError, E, errnoName } from '../common/errno.js';
import { errnoOf, messageOf } from '../common/errors.js';
import { CONTROL_FDS, recvWithFds, sendWithFd } from '../native/fd-pass.js';
import { acceptNow, closeFd, dupFd, type Mapping, peerCred } from '../native/libc.js';
import { ReadableSet } from '../native/readable-set.js';
import type { Context } from './context.js';
import { checkMemfd } from './memfd.js';

/** connections waiting for their request at once; past it the rest wait in the accept queue */
const MAX_PENDING = 64;
/** …of which one user may have this many: past it, her next is answered EAGAIN */
const PENDING_PER_USER = 16;
/** queues one context may leave unmapped (each holds a descriptor of the daemon's) */
const MAX_OFFERS = 64;
/** how long a connection may take to send its request */
const REQUEST_MS = 2000;
/** out of descriptors, accepting pauses this long (the connections wait in the queue meanwhile) */
const PAUSE_MS = 50;
const PAGE = 4096;
const REQ = U.SV_FD_REQ;

/** A queue's memory offered to its context's process until it maps it (or the queue goes). */
interface Offer {
  ctx: Context;
  /** the daemon's mapping of the memfd: the queue's, whose end withdraws the offer */
  mapping: Mapping;
  /** a descriptor of the memfd, the offer's own */
  memfd: number;
  /** where the queue starts in the memfd, and its bytes */
  at: number;
  size: number;
}

interface Pending {
  timer: NodeJS.Timeout;
  cred: { pid: number; uid: number };
}

interface Reply {
  status: number;
  text: string;
  size: bigint;
  offset: bigint;
  id: number;
  /** a descriptor riding with the reply (closed once sent), or -1 */
  fd: number;
}

export interface FdExchangeHost {
  /** The context whose GET_CONTEXT answer carried `token`, while its token is valid (until its async stream attaches). */
  contextOf(token: number): Context | undefined;
  /** The softverbs context whose fd key (SV_GET_CONTEXT_RESP) is `key`, while it lives. */
  contextByKey(key: number): Context | undefined;
  log(msg: string): void;
  /** Whether the daemon has a descriptor to spare for one more connection (admission.ts keeps the last ones). */
  mayAccept(): boolean;
  /** A limit a user hit (logged once per user and limit). */
  limitHit(uid: number, limit: string, msg: string): void;
}

export class FdExchange {
  private readonly offers = new Map<number, Offer>();
  /** mmap offsets, as the kernel's rxe hands them out: page aligned, never reused while the daemon runs */
  private nextOffset = PAGE;
  private readonly waits = new ReadableSet();
  private readonly pending = new Map<number, Pending>();
  /** accepting stopped: MAX_PENDING connections wait for their request */
  private full = false;
  private pause: NodeJS.Timeout | null = null;
  /** accepting failed for want of descriptors (said once until one succeeds) */
  private starved = false;
  private closed = false;

  constructor(
    private readonly lfd: number,
    private readonly host: FdExchangeHost,
  ) {
    this.waits.wait(lfd, () => this.onListener());
  }

  /** Offers the queue at [at, at+size) of a memfd to ctx's process (the offer holds a duplicate of `memfd`); the mmap offset that names it. */
  offer(ctx: Context, mapping: Mapping, memfd: number, at: number, size: number): number {
    // each offer holds a descriptor of the daemon's until the queue is mapped: a program maps each queue as it
    // makes it, and one that does not may not pile them up
    let waiting = 0;
    for (const o of this.offers.values()) if (o.ctx === ctx) waiting++;
    if (waiting >= MAX_OFFERS) throw new CmdError(E.EMFILE, `${waiting} queues of this context wait to be mapped: map them (mmap the device file at their mminfo offsets) or destroy them first`);
    const fd = dupFd(memfd);
    const off = this.nextOffset;
    this.nextOffset += Math.ceil(size / PAGE) * PAGE;
    this.offers.set(off, { ctx, mapping, memfd: fd, at, size });
    return off;
  }

  private withdraw(offset: number): void {
    const o = this.offers.get(offset);
    if (!o) return;
    this.offers.delete(offset);
    closeFd(o.memfd);
  }

  /** The queues in `mapping` went: what of them was never mapped is withdrawn. */
  withdrawAll(mapping: Mapping): void {
    for (const [off, o] of this.offers) if (o.mapping === mapping) this.withdraw(off);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.pause) clearTimeout(this.pause);
    this.waits.cancel(this.lfd);
    closeFd(this.lfd);
    for (const [fd, p] of this.pending) {
      clearTimeout(p.timer);
      this.waits.cancel(fd);
      closeFd(fd);
    }
    this.pending.clear();
    for (const off of [...this.offers.keys()]) this.withdraw(off);
  }

  private onListener(): void {
    if (this.closed) return;
    for (;;) {
      if (this.pending.size >= MAX_PENDING) {
        // the rest wait in the queue until a waiting connection is done (drop() listens again)
        this.full = true;
        return;
      }
      // with no descriptor to spare the connections wait in the queue: the listener is readable meanwhile, and
      // waiting on it again would be woken at once, again and again, the CPU spinning
      const fd = this.host.mayAccept() ? acceptNow(this.lfd) : -E.EMFILE;
      if (fd === -E.EAGAIN) break;
      if (fd === -E.ECONNABORTED || fd === -E.EINTR) continue;
      if (fd < 0) {
        // EMFILE or ENFILE: the connections wait in the queue, tried again in a moment (the listener stays
        // readable, so waiting on it now would spin)
        if (!this.starved) this.host.log(`descriptor exchange: accepting a connection failed (${errnoName(-fd)}); requests wait in the queue`);
        this.starved = true;
        this.pause = setTimeout(() => {
          this.pause = null;
          this.onListener();
        }, PAUSE_MS);
        return;
      }
      this.starved = false;
      let cred: { pid: number; uid: number };
      try {
        cred = peerCred(fd);
      } catch {
        closeFd(fd);
        continue;
      }
      let mine = 0;
      for (const p of this.pending.values()) if (p.cred.uid === cred.uid) mine++;
      if (mine >= PENDING_PER_USER) {
        const msg = `uid ${cred.uid} has ${mine} descriptor exchange connections waiting for their request`;
        this.host.limitHit(cred.uid, 'descriptor exchange requests', msg);
        this.answer(fd, { status: -E.EAGAIN, text: msg, size: 0n, offset: 0n, id: 0, fd: -1 });
        closeFd(fd);
        continue;
      }
      this.pending.set(fd, { timer: setTimeout(() => this.drop(fd), REQUEST_MS), cred });
      this.onReadable(fd);
    }
    this.waits.wait(this.lfd, () => this.onListener());
  }

  private drop(fd: number): void {
    const p = this.pending.get(fd);
    if (p === undefined) return;
    clearTimeout(p.timer);
    this.pending.delete(fd);
    this.waits.cancel(fd);
    closeFd(fd);
    if (this.full && !this.closed) {
      this.full = false;
      this.waits.wait(this.lfd, () => this.onListener());
    }
  }

  private answer(fd: number, r: Reply): void {
    const text = Buffer.from(r.text.slice(0, 512));
    const head = pack(U.SV_FD_RESP, { status: r.status, text_len: text.length, size: r.size, offset: r.offset, id: r.id });
    sendWithFd(fd, Buffer.concat([head, text]), r.fd);
  }

  private onReadable(fd: number): void {
    const p = this.pending.get(fd);
    if (!p) return;
    const m = recvWithFds(fd);
    if (m.n === -E.EAGAIN) return this.waits.wait(fd, () => this.onReadable(fd));
    let reply: Reply = { status: 0, text: '', size: 0n, offset: 0n, id: 0, fd: -1 };
    try {
      if (m.truncated) this.lost(m.arrived);
      if (m.n < layout(REQ).size) throw new CmdError(E.EINVAL, `a request of ${Math.max(m.n, 0)} bytes is not an sv_fd_req`);
      const r = unpack(REQ, m.data, 0);
      const cred = p.cred;
      if (r.op === U.FdOp.SET_MEM) this.setMem(cred, r.token, m.fds);
      else if (r.op === U.FdOp.GET_QUEUE) Object.assign(reply, this.getQueue(cred, r.arg, m.fds));
      else if (r.op === U.FdOp.PUT_MEMFD) Object.assign(reply, this.putMemfd(cred, r.token, r.arg, m.fds));
      else throw new CmdError(E.EINVAL, `op ${r.op} is not a descriptor exchange request`);
    } catch (e) {
      // nothing that came with a refused request is kept
      for (const f of m.fds) closeFd(f);
      reply = { status: errnoOf(e) ?? -E.EIO, text: messageOf(e), size: 0n, offset: 0n, id: 0, fd: -1 };
    }
    this.answer(fd, reply);
    if (reply.fd >= 0) closeFd(reply.fd); // the client holds it now; the daemon keeps its mapping
    this.drop(fd);
  }

  /** Descriptors were lost on the way in (MSG_CTRUNC): more than a request carries, or the daemon's table is full. */
  private lost(arrived: number): never {
    if (arrived < CONTROL_FDS) throw new CmdError(E.EMFILE, 'the daemon is out of file descriptors: the descriptors sent could not be received');
    throw new CmdError(E.EINVAL, `more descriptors came than any request carries (at most ${CONTROL_FDS} are received; none is kept)`);
  }

  /** The one descriptor `op` takes, or its errno: none (EBADF) or more than one (EINVAL). */
  private one(op: string, fds: number[]): number {
    if (fds.length === 0) throw new CmdError(E.EBADF, `${op}: no descriptor came with the request`);
    if (fds.length > 1) throw new CmdError(E.EINVAL, `${op}: ${fds.length} descriptors came with the request; it takes one`);
    return fds[0]!;
  }

  /** The context `key` names for `op`, if the process asking is the context's own (pid and uid). */
  private ownContext(op: string, ctx: Context | undefined, cred: { pid: number; uid: number }, what: string): Context {
    if (!ctx) throw new CmdError(E.EINVAL, `${op}: ${what}`);
    if (ctx.pid !== cred.pid || ctx.uid !== cred.uid) throw new CmdError(E.EACCES, `${op}: the context is pid ${ctx.pid}'s, not pid ${cred.pid}'s (uid ${cred.uid})`);
    return ctx;
  }

  /**
   * The softverbs library hands over a memfd for its context: judged and sealed (memfd.ts), held under a new id
   * until the one command naming it maps it, or the context ends.
   */
  private putMemfd(cred: { pid: number; uid: number }, key: number, arg: bigint, fds: number[]): { size: bigint; id: number } {
    const fd = this.one('PUT_MEMFD', fds);
    if (arg !== 0n) throw new CmdError(E.EINVAL, 'PUT_MEMFD: arg is reserved (0)');
    const ctx = this.ownContext('PUT_MEMFD', key ? this.host.contextByKey(key) : undefined, cred, `key ${key} names no open softverbs context`);
    const size = checkMemfd(fd, 'PUT_MEMFD');
    return { size: BigInt(size), id: ctx.holdMemfd(fd, size) };
  }

  /** The context's own process hands over its /proc/self/mem and /proc/self/maps: the context's memory from now on. */
  private setMem(cred: { pid: number; uid: number }, token: number, fds: number[]): void {
    if (fds.length !== 2) {
      throw new CmdError(fds.length ? E.EINVAL : E.EBADF, `SET_MEM: ${fds.length} descriptors came with the request; it takes two, /proc/self/mem and /proc/self/maps`);
    }
    const ctx = this.ownContext('SET_MEM', this.host.contextOf(token), cred, `token ${token} names no context waiting for its memory`);
    if (ctx.memFd >= 0) throw new CmdError(E.EBUSY, 'SET_MEM: the context has its memory already');
    // a process's memory files, not something whose reads could block the daemon (a FIFO, a socket, a device)
    const [mem, maps] = fds as [number, number];
    const a = procFile(mem, 'mem', cred.pid);
    const b = procFile(maps, 'maps', cred.pid);
    if (a !== b) throw new CmdError(E.EINVAL, `SET_MEM: /proc/${a}/mem and /proc/${b}/maps are not one process's`);
    ctx.memFd = mem;
    ctx.mapsFd = maps;
  }

  /** mmap() of the device file at `offset`: the queue's memfd, to its context's process. */
  private getQueue(cred: { pid: number; uid: number }, offset: bigint, fds: number[]): { size: bigint; offset: bigint; fd: number } {
    if (fds.length) throw new CmdError(E.EINVAL, `GET_QUEUE: ${fds.length} descriptors came with the request; it takes none`);
    const o = offset <= BigInt(Number.MAX_SAFE_INTEGER) ? this.offers.get(Number(offset)) : undefined;
    if (!o) throw new CmdError(E.EINVAL, `mmap offset 0x${offset.toString(16)} names no queue waiting to be mapped`);
    if (o.ctx.pid !== cred.pid || o.ctx.uid !== cred.uid) throw new CmdError(E.EACCES, `mmap offset 0x${offset.toString(16)}: the queue is pid ${o.ctx.pid}'s`);
    this.offers.delete(Number(offset));
    return { size: BigInt(o.size), offset: BigInt(o.at), fd: o.memfd };
  }
}

/**
 * The pid (as the client's /proc names it) of a descriptor that is a process's PID/`name` (or
 * PID/task/TID/`name`) on a procfs, as the sender's own mount table has it; else EINVAL. Judged
 * without a call into the file's filesystem until it is known to be procfs: an fstat() of a file on a FUSE
 * mount waits for that filesystem's server, which may never answer, and the daemon would wait with it; a
 * name alone can be had on any filesystem (an empty file at ~/x/123/mem, or a mount over /proc in a
 * namespace of the sender's own). Everything but procfs would also be read as if it were memory: an empty
 * regular file gives short reads, a FIFO or a device blocks them.
 */
function procFile(fd: number, name: 'mem' | 'maps', sender: number): string {
  const bad = (what: string): never => {
    throw new CmdError(E.EINVAL, `SET_MEM: the descriptor is ${what}, not a process's /proc/PID/${name}`);
  };
  let link = '';
  try {
    link = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    bad('unnamed');
  }
  // where it was opened is the sender's business (a procfs of a pid namespace is seen here under its own mount
  // point, e.g. /srv/ct/proc/1/mem): the name says which process's file it is, the filesystem below that it is one
  const pid = new RegExp(`/(\\d+)(/task/\\d+)?/${name}$`).exec(link)?.[1];
  if (!pid) bad(link);
  // the mount it was opened on (fdinfo comes from the file table, not the filesystem), in the sender's mount table
  let fsType: string | undefined;
  try {
    const mnt = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1'))?.[1];
    const line = mnt === undefined ? undefined : readFileSync(`/proc/${sender}/mountinfo`, 'latin1').split('\n').find((l) => l.startsWith(`${mnt} `));
    fsType = line?.split(' - ')[1]?.split(' ')[0];
  } catch {
    /* the sender is gone, or its mount table cannot be read: not judged a procfs */
  }
  if (fsType !== 'proc') bad(`${link} on ${fsType ?? 'an unknown filesystem'}`);
  const st = fstatSync(fd);
  if (!st.isFile() || st.size !== 0) bad(`${link}, not a process's file`);
  return pid!;
}
