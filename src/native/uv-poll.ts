/**
 * A socket Node does not read, waited on by Node's own event loop: a libuv
 * poll handle (uv_poll_t) on the main loop, through the uv_* functions the
 * node binary exports for addons. When the socket turns readable, the loop's
 * own epoll_wait returns and the callback runs on the main thread: one
 * wake-up, as for a socket Node reads itself. ReadableSet (a poll() on a pool
 * thread, which then wakes the main thread) costs two, and a thread's hop
 * besides; the transport waits on its port this way between streams, where a
 * lone frame (a round trip's) is the common case.
 *
 * libuv keeps one watcher per descriptor number, and the descriptor may also
 * be Node's (a dgram socket whose reading was stopped): the handle polls a
 * dup() of it, a number of its own on the same socket.
 */
import koffi from 'koffi';
import { check, libc, mapAnon, type Mapping } from './libc.js';

import { ReadableSet, readableSet } from './readable-set.js';

/** libuv's functions, from the node binary (or the libuv it links): null where they cannot be found. */
function uvFunctions() {
  try {
    const self = koffi.load(null as unknown as string);
    return {
      PollCb: koffi.proto('void uv_poll_cb(void *handle, int status, int events)'),
      uv_default_loop: self.func('void *uv_default_loop(void)'),
      uv_handle_size: self.func('size_t uv_handle_size(int type)'),
      uv_poll_init: self.func('int uv_poll_init(void *loop, void *handle, int fd)'),
      uv_poll_start: self.func('int uv_poll_start(void *handle, int events, uv_poll_cb *cb)'),
      uv_poll_stop: self.func('int uv_poll_stop(void *handle)'),
      uv_close: self.func('void uv_close(void *handle, void *close_cb)'),
    };
  } catch {
    return null;
  }
}
const uv = uvFunctions();
const dup_ = libc.func('int dup(int fd)');
const close_ = libc.func('int close(int fd)');

/** uv_handle_type's UV_POLL, and uv_poll_event's UV_READABLE */
const UV_POLL = 8;
const UV_READABLE = 1;

/** One socket's poll handle: armed by wait(), disarmed when it fires or is cancelled. */
interface Poller {
  readonly fd: number;
  readonly dup: number;
  readonly mem: Mapping;
  ready: (() => void) | null;
}

export class UvPollSet {
  private readonly byFd = new Map<number, Poller>();
  /** handles by address, for the one callback all of them share */
  private readonly byHandle = new Map<bigint, Poller>();
  private readonly size = Number(uv!.uv_handle_size(UV_POLL));
  private readonly loop = uv!.uv_default_loop();
  private readonly cb = koffi.register((handle: unknown, status: number, _events: number) => this.fired(handle, status), koffi.pointer(uv!.PollCb));

  /** Calls `ready` once, on the main thread, when `fd` is readable (or its poll failed: the reader finds out). */
  wait(fd: number, ready: () => void): void {
    let p = this.byFd.get(fd);
    if (!p) {
      const dup = check('dup', dup_(fd) as number);
      const mem = mapAnon(this.size);
      const r = uv!.uv_poll_init(this.loop, mem.ptr, dup) as number;
      if (r !== 0) {
        close_(dup);
        throw new Error(`uv_poll_init(${fd}): libuv error ${r}`);
      }
      p = { fd, dup, mem, ready: null };
      this.byFd.set(fd, p);
      this.byHandle.set(mem.addr, p);
    }
    p.ready = ready;
    const r = uv!.uv_poll_start(p.mem.ptr, UV_READABLE, this.cb) as number;
    if (r !== 0) throw new Error(`uv_poll_start(${fd}): libuv error ${r}`);
  }

  /** `fd` is no longer waited on (it is about to be closed): its handle is closed, its dup too. */
  cancel(fd: number): void {
    const p = this.byFd.get(fd);
    if (!p) return;
    this.byFd.delete(fd);
    this.byHandle.delete(p.mem.addr);
    p.ready = null;
    uv!.uv_poll_stop(p.mem.ptr);
    // the handle's memory stays mapped: libuv may still touch it until the close completes (a few bytes)
    uv!.uv_close(p.mem.ptr, null);
    close_(p.dup);
  }

  private fired(handle: unknown, _status: number): void {
    const p = this.byHandle.get(BigInt(koffi.address(handle)));
    if (!p) return;
    // one-shot, as ReadableSet: the reader reads until the socket is empty, then waits again
    uv!.uv_poll_stop(p.mem.ptr);
    const f = p.ready;
    p.ready = null;
    f?.();
  }
}

let polls: UvPollSet | ReadableSet | null = null;
/** The process's UvPollSet; a ReadableSet (a wake-up more per frame) where libuv's functions cannot be found. */
export function uvPollSet(): Pick<UvPollSet, 'wait' | 'cancel'> {
  return (polls ??= uv ? new UvPollSet() : readableSet());
}
