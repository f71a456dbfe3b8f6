/**
 * softverbsd's life cycle: the devices, their files and discovery tree (what udev and sysfs give Linux), the
 * links to network interfaces, and the connections admission.ts lets in. What happens on one connection is
 * `connection.ts`; on one context, `context.ts`; a management request, `mgmt.ts`.
 */
import { randomInt } from 'node:crypto';
import { chmodSync, existsSync, lchownSync, lstatSync, readdirSync, readFileSync, rmSync, unlinkSync } from 'node:fs';
import { connect, type BlockList, type Socket } from 'node:net';
import { networkInterfaces } from 'node:os';
import { dirname, join } from 'node:path';
import { EventType, PortState } from '../abi/enums.js';
import * as U from '../abi/uverbs.js';
import { devDir, ibClassDir, verbsClassDir } from '../common/paths.js';
import { CmdError, E } from '../common/errno.js';
import { codeOf, ErrnoError, messageOf } from '../common/errors.js';
import { SoftDevice } from '../hca/device.js';
import { Fabric, type Fault } from '../hca/fabric.js';
import { ifaceOf } from '../hca/netdev.js';
import { PORT_CAP_FLAGS } from './cmd/device.js';
import { guidString } from '../common/format.js';
import { RoceTransport, type WireRequest } from '../hca/transport.js';
import type { PcapWriter } from '../hca/pcap.js';
import { CompChannel, Context } from './context.js';
import { Connection, type ConnectionHost, type Reply } from './connection.js';
import { Log } from './log.js';
import { DEFAULT_USER_LIMITS, Quotas, type UserLimits } from './limits.js';
import { ensureDirUnder, prepareRoot, writeNoFollow } from './tree.js';
import { writePortTables } from './port-tables.js';
import { safeName } from '../common/trust.js';
import { pidAlive } from '../common/proc.js';
import { PinnedAccounts } from './memlock.js';
import { policyFor, type DevicePolicy, type Rule } from './rules.js';
import { RdmaCm } from '../cm/cma.js';
import { endUcma, UcmaConnection, type UcmaFile, type UcmaHost } from './ucma.js';
import { Admission, type Cred, type Listener } from './admission.js';
import { FdExchange } from './fd-exchange.js';
import { listenUnix } from '../native/libc.js';
import { serveMgmt, type MgmtHost } from './mgmt.js';

export interface DeviceSpec {
  name: string;
  addr: string;
  /** ibv_mtu enum value */
  mtu?: number;
  /** how the wire is reached; 'none' runs the device for this daemon's devices only */
  wire?: WireRequest | 'none';
}

export interface DaemonOptions {
  root: string;
  /** mode of a root the daemon creates (default 0755 as root, which serves every user; 0700 otherwise) */
  rootMode?: number;
  devices: DeviceSpec[];
  rules: Rule[];
  fault?: Fault | null;
  pcap?: PcapWriter | null;
  logger?: Log;
  /** per-uid caps (defaults: DEFAULT_USER_LIMITS) */
  limits?: UserLimits;
  /** --allow-dst: the only destinations the wire sends to and rdma_resolve_addr resolves (null: any the host routes) */
  allowDst?: BlockList | null;
  /** --poll-us: how long a busy send queue is still polled after activity (default DEFAULT_POLL_US; 0: never) */
  pollUs?: number;
}

/** Polling a send queue this long after activity catches a client's next post without waiting for its doorbell. */
export const DEFAULT_POLL_US = 200;

interface DevEntry {
  dev: SoftDevice;
  kname: string;
  path: string;
  server: Listener;
}

/** What a token names: a context's async stream or a channel's until attached; a context's fd key (PUT_MEMFD) while it lives. */
type Token = { kind: 'async' | 'fds'; ctx: Context } | { kind: 'comp'; ctx: Context; chan: CompChannel };

