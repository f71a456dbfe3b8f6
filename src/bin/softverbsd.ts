#!/usr/bin/env node
import { main } from '../daemon/main.js';

process.title = 'softverbsd';
await main(process.argv.slice(2));
