/**
 * The daemon's log: one line per event on stderr, "softverbsd: …", filtered
 * by --log-level. `once` keeps a hostile or buggy client from turning one
 * repeated condition (a limit it keeps hitting) into a flood of lines.
 */
export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export class Log {
  private seen = new Set<string>();

  constructor(
    public level: LogLevel = 'info',
    private readonly write: (line: string) => void = (l) => void process.stderr.write(l),
  ) {}

  enabled(l: LogLevel): boolean {
    return LOG_LEVELS.indexOf(l) <= LOG_LEVELS.indexOf(this.level);
  }

  at(l: LogLevel, msg: string): void {
    if (this.enabled(l)) this.write(`softverbsd: ${l === 'error' || l === 'warn' ? `${l === 'warn' ? 'warning' : 'error'}: ` : ''}${msg}\n`);
  }

  error(msg: string): void {
    this.at('error', msg);
  }
  warn(msg: string): void {
    this.at('warn', msg);
  }
  info(msg: string): void {
    this.at('info', msg);
  }
  debug(msg: string): void {
    this.at('debug', msg);
  }

  /** Logs `msg` the first time `key` is seen (bounded: past 10,000 keys, old ones are forgotten). */
  once(key: string, l: LogLevel, msg: string): void {
    if (this.seen.has(key)) return;
    if (this.seen.size >= 10_000) this.seen.clear();
    this.seen.add(key);
    this.at(l, msg);
  }
}
