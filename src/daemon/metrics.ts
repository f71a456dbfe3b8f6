/**
 * `--metrics HOST:PORT`: Prometheus text exposition at /metrics through
 * prom-client. rxe's counters per device and port are read when scraped
 * (they live in the HCA; nothing is counted twice), resources per type and
 * pinned pages are gauges read the same way, command latency is a histogram
 * the command loop feeds, and prom-client's default metrics give the
 * process's RSS, CPU and event-loop lag.
 */
import { createServer, type Server } from 'node:http';
import { isIP } from 'node:net';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { Cmd } from '../abi/uverbs.js';
import { COUNTER_NAMES } from '../hca/counters.js';
import { PAGE_SIZE } from './memlock.js';
import { OBJ_TYPES } from './object-table.js';
import type { Daemon } from './server.js';
import { codeOf, ErrnoError, errnoOf, messageOf } from '../common/errors.js';

const CMD_NAME = new Map<number, string>(Object.entries(Cmd).map(([k, v]) => [v, k.toLowerCase()]));

/** "[HOST:]PORT" (IPv6 hosts in brackets); null when it is not one. */
export function parseListen(s: string): { host: string; port: number } | null {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]:|([^:[\]]+):)?(\d{1,5})$/.exec(s);
  if (!m) return null;
  const host = m[1] ?? m[2] ?? '127.0.0.1';
  const port = Number(m[3]);
  if (port > 65535 || (host !== 'localhost' && !isIP(host))) return null;
  return { host, port };
}

export class Metrics {
  readonly registry = new Registry();
  private readonly latency: Histogram<'command'>;
  private server: Server | null = null;

  constructor(private readonly daemon: Daemon) {
    const r = this.registry;
    collectDefaultMetrics({ register: r });
    for (const name of COUNTER_NAMES) {
      new Counter({
        name: `softverbs_${name}_total`,
        help: `rxe's ${name} hardware counter`,
        labelNames: ['device', 'port'] as const,
        registers: [r],
        collect() {
          this.reset();
          for (const d of daemon.devs) this.inc({ device: d.dev.name, port: '1' }, d.dev.counters[name]);
        },
      });
    }
    new Gauge({
      name: 'softverbs_resources',
      help: 'verbs objects held by clients, by device and type',
      labelNames: ['device', 'type'] as const,
      registers: [r],
      collect() {
        this.reset();
        for (const d of daemon.devs) for (const t of OBJ_TYPES) this.set({ device: d.dev.name, type: t }, 0);
        for (const c of daemon.contexts) for (const [t, n] of c.countByType()) this.inc({ device: c.dev.name, type: t }, n);
      },
    });
    new Gauge({
      name: 'softverbs_contexts',
      help: 'open device contexts (ibv_open_device), by device',
      labelNames: ['device'] as const,
      registers: [r],
      collect() {
        this.reset();
        for (const d of daemon.devs) this.set({ device: d.dev.name }, 0);
        for (const c of daemon.contexts) this.inc({ device: c.dev.name });
      },
    });
    new Gauge({
      name: 'softverbs_pinned_pages',
      help: `pages registered by clients and charged to their RLIMIT_MEMLOCK (${PAGE_SIZE} bytes each)`,
      registers: [r],
      collect() {
        this.set(Object.values(daemon.pinned.snapshot()).reduce((a, b) => a + b, 0));
      },
    });
    new Gauge({
      name: 'softverbs_clients',
      help: 'connections to the device files (command, event and management)',
      registers: [r],
      collect() {
        this.set(daemon.connectionCount());
      },
    });
    this.latency = new Histogram({
      name: 'softverbs_command_duration_seconds',
      help: 'time the daemon took to serve a uverbs command, by command',
      labelNames: ['command'] as const,
      buckets: [5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 0.1, 1],
      registers: [r],
    });
    daemon.onCommand = (cmd, seconds) => this.latency.observe({ command: CMD_NAME.get(cmd) ?? String(cmd) }, seconds);
  }

  /** Listens; resolves with "host:port" as bound (port 0 picks a free one). */
  listen(host: string, port: number): Promise<string> {
    const server = createServer((req, res) => {
      if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('softverbsd serves /metrics only\n');
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        (e: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${messageOf(e)}\n`),
      );
    });
    this.server = server;
    return new Promise((resolve, reject) => {
      server.once('error', (e) => reject(new ErrnoError(errnoOf(e) ?? 'EIO', `--metrics ${host}:${port}: ${codeOf(e) ?? e.message}`)));
      server.listen(port, host, () => {
        const a = server.address();
        resolve(a && typeof a === 'object' ? `${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}` : `${host}:${port}`);
      });
    });
  }

  close(): Promise<void> {
    const s = this.server;
    this.server = null;
    this.daemon.onCommand = null;
    return new Promise((r) => (s ? s.close(() => r()) : r()));
  }
}
