/**
 * Descriptors across an AF_UNIX stream socket (SCM_RIGHTS), which Node's
 * sockets do not carry: one message with a few descriptors, sent and
 * received without waiting. The msghdr, its iovec and its control buffer
 * live in one mapping of ours, so the pointers inside them are real
 * addresses.
 */
import koffi from 'koffi';
import { libc, mapAnon, type Mapping } from './libc.js';
import { CMSG, cmsgLen, cmsgSpace, IOV, MSG } from './layouts.js';

const sendmsg_ = libc.func('intptr_t sendmsg(int fd, void *msg, int flags)');
const recvmsg_ = libc.func('intptr_t recvmsg(int fd, void *msg, int flags)');
const close_ = libc.func('int close(int fd)');

const SOL_SOCKET = 1;
const SCM_RIGHTS = 1;
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;
const MSG_CMSG_CLOEXEC = 0x40000000;
const MSG_CTRUNC = 0x8;

/** The most one message carries. */
export const FD_MSG_MAX = 2048;

/** the control buffer holds room for a few descriptors: a message with more is truncated by the kernel (MSG_CTRUNC), the extras never ours */
export const CONTROL_FDS = 8;
/** the most one message sends */
const SEND_FDS = 16;
const HDR_AT = 0;
const IOV_AT = 64;
const CTL_AT = 128;
const DATA_AT = 512;
if (MSG.SIZE > IOV_AT || IOV_AT + IOV.SIZE > CTL_AT || CTL_AT + cmsgSpace(4 * Math.max(CONTROL_FDS, SEND_FDS)) > DATA_AT) throw new Error('fd-pass: scratch layout overlaps');

let scratch: { m: Mapping; dv: DataView; u8: Uint8Array } | null = null;
function buf() {
  if (!scratch) {
    const m = mapAnon(DATA_AT + FD_MSG_MAX);
    scratch = { m, dv: new DataView(m.buffer), u8: new Uint8Array(m.buffer) };
  }
  return scratch;
}

function header(len: number, controlLen: number): void {
  const { m, dv } = buf();
  const base = m.addr;
  new Uint8Array(m.buffer, 0, DATA_AT).fill(0);
  dv.setBigUint64(HDR_AT + MSG.msg_iov, base + BigInt(IOV_AT), true);
  dv.setBigUint64(HDR_AT + MSG.msg_iovlen, 1n, true);
  dv.setBigUint64(IOV_AT + IOV.iov_base, base + BigInt(DATA_AT), true);
  dv.setBigUint64(IOV_AT + IOV.iov_len, BigInt(len), true);
  if (controlLen) {
    dv.setBigUint64(HDR_AT + MSG.msg_control, base + BigInt(CTL_AT), true);
    dv.setBigUint64(HDR_AT + MSG.msg_controllen, BigInt(controlLen), true);
  }
}

/** Sends `data` (at most FD_MSG_MAX bytes) with `fd` attached (none when < 0): bytes sent, or -errno. Never waits. */
export function sendWithFd(sock: number, data: Uint8Array, fd: number): number {
  return sendWithFds(sock, data, fd >= 0 ? [fd] : []);
}

/** Sends `data` with the descriptors `fds` attached (at most 16): bytes sent, or -errno. Never waits. */
export function sendWithFds(sock: number, data: Uint8Array, fds: readonly number[]): number {
  if (data.length > FD_MSG_MAX) return -90; // EMSGSIZE
  if (fds.length > SEND_FDS) return -22; // EINVAL
  const { m, dv, u8 } = buf();
  header(data.length, fds.length ? cmsgSpace(4 * fds.length) : 0);
  u8.set(data, DATA_AT);
  if (fds.length) {
    dv.setBigUint64(CTL_AT + CMSG.cmsg_len, BigInt(cmsgLen(4 * fds.length)), true);
    dv.setInt32(CTL_AT + CMSG.cmsg_level, SOL_SOCKET, true);
    dv.setInt32(CTL_AT + CMSG.cmsg_type, SCM_RIGHTS, true);
    fds.forEach((fd, i) => dv.setInt32(CTL_AT + cmsgLen(0) + 4 * i, fd, true));
  }
  const n = Number(sendmsg_(sock, m.ptr, MSG_DONTWAIT | MSG_NOSIGNAL));
  return n < 0 ? -koffi.errno() : n;
}

export interface Received {
  /** bytes received (0: the peer closed), or -errno */
  n: number;
  data: Buffer;
  /** the descriptors that came with them, in order (ours now, close-on-exec) */
  fds: number[];
  /**
   * descriptors were lost on the way (MSG_CTRUNC: more came than there was room for, or this process's table
   * is full); those that did arrive are closed, and the message is not to be acted on
   */
  truncated: boolean;
  /** how many descriptors arrived (those of a truncated message closed again): fewer than CONTROL_FDS with truncated means this process's table is full */
  arrived: number;
}

/** Receives one message of at most FD_MSG_MAX bytes and the descriptors it carried (at most CONTROL_FDS); never waits. */
export function recvWithFds(sock: number): Received {
  const { m, dv, u8 } = buf();
  header(FD_MSG_MAX, cmsgSpace(4 * CONTROL_FDS));
  const n = Number(recvmsg_(sock, m.ptr, MSG_DONTWAIT | MSG_CMSG_CLOEXEC));
  if (n < 0) return { n: -koffi.errno(), data: Buffer.alloc(0), fds: [], truncated: false, arrived: 0 };
  const fds: number[] = [];
  const controlLen = Number(dv.getBigUint64(HDR_AT + MSG.msg_controllen, true));
  // every descriptor that arrived is ours to close
  for (let at = CTL_AT; at + CMSG.SIZE <= CTL_AT + controlLen; ) {
    const len = Number(dv.getBigUint64(at + CMSG.cmsg_len, true));
    if (len < cmsgLen(0)) break;
    if (dv.getInt32(at + CMSG.cmsg_level, true) === SOL_SOCKET && dv.getInt32(at + CMSG.cmsg_type, true) === SCM_RIGHTS) {
      for (let p = at + cmsgLen(0); p + 4 <= at + len; p += 4) fds.push(dv.getInt32(p, true));
    }
    at += cmsgSpace(len - cmsgLen(0));
  }
  const truncated = (dv.getInt32(HDR_AT + MSG.msg_flags, true) & MSG_CTRUNC) !== 0;
  const arrived = fds.length;
  if (truncated) for (const fd of fds.splice(0)) close_(fd);
  return { n, data: Buffer.from(u8.subarray(DATA_AT, DATA_AT + n)), fds, truncated, arrived };
}
