#!/usr/bin/env node
import { main } from '../tools/ibv_srq_pingpong.js';

process.title = 'ibv_srq_pingpong'; // the comm ps and rdma's restrack show, as for rdma-core's binary of that name
process.exitCode = await main(process.argv.slice(2));