/** The rdma_cm file's device number, as sysfs tells a misc device's. */
const RDMA_CM_DEV = '10:58';
/** How long a stopping daemon waits for its rdma_cm clients to take their last events. */
const UCMA_DRAIN_MS = 1000;
/**
 * A process's QP errors logged at once, then one a second: a client that keeps driving its QPs into ERR (a
 * fuzzer, a broken program: thousands a second) must not flood the log, nor spend journald's rate limit for
 * the daemon's other lines. Each line after a gap says how many went unlogged.
 */
const QP_ERROR_BURST = 20;
const QP_ERROR_PER_S = 1;

/** Pending connections the kernel queues per device file (Node's default of 511 refused bursts of connects with EAGAIN). */
const LISTEN_BACKLOG = 4096;

export class Daemon implements ConnectionHost, UcmaHost, MgmtHost {
  readonly fabric = new Fabric();
  readonly pinned = new PinnedAccounts();
  readonly quotas: Quotas;
  /** Which accepted connections the daemon's descriptor table takes in. */
  private readonly admission: Admission;
  readonly devs: DevEntry[] = [];
  readonly contexts = new Set<Context>();
  private tokens = new Map<number, Token>();
  private conns = new Set<Connection>();
  readonly logger: Log;
  readonly log: (msg: string) => void;
  /** The connection manager (rdma_cm, ib_cm and rdma_ucm) and its device file. */
  readonly cm: RdmaCm;
  private cmServer: Listener | null = null;
  /** The descriptor exchange: the library's memfds, C programs' queue memfds and /proc/self/mem. */
  fdExchange: FdExchange | null = null;
  private fdPath: string | null = null;
  private cmPath = '';
  private ucmaTokens = new Map<number, UcmaFile>();
  private ucmaConns = new Set<UcmaConnection>();
  /** Each device's network interface, as last seen, and whether its port is up. */
  private linkState = new Map<SoftDevice, { iface: string | null; up: boolean }>();
  private linkTimer: NodeJS.Timeout | null = null;
  /** Told how long each command took (the metrics' histogram), when someone listens. */
  onCommand: ((cmd: number, seconds: number) => void) | null = null;

  constructor(readonly opts: DaemonOptions) {
    this.logger = opts.logger ?? new Log();
    this.log = (m) => this.logger.info(m);
    const privileged = (uid: number) => this.privileged(uid);
    const limitHit = (uid: number, what: string, msg: string) => this.limitHit(uid, what, msg);
    this.quotas = new Quotas(opts.limits ?? { ...DEFAULT_USER_LIMITS }, privileged, limitHit);
    this.admission = new Admission(this.quotas, privileged, limitHit, this.logger);
    this.fabric.fault = opts.fault ?? null;
    this.fabric.pcap = opts.pcap ?? null;
    if (opts.pcap) opts.pcap.onError = (e) => this.log(`--pcap ${opts.pcap!.path}: ${e.message}; capture stopped`);
    this.fabric.onBug = (e) => this.logger.error(`internal error on a delayed packet: ${e.stack}`);
    this.cm = new RdmaCm({
      devices: () => this.devs.map((d) => d.dev),
      log: (m) => this.log(m),
      debug: (m) => this.logger.debug(m),
      privileged: (uid) => this.privileged(uid),
      allowed: (addr, family) => !opts.allowDst || opts.allowDst.check(addr, family === 4 ? 'ipv4' : 'ipv6'),
    });
  }

  newUcmaToken(f: UcmaFile): number {
    let t: number;
    do t = randomInt(1, 0x7fffffff);
    while (this.ucmaTokens.has(t) || this.tokens.has(t));
    this.ucmaTokens.set(t, f);
    return t;
  }

  ucmaToken(t: number): UcmaFile | undefined {
    return this.ucmaTokens.get(t);
  }

  dropUcmaToken(t: number): void {
    this.ucmaTokens.delete(t);
  }

  charge(uid: number, what: 'objects'): void {
    this.quotas.charge(uid, what);
  }

  release(uid: number, what: 'objects'): void {
    this.quotas.release(uid, what);
  }

  ucmaClosed(c: UcmaConnection): void {
    if (this.ucmaConns.delete(c)) this.quotas.release(c.cred.uid, 'connections');
  }

