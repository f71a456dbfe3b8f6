/**
 * The descriptor exchange (<root>/fds.sock) against a hostile client: the
 * library's memfds travel there as SCM_RIGHTS (PUT_MEMFD) instead of being
 * opened through /proc/<pid>/fd. Garbage in place of a memfd (no
 * descriptor, several, a socket, a FIFO, a file, a read-only or unsealable
 * or write-sealed memfd), a wrong key, another process's or user's context:
 * each is its errno, and the daemon keeps none of the descriptors. Held
 * memfds are charged to the user's quota and given back when the command
 * that names them runs (whatever its outcome) or the context ends.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readdirSync, rmSync, writeFileSync, chmodSync, constants as fsc } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { constants } from 'node:os';
import { layout, pack, unpack } from '../../src/abi/layout.js';
import * as U from '../../src/abi/uverbs.js';
import { sendWithFds } from '../../src/native/fd-pass.js';
import { addSeals, libc, memfdCreate, socketFd } from '../../src/native/libc.js';
import { exchangePath, putMemfd } from '../../src/verbs/fd-exchange.js';
import { regionOf } from '../../src/verbs/memory.js';
import { Access, getDeviceList, openDevice, type Context } from '../../src/verbs/index.js';
import { A1, assertServing, DIST, IS_ROOT, runProcess, startDaemon, testUser, type RunningDaemon } from '../helpers.js';

const E = constants.errno;
const RESP = layout(U.SV_FD_RESP).size;
const PUT_FIXTURE = join(DIST, 'test', 'fixtures', 'put-memfd.js');
const memfd_create = libc.func('int memfd_create(const char *name, unsigned int flags)');
const F_SEAL_WRITE = 8;

interface Answer {
  status: number;
  text: string;
  id: number;
  size: bigint;
}

/** One raw request on the exchange: `body` (an sv_fd_req unless given) with `fds` riding along; the answer. */
async function raw(root: string, req: { op: number; token: number; arg?: bigint } | Buffer, fds: number[] = []): Promise<Answer> {
  const s = await new Promise<Socket>((res, rej) => {
    const c = connect(join(root, 'fds.sock'), () => res(c));
    c.once('error', rej);
  });
  const got = new Promise<Buffer>((res) => {
    const parts: Buffer[] = [];
    s.on('data', (d) => parts.push(d));
    s.once('close', () => res(Buffer.concat(parts)));
    s.on('error', () => {});
  });
  const body = Buffer.isBuffer(req) ? req : pack(U.SV_FD_REQ, { op: req.op, token: req.token, arg: req.arg ?? 0n });
  const n = sendWithFds(socketFd(s), body, fds);
  // a request refused before it was read (EAGAIN) finds the connection closed: the answer is there all the same
  assert.ok(n >= 0 || n === -E.EPIPE || n === -E.ECONNRESET, `sendmsg: ${n}`);
  const b = await got;
  s.destroy();
  assert.ok(b.length >= RESP, `an answer (${b.length} bytes)`);
  const r = unpack(U.SV_FD_RESP, b);
  return { status: r.status, text: b.subarray(RESP, RESP + r.text_len).toString(), id: r.id, size: r.size };
}

function memfd(size = 4096): number {
  const fd = memfdCreate('fdx-spec');
  ftruncateSync(fd, size);
  return fd;
}

/** The fd key the daemon gave a context of ours (the library keeps it to itself). */
const keyOf = (ctx: Context): number => (ctx as unknown as { fdKey: number }).fdKey;

