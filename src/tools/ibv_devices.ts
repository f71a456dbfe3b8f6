/** ibv_devices: lists RDMA devices with their node GUIDs, as rdma-core's does. */
import { getDeviceList } from '../verbs/index.js';
import { parse, sayWhyNoDevices } from './cli.js';
import { formatDevices } from './devinfo.js';

const USAGE = `Usage: ibv_devices\n\nLists the RDMA devices of the running softverbsd (root: $SOFTVERBS_ROOT or the default).\n`;

export function main(argv: string[]): number {
  const { values } = parse('ibv_devices', argv, {}, USAGE);
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const devs = getDeviceList();
  if (devs.length === 0) sayWhyNoDevices('ibv_devices');
  process.stdout.write(formatDevices(devs.map((d) => ({ name: d.name, guid: BigInt('0x' + d.nodeGuid.replace(/:/g, '')) }))));
  return 0;
}

