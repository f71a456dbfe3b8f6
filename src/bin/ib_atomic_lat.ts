#!/usr/bin/env node
import { main } from '../tools/ib_atomic_lat.js';

process.title = 'ib_atomic_lat'; // the comm ps and rdma's restrack show, as for rdma-core's binary of that name
process.exitCode = await main(process.argv.slice(2));
