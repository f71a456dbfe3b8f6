/**
 * The udev-style rules file that names device files and sets their mode and owner, e.g.
 *   KERNEL=="uverbs*", NAME="infiniband/%k", MODE="0660", GROUP="rdma"
 * Rules whose KERNEL matches apply in order; a later assignment wins, as in
 * udev. Only KERNEL (match), NAME, MODE, GROUP and OWNER are understood; any
 * other key is an error, so a typo does not silently leave a device open.
 */
import { readFileSync } from 'node:fs';
import { safeName } from '../common/trust.js';
import { UsageError } from '../common/errors.js';

export interface DevicePolicy {
  name: string;
  mode: number;
  uid: number | null;
  gid: number | null;
}

export interface Rule {
  kernel: string;
  name?: string;
  mode?: number;
  group?: string;
  owner?: string;
}

function globToRegExp(g: string): RegExp {
  return new RegExp('^' + g.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '.*').replace(/\?/g, '.') + '$');
}

export function parseRules(text: string, file = 'rules'): Rule[] {
  const rules: Rule[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith('#')) return;
    const rule: Rule = { kernel: '*' };
    const re = /\s*([A-Z_]+)\s*(==|=)\s*"([^"]*)"\s*(,|$)/y;
    let pos = 0;
    while (pos < line.length) {
      re.lastIndex = pos;
      const m = re.exec(line);
      if (!m) throw new UsageError(`${file}:${i + 1}: cannot parse near "${line.slice(pos)}"`);
      pos = re.lastIndex;
      const [, key = '', op = '', val = ''] = m;
      if (key === 'KERNEL' && op === '==') rule.kernel = val;
      else if (key === 'NAME' && op === '=') rule.name = val;
      else if (key === 'MODE' && op === '=') {
        if (!/^[0-7]{3,4}$/.test(val)) throw new UsageError(`${file}:${i + 1}: MODE "${val}" is not an octal mode`);
        rule.mode = parseInt(val, 8);
      } else if (key === 'GROUP' && op === '=') rule.group = val;
      else if (key === 'OWNER' && op === '=') rule.owner = val;
      else throw new UsageError(`${file}:${i + 1}: unsupported key ${key}${op}`);
    }
    rules.push(rule);
  });
  return rules;
}

function lookupId(file: string, name: string): number | null {
  if (/^\d+$/.test(name)) return Number(name);
  try {
    for (const l of readFileSync(file, 'utf8').split('\n')) {
      const f = l.split(':');
      if (f[0] === name) return Number(f[2]);
    }
  } catch {
    /* no such file: fall through */
  }
  return null;
}

/** The device file's name (relative to <root>/dev), mode and ownership for kernel name `k` (e.g. uverbs0). */
export function policyFor(rules: Rule[], k: string): DevicePolicy {
  const p: DevicePolicy = { name: `infiniband/${k}`, mode: 0o666, uid: null, gid: null };
  for (const r of rules) {
    if (!globToRegExp(r.kernel).test(k)) continue;
    if (r.name !== undefined) {
      p.name = r.name.replace(/%k/g, k);
      // a device file lives under <root>/dev: NAME is a relative path of plain components, never ../ or absolute
      if (!p.name.split('/').every(safeName)) throw new UsageError(`rules: NAME "${r.name}" gives "${p.name}", not a path inside dev/`);
    }
    if (r.mode !== undefined) p.mode = r.mode;
    if (r.group !== undefined) {
      const gid = lookupId('/etc/group', r.group);
      if (gid === null) throw new UsageError(`rules: unknown group "${r.group}"`);
      p.gid = gid;
    }
    if (r.owner !== undefined) {
      const uid = lookupId('/etc/passwd', r.owner);
      if (uid === null) throw new UsageError(`rules: unknown user "${r.owner}"`);
      p.uid = uid;
    }
  }
  return p;
}
