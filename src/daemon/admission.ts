/**
 * Who gets a descriptor of the daemon: every connection to a device file
 * costs one, and the daemon's table (its RLIMIT_NOFILE) is shared by all
 * users, where the kernel would charge each process's own. The peer's uid
 * (SO_PEERCRED) is known only once the connection is accepted, so each one
 * is accepted, judged, and either admitted (a Node socket, one of the
 * user's connections) or answered with its errno and closed: a refusal
 * costs the daemon a descriptor for moments, never for as long as the peer
 * holds its end, and no Node socket at all.
 *
 * The daemon accepts only while it has room: the last GUARD descriptors are
 * never given to a connection (the daemon needs some for a moment: a
 * memfd a client hands over, a /proc file, a resolver's socket), and with
 * no room even to answer a refusal, connections wait in the queue until
 * some close.
 * Node's own accept is not used: out of descriptors, libuv's way out
 * (closing a spare descriptor to accept and close what is queued) drops
 * every waiting client, whoever it is. Above the guard, a reserve is kept
 * for users who hold few connections (and root): a user, or several, who
 * filled the rest while under their caps cannot lock the others out.
 * Refusals for the daemon's table are ENFILE (the system-wide table, as the
 * kernel sees the daemon's); a user over her cap gets EMFILE.
 *
 * The accept queue is first come, first served: a flooder makes everyone
 * behind her wait until the daemon has judged her connections. So they are
 * judged in a few system calls each, a batch per turn of the event loop,
 * and the clients already connected are served between batches.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { Socket } from 'node:net';
import { replyFrame } from '../abi/framing.js';
import { E, errnoName } from '../common/errno.js';
import { acceptNow, closeFd, peerCred, sendNow } from '../native/libc.js';
import { ReadableSet } from '../native/readable-set.js';
import type { Quotas } from './limits.js';
import { messageOf } from '../common/errors.js';

/** Descriptors kept for the daemon's own passing needs. */
const GUARD = 32;
/** The reserve, at least; a sixteenth of the table on larger ones. */
const RESERVE_MIN = 64;
/** Who may take the reserve: a user holding fewer connections than this (several contexts' worth). */
const SHARE = 16;
/**
 * A refused connection is closed only after a moment (at most this long, and only while the daemon has
 * room to spare): a client that writes its first request to a socket already closed gets EPIPE, not the
 * refusal's errno.
 */
const LINGER_MS = 250;
const LINGER_MAX = 64;
/** Connections judged per turn of the event loop. */
const BATCH = 64;
/** How long accepting pauses with no room (closing connections make some). */
const PAUSE_MS = 50;
/** How stale the descriptor count may be: far from the reserve, and near it. */
const RECOUNT_FAR_MS = 1000;
const RECOUNT_NEAR_MS = 50;

export interface Cred {
  pid: number;
  uid: number;
  gid: number;
}

interface Refusal {
  errno: number;
  message: string;
}

/** A device file's listening socket, its connections judged by the Admission. */
export interface Listener {
  close(): void;
}

/** The soft RLIMIT_NOFILE of this process (Node raises it to the hard one at start; prlimit may change it since). */
function nofileLimit(): number {
  const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
  const soft = Number(line?.slice('Max open files'.length).trim().split(/\s+/)[0]);
  return Number.isSafeInteger(soft) && soft > 0 ? soft : 1024;
}

