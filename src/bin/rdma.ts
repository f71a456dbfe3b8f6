#!/usr/bin/env node
import { main } from '../tools/rdma.js';

process.exitCode = await main(process.argv.slice(2));
