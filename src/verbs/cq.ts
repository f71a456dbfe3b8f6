/**
 * Completion queues (struct ibv_cq) and completion channels (struct
 * ibv_comp_channel). Polling and arming are shared-memory operations on the
 * completion ring; only create, resize and destroy are commands.
 */
import { CqRingConsumer } from '../abi/cq-ring.js';
import { cqLayout, type RingLayout } from '../abi/queue.js';
import * as U from '../abi/uverbs.js';
import type { EventStream } from './channel.js';
import type { Context } from './context.js';
import { VerbsError } from './errors.js';
import { Dependents } from './lifetime.js';
import { withQueueMemory, type QueueMemory } from './queue-memory.js';
import { WcExFlags, type WcFlags, type WcOpcode, type WcStatus } from '../abi/enums.js';
import { WorkCompletion } from './types.js';
import { pauseBriefly, schedYield } from '../native/libc.js';

/** Empty polls in a row after which pollCq gives the CPU away (a power of two). */
const YIELD_EVERY = 16;
/** Empty polls in a row after which pollCq asks whether the daemon is still there, and sleeps a moment instead of yielding (a multiple of YIELD_EVERY). */
const PROBE_EVERY = 1024;

export class CompletionChannel {
  /** events for CQs whose completions() iterator is waiting, by CQ */
  private readonly waiting = new Map<CompletionQueue, () => void>();
  private readonly unclaimed: CompletionQueue[] = [];
  private readers: Array<(cq: CompletionQueue | null) => void> = [];
  private pumping = false;
  private ended = false;
  /** @internal the CQs created with this channel and not destroyed */
  readonly dependents = new Dependents();

  /** @internal */
  constructor(readonly context: Context, /** @internal */ readonly token: number, private readonly stream: EventStream) {}

  /** Reads events off the stream while anyone waits for one, handing each to its CQ's iterator or to getCqEvent. */
  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.waiting.size > 0 || this.readers.length > 0) {
        const rec = await this.stream.next();
        if (!rec) break;
        const cq = this.context.byHandle(rec.readBigUInt64LE(0));
        if (!(cq instanceof CompletionQueue)) continue;
        cq.eventsUnacked++;
        cq.compEvents++;
        const w = this.waiting.get(cq);
        if (w) {
          this.waiting.delete(cq);
          w();
        } else {
          const r = this.readers.shift();
          if (r) r(cq);
          else this.unclaimed.push(cq);
        }
      }
      if (this.waiting.size > 0 || this.readers.length > 0) this.end();
    } finally {
      this.pumping = false;
    }
  }

  private end(): void {
    this.ended = true;
    for (const r of this.readers.splice(0)) r(null);
    for (const w of this.waiting.values()) w();
    this.waiting.clear();
  }

  /** ibv_get_cq_event: waits for the next completion event and returns its CQ (null once closed). */
  getCqEvent(): Promise<CompletionQueue | null> {
    const cq = this.unclaimed.shift();
    if (cq) return Promise.resolve(cq);
    if (this.ended) return Promise.resolve(null);
    const p = new Promise<CompletionQueue | null>((r) => this.readers.push(r));
    void this.pump();
    return p;
  }

  /** @internal waits for the next event of one CQ (its completions() iterator); false once the channel is closed */
  async waitFor(cq: CompletionQueue): Promise<boolean> {
    const i = this.unclaimed.indexOf(cq);
    if (i >= 0) {
      this.unclaimed.splice(i, 1);
      return true;
    }
    if (this.ended) return false;
    const p = new Promise<void>((r) => this.waiting.set(cq, r));
    void this.pump();
    await p;
    return !this.ended;
  }

  /** Completion events as an async iterator. */
  async *[Symbol.asyncIterator](): AsyncGenerator<CompletionQueue> {
    for (;;) {
      const cq = await this.getCqEvent();
      if (!cq) return;
      yield cq;
    }
  }

  /** ibv_destroy_comp_channel: closes the event stream, which releases the channel in the daemon. EBUSY while CQs use it. */
  async destroyCompChannel(): Promise<void> {
    if (this.dependents.size > 0) throw this.dependents.busy('ibv_destroy_comp_channel', 'the channel');
    this.end();
    await this.stream.close();
  }

  /** Destroys the CQs still on the channel, then the channel. */
  async [Symbol.asyncDispose](): Promise<void> {
    await this.dependents.dispose();
    await this.destroyCompChannel();
  }
}

