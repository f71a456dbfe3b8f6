/**
 * When and how the daemon spins. Polling a send queue or a socket instead of
 * sleeping saves a wake-up per message (on a VM, where a sleeping vCPU must be
 * woken through the hypervisor, tens of microseconds), but a spinner holds a
 * core that a client may need to post the very message it polls for.
 *
 * How: the daemon polls at nice 0, its clients' own, and sleeps at its --nice
 * (-20 by default, so that a woken daemon preempts a C program spinning on its
 * CQ, as rxe's softirq does). Polling at -20, a yield hardly moved the
 * daemon's EEVDF deadline (a heavy task's slice, weighted, is a sliver) and a
 * busy-polling client on its core got about 1% of it: everything pinned to
 * one core, the 8 B round trip took 537 us on one device and 934 us across
 * the wire; polling at nice 0, 45 and 196.
 *
 * When (--spin): 'always' (the default) polls whenever there is reason to.
 * 'auto' first asks whether the spinners fit the cores: the kernel's count of
 * runnable tasks (the fourth field of /proc/loadavg, this process included)
 * against the cores this process may run on, plus one on more than one core
 * (the process the daemon just woke, which the turn's yield hands the core
 * to). Once the count has stayed past that for SUSTAIN_MS, the daemon lets its
 * queues go idle (their clients ring) and sleeps until a doorbell or a frame
 * wakes it, and polls again once a reading finds room. Measured (bench/rtt.ts,
 * AMD EPYC, 2 vCPUs): beside a CPU hog, two busy-polling clients and two
 * daemons across the wire took 3.5 ms a round trip with 'always' and 0.17 ms
 * with 'auto'; on the quiet machine 'auto' stopped those same daemons (four
 * spinners on two cores) and the round trip went from 62 to 158 us, so it is
 * not the default. A wider limit (twice the cores) flapped between polling
 * and sleeping beside the hog, and a daemon woken at -20 then waited for the
 * kernel's tick to preempt the spinning clients (4 ms round trips).
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
/** Runnable tasks, this one included, that leave a spinner its core: the cores, plus one on more than one core. */
const limit = (cores: number) => (cores > 1 ? cores + 1 : 1);

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
      if (r <= limit(this.cores)) this.contendedSince = -1;
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
export const spinGate = new SpinGate('always');