  /** A device file: a Unix socket born with the rules' mode (umask around the bind) and owner, its connections admitted to `onConn`. */
  private serveFile(path: string, pol: DevicePolicy, what: string, onConn: (s: Socket, cred: Cred) => void): Listener {
    // the socket is born with its mode, so no path is chmod'ed after the fact
    const old = process.umask(~pol.mode & 0o777);
    let fd: number;
    try {
      fd = listenUnix(path, LISTEN_BACKLOG);
    } finally {
      process.umask(old);
    }
    if (pol.uid !== null || pol.gid !== null) lchownSync(path, pol.uid ?? -1, pol.gid ?? -1);
    return this.admission.listen(fd, what, onConn);
  }

  /** The rdma_cm file (what /dev/infiniband/rdma_cm is to librdmacm), its mode and name from the rules as for uverbsN. */
  private async startCm(): Promise<void> {
    const root = this.opts.root;
    const pol = policyFor(this.opts.rules, 'rdma_cm');
    const path = join(root, 'dev', pol.name);
    ensureDirUnder(root, dirname(path));
    await this.recoverStale(path);
    const server = this.serveFile(path, pol, 'rdma_cm', (s, cred) => this.ucmaConns.add(new UcmaConnection(this, s, cred)));
    this.cmServer = server;
    this.cmPath = path;
    const misc = join(root, 'sys', 'class', 'misc', 'rdma_cm');
    ensureDirUnder(root, misc);
    writeNoFollow(join(misc, 'dev_path'), `${path}\n`);
    writeNoFollow(join(misc, 'abi_version'), '4\n');
    // a misc device's number (major 10, a dynamic minor): what fstat() of the file gives a C program through the preload
    // (librdmacm reads no `dev` when it finds the ABI version in sysfs, and then checks only that the file is a char device)
    writeNoFollow(join(misc, 'dev'), `${RDMA_CM_DEV}\n`);
    writeNoFollow(join(misc, 'softverbsd_pid'), `${process.pid}\n`);
  }

  /** The descriptor exchange (fd-exchange.ts): anyone may connect; each request is judged by who sent it. */
  private async startFdExchange(): Promise<void> {
    const path = join(this.opts.root, 'fds.sock');
    await this.recoverStale(path);
    const old = process.umask(0o111);
    let fd: number;
    try {
      fd = listenUnix(path, LISTEN_BACKLOG);
    } finally {
      process.umask(old);
    }
    this.fdExchange = new FdExchange(fd, {
      contextOf: (t) => {
        const k = this.tokens.get(t);
        return k?.kind === 'async' ? k.ctx : undefined;
      },
      contextByKey: (t) => {
        const k = this.tokens.get(t);
        return k?.kind === 'fds' ? k.ctx : undefined;
      },
      log: (m) => this.log(m),
      mayAccept: () => this.admission.mayAccept(),
      limitHit: (uid, what, msg) => this.limitHit(uid, what, msg),
    });
    this.fdPath = path;
  }

  newToken(kind: 'async' | 'comp' | 'fds', ctx: Context, chan?: CompChannel): number {
    let t: number;
    do t = randomInt(1, 0x7fffffff);
    while (this.tokens.has(t));
    this.tokens.set(t, kind === 'comp' ? { kind, ctx, chan: chan! } : { kind, ctx });
    return t;
  }

  dropToken(t: number): void {
    this.tokens.delete(t);
  }

