/**
 * Big transfers for a client's own memory (ProcMemory): every access to it is a pread or pwrite on the
 * client's /proc/<pid>/mem, a system call and a walk of the client's page tables costing a few microseconds
 * whatever its size (4 KiB: ~3-4 us, ~1 GB/s; 64 KiB: ~13-15 us, ~4.5-5 GB/s, near the ceiling of ~5 GB/s).
 * So the engines move such memory in spans of up to STAGE_BYTES per call instead of a packet at a time:
 *
 * - ReadAhead (the sender's side: SEND/WRITE payloads, READ responses): one pread of up to STAGE_BYTES of
 *   what the message still needs from the same SGE, packets then copied out of it. A snapshot taken when
 *   read, which IBA allows (a buffer must not change under an outstanding WR); the window belongs to one
 *   WQE or one READ (`owner`) and is dropped when a new one starts or the requester goes back (go-back-N,
 *   RNR retry), so a packet never carries another WQE's bytes, and a retransmission reads afresh.
 * - WriteBehind (the receiver's side: WRITE and SEND data at the responder, READ responses at the
 *   requester): in-order contiguous payloads of one message gathered and written with one pwrite when the
 *   message's last packet is placed, the buffer is full, the next bytes are not contiguous, or before
 *   anything lets either client learn that the bytes are there (the engines call flush(): see the
 *   responder's settled() and the completer's READ).
 *
 * Buffers come from a small free list: a staging buffer is held only while a message is in progress.
 * Memory the daemon maps (MappedMemory) never comes here.
 */
import { copyBytes } from '../abi/ring.js';
import type { MrMemory } from './mr-memory.js';

/** The most one staging buffer (and one span of a client's own memory) holds: one system call's worth. */
export const STAGE_BYTES = 65536;

const free: Uint8Array[] = [];
/** Free buffers kept for reuse: about what a busy daemon has in use at once; any more go to the GC. */
const KEEP = 64;

/** A buffer of STAGE_BYTES (from the free list). */
export function takeStage(): Uint8Array {
  return free.pop() ?? new Uint8Array(STAGE_BYTES);
}

/** Back to the free list. */
export function giveStage(b: Uint8Array): void {
  if (free.length < KEEP) free.push(b);
}

/** The owner of a window read for a send queue's WQEs by index (ReadAhead.readWqe) rather than for one object. */
const BY_INDEX = {};

/**
 * A window of an MR's memory read ahead: [off, off + len) of `mem`, read for `owner` (or, by index, for the WQEs
 * [from, until) of a send queue).
 */
export class ReadAhead {
  private buf: Uint8Array | null = null;
  private owner: object | null = null;
  private mem: MrMemory | null = null;
  private off = 0;
  private len = 0;
  /** a window read by index serves the WQEs from `from` (the one it was read for) up to `until` (excluded) */
  private from = 0;
  private until = 0;
  /** where the last WQE read straight into its packet (readWqe): a WQE reading the same place fills a window */
  private lastMem: MrMemory | null = null;
  private lastOff = -1;

  /**
   * n bytes at offset `off` of `mem` into dst[dstOff..], for `owner` (the WQE or READ they are sent for). From
   * the window when it holds them for the same owner; else the window is read afresh from `off`, `ahead`
   * bytes (what the owner will still want from here, contiguously: at least n) up to STAGE_BYTES. A window
   * that cannot be read whole (the client unmapped a page somewhere in it) gives way to reading the n bytes
   * alone: a packet fails only if its own bytes cannot be read. False when they cannot.
   */
  read(owner: object, mem: MrMemory, off: number, dst: Uint8Array, dstOff: number, n: number, ahead: number): boolean {
    if (owner === this.owner && this.holds(mem, off, n)) {
      copyBytes(dst, dstOff, this.buf!, off - this.off, n);
      return true;
    }
    const k = Math.min(STAGE_BYTES, ahead);
    if (k <= n) {
      // nothing to read ahead (the last packet, or one as large as a window): straight into dst
      this.drop();
      return mem.read(off, dst, dstOff, n);
    }
    return this.fill(owner, mem, off, k, dst, dstOff, n);
  }

  /**
   * The requester's read: n bytes at `off` of `mem` for the WQE at index `idx` of its send queue, whose producer
   * index it read as `prod` before this call (`ahead` as for read()). A window serves every WQE posted before it
   * was read, not only its own: IBA leaves a buffer's contents undefined while a WR that names it is outstanding,
   * so bytes read while WQEs idx..prod-1 were all outstanding are what each of them may send. A program that posts
   * the same buffer again and again (perftest's bandwidth tools all do) then costs one read of its memory per
   * doorbell's worth of WQEs, not one per WQE: a window is filled for a single packet too once a WQE reads the
   * place the one before it read. WQEs posted after the read never use it; a retry drops it (drop()).
   */
  readWqe(idx: number, prod: number, mem: MrMemory, off: number, dst: Uint8Array, dstOff: number, n: number, ahead: number): boolean {
    if (this.owner === BY_INDEX && this.holds(mem, off, n) && ((idx - this.from) | 0) >= 0 && ((idx - this.until) | 0) < 0) {
      copyBytes(dst, dstOff, this.buf!, off - this.off, n);
      return true;
    }
    let k = Math.min(STAGE_BYTES, ahead);
    const again = mem === this.lastMem && off === this.lastOff;
    if (k <= n && !(again && n <= STAGE_BYTES && ((prod - idx) | 0) > 1)) {
      this.drop();
      this.lastMem = mem;
      this.lastOff = off;
      return mem.read(off, dst, dstOff, n);
    }
    if (k < n) k = n;
    if (!this.fill(BY_INDEX, mem, off, k, dst, dstOff, n)) return false;
    this.from = idx;
    this.until = prod;
    return true;
  }

