/**
 * Handle numbers as the kernel's per-file idr hands them out: the lowest
 * free one. Freed numbers wait in a min-heap, so taking and giving are
 * O(log n) however many objects a context holds (a scan from 0 made 100k
 * ALLOC_PDs quadratic).
 */
export class HandleAllocator {
  private next = 0;
  private readonly free: number[] = [];

  take(): number {
    const f = this.free;
    if (f.length === 0) return this.next++;
    const top = f[0]!;
    const last = f.pop()!;
    if (f.length === 0) return top;
    // sift `last` down from the root
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= f.length) break;
      const c = l + 1 < f.length && f[l + 1]! < f[l]! ? l + 1 : l;
      if (f[c]! >= last) break;
      f[i] = f[c]!;
      i = c;
    }
    f[i] = last;
    return top;
  }

  give(h: number): void {
    const f = this.free;
    let i = f.length;
    f.push(h);
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (f[p]! <= h) break;
      f[i] = f[p]!;
      i = p;
    }
    f[i] = h;
  }
}
