#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { server } from '../tools/rdma_server.js';

await runTool('rdma_server', server);