/** How many completions completions() takes per poll. */
const BATCH = 32;

export class CompletionQueue {
  /** @internal */ handle = -1;
  /** usable entries */
  cqe: number;
  /** @internal */ readonly userHandle: bigint;
  /** completion events got and not yet acknowledged (ibv_ack_cq_events) */
  eventsUnacked = 0;
  /** @internal the completion and async events this process got for it: what destroyCq reports when the daemon cannot (gone, or the CQ destroyed already) */
  compEvents = 0;
  /** @internal */ asyncEvents = 0;
  /** @internal the QPs that use it */
  readonly dependents = new Dependents();
  /** @internal polls in a row that found nothing */ protected emptyPolls = 0;
  /** @internal */ protected ring: CqRingConsumer;
  /** @internal */ protected destroyed = false;

  /** @internal */
  constructor(
    readonly context: Context,
    private mem: QueueMemory,
    l: RingLayout & { cqe: number },
    readonly channel: CompletionChannel | null,
  ) {
    this.cqe = l.cqe;
    this.ring = new CqRingConsumer(mem.mapping.buffer, l.slots);
    this.userHandle = context.register(this);
  }

  /**
   * ibv_poll_cq: up to `max` completions (default 1) as new objects, or, given
   * an array of WorkCompletion, fills it from index 0 and returns the count
   * (no allocation). Shared-memory reads, no message: the system calls are those of a run of empty polls, a
   * sched_yield every 16th, a moment's sleep (and, at most once a second, a look for the daemon) every 1,024th
   * (foundNothing).
   */
  pollCq(max?: number): WorkCompletion[];
  pollCq(out: WorkCompletion[]): number;
  pollCq(arg: number | WorkCompletion[] = 1): WorkCompletion[] | number {
    const ch = this.context.cmd;
    ch.ensureUp('ibv_poll_cq');
    if (this.destroyed) throw new VerbsError('ibv_poll_cq', 'EINVAL', 'the CQ is destroyed');
    const fill = Array.isArray(arg);
    const max = fill ? arg.length : arg;
    const out: WorkCompletion[] = fill ? arg : [];
    const ring = this.ring;
    const prod = ring.produced();
    let n = 0;
    while (n < max && ring.cons !== prod) {
      const wc = fill ? out[n] ?? (out[n] = new WorkCompletion()) : new WorkCompletion();
      ring.read(wc);
      if (!fill) out.push(wc);
      n++;
    }
    if (n) {
      ring.publish();
      this.emptyPolls = 0;
    } else this.foundNothing('ibv_poll_cq');
    return fill ? n : out;
  }

  /**
   * A poll that found nothing. Every YIELD_EVERY in a row give the CPU away: the HCA that must run for the
   * completion is a process (the daemon), perhaps on this very core, and a loop that spins for its whole time
   * slice keeps it off for milliseconds (one core: 8 B SENDs 0.044 M/s, 64 KiB WRITEs 0.71 GB/s, against
   * 0.76 M and 14 GB/s yielding). Every PROBE_EVERY (about 100 us of polling), make sure there is still a daemon
   * to fill it (a loop that polls and never gives the event loop a turn would otherwise wait for ever on a dead
   * one), and sleep a moment instead of yielding: a yield never leaves this core idle, so a daemon the
   * scheduler queued on the other core behind a CPU hog waits out the hog's slice (4 ms), while a core left
   * idle pulls it over. Beside a hog (AMD EPYC, 2 vCPUs, `npm run bench:rtt`), the busy-polling round trip
   * across the wire went from 3.4-4.0 ms to 0.19 ms and on one device from 2.8 ms (or 11 us, with a 4 ms
   * p99) to 43-56 us; the quiet machine's stayed 10 and 60-68 us.
   * @internal
   */
  protected foundNothing(verb: string): void {
    const k = ++this.emptyPolls;
    if (k >= PROBE_EVERY) {
      this.emptyPolls = 0;
      this.context.cmd.probe(verb);
      pauseBriefly();
    } else if ((k & (YIELD_EVERY - 1)) === 0) schedYield();
  }

