/**
 * Pinned-page accounting (the kernel's mm->pinned_vm): per process, against
 * that process's own RLIMIT_MEMLOCK read from /proc/<pid>/limits. uid 0 is
 * exempt, as CAP_IPC_LOCK is. Pages registered twice count twice.
 */
import { readFileSync } from 'node:fs';
import { E, fail } from '../common/errno.js';
import { codeOf } from '../common/errors.js';

export const PAGE_SIZE = 4096;

/** Pages covered by [addr, addr+length): the page-aligned span, as ib_umem_get counts it. */
export function pagesSpanned(addr: bigint, length: bigint): number {
  const P = BigInt(PAGE_SIZE);
  const first = addr / P;
  const last = (addr + length + P - 1n) / P;
  return Number(last - first);
}

/** The soft RLIMIT_MEMLOCK of a process in bytes (Infinity when unlimited or unreadable as such). */
export function memlockLimit(pid: number): number {
  const text = readFileSync(`/proc/${pid}/limits`, 'utf8');
  const line = text.split('\n').find((l) => l.startsWith('Max locked memory'));
  if (!line) return 0;
  const soft = line.slice('Max locked memory'.length).trim().split(/\s+/)[0]!;
  return soft === 'unlimited' ? Number.POSITIVE_INFINITY : Number(soft);
}

export class PinnedAccounts {
  private pages = new Map<number, number>();

  pinned(pid: number): number {
    return this.pages.get(pid) ?? 0;
  }

  /** Charges `n` pages to pid; false (and nothing charged) if that would pass its limit; EMFILE when it cannot be read. */
  charge(pid: number, uid: number, n: number): boolean {
    const cur = this.pinned(pid);
    if (uid !== 0) {
      let limit: number;
      try {
        limit = memlockLimit(pid);
      } catch (e) {
        // out of descriptors, the limit cannot be read: that is no answer about the limit
        const code = codeOf(e);
        if (code === 'EMFILE' || code === 'ENFILE') fail(E[code], `cannot read /proc/${pid}/limits: the daemon is out of file descriptors (${code})`);
        return false; // the process is gone: nothing to pin for
      }
      if ((cur + n) * PAGE_SIZE > limit) return false;
    }
    this.pages.set(pid, cur + n);
    return true;
  }

  release(pid: number, n: number): void {
    const left = this.pinned(pid) - n;
    if (left > 0) this.pages.set(pid, left);
    else this.pages.delete(pid);
  }

  snapshot(): Record<number, number> {
    return Object.fromEntries(this.pages);
  }
}
