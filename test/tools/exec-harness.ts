/**
 * What the specs running unmodified rdma-core programs through `softverbs exec` share
 * (exec-verbs.spec.ts, exec-perftest.spec.ts): the programs as the unprivileged user
 * svtest-alice against a root daemon, our TypeScript tools beside them, and a server/client
 * pair on a TCP port of its own (the kernel's pick), the client started once the server listens.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { preloadProblem } from '../../src/tools/exec.js';
import { A1, A2, DIST, freePort, IS_ROOT, startDaemon, testUser, type Run, type RunningDaemon } from '../helpers.js';

export const C_TOOLS = '/usr/bin';
const REPO = join(DIST, '..');

/** Why these specs cannot run here (false: they can); `tools` are the programs they need in /usr/bin. */
export function execSkip(tools: string[]): string | false {
  if (!IS_ROOT) return 'needs root (a root daemon, an unprivileged user)';
  const missing = tools.filter((t) => !existsSync(join(C_TOOLS, t)));
  if (missing.length) return `${missing.map((t) => `${C_TOOLS}/${t}`).join(', ')} not installed (apt-get install ibverbs-utils ibverbs-providers perftest)`;
  if (spawnSync('cc', ['--version']).error) return 'no C compiler (cc) to build the preload library';
  return false;
}

/** The preload library as `npm run build` makes it, from the source under test (throws with the compiler's complaint). */
export function buildPreload(): void {
  const b = spawnSync(process.execPath, [join(REPO, 'native', 'build.mjs')], { encoding: 'utf8' });
  if (b.status !== 0) throw new Error(`native/build.mjs: ${b.stderr}`);
  const why = preloadProblem();
  if (why) throw new Error(why);
}

/**
 * What a spec of C programs on softverbsd starts with: the preload library built, its fixture (a C file in
 * test/fixtures) compiled to `out` with `flags`, and a root daemon with rxe0 on A1 and rxe1 on A2, whose root
 * and the spec's `tmp` any user may enter.
 */
export async function preloadDaemon(tmp: string, fixture: { src: string; out: string; flags: string[] } | null): Promise<RunningDaemon> {
  buildPreload();
  if (fixture) {
    // the flags after the source: libraries are linked in the order they come
    const cc = spawnSync('cc', ['-o', fixture.out, join(REPO, 'test', 'fixtures', fixture.src), ...fixture.flags], { encoding: 'utf8' });
    if (cc.status !== 0) throw new Error(`cc ${fixture.src}: ${cc.stderr}`);
  }
  chmodSync(tmp, 0o755);
  const d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
  chmodSync(d.root, 0o755);
  return d;
}

/** A process we started: how it ended (stdout and stderr as one stream), and its pid to signal it. */
export interface Proc {
  pid: number;
  /** what it printed so far */
  out(): string;
  /** how it ended; `stdout` alone beside `out`, for comparing what two programs print where stderr's interleaving differs */
  done: Promise<Run & { ms: number; stdout: string }>;
  kill(sig?: NodeJS.Signals): void;
}

/**
 * Starts argv, as runProcess does, but hands back the process while it runs. After `ms` its whole process group
 * is killed: softverbs exec's program too, which would otherwise outlive it holding the output pipe open.
 */
export function start(argv: string[], env: NodeJS.ProcessEnv, ms = 30_000): Proc {
  const t0 = performance.now();
  const p = spawn(argv[0]!, argv.slice(1), { env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  let out = '';
  let stdout = '';
  p.stdout!.on('data', (d) => ((out += d), (stdout += d)));
  p.stderr!.on('data', (d) => (out += d));
  const t = setTimeout(() => {
    try {
      process.kill(-p.pid!, 'SIGKILL');
    } catch {
      /* gone already */
    }
  }, ms);
  const done = new Promise<Run & { ms: number; stdout: string }>((resolve) => {
    p.on('close', (code, signal) => {
      clearTimeout(t);
      resolve({ code, out, stdout, signal, ms: Math.round(performance.now() - t0) });
    });
  });
  return { pid: p.pid!, out: () => out, done, kill: (sig = 'SIGKILL') => p.kill(sig) };
}

/** Whether something listens on TCP `port` (any address, IPv4 or IPv6): /proc/net/tcp{,6}, so no connection is spent on asking. */
export function listening(port: number): boolean {
  const hex = port.toString(16).toUpperCase().padStart(4, '0');
  for (const f of ['/proc/net/tcp', '/proc/net/tcp6']) {
    let text = '';
    try {
      text = readFileSync(f, 'utf8');
    } catch {
      continue;
    }
    // sl local_address rem_address st ...: st 0A is LISTEN
    if (text.split('\n').some((l) => {
      const c = l.trim().split(/\s+/);
      return c[1]?.endsWith(`:${hex}`) && c[3] === '0A';
    })) return true;
  }
  return false;
}

/** Resolves once `port` is listened on, or the server has ended (its run then says why). */
export async function serverUp(server: Proc, port: number, ms = 15_000): Promise<void> {
  let ended = false;
  void server.done.then(() => (ended = true));
  for (const end = Date.now() + ms; !ended && !listening(port) && Date.now() < end;) await new Promise((r) => setTimeout(r, 25));
}

/** The launchers of one spec: alice's commands with the daemon's root in SOFTVERBS_ROOT, as a user sets it. */
export function launchers(root: () => string) {
  const alice = testUser('svtest-alice');
  const env = (r = root()) => ({ ...process.env, SOFTVERBS_ROOT: r });
  /** rdma-core's program through `softverbs exec` (the root from SOFTVERBS_ROOT), as alice */
  const c = (tool: string, ...args: string[]): string[] =>
    [...alice.as, process.execPath, join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--', join(C_TOOLS, tool), ...args];
  /** our TypeScript tool of that name, as alice */
  const ours = (tool: string, ...args: string[]): string[] => [...alice.as, process.execPath, join(DIST, 'src', 'bin', `${tool}.js`), ...args];
  return { alice, env, c, ours };
}

/**
 * A server and its client on a fresh TCP port: `server(port)` is started, the client `client(port)` once the
 * server listens; both runs, server first. `ms` bounds each.
 */
export async function pair(server: (port: string) => string[], client: (port: string) => string[], env: NodeJS.ProcessEnv, ms = 30_000, clientEnv = env): Promise<[Run & { ms: number; stdout: string }, Run & { ms: number; stdout: string }]> {
  const port = await freePort();
  const s = start(server(String(port)), env, ms);
  await serverUp(s, port);
  const c = start(client(String(port)), clientEnv, ms);
  return Promise.all([s.done, c.done]);
}
