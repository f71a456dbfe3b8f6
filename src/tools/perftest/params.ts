/**
 * perftest's command line: the flags, defaults, range checks and the
 * dependencies perftest 4.5-0.17 forces between them (its parser() and
 * force_dependecies()), with its messages. Pure: no device, no I/O besides
 * the text it returns.
 */
import { parseArgs } from 'node:util';
import { cnum, cnumStrict } from '../cli.js';
import { messageOf, UsageError } from '../../common/errors.js';

/** perftest's VerbType, in its order (testsStr indexes it). */
export enum Verb { SEND = 0, WRITE = 1, READ = 2, ATOMIC = 3 }
export const TESTS_STR = ['Send', 'RDMA_Write', 'RDMA_Read', 'Atomic'];
export type Tst = 'BW' | 'LAT';
export type Conn = 'RC' | 'UC' | 'UD';
export const ATOMIC_TYPES = ['CMP_AND_SWAP', 'FETCH_AND_ADD'] as const;
export type AtomicType = (typeof ATOMIC_TYPES)[number];
/** --output: perftest's verbosity_level. FULL is its FULL_VERBOSITY (no --output); the others print only that number. */
export const OUTPUTS = ['bandwidth', 'message_rate', 'latency'] as const;
export type Output = 'FULL' | (typeof OUTPUTS)[number];

export const DEF = {
  port: 18515, sizeBw: 65536, sizeLat: 2, iters: 1000, itersWriteBw: 5000, txBw: 128, txLat: 1, qpTimeout: 14, rxRdma: 1, rxSend: 512,
  cqMod: 100, sizeAtomic: 8, duration: 5, qkey: 0x11111111, cacheLine: 64, pageSize: 4096, maxSize: 8388608, ucMaxRx: 16000,
  msgSizeCqModLimit: 8192, minRnrTimer: 12,
} as const;

/** The version string perftest 4.5-0.17 exchanges; its peers refuse anything older than 5.70. */
export const PERFTEST_VERSION = '6.06';
export const MIN_PEER_VERSION = 5.7;

export interface Params {
  tool: string;
  verb: Verb;
  tst: Tst;
  port: number;
  ibDevname: string | null;
  ibPort: number;
  /** requested MTU in bytes, 0 = the port's active MTU */
  mtu: number;
  size: number;
  reqSize: boolean;
  iters: number;
  txDepth: number;
  rxDepth: number;
  qpTimeout: number;
  sl: number;
  conn: Conn;
  numQps: number;
  gidIndex: number;
  useGidUser: boolean;
  inlineSize: number;
  outReads: number;
  useEvent: boolean;
  duplex: boolean;
  noPeak: boolean;
  reqCqMod: boolean;
  cqMod: number;
  postList: number;
  testMethod: 'REGULAR' | 'ALL';
  testType: 'ITERATIONS' | 'DURATION';
  duration: number;
  margin: number;
  atomicType: AtomicType;
  reportGbits: boolean;
  output: Output;
  cpuFreqF: boolean;
  disablePcir: boolean;
  outJson: boolean;
  outJsonFile: string;
  histogram: boolean;
  unsorted: boolean;
  cycles: boolean;
  /** softverbs' additions for -a sweeps */
  chart: string | null;
  resultsCsv: string | null;
  resultsJson: string | null;
  servername: string | null;
  machine: 'CLIENT' | 'SERVER';
  /** -R: the QPs connect through the RDMA CM, and the exchange runs over an RDMA CM connection too (perftest sets use_rdma_cm with it) */
  rdmaCm: boolean;
}

