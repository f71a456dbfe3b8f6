/** What every tool shares: getopt-like parsing with rdma-core's error style, and exit codes. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { whyNoDevices } from '../verbs/device.js';
import { VerbsError } from '../verbs/errors.js';
import { messageOf } from '../common/errors.js';

/**
 * Parses argv; an unknown option prints "<tool>: <problem>" as getopt does,
 * then the usage, and exits: ibv_devinfo's way (usage on stderr, 255) unless
 * the tool does it otherwise (the pingpongs: usage on stdout, exit 1).
 */
export function parse(tool: string, argv: string[], options: NonNullable<ParseArgsConfig['options']>, usage: string, allowPositionals = false, onBad: { usageTo: 'stdout' | 'stderr'; exit: number } = { usageTo: 'stderr', exit: 255 }): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const r = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals, strict: true });
    return { values: r.values as Record<string, string | boolean | undefined>, positionals: r.positionals };
  } catch (e) {
    // getopt's wording: "invalid option -- 'x'" for a short option, "unrecognized option '--xyz'" for a long one
    const m = /^Unknown option '(-+)([^']*)'/.exec(messageOf(e));
    const msg = m ? (m[1] === '-' ? `invalid option -- '${m[2]}'` : `unrecognized option '--${m[2]}'`) : messageOf(e);
    process.stderr.write(`${tool}: ${msg}\n`);
    (onBad.usageTo === 'stdout' ? process.stdout : process.stderr).write(usage);
    process.exit(onBad.exit);
  }
}

const C_INT = /^\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)/;

function cvalue(m: RegExpExecArray): number {
  const t = m[2]!;
  const n = /^0[xX]/.test(t) ? parseInt(t.slice(2), 16) : t.length > 1 && t[0] === '0' ? parseInt(t.slice(1), 8) : parseInt(t, 10);
  return m[1] === '-' ? -n : n;
}

/** strtoul/strtol(s, NULL, 0): 0x hex, leading-0 octal, decimal; what does not parse is 0, as in C. */
export function cnum(s: string | undefined): number {
  const m = s === undefined ? null : C_INT.exec(s);
  return m ? cvalue(m) : 0;
}

/** atoi(): the leading decimal number, 0 if there is none (librdmacm's examples parse their numbers so). */
export function atoi(s: string): number {
  const m = /^\s*([+-]?\d+)/.exec(s);
  return m ? Number.parseInt(m[1]!, 10) | 0 : 0;
}

/**
 * POSIX getopt over `spec` ("s:b:c"), for the tools whose flags are bare letters (librdmacm's examples):
 * clustered flags, attached or separate arguments, "--" ends the options. The first bad option is returned
 * in glibc's words ("invalid option -- 'x'", "option requires an argument -- 'x'").
 */
export function getopt(argv: string[], spec: string): { opts: Array<[string, string]>; bad: string | null } {
  const opts: Array<[string, string]> = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--') break;
    if (!a.startsWith('-') || a === '-') continue;
    for (let j = 1; j < a.length; j++) {
      const ch = a[j]!;
      const k = spec.indexOf(ch);
      if (k < 0 || ch === ':') return { opts, bad: `invalid option -- '${ch}'` };
      if (spec[k + 1] === ':') {
        const v = j + 1 < a.length ? a.slice(j + 1) : argv[++i];
        if (v === undefined) return { opts, bad: `option requires an argument -- '${ch}'` };
        opts.push([ch, v]);
        break;
      }
      opts.push([ch, '']);
    }
  }
  return { opts, bad: null };
}

/**
 * getopt as librdmacm's examples use it: the first bad option is said on stderr in glibc's words, their usage
 * follows on stdout, and null tells the caller to exit 1.
 */
export function exampleOpts(tool: string, argv: string[], spec: string, usage: string): Array<[string, string]> | null {
  const g = getopt(argv, spec);
  if (!g.bad) return g.opts;
  process.stderr.write(`${tool}: ${g.bad}\n`);
  process.stdout.write(usage);
  return null;
}

/** strtol(s, &end, 0) where *end must be the NUL: null unless the whole string is the number. */
export function cnumStrict(s: string): number | null {
  const m = C_INT.exec(s);
  return m && m[0].length === s.length ? cvalue(m) : null;
}

/**
 * What every bin does: name the process as the tool (the comm ps and rdma's
 * restrack show, as for rdma-core's binary of that name), run it, exit with its
 * code. A verbs error nobody caught (an untrusted root, a lost daemon) is one
 * line saying what went wrong, exit 1, not a stack trace.
 */
export async function runTool(name: string, main: (argv: string[]) => number | Promise<number>): Promise<void> {
  process.title = name;
  try {
    process.exitCode = await main(process.argv.slice(2));
  } catch (e) {
    if (!(e instanceof VerbsError)) throw e;
    process.stderr.write(`${name}: ${e.message}\n`);
    process.exitCode = 1;
  }
}

/**
 * Beside an empty device list (and rdma-core's own "No IB devices found" where it prints one): why the root
 * lists none (missing, not trusted, its daemon stopped), one line on stderr, so an empty list is not a riddle.
 */
export function sayWhyNoDevices(tool: string): void {
  const why = whyNoDevices();
  if (why) process.stderr.write(`${tool}: ${why}\n`);
}
