#!/usr/bin/env node
import { main } from '../tools/ib_read_bw.js';

process.exitCode = await main(process.argv.slice(2));