/** Options softverbs does not implement: what they are, so the refusal can say it. */
const UNSUPPORTED: Record<string, string> = {
  z: 'rdma_cm exchange (-z)', g: 'multicast (-g)', O: 'dual-port (-O)', X: 'completion vectors (-X)',
  T: 'TOS (-T, rdma_cm only)', L: 'hop limit (-L, raw Ethernet only)', M: 'multicast GIDs (-M)', B: 'raw Ethernet (-B)', E: 'raw Ethernet (-E)',
  J: 'raw Ethernet (-J)', j: 'raw Ethernet (-j)', K: 'raw Ethernet (-K)', k: 'raw Ethernet (-k)', w: 'BW limits (-w)', y: 'message-rate limits (-y)',
  W: 'HW counters (-W)', Z: 'raw Ethernet (--server)', P: 'raw Ethernet (--client)', v: 'MAC forwarding (-v)', G: 'RSS (-G)',
  run_infinitely: 'run_infinitely', odp: 'on-demand paging (--odp)', use_hugepages: 'huge pages (--use_hugepages)', use_rocm: 'ROCm memory',
  use_cuda: 'CUDA memory', mmap: 'mmap buffers (--mmap)', 'report-both': 'report-both', reversed: 'reversed (fan-in)', tclass: 'traffic class',
  'report-per-port': 'per-port reports', ipv6: 'IPv6 exchange', dont_xchg_versions: 'dont_xchg_versions', use_srq: 'SRQ (--use_srq)',
  flows: 'multiple flows', 'latency_gap': 'latency_gap', 'perform_warm_up': 'warm-up', 'use_ooo': 'out-of-order data placement',
  'mr_per_qp': 'mr_per_qp', 'cpu_util': 'CPU utilisation', rate_limit: 'rate limiting', burst_size: 'burst sizes', 'recv_post_list': 'receive post lists',
};

const STR = 'string' as const;
const BOOL = 'boolean' as const;
const OPTIONS = {
  port: { type: STR, short: 'p' }, 'ib-dev': { type: STR, short: 'd' }, 'ib-port': { type: STR, short: 'i' }, mtu: { type: STR, short: 'm' },
  size: { type: STR, short: 's' }, iters: { type: STR, short: 'n' }, 'tx-depth': { type: STR, short: 't' }, 'qp-timeout': { type: STR, short: 'u' },
  sl: { type: STR, short: 'S' }, 'gid-index': { type: STR, short: 'x' }, connection: { type: STR, short: 'c' }, qp: { type: STR, short: 'q' },
  inline_size: { type: STR, short: 'I' }, outs: { type: STR, short: 'o' }, 'rx-depth': { type: STR, short: 'r' }, 'cq-mod': { type: STR, short: 'Q' },
  atomic_type: { type: STR, short: 'A' }, post_list: { type: STR, short: 'l' }, duration: { type: STR, short: 'D' }, margin: { type: STR, short: 'f' },
  all: { type: BOOL, short: 'a' }, 'CPU-freq': { type: BOOL, short: 'F' }, events: { type: BOOL, short: 'e' }, bidirectional: { type: BOOL, short: 'b' },
  noPeak: { type: BOOL, short: 'N' }, version: { type: BOOL, short: 'V' }, help: { type: BOOL, short: 'h' }, 'report-cycles': { type: BOOL, short: 'C' },
  'report-histogrm': { type: BOOL, short: 'H' }, 'report-unsorted': { type: BOOL, short: 'U' },
  report_gbits: { type: BOOL }, output: { type: STR }, out_json: { type: BOOL }, out_json_file: { type: STR }, disable_pcie_relaxed: { type: BOOL }, use_old_post_send: { type: BOOL },
  chart: { type: STR }, results_csv: { type: STR }, results_json: { type: STR },
  // refused with a message (UNSUPPORTED)
  R: { type: BOOL, short: 'R' }, z: { type: BOOL, short: 'z' }, g: { type: BOOL, short: 'g' }, O: { type: BOOL, short: 'O' }, X: { type: STR, short: 'X' },
  T: { type: STR, short: 'T' }, L: { type: STR, short: 'L' }, M: { type: STR, short: 'M' }, B: { type: STR, short: 'B' }, E: { type: STR, short: 'E' },
  J: { type: STR, short: 'J' }, j: { type: STR, short: 'j' }, K: { type: STR, short: 'K' }, k: { type: STR, short: 'k' }, w: { type: STR, short: 'w' },
  y: { type: STR, short: 'y' }, W: { type: STR, short: 'W' }, Z: { type: BOOL, short: 'Z' }, P: { type: BOOL, short: 'P' }, v: { type: BOOL, short: 'v' },
  G: { type: BOOL, short: 'G' }, run_infinitely: { type: BOOL }, odp: { type: BOOL }, use_hugepages: { type: BOOL }, use_rocm: { type: STR }, use_cuda: { type: STR },
  mmap: { type: STR }, 'report-both': { type: BOOL }, reversed: { type: BOOL }, tclass: { type: STR }, 'report-per-port': { type: BOOL }, ipv6: { type: BOOL },
  dont_xchg_versions: { type: BOOL }, use_srq: { type: BOOL }, flows: { type: STR }, latency_gap: { type: STR }, perform_warm_up: { type: BOOL },
  use_ooo: { type: BOOL }, mr_per_qp: { type: BOOL }, cpu_util: { type: BOOL }, rate_limit: { type: STR }, burst_size: { type: STR }, recv_post_list: { type: STR },
};

