/**
 * RDMA CM against Linux (rdma_cm, ib_cm and rdma-core 44's rping in the lab
 * VM), run by `npm run test:interop`: rping, ucmatose (and its -m, rdma_migrate_id), udaddy and rdma_server/rdma_client both ways, and
 * a connection to a port nothing listens on refused both ways (REJ "invalid
 * service ID" reaching the client as REJECTED, status 8).
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DIST, meet, runProcess, startDaemon, type Run, type RunningDaemon } from '../helpers.js';

const PEER = process.env.LAB_PEER ?? '';
const HOST = process.env.LAB_HOST ?? '10.77.0.1';
const LAB = process.env.LAB_DIR ?? '';
const skip = PEER && LAB ? false : 'LAB_PEER/LAB_DIR are not set: run through `npm run test:interop`';

const run = (cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<Run> => runProcess(cmd, args, env, 150_000);

// stdout and stderr arrive as one stream: the CM thread's lines can land inside a ping line
const pings = (out: string, server: boolean) => [...out.replace(/(client|server) DISCONNECT EVENT\.\.\.\n?|wait for RDMA_READ_ADV state \d+\n?/g, '').matchAll(new RegExp(`^${server ? 'server ' : ''}ping data: (rdma-ping-\\d+: .*)$`, 'gm'))].map((m) => m[1]);

describe('rping: softverbs <-> rdma-core 44 over Linux rdma_cm', { skip }, () => {
  let d: RunningDaemon;
  before(async () => {
    d = await startDaemon(['--device', `rxe0=${HOST}`]);
  });
  after(async () => d?.stop());
  const rping = (args: string[]) => run(process.execPath, [join(DIST, 'src', 'bin', 'rping.js'), ...args], { ...process.env, SOFTVERBS_ROOT: d.root });

  for (const oursServes of [true, false]) {
    test(`rping -C 100 -V, softverbs ${oursServes ? 'server' : 'client'}, Linux ${oursServes ? 'client' : 'server'}`, async () => {
      const port = String(7000 + Math.floor(Math.random() * 1000));
      const ours = (server: boolean) => rping(server ? ['-s', '-a', HOST, '-p', port, '-v', '-C', '100'] : ['-c', '-a', PEER, '-p', port, '-v', '-V', '-C', '100']);
      const theirs = (server: boolean) => run(join(LAB, 'vm-exec.sh'), ['1', `timeout 120 rping ${server ? `-s -a ${PEER}` : `-c -a ${HOST} -V`} -p ${port} -v -C 100`]);
      const [a, b] = await meet(oursServes, ours, theirs);
      assert.equal(a.code, 0, `softverbs:\n${a.out}`);
      assert.equal(b.code, 0, `Linux:\n${b.out}`);
      const [srv, cli] = oursServes ? [a, b] : [b, a];
      const sent = pings(cli.out, false);
      assert.equal(sent.length, 100, cli.out);
      assert.deepEqual(pings(srv.out, true), sent, 'the server read what the client wrote, ping by ping');
      assert.match(srv.out, /server DISCONNECT EVENT/);
    });
  }

  for (const oursServes of [true, false]) {
    test(`ucmatose -c 4 -C 10, softverbs ${oursServes ? 'server' : 'client'}, Linux ${oursServes ? 'client' : 'server'}`, async () => {
      const port = String(7000 + Math.floor(Math.random() * 1000));
      const ours = (server: boolean) => run(process.execPath, [join(DIST, 'src', 'bin', 'ucmatose.js'), ...(server ? ['-b', HOST] : ['-s', PEER]), '-p', port, '-c', '4', '-C', '10'], { ...process.env, SOFTVERBS_ROOT: d.root });
      const theirs = (server: boolean) => run(join(LAB, 'vm-exec.sh'), ['1', `timeout 120 ucmatose ${server ? `-b ${PEER}` : `-s ${HOST}`} -p ${port} -c 4 -C 10`]);
      const [a, b] = await meet(oursServes, ours, theirs);
      for (const [r, who] of [[a, 'softverbs'], [b, 'Linux']] as const) {
        assert.equal(r.code, 0, `${who}:\n${r.out}`);
        assert.match(r.out, /data transfers complete\n/, who);
        assert.match(r.out, /test complete\nreturn status 0\n/, who);
      }
      assert.match((oursServes ? a : b).out, /cmatose: disconnecting\ndisconnected\n/);
    });
  }

  // cmatose.c's -m on both sides: after the data each moves its ids to a new event channel (rdma_migrate_id), and
  // the disconnect's events arrive there; on Linux the kernel's ucma_migrate_id moves them
  for (const oursServes of [true, false]) {
    test(`ucmatose -c 2 -C 4 -m (ids migrated to a new event channel), softverbs ${oursServes ? 'server' : 'client'}, Linux ${oursServes ? 'client' : 'server'}`, async () => {
      const port = String(7000 + Math.floor(Math.random() * 1000));
      const ours = (server: boolean) => run(process.execPath, [join(DIST, 'src', 'bin', 'ucmatose.js'), ...(server ? ['-b', HOST] : ['-s', PEER]), '-p', port, '-c', '2', '-C', '4', '-m'], { ...process.env, SOFTVERBS_ROOT: d.root });
      const theirs = (server: boolean) => run(join(LAB, 'vm-exec.sh'), ['1', `timeout 120 ucmatose ${server ? `-b ${PEER}` : `-s ${HOST}`} -p ${port} -c 2 -C 4 -m`]);
      const [a, b] = await meet(oursServes, ours, theirs);
      const [srv, cli] = oursServes ? [a, b] : [b, a];
      for (const [r, who] of [[a, 'softverbs'], [b, 'Linux']] as const) assert.equal(r.code, 0, `${who}:\n${r.out}`);
      assert.equal(srv.out, 'cmatose: starting server\ninitiating data transfers\ncompleting sends\nreceiving data transfers\ndata transfers complete\n' +
        'migrating to new event channel\ncmatose: disconnecting\ndisconnected\ntest complete\nreturn status 0\n');
      assert.equal(cli.out, 'cmatose: starting client\ncmatose: connecting\nreceiving data transfers\nsending replies\ndata transfers complete\n' +
        'migrating to new event channel\ntest complete\nreturn status 0\n');
    });
  }

  for (const oursServes of [true, false]) {
    test(`udaddy -c 2 -C 10 (UD through SIDR), softverbs ${oursServes ? 'server' : 'client'}, Linux ${oursServes ? 'client' : 'server'}`, async () => {
      const ours = (server: boolean) => run(process.execPath, [join(DIST, 'src', 'bin', 'udaddy.js'), ...(server ? ['-b', HOST] : ['-s', PEER]), '-c', '2', '-C', '10'], { ...process.env, SOFTVERBS_ROOT: d.root });
      const theirs = (server: boolean) => run(join(LAB, 'vm-exec.sh'), ['1', `timeout 120 udaddy ${server ? `-b ${PEER}` : `-s ${HOST}`} -c 2 -C 10`]);
      const [a, b] = await meet(oursServes, ours, theirs);
      for (const [r, who] of [[a, 'softverbs'], [b, 'Linux']] as const) {
        assert.equal(r.code, 0, `${who}:\n${r.out}`);
        assert.match(r.out, /data transfers complete\ntest complete\nreturn status 0\n/, who);
      }
    });
  }

  for (const oursServes of [true, false]) {
    test(`rdma_server / rdma_client (librdmacm's convenience layer), softverbs ${oursServes ? 'server' : 'client'}, Linux ${oursServes ? 'client' : 'server'}`, async () => {
      const port = String(7000 + Math.floor(Math.random() * 1000));
      const ours = (server: boolean) => run(process.execPath, [join(DIST, 'src', 'bin', server ? 'rdma_server.js' : 'rdma_client.js'), ...(server ? [] : ['-s', PEER]), '-p', port], { ...process.env, SOFTVERBS_ROOT: d.root });
      const theirs = (server: boolean) => run(join(LAB, 'vm-exec.sh'), ['1', `timeout 60 ${server ? 'rdma_server' : `rdma_client -s ${HOST}`} -p ${port}`]);
      const [a, b] = await meet(oursServes, ours, theirs);
      assert.equal(a.code, 0, a.out);
      assert.equal(b.code, 0, b.out);
      assert.match((oursServes ? a : b).out, /^rdma_server: start\nrdma_server: end 0\n$/);
      assert.match((oursServes ? b : a).out, /^rdma_client: start\nrdma_client: end 0\n$/);
    });
  }

  test('a connection to a port nothing listens on: REJECTED, error 8, both ways', async () => {
    const port = String(9000 + Math.floor(Math.random() * 1000));
    const ours = await rping(['-c', '-a', PEER, '-p', port, '-C', '1']);
    assert.equal(ours.code, 255, ours.out);
    assert.match(ours.out, /cma event RDMA_CM_EVENT_REJECTED, error 8/);
    const theirs = await run(join(LAB, 'vm-exec.sh'), ['1', `timeout 60 rping -c -a ${HOST} -p ${port} -C 1`]);
    assert.equal(theirs.code, 255, theirs.out);
    assert.match(theirs.out, /cma event RDMA_CM_EVENT_REJECTED, error 8/);
  });
});
