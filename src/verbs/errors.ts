/** Errors of the verbs library. */
import { errnoName } from '../common/errno.js';
import { ErrnoError } from '../common/errors.js';

/**
 * A verb failed, as Node reports a failed system call: `code` is the Linux
 * errno name (`'EINVAL'`), `errno` its negated number (-22), `verb` the
 * libibverbs name of the call. For a work request post, `badWr` is the index
 * of the first WR that was not posted (libibverbs' bad_wr) and `wr` that
 * work request.
 */
export class VerbsError extends ErrnoError {
  /** the work request that was not posted (postSend / postRecv / postSrqRecv) */
  wr?: unknown;
  constructor(
    readonly verb: string,
    errno: string | number,
    detail?: string,
    readonly badWr?: number,
  ) {
    super(errno, `${verb}: ${typeof errno === 'number' ? errnoName(Math.abs(errno)) : errno}${detail ? `: ${detail}` : ''}`);
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
