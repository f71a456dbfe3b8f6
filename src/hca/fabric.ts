/**
 * The local fabric: packets between QPs of this daemon's devices travel as
 * descriptors through one FIFO, drained after each piece of top-level work
 * (a doorbell, a timer, a packet off the wire); a packet for a GID none of
 * them has goes out on the wire of the device that sent it. Fault injection
 * (softverbsd --fault) sits at the FIFO's entrance.
 */
import { xorshift32 } from '../common/rng.js';
import { encodeFrame } from './codec.js';
import { gidIp, isV4Gid, sameGid } from './gid.js';
import { isMcastGid } from './mcast.js';
import { type Pkt, PktPool } from './packet.js';
import type { PcapWriter } from './pcap.js';
import { asError, UsageError } from '../common/errors.js';

/** Fault injection: rates in [0, 1], a seeded PRNG, and what it did. */
export class Fault {
  dropped = 0;
  duplicated = 0;
  reordered = 0;
  delayed = 0;
  held: Pkt | null = null;
  readonly rand: () => number;
  constructor(
    readonly drop: number,
    readonly dup: number,
    readonly reorder: number,
    seed: number,
    readonly delay = 0,
    readonly delayMs = 5,
  ) {
    this.rand = xorshift32(seed);
  }

  /** "drop=0.1,dup=0.05,reorder=0.05,delay=0.02,delayms=5,seed=7" → Fault; throws with the reason on a bad spec. */
  static parse(spec: string): Fault {
    const v: Record<string, number> = { drop: 0, dup: 0, reorder: 0, delay: 0, delayms: 5, seed: 1 };
    for (const kv of spec.split(',').filter(Boolean)) {
      const [k, s] = kv.split('=');
      const n = Number(s);
      if (!k || !(k in v) || s === undefined || !Number.isFinite(n)) throw new UsageError(`--fault "${spec}": expected drop=P,dup=P,reorder=P,delay=P,delayms=MS,seed=N`);
      if (k === 'delayms' && (n < 0 || n > 10_000)) throw new UsageError(`--fault "${spec}": delayms must be between 0 and 10000`);
      else if (k !== 'seed' && k !== 'delayms' && (n < 0 || n > 1)) throw new UsageError(`--fault "${spec}": ${k} must be between 0 and 1`);
      v[k] = n;
    }
    return new Fault(v.drop!, v.dup!, v.reorder!, v.seed!, v.delay!, v.delayms!);
  }
}

/** The last packet of a UC/UD message has left: its WQE completes now. */
function sent(p: Pkt): void {
  const done = p.done!;
  p.done = null;
  done();
}

/** Packets one drain handles before the event loop gets a turn (about a millisecond of work). */
const DRAIN_BUDGET = 4096;
/** Packets waiting in the fabric's queue past which requesters wait for the next turn. */
const FIFO_CAP = 16384;

/** A device as the fabric sees it: the GIDs it answers to, where its packets go in, its wire. */
export interface Port {
  readonly gids: readonly Uint8Array[];
  /** it takes descriptors that stand for several packets (Pkt.span) */
  readonly spans?: boolean;
  receive(p: Pkt): void;
  /** a multicast packet: taken when the device has QPs in its group */
  receiveMcast?(p: Pkt): void;
  readonly transport: { send(p: Pkt): void; flush(): void } | null;
}

export class Fabric {
  readonly devices: Port[] = [];
  readonly fifo: Pkt[] = [];
  private head = 0;
  private draining = false;
  readonly pool = new PktPool();

  /** The GID looked up last (the same array object: a QP's path, a device's own) and the device that has it. */
  private lastGid: Uint8Array | null = null;
  private lastPort: Port | null = null;

  byGid(gid: Uint8Array): Port | null {
    // every packet is looked up by its destination; a run of them carries one QP's dgid array
    if (gid === this.lastGid) return this.lastPort;
    for (const d of this.devices) {
      for (const g of d.gids) {
        if (sameGid(g, gid)) {
          this.lastGid = gid;
          this.lastPort = d;
          return d;
        }
      }
    }
    return null;
  }

  /** A device leaves the fabric (its packets go nowhere from here on). */
  removeDevice(d: Port): void {
    const i = this.devices.indexOf(d);
    if (i >= 0) this.devices.splice(i, 1);
    this.lastGid = this.lastPort = null;
  }

  /**
   * Queues a packet; it is handled when the current top-level work (doorbell, timer) has finished. Returns
   * where it waits (for stillQueued), or -1 when fault injection took it.
   */
  push(p: Pkt): number {
    const f = this.fault;
    if (f) {
      if (f.rand() < f.drop) {
        f.dropped++;
        // lost on the way, but for its sender it has left: it goes through the queue as a ghost, so that a
        // UC/UD message completes in its turn and never inside the requester run that sent it
        p.lost = true;
        this.fifo.push(p);
        return -1;
      }
      if (f.rand() < f.dup) {
        f.duplicated++;
        const twin = this.pool.get();
        Object.assign(twin, p);
        twin.done = null;
        twin.own = null; // the span buffer stays p's (spans never travel where faults are injected)
        twin.scratch = null; // and so does its payload buffer (the twin carries the same bytes, from p's)
        this.fifo.push(twin);
      }
      if (f.delay > 0 && f.rand() < f.delay) {
        // held for delayms, as a slow path would: the payload is copied now (the sender's memory may be gone by then)
        f.delayed++;
        if (p.payLen > 0) {
          p.payload = p.payload.slice(p.payOff, p.payOff + p.payLen);
          p.payMap = null;
          p.payOff = 0;
        }
        setTimeout(() => {
          this.fifo.push(p);
          try {
            this.drain();
          } catch (e) {
            this.onBug?.(asError(e));
            this.reset();
          }
        }, f.delayMs);
        return -1;
      }
      if (f.held === null && f.rand() < f.reorder) {
        // held back until the next packet has gone ahead of it (or the queue runs dry)
        f.reordered++;
        f.held = p;
        return -1;
      }
      this.fifo.push(p);
      if (f.held) {
        this.fifo.push(f.held);
        f.held = null;
      }
      return -1;
    }
    return this.fifo.push(p) - 1;
  }

