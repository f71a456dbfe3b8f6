/**
 * The offset tables the rings' hot paths read (`SW.opcode`, `CQE.wr_id`, ...) are ordinary fast-mode objects. An
 * object built a property at a time turns into a hash table past a dozen keyed stores, and then every field read
 * on the per-post path is a generic inline-cache lookup: the send WQE's writer went from 95 to 160 ns a post.
 * V8 says which mode an object is in through %HasFastProperties, available in a child started with
 * --allow-natives-syntax.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { test } from 'node:test';
import { DIST } from '../helpers.js';

test('every offsets() table of the rings is a fast-mode object', () => {
  const mods = ['send-ring', 'recv-ring', 'cq-ring', 'ring', 'rxe-rings', 'rxe'].map((m) => join(DIST, 'src', 'abi', `${m}.js`));
  const script = `
    const mods = ${JSON.stringify(mods)};
    const out = [];
    for (const m of mods) for (const [k, v] of Object.entries(await import(m)))
      if (v && typeof v === 'object' && Object.getPrototypeOf(v) === Object.prototype && typeof v.SIZE === 'number') out.push(k + ' ' + %HasFastProperties(v));
    console.log(out.sort().join('\\n'));`;
  const r = spawnSync(process.execPath, ['--allow-natives-syntax', '--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const lines = r.stdout.trim().split('\n');
  // the send and receive WQE, the CQE and the SGE tables at least
  for (const t of ['SW', 'RW', 'CQE', 'SG']) assert.ok(lines.includes(`${t} true`), `${t} is not among the fast tables:\n${r.stdout}`);
  assert.deepEqual(lines.filter((l) => !l.endsWith(' true')), [], 'tables in dictionary mode');
});