  async start(): Promise<void> {
    const root = this.opts.root;
    prepareRoot(root, this.opts.rootMode ?? (process.getuid?.() === 0 ? 0o755 : 0o700));
    for (const d of [devDir(root), verbsClassDir(root), ibClassDir(root)]) ensureDirUnder(root, d);
    this.sweepStaleSysfs();
    // the uverbs ABI, class-wide as Linux has it (each device's own abi_version is its driver's)
    writeNoFollow(join(verbsClassDir(root), 'abi_version'), `${U.ABI_VERSION}\n`);
    for (const [i, spec] of this.opts.devices.entries()) await this.addDevice(spec, i);
    await this.startCm();
    await this.startFdExchange();
    this.checkLinks();
    this.linkTimer = setInterval(() => {
      try {
        this.checkLinks();
      } catch (e) {
        // listing interfaces needs a descriptor; out of them (EMFILE) the ports keep their state until the next look
        this.logger.once(`links:${codeOf(e)}`, 'warn', `checking the links failed: ${messageOf(e)}`);
      }
      // twice a second: each look lists the interfaces (a netlink dump), the largest part of an idle daemon's CPU
    }, 500).unref();
  }

  private readonly qpErrorLog = new WeakMap<Context, { tokens: number; at: number; unlogged: number }>();

  /** The QP errors of ctx that went unlogged since its last logged one (its close line says them). */
  unloggedQpErrors(ctx: Context): number {
    return this.qpErrorLog.get(ctx)?.unlogged ?? 0;
  }

  /** -1 if ctx's QP error is not to be logged now (counted), else how many went unlogged before it (QP_ERROR_BURST). */
  private qpErrorsUnlogged(ctx: Context): number {
    const now = performance.now();
    let b = this.qpErrorLog.get(ctx);
    if (!b) this.qpErrorLog.set(ctx, (b = { tokens: QP_ERROR_BURST, at: now, unlogged: 0 }));
    b.tokens = Math.min(QP_ERROR_BURST, b.tokens + ((now - b.at) / 1000) * QP_ERROR_PER_S);
    b.at = now;
    if (b.tokens < 1) {
      b.unlogged++;
      return -1;
    }
    b.tokens--;
    const n = b.unlogged;
    b.unlogged = 0;
    return n;
  }

  /** Creates one device: its file, discovery entry and wire (at start, and for `rdma link add`). */
  private async addDevice(spec: DeviceSpec, i: number): Promise<DevEntry> {
    const root = this.opts.root;
    const kname = `uverbs${i}`;
    const pol = policyFor(this.opts.rules, kname);
    const path = join(root, 'dev', pol.name);
    ensureDirUnder(root, dirname(path));
    await this.recoverStale(path);
    const dev = new SoftDevice(this.fabric, spec.name, i, spec.addr, { mtu: spec.mtu, pollUs: this.opts.pollUs ?? DEFAULT_POLL_US });
    dev.onBug = (e) => this.logger.error(`internal error in the HCA of ${spec.name}: ${e.stack}`);
    dev.onQpError = (qp, why) => {
      const c = qp.owner as Context;
      const unlogged = this.qpErrorsUnlogged(c);
      if (unlogged < 0) return;
      this.log(`${spec.name}: QP ${qp.qpn} of pid ${c.pid} (${c.comm}, uid ${c.uid}) entered ERR: ${why}${unlogged ? ` (${unlogged} more QP errors of pid ${c.pid} went unlogged before it)` : ''}`);
    };
    const server = this.serveFile(path, pol, spec.name, (s, cred) => this.conns.add(new Connection(this, s, dev, cred)));
    const entry = { dev, kname, path, server };
    this.devs.push(entry);
    this.cm.addDevice(dev);
    this.writeSysfs(dev, kname, path);
    const wire = await this.startWire(spec, entry);
    const t = dev.transport;
    writeNoFollow(join(verbsClassDir(root), kname, 'wire'), `${t ? `${t.mode}${t.fallback ? `: ${t.fallback}` : ''}` : 'none'}\n`);
    this.linkState.set(dev, { iface: null, up: true });
    const access = `mode ${octal(pol.mode)}${pol.gid !== null ? ` gid ${pol.gid}` : ''}`;
    this.log(`${spec.name}: ${kname} on ${spec.addr}, ${access}, active MTU ${dev.mtuBytes}, ${wire}`);
    return entry;
  }

