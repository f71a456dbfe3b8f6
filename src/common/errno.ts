/** errno numbers as Linux has them, and fail(): how the daemon's handlers refuse a command. */
import { constants } from 'node:os';
import { CmdError, errnoName } from './errors.js';

export { CmdError, errnoName };

export const E = constants.errno;

/** What glibc's strerror says for the errnos the verbs and the RDMA CM give (the name itself for others). */
export function strerror(code: string): string {
  return STRERROR[code] ?? code;
}

const STRERROR: Record<string, string> = {
  EPERM: 'Operation not permitted', ENOENT: 'No such file or directory', EIO: 'Input/output error', ENXIO: 'No such device or address',
  EAGAIN: 'Resource temporarily unavailable', ENOMEM: 'Cannot allocate memory', EACCES: 'Permission denied', ENODEV: 'No such device',
  EINVAL: 'Invalid argument', ENOSPC: 'No space left on device', EOPNOTSUPP: 'Operation not supported', EAFNOSUPPORT: 'Address family not supported by protocol',
  EADDRINUSE: 'Address already in use', EADDRNOTAVAIL: 'Cannot assign requested address', ENETUNREACH: 'Network is unreachable',
  ECONNABORTED: 'Software caused connection abort', ECONNRESET: 'Connection reset by peer', ETIMEDOUT: 'Connection timed out',
  ECONNREFUSED: 'Connection refused', EHOSTUNREACH: 'No route to host',
};

export function fail(errno: number, message: string): never {
  throw new CmdError(errno, message);
}
