/**
 * The command connection to a device file: uverbs frames out, replies back
 * in order (DESIGN §3). The socket is only ref'd while a reply is awaited,
 * so a program that forgets to close its context still exits.
 */
import { connect, type Socket } from 'node:net';
import { VerbsError } from './errors.js';

interface Pending {
  verb: string;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

export class CommandChannel {
  private pending: Pending[] = [];
  private chunks: Buffer[] = [];
  private have = 0;
  private dead: Error | null = null;
  private constructor(readonly sock: Socket) {
    sock.on('data', (d) => this.onData(d));
    sock.on('close', () => this.fail(new Error('device connection closed')));
    sock.on('error', (e) => this.fail(e));
    sock.unref();
  }

  /** Connects to a device file; EACCES and ENOENT come back as they would from open(). */
  static open(path: string, verb = 'ibv_open_device'): Promise<CommandChannel> {
    return new Promise((resolve, reject) => {
      const s = connect(path);
      s.once('connect', () => {
        s.removeAllListeners('error');
        resolve(new CommandChannel(s));
      });
      s.once('error', (e: NodeJS.ErrnoException) => reject(new VerbsError(verb, e.code === 'ECONNREFUSED' ? 'ENODEV' : e.code ?? 'EIO', `${path}: ${e.message}`)));
    });
  }

  private fail(e: Error): void {
    this.dead ??= e;
    for (const p of this.pending.splice(0)) p.reject(new VerbsError(p.verb, 'EIO', e.message));
  }

  private onData(d: Buffer): void {
    this.chunks.push(d);
    this.have += d.length;
    while (this.have >= 8) {
      const buf = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
      this.chunks = [buf];
      const len = buf.readUInt32LE(4);
      if (this.have < 8 + len) return;
      const status = buf.readInt32LE(0);
      const body = buf.subarray(8, 8 + len);
      const rest = buf.subarray(8 + len);
      this.chunks = rest.length ? [rest] : [];
      this.have = rest.length;
      const p = this.pending.shift();
      if (this.pending.length === 0) this.sock.unref();
      if (!p) continue;
      if (status < 0) p.reject(new VerbsError(p.verb, -status, body.length ? body.toString('utf8') : undefined));
      else p.resolve(body);
    }
  }

  /** Sends a frame and waits for its reply body. */
  call(verb: string, frame: Buffer): Promise<Buffer> {
    if (this.dead) return Promise.reject(new VerbsError(verb, 'EIO', this.dead.message));
    return new Promise((resolve, reject) => {
      this.pending.push({ verb, resolve, reject });
      this.sock.ref();
      this.sock.write(frame);
    });
  }

  /** Sends a frame whose reply nobody waits for (a doorbell); a failure there is reported through `onError`. */
  post(verb: string, frame: Buffer, onError?: (e: Error) => void): void {
    if (this.dead) throw new VerbsError(verb, 'EIO', this.dead.message);
    this.pending.push({ verb, resolve: noop, reject: onError ?? noop });
    this.sock.write(frame);
  }

  /** Writes a frame the daemon does not answer (a pure doorbell: out_words 0). */
  ring(verb: string, frame: Buffer): void {
    if (this.dead) throw new VerbsError(verb, 'EIO', this.dead.message);
    this.sock.write(frame);
  }

  close(): void {
    this.sock.destroy();
  }
}

const noop = () => {};

/** An event stream (async events or a completion channel): fixed-size records pushed by the daemon. */
export class EventStream {
  private buf = Buffer.alloc(0);
  private waiters: Array<(b: Buffer | null) => void> = [];
  private queued: Buffer[] = [];
  private closed = false;
  private constructor(
    readonly sock: Socket,
    private readonly recordSize: number,
  ) {
    sock.on('data', (d) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      while (this.buf.length >= this.recordSize) {
        const rec = Buffer.from(this.buf.subarray(0, this.recordSize));
        this.buf = this.buf.subarray(this.recordSize);
        const w = this.waiters.shift();
        if (w) w(rec);
        else this.queued.push(rec);
      }
      if (this.waiters.length === 0) sock.unref();
    });
    sock.on('close', () => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w(null);
    });
    sock.on('error', () => sock.destroy());
    sock.unref();
  }

  /** Connects and attaches to the context's stream named by `token`. */
  static async attach(path: string, command: number, token: number, recordSize: number, verb: string): Promise<EventStream> {
    const s = await new Promise<Socket>((resolve, reject) => {
      const c = connect(path);
      c.once('connect', () => resolve(c));
      c.once('error', (e: NodeJS.ErrnoException) => reject(new VerbsError(verb, e.code ?? 'EIO', e.message)));
    });
    const f = Buffer.alloc(16);
    f.writeUInt32LE(command, 0);
    f.writeUInt16LE(4, 4);
    f.writeUInt32LE(token, 8);
    s.write(f);
    const hdr = await new Promise<Buffer>((resolve, reject) => {
      let b = Buffer.alloc(0);
      const on = (d: Buffer) => {
        b = Buffer.concat([b, d]);
        if (b.length >= 8) {
          s.off('data', on);
          if (b.length > 8) s.unshift(b.subarray(8));
          resolve(b.subarray(0, 8));
        }
      };
      s.on('data', on);
      s.once('close', () => reject(new VerbsError(verb, 'EIO', 'closed while attaching')));
    });
    const status = hdr.readInt32LE(0);
    if (status < 0) {
      s.destroy();
      throw new VerbsError(verb, -status);
    }
    return new EventStream(s, recordSize);
  }

  /** The next record, or null once the stream is closed. */
  next(): Promise<Buffer | null> {
    const q = this.queued.shift();
    if (q) return Promise.resolve(q);
    if (this.closed) return Promise.resolve(null);
    this.sock.ref();
    return new Promise((r) => this.waiters.push(r));
  }

  /** A record already received, without waiting. */
  poll(): Buffer | null {
    return this.queued.shift() ?? null;
  }

  close(): void {
    this.sock.destroy();
  }
}
