/**
 * rdma-core's own test suite (python3-pyverbs' /usr/share/doc/rdma-core/tests) on softverbsd, and how its
 * outcomes compare with Linux rxe's (test/fixtures/pyverbs-linux-rxe.json, `npm run pyverbs:baseline`).
 * Shared by pyverbs.spec.ts (the comparison in `npm test`) and pyverbs-table.ts (`npm run test:pyverbs`).
 *
 * The suite runs as the unprivileged user svtest-alice through `softverbs exec` (the few tests it reserves for
 * root then again as root, as the baseline ran), against a root daemon with
 * rxe0 on 127.0.0.1 and rxe1 on 127.0.0.2, `--dev rxe0 --gid 0` (GID 0 is rxe0's RoCEv2 GID of its IPv4
 * address, as index 1 is in the lab guest). Why 127.0.0.1: pyverbs takes a device's IP address to be the first
 * address of the interface in /sys/class/infiniband/DEV/device/net/ (`ip addr show IFACE`); ours say `lo`, as
 * ndevs does, whose first address is 127.0.0.1. So the daemon runs in a network namespace of its own
 * (`unshare -n`, lo up), where 127.0.0.1 is nobody else's; the clients reach it through its root's files.
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DIST, startDaemon, testUser, type RunningDaemon } from '../helpers.js';
import { buildPreload, execSkip } from './exec-harness.js';

export const PYTHON = '/usr/bin/python3';
export const SUITE = '/usr/share/doc/rdma-core/tests';
const REPO = join(DIST, '..');
export const FIXTURE = join(REPO, 'test', 'fixtures', 'pyverbs-linux-rxe.json');
const RUNNER = join(REPO, 'test', 'fixtures', 'pyverbs_runner.py');

export type Outcome = 'ok' | 'skipped' | 'error' | 'fail' | 'expected-failure' | 'unexpected-success';
export interface TestOutcome { id: string; outcome: Outcome; reason?: string; error?: string; ms?: number }
export interface SuiteRun { total: number; counts: Partial<Record<Outcome, number>>; tests: TestOutcome[] }

/** Why the suite cannot run here (false: it can). */
export function pyverbsSkip(): string | false {
  const why = execSkip([]);
  if (why) return why;
  if (!existsSync(join(SUITE, 'run_tests.py'))) return `${SUITE} is missing (apt-get install python3-pyverbs)`;
  if (spawnSync(PYTHON, ['-c', 'import pyverbs.device'], { encoding: 'utf8' }).status !== 0) return `${PYTHON} cannot import pyverbs (apt-get install python3-pyverbs)`;
  // another rdma-core has another suite: its outcomes are not comparable with the baseline's
  const here = spawnSync('dpkg-query', ['-W', '-f', '${Version}', 'python3-pyverbs'], { encoding: 'utf8' }).stdout?.trim();
  const there = linuxBaseline().source.pyverbs;
  if (here && there && here !== there) return `python3-pyverbs ${here} here, the baseline ran ${there} (npm run pyverbs:baseline in a lab with the same)`;
  if (spawnSync('unshare', ['-n', 'true']).status !== 0) return 'unshare -n (util-linux) does not work here: the daemon needs a network namespace of its own for 127.0.0.1';
  return false;
}

export function linuxBaseline(): SuiteRun & { source: Record<string, string> } {
  return JSON.parse(readFileSync(FIXTURE, 'utf8'));
}

/** A root daemon in its own network namespace (lo up) with rxe0 on 127.0.0.1, rxe1 on 127.0.0.2; its root any user may enter. */
export async function pyverbsDaemon(): Promise<RunningDaemon> {
  buildPreload();
  const d = await startDaemon(['--device', 'rxe0=127.0.0.1', '--device', 'rxe1=127.0.0.2'], {
    // multicast groups (pyverbs' 230.x) get the route a host's default route would give them
    wrapper: ['unshare', '-n', 'sh', '-c', 'ip link set lo up && ip route add 224.0.0.0/4 dev lo && exec "$@"', 'softverbsd-netns'],
  });
  chmodSync(d.root, 0o755);
  return d;
}

/**
 * The suite's own privilege checks (raw packet QPs and flow steering are root's on Linux): tests that skip for
 * them as alice are run again as root, as the baseline ran, and that outcome is theirs.
 */
const ROOT_ONLY = /must be (run|done) by root/i;

/** The suite as alice, with the tests it reserves for root run again as root: every test's outcome. */
export function runSuite(root: string, args: string[] = [], ms = 600_000): SuiteRun & { stderr: string; asRoot: string[] } {
  const run = runSuiteAs(root, args, false, ms);
  const asRoot = run.tests.filter((t) => t.outcome === 'skipped' && ROOT_ONLY.test(t.reason ?? '')).map((t) => t.id);
  if (!asRoot.length) return { ...run, asRoot };
  const again = new Map(runSuiteAs(root, asRoot, true, ms).tests.map((t) => [t.id, t]));
  const tests = run.tests.map((t) => again.get(t.id) ?? t);
  const counts: SuiteRun['counts'] = {};
  for (const t of tests) counts[t.outcome] = (counts[t.outcome] ?? 0) + 1;
  return { ...run, tests, counts, asRoot };
}

