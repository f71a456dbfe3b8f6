import { readFileSync } from 'node:fs';
import { codeOf } from './errors.js';

/** Whether a process exists: kill(pid, 0) succeeds, or is refused with EPERM (it is someone else's). */
export function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return codeOf(e) === 'EPERM';
  }
}

/** A process's name as the kernel keeps it (/proc/PID/comm: what ps and rdma's restrack show); '' once it is gone. */
export function procComm(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return '';
  }
}
