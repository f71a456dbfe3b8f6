/**
 * Per-process counters for the bench: what each process (each client, each daemon) spent on a measured
 * window, per operation. CPU run time and context switches come from /proc, summed over the process's
 * threads; system calls from `perf stat -e raw_syscalls:sys_enter` where perf can count them. These move
 * far less between machines than the times do, and tell a spinning loss (CPU, involuntary switches) from a
 * wake-up loss (voluntary switches) from a copy or system-call loss.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { availableParallelism, cpus, release } from 'node:os';

/** One line for the table's header: what the numbers were measured on. */
export function machine(): string {
  const c = cpus();
  const may = availableParallelism();
  // under taskset the processes share fewer cores than the machine has: the figures are about those
  return `machine: ${c[0]?.model.trim() || 'unknown CPU'} × ${c.length} vCPUs${may < c.length ? ` (this run pinned to ${may})` : ''}, kernel ${release()}, node ${process.version}`;
}

/** The header line saying what options the measured daemons ran with. */
export const daemonsLine = (args: readonly string[]): string => `daemons: softverbsd ${args.length ? args.join(' ') : '(defaults)'}`;

interface Task {
  cpuNs: number;
  vcs: number;
  ivcs: number;
}

/** /proc/<pid>/task/<tid>: run time in ns (schedstat; without CONFIG_SCHED_INFO, stat's 100 Hz ticks) and switches. */
function readTask(pid: number, tid: string): Task | null {
  try {
    const dir = `/proc/${pid}/task/${tid}`;
    let cpuNs: number;
    try {
      cpuNs = Number(readFileSync(`${dir}/schedstat`, 'utf8').split(' ')[0]);
    } catch {
      const f = readFileSync(`${dir}/stat`, 'utf8').split(') ')[1]!.split(' ');
      cpuNs = (Number(f[11]) + Number(f[12])) * 1e7;
    }
    const status = readFileSync(`${dir}/status`, 'utf8');
    const vcs = Number(/^voluntary_ctxt_switches:\s*(\d+)/m.exec(status)?.[1]);
    const ivcs = Number(/^nonvoluntary_ctxt_switches:\s*(\d+)/m.exec(status)?.[1]);
    return { cpuNs, vcs, ivcs };
  } catch {
    return null; // the thread exited between the listing and the read
  }
}

/** Every thread of the process, by tid; null once the process is gone. */
function readProc(pid: number): Map<string, Task> | null {
  let tids: string[];
  try {
    tids = readdirSync(`/proc/${pid}/task`);
  } catch {
    return null;
  }
  const m = new Map<string, Task>();
  for (const tid of tids) {
    const t = readTask(pid, tid);
    if (t) m.set(tid, t);
  }
  return m;
}

/** Whether this run can count system calls, and if not, why (said once, in the table's header). */
let probed: { ok: boolean; why: string } | null = null;
const missing = new Set<string>();
export function syscallCounting(): { ok: boolean; why: string } {
  if (probed) return probed;
  if (process.env.BENCH_SYSCALLS === '0') return (probed = { ok: false, why: 'BENCH_SYSCALLS=0' });
  const r = spawnSync('perf', ['stat', '-x,', '-e', 'raw_syscalls:sys_enter', '--', 'true'], { encoding: 'utf8' });
  if (r.error) return (probed = { ok: false, why: (r.error as NodeJS.ErrnoException).code === 'ENOENT' ? 'perf is not installed' : `perf: ${r.error.message}` });
  if (r.status !== 0 || !/^\d+,/m.test(r.stderr)) {
    const said = r.stderr.split('\n').find((l) => l.trim()) ?? `exit ${r.status}`;
    return (probed = { ok: false, why: `perf stat cannot count raw_syscalls:sys_enter here (${said.trim()})` });
  }
  return (probed = { ok: true, why: '' });
}

/** Why some or all syscalls figures are '-': the probe's reason and whatever went wrong in a window since. */
export function syscallGaps(): string[] {
  const p = syscallCounting();
  return p.ok ? [...missing] : [p.why];
}

/**
 * One `perf stat` counting the system calls of the given processes' threads (and the threads they start),
 * started disabled, and enabled and disabled through its control pipes so its window is the measured one.
 */
class SyscallCounter {
  private readonly perf: ChildProcess;
  private err = '';
  private sent = 0;
  private acks = 0;
  private waiting: Array<{ n: number; r: () => void }> = [];
  private readonly exited: Promise<void>;
  private failed = '';

