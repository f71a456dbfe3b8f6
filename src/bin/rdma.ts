#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/rdma.js';

await runTool('rdma', main);
