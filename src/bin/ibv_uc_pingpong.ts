#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ibv_uc_pingpong.js';

await runTool('ibv_uc_pingpong', main);
