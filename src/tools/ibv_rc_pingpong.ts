#!/usr/bin/env node
/** ibv_rc_pingpong: rdma-core's RC ping-pong (see pingpong.ts). */
import { run } from './pingpong.js';

export const main = (argv: string[]): Promise<number> => run('ibv_rc_pingpong', 'rc', argv);

if (import.meta.url === `file://${process.argv[1]}`) process.exitCode = await main(process.argv.slice(2));
