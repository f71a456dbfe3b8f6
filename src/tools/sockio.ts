/** The out-of-band TCP exchanges of rdma-core's and perftest's tools read fixed-size messages. */
import type { Socket } from 'node:net';

/** Reads exactly n bytes from a socket (null at EOF or error first). */
export function reader(sock: Socket): (n: number) => Promise<Buffer | null> {
  let buf = Buffer.alloc(0);
  let ended = false;
  let wake: (() => void) | null = null;
  sock.on('data', (d) => {
    buf = Buffer.concat([buf, d]);
    wake?.();
  });
  const end = () => {
    ended = true;
    wake?.();
  };
  sock.on('end', end);
  sock.on('error', end);
  sock.on('close', end);
  return async (n) => {
    while (buf.length < n && !ended) await new Promise<void>((r) => (wake = r));
    wake = null;
    if (buf.length < n) return null;
    const out = buf.subarray(0, n);
    buf = buf.subarray(n);
    return out;
  };
}
