#!/usr/bin/env node
/** ibv_srq_pingpong: rdma-core's SRQ ping-pong (see pingpong.ts). */
import { run } from './pingpong.js';

export const main = (argv: string[]): Promise<number> => run('ibv_srq_pingpong', 'srq', argv);

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main(process.argv.slice(2));
