#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ibv_rc_pingpong.js';

await runTool('ibv_rc_pingpong', main);
