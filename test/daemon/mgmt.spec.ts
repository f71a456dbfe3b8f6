/**
 * The management socket from the outside: raw request frames, as any local user can send them. A request
 * that is not a JSON object, or names no request the daemon has, is refused with its errno and reason (and
 * the daemon serves on); changing the device set is root's; a device deleted twice at once goes once.
 */
import assert from 'node:assert/strict';
import { chmodSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { FrameAssembler, mgmtFrame, parseReply, replySize } from '../../src/abi/framing.js';
import { E } from '../../src/common/errno.js';
import { getDeviceList } from '../../src/verbs/index.js';
import { A1, A2, DIST, IS_ROOT, runProcess, startDaemon, testUser, type RunningDaemon } from '../helpers.js';

type Answer = { status: number; text: string };

/** Sends the requests in one write on one connection; their answers, in order (fewer if the connection closed). */
function ask(devPath: string, ...requests: string[]): Promise<Answer[]> {
  return new Promise((resolve, reject) => {
    const out: Answer[] = [];
    const s = connect(devPath);
    // a daemon that stopped answering fails the test rather than hanging it
    const t = setTimeout(() => {
      s.destroy();
      reject(new Error(`no answer in 5 s; answered so far: ${JSON.stringify(out)}`));
    }, 5000);
    const done = () => {
      clearTimeout(t);
      s.destroy();
      resolve(out);
    };
    const frames = new FrameAssembler((h) => replySize(h, 1 << 24), (f) => {
      const { status, body } = parseReply(f);
      out.push({ status, text: body.toString() });
      if (out.length === requests.length) done();
    }, done);
    s.on('data', (d) => frames.push(d));
    s.on('close', done);
    s.on('error', done);
    s.write(Buffer.concat(requests.map(mgmtFrame)));
  });
}

/** The daemon's devices by name, asked with a deadline. */
async function deviceNames(devPath: string): Promise<string[]> {
  const [a] = await ask(devPath, JSON.stringify({ op: 'devices' }));
  assert.equal(a?.status, 0, JSON.stringify(a));
  return (JSON.parse(a!.text) as Array<{ name: string }>).map((x) => x.name);
}

describe('management requests', () => {
  let d: RunningDaemon;
  let devPath: string;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${A1}`, '--device', `rxe1=${A2},wire=none`]);
    devPath = getDeviceList(d.root)[0]!.devPath;
  });
  after(async () => {
    await d?.stop();
  });

  test('a request that is not a JSON object is EINVAL saying why, and the daemon serves on', async () => {
    const answers = await ask(devPath, 'null', '{"op": "devices"', '[{"op": "devices"}]', '"devices"', '7');
    assert.deepEqual(answers.map((a) => a.status), [-E.EINVAL, -E.EINVAL, -E.EINVAL, -E.EINVAL, -E.EINVAL], JSON.stringify(answers));
    assert.equal(answers[0]!.text, 'the request is null, not a JSON object');
    assert.match(answers[1]!.text, /^the request is not JSON \(.+\)$/);
    assert.equal(answers[2]!.text, 'the request is an array, not a JSON object');
    assert.equal(answers[3]!.text, 'the request is a string, not a JSON object');
    assert.equal(answers[4]!.text, 'the request is a number, not a JSON object');
    assert.deepEqual(await deviceNames(devPath), ['rxe0', 'rxe1']);
  });

  test('a request the daemon does not have is EOPNOTSUPP naming the ones it has (nothing inherited is one)', async () => {
    const answers = await ask(devPath, '{"op": "nosuch"}', '{"op": "toString"}', '{"op": "constructor"}', '{"op": 5}', '{}', '');
    assert.deepEqual(answers.map((a) => a.status), Array(6).fill(-E.EOPNOTSUPP), JSON.stringify(answers));
    const known = '(one of devices, counters, restrack, contexts, pinned, qps, faults, link-add, link-delete)';
    assert.equal(answers[0]!.text, `unknown request "nosuch" ${known}`);
    assert.equal(answers[1]!.text, `unknown request "toString" ${known}`);
    assert.equal(answers[2]!.text, `unknown request "constructor" ${known}`);
    assert.equal(answers[3]!.text, `unknown request 5 ${known}`);
    assert.equal(answers[4]!.text, `the request has no op ${known}`);
    assert.equal(answers[5]!.text, `the request has no op ${known}`);
  });

  const asAnotherUser = { skip: IS_ROOT ? false : 'needs root (another user)' };
  test('another user may not add or delete a link: EPERM, and the devices stay', asAnotherUser, async () => {
    chmodSync(d.root, 0o755);
    const [setpriv, ...as] = testUser('svtest-alice').as;
    const rdma = (...args: string[]) =>
      runProcess(setpriv!, [...as, process.execPath, join(DIST, 'src', 'bin', 'rdma.js'), ...args], { ...process.env, SOFTVERBS_ROOT: d.root });
    const del = await rdma('link', 'delete', 'rxe1');
    assert.notEqual(del.code, 0);
    assert.match(del.out, /EPERM: link-delete: only root may add or delete links/);
    const add = await rdma('link', 'add', 'rxe9', 'type', 'rxe', 'netdev', 'lo');
    assert.notEqual(add.code, 0);
    assert.match(add.out, /EPERM: link-add: only root may add or delete links/);
    assert.deepEqual(await deviceNames(devPath), ['rxe0', 'rxe1']);
  });

  test('a device deleted twice in one breath, over its own file: both answered, it goes once, the daemon serves on', async () => {
    const own = getDeviceList(d.root).find((x) => x.name === 'rxe1')!.devPath;
    const del = JSON.stringify({ op: 'link-delete', name: 'rxe1' });
    assert.deepEqual(await ask(own, del, del), [{ status: 0, text: '{}' }, { status: 0, text: '{}' }]);
    const deadline = Date.now() + 5000;
    while (getDeviceList(d.root).length !== 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(await deviceNames(devPath), ['rxe0']);
    assert.deepEqual(await ask(devPath, del), [{ status: -E.ENODEV, text: 'link delete: no device rxe1' }]);
  });
});
