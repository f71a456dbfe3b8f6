/**
 * rdma-core's librdmacm (Debian's rdma-core 44) through the preload library, as an unprivileged user
 * against a root daemon with two devices: a probe program (fixtures/cm-probe.c) that uses the
 * connection manager alone (event channels, ids, address and route resolution, SIDR connects refused,
 * accepted and unanswered, rdma_migrate_id, a synchronous listener; an RC listener our library's
 * connect reaches and that refuses it), then rdmacm-utils' own rping,
 * udaddy, ucmatose and rdma_server/rdma_client between two devices of the daemon, C with C and C with
 * our tools both ways.
 *
 * Those tools move data, so they need rdma-core's verbs through the preload too (QPs, CQs and MRs on
 * the rxe provider ABI, whose descriptors travel through the daemon's `<root>/fds.sock`): a daemon
 * without that exchange skips them, saying so.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import { CmEventType, EventChannel } from '../../src/verbs/index.js';
import { dial, expectEvent } from '../cm/helpers.js';
import { A1, A2, A3, DIST, IS_ROOT, runProcess, startDaemon, testUser, type Run, type RunningDaemon } from '../helpers.js';
import { preloadDaemon } from './exec-harness.js';

const C_TOOLS = '/usr/bin';
const hasCc = !spawnSync('cc', ['--version']).error;
const skip = !IS_ROOT ? 'needs root (a root daemon, an unprivileged user)'
  : !existsSync(join(C_TOOLS, 'rping')) ? `${C_TOOLS}/rping is not installed (apt-get install rdmacm-utils)`
    : spawnSync('sh', ['-c', 'ldconfig -p | grep -q "librdmacm\\.so\\.1 "']).status !== 0 ? 'librdmacm.so.1 is not installed (apt-get install librdmacm1)'
      : !hasCc ? 'no C compiler (cc) to build the preload library' : false;

// stdout and stderr arrive as one stream: the CM thread's lines can land inside a ping line
const pings = (out: string, server: boolean) => [...out.replace(/(client|server) DISCONNECT EVENT\.\.\.\n?|wait for RDMA_READ_ADV state \d+\n?/g, '').matchAll(new RegExp(`^${server ? 'server ' : ''}ping data: (rdma-ping-\\d+: .*)$`, 'gm'))].map((m) => m[1]);

describe('rdma-core\'s librdmacm through softverbs exec', { skip }, () => {
  let d: RunningDaemon;
  const tmp = mkdtempSync(join(tmpdir(), 'softverbs-exec-cm-'));
  const probe = join(tmp, 'cm-probe');
  const alice = IS_ROOT ? testUser('svtest-alice') : null;
  let nextPort = 7600 + Math.floor(Math.random() * 300);
  const port = () => String(nextPort++);
  /** a command as alice, with the daemon's root in SOFTVERBS_ROOT as a user sets it */
  const as = (cmd: string[], ms = 60_000) => {
    const argv = [...alice!.as, ...cmd];
    return runProcess(argv[0]!, argv.slice(1), { ...process.env, SOFTVERBS_ROOT: d.root }, ms);
  };
  const softverbs = (...args: string[]) => [process.execPath, join(DIST, 'src', 'bin', 'softverbs.js'), ...args];
  /**
   * an rdmacm-utils program through `softverbs exec`, killed after 45 s by timeout(1) run by exec (a program
   * left behind when exec itself is killed would hold the output pipe open, and the test for ever)
   */
  const c = (tool: string, ...args: string[]) => as(softverbs('exec', '--', 'timeout', '-s', 'KILL', '45', join(C_TOOLS, tool), ...args));
  /** our tool of that name */
  const ours = (tool: string, ...args: string[]) => as([process.execPath, join(DIST, 'src', 'bin', `${tool}.js`), ...args]);
  type Tool = (tool: string, ...args: string[]) => Promise<Run>;
  const name = (t: Tool) => (t === c ? 'rdma-core' : 'ours');

  /** Why the data-moving tools cannot run here (null: they can): C programs' verbs need the descriptor exchange. */
  const noVerbs = () => (existsSync(join(d.root, 'fds.sock')) ? null
    : 'rdma-core\'s verbs through the preload (QPs, CQs, MRs: the descriptor exchange <root>/fds.sock) are not in this daemon yet');

  /** Waits until something listens on `port` (`rdma resource show cm_id` says LISTEN), at most `ms`. */
  const listening = async (p: string, root = d.root, ms = 10_000) => {
    const rdma = [process.execPath, join(DIST, 'src', 'bin', 'rdma.js'), 'resource', 'show', 'cm_id'];
    const re = new RegExp(`state LISTEN .*src-addr \\S+:${p} `);
    for (const end = Date.now() + ms; Date.now() < end; await new Promise((r) => setTimeout(r, 100))) {
      if (re.test((await runProcess(rdma[0]!, rdma.slice(1), { ...process.env, SOFTVERBS_ROOT: root })).out)) return;
    }
    assert.fail(`nothing listened on port ${p} within ${ms} ms`);
  };

  /** A server and its client: the client starts once the server listens on `p`. */
  const pair = async (p: string, server: () => Promise<Run>, client: () => Promise<Run>): Promise<[Run, Run]> => {
    const s = server();
    const early = await Promise.race([s, listening(p).then(() => null)]);
    if (early) assert.fail(`the server ended before it listened:\n${early.out}`);
    const cl = await client();
    return [await s, cl];
  };

  const needVerbs = (t: TestContext) => {
    const why = noVerbs();
    if (why) t.skip(why);
    return why !== null;
  };

  before(async () => {
    // librdmacm by its soname: its headers (librdmacm-dev) need not be installed
    d = await preloadDaemon(tmp, { src: 'cm-probe.c', out: probe, flags: ['-O1', '-Wall', '-l:librdmacm.so.1'] });
  });
  after(async () => {
    await d?.stop();
    rmSync(tmp, { recursive: true, force: true });
  });

  test('librdmacm alone: event channels as the kernel\'s rdma_cm file, ids, resolution, SIDR refused, accepted and unanswered, migration, a synchronous listener', async () => {
    const p = Number(port());
    nextPort += 2;
    const r = await as(softverbs('exec', '--', 'timeout', '-s', 'KILL', '25', probe, A1, A2, String(p)), 30_000);
    assert.equal(r.code, 0, r.out);
    assert.equal(r.out, `fstat: chr 10:58
cloexec: 1
poll, no id: nothing
read: EINVAL
ioctl: ENOTTY
mmap: ENODEV
write 4 bytes: EINVAL
write short of in: EINVAL
command 99: EINVAL
GET_OPTION: ENOSYS
GET_EVENT out 100: ENOSPC
bind: ok
listen: ok, port PORT
poll, resolving: POLLIN
event: RDMA_CM_EVENT_ADDR_RESOLVED status 0
poll, nothing waiting: nothing
get_cm_event, non-blocking: EAGAIN
event: RDMA_CM_EVENT_ROUTE_RESOLVED status 0
connect: ok
server: RDMA_CM_EVENT_CONNECT_REQUEST status 0
request: private data ping, 180 bytes
reject: ok
client: RDMA_CM_EVENT_UNREACHABLE status 2
resolve: RDMA_CM_EVENT_ADDR_RESOLVED status 0
route: RDMA_CM_EVENT_ROUTE_RESOLVED status 0
connect: ok
server: RDMA_CM_EVENT_CONNECT_REQUEST status 0
accept: ok
client: RDMA_CM_EVENT_ESTABLISHED status 0
established: private data pong, qpn 0, qkey 0x1234567, is_global 1, dgid ::ffff:${A2}
resolve: RDMA_CM_EVENT_ADDR_RESOLVED status 0
route: RDMA_CM_EVENT_ROUTE_RESOLVED status 0
connect, nobody listening: ok
client: RDMA_CM_EVENT_UNREACHABLE status 1
resolve: RDMA_CM_EVENT_ADDR_RESOLVED status 0
route: RDMA_CM_EVENT_ROUTE_RESOLVED status 0
connect: ok
poll, a request waiting: POLLIN
destroy the listener: ok
poll, after: nothing
poll, resolving: POLLIN
migrate: ok
poll, old channel: nothing, new channel: POLLIN
new channel: RDMA_CM_EVENT_ADDR_RESOLVED status 0
resolve: RDMA_CM_EVENT_ADDR_RESOLVED status 0
route: RDMA_CM_EVENT_ROUTE_RESOLVED status 0
connect: ok
get_request: ok
reject: ok
client: RDMA_CM_EVENT_UNREACHABLE status 2
destroy the request's id: ok
destroy the listener: ok
done
`);
    // the program's ids went with it
    const left = await runProcess(process.execPath, [join(DIST, 'src', 'bin', 'rdma.js'), 'resource', 'show', 'cm_id'], { ...process.env, SOFTVERBS_ROOT: d.root });
    assert.doesNotMatch(left.out, /comm cm-probe/);
  });

  test('a C listener and our library\'s RC connect: the request\'s parameters as librdmacm gives them; refused with private data', async () => {
    const p = port();
    const srv = as(softverbs('exec', '--', 'timeout', '-s', 'KILL', '25', probe, 'rc-listen', A2, p), 30_000);
    const early = await Promise.race([srv, listening(p).then(() => null)]);
    if (early) assert.fail(`the listener ended before it listened:\n${early.out}`);
    const ch = await EventChannel.create(d.root);
    try {
      const id = await dial(ch, A2, Number(p), A1);
      await id.connect({ privateData: Buffer.from('hello'), responderResources: 2, initiatorDepth: 3, retryCount: 5, rnrRetryCount: 6 });
      const e = await expectEvent(ch, CmEventType.REJECTED);
      // librdmacm's rdma_reject: reason 0, which the kernel sends as 28 (consumer defined)
      assert.equal(e.status, 28);
      assert.equal(Buffer.from(e.param.privateData.subarray(0, 4)).toString(), 'busy');
      await id.destroyQp();
      await id.destroy();
    } finally {
      await ch.destroy();
    }
    const r = await srv;
    assert.equal(r.code, 0, r.out);
    // the REQ's private data after the IP CM header is 56 bytes; its depths are the peer's, swapped as the kernel swaps them
    assert.equal(r.out, `listening
server: RDMA_CM_EVENT_CONNECT_REQUEST status 0
request: private data hello, 56 bytes, responder_resources 3, initiator_depth 2, retry_count 5, rnr_retry_count 6, srq 0, qpn nonzero
ports: local PORT, remote nonzero
reject: ok
destroy: ok ok
done
`);
  });

  test('the daemon stopping: a C program waiting in GET_EVENT takes its DEVICE_REMOVAL, then is told EIO', async () => {
    const other = await startDaemon(['--device', `rxe0=${A3}`]);
    try {
      chmodSync(other.root, 0o755);
      const argv = [...alice!.as, ...softverbs('exec', '--root', other.root, '--', 'timeout', '-s', 'KILL', '15', probe, 'wait-removal', A3, '7000')];
      const run = runProcess(argv[0]!, argv.slice(1), process.env, 20_000);
      const early = await Promise.race([run, listening('7000', other.root).then(() => null)]);
      if (early) assert.fail(`the listener ended before it listened:\n${early.out}`);
      await other.stop();
      const r = await run;
      assert.equal(r.code, 0, r.out);
      assert.equal(r.out, 'listening\nevent: RDMA_CM_EVENT_DEVICE_REMOVAL\nget_cm_event, the daemon gone: EIO\ndestroy: EIO\n');
    } finally {
      await other.stop();
    }
  });

  test('rping -c to a port nothing listens on: RDMA_CM_EVENT_REJECTED, error 8', async (t) => {
    if (needVerbs(t)) return;
    const r = await c('rping', '-c', '-a', A2, '-I', A1, '-p', port(), '-C', '1');
    assert.equal(r.code, 255, r.out);
    assert.match(r.out, /cma event RDMA_CM_EVENT_REJECTED, error 8/);
  });

  for (const [server, client] of [[c, c], [c, ours], [ours, c]] as Array<[Tool, Tool]>) {
    const who = `${name(server)} server, ${name(client)} client`;

    test(`rping -C 10 -V between rxe1 and rxe0: ${who}`, async (t) => {
      if (needVerbs(t)) return;
      const p = port();
      const [s, cl] = await pair(p, () => server('rping', '-s', '-a', A2, '-p', p, '-v', '-C', '10'), () => client('rping', '-c', '-a', A2, '-I', A1, '-p', p, '-v', '-V', '-C', '10'));
      assert.equal(cl.code, 0, `client:\n${cl.out}`);
      assert.equal(s.code, 0, `server:\n${s.out}`);
      const sent = pings(cl.out, false);
      assert.equal(sent.length, 10, cl.out);
      assert.deepEqual(pings(s.out, true), sent, 'the server read what the client wrote, ping by ping');
      assert.match(s.out, /server DISCONNECT EVENT/);
    });

    test(`udaddy -c 2 -C 10 (UD through SIDR): ${who}`, async (t) => {
      if (needVerbs(t)) return;
      // udaddy's port is 7174, always (its -p is the port space)
      const [s, cl] = await pair('7174', () => server('udaddy', '-b', A2, '-c', '2', '-C', '10'), () => client('udaddy', '-s', A2, '-b', A1, '-c', '2', '-C', '10'));
      for (const [r, side] of [[s, 'server'], [cl, 'client']] as const) {
        assert.equal(r.code, 0, `${side}:\n${r.out}`);
        assert.match(r.out, /data transfers complete\ntest complete\nreturn status 0\n/, side);
      }
    });

    test(`ucmatose -c 2 -C 4: ${who}`, async (t) => {
      if (needVerbs(t)) return;
      const p = port();
      const [s, cl] = await pair(p, () => server('ucmatose', '-b', A2, '-p', p, '-c', '2', '-C', '4'), () => client('ucmatose', '-s', A2, '-b', A1, '-p', p, '-c', '2', '-C', '4'));
      for (const [r, side] of [[s, 'server'], [cl, 'client']] as const) {
        assert.equal(r.code, 0, `${side}:\n${r.out}`);
        assert.match(r.out, /data transfers complete\n/, side);
        assert.match(r.out, /test complete\nreturn status 0\n/, side);
      }
    });

    test(`rdma_server / rdma_client (librdmacm's synchronous convenience layer): ${who}`, async (t) => {
      if (needVerbs(t)) return;
      const p = port();
      const [s, cl] = await pair(p, () => server('rdma_server', '-p', p), () => client('rdma_client', '-s', A2, '-p', p));
      assert.equal(s.code, 0, s.out);
      assert.equal(cl.code, 0, cl.out);
      assert.equal(s.out, 'rdma_server: start\nrdma_server: end 0\n');
      assert.equal(cl.out, 'rdma_client: start\nrdma_client: end 0\n');
    });
  }

  for (const server of [c, ours]) {
    test(`perftest's ib_send_bw -R (its connection through rdma_cm): ${name(server)} server, rdma-core client`, async (t) => {
      if (needVerbs(t)) return;
      // perftest's rdma_cm listens on its -p port; its results table is the sign the run went through
      const p = port();
      const [s, cl] = await pair(p, () => server('ib_send_bw', '-R', '-d', 'rxe1', '-x', '0', '-n', '100', '-p', p), () => c('ib_send_bw', '-R', '-d', 'rxe0', '-x', '0', '-n', '100', '-p', p, A2));
      assert.equal(s.code, 0, `server:\n${s.out}`);
      assert.equal(cl.code, 0, `client:\n${cl.out}`);
      assert.match(cl.out, /^ 65536 {6}100 /m, cl.out);
    });
  }

  // cmatose.c's -m: after the data, each side moves its ids (the server its listener first) to a new event channel and
  // destroys the old one; the disconnects' events then arrive on the new channel. Its lines, whoever runs either side
  const MIGRATED = {
    server: 'cmatose: starting server\ninitiating data transfers\ncompleting sends\nreceiving data transfers\ndata transfers complete\n' +
      'migrating to new event channel\ncmatose: disconnecting\ndisconnected\ntest complete\nreturn status 0\n',
    client: 'cmatose: starting client\ncmatose: connecting\nreceiving data transfers\nsending replies\ndata transfers complete\n' +
      'migrating to new event channel\ntest complete\nreturn status 0\n',
  };
  for (const [server, client] of [[c, c], [c, ours], [ours, c], [ours, ours]] as Array<[Tool, Tool]>) {
    test(`ucmatose -c 2 -C 4 -m, both sides moving their ids to a new event channel (rdma_migrate_id): ${name(server)} server, ${name(client)} client`, async (t) => {
      if (needVerbs(t)) return;
      const p = port();
      const [s, cl] = await pair(p, () => server('ucmatose', '-b', A2, '-p', p, '-c', '2', '-C', '4', '-m'), () => client('ucmatose', '-s', A2, '-b', A1, '-p', p, '-c', '2', '-C', '4', '-m'));
      assert.equal(s.code, 0, s.out);
      assert.equal(cl.code, 0, cl.out);
      assert.equal(s.out, MIGRATED.server);
      assert.equal(cl.out, MIGRATED.client);
    });
  }
});
