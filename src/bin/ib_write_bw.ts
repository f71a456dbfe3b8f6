#!/usr/bin/env node
import { main } from '../tools/ib_write_bw.js';

process.title = 'ib_write_bw'; // the comm ps and rdma's restrack show, as for rdma-core's binary of that name
process.exitCode = await main(process.argv.slice(2));
