/**
 * softverbsd --poll-us: after a QP was busy its send queue is polled for a
 * while, so a post meanwhile needs no doorbell; once the window passes the
 * queue is idle again (the next post rings) and the daemon stops polling.
 * With --poll-us 0 every post after the HCA went idle rings.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { cpuMs } from '../../bench/measure.js';
import { Access, getDeviceList, openDevice, QpType, SendFlags, WcOpcode, WrOpcode, type Context } from '../../src/verbs/index.js';
import { A1, connectQp, mgmt, pollN, startDaemon, type RunningDaemon } from '../helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function pair(ctx: Context) {
  const pd = await ctx.allocPd();
  const cq = await ctx.createCq(256);
  const a = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 64, maxRecvWr: 64 } });
  const b = await pd.createQp({ sendCq: cq, recvCq: cq, qpType: QpType.RC, cap: { maxSendWr: 64, maxRecvWr: 64 } });
  const mr = await pd.allocMr(1 << 16, Access.LOCAL_WRITE | Access.REMOTE_WRITE);
  await connectQp(a, ctx, { qpn: b.qpNum, gid: ctx.queryGid(1, 0) });
  await connectQp(b, ctx, { qpn: a.qpNum, gid: ctx.queryGid(1, 0) });
  for (let i = 0; i < 16; i++) {
    a.postRecv({ wrId: 100 + i, sgList: [mr.sge(8192, 64)] });
    b.postRecv({ wrId: 200 + i, sgList: [mr.sge(12288, 64)] });
  }
  const send = (qp: typeof a, id: number) => qp.postSend({ wrId: id, opcode: WrOpcode.SEND, sendFlags: SendFlags.SIGNALED, sgList: [mr.sge(0, 8)] });
  return { cq, a, b, send };
}

/** A daemon with `--poll-us us` and a context on it, for the tests of one describe block. */
function daemonPolling(us: string, spin = 'always'): { d: RunningDaemon; ctx: Context } {
  const s = {} as { d: RunningDaemon; ctx: Context };
  before(async () => {
    // --spin always: whether it polls must not depend on what else this machine runs (the auto gate's own tests do)
    s.d = await startDaemon(['--device', `rxe0=${A1}`, '--poll-us', us, '--spin', spin]);
    s.ctx = await openDevice(getDeviceList(s.d.root)[0]!, s.d.root);
  });
  after(async () => {
    await s.ctx?.closeDevice();
    await s.d?.stop();
  });
  return s;
}

async function counts(d: RunningDaemon): Promise<{ doorbells: number; polled: number; spin: { mode: string; granted: number; refused: number } }> {
  const dev = (await mgmt(getDeviceList(d.root)[0]!.devPath, 'devices'))[0];
  return { doorbells: dev.doorbells, polled: dev.polled, spin: dev.spin };
}

describe('polling busy send queues (--poll-us)', () => {
  // a long window, so "posted meanwhile" holds on a slow machine too
  const s = daemonPolling('300000');

  test('a reply posted after a receive rings no doorbell: the daemon finds it by polling; after the window the next post rings', async () => {
    const { cq, a, b, send } = await pair(s.ctx);
    await sleep(400); // whatever setting up made busy has gone idle
    const c0 = await counts(s.d);
    send(a, 1); // rings: A's queue was idle
    const got = await pollN(cq, 2); // A's send completion and B's receive
    assert.ok(got.some((w) => w.opcode === WcOpcode.RECV && w.qpNum === b.qpNum && w.status === 0));
    send(b, 2); // B just received: its queue is being polled
    const back = await pollN(cq, 2);
    assert.ok(back.every((w) => w.status === 0), 'the reply went through');
    const c1 = await counts(s.d);
    assert.equal(c1.doorbells - c0.doorbells, 1, 'one doorbell: the first post; the reply was found by polling');
    assert.ok(c1.polled > c0.polled, 'polling found the reply');
    // after the window both queues are idle: a post rings again
    await sleep(500);
    send(a, 3);
    await pollN(cq, 2);
    assert.equal((await counts(s.d)).doorbells - c1.doorbells, 1, 'a post after the window rings');
  });

  test('the daemon wakes at nice -20 but polls at nice 0, its clients\' own (as root, where it may raise it again)', { skip: process.getuid?.() === 0 ? false : 'needs root (CAP_SYS_NICE)' }, async () => {
    // the main thread's nice: /proc/PID/stat's 19th field (after the comm's closing parenthesis, the 17th)
    const nice = () => Number(readFileSync(`/proc/${getDeviceList(s.d.root)[0]!.daemonPid}/stat`, 'utf8').split(') ')[1]!.split(' ')[16]);
    const { cq, a, send } = await pair(s.ctx);
    await sleep(400);
    assert.equal(nice(), -20, 'idle, it sleeps at -20');
    send(a, 1);
    await pollN(cq, 2);
    // A's queue is held for the 300 ms window: the daemon is polling
    assert.equal(nice(), 0, 'polling, it runs at 0');
    await sleep(500);
    assert.equal(nice(), -20, 'the window passed: back to -20');
  });

  test('an idle daemon does not poll: no CPU once the window has passed', async () => {
    const { cq, a, send } = await pair(s.ctx);
    send(a, 1);
    await pollN(cq, 2);
    await sleep(400);
    const pid = getDeviceList(s.d.root)[0]!.daemonPid;
    const t0 = cpuMs(pid);
    await sleep(1000);
    const used = cpuMs(pid) - t0;
    assert.ok(used < 100, `${used} ms of CPU in an idle second`);
  });
});