  /** The device's RoCEv2 wire, started (or none, as the spec asks); what it is, for the log. */
  private async startWire(spec: DeviceSpec, entry: DevEntry): Promise<string> {
    if (spec.wire === 'none') return 'no wire (wire=none): reaches devices of this daemon only';
    const t = new RoceTransport(entry.dev, spec.wire ?? 'auto', this.opts.pcap ?? null);
    t.allowDst = this.opts.allowDst ?? null;
    try {
      await t.start();
    } catch (e) {
      // a device without its wire would look fine and silently talk to no one (or to a stale daemon holding the port)
      this.removeDevice(entry);
      const code = codeOf(e);
      const why = code === 'EADDRINUSE' ? 'it is in use (another softverbsd, or rdma_rxe, on this address?)'
        : code === 'EADDRNOTAVAIL' ? 'no interface has this address' : messageOf(e);
      const port = `${spec.addr.includes(':') ? `[${spec.addr}]` : spec.addr}:4791`;
      const instead = `--device ${spec.name}=${spec.addr},wire=none runs the device without a wire`;
      throw new ErrnoError(code ?? 'EIO', `${spec.name}: cannot bind the RoCEv2 port ${port}: ${why}; ${instead}`);
    }
    entry.dev.transport = t;
    entry.dev.mcast.wire = t;
    return t.mode === 'raw'
      ? 'RoCEv2 on UDP port 4791, arriving frames read through a raw socket (every ICRC exact and checked both ways)'
      : `RoCEv2 on plain UDP port 4791${t.fallback ? ` (${t.fallback})` : ''}`;
  }

  /**
   * `rdma link add NAME type rxe netdev IFACE`: a new device on the
   * interface's first IPv4 address (else its first global IPv6 one).
   */
  async linkAdd(name: string, netdev: string): Promise<void> {
    if (!/^[A-Za-z0-9_.-]{1,63}$/.test(name)) throw new CmdError(E.EINVAL, `link add: "${name}" is not a device name`);
    if (this.devs.some((d) => d.dev.name === name)) throw new CmdError(E.EEXIST, `link add: ${name} exists`);
    const addrs = networkInterfaces()[netdev];
    if (!addrs) throw new CmdError(E.ENODEV, `link add: no network interface ${netdev}`);
    const a = addrs.find((x) => x.family === 'IPv4') ?? addrs.find((x) => x.family === 'IPv6' && !x.address.startsWith('fe80'));
    if (!a) throw new CmdError(E.EADDRNOTAVAIL, `link add: ${netdev} has no IP address for a RoCEv2 GID`);
    if (this.devs.some((d) => d.dev.addr === a.address)) throw new CmdError(E.EEXIST, `link add: ${a.address} (${netdev}) already has a device`);
    const i = this.devs.reduce((m, d) => Math.max(m, d.dev.index + 1), 0);
    await this.addDevice({ name, addr: a.address }, i);
    this.checkLinks();
  }

  /** `rdma link delete NAME`: its clients lose their contexts (as on hot unplug), then the device goes. */
  linkDelete(name: string): void {
    const k = this.devs.findIndex((d) => d.dev.name === name);
    if (k < 0) throw new CmdError(E.ENODEV, `link delete: no device ${name}`);
    const d = this.devs[k]!;
    for (const c of [...this.contexts]) {
      if (c.dev !== d.dev) continue;
      c.deviceFatal();
      c.destroyAll();
      this.contexts.delete(c);
    }
    // (an async event stream just ended with DEVICE_FATAL closes once that is read)
    for (const c of [...this.conns]) if (c.dev === d.dev && !c.sock.writableEnded) c.sock.destroy();
    this.removeDevice(d);
    this.log(`${name}: deleted (rdma link delete)`);
  }

  /** Takes a device out: its file, discovery entry, wire and place on the fabric. */
  private removeDevice(d: DevEntry): void {
    this.cm.removeDevice(d.dev);
    d.server.close();
    d.dev.transport?.stop();
    const k = this.devs.indexOf(d);
    if (k >= 0) this.devs.splice(k, 1);
    this.linkState.delete(d.dev);
    this.fabric.removeDevice(d.dev);
    rmSync(d.path, { force: true });
    rmSync(join(verbsClassDir(this.opts.root), d.kname), { recursive: true, force: true });
    rmSync(join(ibClassDir(this.opts.root), d.dev.name), { recursive: true, force: true });
  }