export type ParseResult =
  | { kind: 'run'; params: Params; /** lines perftest prints while parsing (stdout) */ out: string }
  | { kind: 'exit'; code: number; out: string; err: string };

export const RESULT_LINE = '---------------------------------------------------------------------------------------\n';

/** perftest refusing its command line (it exits 1), in its words. */
class ParseExit extends UsageError {
  /** fromParser: parser() returned an error (main then adds its own line); otherwise perftest exit(1)s on the spot */
  constructor(message: string, readonly fromParser = true) {
    super(message);
  }
}

export function usage(tool: string, verb: Verb, tst: Tst): string {
  const lines = [
    'Usage:',
    `  ${tool}            start a server and wait for connection`,
    `  ${tool} <host>     connect to server at <host>`,
    '',
    'Options:',
    '  -a, --all  Run sizes from 2 till 2^23',
    ...(tst === 'BW' ? ['  -b, --bidirectional  Measure bidirectional bandwidth (default unidirectional)'] : []),
    `  -c, --connection=<RC/UC/UD>  Connection type RC/UC/UD (default RC)`,
    '  -C, --report-cycles  report times in cpu cycle units (default microseconds)',
    '  -d, --ib-dev=<dev>  Use IB device <dev> (default first device found)',
    '  -D, --duration  Run test for a customized period of seconds.',
    ...(verb !== Verb.WRITE ? ['  -e, --events  Sleep on CQ events (default poll)'] : []),
    '  -f, --margin  measure results within margins. (default=2sec)',
    '  -F, --CPU-freq  Do not show a warning even if cpufreq_ondemand module is loaded, and cpu-freq is not on max.',
    '  -h, --help  Show this help screen.',
    ...(tst === 'LAT' ? ['  -H, --report-histogram  Print out all results (default print summary only)'] : []),
    '  -i, --ib-port=<port>  Use port <port> of IB device (default 1)',
    ...(verb === Verb.SEND || verb === Verb.WRITE ? ['  -I, --inline_size=<size>  Max size of message to be sent in inline'] : []),
    ...(tst === 'BW' ? ['  -l, --post_list=<list size>  Post list of WQEs of <list size> size (instead of single post)'] : []),
    '  -m, --mtu=<mtu>  MTU size : 256 - 4096 (default port mtu)',
    `  -n, --iters=<iters>  Number of exchanges (at least 5, default ${tst === 'BW' && verb === Verb.WRITE ? DEF.itersWriteBw : DEF.iters})`,
    ...(tst === 'BW' ? ['  -N, --noPeak  Cancel peak-bw calculation (default with peak up to iters=20000)'] : []),
    ...(verb === Verb.READ || verb === Verb.ATOMIC ? ['  -o, --outs=<num>  num of outstanding read/atom(default max of device)'] : []),
    '  -p, --port=<port>  Listen on/connect to port <port> (default 18515)',
    ...(tst === 'BW' ? ['  -q, --qp=<num of qp\'s>  Num of qp\'s(default 1)', '  -Q, --cq-mod  Generate Cqe only after <--cq-mod> completion'] : []),
    ...(verb === Verb.SEND ? ['  -r, --rx-depth=<dep>  Rx queue size (default 512). If using srq, rx-depth controls max-wr size of the srq'] : []),
    `  -s, --size=<size>  Size of message to exchange (default ${tst === 'BW' ? DEF.sizeBw : DEF.sizeLat})`,
    '  -S, --sl=<sl>  SL (default 0)',
    `  -t, --tx-depth=<dep>  Size of tx queue (default ${tst === 'BW' ? DEF.txBw : DEF.txLat})`,
    '  -u, --qp-timeout=<timeout>  QP timeout, timeout value is 4 usec * 2 ^(timeout), default 14',
    ...(tst === 'LAT' ? ['  -U, --report-unsorted  (implies -H) print out unsorted results (default sorted)'] : []),
    '  -V, --version  Display version number',
    '  -x, --gid-index=<index>  Test uses GID with GID index (Default : IB - no gid . ETH - 0)',
    ...(verb === Verb.ATOMIC ? ['  -A, --atomic_type=<type>  type of atomic operation from {CMP_AND_SWAP,FETCH_AND_ADD} (default FETCH_AND_ADD)'] : []),
    ...(tst === 'BW' ? ['      --report_gbits  Report Max/Average BW of test in Gbit/sec (instead of MB/sec)'] : []),
    '      --output=<units> Set verbosity output level: bandwidth , message_rate, latency ',
    ' Latency measurement is Average calculation ',
    '      --out_json  Save the report in a json file',
    '      --out_json_file=<file>  Name of the report json file. (Default: perftest_out.json in the working directory)',
    '      --disable_pcie_relaxed  Disable PCIe relaxed ordering',
    '      --use_old_post_send  Use old post send flow (ibv_post_send; the only one softverbs has)',
    '',
    'softverbs additions, for -a sweeps:',
    '      --chart=<file.svg>  Write an SVG chart of the results against message size',
    '      --results_csv=<file>  Write the results as CSV',
    '      --results_json=<file>  Write the results as JSON',
    '',
    'Not supported by softverbs (exit 1 with a message): -R -z -g -O -X -T -L -M -B -E -J -j -K -k -w -y -W -v -G,',
    '--run_infinitely --odp --use_hugepages --use_cuda --use_rocm --mmap --use_srq --report-both --reversed --ipv6 --flows ...',
    '',
  ];
  return lines.join('\n');
}

