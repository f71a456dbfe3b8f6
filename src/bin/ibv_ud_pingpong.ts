#!/usr/bin/env node
import { main } from '../tools/ibv_ud_pingpong.js';

process.exitCode = await main(process.argv.slice(2));
