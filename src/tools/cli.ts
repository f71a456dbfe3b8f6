/** What every tool shares: getopt-like parsing with rdma-core's error style, and exit codes. */
import { parseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {}

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
    const m = /^Unknown option '(-+)([^']*)'/.exec((e as Error).message);
    const msg = m ? (m[1] === '-' ? `invalid option -- '${m[2]}'` : `unrecognized option '--${m[2]}'`) : (e as Error).message;
    process.stderr.write(`${tool}: ${msg}\n`);
    (onBad.usageTo === 'stdout' ? process.stdout : process.stderr).write(usage);
    process.exit(onBad.exit);
  }
}
