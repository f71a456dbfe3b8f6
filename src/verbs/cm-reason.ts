/**
 * What an RDMA CM event's status means, in words: a REJ's reason as the
 * kernel's rdma_reject_msg() words it, a SIDR_REP's status, or the errno of
 * a step that failed; for the refusals the CM itself sends, what they
 * usually mean to whoever connects.
 */
import { CmEventType } from '../abi/ucma.js';
import { rejectMsg, RejReason, SidrStatus, sidrStatusMsg } from '../cm/mad.js';
import { errnoName, strerror } from '../common/errno.js';

const REJ_HINT: Record<number, string> = {
  [RejReason.INVALID_SERVICE_ID]: 'nothing listens on that port',
  [RejReason.CONSUMER_DEFINED]: "the peer's application refused the connection (rdma_reject) or destroyed its id before answering",
  [RejReason.NO_RESOURCES]: "the listener's backlog is full, or its owner has no cm_ids left",
  [RejReason.TIMEOUT]: 'the peer gave up waiting for an answer',
  [RejReason.INVALID_TRANSPORT_TYPE]: "the listener's QP type is not the request's",
  [RejReason.INVALID_MTU]: 'the request named no valid path MTU',
};

const SIDR_HINT: Record<number, string> = {
  [SidrStatus.UNSUPPORTED]: 'nothing listens on that port for UD',
  [SidrStatus.REJECT]: "the peer's application refused the request (rdma_reject), or the listener's backlog is full",
};

/**
 * The words for an event's status: for REJECTED the REJ's reason (8 → "invalid service ID: nothing listens on that
 * port"), for UNREACHABLE with a positive status the SIDR_REP's, for a negative one its errno's; undefined for 0.
 */
export function cmEventReason(event: CmEventType, status: number): string | undefined {
  if (status === 0) return undefined;
  if (status < 0) return strerror(errnoName(-status));
  const [msg, hint] =
    event === CmEventType.REJECTED ? [rejectMsg(status), REJ_HINT[status]] : event === CmEventType.UNREACHABLE ? [sidrStatusMsg(status), SIDR_HINT[status]] : [undefined, undefined];
  return msg && (hint ? `${msg}: ${hint}` : msg);
}
