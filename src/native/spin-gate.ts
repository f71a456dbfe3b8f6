/**
 * When the daemon may spin. Polling a send queue or a socket instead of
 * sleeping saves a wake-up per message (on a VM, where a sleeping vCPU must be
 * woken through the hypervisor, tens of microseconds), but a spinner holds a
 * core: with more busy processes than cores (two busy-polling clients and two
 * daemons on 2 vCPUs, or everything pinned to one), a client waits behind the
 * daemons' polling turns for the core it needs to post, and the message it
 * would post is what the daemon is polling for.
 *
 * So a polling turn asks the gate first. It reads the kernel's count of
 * runnable tasks (the fourth field of /proc/loadavg, this process included)
 * and compares it with the cores this process may run on, plus one (on more
 * than one core): the process the daemon has just woken (a client, for its
 * completion), which the turn's sched_yield hands the core to. While the count stays within that the
 * daemon polls as before. Once it has stayed past it for SUSTAIN_MS, spinners
 * outnumber cores: the daemon lets its queues go idle (their clients ring)
 * and sleeps until a doorbell or a frame wakes it, and polls again once a
 * reading finds room. A moment's crowd (a GC thread, a woken client) does not
 * stop it.
 *
 * Measured (bench/rtt.ts, AMD EPYC, 2 vCPUs, 8 B SEND round trips): with
 * everything pinned to one core (`taskset -c 0`) the round trips came down
 * from 537 to 71 us on one device and from 934 to 203 us across the wire
 * (busy-polling clients), and from 729 to 224 us across the wire with clients
 * on events; on both cores unpinned they stay where polling always had them.
 *
 * The read is one pread(2) of a file kept open, at most once per GATE_MS
 * (about 1.6 us here), by the polling turn only; the per-message paths read
 * the last answer.
 */
import { openSync, readSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/** How long one reading of the run queue holds (ms): many polling turns of the event loop. */
const GATE_MS = 0.1;

/** How long the run queue must stay longer than the cores before the spinner gives up its core (ms). */
const SUSTAIN_MS = 1;
/**
 * Runnable tasks past the cores that still leave the spinner its core: one, the process it just woke (a client
 * for its completion), which the turn's sched_yield hands the core to on another core's behalf. Past that,
 * spinners outnumber cores. On one core there is no other core: there the daemon spins only alone. A daemon at
 * nice -20 sharing a core with a busy-polling client leaves the client about 1% of it, yields or not (EEVDF
 * moves a heavy task's deadline by its weighted slice, a sliver): everything pinned to one core, the bench's
 * same-device SEND rate fell to 0.017 M a second with the one task of slack.
 */
const slack = (cores: number) => (cores > 1 ? 1 : 0);

export type SpinMode = 'auto' | 'always';

export class SpinGate {
  private fd = -1;
  private readonly buf = Buffer.alloc(128);
  private checked = -Infinity;
  /** the last answer: may the daemon poll (read per message, so no clock or file is read for it) */
  open = true;
  /** when the run queue was first seen longer than the cores, in the stretch that goes on (-1: it is not) */
  private contendedSince = -1;
  /** Readings of the run queue that let the daemon poll, and that stopped it (`softverbs mgmt devices`: spin). */
  granted = 0;
  refused = 0;
  /** How many readings found each count of runnable tasks (0 to 15, the last: 15 or more). */
  readonly runnable = new Array<number>(16).fill(0);

  /** spinners under way (a device's send-queue poller, a transport's socket reader) */
  private spinners = 0;
  /** the priority the daemon sleeps at, to restore when the last spinner stops (null: never changed) */
  private sleepNice: number | null = null;
  private setNice: ((nice: number) => void) | null = null;

  constructor(
    /** 'auto': poll while the spinners fit the cores; 'always': whenever there is reason to (before the gate) */
    public mode: SpinMode,
    private readonly cores = availableParallelism(),
  ) {}

  /**
   * A polling turn asks: may it go on? `now` is the turn's performance.now(). The run queue is read at most
   * once per GATE_MS; between readings the last answer holds (`open`, which the per-message paths read).
   */
  mayPoll(now: number): boolean {
    if (this.mode === 'always') return true;
    if (now - this.checked >= GATE_MS) {
      this.checked = now;
      const r = this.running();
      this.runnable[Math.min(r, 15)]!++;
      if (r <= this.cores + slack(this.cores)) this.contendedSince = -1;
      else if (this.contendedSince < 0) this.contendedSince = now;
      this.open = this.contendedSince < 0 || now - this.contendedSince < SUSTAIN_MS;
      if (this.open) this.granted++;
      else this.refused++;
    }
    return this.open;
  }

  /**
   * The daemon wakes at a high priority (softverbsd --nice, -20 by default: a woken daemon preempts a program
   * polling its CQ, as rxe's softirq does) but spins at the clients' own: spinning at -20, a daemon left a client
   * on its core about 1% of it, yields or not (EEVDF moves a heavy task's deadline on a yield by its weighted
   * slice, a sliver). `set` applies a nice to the event loop's thread.
   */
  wakeAt(nice: number, set: (nice: number) => void): void {
    if (nice >= 0) return;
    this.sleepNice = nice;
    this.setNice = set;
  }

  /** A spinner starts: the first one drops the thread to nice 0. */
  enter(): void {
    if (this.spinners++ === 0 && this.setNice) this.renice(0);
  }

  /** A spinner stops: the last one restores the waking priority. */
  leave(): void {
    if (this.spinners > 0 && --this.spinners === 0 && this.setNice) this.renice(this.sleepNice!);
  }

  private renice(n: number): void {
    try {
      this.setNice!(n);
    } catch {
      this.setNice = null; // refused once (no CAP_SYS_NICE to raise it again): leave it be
    }
  }

  /** Runnable tasks on the machine now, this one included (/proc/loadavg's "R/T" field); 0 if unreadable. */
  private running(): number {
    try {
      if (this.fd < 0) this.fd = openSync('/proc/loadavg', 'r');
      const n = readSync(this.fd, this.buf, 0, this.buf.length, 0);
      // "0.00 0.01 0.05 3/250 1234": the number before the slash
      let i = 0;
      for (let sp = 0; i < n && sp < 3; i++) if (this.buf[i] === 0x20) sp++;
      let r = 0;
      for (; i < n && this.buf[i]! >= 0x30 && this.buf[i]! <= 0x39; i++) r = r * 10 + this.buf[i]! - 0x30;
      return r;
    } catch {
      return 0;
    }
  }
}

/** The daemon's one gate: its devices' send-queue pollers and its transports' socket readers ask the same. */
export const spinGate = new SpinGate('auto');
