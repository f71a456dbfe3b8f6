/**
 * One error family: every error of ours carries `code` (the errno's name) and a negative `errno`, as Node's
 * system errors do; errnoOf / codeOf / messageOf read whatever a catch block caught, ours, Node's or a
 * thrown non-Error.
 */
import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { connect } from 'node:net';
import { constants, tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { CmdError, E } from '../../src/common/errno.js';
import { asError, codeOf, ErrnoError, errnoOf, Fail, messageOf, UsageError } from '../../src/common/errors.js';
import { UntrustedPath } from '../../src/common/trust.js';
import { parseLimits } from '../../src/daemon/limits.js';
import { parseRules, policyFor } from '../../src/daemon/rules.js';
import { spawnDaemon } from '../../src/daemon/spawn.js';
import { ensureDirUnder, prepareRoot } from '../../src/daemon/tree.js';
import { Fault } from '../../src/hca/fabric.js';
import { mapShared, SysError } from '../../src/native/libc.js';
import { VerbsError } from '../../src/verbs/errors.js';
import { DIST } from '../helpers.js';

const ERRNO = constants.errno as Record<string, number>;

/** The family's shape: a name Linux has, and its number negated. */
function assertFamily(e: unknown, code: string): void {
  assert.ok(e instanceof Error);
  assert.ok(e instanceof ErrnoError, `${e.constructor.name} is one of ours`);
  assert.equal(typeof e.code, 'string');
  assert.match(e.code, /^E[A-Z0-9]+$/);
  assert.equal(e.code, code);
  assert.ok(Number.isInteger(e.errno) && e.errno < 0, `${e.constructor.name}.errno ${e.errno} is a negative integer`);
  assert.equal(e.errno, -ERRNO[code]!);
  assert.equal(errnoOf(e), e.errno);
  assert.equal(codeOf(e), e.code);
}

function caught(f: () => unknown): unknown {
  try {
    f();
  } catch (e) {
    return e;
  }
  assert.fail('nothing was thrown');
}

test('every error class of ours has a string code and a negative integer errno, from a name or a number', () => {
  assertFamily(new ErrnoError('EPERM', 'x'), 'EPERM');
  assertFamily(new ErrnoError(E.EACCES, 'x'), 'EACCES');
  assertFamily(new ErrnoError(-E.EACCES, 'x'), 'EACCES');
  assertFamily(new VerbsError('ibv_reg_mr', 'EINVAL', 'length 0'), 'EINVAL');
  assertFamily(new VerbsError('ibv_create_qp', E.ENOMEM), 'ENOMEM');
  assertFamily(new SysError('mmap', E.EINVAL), 'EINVAL');
  assertFamily(new UntrustedPath('/tmp/x', 'is not a directory'), 'EACCES');
  assertFamily(new UntrustedPath('/tmp/x', 'cannot be examined (ENOENT)', 'ENOENT'), 'ENOENT');
  assertFamily(new UsageError('--poll-us "x": expected microseconds'), 'EINVAL');
  assertFamily(new Fail("Couldn't connect to host:18515"), 'EIO');
  assertFamily(new Fail('Wrong device name rxe9', 'ENODEV'), 'ENODEV');
});

test("a tool's Fail and a UsageError say exactly what they were given", () => {
  assert.equal(new Fail(' Failed to exchange data\n').message, ' Failed to exchange data\n');
  assert.equal(new UsageError('device rxe0 given twice').message, 'device rxe0 given twice');
  assert.equal(String(new UsageError('x')), 'Error: x', 'printed as the plain Error it was');
});

test('VerbsError keeps its public shape: verb, code, errno, badWr, wr and its message', () => {
  const e = new VerbsError('ibv_post_send', 'EINVAL', 'work request 2: bad opcode', 2);
  e.wr = { wrId: 7n };
  assert.equal(e.name, 'VerbsError');
  assert.equal(e.message, 'ibv_post_send: EINVAL: work request 2: bad opcode');
  assert.equal(e.verb, 'ibv_post_send');
  assert.equal(e.badWr, 2);
  assert.deepEqual(e.wr, { wrId: 7n });
  assert.equal(new VerbsError('ibv_open_device', E.ENODEV).message, 'ibv_open_device: ENODEV');
});

test('a libc call that fails is a SysError with the errno negated, as Node has it', () => {
  const e = caught(() => mapShared(-1, 4096));
  assert.ok(e instanceof SysError);
  assertFamily(e, 'EBADF');
  assert.equal(e.call, 'mmap');
  assert.equal(e.message, 'mmap: EBADF (Bad file descriptor)');
});

test("softverbsd's configuration errors are UsageErrors (EINVAL), its root's are the errno of what is wrong", () => {
  assertFamily(caught(() => Fault.parse('drop=2')), 'EINVAL');
  assertFamily(caught(() => parseLimits({ qps: 0 })), 'EINVAL');
  assertFamily(caught(() => parseRules('KERNEL=="x", COLOR="red"')), 'EINVAL');
  assertFamily(caught(() => policyFor(parseRules('KERNEL=="*", GROUP="no-such-group-softverbs"'), 'uverbs0')), 'EINVAL');
  const dir = mkdtempSync(join(tmpdir(), 'softverbs-errors-'));
  try {
    const open = join(dir, 'open');
    mkdirSync(open);
    chmodSync(open, 0o777);
    const e = caught(() => prepareRoot(open, 0o755));
    assertFamily(e, 'EACCES');
    assert.match(messageOf(e), /^refusing root .*open: it is writable by every user/);
    assertFamily(caught(() => ensureDirUnder(dir, '/elsewhere')), 'EINVAL');
    symlinkSync('/tmp', join(dir, 'link'));
    assertFamily(caught(() => ensureDirUnder(dir, join(dir, 'link', 'x'))), 'ENOTDIR');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a softverbsd that exits before it is ready rejects spawnDaemon with ESRCH, and says why', async () => {
  const e = await spawnDaemon(['--poll-us', 'soon']).then(() => assert.fail('it started'), (err: unknown) => err);
  assertFamily(e, 'ESRCH');
  assert.match(messageOf(e), /^softverbsd exited \(2\):\nsoftverbsd: --poll-us "soon": expected microseconds/);
});

test("CmdError names its errno in code; errnoOf reads it negated, as it reads every other error", () => {
  const e = new CmdError(E.EINVAL, 'bad');
  assert.equal(e.code, 'EINVAL');
  assert.equal(e.message, 'bad');
  assert.equal(errnoOf(e), -E.EINVAL);
  assert.equal(codeOf(e), 'EINVAL');
});

test("CmdError's own errno is negative, as every error of ours", () => {
  assertFamily(new CmdError(E.EINVAL, 'bad'), 'EINVAL');
});

test("errnoOf / codeOf / messageOf read Node's own errors: system errors by errno, others by code alone", async () => {
  const fsErr = caught(() => readFileSync('/nonexistent/softverbs'));
  assert.equal(codeOf(fsErr), 'ENOENT');
  assert.equal(errnoOf(fsErr), -E.ENOENT);
  assert.match(messageOf(fsErr), /^ENOENT: no such file or directory/);

  // a socket's error comes from libuv, errno and all
  const sockErr = await new Promise<Error>((resolve) => connect('/nonexistent/softverbs.sock').once('error', resolve));
  assert.equal(codeOf(sockErr), 'ENOENT');
  assert.equal(errnoOf(sockErr), -E.ENOENT);

  // an argument Node refuses has a code that is no errno
  const argErr = caught(() => Buffer.alloc(-1));
  assert.equal(codeOf(argErr), 'ERR_OUT_OF_RANGE');
  assert.equal(errnoOf(argErr), undefined);
  assert.match(messageOf(argErr), /"size" is out of range/);
});

test('what is not an Error: a code or errno it carries still counts, a string is its own message, undefined has none', () => {
  assert.equal(errnoOf({ code: 'EAGAIN' }), -E.EAGAIN);
  assert.equal(codeOf({ code: 'EAGAIN' }), 'EAGAIN');
  assert.equal(errnoOf({ errno: E.EIO }), -E.EIO, 'either sign');
  assert.equal(errnoOf({ code: 42 }), undefined, 'a code must be a name');
  assert.equal(errnoOf({ code: 'ENOTANERRNO' }), undefined);
  for (const v of ['boom', undefined, null, 42, Symbol('s'), Object.create(null)]) {
    assert.equal(codeOf(v), undefined);
    assert.equal(errnoOf(v), undefined);
  }
  assert.equal(messageOf('boom'), 'boom');
  assert.equal(messageOf(undefined), 'undefined');
  assert.equal(messageOf(null), 'null');
  assert.equal(messageOf(42), '42');
  assert.equal(messageOf({ message: 'from an object' }), 'from an object');
  assert.equal(messageOf(Object.create(null)), '[Object: null prototype] {}');
  const e = new TypeError('x');
  assert.equal(asError(e), e);
  assert.ok(asError('boom') instanceof Error);
  assert.equal(asError('boom').message, 'boom');
});


test('no catch block casts what it caught: it reads it through errnoOf / codeOf / messageOf or a guard', () => {
  const src = join(DIST, '..', 'src');
  const files = (readdirSync(src, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts'));
  // a cast, or a rejection handler's parameter typed as what it cannot know it is
  const casts = /\bas (?:Error|NodeJS\.ErrnoException|CmdError|VerbsError|SysError)\b|\bas \{ ?(?:code|errno|message)\b|: NodeJS\.ErrnoException\b|\(\w+: Error\) =>(?! void)/;
  const found = files.flatMap((f) => readFileSync(join(src, f), 'utf8').split('\n').flatMap((l, i) => (casts.test(l) ? [`src/${f}:${i + 1}: ${l.trim()}`] : [])));
  assert.deepEqual(found, []);
});

test('every error class in src/ is one of ours: it extends ErrnoError', () => {
  const src = join(DIST, '..', 'src');
  const files = (readdirSync(src, { recursive: true }) as string[]).filter((f) => f.endsWith('.ts'));
  const direct = files.flatMap((f) => [...readFileSync(join(src, f), 'utf8').matchAll(/class (\w+)(?:<[^>]*>)? extends (?:Error|TypeError|RangeError)\b/g)].map((m) => m[1]));
  assert.deepEqual(direct.sort(), ['ErrnoError']);
});
