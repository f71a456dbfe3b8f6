/**
 * softverbsd's command line and life cycle: options, config, rules, then the
 * Daemon; readiness ("softverbsd: ready" on stderr, READY=1 to systemd);
 * SIGHUP re-reads the rules; SIGINT/SIGTERM remove the device files and stop.
 * The bin (src/bin/softverbsd.ts) only calls main().
 */
import { readFileSync } from 'node:fs';
import { BlockList, isIP, isIPv4, isIPv6 } from 'node:net';
import { parseArgs } from 'node:util';
import { mtuOfBytes } from '../abi/enums.js';
import { ownRoot } from '../common/paths.js';
import { Daemon, type DeviceSpec } from './server.js';
import { parseRules, type Rule } from './rules.js';
import { Log, LOG_LEVELS, type LogLevel } from './log.js';
import { Metrics, parseListen } from './metrics.js';
import { DEFAULT_USER_LIMITS, parseLimits, type UserLimits } from './limits.js';
import { Fault } from '../hca/fabric.js';
import { PcapWriter } from '../hca/pcap.js';
import { sdNotify, setFairSchedule } from '../native/libc.js';
import { goneFrom, npmLauncherChain } from './launcher.js';
import { codeOf, messageOf, UsageError } from '../common/errors.js';
import { getPriority } from 'node:os';
import { spinGate, type SpinMode } from '../native/spin-gate.js';

const HELP = `Usage: softverbsd [options]

Runs the softverbs device daemon in the foreground: uverbs device files, the
command ABI, resource tracking, memory pinning and the software RoCE HCA.

Options:
  --root DIR               root of dev/ and sys/ (default: $SOFTVERBS_ROOT, /run/softverbs as root,
                           $XDG_RUNTIME_DIR/softverbs, else /tmp/softverbs-<uid>)
  --root-mode MODE         mode of the root when softverbsd creates it (default 0755 as root, else 0700);
                           an existing root must be owned by softverbsd's uid and writable by it alone
  --rules FILE             udev-style rules for device files, e.g.
                           KERNEL=="uverbs*", NAME="infiniband/%k", MODE="0660", GROUP="rdma"
                           (re-read on SIGHUP: new modes and groups apply to the running device files)
  --config FILE            JSON: {"devices":[{"name":"rxe0","addr":"127.0.0.1","mtu":4096}],"rules":"FILE",
                           "rootMode":"0755","limits":{"contexts":64,"connections":256,"objects":16384,
                           "mappings":4096,"memfds":256,"memory":268435456}} (limits per user; root is exempt)
  --device NAME=ADDR[,mtu=N][,wire=auto|raw|udp|none]
                           a device bound to an IP address (repeatable); MTU in bytes (256..4096);
                           wire: frames always leave with exact ICRCs; raw: arriving IPv4 frames are read
                           through a raw socket and their ICRCs checked (needs CAP_NET_RAW; auto falls
                           back to udp without it); udp: they arrive on the UDP port, IPv4 ICRCs unchecked;
                           none: no RoCEv2 port, the device reaches this daemon's devices only. A device
                           whose port ADDR:4791 cannot be bound stops the daemon from starting.
  --metrics [HOST:]PORT    serve Prometheus metrics at http://HOST:PORT/metrics (HOST defaults to 127.0.0.1)
  --log-level LEVEL        error, warn, info (default: clients, QP errors, limits) or debug (every failed command)
  --pcap FILE              write every RoCEv2 frame sent and received as pcap (for tshark/Wireshark)
  --allow-dst PREFIX[,PREFIX...]
                           send RoCEv2 only to these destinations (e.g. 10.77.0.0/24,fd00::/8; repeatable);
                           by default the wire reaches whatever the host routes to, routers included
  --poll-us N              after a QP was busy, poll its send queue for N microseconds (default 200):
                           a post meanwhile needs no doorbell; 0 turns polling off (an idle daemon never polls)
  --spin always|auto       when the daemon polls (send queues, a stream's socket): always (default) whenever
                           there is reason to; auto only while the runnable tasks (/proc/loadavg) fit its
                           CPUs plus one, else it sleeps and is woken. It polls at nice 0, sleeps at --nice
  --nice N|keep            the daemon's scheduling priority (default -20, where it may set it): Linux rxe
                           works in softirq, ahead of every program, and a program that polls its CQ
                           without yielding (C programs, perftest) holds a core until the daemon preempts it
  --fault SPEC             seeded faults on every packet sent, for tests:
                           drop=P,dup=P,reorder=P,delay=P,delayms=MS,seed=N
  -V, --version            print the version and exit
  -h, --help               this text

With no --device and no config, creates rxe0 on 127.0.0.1.
Under systemd (Type=notify) it reports READY=1 once every device file accepts connections.
`;

