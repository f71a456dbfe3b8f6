/**
 * The bytes of a memory region, as the engines reach them. Two kinds:
 *
 * - MappedMemory: the daemon maps them (a client's memfd, shared): one view,
 *   which the engines read and write in place; a packet's payload may be a
 *   window on it (zero copy).
 * - ProcMemory: they are the client's own memory (heap, stack, any mapping of
 *   an unmodified C program), which the daemon cannot map; it reads and writes
 *   them with pread/pwrite on the client's /proc/<pid>/mem at the client's
 *   virtual addresses. Every access is a copy, and may fail: the client can
 *   unmap a page under a registered range (the kernel pins an MR's pages; we
 *   cannot), and a failed access becomes the IBA error the engines give for a
 *   bad key or bounds.
 *
 * The engines use `view` when it is there (today's zero-copy paths) and
 * read()/write() when it is null, up to 64 KiB per call (staging.ts: a
 * system call costs about as much for a page as for sixteen).
 */
import { constants } from 'node:os';
import { copyBytes } from '../abi/ring.js';
import { preadAt, pwriteAt } from '../native/libc.js';

export interface MrMemory {
  /** The MR's bytes as one view (index 0 = the MR's first byte) when the daemon maps them; null when each access is a copy. */
  readonly view: Uint8Array | null;
  /** Copies n bytes at offset `off` of the MR into dst[dstOff..]; false if the client's memory could not be read. */
  read(off: number, dst: Uint8Array, dstOff: number, n: number): boolean;
  /** Copies n bytes from src[srcOff..] to offset `off` of the MR; false if it could not be written. */
  write(off: number, src: Uint8Array, srcOff: number, n: number): boolean;
}

/** Memory the daemon maps: every access is a copy between views, and never fails. */
export class MappedMemory implements MrMemory {
  constructor(readonly view: Uint8Array) {}

  read(off: number, dst: Uint8Array, dstOff: number, n: number): boolean {
    copyBytes(dst, dstOff, this.view, off, n);
    return true;
  }

  write(off: number, src: Uint8Array, srcOff: number, n: number): boolean {
    copyBytes(this.view, off, src, srcOff, n);
    return true;
  }
}

const EINTR = constants.errno.EINTR;

/**
 * What a copy of a few bytes from or to a caller's buffer at an offset other than 0 goes through: koffi passes a
 * typed array as a pointer to its first byte, so an offset takes a subarray (an allocation); for up to BOUNCE
 * bytes a copy through this buffer costs less. More than that (a packet's payload in a received frame, a span
 * on the view of a mapped MR) goes as a subarray: copyBytes would make one too, and then copy all of it.
 */
const BOUNCE = 64;
const bounce = new Uint8Array(BOUNCE);

/**
 * A client's own memory through its /proc/<pid>/mem (a descriptor the client opened and passed): MR offset
 * `off` is the client's virtual address base + off. Addresses are below 2^47 (2^56 with 5-level paging, still
 * a safe integer), so a double carries them, and the int64_t offset of pread/pwrite, exactly.
 *
 * Accesses through /proc/<pid>/mem use FOLL_FORCE: they go through the page protections (a PROT_NONE page is
 * read and written, a read-only one written, copy-on-write). The daemon checks at registration that the range
 * is readable, and writable where the access flags let the HCA write (LOCAL_WRITE, REMOTE_WRITE,
 * REMOTE_ATOMIC), as the kernel's pinning at ibv_reg_mr would refuse it otherwise; here every access is
 * carried out (as with pinned pages, a later mprotect() does not stop the device).
 */
export class ProcMemory implements MrMemory {
  readonly view = null;

  constructor(
    readonly fd: number,
    /** the client's virtual address of MR offset 0 */
    readonly base: number,
  ) {
    if (!Number.isSafeInteger(base) || base < 0) throw new RangeError(`ProcMemory: base ${base} is not a user address`);
  }

  read(off: number, dst: Uint8Array, dstOff: number, n: number): boolean {
    inBounds(dst, dstOff, n);
    if (n === 0) return true;
    const at = this.base + off;
    if (dstOff === 0) return transfer(this.fd, at, dst, n, false);
    if (n > BOUNCE) return transfer(this.fd, at, dst.subarray(dstOff, dstOff + n), n, false);
    if (!transfer(this.fd, at, bounce, n, false)) return false;
    copyBytes(dst, dstOff, bounce, 0, n);
    return true;
  }

