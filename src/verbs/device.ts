/**
 * Finding and opening devices (ibv_get_device_list, ibv_open_device): the
 * discovery tree a daemon writes under its root, checked the way the daemon
 * checks its own root before anything in it is believed.
 */
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve, sep } from 'node:path';
import { layout, unpack } from '../abi/layout.js';
import * as U from '../abi/uverbs.js';
import { defaultRoot, ibClassDir, rootProblem, SYSTEM_ROOT, verbsClassDir } from '../common/paths.js';
import { pidAlive } from '../common/proc.js';
import { trustedOwners } from '../common/trust.js';
import { CommandChannel, EventStream } from './channel.js';
import { Context } from './context.js';
import { VerbsError } from './errors.js';
import type { Device } from './types.js';

/**
 * The rule the daemon applies to its root (common/trust.ts): a root another user could have planted is not
 * connected through (EACCES); a missing one is no daemon (ENOENT).
 */
export function trustRoot(root: string, verb: string): void {
  const bad = rootProblem(root);
  if (bad) throw new VerbsError(verb, bad.code, bad.message);
}

/** A device path read from the tree: a socket inside <root>/dev, owned by a trusted uid, not a symlink. */
export function socketUnder(root: string, devPath: string): boolean {
  const dev = resolve(root, 'dev') + sep;
  if (!resolve(devPath).startsWith(dev) || devPath.split(sep).includes('..')) return false;
  try {
    const st = lstatSync(devPath);
    return st.isSocket() && trustedOwners().includes(st.uid);
  } catch {
    return false;
  }
}

/**
 * Lists the devices of the running daemon(s) under `root` (ibv_get_device_list).
 * Synchronous: it reads the discovery tree. Entries whose daemon is gone are
 * skipped, so a crashed daemon's tree does not list dead devices.
 */
export function getDeviceList(root = defaultRoot()): Device[] {
  const dir = verbsClassDir(root);
  if (!existsSync(dir)) return [];
  trustRoot(root, 'ibv_get_device_list');
  const out: Device[] = [];
  for (const k of readdirSync(dir).sort((a, b) => Number(a.slice(6)) - Number(b.slice(6)))) {
    try {
      const d = join(dir, k);
      const pid = Number(readFileSync(join(d, 'softverbsd_pid'), 'utf8'));
      if (!pidAlive(pid)) continue;
      const name = readFileSync(join(d, 'ibdev'), 'utf8').trim();
      const devPath = readFileSync(join(d, 'dev_path'), 'utf8').trim();
      if (!socketUnder(root, devPath)) continue;
      const nodeGuid = readFileSync(join(ibClassDir(root), name, 'node_guid'), 'utf8').trim();
      out.push({ name, devName: k, devPath, nodeGuid, root, daemonPid: pid });
    } catch {
      /* an entry being written or removed: not a device yet / any more */
    }
  }
  return out;
}

/**
 * Why `root` lists no device, in words for the user (what a tool prints beside rdma-core's "No IB devices
 * found", what a failed open says); null when it lists some.
 */
export function whyNoDevices(root = defaultRoot()): string | null {
  const bad = rootProblem(root);
  if (bad) return bad.message;
  if (getDeviceList(root).length > 0) return null;
  // a root of this user's own left by a daemon that stopped, while a root daemon serves every user
  let elsewhere = '';
  if (root !== SYSTEM_ROOT && rootProblem(SYSTEM_ROOT) === null) {
    const sys = getDeviceList(SYSTEM_ROOT);
    if (sys.length) elsewhere = `; the softverbsd running as root serves ${sys.map((d) => d.name).join(', ')} from ${SYSTEM_ROOT}: set SOFTVERBS_ROOT=${SYSTEM_ROOT}`;
  }
  if (!existsSync(verbsClassDir(root))) return `no softverbsd has run under ${root} (start one with \`softverbsd\`, or set SOFTVERBS_ROOT to the root it uses)${elsewhere}`;
  return `no running softverbsd serves ${root} (its daemon has stopped)${elsewhere}`;
}

/** Why a named device was not found: what the root holds, so the message says where to look. */
function noDevice(name: string, root: string): VerbsError {
  const bad = rootProblem(root);
  if (bad) return new VerbsError('ibv_open_device', bad.code === 'ENOENT' ? 'ENODEV' : bad.code, `no device ${name}: ${bad.message}`);
  const devs = getDeviceList(root);
  if (devs.length === 0) return new VerbsError('ibv_open_device', 'ENODEV', `no device ${name}: ${whyNoDevices(root)}`);
  return new VerbsError('ibv_open_device', 'ENODEV', `no device ${name} under ${root}; devices there: ${devs.map((d) => d.name).join(', ')}`);
}

/** An abi_version file's number as text ('' when it cannot be read: reported by the caller). */
function readAbi(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim();
  } catch {
    return '';
  }
}

/** Opens a device (ibv_open_device): a context with its own handles and event stream. */
export async function openDevice(dev: Device | string, root = defaultRoot()): Promise<Context> {
  const d = typeof dev === 'string' ? getDeviceList(root).find((x) => x.name === dev) : dev;
  if (!d) throw noDevice(String(dev), root);
  trustRoot(d.root, 'ibv_open_device');
  if (!socketUnder(d.root, d.devPath)) throw new VerbsError('ibv_open_device', 'EACCES', `${d.devPath} is not a device file of ${d.root}`);
  // as libibverbs does: a kernel side speaking another uverbs ABI (the class's abi_version), or a device whose
  // driver ABI (its own abi_version) is not the one softverbsd's devices speak, is refused before any command
  const uverbsAbi = readAbi(join(verbsClassDir(d.root), 'abi_version'));
  if (uverbsAbi !== String(U.ABI_VERSION)) throw new VerbsError('ibv_open_device', 'ENOSYS', `${d.root} speaks uverbs ABI version ${uverbsAbi || '(none)'}, this library speaks ${U.ABI_VERSION}`);
  const driverAbi = readAbi(join(verbsClassDir(d.root), d.devName, 'abi_version'));
  if (driverAbi !== String(U.RXE_UVERBS_ABI_VERSION)) throw new VerbsError('ibv_open_device', 'ENOSYS', `${d.name} speaks driver ABI version ${driverAbi || '(none)'}, this library speaks ${U.RXE_UVERBS_ABI_VERSION}`);
  const ch = await CommandChannel.open(d.devPath);
  ch.daemonPid = d.daemonPid;
  try {
    // the core response, then the softverbs provider's: the key naming the context on the descriptor exchange
    const core = layout(U.GET_CONTEXT_RESP).size;
    const extra = layout(U.SV_GET_CONTEXT_RESP).size;
    const body = await ch.call('ibv_open_device', U.frame(U.Spec.GET_CONTEXT, {}, undefined, extra));
    if (body.length < core + extra) {
      throw new VerbsError('ibv_open_device', 'ENOSYS', `softverbsd (pid ${d.daemonPid}) gives no descriptor exchange key: it is older than this library (restart it from this version)`);
    }
    const resp = unpack(U.GET_CONTEXT_RESP, body);
    const { fd_key } = unpack(U.SV_GET_CONTEXT_RESP, body, core);
    const events = await EventStream.attach(d.devPath, U.SvCmd.ATTACH_ASYNC, resp.async_fd, layout(U.ASYNC_EVENT_DESC).size, 'ibv_open_device');
    return new Context(d, ch, events, fd_key);
  } catch (e) {
    ch.close();
    throw e;
  }
}
