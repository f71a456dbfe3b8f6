#!/usr/bin/env node
import { main } from '../daemon/main.js';

await main(process.argv.slice(2));