export function parse(tool: string, verb: Verb, tst: Tst, argv: string[]): ParseResult {
  const out: string[] = [];
  const use = usage(tool, verb, tst);
  let r: ReturnType<typeof parseArgs<{ args: string[]; options: typeof OPTIONS; allowPositionals: true; strict: true }>>;
  try {
    r = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (e) {
    const m = /^Unknown option '(-+)([^']*)'/.exec(messageOf(e));
    const what = m ? (m[1] === '-' ? `invalid option -- '${m[2]}'` : `unrecognized option '--${m[2]}'`) : messageOf(e);
    return { kind: 'exit', code: 1, out: use, err: `${tool}: ${what}\n Invalid Command or flag.\n Please check command line and run again.\n\n Parser function exited with Error\n` };
  }
  const v = r.values as Record<string, string | boolean | undefined>;
  if (v.help) return { kind: 'exit', code: 0, out: use, err: '' };
  // perftest's main() returns FAILURE after -V, as after any parser exit but -h
  if (v.version) return { kind: 'exit', code: 1, out: `Version: ${PERFTEST_VERSION}\n`, err: '' };
  for (const [k, what] of Object.entries(UNSUPPORTED)) {
    if (v[k] !== undefined) return { kind: 'exit', code: 1, out: '', err: ` ${what} is not supported by softverbs\n Parser function exited with Error\n` };
  }
  const p: Params = {
    tool, verb, tst, port: DEF.port, ibDevname: null, ibPort: 1, mtu: 0,
    size: tst === 'BW' ? DEF.sizeBw : DEF.sizeLat, reqSize: false,
    iters: tst === 'BW' && verb === Verb.WRITE ? DEF.itersWriteBw : DEF.iters,
    txDepth: tst === 'BW' ? DEF.txBw : DEF.txLat, rxDepth: verb === Verb.SEND ? DEF.rxSend : DEF.rxRdma,
    qpTimeout: DEF.qpTimeout, sl: 0, conn: 'RC', numQps: 1, gidIndex: -1, useGidUser: false, inlineSize: -1, outReads: 0,
    useEvent: false, duplex: false, noPeak: false, reqCqMod: false, cqMod: DEF.cqMod, postList: 1, testMethod: 'REGULAR',
    testType: 'ITERATIONS', duration: DEF.duration, margin: -1, atomicType: 'FETCH_AND_ADD', reportGbits: false, output: 'FULL', cpuFreqF: false,
    // write_lat.c alone turns relaxed ordering off (it polls the buffer's last byte)
    disablePcir: tst === 'LAT' && verb === Verb.WRITE, outJson: false, outJsonFile: 'perftest_out.json', histogram: false, unsorted: false, cycles: false,
    chart: null, resultsCsv: null, resultsJson: null, servername: null, machine: 'SERVER', rdmaCm: v.R === true,
  };
  if (verb === Verb.ATOMIC) p.size = DEF.sizeAtomic;
  try {
    const num = (k: string, name: string, type: string): number | undefined => {
      const s = v[k];
      if (typeof s !== 'string') return undefined;
      const n = cnumStrict(s);
      if (n === null) throw new ParseExit(` ${name} argument ${s} should be ${type}\n`);
      return n;
    };
    const inRange = (k: string, name: string, type: string, min: number, max: number): number | undefined => {
      const n = num(k, name, type);
      if (n !== undefined && (n < min || n > max)) throw new ParseExit(` ${name} should be between ${min} and ${max}\n`);
      return n;
    };
    const fail = (msg: string): never => {
      throw new ParseExit(msg);
    };
    let n: number | undefined;
    if ((n = num('port', 'Port', 'int')) !== undefined) p.port = n;
    if (typeof v['ib-dev'] === 'string') p.ibDevname = v['ib-dev'];
    if ((n = num('ib-port', 'IB Port', 'uint8_t')) !== undefined) {
      p.ibPort = n & 0xff;
      if (p.ibPort < 1) fail('IB Port can\'t be less than 1\n');
    }
    if ((n = num('mtu', 'MTU', 'int')) !== undefined) p.mtu = n;
    if ((n = inRange('iters', 'Iteration num', 'int', 5, 100000000)) !== undefined) p.iters = n;
    if ((n = inRange('tx-depth', 'Tx depth', 'int', 1, 15000)) !== undefined) p.txDepth = n;
    if ((n = num('qp-timeout', 'QP Timeout', 'uint8_t')) !== undefined) p.qpTimeout = n & 0xff;
    if ((n = num('sl', 'Service Level', 'uint8_t')) !== undefined) {
      p.sl = n & 0xff;
      if (p.sl > 15) fail(' Only 15 Service levels\n');
    }
    if ((n = num('gid-index', 'Gid index', 'uint8_t')) !== undefined) {
      if ((n & 0xff) > 255 || n < 0) fail(' Gid index should be between 0 and 255\n');
      p.gidIndex = n & 0xff;
      p.useGidUser = true;
    }
    if (typeof v.connection === 'string') {
      const c = v.connection;
      // change_conn_type() exit(1)s itself: no "Parser function exited" line after these
      if (c !== 'RC' && c !== 'UC' && c !== 'UD') {
        throw new ParseExit(['XRC', 'DC', 'SRD', 'RawEth'].includes(c) ? ` ${c} connections are not supported by softverbs\n` : ' Invalid Connection type. Please choose from {RC,UC,UD,XRC,DC,SRD}\n', false);
      }
      if (c === 'UD' && verb !== Verb.SEND) throw new ParseExit(' UD connection only possible in SEND verb\n', false);
      if (c === 'UC' && (verb === Verb.READ || verb === Verb.ATOMIC)) throw new ParseExit(' UC connection not possible in READ/ATOMIC verbs\n', false);
      p.conn = c as Conn;
      if (p.rdmaCm && c !== 'RC') throw new ParseExit(` -R with ${c} QPs is not supported by softverbs (RC only)\n`);
    }
    if (v.qp !== undefined) {
      if (tst !== 'BW') fail(' Multiple QPs only available on bw tests\n');
      p.numQps = inRange('qp', 'num of Qps', 'int', 1, 16384)!;
    }
    if ((n = inRange('inline_size', 'Max inline', 'int', 0, 912)) !== undefined) {
      p.inlineSize = n;
      if (verb === Verb.READ || verb === Verb.ATOMIC) fail(' Inline feature not available on READ/Atomic verbs\n');
    }
    if ((n = num('outs', 'Outstanding Reads', 'int')) !== undefined) {
      p.outReads = n;
      if (verb !== Verb.READ && verb !== Verb.ATOMIC) fail(' Setting Outstanding reads only available on READ verb\n');
    }
    if ((n = inRange('rx-depth', ' Rx depth', 'int', 1, 16384)) !== undefined) {
      p.rxDepth = n;
      if (verb !== Verb.SEND && n > DEF.rxRdma) fail(' On RDMA verbs rx depth can be only 1\n');
    }
    if ((n = inRange('cq-mod', 'CQ moderation', 'int', 1, 1024)) !== undefined) {
      p.cqMod = n;
      p.reqCqMod = true;
    }
    if (typeof v.atomic_type === 'string') {
      if (verb !== Verb.ATOMIC) fail(' You are not running the atomic_lat/bw test!\n To change the atomic action type, you must run one of the atomic tests\n');
      if (!ATOMIC_TYPES.includes(v.atomic_type as AtomicType)) throw new ParseExit(' Invalid Atomic type! please choose from {CMP_AND_SWAP,FETCH_AND_ADD}\n', false);
      p.atomicType = v.atomic_type as AtomicType;
    }
    if ((n = num('post_list', 'Send Post List size', 'int')) !== undefined) p.postList = n;
    if (v.duration !== undefined) {
      p.duration = num('duration', 'Duration period', 'int')!;
      if (p.duration <= 0) fail(' Duration period must be positive\n');
      p.testType = 'DURATION';
    }
    if ((n = num('margin', 'Margin', 'int')) !== undefined) {
      if (n < 0) fail(' Margin must be non-negative\n');
      p.margin = n;
    }
    if (v.all) p.testMethod = 'ALL';
    if (v['CPU-freq']) p.cpuFreqF = true;
    if (typeof v.size === 'string') {
      let s = v.size;
      let factor = 1;
      if (s.endsWith('K')) (s = s.slice(0, -1)), (factor = 1024);
      else if (s.endsWith('M')) (s = s.slice(0, -1)), (factor = 1024 * 1024);
      p.size = cnum(s) * factor;
      p.reqSize = true;
      if (p.size < 1 || p.size > 0x7fffffff) fail(' Message Size should be between 1 and 2147483647\n');
    }
    if (v.events) {
      if (verb === Verb.WRITE) fail(' Events feature not available on WRITE verb\n');
      p.useEvent = true;
    }
    if (v.bidirectional) {
      if (tst === 'LAT') fail(' Bidirectional is only available in BW test\n');
      p.duplex = true;
    }
    if (v.noPeak) {
      if (tst === 'LAT') fail(' NoPeak only valid for BW tests\n');
      p.noPeak = true;
    }
    if (v['report-cycles']) {
      if (tst !== 'LAT') fail(' Available only on Latency tests\n');
      p.cycles = true;
    }
    if (v['report-histogrm']) {
      if (tst === 'BW') fail(' Available only on Latency tests\n');
      p.histogram = true;
    }
    if (v['report-unsorted']) {
      if (tst === 'BW') fail(' is Available only on Latency tests\n');
      p.unsorted = true;
    }
    if (v.report_gbits) p.reportGbits = true;
    if (typeof v.output === 'string') {
      if (!(OUTPUTS as readonly string[]).includes(v.output)) fail(' Invalid verbosity level output flag. Please use bandwidth, latency, message_rate\n');
      p.output = v.output as Output;
    }
    if (v.out_json) p.outJson = true;
    if (typeof v.out_json_file === 'string') p.outJsonFile = v.out_json_file;
    if (v.disable_pcie_relaxed) p.disablePcir = true;
    p.chart = (v.chart as string | undefined) ?? null;
    p.resultsCsv = (v.results_csv as string | undefined) ?? null;
    p.resultsJson = (v.results_json as string | undefined) ?? null;
    if ((p.chart || p.resultsCsv || p.resultsJson) && p.testMethod !== 'ALL') fail(' --chart, --results_csv and --results_json need -a (a sweep of sizes)\n');
    if (r.positionals.length === 1) p.servername = r.positionals[0]!;
    else if (r.positionals.length > 1) fail(' Invalid Command line. Please check command rerun \n');
    p.machine = p.servername ? 'CLIENT' : 'SERVER';

    // perftest's parser(): after the options
    if (p.testType === 'DURATION' && p.margin === -1) p.margin = Math.floor(p.duration / 4);
    if (p.verb === Verb.SEND && p.rxDepth % 2 === 1 && p.testMethod === 'REGULAR') p.rxDepth += 1;
    if (p.testType === 'ITERATIONS' && p.iters > 20000 && !p.noPeak && p.tst === 'BW') p.noPeak = true;
    if (p.testType === 'DURATION' && !(p.duration > 2 * p.margin)) {
      out.push(RESULT_LINE);
      throw new ParseExit('please check that DURATION > 2*MARGIN\n', false);
    }
    forceDependencies(p, out);
  } catch (e) {
    if (!(e instanceof ParseExit)) throw e;
    return { kind: 'exit', code: 1, out: out.join(''), err: `${e.message}${e.fromParser ? ' Parser function exited with Error\n' : ''}` };
  }
  return { kind: 'run', params: p, out: out.join('') };
}

