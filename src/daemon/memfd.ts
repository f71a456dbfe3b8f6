/**
 * Mapping a client's memory: the client names one of its own memfds by
 * number; we open it through /proc/<pid>/fd (pid from SO_PEERCRED, never
 * from the client), insist it is a sealable memfd, seal it against
 * shrinking and growing (so the pages under our mapping can never vanish
 * and SIGBUS the daemon), check its size, and map the span we need.
 */
import { closeSync, fstatSync, openSync, readlinkSync } from 'node:fs';
import { E, fail } from '../common/errno.js';
import { codeOf, messageOf } from '../common/errors.js';
import { addSeals, F_SEAL_GROW, F_SEAL_SHRINK, mapShared, type Mapping, SysError } from '../native/libc.js';

const PAGE = 4096;

export interface ClientMap {
  mapping: Mapping;
  /** Where the asked-for offset landed inside the mapping. */
  delta: number;
}

export function mapClientMemfd(pid: number, memfd: number, offset: bigint, length: bigint): ClientMap {
  if (memfd > 0x7fffffff) fail(E.EBADF, `memfd ${memfd} is not a file descriptor`);
  if (length <= 0n) fail(E.EINVAL, 'zero length');
  if (offset + length > 1n << 46n) fail(E.EINVAL, `memfd span ${offset}+${length} is past any memfd size`);
  const path = `/proc/${pid}/fd/${memfd}`;
  let link: string;
  try {
    link = readlinkSync(path);
  } catch {
    fail(E.EBADF, `fd ${memfd} is not open in pid ${pid}`);
  }
  if (!link.startsWith('/memfd:')) fail(E.EINVAL, `fd ${memfd} of pid ${pid} is not a memfd (${link})`);
  let fd: number;
  try {
    fd = openSync(path, 'r+');
  } catch (e) {
    // the daemon out of descriptors is not the client's memfd refusing it
    const code = codeOf(e);
    if (code === 'EMFILE' || code === 'ENFILE') fail(E[code], `cannot open memfd ${memfd} of pid ${pid}: the daemon is out of file descriptors (${code})`);
    fail(E.EACCES, `cannot open memfd ${memfd} of pid ${pid}: ${messageOf(e)}`);
  }
  try {
    try {
      addSeals(fd, F_SEAL_SHRINK | F_SEAL_GROW);
    } catch (e) {
      // a /dev/shm file, or a memfd made without MFD_ALLOW_SEALING: we could not stop it shrinking under us
      fail(E.EINVAL, `fd ${memfd} cannot be sealed: ${messageOf(e)}`);
    }
    const size = BigInt(fstatSync(fd).size);
    if (offset + length > size) fail(E.EFAULT, `span ${offset}+${length} is past the memfd's ${size} bytes`);
    const start = (offset / BigInt(PAGE)) * BigInt(PAGE);
    const end = ((offset + length + BigInt(PAGE) - 1n) / BigInt(PAGE)) * BigInt(PAGE);
    const mapLen = Number(end - start);
    let mapping: Mapping;
    try {
      mapping = mapShared(fd, mapLen, Number(start));
    } catch (e) {
      fail(e instanceof SysError ? -e.errno : E.ENOMEM, messageOf(e));
    }
    return { mapping, delta: Number(offset - start) };
  } finally {
    closeSync(fd);
  }
}
