/**
 * UvPollSet: sockets Node does not read, waited on by Node's own event loop (a libuv poll handle each), so a
 * frame arriving while the daemon sleeps wakes it once (src/native/uv-poll.ts).
 */
import assert from 'node:assert/strict';
import { createSocket, type Socket } from 'node:dgram';
import { readdirSync } from 'node:fs';
import { test } from 'node:test';
import { dgramFd, dgramReading } from '../../src/native/libc.js';
import { uvPollSet } from '../../src/native/uv-poll.js';

const bound = (): Promise<Socket> => new Promise((r) => {
  const s = createSocket('udp4');
  s.bind(0, '127.0.0.1', () => r(s));
});
const fds = () => readdirSync('/proc/self/fd').length;
const tick = () => new Promise((r) => setImmediate(r));

test('each socket is called once when readable, on the main thread; a second wait re-arms it; cancel closes what it opened', { timeout: 20000 }, async () => {
  const base = fds();
  const socks = await Promise.all(Array.from({ length: 8 }, bound));
  for (const s of socks) assert.ok(dgramReading(s, false), 'Node stops reading');
  const set = uvPollSet();
  const calls = socks.map(() => 0);
  const arm = (i: number) => new Promise<void>((r) => set.wait(dgramFd(socks[i]!), () => (calls[i]!++, r())));
  const ready = socks.map((_, i) => arm(i));
  for (let i = 0; i < 20; i++) await tick();
  assert.deepEqual(calls, [0, 0, 0, 0, 0, 0, 0, 0], 'nothing is readable yet');
  const tx = createSocket('udp4');
  for (const s of socks.slice(0, 6)) tx.send('x', s.address().port, '127.0.0.1');
  await Promise.all(ready.slice(0, 6));
  // one-shot: the datagram is still unread, yet no second call comes without a second wait
  for (let i = 0; i < 20; i++) await tick();
  assert.deepEqual(calls, [1, 1, 1, 1, 1, 1, 0, 0]);
  // waiting again on a socket that still holds its datagram: called at once
  await arm(0);
  assert.equal(calls[0], 2);
  // the sockets' own descriptors are untouched (the handles poll dups of them): Node still reads them
  dgramReading(socks[1]!, true);
  const got = new Promise<string>((r) => socks[1]!.once('message', (m) => r(m.toString())));
  assert.equal(await got, 'x');
  for (const s of socks) set.cancel(dgramFd(s));
  tx.close();
  for (const s of socks) s.close();
  for (let i = 0; i < 20; i++) await tick();
  assert.ok(fds() <= base + 1, `descriptors left open: ${fds() - base}`);
});
