/**
 * `npm run test:interop`: softverbs against Linux rdma_rxe in the lab VM
 * (../shared/lab/rxe-vm). Boots the VM if it is not up (and stops it again
 * afterwards unless KEEP_LAB=1), raises the lab's MTUs to 9000 so path MTU
 * 4096 fits, starts the pyverbs agent in the guest, then runs the interop
 * specs inside the lab's network namespace, where softverbs owns 10.77.0.1.
 * Without the lab it says why and exits 0: this is not part of `npm test`
 * (booting the VM alone takes minutes under TCG). INTEROP_ONLY=a,b runs only
 * a.spec and b.spec.
 */
import { spawnSync, type SpawnSyncOptions } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DIST } from '../helpers.js';

const LAB = process.env.LAB_DIR ?? join(DIST, '..', '..', 'shared', 'lab', 'rxe-vm');
const NS = 'rxelab';
const PEER = '10.77.0.11';

function sh(cmd: string, args: string[], opts: SpawnSyncOptions = {}): { status: number; out: string } {
  const r = spawnSync(cmd, args, { encoding: 'utf8', cwd: LAB, ...opts });
  return { status: r.status ?? 1, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

function skip(why: string): never {
  process.stdout.write(`test:interop skipped: ${why}\n`);
  process.exit(0);
}

if (!existsSync(join(LAB, 'up.sh'))) skip(`no lab at ${LAB}`);
if (process.getuid?.() !== 0) skip('the lab needs root (network namespaces, taps, qemu)');
if (!existsSync('/dev/kvm')) process.stdout.write('test:interop: no /dev/kvm, the VM runs under TCG (slow boot, same results)\n');

let booted = false;
if (sh('./vm-exec.sh', ['1', 'true']).status !== 0) {
  process.stdout.write('test:interop: setting up and booting the lab VM (minutes under TCG)…\n');
  const setup = sh('./setup.sh', [], { stdio: 'inherit' });
  if (setup.status !== 0) skip('lab setup.sh failed (see its output above)');
  const up = sh('./up.sh', [], { stdio: 'inherit', env: { ...process.env, NVMS: '1' } });
  if (up.status !== 0) skip('lab up.sh failed (see its output above)');
  booted = true;
}

let status = 1;
try {
  // path MTU 4096 needs frames of 4096 + headers on every hop: guest NIC, tap, bridge
  for (const cmd of [['ip', '-n', NS, 'link', 'set', 'rxetap1', 'mtu', '9000'], ['ip', '-n', NS, 'link', 'set', 'rxebr0', 'mtu', '9000']]) {
    const r = sh(cmd[0]!, cmd.slice(1));
    if (r.status !== 0) throw new Error(`${cmd.join(' ')}: ${r.out}`);
  }
  const g = sh('./vm-exec.sh', ['1', "ip link set eth0 mtu 9000 && (pkill -f '[s]vagent.py'; true)"]);
  if (g.status !== 0) throw new Error(`guest MTU: ${g.out}`);
  const agent = readFileSync(join(DIST, '..', 'test', 'interop', 'agent.py'));
  const cp = sh('./vm-exec.sh', ['1', 'cat > /tmp/svagent.py'], { input: agent });
  if (cp.status !== 0) throw new Error(`copying the agent: ${cp.out}`);
  sh('./vm-exec.sh', ['1', 'rm -f /tmp/svagent.log; nohup python3 /tmp/svagent.py 18600 > /tmp/svagent.log 2>&1 < /dev/null &'], { input: '' });
  let log = '';
  for (let i = 0; i < 30 && !log.includes('agent listening'); i++) log = sh('./vm-exec.sh', ['1', 'sleep 0.5; cat /tmp/svagent.log'], { input: '' }).out;
  if (!log.includes('agent listening')) throw new Error(`the agent did not start: ${log}`);
  // INTEROP_ONLY=pingpong,perftest runs only those specs (by name without .spec.js)
  const only = process.env.INTEROP_ONLY?.split(',').map((s) => `${s.trim()}.spec.js`);
  const specs = readdirSync(join(DIST, 'test', 'interop')).filter((f) => f.endsWith('.spec.js') && (!only || only.includes(f))).map((f) => join(DIST, 'test', 'interop', f));
  const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, '--test', '--test-concurrency=1', ...specs], {
    stdio: 'inherit', env: { ...process.env, LAB_PEER: PEER, LAB_HOST: '10.77.0.1', LAB_DIR: LAB },
  });
  status = r.status ?? 1;
} catch (e) {
  process.stderr.write(`test:interop: ${(e as Error).message}\n`);
} finally {
  sh('./vm-exec.sh', ['1', "pkill -f '[s]vagent.py'; true"]);
  if (booted && process.env.KEEP_LAB !== '1') sh('./down.sh', [], { stdio: 'inherit' });
}
process.exit(status);