  /** ibv_req_notify_cq: arms the CQ in shared memory; the next (solicited) completion sends an event to the channel. */
  reqNotifyCq(solicitedOnly = false): void {
    this.context.cmd.ensureUp('ibv_req_notify_cq');
    if (this.destroyed) throw new VerbsError('ibv_req_notify_cq', 'EINVAL', 'the CQ is destroyed');
    this.ring.arm(solicitedOnly);
  }

  /** ibv_ack_cq_events */
  ackCqEvents(n: number): void {
    this.eventsUnacked = Math.max(0, this.eventsUnacked - n);
  }

  /**
   * Completions as they come, the completion-channel way: poll; when the CQ is empty, arm it, poll once more
   * (a completion that arrived before the arming sends no event), wait for the channel's event, acknowledge it.
   * Ends when the channel or the CQ goes away. Needs a CQ created with a channel.
   */
  async *completions(opts: { solicitedOnly?: boolean } = {}): AsyncGenerator<WorkCompletion> {
    const ch = this.channel;
    if (!ch) throw new VerbsError('completions', 'EINVAL', 'this CQ has no completion channel: create it with ctx.createCq(n, channel)');
    const batch = Array.from({ length: BATCH }, () => new WorkCompletion());
    for (;;) {
      if (this.destroyed) return;
      let n = this.pollCq(batch);
      if (n === 0) {
        this.reqNotifyCq(opts.solicitedOnly);
        n = this.pollCq(batch);
        if (n === 0) {
          if (!(await ch.waitFor(this))) return;
          this.ackCqEvents(1);
          continue;
        }
      }
      // hand out copies: the batch is reused by the next poll
      for (let i = 0; i < n; i++) yield Object.assign(new WorkCompletion(), batch[i]);
    }
  }

  /** ibv_resize_cq */
  async resizeCq(cqe: number): Promise<void> {
    const l = cqLayout(cqe);
    await withQueueMemory(this.context, l.bytes, 'ibv_resize_cq', async (mem) => {
      const r = await this.context.command('ibv_resize_cq', U.Spec.RESIZE_CQ, { cq_handle: this.handle, cqe }, { memfd_id: mem.id });
      this.mem.free();
      this.mem = mem;
      this.ring = new CqRingConsumer(mem.mapping.buffer, l.slots);
      this.cqe = r.cqe;
    });
  }

  /** @internal */
  get label(): string {
    return `CQ ${this.handle}`;
  }

  /**
   * ibv_destroy_cq (EBUSY while QPs use it, naming them). Once the daemon is gone it only releases the CQ here,
   * and reports the events this process got.
   */
  async destroyCq(): Promise<{ compEventsReported: number; asyncEventsReported: number }> {
    const got = () => ({ compEventsReported: this.compEvents, asyncEventsReported: this.asyncEvents });
    if (this.destroyed) return got();
    let r;
    try {
      r = await this.context.release('ibv_destroy_cq', U.Spec.DESTROY_CQ, { cq_handle: this.handle });
    } catch (e) {
      throw this.dependents.explain(e, 'ibv_destroy_cq', this.label);
    }
    this.releaseLocal();
    return r ? { compEventsReported: r.comp_events_reported, asyncEventsReported: r.async_events_reported } : got();
  }

  /** @internal forgets the CQ here: the daemon has destroyed it */
  releaseLocal(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    this.channel?.dependents.delete(this);
    this.context.unregister(this.userHandle);
    this.mem.free();
  }

  /** Destroys the QPs still using the CQ, then the CQ. */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.destroyed) return;
    await this.dependents.dispose();
    await this.destroyCq();
  }
}

/** The next completion of a CQ, waiting asleep on its channel when it has one (the convenience layer's rdma_get_*_comp). */
export async function nextCompletion(cq: CompletionQueue): Promise<WorkCompletion> {
  for (;;) {
    let [wc] = cq.pollCq(1);
    if (wc) return wc;
    if (!cq.channel) {
      await new Promise((r) => setImmediate(r));
      continue;
    }
    cq.reqNotifyCq(false);
    [wc] = cq.pollCq(1);
    if (wc) return wc;
    if (!(await cq.channel.waitFor(cq))) throw new VerbsError('rdma_get_comp', 'EIO', 'the CQ is gone');
    cq.ackCqEvents(1);
  }
}

