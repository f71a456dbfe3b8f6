/**
 * The daemon's management queries (what `rdma` and the counters API ask):
 * one JSON request on its own connection to a device file, opened by the
 * private first frame 0xF2, answered with one JSON reply or an errno.
 */
import { FrameAssembler, mgmtFrame, parseReply, replySize } from '../abi/framing.js';
import { connectDevice } from './channel.js';
import { VerbsError } from './errors.js';
import { codeOf } from '../common/errors.js';

/** No management answer is larger (the resource tracker of a busy daemon is well under it). */
const MAX_ANSWER = 256 << 20;

export async function mgmtQuery<T = unknown>(devPath: string, op: string, args: Record<string, unknown> = {}): Promise<T> {
  const s = await connectDevice(devPath, `mgmt ${op}`);
  return new Promise<T>((resolve, reject) => {
    const frames = new FrameAssembler(
      (h) => replySize(h, MAX_ANSWER),
      (f) => {
        s.destroy();
        const { status, body } = parseReply(f);
        const text = body.toString();
        if (status < 0) reject(new VerbsError(`mgmt ${op}`, -status, text || undefined));
        else resolve(JSON.parse(text) as T);
      },
      () => {
        s.destroy();
        reject(new VerbsError(`mgmt ${op}`, 'EIO', 'the daemon sent a reply no daemon sends'));
      },
    );
    s.on('data', (d) => frames.push(d));
    s.on('error', (e) => reject(new VerbsError(`mgmt ${op}`, codeOf(e) ?? 'EIO', `${devPath}: ${e.message}`)));
    s.write(mgmtFrame(JSON.stringify({ ...args, op })));
  });
}