/** The suite (or the tests `args` name, e.g. a module or test ids) as alice or root through softverbs exec. */
function runSuiteAs(root: string, args: string[], asRoot: boolean, ms: number): SuiteRun & { stderr: string } {
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-pyverbs-'));
  try {
    const tests = join(tmp, 'tests');
    cpSync(SUITE, tests, { recursive: true });
    const gz = readdirSync(tests).filter((f) => f.endsWith('.gz')).map((f) => join(tests, f));
    if (gz.length && spawnSync('gunzip', ['-f', ...gz]).status !== 0) throw new Error('gunzip of the suite failed');
    spawnSync('chmod', ['-R', 'a+rX', tmp]);
    const who = asRoot ? [] : testUser('svtest-alice').as;
    const argv = [...who, process.execPath, join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--root', root, '--',
      PYTHON, RUNNER, tests, '--dev', 'rxe0', '--gid', '0', '-v', ...args];
    const r = spawnSync(argv[0]!, argv.slice(1), { cwd: tests, encoding: 'utf8', timeout: ms, maxBuffer: 64 << 20, env: { ...process.env, PYTHONDONTWRITEBYTECODE: '1' } });
    if (r.status !== 0 || !r.stdout.trim()) throw new Error(`the suite ended ${r.status ?? r.signal}${r.error ? ` (${r.error})` : ''}:\n${r.stderr.slice(-4000)}`);
    return { ...(JSON.parse(r.stdout) as SuiteRun), stderr: r.stderr };
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

/**
 * Skips for the same cause though the words differ: Linux rxe has no net interface, so the mlx5 test stops at
 * that check; ours has one, so it stops at the next, which every non-mlx5 device fails on Linux too.
 */
const SAME_SKIP: [linux: string, here: string][] = [["Device rxe0 doesn't have net interface", 'Can not run the test over non MLX5 device']];

const show = (t: TestOutcome | undefined) => (!t ? 'not run' : t.outcome === 'skipped' ? `skipped (${t.reason})` : t.error ? `${t.outcome} (${t.error})` : t.outcome);

/**
 * What breaks the rule, one line per test with both outcomes: a test ok on Linux rxe is ok here; one skipped
 * there is skipped here for the same reason, or passes; none errors or fails here unless it does there.
 */
export function violations(linux: readonly TestOutcome[], here: readonly TestOutcome[]): string[] {
  const L = new Map(linux.map((t) => [t.id, t]));
  const H = new Map(here.map((t) => [t.id, t]));
  const out: string[] = [];
  for (const id of [...new Set([...L.keys(), ...H.keys()])].sort()) {
    const l = L.get(id);
    const h = H.get(id);
    let bad: boolean;
    if (!h) bad = true;
    else if (!l) bad = h.outcome === 'error' || h.outcome === 'fail' || h.outcome === 'unexpected-success';
    else if (l.outcome === 'ok') bad = h.outcome !== 'ok';
    else if (l.outcome === 'skipped') bad = !(h.outcome === 'ok' || (h.outcome === 'skipped' && (h.reason === l.reason || SAME_SKIP.some(([a, b]) => a === l.reason && b === h.reason))));
    else if (l.outcome === 'expected-failure') bad = h.outcome !== 'ok' && h.outcome !== 'expected-failure';
    else bad = false; // it errors or fails on Linux rxe: anything here is no worse
    if (bad) out.push(`${id}: Linux rxe ${show(l)}; here ${show(h)}`);
  }
  return out;
}

const COLS = ['ok', 'skipped', 'error', 'fail'] as const;

/** Per test file: ok/skipped/error/fail on Linux rxe and here, with a total line. */
export function table(linux: readonly TestOutcome[], here: readonly TestOutcome[]): string {
  const files = new Map<string, { l: Record<string, number>; h: Record<string, number> }>();
  const row = (f: string) => files.get(f) ?? files.set(f, { l: {}, h: {} }).get(f)!;
  const add = (side: 'l' | 'h', t: TestOutcome) => {
    const k = t.outcome === 'expected-failure' ? 'ok' : t.outcome === 'unexpected-success' ? 'fail' : t.outcome;
    const r = row(t.id.split('.')[0]!)[side];
    r[k] = (r[k] ?? 0) + 1;
  };
  for (const t of linux) add('l', t);
  for (const t of here) add('h', t);
  const total = { l: {} as Record<string, number>, h: {} as Record<string, number> };
  const cells = (r: Record<string, number>) => COLS.map((c) => String(r[c] ?? 0).padStart(c.length)).join(' ');
  const lines = [`${'file'.padEnd(24)} | Linux rxe: ${COLS.join(' ')} | softverbsd: ${COLS.join(' ')}`];
  for (const [f, r] of [...files].sort(([a], [b]) => a.localeCompare(b))) {
    for (const side of ['l', 'h'] as const) for (const c of COLS) total[side][c] = (total[side][c] ?? 0) + (r[side][c] ?? 0);
    lines.push(`${f.padEnd(24)} | ${' '.repeat(11)}${cells(r.l)} | ${' '.repeat(12)}${cells(r.h)}`);
  }
  lines.push(`${'total'.padEnd(24)} | ${' '.repeat(11)}${cells(total.l)} | ${' '.repeat(12)}${cells(total.h)}`);
  return lines.join('\n');
}