function parseDevice(s: string): DeviceSpec {
  const m = /^([A-Za-z0-9_.-]{1,63})=([^,]+)((?:,[a-z]+=[^,]+)*)$/.exec(s);
  if (!m) throw new UsageError(`--device "${s}": expected NAME=ADDR[,mtu=N][,wire=auto|raw|udp|none]`);
  const [, name = '', addr = '', opts = ''] = m;
  if (!isIP(addr)) throw new UsageError(`--device "${s}": "${addr}" is not an IP address`);
  const spec: DeviceSpec = { name, addr };
  for (const kv of opts.split(',').filter(Boolean)) {
    const [k, v] = kv.split('=') as [string, string];
    if (k === 'wire') {
      if (v !== 'auto' && v !== 'raw' && v !== 'udp' && v !== 'none') throw new UsageError(`--device "${s}": wire must be auto, raw, udp or none`);
      spec.wire = v;
      continue;
    }
    if (k !== 'mtu') throw new UsageError(`--device "${s}": unknown option "${k}"`);
    const e = mtuOfBytes(Number(v));
    if (!e) throw new UsageError(`--device "${s}": mtu must be 256, 512, 1024, 2048 or 4096`);
    spec.mtu = e;
  }
  return spec;
}

function parseRootMode(v: string): number {
  if (!/^0?[0-7]{3}$/.test(v)) throw new UsageError(`root mode "${v}": expected an octal mode such as 0755`);
  const mode = parseInt(v, 8);
  if (mode & 0o022) throw new UsageError(`root mode ${v}: a root others can write is not a root anyone can trust`);
  return mode;
}

function readRules(file: string): Rule[] {
  return parseRules(readFileSync(file, 'utf8'), file);
}

