/**
 * The daemon's files under its root: the root made or checked (trusted only
 * if ours: see common/trust.ts), directories created one component at a time and
 * never through a symlink, files written with O_NOFOLLOW, and names read
 * back from files checked before they become part of a path.
 */
import { closeSync, constants, lstatSync, mkdirSync, openSync, writeSync, chmodSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { checkTrustedRoot, UntrustedPath } from '../common/trust.js';
import { codeOf, ErrnoError } from '../common/errors.js';

/** Creates the root (mode `mode`) if it is missing, then insists it is trusted: ours, not a symlink, writable by us alone. */
export function prepareRoot(root: string, mode: number, uid = process.getuid?.() ?? 0): void {
  let fresh = false;
  try {
    lstatSync(root);
  } catch {
    mkdirSync(dirname(root), { recursive: true, mode: 0o755 });
    try {
      mkdirSync(root, { mode });
      fresh = true;
    } catch (e) {
      if (codeOf(e) !== 'EEXIST') throw e; // someone made it in between: checked below like any other
    }
  }
  if (fresh) chmodSync(root, mode); // the umask must not narrow it (clients need to traverse a shared root)
  try {
    checkTrustedRoot(root, [uid]);
  } catch (e) {
    if (e instanceof UntrustedPath) throw new ErrnoError(e.code, `refusing root ${e.path}: it ${e.why} (softverbsd trusts only a root its own uid owns and nobody else can write; remove it or choose another with --root)`);
    throw e;
  }
}

/** mkdir -p below a trusted directory, one component at a time; an existing component must be a real directory. */
export function ensureDirUnder(base: string, dir: string, mode = 0o755): void {
  const rel = relative(base, dir);
  if (rel.startsWith('..') || rel.startsWith(sep)) throw new ErrnoError('EINVAL', `${dir} is outside ${base}`);
  let cur = base;
  for (const part of rel.split(sep).filter(Boolean)) {
    cur = join(cur, part);
    try {
      mkdirSync(cur, { mode });
    } catch (e) {
      if (codeOf(e) !== 'EEXIST') throw e;
      const st = lstatSync(cur);
      if (st.isSymbolicLink() || !st.isDirectory()) throw new ErrnoError('ENOTDIR', `${cur} exists and is not a directory of ours (${st.isSymbolicLink() ? 'a symlink' : 'a file'})`);
    }
  }
}

/** Writes a small file, never through a symlink at its name (O_NOFOLLOW), world-readable (clients read the tree). */
export function writeNoFollow(path: string, text: string): void {
  const fd = openSync(path, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, 0o644);
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
}