  /**
   * The port follows its network interface, as rxe's follows its netdev:
   * up, running and carrying the device's address → ACTIVE, else DOWN. Each change
   * is a PORT_ACTIVE or PORT_ERR event for every context of the device
   * (and a link_downed count on the way down). Polled: Node has no netlink.
   */
  checkLinks(): void {
    const ifs = networkInterfaces();
    for (const [dev, st] of this.linkState) {
      const iface = ifaceOf(dev.addr, ifs);
      // libuv lists only interfaces that are up and running (carrier): that is the port state. (/sys/class/net
      // would describe the namespace sysfs was mounted in, not necessarily the daemon's.)
      const up = iface !== null;
      st.iface = iface;
      if (up === st.up) continue;
      st.up = up;
      dev.portState = up ? PortState.ACTIVE : PortState.DOWN;
      if (!up) dev.counters.link_downed++;
      const port = join(ibClassDir(this.opts.root), dev.name, 'ports', '1');
      try {
        // the interface the address came up on is the device's parent (kept when it goes: rxe's stays bound)
        if (iface) writeNoFollow(join(ibClassDir(this.opts.root), dev.name, 'parent'), `${iface}\n`);
        writeNoFollow(join(port, 'state'), up ? '4: ACTIVE\n' : '1: DOWN\n');
        writeNoFollow(join(port, 'phys_state'), up ? '5: LinkUp\n' : '3: Disabled\n');
      } catch {
        /* tree being removed */
      }
      this.log(`${dev.name}: port 1 ${up ? 'ACTIVE' : iface ? `DOWN (${iface} is down)` : `DOWN (no interface has ${dev.addr})`}`);
      for (const c of this.contexts) if (c.dev === dev) c.asyncEvent(1n, up ? EventType.PORT_ACTIVE : EventType.PORT_ERR, null);
    }
  }

  /** Discovery entries whose daemon is gone are removed (a crashed daemon leaves them behind). */
  private sweepStaleSysfs(): void {
    const root = this.opts.root;
    for (const k of readdirSync(verbsClassDir(root))) {
      if (k === 'abi_version') continue; // the class's own file: rewritten at start
      const dir = join(verbsClassDir(root), k);
      let pid = 0;
      let ibdev = '';
      try {
        if (!lstatSync(dir).isDirectory()) throw new ErrnoError('ENOTDIR', 'not a directory');
        pid = Number(readFileSync(join(dir, 'softverbsd_pid'), 'utf8'));
        ibdev = readFileSync(join(dir, 'ibdev'), 'utf8').trim();
      } catch {
        /* half-written or not ours: stale */
      }
      if (pid && pidAlive(pid)) continue;
      rmSync(dir, { recursive: true, force: true }); // rm never follows a symlink: a planted link is removed, not its target
      // a name read from a file is a name, never a path: anything else in ibdev is ignored
      if (ibdev && safeName(ibdev)) rmSync(join(ibClassDir(root), ibdev), { recursive: true, force: true });
      this.log(`removed stale discovery entry ${k}`);
    }
  }

  /** A socket file left by a dead daemon is removed; a live one means another daemon owns the device. */
  private async recoverStale(path: string): Promise<void> {
    if (!existsSync(path)) return;
    const alive = await new Promise<boolean>((res) => {
      const s = connect(path);
      s.once('connect', () => {
        s.destroy();
        res(true);
      });
      s.once('error', () => res(false));
    });
    if (alive) throw new ErrnoError('EADDRINUSE', `${path} is served by another running softverbsd`);
    unlinkSync(path);
    this.log(`removed stale ${path}`);
  }

