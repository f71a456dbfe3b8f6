/**
 * Sockets Node does not read, waited on together: one poll() on a worker
 * thread of koffi's (libuv's pool) for all of them, with a pipe that wakes
 * it when the set changes.
 */
import { check, libc, mapAnon, SysError, type Mapping } from './libc.js';
import { PFD } from './layouts.js';

const poll_ = libc.func('int poll(void *fds, unsigned long nfds, int timeout)');
const pipe2_ = libc.func('int pipe2(int *fds, int flags)');
const read_ = libc.func('intptr_t read(int fd, void *buf, size_t n)');
const write_ = libc.func('intptr_t write(int fd, const void *buf, size_t n)');

const POLLIN = 1;
const O_NONBLOCK = 0o4000;
const O_CLOEXEC = 0o2000000;
const EINVAL = 22;
/** pollfds one wait can hold (the wake pipe's among them) */
const MAX_WAITS = 256;

/**
 * Each socket's `ready` runs on the main thread, once, when it is readable;
 * then it is out of the set until waited on again. An empty set holds no
 * thread, and a waiting one costs no CPU. A thread's hop is a wake-up more
 * than Node's own epoll: this is for sockets that are mostly read while
 * busy anyway.
 */
export class ReadableSet {
  private readonly waits = new Map<number, () => void>();
  /** the pollfds, where the worker thread can see them: the wake pipe's first, then the sockets' */
  private readonly m: Mapping = mapAnon(MAX_WAITS * PFD.SIZE);
  private readonly dv = new DataView(this.m.buffer);
  private readonly pipe: [number, number];
  private polling = false;
  private readonly byte = Buffer.alloc(64);

  constructor() {
    const fds = new Int32Array(2);
    check('pipe2', pipe2_(fds, O_NONBLOCK | O_CLOEXEC) as number);
    this.pipe = [fds[0]!, fds[1]!];
    // libuv joins its pool threads as the process exits: a poll() still waiting would hold the exit for ever
    // (an uncaught exception would leave a process that answers nothing and ignores SIGTERM)
    process.once('exit', () => {
      this.waits.clear();
      write_(this.pipe[1], this.byte, 1);
    });
  }

  /** Calls `ready` once `fd` is readable (at most MAX_WAITS - 1 sockets wait at once). */
  wait(fd: number, ready: () => void): void {
    if (!this.waits.has(fd) && this.waits.size >= MAX_WAITS - 1) throw new SysError('ReadableSet.wait', EINVAL);
    this.waits.set(fd, ready);
    this.changed();
  }

  /** `fd` is no longer waited on (it is about to be closed). */
  cancel(fd: number): void {
    if (this.waits.delete(fd)) this.changed();
  }

  private changed(): void {
    // a poll under way does not see the new set: the pipe ends it, and its return starts the next
    if (this.polling) write_(this.pipe[1], this.byte, 1);
    else this.start();
  }

  private start(): void {
    if (this.waits.size === 0) return;
    const dv = this.dv;
    let n = 0;
    for (const fd of [this.pipe[0], ...this.waits.keys()]) {
      const p = n * PFD.SIZE;
      dv.setInt32(p + PFD.fd, fd, true);
      dv.setInt16(p + PFD.events, POLLIN, true);
      dv.setInt16(p + PFD.revents, 0, true);
      n++;
    }
    this.polling = true;
    poll_.async(this.m.ptr, n, -1, (err: unknown, r: number) => {
      this.polling = false;
      if (!err && r > 0) {
        // the pipe only woke us; what it holds is spent
        if (dv.getInt16(PFD.revents, true) !== 0) while (Number(read_(this.pipe[0], this.byte, this.byte.length)) > 0);
        const ready: (() => void)[] = [];
        for (let i = 1; i < n; i++) {
          const p = i * PFD.SIZE;
          if (dv.getInt16(p + PFD.revents, true) === 0) continue;
          const fd = dv.getInt32(p + PFD.fd, true);
          const f = this.waits.get(fd);
          if (f) {
            this.waits.delete(fd);
            ready.push(f);
          }
        }
        for (const f of ready) f();
      }
      if (!this.polling) this.start();
    });
  }
}

let readables: ReadableSet | null = null;
/** The process's ReadableSet. */
export function readableSet(): ReadableSet {
  return (readables ??= new ReadableSet());
}
