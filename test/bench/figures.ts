/** Reading the per-process rows bench/procstat.ts prints under a line of the bench's output (for the bench specs). */
import assert from 'node:assert/strict';

export interface Row {
  label: string;
  name: string;
  cpu: string;
  syscalls: string;
  vcs: string;
  ivcs: string;
  note: string;
}
export interface Block {
  rows: Row[];
  wakeups: string | null;
}

const ROW = /^ {4}(.{22})(.+?) +(\S+) CPU-µs +(\S+) syscalls +(\S+) vcs +(\S+) ivcs(.*)$/;
const WAKE = /^ {26}wake-ups per round trip (\S+) \(the vcs of these (\d+) processes\)$/;
const NUM = /^\d+(\.\d+)?$/;

/** The rows right under the output line `at` (a line index), up to the next line that is not one. */
export function block(lines: string[], at: number, indent = 0): Block {
  const rows: Row[] = [];
  let wakeups: string | null = null;
  for (let i = at + 1; i < lines.length; i++) {
    const l = ' '.repeat(indent) + lines[i]!;
    const m = ROW.exec(l);
    if (m) {
      rows.push({ label: m[1]!.trim(), name: m[2]!.trim(), cpu: m[3]!, syscalls: m[4]!, vcs: m[5]!, ivcs: m[6]!, note: m[7]!.trim() });
      continue;
    }
    const w = WAKE.exec(l);
    if (w) {
      assert.equal(Number(w[2]), rows.length, `wake-ups over every process in\n${l}`);
      wakeups = w[1]!;
      continue;
    }
    break;
  }
  return { rows, wakeups };
}

/**
 * Every process named, each with a number for CPU, vcs and ivcs, and a number for syscalls or, when `perfOk`
 * is false, '-' (whose reason the caller checks is in the header); `groups` are the labels heading each
 * measurement and the processes under each.
 */
export function assertBlock(b: Block, groups: Array<[string, string[]]>, perfOk: boolean, roundTrip: boolean, ctx: string): void {
  const want = groups.flatMap(([label, names]) => names.map((n, i) => [i === 0 ? label : '', n]));
  assert.deepEqual(b.rows.map((r) => [r.label, r.name]), want, ctx);
  for (const r of b.rows) {
    for (const v of [r.cpu, r.vcs, r.ivcs]) assert.match(v, NUM, `${r.name}: ${ctx}`);
    assert.match(r.syscalls, perfOk ? NUM : /^-$/, `${r.name}'s syscalls: ${ctx}`);
  }
  if (roundTrip) assert.match(b.wakeups ?? '', NUM, `wake-ups per round trip: ${ctx}`);
  else assert.equal(b.wakeups, null, ctx);
}