/** A completion of an extended CQ: what every one has, and the fields its wcFlags asked for (the others absent). */
export interface WorkCompletionEx {
  wrId: bigint;
  status: WcStatus;
  opcode: WcOpcode;
  vendorErr: number;
  wcFlags: WcFlags;
  byteLen?: number;
  imm?: number;
  qpNum?: number;
  srcQp?: number;
  slid?: number;
  sl?: number;
  dlidPathBits?: number;
}

/**
 * An extended CQ (struct ibv_cq_ex, ibv_create_cq_ex): the same ring, read through ibv_start_poll / ibv_next_poll /
 * ibv_end_poll, or pollEx(); each completion carries the fields its wcFlags asked for. Everything a CompletionQueue
 * does (pollCq, notification, resize, completions()) works on it too.
 */
export class CompletionQueueEx extends CompletionQueue {
  private readonly scratch = new WorkCompletion();
  private polling = false;

  /** @internal */
  constructor(context: Context, mem: QueueMemory, l: RingLayout & { cqe: number }, channel: CompletionChannel | null, readonly wcFlags: WcExFlags) {
    super(context, mem, l, channel);
  }

  private take(verb: string): WorkCompletionEx | null {
    this.context.cmd.ensureUp(verb);
    if (this.destroyed) throw new VerbsError(verb, 'EINVAL', 'the CQ is destroyed');
    const ring = this.ring;
    if (ring.cons === ring.produced()) {
      // only the first take of a poll counts: ibv_next_poll finding the end of a batch is not a poll in vain
      if (!this.polling) this.foundNothing(verb);
      return null;
    }
    ring.read(this.scratch);
    return project(this.scratch, this.wcFlags);
  }

  /**
   * ibv_start_poll: the first completion, or null (ENOENT in C) when there is none; a poll that found one must
   * end with endPoll(), which hands the slots read back to the HCA.
   */
  startPoll(): WorkCompletionEx | null {
    if (this.polling) throw new VerbsError('ibv_start_poll', 'EINVAL', 'a poll is in progress: endPoll() it first');
    const wc = this.take('ibv_start_poll');
    this.polling = wc !== null;
    return wc;
  }

  /** ibv_next_poll: the next completion of this poll, or null. */
  nextPoll(): WorkCompletionEx | null {
    if (!this.polling) throw new VerbsError('ibv_next_poll', 'EINVAL', 'no poll in progress: startPoll() first');
    return this.take('ibv_next_poll');
  }

  /** ibv_end_poll */
  endPoll(): void {
    if (!this.polling) throw new VerbsError('ibv_end_poll', 'EINVAL', 'no poll in progress');
    this.polling = false;
    this.emptyPolls = 0;
    this.ring.publish();
  }

  /** Up to `max` completions in one start/next/end poll. */
  pollEx(max = 1): WorkCompletionEx[] {
    const out: WorkCompletionEx[] = [];
    let wc = this.startPoll();
    if (!wc) return out;
    try {
      while (wc) {
        out.push(wc);
        if (out.length >= max) break;
        wc = this.nextPoll();
      }
    } finally {
      this.endPoll();
    }
    return out;
  }
}

/** The fields of w a CQ created with `flags` hands out. */
function project(w: WorkCompletion, flags: WcExFlags): WorkCompletionEx {
  const o: WorkCompletionEx = { wrId: w.wrId, status: w.status, opcode: w.opcode, vendorErr: w.vendorErr, wcFlags: w.wcFlags };
  if (flags & WcExFlags.BYTE_LEN) o.byteLen = w.byteLen;
  if (flags & WcExFlags.IMM) o.imm = w.imm;
  if (flags & WcExFlags.QP_NUM) o.qpNum = w.qpNum;
  if (flags & WcExFlags.SRC_QP) o.srcQp = w.srcQp;
  if (flags & WcExFlags.SLID) o.slid = w.slid;
  if (flags & WcExFlags.SL) o.sl = w.sl;
  if (flags & WcExFlags.DLID_PATH_BITS) o.dlidPathBits = w.dlidPathBits;
  return o;
}