  private writeSysfs(dev: SoftDevice, kname: string, path: string): void {
    const root = this.opts.root;
    const v = join(verbsClassDir(root), kname);
    rmSync(v, { recursive: true, force: true });
    ensureDirUnder(root, v);
    writeNoFollow(join(v, 'ibdev'), `${dev.name}\n`);
    writeNoFollow(join(v, 'abi_version'), `${U.RXE_UVERBS_ABI_VERSION}\n`);
    writeNoFollow(join(v, 'dev'), `231:${192 + dev.index}\n`);
    writeNoFollow(join(v, 'dev_path'), `${path}\n`);
    writeNoFollow(join(v, 'softverbsd_pid'), `${process.pid}\n`);
    const d = join(ibClassDir(root), dev.name);
    rmSync(d, { recursive: true, force: true });
    const port = join(d, 'ports', '1');
    ensureDirUnder(root, port);
    const guid = guidString(dev.nodeGuid);
    writeNoFollow(join(d, 'node_guid'), `${guid}\n`);
    writeNoFollow(join(d, 'sys_image_guid'), `${guid}\n`);
    writeNoFollow(join(d, 'node_type'), '1: CA\n');
    // what Linux rxe's device shows (programs reading sysfs themselves see these through the preload): no firmware
    // version (ib_core writes an empty line for a driver without one), rxe's node description, and `parent`, the
    // network interface it is bound to; no bus device (rxe has none), but device/net/IFACE below
    writeNoFollow(join(d, 'fw_ver'), '\n');
    writeNoFollow(join(d, 'node_desc'), 'rxe\n');
    const netdev = ifaceOf(dev.addr);
    if (netdev) writeNoFollow(join(d, 'parent'), `${netdev}\n`);
    writeNoFollow(join(d, 'netdev_addr'), `${dev.addr}\n`);
    writeNoFollow(join(port, 'state'), dev.portState === PortState.ACTIVE ? '4: ACTIVE\n' : '1: DOWN\n');
    writeNoFollow(join(port, 'phys_state'), dev.portState === PortState.ACTIVE ? '5: LinkUp\n' : '3: Disabled\n');
    writeNoFollow(join(port, 'link_layer'), 'Ethernet\n');
    // ib_core's port attributes as QUERY_PORT answers them (cmd/device.ts): a RoCE port has no LID or SM; 1X SDR
    writeNoFollow(join(port, 'cap_mask'), `0x${PORT_CAP_FLAGS.toString(16).padStart(8, '0')}\n`);
    writeNoFollow(join(port, 'lid'), '0x0\n');
    writeNoFollow(join(port, 'lid_mask_count'), '0\n');
    writeNoFollow(join(port, 'sm_lid'), '0x0\n');
    writeNoFollow(join(port, 'sm_sl'), '0\n');
    writeNoFollow(join(port, 'rate'), '2.5 Gb/sec (1X SDR)\n');
    writePortTables(root, port, dev.gids, netdev);
    // device/net/IFACE, as a NIC's PCI function lists its netdev: tools find a device's interface (and, with
    // `ip addr show IFACE`, its address) there. Linux rxe has no parent device, so none; ours says what
    // ndevs says (lo for a 127/8 address), which lets rdma-core's rdmacm tests run.
    if (netdev && /^[^/\0]{1,15}$/.test(netdev) && netdev !== '.' && netdev !== '..') ensureDirUnder(root, join(d, 'device', 'net', netdev));
  }

  connectionClosed(c: Connection): void {
    if (!this.conns.delete(c)) return;
    this.quotas.release(c.cred.uid, 'connections');
  }

  token(t: number): Token | undefined {
    return this.tokens.get(t);
  }

  /** root, or the uid the daemon runs as: the administrator (CAP_NET_ADMIN in Linux's nldev). */
  privileged(uid: number): boolean {
    return uid === 0 || uid === process.getuid?.();
  }

  /** Open connections to the device files (command, event and management). */
  connectionCount(): number {
    return this.conns.size + this.ucmaConns.size;
  }

