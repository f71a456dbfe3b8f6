/**
 * The software RoCE device (what rxe's `struct rxe_dev` is): GID table,
 * port, QPN and key allocation, counters, and the packet path between the
 * requester, responder and completer. Packets between QPs of devices in
 * this daemon travel as descriptors through one FIFO; the wire (RoCEv2 over
 * UDP) plugs in at `xmit` / `receive`.
 */
import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { xorshift32 } from '../common/rng.js';
import { isIPv4 } from 'node:net';
import { networkInterfaces } from 'node:os';
import { EventType, Mtu, PortState, QpType } from '../abi/enums.js';
import * as completer from './completer.js';
import type { Mr, Srq } from './objects.js';
import { M, OPCODES } from './opcodes.js';
import { Pkt, PktPool } from './packet.js';
import { encodeFrame } from './codec.js';
import type { PcapWriter } from './pcap.js';
import { gidIp, type RoceTransport } from './transport.js';
import { WqeState, type Qp } from './qp.js';
import * as requester from './requester.js';
import * as responder from './responder.js';

/** rxe's counter names (`rdma statistic show`). */
export const COUNTER_NAMES = [
  'sent_pkts', 'rcvd_pkts', 'duplicate_request', 'out_of_seq_request', 'rcvd_rnr_err', 'send_rnr_err', 'rcvd_seq_err',
  'ack_deferred', 'retry_exceeded_err', 'retry_rnr_exceeded_err', 'completer_retry_err', 'send_err', 'link_downed',
  'rdma_sends', 'rdma_recvs',
] as const;
export type CounterName = (typeof COUNTER_NAMES)[number];

/** The IPv4-mapped or IPv6 GID of an address. */
export function gidOf(addr: string): Uint8Array {
  const g = new Uint8Array(16);
  if (isIPv4(addr)) {
    g[10] = g[11] = 0xff;
    addr.split('.').forEach((p, i) => (g[12 + i] = Number(p)));
    return g;
  }
  // expand :: and write 8 groups
  const [head, tail] = addr.includes('::') ? addr.split('::') : [addr, ''];
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = [...h, ...new Array(8 - h.length - t.length).fill('0'), ...t];
  groups.forEach((x, i) => {
    const v = parseInt(x || '0', 16);
    g[2 * i] = v >> 8;
    g[2 * i + 1] = v & 0xff;
  });
  return g;
}

export function gidString(g: Uint8Array): string {
  const parts: string[] = [];
  for (let i = 0; i < 16; i += 2) parts.push(((g[i]! << 8) | g[i + 1]!).toString(16).padStart(4, '0'));
  return parts.join(':');
}

/** GID equality; runs for every packet, so a plain loop from the end, where GIDs differ. */
function sameGid(a: Uint8Array, b: Uint8Array): boolean {
  if (a === b) return true;
  if (a.length !== 16 || b.length !== 16) return false;
  for (let i = 15; i >= 0; i--) if (a[i] !== b[i]) return false;
  return true;
}

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
      if (!k || !(k in v) || s === undefined || !Number.isFinite(n)) throw new Error(`--fault "${spec}": expected drop=P,dup=P,reorder=P,delay=P,delayms=MS,seed=N`);
      if (k === 'delayms' && (n < 0 || n > 10_000)) throw new Error(`--fault "${spec}": delayms must be between 0 and 10000`);
      else if (k !== 'seed' && k !== 'delayms' && (n < 0 || n > 1)) throw new Error(`--fault "${spec}": ${k} must be between 0 and 1`);
      v[k] = n;
    }
    return new Fault(v.drop!, v.dup!, v.reorder!, v.seed!, v.delay!, v.delayms!);
  }
}

/** Headers a RoCEv2 packet carries beyond its payload, as rxe budgets them (IPv6 + UDP + BTH and extensions + ICRC). */
const ROCE_MAX_HDR = 80;

/** The IB MTU enum for an Ethernet MTU, as rxe derives it: the largest of 256..4096 that fits after the headers (1500 → 1024). */
export function ibMtuOf(ethMtu: number): number {
  const room = ethMtu - ROCE_MAX_HDR;
  let m: number = Mtu.MTU_256;
  for (let e = Mtu.MTU_256; e <= Mtu.MTU_4096; e++) if (128 << e <= room) m = e;
  return m;
}

/**
 * The interface that carries `addr` (all of 127/8 and ::1 are on the loopback
 * interface, though only 127.0.0.1 is listed there), or null. libuv lists
 * only interfaces that are up and running.
 */
