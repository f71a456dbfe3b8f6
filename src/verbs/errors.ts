/** Errors of the verbs library. */
import { constants } from 'node:os';
import { errnoName } from '../common/errno.js';

/**
 * A verb failed, as Node reports a failed system call: `code` is the Linux
 * errno name (`'EINVAL'`), `errno` its negated number (-22), `verb` the
 * libibverbs name of the call. For a work request post, `badWr` is the index
 * of the first WR that was not posted (libibverbs' bad_wr) and `wr` that
 * work request.
 */
export class VerbsError extends Error {
  readonly code: string;
  readonly errno: number;
  /** the work request that was not posted (postSend / postRecv / postSrqRecv) */
  wr?: unknown;
  constructor(
    readonly verb: string,
    errno: string | number,
    detail?: string,
    readonly badWr?: number,
  ) {
    const code = typeof errno === 'number' ? errnoName(errno) : errno;
    super(`${verb}: ${code}${detail ? `: ${detail}` : ''}`);
    this.code = code;
    this.errno = typeof errno === 'number' ? -Math.abs(errno) : -((constants.errno as Record<string, number>)[code] ?? 0);
    this.name = 'VerbsError';
  }
}

/**
 * Restarts an error's stack here. A reply is matched to its request in the socket's data handler, so the
 * error a verb rejects with was made there; re-captured after the await, its stack runs through the
 * caller's awaits (V8's async stack traces) instead.
 */
export function atCaller<E extends Error>(e: E): E {
  Error.captureStackTrace(e);
  return e;
}
