/** errno numbers as Linux has them, and the error the daemon's handlers throw. */
import { constants } from 'node:os';

export const E = constants.errno;

/** A command failed with this errno; the reply carries -errno and the daemon logs the message. */
export class CmdError extends Error {
  constructor(readonly errno: number, message: string) {
    super(message);
  }
}

export function errnoName(n: number): string {
  for (const [k, v] of Object.entries(constants.errno)) if (v === n) return k;
  return `E${n}`;
}

export function fail(errno: number, message: string): never {
  throw new CmdError(errno, message);
}
