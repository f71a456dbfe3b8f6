/**
 * `npm run pyverbs:baseline`: rdma-core's own test suite (python3-pyverbs' /usr/share/doc/rdma-core/tests)
 * run on Linux rdma_rxe in lab guest 1, every test's outcome written to test/fixtures/pyverbs-linux-rxe.json
 * with the guest's kernel, package versions and date. test/tools/pyverbs.spec.ts holds softverbsd to it.
 *
 * The lab must be up (../shared/lab/rxe-vm/up.sh; this script never boots or stops it) and it is shared:
 * run this under `flock /tmp/lab.lock` where others use it too. GID index 1 is the guest's RoCEv2 GID of its
 * IPv4 address (index 0 is the RoCEv2 link-local one); LAB_GID overrides it.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { DIST } from '../helpers.js';

const REPO = join(DIST, '..');
const LAB = process.env.LAB_DIR ?? join(REPO, '..', 'shared', 'lab', 'rxe-vm');
const GUEST = process.env.LAB_GUEST ?? '1';
const GID = process.env.LAB_GID ?? '1';
const DIR = '/tmp/sv-pyverbs';
const OUT = join(REPO, 'test', 'fixtures', 'pyverbs-linux-rxe.json');

/** A command line run in the guest: its stdout, or the script ends saying what failed. */
function guest(cmd: string, input = '', ms = 600_000): string {
  const r = spawnSync(join(LAB, 'vm-exec.sh'), [GUEST, cmd], { encoding: 'utf8', input, timeout: ms, maxBuffer: 64 << 20 });
  if (r.status !== 0) {
    process.stderr.write(`pyverbs:baseline: in guest ${GUEST}: ${cmd}\n${r.stderr ?? ''}${r.error ? String(r.error) : ''}\n`);
    process.exit(1);
  }
  return r.stdout;
}

if (spawnSync(join(LAB, 'vm-exec.sh'), [GUEST, 'true']).status !== 0) {
  process.stderr.write(`pyverbs:baseline: lab guest ${GUEST} is not up (${LAB}/up.sh boots it)\n`);
  process.exit(1);
}
guest(`rm -rf ${DIR} && mkdir -p ${DIR} && cp -r /usr/share/doc/rdma-core/tests ${DIR}/ && find ${DIR}/tests -name '*.gz' -exec gunzip -f {} +`);
guest(`cat > ${DIR}/pyverbs_runner.py`, readFileSync(join(REPO, 'test', 'fixtures', 'pyverbs_runner.py'), 'utf8'));
const facts = guest([
  'uname -r', 'dpkg-query -W -f "\\${Version}\\n" rdma-core', 'dpkg-query -W -f "\\${Version}\\n" python3-pyverbs',
  'rdma link show rxe0/1', `cat /sys/class/infiniband/rxe0/ports/1/gids/${GID} /sys/class/infiniband/rxe0/ports/1/gid_attrs/types/${GID}`,
  "ip -o link show $(cat /sys/class/infiniband/rxe0/ports/1/gid_attrs/ndevs/" + GID + ") | sed 's/.* mtu \\([0-9]*\\).*/\\1/'", 'date -u +%Y-%m-%dT%H:%M:%SZ',
].join(' && ')).trim().split('\n');
const [kernel, rdmaCore, pyverbs, link, gid, gidType, mtu, date] = facts as [string, string, string, string, string, string, string, string];
const args = ['--dev', 'rxe0', '--gid', GID, '-v'];
const json = guest(`cd ${DIR}/tests && python3 ${DIR}/pyverbs_runner.py ${DIR}/tests ${args.join(' ')} 2>${DIR}/run.log`);
const run = JSON.parse(json) as { total: number; counts: Record<string, number>; tests: { id: string; outcome: string; reason?: string; error?: string }[] };
const fixture = {
  source: {
    what: 'rdma-core tests (python3-pyverbs, /usr/share/doc/rdma-core/tests) on Linux rdma_rxe, lab guest ' + GUEST,
    command: `run_tests.py ${args.join(' ')} (through test/fixtures/pyverbs_runner.py)`,
    date, kernel, rdmaCore, pyverbs, link, gid: `${GID}: ${gid} (${gidType})`, netdevMtu: Number(mtu),
    producedBy: 'npm run pyverbs:baseline (test/interop/pyverbs-baseline.ts)',
  },
  total: run.total,
  counts: run.counts,
  // no durations: they would make every re-measure a diff of noise
  tests: run.tests.map(({ id, outcome, reason, error }) => ({ id, outcome, ...(reason !== undefined ? { reason } : {}), ...(error !== undefined ? { error } : {}) })),
};
writeFileSync(OUT, JSON.stringify(fixture, null, 1) + '\n');
process.stdout.write(`pyverbs:baseline: ${run.total} tests on ${kernel} (rdma-core ${rdmaCore}): ${Object.entries(run.counts).map(([k, v]) => `${v} ${k}`).join(', ')} -> ${OUT}\n`);