  /**
   * Whether a run of packets to `gid` may travel as one descriptor: the device is one of ours and takes them,
   * and nothing looks at packets one by one on the way (fault injection, the capture).
   */
  acceptsSpans(gid: Uint8Array): boolean {
    return this.fault === null && this.pcap === null && this.byGid(gid)?.spans === true;
  }

  /**
   * Whether `p`, queued at `at`, is still waiting (not yet delivered or sent): a responder folds a later ACK
   * into it then (never under fault injection, whose queue order is its own).
   */
  stillQueued(p: Pkt, at: number): boolean {
    return at >= this.head && at < this.fifo.length && this.fifo[at] === p && this.fault === null;
  }

  /** Where internal errors on a delayed packet's path are reported. */
  onBug: ((e: Error) => void) | null = null;

  /**
   * How many packets a requester may add now: what keeps the queue under FIFO_CAP. The queue is drained
   * after each run, so this binds only when many QPs' doorbells arrive in one chunk (each would add its
   * whole budget before any is drained); those wait for the next turn.
   */
  sendRoom(want: number): number {
    return Math.max(0, Math.min(want, FIFO_CAP - (this.fifo.length - this.head)));
  }

  private continuing = false;
  /** The rest of the queue, on the next turn (once, however many drains ran out of budget meanwhile). */
  private continueLater(): void {
    if (this.continuing) return;
    this.continuing = true;
    setImmediate(() => {
      this.continuing = false;
      try {
        this.drain();
      } catch (e) {
        this.onBug?.(asError(e));
        this.reset();
      }
    });
  }

  /** softverbsd --pcap: packets between two devices of this daemon are written as the wire would carry them. */
  pcap: PcapWriter | null = null;
  private readonly pcapFrame = new Uint8Array(40 + 8 + 64 + 4096 + 8);
  private pcapId = 0;
  private capture(p: Pkt): void {
    const src = gidIp(p.srcGid);
    const dst = gidIp(p.dstGid);
    if (src.length !== dst.length) return;
    this.pcapId = (this.pcapId + 1) & 0xffff || 1;
    this.pcap!.write(this.pcapFrame, encodeFrame(p, src, dst, this.pcapId, this.pcapFrame));
  }

  /**
   * A multicast packet: every device of this daemon with QPs in the group gets it here, and it goes onto the
   * wire of the device that sent it (IP multicast to the group's address), for other hosts and daemons.
   */
  private multicast(p: Pkt): void {
    // a group of the other IP family (perftest's default MGID ff01::… from an IPv4 device) has no wire to go on:
    // its members are this daemon's
    const wire = isV4Gid(p.dstGid) === isV4Gid(p.srcGid) ? (this.byGid(p.srcGid)?.transport ?? null) : null;
    // the wire's own capture shows it when it goes out there
    if (this.pcap && !wire) this.capture(p);
    for (const d of this.devices) d.receiveMcast?.(p);
    wire?.send(p);
  }

  /** Seeded packet faults for tests (softverbsd --fault): applied to every packet any device sends. */
  fault: Fault | null = null;

  /** Drops whatever is queued (after an internal error, so a bad packet cannot loop). */
  reset(): void {
    for (let i = this.head; i < this.fifo.length; i++) this.pool.put(this.fifo[i]!);
    this.fifo.length = 0;
    this.head = 0;
    this.draining = false;
  }

  /**
   * Runs the queued packets, including the ones handling them produces, up to DRAIN_BUDGET of them: then
   * what went onto the wire leaves and the rest waits for the next turn of the event loop, so other clients'
   * commands are served in between (a QP talking to itself, or a long READ, made one drain endless).
   * Re-entrant calls return at once.
   */
  drain(): void {
    if (this.draining) return;
    this.draining = true;
    let budget = DRAIN_BUDGET;
    try {
      while (this.head < this.fifo.length) {
        if (budget-- === 0) {
          for (const d of this.devices) d.transport?.flush();
          this.continueLater();
          return;
        }
        const p = this.fifo[this.head++]!;
        // its payload's memory was unmapped while it waited for its turn: lost, like a packet dropped on the way
        if (p.payMap?.unmapped) p.lost = true;
        if (p.lost) {
          if (p.done) sent(p);
          this.pool.put(p);
          continue;
        }
        const dev = this.byGid(p.dstGid);
        if (dev) {
          if (this.pcap) this.capture(p);
          dev.receive(p);
        } else if (isMcastGid(p.dstGid)) this.multicast(p);
        else this.byGid(p.srcGid)?.transport?.send(p); // not ours: onto the wire of the device that sent it
        if (p.done) sent(p);
        this.pool.put(p);
        if (this.head > 1024 && this.head * 2 > this.fifo.length) {
          this.fifo.splice(0, this.head);
          this.head = 0;
        }
      }
      this.fifo.length = 0;
      this.head = 0;
      // what went onto the wire during this drain leaves now, batched
      for (const d of this.devices) d.transport?.flush();
      if (this.fault?.held) {
        const p = this.fault.held;
        this.fault.held = null;
        this.fifo.push(p);
        this.draining = false;
        this.drain();
      }
    } finally {
      this.draining = false;
    }
  }
}

