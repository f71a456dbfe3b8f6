/**
 * rdma_cm's id and what it hands to ucma (the kernel's cma_priv.h and the
 * parts of rdma_cm.h userspace sees through ucma): the id's states, the
 * connection parameters, the events on their way to a file, and the file.
 */
import { randomInt } from 'node:crypto';
import type { CmEventType, PortSpace, SockAddr } from '../abi/ucma.js';
import type { SoftDevice } from '../hca/device.js';
import type { CmQpParam, CmQpType, IbCmId } from './ib-cm-id.js';

/** rdma_cm's states (enum rdma_cm_state), as `rdma resource show cm_id` names them. */
export const CmState = {
  IDLE: 'IDLE', ADDR_QUERY: 'ADDR_QUERY', ADDR_RESOLVED: 'ADDR_RESOLVED', ROUTE_QUERY: 'ROUTE_QUERY', ROUTE_RESOLVED: 'ROUTE_RESOLVED',
  CONNECT: 'CONNECT', DISCONNECT: 'DISCONNECT', ADDR_BOUND: 'ADDR_BOUND', LISTEN: 'LISTEN', DEVICE_REMOVAL: 'DEVICE_REMOVAL', DESTROYING: 'DESTROYING',
} as const;
export type CmState = (typeof CmState)[keyof typeof CmState];

/** The parameters of CONNECT and ACCEPT (struct rdma_ucm_conn_param). */
export interface ConnParam extends CmQpParam {
  qpNum: number;
  qkey: number;
  privateData: Uint8Array;
}

/** An event on its way to a file (its rdma_ucm_event_resp). */
export interface CmEvent {
  uid: bigint;
  id: number;
  event: CmEventType;
  status: number;
  conn?: Partial<ConnParam>;
  ud?: { qpNum: number; qkey: number; privateData: Uint8Array; dgid?: Uint8Array; hopLimit?: number; trafficClass?: number };
}

/** One open of the rdma_cm file (a ucma_file): its ids, and where its events go. */
export interface CmFile {
  readonly pid: number;
  readonly uid: number;
  readonly comm: string;
  readonly ids: Map<number, CmId>;
  /**
   * Queues an event of `owner` (whose uid it carries; a CONNECT_REQUEST's `child` is the id the request made); false
   * when the file's queue is full. The file counts the event in `owner.eventsReported` when its user has it: at once
   * on an event stream, at GET_EVENT for a C program's file.
   */
  deliver(ev: CmEvent, owner: CmId, child?: CmId): boolean;
  queued(): number;
  /** Takes one id from the owner's quota (throws its errno), and gives it back. */
  charge(): void;
  uncharge(): void;
}

/** An rdma_cm id (the kernel's rdma_id_private). */
export class CmId {
  state: CmState = CmState.IDLE;
  /** its connection or listen in ib_cm, once it connects, listens or is made by a request */
  cm: IbCmId | null = null;
  dev: SoftDevice | null = null;
  /** bound address (its port 0 until one is taken) */
  local: SockAddr | null = null;
  remote: SockAddr | null = null;
  /** the port is held in the bind table */
  bound = false;
  backlog = 0;
  listener: CmId | null = null;
  /** connection requests this listener has reported and not yet seen answered */
  pending = 0;
  /** this id is one of its listener's pending requests */
  inBacklog = false;
  /** the route: the remote GID and path MTU */
  remoteGid: Uint8Array | null = null;
  pathMtu = 0;
  tos = 0;
  /** RDMA_OPTION_ID_ACK_TIMEOUT's value (the kernel's timeout with timeout_set): the QP's timeout at RTS; null when unset */
  ackTimeout: number | null = null;
  /**
   * The PSN our QP receives from first, which our REQ or REP names (the kernel's seq_num): chosen before either is
   * sent, as librdmacm moves the passive side's QP to RTR before it sends the REP.
   */
  readonly seqNum = randomInt(0x1000000);
  localQpn = 0;
  /** events its user has had (the kernel's events_reported: rdma_destroy_id waits for that many acks) */
  eventsReported = 0;
  destroyed = false;
  /** what `rdma resource show cm_id` calls cm-idn */
  restrackId = 0;

  constructor(
    /** the file that owns it (MIGRATE_ID moves it to another) */
    public file: CmFile,
    readonly handle: number,
    /** what its events carry for its user to find it by (a request's id has none until rdma_accept gives it one) */
    public uid: bigint,
    readonly ps: PortSpace,
    readonly qpType: CmQpType,
  ) {}
}
