/**
 * rdma-core's own test suite on softverbsd, held to Linux rxe's outcomes (test/fixtures/pyverbs-linux-rxe.json,
 * measured in the lab by `npm run pyverbs:baseline`): every test ok there is ok here; a test skipped there is
 * skipped here only for the same reason, or passes; none errors or fails here unless it does there. The whole
 * suite runs (seconds); `npm run test:pyverbs` prints the per-file table.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { RunningDaemon } from '../helpers.js';
import { linuxBaseline, pyverbsDaemon, pyverbsSkip, runSuite, table, violations, type SuiteRun } from './pyverbs-suite.js';

describe('rdma-core\'s test suite (pyverbs) through softverbs exec', { skip: pyverbsSkip() }, () => {
  let d: RunningDaemon;
  let here: SuiteRun;
  const linux = linuxBaseline();

  before(async () => {
    d = await pyverbsDaemon();
    here = runSuite(d.root);
  });
  after(async () => {
    await d?.stop();
  });

  test('the baseline is a full run on Linux rxe', () => {
    assert.equal(linux.tests.length, linux.total);
    assert.ok(linux.total >= 250, `${linux.total} tests in the fixture`);
    assert.match(linux.source.kernel!, /^\d+\.\d+/);
  });

  test('every test ran here', () => {
    assert.equal(here.total, linux.total, 'the same suite ran');
  });

  test('every outcome is Linux rxe\'s or better', () => {
    const v = violations(linux.tests, here.tests);
    assert.deepEqual(v, [], `${v.length} tests do worse here than on Linux rxe ${linux.source.kernel}:\n${v.join('\n')}\n\n${table(linux.tests, here.tests)}`);
  });

  test('the rdmacm traffic tests Linux rxe skips (no net interface) run and pass here', () => {
    const cm = here.tests.filter((t) => t.id.startsWith('test_rdmacm.') && !t.id.includes('multicast'));
    assert.ok(cm.length >= 7, cm.map((t) => t.id).join(', '));
    for (const t of cm) assert.equal(t.outcome, 'ok', `${t.id}: ${t.reason ?? t.error ?? ''}`);
  });
});

describe('the comparison rule itself', () => {
  const t = (id: string, outcome: SuiteRun['tests'][number]['outcome'], reason?: string) => ({ id, outcome, ...(reason ? { reason } : {}) });
  test('ok must stay ok; a skip needs the same reason or a pass; errors only where Linux errs', () => {
    const linux = [t('a.A.ok', 'ok'), t('a.A.skip', 'skipped', 'x'), t('a.A.skip2', 'skipped', 'x'), t('a.A.err', 'error'), t('b.B.skip3', 'skipped', 'y')];
    const here = [t('a.A.ok', 'skipped', 'x'), t('a.A.skip', 'ok'), t('a.A.skip2', 'skipped', 'z'), t('a.A.err', 'fail'), t('b.B.skip3', 'skipped', 'y'), t('c.C.new', 'error')];
    assert.deepEqual(violations(linux, here), [
      'a.A.ok: Linux rxe ok; here skipped (x)',
      'a.A.skip2: Linux rxe skipped (x); here skipped (z)',
      'c.C.new: Linux rxe not run; here error',
    ]);
    assert.deepEqual(violations(linux, here.slice(1)).slice(0, 1), ['a.A.ok: Linux rxe ok; here not run']);
    assert.match(table(linux, here), /^a +\| +1 +2 +1 +0 \| +1 +2 +0 +1$/m);
  });
});