  constructor(pids: number[]) {
    this.perf = spawn('perf', ['stat', '-x,', '--per-thread', '-e', 'raw_syscalls:sys_enter', '-D', '-1', '--control', 'fd:3,4', '-p', pids.join(',')], {
      stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'],
    });
    this.perf.stderr!.on('data', (d: Buffer) => (this.err += d.toString()));
    (this.perf.stdio[3] as NodeJS.WritableStream).on('error', () => {}); // perf already gone: exited is what tells
    (this.perf.stdio[4] as NodeJS.ReadableStream).on('data', (d: Buffer) => {
      this.acks += d.toString().split('ack').length - 1;
      this.waiting = this.waiting.filter((w) => (w.n <= this.acks ? (w.r(), false) : true));
    });
    this.exited = new Promise((r) => this.perf.once('close', () => {
      if (this.perf.exitCode !== 0 && !this.failed) this.failed = this.err.split('\n').find((l) => l.trim() && !/^Events (en|dis)abled/.test(l))?.trim() ?? `exit ${this.perf.exitCode}`;
      for (const w of this.waiting) w.r();
      this.waiting = [];
      r();
    }));
    this.perf.once('error', (e) => (this.failed = e.message));
  }

  /** Sends a control command; resolves on perf's ack (or its exit: a target that exited ends perf too). */
  command(c: 'ping' | 'enable' | 'disable'): Promise<void> {
    const n = ++this.sent;
    if (this.perf.exitCode !== null || this.perf.signalCode !== null) return Promise.resolve();
    (this.perf.stdio[3] as NodeJS.WritableStream).write(`${c}\n`);
    return new Promise((r) => (n <= this.acks ? r() : this.waiting.push({ n, r })));
  }

  /** Stops perf; the system calls each tid made while enabled (threads perf saw start are summed into their parents). */
  async counts(): Promise<Map<number, number> | null> {
    if (this.perf.exitCode === null && this.perf.signalCode === null) this.perf.kill('SIGINT');
    await this.exited;
    const m = new Map<number, number>();
    for (const l of this.err.split('\n')) {
      const x = /^(.*?)-(\d+),(\d+|<not counted>|<not supported>),/.exec(l);
      if (x) m.set(Number(x[2]), Number(x[3]) || 0);
    }
    if (m.size === 0) {
      missing.add(`perf stat counted nothing (${this.failed || 'no output'})`);
      return null;
    }
    return m;
  }
}

export interface Proc {
  name: string;
  pid: number;
}

/** What one process spent in a window: null where it could not be read. */
export interface Spent {
  name: string;
  cpuNs: number | null;
  syscalls: number | null;
  vcs: number | null;
  ivcs: number | null;
  /** threads present when the window opened and gone when it closed: what they did in it is not counted */
  lost: number;
}

/** A measured window: begin() and end() read every process's threads; perf counts system calls between them. */
export class Window {
  private before: Array<Map<string, Task> | null> = [];
  private t0 = 0n;
  private constructor(private readonly procs: Proc[], private readonly perf: SyscallCounter | null) {}

  /** Starts the system-call counter (disabled) for the processes: perf takes tens of ms to attach. */
  static async prepare(procs: Proc[]): Promise<Window> {
    const perf = syscallCounting().ok ? new SyscallCounter(procs.map((p) => p.pid)) : null;
    await perf?.command('ping');
    return new Window(procs, perf);
  }

  /** prepare() and begin() at once; resolves once perf counts. */
  static async open(procs: Proc[]): Promise<Window> {
    const w = await Window.prepare(procs);
    await w.begin();
    return w;
  }

  /**
   * Reads the processes at once (so it can be called the moment something is seen to start), then enables perf:
   * this process's own reading of /proc is not counted as its system calls.
   */
  begin(): Promise<void> {
    this.before = this.procs.map((p) => readProc(p.pid));
    this.t0 = process.hrtime.bigint();
    return this.perf?.command('enable') ?? Promise.resolve();
  }

