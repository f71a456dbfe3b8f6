/**
 * A hostile C program on the rxe provider ABI (test/fixtures/rxe-fuzz.c,
 * which says how it works): through `softverbs exec`, as an unprivileged
 * user, it writes random and mutated WQEs, producer and consumer indices,
 * header words and CQ slots into the queues librxe mmapped from the daemon,
 * and rings the doorbell. RXE_FUZZ_COUNT=n sets how many WQEs and indices
 * (`npm run fuzz`: 1,000,000), RXE_FUZZ_SEED=n the seed. While it runs and
 * after, rdma-core's own ibv_rc_pingpong completes through the same daemon;
 * the fuzzer's own queues still work at the end (a valid WQE succeeds, a
 * malformed one fails and leaves its QP in ERR); the daemon is alive,
 * logged no internal error, and once the fuzzer exits holds nothing of it:
 * no tracked object, no pinned page, not one descriptor more than before.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { getDeviceList, openDevice } from '../../src/verbs/index.js';
import { assertServing, DIST, freePort, IS_ROOT, mgmt, runProcess, testUser, type RunningDaemon } from '../helpers.js';
import { preloadDaemon } from '../tools/exec-harness.js';

const COUNT = Number(process.env.RXE_FUZZ_COUNT ?? 20_000);
const SEED = process.env.RXE_FUZZ_SEED ?? '0x5eed';
const PINGPONG = '/usr/bin/ibv_rc_pingpong';
const skip = spawnSync('cc', ['--version']).error ? 'no C compiler (cc) for the fuzzer'
  : !existsSync('/usr/include/infiniband/verbs.h') ? 'no <infiniband/verbs.h> (apt-get install libibverbs-dev)'
    : !existsSync('/etc/libibverbs.d/rxe.driver') ? 'no rxe provider (apt-get install ibverbs-providers)'
      : !existsSync(PINGPONG) ? `no ${PINGPONG} (apt-get install ibverbs-utils)` : false;

/** The daemon's open descriptors. */
const fdCount = (pid: number) => readdirSync(`/proc/${pid}/fd`).length;

