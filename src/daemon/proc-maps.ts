/**
 * What the kernel's get_user_pages() would say of a range a C program
 * registers: every page mapped, readable, and writable when the HCA will
 * write it. The daemon reaches that memory through /proc/<pid>/mem, which
 * would write even read-only pages (it is the debugger's door), so the
 * check is made here, from the process's own map, at registration. The map
 * is read through the /proc/self/maps the program handed over with its
 * memory (SET_MEM): a maps file reads the memory map of the process that
 * opened it, as it is at each read, and the daemon needs no right over
 * another user's process to read it (opening /proc/<pid>/maps would take
 * CAP_SYS_PTRACE).
 */
import { readSync } from 'node:fs';
import { E, fail } from '../common/errno.js';

const CHUNK = 64 << 10;

/** The whole text of a maps file, read from its start. */
function readMaps(fd: number): string {
  const parts: Buffer[] = [];
  for (let pos = 0; ; ) {
    const b = Buffer.allocUnsafe(CHUNK);
    const n = readSync(fd, b, 0, CHUNK, pos);
    if (n <= 0) break;
    parts.push(b.subarray(0, n));
    pos += n;
  }
  return Buffer.concat(parts).toString('latin1');
}

/** EFAULT unless [start, start+length) of pid (its map read through `mapsFd`) is mapped throughout, readable, and writable if `write`. */
export function checkMapped(mapsFd: number, pid: number, start: bigint, length: bigint, write: boolean): void {
  let text: string;
  try {
    text = readMaps(mapsFd);
  } catch {
    return fail(E.EFAULT, `the memory map of pid ${pid} cannot be read`);
  }
  const end = start + length;
  let at = start;
  for (const line of text.split('\n')) {
    if (at >= end) break;
    const dash = line.indexOf('-');
    const space = line.indexOf(' ');
    if (dash < 0 || space < dash) continue;
    const lo = BigInt(`0x${line.slice(0, dash)}`);
    const hi = BigInt(`0x${line.slice(dash + 1, space)}`);
    if (hi <= at) continue;
    if (lo > at) break; // a hole
    const perms = line.slice(space + 1, space + 5);
    if (perms[0] !== 'r') fail(E.EFAULT, `0x${at.toString(16)} of pid ${pid} is not readable (${perms})`);
    if (write && perms[1] !== 'w') fail(E.EFAULT, `0x${at.toString(16)} of pid ${pid} is not writable (${perms}), and the access flags let the HCA write it`);
    at = hi;
  }
  if (at < end) fail(E.EFAULT, `0x${at.toString(16)} of pid ${pid} is not mapped (the MR is 0x${start.toString(16)}+${length})`);
}
