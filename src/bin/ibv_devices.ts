#!/usr/bin/env node
import { runTool } from '../tools/cli.js';
import { main } from '../tools/ibv_devices.js';

await runTool('ibv_devices', main);