describe('a C program writing garbage into its rxe queues', { skip }, () => {
  let d: RunningDaemon;
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-rxe-fuzz-'));
  const fuzzer = join(tmp, 'rxe-fuzz');
  // an unprivileged user, as an attacker would be; ourselves when not root
  const as = IS_ROOT ? testUser('svtest-fuzz').as : [];
  const exec = (...argv: string[]) => [...as, process.execPath, join(DIST, 'src', 'bin', 'softverbs.js'), 'exec', '--', ...argv];

  before(async () => {
    d = await preloadDaemon(tmp, { src: 'rxe-fuzz.c', out: fuzzer, flags: ['-O2', '-Wall', '-Wextra', '-Werror', '-rdynamic', '-libverbs', '-ldl'] });
  });
  after(async () => {
    await d?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  /** rdma-core's ibv_rc_pingpong, server on rxe0 and client on rxe1, event-driven (-e): both finish and say so. */
  async function pingpong(iters: number): Promise<void> {
    const port = String(await freePort());
    const env = { ...process.env, SOFTVERBS_ROOT: d.root };
    const args = ['-g', '0', '-e', '-n', String(iters), '-p', port];
    const srv = exec(PINGPONG, '-d', 'rxe0', ...args);
    const server = runProcess(srv[0]!, srv.slice(1), env, 60_000);
    await new Promise((r) => setTimeout(r, 500));
    const cli = exec(PINGPONG, '-d', 'rxe1', ...args, 'localhost');
    let client = await runProcess(cli[0]!, cli.slice(1), env, 60_000);
    // the server may not be listening yet on a loaded machine: the client says so and exits at once
    for (let i = 0; i < 10 && /Couldn't connect/.test(client.out); i++) {
      await new Promise((r) => setTimeout(r, 300));
      client = await runProcess(cli[0]!, cli.slice(1), env, 60_000);
    }
    const s = await server;
    for (const r of [client, s]) {
      assert.equal(r.code, 0, r.out);
      assert.match(r.out, new RegExp(`^${iters} iters in `, 'm'));
    }
  }

  test(`${COUNT.toLocaleString('en-US')} fuzzed rxe WQEs and indices from a C client (seed ${SEED}): ibv_rc_pingpong completes meanwhile and after, the daemon is unharmed and keeps nothing of the fuzzer`, async (t) => {
    const dev = getDeviceList(d.root).find((x) => x.name === 'rxe0')!;
    const fdsBefore = fdCount(d.proc.pid!);
    const started = Date.now();
    const argv = exec(fuzzer, 'rxe0');
    const p = spawn(argv[0]!, argv.slice(1), { env: { ...process.env, SOFTVERBS_ROOT: d.root, RXE_FUZZ_COUNT: String(COUNT), RXE_FUZZ_SEED: SEED }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    p.stdout!.on('data', (b) => (out += b));
    p.stderr!.on('data', (b) => (out += b));
    const killer = setTimeout(() => p.kill('SIGKILL'), 120_000 + COUNT / 5);
    const exited = new Promise<number | null>((r) => p.once('close', (c) => r(c)));
    for (const end = Date.now() + 30_000; !/^fuzzing \d+$/m.test(out) && p.exitCode === null && Date.now() < end;) await new Promise((r) => setTimeout(r, 20));
    const pid = Number(/^fuzzing (\d+)$/m.exec(out)?.[1]);
    assert.ok(pid > 0, `the fuzzer did not start:\n${out}`);

    // a well-behaved pair of C programs while the fuzzer runs (with the default count it may be done first)
    await pingpong(200);
    const code = await exited;
    const lived = (Date.now() - started) / 1000;
    clearTimeout(killer);
    assert.equal(code, 0, out);

    const m = /^fuzzed wqes (\d+) indices (\d+) doorbells (\d+) resets (\d+) remade (\d+) resized (\d+) seconds ([\d.]+)$/m.exec(out);
    assert.ok(m, out);
    const [wqes, indices, doorbells, resets, remade, resized, secs] = m.slice(1).map(Number) as [number, number, number, number, number, number, number];
    assert.ok(wqes + indices >= COUNT, out);
    t.diagnostic(`${wqes} WQEs and ${indices} indices in ${secs} s (${Math.round((wqes + indices) / secs)}/s), ${doorbells} doorbells, ${resets} QP resets, ${remade} QPs remade after a CQ overrun, ${resized} CQ resizes`);
    t.diagnostic(out.split('\n').filter((l) => /^(status|event) /.test(l)).join('; '));
    // its queues still work after all that: a valid WQE succeeds, a malformed one fails, and the QP is in ERR
    for (const qp of ['A', 'B', 'U']) assert.match(out, new RegExp(`^final ${qp} valid success malformed local QP operation error state ERR$`, 'm'), out);
    // errors were reported as completions, as an HCA reports them
    assert.match(out, /^status local QP operation error \d+$/m);
    assert.match(out, /^status local protection error \d+$/m);
    // the fuzzed BIND_MW WQEs reached the window checks (IBV_WC_MW_BIND_ERR's text)
    assert.match(out, /^status memory management operation error \d+$/m);
    assert.match(out, /^ok$/m);

    // its thousands of QP errors did not flood the daemon's log: 20 lines at once, then one a second
    const logged = d.stderr().match(new RegExp(`QP \\d+ of pid ${pid} \\(rxe-fuzz, uid \\d+\\) entered ERR`, 'g'))?.length ?? 0;
    assert.ok(logged <= 20 + Math.ceil(lived) + 1, `${logged} QP error lines in ${lived} s`);
    // nothing of it is left: the device file closed, every object gone, no page pinned, no descriptor kept
    const closed = new RegExp(`rxe0: pid ${pid} \\(rxe-fuzz, uid \\d+\\) closed the device`);
    for (const end = Date.now() + 10_000; !closed.test(d.stderr()) && Date.now() < end;) await new Promise((r) => setTimeout(r, 50));
    assert.match(d.stderr(), closed);
    // what it left out is said: on the next line it logs, or when the device file closes (waited for above: with
    // exactly 20 logged and nothing logged after, the close is the first place it can be said)
    if (logged >= 20) assert.match(d.stderr(), new RegExp(`\\d+ more QP errors of pid ${pid} went unlogged`));
    assert.deepEqual((await mgmt(dev.devPath, 'restrack')).filter((r: { pid: number }) => r.pid === pid), []);
    assert.equal((await mgmt(dev.devPath, 'pinned'))[pid], undefined);
    let fds = fdCount(d.proc.pid!);
    for (const end = Date.now() + 5000; fds > fdsBefore && Date.now() < end; fds = fdCount(d.proc.pid!)) await new Promise((r) => setTimeout(r, 50));
    assert.ok(fds <= fdsBefore, `the daemon holds ${fds - fdsBefore} descriptors more than before the fuzzer`);

    // and it serves: the C pair again, and our own library
    await pingpong(100);
    const ctx = await openDevice(dev, d.root);
    try {
      await assertServing(d, ctx, await ctx.allocPd());
    } finally {
      ctx.closeDevice();
    }
  });
});
