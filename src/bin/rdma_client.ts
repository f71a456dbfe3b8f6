#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { client } from '../tools/rdma_server.js';

await runTool('rdma_client', client);
