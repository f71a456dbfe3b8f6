/**
 * The few libc calls Node does not offer, through koffi (prebuilt, no
 * install script): memfd_create, mmap/munmap, file seals, SO_PEERCRED, a
 * listening AF_UNIX socket with accept4 and a send that never waits (the
 * daemon judges each connection before Node sees it), and the AF_UNIX
 * datagram of systemd's readiness protocol, and pread/pwrite at 64-bit
 * offsets into a caller's buffer (a client's memory through /proc/<pid>/mem).
 * Everything else (open, fstat, ftruncate, close) is node:fs on raw fds.
 */
import koffi from 'koffi';
import { createRequire } from 'node:module';
import { errnoName } from '../common/errno.js';
import { ErrnoError } from '../common/errors.js';

/** The C library, for the native modules beside this one to declare their own calls in. */
export const libc = koffi.load('libc.so.6');

const memfd_create = libc.func('int memfd_create(const char *name, unsigned int flags)');
const mmap_ = libc.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, int64_t off)');
const munmap_ = libc.func('int munmap(void *addr, size_t len)');
const fcntl_ = libc.func('int fcntl(int fd, int cmd, int arg)');
const getsockopt_ = libc.func('int getsockopt(int fd, int level, int name, void *val, void *len)');
const strerror_ = libc.func('const char *strerror(int errnum)');
const sched_yield_ = libc.func('int sched_yield(void)');
const socket_ = libc.func('int socket(int domain, int type, int protocol)');
const sendto_ = libc.func('intptr_t sendto(int fd, const void *buf, size_t len, int flags, const void *addr, uint32_t addrlen)');
const close_ = libc.func('int close(int fd)');
const send_ = libc.func('intptr_t send(int fd, const void *buf, size_t len, int flags)');
const accept4_ = libc.func('int accept4(int fd, void *addr, void *addrlen, int flags)');
const bind_ = libc.func('int bind(int fd, const void *addr, uint32_t len)');
const listen_ = libc.func('int listen(int fd, int backlog)');
const connect_ = libc.func('int connect(int fd, const void *addr, uint32_t len)');
const pread_ = libc.func('intptr_t pread(int fd, void *buf, size_t n, int64_t off)');
const pwrite_ = libc.func('intptr_t pwrite(int fd, const void *buf, size_t n, int64_t off)');

const MFD_CLOEXEC = 1;
const MFD_ALLOW_SEALING = 2;
const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
const F_ADD_SEALS = 1033;
export const F_SEAL_SHRINK = 2;
export const F_SEAL_GROW = 4;
const SOL_SOCKET = 1;
const SO_PEERCRED = 17;

const require = createRequire(import.meta.url);
const osConstants = (require('node:os') as typeof import('node:os')).constants.errno as Record<string, number>;

/** A failed libc call, as Node reports one: `code` the errno's name, `errno` its negated number. */
export class SysError extends ErrnoError {
  constructor(readonly call: string, errno: number) {
    super(errno, `${call}: ${errnoName(Math.abs(errno))} (${strerror_(Math.abs(errno)) as string})`);
  }
}

function fail(call: string): never {
  throw new SysError(call, koffi.errno());
}

/** A libc call's result, or its errno as a SysError when the call failed (returned < 0). */
export function check(call: string, r: number | bigint): number {
  const n = Number(r);
  if (n < 0) fail(call);
  return n;
}

/** Creates an empty sealable memfd (size it with ftruncate). */
export function memfdCreate(name: string): number {
  const fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING) as number;
  if (fd < 0) fail('memfd_create');
  return fd;
}

/** A shared read/write mapping of a file, with an ArrayBuffer view of it. */
export interface Mapping {
  readonly ptr: unknown;
  readonly addr: bigint;
  readonly length: number;
  readonly buffer: ArrayBuffer;
  unmapped: boolean;
}

const MAP_FAILED = BigInt.asUintN(64, -1n);

/** mmap(NULL, length, RW, MAP_SHARED, fd, offset). */
export function mapShared(fd: number, length: number, offset = 0): Mapping {
  if (length <= 0) throw new SysError('mmap', osConstants.EINVAL ?? 22);
  const ptr = mmap_(null, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset);
  const addr = BigInt(koffi.address(ptr));
  if (ptr === null || addr === MAP_FAILED) fail('mmap');
  const buffer = koffi.view(ptr, length) as ArrayBuffer;
  return { ptr, addr, length, buffer, unmapped: false };
}

