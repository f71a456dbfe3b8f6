#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ibv_ud_pingpong.js';

await runTool('ibv_ud_pingpong', main);
