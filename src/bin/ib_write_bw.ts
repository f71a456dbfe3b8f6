#!/usr/bin/env node
import { main } from '../tools/ib_write_bw.js';

process.exitCode = await main(process.argv.slice(2));
