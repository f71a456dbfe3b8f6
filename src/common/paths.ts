/**
 * Where everything lives (the root: device files, discovery tree): $SOFTVERBS_ROOT, else /run/softverbs as
 * root, else $XDG_RUNTIME_DIR/softverbs, else /tmp/softverbs-<uid>. The
 * daemon, the library and every tool use this one rule.
 */
import { join } from 'node:path';

export function defaultRoot(env: NodeJS.ProcessEnv = process.env): string {
  if (env.SOFTVERBS_ROOT) return env.SOFTVERBS_ROOT;
  const uid = process.getuid?.() ?? 0;
  if (uid === 0) return '/run/softverbs';
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'softverbs');
  return `/tmp/softverbs-${uid}`;
}

export const devDir = (root: string) => join(root, 'dev', 'infiniband');
export const verbsClassDir = (root: string) => join(root, 'sys', 'class', 'infiniband_verbs');
export const ibClassDir = (root: string) => join(root, 'sys', 'class', 'infiniband');
