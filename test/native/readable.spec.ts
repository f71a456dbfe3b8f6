/**
 * ReadableSet: sockets Node does not read, waited on by one worker thread
 * for all of them (the daemon's owned port sockets, see RoceTransport).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { readFile } from 'node:fs/promises';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { dgramFd, dgramReading } from '../../src/native/libc.js';
import { readableSet } from '../../src/native/readable-set.js';

const bound = (): Promise<Socket> => new Promise((r) => {
  const s = createSocket('udp4');
  s.bind(0, '127.0.0.1', () => r(s));
});

test('eight sockets wait on one thread: the pool stays free, each is called once it is readable, cancel lets go', async () => {
  const socks = await Promise.all(Array.from({ length: 8 }, bound));
  for (const s of socks) assert.ok(dgramReading(s, false), 'Node stops reading');
  const set = readableSet();
  const calls = socks.map(() => 0);
  const ready = socks.map((s, i) => new Promise<void>((r) => set.wait(dgramFd(s), () => (calls[i]!++, r()))));
  // libuv's pool has 4 threads: a thread per waiting socket would hold them all, and this read would never end
  for (let i = 0; i < 8; i++) await readFile(fileURLToPath(import.meta.url));
  assert.deepEqual(calls, [0, 0, 0, 0, 0, 0, 0, 0], 'nothing is readable yet');
  const tx = createSocket('udp4');
  for (const s of socks.slice(0, 6)) tx.send('x', s.address().port, '127.0.0.1');
  await Promise.all(ready.slice(0, 6));
  assert.deepEqual(calls, [1, 1, 1, 1, 1, 1, 0, 0]);
  // the last two never get a datagram: cancelled, the thread's poll ends and the process can exit
  for (const s of socks.slice(6)) set.cancel(dgramFd(s));
  tx.close();
  for (const s of socks) s.close();
});

// the transport's waiter (src/native/uv-poll.ts) keeps the same promise as the admission's and fd exchange's
for (const [mod, fn] of [['readable-set.js', 'readableSet'], ['uv-poll.js', 'uvPollSet']] as const) {
  test(`a waiting socket holds the process; cancelling it lets the process end (${fn})`, () => {
    const script = (cancel: boolean) => `
      import { createSocket } from 'node:dgram';
      import { dgramFd, dgramReading } from ${JSON.stringify(new URL('../../src/native/libc.js', import.meta.url).href)};
      import { ${fn} as waits } from ${JSON.stringify(new URL(`../../src/native/${mod}`, import.meta.url).href)};
      const s = createSocket('udp4');
      s.bind(0, '127.0.0.1', () => {
        dgramReading(s, false);
        s.unref();
        waits().wait(dgramFd(s), () => process.exit(3));
        ${cancel ? 'setTimeout(() => waits().cancel(dgramFd(s)), 100);' : ''}
      });`;
    const run = (cancel: boolean) => spawnSync(process.execPath, ['--input-type=module', '-e', script(cancel)], { timeout: cancel ? 20000 : 1500 });
    const held = run(false);
    assert.equal(held.signal, 'SIGTERM', 'without cancel the wait keeps the process alive');
    const letGo = run(true);
    assert.equal(letGo.status, 0, String(letGo.stderr));
  });
}

test('a process that throws while a socket waits still exits (the waiting poll does not hold the exit)', () => {
  const script = `
    import { createSocket } from 'node:dgram';
    import { dgramFd, dgramReading } from ${JSON.stringify(new URL('../../src/native/libc.js', import.meta.url).href)};
    import { readableSet } from ${JSON.stringify(new URL('../../src/native/readable-set.js', import.meta.url).href)};
    const s = createSocket('udp4');
    s.bind(0, '127.0.0.1', () => {
      dgramReading(s, false);
      readableSet().wait(dgramFd(s), () => {});
      setTimeout(() => { throw new Error('uncaught on purpose'); }, 100);
    });`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { timeout: 10000 });
  assert.equal(r.signal, null, 'the process had to be killed: the exit waited for the poll');
  assert.equal(r.status, 1);
  assert.match(String(r.stderr), /uncaught on purpose/);
});
