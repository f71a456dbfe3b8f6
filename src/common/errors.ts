/**
 * The errors softverbs throws, and how a catch block reads whatever it caught. Each error of ours is shaped
 * as Node's system errors are (`code: 'ENOENT'`, `errno: -2`), so one catch reads ours and Node's alike and
 * branches on `code`, never on the message.
 */
import { constants } from 'node:os';
import { getSystemErrorMap, inspect } from 'node:util';

const ERRNO = constants.errno as Readonly<Record<string, number>>;

/** The errno a name stands for, as a negative number (libuv's names too: ESHUTDOWN); 0 for a name that is none. */
function errnoOfName(code: string): number {
  const n = ERRNO[code];
  if (n !== undefined) return -n;
  for (const [k, [name]] of getSystemErrorMap()) if (name === code) return k;
  return 0;
}

/**
 * Where Linux has two names for one errno, the one its RDMA stack says: 95 is EOPNOTSUPP (what the kernel's
 * uverbs and rdma-core return for an unsupported request), not Node's first-listed ENOTSUP.
 */
const PREFERRED: Readonly<Record<number, string>> = { [ERRNO.EOPNOTSUPP!]: 'EOPNOTSUPP' };

/** The name of a (positive) errno: 'EINVAL' for 22, `E<n>` for a number Linux has no name for. */
export function errnoName(n: number): string {
  const p = PREFERRED[n];
  if (p !== undefined) return p;
  for (const [k, v] of Object.entries(ERRNO)) if (v === n) return k;
  return `E${n}`;
}

/** An error with an errno: `code` its name ('EINVAL'), `errno` its negated number (-22). Given either, it works out the other. */
export class ErrnoError extends Error {
  readonly code: string;
  readonly errno: number;
  constructor(errno: string | number, message: string) {
    super(message);
    this.code = typeof errno === 'number' ? errnoName(Math.abs(errno)) : errno;
    this.errno = typeof errno === 'number' ? -Math.abs(errno) : errnoOfName(errno);
  }
}

/** A command failed with this errno (given as the positive E constant): the reply carries `errno`, the daemon logs the message. */
export class CmdError extends ErrnoError {
  constructor(errno: number, message: string) {
    super(errno, message);
  }
}

/** A command line or configuration that cannot be used: the tool says what is wrong (and how it is used) and exits. */
export class UsageError extends ErrnoError {
  constructor(message: string) {
    super('EINVAL', message);
  }
}

/**
 * A tool's run failed and the tool said why: the message is the tool's own text (rdma-core's words), printed as
 * it is before the tool exits 1. `code` is what kind of failure it was, EIO when nothing more is known.
 */
export class Fail extends ErrnoError {
  constructor(message: string, code = 'EIO') {
    super(code, message);
  }
}

function field(e: unknown, key: 'code' | 'errno' | 'message'): unknown {
  return typeof e === 'object' && e !== null ? Reflect.get(e, key) : undefined;
}

/** The `code` of what was caught (ours, Node's: 'ENOENT', 'ERR_INVALID_ARG_TYPE'), or undefined if it has none. */
export function codeOf(e: unknown): string | undefined {
  const c = field(e, 'code');
  return typeof c === 'string' ? c : undefined;
}

/**
 * The errno of what was caught as a negative number: its `errno` (ours, Node's system errors), else the errno
 * its `code` names; undefined when it has neither (a bug's TypeError, a thrown string).
 */
export function errnoOf(e: unknown): number | undefined {
  const n = field(e, 'errno');
  if (typeof n === 'number' && Number.isInteger(n) && n !== 0) return -Math.abs(n);
  const c = codeOf(e);
  return c === undefined ? undefined : errnoOfName(c) || undefined;
}

/** The message of what was caught; a thrown non-Error as Node would print it. */
export function messageOf(e: unknown): string {
  const m = field(e, 'message');
  if (typeof m === 'string') return m;
  return typeof e === 'string' ? e : inspect(e);
}

/** What was caught as an Error, for a handler that takes one (a thrown non-Error becomes one saying what it was). */
export function asError(e: unknown): Error {
  return e instanceof Error ? e : new Error(messageOf(e));
}