  /**
   * Collects what the window cost. When this process is one of those measured, perf stops counting before it
   * reads /proc (its reading is no system call of the line's); otherwise it reads first, the moment the work is
   * seen to end, before a tool can exit.
   */
  async end(): Promise<Totals> {
    const self = this.procs.some((p) => p.pid === process.pid);
    if (self) await this.perf?.command('disable');
    const after = this.procs.map((p) => readProc(p.pid));
    const seconds = Number(process.hrtime.bigint() - this.t0) / 1e9;
    if (!self) await this.perf?.command('disable');
    const sc = (await this.perf?.counts()) ?? null;
    const tgid = (tid: number): number | null => {
      for (let i = 0; i < this.procs.length; i++) if (this.before[i]?.has(String(tid)) || after[i]?.has(String(tid))) return this.procs[i]!.pid;
      return null;
    };
    const sys = new Map<number, number>();
    if (sc) for (const [tid, n] of sc) {
      const pid = tgid(tid);
      if (pid !== null) sys.set(pid, (sys.get(pid) ?? 0) + n);
    }
    const spent = this.procs.map((p, i): Spent => {
      const b = this.before[i];
      const a = after[i];
      if (!b || !a) return { name: p.name, cpuNs: null, syscalls: sc ? (sys.get(p.pid) ?? 0) : null, vcs: null, ivcs: null, lost: 0 };
      let cpuNs = 0;
      let vcs = 0;
      let ivcs = 0;
      let lost = 0;
      for (const [tid, x] of a) {
        // a thread started in the window counts from zero
        const y = b.get(tid) ?? { cpuNs: 0, vcs: 0, ivcs: 0 };
        cpuNs += x.cpuNs - y.cpuNs;
        vcs += x.vcs - y.vcs;
        ivcs += x.ivcs - y.ivcs;
      }
      for (const tid of b.keys()) if (!a.has(tid)) lost++;
      return { name: p.name, cpuNs, syscalls: sc ? (sys.get(p.pid) ?? 0) : null, vcs, ivcs, lost };
    });
    return { seconds, spent };
  }
}

export interface Totals {
  seconds: number;
  spent: Spent[];
}

/** Per operation: the totals of a window divided by what it did. */
export interface Figures {
  per: string;
  ops: number;
  spent: Spent[];
  roundTrip: boolean;
}

/** `per` names the operation ('WRITE', 'round trip', 'second'); round trips also get their wake-ups. */
export function perOp(t: Totals, ops: number, per: string, roundTrip = false): Figures {
  return { per, ops, spent: t.spent, roundTrip };
}

/** Opens a window on `procs`, runs `work` (which says how many operations it did), and closes the window. */
export async function measured<T>(procs: Proc[], per: string, work: () => Promise<{ value: T; ops: number }>, roundTrip = false): Promise<{ value: T; fig: Figures }> {
  const w = await Window.open(procs);
  const { value, ops } = await work();
  return { value, fig: perOp(await w.end(), ops, per, roundTrip) };
}

/** A figure per op, three significant digits or so; '-' where it was not measured. */
export function num(x: number | null, ops: number, scale = 1): string {
  if (x === null || !(ops > 0)) return '-';
  const v = x / scale / ops;
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v >= 1 ? v.toFixed(2) : v.toFixed(3);
}

export const LABEL = 22;

/** What the rows under a line say, for the header. */
export const PER_PROCESS = [
  'under each line, per process and per operation: CPU-µs run (/proc/PID/task/*/schedstat), syscalls (perf stat -e',
  'raw_syscalls:sys_enter), vcs and ivcs: voluntary and involuntary context switches (/proc/PID/task/*/status); wake-ups',
  'per round trip: the vcs of all its processes. Threads that exit inside a window are not counted: (+N) marks a row',
  'N threads are missing from, (x) a process that exited before the window closed.',
];

/**
 * The rows under a line of the table: one per process, then for round trips the wake-ups. `label` heads the
 * first row (e.g. 'per WRITE', 'engines, per SEND').
 */
export function rows(f: Figures, label = `per ${f.per}`): string[] {
  const out = f.spent.map((s, i) => {
    const left = (i === 0 ? label : '').padEnd(LABEL);
    // marks, explained under the table's head (PER_PROCESS): a row stays within the table's 120 columns
    const lost = s.lost ? `  (+${s.lost})` : s.cpuNs === null ? '  (x)' : '';
    return `    ${left}${s.name.padEnd(30)}${num(s.cpuNs, f.ops, 1e3).padStart(8)} CPU-µs ${num(s.syscalls, f.ops).padStart(7)} syscalls ${num(s.vcs, f.ops).padStart(7)} vcs ${num(s.ivcs, f.ops).padStart(7)} ivcs${lost}`;
  });
  if (f.roundTrip) {
    const v = f.spent.some((s) => s.vcs === null) ? null : f.spent.reduce((a, s) => a + s.vcs!, 0);
    out.push(`    ${''.padEnd(LABEL)}wake-ups per round trip ${num(v, f.ops)} (the vcs of these ${f.spent.length} processes)`);
  }
  return out;
}
