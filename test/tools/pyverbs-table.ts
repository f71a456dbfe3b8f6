/**
 * `npm run test:pyverbs`: rdma-core's whole test suite through softverbs exec, its per-file table beside Linux
 * rxe's (the lab baseline), and every test that does worse here. Exits 1 when one does; arguments narrow the
 * run as run_tests.py's do (a module, -k PATTERN), the table and rule then covering only what ran.
 */
import { linuxBaseline, pyverbsDaemon, pyverbsSkip, runSuite, table, violations } from './pyverbs-suite.js';

const why = pyverbsSkip();
if (why) {
  process.stdout.write(`test:pyverbs skipped: ${why}\n`);
  process.exit(0);
}
const args = process.argv.slice(2);
const linux = linuxBaseline();
const d = await pyverbsDaemon();
let status = 1;
try {
  const t0 = performance.now();
  const here = runSuite(d.root, args);
  const ran = new Set(here.tests.map((t) => t.id));
  const base = args.length ? linux.tests.filter((t) => ran.has(t.id)) : linux.tests;
  const v = violations(base, here.tests);
  process.stdout.write(`rdma-core tests: Linux rxe (${linux.source.kernel}, rdma-core ${linux.source.rdmaCore}, ${linux.source.date}) vs softverbsd (${Math.round(performance.now() - t0)} ms)\n\n`);
  process.stdout.write(`${table(base, here.tests)}\n\n`);
  process.stdout.write(v.length ? `${v.length} tests do worse here than on Linux rxe:\n${v.join('\n')}\n` : 'every test does as on Linux rxe or better\n');
  status = v.length ? 1 : 0;
} finally {
  await d.stop();
}
process.exit(status);