  /**
   * SIGHUP: the rules again. Modes and ownership apply to the running device
   * files (connected clients keep their connections, as open fds survive a
   * chmod); a changed NAME needs a restart, and says so.
   */
  applyRules(rules: Rule[]): void {
    for (const d of this.devs) {
      const pol = policyFor(rules, d.kname);
      const path = join(this.opts.root, 'dev', pol.name);
      if (path !== d.path) {
        this.logger.warn(`SIGHUP: ${d.kname} would move to ${path}; device files are named at start (restart to rename)`);
        continue;
      }
      // the root is ours and nobody else can write in it, so the path is the socket we made; lchown never follows a link
      if (!lstatSync(d.path).isSocket()) throw new ErrnoError('ENOTSOCK', `${d.path} is no longer our socket`);
      chmodSync(d.path, pol.mode);
      if (pol.uid !== null || pol.gid !== null) lchownSync(d.path, pol.uid ?? -1, pol.gid ?? -1);
      const owner = `${pol.uid !== null ? ` owner ${pol.uid}` : ''}${pol.gid !== null ? ` group ${pol.gid}` : ''}`;
      this.log(`SIGHUP: ${d.path} mode ${octal(pol.mode)}${owner}`);
    }
    if (this.cmPath) {
      const pol = policyFor(rules, 'rdma_cm');
      if (join(this.opts.root, 'dev', pol.name) !== this.cmPath) {
        this.logger.warn('SIGHUP: rdma_cm would move; device files are named at start (restart to rename)');
      } else if (lstatSync(this.cmPath).isSocket()) {
        chmodSync(this.cmPath, pol.mode);
        if (pol.uid !== null || pol.gid !== null) lchownSync(this.cmPath, pol.uid ?? -1, pol.gid ?? -1);
        this.log(`SIGHUP: ${this.cmPath} mode ${octal(pol.mode)}`);
      }
    }
    this.opts.rules = rules;
  }

  /** Logs a limit a client hit, once per user and limit (the client gets its errno every time). */
  limitHit(uid: number, limit: string, msg: string): void {
    this.logger.once(`${uid}:${limit}`, 'warn', `uid ${uid} hit ${limit}: ${msg}`);
  }

  /** Management requests (what netlink serves to `rdma`): mgmt.ts. */
  mgmt(frame: Buffer, reply: Reply, uid: number): void {
    serveMgmt(this, frame, reply, uid);
  }

  netdevOf(dev: SoftDevice): string | null {
    return this.linkState.get(dev)?.iface ?? null;
  }

  async stop(): Promise<void> {
    if (this.linkTimer) clearInterval(this.linkTimer);
    this.cmServer?.close();
    this.fdExchange?.close();
    if (this.fdPath) rmSync(this.fdPath, { force: true });
    // every device goes, as on removal: each cm_id on one hears DEVICE_REMOVAL before its event stream ends
    for (const d of this.devs) {
      this.cm.removeDevice(d.dev);
      d.server.close();
      d.dev.transport?.stop();
    }
    for (const c of this.contexts) c.deviceFatal();
    for (const c of this.conns) if (!c.sock.writableEnded) c.sock.destroy();
    this.admission.close();
    await Promise.all([...this.ucmaConns].map((c) => endUcma(c, UCMA_DRAIN_MS)));
    if (this.cmPath) rmSync(this.cmPath, { force: true });
    rmSync(join(this.opts.root, 'sys', 'class', 'misc', 'rdma_cm'), { recursive: true, force: true });
    for (const c of this.contexts) c.destroyAll();
    this.contexts.clear();
    for (const d of this.devs) {
      rmSync(d.path, { force: true });
      rmSync(join(verbsClassDir(this.opts.root), d.kname), { recursive: true, force: true });
      rmSync(join(ibClassDir(this.opts.root), d.dev.name), { recursive: true, force: true });
    }
    rmSync(join(verbsClassDir(this.opts.root), 'abi_version'), { force: true });
    this.opts.pcap?.close();
  }
}

/** A file mode as ls and chmod write it (0666). */
function octal(mode: number): string {
  return mode.toString(8).padStart(4, '0');
}
