/**
 * The daemon's management queries (what `rdma` and the counters API ask):
 * one JSON request on its own connection to a device file, opened by the
 * private first frame 0xF2, answered with one JSON reply or an errno.
 */
import { connect } from 'node:net';
import { SvCmd } from '../abi/uverbs.js';
import { VerbsError } from './errors.js';

export async function mgmtQuery<T = unknown>(devPath: string, op: string, args: Record<string, unknown> = {}): Promise<T> {
  const body = Buffer.from(JSON.stringify({ ...args, op }));
  const pad = (4 - ((8 + body.length) % 4)) % 4;
  const f = Buffer.alloc(8 + body.length + pad, 0x20);
  f.writeUInt32LE(SvCmd.MGMT, 0);
  f.writeUInt16LE(f.length / 4, 4);
  f.writeUInt16LE(0, 6);
  body.copy(f, 8);
  return new Promise<T>((resolve, reject) => {
    const s = connect(devPath);
    let b = Buffer.alloc(0);
    s.on('data', (d) => {
      b = Buffer.concat([b, d]);
      if (b.length < 8 || b.length < 8 + b.readUInt32LE(4)) return;
      s.destroy();
      const rc = b.readInt32LE(0);
      const text = b.subarray(8, 8 + b.readUInt32LE(4)).toString();
      if (rc < 0) reject(new VerbsError(`mgmt ${op}`, -rc, text || undefined));
      else resolve(JSON.parse(text) as T);
    });
    s.on('error', (e: NodeJS.ErrnoException) => reject(new VerbsError(`mgmt ${op}`, e.errno ? -e.errno : 5, `${devPath}: ${e.message}`)));
    s.write(f);
  });
}
