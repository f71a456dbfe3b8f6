/** errno numbers as Linux has them, and the error the daemon's handlers throw. */
import { constants } from 'node:os';

export const E = constants.errno;

/**
 * A command failed with this errno; the reply carries -errno and the daemon logs the message. `errno` is the
 * positive E constant it was made with, where the other errors of ours (common/errors.ts) have it negated: each
 * reply path negates it itself. errnoOf() reads it negated as it reads the others.
 */
export class CmdError extends Error {
  readonly code: string;
  constructor(readonly errno: number, message: string) {
    super(message);
    this.code = errnoName(errno);
  }
}

export function errnoName(n: number): string {
  for (const [k, v] of Object.entries(constants.errno)) if (v === n) return k;
  return `E${n}`;
}

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
