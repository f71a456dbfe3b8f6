/**
 * Handing a memfd of ours to the daemon: the descriptor exchange's
 * PUT_MEMFD (`<root>/fds.sock`; abi/uverbs.ts FdOp, daemon/fd-exchange.ts).
 * Node's sockets carry no descriptors, so the connection is made and the
 * request sent natively (connect, then sendmsg with SCM_RIGHTS, in one go),
 * and Node reads the answer. One connection per memfd, just before the command that maps it: a
 * round trip per object created (a ring, an MR), none per post. The daemon
 * holds the memfd under the id the answer gives, for this context and for
 * the one command whose udata names it.
 */
import { lstatSync } from 'node:fs';
import { join } from 'node:path';
import { Socket } from 'node:net';
import { layout, pack, unpack } from '../abi/layout.js';
import * as U from '../abi/uverbs.js';
import { E, errnoName } from '../common/errno.js';
import { codeOf } from '../common/errors.js';
import { trustedOwners } from '../common/trust.js';
import { sendWithFd } from '../native/fd-pass.js';
import { closeFd, connectUnix } from '../native/libc.js';
import { VerbsError } from './errors.js';

const RESP = layout(U.SV_FD_RESP).size;
/** The most an answer carries: the struct and its reason (the daemon sends at most 512 bytes of it). */
const ANSWER_MAX = RESP + 512;
/** EAGAIN (too many of this user's requests wait at the daemon): tried again after a moment, this many times */
const RETRIES = 50;

/** What hands memfds over for a context (the verbs Context). */
export interface MemfdSink {
  /** The id the daemon holds `fd` under for this context, for the udata of the one command that maps it. */
  putMemfd(fd: number, verb: string): Promise<number>;
}

/**
 * The descriptor exchange of the daemon serving `root`: a socket in the root (which the caller has checked is
 * trusted) owned by a trusted uid, not a symlink, as a device file must be.
 */
export function exchangePath(root: string, verb: string): string {
  const path = join(root, 'fds.sock');
  let ok = false;
  try {
    const st = lstatSync(path);
    ok = st.isSocket() && trustedOwners().includes(st.uid);
  } catch {
    /* judged below */
  }
  if (!ok) throw new VerbsError(verb, 'ENODEV', `${path} is not a softverbsd's descriptor exchange (is the daemon running, and as new as this library?)`);
  return path;
}

/** PUT_MEMFD of `fd` for the context whose fd key is `key`: the id the daemon holds it under. */
export async function putMemfd(path: string, key: number, fd: number, verb: string): Promise<number> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await putOnce(path, key, fd, verb);
    } catch (e) {
      if (codeOf(e) !== 'EAGAIN' || attempt >= RETRIES) throw e;
      await new Promise((r) => setTimeout(r, Math.min(50, 2 + attempt * 5)));
    }
  }
}

async function putOnce(path: string, key: number, fd: number, verb: string): Promise<number> {
  const c = connectUnix(path);
  // EAGAIN: the exchange's queue is full for a moment (retried); no daemon behind the socket is no device
  if (c < 0) throw new VerbsError(verb, c === -E.ECONNREFUSED || c === -E.ENOENT ? 'ENODEV' : -c, `${path}: connect: ${errnoName(-c)}`);
  const n = sendWithFd(c, pack(U.SV_FD_REQ, { op: U.FdOp.PUT_MEMFD, token: key, arg: 0n }), fd);
  // a daemon that refused the connection before reading it (EAGAIN) has answered already: the answer says why
  if (n < 0 && n !== -E.EPIPE && n !== -E.ECONNRESET) {
    closeFd(c);
    throw new VerbsError(verb, -n, `handing the memfd to softverbsd (${path})`);
  }
  const s = new Socket({ fd: c, readable: true, writable: true });
  try {
    const b = await readAnswer(s);
    if (b.length < RESP) throw new VerbsError(verb, 'EIO', `softverbsd's descriptor exchange (${path}) closed without an answer`);
    const r = unpack(U.SV_FD_RESP, b);
    if (r.status < 0) throw new VerbsError(verb, -r.status, b.subarray(RESP, RESP + r.text_len).toString('utf8'));
    return r.id;
  } finally {
    s.destroy();
  }
}

/** Everything the daemon sends before it closes (one answer), at most ANSWER_MAX bytes. */
function readAnswer(s: Socket): Promise<Buffer> {
  return new Promise((resolve) => {
    const parts: Buffer[] = [];
    let n = 0;
    const done = () => resolve(Buffer.concat(parts));
    s.on('data', (d: Buffer) => {
      if (n < ANSWER_MAX) parts.push(d);
      n += d.length;
      const have = Buffer.concat(parts);
      // the whole answer is here once its reason is: no need to wait for the close
      if (have.length >= RESP && have.length >= RESP + have.readUInt32LE(4)) {
        parts.length = 0;
        parts.push(have);
        done();
      }
    });
    s.once('end', done);
    s.once('close', done);
    s.once('error', done);
  });
}
