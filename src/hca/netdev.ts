/** What a device learns from the network interface that carries its address: which interface, its MTU. */
import { readFileSync } from 'node:fs';
import { networkInterfaces } from 'node:os';
import { Mtu } from '../abi/enums.js';

/** Headers a RoCEv2 packet carries beyond its payload, as rxe budgets them (IPv6 + UDP + BTH and extensions + ICRC). */
const ROCE_MAX_HDR = 80;

/** The IB MTU enum for an Ethernet MTU, as rxe derives it: the largest of 256..4096 that fits after the headers (1500 → 1024). */
export function ibMtuOf(ethMtu: number): number {
  const room = ethMtu - ROCE_MAX_HDR;
  let m: number = Mtu.MTU_256;
  for (let e = Mtu.MTU_256; e <= Mtu.MTU_4096; e++) if (128 << e <= room) m = e;
  return m;
}

/**
 * The interface that carries `addr` (all of 127/8 and ::1 are on the loopback
 * interface, though only 127.0.0.1 is listed there), or null. libuv lists
 * only interfaces that are up and running.
 */
export function ifaceOf(addr: string, ifs = networkInterfaces()): string | null {
  const loop = addr.startsWith('127.') || addr === '::1';
  return Object.entries(ifs).find(([, list]) => list?.some((a) => a.address === addr || (loop && a.internal)))?.[0] ?? null;
}

/** The MTU of the interface that carries `addr` (loopback: its 65536); 1500 if no interface has it. */
export function netdevMtu(addr: string): number {
  const name = ifaceOf(addr);
  if (!name) return 1500;
  try {
    return Number(readFileSync(`/sys/class/net/${name}/mtu`, 'utf8'));
  } catch {
    return 1500;
  }
}