/** The package's version (package.json sits three levels above dist/src/daemon). */
export function version(): string {
  return (JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
}

interface Settings {
  root: string;
  rootMode?: number;
  limits: UserLimits;
  devices: DeviceSpec[];
  rulesFile?: string;
  rules: Rule[];
  fault: Fault | null;
  allowDst: BlockList | null;
  pollUs: number | undefined;
  /** --spin: when the daemon may poll instead of sleeping */
  spin: SpinMode;
  pcap: string | undefined;
  metrics: { host: string; port: number } | null;
  logLevel: LogLevel;
  /** the priority to run at, or null to keep the one inherited */
  nice: number | null;
}

const DEFAULT_NICE = -20;

/**
 * The slice the event loop's thread asks for: short, so that on a kernel with EEVDF's custom slices (6.12) it
 * preempts a program spinning on its CQ as soon as it wakes, where a nice alone waits out that program's slice.
 */
const SLICE_NS = 100_000;

/** Runs the event loop's thread (it does the HCA's work) at `nice` with a short slice; what happened, for the log. True if the nice took. */
function schedule(nice: number, log: Log): boolean {
  try {
    setFairSchedule(nice, SLICE_NS);
    log.debug(`scheduling: nice ${nice}, slice ${SLICE_NS / 1000} us`);
    return true;
  } catch (e) {
    const level = nice === DEFAULT_NICE ? 'debug' : 'warn';
    log[level](`scheduling: cannot set nice ${nice} (${codeOf(e) ?? messageOf(e)}; it takes CAP_SYS_NICE): a program that polls without yielding delays the daemon until the kernel preempts it`);
    try {
      setFairSchedule(getPriority(), SLICE_NS);
    } catch {
      /* the slice alone is a hint too */
    }
    return false;
  }
}

function settings(argv: string[]): Settings | 'help' | 'version' {
  let args;
  try {
    args = parseArgs({
      args: argv,
      options: {
        root: { type: 'string' },
        'root-mode': { type: 'string' },
        rules: { type: 'string' },
        config: { type: 'string' },
        device: { type: 'string', multiple: true },
        pcap: { type: 'string' },
        fault: { type: 'string' },
        'allow-dst': { type: 'string', multiple: true },
        'poll-us': { type: 'string' },
        spin: { type: 'string' },
        nice: { type: 'string' },
        metrics: { type: 'string' },
        'log-level': { type: 'string' },
        version: { type: 'boolean', short: 'V' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
    }).values;
  } catch (e) {
    throw new UsageError(`${messageOf(e)}\n${HELP}`);
  }
  if (args.help) return 'help';
  if (args.version) return 'version';
  const logLevel = (args['log-level'] ?? 'info') as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new UsageError(`--log-level "${args['log-level']}": expected ${LOG_LEVELS.join(', ')}`);
  const fault = args.fault ? Fault.parse(args.fault) : null;
  let allowDst: BlockList | null = null;
  for (const list of args['allow-dst'] ?? []) {
    allowDst ??= new BlockList();
    for (const pfx of list.split(',').filter(Boolean)) {
      const m = /^([^/]+)(?:\/(\d+))?$/.exec(pfx.trim());
      const fam = m && isIPv4(m[1]!) ? 'ipv4' : m && isIPv6(m[1]!) ? 'ipv6' : null;
      const bits = m?.[2] === undefined ? (fam === 'ipv4' ? 32 : 128) : Number(m[2]);
      if (!m || !fam || bits > (fam === 'ipv4' ? 32 : 128)) throw new UsageError(`--allow-dst "${pfx}": expected ADDRESS[/BITS], e.g. 10.77.0.0/24 or fd00::/8`);
      allowDst.addSubnet(m[1]!, bits, fam);
    }
  }
  let pollUs: number | undefined;
  if (args['poll-us'] !== undefined) {
    pollUs = Number(args['poll-us']);
    if (!/^\d+$/.test(args['poll-us']) || pollUs > 1000000) throw new UsageError(`--poll-us "${args['poll-us']}": expected microseconds, 0 to 1000000`);
  }
  const spin = (args.spin ?? 'always') as SpinMode;
  if (spin !== 'auto' && spin !== 'always') throw new UsageError(`--spin "${args.spin}": expected auto or always`);
  let nice: number | null = DEFAULT_NICE;
  if (args.nice !== undefined) {
    nice = args.nice === 'keep' ? null : Number(args.nice);
    if (nice !== null && (!/^-?\d+$/.test(args.nice) || nice < -20 || nice > 19)) throw new UsageError(`--nice "${args.nice}": expected -20 to 19, or keep`);
  }
  let metrics = null;
  if (args.metrics !== undefined) {
    metrics = parseListen(args.metrics);
    if (!metrics) throw new UsageError(`--metrics "${args.metrics}": expected [HOST:]PORT, e.g. 127.0.0.1:9464`);
  }
  let devices = (args.device ?? []).map(parseDevice);
  let rulesFile = args.rules;
  let rootMode = args['root-mode'] !== undefined ? parseRootMode(args['root-mode']) : undefined;
  let limits: UserLimits = { ...DEFAULT_USER_LIMITS };
  if (args.config) {
    let cfg: { devices?: Array<{ name: string; addr: string; mtu?: number; wire?: string }>; rules?: string; limits?: unknown; rootMode?: string };
    try {
      cfg = JSON.parse(readFileSync(args.config, 'utf8'));
    } catch (e) {
      throw new UsageError(`--config ${args.config}: ${messageOf(e)}`);
    }
    for (const d of cfg.devices ?? []) devices.push(parseDevice(`${d.name}=${d.addr}${d.mtu ? `,mtu=${d.mtu}` : ''}${d.wire ? `,wire=${d.wire}` : ''}`));
    rulesFile ??= cfg.rules;
    try {
      limits = parseLimits(cfg.limits);
    } catch (e) {
      throw new UsageError(`--config ${args.config}: ${messageOf(e)}`);
    }
    if (cfg.rootMode !== undefined && rootMode === undefined) rootMode = parseRootMode(String(cfg.rootMode));
  }
  if (devices.length === 0) devices = [{ name: 'rxe0', addr: '127.0.0.1' }];
  const names = new Set<string>();
  for (const d of devices) {
    if (names.has(d.name)) throw new UsageError(`device ${d.name} given twice`);
    names.add(d.name);
  }
  let rules: Rule[] = [];
  if (rulesFile) {
    try {
      rules = readRules(rulesFile);
    } catch (e) {
      throw new UsageError(messageOf(e));
    }
  }
  return { root: args.root ?? ownRoot(), rootMode, limits, devices, rulesFile, rules, fault, allowDst, pollUs, spin, pcap: args.pcap, metrics, logLevel, nice };
}

/** Runs the daemon until SIGINT/SIGTERM; usage errors and a failed start exit 2 with one line saying why. */
export async function main(argv: string[]): Promise<void> {
  const die = (msg: string): never => {
    process.stderr.write(`softverbsd: ${msg}\n`);
    process.exit(2);
  };
  let s: Settings | 'help' | 'version';
  try {
    s = settings(argv);
  } catch (e) {
    return die(messageOf(e));
  }
  if (s === 'help') {
    process.stdout.write(HELP);
    return;
  }
  if (s === 'version') {
    process.stdout.write(`softverbsd ${version()}\n`);
    return;
  }
  const log = new Log(s.logLevel);
  if (s.nice !== null && schedule(s.nice, log)) spinGate.wakeAt(s.nice, (n) => setFairSchedule(n, SLICE_NS));
  spinGate.mode = s.spin;
  let pcap: PcapWriter | null = null;
  if (s.pcap) {
    try {
      pcap = new PcapWriter(s.pcap);
    } catch (e) {
      die(`--pcap ${s.pcap}: ${messageOf(e)}`);
    }
  }
  const daemon = new Daemon({ root: s.root, rootMode: s.rootMode, limits: s.limits, devices: s.devices, rules: s.rules, fault: s.fault, allowDst: s.allowDst, pollUs: s.pollUs, pcap, logger: log });
  const fault = s.fault;
  if (fault) daemon.log(`fault injection: drop ${fault.drop}, dup ${fault.dup}, reorder ${fault.reorder}, delay ${fault.delay} (${fault.delayMs} ms) of every packet sent (seeded)`);
  let metrics: Metrics | null = null;
  try {
    await daemon.start();
    if (s.metrics) {
      metrics = new Metrics(daemon);
      const at = await metrics.listen(s.metrics.host, s.metrics.port);
      daemon.log(`metrics at http://${at}/metrics`);
    }
  } catch (e) {
    await metrics?.close();
    await daemon.stop();
    die(messageOf(e));
  }
  let stopping = false;
  const stop = async (sig: string) => {
    if (stopping) return;
    stopping = true;
    sdNotify('STOPPING=1');
    daemon.log(`${sig}: stopping`);
    await metrics?.close();
    await daemon.stop();
    process.exit(0);
  };
  process.on('SIGINT', () => void stop('SIGINT'));
  process.on('SIGTERM', () => void stop('SIGTERM'));
  const rulesFile = s.rulesFile;
  process.on('SIGHUP', () => {
    if (!rulesFile) {
      daemon.log('SIGHUP: no rules file to re-read (device files keep their modes)');
      return;
    }
    sdNotify('RELOADING=1');
    try {
      daemon.applyRules(readRules(rulesFile));
    } catch (e) {
      log.error(`SIGHUP: ${messageOf(e)}; the device files keep their modes`);
    }
    sdNotify('READY=1');
  });
  const launcher = npmLauncherChain();
  if (launcher.length) {
    setInterval(() => {
      const gone = goneFrom(launcher);
      if (gone !== null) void stop(`launcher (pid ${gone}) exited`);
    }, 250).unref();
  }
  process.stderr.write('softverbsd: ready\n');
  sdNotify(`READY=1\nMAINPID=${process.pid}\nSTATUS=serving ${s.devices.map((d) => d.name).join(', ')}`);
}