const MAP_PRIVATE = 2;
const MAP_ANONYMOUS = 0x20;

/** A private anonymous read/write mapping (memory whose address native calls can be given). */
export function mapAnon(length: number): Mapping {
  const ptr = mmap_(null, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  const addr = BigInt(koffi.address(ptr));
  if (ptr === null || addr === MAP_FAILED) fail('mmap');
  return { ptr, addr, length, buffer: koffi.view(ptr, length) as ArrayBuffer, unmapped: false };
}

/** munmap; after this every view of the mapping must be dead (touching it faults). */
export function unmap(m: Mapping): void {
  if (m.unmapped) return;
  m.unmapped = true;
  if ((munmap_(m.ptr, m.length) as number) !== 0) fail('munmap');
}

const F_DUPFD_CLOEXEC = 1030;

/** A close-on-exec duplicate of fd. */
export function dupFd(fd: number): number {
  const d = fcntl_(fd, F_DUPFD_CLOEXEC, 0) as number;
  if (d < 0) fail('fcntl(F_DUPFD_CLOEXEC)');
  return d;
}

const F_GETFL = 3;
const F_GET_SEALS = 1034;
export const F_SEAL_SEAL = 1;
export const F_SEAL_WRITE = 8;
export const F_SEAL_FUTURE_WRITE = 16;
export const O_ACCMODE = 3;
export const O_RDWR = 2;

/** A descriptor's file status flags (F_GETFL: its access mode among them). */
export function statusFlags(fd: number): number {
  const r = fcntl_(fd, F_GETFL, 0) as number;
  if (r < 0) fail('fcntl(F_GETFL)');
  return r;
}

/** A memfd's seals (F_GET_SEALS; EINVAL for a file that cannot have any). */
export function getSeals(fd: number): number {
  const r = fcntl_(fd, F_GET_SEALS, 0) as number;
  if (r < 0) fail('fcntl(F_GET_SEALS)');
  return r;
}

/** Adds seals to a memfd (seals live on the inode, so they bind every process that maps it). */
export function addSeals(fd: number, seals: number): void {
  if ((fcntl_(fd, F_ADD_SEALS, seals) as number) < 0) fail('fcntl(F_ADD_SEALS)');
}

const credVal = Buffer.alloc(12);
const credLen = Buffer.alloc(4);

/** The peer's credentials of a connected Unix socket (struct ucred), as the kernel vouches for them. */
export function peerCred(fd: number): { pid: number; uid: number; gid: number } {
  credLen.writeUInt32LE(12);
  if ((getsockopt_(fd, SOL_SOCKET, SO_PEERCRED, credVal, credLen) as number) !== 0) fail('getsockopt(SO_PEERCRED)');
  return { pid: credVal.readInt32LE(0), uid: credVal.readUInt32LE(4), gid: credVal.readUInt32LE(8) };
}

const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;

/**
 * send(2) of what fits now, never waiting and never raising SIGPIPE: the bytes sent, or -errno (a peer
 * already gone is EPIPE, an answer, not an exception).
 */
export function sendNow(fd: number, b: Buffer): number {
  const n = Number(send_(fd, b, b.length, MSG_DONTWAIT | MSG_NOSIGNAL));
  return n < 0 ? -koffi.errno() : n;
}

/**
 * pread(2) of n bytes at file offset `off` into buf from its first byte (koffi passes a typed array as a
 * pointer to its own first byte, byteOffset included, without copying): the bytes read, or -errno. `off` is a
 * safe integer, carried exactly in the int64_t; the caller makes sure buf holds n bytes.
 */
export function preadAt(fd: number, buf: Uint8Array, n: number, off: number): number {
  const r = Number(pread_(fd, buf, n, off));
  return r < 0 ? -koffi.errno() : r;
}

/** pwrite(2) of buf's first n bytes at file offset `off`: the bytes written, or -errno (as preadAt). */
export function pwriteAt(fd: number, buf: Uint8Array, n: number, off: number): number {
  const r = Number(pwrite_(fd, buf, n, off));
  return r < 0 ? -koffi.errno() : r;
}

/**
 * sched_yield(2): a polling loop gives its CPU to whoever else can run. On a
 * machine with fewer cores than busy processes, the daemon (our HCA) is one of
 * those, and a client that spins without yielding starves the device it waits on.
 */
export function schedYield(): void {
  sched_yield_();
}

const nanosleep_ = libc.func('int nanosleep(const void *req, void *rem)');
/** struct timespec { tv_sec 0, tv_nsec 1000 } */
const ONE_US = (() => {
  const b = Buffer.alloc(16);
  b.writeBigInt64LE(1000n, 8);
  return b;
})();

/**
 * nanosleep(2) of a microsecond (the timer slack makes it about 50): unlike a yield, the calling thread leaves
 * its CPU idle for a moment, and an idle CPU pulls a task queued behind another on a busy one (the kernel's
 * idle balancing). A poller that has waited long gives the daemon queued behind a CPU hog its core this way.
 */
export function pauseBriefly(): void {
  nanosleep_(ONE_US, null);
}

const syscall_ = libc.func('long syscall(long number, ...)');
/** sched_setattr's number: x86-64's, aarch64's */
const SYS_SCHED_SETATTR = process.arch === 'arm64' ? 274 : 314;
/** struct sched_attr (linux/sched/types.h), up to sched_period */
const SCHED_ATTR_SIZE = 48;

/**
 * sched_setattr(2) of the calling thread: the normal policy (SCHED_OTHER) at `nice`, with a requested slice of
 * `sliceNs` (sched_runtime: since Linux 6.12, EEVDF lets a task with a shorter slice preempt the running one
 * when it wakes; older kernels ignore it).
 */
export function setFairSchedule(nice: number, sliceNs: number): void {
  const a = Buffer.alloc(SCHED_ATTR_SIZE);
  a.writeUInt32LE(SCHED_ATTR_SIZE, 0); // size
  a.writeUInt32LE(0, 4); // sched_policy: SCHED_OTHER
  a.writeInt32LE(nice, 16); // sched_nice
  a.writeBigUInt64LE(BigInt(sliceNs), 24); // sched_runtime
  if (Number(syscall_(SYS_SCHED_SETATTR, 'int', 0, 'void *', a, 'unsigned int', 0)) !== 0) fail('sched_setattr');
}

const execvpe_ = libc.func('int execvpe(const char *file, const char **argv, const char **envp)');
const signal_ = libc.func('void *signal(int sig, void *handler)');
const sigprocmask_ = libc.func('int sigprocmask(int how, const void *set, void *old)');
/** signals Node sets to SIG_IGN at start-up (an ignored signal stays ignored across execve): SIGPIPE, SIGXFSZ */
const NODE_IGNORES = [13, 25];
const SIG_SETMASK = 2;
const F_GETFD = 1;
const F_SETFD = 2;

/**
 * Replaces this process by `file` (searched in PATH as execvp does), as env(1) does: same pid, so a signal
 * for us is the program's and nothing outlives us. What Node changed that execve would carry over is undone
 * first: the signals it ignores are default again, no signal is blocked, stdio is inherited. Returns only on failure, with
 * the errno's name (ENOENT, EACCES, ...).
 */
export function execInPlace(file: string, argv: string[], env: NodeJS.ProcessEnv): string {
  for (const sig of NODE_IGNORES) signal_(sig, null);
  // Node marks the descriptors it started with close-on-exec: the program's stdio would be closed under it
  for (const fd of [0, 1, 2]) if (fcntl_(fd, F_GETFD, 0) >= 0) fcntl_(fd, F_SETFD, 0);
  sigprocmask_(SIG_SETMASK, Buffer.alloc(128), null);
  const envp = Object.entries(env).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${v}`);
  execvpe_(file, [file, ...argv, null], [...envp, null]);
  return errnoName(koffi.errno());
}

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0x80000;

/**
 * sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET (a path, or
 * "@name" for the abstract namespace). False when not under a service manager
 * that asked for it, or when the send failed (readiness is then the service
 * manager's time-out to notice, not a reason to stop serving).
 */
export function sdNotify(state: string, socketPath = process.env.NOTIFY_SOCKET): boolean {
  if (!socketPath || (socketPath[0] !== '/' && socketPath[0] !== '@')) return false;
  const path = Buffer.from(socketPath, 'utf8');
  if (path.length > 107) return false;
  if (path[0] === 0x40) path[0] = 0; // '@': abstract, no trailing NUL
  const sa = Buffer.alloc(2 + 108);
  sa.writeUInt16LE(AF_UNIX, 0);
  path.copy(sa, 2);
  const saLen = 2 + path.length + (path[0] === 0 ? 0 : 1);
  const fd = socket_(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) return false;
  try {
    const msg = Buffer.from(state, 'utf8');
    return Number(sendto_(fd, msg, msg.length, 0, sa, saLen)) === msg.length;
  } finally {
    close_(fd);
  }
}

const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;

/** A non-blocking, close-on-exec AF_UNIX stream socket bound to `path` and listening; the caller accepts on it. */
export function listenUnix(path: string, backlog: number): number {
  const p = Buffer.from(path, 'utf8');
  if (p.length > 107) throw new SysError(`bind ${path}`, osConstants.ENAMETOOLONG ?? 36);
  const sa = Buffer.alloc(2 + 108);
  sa.writeUInt16LE(AF_UNIX, 0);
  p.copy(sa, 2);
  const fd = socket_(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0) as number;
  if (fd < 0) fail('socket(AF_UNIX)');
  if ((bind_(fd, sa, 2 + p.length + 1) as number) !== 0 || (listen_(fd, backlog) as number) !== 0) {
    const e = new SysError(`listen ${path}`, koffi.errno());
    close_(fd);
    throw e;
  }
  return fd;
}

/**
 * A non-blocking, close-on-exec AF_UNIX stream socket connected to `path` (a Unix connect completes at once,
 * or fails: EAGAIN when the listener's queue is full): its descriptor, or -errno.
 */
export function connectUnix(path: string): number {
  const p = Buffer.from(path, 'utf8');
  if (p.length > 107) return -(osConstants.ENAMETOOLONG ?? 36);
  const sa = Buffer.alloc(2 + 108);
  sa.writeUInt16LE(AF_UNIX, 0);
  p.copy(sa, 2);
  const fd = socket_(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0) as number;
  if (fd < 0) return -koffi.errno();
  if ((connect_(fd, sa, 2 + p.length + 1) as number) !== 0) {
    const e = koffi.errno();
    close_(fd);
    return -e;
  }
  return fd;
}

/** accept4(2) of one waiting connection, non-blocking and close-on-exec: its descriptor, or -errno (-EAGAIN: none waits). */
export function acceptNow(fd: number): number {
  const c = accept4_(fd, null, null, SOCK_CLOEXEC | SOCK_NONBLOCK) as number;
  return c < 0 ? -koffi.errno() : c;
}

/** close(2) of a descriptor no Node object holds. */
export function closeFd(fd: number): void {
  close_(fd);
}

/** The file descriptor under a connected Node socket (for SO_PEERCRED). Node keeps it in the socket's private handle. */
export function socketFd(s: import('node:net').Socket): number {
  const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new SysError('socketFd', osConstants.EBADF ?? 9);
  return fd;
}

/** The private handle of a bound Node dgram socket: its descriptor, and the switch of Node's own reading. */
interface UdpHandle {
  fd?: number;
  recvStart?: () => number;
  recvStop?: () => number;
}
function dgramHandle(s: import('node:dgram').Socket): UdpHandle | undefined {
  const state = Object.getOwnPropertySymbols(s).find((k) => k.description === 'state symbol');
  return state ? (s as unknown as Record<symbol, { handle?: UdpHandle }>)[state]?.handle : undefined;
}

/** The file descriptor under a bound Node dgram socket (for the socket options and batched reads Node does not offer). */
export function dgramFd(s: import('node:dgram').Socket): number {
  const fd = dgramHandle(s)?.fd;
  if (typeof fd !== 'number' || fd < 0) throw new SysError('dgramFd', osConstants.EBADF ?? 9);
  return fd;
}

/**
 * Stops (false) or restarts (true) Node's own reading of a bound dgram socket, so its datagrams are left for
 * the caller's reads; false when this Node keeps no such switch where we look.
 */
export function dgramReading(s: import('node:dgram').Socket, on: boolean): boolean {
  const h = dgramHandle(s);
  const f = on ? h?.recvStart : h?.recvStop;
  if (typeof f !== 'function') return false;
  return f.call(h) === 0;
}