export class Admission {
  private limit = nofileLimit();
  /** Admitted sockets whose descriptor is (or may still be) open. */
  private readonly open = new Set<Socket>();
  /** Every other descriptor of the daemon, as last counted. */
  private other = 0;
  private countedAt = Number.NEGATIVE_INFINITY;
  /** Refused descriptors, answered, oldest first: each closed LINGER_MS after its answer, or sooner for room. */
  private readonly closing: { fd: number; at: number }[] = [];
  private closingTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly quotas: Quotas,
    private readonly privileged: (uid: number) => boolean,
    private readonly onHit: (uid: number, what: string, msg: string) => void,
    private readonly logger: { info(msg: string): void; once(key: string, level: 'warn', msg: string): void },
  ) {}

  /**
   * The listening sockets' own wait: the wire's sockets wait in the process's shared set only while quiet, and a
   * set that always held the listeners would add a thread hop to each of their waits (a burst of READ
   * responses from a peer then overran the raw socket).
   */
  private readonly listening = new ReadableSet();

  get reserve(): number {
    return Math.max(RESERVE_MIN, this.limit >> 4);
  }

  /** Accepts on `fd` (a listening socket, non-blocking) from now on: `take` gets each connection admitted. */
  listen(fd: number, what: string, take: (s: Socket, cred: Cred) => void): Listener {
    let closed = false;
    let timer: NodeJS.Timeout | null = null;
    const turn = () => {
      timer = null;
      if (closed) return;
      const r = this.batch(fd, what, take);
      if (r === 'empty') this.listening.wait(fd, turn);
      else if (r === 'more') setImmediate(turn);
      else timer = setTimeout(turn, PAUSE_MS);
    };
    this.listening.wait(fd, turn);
    return {
      close: () => {
        if (closed) return;
        closed = true;
        if (timer) clearTimeout(timer);
        this.listening.cancel(fd);
        closeFd(fd);
      },
    };
  }

  /**
   * Whether a listener outside the Admission (the descriptor exchange: a connection for one request and its
   * answer) may accept one more connection now: as the device files' own, not into the last GUARD / 2, and
   * lingering refusals give their descriptors up first. The count is made afresh when it is within reach of the
   * guard: that listener's connections are not followed here, and a burst of them outruns the recount's period.
   */
  mayAccept(): boolean {
    if (this.limit - this.used() < 2 * GUARD + LINGER_MAX) this.recount(performance.now());
    let room = this.limit - this.used() - 1;
    while (room <= GUARD / 2 && this.closing.length) {
      closeFd(this.closing.shift()!.fd);
      room++;
    }
    return room > GUARD / 2;
  }

  /** Judges up to BATCH waiting connections: 'empty' when none is left, 'more' when some may be, 'full' with no room. */
  private batch(lfd: number, what: string, take: (s: Socket, cred: Cred) => void): 'empty' | 'more' | 'full' {
    for (let i = 0; i < BATCH; i++) {
      // room after this accept; a lingering refusal gives its descriptor up before the queue waits for one
      let room = this.limit - this.used() - 1;
      while (room <= GUARD / 2 && this.closing.length) {
        closeFd(this.closing.shift()!.fd);
        room++;
      }
      if (room <= GUARD / 2) return 'full';
      const fd = acceptNow(lfd);
      if (fd === -E.EAGAIN) return 'empty';
      if (fd === -E.ECONNABORTED || fd === -E.EINTR) continue;
      if (fd < 0) {
        // EMFILE (the count was behind) or ENFILE: the connection stays queued until there is room
        this.logger.once(`accept:${what}:${fd}`, 'warn', `${what}: accepting a connection failed (${errnoName(-fd)}); connections wait in the queue`);
        this.countedAt = Number.NEGATIVE_INFINITY;
        return 'full';
      }
      let cred: Cred;
      try {
        cred = peerCred(fd);
      } catch (e) {
        this.logger.info(`peer credentials unavailable: ${messageOf(e)}`);
        closeFd(fd);
        continue;
      }
      const no = this.judge(cred.uid, room);
      if (no) {
        this.refuse(fd, no);
        continue;
      }
      this.quotas.take(cred.uid, 'connections');
      const s = new Socket({ fd, readable: true, writable: true });
      this.open.add(s);
      s.once('close', () => this.open.delete(s));
      take(s, cred);
    }
    return 'more';
  }

  /** Why uid may not have one more connection with `room` descriptors left (the hit reported), or null. */
  private judge(uid: number, room: number): Refusal | null {
    if (room < GUARD) {
      const message = `the daemon has ${this.limit - room} of its ${this.limit} descriptors open (RLIMIT_NOFILE); the last ${GUARD} are its own`;
      this.onHit(uid, 'descriptors', message);
      return { errno: E.ENFILE, message };
    }
    const holds = this.quotas.held(uid, 'connections');
    if (room < GUARD + this.reserve && holds >= SHARE && !this.privileged(uid)) {
      const message = `the daemon has ${this.limit - room} of its ${this.limit} descriptors open (RLIMIT_NOFILE); the last ${GUARD + this.reserve} are kept for users holding fewer than ${SHARE} connections, and uid ${uid} holds ${holds}`;
      this.onHit(uid, 'descriptors', message);
      return { errno: E.ENFILE, message };
    }
    // as open() failing with EMFILE: the first request gets the errno, then the connection ends
    return this.quotas.refusal(uid, 'connections');
  }

  /** Descriptors open in the daemon: counted now and then, followed meanwhile through the connections it accepts and closes. */
  private used(): number {
    const now = performance.now();
    const est = this.other + this.open.size + this.closing.length;
    if (now - this.countedAt > (this.limit - est < 2 * (GUARD + this.reserve) ? RECOUNT_NEAR_MS : RECOUNT_FAR_MS)) this.recount(now);
    return this.other + this.open.size + this.closing.length;
  }

  private recount(now: number): void {
    this.countedAt = now;
    let n: number;
    try {
      this.limit = nofileLimit();
      n = readdirSync('/proc/self/fd').length - 1; // less the directory's own descriptor
    } catch {
      // no descriptor left even to count them: full
      this.other = this.limit;
      return;
    }
    // a socket Node closed (the peer's end) leaves the set only at its 'close' event, a moment later
    let live = 0;
    for (const s of this.open) if (!s.destroyed) live++;
    this.other = Math.max(0, n - live - this.closing.length);
  }

  /** Answers with the errno (a peer already gone, EPIPE, is no matter) and closes LINGER_MS later, or sooner. */
  private refuse(fd: number, no: Refusal): void {
    sendNow(fd, replyFrame(-no.errno, Buffer.from(no.message)));
    this.closing.push({ fd, at: performance.now() });
    if (this.closing.length > LINGER_MAX) closeFd(this.closing.shift()!.fd);
    this.closingTimer ??= setTimeout(() => this.closeLingering(), LINGER_MS);
  }

  /** Closes what refusals still hold (the daemon is stopping; its listeners are closed). */
  close(): void {
    if (this.closingTimer) clearTimeout(this.closingTimer);
    this.closingTimer = null;
    for (const c of this.closing.splice(0)) closeFd(c.fd);
  }

  private closeLingering(): void {
    this.closingTimer = null;
    const old = performance.now() - LINGER_MS;
    while (this.closing.length && this.closing[0]!.at <= old) closeFd(this.closing.shift()!.fd);
    if (this.closing.length) this.closingTimer = setTimeout(() => this.closeLingering(), this.closing[0]!.at + LINGER_MS - performance.now() + 1);
  }
}
