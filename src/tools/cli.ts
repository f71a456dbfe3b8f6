/** What every tool shares: getopt-like parsing with rdma-core's error style, and exit codes. */
import { parseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {}

/** Parses argv; an unknown option prints "<tool>: <problem>" and the usage, as getopt does, and exits 255. */
export function parse(tool: string, argv: string[], options: NonNullable<ParseArgsConfig['options']>, usage: string, allowPositionals = false): { values: Record<string, string | boolean | undefined>; positionals: string[] } {
  try {
    const r = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, allowPositionals, strict: true });
    return { values: r.values as Record<string, string | boolean | undefined>, positionals: r.positionals };
  } catch (e) {
    // getopt's wording: "invalid option -- 'x'" for a short option, "unrecognized option '--xyz'" for a long one
    const m = /^Unknown option '(-+)([^']*)'/.exec((e as Error).message);
    const msg = m ? (m[1] === '-' ? `invalid option -- '${m[2]}'` : `unrecognized option '--${m[2]}'`) : (e as Error).message;
    process.stderr.write(`${tool}: ${msg}\n${usage}`);
    process.exit(255);
  }
}
