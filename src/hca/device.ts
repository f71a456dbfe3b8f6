/**
 * The software RoCE device (what rxe's `struct rxe_dev` is): GID table,
 * port, QPN and key allocation, counters, and where packets enter and leave
 * its QPs' engines. Packets between devices of this daemon go through the
 * fabric (`fabric.ts`); the wire (RoCEv2 over UDP, `transport.ts`) plugs
 * in at `transport` and `receiveFromWire`.
 */
import { randomInt } from 'node:crypto';
import { EventType, PortState, QpType } from '../abi/enums.js';
import { GsiPort } from '../cm/gsi.js';
import * as completer from './completer.js';
import { toError } from './completion.js';
import { COUNTER_NAMES, type CounterName } from './counters.js';
import type { Fabric } from './fabric.js';
import { gidOf, isV4Gid } from './gid.js';
import { ibMtuOf, netdevMtu } from './netdev.js';
import type { Mr, Mw, Srq } from './objects.js';
import { M, OPCODES } from './opcodes.js';
import type { Pkt } from './packet.js';
import type { Hca, Qp } from './qp.js';
import * as requester from './requester.js';
import * as responder from './responder.js';
import { Linger } from './linger.js';
import { MCAST_QPN, McastTable } from './mcast.js';
import { MR_INDEX, MW_INDEX } from './mw.js';
import { Scheduler, Task } from './scheduler.js';
import type { RoceTransport } from './transport.js';
import { asError } from '../common/errors.js';

/** index << 8 | a random key byte, for the first index from `from` on (cyclically in its range) that `used` lacks; -1 if none. */
function freshKey(used: ReadonlyMap<number, unknown>, from: number, r: { min: number; max: number }): number {
  const span = r.max - r.min + 1;
  for (let i = 0, idx = from; i < span; i++, idx = idx >= r.max ? r.min : idx + 1) {
    if (!used.has(idx)) return ((idx << 8) | randomInt(256)) >>> 0; // the key byte is not for guessing
  }
  return -1;
}

export class SoftDevice implements Hca {
  readonly gids: Uint8Array[];
  readonly nodeGuid: bigint;
  readonly counters: Record<CounterName, number> = Object.fromEntries(COUNTER_NAMES.map((n) => [n, 0])) as Record<CounterName, number>;
  readonly qps = new Map<number, Qp>();
  readonly mrs = new Map<number, Mr>();
  /** memory windows by index (their keys' upper 24 bits, in MW_INDEX's range) */
  readonly mws = new Map<number, Mw>();
  readonly srqs = new Map<number, Srq>();
  portState: number = PortState.ACTIVE;
  /** Active MTU (ibv_mtu): 4096 on loopback, settable per device. */
  activeMtu: number;
  private nextQpn = 17;
  private nextMrIndex: number = MR_INDEX.min;
  private nextMwIndex: number = MW_INDEX.min;
  private nextSrqn = 1;
  /** Largest QPN handed out; QPNs are allocated cyclically in [17, maxQpn], as rxe's pool does. */
  readonly maxQpn: number;

  constructor(
    readonly fabric: Fabric,
    readonly name: string,
    readonly index: number,
    readonly addr: string,
    opts: { mtu?: number; maxQpn?: number; pollUs?: number } = {},
  ) {
    this.linger = new Linger<Qp>(opts.pollUs ?? 0, (qp) => {
      this.polled++;
      this.sched.run(qp, Task.REQUESTER);
    });
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
    const k = freshKey(this.mrs, this.nextMrIndex, MR_INDEX);
    if (k >= 0) this.nextMrIndex = (k >>> 8) >= MR_INDEX.max ? MR_INDEX.min : (k >>> 8) + 1;
    return k;
  }

  /** A memory window's key, from the index range of its own (so any key names an MR or a window, never both). */
  allocMwKey(): number {
    const k = freshKey(this.mws, this.nextMwIndex, MW_INDEX);
    if (k >= 0) this.nextMwIndex = (k >>> 8) >= MW_INDEX.max ? MW_INDEX.min : (k >>> 8) + 1;
    return k;
  }

  lookupMr = (key: number): Mr | null => {
    const mr = this.mrs.get(key >>> 8);
    return mr && mr.key === key && mr.valid ? mr : null;
  };

  /** The window whose current rkey is `rkey` (whatever its state). */
  lookupMw(rkey: number): Mw | null {
    const mw = this.mws.get(rkey >>> 8);
    return mw && mw.rkey === rkey ? mw : null;
  }

  allocSrqn(): number {
    return this.nextSrqn++;
  }

  newPkt(): Pkt {
    return this.fabric.pool.get();
  }

  freePkt(p: Pkt): void {
    this.fabric.pool.put(p);
  }

  /** A packet from the requester, responder or completer of one of our QPs; where it waits in the fabric. */
  xmit(p: Pkt): number {
    this.counters.sent_pkts += p.span;
    return this.fabric.push(p);
  }

  readonly spans = true;
  acceptsSpans(gid: Uint8Array): boolean {
    return this.fabric.acceptsSpans(gid);
  }

  stillQueued(p: Pkt, at: number): boolean {
    return this.fabric.stillQueued(p, at);
  }

  /** A packet for one of our QPs. */
  receive(p: Pkt): void {
    this.counters.rcvd_pkts += p.span;
    const info = OPCODES[p.opcode];
    if (!info) return;
    p.mask = info.mask;
    // QP1, the GSI: management datagrams (the CM's MADs) for the daemon, never a consumer's QP
    if (p.destQpn === 1) return this.gsi.receive(p);
    if (p.destQpn === MCAST_QPN) return this.toGroup(p);
    const qp = this.qps.get(p.destQpn);
    if (!qp) return;
    const transport = p.opcode & 0xe0;
    const want = qp.type === QpType.RC ? 0x00 : qp.type === QpType.UC ? 0x20 : 0x60;
    if (transport !== want) return;
    if (p.mask & M.REQ) responder.receive(qp, p);
    else completer.receive(qp, p);
  }

