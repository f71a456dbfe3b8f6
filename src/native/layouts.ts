/**
 * The socket structs the native calls share with the kernel, as struct()
 * data (see abi/layout.ts; abi/ itself is the provider ABI between daemon
 * and library, these are libc's). Linux LP64 (x86-64, aarch64): a pointer
 * and a size_t are 8 bytes, so each is a u64 here. Tests pin the computed
 * offsets to the glibc headers'.
 */
import { offsets, struct } from '../abi/layout.js';

/** struct iovec (bits/types/struct_iovec.h) */
export const IOVEC = struct('iovec', [['iov_base', 'u64'], ['iov_len', 'u64']]);
export const IOV = offsets(IOVEC);

/** struct msghdr (bits/socket.h) */
export const MSGHDR = struct('msghdr', [
  ['msg_name', 'u64'],
  ['msg_namelen', 'u32'],
  ['msg_iov', 'u64'],
  ['msg_iovlen', 'u64'],
  ['msg_control', 'u64'],
  ['msg_controllen', 'u64'],
  ['msg_flags', 's32'],
]);
export const MSG = offsets(MSGHDR);

/** struct mmsghdr (bits/socket.h): one message of sendmmsg/recvmmsg and the bytes it moved */
export const MMSGHDR = struct('mmsghdr', [['msg_hdr', MSGHDR], ['msg_len', 'u32']]);
export const MMSG = offsets(MMSGHDR);

/**
 * One sendmmsg/recvmmsg vector entry's fields as plain numbers (from the entry's start), and iovec's:
 * the per-message loops do arithmetic on numbers only.
 */
export const MM_SIZE = MMSG.SIZE;
export const MM_NAME = MMSG.msg_hdr + MSG.msg_name;
export const MM_NAMELEN = MMSG.msg_hdr + MSG.msg_namelen;
export const MM_IOV = MMSG.msg_hdr + MSG.msg_iov;
export const MM_IOVLEN = MMSG.msg_hdr + MSG.msg_iovlen;
export const MM_CONTROL = MMSG.msg_hdr + MSG.msg_control;
export const MM_CONTROLLEN = MMSG.msg_hdr + MSG.msg_controllen;
export const MM_FLAGS = MMSG.msg_hdr + MSG.msg_flags;
export const MM_LEN = MMSG.msg_len;
export const IOV_SIZE = IOV.SIZE;
export const IOV_BASE = IOV.iov_base;
export const IOV_LEN = IOV.iov_len;

/** struct cmsghdr (bits/socket.h): a control message's header; its data follows at CMSG.SIZE */
export const CMSGHDR = struct('cmsghdr', [['cmsg_len', 'u64'], ['cmsg_level', 's32'], ['cmsg_type', 's32']]);
export const CMSG = offsets(CMSGHDR);

/** CMSG_ALIGN: control messages are laid out on size_t boundaries. */
const cmsgAlign = (n: number): number => Math.ceil(n / 8) * 8;
/** CMSG_LEN: cmsg_len of a control message carrying `n` bytes. */
export const cmsgLen = (n: number): number => cmsgAlign(CMSG.SIZE) + n;
/** CMSG_SPACE: the room a control message carrying `n` bytes takes in msg_control. */
export const cmsgSpace = (n: number): number => cmsgAlign(CMSG.SIZE) + cmsgAlign(n);

/** struct pollfd (sys/poll.h) */
export const POLLFD = struct('pollfd', [['fd', 's32'], ['events', 's16'], ['revents', 's16']]);
export const PFD = offsets(POLLFD);

/** struct sock_filter (linux/filter.h): one classic BPF instruction */
export const SOCK_FILTER = struct('sock_filter', [['code', 'u16'], ['jt', 'u8'], ['jf', 'u8'], ['k', 'u32']]);
export const FILTER = offsets(SOCK_FILTER);

/** struct sock_fprog (linux/filter.h): what SO_ATTACH_FILTER takes */
export const SOCK_FPROG = struct('sock_fprog', [['len', 'u16'], ['filter', 'u64']]);
export const FPROG = offsets(SOCK_FPROG);

/** struct sockaddr_in (netinet/in.h); sin_port and sin_addr are in network order */
export const SOCKADDR_IN = struct('sockaddr_in', [['sin_family', 'u16'], ['sin_port', 'u16'], ['sin_addr', { bytes: 4 }], ['sin_zero', { bytes: 8 }]]);
export const SIN = offsets(SOCKADDR_IN);

/** struct sockaddr_in6 (netinet/in.h); sin6_port, sin6_flowinfo and sin6_addr are in network order */
export const SOCKADDR_IN6 = struct('sockaddr_in6', [
  ['sin6_family', 'u16'],
  ['sin6_port', 'u16'],
  ['sin6_flowinfo', 'u32'],
  ['sin6_addr', { bytes: 16 }],
  ['sin6_scope_id', 'u32'],
]);
export const SIN6 = offsets(SOCKADDR_IN6);
