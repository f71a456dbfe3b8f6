/**
 * The descriptor exchange: what a uverbs file carries in the kernel and a
 * command frame cannot. A C program's queues are mmap()ed from the device
 * file, and the daemon reaches its memory through its /proc/self/mem; both
 * are descriptors, and descriptors cross a Unix socket only as SCM_RIGHTS,
 * which Node's sockets drop. So they travel here, on a socket of their own
 * (`<root>/fds.sock`) read and written natively: one request per
 * connection (`sv_fd_req`, abi/uverbs.ts), one reply, then the connection
 * closes. Who asks is the kernel's word (SO_PEERCRED): a context's
 * descriptors go to and come from its own process only.
 */
import { fstatSync, readFileSync, readlinkSync } from 'node:fs';
import { layout, pack, unpack } from '../abi/layout.js';
import * as U from '../abi/uverbs.js';
import { CmdError, E } from '../common/errno.js';
import { errnoOf, messageOf } from '../common/errors.js';
import { type Received, recvWithFd, sendWithFd } from '../native/fd-pass.js';
import { acceptNow, closeFd, dupFd, type Mapping, peerCred } from '../native/libc.js';
import { ReadableSet } from '../native/readable-set.js';
import type { Context } from './context.js';

/**
 * Connections waiting for their request at once, of all users and of one: past either, a new connection whose
 * request is not there yet is turned away (EAGAIN). A user's own cap is below the whole, so no user's idle
 * connections can turn another user's requests away.
 */
const MAX_PENDING = 64;
const MAX_PENDING_PER_UID = 16;
/** queues one context may leave unmapped (each holds a descriptor of the daemon's) */
const MAX_OFFERS = 64;
/** how long a connection may take to send its request */
const REQUEST_MS = 2000;
/** how long accepting pauses when the daemon has no descriptor to spare (closing connections make some) */
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

export interface FdExchangeHost {
  /** The context whose GET_CONTEXT answer carried `token`, while its token is valid. */
  contextOf(token: number): Context | undefined;
  log(msg: string): void;
  /** Whether the daemon has a descriptor to spare for one more connection (admission.ts keeps the count). */
  mayAccept(): boolean;
}