  write(off: number, src: Uint8Array, srcOff: number, n: number): boolean {
    inBounds(src, srcOff, n);
    if (n === 0) return true;
    const at = this.base + off;
    if (srcOff === 0) return transfer(this.fd, at, src, n, true);
    if (n > BOUNCE) return transfer(this.fd, at, src.subarray(srcOff, srcOff + n), n, true);
    copyBytes(bounce, 0, src, srcOff, n);
    return transfer(this.fd, at, bounce, n, true);
  }
}

const probe = new Uint8Array(1);

/**
 * The process whose /proc/<pid>/mem `fd` is has exited: its memory is gone (a read gives 0 bytes once its mm
 * is released, where a live process's unmapped address 0 gives EIO). One system call.
 */
export function procMemoryGone(fd: number): boolean {
  return preadAt(fd, probe, 1, 0) === 0;
}

/** pread/pwrite take a pointer and a count: a range outside the daemon's buffer would be written past it. A bug of ours, thrown. */
function inBounds(buf: Uint8Array, off: number, n: number): void {
  if (!(off >= 0 && n >= 0 && off + n <= buf.length)) throw new RangeError(`ProcMemory: [${off}, ${off}+${n}) is outside a buffer of ${buf.length} bytes`);
}

/**
 * n bytes between buf[0..n) and the client's address `at`. One call almost always; a short transfer (the
 * range reaches a page that is not mapped: the bytes before it) or EINTR goes on from where it stopped. False
 * on EIO / EFAULT (nothing mapped there), on 0 (the process has exited: its memory is gone) and on any other
 * error (a descriptor that is not one).
 */
function transfer(fd: number, at: number, buf: Uint8Array, n: number, write: boolean): boolean {
  let r = write ? pwriteAt(fd, buf, n, at) : preadAt(fd, buf, n, at);
  if (r === n) return true;
  let done = 0;
  for (;;) {
    if (r > 0) done += r;
    else if (r !== -EINTR) return false;
    if (done === n) return true;
    // the rare path: the rest of the buffer, as its own view
    const rest = buf.subarray(done, n);
    r = write ? pwriteAt(fd, rest, n - done, at + done) : preadAt(fd, rest, n - done, at + done);
  }
}

const u64 = new Uint8Array(8);
const u64dv = new DataView(u64.buffer);

/**
 * An RDMA atomic on the aligned 8 bytes at `off`: compare-and-swap (swap if equal to `compare`) or
 * fetch-and-add; returns the value before, or null if the client's memory could not be read or written.
 *
 * Mapped memory shared with the client, 8-aligned in the daemon too, gets a real CPU atomic (Atomics), so it
 * is atomic even against the client's own CPU. Otherwise it is read, computed and written back: atomic with
 * respect to every other RDMA atomic of this daemon (its engines run on one thread, so nothing runs between
 * the read and the write), not with respect to the client's own CPU stores, which may land in between and be
 * lost. That is what rxe gives: rxe_mr_do_atomic_op() takes one global spinlock (atomic_ops_lock), loads the
 * u64 with a plain load, compares or adds, and stores with a plain store; the lock orders rxe's atomics among
 * themselves, the CPU that owns the page takes no part in it. As rxe, a compare that fails writes nothing.
 */
export function atomic64(mem: MrMemory, off: number, isCas: boolean, compare: bigint, swapAdd: bigint): bigint | null {
  const v = mem.view;
  if (v !== null) {
    if ((v.byteOffset + off) % 8 === 0) {
      // a real atomic on the shared page: the client may be touching it from its own CPU
      const a = new BigUint64Array(v.buffer, v.byteOffset + off, 1);
      return isCas ? Atomics.compareExchange(a, 0, compare, swapAdd) : Atomics.add(a, 0, swapAdd);
    }
    const dv = new DataView(v.buffer, v.byteOffset + off, 8);
    const orig = dv.getBigUint64(0, true);
    dv.setBigUint64(0, isCas ? (orig === compare ? swapAdd : orig) : BigInt.asUintN(64, orig + swapAdd), true);
    return orig;
  }
  if (!mem.read(off, u64, 0, 8)) return null;
  const orig = u64dv.getBigUint64(0, true);
  if (isCas && orig !== compare) return orig;
  u64dv.setBigUint64(0, isCas ? swapAdd : BigInt.asUintN(64, orig + swapAdd), true);
  return mem.write(off, u64, 0, 8) ? orig : null;
}
