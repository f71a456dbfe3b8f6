#!/usr/bin/env node
import { main } from '../tools/ib_atomic_bw.js';

process.exitCode = await main(process.argv.slice(2));
