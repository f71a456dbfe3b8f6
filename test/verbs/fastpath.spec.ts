/**
 * postRecv and pollCq are memory operations only: run them 10,000 times in a
 * child under `strace -f` and look at what its main thread asked the kernel
 * for between two markers. A doorbell or any socket I/O would show up as
 * thousands of write/sendmsg calls; what may remain is the JS engine's own
 * memory management (futex wake-ups of its GC threads, brk/mmap), and the
 * CPU given away by a poll loop that finds nothing (sched_yield once every
 * 16 empty polls in a row, a sleep of a microsecond every 1,024th instead:
 * the HCA it waits for is a process).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { DIST, startDaemon } from '../helpers.js';

const ITERS = 10000;
const GC = new Set(['futex', 'brk', 'mmap', 'munmap', 'madvise', 'mprotect']);
/** pollCq's daemon liveness probe: kill(pid, 0), at most once a second of polling, and only after 1024 empty polls */
const PROBE = 'kill';
/** pollCq gives the CPU away once every this many empty polls in a row (src/verbs/cq.ts) */
const YIELD = 'sched_yield';
const YIELD_EVERY = 16;
/** ... and every this many sleeps a moment instead (glibc's nanosleep is the clock_nanosleep system call) */
const SLEEP = 'clock_nanosleep';
const SLEEP_EVERY = 1024;
const hasStrace = spawnSync('strace', ['-V']).status === 0;

test('postRecv and pollCq make no system call but the sched_yield (and now and then a moment\'s sleep) of a run of empty polls', { skip: hasStrace ? false : 'strace is not installed (apt-get install strace)' }, async () => {
  const d = await startDaemon();
  const dir = mkdtempSync(join(tmpdir(), 'sv-strace-'));
  try {
    const out = join(dir, 'trace.txt');
    const t0 = Date.now();
    const r = spawnSync('strace', ['-f', '-o', out, process.execPath, join(DIST, 'test', 'fixtures', 'nosyscall.js'), d.root, String(ITERS)], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const ms = Date.now() - t0;
    assert.match(r.stderr, new RegExp(`posted ${ITERS}`));
    const lines = readFileSync(out, 'utf8').split('\n');
    const main = lines[0]!.split(/\s+/)[0];
    let on = false;
    const counts: Record<string, number> = {};
    // glibc's malloc reads /proc/sys/vm/overcommit_memory when it trims its heap: memory management too
    let mallocFd = '';
    for (const l of lines) {
      if (/^\d+\s+write\(2, "BEGIN/.test(l)) on = true;
      else if (/^\d+\s+write\(2, "END/.test(l)) on = false;
      else if (on) {
        const m = /^(\d+)\s+(?:<\.\.\. )?(\w+)\(?(\d*)/.exec(l);
        if (!m || m[1] !== main) continue;
        if (l.includes('/proc/sys/vm/overcommit_memory')) {
          mallocFd = /= (\d+)$/.exec(l)?.[1] ?? 'pending';
          continue;
        }
        if (/resumed>\)\s+= \d+$/.test(l) && mallocFd === 'pending') {
          mallocFd = /= (\d+)$/.exec(l)![1]!;
          continue;
        }
        if (l.includes(' resumed>')) continue; // the rest of a call already counted
        if ((m[2] === 'read' || m[2] === 'close') && m[3] === mallocFd) continue;
        counts[m[2]!] = (counts[m[2]!] ?? 0) + 1;
      }
    }
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    const foreign = Object.keys(counts).filter((k) => !GC.has(k) && k !== PROBE && k !== YIELD && k !== SLEEP);
    assert.ok((counts[PROBE] ?? 0) <= 1 + ms / 1000, `${counts[PROBE]} liveness probes in ${ms} ms`);
    assert.deepEqual(foreign, [], `main-thread syscalls other than the GC's: ${JSON.stringify(counts)}`);
    // every poll of the window found nothing (no WQE is ever consumed): one sleep per SLEEP_EVERY of them and one
    // yield per YIELD_EVERY of the others, give or take the ends
    const yields = counts[YIELD] ?? 0;
    const sleeps = counts[SLEEP] ?? 0;
    const wantSleeps = Math.floor(ITERS / SLEEP_EVERY);
    assert.ok(Math.abs(sleeps - wantSleeps) <= 1, `${sleeps} clock_nanosleep for ${ITERS} empty polls, not ${wantSleeps}`);
    assert.ok(Math.abs(yields - (ITERS / YIELD_EVERY - wantSleeps)) <= 1, `${yields} sched_yield for ${ITERS} empty polls, not ${ITERS / YIELD_EVERY - wantSleeps}`);
    assert.ok(total - yields - sleeps < ITERS / 100, `${total} main-thread syscalls for ${ITERS} postRecv+pollCq: ${JSON.stringify(counts)}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await d.stop();
  }
});
