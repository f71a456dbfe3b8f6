/** ibv_devinfo [-d dev] [-i port] [-l] [-v]: device and port attributes, as rdma-core prints them. */
import { getDeviceList, openDevice, type Device } from '../verbs/index.js';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { verbsClassDir } from '../common/paths.js';
import { parse, sayWhyNoDevices } from './cli.js';
import { formatDevinfo, type PortInfo } from './devinfo.js';
import { messageOf } from '../common/errors.js';

const USAGE = `Usage: ibv_devinfo             print the ca attributes

Options:
  -d, --ib-dev=<dev>     use IB device <dev> (default first device found)
  -i, --ib-port=<port>   use port <port> of IB device (default all ports)
  -l, --list             print only the IB devices names
  -v, --verbose          print all the attributes of the IB device(s)
`;

/** How the daemon reaches the network for this device (the discovery tree's `wire` file). */
function wireOf(dev: Device): string | undefined {
  try {
    return readFileSync(join(verbsClassDir(dev.root), dev.devName, 'wire'), 'utf8').trim();
  } catch {
    return undefined;
  }
}

async function describe(dev: Device, port: number | null, verbose: boolean): Promise<string | null> {
  const ctx = await openDevice(dev, dev.root);
  try {
    // rdma-core's ibv_devinfo asks ibv_query_device_ex (its device_cap_flags_ex line)
    const attr = await ctx.queryDeviceEx();
    if (port !== null && (port < 1 || port > attr.physPortCnt)) return null;
    const ports: PortInfo[] = [];
    for (let n = 1; n <= attr.physPortCnt; n++) {
      if (port !== null && n !== port) continue;
      const pa = await ctx.queryPort(n);
      const gids: PortInfo['gids'] = [];
      if (verbose) {
        for (let i = 0; i < pa.gidTblLen; i++) {
          const g = ctx.queryGid(n, i);
          if (g.every((b) => b === 0)) {
            // the table is dense from 0: the first zero entry ends it (rdma-core reads all; ours are all zero after)
            if (i > 0) break;
            continue;
          }
          gids.push({ index: i, gid: g, type: ctx.queryGidType(n, i) ?? 'RoCE v2' });
        }
      }
      ports.push({ num: n, attr: pa, gids });
    }
    return formatDevinfo({ name: dev.name, attr, capFlagsEx: attr.deviceCapFlagsEx, ports, numCompVectors: 1, wire: wireOf(dev) }, verbose);
  } finally {
    ctx.closeDevice();
  }
}

export async function main(argv: string[]): Promise<number> {
  const { values } = parse('ibv_devinfo', argv, {
    'ib-dev': { type: 'string', short: 'd' },
    'ib-port': { type: 'string', short: 'i' },
    list: { type: 'boolean', short: 'l' },
    verbose: { type: 'boolean', short: 'v' },
  }, USAGE);
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const devs = getDeviceList();
  if (devs.length === 0) sayWhyNoDevices('ibv_devinfo');
  if (values.list) {
    process.stdout.write(`${devs.length} HCA${devs.length !== 1 ? 's' : ''} found:\n`);
    for (const d of devs) process.stdout.write(`\t${d.name}\n`);
    process.stdout.write('\n'); // rdma-core ends the list with an empty line
    return 0;
  }
  if (devs.length === 0) {
    process.stderr.write('No IB devices found\n');
    return 255;
  }
  let port: number | null = null;
  if (values['ib-port'] !== undefined) {
    port = Number(values['ib-port']);
    if (!Number.isInteger(port) || port < 0) {
      process.stderr.write(USAGE);
      return 255;
    }
  }
  const chosen = values['ib-dev'] !== undefined ? devs.filter((d) => d.name === values['ib-dev']) : devs;
  if (chosen.length === 0) {
    process.stderr.write(`IB device '${values['ib-dev']}' wasn't found\n`);
    return 255;
  }
  for (const d of chosen) {
    try {
      const out = await describe(d, port, !!values.verbose);
      if (out === null) {
        process.stderr.write('Invalid port requested for device\n');
        return 4;
      }
      process.stdout.write(out);
    } catch (e) {
      process.stderr.write(`Failed to open device ${d.name}: ${messageOf(e)}\n`);
      return 255;
    }
  }
  return 0;
}