export class FdExchange {
  private readonly offers = new Map<number, Offer>();
  /** mmap offsets, as the kernel's rxe hands them out: page aligned, never reused while the daemon runs */
  private nextOffset = PAGE;
  private readonly waits = new ReadableSet();
  /** connections waiting for their request: their timeout, and whose they are */
  private readonly pending = new Map<number, { timer: NodeJS.Timeout; uid: number }>();
  private readonly pendingOf = new Map<number, number>();
  private closed = false;
  private paused: NodeJS.Timeout | null = null;

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
    this.waits.cancel(this.lfd);
    if (this.paused) clearTimeout(this.paused);
    closeFd(this.lfd);
    for (const [fd, { timer: t }] of this.pending) {
      clearTimeout(t);
      this.waits.cancel(fd);
      closeFd(fd);
    }
    this.pending.clear();
    for (const off of [...this.offers.keys()]) this.withdraw(off);
  }

  private onListener(): void {
    if (this.closed) return;
    for (;;) {
      // with no descriptor to spare, or none at all (EMFILE, ENFILE), connections wait in the queue: the listener
      // is readable meanwhile, and waiting on it again would be woken at once, again and again, the CPU spinning
      if (!this.host.mayAccept()) return this.pause();
      const fd = acceptNow(this.lfd);
      if (fd === -E.EAGAIN) break;
      if (fd === -E.ECONNABORTED || fd === -E.EINTR) continue;
      if (fd < 0) return this.pause();
      this.onConnection(fd);
    }
    this.waits.wait(this.lfd, () => this.onListener());
  }

  private pause(): void {
    this.paused = setTimeout(() => {
      this.paused = null;
      this.onListener();
    }, PAUSE_MS);
  }

  /** A new connection: answered now if its request is there (as a client's mostly is), else it waits for it, within the caps. */
  private onConnection(fd: number): void {
    const m = recvWithFd(fd);
    if (m.n !== -E.EAGAIN) {
      this.answer(fd, m);
      return closeFd(fd);
    }
    let uid: number;
    try {
      uid = peerCred(fd).uid;
    } catch {
      return closeFd(fd);
    }
    const mine = this.pendingOf.get(uid) ?? 0;
    if (this.pending.size >= MAX_PENDING || mine >= MAX_PENDING_PER_UID) {
      const why = mine >= MAX_PENDING_PER_UID ? `too many connections of uid ${uid} wait for their request (${mine})` : `too many connections wait for their request (${this.pending.size})`;
      this.reply(fd, { status: -E.EAGAIN, text: why, size: 0n, offset: 0n, fd: -1 });
      return closeFd(fd);
    }
    this.pendingOf.set(uid, mine + 1);
    this.pending.set(fd, { timer: setTimeout(() => this.drop(fd), REQUEST_MS), uid });
    this.waits.wait(fd, () => this.onReadable(fd));
  }

  /** A waiting connection goes (answered, or out of time). */
  private drop(fd: number): void {
    const p = this.pending.get(fd);
    if (p === undefined) return;
    clearTimeout(p.timer);
    this.pending.delete(fd);
    const n = (this.pendingOf.get(p.uid) ?? 1) - 1;
    if (n > 0) this.pendingOf.set(p.uid, n);
    else this.pendingOf.delete(p.uid);
    this.waits.cancel(fd);
    closeFd(fd);
  }

  private onReadable(fd: number): void {
    if (!this.pending.has(fd)) return;
    const m = recvWithFd(fd);
    if (m.n === -E.EAGAIN) return this.waits.wait(fd, () => this.onReadable(fd));
    this.answer(fd, m);
    this.drop(fd);
  }

  /** Carries out the request `m` came with and answers it on fd. */
  private answer(fd: number, m: Received): void {
    let reply: { status: number; text: string; size: bigint; offset: bigint; fd: number };
    try {
      if (m.n < layout(REQ).size) throw new CmdError(E.EINVAL, `a request of ${m.n} bytes is not an sv_fd_req`);
      // past the room for a few, the kernel dropped descriptors; the rest are closed
      if (m.truncated) throw new CmdError(E.EINVAL, 'a request carries one descriptor at most, and more came');
      const r = unpack(REQ, m.data, 0);
      const cred = peerCred(fd);
      reply = { status: 0, text: '', size: 0n, offset: 0n, fd: -1 };
      // every request but SET_MEM carries none: one that came anyway is closed (catch below), not kept
      if (r.op === U.FdOp.SET_MEM) {
        if (m.count > 1) throw new CmdError(E.EINVAL, `SET_MEM: ${m.count} descriptors came with the request, not one`);
        this.setMem(cred, r.token, m.fd);
      } else if (r.op === U.FdOp.GET_QUEUE) {
        if (m.count) throw new CmdError(E.EINVAL, 'GET_QUEUE: the request carries no descriptor');
        Object.assign(reply, this.getQueue(cred, r.arg));
      } else throw new CmdError(E.EINVAL, `op ${r.op} is not a descriptor exchange request`);
    } catch (e) {
      if (m.fd >= 0) closeFd(m.fd);
      reply = { status: errnoOf(e) ?? -E.EIO, text: messageOf(e), size: 0n, offset: 0n, fd: -1 };
    }
    this.reply(fd, reply);
    if (reply.fd >= 0) closeFd(reply.fd); // the client holds it now; the daemon keeps its mapping
  }

  private reply(fd: number, r: { status: number; text: string; size: bigint; offset: bigint; fd: number }): void {
    const text = Buffer.from(r.text.slice(0, 512));
    const head = pack(U.SV_FD_RESP, { status: r.status, text_len: text.length, size: r.size, offset: r.offset });
    sendWithFd(fd, Buffer.concat([head, text]), r.fd);
  }

  /** The context's own process hands over its /proc/self/mem: the context's memory from now on. */
  private setMem(cred: { pid: number; uid: number }, token: number, fd: number): void {
    if (fd < 0) throw new CmdError(E.EBADF, 'SET_MEM: no descriptor came with the request');
    const ctx = this.host.contextOf(token);
    if (!ctx) throw new CmdError(E.EINVAL, `SET_MEM: token ${token} names no context waiting for its memory`);
    if (ctx.pid !== cred.pid || ctx.uid !== cred.uid) throw new CmdError(E.EACCES, `SET_MEM: the context is pid ${ctx.pid}'s, not pid ${cred.pid}'s`);
    if (ctx.memFd >= 0) throw new CmdError(E.EBUSY, 'SET_MEM: the context has its memory already');
    const why = notProcMem(fd, cred.pid);
    if (why) throw new CmdError(E.EINVAL, `SET_MEM: the descriptor is ${why}, not a process's /proc/PID/mem`);
    ctx.memFd = fd;
  }

  /** mmap() of the device file at `offset`: the queue's memfd, to its context's process. */
  private getQueue(cred: { pid: number; uid: number }, offset: bigint): { size: bigint; offset: bigint; fd: number } {
    const o = offset <= BigInt(Number.MAX_SAFE_INTEGER) ? this.offers.get(Number(offset)) : undefined;
    if (!o) throw new CmdError(E.EINVAL, `mmap offset 0x${offset.toString(16)} names no queue waiting to be mapped`);
    if (o.ctx.pid !== cred.pid || o.ctx.uid !== cred.uid) throw new CmdError(E.EACCES, `mmap offset 0x${offset.toString(16)}: the queue is pid ${o.ctx.pid}'s`);
    this.offers.delete(Number(offset));
    return { size: BigInt(o.size), offset: BigInt(o.at), fd: o.memfd };
  }
}

/**
 * Why `fd` (the daemon's, from process `pid`) is not a process's memory file, or null if it is one: named
 * /proc/PID/mem (or /proc/PID/task/TID/mem) and on a procfs, as the sender's own mount table has it. Judged
 * without a call into the file's filesystem until it is known to be procfs: an fstat() of a file on a FUSE
 * mount waits for that filesystem's server, which may never answer, and the daemon would wait with it; a
 * name alone can be had on any filesystem (an empty file at ~/x/123/mem, or a mount over /proc in a
 * namespace of the sender's own). Everything but procfs would also be read as if it were memory: an empty
 * regular file gives short reads, a FIFO or a device blocks them.
 */
function notProcMem(fd: number, pid: number): string | null {
  let link: string;
  try {
    link = readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return 'unnamed';
  }
  if (!/^\/proc\/\d+(\/task\/\d+)?\/mem$/.test(link)) return link;
  // the mount it was opened on (fdinfo comes from the file table, not the filesystem), in the sender's mount table
  let fsType: string | undefined;
  try {
    const mnt = /^mnt_id:\s*(\d+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'latin1'))?.[1];
    const line = mnt === undefined ? undefined : readFileSync(`/proc/${pid}/mountinfo`, 'latin1').split('\n').find((l) => l.startsWith(`${mnt} `));
    fsType = line?.split(' - ')[1]?.split(' ')[0];
  } catch {
    /* the sender is gone, or its mount table cannot be read: not judged a procfs */
  }
  if (fsType !== 'proc') return `${link} on ${fsType ?? 'an unknown filesystem'}`;
  const st = fstatSync(fd);
  return st.isFile() && st.size === 0 ? null : `${link}, not a memory file`;
}
