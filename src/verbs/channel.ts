/**
 * The connections to a device file: the command connection (uverbs frames
 * out, replies back in order) and event streams (async events, completion
 * channels). A socket is only ref'd while something waits on it, so a
 * program that forgets to close its context still exits.
 */
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { VerbsError } from './errors.js';
import { attachFrame, FrameAssembler, parseReply, replySize } from '../abi/framing.js';
import { pidAlive } from '../common/proc.js';
import { codeOf, messageOf } from '../common/errors.js';

/** No reply is larger: the response structs are small, error texts at most 1 KiB, management answers well under this. */
const MAX_REPLY = 64 << 20;

interface Pending {
  verb: string;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

export class CommandChannel {
  private pending: Pending[] = [];
  /** why the connection is gone (null: it is not) */
  private dead: string | null = null;
  private readonly frames = new FrameAssembler(
    // bounded: a frame beyond any reply is a broken stream
    (h) => replySize(h, MAX_REPLY),
    (f) => this.onReply(f),
    () => {
      this.fail('the daemon sent a reply no daemon sends');
      this.sock.destroy();
    },
  );

  /** The daemon's pid (from the discovery tree), for the liveness probe of the fast path; 0 when unknown. */
  daemonPid = 0;
  private lastProbe = performance.now();

  /** closed by this process (closeDevice): a verb after it says so, not that the daemon went away */
  private closing = false;

  private constructor(readonly sock: Socket) {
    sock.on('data', (d) => this.frames.push(d));
    sock.on('close', () => this.ended());
    sock.on('error', (e) => this.ended(codeOf(e)));
    sock.unref();
  }

  private ended(code?: string): void {
    this.fail(this.closing ? 'closed' : `softverbsd closed it${code ? ` (${code})` : ''}: it stopped, or the device was deleted`);
  }

  private lostError(verb: string): VerbsError {
    if (this.closing) return new VerbsError(verb, 'EIO', 'the device is closed (closeDevice)');
    // asked now, not when the connection ended: a daemon that died is still a process (exiting) when its sockets close
    const gone = this.daemonPid && !running(this.daemonPid);
    return new VerbsError(verb, 'EIO', `the daemon connection is lost (${gone ? `softverbsd (pid ${this.daemonPid}) is gone` : this.dead})`);
  }

  /** The connection is gone (closed here, or the daemon went away): nothing the daemon held for it exists any more. */
  get lost(): boolean {
    return this.dead !== null || this.closing;
  }

  /** Throws EIO once the connection to the daemon is lost: every verb, the fast path's too, checks this first. */
  ensureUp(verb: string): void {
    if (this.lost) throw this.lostError(verb);
  }

  /**
   * The fast path's check that the daemon is still there: free while the connection is up and was seen
   * alive within the last second; otherwise one kill(pid, 0). A poll loop that never yields to the event
   * loop would never see the socket close, so it asks this way (at most once a second).
   */
  probe(verb: string): void {
    this.ensureUp(verb);
    if (!this.daemonPid) return;
    const now = performance.now();
    if (now - this.lastProbe < 1000) return;
    this.lastProbe = now;
    if (running(this.daemonPid)) return;
    this.fail(`softverbsd (pid ${this.daemonPid}) is gone`);
    throw this.lostError(verb);
  }

  /** Connects to a device file; EACCES and ENOENT come back as they would from open(). */
  static async open(path: string, verb = 'ibv_open_device'): Promise<CommandChannel> {
    return new CommandChannel(await connectDevice(path, verb));
  }

  private fail(why: string): void {
    this.dead ??= why;
    for (const p of this.pending.splice(0)) p.reject(lostOnTheWay(this.lostError(p.verb)));
  }

  private onReply(f: Buffer): void {
    const { status, body } = parseReply(f);
    const p = this.pending.shift();
    if (this.pending.length === 0) this.sock.unref();
    if (!p) return;
    if (status < 0) p.reject(new VerbsError(p.verb, -status, body.length ? body.toString('utf8') : undefined));
    else p.resolve(body);
  }

  /** Sends a frame and waits for its reply body. */
  call(verb: string, frame: Buffer): Promise<Buffer> {
    if (this.lost) return Promise.reject(this.lostError(verb));
    return new Promise((resolve, reject) => {
      this.pending.push({ verb, resolve, reject });
      this.sock.ref();
      this.sock.write(frame);
    });
  }

  /**
   * A destroy: sends it and waits for its reply, or resolves null when the connection is gone before or while
   * it goes. The daemon releases everything of a connection that ends, so the object is gone either way (as
   * libibverbs takes a destroy's EIO from a disassociated device for success).
   */
  async release(verb: string, frame: Buffer): Promise<Buffer | null> {
    if (this.lost) return null;
    try {
      return await this.call(verb, frame);
    } catch (e) {
      if (e instanceof VerbsError && lostErrors.has(e)) return null;
      throw e;
    }
  }

  /** Sends a frame whose reply nobody waits for (a doorbell); a failure there is reported through `onError`. */
  post(verb: string, frame: Buffer, onError?: (e: Error) => void): void {
    this.ensureUp(verb);
    this.pending.push({ verb, resolve: noop, reject: onError ?? noop });
    this.sock.write(frame);
  }

  /** Writes a frame the daemon does not answer (a pure doorbell: out_words 0). */
  ring(verb: string, frame: Buffer): void {
    this.ensureUp(verb);
    this.sock.write(frame);
  }

