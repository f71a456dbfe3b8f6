/**
 * Where everything lives (the root: device files, discovery tree). A daemon serves $SOFTVERBS_ROOT, else
 * /run/softverbs as root, else $XDG_RUNTIME_DIR/softverbs, else /tmp/softverbs-<uid> (ownRoot). The
 * library and every tool look in the same place, except that an unprivileged user whose own root does not
 * exist looks in /run/softverbs when a trusted daemon's root is there (defaultRoot): /dev/infiniband is
 * every user's, and so is the root of a daemon running as root.
 */
import { accessSync, constants, lstatSync } from 'node:fs';
import { join } from 'node:path';
import { checkTrustedRoot, trustedOwners, UntrustedPath } from './trust.js';

/** The root of a softverbsd running as root (and of the systemd unit's RuntimeDirectory). */
export const SYSTEM_ROOT = '/run/softverbs';

const uidOf = () => process.getuid?.() ?? 0;

/** The root a daemon of this user serves when it is not told one. */
export function ownRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.SOFTVERBS_ROOT) return env.SOFTVERBS_ROOT;
  const uid = uidOf();
  if (uid === 0) return SYSTEM_ROOT;
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'softverbs');
  return `/tmp/softverbs-${uid}`;
}

function exists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Why SYSTEM_ROOT cannot stand in for a user's missing root, as the end of a sentence about it (null: it can). */
function systemRootRefusal(env: NodeJS.ProcessEnv): string | null {
  try {
    checkTrustedRoot(SYSTEM_ROOT, trustedOwners(env));
    return null;
  } catch (e) {
    if (!(e instanceof UntrustedPath)) throw e;
    return e.code === 'ENOENT' ? 'does not exist either' : `is not trusted: it ${e.why}`;
  }
}

/** The root the library and the tools look in. */
export function defaultRoot(env: NodeJS.ProcessEnv = process.env): string {
  const own = ownRoot(env);
  if (env.SOFTVERBS_ROOT || uidOf() === 0 || exists(own)) return own;
  return systemRootRefusal(env) === null ? SYSTEM_ROOT : own;
}

export interface RootProblem {
  code: 'ENOENT' | 'EACCES';
  message: string;
}

/**
 * What is wrong with `root` as a client's way to a daemon, in words for the user: missing (ENOENT), not
 * trusted or not open to this user (EACCES). Null when it is fine (it may still serve no device).
 */
export function rootProblem(root: string, env: NodeJS.ProcessEnv = process.env): RootProblem | null {
  try {
    checkTrustedRoot(root, trustedOwners(env));
  } catch (e) {
    if (!(e instanceof UntrustedPath)) throw e;
    if (e.code === 'ENOENT') return { code: 'ENOENT', message: missing(root, env) };
    // a dedicated service user's root: the one uid the user may mean to trust
    const other = /^is owned by uid (\d+),/.exec(e.why)?.[1];
    return { code: 'EACCES', message: `not trusting ${e.path}: it ${e.why}${other ? ` (if uid ${other} runs softverbsd, set SOFTVERBS_ROOT_OWNER=${other})` : ''}` };
  }
  try {
    accessSync(root, constants.X_OK);
  } catch {
    const st = lstatSync(root);
    return { code: 'EACCES', message: `${root} is not open to uid ${uidOf()} (mode ${(st.mode & 0o7777).toString(8).padStart(4, '0')}, owner uid ${st.uid}): the softverbsd serving it serves its own users only (softverbsd --root-mode 0755 serves every user)` };
  }
  return null;
}

function missing(root: string, env: NodeJS.ProcessEnv): string {
  if (root === SYSTEM_ROOT) return `no softverbsd serves ${root} (it does not exist): start softverbsd as root, and it serves every user from there`;
  const sys = systemRootRefusal(env);
  const useSystem = `; a softverbsd running as root serves ${SYSTEM_ROOT}: set SOFTVERBS_ROOT=${SYSTEM_ROOT}`;
  if (root === env.SOFTVERBS_ROOT) return `no softverbsd serves ${root} (it does not exist; SOFTVERBS_ROOT names it)${sys === null ? `${useSystem}, or unset it` : ''}`;
  if (root !== ownRoot(env) || uidOf() === 0) return `no softverbsd serves ${root} (it does not exist)${sys === null ? useSystem : ''}`;
  // the default rule: this user's own root, and SYSTEM_ROOT (already looked at, and why it was not used)
  const head = `no softverbsd serves this user's root ${root} (it does not exist)`;
  if (sys === null) return `${head}${useSystem}`;
  return `${head}, nor ${SYSTEM_ROOT}, the root of a softverbsd running as root, which ${sys}: start softverbsd (as root it serves every user from ${SYSTEM_ROOT}), or set SOFTVERBS_ROOT to the root of the one that runs`;
}

export const devDir = (root: string) => join(root, 'dev', 'infiniband');
export const verbsClassDir = (root: string) => join(root, 'sys', 'class', 'infiniband_verbs');
export const ibClassDir = (root: string) => join(root, 'sys', 'class', 'infiniband');
