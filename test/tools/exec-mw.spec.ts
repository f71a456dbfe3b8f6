/**
 * rdma-core's own memory window tests (pyverbs, rdma-core 44's tests/test_mr.py and test_qpex.py's bind_mw)
 * through `softverbs exec` as the unprivileged user svtest-alice: librxe's ibv_alloc_mw, ibv_bind_mw (a
 * BIND_MW WQE in rxe's ring), BIND_MW work requests by ibv_post_send and by ibv_wr_bind_mw, LOCAL_INV,
 * SEND_WITH_INV, and RDMA WRITEs through the windows that must succeed before and fail after. On Linux rxe
 * 6.1 test_mr gives 8 ok, 7 of them memory windows; so must softverbsd.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { RunningDaemon } from '../helpers.js';
import { execSkip, launchers, preloadDaemon, start } from './exec-harness.js';

const SUITE = '/usr/share/doc/rdma-core/tests';
const PYTHON = '/usr/bin/python3';
const havePyverbs = existsSync(SUITE) && spawnSync(PYTHON, ['-c', 'import pyverbs'], { encoding: 'utf8' }).status === 0;
const skip = execSkip([]) || (havePyverbs ? false : `rdma-core's pyverbs and its tests are not installed (apt-get install python3-pyverbs)`);

/** Each test's outcome from run_tests.py -v: "name (module.Class.name) ... ok" (a docstring line may come between). */
function outcomes(out: string): Map<string, string> {
  const m = new Map<string, string>();
  for (const r of out.matchAll(/^(test_\w+) \(tests\.[\w.]+\)(?:\n.*?)? \.\.\. (ok|ERROR|FAIL|skipped.*)$/gm)) m.set(r[1]!, r[2]!.split(' ')[0]!);
  return m;
}

describe('pyverbs memory window tests through softverbs exec', { skip }, () => {
  let d: RunningDaemon;
  let tmp: string;
  const { env, c } = launchers(() => d.root);
  before(async () => {
    tmp = mkdtempSync(join(tmpdir(), 'softverbs-exec-mw-'));
    d = await preloadDaemon(tmp, null);
    // a copy alice can read, the gzipped modules unpacked (Debian ships some compressed)
    cpSync(SUITE, join(tmp, 'tests'), { recursive: true });
    for (const f of readdirSync(join(tmp, 'tests'))) if (f.endsWith('.gz')) spawnSync('gunzip', ['-f', join(tmp, 'tests', f)]);
    spawnSync('chmod', ['-R', 'a+rX', tmp]);
    chmodSync(tmp, 0o755);
  });
  after(async () => {
    await d?.stop();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  /** run_tests.py with args, as alice, from the suite's directory (it loads `tests` from there). */
  async function suite(...args: string[]) {
    const argv = c('true');
    // c() runs a /usr/bin tool; here the program is python3 on the suite's runner
    argv.splice(argv.length - 1, 1, PYTHON, join(tmp, 'tests', 'run_tests.py'), '--dev', 'rxe0', '--gid', '0', '-v', ...args);
    return start(argv, env(), 120_000).done;
  }

  test('test_mr: 8 ok as on Linux rxe 6.1 (test_reg_mr_bad_flags and the 7 MWTest cases), nothing errors', async () => {
    const r = await suite('test_mr');
    const o = outcomes(r.out);
    const ok = [...o].filter(([, v]) => v === 'ok').map(([k]) => k).sort();
    assert.deepEqual(ok, [
      'test_invalidate_mw_type1', 'test_mw_type1', 'test_mw_type2', 'test_mw_type2_invalidate_dealloc', 'test_mw_type2_invalidate_local',
      'test_mw_type2_invalidate_remote', 'test_reg_mr_bad_flags', 'test_reg_mw_wrong_type',
    ], r.out);
    assert.deepEqual([...o].filter(([, v]) => v === 'ERROR' || v === 'FAIL'), [], r.out);
    assert.match(r.out, /^OK \(skipped=\d+\)$/m, r.out);
  });

  test('test_qpex: ibv_wr_bind_mw (a BIND_MW WQE written by librxe\'s ibv_wr_* builders) binds, and traffic goes through the window', async () => {
    const r = await suite('-k', 'test_qp_ex_rc_bind_mw');
    assert.equal(outcomes(r.out).get('test_qp_ex_rc_bind_mw'), 'ok', r.out);
  });
});