  /** Closes the connection (the daemon then releases the context) and resolves once the daemon has closed its side (see closeSocket). */
  close(): Promise<void> {
    this.closing = true;
    return closeSocket(this.sock);
  }
}

/** Whether a process runs: it exists and is no zombie (a daemon killed by its parent's test is one until reaped). */
function running(pid: number): boolean {
  if (!pidAlive(pid)) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return true; // another user's process, or no /proc: kill(pid, 0) said it exists
  }
}

/** The errors of requests whose connection went away before their reply came. */
const lostErrors = new WeakSet<Error>();
function lostOnTheWay<E extends Error>(e: E): E {
  lostErrors.add(e);
  return e;
}

/**
 * Connects to a device file. EAGAIN means its accept queue is full (a burst of connects, another user's
 * flood): it drains in moments, so the connect is tried again. Other errors come back as open() gives them
 * (ECONNREFUSED, a file with no daemon behind it, as ENODEV).
 */
export async function connectDevice(path: string, verb: string): Promise<Socket> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await new Promise<Socket>((resolve, reject) => {
        const s = connect(path);
        s.once('connect', () => {
          s.removeAllListeners('error');
          resolve(s);
        });
        s.once('error', reject);
      });
    } catch (e) {
      const code = codeOf(e);
      if (code === 'EAGAIN' && attempt < 100) {
        await new Promise((r) => setTimeout(r, Math.min(100, 2 + attempt * 5)));
        continue;
      }
      throw new VerbsError(verb, code === 'ECONNREFUSED' ? 'ENODEV' : code ?? 'EIO', `${path}: ${messageOf(e)}`);
    }
  }
}

/**
 * Ends a device connection and resolves once the daemon has ended its side too. The daemon answers our FIN
 * only after it has taken the end in (a completion channel's stream: the channel is destroyed), so what this
 * process does next (close the device) is seen after it; a plain destroy raced the device's close, and the
 * channel was sometimes torn down with the context instead. A daemon that does not answer within a second is
 * not waited for.
 */
function closeSocket(s: Socket): Promise<void> {
  if (s.closed) return Promise.resolve();
  return new Promise((resolve) => {
    s.once('close', () => resolve());
    setTimeout(() => s.destroy(), 1000).unref();
    // ref'd until closed: awaiting the daemon's answer must keep the process alive long enough to get it
    s.ref();
    s.resume();
    s.end();
  });
}

const noop = () => {};

/** An event stream (async events or a completion channel): fixed-size records pushed by the daemon. */
export class EventStream {
  private waiters: Array<(b: Buffer | null) => void> = [];
  private queued: Buffer[] = [];
  private closed = false;
  /** resolves when the stream has ended */
  readonly ended: Promise<void>;
  private constructor(readonly sock: Socket) {
    let end!: () => void;
    this.ended = new Promise((r) => (end = r));
    sock.on('close', () => {
      this.closed = true;
      end();
      for (const w of this.waiters.splice(0)) w(null);
    });
    sock.on('error', () => sock.destroy());
    sock.unref();
  }

  /** sees each record as it arrives, before any reader; true keeps it from them (see EventChannel's migrations) */
  tap: ((rec: Buffer) => boolean) | null = null;

  private onRecord(rec: Buffer): void {
    // copied out of the chunk it came in: the caller may keep it
    const copy = Buffer.from(rec);
    if (this.tap?.(copy)) return;
    this.put(copy);
  }

  /** A record for the readers, behind those waiting: one that arrived, or one another stream handed over. */
  put(copy: Buffer): void {
    const w = this.waiters.shift();
    if (w) w(copy);
    else this.queued.push(copy);
    if (this.waiters.length === 0) this.sock.unref();
  }

  /** Connects and attaches to the context's stream named by `token`: one reply (its status), then records of `recordSize` bytes. */
  static async attach(path: string, command: number, token: number, recordSize: number, verb: string, build: (command: number, token: number) => Buffer = attachFrame): Promise<EventStream> {
    const s = await connectDevice(path, verb);
    const stream = new EventStream(s);
    const status = await new Promise<number>((resolve, reject) => {
      let attached = false;
      const frames = new FrameAssembler(
        (h) => replySize(h, 0),
        (f) => {
          if (attached) return stream.onRecord(f);
          attached = true;
          // from here on, what comes is records (the assembler asks for each frame's size as it gets there)
          frames.sizeOf = () => recordSize;
          resolve(parseReply(f).status);
        },
        () => reject(new VerbsError(verb, 'EIO', 'the daemon answered the attach with a body')),
      );
      s.on('data', (d) => frames.push(d));
      s.once('close', () => reject(new VerbsError(verb, 'EIO', 'closed while attaching')));
      s.ref();
      s.write(build(command, token));
    }).catch((e: unknown) => {
      s.destroy();
      throw e;
    });
    s.unref();
    if (status < 0) {
      s.destroy();
      throw new VerbsError(verb, -status);
    }
    return stream;
  }

  /** Takes the records not yet read that `pred` picks out of the queue, in order. */
  extract(pred: (rec: Buffer) => boolean): Buffer[] {
    const out = this.queued.filter(pred);
    if (out.length) this.queued = this.queued.filter((r) => !pred(r));
    return out;
  }

  /** The next record, or null once the stream is closed. */
  next(): Promise<Buffer | null> {
    const q = this.queued.shift();
    if (q) return Promise.resolve(q);
    if (this.closed) return Promise.resolve(null);
    this.sock.ref();
    return new Promise((r) => this.waiters.push(r));
  }

  /** Ends the stream; resolves once the daemon has taken its end in (see closeSocket). */
  close(): Promise<void> {
    return closeSocket(this.sock);
  }
}
