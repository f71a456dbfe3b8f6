#!/usr/bin/env node
/**
 * softverbsd [--root DIR] [--rules FILE] [--config FILE] [--device NAME=ADDR[,mtu=N][,wire=W]]… [--pcap FILE] [--fault SPEC]
 * Runs in the foreground; prints "softverbsd: ready" to stderr once every
 * device file accepts connections; removes its files on SIGINT/SIGTERM.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import { defaultRoot } from '../common/paths.js';
import { Daemon, type DeviceSpec } from './server.js';
import { parseRules, type Rule } from './rules.js';
import { Fault } from '../hca/device.js';
import { PcapWriter } from '../hca/pcap.js';

const HELP = `Usage: softverbsd [options]

Runs the softverbs device daemon in the foreground: uverbs device files, the
command ABI, resource tracking, memory pinning and the software RoCE HCA.

Options:
  --root DIR               root of dev/ and sys/ (default: $SOFTVERBS_ROOT, /run/softverbs as root,
                           $XDG_RUNTIME_DIR/softverbs, else /tmp/softverbs-<uid>)
  --rules FILE             udev-style rules for device files, e.g.
                           KERNEL=="uverbs*", NAME="infiniband/%k", MODE="0660", GROUP="rdma"
  --config FILE            JSON: {"devices":[{"name":"rxe0","addr":"127.0.0.1","mtu":4096}],"rules":"FILE"}
  --device NAME=ADDR[,mtu=N][,wire=auto|raw|udp]
                           a device bound to an IP address (repeatable); MTU in bytes (256..4096);
                           wire: IPv4 through a raw socket (needs CAP_NET_RAW; auto falls back to plain
                           UDP without it) or plain UDP (then the ICRC cannot match the kernel's IP ID)
  --pcap FILE              write every RoCEv2 frame sent and received as pcap (for tshark/Wireshark)
  --fault SPEC             seeded faults on every packet sent, for tests:
                           drop=P,dup=P,reorder=P,delay=P,delayms=MS,seed=N
  -h, --help               this text

With no --device and no config, creates rxe0 on 127.0.0.1.
`;

const MTU_ENUM: Record<number, number> = { 256: 1, 512: 2, 1024: 3, 2048: 4, 4096: 5 };

function die(msg: string): never {
  process.stderr.write(`softverbsd: ${msg}\n`);
  process.exit(2);
}

function parseDevice(s: string): DeviceSpec {
  const m = /^([A-Za-z0-9_.-]{1,63})=([^,]+)((?:,[a-z]+=[^,]+)*)$/.exec(s);
  if (!m) die(`--device "${s}": expected NAME=ADDR[,mtu=N][,wire=auto|raw|udp]`);
  const [, name, addr, opts] = m as unknown as [string, string, string, string];
  if (!isIP(addr)) die(`--device "${s}": "${addr}" is not an IP address`);
  const spec: DeviceSpec = { name, addr };
  for (const kv of opts.split(',').filter(Boolean)) {
    const [k, v] = kv.split('=') as [string, string];
    if (k === 'wire') {
      if (v !== 'auto' && v !== 'raw' && v !== 'udp') die(`--device "${s}": wire must be auto, raw or udp`);
      spec.wire = v;
      continue;
    }
    if (k !== 'mtu') die(`--device "${s}": unknown option "${k}"`);
    const e = MTU_ENUM[Number(v)];
    if (!e) die(`--device "${s}": mtu must be 256, 512, 1024, 2048 or 4096`);
    spec.mtu = e;
  }
  return spec;
}

let args;
try {
  args = parseArgs({
    options: {
      root: { type: 'string' },
      rules: { type: 'string' },
      config: { type: 'string' },
      device: { type: 'string', multiple: true },
      pcap: { type: 'string' },
      fault: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  }).values;
} catch (e) {
  die(`${(e as Error).message}\n${HELP}`);
}
if (args.help) {
  process.stdout.write(HELP);
  process.exit(0);
}
let fault: Fault | null = null;
if (args.fault) {
  try {
    fault = Fault.parse(args.fault);
  } catch (e) {
    die((e as Error).message);
  }
}

let devices: DeviceSpec[] = (args.device ?? []).map(parseDevice);
let rulesFile = args.rules;
if (args.config) {
  let cfg: { devices?: Array<{ name: string; addr: string; mtu?: number }>; rules?: string };
  try {
    cfg = JSON.parse(readFileSync(args.config, 'utf8'));
  } catch (e) {
    die(`--config ${args.config}: ${(e as Error).message}`);
  }
  for (const d of cfg.devices ?? []) devices.push(parseDevice(`${d.name}=${d.addr}${d.mtu ? `,mtu=${d.mtu}` : ''}`));
  rulesFile ??= cfg.rules;
}
if (devices.length === 0) devices = [{ name: 'rxe0', addr: '127.0.0.1' }];
const names = new Set<string>();
for (const d of devices) {
  if (names.has(d.name)) die(`device ${d.name} given twice`);
  names.add(d.name);
}

let rules: Rule[] = [];
if (rulesFile) {
  try {
    rules = parseRules(readFileSync(rulesFile, 'utf8'), rulesFile);
  } catch (e) {
    die((e as Error).message);
  }
}

let pcap: PcapWriter | null = null;
if (args.pcap) {
  try {
    pcap = new PcapWriter(args.pcap);
  } catch (e) {
    die(`--pcap ${args.pcap}: ${(e as Error).message}`);
  }
}
const daemon = new Daemon({ root: args.root ?? defaultRoot(), devices, rules, fault, pcap });
if (fault) daemon.log(`fault injection: drop ${fault.drop}, dup ${fault.dup}, reorder ${fault.reorder}, delay ${fault.delay} (${fault.delayMs} ms) of every packet sent (seeded)`);
try {
  await daemon.start();
} catch (e) {
  await daemon.stop();
  die((e as Error).message);
}
let stopping = false;
const stop = async (sig: string) => {
  if (stopping) return;
  stopping = true;
  daemon.log(`${sig}: stopping`);
  await daemon.stop();
  process.exit(0);
};
process.on('SIGINT', () => void stop('SIGINT'));
process.on('SIGTERM', () => void stop('SIGTERM'));
process.stderr.write('softverbsd: ready\n');
