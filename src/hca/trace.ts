/**
 * State transitions of the engines, for tests and debugging: when a hook is
 * set, every step of the requester, completer and responder state machines
 * is reported to it (one null check per step when it is not).
 */
export type Engine = 'requester' | 'completer' | 'responder';

export const tracer: { hook: ((engine: Engine, qpn: number, state: string) => void) | null } = { hook: null };
