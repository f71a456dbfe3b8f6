/** ibv_srq_pingpong: rdma-core's SRQ ping-pong (see pingpong.ts). */
import { run } from './pingpong.js';

export const main = (argv: string[]): Promise<number> => run('ibv_srq_pingpong', 'srq', argv);

