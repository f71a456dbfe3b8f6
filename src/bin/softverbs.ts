#!/usr/bin/env node
/** softverbs <tool> [args]: one entry point for every tool. */
import { runTool } from '../tools/cli.js';

const TOOLS: Record<string, () => Promise<{ main(argv: string[]): number | Promise<number> }>> = {
  ibv_devices: () => import('../tools/ibv_devices.js'),
  ibv_devinfo: () => import('../tools/ibv_devinfo.js'),
  ibv_rc_pingpong: () => import('../tools/ibv_rc_pingpong.js'),
  ibv_uc_pingpong: () => import('../tools/ibv_uc_pingpong.js'),
  ibv_ud_pingpong: () => import('../tools/ibv_ud_pingpong.js'),
  ibv_srq_pingpong: () => import('../tools/ibv_srq_pingpong.js'),
  rdma: () => import('../tools/rdma.js'),
  rping: () => import('../tools/rping.js'),
  ucmatose: () => import('../tools/ucmatose.js'),
  udaddy: () => import('../tools/udaddy.js'),
  mckey: () => import('../tools/mckey.js'),
  rdma_server: async () => ({ main: (await import('../tools/rdma_server.js')).server }),
  rdma_client: async () => ({ main: (await import('../tools/rdma_server.js')).client }),
  ib_send_bw: () => import('../tools/ib_send_bw.js'),
  ib_write_bw: () => import('../tools/ib_write_bw.js'),
  ib_read_bw: () => import('../tools/ib_read_bw.js'),
  ib_atomic_bw: () => import('../tools/ib_atomic_bw.js'),
  ib_send_lat: () => import('../tools/ib_send_lat.js'),
  ib_write_lat: () => import('../tools/ib_write_lat.js'),
  ib_read_lat: () => import('../tools/ib_read_lat.js'),
  ib_atomic_lat: () => import('../tools/ib_atomic_lat.js'),
  exec: () => import('../tools/exec.js'),
  'preload-path': async () => ({ main: (await import('../tools/exec.js')).preloadPathMain }),
};

const USAGE = `Usage: softverbs <tool> [args]

Tools:
${Object.keys(TOOLS).map((t) => `  ${t}`).join('\n')}

softverbs exec [--root DIR] -- PROGRAM [ARGS...] runs an unmodified C program
(rdma-core's libibverbs) on softverbsd through the preload library.

The daemon itself is softverbsd (softverbsd --help).
`;

const [tool] = process.argv.slice(2);
process.argv.splice(2, 1); // the tool sees its own arguments, as when started by its own name
if (!tool || tool === '-h' || tool === '--help') {
  process.stdout.write(USAGE);
  process.exitCode = tool ? 0 : 255;
} else if (!TOOLS[tool]) {
  process.stderr.write(`softverbs: unknown tool '${tool}'\n${USAGE}`);
  process.exitCode = 255;
} else {
  await runTool(tool, (await TOOLS[tool]!()).main);
}