export function ifaceOf(addr: string, ifs = networkInterfaces()): string | null {
  const loop = addr.startsWith('127.') || addr === '::1';
  return Object.entries(ifs).find(([, list]) => list?.some((a) => a.address === addr || (loop && a.internal)))?.[0] ?? null;
}

/** The MTU of the interface that carries `addr` (loopback: its 65536); 1500 if no interface has it. */
export function netdevMtu(addr: string): number {
  const name = ifaceOf(addr);
  if (!name) return 1500;
  try {
    return Number(readFileSync(`/sys/class/net/${name}/mtu`, 'utf8'));
  } catch {
    return 1500;
  }
}

/** Devices of this daemon, found by GID: the local fabric. */
/** The last packet of a UC/UD message has left: its WQE completes now. */
function sent(p: Pkt): void {
  const d = p.done!;
  p.done = null;
  // a QP reset (or destroyed) while its last packet waited has forgotten that WQE: nothing to complete
  if (!d.qp.destroyed && d.wqe.state === WqeState.PENDING) completer.completeUnreliable(d.dev, d.qp, d.wqe);
}

/** Packets one drain handles before the event loop gets a turn (about a millisecond of work). */
const DRAIN_BUDGET = 4096;
/** Packets waiting in the fabric's queue past which requesters wait for the next turn. */
const FIFO_CAP = 16384;

export class Fabric {
  readonly devices: SoftDevice[] = [];
  readonly fifo: Pkt[] = [];
  private head = 0;
  private draining = false;
  readonly pool = new PktPool();

  byGid(gid: Uint8Array): SoftDevice | null {
    for (const d of this.devices) for (const g of d.gids) if (sameGid(g, gid)) return d;
    return null;
  }

  /** Queues a packet; it is handled when the current top-level work (doorbell, timer) has finished. */
  push(p: Pkt): void {
    const f = this.fault;
    if (f) {
      if (f.rand() < f.drop) {
        f.dropped++;
        // lost on the way, but for its sender it has left: it goes through the queue as a ghost, so that a
        // UC/UD message completes in its turn and never inside the requester run that sent it
        p.lost = true;
        this.fifo.push(p);
        return;
      }
      if (f.rand() < f.dup) {
        f.duplicated++;
        const twin = this.pool.get();
        Object.assign(twin, p);
        twin.done = null;
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
            this.onBug?.(e as Error);
            this.reset();
          }
        }, f.delayMs);
        return;
      }
      if (f.held === null && f.rand() < f.reorder) {
        // held back until the next packet has gone ahead of it (or the queue runs dry)
        f.reordered++;
        f.held = p;
        return;
      }
      this.fifo.push(p);
      if (f.held) {
        this.fifo.push(f.held);
        f.held = null;
      }
      return;
    }
    this.fifo.push(p);
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
        this.onBug?.(e as Error);
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
        } else this.byGid(p.srcGid)?.transport?.send(p); // not ours: onto the wire of the device that sent it
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

export class SoftDevice {
  readonly gids: Uint8Array[];
  readonly nodeGuid: bigint;
  readonly counters: Record<CounterName, number> = Object.fromEntries(COUNTER_NAMES.map((n) => [n, 0])) as Record<CounterName, number>;
  readonly qps = new Map<number, Qp>();
  readonly mrs = new Map<number, Mr>();
  readonly srqs = new Map<number, Srq>();
  portState: number = PortState.ACTIVE;
  /** Active MTU (ibv_mtu): 4096 on loopback, settable per device. */
  activeMtu: number;
  private nextQpn = 17;
  private nextMrIndex = 1;
  private nextSrqn = 1;
  /** Largest QPN handed out; QPNs are allocated cyclically in [17, maxQpn], as rxe's pool does. */
  readonly maxQpn: number;

  constructor(
    readonly fabric: Fabric,
    readonly name: string,
    readonly index: number,
    readonly addr: string,
    opts: { mtu?: number; maxQpn?: number } = {},
  ) {
    this.gids = [gidOf(addr)];
    const g = this.gids[0]!;
    // rxe derives the node GUID from the netdev's MAC; with no MAC, we take it from the address (EUI-64 style, stable across restarts)
    this.nodeGuid = (0x02n << 56n) | (BigInt(index & 0xff) << 40n) | BigInt(((g[12]! << 24) | (g[13]! << 16) | (g[14]! << 8) | g[15]!) >>> 0);
    this.activeMtu = opts.mtu ?? ibMtuOf(netdevMtu(addr));
    this.maxQpn = opts.maxQpn ?? 0xffffff;
    fabric.devices.push(this);
  }