/** force_dependecies(): what one flag implies for another. Messages go to `out` (stdout); a refusal throws. */
function forceDependencies(p: Params, out: string[]): void {
  const exit = (msg: string): never => {
    out.push(RESULT_LINE);
    throw new ParseExit(msg, false);
  };
  if (p.testType === 'ITERATIONS') {
    if (p.txDepth > p.iters) p.txDepth = p.iters;
    if (p.verb === Verb.SEND && p.rxDepth > p.iters) p.rxDepth = p.iters;
    if ((p.conn === 'UD' || p.conn === 'UC') && p.rxDepth === DEF.rxSend) p.rxDepth = Math.min(p.iters, DEF.ucMaxRx);
  }
  if (p.size > DEF.msgSizeCqModLimit && p.conn !== 'UD' && p.testMethod !== 'ALL' && !p.useEvent) {
    if (!p.reqCqMod) p.cqMod = 1;
    else if (p.cqMod > 1) out.push(RESULT_LINE, 'Warning: Large message requested and CQ moderation enabled\n', 'Warning: It can lead to inaccurate results\n');
  }
  if (p.cqMod > p.txDepth) p.cqMod = p.txDepth;
  if (p.verb === Verb.READ || p.verb === Verb.ATOMIC) p.inlineSize = 0;
  if (p.testMethod === 'ALL') p.size = DEF.maxSize;
  if (p.verb === Verb.ATOMIC && p.size !== DEF.sizeAtomic) {
    out.push(RESULT_LINE, 'Message size cannot be changed for Atomic tests \n');
    throw new ParseExit('', false);
  }
  if (p.postList > 1) {
    if (p.tst !== 'BW') exit('Post list is supported in BW tests only\n');
    if (p.testType === 'ITERATIONS' && p.iters % p.postList !== 0) exit('Number of iterations must be a multiple of post list size\n');
    if (!p.reqCqMod) {
      p.cqMod = p.postList;
      out.push(RESULT_LINE, 'Post List requested - CQ moderation will be the size of the post list\n');
    } else if (p.postList % p.cqMod !== 0) exit('Post list size must be a multiple of CQ moderation\n');
  }
  if (p.testType === 'DURATION') {
    p.iters = 0;
    p.noPeak = true;
    if (p.useEvent) exit('Duration mode doesn\'t work with events.\n');
    if (p.testMethod === 'ALL') exit('Duration mode currently doesn\'t support running on all sizes.\n');
  }
  if (p.output !== 'FULL') {
    if (p.tst === 'BW' && p.output === 'latency') exit(' Output verbosity level for BW can be: bandwidth, message_rate\n');
    if (p.tst === 'LAT' && p.output !== 'latency') exit(' Output verbosity level for LAT can be: latency\n');
  }
  if (p.verb === Verb.SEND && p.tst === 'BW' && p.machine === 'SERVER' && !p.duplex) p.noPeak = true;
  if (p.duplex && p.verb === Verb.SEND && p.conn !== 'RC') exit(' softverbs supports bidirectional SEND on RC only\n');
}