describe('PUT_MEMFD from a hostile client', () => {
  let d: RunningDaemon;
  let ctx: Context;
  let key: number;
  const tmp = mkdtempSync(join(tmpdir(), 'sv-fdx-'));
  const daemonFds = () => readdirSync(`/proc/${d.proc.pid}/fd`).length;
  /** the daemon's descriptor count once it settles at or below `n` (its link check opens one now and then) */
  async function fdsBackTo(n: number): Promise<number> {
    let now = daemonFds();
    for (let i = 0; i < 100 && now > n; i++) {
      await new Promise((r) => setTimeout(r, 20));
      now = daemonFds();
    }
    return now;
  }

  /** the fewest descriptors the daemon has over 200 ms: those it keeps, without the moment's (a link check's socket, connections closing) */
  async function fdsLeast(): Promise<number> {
    let least = daemonFds();
    for (let i = 0; i < 10; i++) {
      await new Promise((r) => setTimeout(r, 20));
      least = Math.min(least, daemonFds());
    }
    return least;
  }

  before(async () => {
    d = await startDaemon(['--device', `rxe0=${A1}`]);
    chmodSync(d.root, 0o755);
    ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
    key = keyOf(ctx);
  });
  after(async () => {
    await ctx?.closeDevice();
    await d?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('a memfd comes back as an id and its size; the daemon has sealed it against shrinking and growing', async () => {
    const fd = memfd(8192);
    const a = await raw(d.root, { op: U.FdOp.PUT_MEMFD, token: key }, [fd]);
    assert.equal(a.status, 0, a.text);
    assert.ok(a.id > 0);
    assert.equal(a.size, 8192n);
    assert.throws(() => ftruncateSync(fd, 4096), { code: 'EPERM' });
    assert.throws(() => ftruncateSync(fd, 1 << 20), { code: 'EPERM' });
    closeSync(fd);
  });

  test('garbage for a memfd is its errno, and the daemon keeps none of it', async () => {
    const put = (fds: number[], token = key, arg = 0n) => raw(d.root, { op: U.FdOp.PUT_MEMFD, token, arg }, fds);
    const before = await fdsLeast();
    // nothing, or more than one
    assert.deepEqual(await put([]).then((a) => [a.status, a.text]), [-E.EBADF, 'PUT_MEMFD: no descriptor came with the request']);
    const three = [memfd(), memfd(), memfd()];
    assert.deepEqual(await put(three).then((a) => [a.status, a.text]), [-E.EINVAL, 'PUT_MEMFD: 3 descriptors came with the request; it takes one']);
    const nine = Array.from({ length: 9 }, () => memfd());
    const many = await put(nine);
    assert.equal(many.status, -E.EINVAL);
    assert.match(many.text, /more descriptors came than any request carries \(at most 8 are received; none is kept\)/);
    // not a memfd: a socket, a FIFO (never read: the daemon does not block on it), a file, a device
    const sock = connect(join(d.root, 'fds.sock'));
    await new Promise((r) => sock.once('connect', r));
    const fifo = join(tmp, 'fifo');
    assert.equal(spawnSync('mkfifo', [fifo]).status, 0);
    const fifoFd = openSync(fifo, fsc.O_RDWR | fsc.O_NONBLOCK);
    writeFileSync(join(tmp, 'file'), 'x'.repeat(8192));
    const fileFd = openSync(join(tmp, 'file'), 'r+');
    const nullFd = openSync('/dev/null', 'r+');
    for (const [fd, what] of [[socketFd(sock), /socket:\[\d+\]/], [fifoFd, /\/.*\/fifo/], [fileFd, /\/.*\/file/], [nullFd, /\/dev\/null/]] as const) {
      const a = await put([fd]);
      assert.equal(a.status, -E.EINVAL, a.text);
      assert.match(a.text, new RegExp(`^PUT_MEMFD: the descriptor is ${what.source}, not a memfd$`));
    }
    sock.destroy();
    // memfds the daemon cannot use as they are
    const ro = memfd();
    const roFd = openSync(`/proc/self/fd/${ro}`, 'r');
    assert.deepEqual(await put([roFd]).then((a) => [a.status, a.text]), [-E.EACCES, 'PUT_MEMFD: the memfd is not open for reading and writing']);
    const unsealable = memfd_create('no-sealing', 1 /* MFD_CLOEXEC, no MFD_ALLOW_SEALING */) as number;
    ftruncateSync(unsealable, 4096);
    const u = await put([unsealable]);
    assert.equal(u.status, -E.EINVAL);
    assert.match(u.text, /^PUT_MEMFD: the memfd cannot be sealed against shrinking/);
    const sealed = memfd();
    addSeals(sealed, F_SEAL_WRITE);
    assert.deepEqual(await put([sealed]).then((a) => [a.status, a.text]), [-E.EINVAL, 'PUT_MEMFD: the memfd is sealed against writes; the daemon maps it writable']);
    // a context that is not there, a reserved field, requests that are not requests
    const fd = memfd();
    assert.deepEqual(await put([fd], 0).then((a) => [a.status, a.text]), [-E.EINVAL, 'PUT_MEMFD: key 0 names no open softverbs context']);
    assert.equal((await put([fd], key ^ 0x5a5a5a)).status, -E.EINVAL);
    assert.deepEqual(await put([fd], key, 1n).then((a) => [a.status, a.text]), [-E.EINVAL, 'PUT_MEMFD: arg is reserved (0)']);
    assert.equal((await raw(d.root, { op: 77, token: key }, [fd])).status, -E.EINVAL);
    assert.equal((await raw(d.root, Buffer.from('hi'), [fd])).status, -E.EINVAL);
    // the other ops refuse what they do not take
    assert.match((await raw(d.root, { op: U.FdOp.GET_QUEUE, token: 0, arg: 4096n }, [fd])).text, /^GET_QUEUE: 1 descriptors came with the request; it takes none$/);
    assert.match((await raw(d.root, { op: U.FdOp.SET_MEM, token: key }, [fd])).text, /^SET_MEM: 1 descriptors came with the request; it takes two/);
    for (const f of [...three, ...nine, fifoFd, fileFd, nullFd, ro, roFd, unsealable, sealed, fd]) closeSync(f);
    assert.ok((await fdsBackTo(before)) <= before, `the daemon holds ${daemonFds() - before} descriptors more than before`);
    assert.equal(ctx.queryGid(1, 0).length, 16);
    await assertServing(d, ctx, await ctx.allocPd());
  });

  test('a held memfd is mapped by the one command that names it, whatever its outcome; an id is the context\'s own', async () => {
    const pd = await ctx.allocPd();
    const buf = ctx.allocBuffer(4096);
    const { region } = regionOf(buf)!;
    const reg = (id: number, access: number = Access.LOCAL_WRITE) =>
      ctx.command('ibv_reg_mr', U.Spec.REG_MR, { start: region.addr, length: 4096n, hca_va: region.addr, pd_handle: pd.handle, access_flags: access }, { memfd_id: id, memfd_offset: 0n });
    const id = await ctx.putMemfd(region.fd, 'test');
    const r = await reg(id);
    assert.ok(r.lkey);
    await assert.rejects(reg(id), (e: Error & { code?: string }) => e.code === 'EBADF' && /memfd id \d+ names no memfd this context holds/.test(e.message));
    // refused for another reason (REMOTE_WRITE without LOCAL_WRITE): the memfd is gone all the same
    const id2 = await ctx.putMemfd(region.fd, 'test');
    await assert.rejects(reg(id2, Access.REMOTE_WRITE), { code: 'EINVAL' });
    await assert.rejects(reg(id2), { code: 'EBADF' });
    // an id of another context names nothing here
    const fresh = await openDevice(getDeviceList(d.root)[0]!, d.root);
    const other = await openDevice(getDeviceList(d.root)[0]!, d.root);
    const theirs = await other.putMemfd(region.fd, 'test');
    const freshPd = await fresh.allocPd();
    await assert.rejects(
      fresh.command('ibv_reg_mr', U.Spec.REG_MR, { start: region.addr, length: 4096n, hca_va: region.addr, pd_handle: freshPd.handle, access_flags: Access.LOCAL_WRITE }, { memfd_id: theirs, memfd_offset: 0n }),
      { code: 'EBADF' },
    );
    await fresh.closeDevice();
    // a context that ends gives back what it held unmapped
    const before = await fdsLeast();
    for (let i = 0; i < 10; i++) await other.putMemfd(region.fd, 'test');
    assert.ok(daemonFds() >= before + 10, `${daemonFds()} descriptors, ${before} before`);
    await other.closeDevice();
    assert.ok((await fdsBackTo(before)) <= before, 'the held memfds went with their context');
    const id4 = await ctx.putMemfd(region.fd, 'test');
    await assert.rejects(
      ctx.command('ibv_reg_mr', U.Spec.REG_MR, { start: region.addr, length: 8192n, hca_va: region.addr, pd_handle: pd.handle, access_flags: Access.LOCAL_WRITE }, { memfd_id: id4, memfd_offset: 0n }),
      (e: Error & { code?: string }) => e.code === 'EFAULT' && /span 0\+8192 is past the memfd's 4096 bytes/.test(e.message),
    );
  });

  test('another process, even of the same user, cannot hand memfds to a context; nor can another user', { skip: IS_ROOT ? false : 'needs root (another user)' }, async () => {
    const same = await runProcess(process.execPath, [PUT_FIXTURE, d.root, String(key)], { ...process.env, SOFTVERBS_ROOT: d.root });
    const a = JSON.parse(same.out);
    assert.equal(a.code, 'EACCES', same.out);
    assert.match(a.message, new RegExp(`PUT_MEMFD: the context is pid ${process.pid}'s, not pid \\d+'s \\(uid 0\\)`));
    const mallory = testUser('svtest-mallory');
    const m = await runProcess(mallory.as[0]!, [...mallory.as.slice(1), process.execPath, PUT_FIXTURE, d.root, String(key)], { ...process.env, SOFTVERBS_ROOT: d.root });
    assert.equal(JSON.parse(m.out).code, 'EACCES', m.out);
  });
});

describe('held memfds are bounded per user and go with their context', { skip: IS_ROOT ? false : 'needs root (another user)' }, () => {
  test('past "memfds" a user gets EMFILE; closing the context gives her quota back', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'sv-fdx-q-'));
    chmodSync(dir, 0o755);
    writeFileSync(join(dir, 'cfg.json'), JSON.stringify({ devices: [{ name: 'rxe0', addr: A1 }], limits: { memfds: 3 } }));
    const d = await startDaemon(['--config', join(dir, 'cfg.json')], { root: join(dir, 'root') });
    try {
      const alice = testUser('svtest-alice');
      const r = await runProcess(alice.as[0]!, [...alice.as.slice(1), process.execPath, PUT_FIXTURE, d.root, 'own', '4'], { ...process.env, SOFTVERBS_ROOT: d.root });
      const lines = r.out.trim().split('\n').map((l) => JSON.parse(l));
      assert.deepEqual(lines.map((l) => l.id ?? l.code), [1, 2, 3, 'EMFILE', 1], r.out);
      assert.match(lines[3].message, new RegExp(`uid ${alice.uid} holds 3 memfds handed to the daemon and not yet mapped \\(limit 3\\)`));
      assert.match(d.stderr(), new RegExp(`warning: uid ${alice.uid} hit memfds`));
    } finally {
      await d.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the exchange under load', () => {
  test('a user with 16 connections waiting for their request gets EAGAIN for the next; then hers are served again', async () => {
    const d = await startDaemon(['--device', `rxe0=${A1}`]);
    const idle: Socket[] = [];
    try {
      const ctx = await openDevice(getDeviceList(d.root)[0]!, d.root);
      for (let i = 0; i < 16; i++) {
        const s = connect(join(d.root, 'fds.sock'));
        s.on('error', () => {});
        await new Promise((r) => s.once('connect', r));
        idle.push(s);
      }
      await new Promise((r) => setTimeout(r, 100)); // accepted by now
      const fd = memfd();
      const a = await raw(d.root, { op: U.FdOp.PUT_MEMFD, token: keyOf(ctx) }, [fd]);
      assert.equal(a.status, -E.EAGAIN, a.text);
      assert.match(a.text, /^uid \d+ has 16 descriptor exchange connections waiting for their request$/);
      for (const s of idle.splice(0)) s.destroy();
      await new Promise((r) => setTimeout(r, 100));
      assert.ok((await putMemfd(exchangePath(d.root, 'test'), keyOf(ctx), fd, 'test')) > 0);
      closeSync(fd);
      await ctx.closeDevice();
    } finally {
      for (const s of idle) s.destroy();
      await d.stop();
    }
  });
});