  get mtuBytes(): number {
    return 128 << this.activeMtu;
  }

  allocQpn(): number {
    const span = this.maxQpn - 17 + 1;
    for (let i = 0; i < span; i++) {
      const q = this.nextQpn;
      this.nextQpn = q >= this.maxQpn ? 17 : q + 1;
      if (!this.qps.has(q)) return q;
    }
    return -1;
  }

  /** A fresh key: index << 8 | a key byte that changes on every registration, so stale keys miss. */
  allocMrKey(): number {
    for (let i = 0; i < 0xffffff; i++) {
      const idx = this.nextMrIndex;
      this.nextMrIndex = idx >= 0xffffff ? 1 : idx + 1;
      if (!this.mrs.has(idx)) return ((idx << 8) | randomInt(256)) >>> 0; // the key byte is not for guessing
    }
    return -1;
  }

  lookupMr = (key: number): Mr | null => {
    const mr = this.mrs.get(key >>> 8);
    return mr && mr.key === key && mr.valid ? mr : null;
  };

  allocSrqn(): number {
    return this.nextSrqn++;
  }

  /** A packet from the requester, responder or completer of one of our QPs. */
  xmit(p: Pkt): void {
    this.counters.sent_pkts++;
    this.fabric.push(p);
  }

  /** A packet for one of our QPs. */
  receive(p: Pkt): void {
    this.counters.rcvd_pkts++;
    const info = OPCODES[p.opcode];
    if (!info) return;
    p.mask = info.mask;
    const qp = this.qps.get(p.destQpn);
    if (!qp) return;
    const transport = p.opcode & 0xe0;
    const want = qp.type === QpType.RC ? 0x00 : qp.type === QpType.UC ? 0x20 : 0x60;
    if (transport !== want) return;
    if (p.mask & M.REQ) responder.receive(this, qp, p);
    else completer.receive(this, qp, p);
  }

  /** Resource-tracking ids as the kernel's restrack gives them (pdn, cqn, mrn, ctxn: per device, from 0; a QP's is its QPN). */
  readonly resIds = new WeakMap<object, number>();
  private readonly resNext = new Map<string, number>();
  assignResId(type: string, obj: object): number {
    const n = this.resNext.get(type) ?? 0;
    this.resNext.set(type, n + 1);
    this.resIds.set(obj, n);
    return n;
  }

  /** The wire, once started (null: this device only reaches devices of its own daemon). */
  transport: RoceTransport | null = null;

  /** A packet that came off the wire; its payload lives only until this returns. */
  receiveFromWire(p: Pkt): void {
    try {
      this.receive(p);
      this.fabric.drain();
    } catch (e) {
      this.onBug?.(e as Error);
      this.fabric.reset();
    } finally {
      this.fabric.pool.put(p);
    }
  }

  /** Packets dropped on their way to a QP, by reason (with the wire's own in `rdma`'s and the mgmt view). */
  readonly drops = new Map<string, number>();
  countDrop(why: string): void {
    this.drops.set(why, (this.drops.get(why) ?? 0) + 1);
  }

  /** Objects of each verbs type held on this device by all contexts (the device limits count these). */
  readonly objCount: Record<string, number> = {};

  /** Doorbells rung by clients (postSend rings only when the SQ is idle). */
  doorbells = 0;

  /** Rings the doorbell of a QP: run its requester, then everything that follows. */
  doorbell(qp: Qp): void {
    this.guard(qp, () => requester.run(this, qp));
  }

  /**
   * Every way into the HCA from outside a packet (doorbell, timer, deferred
   * work) comes through here: a destroyed QP is left alone, and a bug of
   * ours costs that QP (QP_FATAL, ERR) instead of the daemon.
   */
  guard(qp: Qp, f: () => void): void {
    if (qp.destroyed) return;
    try {
      f();
      this.fabric.drain();
    } catch (e) {
      this.onBug?.(e as Error);
      if (!qp.destroyed) {
        try {
          completer.toError(this, qp, 'internal error (QP_FATAL)');
          qp.raise(EventType.QP_FATAL);
        } catch {
          /* already reported */
        }
      }
      this.fabric.reset();
    }
  }

  /** Where internal errors are reported (the daemon's log). */
  onBug: ((e: Error) => void) | null = null;
  /** Told when a QP enters ERR, and why (the daemon's log). */
  onQpError: ((qp: Qp, why: string) => void) | null = null;

  /** Moves a QP to ERR and flushes it (the IBA's error state). */
  toError(qp: Qp): void {
    completer.toError(this, qp);
  }
}