/** `n` processes that spin until killed: more runnable tasks than this machine has cores. */
function hogs(n: number): { stop(): void } {
  const kids = Array.from({ length: n }, () => spawn(process.execPath, ['-e', 'for (;;);'], { stdio: 'ignore' }));
  return { stop: () => kids.forEach((k) => k.kill('SIGKILL')) };
}

describe('--spin auto: the daemon polls only while the spinners fit the cores', () => {
  const s = daemonPolling('300000', 'auto');

  test('on a machine with more busy processes than cores it stops polling: every reply rings, and all go through', async () => {
    const { cq, a, b, send } = await pair(s.ctx);
    const h = hogs(availableParallelism() + 2);
    try {
      await sleep(300); // the hogs are running
      const c0 = await counts(s.d);
      assert.equal(c0.spin.mode, 'auto');
      const N = 10;
      for (let i = 0; i < N; i++) {
        send(a, 2 * i);
        await pollN(cq, 2);
        // B just received: polling it would find this reply without a doorbell; here the gate stops the daemon
        send(b, 2 * i + 1);
        await pollN(cq, 2);
        await sleep(5);
      }
      const c1 = await counts(s.d);
      assert.ok(c1.spin.refused > c0.spin.refused, `the gate stopped the daemon (${JSON.stringify(c1.spin)})`);
      // with the daemon polling (the --spin always block) a reply rings no doorbell; here nearly every one does
      assert.ok(c1.doorbells - c0.doorbells >= N + N / 2, `${c1.doorbells - c0.doorbells} doorbells for ${2 * N} posts`);
    } finally {
      h.stop();
    }
    // room again: the daemon polls again (the next reading finds the cores free)
    await sleep(300);
    const c2 = await counts(s.d);
    send(a, 100);
    await pollN(cq, 2);
    send(b, 101);
    const back = await pollN(cq, 2);
    assert.ok(back.every((w) => w.status === 0));
    const c3 = await counts(s.d);
    assert.ok(c3.spin.granted > c2.spin.granted, `the gate let it poll again (${JSON.stringify(c3.spin)})`);
  });

  test('a bad --spin is refused', async () => {
    const { runProcess, DAEMON } = await import('../helpers.js');
    const r = await runProcess(process.execPath, [DAEMON, '--spin', 'sometimes', '--device', `rxe9=${A1}`]);
    assert.notEqual(r.code, 0);
    assert.match(r.out, /--spin "sometimes": expected auto or always/);
  });
});

describe('--poll-us 0', () => {
  const s = daemonPolling('0');

  test('every post after the HCA went idle rings, and nothing is polled', async () => {
    const { cq, a, send } = await pair(s.ctx);
    const before = await counts(s.d);
    for (let i = 0; i < 4; i++) {
      send(a, i);
      await pollN(cq, 2);
    }
    const now = await counts(s.d);
    assert.equal(now.doorbells - before.doorbells, 4);
    assert.equal(now.polled, 0);
  });

  test('a bad --poll-us is refused', async () => {
    const { runProcess, DAEMON } = await import('../helpers.js');
    const r = await runProcess(process.execPath, [DAEMON, '--poll-us', 'soon', '--device', `rxe9=${A1}`]);
    assert.notEqual(r.code, 0);
    assert.match(r.out, /--poll-us "soon": expected microseconds/);
  });
});
