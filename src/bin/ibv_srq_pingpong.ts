#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ibv_srq_pingpong.js';

await runTool('ibv_srq_pingpong', main);
