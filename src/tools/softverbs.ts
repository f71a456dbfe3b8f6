#!/usr/bin/env node
/** softverbs <tool> [args]: one entry point for every tool. */
const TOOLS: Record<string, () => Promise<{ main(argv: string[]): number | Promise<number> }>> = {
  ibv_devices: () => import('./ibv_devices.js'),
  ibv_devinfo: () => import('./ibv_devinfo.js'),
  ibv_rc_pingpong: () => import('./ibv_rc_pingpong.js'),
  ibv_uc_pingpong: () => import('./ibv_uc_pingpong.js'),
  ibv_ud_pingpong: () => import('./ibv_ud_pingpong.js'),
  ibv_srq_pingpong: () => import('./ibv_srq_pingpong.js'),
  rdma: () => import('./rdma.js'),
  ib_send_bw: () => import('./ib_send_bw.js'),
  ib_write_bw: () => import('./ib_write_bw.js'),
  ib_read_bw: () => import('./ib_read_bw.js'),
  ib_atomic_bw: () => import('./ib_atomic_bw.js'),
  ib_send_lat: () => import('./ib_send_lat.js'),
  ib_write_lat: () => import('./ib_write_lat.js'),
  ib_read_lat: () => import('./ib_read_lat.js'),
  ib_atomic_lat: () => import('./ib_atomic_lat.js'),
};

const USAGE = `Usage: softverbs <tool> [args]

Tools:
${Object.keys(TOOLS).map((t) => `  ${t}`).join('\n')}

The daemon itself is softverbsd (softverbsd --help).
`;

const [tool, ...rest] = process.argv.slice(2);
if (!tool || tool === '-h' || tool === '--help') {
  process.stdout.write(USAGE);
  process.exitCode = tool ? 0 : 255;
} else if (!TOOLS[tool]) {
  process.stderr.write(`softverbs: unknown tool '${tool}'\n${USAGE}`);
  process.exitCode = 255;
} else {
  process.exitCode = await (await TOOLS[tool]!()).main(rest);
}
