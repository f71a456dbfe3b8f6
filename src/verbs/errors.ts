/** Errors of the verbs library. */
import { errnoName } from '../common/errno.js';

/**
 * A verb failed. `errno` is the Linux errno name (e.g. 'EINVAL'), `verb` the
 * libibverbs name of the call, and for a work request post, `badWr` the
 * index of the first WR that was not posted (libibverbs' bad_wr).
 */
export class VerbsError extends Error {
  readonly errno: string;
  constructor(
    readonly verb: string,
    errno: string | number,
    detail?: string,
    readonly badWr?: number,
  ) {
    const name = typeof errno === 'number' ? errnoName(errno) : errno;
    super(`${verb}: ${name}${detail ? `: ${detail}` : ''}`);
    this.errno = name;
    this.name = 'VerbsError';
  }
}
