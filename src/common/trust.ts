/**
 * Whether a root directory may be trusted (a shared /tmp is hostile ground:
 * another user can create /tmp/softverbs-<uid> first, or plant links in it).
 * A root is trusted when it is a real directory (not a symlink), owned by
 * one of the expected uids, and writable by nobody else; and every
 * directory above it is owned by root or by one of those uids and is either
 * writable by nobody else or sticky (as /tmp is: others cannot rename or
 * remove what is ours in it). The daemon checks the root it serves, the
 * library the root it connects through, with the same rule.
 */
import { lstatSync, realpathSync, type Stats } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { codeOf, ErrnoError, messageOf } from './errors.js';

export class UntrustedPath extends ErrnoError {
  /** ENOENT: the root is not there at all (a missing root is no daemon, not a hostile one) */
  declare readonly code: 'ENOENT' | 'EACCES';
  constructor(readonly path: string, readonly why: string, code: 'ENOENT' | 'EACCES' = 'EACCES') {
    super(code, `${path} ${why}`);
  }
}

/**
 * Whom a client trusts to own a root it connects through: root, itself, and a dedicated service user
 * named in $SOFTVERBS_ROOT_OWNER (a uid), the daemon's possible owners.
 */
export function trustedOwners(env: NodeJS.ProcessEnv = process.env): number[] {
  const owners = [0, process.getuid?.() ?? 0];
  const extra = env.SOFTVERBS_ROOT_OWNER;
  if (extra && /^\d+$/.test(extra)) owners.push(Number(extra));
  return [...new Set(owners)];
}

const S_ISVTX = 0o1000;

function ownerOk(st: Stats, owners: readonly number[]): boolean {
  return st.uid === 0 || owners.includes(st.uid);
}

/** Throws UntrustedPath saying what is wrong; returns the lstat of the root when it is trusted. */
export function checkTrustedRoot(root: string, owners: readonly number[]): Stats {
  const path = resolve(root);
  let st: Stats;
  try {
    st = lstatSync(path);
  } catch (e) {
    const code = codeOf(e);
    throw new UntrustedPath(path, `cannot be examined (${code ?? messageOf(e)})`, code === 'ENOENT' || code === 'ENOTDIR' ? 'ENOENT' : 'EACCES');
  }
  if (st.isSymbolicLink()) throw new UntrustedPath(path, 'is a symbolic link; a root must be a real directory');
  if (!st.isDirectory()) throw new UntrustedPath(path, 'is not a directory');
  if (!owners.includes(st.uid)) throw new UntrustedPath(path, `is owned by uid ${st.uid}, not by ${owners.map((u) => `uid ${u}`).join(' or ')}`);
  if (st.mode & 0o022) throw new UntrustedPath(path, `is writable by ${st.mode & 0o002 ? 'every user' : 'its group'} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')})`);
  // the directories above it, as they really are (a symlinked /var/run is fine: its target is what is checked)
  let dir = realpathSync(dirname(path));
  for (;;) {
    const d = lstatSync(dir);
    if (!ownerOk(d, owners)) throw new UntrustedPath(path, `lies under ${dir}, owned by uid ${d.uid}`);
    if (d.mode & 0o022 && !(d.mode & S_ISVTX)) throw new UntrustedPath(path, `lies under ${dir}, which others can write (mode ${(d.mode & 0o7777).toString(8).padStart(4, '0')}, not sticky)`);
    if (dir === '/') break;
    dir = dirname(dir);
  }
  return st;
}

/** A name read from a file that will become part of a path: one plain component, nothing else. */
export function safeName(s: string): boolean {
  return /^[A-Za-z0-9_.-]{1,63}$/.test(s) && s !== '.' && s !== '..';
}