  /** The multicast groups this device's QPs are attached to. */
  readonly mcast = new McastTable();

  /** A multicast packet inside the daemon (the fabric offers it to every device): taken by a device with QPs in its group. */
  receiveMcast(p: Pkt): void {
    if (this.mcast.lookup(p.dstGid)) this.receive(p);
  }

  /**
   * rxe_rcv_mcast_pkt: a copy for each QP attached to the group the destination GID names; each QP checks it as
   * a UD request of its own (state, Q_Key), and one that refuses it costs the others nothing.
   */
  private toGroup(p: Pkt): void {
    const g = this.mcast.lookup(p.dstGid);
    if (!g) return this.countDrop('multicast group not joined');
    if ((p.opcode & 0xe0) !== 0x60 || !(p.mask & M.REQ)) return this.countDrop('multicast packet that is no UD request');
    const qps = g.qps;
    for (let i = 0; i < qps.length; i++) responder.receive(qps[i]!, p);
  }

  /** Whether a GID is one of this daemon's devices' (a multicast frame of ours that the wire looped back). */
  readonly ownGid = (g: Uint8Array): boolean => this.fabric.byGid(g) !== null;
  readonly ownAddrs4 = (): number[] =>
    this.fabric.devices.flatMap((d) => d.gids).filter(isV4Gid).map((g) => ((g[12]! << 24) | (g[13]! << 16) | (g[14]! << 8) | g[15]!) >>> 0);

  /** QP1: the connection manager registers with it as its agent. */
  readonly gsi = new GsiPort(this);

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

  /**
   * A packet that came off the wire; its payload lives only until this
   * returns. What it causes (ACKs, responses, completions' follow-ups) waits
   * in the fabric until the batch it came in has been handed over
   * (wireBatchDone), so a batch's answers leave together.
   */
  receiveFromWire(p: Pkt): void {
    try {
      this.receive(p);
    } catch (e) {
      this.onBug?.(asError(e));
      this.fabric.reset();
    } finally {
      this.fabric.pool.put(p);
    }
  }

  wireBatchDone(): void {
    try {
      this.fabric.drain();
    } catch (e) {
      this.onBug?.(asError(e));
      this.fabric.reset();
    }
  }

  /** Packets dropped on their way to a QP, by reason (with the wire's own in `rdma`'s and the mgmt view). */
  readonly drops = new Map<string, number>();
  countDrop(why: string): void {
    this.drops.set(why, (this.drops.get(why) ?? 0) + 1);
  }

  /** Objects of each verbs type held on this device by all contexts (the device limits count these). */
  readonly objCount: Record<string, number> = {};

  /** Polls busy send queues for a while after activity (softverbsd --poll-us). */
  readonly linger: Linger<Qp>;

  /** Doorbells rung by clients (postSend rings only when the SQ is idle). */
  doorbells = 0;
  /** Times polling found new WQEs (or caught them as a queue went idle): doorbells that were not needed. */
  polled = 0;
  /** Completion events sent to clients' channels (each one wakes a client that sleeps on its CQ). */
  compEvents = 0;

  /** Rings the doorbell of a QP: run its requester, then everything that follows. */
  doorbell(qp: Qp): void {
    this.sched.run(qp, Task.REQUESTER);
  }

  /**
   * Every way into a QP's engines from outside a packet (doorbell, timer, deferred work) goes through the
   * scheduler: a destroyed QP is left alone, the packets a task made are delivered before it returns, and a
   * bug of ours costs that QP (QP_FATAL, ERR) instead of the daemon.
   */
  readonly sched: Scheduler<Qp> = new Scheduler<Qp>({
    run: (qp, task) => {
      switch (task) {
        case Task.REQUESTER:
          return requester.run(qp);
        case Task.RETRY:
          // an RNR NAK's wait is not cut short: the NAK-sequence-error that follows it (the packets sent behind the
          // refused one arrive out of order) asks for a retry too, and going back at once sent the whole window
          // again into a receive queue still empty, RNR after RNR (Linux rxe: wait_for_rnr_timer); the RNR timer's
          // retry goes back from the same place
          if (qp.comp.rnrTimer !== null) return;
          return requester.retry(qp);
        case Task.RNR_RETRY:
          qp.comp.rnrTimer = null;
          return requester.retry(qp);
        case Task.TIMEOUT:
          return completer.timeout(qp);
        case Task.RESPOND:
          return responder.pump(qp);
        case Task.CQ_OVERRUN:
          return toError(qp, 'send CQ overrun (CQ_ERR)');
      }
    },
    settle: () => this.fabric.drain(),
    fatal: (qp, e) => {
      this.onBug?.(asError(e));
      if (!qp.destroyed) {
        try {
          toError(qp, 'internal error (QP_FATAL)');
          qp.raise(EventType.QP_FATAL);
        } catch {
          /* already reported */
        }
      }
      this.fabric.reset();
    },
    room: (want) => this.fabric.sendRoom(want),
  });

  /** Where internal errors are reported (the daemon's log). */
  onBug: ((e: Error) => void) | null = null;
  /** Told when a QP enters ERR, and why (the daemon's log). */
  onQpError: ((qp: Qp, why: string) => void) | null = null;

  qpError(qp: Qp, why: string): void {
    this.onQpError?.(qp, why);
  }
}
