/**
 * A client's memory in a memfd of its own: the client hands the descriptor
 * over (the descriptor exchange's PUT_MEMFD, SCM_RIGHTS), so the daemon
 * never opens anything of another process and needs no privilege over it.
 * What arrives is judged before it is held: a memfd (not a socket, FIFO,
 * device or plain file, whose reads could block or whose pages could go),
 * open for reading and writing, sealable, sealed here against shrinking and
 * growing (so the pages under our mapping can never vanish and SIGBUS the
 * daemon) and not against writes (we map it shared and writable). The one
 * command that names it maps the span it needs, checked against the size.
 */
import { fstatSync, readlinkSync } from 'node:fs';
import { E, fail } from '../common/errno.js';
import { messageOf } from '../common/errors.js';
import {
  addSeals, F_SEAL_FUTURE_WRITE, F_SEAL_GROW, F_SEAL_SHRINK, F_SEAL_WRITE, getSeals, mapShared, type Mapping, O_ACCMODE, O_RDWR, statusFlags, SysError,
} from '../native/libc.js';

const PAGE = 4096;

export interface ClientMap {
  mapping: Mapping;
  /** Where the asked-for offset landed inside the mapping. */
  delta: number;
}

/** What a descriptor is, in words for an error message (its /proc/self/fd link: "socket:[…]", "pipe:[…]", a path). */
function describe(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return 'unnamed';
  }
}

/**
 * Judges a descriptor a client passed as a memfd for the daemon to map (see above) and seals it: its size,
 * which the seals fix for good. EINVAL for anything else, EACCES for a memfd open read-only. Only looks at
 * the descriptor: never reads from it, so a FIFO or socket costs nothing.
 */
export function checkMemfd(fd: number, what: string): number {
  const link = describe(fd);
  const st = fstatSync(fd);
  if (!link.startsWith('/memfd:') || !st.isFile()) fail(E.EINVAL, `${what}: the descriptor is ${link}, not a memfd`);
  if ((statusFlags(fd) & O_ACCMODE) !== O_RDWR) fail(E.EACCES, `${what}: the memfd is not open for reading and writing`);
  let seals: number;
  try {
    seals = getSeals(fd);
    addSeals(fd, F_SEAL_SHRINK | F_SEAL_GROW);
  } catch (e) {
    // a memfd made without MFD_ALLOW_SEALING (born with F_SEAL_SEAL): we could not stop it shrinking under us
    return fail(E.EINVAL, `${what}: the memfd cannot be sealed against shrinking (made without MFD_ALLOW_SEALING?): ${messageOf(e)}`);
  }
  if (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) fail(E.EINVAL, `${what}: the memfd is sealed against writes; the daemon maps it writable`);
  return fstatSync(fd).size;
}

/** Maps [offset, offset+length) of a memfd the daemon holds (checked by checkMemfd, `size` bytes), shared. */
export function mapMemfd(fd: number, size: number, offset: bigint, length: bigint): ClientMap {
  if (length <= 0n) fail(E.EINVAL, 'zero length');
  if (offset < 0n || offset + length > BigInt(size)) fail(E.EFAULT, `span ${offset}+${length} is past the memfd's ${size} bytes`);
  const start = (offset / BigInt(PAGE)) * BigInt(PAGE);
  const end = ((offset + length + BigInt(PAGE) - 1n) / BigInt(PAGE)) * BigInt(PAGE);
  let mapping: Mapping;
  try {
    mapping = mapShared(fd, Number(end - start), Number(start));
  } catch (e) {
    return fail(e instanceof SysError ? -e.errno : E.ENOMEM, messageOf(e));
  }
  return { mapping, delta: Number(offset - start) };
}
