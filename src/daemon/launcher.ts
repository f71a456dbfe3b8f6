/**
 * A daemon started through npm (`npx softverbsd`, `npm exec`, an npm script)
 * runs as npm → `sh -c` → node. Signalling npm kills the shell, which does
 * not pass the signal on: the daemon would be left behind, reparented,
 * holding its device files and wire port. So when npm is the launcher (it
 * says so in npm_command), the daemon remembers the processes between
 * itself and npm, by pid and start time so a reused pid is not mistaken for
 * them, and stops when any of them is gone. Under a shell or a service
 * manager nothing is watched: there the daemon outlives whoever started it.
 */
import { readFileSync } from 'node:fs';
import { codeOf } from '../common/errors.js';

interface Proc {
  pid: number;
  start: string;
}

/** ppid, start time and comm of a process from /proc/<pid>/stat; null when it is gone, 'unknown' when we cannot tell (EMFILE). */
function stat(pid: number): { ppid: number; start: string; comm: string } | null | 'unknown' {
  let s: string;
  try {
    s = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch (e) {
    return codeOf(e) === 'ENOENT' || codeOf(e) === 'ESRCH' ? null : 'unknown';
  }
  // comm is in parentheses and may itself hold spaces and parentheses: the fields after it follow the last ')'
  const close = s.lastIndexOf(')');
  const f = s.slice(close + 2).split(' ');
  return { ppid: Number(f[1]), start: f[19] ?? '', comm: s.slice(s.indexOf('(') + 1, close) };
}

/** The processes from our parent up to npm, or [] when npm did not launch us. */
export function npmLauncherChain(env: NodeJS.ProcessEnv = process.env): Proc[] {
  if (!env.npm_command) return [];
  const chain: Proc[] = [];
  let pid = process.ppid;
  for (let depth = 0; depth < 4 && pid > 1; depth++) {
    const st = stat(pid);
    if (!st || st === 'unknown') return [];
    chain.push({ pid, start: st.start });
    if (st.comm.startsWith('npm')) return chain; // npm sets its process title to "npm <command> …"
    pid = st.ppid;
  }
  return []; // no npm above us after all: watch nothing rather than a guess
}

/** Which of the chain is gone (exited, or its pid now belongs to another process), if any. */
export function goneFrom(chain: readonly Proc[]): number | null {
  for (const p of chain) {
    const st = stat(p.pid);
    if (st === 'unknown') continue; // out of descriptors, say: not a reason to believe it gone
    if (!st || st.start !== p.start) return p.pid;
  }
  return null;
}
