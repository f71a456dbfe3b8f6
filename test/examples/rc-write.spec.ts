/** The README's walkthrough is a program: it runs, as a user would run it, against a real daemon. */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { A1, A2, DIST, runProcess, startDaemon } from '../helpers.js';

const EXAMPLE = join(DIST, 'examples', 'rc-write.js');

test('examples/rc-write: INIT → RTR → RTS from exchanged cards, a WRITE with immediate seen through the completion channel, everything released', async () => {
  const d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2}`]);
  try {
    const env = { ...process.env, SOFTVERBS_ROOT: d.root };
    for (const devs of [[], ['rxe0', 'rxe1']]) {
      const r = await runProcess(process.execPath, [EXAMPLE, ...devs], env);
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, /^A: QP \d+ at 0000:0000:0000:0000:0000:ffff:[0-9a-f]{4}:[0-9a-f]{4} connected to B: QP \d+/m);
      assert.match(r.out, /^A: write completed: SUCCESS$/m);
      assert.match(r.out, /^B: 15 bytes arrived with immediate 0x1234: "hello over RDMA"$/m);
    }
    // await using released both sides: the daemon logged each context's close with nothing left to destroy
    const closes = d.stderr().split('\n').filter((l) => /closed the device/.test(l));
    assert.equal(closes.length, 4, d.stderr());
    assert.ok(closes.every((l) => !/destroyed what it held/.test(l)), closes.join('\n'));
  } finally {
    await d.stop();
  }
});

test('examples/rc-write without a daemon says how to start one, exit 1', async () => {
  const r = await runProcess(process.execPath, [EXAMPLE], { ...process.env, SOFTVERBS_ROOT: join(DIST, 'no-such-root') });
  assert.equal(r.code, 1);
  assert.match(r.out, /no softverbs device: start softverbsd first/);
});