  /** Whether a window read by index can still serve a WQE at `next` or after: false once the requester is past it. */
  servesFrom(next: number): boolean {
    return this.owner === BY_INDEX && ((next - this.until) | 0) < 0;
  }

  /** Drops a window read for one owner (a new WQE starts: it was not read for it); one read by index stays. */
  dropOwned(): void {
    if (this.owner !== BY_INDEX) this.drop();
  }

  private holds(mem: MrMemory, off: number, n: number): boolean {
    return mem === this.mem && off >= this.off && off + n <= this.off + this.len;
  }

  private fill(owner: object, mem: MrMemory, off: number, k: number, dst: Uint8Array, dstOff: number, n: number): boolean {
    const b = (this.buf ??= takeStage());
    if (!mem.read(off, b, 0, k)) {
      this.drop();
      return mem.read(off, dst, dstOff, n);
    }
    this.owner = owner;
    this.mem = mem;
    this.off = off;
    this.len = k;
    copyBytes(dst, dstOff, b, 0, n);
    return true;
  }

  /** Forgets the window (and gives its buffer back). */
  drop(): void {
    if (this.buf !== null) giveStage(this.buf);
    this.buf = null;
    this.owner = this.mem = null;
    this.len = 0;
  }

  /** drop(), and forgets where the last WQE read (a retry: what goes again is read again). */
  reset(): void {
    this.drop();
    this.lastMem = null;
    this.lastOff = -1;
  }
}

/** Write-behinds holding bytes, for settleMemory (a handful at most: one per message in progress). */
const pending = new Set<WriteBehind>();

/** Bytes placed in an MR's memory and not yet written: [off, off + len) of `mem`. */
export class WriteBehind {
  private buf: Uint8Array | null = null;
  mem: MrMemory | null = null;
  private off = 0;
  /** bytes staged (0: none) */
  len = 0;
  /**
   * The PSN of the first packet whose bytes are staged; after a write() or flush() that failed, the PSN of
   * the first packet whose bytes did not land (what the responder's NAK names).
   */
  psn = 0;

  /**
   * Places n bytes of src[srcOff..] at offset `off` of `mem`, from the packet with `psn`. Staged behind what is
   * staged when they continue it and fit; otherwise what is staged is written first. Written at once (with
   * what is staged, in one call where they fit) when `last` (the message's last bytes) or when they are a
   * staging buffer's worth themselves. False when something could not be written (see `psn`).
   */
  write(mem: MrMemory, off: number, src: Uint8Array, srcOff: number, n: number, psn: number, last: boolean): boolean {
    if (this.len > 0) {
      if (mem === this.mem && off === this.off + this.len && this.len + n <= STAGE_BYTES) {
        copyBytes(this.buf!, this.len, src, srcOff, n);
        this.len += n;
        return last ? this.flush() : true;
      }
      if (!this.flush()) return false;
    }
    if (last || n >= STAGE_BYTES) {
      this.psn = psn;
      return mem.write(off, src, srcOff, n);
    }
    const b = (this.buf ??= takeStage());
    copyBytes(b, 0, src, srcOff, n);
    this.mem = mem;
    this.off = off;
    this.len = n;
    this.psn = psn;
    pending.add(this);
    return true;
  }

  /** Writes what is staged (one call). False if it could not be written; either way nothing stays staged. */
  flush(): boolean {
    if (this.len === 0) return true;
    const ok = this.mem!.write(this.off, this.buf!, 0, this.len);
    this.len = 0;
    this.mem = null;
    giveStage(this.buf!);
    this.buf = null;
    pending.delete(this);
    return ok;
  }
}

/**
 * The MR over `mem` is deregistered or re-registered: bytes staged for it are written now, while the client's
 * memory is still what the MR named (after this, the client may unmap or reuse it). A failure is not reported
 * here: the message they belong to fails at its next packet, whose rkey no longer works.
 */
export function settleMemory(mem: MrMemory): void {
  for (const wb of pending) if (wb.mem === mem) wb.flush();
}

/** A QP's staging, made the first time one of its engines moves a client's own memory. */
export class QpStaging {
  /** the requester's read-ahead: SEND and WRITE payloads */
  readonly send = new ReadAhead();
  /** the responder's read-ahead: READ responses */
  readonly read = new ReadAhead();
  /** the responder's write-behind: WRITE and SEND data */
  readonly recv = new WriteBehind();
  /** the completer's write-behind: READ responses into the requester's SGEs */
  readonly comp = new WriteBehind();

  /**
   * Everything staged is written now, whatever comes of it (the QP is going to ERR, RESET or away: what
   * arrived before lands, as a device that writes each packet as it comes would have placed it; nothing
   * reports a failure any more).
   */
  settle(): void {
    this.recv.flush();
    this.comp.flush();
  }

  /** settle(), and the read-ahead windows dropped (their buffers back to the free list). */
  release(): void {
    this.settle();
    this.send.drop();
    this.read.drop();
  }
}
