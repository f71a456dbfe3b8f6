#!/usr/bin/env node
import { main } from '../tools/ibv_devices.js';

process.title = 'ibv_devices'; // the comm ps and rdma's restrack show, as for rdma-core's binary of that name
process.exitCode = main(process.argv.slice(2));
